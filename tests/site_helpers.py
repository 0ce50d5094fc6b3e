"""Helpers for the site tests: build the site in-process, a synthetic trace, a stand-in panel set.

The synthetic trace and `stand_in_panels` exist so that the site shell can be tested before
(or independently of) the real panels and a real model trace. Nothing here ships in the package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tracegen.store import DERIVED_TENSORS, LAYER_TENSORS, Trace, write_trace

REPO = Path(__file__).resolve().parents[1]
STORY_FILE = REPO / "docs" / "forward-pass.txt"
DEFAULT_TRACE = REPO / "traces" / "smollm2-135m-instruct"
PANEL_KEYS = ["intro", *(f"p{i}" for i in range(1, 11))]


def story_lines() -> list[str]:
    """The story file, one entry per non-empty line (title, subtitle, paragraphs, prompt lines)."""
    text = STORY_FILE.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_site(
    site_dir: Path, trace: Path | None = None, strict: bool = True, site_url: str | None = None
) -> float:
    """Run `mkdocs build` in a subprocess (so env and entry points behave as for a user).

    Returns the wall time in seconds. Raises RuntimeError with mkdocs' output on failure.
    """
    import time

    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("FORWARD_PASS_TRACE", None)  # None: the trace that mkdocs.yml names
    if trace is not None:
        env["FORWARD_PASS_TRACE"] = str(trace)
    if site_url is not None:  # instant navigation needs the sitemap to name the served port
        env["FORWARD_PASS_SITE_URL"] = site_url
    mkdocs = Path(sys.executable).with_name("mkdocs")
    cmd = [str(mkdocs), "build", "--site-dir", str(site_dir), "--quiet"]
    if strict:
        cmd.append("--strict")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"mkdocs build failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def panels_available() -> bool:
    """True once tracegen.panels provides build_panels (written by the panels helper).

    FP_STAND_IN_PANELS=1 forces the stand-in, to test the site shell while panels are in flux.
    """
    import tracegen.panels

    if os.environ.get("FP_STAND_IN_PANELS") == "1":
        return False
    return hasattr(tracegen.panels, "build_panels")


# --- a synthetic trace ------------------------------------------------------------------------


def make_synthetic_trace(
    out_dir: Path,
    *,
    n_layers: int = 4,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 32,
    top_k: int = 5,
    seed: int = 0,
    slug: str = "synthetic",
) -> Path:
    """Write a small random trace with the right schema (shapes from LAYER/DERIVED_TENSORS)."""
    rng = np.random.default_rng(seed)
    prompt = (REPO / "tracegen" / "prompt.txt").read_text(encoding="utf-8")
    # One "token" per whitespace-separated word, enough to exercise token strips.
    words = prompt.replace("\n", " \n ").split(" ")
    strings = [(" " + w if i else w) for i, w in enumerate(words) if w]
    generated = [" foot", " has", " two", " eyes", "."]
    n_prompt = len(strings)
    n = n_prompt + len(generated) - 1  # the last generated token is never fed back
    watched = [{"text": t, "id": i} for i, t in enumerate([" two", " no", " zero", " one"])]
    attribution = ["embed", *[f"L{i}.{c}" for i in range(n_layers) for c in ("attn", "mlp")]]
    flops = ["attn_proj", "attn_scores", "mlp"]
    d_head = d_model // n_heads
    dims = {
        "L": n_layers, "L+1": n_layers + 1, "N": n, "P": n * (n + 1) // 2, "D": d_model,
        "H": n_heads, "G": n_kv_heads, "K": top_k, "W": len(watched),
        "C": len(attribution), "F": len(flops),
    }  # fmt: skip

    def random(shape: tuple[str, ...], name: str) -> np.ndarray:
        size = tuple(dims[s] for s in shape)
        if name == "lens_topk_ids":
            return rng.integers(0, 100, size=size).astype(np.int32)
        if name == "lens_target_rank":
            return rng.integers(0, 50, size=size).astype(np.int32)
        if name.endswith("probs") or name.endswith("_prob"):
            return rng.random(size).astype(np.float32)
        return rng.standard_normal(size).astype(np.float32)

    layers = [{k: random(s, k) for k, s in LAYER_TENSORS.items()} for _ in range(n_layers)]
    derived = {k: random(s, k) for k, s in DERIVED_TENSORS.items()}
    ids = list(range(n_prompt)) + list(range(1000, 1000 + len(generated) - 1))
    manifest: dict[str, Any] = {
        "model": {
            "spec": f"random:{slug}", "source": "synthetic (tests/site_helpers.py)", "slug": slug,
            "architecture": "LlamaForCausalLM", "model_type": "llama", "n_layers": n_layers,
            "n_heads": n_heads, "n_kv_heads": n_kv_heads, "d_model": d_model, "d_head": d_head,
            "d_mlp": 4 * d_model, "vocab_size": 100, "n_params": 12345, "dtype": "float32",
            "max_context": 2048,
        },
        "tokens": {
            "ids": ids, "strings": strings + generated[:-1], "n_prompt": n_prompt,
            "generated_ids": list(range(1000, 1000 + len(generated))),
            "generated_strings": generated,
        },
        "n_positions": n,
        "derived": {
            "top_k": top_k, "watched": watched, "attribution_components": attribution,
            "flops_components": flops,
        },
        "prompt": {"text": prompt, "sha256": "0" * 64},
        "provenance": {"tracegen": "0.1.0", "libraries": {"numpy": np.__version__}},
    }  # fmt: skip
    return write_trace(Path(out_dir), manifest, layers, derived, force=True)


# --- a stand-in for tracegen.panels.build_panels ----------------------------------------------


def stand_in_panels(trace: Trace) -> list[Any]:
    """Eleven simple panels whose numbers depend on the trace (so a swapped trace shows)."""
    from tracegen.panels import Chart, Panel

    entropy = trace.derived("lens_entropy")  # [L+1, N]
    last = entropy[:, -1]
    panels = []
    for key in PANEL_KEYS:
        bars = {
            "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "data": {"values": [{"layer": i, "entropy": round(float(v), 3)}
                                for i, v in enumerate(last)]},
            "mark": "bar",
            "encoding": {"x": {"field": "layer", "type": "ordinal"},
                         "y": {"field": "entropy", "type": "quantitative"},
                         "tooltip": [{"field": "layer"}, {"field": "entropy"}]},
            "width": "container", "height": 120,
        }  # fmt: skip
        rows = np.round(entropy.astype(np.float64), 2).tolist()
        heat = {
            "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "usermeta": {"renderer": "canvas"},
            "data": {"values": [{"layer": i, "v": row} for i, row in enumerate(rows)]},
            "transform": [{"flatten": ["v"], "as": ["value"]},
                          {"window": [{"op": "row_number", "as": "pos"}],
                           "groupby": ["layer"]}],
            "mark": "rect",
            "encoding": {"x": {"field": "pos", "type": "ordinal"},
                         "y": {"field": "layer", "type": "ordinal"},
                         "color": {"field": "value", "type": "quantitative",
                                   "scale": {"scheme": "viridis"}}},
            "width": "container", "height": 120,
        }  # fmt: skip
        caption = (
            f"<p>Model <code>{trace.model.slug}</code>: final-layer entropy at the last "
            f"position is <strong>{float(last[-1]):.3f}</strong> nats.</p>"
        )
        charts = [Chart(bars, f"Entropy by layer for {trace.model.slug} ({key}).")]
        if key in ("p1", "p6"):
            charts.append(Chart(heat, f"Entropy heatmap for {trace.model.slug}."))
        panels.append(Panel(key, f"What does {key} ask?", charts, caption, "context"))
    return panels


@contextlib.contextmanager
def stand_in_build_panels() -> Iterator[None]:
    """Make `build_panels` available to a subprocess mkdocs build through a sitecustomize shim.

    Used only while tracegen.panels has no build_panels yet; the shim is a temporary folder on
    PYTHONPATH, never part of the package.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "sitecustomize.py"
        shim.write_text(
            "import sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "import tracegen.panels as _p\n"
            "from tests.site_helpers import stand_in_panels as _s\n"
            "_p.build_panels = _s\n",
            encoding="utf-8",
        )
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = tmp + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


# --- serving the built site and driving chromium ------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
]  # fmt: skip


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 at a free port in a thread; yields the base URL."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def chromium_path() -> str:
    """Debian's chromium; missing chromium is a failure, not a skip."""
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return path


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


# JavaScript run in the page: scroll every chart into view, then report each chart's state.
SCROLL_ALL_JS = """async () => {
  for (const el of document.querySelectorAll('.fp-chart')) {
    el.scrollIntoView({block: 'center'});
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  }
}"""

CHART_STATES_JS = """() => [...document.querySelectorAll('.fp-chart')].map(el => {
  const canvas = el.querySelector('canvas');
  let colours = 0;
  if (canvas && canvas.width && canvas.height) {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length && seen.size < 50; i += 4 * 7) {
      seen.add(data[i] << 24 | data[i + 1] << 16 | data[i + 2] << 8 | data[i + 3]);
    }
    colours = seen.size;
  }
  const svg = el.querySelector('svg');
  return {
    panel: el.closest('.fp-panel') && el.closest('.fp-panel').dataset.panel,
    state: el.dataset.fpState, scheme: el.dataset.fpScheme || null,
    renderer: canvas ? 'canvas' : (svg ? 'svg' : null),
    marks: svg ? svg.querySelectorAll('.mark-rect path, .mark-rect rect, .mark-line path, '
      + '.mark-symbol path, .mark-area path, .mark-text text, .mark-rule line, .mark-path path, '
      + '.mark-image image, .mark-arc path, .mark-trail path').length : 0,
    colours,
    background: canvas
      ? Array.from(canvas.getContext('2d').getImageData(1, 1, 1, 1).data).join(',')
      : (svg ? svg.style.backgroundColor : null),
  };
})"""
