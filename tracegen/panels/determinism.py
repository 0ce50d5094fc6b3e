"""¶9: "contorted the keys, values and queries ... the lack of dropout ... no backpropagation
and update": per-head query/key/value norms, the KV cache, and what the run measured about
dropout, gradients and repeatability."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np

from ..store import Trace
from .style import CANVAS, SEQUENTIAL, WIDTH
from .types import BORNE_OUT, MIXED, PanelDef, Words
from .vega import rounded
from .words import caption, count, fmt_bytes, fmt_int, fmt_num, head_label, plural, verb

NORM_NAMES = {"query": "q_norm", "key": "k_norm", "value": "v_norm"}


def manifest_value(trace: Trace, key: str, default: Any = None) -> Any:
    """A field of manifest["derived"], or of the manifest itself, whichever has it."""
    for source in (trace.manifest.get("derived", {}), trace.manifest):
        if key in source:
            return source[key]
    return default


def mean_norms(trace: Trace, name: str) -> np.ndarray:
    """[L, heads]: a projection's per-head norm averaged over the prompt positions."""
    n = max(trace.n_prompt, 1)
    return np.nan_to_num(trace.stack(name)[:, :, :n].astype(np.float64).mean(-1))


@dataclass(frozen=True)
class DeterminismFacts:
    n_layers: int
    n_positions: int
    norms: dict[str, np.ndarray]  # "query" [L, H], "key" and "value" [L, H_kv]: mean norms
    eval_mode: bool
    grad_enabled: bool
    dropout_modules_training: int
    params_requiring_grad: int | None
    max_abs_logit_diff: float  # between two identical passes; NaN when not measured
    kv_cache_bytes_per_token: int
    verdict: str

    def largest(self, name: str) -> tuple[int, int, float]:
        """(layer, head, norm) of the largest mean norm of `name`, 0-based."""
        grid = self.norms[name]
        layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
        return int(layer), int(head), float(grid[layer, head])

    @property
    def no_dropout(self) -> bool:
        return self.eval_mode and self.dropout_modules_training == 0


def measure_determinism(trace: Trace) -> DeterminismFacts:
    eval_mode = bool(manifest_value(trace, "eval_mode", False))
    grad_enabled = bool(manifest_value(trace, "grad_enabled", True))
    dropout = int(manifest_value(trace, "dropout_modules_training", 0) or 0)
    requiring = manifest_value(trace, "params_requiring_grad", None)
    no_dropout = eval_mode and dropout == 0
    return DeterminismFacts(
        n_layers=trace.n_layers,
        n_positions=trace.n_positions,
        norms={name: mean_norms(trace, key) for name, key in NORM_NAMES.items()},
        eval_mode=eval_mode,
        grad_enabled=grad_enabled,
        dropout_modules_training=dropout,
        params_requiring_grad=requiring if isinstance(requiring, int) else None,
        max_abs_logit_diff=float(
            manifest_value(trace, "determinism_max_abs_logit_diff", float("nan"))
        ),
        kv_cache_bytes_per_token=int(manifest_value(trace, "kv_cache_bytes_per_token", 0) or 0),
        verdict=BORNE_OUT if no_dropout and not grad_enabled else MIXED,
    )


def determinism_words(f: DeterminismFacts) -> Words:
    q_layer, q_head, q_norm = f.largest("query")
    k_layer, k_head, k_norm = f.largest("key")
    diff = f.max_abs_logit_diff
    dropout = f.dropout_modules_training
    requiring = f.params_requiring_grad
    items = [
        "Dropout: the model ran in "
        + ("eval mode" if f.eval_mode else "<strong>training mode</strong>")
        + f", with {count(dropout, 'dropout module')} active"
        + (", so nothing was dropped." if f.no_dropout else "."),
        "Backpropagation: gradient recording was "
        + ("off" if not f.grad_enabled else "<strong>on</strong>")
        + " during the pass"
        + (
            f" ({fmt_int(requiring)} parameter {plural('tensor', requiring)} "
            f"{verb(requiring, 'keeps its', 'keep their')} requires-grad flag, but no graph "
            "was recorded, so no update can follow)"
            if requiring and not f.grad_enabled
            else ""
        )
        + ".",
        "Two identical passes: the largest difference between their logits at the last "
        "prompt position was "
        + (f"{fmt_num(diff, 6)}" if math.isfinite(diff) else "not measured")
        + (" (bit-identical)" if diff == 0.0 else "")
        + ".",
        f"The keys and values each token leaves in the cache take "
        f"{fmt_bytes(f.kv_cache_bytes_per_token)} per token; for the "
        f"{count(f.n_positions, 'traced position')} that is "
        f"{fmt_bytes(f.kv_cache_bytes_per_token * f.n_positions)}.",
        f"The largest mean query norm is at {head_label(q_layer, q_head)} ({fmt_num(q_norm)}); "
        f"the largest key norm at layer {k_layer + 1}, kv head {k_head + 1} "
        f"({fmt_num(k_norm)}). These are computed from the weights and the input; nothing in "
        "the pass can alter them.",
    ]
    alt_text = (
        f"Mean per-head query, key and value norms over the prompt; the largest query norm is at "
        f"{head_label(q_layer, q_head)} ({fmt_num(q_norm)})."
    )
    return Words(
        caption=caption(
            "Measured while tracing: the model's mode, the gradient switch, and the same prompt "
            "pass run again.",
            items,
        ),
        alts=(alt_text,),
    )


def determinism_charts(f: DeterminismFacts) -> list[alt.TopLevelMixin]:
    grids = []
    for name, grid in f.norms.items():
        rows = [{"l": layer + 1, "v": rounded(grid[layer], 2)} for layer in range(f.n_layers)]
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
                height=max(80, 7 * f.n_layers),
            )
        )
    return [alt.hconcat(*grids).resolve_scale(color="independent").properties(usermeta=CANVAS)]


PANEL = PanelDef(
    key="p9",
    question="Is there dropout or a backward pass, and are two passes the same?",
    measure=measure_determinism,
    words=determinism_words,
    charts=determinism_charts,
)
