"""Correctness of traces made from tiny random-weight models of every supported family."""

from __future__ import annotations

import numpy as np
import pytest

from tracegen import load_trace
from tracegen.store import DERIVED_TENSORS, LAYER_TENSORS

from .conftest import FAMILIES
from .head_score_reference import reference_head_scores

torch = pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model
STEPS = 3


@pytest.fixture(scope="module", params=FAMILIES)
def traced(request, tiny_model_dir, tmp_path_factory):
    """(trace, model folder) for one family, traced with three greedy steps, every row of
    attention and every position's activations kept (the other layouts:
    tests/test_attention_policy.py)."""
    from tracegen.runner import run

    folder = tiny_model_dir(request.param)
    out = tmp_path_factory.mktemp(f"trace-{request.param}") / request.param
    traced = run(
        str(folder), out=out, steps=STEPS, quiet=True, attention="full", activations="all"
    )
    return load_trace(traced), folder


@pytest.fixture(scope="module")
def full_pass(traced):
    """One pass over all traced tokens without the cache, computed here independently of
    tracegen: (probabilities [N, V], logits [N, V], attention per layer [H, N, N])."""
    from transformers import AutoModelForCausalLM

    trace, folder = traced
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = model(torch.tensor([trace.token_ids]), output_attentions=True)
    logits = outputs.logits[0].double()
    attentions = [layer[0].numpy() for layer in outputs.attentions]
    return logits.softmax(-1).numpy(), logits.numpy(), attentions


@pytest.fixture(scope="module")
def own_outputs(full_pass):
    """The model's own probabilities and logits over the traced tokens."""
    return full_pass[:2]


def test_shapes(traced):
    trace, _ = traced
    card = trace.model
    n = trace.n_prompt + STEPS - 1
    assert trace.n_positions == n == len(trace.token_ids) == len(trace.token_strings)
    assert len(trace.generated_ids) == STEPS
    assert trace.token_ids[trace.n_prompt :] == trace.generated_ids[:-1]
    for name in LAYER_TENSORS:
        width = card.n_kv_heads if name in ("k_norm", "v_norm") else card.n_heads
        expected = (
            (n, card.d_model) if name.startswith(("resid", "attn_out", "mlp")) else (width, n)
        )
        assert trace.layer(card.n_layers - 1, name).shape == expected, name
    assert trace.layer(0, "attn_probs").shape == (card.n_heads, n, n)
    assert trace.stack("resid_in").shape == (card.n_layers, n, card.d_model)
    dims = trace.dims()
    for name, symbols in DERIVED_TENSORS.items():
        assert trace.derived(name).shape == tuple(dims[s] for s in symbols), name


def test_attention_rows_sum_to_one_and_are_causal(traced):
    trace, _ = traced
    for index in range(trace.n_layers):
        probs = trace.layer(index, "attn_probs")
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=2e-3)  # float16 storage
        assert np.all(np.triu(probs, k=1) == 0)


def test_attention_matches_a_pass_without_the_cache(traced, full_pass):
    """Rows from the greedy steps (KV cache on, a sliding window for Gemma 3) sit on the same
    keys as in one pass over the whole sequence."""
    trace, _ = traced
    for index, expected in enumerate(full_pass[2]):
        np.testing.assert_allclose(
            trace.layer(index, "attn_probs"), expected, atol=2e-3, err_msg=f"layer {index}"
        )


def test_head_scores_match_the_whole_matrices(traced, full_pass):
    """The scores measured at trace time from listed induction pairs equal the plain
    computation from the model's own N x N matrices and an N x N mask."""
    trace, _ = traced
    expected = reference_head_scores(full_pass[2], trace.token_ids, trace.n_prompt)
    for name, values in expected.items():
        np.testing.assert_allclose(trace.derived(name), values, atol=1e-5, err_msg=name)
    assert expected["head_induction"].max() > 0  # the prompt repeats: there are targets


def test_residual_decomposes(traced):
    """resid_out = resid_in + attn_out + mlp_out holds for every family traced here. GPT-NeoX
    with parallel residual is not sequential (its MLP reads resid_in, not resid_in + attn_out),
    yet both writes still add to the same stream, so the identity holds there too."""
    trace, _ = traced
    resid_in, resid_out = trace.stack("resid_in"), trace.stack("resid_out")
    written = resid_in + trace.stack("attn_out") + trace.stack("mlp_out")
    scale = np.abs(resid_out).max()
    np.testing.assert_allclose(written, resid_out, atol=4e-3 * scale)
    np.testing.assert_array_equal(resid_out[:-1], resid_in[1:])


def test_last_layer_lens_is_the_models_own_output(traced, own_outputs):
    trace, _ = traced
    probs, _ = own_outputs
    top_ids = trace.derived("lens_topk_ids")[-1]
    top_probs = trace.derived("lens_topk_probs")[-1]
    own = np.take_along_axis(probs, top_ids, axis=-1)
    np.testing.assert_allclose(top_probs, own, atol=1e-4)
    np.testing.assert_array_equal(top_ids[:, 0], probs.argmax(-1))
    assert np.all(trace.derived("lens_target_rank")[-1] == 0)
    np.testing.assert_allclose(trace.derived("lens_kl")[-1], 0.0, atol=1e-5)


def test_greedy_steps_follow_the_argmax(traced, own_outputs):
    trace, _ = traced
    probs, _ = own_outputs
    predicted = probs[trace.n_prompt - 1 :].argmax(-1)
    assert list(predicted) == trace.generated_ids


def test_attribution_adds_up_to_the_final_logit(traced, own_outputs):
    trace, _ = traced
    _, logits = own_outputs
    attribution, final_logit = trace.derived("attribution"), trace.derived("final_logit")
    assert attribution.shape[1] == len(trace.attribution_components)
    np.testing.assert_allclose(attribution.sum(-1), final_logit, atol=1e-3)
    np.testing.assert_allclose(final_logit, logits.max(-1), atol=1e-3)


def test_watched_probabilities_match_the_lens(traced, own_outputs):
    trace, _ = traced
    probs, _ = own_outputs
    ids = [w["id"] for w in trace.watched]
    np.testing.assert_allclose(trace.derived("watched_probs")[-1], probs[:, ids], atol=1e-4)


def test_run_facts(traced):
    trace, _ = traced
    derived = trace.manifest["derived"]
    assert derived["determinism_max_abs_logit_diff"] == 0.0
    assert derived["eval_mode"] is True
    assert derived["grad_enabled"] is False
    assert derived["params_requiring_grad"] == 0
    assert derived["flops_total"] > trace.derived("flops").sum() > 0
    assert np.all(trace.derived("layer_seconds") > 0)
    card = trace.model
    assert (
        derived["kv_cache_bytes_per_token"] == 2 * card.n_layers * card.n_kv_heads * card.d_head * 4
    )
    files = trace.manifest["model"]["files"]
    assert files and all(len(f["sha256"]) == 64 for f in files)


def test_unembedding_flops_and_cache_by_hand(tiny_trace):
    """The tiny Llama: width 64, 2 key/value heads of 16, two layers. (Per-block FLOPs of
    every family: tests/test_families.py.)"""
    trace = load_trace(tiny_trace)
    t = trace.n_prompt
    derived = trace.manifest["derived"]
    assert derived["flops_unembedding"] == 2 * t * 64 * trace.model.vocab_size
    assert derived["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # k and v, float32


def test_top_k_breaks_ties_by_token_id():
    """Equal values keep ascending ids, inside the k and at the k-th place, so a trace's top-k
    order does not depend on the machine."""
    from tracegen.derive import top_k_by_id

    values = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [5.0, 1.0, 1.0, 1.0, 0.0]])
    top_values, top_ids = top_k_by_id(values, 2)
    assert top_ids.tolist() == [[1, 2], [0, 1]]
    assert top_values.tolist() == [[3.0, 3.0], [5.0, 1.0]]
    assert top_k_by_id(values, 4)[1].tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    # Against a full stable sort of every row, on random values with many ties.
    generator = torch.Generator().manual_seed(0)
    many = torch.randint(0, 6, (50, 40), generator=generator).float()
    expected = many.sort(dim=-1, descending=True, stable=True).indices[:, :7]
    assert torch.equal(top_k_by_id(many, 7)[1], expected)


def test_lens_in_blocks_of_positions_matches_one_block(tiny_model_dir, monkeypatch):
    """The lens runs over blocks of positions to keep memory flat in the prompt's length;
    blocks of 7 give what one block of every position gives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracegen import capture, derive, families

    folder = tiny_model_dir("gemma2-softcap")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter = families.adapt(model)
    tracer = capture.Tracer(model, tokenizer, adapter, list(range(2, 40)))
    tracer.prompt_pass()
    traced = tracer.result()
    whole = derive.logit_lens(adapter, traced, [3, 4], top_k=5)
    monkeypatch.setattr(derive, "LENS_ROWS", 7)
    blocks = derive.logit_lens(adapter, traced, [3, 4], top_k=5)
    for name, value in whole.items():
        assert value.shape == blocks[name].shape, name
        torch.testing.assert_close(blocks[name], value, rtol=1e-5, atol=1e-6, msg=name)
