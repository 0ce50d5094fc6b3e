"""Every family in tests/tiny_families.py traces and passes the parity gate; the gate refuses
a trace when an adapter leaves out what the model applies; models tracegen cannot trace are
refused before the forward pass; FLOPs agree with a count by hand from each config."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tracegen import load_trace

from .conftest import skip_if_transformers_too_old
from .tiny_families import CASES, case_by_name

torch = pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model
CASE_NAMES = [case.name for case in CASES]


@pytest.fixture(scope="module")
def traces(tiny_model_dir, tmp_path_factory):
    """Factory: case name -> trace folder (three greedy steps), made once per module."""
    from tracegen.runner import run

    made: dict[str, Path] = {}

    def trace(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(f"family-{name}") / name
            # Every row kept, so the gate's attention check covers every row and key.
            with skip_if_transformers_too_old():
                made[name] = run(
                    str(tiny_model_dir(name)), out=out, steps=3, quiet=True, attention="full"
                )
        return made[name]

    return trace


# bench/compatibility.py sets this to collect the gate's results into docs/compatibility.md.
REPORT_DIR = os.environ.get("TRACEGEN_COMPAT_REPORT")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_family_passes_the_gate(name, traces):
    from tracegen.verify import TOLERANCES

    trace = load_trace(traces(name))
    gate = trace.manifest["gate"]
    if REPORT_DIR:
        report = {"case": name, "model": trace.manifest["model"], "gate": gate}
        (Path(REPORT_DIR) / f"{name}.json").write_text(json.dumps(report), encoding="utf-8")
    assert gate["passed"] is True
    assert set(gate["checks"]) == set(TOLERANCES["float32"])
    for check in gate["checks"].values():
        assert 0.0 <= check["error"] <= check["tolerance"], check
    assert trace.n_positions == trace.n_prompt + 2


def hand_count(name: str, config, n_tokens: int) -> list[float]:
    """[attn_proj, attn_scores, mlp] FLOPs of one block, from the config by hand: every
    family's projections are q (H heads), k and v (G heads each) and an output map; its MLP
    has two matrices, or three when gated; a mixture of experts adds a router and runs k of
    its E experts."""
    t, d = n_tokens, config.hidden_size
    heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or d // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if name.startswith("falcon"):
        kv_heads = (
            config.num_kv_heads if config.new_decoder_architecture
            else 1 if config.multi_query else heads
        )  # fmt: skip
    if name == "gpt-bigcode-mqa":
        kv_heads = 1
    d_mlp = next(
        getattr(config, key)
        for key in ("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner")
        if getattr(config, key, None)
    ) if not name.startswith("bloom") else 4 * d  # fmt: skip
    not_gated = ("phi", "gpt", "codegen", "opt", "falcon", "bloom")
    gated = not name.startswith(not_gated) or name == "phi3"
    attn_proj = 2 * t * d * d_head * (2 * heads + 2 * kv_heads)
    attn_scores = 2 * 2 * heads * t * t * d_head
    if name in ("mixtral", "gpt-oss"):  # GPT-OSS's expert and router biases are not counted
        experts, per_token = config.num_local_experts, config.num_experts_per_tok
        mlp = 2 * t * (d * experts + per_token * 3 * d * config.intermediate_size)
    elif name == "qwen3-moe":
        experts, per_token = config.num_experts, config.num_experts_per_tok
        mlp = 2 * t * (d * experts + per_token * 3 * d * config.moe_intermediate_size)
    else:
        mlp = 2 * t * d * d_mlp * (3 if gated else 2)
    return [float(attn_proj), float(attn_scores), float(mlp)]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_flops_by_hand(name, traces, tiny_model_dir):
    from transformers import AutoConfig

    trace = load_trace(traces(name))
    config = AutoConfig.from_pretrained(tiny_model_dir(name))
    expected = hand_count(name, config, trace.n_prompt)
    np.testing.assert_array_equal(trace.derived("flops"), [expected] * trace.n_layers)


def test_moe_counts_only_the_experts_a_token_runs(traces):
    """Mixtral's tiny case has 4 experts and runs 2: its MLP FLOPs are about half of what all
    four experts would cost."""
    trace = load_trace(traces("mixtral"))
    config = case_by_name("mixtral").kwargs
    all_experts = 2 * trace.n_prompt * 3 * 64 * config["intermediate_size"] * 4
    assert trace.derived("flops")[0, 2] < 0.6 * all_experts


# Each line leaves out one thing the model applies: the gate must name the check it breaks.
BROKEN = [
    ("granite", "GraniteForCausalLM", {"write_scale": None}, "block_identity"),
    ("granite", "GraniteForCausalLM", {"logit_divisor": None}, "lens_logprobs"),
    ("cohere", "CohereForCausalLM", {"logit_scale": None}, "lens_logprobs"),
    ("gemma2-softcap", "Gemma2ForCausalLM", {"logit_softcap": None}, "lens_logprobs"),
    (
        "gemma3-sliding-qknorm",
        "Gemma3ForCausalLM",
        {"attn_write": "self_attn", "mlp_write": "mlp"},  # the outputs before the post-norms
        "block_identity",
    ),
]


@pytest.mark.parametrize(("name", "architecture", "change", "check"), BROKEN)
def test_a_broken_adapter_is_refused(name, architecture, change, check, tiny_model_dir,
                                     tmp_path, monkeypatch):  # fmt: skip
    from tracegen import families
    from tracegen.runner import run
    from tracegen.verify import GateError

    broken = replace(families.FAMILIES[architecture], **change)
    monkeypatch.setitem(families.FAMILIES, architecture, broken)
    out = tmp_path / "refused"
    with pytest.raises(GateError, match=rf"parity gate: {check} failed at \w+ \d+: error"):
        run(str(tiny_model_dir(name)), out=out, steps=2, quiet=True)
    assert not out.exists()


def test_norms_that_do_not_enter_the_scores_are_refused(tiny_model_dir, tmp_path, monkeypatch):
    """Recording a query other than the one that met the keys (here scaled, as a norm taken
    before a q/k norm would be) breaks the recomputed scores."""
    from tracegen import capture
    from tracegen.runner import run
    from tracegen.verify import GateError

    original = capture.Recorder.on_attention

    def before_the_norm(self, index, query, key, value, weights, mask, scores, **kwargs):
        original(self, index, query * 1.5, key, value, weights, mask, scores, **kwargs)

    monkeypatch.setattr(capture.Recorder, "on_attention", before_the_norm)
    with pytest.raises(GateError, match=r"qk_scores failed at layer \d"):
        run(str(tiny_model_dir("qwen3-qknorm")), out=tmp_path / "x", steps=1, quiet=True)


def test_sinks_left_out_of_the_scores_are_refused(tiny_model_dir, tmp_path, monkeypatch):
    """GPT-OSS's per-head sink logit joins the softmax: queries and keys alone do not give
    the probabilities the layer used, so a recorder that forgets the sink fails qk_scores."""
    from tracegen import capture
    from tracegen.runner import run
    from tracegen.verify import GateError

    original = capture.Recorder.on_attention

    def without_sinks(self, *args, sinks=None):
        original(self, *args, sinks=None)

    monkeypatch.setattr(capture.Recorder, "on_attention", without_sinks)
    with pytest.raises(GateError, match=r"qk_scores failed at layer \d"):
        run(str(tiny_model_dir("gpt-oss")), out=tmp_path / "x", steps=1, quiet=True)


def test_the_sink_share_is_what_rows_miss(traces):
    """GPT-OSS's rows sum to less than 1: head_sink is the share they miss, averaged over
    prompt queries 1..n-1, as the stored full matrix gives it (float16, so to 1e-3). A model
    without sinks has no head_sink, and asking for it is one line."""
    from tracegen import TraceError

    trace = load_trace(traces("gpt-oss"))
    assert trace.manifest["gate"]["attention_rows_sum_to_one"] is False
    n = trace.n_prompt
    sinks = trace.derived("head_sink")
    assert sinks.shape == (trace.n_layers, trace.model.n_heads) and sinks.max() > 0.01
    for layer in range(trace.n_layers):
        square = trace.layer(layer, "attn_probs")[:, 1:n, :n]  # [H, n-1, n]
        np.testing.assert_allclose(sinks[layer], (1 - square.sum(-1)).mean(-1), atol=1e-3)
    plain = load_trace(traces("llama"))
    assert plain.manifest["gate"]["attention_rows_sum_to_one"] is True
    assert not plain.has_derived("head_sink")
    with pytest.raises(TraceError, match=r"derived.safetensors has no head_sink: it is written"):
        plain.derived("head_sink")


def test_a_sink_share_of_the_wrong_shape_is_refused_on_load(traces, tmp_path):
    """head_sink is optional, but where a trace has it its shape is checked like the rest."""
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from tracegen import TraceError

    target = tmp_path / "trace"
    shutil.copytree(traces("gpt-oss"), target)
    path = target / "derived.safetensors"
    with safe_open(str(path), framework="numpy") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    tensors["head_sink"] = tensors["head_sink"][:, :-1].copy()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(TraceError, match=r"tensor head_sink has shape \[3, 3\], expected \[3, 4\]"):
        load_trace(target)


def test_a_sink_share_that_is_not_the_models_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    from tracegen import keep
    from tracegen.runner import run
    from tracegen.verify import GateError

    original = keep.sink_shares
    monkeypatch.setattr(keep, "sink_shares", lambda probs: original(probs) + 0.01)
    with pytest.raises(GateError, match=r"head_scores failed at layer \d+: error 0\.01"):
        run(str(tiny_model_dir("gpt-oss")), out=tmp_path / "t", steps=2, quiet=True)
    assert not (tmp_path / "t").exists()


def save_model(folder: Path, config) -> Path:
    from transformers import AutoModelForCausalLM

    from .conftest import build_tokenizer

    folder.mkdir()
    tokenizer = build_tokenizer(folder)
    config.vocab_size = len(tokenizer)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def refusal(capsys, folder: Path, tmp_path: Path) -> str:
    from tracegen import cli

    code = cli.main(["run", "--model", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "Traceback" not in err
    assert "[forward]" not in err  # refused before the forward pass
    assert not (tmp_path / "out").exists()
    return err.strip().splitlines()[-1]


def test_a_state_space_model_is_refused(capsys, tmp_path):
    import transformers as tf

    config = tf.MambaConfig(hidden_size=32, num_hidden_layers=2, state_size=4)
    line = refusal(capsys, save_model(tmp_path / "mamba", config), tmp_path)
    assert line.startswith("tracegen: error: cannot trace MambaForCausalLM")
    assert "no attention layers" in line


def test_a_hybrid_model_is_refused(capsys, tmp_path):
    import transformers as tf

    if not hasattr(tf, "Qwen3NextConfig"):
        pytest.skip(f"transformers {tf.__version__} has no Qwen3NextConfig")
    config = tf.Qwen3NextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=32,
        linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
        linear_value_head_dim=16,
    )  # fmt: skip
    line = refusal(capsys, save_model(tmp_path / "qwen3-next", config), tmp_path)
    assert line.startswith("tracegen: error: cannot trace Qwen3NextForCausalLM")
    assert "layers 0, 1, 2 have no attention (a hybrid" in line


@pytest.mark.parametrize("installed", ["5.24.0", "4.46.3"])
def test_falcon_before_the_release_it_is_declared_for_is_refused(
    installed, capsys, tiny_model_dir, tmp_path, monkeypatch
):
    """Falcon's entry matches transformers 5.25's modeling code (attention through the
    interface, no `_split_heads`); an older transformers is refused in one line before the
    forward pass, naming both versions and the fix."""
    from tracegen import families

    monkeypatch.setattr(families, "transformers_version", lambda: installed)
    line = refusal(capsys, tiny_model_dir("falcon"), tmp_path)
    assert line == (
        f"tracegen: error: cannot trace FalconForCausalLM with transformers {installed}: "
        "tracegen's declaration of it matches the modeling code of transformers >= 5.25; "
        "pip install 'transformers>=5.25'"
    )


def test_only_falcon_declares_a_release():
    """The version check is data in the table, not a probe of the modeling code: the one
    family whose code moved under it says since when its declaration holds."""
    from tracegen.families import FAMILIES

    declared = {name: family.since for name, family in FAMILIES.items() if family.since}
    assert declared == {"FalconForCausalLM": "5.25"}


def test_a_hybrid_layer_without_attention_is_refused(tiny_model_dir):
    """A table entry whose blocks are not all attention blocks is named, layer and module."""
    from transformers import AutoModelForCausalLM

    from tracegen import families

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    del model.model.layers[1].self_attn
    with pytest.raises(families.FamilyError, match="layer 1 .* has no self_attn"):
        families.adapt(model)


@pytest.mark.parametrize("name", ["llama", "gemma2-softcap", "gpt2", "falcon-alibi"])
def test_bfloat16_passes_the_gate(name, tiny_model_dir, tmp_path):
    from tracegen.runner import run

    with skip_if_transformers_too_old():
        trace = load_trace(
            run(str(tiny_model_dir(name)), out=tmp_path / name, steps=2, dtype="bfloat16",
                quiet=True)
        )  # fmt: skip
    gate = trace.manifest["gate"]
    assert gate["passed"] and gate["dtype"] == "bfloat16"
    # Not trivially loose: the half-precision errors are far from zero but within tolerance.
    assert gate["checks"]["lens_logprobs"]["error"] > 0


def test_the_gate_is_in_info(capsys, traces):
    from tracegen import cli

    assert cli.main(["info", str(traces("llama"))]) == 0
    out = capsys.readouterr().out
    assert "parity gate: passed" in out
    for name in ("lens_logprobs", "block_identity", "attention", "qk_scores", "attribution_sum",
                 "lens_statistics"):  # fmt: skip
        assert name in out


def test_manifest_names_the_family_and_its_overrides(traces):
    manifest = json.loads((traces("granite") / "manifest.json").read_text())
    model = manifest["model"]
    assert model["family"] == "granite"
    assert "write_scale=residual_multiplier" in model["family_overrides"]
    assert model["logit_multiplier"] == pytest.approx(1 / case_by_name("granite").kwargs[
        "logits_scaling"])  # fmt: skip


def test_compatibility_page_covers_every_case():
    """docs/compatibility.md is generated by bench/compatibility.py; rerun it when a case is
    added. Every case has a row whose errors are within the float32 tolerances."""
    from tracegen.verify import TOLERANCES

    page = (Path(__file__).resolve().parents[1] / "docs" / "compatibility.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in page.splitlines()
            if line.startswith("| ") and not line.startswith("| case")}  # fmt: skip
    assert set(rows) == set(CASE_NAMES)
    limits = [TOLERANCES["float32"][name] for name in
              ("lens_logprobs", "block_identity", "attention", "qk_scores", "attribution_sum")]
    for line in rows.values():
        errors = [float(cell) for cell in line.split(" | ")[5:10]]
        assert all(e <= limit for e, limit in zip(errors, limits, strict=True)), line


def test_the_gate_refuses_in_one_line_from_the_command_line(capsys, tiny_model_dir, tmp_path,
                                                            monkeypatch):  # fmt: skip
    from tracegen import cli, families

    broken = replace(families.FAMILIES["GraniteForCausalLM"], write_scale=None)
    monkeypatch.setitem(families.FAMILIES, "GraniteForCausalLM", broken)
    out = tmp_path / "refused"
    code = cli.main(["run", "--model", str(tiny_model_dir("granite")), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tracegen: error: parity gate: block_identity failed at layer ")
    assert last.endswith("(float32); nothing was written")
    assert not out.exists()
