"""Publishing the site: built for a URL under a subpath and served the way GitHub Pages serves a
project site (unknown paths answered by the site's 404 page, no folder listings), then checked
as files and in chromium: canonical links, sitemap, link-preview tags, the card image, the 404
page, instant navigation, navigation over file://, what gets published, the Pages workflow.

Chromium missing is a failure (site_helpers.chromium_path raises), never a skip.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from mkdocs.utils import yaml_load

from tests.site_helpers import (
    DEFAULT_TRACE,
    REPO,
    build_site,
    serve_like_pages,
)
from tracegen import card, publish
from tracegen.store import load_trace

PREFIX = "forward-pass"  # https://<user>.github.io/forward-pass/
REPO_URL = "https://github.com/example/forward-pass"
TABS = {
    "Story": "index.html",
    "Claims": "claims.html",
    "How this was made": "made.html",
    "Trace schema": "trace-schema.html",
    "Compatibility": "compatibility.html",
}
# Every page: the tabs', and the second model's own "How this was made" (mkdocs.yml's traces).
PAGES = [*TABS.values(), "made-gemma-3-270m-q4-k-m.html"]
WIDE = {"width": 1440, "height": 900}
WORKFLOW = REPO / ".github" / "workflows" / "pages.yml"


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(site folder, its URL): built for http://127.0.0.1:<port>/forward-pass/ with a
    repository URL, served from the subfolder of a GitHub-Pages-like server."""
    root = tmp_path_factory.mktemp("pages")
    with serve_like_pages(root, PREFIX) as url:
        build_site(root / PREFIX, site_url=url, env={"REPO_URL": REPO_URL})
        yield root / PREFIX, url


@pytest.fixture(scope="module")
def site(hosted: tuple[Path, str]) -> Path:
    return hosted[0]


@pytest.fixture(scope="module")
def url(hosted: tuple[Path, str]) -> str:
    return hosted[1]


def site_description() -> str:
    with (REPO / "mkdocs.yml").open(encoding="utf-8") as file:
        return yaml_load(file)["site_description"]


class Head(HTMLParser):
    """<meta> and <link> tags of a page, as a browser's parser reads their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, list[str]] = {}
        self.links: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "meta" and ("name" in a or "property" in a):
            self.meta.setdefault(a.get("name") or a["property"], []).append(a.get("content", ""))
        if tag == "link" and "rel" in a:
            self.links.setdefault(a["rel"], []).append(a.get("href", ""))


def head(page: Path) -> Head:
    parser = Head()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# --- the built files ------------------------------------------------------------------------


def test_canonical_sitemap_and_tags_name_the_public_url(site: Path, url: str) -> None:
    sitemap = (site / "sitemap.xml").read_text(encoding="utf-8")
    # MkDocs lists pages in its own order (by path), not the nav's
    assert sorted(re.findall(r"<loc>([^<]+)</loc>", sitemap)) == sorted(url + p for p in PAGES)
    for page in PAGES:
        tags = head(site / page)
        assert tags.links["canonical"] == [url + page]
        assert tags.meta["og:url"] == [url + page]
        assert tags.meta["og:image"] == [url + "assets/forward-pass/card.png"]
        assert tags.meta["twitter:card"] == ["summary_large_image"]
        assert tags.meta["twitter:image"] == tags.meta["og:image"]
        # One description each, whole: quotes in site_description no longer end the attribute.
        for name in ("description", "og:description", "twitter:description"):
            assert tags.meta[name] == [site_description()], name
        assert '"' in site_description() and "'" in site_description()
        titles = ("Forward Pass, annotated", "How", "Trace", "Claims", "Compatibility")
        assert tags.meta["og:title"][0].startswith(titles)
        assert tags.meta["og:image:alt"][0].startswith("Forward Pass, annotated: for each token")


def test_404_page_takes_its_assets_from_the_site_root(site: Path) -> None:
    """GitHub Pages answers /forward-pass/any/depth/ with 404.html: its links must not be
    relative to wherever that is."""
    refs = re.findall(r'(?:href|src)="([^"#]+)"', (site / "404.html").read_text("utf-8"))
    local = [ref for ref in refs if not ref.startswith(("http:", "https:"))]
    assert local and all(ref.startswith(f"/{PREFIX}/") for ref in local), local


def test_published_files(site: Path) -> None:
    """What a reader can reach, and nothing else: no test fixtures, none of the search files
    of a site without search, no source maps, the card, the license and the raw trace."""
    published = {path.relative_to(site).as_posix() for path in site.rglob("*") if path.is_file()}
    assert not any("forward-pass.txt" in name for name in published)
    assert not [name for name in published if "lunr" in name or "workers/search" in name]
    assert not [name for name in published if name.endswith(".map")]
    assert "search/search_index.json" not in published
    assert "assets/images/favicon.png" not in published  # the theme's; ours is the SVG
    assert (site / "LICENSE.txt").read_bytes() == (REPO / "LICENSE").read_bytes()
    assert png_size((site / "assets/forward-pass/card.png").read_bytes()) == (1200, 630)
    assert (site / "assets/images/forward-pass.svg").read_text("utf-8").startswith("<svg")
    trace = load_trace(DEFAULT_TRACE)
    slug = trace.model.slug
    for path in trace.files():
        assert (site / "traces" / slug / path.name).read_bytes() == path.read_bytes()
    expected = {"404.html", "sitemap.xml", "sitemap.xml.gz", "LICENSE.txt", *PAGES}
    assert expected <= published


def test_trace_archive_is_complete_and_reproducible(site: Path) -> None:
    trace = load_trace(DEFAULT_TRACE)
    slug = trace.model.slug
    published = (site / "traces" / f"{slug}.zip").read_bytes()
    with zipfile.ZipFile(site / "traces" / f"{slug}.zip") as archive:
        infos = archive.infolist()
        assert [info.filename for info in infos] == [f"{slug}/{p.name}" for p in trace.files()]
        for info, path in zip(infos, trace.files(), strict=True):
            assert archive.read(info) == path.read_bytes()
            assert info.date_time == publish.ZIP_EPOCH
    publish._ARCHIVE_CACHE.clear()  # built again from the files, not taken from the cache
    assert publish.trace_archive(trace.files(), slug) == published
    made = (site / "made.html").read_text(encoding="utf-8")
    assert f'href="traces/{slug}.zip"' in made
    size = f"{len(published) / 1e6:.1f} MB"
    assert re.search(rf"{slug}\.zip</code></a>: all files in one zip</td>\s*<td>{size}</td>", made)


def test_card_shows_the_traced_answer_through_depth() -> None:
    trace = load_trace(DEFAULT_TRACE)
    facts = card.card_facts(trace)
    steps = trace.n_positions - trace.n_prompt + 1  # generated tokens with a traced position
    assert len(facts["rows"]) == min(steps, len(trace.generated_strings))
    labels = [f"{k + 1}. {card.token_label(t)}" for k, t in enumerate(trace.generated_strings)]
    assert [row["token"] for row in facts["rows"]] == labels[: len(facts["rows"])]
    final = trace.derived("lens_target_prob")[-1]  # [N] at the last depth
    for step, row in enumerate(facts["rows"]):
        assert len(row["p"]) == trace.n_layers + 1
        assert all(0 <= p <= 1 for p in row["p"])
        assert row["p"][-1] == pytest.approx(final[trace.n_prompt - 1 + step], abs=5e-4)
    assert card.token_label("\n") == "(newline)" and card.token_label(" two") == "“two”"
    answer = "".join(trace.generated_strings[: len(facts["rows"])]).strip()
    assert f"“Your {answer}”" in card.card_spec(trace)["title"]["subtitle"][0]


def test_small_site_leaves_the_raw_trace_and_repository_link_out(tmp_path: Path) -> None:
    """FORWARD_PASS_RAW_TRACE=false and no REPO_URL: no trace files, no archive, no repository
    link; the made page says where the trace is instead of linking to missing files."""
    site = tmp_path / "site"
    build_site(site, env={"FORWARD_PASS_RAW_TRACE": "false"})
    assert not (site / "traces").exists()
    made = (site / "made.html").read_text(encoding="utf-8")
    assert "leaves the raw trace out" in made
    assert 'href="traces/' not in made
    assert 'class="md-source"' not in made and "source code</a>" not in made
    assert '<a href="LICENSE.txt">license text</a>' in made
    # The default site_url is where `make serve` serves it.
    assert head(site / "made.html").links["canonical"] == ["http://127.0.0.1:8000/made.html"]


def test_header_links_the_repository_without_asking_its_api(site: Path) -> None:
    """Material's own repository widget fetches stars and forks from the forge's API; ours is
    a plain link, so the site still makes no request to another host."""
    for page in PAGES:
        text = (site / page).read_text(encoding="utf-8")
        assert f'<a href="{REPO_URL}" title="Go to repository" class="md-source">' in text
        assert 'data-md-component="source"' not in text


# --- the Pages workflow and the README --------------------------------------------------------


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert binary, "actionlint is not installed (pip install '.[test]')"
    return subprocess.run([binary, "-no-color", str(path)], capture_output=True, text=True)


def test_pages_workflow_passes_actionlint(tmp_path: Path) -> None:
    done = actionlint(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    # The linter does catch mistakes: a step output that no step sets.
    broken = tmp_path / ".github" / "workflows" / "pages.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text("utf-8").replace("steps.pages.", "steps.nope."), "utf-8")
    assert actionlint(broken).returncode != 0


def test_pages_workflow_builds_the_readme_way_and_deploys_with_pages_actions() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    for action in ("actions/configure-pages@", "actions/upload-pages-artifact@",
                   "actions/deploy-pages@"):  # fmt: skip
        assert f"uses: {action}" in text, action
    assert "run: make site" in text
    assert "SITE_URL: ${{ steps.pages.outputs.base_url }}/" in text
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    # The site's locked dependencies (no torch), then the strict build.
    assert re.search(r"^\$\(SITE_DEPS\):.*\n\t\$\(INSTALL\) -r requirements/site.txt\n",
                     makefile, re.MULTILINE)  # fmt: skip
    assert re.search(r"^site: \$\(SITE_DEPS\)\n\t\$\(BIN\)/mkdocs build --strict$", makefile,
                     re.MULTILINE)  # fmt: skip
    assert re.search(r"^INSTALL := \$\(BIN\)/pip install --quiet --require-hashes$", makefile,
                     re.MULTILINE)  # fmt: skip
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "mkdocs gh-deploy --strict" in readme and "SITE_URL=" in readme


# --- in chromium --------------------------------------------------------------------------------


class Recorder:
    """Every request of a page that failed or was answered with an error, and every request
    that left the site's origin."""

    def __init__(self, page: Any, origin: str, expected_404: str | None = None):
        self.page = page
        self.failed: list[str] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        def on_failed(request: Any) -> None:
            # ERR_ABORTED: the browser cancelled it (the page was left while an image loaded);
            # a missing file shows up below as a response with an error status.
            if "ERR_ABORTED" not in (request.failure or ""):
                self.failed.append(f"{request.url} ({request.failure})")

        page.on("requestfailed", on_failed)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def on_response(response: Any) -> None:
            if response.status >= 400 and response.url != expected_404:
                self.failed.append(f"{response.url} ({response.status})")

        def on_request(request: Any) -> None:
            if not request.url.startswith((origin, "data:", "blob:", "about:", "file:")):
                self.foreign.append(request.url)

        page.on("response", on_response)
        page.on("request", on_request)

    def check_clean(self) -> None:
        assert self.failed == [], f"failed requests: {self.failed}"
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"
        assert self.errors == [], f"page errors: {self.errors}"


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    contexts = []

    def make() -> Any:
        context = browser.new_context(viewport=WIDE)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def origin(url: str) -> str:
    return re.match(r"https?://[^/]+/", url).group(0)


@pytest.mark.browser
def test_tags_sitemap_and_card_as_served(new_page, url: str) -> None:
    page = new_page()
    recorder = Recorder(page, origin(url))
    for name in PAGES:
        page.goto(url + name, wait_until="load")
        meta = page.evaluate(
            "() => Object.fromEntries([...document.querySelectorAll('meta[property], meta[name]')]"
            ".map(m => [m.getAttribute('property') || m.name, m.content]))"
        )
        assert page.get_attribute("link[rel=canonical]", "href") == url + name
        assert meta["og:url"] == url + name
        assert meta["description"] == meta["og:description"] == site_description()
        assert page.locator("meta[name=description]").count() == 1
        card = page.request.get(meta["og:image"])
        assert card.status == 200 and card.headers["content-type"] == "image/png"
        assert png_size(card.body()) == (int(meta["og:image:width"]), int(meta["og:image:height"]))
        icon = page.request.get(page.evaluate("document.querySelector('link[rel=icon]').href"))
        assert icon.status == 200 and icon.body().startswith(b"<svg")
    sitemap = page.request.get(url + "sitemap.xml")
    locs = re.findall(r"<loc>([^<]+)</loc>", sitemap.text())
    assert sorted(locs) == sorted(url + name for name in PAGES)  # MkDocs orders them by path
    assert all(page.request.get(loc).status == 200 for loc in locs)
    recorder.check_clean()


@pytest.mark.browser
@pytest.mark.parametrize("missing", ["no-such-page.html", "deeper/still/nothing/"])
def test_404_page_is_styled_at_any_depth(new_page, url: str, missing: str) -> None:
    page = new_page()
    page.goto(url, wait_until="load")
    header = page.evaluate("getComputedStyle(document.querySelector('.md-header')).backgroundColor")
    recorder = Recorder(page, origin(url), expected_404=url + missing)
    response = page.goto(url + missing, wait_until="networkidle")
    assert response.status == 404
    assert page.inner_text("h1") == "404 - Not found"
    # Styled: the theme's header colour, a header-sized logo, the site's fonts and layout.
    assert (
        page.evaluate("getComputedStyle(document.querySelector('.md-header')).backgroundColor")
        == header
        != "rgba(0, 0, 0, 0)"
    )
    logo = page.locator(".md-header .md-logo img").bounding_box()
    assert logo and logo["height"] <= 48, logo
    recorder.check_clean()
    page.locator("a.md-tabs__link", has_text="How this was made").click()
    page.wait_for_url(url + "made.html")
    page.wait_for_selector(".fp-tokens")
    recorder.check_clean()


@pytest.mark.browser
def test_instant_navigation_under_a_subpath(new_page, url: str) -> None:
    """Landing on the folder URL, every tab is reached by instant navigation: the window
    survives (no full reload) and the address follows."""
    page = new_page()
    recorder = Recorder(page, origin(url))
    page.goto(url, wait_until="load")
    page.evaluate("window.__fpSamePage = true")
    for tab in ["How this was made", "Trace schema", "Story", "How this was made"]:
        page.locator("a.md-tabs__link", has_text=tab).click()
        page.wait_for_url(url + TABS[tab])
        page.wait_for_selector(".md-tabs__item--active", state="attached")
        assert page.evaluate("window.__fpSamePage === true"), f"{tab}: the page reloaded"
        active = page.inner_text(".md-tabs__item--active")
        assert active.strip() == tab
    assert page.locator(".fp-tokens").count() == 1
    recorder.check_clean()


@pytest.mark.browser
def test_file_url_navigation_between_pages(new_page, site: Path) -> None:
    """Opened from disk, every tab opens its page (never a directory listing)."""
    page = new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((site / "index.html").as_uri(), wait_until="load")
    for tab in ["How this was made", "Trace schema", "Story"]:
        page.locator("a.md-tabs__link", has_text=tab).click()
        page.wait_for_url((site / TABS[tab]).as_uri())
        assert "Index of" not in page.title()
        assert page.inner_text(".md-tabs__item--active").strip() == tab
    page.wait_for_selector(".fp-chart")
    assert errors == []


@pytest.mark.browser
def test_rights_and_repository_link_as_served(new_page, url: str) -> None:
    page = new_page()
    recorder = Recorder(page, origin(url))
    page.goto(url + "made.html", wait_until="networkidle")
    assert page.get_attribute(".md-header a.md-source", "href") == REPO_URL
    footer = page.inner_text(".md-copyright")
    assert "belongs to its author" in footer and "Andrej Karpathy" in footer
    assert "MIT License" in footer
    assert page.locator(".md-copyright a", has_text="source code").get_attribute("href") == REPO_URL
    license_url = page.evaluate("document.querySelector('.md-copyright a[href$=\".txt\"]').href")
    assert license_url == url + "LICENSE.txt"
    assert "MIT License" in page.request.get(license_url).text()
    archive = page.evaluate("document.querySelector('a[href$=\".zip\"]').href")
    assert page.request.head(archive).status == 200
    recorder.check_clean()
