"""¶4: "I dispatched a few heads to attend again to the end of the sequence": a layer x head
grid of three head scores.

end of sequence  attention mass from the last prompt position on the last two Q/A blocks
                 (the lines the story quotes after this sentence);
previous token   mean attention from each prompt token to the one before it;
induction        mean attention from a token to the token that followed an earlier
                 occurrence of it (the "copy what came next last time" circuit; the Q/A
                 template repeats, so the prompt has many such repeats).
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np

from ..policy import induction_chance
from ..store import Trace
from .story import answer_position, end_span, sink_shares, unplaced_attention
from .style import CANVAS, SEQUENTIAL, WIDTH
from .types import BORNE_OUT, MIXED, NOT_BORNE_OUT, PanelDef, Words
from .vega import label_expr, rounded
from .words import caption, count, escape, fmt_pct, head_label, plural, verb

END_SHARE = 0.5  # a head "attends to the end" with at least half its attention there
A_FEW = 0.25  # "a few heads": at most a quarter of all heads
PREVIOUS_THRESHOLD = 0.5  # a previous-token head gives the previous token at least half
INDUCTION_THRESHOLD = 0.3  # an induction head gives the induction targets at least 30%

SCORE_LABELS = {"e": "end of sequence", "p": "previous token", "i": "induction"}


def head_scores(trace: Trace) -> dict[str, np.ndarray]:
    """Each score as [L, H], plus the chance levels. Previous-token and induction scores
    need every prompt row: they were computed at trace time, whatever rows the trace keeps
    (policy.HEAD_SCORES); the end-of-sequence score reads the answer position's row."""
    position = answer_position(trace)
    end = end_span(trace)
    rows = np.stack([trace.attention_row(i, position) for i in range(trace.n_layers)])
    out = {
        "e": np.nan_to_num(rows[:, :, end.start : end.stop].astype(np.float64).sum(-1)),
        "p": trace.derived("head_previous_token").astype(np.float64),
        "i": trace.derived("head_induction").astype(np.float64),
    }
    out["induction_chance"] = np.array(induction_chance(trace.token_ids[: trace.n_prompt]))
    out["end_uniform"] = np.array((end.stop - end.start) / max(position + 1, 1))
    return out


def _best(grid: np.ndarray) -> tuple[int, int, float]:
    layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(layer), int(head), float(grid[layer, head])


@dataclass(frozen=True)
class HeadsFacts:
    n_layers: int
    n_heads: int
    scores: dict[str, np.ndarray]  # "e", "p", "i" (SCORE_LABELS): [L, H] each
    end_heads: int  # heads with at least END_SHARE of the last position's attention at the end
    previous_heads: int  # heads with a previous-token score of at least PREVIOUS_THRESHOLD
    induction_heads: int  # heads with an induction score of at least INDUCTION_THRESHOLD
    best: dict[str, tuple[int, int, float]]  # score -> (layer, head, value), 0-based
    induction_chance: float  # the induction score of uniform attention
    end_uniform_share: float  # the share of the visible prompt the end span holds
    verdict: str
    policy: str  # the trace's --attention policy
    unplaced: float  # topk:K: the most of one head's last-position row not placed (else 0)
    # A model with learned attention sinks (GPT-OSS): [L, H] share of each head's prompt rows
    # going to its sink rather than to any token; None for a model without sinks.
    learned_sink: np.ndarray | None = None

    @property
    def n_all(self) -> int:
        return self.n_layers * self.n_heads


def measure_heads(trace: Trace) -> HeadsFacts:
    scores = head_scores(trace)
    n_all = trace.n_layers * trace.model.n_heads
    end_heads = int((scores["e"] >= END_SHARE).sum())
    if end_heads == 0:
        verdict = NOT_BORNE_OUT
    elif end_heads <= A_FEW * n_all:
        verdict = BORNE_OUT
    else:
        verdict = MIXED  # many heads look there: recency, not a few dispatched heads
    return HeadsFacts(
        n_layers=trace.n_layers,
        n_heads=trace.model.n_heads,
        scores={key: scores[key] for key in SCORE_LABELS},
        end_heads=end_heads,
        previous_heads=int((scores["p"] >= PREVIOUS_THRESHOLD).sum()),
        induction_heads=int((scores["i"] >= INDUCTION_THRESHOLD).sum()),
        best={key: _best(scores[key]) for key in SCORE_LABELS},
        induction_chance=float(scores["induction_chance"]),
        end_uniform_share=float(scores["end_uniform"]),
        verdict=verdict,
        policy=trace.attention_policy,
        unplaced=unplaced_attention(trace, answer_position(trace)),
        learned_sink=sink_shares(trace),
    )


def heads_words(f: HeadsFacts) -> Words:
    def named(key: str) -> str:
        layer, head, value = f.best[key]
        return f"{head_label(layer, head)} ({fmt_pct(value)})"

    end, prev, induction = f.end_heads, f.previous_heads, f.induction_heads
    items = [
        f"End of the sequence: {end} of {count(f.n_all, 'head')} {verb(end, 'puts', 'put')} "
        f"at least {fmt_pct(END_SHARE)} of the last position's attention on the last two Q/A "
        f"blocks, which hold {fmt_pct(f.end_uniform_share)} of the prompt; the strongest is "
        f"{named('e')}. "
        + (
            f"That is {fmt_pct(end / max(f.n_all, 1))} of the heads: "
            + ("a few, as the narrator says." if f.verdict == BORNE_OUT else "more than a few.")
            if end
            else "No head does."
        ),
        f"Previous token: {count(prev, 'head')} {verb(prev, 'gives', 'give')} the previous "
        f"token at least {fmt_pct(PREVIOUS_THRESHOLD)} of {verb(prev, 'its', 'their')} "
        f"attention; the strongest is {named('p')}.",
        f"Induction: {count(induction, 'head')} {verb(induction, 'puts', 'put')} at least "
        f"{fmt_pct(INDUCTION_THRESHOLD)} on the token that followed an earlier copy of the "
        f"current one (uniform attention would give {fmt_pct(f.induction_chance)}); the "
        f"strongest is {named('i')}. "
        + (
            "Induction heads exist here."
            if induction
            else "By this threshold there are no induction heads."
        ),
    ]
    if f.learned_sink is not None:
        layer, head = np.unravel_index(int(np.argmax(f.learned_sink)), f.learned_sink.shape)
        items.append(
            "Learned sinks: a row here sums to less than 1, since each head sends "
            f"{fmt_pct(f.learned_sink.mean())} of its attention over the prompt on average "
            "to a learned sink rather than to any token (the most: "
            f"{head_label(int(layer), int(head))} with {fmt_pct(f.learned_sink[layer, head])}), "
            "so these scores are shares of the whole row, that sink included."
        )
    if f.unplaced > 0:
        items.append(
            f"This trace keeps each row's largest weights only (<code>--attention "
            f"{escape(f.policy)}</code>): up to {fmt_pct(f.unplaced)} of a head's attention "
            "from the last position is on keys it does not name, so end-of-sequence scores "
            "are lower bounds. Previous-token and induction scores were measured from every "
            "row as the trace was made."
        )
    alt_text = (
        f"{end} of {count(f.n_all, 'head')} {verb(end, 'puts', 'put')} at least half of the "
        f"last position's attention on the last two Q/A blocks; {prev} "
        f"{verb(prev, 'is a previous-token head', 'are previous-token heads')} and {induction} "
        f"{plural('induction head', induction)}; the best induction score is "
        f"{fmt_pct(f.best['i'][2])}."
    )
    return Words(
        caption=caption("Three scores for every head, measured on this prompt.", items),
        alts=(alt_text,),
    )


def heads_charts(f: HeadsFacts) -> list[alt.TopLevelMixin]:
    rows = [
        {"l": layer + 1, **{key: rounded(f.scores[key][layer], 3) for key in SCORE_LABELS}}
        for layer in range(f.n_layers)
    ]
    tooltip = [
        alt.Tooltip("l:O", title="layer"),
        alt.Tooltip("h:O", title="head"),
        alt.Tooltip("score:N", title="score"),
        alt.Tooltip("value:Q", format=".1%"),
    ]
    cell = max(6, min(18, (WIDTH // 3 - 20) // max(f.n_heads, 1)))
    grid = (
        alt.Chart(alt.Data(values=rows))
        .transform_flatten(list(SCORE_LABELS))
        .transform_window(h="row_number()", groupby=["l"])
        .transform_fold(list(SCORE_LABELS), as_=["score", "value"])
        .transform_calculate(score=label_expr("score", SCORE_LABELS))
        .mark_rect()
        .encode(
            x=alt.X("h:O", title="head"),
            y=alt.Y("l:O", title="layer", axis=alt.Axis(labelOverlap=True)),
            color=alt.Color(
                "value:Q",
                title="score",
                legend=alt.Legend(format="%"),
                scale=alt.Scale(scheme=SEQUENTIAL, domain=[0, 1]),
            ),
            tooltip=tooltip,
        )
        .properties(width=cell * f.n_heads, height=max(80, 8 * f.n_layers))
        .facet(column=alt.Column("score:N", title=None, sort=list(SCORE_LABELS.values())))
        .properties(usermeta=CANVAS, title="Head scores (layer x head)")
    )
    return [grid]


PANEL = PanelDef(
    key="p4",
    question="Which heads attend to the end of the sequence, and does the model copy the "
    "Q/A template with induction heads?",
    measure=measure_heads,
    words=heads_words,
    charts=heads_charts,
)
