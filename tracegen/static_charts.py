"""Charts without interaction, drawn to SVG at build time (vl-convert) and put into the page
as they are: the browser shows them without the Vega runtime, without a script, and without
a long task on a slow phone.

Each static chart is drawn twice, laid out for a phone's panel (`NARROW_PX`) and for a wide
one (`WIDE_PX`), each in the light and the dark palette: four SVG files, shown as <img>. The
page's CSS shows one by the width of the panel (a container query) and the palette, and
scales it to the panel's width, never below the width it was laid out for, so chart text
stays at least 11 px. Images, not inline SVG: an image is a document of its own, so its
thousands of marks are not part of the page's style and layout (inline, both layouts of every
chart made one task of over 2 s, CPU 4x slower, while the page loaded). The layout follows
what forward-pass.js does to an interactive chart before drawing it (`prepare`): views side
by side stacked and facets wrapped when narrow, fixed view widths scaled to the panel,
legends below a narrow chart, text at least 11 px.

Colours of the page (text, axes, grid) are drawn in placeholder colours (`THEME_COLOURS`),
then replaced by each palette's own (`PALETTES`), so a static chart follows the light and
the dark palette as a drawn one does; the data's own colours are kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

NARROW_PX = 254  # a panel's width on a 320 px phone
WIDE_PX = 560  # panels at least this wide get the wide layout (forward-pass.css says so too)
MIN_TEXT = 11  # px: chart text (labels, marks, legends), as forward-pass.js
MIN_TITLE = 12  # px: axis, legend and header titles
STACK_BELOW = WIDE_PX  # px: views side by side are stacked in the narrow layout only

# placeholder colour -> the Material palette variable it stands for. Lower-case hex, as Vega
# writes them back; nothing in a chart's data uses these near-reds.
THEME_COLOURS = {
    "#fe0001": "--md-default-fg-color",
    "#fe0002": "--md-default-fg-color--light",
    "#fe0003": "--md-default-fg-color--lighter",
    "#fe0004": "--md-default-fg-color--lightest",
}
FG, LIGHT, LIGHTER, LIGHTEST = THEME_COLOURS

# The page's palettes (Material's computed --md-default-fg-color* of "default" and "slate"):
# an <img> cannot read the page's CSS variables, so each palette gets its own file.
PALETTES = {
    "light": dict(zip(THEME_COLOURS, ["rgba(0,0,0,0.87)", "rgba(0,0,0,0.54)",
                                      "rgba(0,0,0,0.32)", "rgba(0,0,0,0.07)"], strict=True)),
    "dark": dict(zip(THEME_COLOURS, ["rgba(226,228,233,0.82)", "rgba(226,228,233,0.56)",
                                     "rgba(226,228,233,0.32)", "rgba(226,228,233,0.12)"],
                     strict=True)),
}  # fmt: skip
LAYOUTS = {"narrow": NARROW_PX, "wide": WIDE_PX}

_CACHE: dict[str, dict[str, str]] = {}  # rebuilds under `mkdocs serve` draw nothing twice


def theme_config(width: int) -> dict[str, Any]:
    """forward-pass.js's `themeConfig` in placeholder colours, with no background (the
    panel's own shows through)."""
    axis = {"labelColor": LIGHT, "titleColor": FG, "domainColor": LIGHTER,
            "tickColor": LIGHTER, "gridColor": LIGHTEST, "labelFontSize": MIN_TEXT,
            "titleFontSize": MIN_TITLE}  # fmt: skip
    return {
        "background": None,
        "font": "sans-serif",
        "aria": False,
        "view": {"stroke": LIGHTEST},
        "axis": axis,
        "legend": {"labelColor": LIGHT, "titleColor": FG, "labelFontSize": MIN_TEXT,
                   "titleFontSize": MIN_TITLE, "labelLimit": 0, "titleLimit": 0,
                   "gradientLength": max(80, min(200, width - 150))},  # fmt: skip
        "header": {"labelColor": FG, "titleColor": FG, "labelFontSize": MIN_TITLE,
                   "titleFontSize": MIN_TITLE},  # fmt: skip
        "title": {"color": FG, "subtitleColor": LIGHT, "fontSize": 13,
                  "subtitleFontSize": MIN_TITLE},  # fmt: skip
        "text": {"color": FG, "fontSize": MIN_TEXT},
        "rule": {"color": LIGHT},
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins, nested dicts merged (vega-embed merges its config under the spec's)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# --- the layout for a panel's width (forward-pass.js `prepare`, in Python) ---------------------


def _laid_out_text(view: dict[str, Any]) -> bool:
    """A prompt laid out in characters (text marks at fixed x, no x axis): it keeps its
    width, since scaling it would overlap its text."""
    for layer in view.get("layer") or [view]:
        mark = layer.get("mark")
        mark = mark.get("type") if isinstance(mark, dict) else mark
        x = (layer.get("encoding") or {}).get("x")
        strip = mark == "text" and isinstance(x, dict) and x.get("axis", 0) is None
        if strip and isinstance(x.get("scale"), dict) and x["scale"].get("domain"):
            return True
    return False


def _legible(node: Any, view: dict[str, Any] | None, grown: set[int]) -> None:
    if isinstance(node, list):
        for item in node:
            _legible(item, view, grown)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("width"), int | float):
        view = node
    mark = node.get("mark")
    small = isinstance(mark, dict) and isinstance(mark.get("fontSize"), int | float)
    if small and mark["fontSize"] < MIN_TEXT:
        if view is not None and _laid_out_text(view) and id(view) not in grown:
            view["width"] = -(-view["width"] * MIN_TEXT // mark["fontSize"])
            grown.add(id(view))
        mark["fontSize"] = MIN_TEXT
    for key, value in list(node.items()):
        if key in ("data", "datasets"):
            continue
        if key == "labelFontSize" and isinstance(value, int | float) and value < MIN_TEXT:
            node[key] = MIN_TEXT
        elif key == "titleFontSize" and isinstance(value, int | float) and value < MIN_TITLE:
            node[key] = MIN_TITLE
        elif key == "legend" and isinstance(value, dict):
            value.pop("labelLimit", None)
            _legible(value, view, grown)
        else:
            _legible(value, view, grown)


def _narrow_legends(node: Any, width: int) -> None:
    if isinstance(node, list):
        for item in node:
            _narrow_legends(item, width)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("data", "datasets"):
            continue
        if key == "legend" and isinstance(value, dict):
            below = value.get("orient") in ("bottom", "top") or "columns" in value
            if below and width < 480:
                value["columns"] = 1
            if isinstance(value.get("gradientLength"), int | float):
                value["gradientLength"] = max(80, min(value["gradientLength"], width - 150))
        else:
            _narrow_legends(value, width)


def is_multi(spec: dict[str, Any]) -> bool:
    """Several views (concatenated, faceted or repeated), as forward-pass.js's `isMulti`."""
    encoding = spec.get("encoding") if isinstance(spec.get("encoding"), dict) else {}
    return bool({"hconcat", "vconcat", "concat", "facet", "repeat"} & spec.keys()) or bool(
        {"row", "column", "facet"} & encoding.keys()
    )


def _row_width(node: Any) -> tuple[float, int]:
    """(widths of the plots in the widest row of views, number of views in it)."""
    if not isinstance(node, dict):
        return 0, 0
    own = node.get("width") if isinstance(node.get("width"), int | float) else 0
    if node.get("hconcat"):
        rows = [_row_width(view) for view in node["hconcat"]]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)
    if node.get("vconcat") or node.get("layer"):
        best: tuple[float, int] = (own, 1 if own else 0)
        for row in map(_row_width, node.get("vconcat") or node.get("layer")):
            best = best if best[0] >= row[0] else row
        return best
    if node.get("facet") and node.get("spec"):
        plots, views = _row_width(node["spec"])
        facet = node["facet"]
        count = node.get("columns") or (3 if isinstance(facet, dict) and "column" in facet else 1)
        return plots * count, views * count
    return own, 1


def _wrap(text: str, chars: int) -> str | list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= chars:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines if len(lines) > 1 else text


def _wrap_titles(node: Any, width: int) -> None:
    if isinstance(node, list):
        for item in node:
            _wrap_titles(item, width)
        return
    if not isinstance(node, dict):
        return
    chars = max(16, (width - 20) * 2 // 15)  # 13 px bold: about 7.5 px a character
    title = node.get("title")
    if isinstance(title, str) and len(title) > chars:
        node["title"] = {"text": _wrap(title, chars)}
    elif isinstance(title, dict) and isinstance(title.get("text"), str):
        title["text"] = _wrap(title["text"], chars) if len(title["text"]) > chars else title["text"]
    for key, value in node.items():
        if key not in ("data", "datasets", "encoding"):
            _wrap_titles(value, width)


def _reflow(node: Any, width: int, scale: float) -> None:
    if isinstance(node, list):
        for item in node:
            _reflow(item, width, scale)
        return
    if not isinstance(node, dict):
        return
    narrow = width < STACK_BELOW
    if node.get("hconcat") and narrow:
        node["vconcat"] = node.pop("hconcat")
    facet = node.get("facet")
    if isinstance(facet, dict) and facet.get("row") and not facet.get("column") and narrow:
        node["facet"], node["columns"] = facet["row"], 1  # labels above each plot
    elif isinstance(facet, dict) and facet.get("column") and not facet.get("row") and narrow:
        inner = _row_width(node.get("spec"))[0] * scale or 1
        node["facet"] = facet["column"]
        node["columns"] = max(1, int((width - 90) // (inner + 50)))
    encoding = node.get("encoding")
    if narrow and isinstance(encoding, dict):
        for channel in ("color", "fill", "stroke", "size", "opacity"):
            definition = encoding.get(channel)
            if not isinstance(definition, dict) or not definition.get("field"):
                continue
            if "legend" in definition and definition["legend"] is None:
                continue
            legend = definition.get("legend") if isinstance(definition.get("legend"), dict) else {}
            if legend.get("orient") in (None, "right", "left"):
                definition["legend"] = {**legend, "orient": "bottom"}
    if isinstance(node.get("width"), int | float) and not _laid_out_text(node):
        scaled = max(40, int(node["width"] * scale))
        for layer in node.get("layer") or [node]:
            for channel in ("x", "x2"):
                definition = (layer.get("encoding") or {}).get(channel)
                value = definition.get("value") if isinstance(definition, dict) else None
                if isinstance(definition, dict) and isinstance(value, int | float):
                    definition["value"] = round(definition["value"] * scaled / node["width"])
        node["width"] = scaled
    for key, value in node.items():
        if key not in ("data", "datasets", "encoding"):
            _reflow(value, width, scale)


# --- drawing -------------------------------------------------------------------------------------


def _draw(spec: dict[str, Any], width: int) -> str:
    import vl_convert

    from .text import visible_in_spec

    return vl_convert.vegalite_to_svg(visible_in_spec(spec), config=theme_config(width))


def svg_width(svg: str) -> float:
    """The width an SVG from Vega was laid out at (its root's width attribute)."""
    match = re.search(r'<svg[^>]*\swidth="([\d.]+)"', svg)
    return float(match.group(1)) if match else 0.0


def laid_out(spec: dict[str, Any], width: int) -> str:
    """The chart drawn for a panel `width` px wide, as an SVG string."""
    spec = copy.deepcopy({k: v for k, v in spec.items() if k != "$schema"})
    _legible(spec, None, set())
    _narrow_legends(spec, width)
    if not is_multi(spec):
        if spec.get("width") == "container" or isinstance(spec.get("width"), int | float):
            spec["width"] = width
            spec["autosize"] = {"type": "fit-x", "contains": "padding"}
        return _draw(spec, width)
    # Each legend beside its own view, as the script does for a chart of several views.
    resolve = spec.setdefault("resolve", {})
    resolve["legend"] = {"color": "independent", "fill": "independent",
                         "stroke": "independent", **(resolve.get("legend") or {})}  # fmt: skip
    _wrap_titles(spec, width)
    # What axes, legends and headers take beside the plots is measured on a first drawing at
    # the built widths; the plots then get what is left of the panel (never more than built).
    probe = copy.deepcopy(spec)
    _reflow(probe, width, 1.0)
    plots = _row_width(probe)[0]
    svg = _draw(probe, width)
    overhead = svg_width(svg) - plots
    if not plots or svg_width(svg) <= width:
        return svg
    slack = 0.0
    for _ in range(3):  # again while the overhead grew with the new layout (wrapped legends)
        scale = max(0.2, min(1.0, (width - overhead - slack) / plots))
        fitted = copy.deepcopy(spec)
        _reflow(fitted, width, scale)
        svg = _draw(fitted, width)
        if svg_width(svg) <= width:
            break
        drawn_plots = _row_width(fitted)[0]
        # Still over (plots rounded to whole pixels, a legend grown): give up what is over,
        # and a pixel more.
        slack += svg_width(svg) - width + 1
        overhead = max(overhead, svg_width(svg) - drawn_plots)
    return svg


_NUMBER = re.compile(r"-?\d+\.\d{3,}")
_RGB = re.compile(r"rgb\((\d+), ?(\d+), ?(\d+)\)")
_RECTS = re.compile(r'(<g class="mark-rect role-mark[^"]*"[^>]*>)((?:<path [^>]*/>)+)(</g>)')
_PATH = re.compile(r'<path d="([^"]*)"([^>]*)/>')
_TEXTS = re.compile(r'(<g class="mark-text [^"]*"[^>]*>)((?:<text [^>]*>[^<]*</text>)+)(</g>)')
_TEXT = re.compile(r"<text ([^>]*)>([^<]*)</text>")
_AT = re.compile(r'\s?transform="translate\(([-\d.e]+),([-\d.e]+)\)"')


def compact(svg: str) -> str:
    """A smaller SVG that draws the same: coordinates to 0.01 px, rgb() as hex, in each group
    of rectangles (a heatmap's cells) one path per colour instead of one per cell, and in
    each group of labels placed by translation (a grid's cell labels, axis labels) one <text>
    per style, each label a positioned <tspan> (a text chunk of its own, anchored as it
    was). An SVG image is parsed, laid out and painted on the page's main thread, element by
    element: with the CPU 4x slower the attention grid's 5,600 cells took 0.7 s there, and
    the logit lens's 520 labels about 0.4 s to parse and as much to paint."""
    svg = _NUMBER.sub(lambda m: f"{float(m.group()):.2f}".rstrip("0").rstrip("."), svg)
    svg = _RGB.sub(lambda m: "#{:02x}{:02x}{:02x}".format(*map(int, m.groups())), svg)

    def merge(match: re.Match[str]) -> str:
        by_look: dict[str, list[str]] = {}  # the cells' other attributes -> their outlines
        for outline, look in _PATH.findall(match.group(2)):
            by_look.setdefault(look, []).append(outline)
        paths = "".join(f'<path d="{"".join(d)}"{look}/>' for look, d in by_look.items())
        return match.group(1) + paths + match.group(3)

    def merge_texts(match: re.Match[str]) -> str:
        by_look: dict[str, list[str]] = {}  # the labels' other attributes -> their runs
        for attrs, content in _TEXT.findall(match.group(2)):
            at = _AT.search(attrs)
            look = _AT.sub("", attrs).strip()
            if not at or re.search(r"\b(transform|x|y|dx|dy|rotate)=", look):
                return match.group(0)  # rotated or offset: left as it is
            run = f'<tspan x="{at.group(1)}" y="{at.group(2)}">{content}</tspan>'
            by_look.setdefault(look, []).append(run)
        texts = "".join(f"<text {look}>{''.join(runs)}</text>" for look, runs in by_look.items())
        return match.group(1) + texts + match.group(3)

    return _TEXTS.sub(merge_texts, _RECTS.sub(merge, svg))


def themed(svg: str, theme: str) -> str:
    """The SVG in one palette's colours (`PALETTES`): the placeholders replaced."""
    for placeholder, colour in PALETTES[theme].items():
        svg = svg.replace(f'"{placeholder}"', f'"{colour}"')
    return svg


def svg_size(svg: str) -> tuple[int, int]:
    """(width, height) an SVG from Vega was laid out at, in whole px."""
    height = re.search(r'<svg[^>]*\sheight="([\d.]+)"', svg)
    return round(svg_width(svg)), round(float(height.group(1))) if height else 0


def spec_digest(spec: dict[str, Any]) -> str:
    """The key a chart's images are cached under: two equal specs are drawn once."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def is_drawn(spec: dict[str, Any]) -> bool:
    return spec_digest(spec) in _CACHE


def static_svgs(spec: dict[str, Any]) -> dict[str, str]:
    """The chart laid out for each layout (`LAYOUTS`), in placeholder colours; cached on the
    spec."""
    digest = spec_digest(spec)
    if digest not in _CACHE:
        _CACHE[digest] = {
            layout: compact(laid_out(spec, width)) for layout, width in LAYOUTS.items()
        }
    return _CACHE[digest]


def images_html(srcs: dict[tuple[str, str], str], svgs: dict[str, str], single: bool) -> str:
    """One <img> per layout and palette (`srcs[(layout, theme)]` is its URL); the page's CSS
    shows the one for the panel's width and the palette, and only that one is fetched
    (loading="lazy": images not shown are never loaded). The box around them is the named
    image, so each is decorative (alt=""). A single view grows to a wide panel's width, as a
    drawn one does; nothing is shown narrower than laid out (its text would shrink)."""
    tags = []
    for (layout, theme), src in srcs.items():
        width, height = svg_size(svgs[layout])
        grow = single and layout == "wide"
        style = "" if grow else f' style="max-width:{width}px"'
        if width > LAYOUTS[layout] + 1:  # a prompt laid out in characters: it scrolls instead
            style = f' style="width:{width}px;max-width:none"'
        tags.append(
            f'<img class="fp-svg fp-svg--{layout} fp-svg--{theme}" src="{src}" alt="" '
            f'width="{width}" height="{height}" loading="lazy" decoding="async"{style}>'
        )
    return "".join(tags)
