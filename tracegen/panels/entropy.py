"""¶10: "reborn every forward pass ... the leaking current of entropy": the entropy of the
next-token distribution at each generated step, at the output and over depth."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np

from ..store import Trace
from .story import answer_position, safe_argmax
from .style import CANVAS, SEQUENTIAL, WIDTH
from .types import CONTEXT, PanelDef, Words
from .vega import rounded
from .words import caption, count, fmt_bytes, fmt_num, show_token, token_html


@dataclass(frozen=True)
class EntropyFacts:
    n_layers: int
    entropy: np.ndarray  # [L+1, S] nats, per depth and generated step (S = traced steps)
    chosen: tuple[str, ...]  # [S] the token chosen at each step ("" past the generated ones)
    highest_step: int  # 0-based step of the largest output entropy
    lowest_step: int
    kv_cache_bytes_per_token: int
    verdict: str = CONTEXT

    @property
    def output_entropy(self) -> np.ndarray:  # [S]
        return self.entropy[-1]


def measure_entropy(trace: Trace) -> EntropyFacts:
    start = answer_position(trace)
    entropy = np.nan_to_num(trace.derived("lens_entropy")[:, start:].astype(np.float64))
    generated = trace.generated_strings
    n_steps = entropy.shape[1]
    final = entropy[-1]
    return EntropyFacts(
        n_layers=trace.n_layers,
        entropy=entropy,
        chosen=tuple(generated[s] if s < len(generated) else "" for s in range(n_steps)),
        highest_step=safe_argmax(final),
        lowest_step=int(np.argmin(final)) if final.size else 0,
        kv_cache_bytes_per_token=int(
            trace.manifest.get("derived", {}).get("kv_cache_bytes_per_token", 0) or 0
        ),
    )


def entropy_words(f: EntropyFacts) -> Words:
    final = f.output_entropy
    high, low = f.highest_step, f.lowest_step
    n_steps = len(f.chosen)

    def token(step: int) -> str:
        return token_html(f.chosen[step]) if step < n_steps and f.chosen[step] else ""

    if not n_steps:  # a trace always has the prompt's own pass; say so if one has none
        nothing = f"{count(0, 'generated step')} to measure."
        return Words(caption=caption(nothing), alts=(nothing,))
    items = [
        "Output entropy per step: "
        + ", ".join(f"{token(s)} {fmt_num(final[s])}" for s in range(n_steps))
        + " nats.",
        f"Most uncertain step: {high + 1} ({fmt_num(final[high])} nats, before "
        f"{token(high) or 'the end'}); most certain: step {low + 1} ({fmt_num(final[low])} "
        "nats).",
        f"Over depth, the entropy averaged over the steps goes from "
        f"{fmt_num(f.entropy[0].mean())} nats at the embeddings to {fmt_num(final.mean())} at "
        "the output.",
        f"Reborn every pass, but not from nothing: each step reads the keys and values the "
        f"earlier positions left in the cache ({fmt_bytes(f.kv_cache_bytes_per_token)} per "
        "token); the weights themselves never change between passes.",
    ]
    alt_text = (
        f"Over the {count(n_steps, 'generated step')} the output entropy ranges from "
        f"{fmt_num(final[low])} to {fmt_num(final[high])} nats."
    )
    return Words(
        caption=caption(
            "Entropy of the next-token distribution, in nats, for each pass of the greedy "
            "continuation (step 1 is the pass over the prompt).",
            items,
        ),
        alts=(alt_text,),
    )


def entropy_charts(f: EntropyFacts) -> list[alt.TopLevelMixin]:
    n_layers = f.n_layers
    rows = [
        {"s": s + 1, "g": show_token(f.chosen[s]), "e": rounded(f.entropy[:, s], 2)}
        for s in range(len(f.chosen))
    ]
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
            color=alt.Color("e:Q", title="nats", scale=alt.Scale(scheme=SEQUENTIAL)),
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
    return [alt.vconcat(output, heat, datasets={"entropy": rows}).properties(usermeta=CANVAS)]


PANEL = PanelDef(
    key="p10",
    question="How much uncertainty is left at each step of the continuation?",
    measure=measure_entropy,
    words=entropy_words,
    charts=entropy_charts,
)
