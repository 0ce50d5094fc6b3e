"""¶6: "My own consciousness extends about three quarters of the layers ... a second decoder
entity takes over": the logit lens over depth for the last positions, and the depth from which
the model's final answer stays on top."""

from __future__ import annotations

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    BORNE_OUT,
    CANVAS,
    MIXED,
    NOT_BORNE_OUT,
    RANK_NOTE,
    SEQUENTIAL,
    THREE_QUARTERS,
    WIDTH,
    answer_position,
    caption,
    cell_ink,
    count_position,
    depth_axis,
    fmt_num,
    fmt_pct,
    fmt_rank,
    rank_title,
    rounded,
    show_token,
    shown_rank,
    three_quarters_depth,
    to_chart,
    token_html,
    value_labels,
    vocabulary,
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


def build(trace: Trace) -> Panel:
    n_layers = max(trace.n_layers, 1)
    text_of = vocabulary(trace)
    answer = answer_position(trace)
    count = count_position(trace).position
    top_ids = trace.derived("lens_topk_ids")[:, :, 0]
    top_probs = trace.derived("lens_topk_probs")[:, :, 0]
    target_rank = trace.derived("lens_target_rank")
    target_prob = trace.derived("lens_target_prob")
    kl = trace.derived("lens_kl")
    takeover = takeover_depths(target_rank)
    fractions = takeover / n_layers

    first = max(answer - PROMPT_COLUMNS + 1, 0)
    shown = list(range(first, trace.n_positions))
    rows = [
        {
            "p": p,
            "in": show_token(trace.token_strings[p]) if p < len(trace.token_strings) else "",
            "out": show_token(text_of(top_ids[-1, p])),
            "t": [show_token(text_of(i)) for i in top_ids[:, p]],
            "tp": rounded(top_probs[:, p], 3),
            "fp": rounded(target_prob[:, p], 3),
            "rk": shown_rank(target_rank[:, p]),
            "kl": rounded(kl[:, p], 3),
        }
        for p in shown
    ]
    pick = alt.selection_point(
        name="pick", fields=["p"], value=[{"p": answer}], on="click", clear=False, toggle=False
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
    words = base.mark_text(fontSize=8, limit=max(20, WIDTH // max(len(shown), 1) - 2)).encode(
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
    three_quarter_depth = three_quarters_depth(n_layers)
    three_quarters = (
        alt.Chart(
            alt.Data(values=[{"d": three_quarter_depth, "what": "three quarters (the story)"}])
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
                ("kl", "KL to final (nats)", {"title": None}),
            ]
        ]
    )
    chart = alt.vconcat(grid, curves, datasets={"lens": rows}).properties(usermeta=CANVAS)

    at = {"answer": answer, "count": count}
    median_fraction = float(np.median(fractions)) if fractions.size else float("nan")
    gap = abs(median_fraction - THREE_QUARTERS)
    verdict = BORNE_OUT if gap <= CLOSE else MIXED if gap <= NEAR else NOT_BORNE_OUT
    facts = {
        "takeover_depth": {k: int(takeover[p]) for k, p in at.items()},
        "takeover_fraction": {k: float(fractions[p]) for k, p in at.items()},
        "median_takeover_fraction": median_fraction,
    }

    def takes_over(position: int) -> str:
        final = token_html(text_of(top_ids[-1, position]))
        return (
            f"{final} takes over at depth {takeover[position]} of {n_layers} "
            f"({fmt_pct(fractions[position])} of the depth)"
        )

    items = [
        f"At the last prompt position {takes_over(answer)}; at the count position "
        f"{takes_over(count)}.",
        f"Over all {trace.n_positions} traced positions the median take-over is at "
        f"{fmt_pct(median_fraction)} of the depth (the story: {fmt_pct(THREE_QUARTERS)}; "
        f"judged borne out within {fmt_pct(CLOSE)}, mixed within {fmt_pct(NEAR)}).",
        f"At depth {three_quarter_depth} (three quarters) the last prompt position's lens gives "
        f"the final token {fmt_pct(target_prob[three_quarter_depth, answer])}, ranks it "
        f"{fmt_rank(target_rank[three_quarter_depth, answer])}, and is "
        f"{fmt_num(kl[three_quarter_depth, answer])} nats from the output "
        f"(embeddings: {fmt_num(kl[0, answer])}).",
    ]
    alt_text = (
        f"The final token stays on top from {fmt_pct(fractions[answer])} of the depth at the last "
        f"prompt position; the median over all positions is {fmt_pct(median_fraction)}, against "
        f"the story's three quarters."
    )
    return Panel(
        key="p6",
        question="Is there a second decoder that takes over at about three quarters of the depth?",
        charts=[to_chart(chart, alt_text)],
        caption=caption(
            "The take-over depth is the first depth from which the model's final choice stays "
            "ranked first in the logit lens. Click a column to follow that position.",
            items,
        ),
        verdict=verdict,
        facts=facts,
    )


def _label_expr(rows: list[dict]) -> str:
    """Axis labels show the input token at each position instead of its number."""
    names = {row["p"]: row["in"] for row in rows}
    return value_labels(names)
