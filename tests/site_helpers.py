"""Helpers for the site tests and the budget benchmark: build the site, serve it, drive
Debian's chromium. Nothing here ships in the package."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The story as published (verbatim), kept with the tests: docs/ is what the site publishes.
STORY_FILE = REPO / "tests" / "data" / "forward-pass.txt"
DEFAULT_TRACE = REPO / "traces" / "smollm2-135m-instruct"
PANEL_KEYS = ["intro", *(f"p{i}" for i in range(1, 11))]


def story_lines() -> list[str]:
    """The story file, one entry per non-empty line (title, subtitle, paragraphs, prompt lines)."""
    text = STORY_FILE.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


# The settings mkdocs.yml reads from the environment. A build here starts from none of them
# set (mkdocs.yml's defaults), whatever the calling shell has, then takes what it is given.
BUILD_ENV = ("FORWARD_PASS_TRACE", "SITE_URL", "REPO_URL", "FORWARD_PASS_RAW_TRACE")


def mkdocs_build_command(
    site_dir: Path,
    trace: Path | None = None,
    strict: bool = True,
    site_url: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `mkdocs build` command line and its environment, to run with cwd=REPO (so a
    benchmark can wrap the very command the tests run). `env` sets more of BUILD_ENV
    (REPO_URL, FORWARD_PASS_RAW_TRACE)."""
    base = {key: value for key, value in os.environ.items() if key not in BUILD_ENV}
    env = {**base, "NO_MKDOCS_2_WARNING": "1", **(env or {})}
    if trace is not None:  # None: the trace that mkdocs.yml names
        env["FORWARD_PASS_TRACE"] = str(trace)
    if site_url is not None:  # instant navigation needs the sitemap to name the port and path
        env["SITE_URL"] = site_url
    mkdocs = Path(sys.executable).with_name("mkdocs")
    cmd = [str(mkdocs), "build", "--site-dir", str(site_dir), "--quiet"]
    if strict:
        cmd.append("--strict")
    return cmd, env


def build_site(
    site_dir: Path,
    trace: Path | None = None,
    strict: bool = True,
    site_url: str | None = None,
    env: dict[str, str] | None = None,
    log: list[str] | None = None,
) -> float:
    """Run `mkdocs build` in a subprocess (so env and entry points behave as for a user).
    `env` sets more of BUILD_ENV (REPO_URL, FORWARD_PASS_RAW_TRACE). With `log`, the build
    is not --quiet and its output is appended there.

    Returns the wall time in seconds. Raises RuntimeError with mkdocs' output on failure.
    """
    import time

    cmd, full_env = mkdocs_build_command(site_dir, trace, strict, site_url, env)
    if log is not None:
        cmd.remove("--quiet")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"mkdocs build failed:\n{done.stdout}\n{done.stderr}")
    if log is not None:
        log.append(done.stdout + done.stderr)
    return time.perf_counter() - start


# --- serving the built site and driving chromium ------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
]  # fmt: skip


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 at a free port in a thread; yields the base URL."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def serve_like_pages(root: Path, prefix: str) -> Iterator[str]:
    """Serve `root` the way GitHub Pages serves a project site at /<prefix>/: an unknown path
    (or a folder without index.html) under it gets `root/<prefix>/404.html` with status 404,
    and no folder is ever listed. Yields the site's URL, http://127.0.0.1:<port>/<prefix>/."""
    import functools
    import http.server
    import threading

    not_found = root / prefix / "404.html"

    class PagesLike(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def list_directory(self, path: str | os.PathLike[str]) -> None:
            self.send_error(404)
            return None

        def send_error(self, code: int, message: str | None = None, explain: str | None = None):
            if code != 404 or not self.path.startswith(f"/{prefix}/") or not not_found.is_file():
                return super().send_error(code, message, explain)
            body = not_found.read_bytes()
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    handler = functools.partial(PagesLike, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{prefix}/"
    finally:
        server.shutdown()
        server.server_close()


def chromium_path() -> str:
    """Debian's chromium; missing chromium is a failure, not a skip."""
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return path


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


# JavaScript run in the page: scroll every interactive chart into view and draw it, then
# report each chart's state.
# An interactive chart is its static image until a reader reaches for it: a press on it
# (pointerdown) draws it, as a tap or a click would.
SCROLL_ALL_JS = """async () => {
  for (const el of document.querySelectorAll('.fp-chart')) {
    el.scrollIntoView({block: 'center'});
    if (el.dataset.fpState === 'static') {
      el.dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}));
    }
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  }
}"""

CHART_STATES_JS = """() => [...document.querySelectorAll('.fp-chart')].map(el => {
  const canvas = el.querySelector('canvas');
  let colours = 0;
  if (canvas && canvas.width && canvas.height) {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length && seen.size < 50; i += 4 * 7) {
      seen.add(data[i] << 24 | data[i + 1] << 16 | data[i + 2] << 8 | data[i + 3]);
    }
    colours = seen.size;
  }
  const svg = el.querySelector('svg');
  return {
    panel: el.closest('.fp-panel') && el.closest('.fp-panel').dataset.panel,
    state: el.dataset.fpState, scheme: el.dataset.fpScheme || null,
    renderer: canvas ? 'canvas' : (svg ? 'svg' : null),
    marks: svg ? svg.querySelectorAll('.mark-rect path, .mark-rect rect, .mark-line path, '
      + '.mark-symbol path, .mark-area path, .mark-text text, .mark-rule line, .mark-path path, '
      + '.mark-image image, .mark-arc path, .mark-trail path').length : 0,
    colours,
    background: canvas
      ? Array.from(canvas.getContext('2d').getImageData(1, 1, 1, 1).data).join(',')
      : (svg ? svg.style.backgroundColor : null),
  };
})"""

# JavaScript run in the page: every chart's static image box (.fp-static; an interactive
# chart's is its placeholder until drawn), the image its panel shows (exactly one of the
# four: layout by the panel's width, palette by the page's), the width it is shown at against
# the width it was laid out at (a scale under 1 would shrink its text), its panel's room, its
# accessible name and description, and its text at the size it is shown at (read from the
# SVG file the image shows).
STATIC_CHARTS_JS = """async () => {
  const found = [];
  for (const el of document.querySelectorAll('.fp-static')) {
    const shown = [...el.querySelectorAll(':scope > img')]
      .filter(img => getComputedStyle(img).display !== 'none');
    const img = shown[0];
    if (img) {
      img.loading = 'eager';
      await img.decode().catch(() => null);
    }
    const box = img ? img.getBoundingClientRect() : null;
    const laid = img ? img.naturalWidth : 0;
    const scale = box && laid ? box.width / laid : 0;
    const panel = el.closest('.fp-panel');
    const style = getComputedStyle(panel);
    let texts = [], theme = null;
    if (img) {
      const svg = new DOMParser().parseFromString(await (await fetch(img.currentSrc)).text(),
                                                  'image/svg+xml');
      // Labels of one style may share a <text>, each label a positioned <tspan>.
      texts = [...svg.querySelectorAll('text')].flatMap(t => {
        const runs = t.querySelectorAll('tspan');
        return [...(runs.length ? runs : [t])].filter(r => r.textContent.trim()).map(r => ({
          text: r.textContent.slice(0, 30), size: parseFloat(t.getAttribute('font-size')) * scale,
          role: t.parentElement.getAttribute('class') || ''}));
      });
      theme = img.classList.contains('fp-svg--dark') ? 'dark' : 'light';
    }
    found.push({
      panel: panel.dataset.panel, shown: shown.length, single: el.hasAttribute('data-fp-single'),
      placeholder: el.classList.contains('fp-placeholder'),
      visible: el.getBoundingClientRect().height > 0,
      layout: img ? (img.classList.contains('fp-svg--wide') ? 'wide' : 'narrow') : null,
      width: box ? box.width : 0, height: box ? box.height : 0, laid, scale,
      room: el.clientWidth, theme, loaded: img ? img.naturalWidth > 0 : false,
      content: panel.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight),
      name: el.getAttribute('aria-label'), role: el.getAttribute('role'),
      caption: (document.getElementById(el.getAttribute('aria-describedby')) || {}).textContent,
      texts,
    });
  }
  return found;
}"""
