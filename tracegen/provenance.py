"""Where a trace came from and how to make it again, from its own manifest: the words of
"How this was made" for each model. Everything here is portable: no absolute local path of
the machine that traced it reaches a page.

A trace's manifest records the model spec as typed (`tracegen run --model SPEC`), which may be
an absolute path; only its file or folder name is then shown, since that path means nothing
on another machine.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from .policy import DEFAULT_ACTIVATIONS, DEFAULT_POLICY
from .store import Trace


@dataclass(frozen=True)
class Provenance:
    """kind:       "bundled", "gguf", "folder" or "hub" (the manifest's source_kind).
    spec:       the --model argument, portable (a relative path, a file name, a hub id).
    weights:    the weight file (GGUF) or folder name, or the hub id.
    sha256:     of the weight file, where there is one file.
    package:    the Python package that ships the weights ("bundled"), else "".
    out:        where the trace lives: relative to the project when it is inside it, else
                the folder as the build was given it (`inside` False).
    inside:     the trace's folder is inside the project.
    committed:  True: the trace's files are committed to the project's git repository, as
                they are on disk; False: they are not (or have changed since); None: no git
                checkout to ask.
    command:    the exact command that regenerates this trace (from the project's root).
    """

    kind: str
    spec: str
    weights: str
    sha256: str
    package: str
    out: str
    inside: bool
    committed: bool | None
    command: str


def portable(path_text: str, keep_name: bool = True) -> str:
    """A path as it can be typed on another machine: relative paths as they are, absolute
    ones (or ~) as their last part only."""
    if path_text.startswith("~") or Path(path_text).is_absolute() or ":\\" in path_text:
        return PurePosixPath(path_text.replace("\\", "/")).name if keep_name else ""
    return path_text


def relative_out(trace_path: Path, root: Path, given: str | None = None) -> tuple[str, bool]:
    """Where the trace lives, for `--out`, and whether that is inside the project: relative
    to the project root as POSIX when it is inside, else the folder as it was given (or its
    absolute path): never a made-up `traces/<name>`."""
    try:
        return trace_path.resolve().relative_to(root.resolve()).as_posix(), True
    except ValueError:
        return given or str(trace_path), False


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None


def is_committed(trace_path: Path, root: Path) -> bool | None:
    """Whether the trace's files are committed to the project's git repository as they are on
    disk: its manifest is in HEAD and `git status` reports nothing under its folder (no
    change, no untracked file). None where the project is not a git checkout (a copy, an
    unpacked archive) or git cannot be run."""
    found = _git(root, "rev-parse", "--show-toplevel")
    if found is None or found.returncode != 0:
        return None
    top = Path(found.stdout.decode().strip()).resolve()
    try:
        folder = trace_path.resolve().relative_to(top).as_posix()
    except ValueError:  # outside the repository
        return False
    tracked = _git(top, "ls-tree", "--name-only", "HEAD", "--", f"{folder}/manifest.json")
    if tracked is None or tracked.returncode != 0 or not tracked.stdout.strip():
        return False  # not in HEAD, or no commit yet
    changes = _git(top, "status", "--porcelain", "--untracked-files=all", "--", folder)
    return changes is not None and changes.returncode == 0 and not changes.stdout.strip()


def default_prompt_sha256() -> str:
    """The sha256 of the story's prompt, which `tracegen run` reads when given no other."""
    text = (resources.files("tracegen") / "prompt.txt").read_bytes()
    return hashlib.sha256(text).hexdigest()


def provenance(trace: Trace, trace_path: Path, root: Path, given: str | None = None) -> Provenance:
    """`given`: the trace folder as the build was told it (mkdocs.yml or FORWARD_PASS_TRACE),
    shown for a trace outside the project."""
    model = trace.manifest["model"]
    kind = str(model.get("source_kind") or "")
    spec = portable(str(model.get("spec") or "default"))
    files = model.get("files") or []
    gguf = str(model.get("gguf_file") or "")
    if kind in ("bundled", "gguf") and gguf:
        weights = gguf
    elif kind == "hub":
        weights = str(model.get("source") or spec)
    else:
        weights = portable(str(model.get("source") or spec))
    out, inside = relative_out(trace_path, root, given)
    run = trace.manifest.get("run") or {}
    options = ["--model", spec, "--out", out]
    if isinstance(run.get("steps"), int):
        options += ["--steps", str(run["steps"])]
    if run.get("dtype") and run["dtype"] != "float32":
        options += ["--dtype", str(run["dtype"])]
    if run.get("device") and run["device"] != "cpu":
        options += ["--device", str(run["device"])]
    # What the trace keeps, where it is not what `tracegen run` keeps by default.
    if trace.attention_policy != DEFAULT_POLICY:
        options += ["--attention", trace.attention_policy]
    if trace.activations_policy != DEFAULT_ACTIVATIONS:
        options += ["--activations", trace.activations_policy]
    prompt = trace.manifest.get("prompt") or {}
    if prompt.get("sha256") != default_prompt_sha256():  # another prompt than the story's
        options += ["--prompt-file", portable(str(prompt.get("file") or "prompt.txt"))]
    return Provenance(
        kind=kind,
        spec=spec,
        weights=weights,
        sha256=str(files[0].get("sha256", "")) if len(files) == 1 else "",
        package=str(model.get("source") or "") if kind == "bundled" else "",
        out=out,
        inside=inside,
        committed=is_committed(trace_path, root),
        command=shlex.join(["tracegen", "run", *options, "--force"]),
    )
