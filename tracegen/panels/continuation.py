"""¶8: "the decoder above me must have sampled 'foot' ... My personal bet is on 'two eyes'":
the greedy continuation step by step, and the bet read through the lens at every depth."""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    BORNE_OUT,
    CANVAS,
    CATEGORICAL,
    MIN_WIDTH,
    MIXED,
    NOT_BORNE_OUT,
    SEQUENTIAL,
    WIDTH,
    answer_position,
    caption,
    cell_ink,
    context_before,
    count_position,
    count_tokens,
    depth_axis,
    escape,
    fmt_pct,
    rank_title,
    rounded,
    show_token,
    sig,
    three_quarters_depth,
    to_chart,
    token_html,
    value_labels,
    visible_controls,
    vocabulary,
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


def build(trace: Trace) -> Panel:
    n_layers = trace.n_layers
    text_of = vocabulary(trace)
    start = answer_position(trace)
    steps = list(range(trace.n_positions - start))
    top_ids = trace.derived("lens_topk_ids")
    top_probs = trace.derived("lens_topk_probs")
    generated = trace.generated_strings
    count = count_position(trace)

    # Chart 1: each step's top-k at the output.
    rows = [
        {
            "s": step + 1,
            "g": show_token(generated[step]) if step < len(generated) else "",
            "t": [show_token(text_of(i)) for i in top_ids[-1, start + step]],
            "q": rounded(top_probs[-1, start + step], 3),
        }
        for step in steps
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
    limit = alt.ExprRef(f"max(24, width / {max(len(steps), 1)} - 4)")
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
            height=18 * trace.top_k,
            title="The greedy continuation: each step's top choices",
        )
        # A table of words: narrower than this it scrolls sideways rather than squeeze them.
        .properties(usermeta={**CANVAS, MIN_WIDTH: WIDTH + 100})
    )

    # Chart 2: the count words over depth where the count is due. The narrator's bet and the
    # model's choice there come first, in solid heavy lines; the others are dashed.
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
    depth_rows = [
        {
            "w": show_token(str(trace.watched[w]["text"]))
            + ("" if roles[w] == "other" else f" ({ROLE_NAMES[roles[w]]})"),
            "e": int(roles[w] != "other"),
            "v": sig(watched_probs[:, w], 3),
        }
        for w in order
    ]
    narrator_depth = three_quarters_depth(n_layers)
    three_quarters = [{"d": narrator_depth, "what": "three quarters (the story)"}]
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
            scale=by_word([CATEGORICAL[i % len(CATEGORICAL)] for i in range(len(names))]),
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

    first = generated[0] if generated else ""
    foot_won = first.strip().lower() == FIRST_WORD
    chosen = generated[count.step] if count.step < len(generated) else ""
    two_won = chosen.strip().lower() == BET_WORD
    led = (
        [d for d in range(n_layers + 1) if int(top_ids[d, count.position, 0]) in bet_ids]
        if bet_ids
        else []
    )
    narrator_top = text_of(top_ids[narrator_depth, count.position, 0])
    verdict = BORNE_OUT if foot_won and two_won else MIXED if foot_won or two_won else NOT_BORNE_OUT
    continuation = visible_controls("".join(generated).replace("\n", "↵"))
    prompt_end = visible_controls(context_before(trace, start, same_line=True))
    items = [
        f"First step: the model chose {token_html(first)} "
        f"({fmt_pct(top_probs[-1, start, 0])}): "
        + ("as the narrator says." if foot_won else f"not {token_html(' ' + FIRST_WORD)}."),
        f"The count is due at step {count.step + 1}"
        + (f", not right after {token_html(first)}" if count.step > 1 else "")
        + f"; there the model chose {token_html(chosen)} "
        f"({fmt_pct(top_probs[-1, count.position, 0])})"
        + (
            ", the narrator's bet."
            if two_won
            else f", not the narrator's bet {token_html(' ' + BET_WORD)}."
        ),
        f"Through the lens at the count position {token_html(' ' + BET_WORD)} is the top-1 at "
        f"{depth_ranges(led)} of 0-{n_layers}; at three quarters of the depth (depth "
        f"{narrator_depth}, where the narrator places itself) the top-1 is "
        f"{token_html(narrator_top)}.",
    ]
    bet_columns = [w for w, e in enumerate(trace.watched) if int(e["id"]) in bet_ids]
    if bet_columns:
        bet_probs = np.nan_to_num(watched_probs[:, bet_columns[0]])
        peak = int(np.argmax(bet_probs))
        items.append(
            f"{token_html(' ' + BET_WORD)} peaks at depth {peak} with {fmt_pct(bet_probs[peak])}; "
            f"the output gives it {fmt_pct(bet_probs[-1])}."
        )
    facts = {
        "foot_won": foot_won,
        "two_won": two_won,
        "count_step": count.step,
        "two_led_depths": led,
        "continuation": continuation,
    }
    alt_text = (
        f"The model continued with “{continuation.strip()}”: the first token was "
        f"{show_token(first)} and at the count it chose {show_token(chosen)}."
    )
    return Panel(
        key="p8",
        question="Did the decoder pick “foot”, and did the narrator's bet on “two” win?",
        charts=[
            to_chart(table, alt_text),
            to_chart(over_depth, f"Through the lens, {BET_WORD} leads at {depth_ranges(led)}."),
        ],
        caption=caption(
            f"Greedy continuation after <q>{escape(prompt_end)}</q>: "
            f"<q>{escape(continuation)}</q> "
            f"({len(generated)} tokens, {escape(stop_reason(trace))}).",
            items,
        ),
        verdict=verdict,
        facts=facts,
    )


def stop_reason(trace: Trace) -> str:
    tokens = trace.manifest.get("tokens", {})
    return str(tokens.get("stop_reason") or trace.manifest.get("stop_reason") or "stopped")


def _step_labels(rows: list[dict]) -> str:
    names = {row["s"]: f"{row['s']}: {row['g']}" for row in rows}
    return value_labels(names)
