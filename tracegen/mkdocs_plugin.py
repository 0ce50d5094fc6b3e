"""MkDocs plugin: puts one panel of charts beside each paragraph of the story, ships the Vega
runtime, and fills the "How this was made" page from the trace's manifest.

Registered as the `forward-pass` plugin (entry point in pyproject.toml). Build-time only:
numpy, altair's specs and vl-convert; never torch.

Markers it understands:

    <!-- story:start -->     (story page) where the paragraph rows begin
    <!-- panel: KEY -->      (story page) end of the paragraphs that panel KEY sits beside
    <!-- fp: NAME -->        (any page) generated Markdown, NAME in `FILLERS`
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mkdocs.config import base
from mkdocs.config import config_options as c
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import BasePlugin
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

from tracegen import card, publish, static_charts
from tracegen.provenance import Provenance, provenance
from tracegen.store import ModelCard, Trace, TraceError, load_trace
from tracegen.text import (
    attr_single,
    code_md,
    escape,
    fmt_file_size,
    fmt_short_count,
    md_text,
    pre_md,
    safe_slug,
    show_token,
)

log = logging.getLogger("mkdocs.plugins.forward-pass")

TRACE_ENV = "FORWARD_PASS_TRACE"
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
# The value this plugin set, so that a rebuild (`mkdocs serve`) from another trace updates it
# while a value the user set is left alone.
_EPOCH_FROM_TRACE: dict[str, str] = {}
ASSET_DIR = "assets/forward-pass"
VEGA_BUNDLE = f"{ASSET_DIR}/vega-bundle.js"
CARD_IMAGE = f"{ASSET_DIR}/card.png"
# The story page's model switcher: loaded only where there are several models.
SWITCHER_JS = "forward-pass-models.js"
SWITCHER_CSS = "forward-pass-models.css"
LICENSE_URI = "LICENSE.txt"
START_MARKER = "<!-- story:start -->"
PANEL_MARKER = re.compile(r"<!--\s*panel:\s*([\w-]+)\s*-->")
FILL_MARKER = re.compile(r"<!--\s*fp:\s*([\w-]+)\s*-->")

# vl-convert's bundle depends on nothing; cache it across `mkdocs serve` rebuilds, which re-run
# the whole plugin (static_charts caches the images).
_BUNDLE_CACHE: dict[str, str] = {}


class ForwardPassConfig(base.Config):
    trace = c.Type(str, default="traces/smollm2-135m-instruct")
    # Several models: the story page shows the first and switches to the others, and the
    # claims page judges every claim for each. Empty: only `trace`.
    traces = c.Type(list, default=[])
    story_page = c.Type(str, default="index.md")
    # Static images of the interactive charts, shown until the reader reaches for one and
    # without scripts; off speeds up a draft `mkdocs serve`. (Charts without interaction are
    # always static images.)
    fallback_images = c.Type(bool, default=True)
    # The trace's raw files, one by one and as one zip; off keeps them out of the site (the
    # two committed traces: ~14 MB, README.md).
    raw_trace = c.Type(bool, default=True)
    # The PNG that link previews show (Open Graph / Twitter card tags in overrides/main.html).
    social_card = c.Type(bool, default=True)


@dataclass
class ModelSite:
    """One traced model on the site: its trace, its panels and where its pages and files go.
    The first model is the story page's own; the others are switched to (and each gets its
    own "How this was made" page)."""

    path: Path
    trace: Trace
    panels: dict[str, Any]
    primary: bool
    root: Path  # the project's root (mkdocs.yml's folder): trace paths are shown relative to it
    given: str  # the folder as mkdocs.yml or FORWARD_PASS_TRACE names it

    @property
    def slug(self) -> str:
        return safe_slug(self.trace.model.slug)  # the slug is trace text

    @property
    def trace_uri(self) -> str:
        return f"traces/{self.slug}"

    @property
    def archive_uri(self) -> str:
        return f"{self.trace_uri}.zip"

    @property
    def made_uri(self) -> str:
        return "made.md" if self.primary else f"made-{self.slug}.md"

    @property
    def data_uri(self) -> str:
        """The script that carries this model's panels to the story page's switcher."""
        return f"{ASSET_DIR}/models/{self.slug}.js"

    @functools.cached_property
    def provenance(self) -> Provenance:
        """Read once a build (it asks git): every filler of every page uses it."""
        return provenance(self.trace, self.path, self.root, self.given)


def load_model(path: Path, primary: bool, root: Path, given: str = "") -> ModelSite:
    try:
        trace = load_trace(path)
    except TraceError as error:
        raise PluginError(f"forward-pass: cannot load trace: {error}") from None
    return ModelSite(path, trace, build_panel_map(trace), primary, root, given or str(path))


class ForwardPassPlugin(BasePlugin[ForwardPassConfig]):
    def on_config(self, config: MkDocsConfig) -> MkDocsConfig:
        self.config_file = config.config_file_path
        root = Path(self.config_file).parent if self.config_file else Path.cwd()
        folders = trace_folders(self.config.trace, self.config.traces, self.config_file)
        self.models = [
            load_model(path, index == 0, root, given) for index, (given, path) in enumerate(folders)
        ]
        slugs = [model.slug for model in self.models]
        if len(set(slugs)) < len(slugs):
            raise PluginError(f"forward-pass: two traces of one model slug: {', '.join(slugs)}")
        primary = self.models[0]
        self.trace_path, self.trace, self.panels = primary.path, primary.trace, primary.panels
        # Reproducible builds: MkDocs dates the sitemap (and its gzip header) from
        # SOURCE_DATE_EPOCH when set, else from the clock; without one, use the trace's date.
        if os.environ.get(SOURCE_DATE_EPOCH) in (None, _EPOCH_FROM_TRACE.get("value")):
            epoch = str(self.trace.timings["written"])
            os.environ[SOURCE_DATE_EPOCH] = _EPOCH_FROM_TRACE["value"] = epoch
        for model in self.models:
            log.info(
                "forward-pass: %s: %d panels from %s%s", model.slug,
                len(model.panels), model.path, " (the story page opens on it)"
                if model.primary and len(self.models) > 1 else "",
            )  # fmt: skip
        # Our CSS/JS are listed here, not in mkdocs.yml, so that they travel with the plugin.
        config.extra_css.append(f"{ASSET_DIR}/forward-pass.css")
        config.extra_javascript.append(f"{ASSET_DIR}/forward-pass.js")
        if len(self.models) > 1:
            config.extra_css.append(f"{ASSET_DIR}/{SWITCHER_CSS}")
            config.extra_javascript.append(f"{ASSET_DIR}/{SWITCHER_JS}")
        # What the theme overrides (overrides/) link to; absent keys leave their tags out.
        shared: dict[str, Any] = {}
        if self.config.social_card:
            shared["card"] = {"path": CARD_IMAGE, "width": card.WIDTH, "height": card.HEIGHT,
                              "alt": card.card_alt(self.trace)}  # fmt: skip
        if publish.license_file(config):
            shared["license"] = LICENSE_URI
        config.extra["forward_pass"] = shared
        return config

    def on_files(self, files: Files, *, config: MkDocsConfig) -> Files:
        self.files = files
        assets = resources.files("tracegen") / "assets"
        names = ["forward-pass.css", "forward-pass.js"]
        if len(self.models) > 1:
            names += [SWITCHER_CSS, SWITCHER_JS]
        for name in names:
            content = (assets / name).read_text(encoding="utf-8")
            files.append(File.generated(config, f"{ASSET_DIR}/{name}", content=content))
        files.append(File.generated(config, VEGA_BUNDLE, content=vega_bundle()))
        saved = publish.prune_theme_files(files, config)
        log.info("forward-pass: %s of unused theme files left out", fmt_file_size(saved))
        if license_path := publish.license_file(config):
            files.append(File.generated(config, LICENSE_URI, abs_src_path=str(license_path)))
        if self.config.social_card:
            files.append(File.generated(config, CARD_IMAGE, content=card.card_png(self.trace)))
        for model in self.models:
            if self.config.raw_trace:
                # The trace's raw files, downloadable beside the pages that describe them.
                for path in model.trace.files():
                    uri = f"{model.trace_uri}/{path.name}"
                    files.append(File.generated(config, uri, abs_src_path=str(path)))
                archive = publish.trace_archive(model.trace.files(), model.trace.model.slug)
                files.append(File.generated(config, model.archive_uri, content=archive))
            if not model.primary:  # its own "How this was made", from the same source page
                made = Path(config.docs_dir) / "made.md"
                if made.is_file():
                    content = made.read_text(encoding="utf-8")
                    # Linked from the story page's model line, not from the nav (which has
                    # the first model's): declared so, MkDocs does not list it as a page
                    # missing from the nav.
                    files.append(File.generated(config, model.made_uri, content=content,
                                                inclusion=InclusionLevel.NOT_IN_NAV))  # fmt: skip
        self.mkdocs_config = config
        self.static_files: set[str] = set()  # the static charts' SVGs (see static_figure)
        self.draw_charts()
        return files

    def draw_charts(self) -> None:
        """Draw every chart image the pages show (`static_charts` keeps them for the pages),
        one after the other in a fixed order (drawn in threads, vl-convert's SVGs differed
        between builds), saying how far it is: it is most of a build's time."""
        specs: dict[str, dict[str, Any]] = {}
        for model in self.models:
            for panel in model.panels.values():
                for chart in panel.charts:
                    if self.config.fallback_images or not is_interactive(chart.spec):
                        spec = site_spec(chart.spec)
                        if not static_charts.is_drawn(spec):
                            specs.setdefault(static_charts.spec_digest(spec), spec)
        if not specs:
            return
        layouts = len(static_charts.LAYOUTS)
        total = len(specs) * layouts
        log.info(
            "forward-pass: drawing %d chart images (%d charts, %d layouts each) ...",
            total, len(specs), layouts,
        )  # fmt: skip
        start, every = time.perf_counter(), -(-len(specs) // 4)  # about each quarter
        for count, spec in enumerate(specs.values(), 1):
            static_charts.static_svgs(spec)
            if count % every == 0 or count == len(specs):
                log.info(
                    "forward-pass: drawing chart images: %d/%d (%.0f s)",
                    count * layouts, total, time.perf_counter() - start,
                )  # fmt: skip

    def model_of(self, page: Page) -> ModelSite:
        """The model a page is about: a model's own "How this was made", else the first."""
        return next((m for m in self.models if m.made_uri == page.file.src_uri), self.models[0])

    def on_page_markdown(self, markdown: str, *, page: Page, config: MkDocsConfig, files: Files):
        if page.file.src_uri == self.config.story_page:
            check_markers(markdown, self.panels)

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in FILLERS:
                known = ", ".join(sorted(FILLERS))
                raise PluginError(f"{page.file.src_uri}: unknown marker fp: {name} ({known})")
            return FILLERS[name](self, page)

        markdown = FILL_MARKER.sub(fill, markdown)
        model = self.model_of(page)
        if page.file.src_uri == model.made_uri and not model.primary:
            first = get_relative_url(self.models[0].made_uri, page.file.src_uri)
            note = (
                f"\n\nThis page is about the model <strong>{md_text(model.trace.model.slug)}"
                f"</strong>, one of the models the story page switches between; "
                f"[the first model's page]({first}).\n\n"
            )
            head, sep, rest = markdown.partition("\n")
            markdown = head + sep + note + rest
        return markdown

    def on_page_content(self, html_text: str, *, page: Page, config: MkDocsConfig, files: Files):
        if page.file.src_uri != self.config.story_page:
            return html_text
        if len(self.models) > 1:  # the other models' panels, rendered here, sent on request
            for model in self.models[1:]:
                data = {
                    "slug": model.slug,
                    "line": model_line_html(self, model, page),
                    "panels": {key: self.render_panel(key, page, model) for key in model.panels},
                }
                payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
                script = f"window.forwardPassModels.receive({payload});\n"
                self.files.append(File.generated(config, model.data_uri, content=script))
        return self.wrap_rows(html_text, page)

    def wrap_rows(self, html_text: str, page: Page) -> str:
        """Pair each run of story paragraphs with the panel named by the marker after it."""
        head, sep, story = html_text.partition(START_MARKER)
        if not sep:
            raise PluginError(f"{page.file.src_uri}: no {START_MARKER} marker before the story")
        pieces = PANEL_MARKER.split(story)  # [text, key, text, key, ..., tail]
        rows = []
        for index in range(1, len(pieces), 2):
            key, text = pieces[index], pieces[index - 1]
            question = escape(normalise_glyphs(self.panels[key].question))
            # Reading mode (forward-pass.js) folds the panel away behind this button; without
            # scripts it stays hidden and every panel shows.
            toggle = (
                f'<button type="button" class="fp-evidence-toggle" hidden aria-expanded="false" '
                f'aria-controls="panel-{key}">Show the evidence: {question}</button>'
            )
            rows.append(
                f'<div class="fp-row" id="row-{key}">\n'
                f'<div class="fp-story">{text.strip()}{toggle}</div>\n'
                f"{self.render_panel(key, page)}\n</div>"
            )
        tail = pieces[-1]
        return f'{head}<div class="fp-rows">\n{"".join(rows)}\n</div>{tail}'

    def render_panel(self, key: str, page: Page, model: ModelSite | None = None) -> str:
        model = model or self.models[0]
        panel = model.panels[key]
        question = escape(normalise_glyphs(panel.question))
        figures = []
        for index, chart in enumerate(panel.charts):
            if not is_interactive(chart.spec):
                figures.append(self.static_figure(key, index, chart, panel, model, page))
                continue
            # "$schema" is a URL the runtime never fetches; dropping it saves bytes per chart.
            browser_spec = {k: v for k, v in site_spec(chart.spec).items() if k != "$schema"}
            try:  # NaN is not JSON: the browser's JSON.parse would reject the whole spec
                spec = json.dumps(
                    browser_spec, separators=(",", ":"), ensure_ascii=False, allow_nan=False
                )
            except ValueError as error:
                raise PluginError(f"forward-pass: panel {key} chart {index}: {error}") from None
            usermeta = chart.spec.get("usermeta") or {}
            renderer = usermeta.get("renderer", "svg")
            # A chart fitted to its panel may ask not to shrink below a width (it scrolls).
            min_width = usermeta.get("minWidth")
            style = f' style="min-width:{int(min_width)}px"' if min_width else ""
            # A screen reader hears the short name, then the caption once (aria-describedby).
            name = escape(chart_name(chart.spec, panel.question, index, len(panel.charts)))
            alt = escape(normalise_glyphs(chart.alt))
            caption_id = f"panel-{key}-caption-{index}"
            # Until the reader reaches for it (a pointer over it, or the button), the chart
            # is its static image: drawing it takes the Vega runtime and a long task, which
            # scrolling past it should not pay. Without scripts the image is all there is.
            placeholder = ""
            if self.config.fallback_images:
                placeholder = self.static_box(key, index, chart, model, page, "fp-placeholder")
            # No role="img" on the chart's host: vega-embed puts its controls (sliders,
            # radios) inside it, and controls inside an image are hidden from assistive
            # technology. The script gives the drawn <svg>/<canvas> the role, the name and
            # the description; the static image before it has its own.
            figures.append(
                f'<figure class="fp-figure" id="panel-{key}-chart-{index}">'
                f'<div class="fp-chart" data-name="{name}" data-describedby="{caption_id}" '
                f"data-renderer=\"{escape(renderer)}\" data-spec='{attr_single(spec)}'>"
                # vega-embed relabels its host element, so it draws into this inner one.
                f'<div class="fp-vega"{style}></div>{placeholder}</div>'
                f'<button type="button" class="fp-explore" hidden>Explore this chart: '
                f"{name}</button>"
                '<noscript><p class="fp-noscript-note">This chart is interactive with scripts '
                "on.</p></noscript>"
                f'<figcaption id="{caption_id}">{alt}</figcaption></figure>'
            )
        return self.panel_html(key, panel, question, figures)

    def static_figure(
        self, key: str, index: int, chart: Any, panel: Any, model: ModelSite, page: Page
    ) -> str:
        """A chart without interaction, drawn at build time (`tracegen.static_charts`): the
        page shows it without the Vega runtime, with scripts on or off."""
        alt = escape(normalise_glyphs(chart.alt))
        caption_id = f"panel-{key}-caption-{index}"
        return (
            f'<figure class="fp-figure" id="panel-{key}-chart-{index}">'
            f"{self.static_box(key, index, chart, model, page)}"
            f'<figcaption id="{caption_id}">{alt}</figcaption></figure>'
        )

    def static_box(
        self, key: str, index: int, chart: Any, model: ModelSite, page: Page, extra: str = ""
    ) -> str:
        """A chart's static images in a box that is the image: the short name, the caption
        as its description (read once). Its SVG files are added to the site once."""
        panel = model.panels[key]
        name = escape(chart_name(chart.spec, panel.question, index, len(panel.charts)))
        caption_id = f"panel-{key}-caption-{index}"
        spec = site_spec(chart.spec)
        svgs = static_charts.static_svgs(spec)
        srcs = {}
        for layout in static_charts.LAYOUTS:
            for theme in static_charts.PALETTES:
                uri = f"{ASSET_DIR}/charts/{model.slug}-{key}-{index}-{layout}-{theme}.svg"
                if uri not in self.static_files:
                    self.static_files.add(uri)
                    content = static_charts.themed(svgs[layout], theme)
                    self.files.append(File.generated(self.mkdocs_config, uri, content=content))
                srcs[(layout, theme)] = escape(get_relative_url(uri, page.url))
        # One view fills its panel as a drawn chart does (the tests tell the kinds apart).
        single = not static_charts.is_multi(spec)
        images = static_charts.images_html(srcs, svgs, single)
        classes = " ".join(["fp-static", *([extra] if extra else [])])
        return (
            f'<div class="{classes}" role="img" aria-label="{name}" '
            f'aria-describedby="{caption_id}"{" data-fp-single" if single else ""}>{images}</div>'
        )

    def panel_html(self, key: str, panel: Any, question: str, figures: list[str]) -> str:
        verdict = escape(panel.verdict)
        slug = re.sub(r"[^a-z]+", "-", panel.verdict.lower()).strip("-")
        return (
            f'<aside class="fp-panel" id="panel-{key}" data-panel="{key}" tabindex="-1" '
            f'aria-labelledby="panel-{key}-q">'
            f'<div class="fp-panel-head"><h2 class="fp-question" id="panel-{key}-q">'
            f"{question}</h2>"
            f'<span class="fp-verdict fp-verdict--{slug}">{verdict}</span>'
            f'<a class="fp-permalink" href="#panel-{key}" title="Link to this panel">'
            f'<span aria-hidden="true">#</span>'
            f'<span class="fp-sr">Link to the panel: {question}</span></a></div>'
            f'{"".join(figures)}<div class="fp-caption">{normalise_glyphs(panel.caption)}</div>'
            "</aside>"
        )


# --- helpers ------------------------------------------------------------------------------------


# One glyph per whitespace kind on every page (text.show_token: ␣ space, ↵ newline, ⇥ tab);
# panels/common.py still writes ⏎ for a newline in context snippets (until it adopts ↵).
GLYPH_FIXES = {"⏎": "↵"}


def normalise_glyphs(text: str) -> str:
    for old, new in GLYPH_FIXES.items():
        text = text.replace(old, new)
    return text


def site_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A panel's spec as the site shows it: with the site's whitespace glyphs (this goes once
    the panels write them themselves). Its colours are the panels' own, from
    `tracegen.colours`."""
    return json.loads(normalise_glyphs(json.dumps(spec, ensure_ascii=False)))


def chart_name(spec: dict[str, Any], question: str, index: int, count: int) -> str:
    """A chart's short accessible name: its title as a wide panel shows it; for views stacked
    or side by side without one, the first view's title and how many more there are; else
    the question."""
    if title := title_text(spec.get("title")):
        return title
    views = [t for view in sub_views(spec) if (t := title_text(view.get("title")))]
    if views:
        more = len(views) - 1
        return views[0] + (f", and {more} more view{'s' if more > 1 else ''}" if more else "")
    return question if count == 1 else f"{question} (chart {index + 1} of {count})"


def title_text(title: Any) -> str | None:
    """A Vega-Lite title as one line (a title that wraps on a phone is an expression
    `narrow ? [lines] : "one line"`)."""
    text = title.get("text") if isinstance(title, dict) else title
    if isinstance(text, dict) and isinstance(text.get("expr"), str):
        _, _, one_line = text["expr"].rpartition(" : ")
        try:
            text = json.loads(one_line)
        except ValueError:
            text = None
    if isinstance(text, list):
        text = " ".join(str(line) for line in text)
    return normalise_glyphs(text.strip()) if isinstance(text, str) and text.strip() else None


def sub_views(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The views of a concatenated chart, in reading order, nested ones flattened."""
    views: list[dict[str, Any]] = []
    for key in ("vconcat", "hconcat", "concat"):
        for view in spec.get(key) or []:
            if isinstance(view, dict):
                views += sub_views(view) if not view.get("title") else [view]
    return views


def is_interactive(spec: Any) -> bool:
    """Does the chart have controls or a selection (params with `bind` or `select`)?"""
    if isinstance(spec, dict):
        for param in spec.get("params") or []:
            if isinstance(param, dict) and ("bind" in param or "select" in param):
                return True
        return any(is_interactive(v) for k, v in spec.items() if k not in ("data", "datasets"))
    if isinstance(spec, list):
        return any(is_interactive(v) for v in spec)
    return False


def resolve_trace_path(configured: str, config_file: str | None) -> Path:
    """FORWARD_PASS_TRACE wins over the `trace` option; relative paths are from mkdocs.yml."""
    return resolve_trace_paths(configured, [], config_file)[0]


def resolve_trace_paths(configured: str, several: list[Any], config_file: str | None) -> list[Path]:
    """The traces the site shows, the story page's own first (see `trace_folders`)."""
    return [path for _, path in trace_folders(configured, several, config_file)]


def trace_folders(
    configured: str, several: list[Any], config_file: str | None
) -> list[tuple[str, Path]]:
    """The traces the site shows, the story page's own first, each as it was named and as
    an absolute path. FORWARD_PASS_TRACE (one trace) wins over the options; then `traces`
    (a list), then `trace`. Relative paths are from mkdocs.yml."""
    root = Path(config_file).parent if config_file else Path.cwd()
    raws = [os.environ[TRACE_ENV]] if os.environ.get(TRACE_ENV) else [str(t) for t in several]
    folders = []
    for raw in raws or [configured]:
        path = Path(raw).expanduser()
        folders.append((raw, (path if path.is_absolute() else root / path).resolve()))
    return folders


def build_panel_map(trace: Trace) -> dict[str, Any]:
    try:
        from tracegen.panels import build_panels
    except ImportError as error:
        raise PluginError(f"forward-pass: tracegen.panels has no build_panels ({error})") from None
    panels: dict[str, Any] = {}
    try:
        built = build_panels(trace)
    except TraceError as error:  # a damaged layer file is found when a panel reads it
        raise PluginError(f"forward-pass: cannot load trace: {error}") from None
    for panel in built:
        if panel.key in panels:
            raise PluginError(f"forward-pass: build_panels returned panel {panel.key!r} twice")
        panels[panel.key] = panel
    return panels


def check_markers(markdown: str, panels: dict[str, Any]) -> None:
    """Every marker needs a panel and every panel a marker, each exactly once."""
    keys = PANEL_MARKER.findall(markdown)
    problems = []
    if START_MARKER not in markdown:
        problems.append(f"no {START_MARKER} marker")
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        problems.append(f"markers used twice: {', '.join(dupes)}")
    if missing := [k for k in keys if k not in panels]:
        problems.append(f"markers without a panel from build_panels: {', '.join(missing)}")
    if unplaced := [k for k in panels if k not in keys]:
        problems.append(f"panels without a <!-- panel: KEY --> marker: {', '.join(unplaced)}")
    if problems:
        raise PluginError("forward-pass: story page: " + "; ".join(problems))


def vega_bundle() -> str:
    if "bundle" not in _BUNDLE_CACHE:
        import vl_convert

        _BUNDLE_CACHE["bundle"] = vl_convert.javascript_bundle()
    return _BUNDLE_CACHE["bundle"]


# --- generated Markdown for <!-- fp: NAME --> markers ----------------------------------------


# Every string from the trace goes through tracegen.text: `md_text` inline, `code_md` for
# code, `pre_md` for blocks. No Markdown code spans or fences (a backtick or a line of them in
# the text would end them), no trace string in a link, a heading or a URL.


def model_line_html(plugin: ForwardPassPlugin, model: ModelSite, page: Page) -> str:
    """One paragraph of HTML naming the model the panels show (trace text through `escape`)."""
    m, t = model.trace.model, model.trace
    made = plugin.files.get_file_from_path(model.made_uri) if plugin.files else None
    href = get_relative_url(made.url if made else "made.html", page.url)
    return (
        f'<p class="fp-model-line">The panels beside each paragraph show what '
        f"<strong>{escape(m.slug)}</strong> ({m.n_layers} layers, {m.n_heads} heads, "
        f"{fmt_short_count(m.n_params)} parameters) computed on the story's own prompt of "
        f'{t.n_prompt} tokens. <a href="{escape(href)}">How this was made</a>.</p>'
    )


def fill_model_line(plugin: ForwardPassPlugin, page: Page) -> str:
    """The model line, and with several models the switcher: buttons (hidden until its script
    runs, since without it they could do nothing) that swap every panel to another model."""
    line = model_line_html(plugin, plugin.models[0], page)
    if len(plugin.models) < 2:
        return line
    models = [
        {
            "slug": model.slug,
            "script": "" if model.primary else get_relative_url(model.data_uri, page.url),
        }
        for model in plugin.models
    ]
    buttons = "".join(
        f'<button type="button" class="fp-model-button" data-fp-model="{model.slug}" '
        f'aria-pressed="{"true" if model.primary else "false"}">'
        f"{escape(model.trace.model.slug)}</button>"
        for model in plugin.models
    )
    data = attr_single(json.dumps(models, ensure_ascii=True, separators=(",", ":")))
    return (
        f'<div class="fp-models" role="group" aria-label="Model" hidden '
        f"data-fp-models='{data}'><span class=\"fp-models-label\">Model:</span> {buttons}"
        f"</div>\n{line}"
    )


def fill_model_card(plugin: ForwardPassPlugin, page: Page) -> str:
    m = plugin.model_of(page).trace.model
    origin = plugin.model_of(page).provenance
    rows = [
        ("Model spec", code_md(origin.spec)),
        ("Source", source_text(origin)),
        ("Architecture", f"{code_md(m.architecture)} ({code_md(m.model_type)})"),
        ("Layers", m.n_layers),
        ("Attention heads (query / key-value)", f"{m.n_heads} / {m.n_kv_heads}"),
        ("Width d_model / d_head / d_mlp", f"{m.d_model} / {m.d_head} / {m.d_mlp}"),
        ("Vocabulary", f"{m.vocab_size:,}"),
        ("Parameters", f"{m.n_params:,}"),
        ("Weights dtype", code_md(m.dtype)),
        ("Max context", f"{m.max_context:,} tokens"),
    ]
    return table(("Property", "Value"), rows)


def source_text(origin: Provenance) -> str:
    """Where the weights come from, portably (`tracegen.provenance`)."""
    digest = f" (sha256 <code>{md_text(origin.sha256)}</code>)" if origin.sha256 else ""
    if origin.kind == "bundled":
        package = code_md(origin.package)
        return f"{code_md(origin.weights)}{digest}, shipped in the Python package {package}"
    if origin.kind == "gguf":
        return f"the GGUF file {code_md(origin.weights)}{digest}"
    if origin.kind == "hub":
        return f"the Hugging Face model {code_md(origin.weights)}"
    return f"the local model folder {code_md(origin.weights)}"


def fill_committed(plugin: ForwardPassPlugin, page: Page) -> str:
    origin = plugin.model_of(page).provenance
    where = code_md(origin.out + "/")
    if origin.committed:
        return f"The trace's raw files, as committed to the project's repository under {where}"
    return f"The trace's raw files, read from {where} when the site was built ({kept(origin)})"


def kept(origin: Provenance) -> str:
    """Where a trace that is not (known to be) committed is kept, in words."""
    if not origin.inside:
        return "a folder outside the project: they are not committed to its repository"
    if origin.committed is False:
        return "they are not committed to the project's repository, or have changed since they were"
    return "whether they are committed is not known: the project is not a git checkout here"


def fill_rebuild(plugin: ForwardPassPlugin, page: Page) -> str:
    """How to build this site again: `make serve` where it was built from committed traces as
    mkdocs.yml names them, else `mkdocs build` from the folders it was built from."""
    origin = plugin.model_of(page).provenance
    one_trace = bool(os.environ.get(TRACE_ENV))
    if not one_trace and all(model.provenance.committed for model in plugin.models):
        return (
            "Rebuild and serve this site from the committed traces (no torch needed):\n\n"
            + pre_md("make serve")
        )
    where = code_md(origin.out + "/")
    if one_trace:
        state = "" if origin.committed else f" ({kept(origin)})"
        lead = f"This site was built from one trace, {where}, that {TRACE_ENV} named{state}."
        command = f"{TRACE_ENV}={shlex.quote(origin.out)} mkdocs build"
    else:
        uncommitted = [m for m in plugin.models if not m.provenance.committed]
        names = ", ".join(code_md(m.provenance.out + "/") for m in uncommitted)
        lead = (
            f"This site was built from the traces mkdocs.yml names, and {names} "
            f"{'is' if len(uncommitted) == 1 else 'are'} not known to be committed "
            f"({kept(uncommitted[0].provenance)})."
        )
        command = "mkdocs build"
    return (
        f"{lead} Build it again from the same folders (no torch needed), from the project's "
        "root:\n\n" + pre_md(command)
    )


def fill_regenerate(plugin: ForwardPassPlugin, page: Page) -> str:
    origin = plugin.model_of(page).provenance
    needs = {
        "bundled": f"the package {code_md(origin.package)} installed",
        "gguf": f"the file {code_md(origin.weights)} at {code_md(origin.spec)}",
        "hub": f"the hub model {code_md(origin.weights)} reachable or cached",
        "folder": f"the model folder at {code_md(origin.spec)}",
    }.get(origin.kind, "the model")
    checksum = (
        f" (its sha256 must be <code>{md_text(origin.sha256)}</code>)" if origin.sha256 else ""
    )
    outside = (
        ""
        if origin.inside
        else f" (it goes where this one was kept, {code_md(origin.out)}, outside the project)"
    )
    return (
        f"Regenerate this trace from the real model, from the project's root, with {needs}"
        f"{checksum} and the tracing extra installed (`pip install '.[trace]'`){outside}:\n\n"
        + pre_md(origin.command)
    )


# What each check of the parity gate compares (tracegen/verify.py says how).
GATE_CHECKS = {
    "lens_logprobs": "logit lens at the last depth vs the model's own log-probabilities",
    "block_identity": "resid_out = resid_in + attn_out + mlp_out, relative to |resid_out|",
    "residual_chain": "resid_in of each block = resid_out of the block before",
    "attention": "what the trace keeps of the attention (all of it, whole rows or each row's "
    "top keys, as the trace's attention policy says) vs the model's own, every layer and head",
    "head_scores": "first-token, previous-token and induction scores vs the same scores of "
    "the model's own attention",
    "qk_scores": "softmax of the recorded queries and keys vs the layer's probabilities",
    "attribution_sum": "direct logit attribution parts sum to the logit",
    "lens_statistics": "the lens's entropy and KL vs float64, every depth, the answer position "
    "and a spread of others",
}


def fill_gate(plugin: ForwardPassPlugin, page: Page) -> str:
    gate = plugin.model_of(page).trace.manifest.get("gate")
    if not isinstance(gate, dict) or not isinstance(gate.get("checks"), dict):
        return "This trace was made before the parity gate existed: it records no checks."
    rows = []
    for name, check in gate["checks"].items():
        what = GATE_CHECKS.get(name, "")
        rows.append((
            f"{code_md(name)}: {md_text(what)}",
            f"{float(check['error']):.2e} (tolerance {float(check['tolerance']):.0e}, "
            f"{md_text(check['where'])})",
        ))  # fmt: skip
    verdict = "passed" if gate.get("passed") is True else "did **not** pass"
    sums = (
        "sum to 1"
        if gate.get("attention_rows_sum_to_one")
        else "do not all sum to 1 (the model has attention sinks or similar)"
    )
    return (
        f"Every check {verdict} for this trace, made in {code_md(gate.get('dtype'))}; "
        f"the model's own attention rows {sums}.\n\n" + table(("Check", "Largest error"), rows)
    )


# The manifest's sections that get a heading of their own, in this order; anything else a
# trace carries is listed under "Other fields" (its names are trace text, not headings).
PROVENANCE_SECTIONS = ("model", "tokenizer", "prompt", "run", "derived", "libraries")
# The gate has a section of its own on the page.
PROVENANCE_SKIP = {
    "tokens", "vocabulary", "schema", "schema_version", "sha256", "n_positions", "gate"
}  # fmt: skip
PROVENANCE_SKIP_FIELDS = {("prompt", "text")}


def fill_provenance(plugin: ForwardPassPlugin, page: Page) -> str:
    """The rest of the manifest, one table per section (token lists and the prompt text are
    shown elsewhere, the checksums with the downloads; the vocabulary is only counted)."""
    manifest = plugin.model_of(page).trace.manifest
    card = set(ModelCard.__dataclass_fields__)
    parts = []
    for section in PROVENANCE_SECTIONS:
        value = manifest.get(section)
        if not isinstance(value, dict):
            continue
        rows: list[tuple[str, str]] = []
        for key in sorted(value):
            if (section, key) in PROVENANCE_SKIP_FIELDS or (section == "model" and key in card):
                continue
            flatten(f"{section}.{key}", value[key], rows)
        if rows:
            parts.append(f"### The {section} section\n\n" + table(("Field", "Value"), rows))
    others: list[tuple[str, str]] = []
    for section in sorted(manifest):
        if section not in PROVENANCE_SECTIONS and section not in PROVENANCE_SKIP:
            flatten(section, manifest[section], others)
    if others:
        parts.append("### Other fields\n\n" + table(("Field", "Value"), others))
    parts.append(
        f"The manifest also keeps the text of {len(manifest['vocabulary']):,} vocabulary "
        "entries that the charts name (top-k predictions, watched tokens)."
    )
    return "\n\n".join(parts)


def flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    """Nested manifest values as `a.b[0].c` rows; long lists are summarised, not dumped."""
    if isinstance(value, dict):
        for key in sorted(value):
            flatten(f"{prefix}.{key}", value[key], rows)
        return
    if isinstance(value, list) and 0 < len(value) <= 4 and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            flatten(f"{prefix}[{index}]", item, rows)
        return
    if isinstance(value, list) and len(value) > 8:
        text = f"{len(value)} items: {json.dumps(value[:3], ensure_ascii=False)[:-1]}, …]"
    else:
        text = json.dumps(value, ensure_ascii=False)
    if len(text) > 100:
        text = text[:97] + "…"
    rows.append((code_md(prefix), code_md(text)))


def fill_prompt(plugin: ForwardPassPlugin, page: Page) -> str:
    return pre_md(plugin.model_of(page).trace.prompt_text)


def fill_tokens(plugin: ForwardPassPlugin, page: Page) -> str:
    t = plugin.model_of(page).trace
    spans = []
    prompt = zip(t.token_ids[: t.n_prompt], t.token_strings[: t.n_prompt], strict=True)
    for index, (tid, text) in enumerate(prompt):
        # The story page's glyphs (text.show_token), every space a ␣ (not only a leading one).
        shown = show_token(text).replace(" ", "␣")
        title = md_text(f"#{index} id {tid}: {json.dumps(text, ensure_ascii=False)}")
        spans.append(f'<span class="fp-tok" title="{title}">{md_text(shown)}</span>')
    lead = (
        f"The tokenizer splits the prompt into **{t.n_prompt} tokens** "
        "(␣ is a space, ↵ a newline, ⇥ a tab; hover a token for its id):"
    )
    return f'{lead}\n\n<div class="fp-tokens">{"".join(spans)}</div>'


def fill_downloads(plugin: ForwardPassPlugin, page: Page) -> str:
    files = plugin.model_of(page).trace.files()
    if not plugin.config.raw_trace:
        origin = plugin.model_of(page).provenance
        where = code_md(origin.out + "/")
        place = (
            f"are in the project's repository under {where}"
            if origin.committed
            else f"were read from {where} ({kept(origin)})"
        )
        return (
            f"This copy of the site leaves the raw trace out (`raw_trace: false`): its "
            f"{len(files)} files, {fmt_file_size(sum(p.stat().st_size for p in files))}, {place}."
        )

    def link(name: str, uri: str) -> str:
        # Markdown links are relative to the source file; MkDocs rewrites them for the URL.
        # The names are the schema's own (layer_000.safetensors ...), never trace text.
        return f"[`{name}`]({get_relative_url(uri, page.file.src_uri)})"

    sums = plugin.model_of(page).trace.manifest["sha256"]
    archive = publish.trace_archive(files, plugin.model_of(page).trace.model.slug)
    archive_link = link(
        Path(plugin.model_of(page).archive_uri).name, plugin.model_of(page).archive_uri
    )
    rows = [(f"{archive_link}: all files in one zip", fmt_file_size(len(archive)), "")]
    for path in files:
        digest = f"<code>{sums[path.name]}</code>" if path.name in sums else ""
        rows.append(
            (link(path.name, f"{plugin.model_of(page).trace_uri}/{path.name}"),
             fmt_file_size(path.stat().st_size), digest)
        )  # fmt: skip
    total = sum(path.stat().st_size for path in files)
    rows.append((f"**{len(files)} files**", f"**{fmt_file_size(total)}**", ""))
    return table(("File", "Size", "sha256"), rows)


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fill_claims(plugin: ForwardPassPlugin, page: Page) -> str:
    """Every checkable claim of the narrator against every model: the verdict its panel
    decided and the one number that decides it (`tracegen.panels.claims`, from the same
    facts the panels show), each cell linking to that model's panel on the story page."""
    from tracegen.panels.claims import CLAIMS, judge

    story = get_relative_url(plugin.config.story_page, page.file.src_uri)
    columns = [judge({key: panel.facts for key, panel in m.panels.items()}) for m in plugin.models]
    header = ("The narrator says", *(code_md(m.trace.model.slug) for m in plugin.models))
    rows = []
    for index, claim in enumerate(CLAIMS):
        cells = []
        for model, judged in zip(plugin.models, columns, strict=True):
            cell = judged[index]
            query = "" if model.primary else f"?model={model.slug}"
            slug = re.sub(r"[^a-z]+", "-", cell.verdict.lower()).strip("-")
            # The story page's URL, with the model and the panel: a link MkDocs leaves as it is.
            href = story.replace(".md", ".html") + query + f"#panel-{claim.key}"
            cells.append(
                f'<a href="{escape(href)}" class="fp-claim">'
                f'<span class="fp-verdict fp-verdict--{slug}">{md_text(cell.verdict)}</span> '
                f"{md_text(cell.number)}</a>"
            )
        rows.append((md_text(claim.said), *cells))
    return table(header, rows)


FILLERS: dict[str, Callable[[ForwardPassPlugin, Page], str]] = {
    "model-line": fill_model_line,
    "model-card": fill_model_card,
    "provenance": fill_provenance,
    "prompt": fill_prompt,
    "tokens": fill_tokens,
    "downloads": fill_downloads,
    "gate": fill_gate,
    "committed": fill_committed,
    "rebuild": fill_rebuild,
    "regenerate": fill_regenerate,
    "claims": fill_claims,
}
