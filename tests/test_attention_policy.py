"""--attention full | rows:R | topk:K and --activations all | rows:R: each layout keeps what it
says, the gate checks it, the reader gives one API over all of them, and what a run keeps
grows linearly under rows and topk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tracegen import TraceError, load_trace
from tracegen.policy import HEAD_SCORES, PolicyError, parse_activations, parse_policy

from .conftest import skip_if_transformers_too_old

torch = pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model
STEPS = 3
POLICIES = ("full", "rows:4", "topk:3")
# The recorder path (llama), Falcon through it with ALiBi in a per-head mask, the inline path
# (BLOOM), a sliding window with q/k norms, and attention sinks (GPT-OSS: rows sum below 1).
POLICY_FAMILIES = ("llama", "falcon-alibi", "bloom-alibi", "gemma3-sliding-qknorm", "gpt-oss")


@pytest.fixture(scope="module", params=POLICY_FAMILIES)
def traces(request, tiny_model_dir, tmp_path_factory):
    """policy -> trace of one family's tiny model, three greedy steps; activations at every
    position except under rows:4, which keeps them at its rows too."""
    from tracegen.runner import run

    folder = tiny_model_dir(request.param)
    made = {}
    for policy in POLICIES:
        out = tmp_path_factory.mktemp("policy") / policy.replace(":", "-")
        activations = policy if policy.startswith("rows") else "all"
        with skip_if_transformers_too_old():
            made[policy] = load_trace(
                run(str(folder), out=out, steps=STEPS, quiet=True, attention=policy,
                    activations=activations)
            )  # fmt: skip
    return made


@pytest.fixture(scope="module")
def panels(traces):
    """policy -> panel key -> panel, built once per family for the tests that read them."""
    from tracegen.panels import build_panels

    return {
        policy: {panel.key: panel for panel in build_panels(trace)}
        for policy, trace in traces.items()
    }


def test_rows_are_the_full_rows(traces):
    full, rows = traces["full"], traces["rows:4"]
    n = full.n_positions
    assert rows.attention_rows == sorted({full.n_prompt - 1, *range(n - 4, n)})
    for index in range(full.n_layers):
        square = full.layer(index, "attn_probs")
        for position in rows.attention_rows:
            np.testing.assert_array_equal(rows.attention_row(index, position), square[:, position])
            np.testing.assert_array_equal(full.attention_row(index, position), square[:, position])
    with pytest.raises(TraceError, match=r"not position 3; trace with --attention full"):
        rows.attention_row(0, 3)
    with pytest.raises(TraceError, match=r"keeps attention as rows:4, not every row"):
        rows.layer(0, "attn_probs")


def test_activation_rows_are_those_of_every_position(traces):
    full, rows = traces["full"], traces["rows:4"]
    assert rows.activation_rows == rows.attention_rows
    for index in range(full.n_layers):
        for name in ("resid_in", "resid_out", "attn_out", "mlp_out"):
            stored = rows.layer(index, name)
            assert stored.shape == (len(rows.activation_rows), full.model.d_model)
            for position in rows.activation_rows:
                np.testing.assert_array_equal(
                    rows.activation(index, name, position), full.layer(index, name)[position]
                )
    with pytest.raises(TraceError, match=r"not 3; trace with --activations all"):
        rows.activation(0, "resid_out", 3)


def test_topk_keeps_the_largest_weights_and_the_rest(traces):
    full, topk = traces["full"], traces["topk:3"]
    for index in range(full.n_layers):
        square = full.layer(index, "attn_probs")
        keys = topk.layer(index, "attn_topk_keys")
        assert keys[:, 0, 0].tolist() == [0] * full.model.n_heads  # position 0 sees itself
        assert (keys[:, 0, 1:] == -1).all() and (keys[:, 1, 2] == -1).all()  # fewer keys than k
        for position in (1, full.n_prompt - 1, full.n_positions - 1):
            row = topk.attention_row(index, position)
            largest = np.sort(square[:, position], -1)[:, ::-1][:, :3]
            np.testing.assert_allclose(np.sort(row, -1)[:, ::-1][:, :3], largest, atol=1e-3)
            rest = square[:, position].sum(-1) - largest.sum(-1)
            np.testing.assert_allclose(topk.attention_rest(index, position), rest, atol=2e-3)


def test_head_scores_do_not_depend_on_the_layout(traces):
    for name in HEAD_SCORES:
        for policy in POLICIES[1:]:
            np.testing.assert_array_equal(
                traces[policy].derived(name), traces["full"].derived(name), err_msg=name
            )
    gates = {policy: trace.manifest["gate"]["checks"] for policy, trace in traces.items()}
    assert all(checks["head_scores"]["passed"] for checks in gates.values())


def test_every_layout_builds_the_panels_and_says_what_is_missing(traces, panels):
    words = {}
    for policy, trace in traces.items():
        words[policy] = panels[policy]["p3"].caption
        shape = panels[policy]["p4"].facts.scores["p"].shape
        assert shape == (trace.n_layers, trace.model.n_heads)
    assert "does not name" not in words["full"] and "does not name" not in words["rows:4"]
    assert "<code>--attention topk:3</code>" in words["topk:3"]
    assert "does not name" in words["topk:3"]


def test_learned_sinks_are_named_with_their_share_under_every_layout(traces, panels):
    """Where the model has learned sinks (GPT-OSS), the attention and heads panels say what
    share goes to the sink rather than to any token: from the answer position, 1 - its row's
    sum in the full matrix, the same under every layout (topk: 1 - kept - rest). A model
    without sinks gets no such sentence."""
    from tracegen.panels.story import answer_position

    full = traces["full"]
    position = answer_position(full)
    rows = [full.layer(i, "attn_probs")[:, position] for i in range(full.n_layers)]
    expected = float(np.mean([1.0 - row.sum(-1) for row in rows]))
    has_sinks = full.has_derived("head_sink")
    assert has_sinks == (full.manifest["model"]["family"] == "gpt_oss")
    for policy in traces:
        attention, heads = panels[policy]["p3"], panels[policy]["p4"]
        if not has_sinks:
            assert attention.facts.learned_sink_now is None and heads.facts.learned_sink is None
            assert "learned sink" not in attention.caption + heads.caption, policy
            continue
        assert attention.facts.learned_sink_now == pytest.approx(expected, abs=2e-3), policy
        assert expected > 1e-3  # the tiny model's sinks take a visible share
        assert "learned sink, a logit that joins the softmax" in attention.caption
        assert "Learned sinks: a row here sums to less than 1" in heads.caption
        np.testing.assert_array_equal(heads.facts.learned_sink, full.derived("head_sink"))


def test_layouts_differ_in_size_as_the_schema_says(traces):
    def size(trace) -> int:
        return sum(path.stat().st_size for path in trace.tensor_files())

    full, rows, topk = (traces[p] for p in POLICIES)
    heads, n, width = full.model.n_heads, full.n_positions, full.model.d_model
    attention = {
        "full": heads * n * (n + 1) // 2 * 2,
        "rows:4": heads * len(rows.attention_rows) * n * 2,
        "topk:3": heads * n * (3 * 6 + 2),
    }
    activations = {  # four float16 tensors of width D per kept position
        "full": 4 * n * width * 2,
        "rows:4": 4 * len(rows.activation_rows) * width * 2,
        "topk:3": 4 * n * width * 2,
    }
    for policy in POLICIES[1:]:
        saved = attention["full"] - attention[policy] + activations["full"] - activations[policy]
        saved *= full.n_layers
        assert size(full) - size(traces[policy]) == pytest.approx(saved, rel=0.02), policy


def test_what_a_run_keeps_grows_linearly_except_under_full():
    """The keeper is handed a prompt pass of n and of 2n positions: rows and topk keep twice
    as much, full (the lower triangle) nearly four times."""
    from tracegen.keep import AttentionKeeper

    def kept_bytes(policy: str, n: int) -> int:
        keeper = AttentionKeeper(parse_policy(policy), 1, list(range(n)))
        probs = torch.rand(4, n, n).tril().softmax(-1)
        keeper.take(0, 0, probs)
        return sum(t.numel() * t.element_size() for t in keeper.tensors(0, n).values())

    for policy, low, high in (("rows:16", 1.9, 2.1), ("topk:8", 1.9, 2.1), ("full", 3.9, 4.1)):
        ratio = kept_bytes(policy, 512) / kept_bytes(policy, 256)
        assert low <= ratio <= high, (policy, ratio)


# --- the gate ---------------------------------------------------------------------------------


def test_gate_refuses_head_scores_that_are_not_the_models(tiny_model_dir, tmp_path, monkeypatch):
    from tracegen import keep
    from tracegen.runner import run
    from tracegen.verify import GateError

    original = keep.head_scores
    monkeypatch.setattr(keep, "head_scores", lambda probs, pairs: original(probs, pairs) + 0.01)
    with pytest.raises(GateError, match=r"head_scores failed at layer \d+: error 0\.01"):
        run(str(tiny_model_dir("llama")), out=tmp_path / "t", steps=2, quiet=True)
    assert not (tmp_path / "t").exists()


def test_gate_refuses_top_keys_that_are_not_the_largest(tiny_model_dir, tmp_path, monkeypatch):
    """Weights kept at the right keys and the right rest, but not the largest keys: only
    the order check can tell."""
    from tracegen import keep
    from tracegen.runner import run
    from tracegen.verify import GateError

    def first_keys(probs, k, first, first_key):
        heads, rows, keys = probs.shape
        columns = torch.arange(min(k, keys)).expand(heads, rows, -1)
        positions = columns + first_key
        future = positions > (first + torch.arange(rows)).view(1, rows, 1)
        values = probs.float().gather(-1, columns).masked_fill(future, 0.0)
        rest = probs.float().sum(-1) - values.sum(-1)
        pad = (0, k - columns.shape[-1])
        return (
            torch.nn.functional.pad(values, pad).half(),
            torch.nn.functional.pad(positions.masked_fill(future, -1), pad, value=-1).int(),
            rest.half(),
        )

    monkeypatch.setattr(keep, "_top_keys", first_keys)
    with pytest.raises(GateError, match=r"attention failed at layer \d+"):
        run(str(tiny_model_dir("llama")), out=tmp_path / "t", steps=2, quiet=True,
            attention="topk:2")  # fmt: skip


# --- input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["rows", "rows:0", "topk:-1", "top:3", "rows:1e9", "all", ""])
def test_malformed_policies_are_refused(text):
    with pytest.raises(PolicyError, match=r"is not one of full, rows:R"):
        parse_policy(text)
    with pytest.raises(PolicyError, match=r"--activations .* is not one of all or rows:R"):
        parse_activations(text.replace("top", "topk").replace("all", "full"))


def test_cli_refuses_a_policy_in_one_line_before_loading(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tracegen.cli", "run", "--attention", "rows:zero",
         "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tracegen: error: --attention 'rows:zero' is not one of "
        "full, rows:R (R >= 1) or topk:K (K >= 1)"
    ]


def test_rows_the_manifest_does_not_match_are_refused(traces, tmp_path):
    import shutil

    target = tmp_path / "trace"
    shutil.copytree(traces["rows:4"].path, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["attention"]["rows"] = manifest["attention"]["rows"][1:]
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceError, match=r"attention\.rows: are not the rows rows:4 keeps"):
        load_trace(target)
    manifest["attention"] = {"policy": "rows:many"}
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceError, match=r'attention\.policy: "rows:many" is not full, rows:R'):
        load_trace(target)


def test_what_a_traced_pass_holds_grows_linearly(tiny_model_dir):
    """Everything a run keeps after its passes (activations, norms, kept attention), for a
    prompt of n and of 2n tokens: twice as much by default, with every row kept far more."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracegen import capture, families

    folder = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter = families.adapt(model)

    def held(policy: str, n: int) -> int:
        ids = [2 + i % (model.config.vocab_size - 2) for i in range(n)]
        tracer = capture.Tracer(model, tokenizer, adapter, ids, parse_policy(policy))
        tracer.prompt_pass()
        tracer.greedy_steps(2)
        layers = tracer.result().layers
        return sum(t.numel() * t.element_size() for layer in layers for t in layer.values())

    default = held("rows:16", 400) / held("rows:16", 200)
    full = held("full", 400) / held("full", 200)
    assert 1.9 <= default <= 2.1, default
    assert full > 2.5, full  # this tiny model's attention outweighs its activations
