"""¶6: "My own consciousness extends about three quarters of the layers ... a second decoder
entity takes over": the logit lens over depth for the last positions, and the depth from which
the model's final answer stays on top."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np

from ..store import Trace
from .story import (
    THREE_QUARTERS,
    answer_position,
    count_position,
    three_quarters_depth,
    vocabulary,
)
from .style import CANVAS, SEQUENTIAL, WIDTH
from .types import BORNE_OUT, MIXED, NOT_BORNE_OUT, PanelDef, Words
from .vega import cell_ink, depth_axis, rounded, value_labels
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

PROMPT_COLUMNS = 8  # how many prompt positions before the answer the lens grid shows
CLOSE = 0.10  # take-over within this fraction of the depth of 3/4: borne out
NEAR = 0.20  # within this: mixed


def takeover_depths(target_rank: np.ndarray) -> np.ndarray:
    """Per position: the first depth from which the final top-1 stays ranked first.

    target_rank is [L+1, N]; rank 0 at the last depth by construction. A position whose last
    depth is not rank 0 (a damaged trace) gets depth L."""
    n_depths = target_rank.shape[0]
    on_top = target_rank == 0
    # Walk down from the output while the final token is still on top.
    stays = np.flip(np.cumprod(np.flip(on_top, 0), 0), 0).astype(bool)  # [L+1, N]
    first = np.where(stays.any(0), stays.argmax(0), n_depths - 1)
    return first


@dataclass(frozen=True)
class LensFacts:
    """The logit lens at the last positions (N = traced positions, L = layers)."""

    n_layers: int
    n_positions: int
    answer: int  # the last prompt position
    count: int  # the count position (story.count_position)
    shown: tuple[int, ...]  # positions the grid shows: the last PROMPT_COLUMNS of the prompt on
    inputs: tuple[str, ...]  # [N] the input token at each traced position ("" past the ids)
    top1: tuple[tuple[str, ...], ...]  # [N][L+1] the lens's top-1 token text per depth
    top1_prob: np.ndarray  # [L+1, N]
    target_prob: np.ndarray  # [L+1, N] the lens's probability of the final top-1
    target_rank: np.ndarray  # [L+1, N] its 0-based rank
    kl: np.ndarray  # [L+1, N] KL(final || lens) in nats
    takeover: np.ndarray  # [N] first depth from which the final top-1 stays on top
    median_takeover_fraction: float  # median over positions of takeover / L
    three_quarters_depth: int
    verdict: str

    @property
    def takeover_fraction(self) -> np.ndarray:  # [N]
        return self.takeover / max(self.n_layers, 1)

    def final_token(self, position: int) -> str:
        return self.top1[position][-1]


def measure_lens(trace: Trace) -> LensFacts:
    n_layers = max(trace.n_layers, 1)
    text_of = vocabulary(trace)
    answer = answer_position(trace)
    top_ids = trace.derived("lens_topk_ids")[:, :, 0]  # [L+1, N]
    target_rank = trace.derived("lens_target_rank")
    takeover = takeover_depths(target_rank)
    fractions = takeover / n_layers
    median = float(np.median(fractions)) if fractions.size else float("nan")
    gap = abs(median - THREE_QUARTERS)
    n = trace.n_positions
    strings = trace.token_strings
    return LensFacts(
        n_layers=n_layers,
        n_positions=n,
        answer=answer,
        count=count_position(trace).position,
        shown=tuple(range(max(answer - PROMPT_COLUMNS + 1, 0), n)),
        inputs=tuple(strings[p] if p < len(strings) else "" for p in range(n)),
        top1=tuple(tuple(text_of(i) for i in top_ids[:, p]) for p in range(n)),
        top1_prob=trace.derived("lens_topk_probs")[:, :, 0],
        target_prob=trace.derived("lens_target_prob"),
        target_rank=target_rank,
        kl=trace.derived("lens_kl"),
        takeover=takeover,
        median_takeover_fraction=median,
        three_quarters_depth=three_quarters_depth(n_layers),
        verdict=BORNE_OUT if gap <= CLOSE else MIXED if gap <= NEAR else NOT_BORNE_OUT,
    )


def lens_words(f: LensFacts) -> Words:
    fractions = f.takeover_fraction
    median = f.median_takeover_fraction
    deep, answer = f.three_quarters_depth, f.answer

    def takes_over(position: int) -> str:
        return (
            f"{token_html(f.final_token(position))} takes over at depth {f.takeover[position]} "
            f"of {f.n_layers} ({fmt_pct(fractions[position])} of the depth)"
        )

    items = [
        f"At the last prompt position {takes_over(answer)}; at the count position "
        f"{takes_over(f.count)}.",
        f"Over all {count(f.n_positions, 'traced position')} the median take-over is at "
        f"{fmt_pct(median)} of the depth (the story: {fmt_pct(THREE_QUARTERS)}; "
        f"judged borne out within {fmt_pct(CLOSE)}, mixed within {fmt_pct(NEAR)}).",
        f"At depth {deep} (three quarters) the last prompt position's lens gives "
        f"the final token {fmt_pct(f.target_prob[deep, answer])}, ranks it "
        f"{fmt_rank(f.target_rank[deep, answer])}, and is "
        f"{fmt_num(f.kl[deep, answer])} nats from the output "
        f"(embeddings: {fmt_num(f.kl[0, answer])}).",
    ]
    alt_text = (
        f"The final token stays on top from {fmt_pct(fractions[answer])} of the depth at the last "
        f"prompt position; the median over all positions is {fmt_pct(median)}, against "
        f"the story's three quarters."
    )
    return Words(
        caption=caption(
            "The take-over depth is the first depth from which the model's final choice stays "
            "ranked first in the logit lens. Click a column to follow that position.",
            items,
        ),
        alts=(alt_text,),
    )


def lens_charts(f: LensFacts) -> list[alt.TopLevelMixin]:
    n_layers = f.n_layers
    rows = [
        {
            "p": p,
            "in": show_token(f.inputs[p]) if f.inputs[p] else "",
            "out": show_token(f.final_token(p)),
            "t": [show_token(text) for text in f.top1[p]],
            "tp": rounded(f.top1_prob[:, p], 3),
            "fp": rounded(f.target_prob[:, p], 3),
            "rk": shown_rank(f.target_rank[:, p]),
            "kl": rounded(f.kl[:, p], 3),
        }
        for p in f.shown
    ]
    pick = alt.selection_point(
        name="pick", fields=["p"], value=[{"p": f.answer}], on="click", clear=False, toggle=False
    )
    base = (
        alt.Chart(alt.NamedData("lens"))  # one copy of the data, shared by every view
        .transform_flatten(["t", "tp", "fp", "rk", "kl"])
        .transform_window(_n="row_number()", groupby=["p"])
        .transform_calculate(d="datum._n - 1")
    )
    tooltip = [
        alt.Tooltip("p:O", title="position"),
        alt.Tooltip("in:N", title="input token"),
        alt.Tooltip("d:Q", title="depth"),
        alt.Tooltip("t:N", title="lens top-1"),
        alt.Tooltip("tp:Q", title="its probability", format=".1%"),
        alt.Tooltip("out:N", title="final top-1"),
        alt.Tooltip("fp:Q", title="lens prob. of final top-1", format=".1%"),
        alt.Tooltip("rk:Q", title=rank_title("it")),
        alt.Tooltip("kl:Q", title="KL to final (nats)", format=".2f"),
    ]
    x = alt.X(
        "p:O",
        title="position (input token)",
        sort="ascending",
        axis=alt.Axis(labelExpr=_label_expr(rows), labelAngle=-50, labelLimit=70),
    )
    y = alt.Y(
        "d:O", title="depth (0 = embeddings)", sort="descending", axis=alt.Axis(labelOverlap=True)
    )
    cells = (
        base.mark_rect()
        .encode(
            x=x,
            y=y,
            tooltip=tooltip,
            color=alt.Color(
                "fp:Q",
                title="prob. of final token",
                legend=alt.Legend(format="%"),
                scale=alt.Scale(scheme=SEQUENTIAL, domain=[0, 1]),
            ),
            stroke=alt.condition(pick, alt.value("currentColor"), alt.value(None)),
        )
        .add_params(pick)
    )
    # Labels sit on data-coloured cells, so their colour follows the cell, not the page theme:
    # dark text on the light (yellow-green) end of viridis, light text on the dark end.
    words = base.mark_text(fontSize=8, limit=max(20, WIDTH // max(len(rows), 1) - 2)).encode(
        x=x,
        y=y,
        text="t:N",
        tooltip=tooltip,
        color=cell_ink("fp"),
    )
    grid = alt.layer(cells, words).properties(
        width=WIDTH,
        height=max(120, 12 * (n_layers + 1)),
        title="Logit lens: top-1 token per depth; colour = probability of the final token",
    )
    picked = base.transform_filter(pick)
    small = {"width": WIDTH // 3 - 30, "height": 110}
    line_x = alt.X("d:Q", axis=depth_axis(n_layers, "depth"))
    three_quarters = (
        alt.Chart(
            alt.Data(values=[{"d": f.three_quarters_depth, "what": "three quarters (the story)"}])
        )
        .mark_rule(strokeDash=[4, 3])
        .encode(
            x="d:Q",
            tooltip=[alt.Tooltip("what:N"), alt.Tooltip("d:Q", title="depth", format="d")],
        )
    )
    curves = alt.hconcat(
        *[
            alt.layer(
                picked.mark_line(point=True).encode(
                    x=line_x, y=alt.Y(f"{field}:Q", **spec), tooltip=tooltip
                ),
                three_quarters,
            ).properties(**small, title=title)
            for field, title, spec in [
                ("fp", "prob. of final token", {"title": None, "scale": alt.Scale(domain=[0, 1])}),
                (
                    "rk",
                    f"its rank ({RANK_NOTE}; log)",
                    {"title": None, "scale": alt.Scale(type="log")},
                ),
                # The embeddings' KL can be hundreds of nats (Gemma: 465) against single digits
                # above them: a symmetric log scale keeps both readable, and zero (the output's
                # KL to itself) on the axis, where a log scale has no zero.
                (
                    "kl",
                    "KL to final (nats; symlog)",
                    {"title": None, "scale": alt.Scale(type="symlog")},
                ),
            ]
        ]
    )
    return [alt.vconcat(grid, curves, datasets={"lens": rows}).properties(usermeta=CANVAS)]


def _label_expr(rows: list[dict]) -> str:
    """Axis labels show the input token at each position instead of its number."""
    names = {row["p"]: row["in"] for row in rows}
    return value_labels(names)


PANEL = PanelDef(
    key="p6",
    question="Is there a second decoder that takes over at about three quarters of the depth?",
    measure=measure_lens,
    words=lens_words,
    charts=lens_charts,
)
