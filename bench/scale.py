"""Scale: `tracegen run` and the site on long prompts, each figure against its budget.

A benchmark, not a test: exit 1 if a budget fails, 2 if it cannot run as asked.

    .venv/bin/python bench/scale.py [--sizes 186,512,1024,2048] [--full-context]
        [--model default] [--attention POLICY] [--no-site-above N] [--no-raw-trace]
        [--json FILE]

For each size N, a prompt of about N tokens (the model's own tokenizer) is made from the
story's prompt: its Q/A pairs repeated (or, below the story's 186 tokens, fewer of them), then
the story's last question, so the model still ends on "Q: How many eyes does my foot have?
A: Your". The longest such prompt with at most N tokens is used. `--full-context` adds the
model's whole context (8,192 positions for the default model: the prompt, then the 16 greedy
steps `tracegen run` allows for).

Measured for each size, every command in its own subprocess under GNU time (wall time, CPU
time = user + sys, peak RSS of that one process):
  - `tracegen run --model M --prompt-file P --out DIR --force --quiet [--attention POLICY]`,
    and the trace's size on disk;
  - the bare forward: the same model loaded as `tracegen run` loads it (runner.load_stage),
    then one plain forward over the same ids (no hooks, no attentions, no hidden states):
    the baseline that the run's time and memory are divided by;
  - `mkdocs build` of the site from that one trace (tests/site_helpers.py's command, the raw
    trace published as mkdocs.yml says unless --no-raw-trace), and the story page's weight
    as chromium fetches it, raw and gzipped (bench/site_budget.py's measure_page). Skipped
    above --no-site-above N tokens.

Growth: each figure is fitted as a + b*n + c*n^2 over the sizes (least squares, n = prompt
tokens; at least 3 sizes). Its growth is called linear when the quadratic term is under 10%
of the fitted value at 2,048 tokens, or at the longest prompt if all are shorter
(c*n^2 / (a + b*n + c*n^2); a negative c, growth slower than linear, counts as linear; a
fitted value <= 0 there does not), and judged only when the longest prompt is 4x the shortest
or more (over a narrower span the n^2 term follows the noise). With a constant as large as
the model's weights in a, this asks whether the n^2 part is a visible share of what a
2,048-token run costs, not whether c is zero: noise always leaves some c.

Budgets (a figure "at N tokens" is read from the size within 15% of N; without one: n/a):
    tracegen run peak RSS at 2,048 tokens       <= 3 GB
    trace on disk at 186 tokens                  < 40 MB
    trace on disk at 2,048 tokens               <= 100 MB
    run peak RSS over the bare forward's, trace
    size, site build time, site build peak RSS   grow linearly (the rule above; the model's
                                                 own attention, in the bare forward too,
                                                 grows with n^2 whatever tracegen does)
    story page at 2,048 tokens                  <= 1.5 MB raw, <= 450 kB gzipped
A size whose run, bare forward or build fails (out of memory, say) is reported with the
command's last line and fails the benchmark; the other sizes still run. A chart that does
not draw on the story page fails it too.

Output: progress on stderr as each size starts and ends (minutes each: the default model
takes about 1.5 min at 186 tokens here); on stdout one markdown table (one row per size;
"bare fwd s" is the one forward pass alone, "RSS x bare" the run's peak over the bare
forward's), the fits, and each budget with PASS, FAIL or n/a. --json FILE keeps every raw
figure. --attention exits 2 when this checkout's `tracegen run` does not know the option.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tracegen, the site helpers, site_budget

from bench.site_budget import measure_page  # noqa: E402
from tests.site_helpers import mkdocs_build_command, serve  # noqa: E402

SIZES = (186, 512, 1024, 2048)
REFERENCE_TOKENS = 2048  # where the budgets and the growth rule read the figures
LINEAR_SHARE = 0.10  # the n^2 term's share of the fitted value, at REFERENCE_TOKENS
# Growth is judged only over sizes that span 4x or more: over a narrow span the n^2 term of
# three points follows the noise of a shared machine (a run of 186, 272 and 387 tokens here
# fitted a = -138 s to the build's times, for a "share" of -784%).
MIN_SPAN = 4.0
NEAR = 0.15  # a size within 15% of a budget's token count stands for it
STEP_ALLOWANCE = 16  # `tracegen run` refuses a prompt without room for 16 greedy steps
GB, MB, KB = 1e9, 1e6, 1e3
TIME = "/usr/bin/time"  # GNU time: %M is the peak RSS in KiB
STACK_FRAME = re.compile(r"\s*\d+:\s+0x[0-9a-f]+ - ")
TRACEGEN = [sys.executable, "-m", "tracegen.cli"]  # this checkout's, through child_env()


def say(text: str) -> None:
    """Progress, to stderr: the table alone goes to stdout."""
    print(f"[scale {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- prompts ------------------------------------------------------------------------------


def story_parts(prompt: str) -> tuple[list[str], str]:
    """The story prompt's Q/A pairs (each "Q: ...\\nA: ...") and its final, open question."""
    lines = prompt.split("\n")
    question = "\n".join(lines[-2:])  # "Q: How many eyes does my foot have?\nA: Your"
    body = lines[:-2]
    pairs = ["\n".join(body[i : i + 2]) for i in range(0, len(body), 2)]
    return pairs, question


def prompt_with(pairs: list[str], question: str, count: int) -> str:
    """`count` Q/A pairs, cycling through the story's in order, then the final question."""
    chosen = [pairs[i % len(pairs)] for i in range(count)]
    return "\n".join([*chosen, question])


def longest_prompt(pairs: list[str], question: str, tokens: int, count_tokens) -> tuple[str, int]:
    """The longest prompt_with(...) of at most `tokens` tokens, and its token count. Token
    counts grow with the number of pairs, so a doubling then a bisection finds it."""
    high = 1
    while count_tokens(prompt_with(pairs, question, high)) <= tokens:
        high *= 2
    low = 0  # zero pairs (the question alone) is the floor, whatever `tokens` says
    while high - low > 1:
        middle = (low + high) // 2
        if count_tokens(prompt_with(pairs, question, middle)) <= tokens:
            low = middle
        else:
            high = middle
    text = prompt_with(pairs, question, low)
    return text, count_tokens(text)


def model_context(model: str) -> tuple[Any, int]:
    """The model's tokenizer and context length, without loading its weights."""
    from tracegen import models

    resolved = models.resolve(model)
    return models.load_tokenizer(resolved), models.context_length(models.load_config(resolved))


# --- measuring one command ------------------------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    cpu_s: float  # user + sys
    peak_bytes: int  # the process's peak resident set


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message is its last line of output."""


def child_env() -> dict[str, str]:
    """The environment for children: this checkout's packages first, as for this script."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def timed(what: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[Measured, str]:
    """Run `cmd` under GNU time; its figures and its stdout. GNU time measures the one child
    it starts, so the peak RSS is that command's own, not this script's."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as figures:
        done = subprocess.run(
            [TIME, "-f", "%e %U %S %M", "-o", figures.name, *cmd],
            cwd=REPO,
            env=env or child_env(),
            capture_output=True,
            text=True,
        )
        # A killed command puts "Command terminated by signal 9" before the figures.
        last = figures.read().strip().splitlines()[-1:]
    if done.returncode:
        output = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        # The table keeps one line; the tail goes to stderr, less a Rust panic's stack frames
        # (vl-convert's), which would push its message out of view.
        for line in [line for line in output if not STACK_FRAME.match(line)][-10:]:
            say(f"  {what}: {line}")
        raise CommandFailed(f"{what}: exit {done.returncode}: {output[-1]}")
    wall, user, system, kib = last[0].split()
    return Measured(float(wall), float(user) + float(system), int(kib) * 1024), done.stdout


def tracegen_knows(option: str) -> bool:
    """Whether this checkout's `tracegen run` has `option` (it may predate it)."""
    done = subprocess.run(
        [*TRACEGEN, "run", "--help"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    return option in done.stdout


def trace_run(model: str, prompt: Path, out: Path, args: argparse.Namespace) -> Measured:
    cmd = [*TRACEGEN, "run", "--model", model, "--prompt-file", str(prompt), "--out", str(out)]
    cmd += ["--force", "--quiet", *(["--attention", args.attention] if args.attention else [])]
    cmd += ["--activations", args.activations] if args.activations else []
    return timed("tracegen run", cmd)[0]


def bare_forward(model: str, prompt: Path) -> tuple[Measured, float]:
    """The bare forward's process figures, and the forward pass's own seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-forward", str(prompt)]
    measured, stdout = timed("bare forward", [*cmd, "--model", model])
    return measured, json.loads(stdout.strip().splitlines()[-1])["forward_s"]


def bare_forward_child(model: str, prompt: Path) -> int:
    """In the child: load as `tracegen run` does (same cache, same eager attention, same
    dtype), one plain forward, print its seconds as JSON."""
    import torch

    from tracegen import models, progress, runner

    progress.quiet_libraries()
    placement = {"device_map": None, "max_memory": None, "offload_folder": None}
    loaded = runner.load_stage(
        runner.Stages(quiet=True), models.resolve(model), "float32", "cpu", True, placement
    )
    text = runner.read_prompt(prompt)
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        start = time.perf_counter()
        loaded.model(ids)
        seconds = time.perf_counter() - start
    print(json.dumps({"forward_s": seconds, "tokens": ids.shape[1]}))
    return 0


# --- the trace and the site -----------------------------------------------------------------


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def attention_policy(trace: Path) -> str | None:
    """The trace's attention policy if its manifest records one (newer traces may)."""
    manifest = json.loads((trace / "manifest.json").read_text(encoding="utf-8"))
    policy = manifest.get("attention", manifest.get("run", {}).get("attention"))
    if isinstance(policy, dict) and isinstance(policy.get("policy"), str):
        return policy["policy"]  # schema 3: {"policy": "rows:16", "rows": [...]}
    if policy is None or isinstance(policy, str):
        return policy
    return json.dumps(policy, sort_keys=True)  # a structured record, shown as it is


@dataclass
class SiteFigures:
    build: Measured
    page_raw: int
    page_gzip: int
    render_s: float  # every chart drawn, scrolling as a reader (site_budget's measure)
    chart_failures: int
    console_errors: int


def site_of(trace: Path, workdir: Path, raw_trace: bool) -> SiteFigures:
    """Build the site from this one trace under GNU time, then weigh the story page."""
    site = workdir / "site"
    env = None if raw_trace else {"FORWARD_PASS_RAW_TRACE": "false"}
    with serve(site) as url:  # the build names the port it is served on (instant navigation)
        cmd, build_env = mkdocs_build_command(site, trace, site_url=url, env=env)
        build_env["PYTHONPATH"] = child_env()["PYTHONPATH"]
        build = timed("mkdocs build", cmd, build_env)[0]
        try:
            raw, zipped, render, errors = measure_page(url)
        except Exception as error:  # playwright's errors: a page that never finished drawing
            raise CommandFailed(f"story page in chromium: {str(error).splitlines()[0]}") from None
    shutil.rmtree(site)
    return SiteFigures(build, raw, zipped, render["seconds"], render["failed"], len(errors))


# --- one size ---------------------------------------------------------------------------------


@dataclass
class Row:
    size: int  # asked for
    tokens: int  # the prompt's, in the model's tokens
    run: Measured | None = None
    bare: Measured | None = None
    bare_forward_s: float | None = None
    trace_bytes: int | None = None
    attention: str | None = None
    site: SiteFigures | None = None
    error: str | None = None  # the first command that failed, and its last line


Figure = Callable[[Row], float | None]  # one figure of a row; None where not measured


def measure_size(
    row: Row, prompt: Path, workdir: Path, args: argparse.Namespace, with_site: bool
) -> None:
    """Fill `row`: run, bare forward, trace size, site. The trace is removed afterwards (at
    2,048 tokens with full attention it is over a gigabyte)."""
    trace = workdir / "trace"
    try:
        say(f"{row.tokens} tokens: tracegen run")
        row.run = trace_run(args.model, prompt, trace, args)
        row.trace_bytes = folder_bytes(trace)
        row.attention = attention_policy(trace)
        say(f"{row.tokens} tokens: bare forward")
        row.bare, row.bare_forward_s = bare_forward(args.model, prompt)
        if with_site:
            say(f"{row.tokens} tokens: mkdocs build and the story page's weight")
            row.site = site_of(trace, workdir, args.raw_trace)
    except CommandFailed as error:
        row.error = str(error)
    finally:
        shutil.rmtree(trace, ignore_errors=True)


# --- growth -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    a: float
    b: float  # per token
    c: float  # per token squared
    share: float  # c*n^2 / (a + b*n + c*n^2) at `at`
    at: int
    linear: bool
    span: float  # the longest prompt fitted over the shortest


def fit_growth(
    tokens: list[int],
    values: list[float],
    at: int = REFERENCE_TOKENS,
    threshold: float = LINEAR_SHARE,
) -> Growth:
    """Least-squares a + b*n + c*n^2 through (tokens, values), and whether the quadratic
    term stays under `threshold` of the fitted value at `at` tokens. A fitted value that is
    not positive at `at` leaves the share undefined (nan): not called linear."""
    if len(tokens) < 3:
        raise ValueError(f"a quadratic fit needs 3 sizes or more, got {len(tokens)}")
    # n in thousands keeps the normal equations well conditioned; scaled back below.
    n = np.asarray(tokens, dtype=np.float64) / 1000
    design = np.stack([np.ones_like(n), n, n * n], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, np.asarray(values, dtype=np.float64), rcond=None)
    b, c = b / 1000, c / 1e6
    total = a + b * at + c * at * at
    share = c * at * at / total if total > 0 else float("nan")
    span = max(tokens) / min(tokens)
    return Growth(float(a), float(b), float(c), float(share), at, bool(share < threshold), span)


# Each fitted figure: its name, how to read it from a row, its unit, and whether a budget
# asks for linear growth (the run's times are fitted for information only: wall time on a
# shared machine is noisy, CPU time less so).
def over_bare(row: Row) -> float | None:
    """The run's peak RSS beyond the bare forward's: what tracing adds to what the model
    itself holds (its own attention, one layer's N x N matrices, grows with n^2 in both)."""
    if not (row.run and row.bare):
        return None
    return row.run.peak_bytes - row.bare.peak_bytes


FITTED: list[tuple[str, Figure, str, bool]] = [
    ("run peak RSS", lambda r: r.run and r.run.peak_bytes, "B", False),
    ("run peak RSS over the bare forward", over_bare, "B", True),
    ("trace size", lambda r: r.trace_bytes, "B", True),
    ("site build time", lambda r: r.site and r.site.build.wall_s, "s", True),
    ("site build peak RSS", lambda r: r.site and r.site.build.peak_bytes, "B", True),
    ("run wall time", lambda r: r.run and r.run.wall_s, "s", False),
    ("run CPU time", lambda r: r.run and r.run.cpu_s, "s", False),
]


def fits(rows: list[Row]) -> dict[str, Growth | None]:
    """Each FITTED figure's growth over the sizes that have it; None under 3 sizes. The
    share is read at 2,048 tokens, or at the longest prompt if all are shorter: a fit over
    short prompts says nothing about one five times longer."""
    result: dict[str, Growth | None] = {}
    for name, read, _, _ in FITTED:
        measured = [row for row in rows if read(row) is not None]
        tokens, values = [row.tokens for row in measured], [read(row) for row in measured]
        if len(measured) < 3:
            result[name] = None
            continue
        at = min(REFERENCE_TOKENS, max(tokens))
        result[name] = fit_growth(tokens, values, at)
    return result


# --- budgets ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    name: str
    shown: str
    budget: str
    status: str  # PASS, FAIL or n/a

    def line(self) -> str:
        return f"{self.name:<40} {self.shown:>22}   budget {self.budget:>14}   {self.status}"


def near(rows: list[Row], tokens: int, has: Figure) -> Row | None:
    """The row asked for closest to `tokens`, within NEAR of it, that has the figure."""
    close = [r for r in rows if has(r) is not None and abs(r.size - tokens) <= NEAR * tokens]
    return min(close, key=lambda r: abs(r.size - tokens), default=None)


def limit_verdict(
    rows: list[Row],
    name: str,
    tokens: int,
    read: Figure,
    limit: float,
    unit: float,
    label: str,
    strict: bool = False,
) -> Verdict:
    """One figure at about `tokens` tokens against `limit` (`strict`: below, not at)."""
    title = f"{name} at {tokens:,} tokens"
    row = near(rows, tokens, read)
    budget = f"{'<' if strict else '<='} {limit / unit:g} {label}"
    if row is None:
        return Verdict(title, "no such size", budget, "n/a")
    value = read(row)
    ok = value < limit if strict else value <= limit
    shown = f"{value / unit:,.1f} {label} ({row.tokens} tok)"
    return Verdict(title, shown, budget, "PASS" if ok else "FAIL")


def growth_verdict(name: str, growth: Growth | None) -> Verdict:
    title = f"{name} grows linearly"
    budget = f"n^2 < {LINEAR_SHARE:.0%}"
    if growth is None:
        return Verdict(title, "needs 3 sizes", budget, "n/a")
    if growth.span < MIN_SPAN:
        return Verdict(title, f"sizes span {growth.span:.1f}x < {MIN_SPAN:g}x", budget, "n/a")
    shown = f"n^2 {share_text(growth.share)} at {growth.at:,}"
    return Verdict(title, shown, budget, "PASS" if growth.linear else "FAIL")


def verdicts(rows: list[Row], growth: dict[str, Growth | None]) -> list[Verdict]:
    def run_rss(r: Row) -> int | None:
        return r.run and r.run.peak_bytes

    def page(attribute: str) -> Figure:
        return lambda r: r.site and getattr(r.site, attribute)

    found = [
        limit_verdict(rows, "run peak RSS", REFERENCE_TOKENS, run_rss, 3 * GB, GB, "GB"),
        limit_verdict(rows, "trace", 186, lambda r: r.trace_bytes, 40 * MB, MB, "MB", strict=True),
        limit_verdict(rows, "trace", REFERENCE_TOKENS, lambda r: r.trace_bytes, 100 * MB, MB, "MB"),
        *(growth_verdict(name, growth[name]) for name, _, _, budgeted in FITTED if budgeted),
        limit_verdict(
            rows, "story page raw", REFERENCE_TOKENS, page("page_raw"), 1.5 * MB, MB, "MB"
        ),
        limit_verdict(
            rows, "story page gzipped", REFERENCE_TOKENS, page("page_gzip"), 450 * KB, KB, "kB"
        ),
    ]
    for row in rows:  # a size that did not complete, or a chart that did not draw, fails
        if row.error:
            found.append(
                Verdict(f"completes at {row.tokens:,} tokens", "failed", "completes", "FAIL")
            )
        if row.site and (row.site.chart_failures or row.site.console_errors):
            shown = f"{row.site.chart_failures} failed, {row.site.console_errors} errors"
            found.append(
                Verdict(
                    f"charts draw at {row.tokens:,} tokens", shown, "0 failed, 0 errors", "FAIL"
                )
            )
    return found


# --- printing ---------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """One markdown row per size; '-' where a figure was not measured."""
    header = [
        "tokens",
        "run s",
        "run CPU s",
        "run RSS MB",
        "bare s",
        "bare fwd s",
        "bare RSS MB",
        "RSS x bare",
        "trace MB",
        "build s",
        "build RSS MB",
        "page kB",
        "page gz kB",
    ]

    def cell(value: float | None, unit: float = 1.0, digits: int = 1) -> str:
        return "-" if value is None else f"{value / unit:,.{digits}f}"

    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        run, bare, site = r.run, r.bare, r.site
        ratio = run.peak_bytes / bare.peak_bytes if run and bare else None
        cells = [
            str(r.tokens),
            cell(run and run.wall_s),
            cell(run and run.cpu_s),
            cell(run and run.peak_bytes, MB, 0),
            cell(bare and bare.wall_s),
            cell(r.bare_forward_s, digits=2),
            cell(bare and bare.peak_bytes, MB, 0),
            cell(ratio, digits=2),
            cell(r.trace_bytes, MB),
            cell(site and site.build.wall_s),
            cell(site and site.build.peak_bytes, MB, 0),
            cell(site and site.page_raw, KB),
            cell(site and site.page_gzip, KB),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def share_text(share: float) -> str:
    return "undefined (fit <= 0)" if math.isnan(share) else f"{share:.1%}"


def fit_lines(growth: dict[str, Growth | None]) -> list[str]:
    lines = []
    for name, _, unit, _ in FITTED:
        g = growth[name]
        if g is None:
            lines.append(f"{name:<20} not fitted (needs 3 sizes)")
            continue
        kind = "linear" if g.linear else "quadratic"
        if g.span < MIN_SPAN:
            kind += f" (not judged: the sizes span {g.span:.1f}x, under {MIN_SPAN:g}x)"
        lines.append(
            f"{name:<20} a = {g.a:.3g} {unit}, b = {g.b:.3g} {unit}/token, "
            f"c = {g.c:.3g} {unit}/token^2; n^2 term {share_text(g.share)} of the fit at "
            f"{g.at:,} tokens: {kind}"
        )
    return lines


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="prompt sizes in tokens, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--full-context",
        action="store_true",
        help="add the model's whole context (less the 16 greedy steps)",
    )
    parser.add_argument("--model", default="default", help="as for tracegen run")
    parser.add_argument(
        "--attention", metavar="POLICY", help="passed to tracegen run (full, rows:N, topk:K)"
    )
    parser.add_argument(
        "--activations", metavar="POLICY", help="passed to tracegen run (all, rows:N)"
    )
    parser.add_argument(
        "--no-site-above",
        type=int,
        metavar="N",
        help="no site build or page weight for prompts over N tokens",
    )
    parser.add_argument(
        "--no-raw-trace",
        dest="raw_trace",
        action="store_false",
        help="build the site with FORWARD_PASS_RAW_TRACE=false",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw figures")
    parser.add_argument("--bare-forward", type=Path, help=argparse.SUPPRESS)  # the child
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_forward:
        return bare_forward_child(args.model, args.bare_forward)
    if args.attention and not tracegen_knows("--attention"):
        print(
            "scale: this checkout's `tracegen run` has no --attention option yet", file=sys.stderr
        )
        return 2
    from tracegen.runner import BUNDLED_PROMPT

    say(f"tokenizer and config of {args.model}")
    tokenizer, context = model_context(args.model)
    sizes = sorted({int(size) for size in args.sizes.split(",") if size.strip()})
    if args.full_context:
        sizes = sorted({*sizes, context - STEP_ALLOWANCE})
    too_long = [size for size in sizes if context and size + STEP_ALLOWANCE > context]
    if too_long:
        print(
            f"scale: {too_long} tokens leave no room for {STEP_ALLOWANCE} greedy steps in "
            f"the model's context of {context}",
            file=sys.stderr,
        )
        return 2

    pairs, question = story_parts(BUNDLED_PROMPT.read_text(encoding="utf-8"))

    def count(text: str) -> int:  # as `tracegen run` counts (runner.tokenize_stage)
        return len(tokenizer(text)["input_ids"])

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for size in sizes:
            text, tokens = longest_prompt(pairs, question, size, count)
            prompt = Path(tmp) / f"prompt-{size}.txt"
            prompt.write_text(text, encoding="utf-8")
            row = Row(size, tokens)
            rows.append(row)
            say(f"size {size}: {tokens} tokens, starting")
            site = args.no_site_above is None or tokens <= args.no_site_above
            measure_size(row, prompt, Path(tmp), args, site)
            outcome = row.error or (
                f"run {row.run.wall_s:.0f} s, {row.run.peak_bytes / MB:.0f} MB peak; "
                f"trace {row.trace_bytes / MB:.1f} MB; attention {row.attention or 'not recorded'}"
            )
            say(f"size {size}: done: {outcome}")

    growth = fits(rows)
    found = verdicts(rows, growth)
    policies = sorted({row.attention or "not recorded" for row in rows if row.run})
    print(
        f"model {args.model}, context {context:,}; tracegen run --attention "
        f"{args.attention or '(not given)'}; attention in the manifests: "
        f"{', '.join(policies) or '-'}"
    )
    print()
    print(table(rows))
    print()
    print("\n".join(fit_lines(growth)))
    print()
    print("\n".join(verdict.line() for verdict in found))
    for row in rows:
        if row.error:
            print(f"failed at {row.tokens} tokens: {row.error}")
    if args.json:
        figures = {
            "model": args.model,
            "context": context,
            "attention_option": args.attention,
            "rows": [asdict(row) for row in rows],
            "fits": {name: g and asdict(g) for name, g in growth.items()},
            "budgets": [asdict(verdict) for verdict in found],
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 1 if any(verdict.status == "FAIL" for verdict in found) else 0


if __name__ == "__main__":
    sys.exit(main())
