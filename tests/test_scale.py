"""Models bigger than one device: a tiny model split by accelerate across the CPU and disk
offload traces exactly as it does whole, and passes the gate."""

from __future__ import annotations

import numpy as np
import pytest

from tracegen import load_trace

torch = pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model


def test_disk_offload_traces_like_the_whole_model(tiny_model_dir, tmp_path):
    from tracegen.runner import run

    folder = tiny_model_dir("llama")
    whole = load_trace(run(str(folder), out=tmp_path / "whole", steps=2, quiet=True))
    split = load_trace(
        run(
            str(folder), out=tmp_path / "split", steps=2, quiet=True, device_map="auto",
            # Room on the CPU for the embeddings and about one block: the rest goes to disk.
            max_memory="cpu=350KB", offload_folder=tmp_path / "offload",
        )
    )  # fmt: skip
    placement = split.manifest["run"]["device_map"]
    assert placement.get("disk", 0) >= 1 and placement.get("cpu", 0) >= 1, placement
    assert whole.manifest["run"]["device_map"] is None
    assert split.manifest["gate"]["passed"] is True
    assert split.token_ids == whole.token_ids and split.generated_ids == whole.generated_ids
    for index in range(whole.n_layers):
        for name in whole.layer_tensors:
            np.testing.assert_array_equal(
                split.layer(index, name), whole.layer(index, name), err_msg=f"{index} {name}"
            )
    for name in ("lens_topk_ids", "lens_topk_probs", "attribution", "flops"):
        np.testing.assert_array_equal(split.derived(name), whole.derived(name), err_msg=name)


def test_max_memory_must_be_pairs(capsys, tiny_model_dir, tmp_path):
    from tracegen import cli

    code = cli.main(["run", "--model", str(tiny_model_dir("llama")), "--out", str(tmp_path / "x"),
                     "--device-map", "auto", "--max-memory", "lots"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("tracegen: error: --max-memory 'lots'")


def test_plan_predicts_the_trace_size(capsys, tiny_model_dir, tmp_path):
    """`tracegen plan` reads the config only; its trace size is within 10% of the real one."""
    from tracegen import cli
    from tracegen.plan import plan, prompt_tokens
    from tracegen.runner import BUNDLED_PROMPT, run

    folder = tiny_model_dir("llama")
    out = run(str(folder), out=tmp_path / "t", steps=3, quiet=True)
    actual = sum(path.stat().st_size for path in out.iterdir())
    predicted = plan(str(folder), prompt_tokens(str(folder), BUNDLED_PROMPT), steps=3)
    assert predicted.n_positions == load_trace(out).n_positions
    assert abs(predicted.trace_bytes - actual) < 0.1 * actual, (predicted.trace_bytes, actual)
    assert cli.main(["plan", "--model", str(folder), "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "trace " in printed and "peak about" in printed and "GFLOP" in printed
