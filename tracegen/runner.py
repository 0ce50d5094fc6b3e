"""`tracegen run`: resolve -> load -> forward -> steps -> derive -> save, each stage timed.

This is the only module that ties the torch side together; the CLI only parses arguments.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import progress, store
from .models import ModelError
from .policy import (
    DEFAULT_ACTIVATIONS,
    DEFAULT_POLICY,
    HEAD_SCORES,
    AttentionPolicy,
    PolicyError,
    parse_activations,
    parse_policy,
)

DEFAULT_WATCHED = (" two", " four", " one", " three", " no", " zero", " none", " foot")
DEFAULT_TOP_K = 10
LONG_PASS_SECONDS = 10.0  # a recorded prompt pass this long is timed once, not three times
BUNDLED_PROMPT = Path(__file__).with_name("prompt.txt")


class RunError(RuntimeError):
    """Bad input to `tracegen run`. The message is one line."""


def read_prompt(path: Path) -> str:
    if path.is_dir():
        raise RunError(f"prompt file {path} is a folder; give a UTF-8 text file")
    if not path.exists():  # not is_file(): /dev/null and pipes are files to read, not missing
        raise RunError(f"prompt file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunError(
            f"prompt file {path} is not UTF-8 (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:  # unreadable: permissions, a vanished file
        raise RunError(f"cannot read prompt file {path}: {error.strerror}") from None
    if not text.strip():
        raise RunError(f"prompt file {path} is empty")
    return text


class Stages:
    """Prints each stage with its elapsed time to stderr and keeps the timings."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self.say(f"[{name}] {detail}".rstrip())
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        return_free_memory()
        self.say(f"[{name}] done in {self.seconds[name]:.1f}s{peak_memory_text()}")


def return_free_memory() -> None:
    """Hand memory the stage freed back to the system (glibc only). Tensors of a few MB come
    from malloc's heap, where what a stage frees stays, fragmented, and the next stage's
    tensors land beside it: without this a 2,078-token run peaked at 4.2 GB, with it at
    2.7 (bench/scale.py)."""
    if sys.platform.startswith("linux"):
        # musl or another C library has no malloc_trim: nothing to do
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_text() -> str:
    """', peak memory 1.2 GB so far': the process's peak resident memory (Linux reports
    ru_maxrss in KiB, macOS in bytes), or nothing where the platform has no such count."""
    try:
        import resource
    except ImportError:  # Windows
        return ""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return f", peak memory {peak_bytes / 1e9:.2f} GB so far"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in (
        "tracegen",
        "torch",
        "transformers",
        "tokenizers",
        "numpy",
        "safetensors",
        "gguf",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue  # optional libraries such as gguf are absent for some models
    return versions


@dataclass
class Loaded:
    resolved: Any  # models.ResolvedModel
    model: Any
    tokenizer: Any
    adapter: Any  # families.Adapter
    files: list[dict]  # weight files with sizes and sha256
    from_cache: bool  # GGUF weights read from the de-quantised cache


@dataclass
class Tokens:
    prompt_ids: list[int]
    watched: list[dict]  # text, id, n_subtokens
    max_context: int


@store.holding_targets  # the target reserved by check_target is released however run ends
def run(
    model_spec: str | None = None,
    prompt_file: Path | None = None,
    out: Path | None = None,
    *,
    steps: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    force: bool = False,
    watched: tuple[str, ...] = DEFAULT_WATCHED,
    top_k: int = DEFAULT_TOP_K,
    quiet: bool = False,
    cache: bool = True,
    device_map: str | None = None,
    max_memory: str | None = None,
    offload_folder: Path | None = None,
    attention: str = DEFAULT_POLICY,
    activations: str = DEFAULT_ACTIVATIONS,
) -> Path:
    """Trace a model on a prompt, check the trace against the model, write the folder."""
    from . import models

    try:
        policy = parse_policy(attention)
        kept_activations = parse_activations(activations)
    except PolicyError as error:
        raise RunError(str(error)) from None
    stages = Stages(quiet)
    if quiet:
        progress.quiet_libraries()
    prompt_path = Path(prompt_file) if prompt_file else BUNDLED_PROMPT
    prompt = read_prompt(prompt_path)
    if steps is not None and not 1 <= steps <= 256:
        raise RunError(f"--steps must be between 1 and 256, got {steps}")
    with stages.stage("resolve", model_spec or models.DEFAULT_SPEC):
        resolved = models.resolve(model_spec)
        out_dir = Path(out) if out else Path("traces") / resolved.slug
        store.check_target(out_dir, force)  # before the slow part; again when writing
        resolved = models.reach(resolved)  # a hub id without the hub: one line, at once
    placement = {
        "device_map": device_map,
        "max_memory": models.parse_max_memory(max_memory),
        "offload_folder": str(offload_folder) if offload_folder else None,
    }
    loaded = load_stage(stages, resolved, dtype, device, cache, placement)
    tokens = tokenize_stage(loaded, prompt, steps, watched)
    traced, reference = forward_stage(stages, loaded, tokens, steps, quiet, policy)
    derived = derive_stage(stages, loaded, traced, tokens, top_k, quiet)
    with stages.stage("gate", "the trace against the model's own outputs"):
        from . import verify

        report = verify.run_gate(
            loaded.adapter,
            traced,
            reference,
            derived["attribution"],
            derived["final_logit"],
            derived,  # its lens statistics
            len(tokens.prompt_ids) - 1,  # the answer position: the prompt's last
            dtype,
        )
        verify.require(report)
        worst = max(report.checks, key=lambda check: check.error / check.tolerance)
        stages.say(
            f"[gate] {len(report.checks)} checks passed; closest to its tolerance: "
            f"{worst.name} {worst.error:.2g} of {worst.tolerance:.2g}"
        )
    manifest = build_manifest(
        loaded,
        tokens,
        traced,
        derived,
        report,
        prompt,
        prompt_path,
        device,
        dtype,
        steps,
        top_k,
        stages,
        kept_activations,
    )
    return save_stage(stages, out_dir, manifest, traced, derived, force, quiet)


def load_stage(
    stages: Stages, resolved, dtype: str, device: str, cache: bool, placement: dict
) -> Loaded:
    from . import families, models

    with stages.stage("hash", "sha256 of the weight files"):
        files = [
            {"name": path.name, "bytes": path.stat().st_size, "sha256": store.sha256_file(path)}
            for path in resolved.weight_files()
        ]
    key = files[0]["sha256"] if cache and resolved.gguf_file and files else None
    with stages.stage("load", f"{resolved.source} {resolved.gguf_file or ''}".strip()):
        loaded = models.load(resolved, dtype, device, gguf_sha256=key, **placement)
        adapter = families.adapt(loaded.model)
    if loaded.from_cache:
        stages.say(f"[load] de-quantised weights from the cache, {models.cache_root() / key}")
    return Loaded(resolved, loaded.model, loaded.tokenizer, adapter, files, loaded.from_cache)


def tokenize_stage(
    loaded: Loaded, prompt: str, steps: int | None, watched: tuple[str, ...]
) -> Tokens:
    from . import models

    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer(prompt)["input_ids"]
    max_context = models.context_length(loaded.model.config)
    step_budget = steps if steps is not None else 16
    if max_context and len(prompt_ids) + step_budget > max_context:
        raise RunError(
            f"the prompt is {len(prompt_ids)} tokens and {step_budget} steps follow, more than "
            f"the model's context of {max_context}; shorten the prompt or lower --steps"
        )
    watched_ids = []
    for text in watched:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RunError(f"watched token {text!r} encodes to nothing with this tokenizer")
        watched_ids.append({"text": text, "id": ids[0], "n_subtokens": len(ids)})
    return Tokens(prompt_ids, watched_ids, max_context)


def forward_stage(
    stages: Stages,
    loaded: Loaded,
    tokens: Tokens,
    steps: int | None,
    quiet: bool,
    policy: AttentionPolicy,
):
    """The recorded prompt pass, the greedy steps, one clock-only pass, and the reference."""
    from tqdm import tqdm

    from . import capture

    tracer = capture.Tracer(
        loaded.model, loaded.tokenizer, loaded.adapter, tokens.prompt_ids, policy
    )
    layers_text = f"{len(tokens.prompt_ids)} prompt tokens through {len(loaded.adapter.blocks)}"
    with stages.stage("forward", f"{layers_text} layers, attention kept as {policy}"):
        tracer.prompt_pass()
    with stages.stage("steps", "greedy, with the KV cache"):
        bar = tqdm(total=steps or 16, desc="greedy steps", disable=quiet, leave=False)
        shown: list[str] = []

        def on_step(count: int, text: str) -> None:
            shown.append(text)
            bar.update(1)
            bar.set_postfix_str(repr("".join(shown)))

        tracer.greedy_steps(steps, on_step=on_step)
        bar.close()
        stages.say(f"[steps] {len(shown)} generated: {''.join(shown)!r} ({tracer.stop_reason})")
    # A pass of many seconds times each block steadily in one go; three of them would add
    # minutes to a long prompt's run (bench/scale.py).
    repeats = 3 if stages.seconds["forward"] < LONG_PASS_SECONDS else 1
    with stages.stage("timing", f"the prompt pass again, {repeats}x, clock only"):
        tracer.time_prompt_pass(repeats)
    traced = tracer.result()
    with stages.stage("reference", "all positions, no cache, the model's own attention"):
        from . import families, verify

        reference = tracer.reference_pass(traced)
        # Derived quantities in float32 on the CPU, where the captured tensors are, whatever
        # dtype and devices the pass ran in: only the head is copied there, not the model.
        loaded.adapter = families.head_on_cpu(loaded.adapter)
        reference.lens_errors = verify.lens_errors(loaded.adapter, traced, reference.logits)
        reference.logits = None
    return traced, reference


def derive_stage(
    stages: Stages, loaded: Loaded, traced, tokens: Tokens, top_k: int, quiet: bool
) -> dict:
    from tqdm import tqdm

    from . import derive

    adapter = loaded.adapter  # its head on the CPU in float32 since the reference stage
    with stages.stage("lens", f"{len(adapter.blocks) + 1} depths over the full vocabulary"):
        steps = (len(adapter.blocks) + 1) * derive.lens_blocks(len(traced.input_ids))
        bar = tqdm(total=steps, desc="lens", disable=quiet, leave=False)
        lens = derive.logit_lens(
            adapter, traced, [w["id"] for w in tokens.watched], top_k, on_step=bar.update
        )
        bar.close()
    with stages.stage("attribution", "direct logit attribution, FLOPs"):
        attribution, final_logit = derive.direct_logit_attribution(adapter, traced)
        flops = derive.flops_per_layer(adapter, len(tokens.prompt_ids))
    scores = {name: traced.head_scores[:, i] for i, name in enumerate(HEAD_SCORES)}  # [L, H]
    if traced.head_sink is not None:  # only a model with attention sinks has it
        scores["head_sink"] = traced.head_sink
    return {
        **lens,
        **scores,
        "attribution": attribution,
        "final_logit": final_logit,
        "flops": flops,
    }


def build_manifest(
    loaded: Loaded,
    tokens: Tokens,
    traced,
    derived: dict,
    report,
    prompt: str,
    prompt_path: Path,
    device: str,
    dtype: str,
    steps: int | None,
    top_k: int,
    stages: Stages,
    activations: AttentionPolicy,
) -> dict[str, Any]:
    import torch

    from . import derive, families

    model, tokenizer, adapter, resolved = (
        loaded.model,
        loaded.tokenizer,
        loaded.adapter,
        loaded.resolved,
    )
    config = model.config.get_text_config()
    shape = families.shape_of(adapter, int(traced.layers[0]["k_norm"].shape[0]))
    prompt_ids = tokens.prompt_ids
    flops = derived["flops"]
    flops_unembedding = 2.0 * len(prompt_ids) * shape.d_model * config.vocab_size
    # The site has no tokenizer: every id the trace can show is decoded here, once.
    shown_ids = set(np.unique(derived["lens_topk_ids"].numpy()).tolist())
    shown_ids |= set(traced.input_ids) | set(traced.generated_ids)
    shown_ids |= {w["id"] for w in tokens.watched}
    vocabulary = {str(token): tokenizer.decode([token]) for token in sorted(shown_ids)}
    bytes_per_value = torch.finfo(getattr(torch, dtype)).bits // 8
    return {
        "libraries": _versions(),
        "model": {
            "spec": resolved.spec,
            "source": resolved.source
            if resolved.kind == "hub"
            else str(Path(resolved.source).name),
            "source_kind": resolved.kind,
            "gguf_file": resolved.gguf_file,
            "slug": resolved.slug,
            "files": loaded.files,
            "architecture": type(model).__name__,
            "model_type": config.model_type,
            "family": adapter.family.name,
            "family_overrides": adapter.family.overrides(),
            "n_layers": shape.n_layers,
            "n_heads": shape.n_heads,
            "n_kv_heads": shape.n_kv_heads,
            "d_model": shape.d_model,
            "d_head": shape.d_head,
            "d_mlp": shape.d_mlp,
            "vocab_size": config.vocab_size,
            "n_params": sum(parameter.numel() for parameter in model.parameters()),
            "dtype": dtype,
            "max_context": tokens.max_context,
            "final_norm": type(adapter.final_norm).__name__,
            "write_scale": adapter.write_scale,
            "logit_multiplier": adapter.logit_multiplier,
            "logit_softcap": adapter.logit_softcap,
        },
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "adds_bos": bool(prompt_ids) and prompt_ids[0] == tokenizer.bos_token_id,
        },
        "prompt": {
            "text": prompt,
            "sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            "n_tokens": len(prompt_ids),
            "file": prompt_path.name,
        },
        "tokens": {
            "ids": traced.input_ids,
            "strings": [tokenizer.decode([token]) for token in traced.input_ids],
            "pieces": tokenizer.convert_ids_to_tokens(traced.input_ids),
            "n_prompt": len(prompt_ids),
            "generated_ids": traced.generated_ids,
            "generated_strings": [tokenizer.decode([token]) for token in traced.generated_ids],
            "stop_reason": traced.stop_reason,
        },
        "n_positions": len(traced.input_ids),
        "attention": {
            "policy": str(traced.policy),
            **({"rows": traced.attention_rows} if traced.attention_rows is not None else {}),
        },
        "activations": {
            "policy": str(activations),
            **(
                {"rows": activations.rows(len(prompt_ids), len(traced.input_ids))}
                if activations.kind == "rows"
                else {}
            ),
        },
        "vocabulary": vocabulary,
        "run": {
            "device": device,
            "dtype": dtype,
            "steps": steps,
            "stage_seconds": stages.seconds,
            "weights_from_cache": loaded.from_cache,
            # Where accelerate placed each module, counted per device ("disk": offloaded).
            "device_map": _placement_counts(model),
        },
        "gate": report.as_manifest(),
        "derived": {
            "top_k": top_k,
            "watched": tokens.watched,
            "attribution_components": derive.attribution_components(len(adapter.blocks), adapter),
            "flops_components": list(derive.FLOPS_COMPONENTS),
            "flops_unembedding": flops_unembedding,
            "flops_total": float(np.sum(flops)) + flops_unembedding,
            "kv_cache_bytes_per_token": derive.kv_cache_bytes_per_token(shape, bytes_per_value),
            "determinism_max_abs_logit_diff": traced.determinism_max_abs_diff,
            "eval_mode": traced.eval_mode,
            "grad_enabled": traced.grad_enabled,
            "params_requiring_grad": sum(1 for p in model.parameters() if p.requires_grad),
            "dropout_modules_training": traced.dropout_modules_training,
            "lens_entropy_unit": "nats",
        },
    }


def _placement_counts(model) -> dict[str, int] | None:
    placement = getattr(model, "hf_device_map", None)
    if not placement:
        return None
    counts: dict[str, int] = {}
    for device in placement.values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    return counts


def save_stage(
    stages: Stages, out_dir: Path, manifest: dict, traced, derived: dict, force: bool, quiet: bool
) -> Path:
    from tqdm import tqdm

    from . import derive

    # Attention is already in its stored layout: capture keeps only what the policy keeps.
    # Activations were kept at every position for the lens and the gate; --activations
    # rows:R stores the rows it names.
    kept = manifest["activations"].get("rows")
    layers = [
        {
            name: tensor[kept] if kept is not None and name in store.ACTIVATIONS else tensor
            for name, tensor in derive.as_numpy(layer).items()
        }
        for layer in traced.layers
    ]
    arrays = derive.as_numpy({k: v for k, v in derived.items() if k != "flops"})
    arrays.update(
        flops=np.asarray(derived["flops"], dtype=np.float64),
        layer_seconds=np.asarray(traced.layer_seconds, dtype=np.float64),
    )
    with stages.stage("save", str(out_dir)):
        bar = tqdm(total=len(layers), desc="layer files", disable=quiet, leave=False)
        store.write_trace(
            out_dir,
            manifest,
            layers,
            arrays,
            force=force,
            progress=lambda done, total: bar.update(1),
        )
        bar.close()
    size = sum(path.stat().st_size for path in out_dir.iterdir())
    stages.say(f"wrote {out_dir} ({size / 1e6:.1f} MB)")
    return out_dir


__all__ = ["run", "RunError", "ModelError", "DEFAULT_WATCHED", "read_prompt"]
