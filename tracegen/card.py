"""The site's social card: one PNG that link previews (Open Graph, Twitter cards) show, drawn
at build time from the trace. Build-time only: numpy and vl-convert, never torch.

The chart is the logit lens of the model's own answer: for each token it generated after
"A: Your", how likely each depth already thought that token was. It shows, for whatever model
the trace is of, where the answer takes shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracegen.panels.story import step_position
from tracegen.store import Trace
from tracegen.text import visible_controls

# The size link previews crop to (1.91:1); a smaller image is shown as a thumbnail only.
WIDTH, HEIGHT = 1200, 630
INDIGO = "#3f51b5"  # the site's primary colour (mkdocs.yml: palette primary indigo)
TITLE = "Forward Pass, annotated"


def card_facts(trace: Trace) -> dict[str, Any]:
    """What the card shows: each generated token and its lens probability at every depth."""
    probs = trace.derived("lens_target_prob")  # [L+1, N] p(the final token) at each depth
    # Generated token k is predicted at position step_position(k); the last one is never fed
    # back, so only the first N - n_prompt + 1 steps have a traced position.
    steps = min(len(trace.generated_strings), trace.n_positions - trace.n_prompt + 1)
    rows = []
    for step in range(steps):
        column = probs[:, step_position(trace, step)].astype(np.float64)  # [L+1]
        label = f"{step + 1}. {token_label(trace.generated_strings[step])}"
        rows.append({"token": label, "p": np.round(column, 3).tolist()})
    answer = "".join(trace.generated_strings[:steps]).strip()
    return {"rows": rows, "n_layers": trace.n_layers, "model": trace.model.slug, "answer": answer}


def token_label(text: str) -> str:
    """A token as words for a large label. Not the ␣/↵ pictures of the panels: a glyph the
    card's font lacks makes the renderer switch the whole label to another font."""
    if shown := text.strip():
        return f"“{visible_controls(shown)}”"
    return "(newline)" if "\n" in text else "(space)"


def card_alt(trace: Trace) -> str:
    facts = card_facts(trace)
    return (
        f'{TITLE}: for each token {facts["model"]} wrote after "A: Your" '
        f'("{facts["answer"]}"), how probable it was at each of its {facts["n_layers"]} layers.'
    )


def card_spec(trace: Trace) -> dict[str, Any]:
    """A Vega-Lite heatmap, depth across and generated tokens down, sized to the card."""
    facts = card_facts(trace)
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": WIDTH,
        "height": HEIGHT,
        "autosize": {"type": "fit", "contains": "padding"},
        "padding": {"left": 48, "right": 56, "top": 40, "bottom": 32},
        "background": "white",
        "title": {
            "text": TITLE,
            "subtitle": [
                f"What {facts['model']} answers: “Your {facts['answer']}”",
                "How probable each answer token already is, layer by layer (logit lens)",
            ],
            "anchor": "start",
            "fontSize": 52,
            "color": INDIGO,
            "subtitleFontSize": 26,
            "subtitleColor": "#333333",
            "subtitlePadding": 12,
            "offset": 28,
        },
        "data": {"values": facts["rows"]},
        "transform": [
            {"calculate": "sequence(0, length(datum.p))", "as": "depth"},
            {"flatten": ["p", "depth"]},
        ],
        "mark": {"type": "rect", "stroke": "white", "strokeWidth": 1},
        "encoding": {
            "x": {
                "field": "depth",
                "type": "ordinal",
                "title": "depth (0 = embeddings)",
                "axis": {
                    "labelAngle": 0,
                    "labelFontSize": 16,
                    "titleFontSize": 20,
                    "labelExpr": "datum.value % 5 === 0 ? datum.label : ''",
                },
            },
            "y": {
                "field": "token",
                "type": "nominal",
                "sort": None,
                "title": None,
                "axis": {"labelFontSize": 22, "labelPadding": 8},
            },
            "color": {
                "field": "p",
                "type": "quantitative",
                "title": "p",
                "scale": {"domain": [0, 1], "range": ["#eef0fa", INDIGO]},
                "legend": {"titleFontSize": 18, "labelFontSize": 16, "gradientLength": 260},
            },
        },
        "config": {"view": {"stroke": None}, "font": "sans-serif"},
    }


def card_png(trace: Trace) -> bytes:
    """The card as PNG. vl-convert draws offline with the fonts it embeds or finds locally;
    no URL may be fetched, not even a font."""
    import vl_convert

    from .text import visible_in_spec

    return vl_convert.vegalite_to_png(visible_in_spec(card_spec(trace)), allowed_base_urls=[])
