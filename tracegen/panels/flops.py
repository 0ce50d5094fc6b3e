"""¶2: "these precious FLOPs": where the prompt pass spends its arithmetic and its time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import altair as alt
import numpy as np

from ..store import Trace
from .story import THREE_QUARTERS, safe_argmax, three_quarters_depth
from .style import WIDTH, colour_scale
from .types import CONTEXT, PanelDef, Words
from .vega import label_expr, sig
from .words import (
    caption,
    count,
    escape,
    finite,
    fmt_num,
    fmt_pct,
    fmt_seconds,
    fmt_si,
    layer_span,
)

COMPONENT_LABELS = {
    "attn_proj": "attention projections (q, k, v, o)",
    "attn_scores": "attention scores and mixing",
    "mlp": "MLP",
    "unembedding": "unembedding",
}


@dataclass(frozen=True)
class FlopsFacts:
    n_layers: int
    n_prompt: int
    n_params: int
    components: tuple[str, ...]  # [F] the trace's FLOPs components
    per_layer: np.ndarray  # [L, F] FLOPs per layer and component
    unembedding: float  # FLOPs of the unembedding (after the last layer)
    total: float  # FLOPs of the prompt pass
    shares: dict[str, float]  # component (and "unembedding") -> share of `total`
    seconds: np.ndarray  # [L] measured seconds per block
    three_quarters_depth: int  # layers 1..this are the narrator's
    flops_below_three_quarters: float  # share of `total` in layers 1..three_quarters_depth
    flops_above_three_quarters: float
    verdict: str = CONTEXT

    @property
    def labels(self) -> dict[str, str]:
        return {name: COMPONENT_LABELS.get(name, name) for name in self.shares}

    @property
    def seconds_total(self) -> float:
        return float(self.seconds.sum())


def measure_flops(trace: Trace) -> FlopsFacts:
    derived = trace.manifest["derived"]
    per_layer = np.nan_to_num(trace.derived("flops").astype(np.float64))  # [L, F]
    seconds = np.nan_to_num(trace.derived("layer_seconds").astype(np.float64))  # [L]
    unembedding = finite(derived.get("flops_unembedding", 0.0))
    total = finite(derived.get("flops_total", 0.0)) or float(per_layer.sum() + unembedding)
    names = tuple(trace.flops_components)
    totals = {name: float(per_layer[:, i].sum()) for i, name in enumerate(names)}
    totals["unembedding"] = unembedding
    conscious = three_quarters_depth(trace.n_layers)

    def share(value: float) -> float:
        return value / total if total > 0 else 0.0

    return FlopsFacts(
        n_layers=trace.n_layers,
        n_prompt=max(trace.n_prompt, 1),
        n_params=trace.model.n_params,
        components=names,
        per_layer=per_layer,
        unembedding=unembedding,
        total=total,
        shares={name: share(value) for name, value in totals.items()},
        seconds=seconds,
        three_quarters_depth=conscious,
        flops_below_three_quarters=share(float(per_layer[:conscious].sum())),
        flops_above_three_quarters=share(float(per_layer[conscious:].sum())),
    )


def flops_words(f: FlopsFacts) -> Words:
    labels = f.labels
    ranked = sorted(f.shares.items(), key=lambda item: -item[1])
    two_n = 2 * f.n_params * f.n_prompt  # the usual "2 x parameters per token" estimate
    block_seconds = f.seconds_total
    throughput = float(f.per_layer.sum()) / block_seconds if block_seconds > 0 else math.nan
    slowest = safe_argmax(f.seconds)
    conscious = f.three_quarters_depth
    items = [
        "Shares of the total: "
        + ", ".join(f"{escape(labels[name])} {fmt_pct(value)}" for name, value in ranked)
        + ".",
        f"Per prompt token that is {fmt_si(f.total / max(f.n_prompt, 1), 'FLOPs')}; the rule "
        "of thumb "
        f"2 &times; parameters &times; tokens gives {fmt_si(two_n, 'FLOPs')} "
        f"({fmt_num(f.total / two_n if two_n else math.nan)}&times;).",
        f"The layers up to three quarters of the depth, where the narrator places its own "
        f"consciousness ({layer_span(1, conscious)}: depth {conscious} is the nearest to "
        f"{fmt_pct(THREE_QUARTERS)} of {f.n_layers}, a tie going down), get "
        f"{fmt_pct(f.flops_below_three_quarters)} of the FLOPs; the last quarter "
        f"({layer_span(conscious + 1, f.n_layers)}) gets "
        f"{fmt_pct(f.flops_above_three_quarters)}.",
        f"The {count(f.n_layers, 'block')} took {fmt_seconds(block_seconds)} in all "
        f"({fmt_si(throughput, 'FLOP/s')}); "
        f"the slowest was layer {slowest + 1} at {fmt_seconds(f.seconds[slowest])}.",
    ]
    lead = ranked[0] if ranked else ("", 0.0)
    alts = (
        f"The prompt pass costs {fmt_si(f.total, 'FLOPs')}, "
        f"{fmt_pct(lead[1])} of it in {escape(labels.get(lead[0], lead[0]))}.",
        f"The {count(f.n_layers, 'block')} took {fmt_seconds(block_seconds)}.",
    )
    return Words(
        caption=caption(
            f"One pass over the {f.n_prompt}-token prompt costs <strong>"
            f"{fmt_si(f.total, 'FLOPs')}</strong> (multiply-adds counted as 2; norms and softmax "
            "left out).",
            items,
        ),
        alts=alts,
    )


def flops_charts(f: FlopsFacts) -> list[alt.TopLevelMixin]:
    labels = f.labels
    # One row per component, holding its FLOPs for every layer; the unembedding is its own
    # bar after the last layer.
    rows = [{"c": name, "f": sig(f.per_layer[:, i], 4)} for i, name in enumerate(f.components)]
    flop_bars = (
        alt.Chart(alt.Data(values=rows))
        .transform_flatten(["f"])
        .transform_window(_n="row_number()", groupby=["c"])
        .transform_calculate(layer="'' + datum._n", component=label_expr("c", labels))
    )
    unembed_bar = alt.Chart(
        alt.Data(
            values=[
                {"layer": "unembed", "f": sig(f.unembedding, 4), "component": labels["unembedding"]}
            ]
        )
    )
    order = [str(i) for i in range(1, f.n_layers + 1)] + ["unembed"]
    encoding = {
        "x": alt.X(
            "layer:O",
            scale=alt.Scale(domain=order),
            title="layer",
            axis=alt.Axis(labelAngle=0, labelOverlap=True),
        ),
        "y": alt.Y("sum(f):Q", title="FLOPs", axis=alt.Axis(format="~s")),
        "color": alt.Color(
            "component:N",
            scale=alt.Scale(**colour_scale(list(dict.fromkeys(labels.values())))),
            legend=alt.Legend(orient="bottom", title=None, columns=2),
        ),
        "tooltip": [
            alt.Tooltip("layer:N"),
            alt.Tooltip("component:N"),
            alt.Tooltip("sum(f):Q", title="FLOPs", format=".3~s"),
        ],
    }
    flops_chart = alt.layer(
        flop_bars.mark_bar().encode(**encoding), unembed_bar.mark_bar().encode(**encoding)
    ).properties(width=WIDTH, height=160, title=f"FLOPs of the prompt pass: {fmt_si(f.total)}")
    time_chart = (
        alt.Chart(alt.Data(values=[{"s": sig(f.seconds * 1e3, 3)}]))
        .transform_flatten(["s"])
        .transform_window(layer="row_number()")
        .mark_bar()
        .encode(
            x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0, labelOverlap=True)),
            y=alt.Y("s:Q", title="milliseconds"),
            tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("s:Q", title="ms", format=".3f")],
        )
        .properties(width=WIDTH, height=100, title="Measured time per layer (median of repeats)")
    )
    return [flops_chart, time_chart]


PANEL = PanelDef(
    key="p2",
    question="How many FLOPs does one pass over the prompt cost, and where do they go?",
    measure=measure_flops,
    words=flops_words,
    charts=flops_charts,
)
