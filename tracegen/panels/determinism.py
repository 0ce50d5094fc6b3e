"""¶9: "contorted the keys, values and queries ... the lack of dropout ... no backpropagation
and update": per-head query/key/value norms, the KV cache, and what the run measured about
dropout, gradients and repeatability."""

from __future__ import annotations

import altair as alt
import numpy as np

from ..store import Trace
from . import Panel
from .common import (
    BORNE_OUT,
    CANVAS,
    MIXED,
    SEQUENTIAL,
    WIDTH,
    caption,
    fmt_bytes,
    fmt_int,
    fmt_num,
    head_label,
    rounded,
    to_chart,
)


def manifest_value(trace: Trace, key: str, default=None):
    """A field of manifest["derived"], or of the manifest itself, whichever has it."""
    for source in (trace.manifest.get("derived", {}), trace.manifest):
        if key in source:
            return source[key]
    return default


def mean_norms(trace: Trace, name: str) -> np.ndarray:
    """[L, heads]: a projection's per-head norm averaged over the prompt positions."""
    n = max(trace.n_prompt, 1)
    return np.nan_to_num(trace.stack(name)[:, :, :n].astype(np.float64).mean(-1))


def build(trace: Trace) -> Panel:
    n_layers = trace.n_layers
    norms = {
        "query": mean_norms(trace, "q_norm"),
        "key": mean_norms(trace, "k_norm"),
        "value": mean_norms(trace, "v_norm"),
    }
    grids = []
    for name, grid in norms.items():
        rows = [{"l": layer + 1, "v": rounded(grid[layer], 2)} for layer in range(n_layers)]
        grids.append(
            alt.Chart(alt.Data(values=rows), title=f"{name} norm")
            .transform_flatten(["v"])
            .transform_window(h="row_number()", groupby=["l"])
            .mark_rect()
            .encode(
                x=alt.X("h:O", title="head" if name == "query" else "kv head"),
                y=alt.Y("l:O", title="layer", axis=alt.Axis(labelOverlap=True)),
                color=alt.Color(
                    "v:Q",
                    title=None,
                    scale=alt.Scale(scheme=SEQUENTIAL),
                    legend=alt.Legend(orient="bottom", gradientLength=80),
                ),
                tooltip=[
                    alt.Tooltip("l:O", title="layer"),
                    alt.Tooltip("h:O", title="head"),
                    alt.Tooltip("v:Q", title=f"mean {name} norm", format=".2f"),
                ],
            )
            .properties(
                width=max(30, min(WIDTH // 3 - 20, 14 * grid.shape[1])),
                height=max(80, 7 * n_layers),
            )
        )
    chart = alt.hconcat(*grids).resolve_scale(color="independent").properties(usermeta=CANVAS)

    per_token = int(manifest_value(trace, "kv_cache_bytes_per_token", 0) or 0)
    max_diff = float(manifest_value(trace, "determinism_max_abs_logit_diff", float("nan")))
    eval_mode = bool(manifest_value(trace, "eval_mode", False))
    grad_enabled = bool(manifest_value(trace, "grad_enabled", True))
    dropout_training = int(manifest_value(trace, "dropout_modules_training", 0) or 0)
    requiring_grad = manifest_value(trace, "params_requiring_grad", None)
    q_layer, q_head = np.unravel_index(int(np.argmax(norms["query"])), norms["query"].shape)
    k_layer, k_head = np.unravel_index(int(np.argmax(norms["key"])), norms["key"].shape)
    deterministic = max_diff == 0.0
    no_dropout = eval_mode and dropout_training == 0
    verdict = BORNE_OUT if no_dropout and not grad_enabled else MIXED
    items = [
        "Dropout: the model ran in "
        + ("eval mode" if eval_mode else "<strong>training mode</strong>")
        + f", with {dropout_training} dropout modules active"
        + (", so nothing was dropped." if no_dropout else "."),
        "Backpropagation: gradient recording was "
        + ("off" if not grad_enabled else "<strong>on</strong>")
        + " during the pass"
        + (
            f" ({fmt_int(requiring_grad)} parameter tensors keep their requires-grad flag, but no "
            "graph was recorded, so no update can follow)"
            if isinstance(requiring_grad, int) and requiring_grad and not grad_enabled
            else ""
        )
        + ".",
        "Two identical passes: the largest difference between their logits was "
        + (f"{fmt_num(max_diff, 6)}" if np.isfinite(max_diff) else "not measured")
        + (" (bit-identical)" if deterministic else "")
        + ".",
        f"The keys and values each token leaves in the cache take {fmt_bytes(per_token)} per "
        f"token; for the {trace.n_positions} traced positions that is "
        f"{fmt_bytes(per_token * trace.n_positions)}.",
        f"The largest mean query norm is at {head_label(int(q_layer), int(q_head))} "
        f"({fmt_num(norms['query'][q_layer, q_head])}); the largest key norm at layer "
        f"{k_layer + 1}, kv head {k_head + 1} ({fmt_num(norms['key'][k_layer, k_head])}). "
        "These are computed from the weights and the input; nothing in the pass can alter them.",
    ]
    facts = {
        "eval_mode": eval_mode,
        "grad_enabled": grad_enabled,
        "dropout_modules_training": dropout_training,
        "max_abs_logit_diff": max_diff,
        "kv_cache_bytes_per_token": per_token,
    }
    alt_text = (
        f"Mean per-head query, key and value norms over the prompt; the largest query norm is at "
        f"{head_label(int(q_layer), int(q_head))} ({fmt_num(norms['query'][q_layer, q_head])})."
    )
    return Panel(
        key="p9",
        question="Is there dropout or a backward pass, and are two passes the same?",
        charts=[to_chart(chart, alt_text)],
        caption=caption(
            "Measured while tracing: the model's mode, the gradient switch, and the same prompt "
            "pass run again.",
            items,
        ),
        verdict=verdict,
        facts=facts,
    )
