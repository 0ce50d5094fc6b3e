"""Each panel's words come from its facts alone: singular and plural agree with the counts
for 0, 1 and 2 of everything a caption counts, and the chart whose one value dwarfs the rest
(KL at the embeddings) stays readable."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest

from tests.test_panels import write_synthetic_trace
from tracegen.panels import DEFINITIONS, build_panel

# Nouns the captions count (singular forms).
NOUNS = (
    "head",
    "layer",
    "token",
    "step",
    "module",
    "position",
    "block",
    "tensor",
    "parameter",
)
_NOUN = "(?:" + "|".join(NOUNS) + ")"
_WORD = r"(?:[\w/-]+ )?"  # one adjective may stand between ("1 dropout module")
WRONG = [
    (re.compile(rf"(?<![\d.,])\b1 {_WORD}{_NOUN}s\b"), "a plural after 1"),
    # (a noun may stand as an adjective before a plural one: "2 parameter tensors")
    (
        re.compile(rf"(?<![\d.,])\b(?:0|2) {_WORD}{_NOUN}\b(?!s)(?! {_NOUN}s\b)"),
        "a singular after 0 or 2",
    ),
    (re.compile(rf"\b1 {_WORD}{_NOUN} (?:give|put|keep|are)\b"), "a plural verb after 1"),
    (re.compile(r"\b1 of [\d,]+ heads (?:give|put)\b"), "a plural verb after 1 of N"),
    (re.compile(r"\b1 are\b"), "'1 are'"),
]


# One count each panel states, as its noun: the test checks that the number it was given is
# the number said (so a caption that dropped its counts would not pass by saying nothing).
STATED = {
    "intro": "layer",
    "p1": "block",
    "p2": "block",
    "p3": "token",
    "p4": "head",
    "p6": "traced position",
    "p8": "token",
    "p9": "dropout module",
    "p10": "generated step",
}


def _text(words: Any) -> str:
    html = " ".join([words.caption, *words.alts])
    return re.sub(r"<[^>]+>", "", html).replace("&times;", "x")


def _with_counts(facts: Any, n: int) -> Any:
    """The facts with every count a caption states set to n (arrays cut to match)."""
    changes: dict[str, Any] = {}
    names = {field.name for field in dataclasses.fields(facts)}
    for name in (
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "n_prompt",
        "n_generated",
        "n_positions",
        "end_heads",
        "previous_heads",
        "induction_heads",
        "sink_heads",
        "reading_heads",
        "start_keys",
        "dropout_modules_training",
        "params_requiring_grad",
    ):
        if name in names:
            changes[name] = n
    if "grad_enabled" in names:
        changes["grad_enabled"] = False  # the requires-grad count is said only then
    if "generated" in names:
        changes["generated"] = tuple(" x" for _ in range(n))
    if "chosen" in names and "entropy" in names:  # p10: one column per step
        changes["chosen"] = tuple(" x" for _ in range(n))
        changes["entropy"] = facts.entropy[:, :n]
        changes["highest_step"] = changes["lowest_step"] = 0
    if "n_all" in dir(facts) and "n_layers" in changes:  # layers x heads: keep n in all
        changes["n_heads"] = 1
    return dataclasses.replace(facts, **changes)


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> dict[str, Any]:
    trace = write_synthetic_trace(tmp_path_factory.mktemp("words") / "t")
    return {d.key: d.measure(trace) for d in DEFINITIONS}


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("key", [d.key for d in DEFINITIONS])
def test_counts_agree_in_number(facts, key, n):
    definition = next(d for d in DEFINITIONS if d.key == key)
    changed = _with_counts(facts[key], n)
    text = _text(definition.words(changed))
    for pattern, what in WRONG:
        match = pattern.search(text)
        assert not match, f"{key}, n={n}: {what}: …{text[max(match.start() - 60, 0) :][:160]}…"
    if key in STATED:  # the count this panel states is the one it was given
        noun = STATED[key] if n == 1 else STATED[key] + "s"
        assert re.search(rf"\b{n} {noun}\b", text), (key, n, text)


def test_the_checker_catches_what_it_should():
    """The patterns above are what the test relies on: each flags its mistake."""
    bad = [
        "1 heads give the previous token",
        "2 key/value head, width",
        "0 dropout module active",
        "1 of 72 heads put at least",
        "1 are previous-token heads",
    ]
    good = ["1 head gives", "2 key/value heads, width", "1 of 72 heads puts", "layer 2, head 3"]
    assert all(any(p.search(s) for p, _ in WRONG) for s in bad)
    assert not any(p.search(s) for p, _ in WRONG for s in good)


def test_the_heads_caption_names_one_head_in_the_singular(facts):
    definition = next(d for d in DEFINITIONS if d.key == "p4")
    one = dataclasses.replace(facts["p4"], previous_heads=1, induction_heads=1)
    caption = definition.words(one).caption
    assert "Previous token: 1 head gives the previous token at least 50% of its attention" in (
        caption
    )
    assert "Induction: 1 head puts at least" in caption


def _views(spec: Any) -> list[dict]:
    if isinstance(spec, dict):
        found = [spec] if "mark" in spec else []
        return found + [v for value in spec.values() for v in _views(value)]
    if isinstance(spec, list):
        return [v for value in spec for v in _views(value)]
    return []


def test_kl_at_the_embeddings_does_not_flatten_the_rest(tmp_path):
    """One huge KL at depth 0 (Gemma's embeddings: hundreds of nats) against single digits
    above: the KL curve uses a symmetric log scale, which keeps zero (the output's KL) and
    spreads the small values over the chart."""
    from tracegen.panels import lens

    trace = write_synthetic_trace(tmp_path / "kl")
    panel = build_panel(lens.PANEL, trace)
    kl_views = [
        v
        for v in _views(panel.charts[0].spec)
        if v.get("encoding", {}).get("y", {}).get("field") == "kl"
    ]
    assert kl_views
    scale = kl_views[0]["encoding"]["y"].get("scale", {})
    assert scale.get("type") == "symlog", scale
    # The point of it: on symlog a 5-nat KL sits well off the floor of a 465-nat axis,
    # where a linear axis puts it at 1% of the height.
    symlog = np.log1p
    assert symlog(5.0) / symlog(465.0) > 0.25 > 5.0 / 465.0
