"""Shared fixtures: tiny random-weight models built from configs, and traces made from them.

No model hub is reachable in tests. Each tiny model is saved to a temporary folder and loaded
through `from_pretrained(folder)`, the same call a user's hub id takes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# De-quantised GGUF weights go to a cache of the test run's own, never the user's.
os.environ["TRACEGEN_CACHE"] = tempfile.mkdtemp(prefix="tracegen-cache-")

REPO = Path(__file__).resolve().parents[1]
STORY_PROMPT = REPO / "tracegen" / "prompt.txt"
COMMITTED_TRACE = REPO / "traces" / "smollm2-135m-instruct"
FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma3")


def build_tokenizer(folder: Path):
    """A small byte-level BPE trained on the story's prompt, saved as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([STORY_PROMPT.read_text(encoding="utf-8")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(folder)
    return fast


# Older test names for the cases of tests/tiny_families.py.
ALIASES = {"gpt_neox": "gpt-neox", "gemma3": "gemma3-sliding-qknorm"}


def tiny_config(family: str, vocab_size: int, max_context: int = 512):
    """A random-weight model of one case of tests/tiny_families.py (a family, or an alias)."""
    from .tiny_families import build_config, case_by_name

    return build_config(case_by_name(ALIASES.get(family, family)), vocab_size, max_context)


def absent_from_transformers(family: str) -> str | None:
    """Why the installed transformers cannot build this case (an older release that has no
    such family), or None. bench/version_ends.py runs the tests against old releases too."""
    import transformers

    from .tiny_families import case_by_name

    name = case_by_name(ALIASES.get(family, family)).config_class
    if hasattr(transformers, name):
        return None
    return f"transformers {transformers.__version__} has no {name}"


def save_tiny_model(folder: Path, family: str, max_context: int = 512, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer), max_context))
    # Random init gives near-uniform outputs; larger weights make predictions less tied.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def skip_if_transformers_too_old() -> Iterator[None]:
    """A family declared for a newer transformers than the installed one (Falcon: 5.25) is
    refused on purpose; its cases skip with that one line, which test_families checks."""
    from tracegen.families import TransformersTooOld

    try:
        yield
    except TransformersTooOld as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: (family, max_context, seed) -> folder of a saved tiny model."""
    pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
    made: dict[tuple, Path] = {}

    def make(family: str, max_context: int = 512, seed: int = 0) -> Path:
        key = (family, max_context, seed)
        if (absent := absent_from_transformers(family)) is not None:
            pytest.skip(absent)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{family}-{seed}") / f"tiny-{family}"
            folder.mkdir()
            made[key] = save_tiny_model(folder, family, max_context, seed)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_trace(tiny_model_dir, tmp_path_factory) -> Path:
    """A trace of the story's prompt made by `tracegen run` from a tiny random Llama."""
    from tracegen.runner import run

    out = tmp_path_factory.mktemp("tiny-trace") / "tiny-llama"
    return run(str(tiny_model_dir("llama")), out=out, steps=3, quiet=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for every browser test: Playwright's sync API runs one event
    loop per thread, so a second `sync_playwright()` beside a live one fails."""
    from playwright.sync_api import sync_playwright

    from tests.site_helpers import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def served_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The site built once from the committed trace (or FORWARD_PASS_TRACE when set), served
    on a free port; the build names that port as site_url so instant navigation works.
    Shared by the browser tests (test_site_browser, test_site_access)."""
    from tests.site_helpers import DEFAULT_TRACE, build_site, serve

    site = tmp_path_factory.mktemp("browser") / "site"
    trace = Path(os.environ.get("FORWARD_PASS_TRACE") or DEFAULT_TRACE)
    assert (trace / "manifest.json").is_file(), f"no trace at {trace}"
    with serve(site) as url:
        build_site(site, trace, site_url=url)
        yield site, url


@pytest.fixture(scope="session")
def built_site(served_site: tuple[Path, str]) -> Path:
    return served_site[0]


@pytest.fixture(scope="session")
def base_url(served_site: tuple[Path, str]) -> str:
    return served_site[1]


# `make test-fast` (`pytest -m fast`): every test that needs no real model, no chromium and no
# full site build. These modules build the whole site once (a module or session fixture) or in
# their tests; a test elsewhere that asks for the built site, or is marked, is one too.
SITE_BUILD_MODULES = {"test_site_build", "test_site_models", "test_site_publish",
                      "test_hostile_trace"}  # fmt: skip
SITE_BUILD_FIXTURES = {"served_site", "built_site", "base_url"}
SLOW_MARKERS = ("real_model", "browser", "slow_model")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        builds_site = (
            item.get_closest_marker("site_build")
            or item.module.__name__.rpartition(".")[2] in SITE_BUILD_MODULES
            or SITE_BUILD_FIXTURES & set(getattr(item, "fixturenames", ()))
        )
        if builds_site:
            item.add_marker(pytest.mark.site_build)
        elif not any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.fast)
