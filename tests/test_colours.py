"""The colour language (tracegen/colours.py): one colour per meaning, labels read as the
panels write them, and every chart the panels emit speaking it."""

from __future__ import annotations

from tracegen import colours


def test_each_colour_has_one_meaning() -> None:
    assert len(set(colours.MEANINGS.values())) == len(colours.MEANINGS)
    assert set(colours.RESERVED) <= set(colours.MEANINGS)


def test_labels_as_the_panels_write_them() -> None:
    expected = {
        "the narrator's bet": "narrator",
        "␣two (the bet)": "narrator",
        "GPT-3 (the story)": "narrator",
        "␣four (chosen)": "model",
        "the model's top choices": "model",
        "top-1 equals the output's top-1": "model",
        "a correct answer": "correct",
        "␣zero": "correct",
        "attn": "attention",
        "attention projections (q, k, v, o)": "attention",
        "attention scores and mixing": "attention scores",
        "MLP": "mlp",
        "embed": "vocabulary",
        "unembedding": "vocabulary",
        "another count": "rest",
        "␣three": "rest",
    }
    assert {label: colours.meaning_of(label) for label in expected} == expected
    assert colours.meaning_of("smollm2", this_model="smollm2") == "model"
    assert colours.meaning_of("12.5%") is None


def test_panels_colour_scale_takes_the_languages_colours() -> None:
    """The panels' scale helper: each label its meaning's colour; a label without one (a
    trace's own component name) is grey, "rest"."""
    from tracegen.panels.style import colour_scale

    assert colour_scale(["MLP", "embed", "␣zero"]) == {
        "domain": ["MLP", "embed", "␣zero"],
        "range": [
            colours.colour_of("mlp"),
            colours.colour_of("vocabulary"),
            colours.colour_of("correct"),
        ],
    }
    assert colour_scale(["MLP", "12.5%"])["range"] == [
        colours.colour_of("mlp"),
        colours.colour_of("rest"),
    ]


def panel_specs() -> list[dict]:
    """Every chart spec the panels emit for the committed traces, as they emit it (nothing
    rewrites their colours afterwards: the site draws these specs)."""
    from tests.site_helpers import REPO
    from tracegen.panels import build_panels
    from tracegen.store import load_trace

    specs = []
    for slug in ("smollm2-135m-instruct", "gemma-3-270m"):
        for panel in build_panels(load_trace(REPO / "traces" / slug)):
            specs += [chart.spec for chart in panel.charts]
    return specs


def test_no_chart_uses_one_colour_for_two_meanings() -> None:
    """The colour language on every chart the panels emit (drawn at build time or in the
    browser alike): every colour a categorical scale gives names one meaning on its chart;
    each meaning has the one colour of the mapping on every chart; the colours of the
    argument (the model, the narrator, a correct answer) mean nothing else anywhere;
    sequential scales are never reversed."""
    specs = panel_specs()
    uses_by_chart = [colours.colour_uses(spec) for spec in specs]
    assert sum(1 for uses in uses_by_chart if uses) >= 10, "expected several categorical charts"
    for index, uses in enumerate(uses_by_chart):
        meanings: dict[str, set[str | None]] = {}
        for colour, label, meaning in uses:
            assert meaning is not None, f"chart {index}: {label!r} has no meaning in colours.py"
            assert colour == colours.colour_of(meaning), (index, label, colour, meaning)
            meanings.setdefault(colour, set()).add(meaning)
        assert all(len(m) == 1 for m in meanings.values()), (index, meanings)
    reserved = {colours.colour_of(m): m for m in colours.RESERVED}
    for uses in uses_by_chart:
        for colour, label, meaning in uses:
            assert reserved.get(colour, meaning) == meaning, (label, colour, meaning)
    reversed_ramps = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("scheme") == colours.SEQUENTIAL and node.get("reverse"):
                reversed_ramps.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(specs)
    assert reversed_ramps == []
