"""The colour language itself (tracegen/colours.py): one colour per meaning, labels read
as the panels write them, and scales rewritten without touching what they do not know."""

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


def test_recolour_gives_categories_their_meaning_and_leaves_the_rest() -> None:
    spec = {
        "layer": [
            {
                "transform": [{"calculate": 'datum.c == "m" ? "MLP" : "embed"', "as": "k"}],
                "encoding": {
                    "color": {"field": "k", "type": "nominal", "scale": {"scheme": "dark2"}}
                },
            },
            {
                "encoding": {
                    "color": {"field": "k", "type": "nominal", "scale": {"range": ["#f00"]}}
                }
            },
            {
                "encoding": {
                    "color": {
                        "field": "e",
                        "type": "quantitative",
                        "scale": {"scheme": "viridis", "reverse": True},
                    }
                }
            },
            {
                "encoding": {
                    "color": {"field": "z", "type": "nominal", "scale": {"range": ["#f00"]}}
                }
            },
        ]
    }
    out = colours.recolour(spec)
    for layer in out["layer"][:2]:  # a label one layer computes names its sibling's category
        assert layer["encoding"]["color"]["scale"] == {
            "domain": ["MLP", "embed"],
            "range": [colours.colour_of("mlp"), colours.colour_of("vocabulary")],
        }
    assert out["layer"][2]["encoding"]["color"]["scale"] == {"scheme": "viridis"}
    assert out["layer"][3] == spec["layer"][3]  # no labels known: left as it is
    assert (
        colours.colour_uses(out)
        == [
            ("#E69F00", "MLP", "mlp"),
            ("#CC79A7", "embed", "vocabulary"),
        ]
        * 2
    )
