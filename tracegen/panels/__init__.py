"""Paragraph -> panel: charts and a caption of measured numbers, from a trace (numpy + altair).

Every panel answers one question of the story map (docs/ and ../shared/DESIGN.md) for
whatever model the trace is of, as three pure functions (see `types.PanelDef`): a
measurement, its words and its charts. Nothing here imports torch; traces are read only
through `tracegen.store.load_trace`.

Modules, each importing only those above it: `types` (Chart, Panel, verdicts), `story` (the
story's numbers, places in the prompt), `words` (values into text), `style` (colours, width),
`vega` (Vega-Lite plumbing), then one module per panel.
"""

from __future__ import annotations

from ..store import Trace
from . import (
    attention,
    attribution,
    candidates,
    continuation,
    determinism,
    entropy,
    flops,
    heads,
    lens,
    model_card,
    residual,
)
from .types import Chart, Panel, PanelDef
from .vega import to_chart

__all__ = ["DEFINITIONS", "Chart", "Panel", "PanelDef", "build_panel", "build_panels"]

# The story page's panels, in story order ("intro", "p1" ... "p10").
DEFINITIONS: tuple[PanelDef, ...] = (
    model_card.PANEL,
    residual.PANEL,
    flops.PANEL,
    attention.PANEL,
    heads.PANEL,
    candidates.PANEL,
    lens.PANEL,
    attribution.PANEL,
    continuation.PANEL,
    determinism.PANEL,
    entropy.PANEL,
)


def build_panel(definition: PanelDef, trace: Trace) -> Panel:
    """measure -> words -> charts, paired with their text alternatives."""
    facts = definition.measure(trace)
    words = definition.words(facts)
    charts = definition.charts(facts)
    if len(charts) != len(words.alts):
        raise ValueError(f"panel {definition.key}: {len(charts)} charts, {len(words.alts)} alts")
    return Panel(
        key=definition.key,
        question=definition.question,
        charts=[to_chart(chart, alt) for chart, alt in zip(charts, words.alts, strict=True)],
        caption=words.caption,
        verdict=facts.verdict,
        facts=facts,
    )


def build_panels(trace: Trace) -> list[Panel]:
    """The eleven panels of the story page, in story order."""
    return [build_panel(definition, trace) for definition in DEFINITIONS]
