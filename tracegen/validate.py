"""Checks on a trace read from disk. NumPy only.

A trace is untrusted input: traces get shared, and a manifest is easy to edit by hand. So
every field that the site and `tracegen info` use is checked for its type and range before
anything reads it, every tensor for its dtype and shape before its data is read, and derived
values for finiteness once they are. Every failure is one `TraceError` line naming the file
and the field, with the offending value shown ASCII-only (a trace's text must not reach the
terminal raw: it may hold newlines or escape sequences).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# Generous bounds: enough for any model tracegen can trace, small enough that no computed
# size (N(N+1)/2 entries, say) overflows or asks for absurd memory.
MAX_DIM = 1 << 24
MAX_POSITIONS = 1 << 16
MAX_COUNT = 1 << 62
SHA256 = re.compile(r"[0-9a-f]{64}")
# Probabilities and norms come out of float32 arithmetic: allow rounding, nothing more.
SLACK = 1e-3


class TraceError(ValueError):
    """A trace folder is missing, incomplete, damaged or of another schema. One line."""


def shown(value: Any) -> str:
    """A value in an error message: one line, ASCII, at most 60 characters."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def key_name(key: str) -> str:
    """A manifest key inside a field path: as it is when plain, as ASCII JSON otherwise."""
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", key) else shown(key)


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Fields:
    """Typed access to one JSON file's fields; each failure names the file and the field."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, field: str, message: str) -> TraceError:
        return TraceError(f"{self.file}: field {field}: {message}")

    def expected(self, field: str, what: str, value: Any) -> TraceError:
        return self.fail(field, f"expected {what}, got {kind(value)} {shown(value)}")

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.expected(field, "an object", value)
        return value

    def key(self, parent: Mapping[str, Any], key: str, field: str) -> Any:
        if key not in parent:
            raise self.fail(field, "missing")
        return parent[key]

    def integer(self, value: Any, field: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
        # bool is an int in Python, never in a manifest
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.expected(field, "an integer", value)
        if not lo <= value <= hi:
            raise self.fail(field, f"{value} is out of range {lo}..{hi}")
        return value

    def number(self, value: Any, field: str, lo: float = -math.inf) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.expected(field, "a number", value)
        if not math.isfinite(value):
            raise self.fail(field, f"{shown(value)} is not finite")
        if value < lo:
            raise self.fail(field, f"{shown(value)} is below {lo:g}")
        return float(value)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.expected(field, "a string", value)
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.expected(field, "true or false", value)
        return value

    def optional(self, check: Callable[[Any, str], Any], value: Any, field: str) -> Any:
        return None if value is None else check(value, field)

    def items(
        self,
        value: Any,
        field: str,
        check: Callable[[Any, str], Any],
        length: int | None = None,
        length_of: str = "",
    ) -> list[Any]:
        if not isinstance(value, list):
            raise self.expected(field, "a list", value)
        if length is not None and len(value) != length:
            source = f" ({length_of})" if length_of else ""
            raise self.fail(field, f"has {len(value)} entries, expected {length}{source}")
        return [check(item, f"{field}[{index}]") for index, item in enumerate(value)]

    def sha256(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if not SHA256.fullmatch(text):
            raise self.expected(field, "64 lowercase hex digits", value)
        return text


MODEL_STRINGS = ("spec", "source", "slug", "architecture", "model_type", "dtype")
MODEL_SIZES = ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "vocab_size")


def check_manifest(manifest: Any, file: Path, tensor_files: list[str]) -> None:
    """Every field `Trace`, the panels, the site and `tracegen info` read: types, ranges,
    list lengths that agree, ids and positions in range. `schema` and `schema_version` are
    checked before this (see `load_trace`). Fields it does not know are left alone: they
    only reach the site through its one escaping path."""
    f = Fields(file)
    m = f.obj(manifest, "(top level)")

    model = f.obj(f.key(m, "model", "model"), "model")
    for key in MODEL_STRINGS:
        f.string(f.key(model, key, f"model.{key}"), f"model.{key}")
    for key in MODEL_SIZES:
        f.integer(f.key(model, key, f"model.{key}"), f"model.{key}", 1, MAX_DIM)
    for key in ("n_params", "max_context"):
        f.integer(f.key(model, key, f"model.{key}"), f"model.{key}")
    for key in ("source_kind", "gguf_file", "family", "final_norm"):
        if key in model:
            f.optional(f.string, model[key], f"model.{key}")
    for key in ("gated_mlp", "parallel_residual"):
        if key in model:
            f.boolean(model[key], f"model.{key}")
    if "logit_softcap" in model:
        f.optional(f.number, model["logit_softcap"], "model.logit_softcap")
    for key in ("write_scale", "logit_multiplier"):
        if key in model:
            f.number(model[key], f"model.{key}")
    if "family_overrides" in model:
        f.items(model["family_overrides"], "model.family_overrides", f.string)
    if "files" in model:

        def weight_file(value: Any, field: str) -> None:
            entry = f.obj(value, field)
            f.string(f.key(entry, "name", f"{field}.name"), f"{field}.name")
            f.integer(f.key(entry, "bytes", f"{field}.bytes"), f"{field}.bytes")
            f.sha256(f.key(entry, "sha256", f"{field}.sha256"), f"{field}.sha256")

        f.items(model["files"], "model.files", weight_file)
    vocab_size = model["vocab_size"]

    def token_id(value: Any, field: str) -> int:
        return f.integer(value, field, 0, vocab_size - 1)

    tokenizer = f.obj(f.key(m, "tokenizer", "tokenizer"), "tokenizer")
    for key in ("bos_token", "eos_token"):
        f.optional(f.string, f.key(tokenizer, key, f"tokenizer.{key}"), f"tokenizer.{key}")
    f.boolean(f.key(tokenizer, "adds_bos", "tokenizer.adds_bos"), "tokenizer.adds_bos")
    if "class" in tokenizer:
        f.string(tokenizer["class"], "tokenizer.class")

    prompt = f.obj(f.key(m, "prompt", "prompt"), "prompt")
    text = f.string(f.key(prompt, "text", "prompt.text"), "prompt.text")
    digest = f.sha256(f.key(prompt, "sha256", "prompt.sha256"), "prompt.sha256")
    if hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != digest:
        raise f.fail("prompt.sha256", "is not the sha256 of prompt.text")
    for key in ("file",):
        if key in prompt:
            f.string(prompt[key], f"prompt.{key}")

    tokens = f.obj(f.key(m, "tokens", "tokens"), "tokens")
    n_positions = f.integer(f.key(m, "n_positions", "n_positions"), "n_positions", 1, MAX_POSITIONS)
    ids = f.items(
        f.key(tokens, "ids", "tokens.ids"), "tokens.ids", token_id, n_positions, "n_positions"
    )
    strings = f.key(tokens, "strings", "tokens.strings")
    f.items(strings, "tokens.strings", f.string, len(ids), "one per id")
    if "pieces" in tokens:
        piece = functools.partial(f.optional, f.string)
        f.items(tokens["pieces"], "tokens.pieces", piece, len(ids), "one per id")
    n_prompt = f.integer(f.key(tokens, "n_prompt", "tokens.n_prompt"), "tokens.n_prompt", 1)
    if n_prompt > n_positions:
        raise f.fail("tokens.n_prompt", f"{n_prompt} is more than n_positions ({n_positions})")
    generated = f.items(
        f.key(tokens, "generated_ids", "tokens.generated_ids"), "tokens.generated_ids", token_id
    )
    f.items(
        f.key(tokens, "generated_strings", "tokens.generated_strings"),
        "tokens.generated_strings",
        f.string,
        len(generated),
        "one per generated id",
    )
    # The last generated token is predicted but never fed back (docs/trace-schema.md).
    fed = max(len(generated) - 1, 0)
    if n_positions != n_prompt + fed:
        raise f.fail(
            "n_positions",
            f"{n_positions} is not n_prompt + len(generated_ids) - 1 = {n_prompt + fed}",
        )
    if ids[n_prompt:] != generated[:fed]:
        raise f.fail("tokens.ids", "the positions after the prompt are not the generated tokens")
    if "stop_reason" in tokens:
        f.string(tokens["stop_reason"], "tokens.stop_reason")
    if prompt.get("n_tokens") != n_prompt:
        raise f.expected("prompt.n_tokens", f"tokens.n_prompt ({n_prompt})", prompt.get("n_tokens"))

    vocabulary = f.obj(f.key(m, "vocabulary", "vocabulary"), "vocabulary")
    for key, value in vocabulary.items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab_size):
            raise f.fail(f"vocabulary[{shown(key)}]", f"is not a token id below {vocab_size}")
        f.string(value, f"vocabulary[{key}]")

    derived = f.obj(f.key(m, "derived", "derived"), "derived")

    def need(key: str) -> Any:
        return f.key(derived, key, f"derived.{key}")

    f.integer(need("top_k"), "derived.top_k", 1, vocab_size)

    def watched(value: Any, field: str) -> None:
        entry = f.obj(value, field)
        f.string(f.key(entry, "text", f"{field}.text"), f"{field}.text")
        token_id(f.key(entry, "id", f"{field}.id"), f"{field}.id")
        if "n_subtokens" in entry:
            f.integer(entry["n_subtokens"], f"{field}.n_subtokens", 1)

    f.items(need("watched"), "derived.watched", watched)
    f.items(need("attribution_components"), "derived.attribution_components", f.string)
    f.items(need("flops_components"), "derived.flops_components", f.string)
    for key in ("flops_unembedding", "flops_total", "determinism_max_abs_logit_diff"):
        if key in derived:
            f.number(derived[key], f"derived.{key}", 0.0)
    for key in ("kv_cache_bytes_per_token", "params_requiring_grad", "dropout_modules_training"):
        if key in derived:
            f.integer(derived[key], f"derived.{key}")
    for key in ("eval_mode", "grad_enabled"):
        if key in derived:
            f.boolean(derived[key], f"derived.{key}")
    if "lens_entropy_unit" in derived:
        f.string(derived["lens_entropy_unit"], "derived.lens_entropy_unit")

    check_attention(f, f.key(m, "attention", "attention"), n_prompt, n_positions)
    check_attention(f, f.key(m, "activations", "activations"), n_prompt, n_positions,
                    "activations")  # fmt: skip

    if "run" in m:
        run = f.obj(m["run"], "run")
        for key in ("device", "dtype"):
            if key in run:
                f.string(run[key], f"run.{key}")
        if "steps" in run:
            f.optional(f.integer, run["steps"], "run.steps")
        if "weights_from_cache" in run:  # traces written before it moved to timings.json
            f.boolean(run["weights_from_cache"], "run.weights_from_cache")
        if run.get("device_map") is not None:
            for device, count in f.obj(run["device_map"], "run.device_map").items():
                f.integer(count, f"run.device_map.{key_name(device)}")
    if "gate" in m:
        check_gate(f, m["gate"])
    if "libraries" in m:
        for key, value in f.obj(m["libraries"], "libraries").items():
            f.string(value, f"libraries.{key_name(key)}")

    sums = f.obj(f.key(m, "sha256", "sha256"), "sha256")
    for name in tensor_files:
        f.sha256(f.key(sums, name, f"sha256.{name}"), f"sha256.{name}")
    if extra := sorted(set(sums) - set(tensor_files)):
        raise f.fail("sha256", f"names files that are not part of the trace: {shown(extra)}")


def check_attention(
    f: Fields, value: Any, n_prompt: int, n_positions: int, section: str = "attention"
) -> None:
    """`attention` (or `activations`): the policy the layer files follow and, for rows:R,
    the rows they keep, which must be the ones the policy names (the last R positions and
    the prompt's end)."""
    from .policy import (
        ACTIVATIONS_SYNTAX,
        POLICY_SYNTAX,
        PolicyError,
        parse_activations,
        parse_policy,
    )

    parse, syntax = (
        (parse_policy, POLICY_SYNTAX) if section == "attention"
        else (parse_activations, ACTIVATIONS_SYNTAX)
    )  # fmt: skip
    attention = f.obj(value, section)
    text = f.string(f.key(attention, "policy", f"{section}.policy"), f"{section}.policy")
    try:
        policy = parse(text)
    except PolicyError:
        raise f.fail(f"{section}.policy", f"{shown(text)} is not {syntax}") from None
    if policy.kind != "rows":
        return
    position = functools.partial(f.integer, lo=0, hi=n_positions - 1)
    rows = f.items(f.key(attention, "rows", f"{section}.rows"), f"{section}.rows", position)
    if rows != policy.rows(n_prompt, n_positions):
        raise f.fail(f"{section}.rows", f"are not the rows {policy} keeps of {n_positions}")


def check_gate(f: Fields, value: Any) -> None:
    """The parity gate's record (tracegen/verify.py), as `tracegen info` and the made page
    show it: errors finite and not negative, tolerances positive."""
    gate = f.obj(value, "gate")
    f.boolean(f.key(gate, "passed", "gate.passed"), "gate.passed")
    f.string(f.key(gate, "dtype", "gate.dtype"), "gate.dtype")
    f.boolean(
        f.key(gate, "attention_rows_sum_to_one", "gate.attention_rows_sum_to_one"),
        "gate.attention_rows_sum_to_one",
    )
    f.number(
        f.key(gate, "attention_row_sum_max_error", "gate.attention_row_sum_max_error"),
        "gate.attention_row_sum_max_error",
        0.0,
    )
    for name, check in f.obj(f.key(gate, "checks", "gate.checks"), "gate.checks").items():
        field = f"gate.checks.{key_name(name)}"
        entry = f.obj(check, field)
        f.number(f.key(entry, "error", f"{field}.error"), f"{field}.error", 0.0)
        f.number(f.key(entry, "tolerance", f"{field}.tolerance"), f"{field}.tolerance", 0.0)
        f.string(f.key(entry, "where", f"{field}.where"), f"{field}.where")
        if "name" in entry:
            f.string(entry["name"], f"{field}.name")
        f.boolean(f.key(entry, "passed", f"{field}.passed"), f"{field}.passed")


def check_timings(timings: Any, file: Path, n_layers: int) -> None:
    f = Fields(file)
    t = f.obj(timings, "(top level)")
    f.items(
        f.key(t, "layer_seconds", "layer_seconds"),
        "layer_seconds",
        lambda v, k: f.number(v, k, 0.0),
        n_layers,
        "model.n_layers",
    )
    for key, value in f.obj(f.key(t, "stage_seconds", "stage_seconds"), "stage_seconds").items():
        f.number(value, f"stage_seconds.{key_name(key)}", 0.0)
    f.integer(f.key(t, "written", "written"), "written")
    if "weights_from_cache" in t:  # absent from traces written before it moved here
        f.boolean(t["weights_from_cache"], "weights_from_cache")


# --- tensors ------------------------------------------------------------------------------------

# Bounds the schema gives each tensor's values, checked once its data is read. Every float
# tensor must be finite; these add ranges. (lo, hi); None is unbounded.
PROBABILITIES = {
    "lens_topk_probs", "lens_target_prob", "watched_probs",
    "attn_probs_tril", "attn_rows", "attn_topk_probs", "attn_rest",
    "head_first_token", "head_previous_token", "head_induction", "head_sink",
}  # fmt: skip
NON_NEGATIVE = {"lens_entropy", "lens_kl", "flops", "q_norm", "k_norm", "v_norm"}
TOKEN_IDS = {"lens_topk_ids"}
RANKS = {"lens_target_rank"}


def check_values(file: Path, name: str, array: np.ndarray, vocab_size: int) -> None:
    """Finite floats, probabilities in [0, 1], ids and ranks within the vocabulary."""
    if array.size == 0:
        return
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise TraceError(
                f"{file}: tensor {name}: {float(array[where])} at {list(where)} is not finite"
            )
        lo, hi = float(array.min()), float(array.max())
        if name in PROBABILITIES and (lo < -SLACK or hi > 1 + SLACK):
            raise TraceError(
                f"{file}: tensor {name}: values {lo:.4g}..{hi:.4g} are not probabilities"
            )
        if name in NON_NEGATIVE and lo < -SLACK:
            raise TraceError(f"{file}: tensor {name}: {lo:.4g} is negative")
    elif name in TOKEN_IDS | RANKS:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi >= vocab_size:
            what = "token ids" if name in TOKEN_IDS else "ranks"
            raise TraceError(
                f"{file}: tensor {name}: {what} {lo}..{hi} are outside the vocabulary "
                f"0..{vocab_size - 1}"
            )
