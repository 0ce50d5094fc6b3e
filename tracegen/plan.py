"""`tracegen plan`: what a run will need, from the config alone, before any weight is loaded.

The model is built on PyTorch's meta device (shapes, no memory) to count its parameters;
the trace's size follows from the schema's shapes (store.LAYER_TENSORS, DERIVED_TENSORS);
peak memory and time are estimates of the current implementation, stated as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import models, store
from .families import Adapter, family_of, get_module, text_config
from .policy import (
    DEFAULT_ACTIVATIONS,
    DEFAULT_POLICY,
    HEAD_SCORES,
    AttentionPolicy,
    parse_activations,
    parse_policy,
)
from .text import fmt_file_size

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ATTRIBUTION_PER_LAYER = 2  # attention and MLP of each block, plus the embedding and biases


@dataclass(frozen=True)
class Plan:
    architecture: str
    n_params: int
    n_layers: int
    n_heads: int
    d_model: int
    vocab_size: int
    n_positions: int
    trace_bytes: int
    weights_bytes: int
    peak_bytes: int  # of `tracegen run` as implemented today: weights plus capture plus lens
    forward_flops: float  # one pass over the positions
    lens_flops: float
    seconds: float  # at this machine's measured matmul rate


def matmul_flops_per_second() -> float:
    """This machine's float32 matmul rate on a lens-like shape, measured in about a second."""
    left, right = torch.randn(256, 1024), torch.randn(1024, 4096)
    left @ right
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        left @ right
    return 2 * 256 * 1024 * 4096 * repeats / (time.perf_counter() - start)


def plan(
    spec: str | None, n_prompt: int, steps: int = 16, dtype: str = "float32", top_k: int = 10,
    n_watched: int = 8, attention: str = DEFAULT_POLICY,
    activations: str = DEFAULT_ACTIVATIONS,
) -> Plan:  # fmt: skip
    from transformers import AutoModelForCausalLM

    resolved = models.resolve(spec)
    config = models.load_config(resolved)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    family = family_of(model)
    blocks = list(get_module(model, family.layers))
    unembed = model.get_output_embeddings()
    text = text_config(config)
    n_layers, d_model = len(blocks), int(unembed.weight.shape[-1])
    vocab = int(unembed.weight.shape[0])
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    n = n_prompt + steps - 1
    n_params = sum(parameter.numel() for parameter in model.parameters())

    # The schema's shapes, in their stored dtypes (float16 residuals and attention).
    kept = attention_bytes(parse_policy(attention), heads, n_prompt, n)
    positions = parse_activations(activations)
    stored = n if positions.kind == "all" else len(positions.rows(n_prompt, n))
    per_layer = 4 * stored * d_model * 2 + kept + (heads + 2 * kv_heads) * n * 4
    components = 1 + ATTRIBUTION_PER_LAYER * n_layers + 2
    derived = (n_layers + 1) * n * (top_k * 8 + 4 * 4 + n_watched * 4) + n * (components + 1) * 4
    derived += len(HEAD_SCORES) * n_layers * heads * 4
    # Token ids, strings and pieces (about 40 bytes a position), and the decoded text of
    # every id the lens lists: measured, about 6 distinct ids a position (1,160 for the
    # default model's 191 positions, every token of a tiny model's 320), 22 bytes each.
    shown_ids = min(vocab, 6 * n + n_watched)
    manifest = 40 * n + 22 * shown_ids + 6_000
    trace_bytes = n_layers * per_layer + derived + manifest

    # GGUF weights are de-quantised to float32 whatever the file holds.
    weights = n_params * (4 if resolved.gguf_file else BYTES[dtype])
    # Activations stay float32 until written (the lens and the gate read them); attention is
    # reduced to what the trace keeps as each layer computes it.
    recorded = n_layers * (kept + 4 * n * d_model * 4)
    # The reference pass's logits over every position, the largest thing alive at its end
    # (the recorded passes keep the last position's only, the lens works in blocks).
    logits = n * vocab * 4
    # A float32 copy of the unembedding, unless the model already runs in float32 (on the
    # CPU, as plan assumes; GGUF weights are de-quantised to float32).
    head = 0 if dtype == "float32" or resolved.gguf_file else (vocab + 2) * d_model * 4
    runtime = 400 * 2**20  # Python, torch, transformers and the tokenizer, measured idle
    eager = heads * n * n * 4 * 3  # one layer's scores, masked scores and probabilities
    peak = weights + recorded + logits + head + eager + runtime

    adapter = Adapter(family, model, blocks, get_module(model, family.final_norm), unembed,
                      1.0, 1.0, None)  # fmt: skip
    from .derive import flops_per_layer

    forward = float(sum(map(sum, flops_per_layer(adapter, n)))) + 2 * n * d_model * vocab
    lens_flops = (n_layers + 1) * 2.0 * n * d_model * vocab
    # Passes: recorded prompt and steps, three timing passes, the reference: about six.
    seconds = (6 * forward + lens_flops) / matmul_flops_per_second()
    sizes = (int(trace_bytes), int(weights), int(peak))
    return Plan(type(model).__name__, n_params, n_layers, heads, d_model, vocab, n, *sizes,
                forward, lens_flops, seconds)  # fmt: skip


def attention_bytes(policy: AttentionPolicy, heads: int, n_prompt: int, n: int) -> int:
    """One layer's stored attention under a policy (tracegen.policy), in bytes."""
    if policy.kind == "full":
        return heads * n * (n + 1) // 2 * 2
    if policy.kind == "rows":
        return heads * len(policy.rows(n_prompt, n)) * n * 2
    return heads * n * (policy.count * (2 + 4) + 2)  # float16 weight, int32 key; the rest


def plan_text(result: Plan) -> str:
    return "\n".join([
        f"model      {result.architecture}: {result.n_params / 1e6:.1f}M parameters, "
        f"{result.n_layers} layers, {result.n_heads} heads, width {result.d_model}, "
        f"vocabulary {result.vocab_size:,}",
        f"positions  {result.n_positions} traced",
        f"trace      {fmt_file_size(result.trace_bytes)} on disk (schema {store.SCHEMA_VERSION})",
        f"memory     {fmt_file_size(result.weights_bytes)} of weights; peak about "
        f"{fmt_file_size(result.peak_bytes)} for the run on one device (with --device-map, "
        "the weights can spread across GPUs, the CPU and disk; the rest stays in CPU memory)",
        f"work       {result.forward_flops / 1e9:.1f} GFLOP a pass, "
        f"{result.lens_flops / 1e9:.1f} GFLOP for the lens; about {result.seconds:.0f} s of "
        "compute at this machine's matmul rate, plus loading",
    ])  # fmt: skip


def prompt_tokens(spec: str | None, prompt_file: Path) -> int:
    """The prompt's length in the model's own tokens (loads only the tokenizer)."""
    tokenizer = models.load_tokenizer(models.resolve(spec))
    return len(tokenizer(prompt_file.read_text(encoding="utf-8"))["input_ids"])
