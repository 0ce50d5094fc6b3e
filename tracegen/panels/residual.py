"""¶1: the residual stream over depth at the last prompt position, and how n-gram-like the
early layers are.

"N-gram-like" is measured as context-independence: a prediction that depends only on the
current token is a bigram model. At each depth, take every pair of traced positions that hold
the same token and count how often the logit lens gives them the same top-1 token. At the
embeddings a model without absolute position embeddings scores 100% by construction; as
attention mixes in context the score falls toward what the full model does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import altair as alt
import numpy as np

from ..store import Trace
from .story import GPT3_LAYERS, STORY_LAYER, answer_position, story_depth, vocabulary
from .style import SEQUENTIAL, WIDTH, colour_scale
from .types import BORNE_OUT, MIXED, NOT_BORNE_OUT, PanelDef, Words
from .vega import cell_ink, columns, depth_axis, indexed, label_expr, rounded
from .words import (
    RANK_NOTE,
    caption,
    count,
    fmt_num,
    fmt_pct,
    fmt_rank,
    rank_title,
    show_token,
    shown_rank,
    token_html,
)

# The early layers count as n-gram-like when same-token positions agree on the lens top-1
# at least this much more often after the first block than at the output.
NGRAM_MARGIN = 0.10
# A higher-order description counts as taking shape by the story's depth when the share of
# positions whose lens top-1 is the model's final choice rises by at least this much from
# layer 1 to there. The same margin calls it flat, rising or falling.
SHAPE_MARGIN = 0.10
# Where that share first passes this, most positions already predict what the output does.
MAJORITY = 0.5
# The residual norm "grows" (or "shrinks") when its last value is this factor above (below)
# its first.
NORM_CHANGE = 1.1


def residual_norms(trace: Trace, position: int) -> np.ndarray:
    """||residual|| at one position for depth 0 (embeddings) .. L (after the last block)."""
    first = trace.activation(0, "resid_in", position)
    outs = [trace.activation(index, "resid_out", position) for index in range(trace.n_layers)]
    return np.linalg.norm(np.stack([first, *outs]).astype(np.float64), axis=-1)


def same_token_agreement(token_ids: list[int], top1: np.ndarray) -> np.ndarray:
    """Per depth: the share of same-token position pairs whose lens top-1 is the same.
    NaN when no token occurs twice."""
    groups: dict[int, list[int]] = defaultdict(list)
    for position, token_id in enumerate(token_ids):
        groups[token_id].append(position)
    repeated = [np.array(p) for p in groups.values() if len(p) > 1]
    total_pairs = sum(len(p) * (len(p) - 1) // 2 for p in repeated)
    if total_pairs == 0:
        return np.full(top1.shape[0], np.nan)
    agreement = np.zeros(top1.shape[0])
    for depth in range(top1.shape[0]):
        equal = 0
        for positions in repeated:
            _, counts = np.unique(top1[depth, positions], return_counts=True)
            equal += int((counts * (counts - 1) // 2).sum())
        agreement[depth] = equal / total_pairs
    return agreement


# The lens table shows this many of each depth's top tokens.
TABLE_RANKS = 3
ROW_PX = 13


@dataclass(frozen=True)
class Shape:
    """How the share of positions whose lens top-1 is the model's final choice moves from
    layer `early` to the story's depth (`shape_over_depth`)."""

    early: float  # the share after layer `early`
    at_story: float  # the share at the story's depth
    trend: str  # "rises", "falls" or "flat" (by SHAPE_MARGIN)
    by_story: bool  # a higher-order description has taken shape by the story's depth
    climbs_at: int | None  # first depth SHAPE_MARGIN above the layer-`early` level
    majority_at: int | None  # first depth where it passes MAJORITY


@dataclass(frozen=True)
class ResidualFacts:
    """The residual stream at the last prompt position, and n-gram-likeness over depth."""

    n_layers: int
    position: int  # the last prompt position
    story_depth: int  # where layer 32 of 96 falls here
    story_fraction: float  # 32 / 96
    early: int  # the depth after the first block (1; 0 for a model without layers)
    norms: np.ndarray  # [L+1] residual norm at `position`
    entropy: np.ndarray  # [L+1] lens entropy at `position`, nats
    top1: tuple[str, ...]  # [L+1] lens top-1 text at `position`
    top1_prob: np.ndarray  # [L+1] its probability
    final_rank: np.ndarray  # [L+1] 0-based lens rank of the final answer at `position`
    final_token: str  # the model's final answer at `position`
    table: tuple[tuple[str, ...], ...]  # [L+1][k] the lens's top-k text at `position`
    table_probs: np.ndarray  # [L+1, k]
    same_token_agreement: np.ndarray  # [L+1] NaN when no token repeats
    matches_final: np.ndarray  # [L+1] share of positions whose lens top-1 is the final one
    ngram_like: bool
    shape: Shape
    verdict: str


def measure_residual(trace: Trace) -> ResidualFacts:
    n_layers = trace.n_layers
    position = answer_position(trace)
    text_of = vocabulary(trace)
    top_ids = trace.derived("lens_topk_ids")[:, :, 0]  # [L+1, N]
    story_fraction, story_d = story_depth(n_layers)
    early = min(1, n_layers)
    n_traced = min(trace.n_positions, len(trace.token_ids))
    agreement = same_token_agreement(trace.token_ids[:n_traced], top_ids[:, :n_traced])
    matches_final = (top_ids[:, :n_traced] == top_ids[-1:, :n_traced]).mean(-1)
    early_gap = float(agreement[early] - agreement[-1]) if np.isfinite(agreement).all() else np.nan
    ngram_like = bool(np.isfinite(early_gap) and early_gap >= NGRAM_MARGIN)
    shape = shape_over_depth(matches_final, early, story_d)
    k = max(1, min(TABLE_RANKS, trace.top_k))
    table_ids = trace.derived("lens_topk_ids")[:, position, :k]  # [L+1, k]
    # The story: n-gram statistics at first, and a higher-order description by its layer.
    verdict = (
        BORNE_OUT
        if ngram_like and shape.by_story
        else MIXED
        if ngram_like or shape.by_story
        else NOT_BORNE_OUT
    )
    return ResidualFacts(
        n_layers=n_layers,
        position=position,
        story_depth=story_d,
        story_fraction=story_fraction,
        early=early,
        norms=residual_norms(trace, position),
        entropy=trace.derived("lens_entropy")[:, position],
        top1=tuple(text_of(i) for i in top_ids[:, position]),
        top1_prob=trace.derived("lens_topk_probs")[:, position, 0],
        final_rank=trace.derived("lens_target_rank")[:, position],
        final_token=text_of(top_ids[-1, position]),
        table=tuple(tuple(text_of(i) for i in row) for row in table_ids),
        table_probs=trace.derived("lens_topk_probs")[:, position, :k],
        same_token_agreement=agreement,
        matches_final=matches_final,
        ngram_like=ngram_like,
        shape=shape,
        verdict=verdict,
    )


def residual_words(f: ResidualFacts) -> Words:
    d, early, entropy, agreement = f.story_depth, f.early, f.entropy, f.same_token_agreement
    items = [
        f"Layer {STORY_LAYER} of GPT-3's {GPT3_LAYERS} is {fmt_pct(f.story_fraction)} of the way "
        f"up; on this {f.n_layers}-layer model that is depth {d} (dashed line). There the "
        f"last position's lens predicts {token_html(f.top1[d])} ({fmt_pct(f.top1_prob[d])}), "
        f"ranks the final answer {token_html(f.final_token)} {fmt_rank(f.final_rank[d])}, and "
        f"has entropy {fmt_num(entropy[d])} nats (embeddings {fmt_num(entropy[0])}, output "
        f"{fmt_num(entropy[-1])}).",
        f"N-gram-like early layers: pairs of positions that hold the same token get the same "
        f"lens top-1 in {fmt_pct(agreement[0])} of cases at the embeddings (the token alone: a "
        f"bigram prediction), {fmt_pct(agreement[early])} after layer {early}, "
        f"{fmt_pct(agreement[d])} at depth {d} and {fmt_pct(agreement[-1])} at the "
        f"output. Counted as n-gram-like when layer {early} beats the output by "
        f"{fmt_pct(NGRAM_MARGIN)} or more.",
        _shape_sentence(f.shape, early, d, f.n_layers),
        _norm_sentence(f.norms, f.n_layers),
    ]
    alts = (
        f"At the last prompt position the lens entropy goes from {fmt_num(entropy[0])} nats at "
        f"the embeddings to {fmt_num(entropy[d])} at depth {d} (layer {STORY_LAYER} "
        f"of {GPT3_LAYERS} scaled) and {fmt_num(entropy[-1])} at the output, which predicts "
        f"{show_token(f.final_token)}.",
        f"Same-token positions share their lens top-1 in {fmt_pct(agreement[0])} of pairs at "
        f"the embeddings, {fmt_pct(agreement[early])} after layer {early} and "
        f"{fmt_pct(agreement[-1])} at the output.",
    )
    return Words(
        caption=caption(
            "The logit lens reads each depth's residual stream through the final norm and the "
            "unembedding, at the last prompt position.",
            items,
        ),
        alts=alts,
    )


def residual_charts(f: ResidualFacts) -> list[alt.TopLevelMixin]:
    n_layers = f.n_layers
    # Chart 1: norm and entropy over depth, with what the lens would say at each depth.
    depths = dict(
        norm=rounded(f.norms, 2),
        entropy=rounded(f.entropy, 3),
        top=[show_token(text) for text in f.top1],
        p=rounded(f.top1_prob, 4),
        rank=shown_rank(f.final_rank),
    )
    x = alt.X("d:Q", axis=depth_axis(n_layers), scale=alt.Scale(domain=[0, n_layers]))
    tooltip = [
        alt.Tooltip("d:Q", title="depth"),
        alt.Tooltip("top:N", title="lens top-1"),
        alt.Tooltip("p:Q", title="its probability", format=".1%"),
        alt.Tooltip("rank:Q", title=rank_title(show_token(f.final_token))),
        alt.Tooltip("entropy:Q", title="entropy (nats)", format=".2f"),
        alt.Tooltip("norm:Q", title="residual norm", format=".1f"),
    ]
    story = [{"d": f.story_depth, "label": f"layer {STORY_LAYER} of {GPT3_LAYERS}"}]
    story_rule = (
        alt.Chart(alt.NamedData("story"))
        .mark_rule(strokeDash=[4, 3])
        .encode(
            x="d:Q",
            tooltip=[
                alt.Tooltip("label:N", title="the story"),
                alt.Tooltip("d:Q", title="depth here"),
            ],
        )
    )
    base = indexed(
        alt.Chart(alt.NamedData("depths")), ["norm", "entropy", "top", "p", "rank"], index="d"
    )
    norm_line = base.mark_line(point=True).encode(
        x=x, y=alt.Y("norm:Q", title="residual norm"), tooltip=tooltip
    )
    entropy_line = base.mark_line(point=True).encode(
        x=x, y=alt.Y("entropy:Q", title="lens entropy (nats)"), tooltip=tooltip
    )
    size = {"width": WIDTH, "height": 110}
    over_depth = alt.vconcat(
        alt.layer(norm_line, story_rule).properties(
            **size, title="Residual norm at the last position"
        ),
        alt.layer(entropy_line, story_rule).properties(**size, title="Logit-lens entropy"),
        lens_table(f),
        datasets={"depths": [depths], "story": story},
    ).resolve_legend(color="independent")  # the table's legend beside the table

    # Chart 2: context-independence (bigram-likeness) and agreement with the output.
    ngram = columns(same=rounded(f.same_token_agreement, 3), final=rounded(f.matches_final, 3))
    measure_names = {
        "same": "same token, same top-1 (bigram-like)",
        "final": "top-1 equals the output's top-1",
    }
    lines = (
        indexed(alt.Chart(ngram), ["same", "final"], index="d")
        .transform_fold(list(measure_names), as_=["measure", "share"])
        .transform_calculate(measure=label_expr("measure", measure_names))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y(
                "share:Q", title="share", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])
            ),
            color=alt.Color(
                "measure:N",
                scale=alt.Scale(**colour_scale(list(measure_names.values()))),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            strokeDash=alt.StrokeDash("measure:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=[
                alt.Tooltip("d:Q", title="depth"),
                "measure:N",
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
    )
    ngram_chart = alt.layer(lines, story_rule).properties(
        width=WIDTH,
        height=160,
        title="How n-gram-like is each depth? (all traced positions)",
        datasets={"story": story},
    )
    return [over_depth, ngram_chart]


def lens_table(f: ResidualFacts) -> alt.LayerChart:
    """One row per depth (embeddings at the bottom, as in p6), one column per rank: the lens's
    top tokens at the last position, each cell coloured by its probability. The rows at the
    story's depth (the "story" dataset) are fenced by dashed rules and named on the right."""
    k = f.table_probs.shape[1]
    # One row of depth-major arrays; `i` numbers the cells, so depth = i // k, rank = i % k.
    data = columns(
        t=[show_token(text) for row in f.table for text in row],
        q=rounded(f.table_probs.ravel(), 3),
    )
    tooltip = [
        alt.Tooltip("d:O", title="depth"),
        alt.Tooltip("r:O", title=rank_title()),
        alt.Tooltip("t:N", title="token"),
        alt.Tooltip("q:Q", title="probability", format=".1%"),
    ]
    width = min(WIDTH - 120, 110 * k)
    x = alt.X("r:O", title=f"lens rank ({RANK_NOTE})", axis=alt.Axis(orient="top", labelAngle=0))
    y = alt.Y("d:O", title="depth (0 = embeddings)", sort="descending")
    rects = (
        alt.Chart()
        .mark_rect()
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "q:Q",
                title="probability",
                legend=alt.Legend(
                    format="%", orient="bottom", titleOrient="left", gradientLength=width - 80
                ),
                scale=alt.Scale(scheme=SEQUENTIAL, domain=[0, 1]),
            ),
            tooltip=tooltip,
        )
    )
    words = (
        alt.Chart()
        .mark_text(fontSize=10, limit=width // k - 6)
        .encode(x=x, y=y, text="t:N", color=cell_ink("q"), tooltip=tooltip)
    )
    story = alt.Chart(alt.NamedData("story"))
    story_tooltip = [
        alt.Tooltip("label:N", title="the story"),
        alt.Tooltip("d:Q", title="depth here"),
    ]
    fence = [
        story.mark_rule(strokeDash=[4, 3], yOffset=offset).encode(
            y=alt.Y("d:O", sort="descending"), tooltip=story_tooltip
        )
        for offset in (-ROW_PX / 2, ROW_PX / 2)
    ]
    name = story.mark_text(align="left", dx=6, fontSize=10).encode(
        x=alt.value(width),
        y=alt.Y("d:O", sort="descending"),
        text="label:N",
        tooltip=story_tooltip,
    )
    table = indexed(alt.layer(rects, words, data=data), ["t", "q"]).transform_calculate(
        d=f"floor(datum.i / {k})", r=f"datum.i % {k} + 1"
    )
    return alt.layer(table, *fence, name).properties(
        width=width,
        height=ROW_PX * (f.n_layers + 1),
        title=f"What each depth would predict: the lens's top {k}",
    )


def shape_over_depth(matches_final: np.ndarray, early: int, story_d: int) -> Shape:
    """How the share of positions whose lens top-1 is the model's final choice moves: its
    trend from layer `early` to the story's depth ("rises", "falls" or "flat", by
    SHAPE_MARGIN), the first depth where it climbs SHAPE_MARGIN above its layer-`early`
    level, and the first depth where it passes MAJORITY (None where it never does)."""
    values = np.nan_to_num(np.asarray(matches_final, dtype=np.float64), nan=0.0)
    change = float(values[story_d] - values[early])
    trend = "rises" if change >= SHAPE_MARGIN else "falls" if change <= -SHAPE_MARGIN else "flat"

    def first(mask: np.ndarray) -> int | None:
        hits = np.flatnonzero(mask[early:])
        return int(hits[0]) + early if hits.size else None

    return Shape(
        early=float(values[early]),
        at_story=float(values[story_d]),
        trend=trend,
        by_story=trend == "rises",
        climbs_at=first(values >= values[early] + SHAPE_MARGIN),
        majority_at=first(values > MAJORITY),
    )


def _shape_sentence(shape: Shape, early: int, story_d: int, n_layers: int) -> str:
    """The caption's words for `shape_over_depth`: only what its numbers say."""
    points = f"{round(100 * SHAPE_MARGIN)} percentage points"
    numbers = (
        f"the lens top-1 is the model's final choice at {fmt_pct(shape.early)} of positions "
        f"after layer {early} and {fmt_pct(shape.at_story)} at depth {story_d}"
    )
    head = {
        "rises": f"A higher-order description takes shape by the story's depth: {numbers}.",
        "falls": f"No higher-order description by the story's depth: {numbers}, a fall.",
        "flat": f"No higher-order description yet at the story's depth: {numbers}, flat.",
    }[shape.trend]
    rule = (
        f"(Counted as taking shape when this share rises by {points} or more from layer "
        f"{early} to depth {story_d}; flat when it moves by less.)"
    )
    later = []
    climbs, majority = shape.climbs_at, shape.majority_at
    if climbs is not None and climbs > story_d:
        later.append(f"climbs {points} above its layer-{early} level at depth {climbs}")
    if majority is not None:
        later.append(f"exceeds {fmt_pct(MAJORITY)} at depth {majority} of {n_layers}")
    tail = (
        f" It first {' and first '.join(later)}."
        if majority is not None
        else f" It never exceeds {fmt_pct(MAJORITY)}."
    )
    return f"{head} {rule}{tail}"


def _norm_sentence(norms: np.ndarray, n_layers: int) -> str:
    """The residual norm's course, in the words its numbers allow."""
    first, last = float(norms[0]), float(norms[-1])
    if last > first * NORM_CHANGE:
        course = f"grows from {fmt_num(first, 1)} to {fmt_num(last, 1)}"
    elif last * NORM_CHANGE < first:
        course = f"shrinks from {fmt_num(first, 1)} to {fmt_num(last, 1)}"
    else:
        course = f"ends about where it starts ({fmt_num(first, 1)}, then {fmt_num(last, 1)})"
    peak = int(np.argmax(np.nan_to_num(norms, nan=-np.inf)))
    if 0 < peak < len(norms) - 1 and float(norms[peak]) > max(first, last) * NORM_CHANGE:
        course += f", peaking at {fmt_num(norms[peak], 1)} at depth {peak}"
    return f"The residual norm at the last position {course} over the {count(n_layers, 'block')}."


PANEL = PanelDef(
    key="p1",
    question="What is in the residual stream at the story's layer, and do early layers "
    "look like n-gram statistics?",
    measure=measure_residual,
    words=residual_words,
    charts=residual_charts,
)
