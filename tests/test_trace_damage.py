"""A trace is untrusted input: every class of damage is one TraceError line naming the file
and the field, from `load_trace`, from `tracegen info` (exit 2) and from `mkdocs build`
(non-zero exit, no traceback). NumPy only: runs without torch."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file, save_file

from tracegen import TraceError, cli, load_trace, store

from .conftest import COMMITTED_TRACE, REPO

MANIFEST = json.loads((COMMITTED_TRACE / store.MANIFEST).read_text(encoding="utf-8"))
N_LAYERS = MANIFEST["model"]["n_layers"]


def linked_copy(target: Path) -> Path:
    """The committed trace with its tensor files as symlinks (cheap) and its JSON files as
    copies (to be damaged). A test that damages a tensor file replaces its link first."""
    target.mkdir()
    for path in COMMITTED_TRACE.iterdir():
        if path.suffix == ".json":
            shutil.copy(path, target / path.name)
        else:
            (target / path.name).symlink_to(path)
    return target


def own_copy(path: Path) -> Path:
    """Replace a symlinked file by a real copy, to damage it without touching the original."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    return path


def rechecksum(trace: Path) -> None:
    """Record the damaged files' checksums, as a careful forger would: the checks behind the
    checksum must then catch the damage on their own."""
    manifest = json.loads((trace / store.MANIFEST).read_text(encoding="utf-8"))
    manifest["sha256"] = {
        name: store.sha256_file(trace / name) for name in store.tensor_file_names(N_LAYERS)
    }
    (trace / store.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def write_manifest(trace: Path, manifest: Any) -> None:
    (trace / store.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def assert_one_line(error: TraceError, *needles: str) -> None:
    text = str(error)
    assert "\n" not in text and "\r" not in text, text
    assert text.isascii() or all(ord(c) >= 32 for c in text), text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return linked_copy(tmp_path / "trace")


def test_committed_trace_validates_and_records_checksums():
    trace = load_trace(COMMITTED_TRACE)
    assert set(trace.manifest["sha256"]) == set(store.tensor_file_names(trace.n_layers))
    assert (COMMITTED_TRACE / store.TIMINGS_FILE).is_file()
    assert len(trace.derived("layer_seconds")) == trace.n_layers


# --- every manifest field wrong in type ---------------------------------------------------------


def wrong_type(value: Any) -> Any:
    """A value of another JSON type than `value`: a number as a string, a string as a
    number, a list as an object, and so on."""
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"0": value[:1]}
    if isinstance(value, dict):
        return [value]
    return "null"  # a null (optional) field given as text


def field_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every field of the manifest: each key of each object, each list and its first item."""
    if isinstance(value, dict):
        # The vocabulary's 1,160 entries are all alike: three of them stand for the rest.
        for key in sorted(value)[: 3 if path == ("vocabulary",) else None]:
            yield (*path, key)
            yield from field_paths(value[key], (*path, key))
    elif isinstance(value, list) and value:
        yield (*path, 0)
        yield from field_paths(value[0], (*path, 0))


# Fields whose type is not read by anything (schema is compared by value, not type).
NOT_TYPED = {("schema",), ("schema_version",)}
FIELD_CASES = [p for p in field_paths(MANIFEST) if p not in NOT_TYPED]


def set_path(data: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def get_path(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def test_every_field_is_covered():
    assert len(FIELD_CASES) > 100  # the walk found the nested fields, not just the sections
    sections = {path[0] for path in FIELD_CASES}
    assert sections >= {"model", "tokenizer", "prompt", "tokens", "derived", "sha256", "run"}


@pytest.mark.parametrize("path", FIELD_CASES, ids=lambda p: ".".join(map(str, p)))
def test_manifest_field_of_the_wrong_type(trace: Path, path: tuple) -> None:
    manifest = copy.deepcopy(MANIFEST)
    set_path(manifest, path, wrong_type(get_path(MANIFEST, path)))
    write_manifest(trace, manifest)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    # The message names the file and the field (its last named key, or the list's).
    named = next(str(key) for key in reversed(path) if isinstance(key, str))
    assert_one_line(caught.value, "manifest.json", named)


REQUIRED = [
    ("model",), ("model", "n_layers"), ("model", "slug"), ("model", "vocab_size"),
    ("tokens",), ("tokens", "ids"), ("tokens", "strings"), ("tokens", "n_prompt"),
    ("tokens", "generated_ids"), ("tokens", "generated_strings"), ("n_positions",),
    ("prompt",), ("prompt", "text"), ("prompt", "sha256"), ("derived",), ("derived", "top_k"),
    ("derived", "watched"), ("vocabulary",), ("sha256",), ("sha256", "layer_004.safetensors"),
    ("tokenizer",), ("tokenizer", "adds_bos"),
]  # fmt: skip


@pytest.mark.parametrize("path", REQUIRED, ids=lambda p: ".".join(map(str, p)))
def test_manifest_field_missing(trace: Path, path: tuple) -> None:
    manifest = copy.deepcopy(MANIFEST)
    del get_path(manifest, path[:-1])[path[-1]]
    write_manifest(trace, manifest)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "manifest.json", path[-1], "missing")


def _edit(change: Callable[[dict], None]) -> dict:
    manifest = copy.deepcopy(MANIFEST)
    change(manifest)
    return manifest


BAD_VALUES = {
    "top level is a list": ([MANIFEST], "not a tracegen manifest"),
    "top level is null": (None, "not a tracegen manifest"),
    "strings shorter than ids": (
        _edit(lambda m: m["tokens"]["strings"].pop()), "tokens.strings"),
    "n_prompt beyond the positions": (
        _edit(lambda m: m["tokens"].update(n_prompt=10_000)), "tokens.n_prompt"),
    "n_positions disagrees": (_edit(lambda m: m.update(n_positions=190)), "n_positions"),
    "token id beyond the vocabulary": (
        _edit(lambda m: m["tokens"]["ids"].__setitem__(3, 10**9)), "tokens.ids[3]"),
    "negative token id": (
        _edit(lambda m: m["tokens"]["ids"].__setitem__(0, -1)), "tokens.ids[0]"),
    "watched id beyond the vocabulary": (
        _edit(lambda m: m["derived"]["watched"][0].update(id=49152)), "derived.watched[0].id"),
    "zero layers": (_edit(lambda m: m["model"].update(n_layers=0)), "model.n_layers"),
    "a huge width": (_edit(lambda m: m["model"].update(d_model=10**12)), "model.d_model"),
    "NaN flops": (_edit(lambda m: m["derived"].update(flops_total=math.nan)), "flops_total"),
    "Infinity flops": (
        _edit(lambda m: m["derived"].update(flops_unembedding=math.inf)), "flops_unembedding"),
    "a boolean count": (_edit(lambda m: m["model"].update(n_heads=True)), "model.n_heads"),
    "prompt edited, sha256 not": (
        _edit(lambda m: m["prompt"].update(text="Q: edited")), "prompt.sha256"),
    "not a checksum": (
        _edit(lambda m: m["sha256"].update({"derived.safetensors": "abc"})), "sha256.derived"),
    "checksum of a stranger": (
        _edit(lambda m: m["sha256"].update({"../../etc/passwd": "0" * 64})), "sha256"),
    "vocabulary key not an id": (
        _edit(lambda m: m["vocabulary"].update({"x": "y"})), "vocabulary"),
    "generated tokens disagree with the fed ones": (
        _edit(lambda m: m["tokens"]["generated_ids"].__setitem__(0, 5)), "tokens.ids"),
    "schema version as text": (_edit(lambda m: m.update(schema_version="2")), "schema \"2\""),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_manifest_value_out_of_range(trace: Path, name: str) -> None:
    manifest, needle = BAD_VALUES[name]
    write_manifest(trace, manifest)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, needle)


@pytest.mark.parametrize(
    "text",
    ["", "{", "[1, 2", "\x00\x01", '{"schema": 1e999999}', "9" * 5000, "[" * 100_000],
    ids=["empty", "open brace", "open list", "binary", "huge exponent", "huge int", "deep"],
)
def test_manifest_not_json(trace: Path, text: str) -> None:
    (trace / store.MANIFEST).write_text(text, encoding="utf-8")
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "manifest.json")


def test_manifest_with_a_lone_surrogate(trace: Path) -> None:
    text = (trace / store.MANIFEST).read_text(encoding="utf-8")
    text = text.replace('"llama"', '"ll\\ud800ama"', 1)
    (trace / store.MANIFEST).write_text(text, encoding="utf-8")
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "manifest.json", "lone surrogate (U+D800)")


def test_manifest_not_utf8(trace: Path) -> None:
    (trace / store.MANIFEST).write_bytes(b'{"schema": "\xff\xfe"}')
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "manifest.json", "not valid JSON")


# --- timings.json -------------------------------------------------------------------------------

TIMINGS = json.loads((COMMITTED_TRACE / store.TIMINGS_FILE).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda t: t["layer_seconds"].pop(), "layer_seconds"),
        (lambda t: t["layer_seconds"].__setitem__(2, math.nan), "layer_seconds[2]"),
        (lambda t: t["layer_seconds"].__setitem__(2, "0.1"), "layer_seconds[2]"),
        (lambda t: t["layer_seconds"].__setitem__(2, -1.0), "layer_seconds[2]"),
        (lambda t: t["stage_seconds"].update(load=math.inf), "stage_seconds.load"),
        (lambda t: t.update(written="yesterday"), "written"),
        (lambda t: t.pop("layer_seconds"), "missing"),
        (lambda t: t.update(weights_from_cache="yes"), "weights_from_cache"),
    ],
    ids=["short", "nan", "text", "negative", "inf stage", "written text", "missing", "cache"],
)
def test_timings_damaged(trace: Path, change: Callable, needle: str) -> None:
    timings = copy.deepcopy(TIMINGS)
    change(timings)
    (trace / store.TIMINGS_FILE).write_text(json.dumps(timings), encoding="utf-8")
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "timings.json", needle)


@pytest.mark.parametrize("in_manifest", [True, False], ids=["old", "new"])
def test_weights_from_cache_in_the_manifest_or_in_timings(trace: Path, in_manifest: bool) -> None:
    """Traces written before `weights_from_cache` moved to timings.json have it in the
    manifest's `run`; both layouts load."""
    manifest = copy.deepcopy(MANIFEST)
    timings = copy.deepcopy(TIMINGS)
    # The committed trace may have it in either place: take it out of both, put it in one.
    flag = manifest["run"].pop("weights_from_cache", timings.pop("weights_from_cache", True))
    (manifest["run"] if in_manifest else timings)["weights_from_cache"] = flag
    write_manifest(trace, manifest)
    (trace / store.TIMINGS_FILE).write_text(json.dumps(timings), encoding="utf-8")
    loaded = load_trace(trace)
    assert ("weights_from_cache" in loaded.manifest["run"]) is in_manifest
    assert ("weights_from_cache" in loaded.timings) is not in_manifest


# --- tensor files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["layer_007.safetensors", "derived.safetensors", "timings.json"])
def test_missing_file(trace: Path, name: str) -> None:
    (trace / name).unlink()
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, name, "missing")


@pytest.mark.parametrize("keep", [0, 7, 8, 100, 60_000, -1], ids=lambda k: f"keep{k}")
@pytest.mark.parametrize("name", ["layer_003.safetensors", "derived.safetensors"])
def test_truncated_file(trace: Path, name: str, keep: int) -> None:
    path = own_copy(trace / name)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, name)


def header_of(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def with_header(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


CORRUPT_HEADERS: dict[str, Callable[[bytes], bytes]] = {
    "length beyond the file": lambda d: struct.pack("<Q", 1 << 40) + d[8:],
    "length zero": lambda d: struct.pack("<Q", 0) + d[8:],
    "garbage json": lambda d: d[:8] + b"{not json" + d[17:],
    "header bytes flipped": lambda d: d[:20] + bytes([d[20] ^ 0xFF]) + d[21:],
}


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_corrupt_header(trace: Path, case: str) -> None:
    path = own_copy(trace / "layer_011.safetensors")
    path.write_bytes(CORRUPT_HEADERS[case](path.read_bytes()))
    rechecksum(trace)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "layer_011.safetensors")


def test_header_offsets_overlap(trace: Path) -> None:
    path = own_copy(trace / "layer_002.safetensors")
    header, body = header_of(path)
    header["resid_out"]["data_offsets"] = header["resid_in"]["data_offsets"]
    with_header(path, header, body)
    rechecksum(trace)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "layer_002.safetensors")


@pytest.mark.parametrize(
    "name, tensor, dtype",
    [
        ("layer_005.safetensors", "resid_in", "I16"),  # same size, other meaning
        ("layer_005.safetensors", "resid_in", "BF16"),
        ("layer_005.safetensors", "q_norm", "I32"),
        ("derived.safetensors", "lens_kl", "I32"),
        ("derived.safetensors", "lens_topk_ids", "F32"),  # relabelled ids read as floats
    ],
)
def test_relabelled_dtype(trace: Path, name: str, tensor: str, dtype: str) -> None:
    path = own_copy(trace / name)
    header, body = header_of(path)
    header[tensor]["dtype"] = dtype
    with_header(path, header, body)
    rechecksum(trace)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, name, tensor, dtype)


def rewrite_tensor(trace: Path, name: str, tensor: str, change: Callable) -> None:
    path = own_copy(trace / name)
    arrays = load_file(str(path))
    header, _ = header_of(path)
    change(arrays[tensor])
    save_file(arrays, str(path), metadata=header["__metadata__"])
    rechecksum(trace)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "tensor", ["lens_kl", "lens_topk_probs", "attribution", "final_logit", "flops"]
)
def test_derived_not_finite(trace: Path, tensor: str, value: float) -> None:
    rewrite_tensor(
        trace, "derived.safetensors", tensor, lambda a: a.reshape(-1).__setitem__(3, value)
    )
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "derived.safetensors", tensor, "not finite")


@pytest.mark.parametrize(
    "tensor, value, needle",
    [
        ("lens_topk_probs", 1038.0, "not probabilities"),
        ("watched_probs", -0.5, "not probabilities"),
        ("lens_topk_ids", 49152, "outside the vocabulary"),
        ("lens_target_rank", -3, "outside the vocabulary"),
        ("lens_entropy", -2.0, "negative"),
    ],
)
def test_derived_out_of_range(trace: Path, tensor: str, value: float, needle: str) -> None:
    rewrite_tensor(
        trace, "derived.safetensors", tensor, lambda a: a.reshape(-1).__setitem__(0, value)
    )
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, tensor, needle)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("tensor", ["resid_in", "attn_rows", "q_norm"])
def test_layer_not_finite_fails_where_read(trace: Path, tensor: str, value: float) -> None:
    """Layer data is read lazily (the site reads every layer; `info` none): the damage fails
    the first read, with the same one line."""
    rewrite_tensor(
        trace, "layer_009.safetensors", tensor, lambda a: a.reshape(-1).__setitem__(5, value)
    )
    opened = load_trace(trace)
    with pytest.raises(TraceError) as caught:
        opened.stack(tensor)
    assert_one_line(caught.value, "layer_009.safetensors", tensor, "not finite")


@pytest.mark.parametrize("where", [0.25, 0.5, 0.999], ids=["quarter", "middle", "end"])
@pytest.mark.parametrize("name", ["layer_007.safetensors", "derived.safetensors"])
def test_flipped_data_byte(trace: Path, name: str, where: float) -> None:
    """One bit of tensor data changed leaves a well-formed file of plausible numbers: only
    the checksum can tell."""
    path = own_copy(trace / name)
    data = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    index = header_end + int((len(data) - header_end) * where)
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, name, "sha256")


def test_files_of_another_trace_mixed_in(trace: Path, tmp_path: Path) -> None:
    path = own_copy(trace / "layer_001.safetensors")
    arrays = load_file(str(path))
    save_file(arrays, str(path), metadata={"tracegen": json.dumps({"schema_version": 1})})
    rechecksum(trace)
    with pytest.raises(TraceError) as caught:
        load_trace(trace)
    assert_one_line(caught.value, "layer_001.safetensors", "schema")


# --- the same errors through the commands -------------------------------------------------------


def damaged_examples(root: Path) -> dict[str, Path]:
    """One damaged trace per class, for the command-level tests."""
    examples = {}

    def make(name: str) -> Path:
        examples[name] = linked_copy(root / name)
        return examples[name]

    write_manifest(make("manifest-type"), _edit(lambda m: m["model"].update(n_layers="30")))
    write_manifest(make("manifest-list"), [1, 2])
    path = own_copy(make("truncated") / "layer_004.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    path = own_copy(make("flipped") / "layer_004.safetensors")
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10
    path.write_bytes(bytes(data))
    nan = make("nan")
    rewrite_tensor(
        nan, "derived.safetensors", "lens_kl", lambda a: a.reshape(-1).__setitem__(0, math.nan)
    )
    (make("missing-layer") / "layer_029.safetensors").unlink()
    return examples


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return damaged_examples(tmp_path_factory.mktemp("damaged"))


@pytest.mark.parametrize(
    "case", ["manifest-type", "manifest-list", "truncated", "flipped", "nan", "missing-layer"]
)
def test_info_says_one_line(damaged: dict[str, Path], case: str, capsys) -> None:
    code = cli.main(["info", str(damaged[case])])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_ERROR
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("tracegen: error: "), err


@pytest.mark.parametrize("case", ["manifest-type", "flipped", "nan"])
def test_site_build_says_one_line(damaged: dict[str, Path], case: str, tmp_path: Path) -> None:
    env = {**os.environ, "FORWARD_PASS_TRACE": str(damaged[case]), "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "forward-pass" in line]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "site" / "index.html").exists()
