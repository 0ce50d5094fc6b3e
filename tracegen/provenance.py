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

from .store import Trace


@dataclass(frozen=True)
class Provenance:
    """kind:       "bundled", "gguf", "folder" or "hub" (the manifest's source_kind).
    spec:       the --model argument, portable (a relative path, a file name, a hub id).
    weights:    the weight file (GGUF) or folder name, or the hub id.
    sha256:     of the weight file, where there is one file.
    package:    the Python package that ships the weights ("bundled"), else "".
    out:        where the trace lives, relative to the project (never absolute).
    committed:  True: the trace's files are committed to the project's git repository;
                False: they are not; None: no repository to ask.
    command:    the exact command that regenerates this trace (from the project's root).
    """

    kind: str
    spec: str
    weights: str
    sha256: str
    package: str
    out: str
    committed: bool | None
    command: str


def portable(path_text: str, keep_name: bool = True) -> str:
    """A path as it can be typed on another machine: relative paths as they are, absolute
    ones (or ~) as their last part only."""
    if path_text.startswith("~") or Path(path_text).is_absolute() or ":\\" in path_text:
        return PurePosixPath(path_text.replace("\\", "/")).name if keep_name else ""
    return path_text


def relative_out(trace_path: Path, root: Path) -> str:
    """The trace folder relative to the project root, as POSIX; a folder outside the project
    is named `traces/<its name>` (where `tracegen run` would put it)."""
    try:
        return trace_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return f"traces/{trace_path.name}"


def is_committed(trace_path: Path, root: Path) -> bool | None:
    """Whether git tracks the trace's manifest in the project's repository (None: no git)."""
    try:
        result = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "--error-unmatch",
                "--",
                str(trace_path.resolve() / "manifest.json"),
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0 and b"not a git repository" in result.stderr:
        return None
    return result.returncode == 0


def default_prompt_sha256() -> str:
    """The sha256 of the story's prompt, which `tracegen run` reads when given no other."""
    text = (resources.files("tracegen") / "prompt.txt").read_bytes()
    return hashlib.sha256(text).hexdigest()


def provenance(trace: Trace, trace_path: Path, root: Path) -> Provenance:
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
    out = relative_out(trace_path, root)
    run = trace.manifest.get("run") or {}
    options = ["--model", spec, "--out", out]
    if isinstance(run.get("steps"), int):
        options += ["--steps", str(run["steps"])]
    if run.get("dtype") and run["dtype"] != "float32":
        options += ["--dtype", str(run["dtype"])]
    if run.get("device") and run["device"] != "cpu":
        options += ["--device", str(run["device"])]
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
        committed=is_committed(trace_path, root),
        command=shlex.join(["tracegen", "run", *options, "--force"]),
    )
