"""Paragraph -> panel: charts and a caption of measured numbers, from a trace (numpy + altair).

Every panel answers one question of the story map (docs/ and ../shared/DESIGN.md) for
whatever model the trace is of. Nothing here imports torch; traces are read only through
`tracegen.store.load_trace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import Trace


@dataclass(frozen=True)
class Chart:
    """One Vega-Lite chart. `alt` is its text alternative: the main finding in one sentence."""

    spec: dict[str, Any]
    alt: str


@dataclass(frozen=True)
class Panel:
    """The evidence set beside one paragraph.

    key:      "intro", "p1" ... "p10", matching the `<!-- panel: KEY -->` markers in docs/index.md.
    question: what the panel asks of the trace, as a short heading.
    charts:   one or more charts.
    caption:  HTML with the measured numbers (every number computed from the trace).
    verdict:  how the trace judges the narrator's claim: "borne out", "not borne out",
              "mixed" or "context" (a panel that measures without judging).
    """

    key: str
    question: str
    charts: list[Chart]
    caption: str
    verdict: str = "context"
    facts: dict[str, Any] = field(default_factory=dict)


def build_panels(trace: Trace) -> list[Panel]:
    """The eleven panels of the story page, in story order ("intro", "p1" ... "p10")."""
    # Imported here: the panel modules import Chart and Panel from this package.
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

    builders = (
        model_card,
        residual,
        flops,
        attention,
        heads,
        candidates,
        lens,
        attribution,
        continuation,
        determinism,
        entropy,
    )
    return [module.build(trace) for module in builders]
