"""`tracegen plan`: from the config alone (a folder without a tokenizer included), its memory
and time stated as estimates with their basis, and a warning when the planned peak is more
than this machine has available. (Its trace size: tests/test_scale.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracegen import cli

pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[1]
STORY_PROMPT = REPO / "tracegen" / "prompt.txt"


@pytest.fixture
def config_only(tmp_path) -> Path:
    """A model folder with nothing but its config.json: no weights, no tokenizer."""
    from .conftest import tiny_config

    folder = tmp_path / "config-only"
    folder.mkdir()
    tiny_config("llama", vocab_size=320).save_pretrained(folder)
    return folder


def test_plan_from_the_config_alone(capsys, config_only):
    """No tokenizer: the prompt's length is estimated from its characters, and said so."""
    from tracegen.plan import CHARS_PER_TOKEN

    assert sorted(p.name for p in config_only.iterdir()) == ["config.json"]
    assert cli.main(["plan", "--model", str(config_only)]) == 0
    out, err = capsys.readouterr()
    characters = len(STORY_PROMPT.read_text(encoding="utf-8"))
    tokens = -(-characters // CHARS_PER_TOKEN)
    assert (
        f"prompt     {tokens:.0f} tokens, estimated from its {characters:,} characters at "
        f"{CHARS_PER_TOKEN} a token (config-only has no tokenizer files)" in out
    )
    assert f"positions  {tokens + 15:.0f} traced" in out
    assert "Traceback" not in err


def test_plan_counts_with_the_tokenizer_where_there_is_one(capsys, tiny_model_dir):
    from tracegen.plan import count_prompt

    folder = tiny_model_dir("llama")
    count = count_prompt(str(folder), STORY_PROMPT)
    assert count.how == "counted with the model's tokenizer"
    assert cli.main(["plan", "--model", str(folder)]) == 0
    assert f"prompt     {count.tokens} tokens, counted with" in capsys.readouterr().out


def test_plan_says_what_is_an_estimate_and_its_basis(capsys, config_only):
    assert cli.main(["plan", "--model", str(config_only)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "peak about" in lines["memory"]
    assert "on this machine's CPU at its matmul rate measured just now" in lines["time"]
    assert lines["estimate"].startswith(
        "estimate   the peak and the time are estimates of this implementation, fitted to "
        "measured runs of SmolLM2-135M here"
    )


def test_plan_warns_in_one_line_when_the_peak_exceeds_the_memory(capsys, config_only, monkeypatch):
    from tracegen import plan

    monkeypatch.setattr(plan, "available_memory", lambda: 10**6)  # 1 MB left
    assert cli.main(["plan", "--model", str(config_only)]) == 0
    out, err = capsys.readouterr()
    assert "peak about" in out
    [line] = err.strip().splitlines()
    assert line.startswith("tracegen: warning: the planned peak, about ")
    assert "1.0 MB of memory available here" in line
    monkeypatch.setattr(plan, "available_memory", lambda: 10**15)
    assert cli.main(["plan", "--model", str(config_only)]) == 0
    assert capsys.readouterr().err == ""


def test_available_memory_reads_this_machine():
    from tracegen.plan import available_memory

    available = available_memory()
    assert available is None or 10**7 < available < 10**14


def test_a_failed_plan_is_one_line(tmp_path):
    """A config transformers cannot read: the failure is one line with the prefix, last."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-type"}))
    done = subprocess.run(
        [sys.executable, "-m", "tracegen.cli", "plan", "--model", str(folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == cli.EXIT_ERROR and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("tracegen: error: ")]
    assert errors == [done.stderr.strip().splitlines()[-1]], done.stderr
    assert errors[0].startswith("tracegen: error: cannot read the config of ")


@pytest.mark.real_model
def test_plan_of_the_default_model_matches_its_measured_runs(monkeypatch):
    """The estimates are fitted to measured runs of the default model (plan.CALIBRATION): at
    the story's 186 tokens the run peaked at 1.53-1.65 GB and took 29 s (44 s de-quantising
    the GGUF file) with a matmul rate of about 116 GFLOP/s; the plan must not run low."""
    from tracegen import plan

    monkeypatch.setattr(plan, "matmul_flops_per_second", lambda: 116e9)
    result = plan.plan("default", plan.prompt_tokens("default", STORY_PROMPT))
    assert 1.55e9 <= result.peak_bytes <= 1.85e9, result.peak_bytes
    assert 25 <= result.seconds <= 45, result.seconds
    low, high = result.dequantise_seconds
    assert low <= 44 - 29 <= high
