"""The panels' visual language: chart width, colour scales and the palette for categories.
Colours are left to the site's theme except for data scales."""

from __future__ import annotations

WIDTH = 440
SEQUENTIAL = "viridis"  # perceptually uniform and colour-blind safe
DIVERGING = "blueorange"
# Categories (words, models) get the Okabe-Ito palette, colour-blind safe, with grey for its
# black so that every colour reads on the light and the dark page; yellow, faint on white, last.
CATEGORICAL = [
    "#D55E00",  # vermillion
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#999999",  # grey
    "#F0E442",  # yellow
]
# Dense marks (hundreds to thousands of cells) draw faster on a canvas; the site reads this.
CANVAS = {"renderer": "canvas"}
# usermeta key: the narrowest a single view may be drawn, in px (axes and legends included);
# in a narrower panel it keeps this width and scrolls sideways. The site reads this.
MIN_WIDTH = "minWidth"
