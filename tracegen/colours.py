"""The site's colour language: one mapping from what a colour means to the colour, for every
chart.

Categories get Okabe-Ito hues (colour-blind safe, and each reads on the light and the dark
page). The three colours of the story's argument are reserved: blue is always the model (its
choice, its output, the model itself), vermillion always the narrator (the bet, the story's
GPT-3), bluish green always a correct answer. Sequential values use viridis in one direction
only: high is bright (yellow), low is dark.

Panels take their colours from here when they build their specs: a category's colour is
that of what its label means (`meaning_of`, through `scale_for` and the panels' own
`panels.style.colour_scale`); sequential scales use `SEQUENTIAL`, never reversed. Nothing
rewrites a spec afterwards. `colour_uses` lists what a spec says, for the test that no chart
uses one colour for two meanings.
"""

from __future__ import annotations

import json
import re
from typing import Any

# meaning -> colour. Each meaning has one colour, and each colour one meaning.
MEANINGS: dict[str, str] = {
    "model": "#0072B2",  # blue: the model, its choice, its final output
    "narrator": "#D55E00",  # vermillion: the narrator's bet, the story's GPT-3
    "correct": "#009E73",  # bluish green: a correct answer ("no", "zero", "none")
    "attention": "#56B4E9",  # sky blue: attention (its projections, its writes)
    "attention scores": "#F0E442",  # yellow: the attention scores and their mixing
    "mlp": "#E69F00",  # orange: the MLP
    "vocabulary": "#CC79A7",  # reddish purple: embedding and unembedding, the input token
    "rest": "#999999",  # grey: anything else (another count word, other components)
}
# The colours of the story's argument: no other meaning may take them, on any chart.
RESERVED = ("model", "narrator", "correct")

SEQUENTIAL = "viridis"  # high = bright; never reversed

# Words the story argues about (token text without its leading space glyph).
CORRECT_WORDS = frozenset({"no", "zero", "none"})
BET_WORDS = frozenset({"two"})

# label patterns -> meaning, tried in order (lower-cased label, space glyphs removed).
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bbet\b|gpt-3|the story\b|\bof 96\b"), "narrator"),
    (re.compile(r"\bchosen\b|model's|\boutput's\b"), "model"),
    (re.compile(r"\bcorrect\b"), "correct"),
    (re.compile(r"attention scores|\bscores and mixing\b"), "attention scores"),
    (re.compile(r"^attn\b|^attention\b"), "attention"),
    (re.compile(r"^mlp\b"), "mlp"),
    (re.compile(r"^embed|^unembed|bigram"), "vocabulary"),
    (re.compile(r"^other\b|^another\b"), "rest"),
]


def colour_of(meaning: str) -> str:
    """The colour of a meaning; KeyError for a meaning the language does not have."""
    return MEANINGS[meaning]


def meaning_of(label: str, this_model: str | None = None) -> str | None:
    """What a category label means, or None when the language has no word for it."""
    text = label.replace("␣", " ").strip().lower()
    if this_model is not None and text == this_model.lower():
        return "model"
    for pattern, meaning in _RULES:
        if pattern.search(text):
            return meaning
    word = text.split(" ")[0]
    if word in CORRECT_WORDS:
        return "correct"
    if word in BET_WORDS:
        return "narrator"
    if re.fullmatch(r"[a-z]+", word):  # another count word ("one", "three", ...)
        return "rest"
    return None


def scale_for(labels: list[str], this_model: str | None = None) -> dict[str, Any] | None:
    """A Vega-Lite scale (domain and range) giving each label its meaning's colour, or None if
    a label has no meaning. Labels of one meaning share its colour ("no", "zero" and "none"
    are all correct answers); the chart tells them apart otherwise (dashes, tooltips)."""
    meanings = [meaning_of(label, this_model) for label in labels]
    if any(m is None for m in meanings):
        return None
    return {"domain": list(labels), "range": [MEANINGS[m] for m in meanings if m]}


# --- specs as built by the panels ---------------------------------------------------------------

_COLOUR_CHANNELS = ("color", "fill", "stroke")


def _this_model(spec: Any) -> str | None:
    """The traced model's name in a chart that compares models (a `datum.model === "..."`)."""
    if isinstance(spec, str):
        match = re.search(r'datum\.model === "((?:[^"\\]|\\.)*)"', spec)
        return json.loads(f'"{match.group(1)}"') if match else None
    items = spec.values() if isinstance(spec, dict) else spec if isinstance(spec, list) else ()
    for item in items:
        if (found := _this_model(item)) is not None:
            return found
    return None


def colour_uses(spec: Any) -> list[tuple[str, str, str | None]]:
    """(colour, label, meaning) for every category of every categorical colour scale with an
    explicit domain and range in a spec, as the site serves it."""
    this_model = _this_model(spec) if isinstance(spec, dict) else None
    uses: list[tuple[str, str, str | None]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("data", "datasets"):
                    continue
                if key in _COLOUR_CHANNELS and isinstance(value, dict):
                    scale = value.get("scale")
                    if isinstance(scale, dict) and value.get("type") in ("nominal", "ordinal"):
                        domain, range_ = scale.get("domain"), scale.get("range")
                        if isinstance(domain, list) and isinstance(range_, list):
                            for label, colour in zip(domain, range_, strict=False):
                                if isinstance(colour, str):
                                    meaning = meaning_of(str(label), this_model)
                                    uses.append((colour.upper(), str(label), meaning))
                walk(value)

    walk(spec)
    return uses
