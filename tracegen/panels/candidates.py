"""¶5: "'zero eyes' or 'no eyes' ... they optimize for frequency but expect correctness": the
probabilities of candidate counts where the model has to say how many eyes."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt

from ..store import Trace
from .story import CountPosition, context_before, count_position, count_tokens, vocabulary
from .style import WIDTH, colour_scale
from .types import BORNE_OUT, CONTEXT, NOT_BORNE_OUT, PanelDef, Words
from .vega import sig
from .words import (
    caption,
    count_how,
    escape,
    fmt_pct,
    fmt_rank,
    rank_title,
    show_token,
    shown_rank,
    token_html,
)

# The story's words: the common answer the narrator bets on, and the correct ones it expects
# the humans want.
BET_WORDS = {"two"}
CORRECT_WORDS = {"no", "zero", "none", "0"}
GROUPS = ["the narrator's bet", "a correct answer", "another count", "the model's top choices"]


def word(text: str) -> str:
    return text.strip().lower()


@dataclass(frozen=True)
class Candidate:
    id: int  # token id
    text: str  # the token as the trace spells it
    prob: float  # the model's probability for it at the count position
    rank: int | None  # 0-based rank at the output; None when not in the stored top-k
    group: str  # one of GROUPS


@dataclass(frozen=True)
class CandidatesFacts:
    count: CountPosition
    context: str  # the text just before the count position
    top: tuple[tuple[int, str, float], ...]  # [k] the output's top-k (id, text, prob.) there
    candidates: tuple[Candidate, ...]  # the watched count words, most probable first
    bet: Candidate | None  # the narrator's bet ("two"), if watched
    best_correct: Candidate | None  # the most probable correct answer, if watched
    verdict: str

    @property
    def count_position(self) -> int:
        return self.count.position

    @property
    def ratio(self) -> float:
        """How many times as probable the winner of bet vs correct is as the loser."""
        if self.bet is None or self.best_correct is None:
            return float("nan")
        high, low = sorted((self.bet.prob, self.best_correct.prob), reverse=True)
        return high / max(low, 1e-12)


def measure_candidates(trace: Trace) -> CandidatesFacts:
    count = count_position(trace)
    position = count.position
    text_of = vocabulary(trace)
    top_ids = trace.derived("lens_topk_ids")[-1, position]
    top_probs = trace.derived("lens_topk_probs")[-1, position]
    watched_probs = trace.derived("watched_probs")[-1, position]
    rank_of = {int(token_id): rank for rank, token_id in enumerate(top_ids)}
    candidates = []
    for w, token_id, text in count_tokens(trace):
        group = (
            GROUPS[0]
            if word(text) in BET_WORDS
            else (GROUPS[1] if word(text) in CORRECT_WORDS else GROUPS[2])
        )
        candidates.append(
            Candidate(token_id, text, float(watched_probs[w]), rank_of.get(token_id), group)
        )
    candidates.sort(key=lambda c: -c.prob)
    bets = [c for c in candidates if c.group == GROUPS[0]]
    correct = [c for c in candidates if c.group == GROUPS[1]]
    bet = bets[0] if bets else None
    best_correct = max(correct, key=lambda c: c.prob) if correct else None
    if bet and best_correct:
        verdict = BORNE_OUT if bet.prob > best_correct.prob else NOT_BORNE_OUT
    else:
        verdict = CONTEXT
    return CandidatesFacts(
        count=count,
        context=context_before(trace, position),
        top=tuple((int(i), text_of(i), float(p)) for i, p in zip(top_ids, top_probs, strict=True)),
        candidates=tuple(candidates),
        bet=bet,
        best_correct=best_correct,
        verdict=verdict,
    )


def candidates_words(f: CandidatesFacts) -> Words:
    top_k = len(f.top)

    def described(c: Candidate) -> str:
        where = fmt_rank(c.rank) if c.rank is not None else f"not in the top {top_k}"
        return f"{token_html(c.text)} {fmt_pct(c.prob)} ({where})"

    if f.bet and f.best_correct:
        judged = (
            f"Frequency beats correctness: {token_html(f.bet.text)} is "
            f"{f.ratio:,.1f}&times; as probable as {token_html(f.best_correct.text)}."
            if f.verdict == BORNE_OUT
            else f"Correctness wins: {token_html(f.best_correct.text)} is "
            f"{f.ratio:,.1f}&times; as probable as {token_html(f.bet.text)}."
        )
    else:
        judged = "The trace does not watch both the bet and a correct answer."
    _, top_text, top_prob = f.top[0] if top_k else (0, "", float("nan"))
    items = [
        "Candidates: " + (", ".join(described(c) for c in f.candidates) or "none watched") + ".",
        f"The model's own first choice there is {token_html(top_text)} ({fmt_pct(top_prob)}).",
        judged,
    ]
    alt_text = (
        "At the count position: "
        + ", ".join(f"{show_token(c.text)} {fmt_pct(c.prob)}" for c in f.candidates[:4])
        + f"; the model's first choice is {show_token(top_text)}."
    )
    return Words(
        caption=caption(
            f"The count position is position {f.count_position}, after "
            f"<q>{escape(f.context)}</q>: {count_how(f.count)}.",
            items,
        ),
        alts=(alt_text,),
    )


def candidates_charts(f: CandidatesFacts) -> list[alt.TopLevelMixin]:
    rows: dict[int, dict] = {}  # by token id: two ids may decode to the same text
    for rank, (token_id, text, prob) in enumerate(f.top):
        rows[token_id] = {"t": show_token(text), "p": sig(prob), "g": GROUPS[3], "r": rank + 1}
    for c in f.candidates:
        rank = shown_rank(c.rank) if c.rank is not None else None
        rows[c.id] = {"t": show_token(c.text), "p": sig(c.prob), "g": c.group, "r": rank}
    values = sorted(rows.values(), key=lambda row: -(row["p"] or 0))
    floor = max(min((row["p"] for row in values if row["p"]), default=1e-6) / 2, 1e-9)
    dots = (
        alt.Chart(alt.Data(values=values))
        .transform_calculate(rank=f"datum.r == null ? '> {len(f.top)}' : '' + datum.r")
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
                scale=alt.Scale(**colour_scale(GROUPS)),
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
            title=f"Next-token probabilities after “{f.context}”",
        )
    )
    return [dots]


PANEL = PanelDef(
    key="p5",
    question="Where the count is due, how likely are “two”, “no” and “zero”?",
    measure=measure_candidates,
    words=candidates_words,
    charts=candidates_charts,
)
