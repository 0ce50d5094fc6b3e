"""The panels' visual language: chart width, and colour scales from the site's one colour
language (`tracegen.colours`: a colour per meaning). Colours are left to the site's theme
except for data scales."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import colours

WIDTH = 440
SEQUENTIAL = colours.SEQUENTIAL  # perceptually uniform, colour-blind safe; high = bright
DIVERGING = "blueorange"
# Dense marks (hundreds to thousands of cells) draw faster on a canvas; the site reads this.
CANVAS = {"renderer": "canvas"}
# usermeta key: the narrowest a single view may be drawn, in px (axes and legends included);
# in a narrower panel it keeps this width and scrolls sideways. The site reads this.
MIN_WIDTH = "minWidth"


def colour_scale(labels: Sequence[str], this_model: str | None = None) -> dict[str, Any]:
    """A categorical colour scale (Vega-Lite's domain and range, for `alt.Scale(**...)`)
    that gives each label the colour of what it means (`colours.meaning_of`). A label the
    colour language has no word for (a component a trace names in its own words) is "rest",
    grey, never a colour taken at random: that would say something no other chart says with
    it. The committed traces' charts name every label (tests/test_colours.py)."""
    meanings = [colours.meaning_of(label, this_model) or "rest" for label in labels]
    return {"domain": list(labels), "range": [colours.colour_of(m) for m in meanings]}
