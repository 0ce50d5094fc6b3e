"""Intro: the model card of the traced model, set against GPT-3, the story's model."""

from __future__ import annotations

import altair as alt

from ..store import Trace
from . import Panel
from .common import (
    CATEGORICAL,
    CONTEXT,
    GPT3_LAYERS,
    GPT3_PARAMS,
    STORY_TOKEN,
    WIDTH,
    caption,
    escape,
    fmt_count,
    fmt_int,
    js_string,
    ordinal,
    to_chart,
)


def build(trace: Trace) -> Panel:
    card = trace.model
    depth_ratio = GPT3_LAYERS / max(card.n_layers, 1)
    size_ratio = GPT3_PARAMS / max(card.n_params, 1)
    gpt3 = "GPT-3 (the story)"
    rows = [
        {"model": model, "what": what, "value": value, "label": fmt_count(value)}
        for what, ours, theirs in (
            ("layers", card.n_layers, GPT3_LAYERS),
            ("parameters", card.n_params, GPT3_PARAMS),
        )
        for model, value in ((card.slug, ours), (gpt3, theirs))
    ]
    tooltip = [
        alt.Tooltip("model:N"),
        alt.Tooltip("what:N", title="what"),
        alt.Tooltip("value:Q", format=",.0f", title="count"),
    ]
    # A log scale has no zero: bars start at 1 (one layer, one parameter) and the domain with
    # them. A domain that includes 0 gives a log scale nothing to draw (bars of width 0).
    x = alt.X(
        "value:Q",
        title=None,
        scale=alt.Scale(type="log", domainMin=1),
        # SI prefixes, but billions as B (a reader takes "G" for a unit)
        axis=alt.Axis(format="~s", labelExpr="replace(datum.label, 'G', 'B')", tickCount=6),
    )
    y = alt.Y("model:N", title=None, sort=[card.slug, gpt3])
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=x,
            x2=alt.datum(1),
            y=y,
            color=alt.Color(
                "model:N",
                scale=alt.Scale(domain=[card.slug, gpt3], range=CATEGORICAL[1:3]),
                legend=None,
            ),
            tooltip=tooltip,
        )
    )
    # The count written inside the end of each bar, in the ink its fill needs.
    labels = (
        alt.Chart()
        .mark_text(align="right", dx=-4, fontSize=11)
        .encode(
            x=x,
            y=y,
            text="label:N",
            color=alt.condition(
                f"datum.model === {js_string(card.slug)}",
                alt.value("#ffffff"),
                alt.value("#000000"),
            ),
            tooltip=tooltip,
        )
    )
    chart = (
        alt.layer(bars, labels, data=alt.Data(values=rows))
        .properties(width=WIDTH, height=40)
        .facet(
            row=alt.Row("what:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left"))
        )
        .resolve_scale(x="independent")
        .properties(title="This model against GPT-3 (log scale)")
    )
    n_prompt = trace.n_prompt
    facts = {
        "n_layers": card.n_layers,
        "n_heads": card.n_heads,
        "n_kv_heads": card.n_kv_heads,
        "d_model": card.d_model,
        "n_params": card.n_params,
        "n_prompt": n_prompt,
        "gpt3_depth_ratio": depth_ratio,
        "gpt3_size_ratio": size_ratio,
    }
    name = escape(card.slug)
    alt_text = (
        f"{card.slug} has {card.n_layers} layers and {fmt_count(card.n_params)} parameters; "
        f"GPT-3 has {GPT3_LAYERS} layers ({depth_ratio:.1f}x deeper) and "
        f"{fmt_count(GPT3_PARAMS)} parameters ({size_ratio:,.0f}x more)."
    )
    text = caption(
        f"The narrator is GPT-3 ({GPT3_LAYERS} layers, {fmt_count(GPT3_PARAMS)} parameters). "
        f"The model traced here is <strong>{name}</strong> "
        f"(<code>{escape(card.architecture)}</code>): {depth_ratio:.1f}&times; shallower "
        f"and {size_ratio:,.0f}&times; smaller.",
        [
            f"{card.n_layers} layers, {card.n_heads} query heads sharing {card.n_kv_heads} "
            f"key/value heads, width {fmt_int(card.d_model)} ({card.d_head} per head), "
            f"MLP width {fmt_int(card.d_mlp)}",
            f"{fmt_int(card.n_params)} parameters, vocabulary of {fmt_int(card.vocab_size)} "
            f"tokens, context of {fmt_int(card.max_context)}, computed in {escape(card.dtype)}",
            f"the prompt is {n_prompt} tokens long"
            + (
                f", so the story's {ordinal(STORY_TOKEN)} token does not exist here"
                if n_prompt < STORY_TOKEN
                else ""
            )
            + f"; {len(trace.generated_ids)} tokens were generated greedily after it",
        ],
    )
    return Panel(
        key="intro",
        question="Which model is being read, and how does it compare with GPT-3?",
        charts=[to_chart(chart, alt_text)],
        caption=text,
        verdict=CONTEXT,
        facts=facts,
    )
