"""A trace is untrusted input: a site built from a trace whose every string is hostile
(tests/hostile.py) shows each string as text, verbatim, and runs none of it, in the HTML
that mkdocs writes and in Chromium over http and over file://, charts and tooltips included."""

from __future__ import annotations

import html
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.hostile import VISIBLE, write_hostile_trace
from tests.site_helpers import SCROLL_ALL_JS, build_site, serve
from tracegen import load_trace

# Pages are files since use_directory_urls: false (mkdocs.yml).
PAGES = ["index.html", "claims.html", "made.html", "trace-schema.html", "compatibility.html"]


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hostile_trace(tmp_path_factory.mktemp("hostile") / "trace")


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory, hostile_trace: Path):
    """The site built from the hostile trace, served; yields (folder, base URL)."""
    site = tmp_path_factory.mktemp("hostile-site") / "site"
    with serve(site) as url:
        build_site(site, hostile_trace, site_url=url)
        yield site, url


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False

    def handle_data(self, data: str) -> None:
        (self.scripts if self.in_script else self.text).append(data)


def parse(page: Path) -> Elements:
    parser = Elements()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_hostile_trace_is_valid(hostile_trace: Path) -> None:
    """The hostile text is all in places a real trace may hold any text: it loads."""
    trace = load_trace(hostile_trace)
    assert "<script>alert(1)</script>" in trace.prompt_text
    assert "```" in trace.prompt_text.splitlines()


def test_no_element_or_link_comes_from_trace_text(hostile_site: tuple[Path, str]) -> None:
    site = hostile_site[0]
    for name in PAGES:
        page = parse(site / name)
        for tag, attrs in page.tags:
            # (mkdocs.yml's site_description, with its double quotes, currently breaks out of
            # Material's <meta content="..."> into bare attributes such as `on`: not trace
            # text, and not a handler; handlers have a name after "on".)
            assert not any(re.fullmatch(r"on[a-z]+", key) for key in attrs), (name, tag, attrs)
            assert tag not in ("svg", "img") or attrs.get("src") != "x", (name, tag, attrs)
            for key, value in attrs.items():
                if key in ("href", "src", "action", "formaction", "data"):
                    assert "javascript:" not in (value or "").lower(), (name, tag, attrs)
                    assert "alert" not in (value or ""), (name, tag, attrs)
        assert not any("alert(" in script for script in page.scripts), name


def test_hostile_text_shown_verbatim_in_html(hostile_site: tuple[Path, str]) -> None:
    site = hostile_site[0]
    text = "".join("".join(parse(site / name).text) for name in PAGES)
    missing = [snippet for snippet in VISIBLE if snippet not in text]
    assert missing == [], f"not shown verbatim: {missing}"


def test_prompt_block_holds_the_whole_prompt(
    hostile_site: tuple[Path, str], hostile_trace: Path
) -> None:
    """The prompt's line of backticks does not end its block: the block holds the whole
    prompt, control characters as pictures."""
    from tracegen.text import visible_controls

    made = (hostile_site[0] / "made.html").read_text(encoding="utf-8")
    blocks = re.findall(r'<pre class="fp-pre"><code>(.*?)</code></pre>', made, re.S)
    # The prompt, the command that builds the site again, the one that regenerates the trace.
    assert len(blocks) == 3
    trace = load_trace(hostile_trace)
    assert html.unescape(blocks[0]) == visible_controls(trace.prompt_text, keep="\n\t")
    assert html.unescape(blocks[1]).endswith(" mkdocs build")  # the trace is not committed
    # The hostile spec and options reach the command as text, quoted for a shell.
    command = html.unescape(blocks[2])
    assert command.startswith("tracegen run --model ") and command.endswith(" --force")
    assert shlex.split(command)[3] == visible_controls(trace.model.spec, keep="\n\t")


# --- in Chromium ------------------------------------------------------------------------------

# Elements whose attributes hold trace text that became markup: an on* handler, a javascript:
# URL, or an alert( anywhere in an attribute. (Trace text in a title or data attribute is
# escaped text and contains no "alert(" only if it is not hostile, so those are skipped.)
INJECTED_JS = """() => [...document.querySelectorAll('*')].filter(el => [...el.attributes].some(a =>
  /^on[a-z]+$/i.test(a.name) ||
  (['href', 'src', 'action', 'formaction', 'xlink:href'].includes(a.name)
   && /javascript:|alert\\(/i.test(a.value))
)).map(el => el.outerHTML.slice(0, 200))"""

HOVER_JS = """() => [...document.querySelectorAll('.fp-chart')].map(el => {
  const r = el.getBoundingClientRect();
  return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};
})"""


@pytest.fixture(scope="module")
def chromium(browser: Any) -> Any:
    """The session's one chromium (tests/conftest.py): a second sync_playwright beside a live
    one fails."""
    return browser


def visit(browser: Any, url: str, hover: bool) -> dict[str, Any]:
    """Open `url`, let the charts draw, hover a grid over every chart; what was seen."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page = context.new_page()
        dialogs: list[str] = []
        errors: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="load")
        tooltips: list[str] = []
        injected: list[str] = []
        if hover:
            # Every interactive chart drawn (the others are images drawn at build time).
            page.evaluate(SCROLL_ALL_JS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.fp-chart')]"
                ".every(el => ['rendered', 'error'].includes(el.dataset.fpState))",
                timeout=30_000,
            )
            states = page.eval_on_selector_all(
                ".fp-chart", "els => els.map(e => e.dataset.fpState)"
            )
            assert states and set(states) == {"rendered"}, states
            for box in page.evaluate(HOVER_JS):
                page.evaluate(f"window.scrollTo(0, {max(box['y'] - 200, 0)})")
                top = box["y"] - page.evaluate("window.scrollY")
                for fx in (0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
                    for fy in (0.3, 0.5, 0.7, 0.9):
                        page.mouse.move(box["x"] + box["w"] * fx, top + box["h"] * fy)
                        tip = page.evaluate(
                            "() => { const t = document.getElementById('vg-tooltip-element');"
                            " return t && t.classList.contains('visible') ? t.textContent : '' }"
                        )
                        if tip:
                            tooltips.append(tip)
                injected += page.evaluate(INJECTED_JS)
        injected += page.evaluate(INJECTED_JS)
        text = page.evaluate("document.body.textContent")
        return {
            "dialogs": dialogs,
            "errors": errors,
            "tooltips": tooltips,
            "injected": injected,
            "text": text,
        }
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["http", "file"])
def test_hostile_site_in_chromium(chromium: Any, hostile_site: tuple[Path, str], scheme: str):
    site, base = hostile_site
    seen_text = []
    tooltips: list[str] = []
    for name in PAGES:
        url = base + name if scheme == "http" else (site / name).as_uri()
        seen = visit(chromium, url, hover=name == "index.html")
        assert seen["dialogs"] == [], f"{url}: a dialog opened: {seen['dialogs']}"
        assert seen["injected"] == [], f"{url}: elements made from trace text: {seen['injected']}"
        assert seen["errors"] == [], f"{url}: page errors: {seen['errors']}"
        seen_text.append(seen["text"])
        tooltips += seen["tooltips"]
    text = "".join(seen_text)
    missing = [snippet for snippet in VISIBLE if snippet not in text]
    assert missing == [], f"not shown verbatim: {missing}"
    assert tooltips, "hovering the charts showed no tooltip"
    # Tooltips name tokens; the hostile token text is shown in them as text.
    shown = "".join(tooltips)
    assert any(snippet in shown for snippet in VISIBLE), tooltips[:5]


def test_info_on_the_hostile_trace_keeps_the_terminal_safe(hostile_trace: Path, capsys) -> None:
    """`tracegen info` prints trace text with control characters visible or as repr: no raw
    escape sequence, bell or right-to-left override reaches the terminal."""
    from tracegen import cli

    assert cli.main(["info", str(hostile_trace)]) == 0
    out = capsys.readouterr().out
    assert "<script>alert(1)</script>" in out  # shown, as text
    assert not any(ord(c) < 32 and c != "\n" for c in out), repr(out[:200])
    assert "\u202e" not in out
