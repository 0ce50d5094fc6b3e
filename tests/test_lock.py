"""The locks in requirements/ are what the README's commands install: every package pinned
and hashed, the site's lock a torch-free subset of the test lock, both inside the ranges that
pyproject.toml declares, and (under `make test`) exactly what this environment has."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def locked(name: str) -> dict[str, str]:
    """Package -> version of one lock file; fails on an entry without a pin or a hash."""
    text = (LOCKS / name).read_text(encoding="utf-8")
    pins: dict[str, str] = {}
    # One entry: a requirement line, its `\` continuations and hashes, then `# via` comments.
    for entry in re.split(r"\n(?=[^\s#])", text):
        line = entry.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{name}: not pinned with ==: {line.splitlines()[0]}"
        assert "--hash=sha256:" in entry, f"{name}: {match.group(1)} has no hash"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    specs = project["dependencies"] + extras["trace"] + extras["test"]
    return [Requirement(spec) for spec in specs]


def test_every_locked_package_is_pinned_and_hashed() -> None:
    for name in ("site.txt", "test.txt", "models.txt", "lock-tools.txt"):
        assert locked(name), name


def test_the_site_lock_is_the_test_lock_without_torch() -> None:
    site, test = locked("site.txt"), locked("test.txt")
    assert "torch" not in site and "transformers" not in site
    for name, version in site.items():
        assert test.get(name) == version, f"{name}: site.txt {version}, test.txt {test.get(name)}"


def test_the_locks_sit_inside_the_declared_ranges() -> None:
    test, site = locked("test.txt"), locked("site.txt")
    site_names = {canonicalize_name(spec) for spec in ("numpy", "safetensors", "altair",
                  "vl-convert-python", "mkdocs", "mkdocs-material")}  # fmt: skip
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in test, f"{name} is declared in pyproject.toml but not locked"
        version = test[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside pyproject.toml's {requirement.specifier}"
        )
        if name in site_names:
            assert site.get(name) == version, f"{name} missing from site.txt"


def test_the_lock_takes_the_cpu_build_of_torch() -> None:
    assert locked("test.txt")["torch"].endswith("+cpu")


def test_the_makefile_installs_only_from_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    install = re.search(r"^INSTALL := (.*)$", makefile, re.MULTILINE)
    assert install and "--require-hashes" in install.group(1)
    project = re.search(r"^INSTALL_PROJECT := (.*)$", makefile, re.MULTILINE)
    assert project and project.group(1).endswith("--no-deps --no-build-isolation -e .")
    commands = [
        line.strip().replace("$(INSTALL)", install.group(1))
        for line in makefile.splitlines()
        if line.startswith("\t") and ("pip install" in line or "$(INSTALL)" in line)
    ]
    assert len(commands) >= 4, commands
    for command in commands:
        assert "--require-hashes" in command and " -r requirements/" in command, command


def test_this_environment_is_the_lock() -> None:
    """Under `make test` every locked package is installed at its locked version. Run in
    another environment (a user's own venv), this says so and skips."""
    pins = {**locked("test.txt"), **locked("models.txt")}
    different = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            different[name] = (version, installed)
    if different and metadata.version("transformers") != pins["transformers"]:
        pytest.skip(f"not the locked environment: {len(different)} packages differ")
    assert not different, f"locked vs installed: {different}"
