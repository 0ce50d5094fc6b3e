"""The story page on a slow device: print the figures against their budgets (a benchmark, not
a test; exit 1 if a budget fails).

    .venv/bin/python bench/slow_device.py [--site-dir DIR] [--trace traces/<slug>]

With --site-dir, an already built site is measured as it is (to compare two builds);
otherwise the site is built into a temporary folder first. The site is served gzipped (as
GitHub Pages and most hosts serve it) from 127.0.0.1, and chromium is throttled through the
DevTools protocol, as its DevTools panel does:

    longest task while scrolling  <= 200 ms  CPU 4x slower (Emulation.setCPUThrottlingRate);
                                             the whole page scrolled, top to bottom, in
                                             viewport steps, until every chart has drawn
                                             (an interactive chart is its static image until
                                             a reader reaches for it; the pointer stays still)
    first chart in view           <= 1.5 s   the "Fast 4G" network profile (DevTools' preset:
                                             165 ms latency, 9 Mbit/s down, 1.5 Mbit/s up),
                                             from navigation start to the first chart in the
                                             viewport drawn (by Vega, or its static image
                                             loaded); reported with the CPU at 1x and 4x
                                             (the median of three loads)

Also printed: every long task over 50 ms (count and sum), and the page's bytes raw and
gzipped (everything chromium fetched for the story page).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import http.server
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the chromium helpers live with the browser tests

from tests.site_helpers import build_site, launch_chromium  # noqa: E402

BUDGET_TASK_MS = 200.0
BUDGET_FIRST_CHART_S = 1.5
VIEWPORT = {"width": 1440, "height": 900}
# Chrome DevTools' "Fast 4G" preset (front_end/core/sdk/NetworkManager.ts).
FAST_4G = {
    "offline": False,
    "latency": 165.0,
    "downloadThroughput": 9 * 1000 * 1000 / 8 * 0.9,
    "uploadThroughput": 1.5 * 1000 * 1000 / 8 * 0.9,
}
GZIPPED = (".html", ".js", ".css", ".svg", ".json", ".xml", ".txt")

# Before any script of the page: record long tasks, and when the first chart that is in the
# viewport is drawn, by the Vega runtime or at build time (performance.now() is measured from
# navigation start).
INIT_JS = """
window.__fp = {tasks: [], firstChart: null};
new PerformanceObserver(list => {
  for (const e of list.getEntries()) __fp.tasks.push({start: e.startTime, ms: e.duration});
}).observe({type: 'longtask', buffered: true});
new MutationObserver(records => {
  if (__fp.firstChart !== null) return;
  for (const r of records) {
    const el = r.target;
    if (el.dataset.fpState !== 'rendered') continue;
    const box = el.getBoundingClientRect();
    if (box.bottom > 0 && box.top < innerHeight) { __fp.firstChart = performance.now(); return; }
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-fp-state']});
// A chart drawn at build time (the image its .fp-static box shows) is drawn in the first
// frame that has it loaded in the viewport (animation frames run just before the paint).
(function frame() {
  if (__fp.firstChart !== null) return;
  for (const img of document.querySelectorAll('.fp-static > img')) {
    if (!img.complete || !img.naturalWidth) continue;
    const box = img.getBoundingClientRect();
    if (box.height > 0 && box.bottom > 0 && box.top < innerHeight) {
      __fp.firstChart = performance.now();
      return;
    }
  }
  requestAnimationFrame(frame);
})();
"""

SCROLL_JS = """async () => {
  const start = performance.now();
  const step = innerHeight;
  for (let y = 0; y < document.documentElement.scrollHeight; y += step) {
    scrollTo(0, y);
    await new Promise(r => setTimeout(r, 250));
  }
  // An interactive chart nobody reached for stays its static image ("static").
  const charts = [...document.querySelectorAll('.fp-chart')];
  while (!charts.every(el => ['static', 'rendered', 'error'].includes(el.dataset.fpState))) {
    if (performance.now() - start > 120000) throw new Error('charts did not draw in 120 s');
    await new Promise(r => setTimeout(r, 50));
  }
  await new Promise(r => setTimeout(r, 500));
  return {start, end: performance.now()};
}"""


@contextlib.contextmanager
def serve_gzipped(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1, text files gzipped when the client accepts it."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def send_head(self):  # type: ignore[no-untyped-def]
            path = Path(self.translate_path(self.path))
            if path.is_dir():
                path = path / "index.html"
            accepts = "gzip" in self.headers.get("Accept-Encoding", "")
            if not (accepts and path.is_file() and path.suffix in GZIPPED):
                return super().send_head()
            body = gzip.compress(path.read_bytes(), compresslevel=6)
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(str(path)))
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            import io

            return io.BytesIO(body)

    handler = functools.partial(Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def first_chart(browser: Any, url: str, cpu_rate: float) -> float:
    """Seconds from navigation start to the first chart in view drawn, on Fast 4G."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.add_init_script(INIT_JS)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", FAST_4G)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": cpu_rate})
    page.goto(url, wait_until="load")
    page.wait_for_function("window.__fp.firstChart !== null", timeout=60_000)
    seconds = page.evaluate("window.__fp.firstChart") / 1000
    context.close()
    return seconds


def scrolling(browser: Any, url: str) -> dict[str, Any]:
    """Long tasks while scrolling the whole page with the CPU 4x slower; bytes fetched."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.add_init_script(INIT_JS)
    sizes: list[tuple[int, int]] = []

    def on_response(response: Any) -> None:
        with contextlib.suppress(Exception):
            if response.status == 200:
                body = response.body()
                sizes.append((len(body), len(gzip.compress(body, compresslevel=6))))

    page.on("response", on_response)
    cdp = context.new_cdp_session(page)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": 4})
    page.goto(url, wait_until="load")
    window = page.evaluate(SCROLL_JS)
    page.wait_for_load_state("networkidle")
    tasks = page.evaluate("window.__fp.tasks")
    context.close()
    during = [t["ms"] for t in tasks if t["start"] >= window["start"]]
    return {
        "longest_scrolling": max(during, default=0.0),
        "longest_any": max((t["ms"] for t in tasks), default=0.0),
        "count": len(tasks),
        "sum": sum(t["ms"] for t in tasks),
        "raw": sum(raw for raw, _ in sizes),
        "gzip": sum(zipped for _, zipped in sizes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site-dir", type=Path, help="a built site to measure as it is")
    parser.add_argument("--trace", type=Path, help="trace folder (default: as in mkdocs.yml)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    # Every figure is printed, each against its budget, before the exit status says whether
    # one failed: a measurement that fails is a FAIL row with its reason, not the end.
    problems: list[str] = []

    def measured(what: str, measure: Callable[[], Any]) -> Any:
        try:
            return measure()
        except Exception as error:  # reported with the figures, then exit 1
            last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            problems.append(f"{what}: {type(error).__name__}: {last}")
            return None

    scroll = fast = slow = None
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site_dir or Path(tmp) / "site"
        built = args.site_dir is not None or measured(
            "mkdocs build", lambda: build_site(site, args.trace)
        )
        if built is not None:
            with serve_gzipped(site) as url, sync_playwright() as playwright:
                browser = measured("chromium", lambda: launch_chromium(playwright))

                def median_of_three(rate: float) -> float:
                    # One load on a shared machine varies by a few 100 ms.
                    return statistics.median(first_chart(browser, url, rate) for _ in range(3))

                if browser is not None:
                    scroll = measured("scrolling", lambda: scrolling(browser, url))
                    fast = measured("first chart, CPU 1x", lambda: median_of_three(1))
                    slow = measured("first chart, CPU 4x", lambda: median_of_three(4))
                    browser.close()

    rows = [
        ("longest task, scrolling, CPU 4x", scroll and scroll["longest_scrolling"],
         BUDGET_TASK_MS, "ms"),
        ("first chart in view, Fast 4G", fast, BUDGET_FIRST_CHART_S, "s"),
    ]  # fmt: skip
    failed = bool(problems)
    for name, value, limit, unit in rows:
        ok = value is not None and value <= limit
        failed |= not ok
        if value is None:
            shown = "not measured"
        else:
            shown = f"{value:.0f} ms" if unit == "ms" else f"{value:.2f} s"
        budget = f"{limit:g} {unit}"
        print(f"{name:<36} {shown:>12}   budget {budget:>7}   {'PASS' if ok else 'FAIL'}")
    if slow is not None:
        print(f"{'first chart in view, Fast 4G, CPU 4x':<36} {slow:>10.2f} s   (no budget)")
    if scroll is not None:
        print(
            f"long tasks (> 50 ms), CPU 4x: {scroll['count']}, {scroll['sum'] / 1000:.1f} s in "
            f"all, longest {scroll['longest_any']:.0f} ms (page load included)"
        )
        print(
            f"story page: {scroll['raw'] / 1000:.1f} kB raw, {scroll['gzip'] / 1000:.1f} kB "
            "gzipped"
        )
    for problem in problems:
        print(f"not measured: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
