"""Shared pieces of the panels: story constants, number formatting, compact chart data,
token text, where in the prompt things are, and the few chart shapes several panels use.

Everything is a pure function of its arguments; charts are returned as Altair objects and
turned into `Chart` (a Vega-Lite dict plus its text alternative) by `to_chart`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import altair as alt
import numpy as np

from ..store import Trace
from ..text import (  # noqa: F401  (re-exported: the panels import these from here)
    escape,
    finite,
    fmt_bytes,
    fmt_count,
    js_string,
    show_token,
    token_html,
    visible_controls,
)

if TYPE_CHECKING:
    from . import Chart

# --- the story's own numbers (the only constants a caption may quote) -------------------------

GPT3_LAYERS = 96  # "the 32nd layer" of GPT-3, which has 96
GPT3_PARAMS = 175e9  # GPT-3 175B, the model of "Giving GPT-3 a Turing Test"
STORY_LAYER = 32  # "around the 32nd layer ..."
STORY_TOKEN = 400  # "... of the 400th token in the sequence"
THREE_QUARTERS = 0.75  # "My own consciousness extends about three quarters of the layers"

# --- verdicts ---------------------------------------------------------------------------------

BORNE_OUT = "borne out"
NOT_BORNE_OUT = "not borne out"
MIXED = "mixed"
CONTEXT = "context"

# --- chart geometry; colours are left to the site's theme except for data scales --------------

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


# --- numbers ----------------------------------------------------------------------------------


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


def fmt_pct(p: float) -> str:
    """A probability as a percentage with the precision it deserves: 67%, 4.2%, 0.31%, <0.01%."""
    p = float(p)
    if not math.isfinite(p):
        return "n/a"
    pct = 100 * p
    if pct >= 99.5 and pct < 100:
        return f"{pct:.1f}%"
    if pct >= 10:
        return f"{pct:.0f}%"
    if pct >= 1:
        return f"{pct:.1f}%"
    if pct >= 0.01:
        return f"{pct:.2f}%"
    return "under 0.01%" if pct > 0 else "0%"


def fmt_num(x: float, digits: int = 2) -> str:
    x = float(x)
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def fmt_int(n: float) -> str:
    return f"{int(n):,}"


def fmt_si(x: float, unit: str = "") -> str:
    """1.23e10 -> '12.3 G' + unit."""
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def fmt_seconds(s: float) -> str:
    s = float(s)
    if not math.isfinite(s):
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --- ranks ------------------------------------------------------------------------------------
# The trace stores ranks 0-based (lens_target_rank 0 = the top token). Every rank a reader
# sees, in a caption, an alt text or a tooltip, is 1-based: "1st" is the top. Convert here.

RANK_NOTE = "1 = top"


def shown_rank(rank: Any) -> Any:
    """A stored 0-based rank (an int or an array of them) as the reader sees it, 1-based;
    arrays come back as JSON-ready lists."""
    if np.ndim(rank) == 0:
        return int(rank) + 1
    return (np.asarray(rank, dtype=np.int64) + 1).tolist()


def fmt_rank(rank: int) -> str:
    """A stored 0-based rank in prose: 0 -> '1st', 4522 -> '4523rd'."""
    return ordinal(shown_rank(rank))


def rank_title(of: str | None = None) -> str:
    """The tooltip title of a field that holds 1-based ranks (see `shown_rank`)."""
    return f"rank{f' of {of}' if of else ''} ({RANK_NOTE})"


# --- token text -------------------------------------------------------------------------------


def vocabulary(trace: Trace) -> Callable[[int], str]:
    """id -> token text (`Trace.vocabulary`); an id the trace spells nowhere shows as #id."""
    table = trace.vocabulary
    return lambda token_id: table.get(int(token_id), f"#{int(token_id)}")


# --- positions in the prompt ------------------------------------------------------------------


def answer_position(trace: Trace) -> int:
    """The last prompt position ("A: Your"), where the model predicts its first answer token."""
    return max(trace.n_prompt - 1, 0)


def step_position(trace: Trace, step: int) -> int:
    """The position whose prediction is generated token `step` (0-based)."""
    return answer_position(trace) + step


# Words that answer "how many": the story's "zero", "no" and "two", and the other small counts
# a model might pick. Other watched tokens (such as " foot") are not counts.
COUNT_WORDS = {
    "no",
    "zero",
    "none",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
}


def is_count_word(text: str) -> bool:
    word = text.strip().lower()
    return word in COUNT_WORDS or word.isdigit()


def count_tokens(trace: Trace) -> list[tuple[int, int, str]]:
    """(index into watched, token id, text) for the watched tokens that are counts."""
    return [
        (w, int(entry["id"]), str(entry["text"]))
        for w, entry in enumerate(trace.watched)
        if is_count_word(str(entry["text"]))
    ]


@dataclass(frozen=True)
class CountPosition:
    position: int
    step: int  # which generated token is predicted there (0-based)
    how: str  # one sentence: how the position was found, for the caption


def count_position(trace: Trace) -> CountPosition:
    """Where the model has to say how many eyes.

    1. the first step of the continuation whose greedy token is a watched count word;
    2. otherwise the traced step where the watched count words together are most probable;
    3. otherwise the last prompt position.
    """
    counts = count_tokens(trace)
    count_ids = [token_id for _, token_id, _ in counts]
    n_steps = trace.n_positions - answer_position(trace)
    for step, token_id in enumerate(trace.generated_ids[:n_steps]):
        if token_id in count_ids:
            text = token_html(trace.generated_strings[step])
            return CountPosition(
                step_position(trace, step),
                step,
                f"the model emits the count {text} at step {step + 1} of its continuation",
            )
    if counts and n_steps > 0:
        final = trace.derived("watched_probs")[-1, answer_position(trace) :]  # [steps, W]
        totals = np.nan_to_num(final[:, [w for w, _, _ in counts]].sum(-1), nan=0.0)
        step = int(np.argmax(totals))
        if totals[step] > 0:
            return CountPosition(
                step_position(trace, step),
                step,
                f"no count word was generated; this is the step where the watched counts are "
                f"most probable together ({fmt_pct(totals[step])})",
            )
    return CountPosition(
        answer_position(trace), 0, "no count word is watched or generated; the last prompt position"
    )


def prompt_text(trace: Trace) -> str:
    return "".join(trace.token_strings[: trace.n_prompt])


def leading_special_tokens(trace: Trace) -> int:
    """How many positions at the start of the trace are a special token the tokenizer added
    (a BOS such as Gemma's <bos>) rather than prompt text: 1 or 0."""
    tokenizer = trace.manifest.get("tokenizer") or {}
    if not trace.token_strings or trace.n_prompt < 1:
        return 0
    bos = tokenizer.get("bos_token")
    first = trace.token_strings[0]
    return int(bool(tokenizer.get("adds_bos")) or (bool(bos) and first == bos))


def context_before(trace: Trace, position: int, n_tokens: int = 6, same_line: bool = False) -> str:
    """The text of the last `n_tokens` tokens up to and including `position`, newlines shown as
    ⏎; with `same_line`, only what follows the last newline in that window (when anything
    does). A leading BOS is left out."""
    start = max(position + 1 - n_tokens, leading_special_tokens(trace), 0)
    text = "".join(trace.token_strings[start : position + 1])
    if same_line and text.rstrip("\n").count("\n"):
        tail = text.rstrip("\n").rsplit("\n", 1)[1]
        text = tail if tail.strip() else text
    return text.replace("\n", " ⏎ ")


def line_of_each_token(trace: Trace) -> list[int]:
    """The prompt line each prompt token sits on (a token holding a newline ends its line)."""
    lines, line = [], 0
    for text in trace.token_strings[: trace.n_prompt]:
        lines.append(line)
        line += text.count("\n")
    return lines


def qa_block_starts(trace: Trace) -> list[int]:
    """Token positions (in trace coordinates) where a "Q:" line starts, in order.

    Found from the decoded text, so any tokenizer works. A special token the tokenizer put
    in front (BOS) is not prompt text: the search starts after it, so the first "Q:" still
    counts as starting a line. A prompt with no Q lines gives [0].
    """
    skip = leading_special_tokens(trace)
    strings = trace.token_strings[skip : trace.n_prompt]
    text = "".join(strings)
    char_starts = [
        0 if match.start() == 0 else match.start() + 1 for match in re.finditer(r"(?:^|\n)Q:", text)
    ]
    offsets = np.cumsum([0] + [len(t) for t in strings])
    found = {int(np.searchsorted(offsets, c, side="right") - 1) for c in char_starts}
    starts = sorted(skip + position for position in found)
    return starts or [0]


def start_span(trace: Trace) -> range:
    """The first Q/A block: "the start of the prompt" that the narrator re-reads."""
    starts = qa_block_starts(trace)
    end = starts[1] if len(starts) > 1 else max(1, trace.n_prompt // 10)
    return range(0, min(end, trace.n_prompt))


def end_span(trace: Trace) -> range:
    """The last two Q/A blocks, which the story quotes as "the end of the sequence"."""
    starts = qa_block_starts(trace)
    begin = starts[-2] if len(starts) >= 2 else trace.n_prompt - max(1, trace.n_prompt // 4)
    return range(max(begin, 0), trace.n_prompt)


def depth_at(fraction: float, n_layers: int) -> int:
    """The depth at `fraction` of the way up an `n_layers` model: the one rounding rule for
    every panel (the story's layer 32 of 96, its three quarters).

    Depth d is the residual stream after layer d (0 = the embeddings), so layers 1..d are
    the layers "up to" it and layers d+1..L the ones above it. The depth is the nearest whole
    one, and a tie (0.75 x 10 = 7.5) goes down, so that the layers up to it never make more
    than `fraction` of the model on a tie.
    """
    n_layers = max(int(n_layers), 0)
    return min(max(math.ceil(fraction * n_layers - 0.5 - 1e-9), 0), n_layers)


def story_depth(n_layers: int) -> tuple[float, int]:
    """Where "layer 32 of 96" falls on this model: (fraction of depth, its depth)."""
    fraction = STORY_LAYER / GPT3_LAYERS
    return fraction, depth_at(fraction, n_layers)


def three_quarters_depth(n_layers: int) -> int:
    """Where the narrator's consciousness ends ("about three quarters of the layers"): layers
    1..this are the narrator's, layers above it "the last quarter"."""
    return depth_at(THREE_QUARTERS, n_layers)


# --- components -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """An attribution component: kind "embed", "attn", "mlp" or "other"; layer 1..L (0 for
    the embeddings, L+1 for anything after the last block such as a norm bias)."""

    name: str
    kind: str
    layer: int

    @property
    def label(self) -> str:
        """In prose, layers count from 1 (the trace's component names count blocks from 0)."""
        if self.kind == "embed":
            return "embeddings"
        if self.kind in ("attn", "mlp"):
            return f"{'attention' if self.kind == 'attn' else 'MLP'} {self.layer}"
        return self.name


def parse_components(names: Sequence[str], n_layers: int) -> list[Component]:
    parsed = []
    for name in names:
        lowered = name.lower()
        kind = next((k for k in ("attn", "mlp") if k in lowered), None)
        digits = re.findall(r"\d+", lowered)
        if "embed" in lowered and "unembed" not in lowered:
            parsed.append(Component(name, "embed", 0))
        elif kind and digits:
            parsed.append(Component(name, kind, int(digits[0]) + 1))
        else:
            parsed.append(Component(name, "other", n_layers + 1))
    return parsed


# --- charts -----------------------------------------------------------------------------------


def to_chart(chart: alt.TopLevelMixin, alt_text: str) -> Chart:
    """Validate and serialise; `to_dict` raises if the spec is not valid Vega-Lite.

    A single view (layers included) is fitted to its panel by `fit_to_panel`. Several views
    side by side or stacked cannot be fitted declaratively; they keep their widths and scroll
    inside the panel when it is narrower.
    """
    from . import Chart  # the package imports this module, so import at call time

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


def html_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def caption(lead: str, items: Iterable[str] = ()) -> str:
    items = list(items)
    return f"<p>{lead}</p>" + (html_list(items) if items else "")


def head_label(layer: int, head: int) -> str:
    """Layers and heads are counted from 1 in prose, as the story counts its 32nd layer."""
    return f"layer {layer + 1}, head {head + 1}"


def safe_argmax(values: np.ndarray) -> int:
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    return int(np.argmax(values)) if values.size else 0
