"""Everything that turns values into text, and the one path by which a trace's strings reach a
page.

A trace is untrusted input: its prompt, token strings, model names, component names and
library versions may hold markup, Markdown, template braces, control characters or
right-to-left overrides. They reach the site only through these functions:

- `escape` for HTML (captions, attributes, anything inserted after Markdown has run);
- `md_text`, `code_md` and `pre_md` for text that passes through Markdown first: every
  character that Markdown or a table could read as syntax is a numeric character reference,
  and no code span or fence is used, so no backtick, pipe, bracket or blank line in the text
  can close its container or make a link;
- `js_string` for a string literal inside a Vega expression;
- `safe_slug` for the one place a trace string becomes part of a file name or URL.

Vega-Lite shows data, titles and tooltips as text (its tooltip handler escapes HTML), so chart
data needs only `visible_controls`.
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from typing import Any

# --- HTML and Markdown ---------------------------------------------------------------------


def escape(text: Any) -> str:
    """Text for HTML content or a double- or single-quoted attribute value."""
    return html.escape(str(text), quote=True)


def attr_single(text: str) -> str:
    """Escape for a single-quoted HTML attribute; JSON's many double quotes stay one byte."""
    return text.replace("&", "&amp;").replace("'", "&#39;")


# Characters that Markdown (Python-Markdown and its table, attr_list and toc extensions) or
# MkDocs' link rewriting could read as syntax; as character references they are just text.
_MARKDOWN_ACTIVE = re.compile(r"[\\`*_{}\[\]()<>#!|&\"'\n\r\t]")


def md_text(text: Any, keep: str = "") -> str:
    """Text that goes through Markdown and must come out as the same text, on one source
    line: every syntax character becomes a numeric character reference, and so do the
    newlines and tabs in `keep` (a blank line would end an HTML block); other control
    characters become visible pictures."""
    shown = visible_controls(str(text), keep)
    return _MARKDOWN_ACTIVE.sub(lambda m: f"&#{ord(m.group())};", shown)


def code_md(text: Any) -> str:
    """Inline code in Markdown that no backtick in the text can end: an HTML <code>."""
    return f"<code>{md_text(text)}</code>"


def pre_md(text: Any) -> str:
    """A block of preformatted text in Markdown that no line of backticks can end: an HTML
    <pre> on a single source line (newlines as references keep Markdown out of it)."""
    body = md_text(text, keep="\n\t")
    return f'<pre class="fp-pre"><code>{body}</code></pre>'


def js_string(text: Any) -> str:
    """A string literal for a Vega expression: JSON, ASCII-only (Vega's expression parser
    reads \\u escapes; a raw quote or backslash in the text cannot end the literal)."""
    return json.dumps(str(text), ensure_ascii=True)


def safe_slug(text: Any) -> str:
    """A trace's slug as a file name or URL segment: letters, digits, dot, dash, underscore;
    never empty, never a path (the slug is trace text, so `../` must not survive)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-")
    return slug[:80] or "trace"


# --- tokens ----------------------------------------------------------------------------------

_CONTROL_PICTURES = {**{code: chr(0x2400 + code) for code in range(32)}, 127: "\u2421"}


def visible_controls(text: str, keep: str = "") -> str:
    """Control characters as their visible Unicode pictures (U+2400...): a raw control
    character crashes vl-convert, cannot appear in SVG and may ring a terminal's bell.
    Characters in `keep` stay. (Right-to-left overrides stay too, as text: the site's CSS
    isolates every element that shows trace text, so they cannot reorder the page.)"""
    return text.translate({k: v for k, v in _CONTROL_PICTURES.items() if chr(k) not in keep})


def visible_in_spec(value: Any) -> Any:
    """Every string of a chart spec with its control characters made visible (keeping tabs
    and newlines): vl-convert aborts the whole process on them (a random model's tokens hold
    them)."""
    if isinstance(value, str):
        return visible_controls(value, keep="\t\n\r")
    if isinstance(value, dict):
        return {key: visible_in_spec(item) for key, item in value.items()}
    if isinstance(value, list):
        return [visible_in_spec(item) for item in value]
    return value


def terminal_text(text: str) -> str:
    """Trace text for a terminal: control characters as pictures, and invisible format
    characters (right-to-left overrides, zero-width joiners: Unicode category Cf) as \\u
    escapes, so that no escape sequence or reordering reaches the reader's terminal."""
    shown = visible_controls(text)
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in shown)


def show_token(text: str) -> str:
    """Make a token's whitespace visible: a leading space as ␣, newlines as ↵, tabs as ⇥,
    other control characters as their Unicode control pictures (random models emit them)."""
    if text == "":
        return "∅"
    shown = text.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    shown = visible_controls(shown)
    return "␣" + shown[1:] if shown.startswith(" ") else shown


def token_html(text: str) -> str:
    return f"<code>{escape(show_token(text))}</code>"


# --- numbers -------------------------------------------------------------------------------


def fmt_count(n: float) -> str:
    """135e6 -> '135 million' (for parameter counts, where 'M' reads like a unit)."""
    n = float(n)
    for factor, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {word}"
    return f"{n:.0f}"


def fmt_short_count(n: float) -> str:
    """135e6 -> '135M' (where space is short, as in the model line)."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def fmt_bytes(n: float) -> str:
    """Sizes in memory, base 1024: the KV cache."""
    n = float(n)
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{int(n)} bytes"


def fmt_file_size(size: float) -> str:
    """Sizes of files, base 1000 as file browsers show them: '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def finite(x: Any, default: float = 0.0) -> float:
    value = float(x)
    return value if math.isfinite(value) else default
