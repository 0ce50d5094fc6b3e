"""`make bench` prints every figure against its budget before it fails: bench/site_budget.py
and bench/slow_device.py report a figure over budget, or one that could not be measured, as
a FAIL row and go on, then exit 1. Their measurements are replaced here; only the reporting
is tested (the benchmarks themselves are not tests)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from bench import site_budget, slow_device


@contextlib.contextmanager
def no_server(site: Path):
    yield "http://127.0.0.1:1/"


def rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.endswith(("PASS", "FAIL"))]


def test_site_budget_prints_every_figure_then_fails(capsys, monkeypatch):
    monkeypatch.setattr(site_budget, "serve", no_server)
    monkeypatch.setattr(site_budget, "build_site", lambda *a, **k: 99.0)  # over its 15 s
    monkeypatch.setattr(site_budget, "chart_data_bytes", lambda page: (10_000, 3))
    render = {"seconds": 1.0, "failed": 0, "explored_raw": 2e6, "explored_gzipped": 5e5}
    monkeypatch.setattr(site_budget, "measure_page", lambda url: (2_000_000, 100_000, render, []))
    assert site_budget.main([]) == 1
    out = capsys.readouterr().out
    assert len(rows(out)) == len(site_budget.BUDGETS)  # the first FAIL did not end the report
    assert [row.split()[-1] for row in rows(out)] == ["FAIL", "FAIL", "PASS", "PASS", "PASS"]
    assert "3 charts, 0 failed to draw, 0 console errors" in out


def test_site_budget_reports_a_failed_measurement(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mkdocs build failed:\nsomething broke")

    monkeypatch.setattr(site_budget, "serve", no_server)
    monkeypatch.setattr(site_budget, "build_site", broken)
    assert site_budget.main([]) == 1
    out = capsys.readouterr().out
    assert len(rows(out)) == len(site_budget.BUDGETS)
    assert all("not measured" in row and row.endswith("FAIL") for row in rows(out))
    assert "not measured: RuntimeError: something broke" in out


@pytest.mark.parametrize("broken", ["scrolling", "first_chart"])
def test_slow_device_prints_every_figure_then_fails(capsys, monkeypatch, tmp_path, broken):
    """A failing measurement (chromium timing out, say) is a FAIL row; the others print."""
    scroll = {"longest_scrolling": 900.0, "longest_any": 900.0, "count": 3, "sum": 2000.0,
              "raw": 1e6, "gzip": 2e5}  # fmt: skip

    def fails(*args, **kwargs):
        raise TimeoutError("Timeout 60000ms exceeded.")

    monkeypatch.setattr(slow_device, "serve_gzipped", no_server)
    monkeypatch.setattr(slow_device, "launch_chromium", lambda playwright: _Browser())
    monkeypatch.setattr(slow_device, "scrolling", lambda browser, url: scroll)
    monkeypatch.setattr(slow_device, "first_chart", lambda browser, url, rate: 0.5 * rate)
    monkeypatch.setattr(slow_device, broken, fails)
    assert slow_device.main(["--site-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert len(rows(out)) == 2, out
    assert all(row.endswith("FAIL") for row in rows(out)) == (broken == "first_chart")
    assert f"not measured: {'scrolling' if broken == 'scrolling' else 'first chart, CPU 1x'}" in out


class _Browser:
    def close(self) -> None:
        pass
