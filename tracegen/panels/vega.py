"""Vega-Lite plumbing shared by the panels' chart functions: compact JSON-ready numbers,
expressions that label values, data shipped as arrays, and fitting a chart to its panel.
Only chart functions (and `to_chart`) use this module."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import altair as alt
import numpy as np

from ..text import js_string
from .types import Chart


def rounded(values: Any, digits: int = 3) -> Any:
    """A JSON-ready nested list: float64 before rounding (float32 prints 0.12600000202655792),
    integral values as ints ("0" not "0.0"), NaN and infinities as null."""
    array = np.asarray(values, dtype=np.float64)
    array = np.round(array, digits)

    def clean(x: Any) -> Any:
        if isinstance(x, list):
            return [clean(item) for item in x]
        if not math.isfinite(x):
            return None
        return int(x) if x == int(x) else x

    return clean(array.tolist())


def sig(values: Any, digits: int = 3) -> Any:
    """Like `rounded` but keeps `digits` significant digits (for values spanning decades)."""
    array = np.asarray(values, dtype=np.float64)
    flat = [_round_sig(float(x), digits) for x in array.ravel()]
    return rounded(np.array(flat).reshape(array.shape), 12)


def _round_sig(x: float, digits: int) -> float:
    if not math.isfinite(x) or x == 0:
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def label_expr(field: str, labels: dict[str, str]) -> str:
    """A Vega expression mapping a field's short codes to readable labels."""
    # Codes and labels may be trace text (component names): literals through js_string.
    parts = [
        f"datum.{field} == {js_string(code)} ? {js_string(label)}" for code, label in labels.items()
    ]
    return " : ".join([*parts, f"datum.{field}"])


def value_labels(names: dict[Any, str]) -> str:
    """A Vega expression that shows an axis value as its label (labels may be trace text,
    so every literal goes through js_string)."""
    pairs = ", ".join(f"{js_string(str(key))}: {js_string(label)}" for key, label in names.items())
    return "{" + pairs + "}[datum.value]"


def to_chart(chart: alt.TopLevelMixin, alt_text: str) -> Chart:
    """Validate and serialise; `to_dict` raises if the spec is not valid Vega-Lite.

    A single view (layers included) is fitted to its panel by `fit_to_panel`. Several views
    side by side or stacked cannot be fitted declaratively; they keep their widths and scroll
    inside the panel when it is narrower.
    """
    spec = chart.to_dict()
    if is_single_view(spec):
        spec = fit_to_panel(spec)
        alt.TopLevelSpec.from_dict(spec)  # still valid Vega-Lite (raises if not)
    return Chart(spec=spec, alt=alt_text)


# Vega-Lite fits only single and layered views to a width; these make a chart several views.
MULTI_VIEW = frozenset({"hconcat", "vconcat", "concat", "facet", "repeat"})
FACET_CHANNELS = frozenset({"row", "column", "facet"})
TITLE_LINE = 40  # characters of a title line: ~300 px in Vega's 13 px bold, a phone's panel
TITLE_PX = 7.5  # px per character of a title, generously: wider panels keep it on one line
AXIS_PX = 60  # px of a chart beside its plot: the y axis, its labels and title
NARROW = 480  # px: in a narrower panel, bottom legends list their entries in one column


def is_single_view(spec: dict[str, Any]) -> bool:
    """One view or a layer of views (no concatenation, facet or repeat at any level)."""
    if MULTI_VIEW & spec.keys() or FACET_CHANNELS & (spec.get("encoding") or {}).keys():
        return False
    return all(is_single_view(layer) for layer in spec.get("layer", []))


def fit_to_panel(spec: dict[str, Any]) -> dict[str, Any]:
    """A single view that fills its panel's width: as wide as the panel on a desktop and
    shrinking with it on a phone. The width it was built with only sets the proportions of
    the static fallback image; the height stays as built (fit-x, not fit).

    What would not shrink with it is made to: a long title breaks into lines, and a bottom
    legend in several columns drops to one when the panel is narrow."""
    fitted = {
        **spec,
        "width": "container",
        "autosize": {"type": "fit-x", "contains": "padding"},
    }
    title = spec.get("title")
    if isinstance(title, str):
        fitted["title"] = {"text": wrap_title(title)}
    elif isinstance(title, dict) and isinstance(title.get("text"), str):
        fitted["title"] = {**title, "text": wrap_title(title["text"])}
    return _narrow_legends(fitted)


def wrap_title(text: str) -> str | dict[str, str]:
    """A title that breaks into lines of at most TITLE_LINE characters (at spaces) when the
    panel is narrower than the title is long, as a Vega-Lite expression; short ones as they
    are."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= TITLE_LINE:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) < 2:
        return text
    one, several = (json.dumps(t, ensure_ascii=False) for t in (text, lines))
    return {"expr": f"{narrower_than(TITLE_PX * len(text) + AXIS_PX)} ? {several} : {one}"}


def narrower_than(px: float) -> str:
    """A Vega expression: is the chart's container narrower than `px`? True without a page
    (a static image). It reads the container, not the plot's `width`, which autosize shrinks
    after laying the chart out (a title or legend changing shape then would not be laid out
    again); `width` is named only so that a window resize evaluates it again."""
    return f"!(containerSize()[0] + 0 * width >= {round(px)})"


def _narrow_legends(spec: dict[str, Any]) -> dict[str, Any]:
    encoding = {}
    for channel, definition in (spec.get("encoding") or {}).items():
        legend = definition.get("legend") if isinstance(definition, dict) else None
        columns = legend.get("columns") if isinstance(legend, dict) else None
        if isinstance(columns, int) and columns > 1 and legend.get("orient") == "bottom":
            legend = {**legend, "columns": {"expr": f"{narrower_than(NARROW)} ? 1 : {columns}"}}
            definition = {**definition, "legend": legend}
        encoding[channel] = definition
    narrowed = {**spec, **({"encoding": encoding} if "encoding" in spec else {})}
    if "layer" in spec:
        narrowed["layer"] = [_narrow_legends(layer) for layer in spec["layer"]]
    return narrowed


def columns(**arrays: Iterable[Any]) -> alt.Data:
    """One row holding one array per field: the compact way to ship a few series. Flatten it
    in Vega-Lite with `indexed`."""
    return alt.Data(values=[{name: list(values) for name, values in arrays.items()}])


def indexed(
    chart: alt.TopLevelMixin,
    fields: Sequence[str],
    index: str = "i",
    groupby: Sequence[str] | None = None,
    start: int = 0,
) -> alt.TopLevelMixin:
    """Flatten parallel array fields into rows and number them from `start`."""
    chart = chart.transform_flatten(list(fields))
    window = {"groupby": list(groupby)} if groupby else {}
    chart = chart.transform_window(_n="row_number()", **window)
    return chart.transform_calculate(**{index: f"datum._n - 1 + {start}"})


def cell_ink(field: str, threshold: float = 0.55) -> Any:
    """Text colour for a label on a viridis cell whose value (domain 0..1) is `field`: black on
    the light (yellow-green) end, white on the dark end. The cell's colour decides it, not the
    page theme."""
    return alt.condition(f"datum.{field} > {threshold}", alt.value("#000000"), alt.value("#ffffff"))


def depth_axis(n_layers: int, title: str = "depth (0 = embeddings)") -> alt.Axis:
    step = max(1, int(math.ceil((n_layers + 1) / 16)))
    return alt.Axis(title=title, values=list(range(0, n_layers + 1, step)), format="d")
