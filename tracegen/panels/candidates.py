"""¶5: "'zero eyes' or 'no eyes' ... they optimize for frequency but expect correctness": the
probabilities of candidate counts where the model has to say how many eyes."""

from __future__ import annotations

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    BORNE_OUT,
    CONTEXT,
    NOT_BORNE_OUT,
    WIDTH,
    caption,
    context_before,
    count_position,
    count_tokens,
    escape,
    fmt_pct,
    fmt_rank,
    rank_title,
    show_token,
    shown_rank,
    sig,
    to_chart,
    token_html,
    vocabulary,
)

# The story's words: the common answer the narrator bets on, and the correct ones it expects
# the humans want.
BET_WORDS = {"two"}
CORRECT_WORDS = {"no", "zero", "none", "0"}
GROUPS = ["the narrator's bet", "a correct answer", "another count", "the model's top choices"]


def word(text: str) -> str:
    return text.strip().lower()


def build(trace: Trace) -> Panel:
    count = count_position(trace)
    position = count.position
    text_of = vocabulary(trace)
    top_ids = trace.derived("lens_topk_ids")[-1, position]
    top_probs = trace.derived("lens_topk_probs")[-1, position]
    watched_probs = trace.derived("watched_probs")[-1, position]
    rank_of = {int(token_id): rank for rank, token_id in enumerate(top_ids)}

    rows: dict[int, dict] = {}
    for token_id, prob in zip(top_ids, top_probs, strict=True):
        rows[int(token_id)] = {
            "t": show_token(text_of(token_id)),
            "p": sig(prob),
            "g": GROUPS[3],
            "r": shown_rank(rank_of[int(token_id)]),
        }
    candidates = []
    for w, token_id, text in count_tokens(trace):
        group = (
            GROUPS[0]
            if word(text) in BET_WORDS
            else (GROUPS[1] if word(text) in CORRECT_WORDS else GROUPS[2])
        )
        prob = float(watched_probs[w])
        rank = rank_of.get(token_id)
        candidates.append((text, prob, rank, group))
        rows[token_id] = {
            "t": show_token(text),
            "p": sig(prob),
            "g": group,
            "r": shown_rank(rank) if rank is not None else None,
        }
    values = sorted(rows.values(), key=lambda row: -(row["p"] or 0))
    floor = max(min((row["p"] for row in values if row["p"]), default=1e-6) / 2, 1e-9)
    top_k = len(top_ids)
    dots = (
        alt.Chart(alt.Data(values=values))
        .transform_calculate(rank=f"datum.r == null ? '> {top_k}' : '' + datum.r")
        .mark_point(filled=True, size=70)
        .encode(
            x=alt.X(
                "p:Q",
                title="probability (log scale)",
                scale=alt.Scale(type="log", domainMin=floor),
                axis=alt.Axis(format="~%"),
            ),
            y=alt.Y("t:N", sort="-x", title=None),
            color=alt.Color(
                "g:N",
                title=None,
                scale=alt.Scale(domain=GROUPS, scheme="dark2"),
                legend=alt.Legend(orient="bottom", columns=2),
            ),
            shape=alt.Shape(
                "g:N", scale=alt.Scale(domain=GROUPS), legend=alt.Legend(orient="bottom", columns=2)
            ),
            tooltip=[
                alt.Tooltip("t:N", title="token"),
                alt.Tooltip("p:Q", title="probability", format=".3~%"),
                alt.Tooltip("rank:N", title=rank_title()),
                alt.Tooltip("g:N", title="group"),
            ],
        )
        .properties(
            width=WIDTH,
            height=max(60, 16 * len(values)),
            title=f"Next-token probabilities after “{context_before(trace, position)}”",
        )
    )

    def described(text: str, prob: float, rank: int | None) -> str:
        where = fmt_rank(rank) if rank is not None else f"not in the top {top_k}"
        return f"{token_html(text)} {fmt_pct(prob)} ({where})"

    bets = [c for c in candidates if c[3] == GROUPS[0]]
    correct = [c for c in candidates if c[3] == GROUPS[1]]
    if bets and correct:
        best_correct = max(correct, key=lambda c: c[1])
        verdict = BORNE_OUT if bets[0][1] > best_correct[1] else NOT_BORNE_OUT
        judged = (
            f"Frequency beats correctness: {token_html(bets[0][0])} is "
            f"{bets[0][1] / max(best_correct[1], 1e-12):,.1f}&times; as probable as "
            f"{token_html(best_correct[0])}."
            if verdict == BORNE_OUT
            else f"Correctness wins: {token_html(best_correct[0])} is "
            f"{best_correct[1] / max(bets[0][1], 1e-12):,.1f}&times; as probable as "
            f"{token_html(bets[0][0])}."
        )
    else:
        verdict, judged = CONTEXT, "The trace does not watch both the bet and a correct answer."
    top_text = text_of(top_ids[0]) if top_k else ""
    items = [
        "Candidates: "
        + (
            ", ".join(described(t, p, r) for t, p, r, _ in sorted(candidates, key=lambda c: -c[1]))
            or "none watched"
        )
        + ".",
        f"The model's own first choice there is {token_html(top_text)} "
        f"({fmt_pct(top_probs[0] if top_k else np.nan)}).",
        judged,
    ]
    facts = {
        "count_position": position,
        "count_step": count.step,
        "candidates": {t: p for t, p, _, _ in candidates},
        "ranks": {t: r for t, _, r, _ in candidates},
    }
    alt_text = (
        "At the count position: "
        + ", ".join(
            f"{show_token(t)} {fmt_pct(p)}"
            for t, p, _, _ in sorted(candidates, key=lambda c: -c[1])[:4]
        )
        + f"; the model's first choice is {show_token(top_text)}."
    )
    return Panel(
        key="p5",
        question="Where the count is due, how likely are “two”, “no” and “zero”?",
        charts=[to_chart(dots, alt_text)],
        caption=caption(
            f"The count position is position {position}, after "
            f"<q>{escape(context_before(trace, position))}</q>: {count.how}.",
            items,
        ),
        verdict=verdict,
        facts=facts,
    )
