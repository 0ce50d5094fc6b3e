"""¶8: "the decoder above me must have sampled 'foot' ... My personal bet is on 'two eyes'":
the greedy continuation step by step, and the bet read through the lens at every depth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np

from ..store import Trace
from .story import (
    CountPosition,
    answer_position,
    context_before,
    count_position,
    count_tokens,
    three_quarters_depth,
    vocabulary,
)
from .style import CANVAS, MIN_WIDTH, SEQUENTIAL, WIDTH, colour_scale
from .types import BORNE_OUT, MIXED, NOT_BORNE_OUT, PanelDef, Words
from .vega import cell_ink, depth_axis, rounded, sig, value_labels
from .words import (
    caption,
    count,
    escape,
    fmt_pct,
    rank_title,
    show_token,
    token_html,
    visible_controls,
)

FIRST_WORD = "foot"  # what the narrator says the decoder sampled
BET_WORD = "two"  # the narrator's bet
ROLE_NAMES = {"bet": "the bet", "chosen": "chosen", "bet & chosen": "the bet, chosen"}


def depth_ranges(depths: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    if not depths:
        return "no depth"
    runs, start = [], depths[0]
    for previous, current in zip(depths, [*depths[1:], None], strict=True):
        if current != previous + 1 if current is not None else True:
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ("depth " if len(depths) == 1 else "depths ") + ", ".join(runs)


@dataclass(frozen=True)
class WatchedLine:
    """One watched token through the lens at the count position."""

    text: str
    role: str  # "bet", "chosen", "bet & chosen" or "other"
    probs: np.ndarray  # [L+1] its probability at each depth


@dataclass(frozen=True)
class ContinuationFacts:
    n_layers: int
    top_k: int
    generated: tuple[str, ...]  # the greedy continuation, token by token
    steps: tuple[tuple[str, ...], ...]  # [S][k] each step's top-k token text at the output
    step_probs: np.ndarray  # [S, k] their probabilities
    count: CountPosition
    lines: tuple[WatchedLine, ...]  # the count words (and the bet, the choice), drawing order
    foot_won: bool  # the first generated token is "foot"
    two_won: bool  # the token chosen at the count is "two"
    two_led_depths: tuple[int, ...]  # depths where "two" is the lens's top-1 at the count
    three_quarters_depth: int
    narrator_top: str  # the lens's top-1 at the count position at three quarters
    # (depth, probability) where "two" peaks, and its probability at the output; None if unwatched
    bet_peak: tuple[int, float, float] | None
    prompt_end: str  # the end of the prompt's last line
    stop_reason: str
    verdict: str

    @property
    def first(self) -> str:
        return self.generated[0] if self.generated else ""

    @property
    def chosen(self) -> str:
        step = self.count.step
        return self.generated[step] if step < len(self.generated) else ""

    @property
    def continuation(self) -> str:
        return visible_controls("".join(self.generated).replace("\n", "↵"))


def measure_continuation(trace: Trace) -> ContinuationFacts:
    n_layers = trace.n_layers
    text_of = vocabulary(trace)
    start = answer_position(trace)
    n_steps = trace.n_positions - start
    top_ids = trace.derived("lens_topk_ids")  # [L+1, N, k]
    top_probs = trace.derived("lens_topk_probs")
    generated = tuple(trace.generated_strings)
    count = count_position(trace)

    # The count words over depth where the count is due. The narrator's bet and the model's
    # choice there come first in the legend; the others after them.
    watched_probs = trace.derived("watched_probs")[:, count.position]  # [L+1, W]
    bet_ids = [int(e["id"]) for e in trace.watched if str(e["text"]).strip().lower() == BET_WORD]
    chosen_id = trace.generated_ids[count.step] if count.step < len(trace.generated_ids) else None
    shown = [w for w, _, _ in count_tokens(trace)] or list(range(len(trace.watched)))
    roles = {}
    for w, entry in enumerate(trace.watched):
        token_id = int(entry["id"])
        role = [
            name
            for name, hit in (("bet", token_id in bet_ids), ("chosen", token_id == chosen_id))
            if hit
        ]
        if role or w in shown:
            roles[w] = " & ".join(role) or "other"
    order = sorted(roles, key=lambda w: (roles[w] == "other", "chosen" in roles[w], w))
    lines = tuple(
        WatchedLine(str(trace.watched[w]["text"]), roles[w], watched_probs[:, w]) for w in order
    )

    first = generated[0] if generated else ""
    chosen = generated[count.step] if count.step < len(generated) else ""
    foot_won = first.strip().lower() == FIRST_WORD
    two_won = chosen.strip().lower() == BET_WORD
    led = [d for d in range(n_layers + 1) if int(top_ids[d, count.position, 0]) in bet_ids]
    deep = three_quarters_depth(n_layers)
    bet_columns = [w for w, e in enumerate(trace.watched) if int(e["id"]) in bet_ids]
    bet_peak = None
    if bet_columns:
        bet_probs = np.nan_to_num(watched_probs[:, bet_columns[0]])
        peak = int(np.argmax(bet_probs))
        bet_peak = (peak, float(bet_probs[peak]), float(bet_probs[-1]))
    return ContinuationFacts(
        n_layers=n_layers,
        top_k=trace.top_k,
        generated=generated,
        steps=tuple(
            tuple(text_of(i) for i in top_ids[-1, start + step]) for step in range(n_steps)
        ),
        step_probs=top_probs[-1, start : start + n_steps],
        count=count,
        lines=lines,
        foot_won=foot_won,
        two_won=two_won,
        two_led_depths=tuple(led),
        three_quarters_depth=deep,
        narrator_top=text_of(top_ids[deep, count.position, 0]),
        bet_peak=bet_peak,
        prompt_end=visible_controls(context_before(trace, start, same_line=True)),
        stop_reason=stop_reason(trace),
        verdict=BORNE_OUT
        if foot_won and two_won
        else MIXED
        if foot_won or two_won
        else NOT_BORNE_OUT,
    )


def continuation_words(f: ContinuationFacts) -> Words:
    first, chosen, step = f.first, f.chosen, f.count.step
    first_prob = f.step_probs[0, 0] if len(f.step_probs) else float("nan")
    chosen_prob = f.step_probs[step, 0] if step < len(f.step_probs) else float("nan")
    led = list(f.two_led_depths)
    items = [
        f"First step: the model chose {token_html(first)} ({fmt_pct(first_prob)}): "
        + ("as the narrator says." if f.foot_won else f"not {token_html(' ' + FIRST_WORD)}."),
        f"The count is due at step {step + 1}"
        + (f", not right after {token_html(first)}" if step > 1 else "")
        + f"; there the model chose {token_html(chosen)} ({fmt_pct(chosen_prob)})"
        + (
            ", the narrator's bet."
            if f.two_won
            else f", not the narrator's bet {token_html(' ' + BET_WORD)}."
        ),
        f"Through the lens at the count position {token_html(' ' + BET_WORD)} is the top-1 at "
        f"{depth_ranges(led)} of 0-{f.n_layers}; at three quarters of the depth (depth "
        f"{f.three_quarters_depth}, where the narrator places itself) the top-1 is "
        f"{token_html(f.narrator_top)}.",
    ]
    if f.bet_peak is not None:
        peak, prob, final = f.bet_peak
        items.append(
            f"{token_html(' ' + BET_WORD)} peaks at depth {peak} with {fmt_pct(prob)}; "
            f"the output gives it {fmt_pct(final)}."
        )
    alts = (
        f"The model continued with “{f.continuation.strip()}”: the first token was "
        f"{show_token(first)} and at the count it chose {show_token(chosen)}.",
        f"Through the lens, {BET_WORD} leads at {depth_ranges(led)}.",
    )
    return Words(
        caption=caption(
            f"Greedy continuation after <q>{escape(f.prompt_end)}</q>: "
            f"<q>{escape(f.continuation)}</q> "
            f"({count(len(f.generated), 'token')}, {escape(f.stop_reason)}).",
            items,
        ),
        alts=alts,
    )


def continuation_charts(f: ContinuationFacts) -> list[alt.TopLevelMixin]:
    n_layers = f.n_layers
    # Chart 1: each step's top-k at the output.
    rows = [
        {
            "s": step + 1,
            "g": show_token(f.generated[step]) if step < len(f.generated) else "",
            "t": [show_token(text) for text in texts],
            "q": rounded(f.step_probs[step], 3),
        }
        for step, texts in enumerate(f.steps)
    ]
    tooltip = [
        alt.Tooltip("s:O", title="step"),
        alt.Tooltip("g:N", title="chosen"),
        alt.Tooltip("r:O", title=rank_title()),
        alt.Tooltip("t:N", title="token"),
        alt.Tooltip("q:Q", title="probability", format=".1%"),
    ]
    base = (
        alt.Chart(alt.Data(values=rows))
        .transform_flatten(["t", "q"])
        .transform_window(r="row_number()", groupby=["s"])
    )
    x = alt.X(
        "s:O",
        title="step (chosen token)",
        axis=alt.Axis(labelAngle=0, labelExpr=_step_labels(rows)),
    )
    y = alt.Y("r:O", title=rank_title())
    cells = base.mark_rect().encode(
        x=x,
        y=y,
        tooltip=tooltip,
        color=alt.Color(
            "q:Q",
            title="probability",
            legend=alt.Legend(format="%"),
            scale=alt.Scale(scheme=SEQUENTIAL, domain=[0, 1]),
        ),
    )
    # Labels on data-coloured cells follow the cell's lightness, not the page theme.
    # Labels as wide as their step's column, which follows the panel's width.
    limit = alt.ExprRef(f"max(24, width / {max(len(rows), 1)} - 4)")
    words = base.mark_text(fontSize=9, limit=limit).encode(
        x=x,
        y=y,
        text="t:N",
        tooltip=tooltip,
        color=cell_ink("q"),
    )
    table = (
        alt.layer(cells, words)
        .properties(
            width=WIDTH,
            height=18 * f.top_k,
            title="The greedy continuation: each step's top choices",
        )
        # A table of words: narrower than this it scrolls sideways rather than squeeze them.
        .properties(usermeta={**CANVAS, MIN_WIDTH: WIDTH + 100})
    )

    # Chart 2: the count words over depth where the count is due. The narrator's bet and the
    # model's choice there come first, in solid heavy lines; the others are dashed.
    depth_rows = [
        {
            "w": show_token(line.text)
            + ("" if line.role == "other" else f" ({ROLE_NAMES[line.role]})"),
            "e": int(line.role != "other"),
            "v": sig(line.probs, 3),
        }
        for line in f.lines
    ]
    three_quarters = [{"d": f.three_quarters_depth, "what": "three quarters (the story)"}]
    names = [row["w"] for row in depth_rows]
    emphasised = [row["e"] for row in depth_rows]

    def by_word(values: list[Any]) -> alt.Scale:  # ordinal: one value per word, as listed
        return alt.Scale(type="ordinal", domain=names, range=values)

    # Colour and dash follow the word, so the legend shows each line as drawn.
    encoding = dict(
        x=alt.X("d:Q", axis=depth_axis(n_layers)),
        y=alt.Y("v:Q", title="probability", axis=alt.Axis(format="%")),
        color=alt.Color(
            "w:N",
            title=None,
            # Each word the colour of what it is: the bet, the model's choice, a correct
            # answer, another count (several words may share one; the dashes tell them apart).
            scale=by_word(colour_scale(names)["range"]),
            legend=alt.Legend(orient="right", symbolType="stroke", symbolSize=300),
        ),
        strokeDash=alt.StrokeDash(
            "w:N", title=None, scale=by_word([[1, 0] if e else [4, 3] for e in emphasised])
        ),
        # Width by condition, not by scale: Vega-Lite warns about width scales on names.
        strokeWidth=alt.condition("datum.e", alt.value(3), alt.value(1.5)),
        tooltip=[
            alt.Tooltip("w:N", title="token"),
            alt.Tooltip("d:Q", title="depth"),
            alt.Tooltip("v:Q", title="probability", format=".2%"),
        ],
    )
    line = alt.Chart().mark_line(point=alt.OverlayMarkDef(size=24)).encode(**encoding)
    lines = (  # the others first, so that the bet and the choice are drawn over them
        alt.layer(
            line.transform_filter("!datum.e"),
            line.transform_filter("datum.e"),
            data=alt.Data(values=depth_rows),
        )
        .transform_flatten(["v"])
        .transform_window(_n="row_number()", groupby=["w"])
        .transform_calculate(d="datum._n - 1")
    )
    rule = (
        alt.Chart(alt.Data(values=three_quarters))
        .mark_rule(strokeDash=[4, 3])
        .encode(
            x="d:Q",
            tooltip=[alt.Tooltip("what:N"), alt.Tooltip("d:Q", title="depth", format="d")],
        )
    )
    over_depth = alt.layer(lines, rule).properties(
        width=WIDTH - 80,
        height=150,
        title="The count words through the lens, where the count is due",
    )
    return [table, over_depth]


def stop_reason(trace: Trace) -> str:
    tokens = trace.manifest.get("tokens", {})
    return str(tokens.get("stop_reason") or trace.manifest.get("stop_reason") or "stopped")


def _step_labels(rows: list[dict[str, Any]]) -> str:
    names = {row["s"]: f"{row['s']}: {row['g']}" for row in rows}
    return value_labels(names)


PANEL = PanelDef(
    key="p8",
    question="Did the decoder pick “foot”, and did the narrator's bet on “two” win?",
    measure=measure_continuation,
    words=continuation_words,
    charts=continuation_charts,
)
