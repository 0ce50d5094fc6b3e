"""The declared ranges at both ends: the family, gate and attention-policy tests against the
lowest versions of torch, transformers and accelerate that pyproject.toml allows, and against
the newest the index offers; and the site built with its own dependencies at their lowest
bounds. A check, not a test: exit 1 if any end fails.

    .venv/bin/python bench/version_ends.py [--ends lowest,newest,site] [--pin NAME==VERSION ...]
        [--pytest-args="-x -k llama"]

For each end a fresh venv in .venv-compat/<end>/ gets, in this order:
  1. torch alone at that end (so that torch==2.13.0 takes the CPU wheel this project's
     machines keep; any other torch from the index is a CUDA build, whose nvidia-* packages,
     some GB, come with it: they are not needed on a CPU, but the build does not import
     without them);
  2. `pip install -e ".[trace,test]" -c .venv-compat/<end>.constraints.txt`, the constraints
     pinning the three packages.
Then `pytest tests/test_families.py tests/test_attention_policy.py` runs in it (junit XML at
.venv-compat/<end>/junit.xml, the full output beside it in pytest.txt).

The ends:
  lowest  the oldest final release on the index that each `>=` bound in pyproject.toml's
          trace extra allows (pip picks the newest; here each is pinned with ==);
  newest  nothing pinned: what pip resolves today, under this machine's own constraints
          (/etc/xdg/pip/constraints.txt caps torch at the releases it keeps on disk);
  site    no torch: `pip install .` (as `make site`) with numpy, safetensors, altair,
          vl-convert-python, mkdocs and mkdocs-material at the oldest releases their bounds
          allow, then `mkdocs build --strict` from the committed traces into
          .venv-compat/site/built (its output in .venv-compat/site/mkdocs.txt).
`--pin torch==2.13.0` (repeatable) overrides one package at the ends that run: with it, one
end can be moved through versions one at a time (a bisection of a lower bound; a version below
pyproject.toml's bound cannot be pinned, pip refuses it).

Output: progress as each step starts and ends, then one markdown table per run: the versions
installed at each end, each family case of tests/tiny_families.py (its parity-gate test) as
pass, FAIL or skip (with the reason: a family that end's transformers does not have), and
each end's other tests counted, failures named. Also written to .venv-compat/matrix.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.tiny_families import CASES  # noqa: E402

ROOT = REPO / ".venv-compat"
PINNED = ("torch", "transformers", "accelerate")
# What `pip install .` needs to build the site from committed traces (no torch).
SITE = ("numpy", "safetensors", "altair", "vl-convert-python", "mkdocs", "mkdocs-material")
ENDS = ("lowest", "newest", "site")
TEST_FILES = ("tests/test_families.py", "tests/test_attention_policy.py")
GATE_TEST = "test_family_passes_the_gate"
# Shown for every end: the pins, and what the tests' numbers and the site go through.
SHOWN = (*PINNED, "tokenizers", "huggingface-hub", *SITE)
SITE_BUILD = "site::mkdocs build --strict"


@dataclass
class EndResult:
    end: str
    versions: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # test id -> (state, why)
    error: str = ""  # set when the end could not be installed or run
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.error) or any(s == "FAIL" for s, _ in self.outcomes.values())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def declared_floors(names: tuple[str, ...]) -> dict[str, str]:
    """The `>=` bound of each package in pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    floors = {}
    for name in names:
        match = re.search(rf'"{name}>=([0-9][0-9.]*)', text)
        if not match:
            raise SystemExit(f"version_ends: no {name}>=X in pyproject.toml")
        floors[name] = match.group(1)
    return floors


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def released_versions(pip: Path, name: str) -> list[str]:
    """Final releases of `name` on the index (no pre-releases, no local builds), oldest first."""
    result = subprocess.run(
        [str(pip), "index", "versions", name], capture_output=True, text=True, timeout=300
    )
    match = re.search(r"Available versions: (.*)", result.stdout)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"pip index versions {name} failed: {result.stderr.strip()[-300:]}")
    found = {v for v in match.group(1).split(", ") if re.fullmatch(r"\d+(\.\d+)*", v)}
    return sorted(found, key=_key)


def lowest_allowed(pip: Path, name: str, floor: str) -> str:
    allowed = [v for v in released_versions(pip, name) if _key(v) >= _key(floor)]
    if not allowed:
        raise RuntimeError(f"no release of {name} >= {floor} on the index")
    # 2.1 and 2.1.0 are the same release.
    return allowed[0]


def run_logged(command: list[str], log: Path, timeout: int = 3600) -> int:
    with log.open("a", encoding="utf-8") as out:
        out.write("$ " + shlex.join(command) + "\n")
        out.flush()
        return subprocess.run(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode


def installed_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = '-'\n"
        "print(json.dumps(out))"
    )
    result = subprocess.run(
        [str(python), "-c", code, *SHOWN], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def set_up(end: str, pins: dict[str, str], result: EndResult) -> Path | None:
    """A fresh venv for one end; its python, or None (result.error says why)."""
    venv = ROOT / end
    log = ROOT / f"{end}.install.txt"
    shutil.rmtree(venv, ignore_errors=True)
    log.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    run_logged([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log)
    if end in ("lowest", "site"):
        for name, floor in declared_floors(SITE if end == "site" else PINNED).items():
            pins.setdefault(name, lowest_allowed(pip, name, floor))
    constraints = ROOT / f"{end}.constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    pinned = ", ".join(f"{n}=={v}" for n, v in sorted(pins.items())) or "nothing pinned"
    if end == "site":  # as `make site` installs: the package alone, no torch
        say(f"site: pip install . -c {constraints.relative_to(REPO)}: {pinned}")
        if run_logged([str(pip), "install", "--quiet", "-c", str(constraints), "."], log) != 0:
            result.error = f"pip install failed (see {log.relative_to(REPO)})"
            return None
        result.seconds["install"] = time.monotonic() - started
        return python
    torch = f"torch=={pins['torch']}" if "torch" in pins else "torch"
    say(f"{end}: pip install {torch}" + ("" if pins.get("torch") == "2.13.0" else
        " (a CUDA build from the index brings its nvidia-* packages, some GB)"))  # fmt: skip
    if run_logged([str(pip), "install", "--quiet", torch], log) != 0:
        result.error = f"torch did not install (see {log.relative_to(REPO)})"
        return None
    say(f"{end}: pip install -e .[trace,test] -c {constraints.relative_to(REPO)}: {pinned}")
    command = [str(pip), "install", "--quiet", "-c", str(constraints), "-e", ".[trace,test]"]
    if run_logged(command, log) != 0:
        result.error = f"pip install failed (see {log.relative_to(REPO)})"
        return None
    check = subprocess.run(
        [str(python), "-c", "import torch; a = torch.ones(8, 8); print((a @ a).sum().item())"],
        capture_output=True, text=True,
    )  # fmt: skip
    if check.returncode != 0:
        result.error = "import torch failed: " + check.stderr.strip().splitlines()[-1]
        return None
    result.seconds["install"] = time.monotonic() - started
    return python


def parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    """test id (file::name[param]) -> (pass | FAIL | skip, first line of why)."""
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        test_id = f"{module}::{case.get('name')}"
        state, why = "pass", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state = "FAIL"
                why = (child.get("message") or child.text or "").strip().splitlines()[:1]
                why = why[0] if why else child.tag
                break
            if child.tag == "skipped":
                state, why = "skip", (child.get("message") or "").strip()
        # A teardown error is reported as a second entry of the same test: keep the worst.
        if outcomes.get(test_id, ("pass", ""))[0] != "FAIL":
            outcomes[test_id] = (state, why)
    return outcomes


def run_end(end: str, pins: dict[str, str], pytest_args: list[str]) -> EndResult:
    result = EndResult(end)
    say(f"{end}: setting up .venv-compat/{end}")
    try:
        python = set_up(end, pins, result)
    except (RuntimeError, subprocess.SubprocessError) as error:  # the index, or the venv
        python, result.error = None, str(error)
    if python is None:
        say(f"{end}: {result.error}")
        return result
    result.versions = installed_versions(python)
    say(f"{end}: installed " + ", ".join(f"{n} {v}" for n, v in result.versions.items())
        + f" ({result.seconds['install']:.0f} s)")  # fmt: skip
    if end == "site":
        return build_site(python, result)
    junit = ROOT / end / "junit.xml"
    output = ROOT / end / "pytest.txt"
    command = [str(python), "-m", "pytest", *TEST_FILES, "-q", "-rA", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *pytest_args]  # fmt: skip
    say(f"{end}: {shlex.join(['pytest', *command[3:]])}")
    started = time.monotonic()
    with output.open("w", encoding="utf-8") as out:
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    result.seconds["tests"] = time.monotonic() - started
    lines = output.read_text(encoding="utf-8").strip().splitlines()
    took = result.seconds["tests"]
    say(f"{end}: {lines[-1] if lines else 'no output'} (exit {code}, {took:.0f} s)")
    if not junit.exists():
        result.error = f"pytest wrote no report (exit {code}; see {output.relative_to(REPO)})"
        return result
    result.outcomes = parse_junit(junit)
    if code not in (0, 1) and not result.failed:
        result.error = f"pytest exited {code}"
    return result


def build_site(python: Path, result: EndResult) -> EndResult:
    """`mkdocs build --strict` from the committed traces, into .venv-compat/site/built."""
    output = ROOT / "site" / "mkdocs.txt"
    command = [
        str(python.parent / "mkdocs"),
        "build",
        "--strict",
        "-d",
        str(ROOT / "site" / "built"),
    ]
    say("site: mkdocs build --strict")
    started = time.monotonic()
    with output.open("w", encoding="utf-8") as out:
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    result.seconds["tests"] = time.monotonic() - started
    lines = output.read_text(encoding="utf-8").strip().splitlines()
    last = next((line for line in reversed(lines) if "ERROR" in line or "Error" in line), "")
    result.outcomes[SITE_BUILD] = ("pass", "") if code == 0 else ("FAIL", last or f"exit {code}")
    say(f"site: mkdocs build exit {code} ({result.seconds['tests']:.0f} s)")
    return result


def _reason(why: str) -> str:
    """A failure's first line with the model's class names left out, so that one cause met by
    many families is counted once."""
    pattern = r"\b[A-Z]\w*(ForCausalLM|LMHeadModel|Config|DecoderLayer|Attention|Block)\b"
    return re.sub(pattern, "<class>", why)[:180]


def matrix(results: list[EndResult]) -> str:
    ends = [r.end for r in results]
    lines = ["| | " + " | ".join(ends) + " |", "|---|" + "---|" * len(ends)]
    for name in SHOWN:
        lines.append(f"| {name} | " + " | ".join(r.versions.get(name, "-") for r in results) + " |")
    lines.append("| wall time (install + tests) | " + " | ".join(
        f"{r.seconds.get('install', 0):.0f} s + {r.seconds.get('tests', 0):.0f} s"
        for r in results) + " |")  # fmt: skip
    for case in CASES:
        test_id = f"test_families::{GATE_TEST}[{case.name}]"
        cells = [r.outcomes.get(test_id, ("-", ""))[0] for r in results]
        lines.append(f"| gate: {case.name} | " + " | ".join(cells) + " |")
    cells = [r.outcomes.get(SITE_BUILD, ("-", ""))[0] for r in results]
    lines.append("| mkdocs build --strict | " + " | ".join(cells) + " |")
    for r in results:
        counts = {s: sum(1 for state, _ in r.outcomes.values() if state == s)
                  for s in ("pass", "FAIL", "skip")}  # fmt: skip
        lines += ["", f"{r.end}: {counts['pass']} passed, {counts['FAIL']} failed, "
                  f"{counts['skip']} skipped" + (f"; {r.error}" if r.error else "")]  # fmt: skip
        groups: dict[tuple[str, str], list[str]] = {}
        for test_id, (state, why) in r.outcomes.items():
            if state != "pass":
                groups.setdefault((state, _reason(why)), []).append(test_id.split("::")[1])
        for (state, why), tests in sorted(groups.items(), key=lambda item: -len(item[1])):
            named = ", ".join(tests[:4]) + (f" and {len(tests) - 4} more" if len(tests) > 4 else "")
            lines.append(f"- {state} x{len(tests)}: {why} ({named})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ends", default=",".join(ENDS), help="some of " + ",".join(ENDS))
    parser.add_argument(
        "--pin", action="append", default=[], metavar="NAME==VERSION",
        help=f"override one of {', '.join(PINNED)} at the ends that run",
    )  # fmt: skip
    parser.add_argument("--pytest-args", default="", help="more pytest arguments, e.g. -x")
    args = parser.parse_args(argv)
    ends = [e.strip() for e in args.ends.split(",") if e.strip()]
    if not ends or any(e not in ENDS for e in ends):
        parser.error(f"--ends: some of {', '.join(ENDS)}")
    overrides = {}
    for pin in args.pin:
        name, _, version = pin.partition("==")
        if name not in PINNED or not version:
            parser.error(f"--pin {pin!r}: NAME==VERSION with NAME one of {', '.join(PINNED)}")
        overrides[name] = version
    ROOT.mkdir(exist_ok=True)
    results = [run_end(end, dict(overrides), shlex.split(args.pytest_args)) for end in ends]
    table = matrix(results)
    (ROOT / "matrix.md").write_text(table, encoding="utf-8")
    print(table)
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
