"""The trace format: write it atomically, read it lazily, validate it. NumPy only, no torch.

A trace is a folder:

    manifest.json              model card, tokenizer, prompt, tokens, provenance, and the
                               sha256 of every tensor file (JSON)
    layer_000.safetensors ...  one file per transformer block, tensors over all traced positions;
                               its attention in the layout `--attention` chose (tracegen.policy)
    derived.safetensors        logit lens, watched tokens, attribution, FLOPs, head scores
    timings.json               what the clock measured: the only file that differs between
                               two runs of the same model on the same prompt

The full schema is documented in docs/trace-schema.md; `LAYER_TENSORS` and `DERIVED_TENSORS`
below are its machine-readable half and are checked on every load, along with the manifest's
fields (`tracegen.validate`) and the checksums.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

try:
    import fcntl
except ImportError:  # not POSIX (Windows): the lock file itself is the lock, see lock_target
    fcntl = None  # type: ignore[assignment]

from .policy import HEAD_SCORES, LAYOUT_TENSORS, parse_activations, parse_policy
from .validate import TraceError, check_manifest, check_timings, check_values, shown

SCHEMA_NAME = "tracegen.trace"
# 2: checksums in the manifest, timings moved from derived.safetensors and the manifest's
# `run` to timings.json. 3: attention layouts (the manifest's `attention`), head scores.
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
DERIVED_FILE = "derived.safetensors"
TIMINGS_FILE = "timings.json"
# safetensors metadata is str -> str; one key holding sorted JSON keeps files byte-reproducible.
METADATA_KEY = "tracegen"

# Symbolic shapes: L layers, N traced positions, D width, H query heads, G key/value heads,
# P = N(N+1)/2 lower-triangle entries, R kept attention rows, A attention top-k, S positions
# with kept activations, K lens top-k, W watched tokens, C attribution components, F FLOPs
# components.
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "resid_in": ("N", "D"),
    "resid_out": ("N", "D"),
    "attn_out": ("N", "D"),
    "mlp_out": ("N", "D"),
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
    **{name: ("L", "H") for name in HEAD_SCORES},
}
# Written only where they apply, and read through `Trace.derived` when present (traces made
# before them, and traces of models they do not apply to, have none; `Trace.has_derived`):
#   head_sink  the share of each head's prompt rows that goes to its attention sink rather
#              than to any token, for models with sinks (GPT-OSS), whose rows sum to less than 1
OPTIONAL_DERIVED_TENSORS: dict[str, tuple[str, ...]] = {"head_sink": ("L", "H")}
# Read through `Trace.derived` like the tensors above, but kept in timings.json.
TIMING_SERIES = ("layer_seconds",)
# Big activations are stored in float16 to keep the committed traces small; a tensor whose
# values do not fit float16 is kept in float32 rather than clipped.
HALF_PRECISION = {
    "resid_in", "resid_out", "attn_out", "mlp_out",
    "attn_probs_tril", "attn_rows", "attn_topk_probs", "attn_rest",
}  # fmt: skip
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Counts in the billions need more than float32's 24 bits to stay exact.
DOUBLE_PRECISION = {"flops", "layer_seconds"}
INTEGER_TENSORS = {"lens_topk_ids", "lens_target_rank", "attn_topk_keys"}


ACTIVATIONS = ("resid_in", "resid_out", "attn_out", "mlp_out")


def layer_tensors(attention: str, activations: str = "all") -> dict[str, tuple[str, ...]]:
    """A layer file's tensors: LAYER_TENSORS, with activations over the S kept positions
    under --activations rows:R, and the attention layout's tensors."""
    tensors = dict(LAYER_TENSORS)
    if parse_activations(activations).kind == "rows":
        tensors.update({name: ("S", "D") for name in ACTIVATIONS})
    return {**tensors, **LAYOUT_TENSORS[parse_policy(attention).kind]}


def stored_dtypes(name: str) -> tuple[str, ...]:
    """The safetensors dtypes a tensor may be stored in (see the precision sets above)."""
    if name in HALF_PRECISION:
        return ("F16", "F32")
    if name in DOUBLE_PRECISION:
        return ("F64",)
    if name in INTEGER_TENSORS:
        return ("I32", "I64")
    return ("F32",)


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stable_topk(ids: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists ordered by probability, ties by token id, so that equal probabilities
    list in the same order on every machine (torch.topk leaves the order of ties open)."""
    order = np.lexsort((ids, -probs.astype(np.float64)), axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(probs, order, -1)


def split_timings(
    manifest: Mapping[str, Any], derived: Mapping[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Move everything that depends on the clock into one JSON file, so that two traces of
    the same model and prompt differ in `timings.json` only."""
    derived = dict(derived)
    manifest = dict(manifest)
    run = dict(manifest.get("run") or {})
    seconds = derived.pop("layer_seconds", np.zeros(0))
    timings = {
        "layer_seconds": [float(s) for s in np.asarray(seconds, dtype=np.float64).ravel()],
        "stage_seconds": {k: float(v) for k, v in (run.pop("stage_seconds", None) or {}).items()},
        "written": int(time.time()),
    }
    # Whether GGUF weights came from the de-quantised cache differs between a first run and
    # the next, which trace byte-identically: it describes the run, like the clock.
    if "weights_from_cache" in run:
        timings["weights_from_cache"] = bool(run.pop("weights_from_cache"))
    manifest["run"] = run
    if "lens_topk_ids" in derived and "lens_topk_probs" in derived:
        ids, probs = stable_topk(np.asarray(derived["lens_topk_ids"]),
                                 np.asarray(derived["lens_topk_probs"]))  # fmt: skip
        derived.update(lens_topk_ids=ids, lens_topk_probs=probs)
    return manifest, derived, timings


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

    Files go to a temporary folder beside the target, under a lock that one run holds from
    `check_target` to here; the finished folder replaces the target in one atomic exchange,
    so a crash, a kill or Ctrl-C at any moment leaves the old trace or the new one in place.
    Returns the path as given (a symlinked `out_dir` keeps pointing at the trace).
    """
    out_dir = Path(out_dir)
    target = reserve(out_dir, force)
    tmp_dir = target.tmp
    try:
        manifest, derived, timings = split_timings(manifest, derived)
        file_meta = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION}
        for index, tensors in enumerate(layers):
            _save(tmp_dir / layer_file(index), tensors, {**file_meta, "layer": index})
            if progress:
                progress(index + 1, len(layers))
        _save(tmp_dir / DERIVED_FILE, derived, file_meta)
        names = [layer_file(index) for index in range(len(layers))] + [DERIVED_FILE]
        manifest = {
            **manifest,
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "sha256": {name: sha256_file(tmp_dir / name) for name in names},
        }
        _write_json(tmp_dir / MANIFEST, manifest)
        _write_json(tmp_dir / TIMINGS_FILE, timings)
        for path in tmp_dir.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; traces are meant to be shared
        try:
            load_trace(tmp_dir)  # refuse to publish a trace that its own reader rejects
        except TraceError as error:
            problem = str(error).replace(str(tmp_dir), str(out_dir))
            raise TraceError(f"refusing to write a trace its reader rejects: {problem}") from None
        target.publish()
    except OSError as error:  # a full disk, a vanished folder: one line, not a traceback
        raise TraceError(f"cannot write {out_dir}: {error.strerror or error}") from None
    finally:
        target.release()
    return out_dir


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


# --- the target: one run at a time, never missing, no strays ----------------------------------

# Names beside a target `out`: `.out.lock` (held while a run writes), `.out.tmp-PID` (the
# trace being written), `.out.old-PID` (the previous trace, for an instant, where the
# filesystem cannot exchange two folders atomically).
LOCK_SUFFIX = ".lock"
TMP_INFIX = ".tmp-"
OLD_INFIX = ".old-"
# `.NAME.tmp-PID`: the longest name written beside the target, PID up to 7 digits.
EXTRA_NAME_BYTES = len(".") + len(TMP_INFIX) + 7


def resolve_target(out_dir: Path) -> Path:
    """The folder a trace is written to: a symlinked `--out` is followed (the link stays
    and points at the new trace), and the path is made absolute."""
    return (
        Path(os.path.realpath(out_dir)) if out_dir.is_symlink() else Path(os.path.abspath(out_dir))
    )


class Reservation:
    """A target held by this process: its lock, and the temporary folder a trace is written
    to. Made by `reserve`; `publish` swaps the finished folder in, `release` cleans up."""

    def __init__(self, target: Path, fd: int, lock: Path):
        self.target = target
        self.fd = fd
        self.lock = lock
        self.tmp = target.parent / f".{target.name}{TMP_INFIX}{os.getpid()}"
        self.old = target.parent / f".{target.name}{OLD_INFIX}{os.getpid()}"

    def publish(self) -> None:
        if not self.target.exists():
            os.rename(self.tmp, self.target)
            return
        try:
            exchange(self.tmp, self.target)
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise
            # No atomic exchange on this filesystem: two renames, and a window that the
            # next run (or load_trace) closes by restoring the old trace (see `recover`).
            os.rename(self.target, self.old)
            try:
                os.rename(self.tmp, self.target)
            except BaseException:
                os.rename(self.old, self.target)
                raise
            shutil.rmtree(self.old, ignore_errors=True)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)  # it now holds the previous trace

    def release(self) -> None:
        if _RESERVED.get(self.target) is not self:
            return
        del _RESERVED[self.target]
        shutil.rmtree(self.tmp, ignore_errors=True)
        if fcntl is None:  # the file is the lock, and Windows unlinks no open file
            os.close(self.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.lock)
            return
        with contextlib.suppress(OSError):
            if os.stat(self.lock).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.lock)  # while still locked: no other run can hold this file
        os.close(self.fd)


_RESERVED: dict[Path, Reservation] = {}


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); ENOSYS where it is not
    available."""
    func = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd, rename_exchange = -100, 2
    if func(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except (OSError, TypeError):  # no C library to load symbols from: the two-rename fallback
    _LIBC = None


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a target that would lose data, and reserve it for this process before the slow
    part of a run: see `reserve`. `write_trace` then finds the reservation."""
    reserve(Path(out_dir), force)


def reserve(out_dir: Path, force: bool) -> Reservation:
    """Take `out_dir` for this process, or say in one line why not.

    Refuses an existing trace without --force, anything that is not a trace at all (--force
    replaces traces only), a path that cannot be made or whose names are too long, and a
    target that another run holds (whatever --force says). Under the lock it restores a
    trace that a killed run left mid-swap and removes dead runs' temporary folders, then
    creates this run's temporary folder, so that everything that can fail on the filesystem
    fails here, before the model is loaded.
    """
    target = resolve_target(out_dir)
    if target in _RESERVED:
        return _RESERVED[target]
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TraceError(f"cannot create {out_dir}: {ancestor} is a file, not a folder")
    try:
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = max(len(os.fsencode(part)) for part in target.parts[1:] or ("",))
    if longest + EXTRA_NAME_BYTES > name_max:
        raise TraceError(
            f"cannot create {out_dir}: a name in it is {longest} bytes; with the temporary "
            f"folder's suffix that exceeds this filesystem's limit of {name_max} bytes"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TraceError(f"cannot create {out_dir}: {ancestor} is not writable")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TraceError(f"cannot create {target.parent}: {error.strerror}") from None
    held = lock_target(target)
    try:
        recover(target)
        check_replaceable(out_dir, target, force)
        held.tmp.mkdir()
    except OSError as error:
        held.release()
        raise TraceError(f"cannot write {out_dir}: {error.strerror or error}") from None
    except BaseException:
        held.release()
        raise
    return held


def check_replaceable(out_dir: Path, target: Path, force: bool) -> None:
    if target.exists() or target.is_symlink():
        if not force:
            raise TraceError(
                f"{out_dir} already exists: choose another folder with --out DIR, or pass "
                "--force to replace that trace"
            )
        if not (target / MANIFEST).is_file():
            raise TraceError(
                f"{out_dir} exists and is not a trace (no {MANIFEST}); --force replaces only "
                "traces: choose another --out"
            )


class TargetBusy(TraceError):
    """Another live run holds the target's lock."""


def lock_target(target: Path) -> Reservation:
    """The lock beside the target: an flock, which the kernel drops when its holder dies,
    so a killed run never blocks the next one; the file itself goes when the run ends.
    (Without flock, on Windows, creating the file is the lock, and a killed run's file has
    to be removed by hand: the message says so.)"""
    lock = target.parent / f".{target.name}{LOCK_SUFFIX}"
    exclusive = 0 if fcntl is not None else os.O_EXCL
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | exclusive, 0o644)
        except FileExistsError:
            raise TargetBusy(
                f"another tracegen run is writing {target}, or a killed one left {lock}: "
                "remove that file if no run is going"
            ) from None
        except OSError as error:
            raise TraceError(f"cannot create {lock}: {error.strerror}") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise TargetBusy(
                f"another tracegen run (pid {holder}) is writing {target}; wait for it to end "
                "or choose another --out"
            ) from None
        # The holder before us may have unlinked the file after we opened it: then we lock a
        # file nobody else can see, and must lock the one at the path instead.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    held = Reservation(target, fd, lock)
    _RESERVED[target] = held
    return held


def leftovers(target: Path) -> list[Path]:
    """Temporary and previous-trace folders that runs on `target` left beside it."""
    prefixes = (f".{target.name}{TMP_INFIX}", f".{target.name}{OLD_INFIX}")
    try:
        return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes))
    except OSError:
        return []


def recover(target: Path) -> None:
    """With the lock held: if a run died between moving the old trace aside and moving the
    new one in, put the old one back; then remove every dead run's folders (a live run
    would hold the lock)."""
    found = leftovers(target)
    if not target.exists() and not target.is_symlink():
        previous = [p for p in found if OLD_INFIX in p.name and (p / MANIFEST).is_file()]
        if previous:
            newest = max(previous, key=lambda p: p.stat().st_mtime)
            os.rename(newest, target)
            found.remove(newest)
    for path in found:
        shutil.rmtree(path, ignore_errors=True)


def holding_targets(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a run so that targets it reserved and did not write are released when it
    ends, however it ends (the lock would otherwise stay held until the process exits)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_RESERVED)
        try:
            return func(*args, **kwargs)
        finally:
            for path in set(_RESERVED) - before:
                _RESERVED[path].release()

    return wrapper


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
    """One trace folder, validated by `load_trace`: the manifest's fields, every tensor's
    dtype and shape, every file's checksum, and the derived values (finite, in range).
    Layer tensors are read on first use, and checked then (finite, in range): floats as
    float32 (float64 where stored so), integers as int64."""

    def __init__(self, path: Path, manifest: dict[str, Any], timings: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.timings = timings
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
        attention = manifest["attention"]
        self.attention_policy: str = attention["policy"]
        self._policy = parse_policy(self.attention_policy)
        # rows:R: the positions whose whole rows are kept, in the order attn_rows holds them
        self.attention_rows: list[int] = list(attention.get("rows", []))
        activations = manifest["activations"]
        self.activations_policy: str = activations["policy"]
        # the positions whose activations the layer files hold, in their order
        self.activation_rows: list[int] = list(
            activations.get("rows", range(self.n_positions))
        )

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    @property
    def layer_tensors(self) -> dict[str, tuple[str, ...]]:
        """The tensors of each layer file under this trace's attention policy."""
        return layer_tensors(self.attention_policy, self.activations_policy)

    def dims(self) -> dict[str, int]:
        """The sizes behind the symbolic shapes in LAYER_TENSORS and DERIVED_TENSORS."""
        return {
            "L": self.model.n_layers,
            "L+1": self.model.n_layers + 1,
            "N": self.n_positions,
            "P": self.n_positions * (self.n_positions + 1) // 2,
            "R": len(self.attention_rows),
            "S": len(self.activation_rows),
            "A": self._policy.count,
            "D": self.model.d_model,
            "H": self.model.n_heads,
            "G": self.model.n_kv_heads,
            "K": self.top_k,
            "W": len(self.watched),
            "C": len(self.attribution_components),
            "F": len(self.flops_components),
        }

    def layer(self, index: int, name: str) -> np.ndarray:
        """One tensor of one block as stored, e.g. `trace.layer(3, "q_norm")` -> [H, N];
        `trace.layer(3, "resid_out")` -> [S, D], the positions in `activation_rows` (all N
        unless the trace was made with --activations rows:R; `activation` reads one);
        `trace.layer(3, "attn_probs")` -> [H, N, N] from a trace made with --attention full."""
        if not 0 <= index < self.n_layers:
            raise TraceError(f"layer {index} out of range 0..{self.n_layers - 1}")
        if name == "attn_probs":
            if self._policy.kind != "full":
                raise TraceError(
                    f"{self.path} keeps attention as {self.attention_policy}, not every row; "
                    "read rows with attention_row(), or trace with --attention full"
                )
            return unpack_tril(self._tensor(index, "attn_probs_tril"))
        if name not in self.layer_tensors:
            known = ", ".join(self.layer_tensors)
            raise TraceError(
                f"unknown layer tensor {name!r} under attention {self.attention_policy}; "
                f"known: {known}"
            )
        return self._tensor(index, name)

    def _tensor(self, index: int, name: str) -> np.ndarray:
        path = self.path / layer_file(index)
        array = _read(path, name)
        check_values(path, name, array, self.model.vocab_size)
        if name == "attn_topk_keys":
            _check_keys(path, array)
        return array

    def activation(self, index: int, name: str, position: int) -> np.ndarray:
        """[D]: one activation (resid_in, resid_out, attn_out, mlp_out) at one position, or
        a one-line TraceError if the trace does not keep that position's."""
        if name not in ACTIVATIONS:
            raise TraceError(f"{name!r} is not an activation; one of {', '.join(ACTIVATIONS)}")
        if position not in self.activation_rows:
            raise TraceError(
                f"{self.path} keeps activations at positions "
                f"{shown_positions(self.activation_rows)} ({self.activations_policy}), not "
                f"{position}; trace with --activations all to keep every position"
            )
        return self.layer(index, name)[self.activation_rows.index(position)]

    def has_attention_row(self, position: int) -> bool:
        """Whether `attention_row(., position)` gives the position's whole row."""
        if self._policy.kind == "rows":
            return position in self.attention_rows
        return 0 <= position < self.n_positions and self._policy.kind == "full"

    def attention_row(self, index: int, position: int) -> np.ndarray:
        """[H, N] float32: layer `index`'s attention from `position` over every position,
        under any policy. With topk:K only the K largest weights are placed (the rest,
        `attention_rest`, is spread over keys the trace does not name); with rows:R a
        position whose row is not kept is a TraceError."""
        if not 0 <= position < self.n_positions:
            raise TraceError(f"position {position} out of range 0..{self.n_positions - 1}")
        kind = self._policy.kind
        if kind == "full":
            start = position * (position + 1) // 2
            row = np.zeros((self.model.n_heads, self.n_positions), dtype=np.float32)
            row[:, : position + 1] = self._tensor(index, "attn_probs_tril")[
                :, start : start + position + 1
            ]
            return row
        if kind == "rows":
            if position not in self.attention_rows:
                raise TraceError(
                    f"{self.path} keeps attention rows {shown_positions(self.attention_rows)} "
                    f"({self.attention_policy}), not position {position}; trace with "
                    "--attention full to keep every row"
                )
            return self._tensor(index, "attn_rows")[:, self.attention_rows.index(position)]
        probs = self._tensor(index, "attn_topk_probs")[:, position]  # [H, A]
        keys = self._tensor(index, "attn_topk_keys")[:, position]
        row = np.zeros((self.model.n_heads, self.n_positions), dtype=np.float32)
        for head in range(row.shape[0]):
            valid = keys[head] >= 0
            row[head, keys[head][valid]] = probs[head][valid]
        return row

    def attention_rest(self, index: int, position: int) -> np.ndarray:
        """[H]: the attention from `position` that `attention_row` does not place (topk:K;
        zero under full and rows)."""
        if self._policy.kind != "topk":
            return np.zeros(self.model.n_heads, dtype=np.float32)
        return self._tensor(index, "attn_rest")[:, position]

    def stack(self, name: str) -> np.ndarray:
        """One tensor across all blocks: [L, ...]."""
        return np.stack([self.layer(index, name) for index in range(self.n_layers)])

    def derived(self, name: str) -> np.ndarray:
        """A tensor of derived.safetensors, or a timing series of timings.json."""
        if name in TIMING_SERIES:
            return np.asarray(self.timings[name], dtype=np.float64)
        if name not in DERIVED_TENSORS and name not in OPTIONAL_DERIVED_TENSORS:
            known = ", ".join([*DERIVED_TENSORS, *OPTIONAL_DERIVED_TENSORS, *TIMING_SERIES])
            raise TraceError(f"unknown derived tensor {name!r}; known: {known}")
        if name not in self._derived:
            raise TraceError(
                f"{self.path / DERIVED_FILE} has no {name}: it is written only where it "
                "applies (see docs/trace-schema.md); check with has_derived()"
            )
        return self._derived[name]

    def has_derived(self, name: str) -> bool:
        """Whether derived.safetensors holds `name` (always, unless it is optional)."""
        return name in self._derived

    @cached_property
    def _optional_derived(self) -> dict[str, tuple[str, ...]]:
        """The optional tensors this trace's derived.safetensors holds."""
        return optional_present(self.path / DERIVED_FILE)

    @cached_property
    def _derived(self) -> dict[str, np.ndarray]:
        path = self.path / DERIVED_FILE
        names = [*DERIVED_TENSORS, *self._optional_derived]
        arrays = {name: _read(path, name) for name in names}
        for name, array in arrays.items():
            check_values(path, name, array, self.model.vocab_size)
        return arrays

    @cached_property
    def vocabulary(self) -> dict[int, str]:
        """id -> decoded text of every token the trace names: the manifest's table (all lens
        top-k ids), the traced and generated tokens, the watched tokens."""
        table = {int(key): text for key, text in self.manifest.get("vocabulary", {}).items()}
        table.update(zip(self.token_ids, self.token_strings, strict=True))
        table.update(zip(self.generated_ids, self.generated_strings, strict=True))
        table.update({int(w["id"]): w["text"] for w in self.watched})
        return table

    def tensor_files(self) -> list[Path]:
        """The files whose sha256 the manifest records: the layers, then derived."""
        return [self.path / name for name in tensor_file_names(self.n_layers)]

    def files(self) -> list[Path]:
        """Every file of the trace: manifest, layers, derived, timings."""
        return [self.path / MANIFEST, *self.tensor_files(), self.path / TIMINGS_FILE]

    def __repr__(self) -> str:
        return f"Trace({str(self.path)!r}, model={self.model.slug!r}, positions={self.n_positions})"


def shown_positions(positions: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3..5, 9'."""
    spans: list[list[int]] = []
    for position in positions:
        if spans and position == spans[-1][1] + 1:
            spans[-1][1] = position
        else:
            spans.append([position, position])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in spans)


def _check_keys(path: Path, keys: np.ndarray) -> None:
    """topk keys: -1 (padding) or a position at or before the query's own."""
    limit = np.arange(keys.shape[1]).reshape(1, -1, 1)
    bad = (keys < -1) | (keys > limit)
    if bad.any():
        head, position, slot = (int(i) for i in np.argwhere(bad)[0])
        raise TraceError(
            f"{path}: tensor attn_topk_keys: key {int(keys[head, position, slot])} at "
            f"[{head}, {position}, {slot}] is not a position at or before {position}"
        )


def tensor_file_names(n_layers: int) -> list[str]:
    return [layer_file(index) for index in range(n_layers)] + [DERIVED_FILE]


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
    try:
        with safe_open(str(path), framework="numpy") as handle:
            array = handle.get_tensor(name)
    except Exception as error:  # the file changed since load_trace checked it
        raise TraceError(f"{path}: cannot read tensor {name} ({_first_line(error)})") from None
    if array.dtype == np.float64:
        return array
    return array.astype(np.float32) if array.dtype.kind == "f" else array.astype(np.int64)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def optional_present(path: Path) -> dict[str, tuple[str, ...]]:
    """The tensors of OPTIONAL_DERIVED_TENSORS that a derived file holds, with their shapes
    (none of a missing file, which `_check_header` reports)."""
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = set(handle.keys())
    except Exception as error:  # safetensors raises its own types for truncated files
        raise TraceError(
            f"{path} is not a readable safetensors file ({_first_line(error)})"
        ) from None
    return {name: shape for name, shape in OPTIONAL_DERIVED_TENSORS.items() if name in names}


def _check_header(path: Path, expected: Mapping[str, tuple[str, ...]], dims: Mapping[str, int]):
    """Names, dtypes and shapes from the safetensors header, before any data is read."""
    if not path.is_file():
        raise TraceError(f"{path} is missing; the trace is incomplete, regenerate it")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = set(handle.keys())
            metadata = handle.metadata() or {}
            for name, symbols in expected.items():
                if name not in names:
                    raise TraceError(f"{path} has no tensor {name!r}; regenerate the trace")
                tensor = handle.get_slice(name)
                dtype = tensor.get_dtype()
                if dtype not in stored_dtypes(name):
                    allowed = " or ".join(stored_dtypes(name))
                    raise TraceError(f"{path}: tensor {name} is {dtype}, the schema says {allowed}")
                shape = tuple(tensor.get_shape())
                want = tuple(dims[symbol] for symbol in symbols)
                if shape != want:
                    raise TraceError(
                        f"{path}: tensor {name} has shape {list(shape)}, expected {list(want)} "
                        f"({' x '.join(symbols)})"
                    )
    except TraceError:
        raise
    except Exception as error:  # safetensors raises its own types for truncated files
        raise TraceError(
            f"{path} is not a readable safetensors file ({_first_line(error)})"
        ) from None
    try:
        version = json.loads(metadata.get(METADATA_KEY, "{}")).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    if version != SCHEMA_VERSION:
        raise TraceError(
            f"{path}: metadata says schema {shown(version)}, the manifest {SCHEMA_VERSION}; "
            "files of different traces are mixed"
        )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise TraceError(f"{path} is missing; the trace is incomplete, regenerate it")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        # ValueError covers JSONDecodeError and the interpreter's limit on huge integers.
        raise TraceError(f"{path} is not valid JSON ({_first_line(error)})") from None
    try:  # JSON may spell lone surrogates ("\\ud800"), which no page or file can be written in
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise TraceError(
            f"{path} holds a lone surrogate (U+{ord(error.object[error.start]):04X}), "
            "which is not text"
        ) from None
    return value


def verify_checksums(path: Path, sums: Mapping[str, str], names: Sequence[str]) -> None:
    """Every tensor file against the sha256 the writer recorded: catches flipped bytes that
    leave a file well-formed (0.05-0.09 s for the committed trace's 37.5 MB)."""
    for name in names:
        if sha256_file(path / name) != sums[name]:
            raise TraceError(
                f"{path / name}: sha256 differs from manifest.json's sha256.{name}; the file "
                "is damaged or was changed after the trace was written"
            )


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Open a trace folder written by `tracegen run` and validate it (see `Trace`). Every
    problem is one TraceError line naming the file and the field."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        restore_interrupted(path)
    if not manifest_path.is_file():
        raise TraceError(f"{path} is not a trace: no {MANIFEST} (make one with `tracegen run`)")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_NAME:
        raise TraceError(f"{manifest_path} is not a tracegen manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceError(
            f"{path} uses trace schema {shown(version)}, this tracegen reads schema "
            f"{SCHEMA_VERSION}; regenerate it with `tracegen run`"
        )
    model = manifest.get("model")
    n_layers = model.get("n_layers") if isinstance(model, dict) else None
    names = tensor_file_names(n_layers if isinstance(n_layers, int) and n_layers > 0 else 0)
    check_manifest(manifest, manifest_path, names)
    timings = _read_json(path / TIMINGS_FILE)
    check_timings(timings, path / TIMINGS_FILE, manifest["model"]["n_layers"])
    trace = Trace(path, manifest, timings)
    dims = trace.dims()
    for index in range(trace.n_layers):
        _check_header(path / layer_file(index), trace.layer_tensors, dims)
    _check_header(path / DERIVED_FILE, {**DERIVED_TENSORS, **trace._optional_derived}, dims)
    verify_checksums(path, manifest["sha256"], names)
    _ = trace._derived  # read and check the derived values now: a bad number fails the load
    return trace


def restore_interrupted(path: Path) -> None:
    """A trace missing because a run was killed mid-swap comes back from beside it, unless
    a live run holds the target (then it is that run's to finish)."""
    target = resolve_target(path)
    if not any(OLD_INFIX in p.name for p in leftovers(target)):
        return
    try:
        held = lock_target(target)
    except TargetBusy:
        raise TraceError(
            f"{path} is being replaced by a tracegen run right now; try again when it ends"
        ) from None
    try:
        recover(target)
    except OSError as error:
        raise TraceError(
            f"{path} was left mid-swap by a killed run and cannot be restored "
            f"({error.strerror}); run `tracegen run --force` again"
        ) from None
    finally:
        held.release()
