"""Everything that turns a panel's measured values into words: numbers, ranks, plurals, token
text and the caption's HTML. Trace strings reach HTML only through `tracegen.text` (re-exported
here, so a panel has one place to import its words from)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..text import (  # noqa: F401  (re-exported: the panels' words import these from here)
    escape,
    finite,
    fmt_bytes,
    fmt_count,
    js_string,
    show_token,
    token_html,
    visible_controls,
)
from .story import CountPosition

# --- counts: singular or plural ---------------------------------------------------------------

# Nouns whose plural is not noun + "s".
_IRREGULAR = {"entity": "entities", "FLOPs": "FLOPs", "MLP": "MLPs"}


def plural(noun: str, n: float) -> str:
    """The noun for `n` of it: 1 head, 0 heads, 2 heads (English: only exactly one is
    singular)."""
    if n == 1:
        return noun
    return _IRREGULAR.get(noun, noun + "s")


def count(n: float, noun: str, fmt: str = "d") -> str:
    """'1 head', '0 heads', '1,024 tokens' (integers get thousands separators)."""
    number = f"{int(n):,}" if fmt == "d" else format(n, fmt)
    return f"{number} {plural(noun, n)}"


def verb(n: float, singular: str, plural_form: str) -> str:
    """The verb that agrees with `n` things: verb(1, 'puts', 'put') -> 'puts'."""
    return singular if n == 1 else plural_form


# --- numbers ----------------------------------------------------------------------------------


def fmt_pct(p: float) -> str:
    """A probability as a percentage with the precision it deserves: 67%, 4.2%, 0.31%, <0.01%."""
    p = float(p)
    if not math.isfinite(p):
        return "n/a"
    pct = 100 * p
    if pct >= 99.5 and pct < 100:
        return f"{pct:.1f}%"
    if pct >= 10:
        return f"{pct:.0f}%"
    if pct >= 1:
        return f"{pct:.1f}%"
    if pct >= 0.01:
        return f"{pct:.2f}%"
    return "under 0.01%" if pct > 0 else "0%"


def fmt_num(x: float, digits: int = 2) -> str:
    x = float(x)
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def fmt_int(n: float) -> str:
    return f"{int(n):,}"


def fmt_si(x: float, unit: str = "") -> str:
    """1.23e10 -> '12.3 G' + unit."""
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def fmt_seconds(s: float) -> str:
    s = float(s)
    if not math.isfinite(s):
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --- ranks ------------------------------------------------------------------------------------
# The trace stores ranks 0-based (lens_target_rank 0 = the top token). Every rank a reader
# sees, in a caption, an alt text or a tooltip, is 1-based: "1st" is the top. Convert here.

RANK_NOTE = "1 = top"


def shown_rank(rank: Any) -> Any:
    """A stored 0-based rank (an int or an array of them) as the reader sees it, 1-based;
    arrays come back as JSON-ready lists."""
    if np.ndim(rank) == 0:
        return int(rank) + 1
    return (np.asarray(rank, dtype=np.int64) + 1).tolist()


def fmt_rank(rank: int) -> str:
    """A stored 0-based rank in prose: 0 -> '1st', 4522 -> '4523rd'."""
    return ordinal(shown_rank(rank))


def rank_title(of: str | None = None) -> str:
    """The tooltip title of a field that holds 1-based ranks (see `shown_rank`)."""
    return f"rank{f' of {of}' if of else ''} ({RANK_NOTE})"


# --- places -----------------------------------------------------------------------------------


def head_label(layer: int, head: int) -> str:
    """Layers and heads are counted from 1 in prose, as the story counts its 32nd layer."""
    return f"layer {layer + 1}, head {head + 1}"


def layer_span(first: int, last: int) -> str:
    """Layers first..last in prose: 'layer 4', 'layers 1-7', or 'no whole layer'."""
    if last < first:
        return "no whole layer"
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def count_how(count: CountPosition) -> str:
    """One sentence: how the count position was found (`story.count_position`)."""
    if count.how == "emitted":
        return (
            f"the model emits the count {token_html(count.token)} at step {count.step + 1} of "
            "its continuation"
        )
    if count.how == "likeliest":
        return (
            "no count word was generated; this is the step where the watched counts are most "
            f"probable together ({fmt_pct(count.total)})"
        )
    return "no count word is watched or generated; the last prompt position"


# --- the caption's HTML -----------------------------------------------------------------------


def html_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def caption(lead: str, items: Iterable[str] = ()) -> str:
    items = list(items)
    return f"<p>{lead}</p>" + (html_list(items) if items else "")
