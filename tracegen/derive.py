"""Quantities that need the model's weights, computed once at trace time (torch).

Depth axis convention for the lens: index 0 is the embedding output (the input to block 0),
index l (1..L) is the residual stream after block l. Index L, through the final norm and the
unembedding, is the model's own output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .capture import Capture
from .models import Adapter, Shape

FLOPS_COMPONENTS = ("attn_proj", "attn_scores", "mlp")


def residual_at_depths(capture: Capture) -> list[torch.Tensor]:
    """[N, D] per depth 0..L: embeddings, then each block's output."""
    return [capture.layers[0]["resid_in"]] + [layer["resid_out"] for layer in capture.layers]


@torch.inference_mode()
def logit_lens(
    adapter: Adapter,
    capture: Capture,
    watched_ids: list[int],
    top_k: int,
    on_depth: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Top-k, entropy, the final token's rank and probability, KL to the final distribution
    and the probabilities of watched tokens, at every depth and position."""
    depths = residual_at_depths(capture)
    final_logprobs = adapter.logits(depths[-1]).log_softmax(-1)
    target = final_logprobs.argmax(-1)  # [N]: the token the model itself ranks first
    final_probs = final_logprobs.exp()
    out: dict[str, list[torch.Tensor]] = {
        name: []
        for name in (
            "lens_topk_ids",
            "lens_topk_probs",
            "lens_entropy",
            "lens_target_rank",
            "lens_target_prob",
            "lens_kl",
            "watched_probs",
        )
    }
    for depth, resid in enumerate(depths):
        logprobs = adapter.logits(resid).log_softmax(-1)  # [N, V]
        probs = logprobs.exp()
        top_probs, top_ids = probs.topk(top_k, dim=-1)
        target_logprob = logprobs.gather(-1, target[:, None])[:, 0]
        out["lens_topk_ids"].append(top_ids.to(torch.int32))
        out["lens_topk_probs"].append(top_probs)
        out["lens_entropy"].append(-(probs * logprobs).sum(-1))
        out["lens_target_rank"].append((logprobs > target_logprob[:, None]).sum(-1).to(torch.int32))
        out["lens_target_prob"].append(target_logprob.exp())
        out["lens_kl"].append((final_probs * (final_logprobs - logprobs)).sum(-1).clamp_min(0.0))
        out["watched_probs"].append(probs[:, watched_ids])
        if on_depth:
            on_depth(depth)
    return {name: torch.stack(values) for name, values in out.items()}


def attribution_components(n_layers: int, adapter: Adapter) -> list[str]:
    names = ["embed"]
    for index in range(n_layers):
        names += [f"attn {index}", f"mlp {index}"]
    if getattr(adapter.final_norm, "bias", None) is not None:
        names.append("norm bias")
    if adapter.unembed.bias is not None:
        names.append("unembed bias")
    return names


@torch.inference_mode()
def direct_logit_attribution(
    adapter: Adapter, capture: Capture
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each position's top logit into what each component wrote to the residual stream.

    The final norm is linear once its scale (1/RMS, or 1/std for LayerNorm) is frozen at the
    value it actually took, so each write passes through it separately and the parts sum to
    the logit. With a logit soft-cap (Gemma 2) the parts sum to the logit before the cap.
    Returns attribution [N, C] in the order of `attribution_components`, and the logit [N].
    """
    final_resid = capture.layers[-1]["resid_out"]
    target = adapter.logits(final_resid).argmax(-1)
    unembed_rows = adapter.unembed.weight[target]  # [N, D]
    writes = [capture.layers[0]["resid_in"]]
    for layer in capture.layers:
        writes += [layer["attn_out"], layer["mlp_out"]]

    norm = adapter.final_norm
    if isinstance(norm, nn.LayerNorm):
        centre = final_resid - final_resid.mean(-1, keepdim=True)
        scale = torch.rsqrt(centre.pow(2).mean(-1, keepdim=True) + norm.eps)
        gain = norm.weight

        def through_norm(write: torch.Tensor) -> torch.Tensor:
            return (write - write.mean(-1, keepdim=True)) * scale * gain
    else:
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        scale = torch.rsqrt(final_resid.pow(2).mean(-1, keepdim=True) + eps)
        # The effective gain, whatever the parametrisation (w or 1 + w): RMSNorm of a vector
        # of ones is gain / sqrt(1 + eps).
        ones = torch.ones(1, final_resid.shape[-1], dtype=final_resid.dtype)
        gain = norm(ones)[0] * (1.0 + eps) ** 0.5

        def through_norm(write: torch.Tensor) -> torch.Tensor:
            return write * scale * gain

    parts = [(through_norm(write) * unembed_rows).sum(-1) for write in writes]
    if getattr(norm, "bias", None) is not None:
        parts.append(unembed_rows @ norm.bias)
    if adapter.unembed.bias is not None:
        parts.append(adapter.unembed.bias[target])
    logit = adapter.unembed(norm(final_resid)).gather(-1, target[:, None])[:, 0]
    return torch.stack(parts, dim=-1), logit


def flops_per_layer(shape: Shape, n_tokens: int, gated_mlp: bool) -> list[list[float]]:
    """Analytic multiply-add FLOPs (2 per MAC) of each block for one pass over n_tokens.

    attn_proj:   the q, k, v and output projections;
    attn_scores: q·k scores and the weighted sum of values, over the full T x T square that
                 eager attention computes (the causal mask hides half but it is still done);
    mlp:         the up (and gate) and down projections.
    Norms, activations and softmax are a few FLOPs per element and are left out.
    """
    t, d_head = n_tokens, shape.d_head
    attn_proj = 2 * t * shape.d_model * d_head * (2 * shape.n_heads + 2 * shape.n_kv_heads)
    attn_scores = 2 * 2 * shape.n_heads * t * t * d_head
    mlp = 2 * t * shape.d_model * shape.d_mlp * (3 if gated_mlp else 2)
    return [[float(attn_proj), float(attn_scores), float(mlp)] for _ in range(shape.n_layers)]


def kv_cache_bytes_per_token(shape: Shape, bytes_per_value: int) -> int:
    """Keys and values of every layer for one more token of context."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * bytes_per_value


def as_numpy(tensors: dict[str, torch.Tensor]) -> dict:
    return {name: tensor.detach().cpu().numpy() for name, tensor in tensors.items()}
