"""Build the site and check it against its budgets; exit 1 if any budget fails.

    .venv/bin/python bench/site_budget.py [--trace traces/<slug>] [--site-dir DIR]

Budgets (story page = everything chromium fetches for index.html while a reader scrolls
through it: HTML, JS, CSS, the chart images; the Vega runtime is fetched only when a pointer
enters an interactive chart, so it is printed apart, with every interactive chart explored;
chart data = the specs in the page's data-spec attributes):

    mkdocs build                 <= 15 s
    story page, uncompressed     <= 1.5 MB
    story page, gzipped          <= 450 kB   (each response gzip -6, as a server would)
    chart data on the story page <= 300 kB
    all panels rendered          <= 3 s      (from the first scroll to the last chart drawn)
"""

from __future__ import annotations

import argparse
import gzip
import html
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the serving/chromium helpers live with the browser tests

from tests.site_helpers import (  # noqa: E402
    build_site,
    launch_chromium,
    serve,
)

BUDGETS = {  # name: (limit, unit)
    "mkdocs build": (15.0, "s"),
    "story page uncompressed": (1_500_000, "B"),
    "story page gzipped": (450_000, "B"),
    "chart data": (300_000, "B"),
    "all panels rendered": (3.0, "s"),
}

# Scroll like a reader, chart by chart, and time until every interactive chart (.fp-chart; the
# others are images drawn at build time) reports it is drawn.
RENDER_JS = """async () => {
  const charts = [...document.querySelectorAll('.fp-chart')];
  const start = performance.now();
  for (const el of charts) {
    el.scrollIntoView({block: 'center'});
    // An interactive chart is its static image until reached for: press it, as a reader would.
    el.dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}));
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  }
  const done = () => charts.every(el => ['rendered', 'error'].includes(el.dataset.fpState));
  while (!done()) {
    if (performance.now() - start > 60000) throw new Error('charts did not render in 60 s');
    await new Promise(r => setTimeout(r, 10));
  }
  const failed = charts.filter(el => el.dataset.fpState === 'error').length;
  return {seconds: (performance.now() - start) / 1000, charts: charts.length, failed};
}"""


def chart_data_bytes(page: Path) -> tuple[int, int]:
    """(bytes of all chart specs, number of charts) as the browser parses them."""
    specs = re.findall(r"data-spec='([^']*)'", page.read_text(encoding="utf-8"))
    return sum(len(html.unescape(s).encode()) for s in specs), len(specs)


# A reader who only reads: every panel scrolled into view, no pointer on any chart.
READ_JS = """async () => {
  for (const el of document.querySelectorAll('.fp-panel')) {
    el.scrollIntoView({block: 'center'});
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  }
}"""


def _bytes(responses: list) -> tuple[int, int]:
    raw = zipped = 0
    for response in responses:
        if response.status == 200:
            body = response.body()
            raw += len(body)
            zipped += len(gzip.compress(body, compresslevel=6))
    return raw, zipped


def measure_page(url: str) -> tuple[int, int, dict, list[str]]:
    """Bytes fetched for the story page by a reader who scrolls through it (raw, gzipped),
    render timing of every interactive chart once pressed (with `explored_raw` and
    `explored_gzipped`: the bytes then, the Vega runtime included), and console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        responses = []
        errors: list[str] = []
        page.on("response", lambda response: responses.append(response))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(url, wait_until="load")
        page.mouse.move(0, 0)  # the pointer stays off the charts while reading
        page.evaluate(READ_JS)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(500)  # lazy images whose turn came last
        raw, zipped = _bytes(responses)
        render = page.evaluate(RENDER_JS)
        page.wait_for_load_state("networkidle")
        render["explored_raw"], render["explored_gzipped"] = _bytes(responses)
        browser.close()
    return raw, zipped, render, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, help="trace folder (default: as in mkdocs.yml)")
    parser.add_argument("--site-dir", type=Path, help="where to build (default: a temp folder)")
    args = parser.parse_args(argv)

    # Every figure is printed, each against its budget, before the exit status says whether
    # one failed: a measurement that fails is a FAIL row with its reason, not the end.
    figures: dict[str, float | None] = dict.fromkeys(BUDGETS)
    problems: list[str] = []
    render: dict = {}
    errors: list[str] = []
    n_charts = 0
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site_dir or Path(tmp) / "site"
        with serve(site) as url:
            try:
                figures["mkdocs build"] = build_site(site, args.trace, site_url=url)
                spec_bytes, n_charts = chart_data_bytes(site / "index.html")
                figures["chart data"] = spec_bytes
                raw, zipped, render, errors = measure_page(url)
                figures["story page uncompressed"], figures["story page gzipped"] = raw, zipped
                figures["all panels rendered"] = render["seconds"]
            except Exception as error:  # reported with the figures, then exit 1
                problems.append(f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}")

    failed = bool(problems)
    for name, value in figures.items():
        limit, unit = BUDGETS[name]
        budget = f"{limit:g} s" if unit == "s" else f"{limit / 1000:g} kB"
        if value is None:
            failed = True
            print(f"{name:<26} {'not measured':>12}   budget {budget:>9}   FAIL")
            continue
        ok = value <= limit
        failed |= not ok
        shown = f"{value:.2f} s" if unit == "s" else f"{value / 1000:.1f} kB"
        print(f"{name:<26} {shown:>12}   budget {budget:>9}   {'PASS' if ok else 'FAIL'}")
    if render:
        print(
            f"with every interactive chart explored (the Vega runtime fetched): "
            f"{render['explored_raw'] / 1000:.1f} kB, {render['explored_gzipped'] / 1000:.1f} kB "
            "gzipped (no budget)"
        )
        print(f"{n_charts} charts, {render['failed']} failed to draw, {len(errors)} console errors")
        failed |= bool(render["failed"] or errors)
    for error in errors:
        print(f"  console error: {error}")
    for problem in problems:
        print(f"not measured: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
