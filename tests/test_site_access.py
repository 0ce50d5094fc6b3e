"""Every reader, in headless chromium: charts that fit their panel at phone to desktop widths,
legible chart text, keyboard and screen-reader access (axe-core, Tab with a focus ring,
picking a position with the keyboard), and the reading mode.

Chromium missing is a failure (site_helpers.chromium_path raises), never a skip. axe-core
comes from the `axe-playwright-python` package (its axe.min.js, injected into the page from
disk: nothing is fetched).
"""

from __future__ import annotations

from importlib import resources

import pytest

from tests.site_helpers import PANEL_KEYS
from tests.test_site_browser import (  # noqa: F401 (close_contexts: an autouse fixture)
    OPEN_CONTEXTS,
    WIDE,
    assert_drawn,
    close_contexts,
    open_page,
    render_all,
    static_shown,
)

pytestmark = pytest.mark.browser
WIDTHS = (320, 390, 768, 1440)
PAGES = ("index.html", "made.html", "trace-schema.html", "compatibility.html", "404.html")

# Per chart: its panel, the width it is drawn at (an SVG counts at the width Vega laid it out
# at), the width its panel gives it, whether it shows the scrolling cue, and whether its spec
# holds a prompt laid out in characters (the one kind of view allowed to scroll).
FIT_JS = """() => [...document.querySelectorAll('.fp-chart')].map((el, index) => {
  const drawn = el.querySelector('.fp-vega > svg, .fp-vega > canvas');
  const laid = drawn && drawn.tagName === 'svg' ? drawn.width.baseVal.value : 0;
  return {
    index, panel: el.closest('.fp-panel').dataset.panel,
    width: drawn ? Math.max(drawn.getBoundingClientRect().width, laid) : null,
    room: el.clientWidth,
    cue: el.classList.contains('fp-scrolls') && el.tabIndex === 0
      && getComputedStyle(el, '::before').content.includes('Scroll'),
    strip: forwardPass.hasTextStrip(JSON.parse(el.dataset.spec)),
  };
})"""


@pytest.mark.parametrize("width", WIDTHS)
def test_every_chart_fits_its_panel(browser, base_url, width):
    """No chart is wider than its panel, at a phone's width and up; a prompt laid out in
    characters may scroll, with a visible cue. The page itself never scrolls sideways."""
    watched = open_page(browser, base_url, {"width": width, "height": 900})
    page = watched.page
    assert_drawn(render_all(page, timeout=60_000))
    charts = page.evaluate(FIT_JS)
    assert len(charts) >= 2
    # Charts drawn at build time: never wider than their panel, never shown narrower than
    # laid out (which would shrink their text), unless a prompt in characters that scrolls.
    static = static_shown(page)
    assert len(static) + len(charts) == page.locator(".fp-figure").count()
    bad = [c for c in static if c["width"] > c["room"] + 1 or c["scale"] < 0.99]
    assert bad == [], f"{width} px: static charts that do not fit: {bad}"
    wide = [c for c in charts if c["width"] > c["room"] + 1]
    assert [c for c in wide if not c["strip"]] == [], f"{width} px: charts wider than their panel"
    assert all(c["cue"] for c in wide), f"{width} px: scrolling without a cue: {wide}"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    watched.check_clean()


# Every text element of every chart, drawn again as SVG from the spec the page drew it with
# (canvas charts too): its font size, its role, and whether a legend label was cut ("…").
TEXT_JS = """async () => {
  const found = [];
  for (const entry of forwardPass.entries) {
    const host = document.createElement('div');
    host.style.width = entry.el.clientWidth + 'px';
    entry.el.after(host);
    const spec = forwardPass.prepare(entry, entry.el.clientWidth);
    const result = await vegaEmbed(host, spec, {renderer: 'svg', actions: false,
                                                config: forwardPass.config(entry.el.clientWidth)});
    for (const t of host.querySelectorAll('svg text')) {
      if (!t.textContent.trim()) continue;
      found.push({text: t.textContent.slice(0, 30), size: parseFloat(t.getAttribute('font-size')
        || getComputedStyle(t).fontSize), role: t.parentElement.getAttribute('class') || ''});
    }
    result.finalize();
    host.remove();
  }
  return found;
}"""


@pytest.mark.parametrize("width", [390, 1440])
def test_chart_text_is_legible(browser, base_url, width):
    watched = open_page(browser, base_url, {"width": width, "height": 900})
    page = watched.page
    assert_drawn(render_all(page, timeout=60_000))
    texts = page.evaluate(TEXT_JS)
    texts += [text for chart in static_shown(page) for text in chart["texts"]]
    assert len(texts) > 300
    small = [t for t in texts if t["size"] < 11]
    assert small == [], f"chart text under 11 px: {small[:5]}"
    title_roles = ("role-axis-title", "role-legend-title")
    titles = [t for t in texts if any(role in t["role"] for role in title_roles)]
    assert titles and all(t["size"] >= 12 for t in titles), [t for t in titles if t["size"] < 12]
    cut = [t for t in texts if "role-legend-label" in t["role"] and t["text"].endswith("…")]
    assert cut == [], f"legend labels cut: {cut}"


AXE_JS = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.filter(v => ['serious', 'critical'].includes(v.impact)).map(v => ({
    id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ': '
      + (n.failureSummary || '').slice(0, 160)),
  }));
}"""


def axe_source() -> str:
    return (resources.files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("name", PAGES)
def test_axe_finds_no_serious_violation(browser, base_url, name, scheme):
    """axe-core on each page in each palette, charts drawn: no serious or critical finding."""
    context = browser.new_context(viewport=WIDE, color_scheme=scheme)
    OPEN_CONTEXTS.append(context)
    page = context.new_page()
    page.goto(base_url + name.removesuffix("index.html"), wait_until="load")
    if name == "index.html":
        assert_drawn(render_all(page))
    expected = "slate" if scheme == "dark" else "default"
    assert page.evaluate("document.body.dataset.mdColorScheme") == expected
    page.add_script_tag(content=axe_source())
    violations = page.evaluate(AXE_JS)
    assert violations == [], f"{name} ({scheme}): {violations}"


# Everything on the story page that a keyboard user must reach: the charts' controls (one
# stop per radio group: the checked button), the reading switch, the permalinks, and charts
# that scroll sideways.
CONTROLS_JS = """() => {
  const visible = el => el.offsetParent !== null && !el.closest('[hidden]');
  const all = [...document.querySelectorAll(
    '.fp-panel input, .fp-panel select, .fp-reading-toggle, .fp-evidence-toggle, '
    + '.fp-permalink, .fp-chart.fp-scrolls, .fp-guide > summary')].filter(visible);
  return all.filter(el => el.type !== 'radio' || el.checked).map((el, i) => {
    el.dataset.fpControl = i;
    return i;
  });
}"""


def test_every_control_is_reachable_by_tab_with_a_focus_ring(browser, base_url):
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    assert_drawn(render_all(page))
    controls = set(page.evaluate(CONTROLS_JS))
    kinds = page.evaluate(
        "() => [...document.querySelectorAll('[data-fp-control]')].map(el => el.tagName)"
    )
    assert {"INPUT", "SELECT", "BUTTON", "A"} <= set(kinds), kinds
    page.evaluate("window.scrollTo(0, 0); document.activeElement.blur()")
    reached: set[int] = set()
    no_ring: list[str] = []
    for _ in range(400):
        page.keyboard.press("Tab")
        seen = page.evaluate(
            "() => { const el = document.activeElement; const style = getComputedStyle(el);"
            " return {control: el.dataset.fpControl, tag: el.tagName + '.' + el.className,"
            " ring: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0"
            " || style.boxShadow !== 'none', body: el === document.body}; }"
        )
        if seen["control"] is not None:
            reached.add(int(seen["control"]))
            if not seen["ring"]:
                no_ring.append(seen["tag"])
        if reached == controls:
            break
    assert controls - reached == set(), f"never reached by Tab: {sorted(controls - reached)}"
    assert no_ring == [], f"focused without a visible ring: {no_ring}"


def test_charts_are_named_images_with_controls_beside_them(browser, base_url):
    """The drawn chart is the image: a short name, the caption as its description, read
    once; no control sits inside an element with role="img"."""
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    assert_drawn(render_all(page))
    images = page.evaluate(
        "() => [...document.querySelectorAll('.fp-chart')].map(el => {"
        " const img = el.querySelector('.fp-vega > [role=img]');"
        " const caption = img && document.getElementById(img.getAttribute('aria-describedby'));"
        " return {name: img && img.getAttribute('aria-label'),"
        " caption: caption ? caption.textContent : null}; })"
    )
    # Charts drawn at build time: the box of images is the image (each image is decorative).
    static = static_shown(page)
    assert len(static) >= 8
    images += [{"name": c["name"], "caption": c["caption"]} for c in static if c["role"] == "img"]
    assert len(images) == page.locator(".fp-figure").count()
    for image in images:
        assert image["name"] and image["caption"], image
        assert len(image["name"]) <= 100 and image["name"] != image["caption"], image
    nested = page.evaluate(
        "document.querySelectorAll('[role=img] :is(input, select, button, a, [tabindex])').length"
    )
    assert nested == 0


def test_picking_a_lens_position_by_keyboard(browser, base_url):
    """The logit lens's position (a click on a column) can be picked with the arrow keys."""
    watched = open_page(browser, base_url, WIDE)
    page = watched.page
    assert_drawn(render_all(page))
    slider = page.locator("#panel-p6 .vega-bind input[type=range]")
    assert slider.count() == 1
    store = (
        "() => { const el = document.querySelector('#panel-p6 .fp-chart');"
        " const e = [...forwardPass.entries].find(e => e.el === el);"
        " return e.result.view.data('pick_store').map(d => d.values[0]); }"
    )
    before = page.evaluate(store)
    slider.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"({store})()[0] !== {before[0]}")
    after = page.evaluate(store)
    assert after and before and after[0] == before[0] - 2, (before, after)
    watched.check_clean()


def test_reading_mode_folds_panels_and_is_remembered(browser, base_url):
    context = browser.new_context(viewport=WIDE)
    OPEN_CONTEXTS.append(context)
    page = context.new_page()
    page.goto(base_url, wait_until="load")
    toggle = page.locator(".fp-reading-toggle")
    assert toggle.is_visible() and toggle.get_attribute("aria-checked") == "false"
    assert page.locator(".fp-panel:visible").count() == len(PANEL_KEYS)
    toggle.click()
    assert page.locator(".fp-panel:visible").count() == 0
    assert page.locator(".fp-evidence-toggle:visible").count() == len(PANEL_KEYS)
    # Remembered across visits.
    page.reload(wait_until="load")
    assert page.locator(".fp-reading-toggle").get_attribute("aria-checked") == "true"
    assert page.locator(".fp-panel:visible").count() == 0
    # One panel's evidence, on demand; its charts show when shown (as their image), and an
    # interactive one draws when reached for.
    button = page.locator("#row-p6 .fp-evidence-toggle")
    button.click()
    assert button.get_attribute("aria-expanded") == "true"
    assert page.locator(".fp-panel:visible").count() == 1
    page.wait_for_function(
        "[...document.querySelectorAll('#panel-p6 .fp-static > img')]"
        ".some(img => img.offsetParent !== null && img.complete && img.naturalWidth > 0)"
    )
    page.locator("#panel-p6 .fp-chart").first.dispatch_event("pointerdown")
    page.wait_for_function(
        "[...document.querySelectorAll('#panel-p6 .fp-chart')]"
        ".every(el => el.dataset.fpState === 'rendered')"
    )
    # A permalink to a folded panel opens it.
    page.goto(base_url + "#panel-p2", wait_until="load")
    page.wait_for_function("document.querySelector('#panel-p2').offsetParent !== null")
    page.locator(".fp-reading-toggle").click()
    assert page.locator(".fp-panel:visible").count() == len(PANEL_KEYS)
    page.reload(wait_until="load")
    assert page.locator(".fp-reading-toggle").get_attribute("aria-checked") == "false"
