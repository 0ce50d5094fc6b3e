"""Intro: the model card of the traced model, set against GPT-3, the story's model."""

from __future__ import annotations

import html

import altair as alt

from ..store import Trace
from . import Panel
from .common import (
    CONTEXT,
    GPT3_LAYERS,
    GPT3_PARAMS,
    STORY_TOKEN,
    WIDTH,
    caption,
    fmt_count,
    fmt_int,
    ordinal,
    to_chart,
)


def build(trace: Trace) -> Panel:
    card = trace.model
    depth_ratio = GPT3_LAYERS / max(card.n_layers, 1)
    size_ratio = GPT3_PARAMS / max(card.n_params, 1)
    rows = [
        {"model": card.slug, "what": "layers", "value": card.n_layers},
        {"model": "GPT-3 (the story)", "what": "layers", "value": GPT3_LAYERS},
        {"model": card.slug, "what": "parameters", "value": card.n_params},
        {"model": "GPT-3 (the story)", "what": "parameters", "value": GPT3_PARAMS},
    ]
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("value:Q", format=",.0f", title="count")]
    bars = (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            x=alt.X("value:Q", title=None, scale=alt.Scale(type="log")),
            x2=alt.value(0),  # bars from the left edge: a log scale has no zero to start from
            y=alt.Y("model:N", title=None, sort=[card.slug]),
            color=alt.Color("model:N", scale=alt.Scale(scheme="viridis"), legend=None),
            tooltip=tooltip,
        )
    )
    chart = (
        bars.properties(width=WIDTH, height=40)
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
    name = html.escape(card.slug)
    alt_text = (
        f"{card.slug} has {card.n_layers} layers and {fmt_count(card.n_params)} parameters; "
        f"GPT-3 has {GPT3_LAYERS} layers ({depth_ratio:.1f}x deeper) and "
        f"{fmt_count(GPT3_PARAMS)} parameters ({size_ratio:,.0f}x more)."
    )
    text = caption(
        f"The narrator is GPT-3 ({GPT3_LAYERS} layers, {fmt_count(GPT3_PARAMS)} parameters). "
        f"The model traced here is <strong>{name}</strong> "
        f"(<code>{html.escape(card.architecture)}</code>): {depth_ratio:.1f}&times; shallower "
        f"and {size_ratio:,.0f}&times; smaller.",
        [
            f"{card.n_layers} layers, {card.n_heads} query heads sharing {card.n_kv_heads} "
            f"key/value heads, width {fmt_int(card.d_model)} ({card.d_head} per head), "
            f"MLP width {fmt_int(card.d_mlp)}",
            f"{fmt_int(card.n_params)} parameters, vocabulary of {fmt_int(card.vocab_size)} "
            f"tokens, context of {fmt_int(card.max_context)}, computed in {card.dtype}",
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
