"""`tracegen plan`: what a run will need, from the config alone, before any weight is loaded.

The model is built on PyTorch's meta device (shapes, no memory) to count its parameters;
the trace's size follows from the schema's shapes (store.LAYER_TENSORS, DERIVED_TENSORS).
Peak memory and time are estimates of the current implementation on the CPU, calibrated on
measured runs of the default model (`CALIBRATION`), and said to be so. The prompt's length is
counted with the model's tokenizer where it has one, else estimated from its characters.
"""

from __future__ import annotations

import math
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
from .runner import LONG_PASS_SECONDS, read_prompt
from .text import fmt_file_size

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ATTRIBUTION_PER_LAYER = 2  # attention and MLP of each block, plus the embedding and biases
# The story's prompt is 641 characters and 186 tokens with SmolLM2's and Gemma 3's tokenizers:
# 3.4 characters a token, the count a model without a tokenizer is planned with.
CHARS_PER_TOKEN = 3.4

# What `tracegen run --model default` measured on this project's two-core machine (GNU time,
# and the run's own stage clocks), which the estimates below are fitted to: peak RSS
# 1.53-1.65 GB at 186 prompt tokens, 1.70 GB at 510, 2.08 GB at 993 (bench/scale.py: 2.77 GB
# at 2,078); 29 s from the cache, 44 s de-quantising the GGUF file, on an idle machine.
CALIBRATION = (
    "measured runs of SmolLM2-135M here (186 prompt tokens: 1.5-1.7 GB peak, 29 s, 44 s "
    "de-quantising; 993 tokens: 2.1 GB)"
)
# The same runs while other processes kept the two cores busy took 42-78 s.
BUSY_FACTOR = 2.5
# Python, torch, transformers and the tokenizer, with what the allocator keeps between the
# stages: what a run's peak holds besides the weights and what the formula counts.
RUNTIME_BYTES = 1000 * 10**6
# Loading GGUF weights holds about 2.25x their float32 size at its peak (de-quantised copies,
# or the cache's mapped file and its copy) over the bare interpreter's 0.31 GB.
GGUF_LOAD_FACTOR, INTERPRETER_BYTES = 2.25, 310 * 10**6
# Time, as fractions of this machine's matmul rate (`matmul_flops_per_second`): the recorded,
# timing and reference passes ran at about 1/4 of it, the lens at about 1/3; each greedy step
# costs about 8 ms a layer whatever its FLOPs; starting Python and torch, hashing and saving
# about 3 s; loading about 2 s plus 4 s a GB of weights, de-quantising a GGUF file
# 0.1-0.4 us a parameter more (SmolLM2's Q4_1: 12 s; Gemma 3 270M's Q4_K_M: 50-120 s).
PASS_EFFICIENCY, LENS_EFFICIENCY = 1 / 4.3, 1 / 3.3
STEP_SECONDS_PER_LAYER = 0.008
FIXED_SECONDS, LOAD_SECONDS, LOAD_SECONDS_PER_GB = 3.0, 2.0, 4.0
DEQUANTISE_SECONDS_PER_PARAM = (0.1e-6, 0.4e-6)


@dataclass(frozen=True)
class PromptCount:
    tokens: int
    how: str  # how it was counted, in words


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
    peak_bytes: int  # estimated peak RSS of `tracegen run` on one device, the CPU
    forward_flops: float  # one pass over the positions
    lens_flops: float
    seconds: float  # estimated wall time of the run on this machine's CPU, loading included
    dequantise_seconds: tuple[float, float]  # more for a GGUF file's first run: (low, high)
    matmul_rate: float  # FLOP/s, measured when planning: what `seconds` scales with
    prompt: PromptCount | None = None


def matmul_flops_per_second() -> float:
    """This machine's float32 matmul rate on a lens-like shape, measured in about a second."""
    left, right = torch.randn(256, 1024), torch.randn(1024, 4096)
    left @ right
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        left @ right
    return 2 * 256 * 1024 * 4096 * repeats / (time.perf_counter() - start)


def available_memory() -> int | None:
    """Bytes of memory this machine has available now (psutil, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolved_model(spec: str | models.ResolvedModel | None) -> models.ResolvedModel:
    """A spec as plan reads it: resolved, and for a hub id, reachable or in the local cache."""
    if isinstance(spec, models.ResolvedModel):
        return spec
    return models.reach(models.resolve(spec))


def plan(
    spec: str | models.ResolvedModel | None, prompt: int | PromptCount, steps: int = 16,
    dtype: str = "float32", top_k: int = 10, n_watched: int = 8,
    attention: str = DEFAULT_POLICY, activations: str = DEFAULT_ACTIVATIONS,
) -> Plan:  # fmt: skip
    from transformers import AutoModelForCausalLM

    resolved = resolved_model(spec)
    n_prompt = prompt.tokens if isinstance(prompt, PromptCount) else prompt
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
    eager = heads * n * n * 4 * 3  # one layer's scores, masked scores and probabilities
    peak = weights + recorded + logits + head + eager + RUNTIME_BYTES
    if resolved.gguf_file:  # loading may peak higher than the run for a short prompt
        peak = max(peak, int(INTERPRETER_BYTES + GGUF_LOAD_FACTOR * weights))

    adapter = Adapter(family, model, blocks, get_module(model, family.final_norm), unembed,
                      1.0, 1.0, None)  # fmt: skip
    from .derive import flops_per_layer

    forward = float(sum(map(sum, flops_per_layer(adapter, n)))) + 2 * n * d_model * vocab
    lens_flops = (n_layers + 1) * 2.0 * n * d_model * vocab
    rate = matmul_flops_per_second()
    # Passes: the recorded prompt pass, three clock-only ones (one for a long prompt, as the
    # run decides), the reference; then the greedy steps and the lens.
    passes = 5 * forward / (rate * PASS_EFFICIENCY)
    if passes / 5 > LONG_PASS_SECONDS:  # the prompt is timed once, not three times
        passes *= 3 / 5
    compute = passes + steps * n_layers * STEP_SECONDS_PER_LAYER
    compute += lens_flops / (rate * LENS_EFFICIENCY)
    loading = LOAD_SECONDS + LOAD_SECONDS_PER_GB * weights / 1e9
    seconds = FIXED_SECONDS + loading + compute
    low, high = DEQUANTISE_SECONDS_PER_PARAM
    dequantise = (n_params * low, n_params * high) if resolved.gguf_file else (0.0, 0.0)
    sizes = (int(trace_bytes), int(weights), int(peak))
    return Plan(type(model).__name__, n_params, n_layers, heads, d_model, vocab, n, *sizes,
                forward, lens_flops, seconds, dequantise, rate,
                prompt if isinstance(prompt, PromptCount) else None)  # fmt: skip


def attention_bytes(policy: AttentionPolicy, heads: int, n_prompt: int, n: int) -> int:
    """One layer's stored attention under a policy (tracegen.policy), in bytes."""
    if policy.kind == "full":
        return heads * n * (n + 1) // 2 * 2
    if policy.kind == "rows":
        return heads * len(policy.rows(n_prompt, n)) * n * 2
    return heads * n * (policy.count * (2 + 4) + 2)  # float16 weight, int32 key; the rest


def plan_text(result: Plan) -> str:
    lines = [
        f"model      {result.architecture}: {result.n_params / 1e6:.1f}M parameters, "
        f"{result.n_layers} layers, {result.n_heads} heads, width {result.d_model}, "
        f"vocabulary {result.vocab_size:,}",
    ]
    if result.prompt is not None:
        lines.append(f"prompt     {result.prompt.tokens} tokens, {result.prompt.how}")
    lines += [
        f"positions  {result.n_positions} traced",
        f"trace      {fmt_file_size(result.trace_bytes)} on disk (schema {store.SCHEMA_VERSION})",
        f"memory     {fmt_file_size(result.weights_bytes)} of weights; peak about "
        f"{fmt_file_size(result.peak_bytes)} for the run on one device (with --device-map, "
        "the weights can spread across GPUs, the CPU and disk; the rest stays in CPU memory)",
        f"work       {result.forward_flops / 1e9:.1f} GFLOP a pass, "
        f"{result.lens_flops / 1e9:.1f} GFLOP for the lens",
        f"time       about {fmt_seconds(result.seconds)} on this machine's CPU at its matmul "
        f"rate measured just now ({result.matmul_rate / 1e9:.0f} GFLOP/s), loading included"
        f"{dequantise_text(result)}; more work arriving on its cores slows a run (runs here "
        f"took up to {BUSY_FACTOR:g}x as long)",
        f"estimate   the peak and the time are estimates of this implementation, fitted to "
        f"{CALIBRATION}",
    ]
    return "\n".join(lines)


def dequantise_text(result: Plan) -> str:
    low, high = result.dequantise_seconds
    if not high:
        return ""
    return (
        f", plus {fmt_seconds(low)} to {fmt_seconds(high)} the first time, to de-quantise "
        "the GGUF file (later runs read the cache)"
    )


def fmt_seconds(seconds: float) -> str:
    """'40 s', '3 min', '1.5 h': a duration as plan states it, to two figures at most."""
    if seconds < 90:
        return f"{max(1, round(seconds, -1) if seconds >= 20 else round(seconds)):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def memory_warning(result: Plan) -> str | None:
    """One line when the planned peak is more than the memory this machine has available."""
    available = available_memory()
    if available is None or result.peak_bytes <= available:
        return None
    return (
        f"tracegen: warning: the planned peak, about {fmt_file_size(result.peak_bytes)}, is "
        f"more than the {fmt_file_size(available)} of memory available here: the run may be "
        "killed (use --device-map with --offload-folder, a smaller --dtype, or a shorter prompt)"
    )


def count_prompt(spec: str | models.ResolvedModel | None, prompt_file: Path) -> PromptCount:
    """The prompt's length in the model's own tokens (loads only the tokenizer); for a model
    without a usable tokenizer, estimated from its characters (`CHARS_PER_TOKEN`)."""
    resolved = resolved_model(spec)
    text = read_prompt(prompt_file)
    try:
        tokenizer = models.load_tokenizer(resolved)
    except Exception as error:  # any failure: the plan falls back to an estimate, said so
        estimate = max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
        return PromptCount(
            estimate,
            f"estimated from its {len(text):,} characters at {CHARS_PER_TOKEN} a token "
            f"({no_tokenizer(resolved, error)})",
        )
    return PromptCount(len(tokenizer(text)["input_ids"]), "counted with the model's tokenizer")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def no_tokenizer(resolved: models.ResolvedModel, error: Exception) -> str:
    """Why the model's tokenizer could not be loaded, in a few words."""
    folder = Path(resolved.source)
    if resolved.kind == "folder" and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        return f"{folder.name} has no tokenizer files"
    why = models.first_line(error).rstrip(":. ")
    return f"its tokenizer did not load: {type(error).__name__}: {why[:100]}"


def prompt_tokens(spec: str | models.ResolvedModel | None, prompt_file: Path) -> int:
    """The prompt's length in the model's own tokens, or its estimate (`count_prompt`)."""
    return count_prompt(spec, prompt_file).tokens
