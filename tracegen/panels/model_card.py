"""Intro: the model card of the traced model, set against GPT-3, the story's model."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt

from ..store import Trace
from .story import GPT3_LAYERS, GPT3_PARAMS, STORY_TOKEN
from .style import WIDTH, colour_scale
from .types import CONTEXT, PanelDef, Words
from .words import caption, count, escape, fmt_count, fmt_int, js_string, ordinal, plural


@dataclass(frozen=True)
class ModelCardFacts:
    slug: str
    architecture: str
    dtype: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_params: int
    vocab_size: int
    max_context: int
    n_prompt: int
    n_generated: int
    gpt3_depth_ratio: float  # GPT-3's layers / this model's
    gpt3_size_ratio: float  # GPT-3's parameters / this model's
    verdict: str = CONTEXT


def measure_model_card(trace: Trace) -> ModelCardFacts:
    card = trace.model
    return ModelCardFacts(
        slug=card.slug,
        architecture=card.architecture,
        dtype=card.dtype,
        n_layers=card.n_layers,
        n_heads=card.n_heads,
        n_kv_heads=card.n_kv_heads,
        d_model=card.d_model,
        d_head=card.d_head,
        d_mlp=card.d_mlp,
        n_params=card.n_params,
        vocab_size=card.vocab_size,
        max_context=card.max_context,
        n_prompt=trace.n_prompt,
        n_generated=len(trace.generated_ids),
        gpt3_depth_ratio=GPT3_LAYERS / max(card.n_layers, 1),
        gpt3_size_ratio=GPT3_PARAMS / max(card.n_params, 1),
    )


def model_card_words(f: ModelCardFacts) -> Words:
    alt_text = (
        f"{f.slug} has {count(f.n_layers, 'layer')} and {fmt_count(f.n_params)} "
        f"{plural('parameter', f.n_params)}; "
        f"GPT-3 has {GPT3_LAYERS} layers ({f.gpt3_depth_ratio:.1f}x deeper) and "
        f"{fmt_count(GPT3_PARAMS)} parameters ({f.gpt3_size_ratio:,.0f}x more)."
    )
    text = caption(
        f"The narrator is GPT-3 ({GPT3_LAYERS} layers, {fmt_count(GPT3_PARAMS)} parameters). "
        f"The model traced here is <strong>{escape(f.slug)}</strong> "
        f"(<code>{escape(f.architecture)}</code>): {f.gpt3_depth_ratio:.1f}&times; shallower "
        f"and {f.gpt3_size_ratio:,.0f}&times; smaller.",
        [
            f"{count(f.n_layers, 'layer')}, {count(f.n_heads, 'query head')} sharing "
            f"{f.n_kv_heads} key/value {plural('head', f.n_kv_heads)}, width "
            f"{fmt_int(f.d_model)} ({f.d_head} per head), MLP width {fmt_int(f.d_mlp)}",
            f"{count(f.n_params, 'parameter')}, vocabulary of {count(f.vocab_size, 'token')}, "
            f"context of {fmt_int(f.max_context)}, computed in {escape(f.dtype)}",
            f"the prompt is {count(f.n_prompt, 'token')} long"
            + (
                f", so the story's {ordinal(STORY_TOKEN)} token does not exist here"
                if f.n_prompt < STORY_TOKEN
                else ""
            )
            + f"; {count(f.n_generated, 'token')} "
            + ("was" if f.n_generated == 1 else "were")
            + " generated greedily after it",
        ],
    )
    return Words(caption=text, alts=(alt_text,))


def model_card_charts(f: ModelCardFacts) -> list[alt.TopLevelMixin]:
    gpt3 = "GPT-3 (the story)"
    rows = [
        {"model": model, "what": what, "value": value, "label": fmt_count(value)}
        for what, ours, theirs in (
            ("layers", f.n_layers, GPT3_LAYERS),
            ("parameters", f.n_params, GPT3_PARAMS),
        )
        for model, value in ((f.slug, ours), (gpt3, theirs))
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
    y = alt.Y("model:N", title=None, sort=[f.slug, gpt3])
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=x,
            x2=alt.datum(1),
            y=y,
            color=alt.Color(
                "model:N",
                scale=alt.Scale(**colour_scale([f.slug, gpt3], this_model=f.slug)),
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
                f"datum.model === {js_string(f.slug)}",
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
    return [chart]


PANEL = PanelDef(
    key="intro",
    question="Which model is being read, and how does it compare with GPT-3?",
    measure=measure_model_card,
    words=model_card_words,
    charts=model_card_charts,
)
