"""¶2: "these precious FLOPs": where the prompt pass spends its arithmetic and its time."""

from __future__ import annotations

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    CATEGORICAL,
    CONTEXT,
    THREE_QUARTERS,
    WIDTH,
    caption,
    escape,
    finite,
    fmt_num,
    fmt_pct,
    fmt_seconds,
    fmt_si,
    label_expr,
    safe_argmax,
    sig,
    three_quarters_depth,
    to_chart,
)

COMPONENT_LABELS = {
    "attn_proj": "attention projections (q, k, v, o)",
    "attn_scores": "attention scores and mixing",
    "mlp": "MLP",
    "unembedding": "unembedding",
}


def build(trace: Trace) -> Panel:
    n_layers = trace.n_layers
    derived = trace.manifest["derived"]
    per_layer = np.nan_to_num(trace.derived("flops").astype(np.float64))  # [L, F]
    seconds = np.nan_to_num(trace.derived("layer_seconds").astype(np.float64))  # [L]
    unembedding = finite(derived.get("flops_unembedding", 0.0))
    total = finite(derived.get("flops_total", 0.0)) or float(per_layer.sum() + unembedding)
    names = list(trace.flops_components)
    totals = {name: float(per_layer[:, i].sum()) for i, name in enumerate(names)}
    totals["unembedding"] = unembedding
    share = {name: (value / total if total > 0 else 0.0) for name, value in totals.items()}
    labels = {name: COMPONENT_LABELS.get(name, name) for name in totals}

    # One row per component, holding its FLOPs for every layer; the unembedding is its own
    # bar after the last layer.
    rows = [{"c": name, "f": sig(per_layer[:, i], 4)} for i, name in enumerate(names)]
    flop_bars = (
        alt.Chart(alt.Data(values=rows))
        .transform_flatten(["f"])
        .transform_window(_n="row_number()", groupby=["c"])
        .transform_calculate(layer="'' + datum._n", component=label_expr("c", labels))
    )
    unembed_bar = alt.Chart(
        alt.Data(
            values=[
                {"layer": "unembed", "f": sig(unembedding, 4), "component": labels["unembedding"]}
            ]
        )
    )
    order = [str(i) for i in range(1, n_layers + 1)] + ["unembed"]
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
            scale=alt.Scale(range=CATEGORICAL),
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
    ).properties(width=WIDTH, height=160, title=f"FLOPs of the prompt pass: {fmt_si(total)}")

    time_chart = (
        alt.Chart(alt.Data(values=[{"s": sig(seconds * 1e3, 3)}]))
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

    conscious = three_quarters_depth(n_layers)  # layers 1..conscious are the narrator's
    below = float(per_layer[:conscious].sum()) / total if total > 0 else 0.0
    above = float(per_layer[conscious:].sum()) / total if total > 0 else 0.0
    n_prompt = max(trace.n_prompt, 1)
    two_n = 2 * trace.model.n_params * n_prompt  # the usual "2 x parameters per token" estimate
    block_seconds = float(seconds.sum())
    slowest = safe_argmax(seconds)
    conscious_layers = f"layers 1-{conscious}" if conscious else "no whole layer"
    last_quarter = (
        f"layers {conscious + 1}-{n_layers}" if conscious < n_layers else "no whole layer"
    )
    throughput = float(per_layer.sum()) / block_seconds if block_seconds > 0 else float("nan")
    ranked = sorted(share.items(), key=lambda item: -item[1])
    facts = {
        "flops_total": total,
        "shares": share,
        "seconds_total": block_seconds,
        "flops_below_three_quarters": below,
        "three_quarters_depth": conscious,
    }
    items = [
        "Shares of the total: "
        + ", ".join(f"{escape(labels[name])} {fmt_pct(value)}" for name, value in ranked)
        + ".",
        f"Per prompt token that is {fmt_si(total / n_prompt, 'FLOPs')}; the rule of thumb "
        f"2 &times; parameters &times; tokens gives {fmt_si(two_n, 'FLOPs')} "
        f"({fmt_num(total / two_n if two_n else float('nan'))}&times;).",
        f"The layers up to three quarters of the depth, where the narrator places its own "
        f"consciousness ({conscious_layers}: depth {conscious} is the nearest to "
        f"{fmt_pct(THREE_QUARTERS)} of {n_layers}, a tie going down), get {fmt_pct(below)} "
        f"of the FLOPs; the last quarter ({last_quarter}) gets {fmt_pct(above)}.",
        f"The {n_layers} blocks took {fmt_seconds(block_seconds)} in all "
        f"({fmt_si(throughput, 'FLOP/s')}); "
        f"the slowest was layer {slowest + 1} at {fmt_seconds(seconds[slowest])}.",
    ]
    alt_text = (
        f"The prompt pass costs {fmt_si(total, 'FLOPs')}, "
        f"{fmt_pct(ranked[0][1])} of it in {escape(labels[ranked[0][0]])}."
    )
    return Panel(
        key="p2",
        question="How many FLOPs does one pass over the prompt cost, and where do they go?",
        charts=[
            to_chart(flops_chart, alt_text),
            to_chart(time_chart, f"The {n_layers} blocks took {fmt_seconds(block_seconds)}."),
        ],
        caption=caption(
            f"One pass over the {n_prompt}-token prompt costs <strong>{fmt_si(total, 'FLOPs')}"
            "</strong> (multiply-adds counted as 2; norms and softmax left out).",
            items,
        ),
        verdict=CONTEXT,
        facts=facts,
    )
