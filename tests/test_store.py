"""The trace format on its own: NumPy only, validated on load, precise about precision."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tracegen import TraceError, load_trace, store

from .conftest import COMMITTED_TRACE


def test_site_path_never_imports_torch():
    code = (
        "import sys, tracegen, tracegen.panels, tracegen.mkdocs_plugin;"
        f"t = tracegen.load_trace({str(COMMITTED_TRACE)!r});"
        "t.attention_row(0, t.n_prompt - 1); t.derived('lens_kl');"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tril_round_trip():
    rng = np.random.default_rng(0)
    square = np.tril(rng.random((3, 5, 5)))
    packed = store.pack_tril(square)
    assert packed.shape == (3, 15)
    np.testing.assert_array_equal(store.unpack_tril(packed), square)


def test_storage_precision():
    small = np.array([1.0, -2.5, 60000.0], dtype=np.float32)
    assert store.to_storage_dtype("resid_in", small).dtype == np.float16
    huge = np.array([1.0, 70000.0], dtype=np.float32)  # beyond float16: kept, not clipped
    assert store.to_storage_dtype("resid_in", huge).dtype == np.float32
    assert store.to_storage_dtype("lens_kl", small).dtype == np.float32
    assert store.to_storage_dtype("lens_topk_ids", np.arange(3)).dtype.kind == "i"


def test_committed_trace_loads_lazily():
    trace = load_trace(COMMITTED_TRACE)
    # Opening reads and checks the derived values; layer tensors are read on first use.
    assert "_derived" in trace.__dict__
    assert trace.model.n_layers == len(trace.files()) - 3  # + manifest, derived, timings
    rows = trace.layer(5, "attn_rows")
    assert rows.dtype == np.float32
    assert rows.shape == (trace.model.n_heads, len(trace.attention_rows), trace.n_positions)
    assert trace.n_prompt - 1 in trace.attention_rows


@pytest.fixture
def copied_trace(tmp_path):
    target = tmp_path / "trace"
    shutil.copytree(COMMITTED_TRACE, target)
    return target


def _edit_manifest(path, change) -> None:
    manifest_path = path / store.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest_path.write_text(json.dumps(manifest))


def test_other_schema_version_is_refused(copied_trace):
    _edit_manifest(copied_trace, lambda m: m.update(schema_version=99))
    with pytest.raises(TraceError, match="schema 99.*regenerate"):
        load_trace(copied_trace)


def test_shape_mismatch_is_refused(copied_trace):
    _edit_manifest(copied_trace, lambda m: m["model"].update(d_model=7))
    with pytest.raises(TraceError, match=r"resid_in has shape \[\d+, 576\], expected \[\d+, 7\]"):
        load_trace(copied_trace)


def test_missing_layer_file_is_refused(copied_trace):
    (copied_trace / store.layer_file(3)).unlink()
    with pytest.raises(TraceError, match="layer_003.safetensors is missing"):
        load_trace(copied_trace)


def test_unknown_tensor_names(copied_trace):
    trace = load_trace(copied_trace)
    with pytest.raises(TraceError, match="unknown layer tensor 'attention'"):
        trace.layer(0, "attention")
    with pytest.raises(TraceError, match="out of range"):
        trace.layer(trace.n_layers, "resid_in")
    with pytest.raises(TraceError, match="unknown derived tensor"):
        trace.derived("logits")
