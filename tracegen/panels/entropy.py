"""¶10: "reborn every forward pass ... the leaking current of entropy": the entropy of the
next-token distribution at each generated step, at the output and over depth."""

from __future__ import annotations

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    CANVAS,
    CONTEXT,
    SEQUENTIAL,
    WIDTH,
    answer_position,
    caption,
    fmt_bytes,
    fmt_num,
    rounded,
    safe_argmax,
    show_token,
    to_chart,
    token_html,
)


def build(trace: Trace) -> Panel:
    n_layers = trace.n_layers
    start = answer_position(trace)
    steps = list(range(trace.n_positions - start))
    entropy = np.nan_to_num(trace.derived("lens_entropy")[:, start:].astype(np.float64))  # [L+1, S]
    generated = trace.generated_strings
    chosen = [show_token(generated[s]) if s < len(generated) else "" for s in steps]

    rows = [{"s": s + 1, "g": chosen[s], "e": rounded(entropy[:, s], 2)} for s in steps]
    base = (
        alt.Chart(alt.NamedData("entropy"))
        .transform_flatten(["e"])
        .transform_window(_n="row_number()", groupby=["s"])
        .transform_calculate(d="datum._n - 1")
    )
    tooltip = [
        alt.Tooltip("s:O", title="step"),
        alt.Tooltip("g:N", title="chosen token"),
        alt.Tooltip("d:O", title="depth"),
        alt.Tooltip("e:Q", title="entropy (nats)", format=".2f"),
    ]
    x = alt.X("s:O", title="generated step", axis=alt.Axis(labelAngle=0))
    heat = (
        base.mark_rect()
        .encode(
            x=x,
            y=alt.Y("d:O", title="depth", sort="descending", axis=alt.Axis(labelOverlap=True)),
            color=alt.Color("e:Q", title="nats", scale=alt.Scale(scheme=SEQUENTIAL, reverse=True)),
            tooltip=tooltip,
        )
        .properties(width=WIDTH, height=max(80, 6 * (n_layers + 1)), title="Entropy over depth")
    )
    output = (
        base.transform_filter(f"datum.d == {n_layers}")
        .mark_line(point=True)
        .encode(x=x, y=alt.Y("e:Q", title="entropy (nats)"), tooltip=tooltip)
        .properties(width=WIDTH, height=100, title="Entropy of the model's output at each step")
    )
    chart = alt.vconcat(output, heat, datasets={"entropy": rows}).properties(usermeta=CANVAS)

    final = entropy[-1]
    highest = safe_argmax(final)
    lowest = int(np.argmin(final)) if final.size else 0
    per_token = int(trace.manifest.get("derived", {}).get("kv_cache_bytes_per_token", 0) or 0)
    items = [
        "Output entropy per step: "
        + ", ".join(
            f"{token_html(generated[s]) if s < len(generated) else ''} {fmt_num(final[s])}"
            for s in steps
        )
        + " nats.",
        f"Most uncertain step: {highest + 1} ({fmt_num(final[highest])} nats, before "
        f"{token_html(generated[highest]) if highest < len(generated) else 'the end'}); most "
        f"certain: step {lowest + 1} ({fmt_num(final[lowest])} nats).",
        f"Over depth, the entropy averaged over the steps goes from "
        f"{fmt_num(entropy[0].mean())} nats at the embeddings to {fmt_num(final.mean())} at the "
        "output.",
        f"Reborn every pass, but not from nothing: each step reads the keys and values the "
        f"earlier positions left in the cache ({fmt_bytes(per_token)} per token); the weights "
        "themselves never change between passes.",
    ]
    facts = {"output_entropy": final.tolist(), "highest_step": highest, "lowest_step": lowest}
    alt_text = (
        f"Over the {len(steps)} generated steps the output entropy ranges from "
        f"{fmt_num(final[lowest])} to {fmt_num(final[highest])} nats."
    )
    return Panel(
        key="p10",
        question="How much uncertainty is left at each step of the continuation?",
        charts=[to_chart(chart, alt_text)],
        caption=caption(
            "Entropy of the next-token distribution, in nats, for each pass of the greedy "
            "continuation (step 1 is the pass over the prompt).",
            items,
        ),
        verdict=CONTEXT,
        facts=facts,
    )
