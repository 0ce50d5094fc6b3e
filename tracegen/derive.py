"""Quantities that need the model's weights, computed once at trace time (torch).

Depth axis convention for the lens: index 0 is the embedding output (the input to block 0),
index l (1..L) is the residual stream after block l. Index L, through the final norm and the
unembedding, is the model's own output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .capture import Capture
from .families import Adapter, Shape, get_module, text_config

FLOPS_COMPONENTS = ("attn_proj", "attn_scores", "mlp")


def residual_at_depths(capture: Capture) -> list[torch.Tensor]:
    """[N, D] per depth 0..L: embeddings, then each block's output."""
    return [capture.layers[0]["resid_in"]] + [layer["resid_out"] for layer in capture.layers]


LENS_NAMES = (
    "lens_topk_ids",
    "lens_topk_probs",
    "lens_entropy",
    "lens_target_rank",
    "lens_target_prob",
    "lens_kl",
    "watched_probs",
)
# Positions whose lens runs at once: a [256, V] block of logits and its exponentials (100 MB
# for a 49k vocabulary) keeps memory flat in the prompt's length, and 256 rows still run the
# unembedding matmul at full speed.
LENS_ROWS = 256


def lens_blocks(n_positions: int) -> int:
    return -(-n_positions // LENS_ROWS)


@torch.inference_mode()
def logit_lens(
    adapter: Adapter,
    capture: Capture,
    watched_ids: list[int],
    top_k: int,
    on_step: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Top-k, entropy, the final token's rank and probability, KL to the final distribution
    and the probabilities of watched tokens, at every depth and position.

    Besides the unembedding matmul, one exponential over the vocabulary per depth: with
    e = exp(z - max z) and s = sum e, lse = max z + log s, log p = z - lse, the entropy is
    lse - (e·z)/s, and KL(q || p) against the final distribution q, whose logits are y, is
    (e_y·y - e_y·z)/s_y + lse(z) - lse(y). The dot products are summed by cascade (`_dot`)
    and weighted by exponentials divided by their own sum: einsums and a softmax's q were
    off by up to 5e-3 nats (entropy) and 1.3e-2 (KL) against float64 on the default model.
    `on_step` is called once per block of positions and depth.
    """
    depths = residual_at_depths(capture)
    watched = torch.tensor(watched_ids, dtype=torch.long)
    out: dict[str, list[list[torch.Tensor]]] = {name: [[] for _ in depths] for name in LENS_NAMES}
    for start in range(0, depths[0].shape[0], LENS_ROWS):
        rows = slice(start, start + LENS_ROWS)
        final_logits = adapter.logits(depths[-1][rows])  # [n, V]
        target = final_logits.argmax(-1)  # [n]: the token the model itself ranks first
        final_peak, final_shifted, final_total = _exp_parts(final_logits)
        final_lse = final_peak + final_total.log()  # [n, 1]
        final_dot = _dot(final_shifted, final_logits)  # [n]: e_y·y
        for depth, resid in enumerate(depths):
            logits = adapter.logits(resid[rows])  # [n, V]
            peak, shifted, total = _exp_parts(logits)  # [n, 1], [n, V], [n, 1]
            lse = peak + total.log()  # [n, 1]
            mean_logit = _dot(shifted, logits) / total[:, 0]  # [n]: p·z
            # q·(y - z) with q = e_y / s_y, divided by the very sum of its own terms: a
            # softmax's q sums to 1 only within 2e-5 in float32, and |y - z| reaches 200
            # nats at early depths. Exactly 0 at the last depth, where z is y.
            toward_final = (final_dot - _dot(final_shifted, logits)) / final_total[:, 0]
            kl = toward_final + (lse - final_lse)[:, 0]  # [n]
            top_logits, top_ids = top_k_by_id(logits, top_k)
            target_logit = logits.gather(-1, target[:, None])  # [n, 1]
            out["lens_topk_ids"][depth].append(top_ids.to(torch.int32))
            out["lens_topk_probs"][depth].append((top_logits - lse).exp())
            out["lens_entropy"][depth].append(lse[:, 0] - mean_logit)
            out["lens_target_rank"][depth].append((logits > target_logit).sum(-1).to(torch.int32))
            out["lens_target_prob"][depth].append((target_logit - lse)[:, 0].exp())
            out["lens_kl"][depth].append(kl.clamp_min(0.0))
            out["watched_probs"][depth].append((logits[:, watched] - lse).exp())
            if on_step:
                on_step()
    return {
        name: torch.stack([torch.cat(blocks) for blocks in per_depth])
        for name, per_depth in out.items()
    }


def _exp_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """max z [N, 1], e = exp(z - max z) [N, V] and its sum s [N, 1]: log-sum-exp is
    max z + log s."""
    peak = logits.amax(-1, keepdim=True)
    shifted = (logits - peak).exp_()
    return peak, shifted, shifted.sum(-1, keepdim=True)


def _dot(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products [N, V] x [N, V] -> [N], summed by torch's cascade summation. An
    einsum runs as a matrix kernel whose one float32 accumulation over a 49k vocabulary was
    off by 5e-3 nats in the entropy."""
    return (weights * values).sum(-1)


def top_k_by_id(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk over the last axis, with ties ordered by the lower index first, so the
    order is the same on every machine and library version. values [n, V] -> ([n, k], [n, k])"""
    extra = min(k + 1, values.shape[-1])
    top_values, top_ids = values.topk(extra, dim=-1)
    # The k-th place is shared exactly when the next value equals it.
    tied_at_edge = top_values[:, k - 1] == top_values[:, k] if extra > k else None
    top_values, top_ids = top_values[:, :k], top_ids[:, :k]
    # Sort the k by index, then stably by value: equal values keep ascending indices.
    by_id = top_ids.sort(dim=-1).values
    order = values.gather(-1, by_id).sort(dim=-1, descending=True, stable=True).indices
    top_ids = by_id.gather(-1, order)
    rows = tied_at_edge.nonzero()[:, 0].tolist() if tied_at_edge is not None else []
    for row in rows:
        candidates = (values[row] >= top_values[row, -1]).nonzero()[:, 0]  # ascending ids
        ranked = values[row, candidates].sort(descending=True, stable=True).indices[:k]
        top_ids[row] = candidates[ranked]
    return values.gather(-1, top_ids), top_ids


def attribution_components(n_layers: int, adapter: Adapter) -> list[str]:
    names = ["embed"]
    for index in range(n_layers):
        names += [f"attn {index}", f"mlp {index}"]
    if _linear_norm(adapter).bias_matters:
        names.append("norm bias")
    if getattr(adapter.unembed, "bias", None) is not None:
        names.append("unembed bias")
    return names


@dataclass(frozen=True)
class LinearNorm:
    """The final norm, frozen at the scale it took: norm(x) = gain * centre(x) * scale + bias.

    Read from the norm module itself, whatever its class (LayerNorm, RMSNorm, Gemma's 1 + w,
    OLMo's parameter-free LayerNorm, Cohere's mean-subtracting norm without bias), so direct
    logit attribution works for every family without naming norm classes.
    """

    centres: bool  # subtracts the mean (LayerNorm-like)
    gain: torch.Tensor  # [D]
    bias: torch.Tensor  # [D]
    bias_matters: bool

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.centres else x


def _linear_norm(adapter: Adapter) -> LinearNorm:
    norm = adapter.final_norm
    width = adapter.unembed.weight.shape[-1]
    # norm(0) is the bias alone: a centred, scaled zero vector is still zero.
    bias = norm(torch.zeros(1, width))[0]
    # A mean-subtracting norm sends a constant vector to its bias; an RMS norm does not.
    constant = norm(torch.full((1, width), 3.0))[0]
    centres = bool((constant - bias).abs().max() <= 1e-4 * (bias.abs().max() + 1.0))
    # On a large +-1 pattern the epsilon is negligible, so norm(v) - bias = gain * c / rms(c)
    # with c the (centred) pattern: read the gain off it.
    pattern = torch.where(torch.arange(width) % 2 == 0, 1e3, -1e3)[None, :]
    centred = pattern - pattern.mean(-1, keepdim=True) if centres else pattern
    rms = centred.pow(2).mean(-1, keepdim=True).sqrt()
    gain = ((norm(pattern) - bias) * rms / centred)[0]
    return LinearNorm(centres, gain, bias, bool(bias.abs().max() > 0))


@torch.inference_mode()
def direct_logit_attribution(
    adapter: Adapter, capture: Capture
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each position's top logit into what each component wrote to the residual stream.

    The final norm is linear once its scale is frozen at the value it actually took, so each
    write passes through it separately and the parts sum to the logit. The scale is measured
    from the norm's own output at the final residual (a least-squares fit, exact up to
    rounding), not from its epsilon. With a logit soft-cap (Gemma 2) the parts sum to the
    logit before the cap; a logit multiplier (Cohere, Granite) is folded into every part.
    Returns attribution [N, C] in the order of `attribution_components`, and the logit [N].
    """
    final_resid = capture.layers[-1]["resid_out"]  # [N, D]
    target = adapter.logits(final_resid).argmax(-1)  # [N]
    unembed_rows = adapter.unembed.weight[target] * adapter.logit_multiplier  # [N, D]
    writes = [capture.layers[0]["resid_in"]]
    for layer in capture.layers:
        writes += [layer["attn_out"], layer["mlp_out"]]

    linear = _linear_norm(adapter)
    normed = adapter.final_norm(final_resid) - linear.bias  # [N, D]
    direction = linear.centre(final_resid) * linear.gain  # [N, D]
    scale = (normed * direction).sum(-1, keepdim=True) / (
        direction.pow(2).sum(-1, keepdim=True).clamp_min(1e-30)
    )  # [N, 1]

    parts = [((linear.centre(w) * linear.gain * scale) * unembed_rows).sum(-1) for w in writes]
    if linear.bias_matters:
        parts.append(unembed_rows @ linear.bias)
    if getattr(adapter.unembed, "bias", None) is not None:
        parts.append(adapter.unembed.bias[target] * adapter.logit_multiplier)
    logit = adapter.logits_before_cap(final_resid).gather(-1, target[:, None])[:, 0]
    return torch.stack(parts, dim=-1), logit


def flops_per_layer(adapter: Adapter, n_tokens: int) -> list[list[float]]:
    """Multiply-add FLOPs (2 per MAC) of each block for one pass over n_tokens, counted from
    the weight matrices each token actually meets.

    attn_proj:   every matrix of the attention module (q, k, v, output; fused or not);
    attn_scores: q·k scores and the weighted sum of values, over the full T x T square that
                 eager attention computes (the causal mask hides half but it is still done);
    mlp:         every matrix the MLP runs; for a mixture of experts the router and only the
                 experts a token is routed to (experts per token / experts of the weights).
    Norms, activations, softmax and biases are a few FLOPs per element and are left out.
    """
    family, t = adapter.family, n_tokens
    config = text_config(adapter.model.config)
    rows = []
    for index, block in enumerate(adapter.blocks):
        attention = adapter.attention(index)
        attn_proj = 2 * t * _matrix_elements(attention)
        heads, d_head = _heads_of(adapter, index)
        attn_scores = 2 * 2 * heads * t * t * d_head
        mlp_module = _mlp_module(adapter, block)
        experts = get_module(mlp_module, family.experts) if family.experts else None
        if experts is not None:
            router = get_module(mlp_module, family.router)
            n_experts = _n_experts(experts)
            per_token = int(getattr(config, family.experts_per_token))
            expert_elements = _expert_matrix_elements(experts)
            mlp = 2 * t * (_matrix_elements(router) + expert_elements * per_token / n_experts)
        else:
            mlp = 2 * t * _matrix_elements(mlp_module)
        rows.append([float(attn_proj), float(attn_scores), float(mlp)])
    return rows


def _mlp_module(adapter: Adapter, block: nn.Module) -> nn.Module:
    """The MLP as a module; OPT keeps fc1/fc2 inline in the block, so those two count."""
    found = get_module(block, "mlp")
    if found is not None:
        return found
    parts = nn.ModuleList([get_module(block, "fc1"), get_module(block, "fc2")])
    return parts


def _matrix_elements(module: nn.Module) -> int:
    """Weights of the linear maps inside a module (nn.Linear, GPT-2's Conv1D, routers)."""
    total = 0
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        is_norm = "Norm" in type(sub).__name__ or isinstance(sub, nn.Embedding)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and not is_norm:
            total += weight.numel()
    return total


def _expert_matrix_elements(experts: nn.Module) -> int:
    """Weights of every expert's matrices: nn.Linear per expert in a ModuleList, or stacked
    [E, in, out] parameters (Mixtral, Qwen3-MoE, GPT-OSS), whose [E, out] biases are not."""
    if isinstance(experts, nn.ModuleList):
        return _matrix_elements(experts)
    return sum(p.numel() for p in experts.parameters() if p.dim() == 3)


def _n_experts(experts: nn.Module) -> int:
    if isinstance(experts, nn.ModuleList):
        return len(experts)
    return int(experts.num_experts)


def _heads_of(adapter: Adapter, index: int) -> tuple[int, int]:
    """Query heads and head width of one layer, as its attention module declares them."""
    attention = adapter.attention(index)
    config = text_config(adapter.model.config)
    heads = getattr(attention, "num_heads", None) or config.num_attention_heads
    d_head = getattr(attention, "head_dim", None) or config.hidden_size // heads
    return int(heads), int(d_head)


def kv_cache_bytes_per_token(shape: Shape, bytes_per_value: int) -> int:
    """Keys and values of every layer for one more token of context."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * bytes_per_value


def as_numpy(tensors: dict[str, torch.Tensor]) -> dict:
    return {name: tensor.detach().cpu().numpy() for name, tensor in tensors.items()}
