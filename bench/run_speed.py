"""Speed of `tracegen run`, stage by stage, against the bare model in the same process.

    .venv/bin/python bench/run_speed.py                 # the default model
    .venv/bin/python bench/run_speed.py --model ./folder --dtype bfloat16

Prints:
  - the bare model: load, and one forward pass with attentions and hidden states (same dtype);
  - every stage of `tracegen run` (from the timings.json it writes) and its ratio to the bare
    forward pass;
  - the logit lens's achieved GFLOP/s against this machine's matmul GFLOP/s on the lens's
    own matmul shape;
  - whether one clock-only timing pass gives the same per-layer times as the median of five.
Figures are compared as ratios within one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tracegen import capture, families, models  # noqa: E402
from tracegen.runner import BUNDLED_PROMPT, run  # noqa: E402


def seconds(function, repeats: int = 3) -> float:
    """Median wall time of `repeats` calls after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    start = time.perf_counter()
    loaded = models.load(models.resolve(args.model), args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    bare_load = time.perf_counter() - start
    ids = torch.tensor([tokenizer(BUNDLED_PROMPT.read_text(encoding="utf-8"))["input_ids"]])
    bare_forward = seconds(lambda: model(ids, output_attentions=True, output_hidden_states=True))

    adapter = families.adapt(model)
    passes = []
    for _ in range(5):
        with capture.LayerTimer(adapter, lambda: None) as timer:
            model(ids)
        passes.append(timer.seconds)
    median = [statistics.median(layer) for layer in zip(*passes, strict=True)]
    single_error = max(
        abs(one - mid) / mid for layer, mid in zip(zip(*passes, strict=True), median, strict=True)
        for one in layer
    )  # fmt: skip
    total_spread = max(abs(sum(p) - sum(median)) / sum(median) for p in passes)

    n, width = ids.shape[1], adapter.unembed.weight.shape[1]
    vocab = adapter.unembed.weight.shape[0]
    resid = torch.randn(n, width, dtype=adapter.unembed.weight.dtype)
    matmul = seconds(lambda: adapter.unembed(resid), repeats=5)
    matmul_gflops = 2 * n * width * vocab / matmul / 1e9

    with tempfile.TemporaryDirectory() as folder:
        out = run(args.model, out=Path(folder) / "trace", dtype=args.dtype, quiet=True,
                  cache=False)  # fmt: skip
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
        size = sum(path.stat().st_size for path in out.iterdir())
    stage_seconds = timings["stage_seconds"]
    n_positions = manifest["n_positions"]
    depths = manifest["model"]["n_layers"] + 1
    lens_gflops = depths * 2 * n_positions * width * vocab / stage_seconds["lens"] / 1e9

    print(f"model {args.model} ({args.dtype}), {ids.shape[1]} prompt tokens, "
          f"{n_positions} traced positions, trace {size / 1e6:.1f} MB")  # fmt: skip
    print(f"{'bare load':<22} {bare_load:8.2f} s")
    print(f"{'bare forward':<22} {bare_forward:8.3f} s   (attentions + hidden states)")
    for stage, value in stage_seconds.items():
        print(f"{'run: ' + stage:<22} {value:8.3f} s   {value / bare_forward:7.1f}x bare forward")
    total = sum(stage_seconds.values())
    print(f"{'run: total':<22} {total:8.2f} s   {total / (bare_load + bare_forward):7.2f}x "
          "bare load + forward")  # fmt: skip
    print(f"lens: {lens_gflops:.1f} GFLOP/s achieved; matmul on the lens's shape "
          f"[{n_positions} x {width}] @ [{width} x {vocab}]: {matmul_gflops:.1f} GFLOP/s "
          f"({lens_gflops / matmul_gflops:.0%} of it)")  # fmt: skip
    print(f"timing: one clock-only pass vs the median of five: per-layer times within "
          f"{single_error:.0%}, the pass's total within {total_spread:.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
