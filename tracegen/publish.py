"""What the site publishes besides its pages: the raw trace as one reproducible archive, the
project's license, and none of the theme's files that this site never loads.

Build-time only (the MkDocs plugin calls these); standard library only.
"""

from __future__ import annotations

import fnmatch
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# Material copies all of its static files into every site. These are loaded only by its
# search plugin (the lunr index and its 30 languages, the search worker) or only by a
# browser's developer tools (source maps): about 2.3 MB that no reader of this site fetches.
SEARCH_FILES = ("assets/javascripts/lunr/*", "assets/javascripts/workers/search.*")
SOURCE_MAPS = ("*.js.map", "*.css.map")
# Material's own favicon, replaced by the project's (theme.favicon in mkdocs.yml).
THEME_FAVICON = "assets/images/favicon.png"

# Every entry of the archive carries this time (the earliest a zip can store), so the
# archive's bytes depend only on the trace's bytes, not on when or where it was built.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ARCHIVE_CACHE: dict[tuple, bytes] = {}


def search_enabled(config: MkDocsConfig) -> bool:
    return any(name in config.plugins for name in ("search", "material/search"))


def unused_theme_files(files: Files, config: MkDocsConfig) -> list[File]:
    """The theme's static files that no page of this build loads."""
    patterns = list(SOURCE_MAPS)
    if not search_enabled(config):
        patterns += SEARCH_FILES
    if config.theme.get("favicon") != THEME_FAVICON:
        patterns.append(THEME_FAVICON)
    themes = [Path(folder).resolve() for folder in config.theme.dirs]

    def from_theme(file: File) -> bool:
        # Only the theme's copies: a file of the same name in docs/ is the author's own.
        source = Path(file.abs_src_path).resolve() if file.abs_src_path else None
        return source is not None and any(source.is_relative_to(theme) for theme in themes)

    return [
        file
        for file in files
        if from_theme(file) and any(fnmatch.fnmatch(file.src_uri, p) for p in patterns)
    ]


def prune_theme_files(files: Files, config: MkDocsConfig) -> int:
    """Drop the unused theme files; returns how many bytes that keeps out of the site."""
    saved = 0
    for file in unused_theme_files(files, config):
        saved += Path(file.abs_src_path or "").stat().st_size
        files.remove(file)
    return saved


def trace_archive(paths: Sequence[Path], folder: str) -> bytes:
    """The trace's files as one zip under `folder/`, in the given order, byte-reproducible:
    fixed times and permissions, one compression level (same bytes in, same bytes out with the
    same zlib). Cached for `mkdocs serve`, which rebuilds the whole site on every change."""
    key = (folder, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))
    if key not in _ARCHIVE_CACHE:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in paths:
                info = zipfile.ZipInfo(f"{folder}/{path.name}", date_time=ZIP_EPOCH)
                info.create_system = 3  # Unix, whatever builds it, so the mode bits below hold
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes(), compresslevel=6)
        _ARCHIVE_CACHE.clear()  # one trace per site: keep only the latest archive in memory
        _ARCHIVE_CACHE[key] = buffer.getvalue()
    return _ARCHIVE_CACHE[key]


def license_file(config: MkDocsConfig) -> Path | None:
    """The project's LICENSE beside mkdocs.yml, if there is one."""
    if not config.config_file_path:
        return None
    path = Path(config.config_file_path).parent / "LICENSE"
    return path if path.is_file() else None
