"""The types every panel shares: a chart, a panel, the verdicts and the words of a panel.

They live here, below every panel module, so that imports point one way: the panel modules
import from this module and the package's `__init__` imports the panel modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..store import Trace

# How a trace judges a claim of the narrator. "context": a panel that measures without judging.
BORNE_OUT: Final = "borne out"
NOT_BORNE_OUT: Final = "not borne out"
MIXED: Final = "mixed"
CONTEXT: Final = "context"
VERDICTS: Final = (BORNE_OUT, NOT_BORNE_OUT, MIXED, CONTEXT)


@dataclass(frozen=True)
class Chart:
    """One Vega-Lite chart. `alt` is its text alternative: the main finding in one sentence."""

    spec: dict[str, Any]
    alt: str


@dataclass(frozen=True)
class Words:
    """What a panel says, from its facts alone.

    caption: HTML with the measured numbers (trace text escaped through tracegen.text).
    alts:    one text alternative per chart, in the order the chart function returns them.
    """

    caption: str
    alts: tuple[str, ...]


@dataclass(frozen=True)
class Panel:
    """The evidence set beside one paragraph.

    key:      "intro", "p1" ... "p10", matching the `<!-- panel: KEY -->` markers in docs/index.md.
    question: what the panel asks of the trace, as a short heading.
    charts:   one or more charts.
    caption:  HTML with the measured numbers (every number computed from the trace).
    verdict:  one of VERDICTS, decided by the panel's measurement.
    facts:    the measurement itself (a frozen dataclass of the panel's module); the claims
              page and the model switcher read it, so every page shows the same numbers.
    """

    key: str
    question: str
    charts: list[Chart]
    caption: str
    verdict: str = CONTEXT
    facts: Any = None


@dataclass(frozen=True)
class PanelDef:
    """One panel as three pure functions around its facts (a frozen dataclass with a
    `verdict` field): `measure(trace) -> facts` (numpy only, decides the verdict),
    `words(facts) -> Words` and `charts(facts) -> [Altair chart]` (one per text alternative).
    `tracegen.panels.build_panel` runs them in that order."""

    key: str
    question: str
    measure: Callable[[Trace], Any]
    words: Callable[[Any], Words]
    charts: Callable[[Any], list[Any]]
