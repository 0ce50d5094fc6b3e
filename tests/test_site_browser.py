"""The built site in headless chromium: charts render, follow the palette and instant
navigation, nothing leaves 127.0.0.1, the layout is two columns wide and one column narrow,
and the story on the page is the story file. Screenshots go to artifacts/screenshots/.

Chromium missing is a failure (site_helpers.chromium_path raises), never a skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.site_helpers import (
    CHART_STATES_JS,
    PANEL_KEYS,
    REPO,
    SCROLL_ALL_JS,
    STATIC_CHARTS_JS,
    story_lines,
)

pytestmark = pytest.mark.browser
SHOTS = REPO / "artifacts" / "screenshots"
WIDE = {"width": 1440, "height": 900}
NARROW = {"width": 390, "height": 844}


class Watched:
    """A page with its console errors and the requests that left the site's origin."""

    def __init__(self, page: Page, base_url: str):
        self.page = page
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("console", lambda m: m.type == "warning" and self.warnings.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def on_request(request: Any) -> None:
            url = request.url
            if not (url.startswith(base_url) or url.startswith(("data:", "blob:", "about:"))):
                self.foreign.append(url)

        page.on("request", on_request)

    def check_clean(self) -> None:
        assert self.foreign == [], f"requests left 127.0.0.1: {self.foreign}"
        assert self.errors == [], f"console errors: {self.errors}"


OPEN_CONTEXTS: list[Any] = []


@pytest.fixture(autouse=True)
def close_contexts() -> Iterator[None]:
    yield
    while OPEN_CONTEXTS:
        OPEN_CONTEXTS.pop().close()


def open_page(browser: Any, base_url: str, viewport: dict, scheme: str = "light") -> Watched:
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    OPEN_CONTEXTS.append(context)
    page = context.new_page()
    watched = Watched(page, base_url)
    page.goto(base_url, wait_until="load")
    return watched


def render_all(page: Page, timeout: float = 20_000) -> list[dict]:
    page.evaluate(SCROLL_ALL_JS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.fp-chart')]"
        ".every(el => ['rendered', 'error'].includes(el.dataset.fpState))",
        timeout=timeout,
    )
    return page.evaluate(CHART_STATES_JS)


def assert_drawn(states: list[dict]) -> None:
    assert states, "no charts on the story page"
    for state in states:
        assert state["state"] == "rendered", state
        if state["renderer"] == "canvas":
            assert state["colours"] >= 3, f"blank canvas: {state}"
        else:
            assert state["renderer"] == "svg" and state["marks"] > 0, f"no SVG marks: {state}"


def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(600)  # let the header's scroll transition finish
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def toggle_palette(page: Page) -> None:
    before = page.evaluate("document.body.dataset.mdColorScheme")
    page.locator("form[data-md-component=palette] label:visible").first.click()
    page.wait_for_function(f"document.body.dataset.mdColorScheme !== {before!r}")


def test_every_panel_renders_without_errors_or_foreign_requests(browser, base_url):
    watched = open_page(browser, base_url, WIDE)
    panels = watched.page.eval_on_selector_all(".fp-panel", "els => els.map(e => e.dataset.panel)")
    assert panels == PANEL_KEYS
    assert_drawn(render_all(watched.page))
    screenshot(watched.page, "wide-light")
    watched.check_clean()
    # Vega reports specs it has to repair (log scales with zero, odd scales) as "WARN ...".
    vega_warnings = [text for text in watched.warnings if text.startswith("WARN")]
    assert vega_warnings == [], f"Vega warnings: {vega_warnings}"


def test_dark_mode_rerenders_charts(browser, base_url):
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    light = render_all(page)
    assert {s["scheme"] for s in light} == {"default"}
    toggle_palette(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.fp-chart')].every(el => "
        "el.dataset.fpScheme === 'slate' && el.dataset.fpState === 'rendered')"
    )
    dark = page.evaluate(CHART_STATES_JS)
    assert_drawn(dark)
    for before, after in zip(light, dark, strict=True):
        assert before["background"] != after["background"], (before, after)
    # The charts drawn at build time show their image in the dark palette.
    static = static_shown(page)
    assert len(static) >= 8 and {chart["theme"] for chart in static} == {"dark"}, static
    screenshot(page, "wide-dark")
    watched.check_clean()


def test_charts_survive_instant_navigation(browser, base_url):
    """Land on another page first (no Vega loaded yet), go to the story, away, and back,
    all by instant navigation (the window object survives: no full reload)."""
    context = browser.new_context(viewport=WIDE)
    OPEN_CONTEXTS.append(context)
    page = context.new_page()
    watched = Watched(page, base_url)
    page.goto(base_url + "made.html", wait_until="load")
    page.evaluate("window.__fpSamePage = true")  # survives only if no full reload happens
    for tab, ready in [("Story", ".fp-chart"), ("How this was made", ".fp-tokens"),
                       ("Story", ".fp-chart")]:  # fmt: skip
        page.locator("a.md-tabs__link", has_text=tab).click()
        page.wait_for_selector(ready)
        assert page.evaluate("window.__fpSamePage === true"), f"{tab}: the page reloaded"
        if ready == ".fp-chart":
            assert_drawn(render_all(page))
    watched.check_clean()


def boxes(page: Page) -> list[tuple[dict, dict]]:
    pairs = []
    for key in PANEL_KEYS:
        story = page.locator(f"#row-{key} > .fp-story").bounding_box()
        panel = page.locator(f"#row-{key} > .fp-panel").bounding_box()
        pairs.append((story, panel))
    return pairs


def test_side_by_side_when_wide(browser, base_url):
    watched = open_page(browser, base_url, WIDE)
    for story, panel in boxes(watched.page):
        assert panel["x"] >= story["x"] + story["width"] - 1, (story, panel)
        assert abs(panel["y"] - story["y"]) < 2, "panel not level with its paragraph"
        assert story["width"] > 450 and panel["width"] > 450, (story, panel)


def test_stacked_when_narrow(browser, base_url):
    for scheme in ("light", "dark"):
        watched = open_page(browser, base_url, NARROW, scheme)
        page = watched.page
        for story, panel in boxes(page):
            assert panel["y"] >= story["y"] + story["height"] - 1, (story, panel)
            assert abs(panel["x"] - story["x"]) < 2
        assert_drawn(render_all(page))
        # Nothing wider than the phone: charts scroll inside their panel, not the page.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"], f"page is {width}px wide"
        screenshot(page, f"narrow-{scheme}")
        watched.check_clean()


# Per chart: is its spec a single view (layers allowed; no concat, facet or repeat), the
# minimum width it asks for (usermeta.minWidth: narrower panels scroll it), its panel's content
# width, and the width it is drawn at. An SVG that CSS scales down to its column still counts
# at the width Vega laid it out at: scaled, its text shrinks with it.
CHART_FIT_JS = """() => [...document.querySelectorAll('.fp-chart')].map(el => {
  const spec = JSON.parse(el.dataset.spec);
  const single = s => !['hconcat', 'vconcat', 'concat', 'facet', 'repeat'].some(k => k in s)
    && !['row', 'column', 'facet'].some(k => k in (s.encoding || {}))
    && (s.layer || []).every(single);
  const panel = el.closest('.fp-panel');
  const style = getComputedStyle(panel);
  const drawn = el.querySelector('.fp-vega svg, .fp-vega canvas');
  const laidOut = drawn && drawn.tagName === 'svg' ? drawn.width.baseVal.value : 0;
  return {
    panel: panel.dataset.panel,
    single: single(spec),
    minWidth: (spec.usermeta || {}).minWidth || 0,
    content: panel.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight),
    width: drawn ? Math.max(drawn.getBoundingClientRect().width, laidOut) : null,
  };
})"""


def static_shown(page: Page) -> list[dict]:
    """The static images the page shows (an interactive chart's, until it is drawn)."""
    return [chart for chart in page.evaluate(STATIC_CHARTS_JS) if chart["visible"]]


def misfits(page: Page) -> list[dict]:
    """Single-view charts wider than their panel (or than the minimum they ask for), or, in a
    panel wider than 600 px, narrower than 90% of it; drawn by Vega or shown as their static
    image, which must also never be shown narrower than it was laid out (its text would
    shrink)."""
    charts = page.evaluate(CHART_FIT_JS)
    for chart in static_shown(page):
        chart["minWidth"] = 0
        if chart["scale"] < 0.99:
            chart["width"] = None  # shrunk: a misfit
        charts.append(chart)
    single = [chart for chart in charts if chart["single"]]
    assert len(single) >= 5, f"expected several single-view charts: {charts}"
    return [
        chart
        for chart in single
        if chart["width"] is None
        or chart["width"] > max(chart["content"], chart["minWidth"]) + 1
        or (chart["content"] > 600 and chart["width"] < 0.9 * chart["content"])
    ]


def assert_fit(page: Page, when: str) -> None:
    """Vega lays a "container" chart out again on the window's resize event and draws on the
    next frame; give it a moment, then report what still does not fit."""
    page.wait_for_timeout(300)  # static images are laid out again by CSS alone
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(f"() => {{ const c = ({CHART_FIT_JS})().filter(c => c.single);"
                               " return c.every(c => c.width !== null"
                               " && c.width <= Math.max(c.content, c.minWidth) + 1"
                               " && (c.content <= 600 || c.width >= 0.9 * c.content)); }",
                               timeout=5_000)  # fmt: skip
    bad = misfits(page)
    assert bad == [], f"{when}: single-view charts that do not fit their panel: {bad}"


def test_single_view_charts_fit_their_panel(browser, base_url):
    """On a phone single views shrink to their panel instead of scrolling; on a desktop they
    fill it. Both hold after a palette switch (which draws every chart again) and after the
    window is resized either way (which only lays them out again)."""
    watched = open_page(browser, base_url, NARROW)
    page = watched.page
    assert_drawn(render_all(page))
    assert_fit(page, "390 px wide")
    toggle_palette(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.fp-chart')].every(el => "
        "el.dataset.fpScheme === 'slate' && el.dataset.fpState === 'rendered')"
    )
    assert_fit(page, "390 px wide, after the palette switch")
    page.set_viewport_size(WIDE)
    assert_fit(page, "resized from 390 to 1440 px wide")
    watched.check_clean()

    watched = open_page(browser, base_url, WIDE, "dark")
    page = watched.page
    assert_drawn(render_all(page))
    assert_fit(page, "1440 px wide")
    page.set_viewport_size(NARROW)
    assert_fit(page, "resized from 1440 to 390 px wide")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"page is {width}px wide after resizing"
    watched.check_clean()


def test_panel_permalinks_are_keyboard_reachable(browser, base_url):
    """Tab reaches a panel's permalink; following it focuses the panel, with a ring."""
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('fp-permalink')"):
            break
    else:
        pytest.fail("no panel permalink reachable with Tab")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement.classList.contains('fp-panel')")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    assert page.evaluate("location.hash").startswith("#panel-")


def test_story_text_matches_story_file(browser, base_url):
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    title = page.evaluate(
        "() => { const h = document.querySelector('.md-content h1').cloneNode(true);"
        " h.querySelectorAll('.headerlink').forEach(a => a.remove()); return h.textContent; }"
    )
    subtitle = page.inner_text(".fp-subtitle")
    blocks = page.eval_on_selector_all(
        ".fp-story > p, .fp-story pre",
        "els => els.map(e => e.tagName === 'PRE' ? e.textContent.replace(/\\n$/, '')"
        " : e.textContent)",
    )
    shown = [title, subtitle]
    for block in blocks:
        shown.extend(block.split("\n"))
    assert shown == story_lines()
    byline = page.inner_text(".fp-byline")
    assert "Andrej Karpathy" in byline and "27 March 2021" in byline
    link = page.get_attribute(".fp-byline a", "href")
    assert link == "https://karpathy.github.io/2021/03/27/forward-pass/"


def test_charts_render_from_file_url(browser, built_site):
    """Opened straight from disk, Material's document$ never fires; charts must still draw."""
    context = browser.new_context(viewport=WIDE)
    OPEN_CONTEXTS.append(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((built_site / "index.html").as_uri())
    assert_drawn(render_all(page))
    assert errors == []


def test_every_chart_is_an_svg_image_without_javascript(base_url, browser):
    """With JavaScript off, every chart figure shows one SVG image (its static image, in the
    light palette, laid out for its panel), named as an image; an interactive one says that
    it is interactive with scripts on. Nothing waits for a script."""
    for viewport in (NARROW, WIDE):
        context = browser.new_context(viewport=viewport, java_script_enabled=False)
        OPEN_CONTEXTS.append(context)
        page = context.new_page()
        page.goto(base_url, wait_until="load")
        figures = page.locator(".fp-figure").count()
        charts = page.evaluate(STATIC_CHARTS_JS)
        assert len(charts) == figures > 10
        for chart in charts:
            assert chart["shown"] == 1 and chart["loaded"] and chart["width"] > 0, chart
            assert chart["theme"] == "light" and chart["role"] == "img" and chart["name"], chart
            assert chart["layout"] == ("wide" if viewport == WIDE else "narrow"), chart
        notes = page.locator(".fp-noscript-note")
        assert notes.count() == page.locator(".fp-chart").count() > 0
        assert all(notes.nth(i).is_visible() for i in range(notes.count()))
        assert page.locator(".fp-explore:visible").count() == 0


def test_vega_runtime_waits_for_an_interactive_chart(browser, base_url):
    """A reader who only scrolls never fetches the Vega runtime, not even past interactive
    charts; a pointer entering one downloads it (nothing runs), and reaching for the chart
    runs it; charts without interaction never need it."""
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.wait_for_timeout(1000)
    interactive = page.eval_on_selector_all(
        ".fp-chart", "els => els.map(el => el.closest('.fp-panel').dataset.panel)"
    )
    first = page.locator(f"#panel-{interactive[0]}")
    assert first.bounding_box()["y"] > 900 + 600, "the first interactive chart is too near"
    assert not any(url.endswith("vega-bundle.js") for url in requested), requested
    assert page.evaluate("typeof window.vegaEmbed") == "undefined"
    # Every chart above it is already an image, drawn without the runtime.
    static = page.evaluate(STATIC_CHARTS_JS)
    above = [c for c in static if PANEL_KEYS.index(c["panel"]) < PANEL_KEYS.index(interactive[0])]
    assert above and all(c["loaded"] for c in above if c["visible"]), above
    page.mouse.move(5, 5)
    first.scroll_into_view_if_needed()
    page.evaluate("window.scrollBy(0, document.body.scrollHeight)")  # past every chart
    page.wait_for_timeout(1000)
    assert not any(url.endswith("vega-bundle.js") for url in requested), requested
    first.scroll_into_view_if_needed()
    chart = first.locator(".fp-chart").first
    chart.dispatch_event("pointerenter")
    page.wait_for_function("() => performance.getEntriesByType('resource')"
                           ".some(e => e.name.endsWith('vega-bundle.js'))")  # fmt: skip
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.vegaEmbed") == "undefined", "ran before it was wanted"
    assert chart.get_attribute("data-fp-state") == "static"
    chart.hover()
    page.mouse.move(5, 5, steps=3)  # a pointer moving over the chart reaches for it
    chart.hover()
    page.wait_for_function(
        "el => el.dataset.fpState === 'rendered'", arg=chart.element_handle(), timeout=30_000
    )
    assert page.evaluate("typeof window.vegaEmbed") == "function"
    assert_drawn([s for s in page.evaluate(CHART_STATES_JS) if s["state"] == "rendered"])
    watched.check_clean()


def test_explore_button_draws_the_chart_and_moves_focus_to_it(browser, base_url):
    """From the keyboard: the interactive chart's button draws it, and focus moves to its
    first control (or the chart)."""
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    button = page.locator(".fp-explore").first
    button.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('.fp-chart').dataset.fpState === 'rendered'",
        timeout=30_000,
    )
    assert page.evaluate("document.activeElement.closest('.fp-chart') !== null")
    assert not button.is_visible()
    watched.check_clean()


# WCAG 2 contrast of each text element's colour, blended over the first opaque background
# behind it. Panel text is small, so the bar is 4.5:1 (AA for normal text).
CONTRAST_JS = """
sel => {
  const rgba = s => {
    const m = s.match(/[\\d.]+/g).map(Number);
    return m.length === 3 ? [...m, 1] : m;
  };
  const channel = c => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const lum = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgba(getComputedStyle(el).backgroundColor);
      if (c[3] === 1) return c;
    }
    return [255, 255, 255, 1];
  };
  return [...document.querySelectorAll(sel)].filter(el => el.textContent.trim()).map(el => {
    const fg = rgba(getComputedStyle(el).color), bg = background(el);
    const mixed = fg.slice(0, 3).map((c, i) => c * fg[3] + bg[i] * (1 - fg[3]));
    const [hi, lo] = [lum(mixed), lum(bg)].sort((a, b) => b - a);
    return {text: el.textContent.trim().slice(0, 40), ratio: (hi + 0.05) / (lo + 0.05)};
  });
}
"""
TEXT_IN_PANELS = (
    ".fp-question, .fp-verdict, .fp-figure figcaption, .fp-caption li, .fp-caption p, "
    ".fp-subtitle, .fp-byline, .fp-story p"
)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_in_both_themes(browser, base_url, scheme):
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    if scheme == "dark":
        toggle_palette(page)
    measured = page.evaluate(CONTRAST_JS, TEXT_IN_PANELS)
    assert len(measured) > 50
    low = [m for m in measured if m["ratio"] < 4.5]
    assert low == [], f"text below 4.5:1 contrast in {scheme}: {low[:5]}"
