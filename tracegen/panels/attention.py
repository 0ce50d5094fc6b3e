"""¶3: "I spent a layer re-reading the start of the prompt": attention from the last prompt
position back over the prompt, per layer and head.

The first token draws attention from most heads whatever it says (an attention sink: a place
to park attention that should change nothing). It is reported by name and kept apart from
re-reading: reading the start means attention on the first Q/A block beyond its first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np

from ..store import Trace
from .story import (
    answer_position,
    line_of_each_token,
    sink_share_from,
    sink_shares,
    start_span,
    unplaced_attention,
)
from .style import CANVAS, SEQUENTIAL, WIDTH
from .types import BORNE_OUT, NOT_BORNE_OUT, PanelDef, Words
from .words import caption, count, escape, fmt_pct, head_label, token_html, verb, visible_controls

# A head re-reads the start when it puts at least this multiple of the uniform share on the
# first Q/A block (first token excluded).
START_READ_FACTOR = 2.0
# A head is a sink head when, averaged over query positions, over half its attention lands on
# the first token.
SINK_SHARE = 0.5
# The token strip ships, per layer and head, only the keys with at least this much attention
# (in thousandths), at most STRIP_TOP of them: the rest would be invisible anyway.
STRIP_MIN_PERMILLE = 10
STRIP_TOP = 12
# The heatmap has at most this many columns: a longer prompt's positions are summed in spans
# of equal length (2,078 positions drawn one by one made a 1.6 MB image; the story's 186 fit).
HEAT_COLUMNS = 192


def attention_from(trace: Trace, position: int) -> np.ndarray:
    """[L, H, n_prompt]: each head's attention from `position` over the prompt (under
    --attention topk:K only each row's K largest weights; see `unplaced`)."""
    return np.stack(
        [trace.attention_row(i, position)[:, : trace.n_prompt] for i in range(trace.n_layers)]
    ).astype(np.float64)


def sink_scores(trace: Trace) -> np.ndarray:
    """[L, H]: mean attention on the first token over prompt queries 1..n_prompt-1, computed
    at trace time from every prompt row (policy.HEAD_SCORES)."""
    return trace.derived("head_first_token").astype(np.float64)


def permille(values: np.ndarray) -> list[int]:
    return np.rint(np.nan_to_num(values) * 1000).astype(int).tolist()


def strip_layout(trace: Trace) -> tuple[list[dict[str, Any]], int, int]:
    """The prompt laid out as it reads: one row per line, x in characters. Returns the token
    rows (p position, t text, x column, r line, w width), the widest line and the line count."""
    rows, column = [], 0
    lines = line_of_each_token(trace)
    for position, (raw, line) in enumerate(
        zip(trace.token_strings[: trace.n_prompt], lines, strict=True)
    ):
        visible = raw.replace("\n", "")
        text = visible_controls(visible.strip(" ")) or ("↵" if "\n" in raw else "␣")
        lead = len(visible) - len(visible.lstrip(" "))
        if position and line != lines[position - 1]:
            column = 0
        rows.append({"p": position, "t": text, "x": column + lead, "r": line, "w": len(text)})
        column += len(visible)
    widest = max((row["x"] + row["w"] for row in rows), default=1)
    return rows, widest, (lines[-1] + 1 if lines else 1)


@dataclass(frozen=True)
class AttentionFacts:
    """Attention from the last prompt position (n = prompt length, L layers, H heads)."""

    n_layers: int
    n_heads: int
    position: int  # the last prompt position
    attn: np.ndarray  # [L, H, n] each head's attention from `position` over the prompt
    first_token: str
    start_span: tuple[int, int]  # [start, stop) of the first Q/A block
    start_text: str  # its text
    start_keys: int  # how many of its tokens count (the first token, a sink, excluded)
    start_mass: np.ndarray  # [L, H] attention from `position` on those keys
    uniform_share: float  # what uniform attention would give them
    best_start_head: tuple[int, int]  # (layer, head), 0-based: the head reading them most
    best_start_mass: float
    best_mean_layer: int  # 0-based: the layer reading them most averaged over heads
    reading_heads: int  # heads giving them at least START_READ_FACTOR x the uniform share
    sink_mean_now: float  # mean over heads of the attention on the first token from `position`
    sink_heads: int  # heads with over SINK_SHARE on the first token from every position on average
    tokens: tuple[dict[str, Any], ...]  # the prompt laid out as it reads (strip_layout)
    widest: int  # characters of the widest prompt line
    n_lines: int
    verdict: str
    policy: str  # the trace's --attention policy
    unplaced: float  # topk:K: the most of one head's row the trace does not place (else 0)
    # A model with learned attention sinks (GPT-OSS): the mean share, over layers and heads,
    # going to the sink rather than to any token, from `position` and over every prompt
    # row; None for a model without sinks.
    learned_sink_now: float | None = None
    learned_sink_prompt: float | None = None

    @property
    def n_all(self) -> int:
        return self.n_layers * self.n_heads


def measure_attention(trace: Trace) -> AttentionFacts:
    position = answer_position(trace)
    attn = attention_from(trace, position)  # [L, H, n_prompt]
    start = start_span(trace)
    start_keys = list(range(max(start.start, 1), start.stop))  # the start, sink excluded
    start_mass = attn[:, :, start_keys].sum(-1) if start_keys else np.zeros(attn.shape[:2])
    uniform_share = len(start_keys) / max(position + 1, 1)
    best_layer, best_head = np.unravel_index(int(np.argmax(start_mass)), start_mass.shape)
    reading = int((start_mass >= START_READ_FACTOR * uniform_share).sum()) if start_keys else 0
    tokens, widest, n_lines = strip_layout(trace)
    learned = sink_shares(trace)  # [L, H] or None
    return AttentionFacts(
        n_layers=trace.n_layers,
        n_heads=trace.model.n_heads,
        position=position,
        attn=attn,
        first_token=trace.token_strings[0] if trace.token_strings else "",
        start_span=(start.start, start.stop),
        start_text="".join(trace.token_strings[start.start : start.stop]).strip(),
        start_keys=len(start_keys),
        start_mass=start_mass,
        uniform_share=uniform_share,
        best_start_head=(int(best_layer), int(best_head)),
        best_start_mass=float(start_mass[best_layer, best_head]),
        best_mean_layer=int(np.argmax(start_mass.mean(1))),
        reading_heads=reading,
        sink_mean_now=float(attn[:, :, 0].mean()),
        sink_heads=int((sink_scores(trace) > SINK_SHARE).sum()),
        tokens=tuple(tokens),
        widest=widest,
        n_lines=n_lines,
        verdict=BORNE_OUT if reading else NOT_BORNE_OUT,
        policy=trace.attention_policy,
        unplaced=unplaced_attention(trace, position),
        learned_sink_now=sink_share_from(trace, position) if learned is not None else None,
        learned_sink_prompt=float(learned.mean()) if learned is not None else None,
    )


def attention_words(f: AttentionFacts) -> Words:
    best = head_label(*f.best_start_head)
    sinks, reading = f.sink_heads, f.reading_heads
    items = [
        f"Attention sink: the first token {token_html(f.first_token)} gets "
        f"{fmt_pct(f.sink_mean_now)} of the last position's attention on average over all "
        f"{count(f.n_all, 'head')}, and {count(sinks, 'head')} {verb(sinks, 'puts', 'put')} over "
        f"{fmt_pct(SINK_SHARE)} of {verb(sinks, 'its', 'their')} attention on it from every "
        "position on average. A sink is where a head parks attention it has no use for; it is "
        "not reading.",
        f"Re-reading the start (the first Q/A block: {count(f.start_keys, 'token')}, not "
        f"counting the sink, {fmt_pct(f.uniform_share)} of what the last position can see): "
        f"the head that reads it most is {best} with {fmt_pct(f.best_start_mass)}; averaged "
        f"over heads, layer {f.best_mean_layer + 1} reads it most "
        f"({fmt_pct(f.start_mass[f.best_mean_layer].mean())}).",
        f"{reading} of {count(f.n_all, 'head')} {verb(reading, 'gives', 'give')} the first "
        f"block at least {START_READ_FACTOR:g}&times; its uniform share.",
    ]
    if f.learned_sink_now is not None:
        items.append(
            "This model also gives every head a learned sink, a logit that joins the softmax "
            f"but is no token: {fmt_pct(f.learned_sink_now)} of the last position's attention "
            f"goes to it rather than to any token, on average over all {count(f.n_all, 'head')} "
            f"({fmt_pct(f.learned_sink_prompt)} over every prompt position), and the shares "
            "here are of the whole row, that sink included."
        )
    if f.unplaced > 0:
        items.append(
            f"This trace keeps each row's largest weights only (<code>--attention "
            f"{escape(f.policy)}</code>): up to {fmt_pct(f.unplaced)} of a head's attention "
            "from this position is on keys it does not name, so the shares here are lower "
            "bounds. The sink and head counts come from every row, measured as it was traced."
        )
    alt_text = (
        f"From the last prompt position, {best} puts {fmt_pct(f.best_start_mass)} of its "
        f"attention on the first Q/A block (uniform: {fmt_pct(f.uniform_share)}); the first "
        f"token draws {fmt_pct(f.sink_mean_now)} on average."
    )
    shown = visible_controls(f.start_text[:60])
    return Words(
        caption=caption(
            f"Attention from the last prompt position (the one that predicts the answer) back to "
            f"the start of the prompt, <q>{escape(shown)}{'…' if len(f.start_text) > 60 else ''}"
            f"</q>.",
            items,
        ),
        alts=(alt_text,),
    )


def attention_charts(f: AttentionFacts) -> list[alt.TopLevelMixin]:
    n_layers, n_heads = f.n_layers, f.n_heads
    mean = f.attn.mean(1)  # [L, n_prompt]
    best_layer, best_head = f.best_start_head
    layer_param = alt.param(
        name="layer",
        value=best_layer + 1,
        bind=alt.binding_range(min=1, max=n_layers, step=1, name="layer "),
    )
    head_param = alt.param(
        name="head",
        value=best_head + 1,
        bind=alt.binding_select(
            options=list(range(n_heads + 1)),
            labels=["mean of heads", *[f"head {h + 1}" for h in range(n_heads)]],
            name="head ",
        ),
    )

    # Heatmap: layer x prompt position, mean over heads, in thousandths to keep it compact.
    span = -(-mean.shape[1] // HEAT_COLUMNS)  # positions a column: 1 up to HEAT_COLUMNS
    padded = np.pad(mean, ((0, 0), (0, -mean.shape[1] % span)))
    spans = padded.reshape(n_layers, -1, span).sum(-1)  # [L, columns]: attention on each span
    heat_rows = [{"l": layer + 1, "a": permille(spans[layer])} for layer in range(n_layers)]
    where = "prompt position" if span == 1 else f"prompt position, {span} tokens a column"
    heat = (
        alt.Chart(alt.Data(values=heat_rows))
        .transform_flatten(["a"])
        .transform_window(_n="row_number()", groupby=["l"])
        .transform_calculate(p=f"(datum._n - 1) * {span}", share="datum.a / 1000")
        .transform_lookup(lookup="p", from_=alt.LookupData(alt.NamedData("tokens"), "p", ["t"]))
        .mark_rect()
        .encode(
            x=alt.X(
                "p:O",
                title=f"{where} (the answer is predicted at the right end)",
                axis=alt.Axis(labels=False, ticks=False),
            ),
            y=alt.Y("l:O", title="layer", axis=alt.Axis(labelOverlap=True)),
            color=alt.Color(
                "share:Q",
                title="attention",
                scale=alt.Scale(scheme=SEQUENTIAL, type="sqrt"),
                legend=alt.Legend(format="%", orient="right"),
            ),
            opacity=alt.condition("datum.l == layer", alt.value(1), alt.value(0.75)),
            tooltip=[
                alt.Tooltip("l:O", title="layer"),
                alt.Tooltip("p:O", title="position" if span == 1 else "from position"),
                alt.Tooltip("t:N", title="token"),
                alt.Tooltip("share:Q", title="mean attention", format=".1%"),
            ],
        )
        .properties(
            width=WIDTH,
            height=max(80, 6 * n_layers),
            title="Attention from the last position, mean over heads",
        )
    )

    # Token strip: the prompt as text, each token underlined by the attention it gets from the
    # last position in the chosen layer and head.
    strip_rows = []
    for layer in range(n_layers):
        for head, values in enumerate([mean[layer], *f.attn[layer]]):
            keys = np.argsort(-values)[:STRIP_TOP]
            keys = keys[np.rint(values[keys] * 1000) >= STRIP_MIN_PERMILLE]
            strip_rows.append(
                {"l": layer + 1, "h": head, "i": keys.tolist(), "a": permille(values[keys])}
            )
    font_size = float(np.clip(WIDTH / max(f.widest, 1) / 0.6, 6, 12))
    x = alt.X("x:Q", scale=alt.Scale(domain=[0, f.widest]), axis=None)
    y = alt.Y("y:Q", scale=alt.Scale(domain=[0, f.n_lines], reverse=True), axis=None)
    text = (
        alt.Chart(alt.NamedData("tokens"))
        .transform_calculate(y="datum.r + 0.4")
        .mark_text(align="left", baseline="middle", font="monospace", fontSize=font_size)
        .encode(
            x=x,
            y=y,
            text="t:N",
            tooltip=[alt.Tooltip("p:Q", title="position"), alt.Tooltip("t:N", title="token")],
        )
    )
    bars = (
        alt.Chart(alt.Data(values=strip_rows))
        .transform_filter("datum.l == layer && datum.h == head")
        .transform_flatten(["i", "a"])
        .transform_lookup(
            lookup="i", from_=alt.LookupData(alt.NamedData("tokens"), "p", ["t", "x", "r", "w"])
        )
        .transform_calculate(
            y="datum.r + 0.72", y2="datum.r + 0.98", x2="datum.x + datum.w", share="datum.a / 1000"
        )
        .mark_rect()
        .encode(
            x=x,
            x2="x2:Q",
            y=y,
            y2="y2:Q",
            color=alt.Color(
                "share:Q",
                title="attention",
                legend=alt.Legend(format="%"),
                scale=alt.Scale(scheme=SEQUENTIAL, domainMin=0),
            ),
            tooltip=[
                alt.Tooltip("t:N", title="token"),
                alt.Tooltip("i:Q", title="position"),
                alt.Tooltip("share:Q", title="attention", format=".1%"),
                alt.Tooltip("l:Q", title="layer"),
                alt.Tooltip("h:Q", title="head (0 = mean)"),
            ],
        )
    )
    strip = alt.layer(text, bars).properties(
        width=WIDTH,
        height=22 * f.n_lines,
        title="The prompt, underlined by attention from the last position (pick layer and head)",
    )
    chart = (
        alt.vconcat(heat, strip, datasets={"tokens": list(f.tokens)})
        .add_params(layer_param, head_param)
        .resolve_scale(color="independent")
        .properties(usermeta=CANVAS)
    )
    return [chart]


PANEL = PanelDef(
    key="p3",
    question="Does any layer re-read the start of the prompt?",
    measure=measure_attention,
    words=attention_words,
    charts=attention_charts,
)
