"""Charts drawn at build time (tracegen/static_charts.py): laid out for the panel, in each
palette, and compacted without changing what they draw. The browser tests check them as the
page shows them (test_site_browser, test_site_access)."""

from __future__ import annotations

import re

import pytest

from tracegen import static_charts


def test_compact_merges_cells_and_labels_and_keeps_the_rest() -> None:
    svg = (
        '<svg width="10" height="10"><g class="mark-rect role-mark x">'
        '<path d="M1.23456,2h1v1h-1Z" fill="rgb(1, 2, 3)"/><path d="M3,2h1v1h-1Z" '
        'fill="rgb(1, 2, 3)"/><path d="M5,2h1v1h-1Z" fill="#fff"/></g>'
        '<g class="mark-text role-mark y"><text transform="translate(1,2)" fill="#000">a</text>'
        '<text transform="translate(3,4)" fill="#000">b</text></g>'
        '<g class="mark-text role-axis-label"><text transform="translate(1,2) rotate(-45)" '
        'fill="#000">c</text></g></svg>'
    )
    out = static_charts.compact(svg)
    assert '<path d="M1.23,2h1v1h-1ZM3,2h1v1h-1Z" fill="#010203"/>' in out
    assert '<path d="M5,2h1v1h-1Z" fill="#fff"/>' in out
    assert (
        '<text fill="#000"><tspan x="1" y="2">a</tspan><tspan x="3" y="4">b</tspan></text>' in out
    )
    assert 'transform="translate(1,2) rotate(-45)"' in out  # rotated labels stay as they are
    assert static_charts.compact(out) == out


def test_themed_replaces_every_placeholder() -> None:
    svg = "".join(f'<text fill="{colour}">x</text>' for colour in static_charts.THEME_COLOURS)
    for theme, colours in static_charts.PALETTES.items():
        out = static_charts.themed(svg, theme)
        assert not any(placeholder in out for placeholder in static_charts.THEME_COLOURS)
        assert all(colour in out for colour in colours.values())


@pytest.mark.parametrize("width", [static_charts.NARROW_PX, static_charts.WIDE_PX])
def test_views_side_by_side_fit_the_layouts_width(width: int) -> None:
    """Three views of 300 px side by side: stacked in a phone's layout, scaled down to fit
    in both, text never under 11 px."""
    view = {
        "width": 300,
        "height": 60,
        "mark": "bar",
        "encoding": {
            "x": {"field": "a", "type": "ordinal", "axis": {"labelFontSize": 8}},
            "y": {"field": "b", "type": "quantitative"},
        },
    }
    spec = {"data": {"values": [{"a": i, "b": i * i} for i in range(5)]}, "hconcat": [view] * 3}
    svg = static_charts.laid_out(spec, width)
    assert 0 < static_charts.svg_width(svg) <= width
    sizes = [float(size) for size in re.findall(r'font-size="([\d.]+)px"', svg)]
    assert sizes and min(sizes) >= static_charts.MIN_TEXT
