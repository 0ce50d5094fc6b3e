"""`tracegen run`: resolve -> load -> forward -> steps -> derive -> save, each stage timed.

This is the only module that ties the torch side together; the CLI only parses arguments.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import progress, store
from .models import ModelError

DEFAULT_WATCHED = (" two", " four", " one", " three", " no", " zero", " none", " foot")
DEFAULT_TOP_K = 10
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

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self.say(f"[{name}] {detail}".rstrip())
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.say(f"[{name}] done in {self.seconds[name]:.1f}s")


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
) -> Path:
    """Trace a model on a prompt and write the trace folder. Returns its path."""
    # Imports here keep `tracegen info` and the site free of torch.
    import torch
    from tqdm import tqdm

    from . import capture, derive, models

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
        files = [
            {"name": path.name, "bytes": path.stat().st_size, "sha256": models.sha256_file(path)}
            for path in resolved.weight_files()
        ]

    with stages.stage("load", f"{resolved.source} {resolved.gguf_file or ''}".strip()):
        model, tokenizer = models.load(resolved, dtype, device)
        adapter = models.adapt(model)
        config = model.config.get_text_config()
        shape = models.shape_of(config)

    prompt_ids = tokenizer(prompt)["input_ids"]
    max_context = int(
        getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0) or 0
    )
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

    tracer = capture.Tracer(model, tokenizer, adapter, prompt_ids)
    layers_text = f"{len(prompt_ids)} prompt tokens through {len(adapter.blocks)} layers"
    with stages.stage("forward", layers_text):
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

    with stages.stage("timing", "the prompt pass again, five times, clock only"):
        tracer.time_prompt_pass()
    traced = tracer.result()

    with stages.stage("derive", "logit lens, watched tokens, attribution, FLOPs"):
        # Derived quantities in float32 on the CPU, where the captured tensors are, whatever
        # dtype and device the pass ran in. (torch's own methods: transformers refuses .float()
        # on models loaded from GGUF, which are float32 after de-quantising anyway.)
        torch.nn.Module.float(torch.nn.Module.to(model, "cpu"))
        adapter = models.adapt(model)
        bar = tqdm(total=len(adapter.blocks) + 1, desc="lens depths", disable=quiet, leave=False)
        lens = derive.logit_lens(
            adapter, traced, [w["id"] for w in watched_ids], top_k, on_depth=lambda d: bar.update(1)
        )
        bar.close()
        attribution, final_logit = derive.direct_logit_attribution(adapter, traced)
        components = derive.attribution_components(len(adapter.blocks), adapter)
        flops = derive.flops_per_layer(shape, len(prompt_ids), adapter.gated_mlp)
        flops_unembedding = 2.0 * len(prompt_ids) * config.hidden_size * config.vocab_size
        n_params = sum(parameter.numel() for parameter in model.parameters())

    # The site has no tokenizer: every id the trace can show is decoded here, once.
    shown_ids = set(np.unique(lens["lens_topk_ids"].numpy()).tolist())
    shown_ids |= set(traced.input_ids) | set(traced.generated_ids) | {w["id"] for w in watched_ids}
    vocabulary = {str(token): tokenizer.decode([token]) for token in sorted(shown_ids)}
    bytes_per_value = torch.finfo(getattr(torch, dtype)).bits // 8
    strings = [tokenizer.decode([token]) for token in traced.input_ids]
    manifest: dict[str, Any] = {
        "libraries": _versions(),
        "model": {
            "spec": resolved.spec,
            "source": resolved.source
            if resolved.kind == "hub"
            else str(Path(resolved.source).name),
            "source_kind": resolved.kind,
            "gguf_file": resolved.gguf_file,
            "slug": resolved.slug,
            "files": files,
            "architecture": type(model).__name__,
            "model_type": config.model_type,
            "family": adapter.family,
            "n_layers": len(adapter.blocks),
            "n_heads": shape.n_heads,
            "n_kv_heads": shape.n_kv_heads,
            "d_model": shape.d_model,
            "d_head": shape.d_head,
            "d_mlp": shape.d_mlp,
            "vocab_size": config.vocab_size,
            "n_params": n_params,
            "dtype": dtype,
            "max_context": max_context,
            "gated_mlp": adapter.gated_mlp,
            "parallel_residual": adapter.parallel_residual,
            "final_norm": type(adapter.final_norm).__name__,
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
            "strings": strings,
            "pieces": tokenizer.convert_ids_to_tokens(traced.input_ids),
            "n_prompt": len(prompt_ids),
            "generated_ids": traced.generated_ids,
            "generated_strings": [tokenizer.decode([token]) for token in traced.generated_ids],
            "stop_reason": traced.stop_reason,
        },
        "n_positions": len(traced.input_ids),
        "vocabulary": vocabulary,
        "run": {"device": device, "dtype": dtype, "steps": steps, "stage_seconds": stages.seconds},
        "derived": {
            "top_k": top_k,
            "watched": watched_ids,
            "attribution_components": components,
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
    layers = []
    for layer in traced.layers:
        tensors = derive.as_numpy(layer)
        tensors["attn_probs_tril"] = store.pack_tril(tensors.pop("attn_probs"))
        layers.append(tensors)
    derived = derive.as_numpy(lens)
    derived.update(
        attribution=attribution.numpy(),
        final_logit=final_logit.numpy(),
        flops=np.asarray(flops, dtype=np.float64),
        layer_seconds=np.asarray(traced.layer_seconds, dtype=np.float64),
    )

    with stages.stage("save", str(out_dir)):
        bar = tqdm(total=len(layers), desc="layer files", disable=quiet, leave=False)
        store.write_trace(
            out_dir,
            manifest,
            layers,
            derived,
            force=force,
            progress=lambda done, total: bar.update(1),
        )
        bar.close()
    size = sum(path.stat().st_size for path in out_dir.iterdir())
    stages.say(f"wrote {out_dir} ({size / 1e6:.1f} MB)")
    return out_dir


__all__ = ["run", "RunError", "ModelError", "DEFAULT_WATCHED", "read_prompt"]
