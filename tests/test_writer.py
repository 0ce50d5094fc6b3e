"""The writer never loses or duplicates a trace: one run per target (a lock), an old or a new
trace at every moment (killed runs included), no leftovers, symlinked targets followed, and
every filesystem failure in one line before the slow part. NumPy only, except where a test
drives `tracegen run` itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tracegen import TraceError, load_trace, store

from .conftest import REPO
from .test_panels import write_synthetic_trace


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """What `write_trace` takes, from two small synthetic traces that differ (old and new)."""
    return {
        seed: synthetic_parts(
            write_synthetic_trace(tmp_path_factory.mktemp(f"parts{seed}") / "t", seed=seed).path
        )
        for seed in (0, 1)
    }


def write(parts: dict[str, Any], seed: int, out: Path, force: bool = True) -> Path:
    p = parts[seed]
    return store.write_trace(out, p["manifest"], p["layers"], p["derived"], force=force)


def seed_of(path: Path) -> int:
    return int(load_trace(path).model.spec.split(":")[1])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- one run per target -------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from tracegen import store
store.check_target(Path(sys.argv[1]), force=True)
print("held", flush=True)
time.sleep(120)
"""


def hold_target(out: Path) -> subprocess.Popen:
    """Another process that has reserved `out` (as `tracegen run` does before loading)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("force", [False, True])
def test_second_run_fails_at_once_whatever_force_says(parts, tmp_path, force):
    out = tmp_path / "trace"
    holder = hold_target(out)
    try:
        start = time.perf_counter()
        with pytest.raises(TraceError, match=rf"another tracegen run \(pid {holder.pid}\)"):
            write(parts, 0, out, force=force)
        assert time.perf_counter() - start < 5
        assert not out.exists()  # and the holder's reservation is untouched:
        assert f".trace{store.TMP_INFIX}{holder.pid}" in names(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the next run proceeds and removes what the
    # dead run left (its lock file and its temporary folder).
    write(parts, 0, out)
    assert names(tmp_path) == ["trace"]


def test_cli_run_refuses_a_held_target_before_loading(tmp_path, capsys, tiny_model_dir):
    from tracegen import cli

    out = tmp_path / "trace"
    holder = hold_target(out)
    try:
        code = cli.main(["run", "--model", str(tiny_model_dir("llama")), "--out", str(out),
                         "--force"])  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert err.strip().splitlines()[-1].startswith("tracegen: error: another tracegen run")
    assert "[load]" not in err


# --- never missing: kill the writer between its steps --------------------------------------------

KILL = """
import errno, os, shutil, sys
from pathlib import Path
from tracegen import store
from tests.test_writer import synthetic_parts

step, out, fallback = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "fallback"
p = synthetic_parts(Path(sys.argv[4]))

def die(*args, **kwargs):
    os._exit(9)  # like SIGKILL: no except, no finally, no atexit

if fallback:  # a filesystem without an atomic exchange: two renames
    def no_exchange(a, b):
        raise OSError(errno.ENOSYS, "no renameat2")
    store.exchange = no_exchange
if step == "writing":
    real_save, count = store._save, [0]
    def save(*args):
        count[0] += 1
        die() if count[0] == 2 else real_save(*args)
    store._save = save
elif step == "before-swap":
    store.Reservation.publish = die
elif step == "mid-swap":
    real_rename, count = os.rename, [0]
    def rename(a, b):
        real_rename(a, b)
        count[0] += 1
        if count[0] == 1:
            die()
    os.rename = rename
elif step == "after-swap":
    real_rmtree = shutil.rmtree
    def rmtree(path, *args, **kwargs):
        die() if store.TMP_INFIX in str(path) or store.OLD_INFIX in str(path) else None
        real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree
store.write_trace(out, p["manifest"], p["layers"], p["derived"], force=True)
"""


def synthetic_parts(trace_dir: Path) -> dict[str, Any]:
    """For the killed writer: what `write_trace` takes, read back from a trace folder."""
    trace = load_trace(trace_dir)
    return {
        "manifest": trace.manifest,
        "layers": [
            {
                name: store._read(trace.path / store.layer_file(i), name)
                for name in trace.layer_tensors
            }
            for i in range(trace.n_layers)
        ],
        "derived": {
            name: trace.derived(name) for name in (*store.DERIVED_TENSORS, *store.TIMING_SERIES)
        },
    }


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
@pytest.mark.parametrize("step", ["writing", "before-swap", "mid-swap", "after-swap"])
def test_killed_writer_leaves_a_trace(parts, tmp_path, step, mode):
    out = tmp_path / "trace"
    write(parts, 0, out)
    new = write(parts, 1, tmp_path / "source" / "new")  # what the killed run writes
    if mode == "exchange" and step == "mid-swap":
        pytest.skip("an exchange is one step: there is no middle")
    done = subprocess.run(
        [sys.executable, "-c", KILL, step, str(out), mode, str(new)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 9, done.stderr
    # Whatever the moment, the reader finds a whole trace: the old one, or the new one once
    # it was swapped in (restored from beside the target if the kill fell between renames).
    expected = 1 if step == "after-swap" else 0
    assert seed_of(out) == expected
    # The next run removes what the killed one left, and leaves nothing but its trace.
    write(parts, 0, out)
    assert names(tmp_path) == ["source", "trace"]
    assert seed_of(out) == 0


def test_interrupted_rename_restores_the_old_trace(parts, tmp_path, monkeypatch):
    """Ctrl-C between the two renames of the fallback: the old trace goes back at once."""
    out = write(parts, 0, tmp_path / "trace")
    monkeypatch.setattr(store, "exchange", _no_exchange)
    real_rename = os.rename

    def rename(a, b):
        if store.TMP_INFIX in str(a):
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write(parts, 1, out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert seed_of(out) == 0
    assert names(tmp_path) == ["trace"]


def _no_exchange(a: Path, b: Path) -> None:
    import errno

    raise OSError(errno.ENOSYS, "no renameat2")


def test_exchange_swaps_in_one_step(parts, tmp_path, monkeypatch):
    """With the exchange, the target path never stops naming a trace: no rename of the
    target happens at all."""
    out = write(parts, 0, tmp_path / "trace")
    renamed: list[tuple[str, str]] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renamed.append((a, b)), real_rename(a, b)))
    write(parts, 1, out)
    assert renamed == []
    assert seed_of(out) == 1


# --- symlinks, names, permissions -----------------------------------------------------------


def test_symlinked_out_is_followed_without_strays(parts, tmp_path):
    real = write(parts, 0, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    write(parts, 1, link)
    assert link.is_symlink() and link.resolve() == real
    assert seed_of(real) == 1
    assert names(tmp_path) == ["link", "real"]


def test_dangling_symlink_out_creates_its_target(parts, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "made")
    write(parts, 0, link, force=False)
    assert seed_of(tmp_path / "made") == 0
    assert names(tmp_path) == ["link", "made"]


def test_name_too_long_fails_before_anything_is_made(parts, tmp_path):
    out = tmp_path / "deeper" / ("x" * 250)
    with pytest.raises(TraceError, match="limit of 255 bytes"):
        store.check_target(out, force=False)
    assert names(tmp_path) == []


def test_cli_name_too_long_fails_before_loading(tmp_path, capsys, tiny_model_dir):
    from tracegen import cli

    out = tmp_path / ("y" * 250)
    code = cli.main(["run", "--model", str(tiny_model_dir("llama")), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "[load]" not in err
    assert err.strip().splitlines()[-1].startswith("tracegen: error: cannot create")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent(parts, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(TraceError, match="is not writable"):
            write(parts, 0, parent / "trace")
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("code", ["EROFS", "EACCES", "ENOSPC"])
def test_temporary_folder_cannot_be_made(parts, tmp_path, monkeypatch, code):
    """A read-only filesystem, a permission denied (also to root, on some mounts) or a full
    disk when the temporary folder is made: one line, at reservation, nothing left."""
    import errno

    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if store.TMP_INFIX in self.name:
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(TraceError, match=f"cannot write .*: {os.strerror(getattr(errno, code))}"):
        store.check_target(tmp_path / "trace", force=False)
    assert names(tmp_path) == []


def test_lock_file_cannot_be_made(parts, tmp_path, monkeypatch):
    import errno

    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(store.LOCK_SUFFIX):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(TraceError, match="cannot create .*trace.lock: Read-only file system"):
        store.check_target(tmp_path / "trace", force=False)


def test_reader_waits_for_a_live_writer_mid_swap(parts, tmp_path):
    """A target missing with a previous trace beside it, while a live run holds the lock:
    the reader says so in one line instead of touching the live run's files."""
    out = write(parts, 0, tmp_path / "trace")
    holder = hold_target(out)
    try:
        out.rename(tmp_path / f".trace{store.OLD_INFIX}{holder.pid}")
        with pytest.raises(TraceError, match="being replaced by a tracegen run"):
            load_trace(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert seed_of(out) == 0  # the holder died: the reader restores the trace itself
    assert names(tmp_path) == ["trace"]


def test_lock_without_flock(tmp_path, monkeypatch):
    """Where there is no flock (Windows), creating the lock file is the lock."""
    monkeypatch.setattr(store, "fcntl", None)
    target = tmp_path / "trace"
    held = store.lock_target(target)
    try:
        with pytest.raises(store.TargetBusy, match="remove that file if no run is going"):
            store.lock_target(target)
    finally:
        held.release()
    store.lock_target(target).release()
    assert names(tmp_path) == []
