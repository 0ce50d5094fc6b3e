"""Write docs/compatibility.md from a run of the family tests: which families tracegen
traces, what it captures for each, and the parity gate's largest errors on each tiny model.

    .venv/bin/python bench/compatibility.py        # runs tests/test_families.py, ~30 s

Nothing in the table is typed in except the notes on known deviations below; the errors come
from the manifests the test run wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.tiny_families import CASES  # noqa: E402

OUT = REPO / "docs" / "compatibility.md"
CHECKS = ("lens_logprobs", "block_identity", "attention", "qk_scores", "attribution_sum")
# Known deviations and limits, per family (from tracegen/families.py and capture.py).
NOTES = {
    "falcon": "needs transformers >= 5.25, whose Falcon dispatches through the attention "
    "interface (ALiBi folded into the mask); older releases are refused in one line",
    "bloom": "attention is computed inline: q/k/v come from the model's own `_reshape`; "
    "attention and MLP return residual + write, so the write is their output minus it",
    "opt": "post-LayerNorm configs (`do_layer_norm_before=False`, e.g. opt-350m) and "
    "`word_embed_proj_dim` != `hidden_size` are refused",
    "gemma2": "attribution sums to the logit before the final soft-cap",
    "gemma3": "attribution sums to the logit before the final soft-cap",
    "mixtral": "FLOPs count the router and the experts per token, not which experts ran",
    "qwen3_moe": "FLOPs count the router and the experts per token, not which experts ran",
    "gpt_oss": "attention sinks: rows sum to less than 1; the q·k check puts each head's sink "
    "logit in the softmax, and `head_sink` records the sink's share; FLOPs count the router "
    "and the experts per token, not which experts ran",
    "gpt2": "`reorder_and_upcast_attn=True` bypasses the attention interface and is refused",
}
HEADER = """# Compatibility

Every family below is traced in the tests from a tiny random-weight model built from a config,
saved to a folder and loaded the way a user's model is, and passes the
[parity gate](made.md#the-parity-gate). The errors are the gate's largest, in float32, from
the test run that wrote this page (`bench/compatibility.py`); a real model of the family is
checked the same way on every `tracegen run`. Example ids are models of each family on the
Hugging Face hub (not tested here: no hub is reachable from the test machines).

Captured for every family: the residual stream into and out of every block, what attention
and the MLP write to it (with the family's multipliers and post-norms), per-head norms of
the queries and keys that enter the scores (after q/k norms and rotary) and of the values, and
attention probabilities, at every position of the prompt and of the greedy steps (traced
with `--attention full`, so the gate compares every row and key).

"""
COLUMNS = ("case", "architecture", "covers", "example ids", "overrides", "lens", "block",
           "attention", "q·k", "attribution", "notes")  # fmt: skip


def main() -> int:
    with tempfile.TemporaryDirectory() as report_dir:
        env = {**os.environ, "TRACEGEN_COMPAT_REPORT": report_dir}
        command = [sys.executable, "-m", "pytest", "-q", "tests/test_families.py", "-k",
                   "passes_the_gate", "-p", "no:cacheprovider"]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, env=env)
        if result.returncode != 0:
            print("compatibility: the family tests failed; docs/compatibility.md not written",
                  file=sys.stderr)  # fmt: skip
            return 1
        reports = {path.stem: json.loads(path.read_text()) for path in Path(report_dir).iterdir()}
    rows = []
    for case in CASES:
        report = reports[case.name]
        model, checks = report["model"], report["gate"]["checks"]
        errors = [f"{checks[name]['error']:.1e}" for name in CHECKS]
        overrides = ", ".join(f"`{o}`" for o in model["family_overrides"]) or "none"
        rows.append(
            f"| {case.name} | `{model['architecture']}` | {case.switches} | "
            f"{', '.join(f'`{i}`' for i in case.example_ids)} | {overrides} | "
            + " | ".join(errors)
            + f" | {NOTES.get(model['family'], '')} |"
        )
    head = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    OUT.write_text(HEADER + "\n".join(head + rows) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}: {len(rows)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
