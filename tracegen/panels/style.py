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


def colour_scale(labels: Sequence[str], this_model: str | None = None) -> dict[str, Any]:
    """A categorical colour scale (Vega-Lite's domain and range, for `alt.Scale(**...)`)
    that gives each label the colour of what it means (`colours.meaning_of`). A label the
    colour language has no word for is an error, not a colour picked at random: a chart
    would then say something no other chart says with that colour."""
    fitted = colours.scale_for(list(labels), this_model)
    if fitted is None:
        unknown = [label for label in labels if colours.meaning_of(label, this_model) is None]
        raise ValueError(f"no meaning in tracegen/colours.py for the labels {unknown}")
    return fitted
# Dense marks (hundreds to thousands of cells) draw faster on a canvas; the site reads this.
CANVAS = {"renderer": "canvas"}
# usermeta key: the narrowest a single view may be drawn, in px (axes and legends included);
# in a narrower panel it keeps this width and scrolls sideways. The site reads this.
MIN_WIDTH = "minWidth"
