"""The trace format: write it atomically, read it lazily, validate it. NumPy only, no torch.

A trace is a folder:

    manifest.json              model card, tokenizer, prompt, tokens, provenance (JSON)
    layer_000.safetensors ...  one file per transformer block, tensors over all traced positions
    derived.safetensors        logit lens, watched tokens, attribution, FLOPs, timings

The full schema is documented in docs/trace-schema.md; `LAYER_TENSORS` and `DERIVED_TENSORS`
below are its machine-readable half and are checked on every load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SCHEMA_NAME = "tracegen.trace"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DERIVED_FILE = "derived.safetensors"
# safetensors metadata is str -> str; one key holding sorted JSON keeps files byte-reproducible.
METADATA_KEY = "tracegen"

# Symbolic shapes: L layers, N traced positions, D width, H query heads, G key/value heads,
# P = N(N+1)/2 lower-triangle entries, K lens top-k, W watched tokens, C attribution
# components, F FLOPs components.
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "resid_in": ("N", "D"),
    "resid_out": ("N", "D"),
    "attn_out": ("N", "D"),
    "mlp_out": ("N", "D"),
    # Causal attention is zero above the diagonal, so only the lower triangle is stored,
    # row by row (numpy.tril_indices order); `Trace.layer(i, "attn_probs")` unpacks it.
    "attn_probs_tril": ("H", "P"),
    "q_norm": ("H", "N"),
    "k_norm": ("G", "N"),
    "v_norm": ("G", "N"),
}
DERIVED_TENSORS: dict[str, tuple[str, ...]] = {
    "lens_topk_ids": ("L+1", "N", "K"),
    "lens_topk_probs": ("L+1", "N", "K"),
    "lens_entropy": ("L+1", "N"),
    "lens_target_rank": ("L+1", "N"),
    "lens_target_prob": ("L+1", "N"),
    "lens_kl": ("L+1", "N"),
    "watched_probs": ("L+1", "N", "W"),
    "attribution": ("N", "C"),
    "final_logit": ("N",),
    "flops": ("L", "F"),
    "layer_seconds": ("L",),
}
# Big activations are stored in float16 to keep the committed traces small; a tensor whose
# values do not fit float16 is kept in float32 rather than clipped.
HALF_PRECISION = {"resid_in", "resid_out", "attn_out", "mlp_out", "attn_probs_tril"}
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Counts in the billions need more than float32's 24 bits to stay exact.
DOUBLE_PRECISION = {"flops", "layer_seconds"}


class TraceError(ValueError):
    """A trace folder is missing, incomplete or of another schema. The message is one line."""


def layer_file(index: int) -> str:
    return f"layer_{index:03d}.safetensors"


def to_storage_dtype(name: str, array: np.ndarray) -> np.ndarray:
    """Cast an activation to the precision it is stored in (see HALF_PRECISION)."""
    if array.dtype.kind == "f":
        if name in HALF_PRECISION and np.abs(array).max(initial=0.0) < FLOAT16_MAX:
            return np.ascontiguousarray(array, dtype=np.float16)
        if name in DOUBLE_PRECISION:
            return np.ascontiguousarray(array, dtype=np.float64)
        return np.ascontiguousarray(array, dtype=np.float32)
    return np.ascontiguousarray(array)


def _save(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    stored = {name: to_storage_dtype(name, array) for name, array in tensors.items()}
    save_file(stored, str(path), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def write_trace(
    out_dir: Path,
    manifest: Mapping[str, Any],
    layers: Sequence[Mapping[str, np.ndarray]],
    derived: Mapping[str, np.ndarray],
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a complete trace to `out_dir`, or nothing at all.

    Files go to a temporary folder beside the target and are renamed into place only once
    complete, so a crash or Ctrl-C leaves an existing trace untouched.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TraceError(f"cannot create {out_dir.parent}: {error.strerror}") from None
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old_dir = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        file_meta = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION}
        for index, tensors in enumerate(layers):
            _save(tmp_dir / layer_file(index), tensors, {**file_meta, "layer": index})
            if progress:
                progress(index + 1, len(layers))
        _save(tmp_dir / DERIVED_FILE, derived, file_meta)
        manifest = {**manifest, "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION}
        text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp_dir / MANIFEST).write_text(text, encoding="utf-8")
        for path in tmp_dir.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; traces are meant to be shared
        load_trace(tmp_dir)  # refuse to publish a trace that its own reader rejects
        if out_dir.exists():
            out_dir.rename(old_dir)
        tmp_dir.rename(out_dir)
    except BaseException as error:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if old_dir.exists() and not out_dir.exists():
            old_dir.rename(out_dir)
        if isinstance(error, OSError):  # a full disk, a vanished folder: one line, not a trace
            raise TraceError(f"cannot write {out_dir}: {error.strerror or error}") from None
        raise
    shutil.rmtree(old_dir, ignore_errors=True)
    return out_dir


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a target that would lose data: an existing trace without --force, or anything
    that is not a trace at all (--force replaces traces only), or a path that cannot be made."""
    if out_dir.exists():
        if not force:
            raise TraceError(f"{out_dir} already exists; pass --force to replace it")
        if not (out_dir / MANIFEST).is_file():
            raise TraceError(
                f"{out_dir} exists and is not a trace (no {MANIFEST}); --force replaces only "
                "traces: choose another --out"
            )
        return
    ancestor = out_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TraceError(f"cannot create {out_dir}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TraceError(f"cannot create {out_dir}: {ancestor} is not writable")


@dataclass(frozen=True)
class ModelCard:
    """What the manifest says about the model; numbers the site shows on the model card."""

    spec: str
    source: str
    slug: str
    architecture: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_params: int
    dtype: str
    max_context: int


class Trace:
    """One trace folder. Opening it validates the schema and every tensor's shape, but reads
    no tensor data. Arrays are read on first use: floats as float32 (float64 where stored
    so), integers as int64."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        model = manifest["model"]
        self.model = ModelCard(**{key: model[key] for key in ModelCard.__dataclass_fields__})
        tokens = manifest["tokens"]
        self.token_ids: list[int] = tokens["ids"]
        self.token_strings: list[str] = tokens["strings"]
        self.n_prompt: int = tokens["n_prompt"]
        self.generated_ids: list[int] = tokens["generated_ids"]
        self.generated_strings: list[str] = tokens["generated_strings"]
        self.n_positions: int = manifest["n_positions"]
        derived = manifest["derived"]
        self.top_k: int = derived["top_k"]
        self.watched: list[dict[str, Any]] = derived["watched"]
        self.attribution_components: list[str] = derived["attribution_components"]
        self.flops_components: list[str] = derived["flops_components"]
        self.prompt_text: str = manifest["prompt"]["text"]

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    def dims(self) -> dict[str, int]:
        """The sizes behind the symbolic shapes in LAYER_TENSORS and DERIVED_TENSORS."""
        return {
            "L": self.model.n_layers,
            "L+1": self.model.n_layers + 1,
            "N": self.n_positions,
            "P": self.n_positions * (self.n_positions + 1) // 2,
            "D": self.model.d_model,
            "H": self.model.n_heads,
            "G": self.model.n_kv_heads,
            "K": self.top_k,
            "W": len(self.watched),
            "C": len(self.attribution_components),
            "F": len(self.flops_components),
        }

    def layer(self, index: int, name: str) -> np.ndarray:
        """One tensor of one block, e.g. `trace.layer(3, "attn_probs")` -> [H, N, N]."""
        if not 0 <= index < self.n_layers:
            raise TraceError(f"layer {index} out of range 0..{self.n_layers - 1}")
        if name == "attn_probs":
            return unpack_tril(_read(self.path / layer_file(index), "attn_probs_tril"))
        if name not in LAYER_TENSORS:
            known = ", ".join(["attn_probs", *LAYER_TENSORS])
            raise TraceError(f"unknown layer tensor {name!r}; known: {known}")
        return _read(self.path / layer_file(index), name)

    def stack(self, name: str) -> np.ndarray:
        """One tensor across all blocks: [L, ...]."""
        return np.stack([self.layer(index, name) for index in range(self.n_layers)])

    def derived(self, name: str) -> np.ndarray:
        if name not in DERIVED_TENSORS:
            raise TraceError(
                f"unknown derived tensor {name!r}; known: {', '.join(DERIVED_TENSORS)}"
            )
        return self._derived[name]

    @cached_property
    def _derived(self) -> dict[str, np.ndarray]:
        return {name: _read(self.path / DERIVED_FILE, name) for name in DERIVED_TENSORS}

    @cached_property
    def vocabulary(self) -> dict[int, str]:
        """id -> decoded text of every token the trace names: the manifest's table (all lens
        top-k ids), the traced and generated tokens, the watched tokens."""
        table = {int(key): text for key, text in self.manifest.get("vocabulary", {}).items()}
        table.update(zip(self.token_ids, self.token_strings, strict=True))
        table.update(zip(self.generated_ids, self.generated_strings, strict=True))
        table.update({int(w["id"]): w["text"] for w in self.watched})
        return table

    def files(self) -> list[Path]:
        """Every file of the trace, manifest first."""
        layers = [self.path / layer_file(index) for index in range(self.n_layers)]
        return [self.path / MANIFEST, *layers, self.path / DERIVED_FILE]

    def __repr__(self) -> str:
        return f"Trace({str(self.path)!r}, model={self.model.slug!r}, positions={self.n_positions})"


def pack_tril(square: np.ndarray) -> np.ndarray:
    """[..., N, N] -> [..., N(N+1)/2]: the lower triangle, row by row."""
    rows, cols = np.tril_indices(square.shape[-1])
    return square[..., rows, cols]


def unpack_tril(packed: np.ndarray) -> np.ndarray:
    """Inverse of `pack_tril`; the upper triangle (future positions) is zero."""
    n = int((np.sqrt(8 * packed.shape[-1] + 1) - 1) / 2)
    square = np.zeros((*packed.shape[:-1], n, n), dtype=packed.dtype)
    rows, cols = np.tril_indices(n)
    square[..., rows, cols] = packed
    return square


def _read(path: Path, name: str) -> np.ndarray:
    with safe_open(str(path), framework="numpy") as handle:
        array = handle.get_tensor(name)
    if array.dtype == np.float64:
        return array
    return array.astype(np.float32) if array.dtype.kind == "f" else array.astype(np.int64)


def _check_shapes(path: Path, expected: Mapping[str, tuple[str, ...]], dims: Mapping[str, int]):
    if not path.is_file():
        raise TraceError(f"{path} is missing; the trace is incomplete, regenerate it")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = set(handle.keys())
            for name, symbols in expected.items():
                if name not in names:
                    raise TraceError(f"{path} has no tensor {name!r}; regenerate the trace")
                shape = tuple(handle.get_slice(name).get_shape())
                want = tuple(dims[symbol] for symbol in symbols)
                if shape != want:
                    raise TraceError(
                        f"{path}: {name} has shape {list(shape)}, expected {list(want)} "
                        f"({' x '.join(symbols)})"
                    )
    except TraceError:
        raise
    except Exception as error:  # safetensors raises its own types for truncated files
        raise TraceError(f"{path} is not a readable safetensors file ({error})") from None


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Open a trace folder written by `tracegen run`, checking schema version and shapes."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise TraceError(f"{path} is not a trace: no {MANIFEST} (make one with `tracegen run`)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TraceError(f"{manifest_path} is not valid JSON ({error})") from None
    if manifest.get("schema") != SCHEMA_NAME:
        raise TraceError(f"{manifest_path} is not a tracegen manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceError(
            f"{path} uses trace schema {version}, this tracegen reads schema {SCHEMA_VERSION}; "
            "regenerate it with `tracegen run`"
        )
    try:
        trace = Trace(path, manifest)
    except (KeyError, TypeError) as error:
        raise TraceError(f"{manifest_path} lacks field {error}; regenerate the trace") from None
    dims = trace.dims()
    for index in range(trace.n_layers):
        _check_shapes(path / layer_file(index), LAYER_TENSORS, dims)
    _check_shapes(path / DERIVED_FILE, DERIVED_TENSORS, dims)
    return trace
