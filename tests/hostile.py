"""A hostile trace: the committed trace with every string of its manifest, its prompt and its
token strings replaced by text that would run script, close containers or make links if it
reached a page unescaped. Its tensor files are symlinks to the committed ones (unchanged, so
their checksums hold); only the JSON is new. Nothing here ships in the package."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tests.site_helpers import DEFAULT_TRACE

# Each would do something if it were markup, Markdown or a template: run script, end a
# <noscript>, end a code fence or span, make a javascript: link, be evaluated by Jinja, reverse
# the page (U+202E), or ring the terminal. The emoji and the ampersands check that text that
# is not an attack comes through unchanged too.
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "</noscript><svg onload=alert(3)>",
    "\n```\n",
    "``",
    "[x](javascript:alert(4))",
    "{{ config.site_name }}",
    "{% raw %}",
    "\u202eevil",
    "🦶👁️",
    "bell\x07esc\x1b[31m",
    "| a | b |",
    "&amp; &lt;",
    "**bold** _it_",
    "<!-- c -->",
    "'\"`",
    "<a href=javascript:alert(5)>x</a>",
]
# What a reader must see verbatim somewhere on the site (control characters are shown as
# their Unicode pictures, so the bell line is looked for in that form).
VISIBLE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "</noscript><svg onload=alert(3)>",
    "[x](javascript:alert(4))",
    "{{ config.site_name }}",
    "{% raw %}",
    "\u202eevil",
    "🦶👁️",
    "bell\u2407esc\u241b[31m",
    "| a | b |",
    "&amp; &lt;",
    "**bold** _it_",
    "<!-- c -->",
    "<a href=javascript:alert(5)>x</a>",
]


def hostile(index: int) -> str:
    return HOSTILE[index % len(HOSTILE)]


def hostile_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    m = copy.deepcopy(manifest)
    model = m["model"]
    for index, key in enumerate(
        ("spec", "source", "source_kind", "gguf_file", "slug", "architecture", "model_type",
         "family", "dtype", "final_norm")
    ):  # fmt: skip
        model[key] = hostile(index) + " " + str(model[key])
    for entry in model["files"]:
        entry["name"] = hostile(1) + entry["name"]
    tokenizer = m["tokenizer"]
    tokenizer.update(
        {"class": hostile(0), "bos_token": hostile(2), "eos_token": hostile(6)}
    )  # fmt: skip

    tokens = m["tokens"]
    n_prompt = tokens["n_prompt"]
    strings = list(tokens["strings"])
    # The prompt's first tokens become the hostile strings (the rest keep the story's Q/A
    # lines), and the prompt text is what its tokens spell.
    for index in range(len(HOSTILE)):
        strings[1 + index] = HOSTILE[index]
    generated = [hostile(index + 3) for index in range(len(tokens["generated_ids"]))]
    strings[n_prompt:] = generated[: len(strings) - n_prompt]
    tokens.update(
        strings=strings,
        generated_strings=generated,
        pieces=[hostile(index) for index in range(len(strings))],
        stop_reason=hostile(7),
    )
    text = "".join(strings[:n_prompt])
    m["prompt"].update(
        text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), file=hostile(4)
    )  # fmt: skip
    m["vocabulary"] = {
        key: hostile(index) + value for index, (key, value) in enumerate(m["vocabulary"].items())
    }

    derived = m["derived"]
    for index, entry in enumerate(derived["watched"]):
        entry["text"] = hostile(index) + entry["text"]
    derived["attribution_components"] = [
        f"{hostile(index)} {name}" for index, name in enumerate(derived["attribution_components"])
    ]
    derived["flops_components"] = [
        f"{hostile(index)} {name}" for index, name in enumerate(derived["flops_components"])
    ]
    derived["lens_entropy_unit"] = hostile(5)
    m["run"].update(device=hostile(0), dtype=hostile(1))
    m["libraries"] = {name: hostile(index) for index, name in enumerate(m["libraries"])}
    m["libraries"][hostile(2)] = hostile(3)
    # A section no version of tracegen writes, named and filled with hostile text.
    m[hostile(0)] = {hostile(1): hostile(3), "list": [hostile(5), hostile(6)]}
    return m


def write_hostile_trace(folder: Path) -> Path:
    """The hostile trace at `folder` (created)."""
    folder.mkdir(parents=True)
    for path in DEFAULT_TRACE.iterdir():
        if path.suffix != ".json":
            (folder / path.name).symlink_to(path)
    shutil.copy(DEFAULT_TRACE / "timings.json", folder / "timings.json")
    manifest = json.loads((DEFAULT_TRACE / "manifest.json").read_text(encoding="utf-8"))
    text = json.dumps(hostile_manifest(manifest), ensure_ascii=False, indent=1)
    (folder / "manifest.json").write_text(text, encoding="utf-8")
    return folder
