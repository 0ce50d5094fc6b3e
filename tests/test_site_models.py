"""Several models on one site (mkdocs.yml's `traces`): the story page switches every panel
to another model without reloading, keeps the reader's place, says the model in the URL and
loads another model's panels only when it is chosen; the claims page judges every claim for
every model with the panels' own numbers; each model has its own "How this was made".

The browser tests use the session's one chromium (tests/conftest.py); chromium missing is a
failure, never a skip.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.site_helpers import PANEL_KEYS, REPO, build_site, serve
from tracegen.mkdocs_plugin import resolve_trace_paths
from tracegen.panels import build_panels
from tracegen.panels.claims import CLAIMS, judge
from tracegen.store import load_trace
from tracegen.text import safe_slug

TRACES = [REPO / "traces" / "smollm2-135m-instruct", REPO / "traces" / "gemma-3-270m"]
WIDE = {"width": 1440, "height": 900}


BUILD_LOG: list[str] = []  # what the `served` build printed


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The site as mkdocs.yml builds it (FORWARD_PASS_TRACE unset: every listed model)."""
    site = tmp_path_factory.mktemp("models") / "site"
    with serve(site) as url:
        build_site(site, None, site_url=url, log=BUILD_LOG)
        yield site, url


def test_the_build_log_names_every_model_and_the_drawing(served, slugs):
    """The build says which traces it read (each model), counts the chart images as it draws
    them (most of its time), and has nothing to warn about: the other models' "How this was
    made" pages are declared outside the nav."""
    [log] = BUILD_LOG
    for path, slug in zip(TRACES, slugs, strict=True):
        assert re.search(
            rf"INFO +- +forward-pass: {slug}: 11 panels from {re.escape(str(path))}", log
        )
    drawing = re.search(r"forward-pass: drawing (\d+) chart images \((\d+) charts, 2 layouts", log)
    assert drawing, log
    total = int(drawing.group(1))
    counts = [int(n) for n in re.findall(rf"drawing chart images: (\d+)/{total} ", log)]
    assert counts == sorted(counts) and counts[-1] == total and len(counts) >= 2, log
    assert 'not included in the "nav"' not in log and "WARNING" not in log, log
    assert "end of life" not in log  # NO_MKDOCS_2_WARNING, as site_helpers builds


@pytest.fixture(scope="module")
def slugs() -> list[str]:
    return [safe_slug(load_trace(path).model.slug) for path in TRACES]


def test_readme_says_what_this_build_publishes(served):
    """README: "What gets published, from the two committed traces: N files, X MB"."""
    site = served[0]
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    stated = re.search(r"What gets published, from the two committed traces: ([\d,]+) files, "
                       r"([\d.]+) MB", readme)  # fmt: skip
    assert stated, "the README no longer says what a build publishes"
    files = [path for path in site.rglob("*") if path.is_file()]
    assert int(stated.group(1).replace(",", "")) == len(files)
    size = sum(path.stat().st_size for path in files)
    assert abs(float(stated.group(2)) * 1e6 - size) <= 0.1 * size, size


def test_mkdocs_yml_lists_both_committed_models():
    paths = resolve_trace_paths("unused", [str(p.relative_to(REPO)) for p in TRACES], None)
    assert paths == [p.resolve() for p in TRACES]
    text = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert all(f"- {p.relative_to(REPO)}" in text for p in TRACES)


def test_the_trace_env_still_builds_one_model(monkeypatch):
    monkeypatch.setenv("FORWARD_PASS_TRACE", str(TRACES[1]))
    assert resolve_trace_paths("traces/x", [str(t) for t in TRACES], None) == [TRACES[1]]


def _cells(page: Path) -> list[list[str]]:
    text = page.read_text(encoding="utf-8")
    table = text[text.index("<table") : text.index("</table>")]
    return [
        re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]


def test_claims_page_judges_every_claim_for_every_model(served, slugs):
    site, _ = served
    rows = _cells(site / "claims.html")
    assert len(rows) == 1 + len(CLAIMS) and len(rows[0]) == 1 + len(TRACES)
    for column, path in enumerate(TRACES, start=1):
        facts = {p.key: p.facts for p in build_panels(load_trace(path))}
        for row, judged in zip(rows[1:], judge(facts), strict=True):
            cell = row[column]
            shown = html.unescape(re.sub(r"<[^>]+>", "", cell))
            assert shown.startswith(judged.verdict + " ") and judged.number in shown
            href = html.unescape(re.search(r'href="([^"]+)"', cell)[1])
            query = "" if column == 1 else f"?model={slugs[column - 1]}"
            assert href == f"index.html{query}#panel-{judged.key}"
    # A depth is a fraction of the model's depth: Gemma's 18 layers and SmolLM2's 30 compare.
    takeover = html.unescape(re.sub(r"<[^>]+>", "", " ".join(rows[1 + 4])))
    assert takeover.count("of the depth (story: 0.75)") == 2


def test_each_model_has_its_own_made_page(served, slugs):
    site, _ = served
    other = site / f"made-{slugs[1]}.html"
    text = html.unescape(re.sub(r"<[^>]+>", "", other.read_text(encoding="utf-8")))
    text = " ".join(text.split())
    assert "the GGUF file gemma-3-270m-q4_k_m.gguf" in text
    assert (
        "tracegen run --model models/gemma-3-270m-q4_k_m.gguf --out traces/gemma-3-270m --force"
        in text
    )
    assert "/root/" not in text and "/home/" not in text
    gemma = load_trace(TRACES[1])
    for path in gemma.files():
        assert (site / "traces" / slugs[1] / path.name).read_bytes() == path.read_bytes()


def _panel_text(page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('aside.fp-panel')].map(
            a => [a.dataset.panel, a.querySelector('.fp-caption').textContent
                  + ' | ' + a.querySelector('.fp-verdict').textContent]))"""
    )


@pytest.mark.browser
def test_switcher_swaps_every_panel_keeps_the_place_and_the_url(browser, served, slugs):
    site, url = served
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url + "index.html", wait_until="load")
        switcher = page.locator(".fp-models")
        switcher.wait_for(state="visible")
        before = _panel_text(page)
        assert sorted(before) == sorted(PANEL_KEYS)
        assert not [u for u in loaded if "/models/" in u]  # the second model: not yet
        # Read down to paragraph 6; the switcher stays in reach there, and switching keeps
        # the reader at paragraph 6.
        page.evaluate("() => window.scrollTo(0, document.querySelector('#row-p6').offsetTop)")
        page.wait_for_timeout(300)
        top = page.evaluate("() => document.querySelector('#row-p6').getBoundingClientRect().top")
        button = page.get_by_role("button", name=load_trace(TRACES[1]).model.slug)
        box = button.bounding_box()
        assert box and 0 <= box["y"] < WIDE["height"] / 4, box  # in view without scrolling
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function(
            f"() => document.querySelector('.fp-models').dataset.fpModel === '{slugs[1]}'"
        )
        after = _panel_text(page)
        assert all(after[key] != before[key] for key in PANEL_KEYS if key != "p9"), after
        gemma = {p.key: p for p in build_panels(load_trace(TRACES[1]))}
        for key, panel in gemma.items():
            assert after[key].endswith(" | " + panel.verdict), key
        assert page.evaluate("() => location.search") == f"?model={slugs[1]}"
        assert [u for u in loaded if u.endswith(f"/models/{slugs[1]}.js")]
        assert gemma["p6"].facts.n_layers == 18
        # The new charts show (an interactive one as its static image until reached for, then
        # drawn); the paragraph the reader was at stays where it was.
        page.wait_for_function(
            "() => document.querySelector('#panel-p6 .fp-chart').dataset.fpState === 'static'"
        )
        shown = page.eval_on_selector_all(
            "#panel-p6 .fp-static > img", "els => els.map(el => el.getAttribute('src'))"
        )
        assert shown and all(slugs[1] in src for src in shown), shown
        page.locator("#panel-p6 .fp-chart").dispatch_event("pointerdown")
        page.wait_for_function(
            "() => document.querySelector('#panel-p6 .fp-chart').dataset.fpState === 'rendered'"
        )
        page.wait_for_timeout(500)
        moved = page.evaluate("() => document.querySelector('#row-p6').getBoundingClientRect().top")
        assert abs(moved - top) <= 2, (top, moved)
        assert "gemma" in page.locator(".fp-model-line").inner_text()
        # A link with the model opens on that model; the page's own model has no parameter.
        page.goto(url + f"index.html?model={slugs[1]}#panel-p6", wait_until="load")
        page.wait_for_function(
            f"() => document.querySelector('.fp-models').dataset.fpModel === '{slugs[1]}'"
        )
        assert _panel_text(page)["p6"] == after["p6"]
        page.get_by_role("button", name=load_trace(TRACES[0]).model.slug).click()
        page.wait_for_function(
            f"() => document.querySelector('.fp-models').dataset.fpModel === '{slugs[0]}'"
        )
        assert _panel_text(page) == before
        assert page.evaluate("() => location.search") == ""
        assert errors == []
    finally:
        context.close()
