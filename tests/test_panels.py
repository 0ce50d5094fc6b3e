"""The panels: every paragraph's charts are valid, render, carry tooltips, stay in budget,
and every caption number comes from the trace it was built from.

Most tests run on a synthetic trace that is internally consistent (the lens, ranks, KL,
watched probabilities and attribution are computed from one set of logits, and attention
heads are planted with known patterns), so the panels' measurements can be checked against
what was planted. The byte budget runs on the committed trace of the real model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tracegen.store import Trace, load_trace, pack_tril, write_trace

from .head_score_reference import reference_head_scores

REPO = Path(__file__).resolve().parents[1]
REAL_TRACE = REPO / "traces" / "smollm2-135m-instruct"
PANEL_KEYS = ["intro", *(f"p{i}" for i in range(1, 11))]
WATCHED = [" two", " four", " one", " three", " no", " zero", " none"]


# --- a synthetic, internally consistent trace --------------------------------------------------


def _tokenize(text: str) -> list[str]:
    tokens = re.findall(r" ?[A-Za-z]+| ?\d+|\n| ?[^\sA-Za-z\d]", text)
    assert "".join(tokens) == text
    return tokens


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)


def write_synthetic_trace(
    out_dir: Path,
    *,
    seed: int = 0,
    n_layers: int = 6,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 32,
    top_k: int = 5,
    answer: str = " two",
    prompt: str | None = None,
    bos: str | None = None,
    takeover: tuple[float, float] = (0.3, 0.6),
) -> Trace:
    """A trace whose derived tensors follow from one set of logits.

    Heads 0..3 of each layer are planted as: a first-token sink, a previous-token head, an
    induction head, and a head on the end of the prompt. The continuation is
    " foot has <answer> eyes." and the lens settles on the final answer at about 60% depth:
    the final logits mix in from `takeover[0]` of the depth and take over at `takeover[1]`.
    `prompt` replaces the story's prompt; `bos` puts that special token in front, as a
    tokenizer that adds BOS does.
    """
    rng = np.random.default_rng(seed)
    if prompt is None:
        prompt = (REPO / "tracegen" / "prompt.txt").read_text(encoding="utf-8")
    strings = ([bos] if bos else []) + _tokenize(prompt)
    generated = [" foot", " has", answer, " eyes", "."]
    vocab = sorted(set(strings) | set(generated) | set(WATCHED) | {" the", " a", "!"})
    token_id = {text: index for index, text in enumerate(vocab)}
    n_prompt = len(strings)
    n = n_prompt + len(generated) - 1
    positions = strings + generated[:-1]
    ids = [token_id[t] for t in positions]
    v = len(vocab)
    n_depth = n_layers + 1

    # Final logits: each position predicts the next token (the continuation after the prompt).
    targets = ids[1:n_prompt] + [token_id[t] for t in generated]
    final = rng.normal(0, 1, (n, v))
    final[np.arange(n), targets] += rng.uniform(4, 7, n)
    # Early depths depend only on the current token (a bigram table); later ones mix in the
    # final logits, which take over at about 60% of the depth.
    bigram = rng.normal(0, 2, (v, v))
    logits = np.empty((n_depth, n, v))
    for depth in range(n_depth):
        mix = np.clip((depth / n_layers - takeover[0]) / (takeover[1] - takeover[0]), 0, 1)
        logits[depth] = (1 - mix) * bigram[ids] + mix * final
    logits[-1] = final
    logprobs = np.log(_softmax(logits))
    probs = np.exp(logprobs)
    top_ids = np.argsort(-probs, axis=-1)[..., :top_k]
    target = np.asarray(targets)
    target_logprob = np.take_along_axis(logprobs, target[None, :, None].repeat(n_depth, 0), -1)[
        ..., 0
    ]
    final_logprobs = logprobs[-1]
    watched_ids = [token_id[t] for t in WATCHED]
    derived = {
        "lens_topk_ids": top_ids.astype(np.int32),
        "lens_topk_probs": np.take_along_axis(probs, top_ids, -1),
        "lens_entropy": -(probs * logprobs).sum(-1),
        "lens_target_rank": (logprobs > target_logprob[..., None]).sum(-1).astype(np.int32),
        "lens_target_prob": np.exp(target_logprob),
        "lens_kl": np.clip((probs[-1] * (final_logprobs - logprobs)).sum(-1), 0, None),
        "watched_probs": probs[..., watched_ids],
    }
    components = ["embed", *[f"{k} {i}" for i in range(n_layers) for k in ("attn", "mlp")]]
    final_logit = final[np.arange(n), target] * 3
    parts = rng.normal(0, 1, (n, len(components)))
    parts[:, -4:] += 3  # the last two layers write most of the answer
    parts *= (final_logit / parts.sum(-1))[:, None]
    derived["attribution"] = parts
    derived["final_logit"] = final_logit
    d_head = d_model // n_heads
    per_layer = [
        2 * n_prompt * d_model * d_head * (2 * n_heads + 2 * n_kv_heads),
        4 * n_heads * n_prompt**2 * d_head,
        6 * n_prompt * d_model * 4 * d_model,
    ]
    derived["flops"] = np.array([per_layer] * n_layers, dtype=np.float64)
    derived["layer_seconds"] = rng.uniform(1e-4, 3e-4, n_layers)

    layers, attention = [], []
    resid = rng.normal(0, 1, (n, d_model))
    for layer in range(n_layers):
        scores = rng.normal(0, 1, (n_heads, n, n))
        scores[0, :, 0] += 6  # sink on the first token
        if n_heads >= 4:
            rows = np.arange(1, n)
            scores[1, rows, rows - 1] += 6  # previous token
            for q in range(n):  # induction: the token after an earlier copy of the current one
                for j in range(q - 1):
                    if ids[j] == ids[q]:
                        scores[2, q, j + 1] += 5
            scores[3, :, n_prompt - 30 :] += 3  # the end of the prompt
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
        attn = _softmax(scores)
        attention.append(attn)
        attn_out = rng.normal(0, 0.5, (n, d_model))
        mlp_out = rng.normal(0, 0.5 + layer, (n, d_model))
        out = resid + attn_out + mlp_out
        layers.append(
            {
                "resid_in": resid,
                "resid_out": out,
                "attn_out": attn_out,
                "mlp_out": mlp_out,
                "attn_probs_tril": pack_tril(attn),
                "q_norm": np.abs(rng.normal(3, 1, (n_heads, n))),
                "k_norm": np.abs(rng.normal(5, 1, (n_kv_heads, n))),
                "v_norm": np.abs(rng.normal(1, 0.3, (n_kv_heads, n))),
            }
        )
        resid = out
    derived.update(reference_head_scores(attention, ids, n_prompt))

    n_params = 2 * v * d_model + n_layers * 12 * d_model**2
    manifest: dict[str, Any] = {
        "model": {
            "spec": f"synthetic:{seed}",
            "source": "tests/test_panels.py",
            "slug": f"synthetic-{seed}",
            "architecture": "LlamaForCausalLM",
            "model_type": "llama",
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "d_model": d_model,
            "d_head": d_head,
            "d_mlp": 4 * d_model,
            "vocab_size": v,
            "n_params": n_params,
            "dtype": "float32",
            "max_context": 2048,
        },
        "tokens": {
            "ids": ids,
            "strings": positions,
            "n_prompt": n_prompt,
            "generated_ids": [token_id[t] for t in generated],
            "generated_strings": generated,
            "stop_reason": "reached 5 steps",
        },
        "n_positions": n,
        "attention": {"policy": "full"},
        "activations": {"policy": "all"},
        "derived": {
            "top_k": top_k,
            "watched": [{"text": t, "id": token_id[t]} for t in WATCHED],
            "attribution_components": components,
            "flops_components": ["attn_proj", "attn_scores", "mlp"],
            "flops_unembedding": float(2 * n_prompt * d_model * v),
            "flops_total": float(derived["flops"].sum() + 2 * n_prompt * d_model * v),
            "kv_cache_bytes_per_token": 2 * n_layers * n_kv_heads * d_head * 4,
            "determinism_max_abs_logit_diff": 0.0,
            "eval_mode": True,
            "params_requiring_grad": 0,
            "grad_enabled": False,
            "dropout_modules_training": 0,
        },
        "prompt": {
            "text": prompt,
            "sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "n_tokens": n_prompt,
        },
        "tokenizer": {
            "adds_bos": bool(bos),
            "bos_token": bos or "<|endoftext|>",
            "eos_token": "<|endoftext|>",
        },
        "vocabulary": {str(i): t for i, t in enumerate(vocab)},
    }
    write_trace(out_dir, manifest, layers, derived, force=True)
    return load_trace(out_dir)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Trace:
    return write_synthetic_trace(tmp_path_factory.mktemp("syn") / "a", seed=0, answer=" two")


@pytest.fixture(scope="module")
def synthetic_other(tmp_path_factory) -> Trace:
    """Another model shape, another seed, and the correct answer instead of the bet."""
    return write_synthetic_trace(
        tmp_path_factory.mktemp("syn") / "b",
        seed=1,
        answer=" no",
        n_layers=3,
        n_heads=5,
        n_kv_heads=1,
        top_k=8,
    )


@pytest.fixture(scope="module")
def panels(synthetic):
    from tracegen.panels import build_panels

    return {panel.key: panel for panel in build_panels(synthetic)}


def marks(node: Any):
    """Every unit view (a dict with a "mark") anywhere in a spec."""
    if isinstance(node, dict):
        if "mark" in node:
            yield node
        for value in node.values():
            yield from marks(value)
    elif isinstance(node, list):
        for value in node:
            yield from marks(value)


def check_specs(panel_list) -> None:
    """Valid Vega-Lite, JSON without NaN, a tooltip on every mark, no theme colours."""
    import altair.vegalite.v6.schema as vl_schema
    from altair.utils.schemapi import validate_jsonschema

    schema = vl_schema.load_schema()
    for panel in panel_list:
        assert panel.charts, panel.key
        for chart in panel.charts:
            json.dumps(chart.spec, allow_nan=False)
            validate_jsonschema(chart.spec, schema)
            assert chart.alt and chart.alt.strip().endswith("."), (panel.key, chart.alt)
            for view in marks(chart.spec):
                mark = view["mark"] if isinstance(view["mark"], dict) else {}
                assert "tooltip" in view.get("encoding", {}) or mark.get("tooltip"), (
                    panel.key,
                    view["mark"],
                )
            config = chart.spec.get("config", {})
            assert set(config) <= {"view"}, (panel.key, config)  # colours are the site's
            assert "background" not in chart.spec


# --- structure ----------------------------------------------------------------------------------


def test_keys_in_story_order(synthetic):
    from tracegen.panels import build_panels

    panels = build_panels(synthetic)
    assert [p.key for p in panels] == PANEL_KEYS
    assert all(p.verdict in {"borne out", "not borne out", "mixed", "context"} for p in panels)
    assert all(p.question.endswith("?") for p in panels)


def test_specs_are_valid_with_tooltips(panels, synthetic_other):
    from tracegen.panels import build_panels

    check_specs(panels.values())
    check_specs(build_panels(synthetic_other))


def test_dense_charts_ask_for_canvas(panels):
    for key in ("p3", "p4", "p6", "p9", "p10"):
        assert panels[key].charts[0].spec.get("usermeta") == {"renderer": "canvas"}, key


def test_specs_render_without_vega_errors(panels):
    import vl_convert

    for panel in panels.values():
        for chart in panel.charts:
            svg = vl_convert.vegalite_to_svg(chart.spec)
            assert svg.startswith("<svg") and "NaN" not in svg, panel.key


def test_interactive_controls(panels):
    spec3 = json.dumps(panels["p3"].charts[0].spec)
    assert '"name": "layer"' in spec3 and '"name": "head"' in spec3 and '"bind"' in spec3
    spec6 = panels["p6"].charts[0].spec
    params = [p for view in [spec6, *marks(spec6)] for p in view.get("params", [])]
    picks = [p for p in params if p["name"] == "pick"]
    assert picks and picks[0]["select"]["type"] == "point" and picks[0]["select"]["fields"] == ["p"]


# --- chart shapes that screenshots caught ------------------------------------------------------


def _views(spec: Any, mark: str) -> list[dict]:
    return [
        view
        for view in marks(spec)
        if (view["mark"] if isinstance(view["mark"], str) else view["mark"]["type"]) == mark
    ]


def test_log_scaled_bars_are_drawn_from_one(synthetic, panels):
    """A log scale has no zero: bars anchored at 0 render with width 0 (the intro's bars were
    empty). Rendered, every bar has a width, and bars start at 1, so on the log scale the
    widths of two bars are in the ratio of the logs of their values."""
    import vl_convert

    from tracegen.panels.story import GPT3_LAYERS, GPT3_PARAMS

    svg = vl_convert.vegalite_to_svg(panels["intro"].charts[0].spec)
    bars = re.findall(
        r'aria-label="[^"]*model: ([^;"]+)[^"]*"[^>]*'
        r'aria-roledescription="bar" d="M[-\d.e]+,[-\d.e]+h([-\d.e]+)',
        svg,
    )
    assert len(bars) == 4 and all(float(w) > 1 for _, w in bars), bars
    # facet rows in order (layers, parameters), each with this model's bar and GPT-3's
    width = {(model, what): float(w) for (model, w), what in zip(bars, [0, 0, 1, 1], strict=True)}
    card = synthetic.model
    for what, ours, theirs in ((0, card.n_layers, GPT3_LAYERS), (1, card.n_params, GPT3_PARAMS)):
        ratio = width[(card.slug, what)] / width[("GPT-3 (the story)", what)]
        assert ratio == pytest.approx(math.log(ours) / math.log(theirs), rel=1e-3), what


def test_lens_table_is_readable_and_from_the_trace(synthetic, panels):
    """p1's "what each depth would predict": one row per depth, the lens's top 3 at the last
    prompt position as upright text on cells coloured by probability, the story's depth
    marked; the tokens and probabilities are the trace's."""
    from tracegen.panels.story import answer_position, story_depth, vocabulary
    from tracegen.panels.words import show_token

    spec = panels["p1"].charts[0].spec
    assert not [
        v for v in _views(spec, "text") if isinstance(v["mark"], dict) and "angle" in v["mark"]
    ]
    text_of = vocabulary(synthetic)
    position = answer_position(synthetic)
    ids = synthetic.derived("lens_topk_ids")[:, position, :3]
    probs = synthetic.derived("lens_topk_probs")[:, position, :3]

    def find(node: Any) -> dict | None:  # the table's one row of depth-major arrays
        if isinstance(node, dict):
            first = (node.get("values") or [None])[0]
            if isinstance(first, dict) and set(first) == {"t", "q"}:
                return first
            return next((f for f in map(find, node.values()) if f is not None), None)
        if isinstance(node, list):
            return next((f for f in map(find, node) if f is not None), None)
        return None

    table = find(spec)
    assert table is not None
    assert table["t"] == [show_token(text_of(i)) for i in ids.ravel()]
    assert table["q"] == pytest.approx(probs.ravel(), abs=1e-3)
    cells = [v for v in _views(spec, "rect") if v["encoding"].get("color", {}).get("field") == "q"]
    assert cells and cells[0]["encoding"]["color"]["scale"]["scheme"] == "viridis"
    assert cells[0]["encoding"]["y"]["field"] == "d"  # one row per depth
    words = [v for v in _views(spec, "text") if v["encoding"].get("text", {}).get("field") == "t"]
    assert words and "condition" in words[0]["encoding"]["color"]  # ink follows the cell
    assert spec["datasets"]["story"][0]["d"] == story_depth(synthetic.n_layers)[1]
    story_views = [v for v in marks(spec) if v.get("data", {}).get("name") == "story"]
    assert len(story_views) >= 4  # two rules over depth, and the fenced, named table row


def _line_rows(node: Any) -> list[dict]:
    """The inline data rows (one per word, with its emphasis flag `e`) of p8's line layer."""
    if isinstance(node, dict):
        values = (node.get("data") or {}).get("values")
        if values and isinstance(values[0], dict) and "e" in values[0]:
            return values
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            if rows := _line_rows(child):
                return rows
    return []


@pytest.mark.parametrize("which", ["synthetic", "synthetic_other"])
def test_count_words_are_told_apart(which, request):
    """p8's count words over depth: each word in the colour of what it is (the colour
    language, tracegen/colours.py: the bet, the model's choice, a correct answer, another
    count), the legend naming each, and the narrator's bet and the model's choice first and
    drawn heavier."""
    from tracegen.colours import colour_of, meaning_of
    from tracegen.panels import build_panels
    from tracegen.panels.story import count_position, count_tokens
    from tracegen.panels.words import show_token

    trace = request.getfixturevalue(which)
    panel = {p.key: p for p in build_panels(trace)}["p8"]
    lines = _views(panel.charts[1].spec, "line")
    assert lines
    encoding = lines[0]["encoding"]
    colour = encoding["color"]["scale"]
    assert "scheme" not in colour
    domain, colours = colour["domain"], colour["range"]
    assert len(colours) == len(domain) == len(set(domain))
    assert colours == [colour_of(meaning_of(name)) for name in domain]
    assert sorted(name.split(" (")[0] for name in domain) == sorted(
        show_token(text) for _, _, text in count_tokens(trace)
    )
    chosen = show_token(trace.generated_strings[count_position(trace).step])
    leading = ["␣two"] if chosen == "␣two" else ["␣two", chosen]
    assert [name.split(" (")[0] for name in domain[: len(leading)]] == leading
    assert "the bet" in domain[0] and "chosen" in domain[len(leading) - 1]
    width = encoding["strokeWidth"]  # heavier where the row is emphasised (the bet, the choice)
    assert width["condition"]["test"] == "datum.e"
    assert width["condition"]["value"] > width["value"]
    emphasised = [row["w"] for row in _line_rows(panel.charts[1].spec) if row["e"]]
    assert [name.split(" (")[0] for name in emphasised] == leading


# --- numbers come from the trace ----------------------------------------------------------------


def test_candidate_probabilities_are_the_watched_probabilities(synthetic, panels):
    from tracegen.panels.story import count_position
    from tracegen.panels.words import fmt_pct

    panel = panels["p5"]
    count = count_position(synthetic)
    assert synthetic.generated_strings[count.step] == " two"  # found from the continuation
    assert panel.facts.count_position == count.position == synthetic.n_prompt - 1 + 2
    probs = synthetic.derived("watched_probs")[-1, count.position]
    for w, entry in enumerate(synthetic.watched):
        found = {c.text: c.prob for c in panel.facts.candidates}
        assert found[entry["text"]] == pytest.approx(float(probs[w]))
        assert fmt_pct(probs[w]) in panel.caption
    two, best_correct = probs[WATCHED.index(" two")], probs[[4, 5, 6]].max()
    assert panel.verdict == ("borne out" if two > best_correct else "not borne out")


def test_planted_heads_are_found(synthetic, panels):
    """The synthetic trace plants a sink, previous-token and induction head in every layer."""
    facts3, facts4 = panels["p3"].facts, panels["p4"].facts
    assert facts3.sink_heads >= synthetic.n_layers
    assert facts4.previous_heads >= synthetic.n_layers
    assert facts4.induction_heads >= synthetic.n_layers
    assert facts4.best["i"][1] == 2 and facts4.best["p"][1] == 1
    assert f"{facts4.induction_heads} heads put at least" in panels["p4"].caption


def test_takeover_and_flops_match_the_trace(synthetic, panels):
    from tracegen.panels.words import fmt_si

    rank = synthetic.derived("lens_target_rank")[:, synthetic.n_prompt - 1]
    facts = panels["p6"].facts
    depth = int(facts.takeover[facts.answer])
    assert (rank[depth:] == 0).all() and (depth == 0 or rank[depth - 1] != 0)
    total = synthetic.manifest["derived"]["flops_total"]
    assert fmt_si(total, "FLOPs") in panels["p2"].caption
    assert f"{synthetic.n_layers} layers" in panels["intro"].caption


def test_continuation_verdicts(panels, synthetic_other):
    from tracegen.panels import build_panels

    assert panels["p8"].facts.foot_won and panels["p8"].facts.two_won
    assert panels["p8"].verdict == "borne out"
    other = {p.key: p for p in build_panels(synthetic_other)}
    assert other["p8"].facts.foot_won and not other["p8"].facts.two_won
    assert other["p8"].verdict == "mixed"
    assert "<code>␣no</code>" in other["p8"].caption


def test_captions_change_with_the_trace(panels, synthetic_other):
    from tracegen.panels import build_panels

    other = {p.key: p for p in build_panels(synthetic_other)}
    for key in PANEL_KEYS:
        assert panels[key].caption != other[key].caption, key
        assert panels[key].charts[0].alt != other[key].charts[0].alt, key


# --- review fixes: BOS, 1-based ranks, p1's wording, the prompt's end, three quarters -------------


def test_qa_blocks_are_found_after_a_bos_token(tmp_path, synthetic):
    """A tokenizer that adds BOS (Gemma's) puts "<bos>" before the first "Q:", which then no
    longer starts the text: the first Q/A block must still be found, in trace coordinates."""
    from tracegen.panels import attention
    from tracegen.panels.story import end_span, qa_block_starts, start_span

    with_bos = write_synthetic_trace(tmp_path / "bos", bos="<bos>")
    assert with_bos.manifest["tokenizer"]["adds_bos"] and with_bos.token_strings[0] == "<bos>"
    plain = qa_block_starts(synthetic)
    assert plain[0] == 0 and len(plain) > 2
    starts = qa_block_starts(with_bos)
    assert starts == [start + 1 for start in plain]  # one BOS in front shifts every block by 1
    assert all(with_bos.token_strings[start] == "Q" for start in starts)
    assert start_span(with_bos) == range(0, start_span(synthetic).stop + 1)  # one block
    assert end_span(with_bos) == range(end_span(synthetic).start + 1, with_bos.n_prompt)
    facts = attention.measure_attention(with_bos)
    assert facts.start_span == (0, plain[1] + 1)


def _tooltip_titles(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = []
        tooltip = node.get("tooltip")
        for item in tooltip if isinstance(tooltip, list) else [tooltip]:
            if isinstance(item, dict) and isinstance(item.get("title"), str):
                found.append(item["title"])
        return found + [t for value in node.values() for t in _tooltip_titles(value)]
    if isinstance(node, list):
        return [t for value in node for t in _tooltip_titles(value)]
    return []


def test_ranks_readers_see_are_one_based(synthetic, panels):
    """The trace stores ranks 0-based; captions, tooltips and their data show them 1-based
    ("1st" = top), and every rank tooltip says so."""
    from tracegen.panels.story import answer_position, story_depth, vocabulary
    from tracegen.panels.words import ordinal, token_html

    rank = synthetic.derived("lens_target_rank")
    answer = answer_position(synthetic)
    shown = (rank[:, answer] + 1).tolist()
    assert min(shown) == 1  # the output ranks its own top token first
    assert panels["p1"].charts[0].spec["datasets"]["depths"][0]["rank"] == shown
    lens_rows = panels["p6"].charts[0].spec["datasets"]["lens"]
    assert next(row for row in lens_rows if row["p"] == answer)["rk"] == shown

    story = story_depth(synthetic.n_layers)[1]
    final = token_html(vocabulary(synthetic)(synthetic.derived("lens_topk_ids")[-1, answer, 0]))
    assert f"ranks the final answer {final} {ordinal(shown[story])}," in panels["p1"].caption
    three_quarters = re.search(r"At depth (\d+) \(three quarters\)", panels["p6"].caption)
    assert three_quarters, panels["p6"].caption
    assert f"ranks it {ordinal(shown[int(three_quarters[1])])}," in panels["p6"].caption

    titles = [t for p in panels.values() for c in p.charts for t in _tooltip_titles(c.spec)]
    rank_titles = [t for t in titles if "rank" in t]
    assert len(rank_titles) >= 4, rank_titles
    assert all("1 = top" in t for t in rank_titles), rank_titles


@pytest.mark.parametrize(
    ("takeover", "trend", "verdict"),
    [((0.2, 1 / 3), "rises", "borne out"), ((0.5, 0.8), "flat", "mixed")],
)
def test_p1_says_what_its_numbers_say(tmp_path, takeover, trend, verdict):
    """p1 claims a higher-order description takes shape only when agreement with the final
    choice rises from layer 1 to the story's depth; otherwise it says it is flat, names the
    depth where it first passes 50%, and the verdict is not "borne out"."""
    from tracegen.panels import build_panel, residual
    from tracegen.panels.story import story_depth
    from tracegen.panels.words import fmt_pct

    trace = write_synthetic_trace(tmp_path / trend, takeover=takeover)
    panel = build_panel(residual.PANEL, trace)
    story = story_depth(trace.n_layers)[1]
    matches = np.array(panel.facts.matches_final)
    change = matches[story] - matches[1]
    assert (change >= 0.10) == (trend == "rises"), change  # the traces were made to differ
    shaped = "A higher-order description takes shape" in panel.caption
    assert shaped == (trend == "rises")
    assert (", flat." in panel.caption) == (trend == "flat")
    assert panel.verdict == verdict
    majority = int(np.flatnonzero(matches > 0.5)[0])
    assert f"exceeds {fmt_pct(0.5)} at depth {majority} of {trace.n_layers}" in panel.caption
    assert fmt_pct(matches[1]) in panel.caption and fmt_pct(matches[story]) in panel.caption
    assert panel.facts.shape.trend == trend
    assert panel.facts.ngram_like  # both traces are bigram tables at first


def test_p1_norm_wording_follows_the_norms(synthetic, monkeypatch):
    """p1 says the residual norm grows only when it does."""
    from tracegen.panels import build_panel, residual

    shrinking = np.linspace(9.0, 2.0, synthetic.n_layers + 1)
    monkeypatch.setattr(residual, "residual_norms", lambda trace, position: shrinking)
    caption = build_panel(residual.PANEL, synthetic).caption
    assert "shrinks from 9.0 to 2.0" in caption and "grows" not in caption

    _norm_sentence = residual._norm_sentence
    assert "grows from 2.0 to 9.0" in _norm_sentence(np.array([2.0, 5.0, 9.0]), 2)
    assert "shrinks from 9.0 to 2.0" in _norm_sentence(np.array([9.0, 5.0, 2.0]), 2)
    level = _norm_sentence(np.array([3.0, 8.0, 3.1]), 2)
    assert "grows" not in level and "shrinks" not in level
    assert "ends about where it starts" in level and "peaking at 8.0 at depth 1" in level


def test_continuation_caption_quotes_the_prompt_it_was_given(tmp_path):
    """p8 quotes the end of the traced prompt, not the story's "A: Your"."""
    from tracegen.panels import build_panel, continuation

    story = (REPO / "tracegen" / "prompt.txt").read_text(encoding="utf-8")
    prompt = story.rsplit("\n", 2)[0] + "\nQ: How many eyes has a spider?\nA: A spider"
    trace = write_synthetic_trace(tmp_path / "spider", prompt=prompt)
    caption = build_panel(continuation.PANEL, trace).caption
    assert "after <q>A: A spider</q>:" in caption
    assert "A: Your" not in caption


def test_depth_at_rounds_one_way():
    from tracegen.panels.story import (
        GPT3_LAYERS,
        STORY_LAYER,
        depth_at,
        story_depth,
        three_quarters_depth,
    )

    assert three_quarters_depth(10) == depth_at(0.75, 10) == 7

    assert [depth_at(0.75, n) for n in (1, 2, 4, 6, 10, 30, 32)] == [1, 1, 3, 4, 7, 22, 24]
    assert depth_at(0.75, 0) == 0 and depth_at(2.0, 5) == 5 and depth_at(-1.0, 5) == 0
    assert [story_depth(n)[1] for n in (3, 8, 30, 96)] == [1, 3, 10, STORY_LAYER]
    assert depth_at(STORY_LAYER / GPT3_LAYERS, GPT3_LAYERS) == STORY_LAYER


def test_three_quarters_is_one_depth_in_every_panel(tmp_path):
    """On 10 layers three quarters is 7.5: p2, p6, p7 and p8 must all put it at the same depth
    (the tie goes down: depth 7, layers 1-7 up to it and layers 8-10 the last quarter), and
    the dashed rules sit there too."""
    from tracegen.panels import build_panels
    from tracegen.panels.story import parse_components

    trace = write_synthetic_trace(tmp_path / "ten", n_layers=10)
    panels = {p.key: p for p in build_panels(trace)}
    depth = 7

    def number(key: str, pattern: str) -> int:
        match = re.search(pattern, panels[key].caption)
        assert match, (key, pattern, panels[key].caption)
        return int(match[1])

    found = {
        "p2": number("p2", r"\(layers 1-(\d+)\b"),
        "p6": number("p6", r"At depth (\d+) \(three quarters\)"),
        "p8": number("p8", r"\(depth (\d+), where the narrator"),
    }
    assert set(found.values()) == {depth}, found
    assert number("p2", r"last quarter \(layers (\d+)-10\)") == depth + 1
    assert number("p7", r"last quarter of the layers \(layers (\d+)-10\)") == depth + 1
    assert panels["p2"].facts.three_quarters_depth == depth

    per_layer = trace.derived("flops")
    total = trace.manifest["derived"]["flops_total"]
    assert panels["p2"].facts.flops_below_three_quarters == pytest.approx(
        per_layer[:depth].sum() / total
    )
    components = parse_components(trace.attribution_components, 10)
    late = np.array([c.layer > depth for c in components])
    answer = trace.n_prompt - 1
    parts, logit = trace.derived("attribution")[answer], trace.derived("final_logit")[answer]
    assert panels["p7"].facts.at["the answer"].late_share == pytest.approx(
        parts[late].sum() / logit
    )

    def rule_depths(spec: Any) -> list[float]:
        return [
            row["d"]
            for view in _views(spec, "rule")
            for row in (view.get("data") or {}).get("values", [])
            if "three quarters" in str(row.get("what"))
        ]

    for key, chart in (("p6", 0), ("p8", 1)):
        drawn = rule_depths(panels[key].charts[chart].spec)
        assert drawn and set(drawn) == {depth}, (key, drawn)


# --- robustness -----------------------------------------------------------------------------------


def test_degenerate_trace_does_not_crash(tmp_path):
    """One layer, one head, uniform attention (ties everywhere), no watched tokens and
    nothing measured by the clock: panels still build, and their JSON has no NaN. (NaN in
    the derived tensors is refused by the writer's own load, see below.)"""
    from tracegen.panels import build_panels
    from tracegen.store import DERIVED_TENSORS, LAYER_TENSORS

    base = write_synthetic_trace(tmp_path / "base", n_layers=1, n_heads=1, n_kv_heads=1)
    manifest = dict(base.manifest)
    manifest["derived"] = {**manifest["derived"], "watched": []}
    derived = {name: base.derived(name) for name in DERIVED_TENSORS}
    derived["watched_probs"] = derived["watched_probs"][..., :0]
    derived["layer_seconds"] = np.zeros(base.n_layers)
    n = base.n_positions
    layers = []
    for index in range(base.n_layers):
        layer = {name: base.layer(index, name) for name in LAYER_TENSORS}
        uniform = np.tril(np.ones((1, n, n))) / np.arange(1, n + 1)[None, :, None]
        layers.append({**layer, "attn_probs_tril": pack_tril(uniform)})
    trace = write_trace(tmp_path / "degenerate", manifest, layers, derived, force=True)
    panels = build_panels(load_trace(trace))
    assert [p.key for p in panels] == PANEL_KEYS
    check_specs(panels)


@pytest.mark.parametrize("name", ["lens_entropy", "lens_kl", "attribution"])
def test_writer_refuses_nan_in_derived(tmp_path, synthetic, name):
    from tracegen.store import DERIVED_TENSORS, TraceError

    derived = {key: synthetic.derived(key) for key in (*DERIVED_TENSORS, "layer_seconds")}
    derived[name] = np.full_like(derived[name], np.nan)
    layers = [
        {key: store_read(synthetic, index, key) for key in synthetic.layer_tensors}
        for index in range(synthetic.n_layers)
    ]
    with pytest.raises(TraceError, match=f"{name}: nan at .* is not finite"):
        write_trace(tmp_path / "nan", synthetic.manifest, layers, derived)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no trace, no leftovers


def store_read(trace: Trace, index: int, name: str) -> np.ndarray:
    from tracegen.store import _read, layer_file

    return _read(trace.path / layer_file(index), name)


def test_tiny_random_model_trace(tiny_trace):
    """A trace made by tracegen from a tiny random-weight Llama: garbage, but it must build."""
    import vl_convert

    from tracegen.panels import build_panels

    panels = build_panels(load_trace(tiny_trace))
    assert [p.key for p in panels] == PANEL_KEYS
    check_specs(panels)
    for panel in panels:
        for chart in panel.charts:
            vl_convert.vegalite_to_svg(chart.spec)


def test_panels_never_import_torch(tmp_path, synthetic):
    import subprocess
    import sys

    code = (
        "import sys; from tracegen.store import load_trace; from tracegen.panels import "
        f"build_panels; build_panels(load_trace({str(synthetic.path)!r})); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- the real trace -----------------------------------------------------------------------

# The whole story page's chart data must stay under 300 KB; keep a margin.
BYTE_BUDGET = 280_000


@pytest.mark.skipif(not REAL_TRACE.is_dir(), reason="no committed trace of the default model")
def test_real_trace_stays_in_byte_budget():
    from tracegen.panels import build_panels

    panels = build_panels(load_trace(REAL_TRACE))
    sizes = {p.key: sum(len(json.dumps(c.spec)) for c in p.charts) for p in panels}
    assert sum(sizes.values()) < BYTE_BUDGET, sizes
    assert max(sizes.values()) < BYTE_BUDGET // 3, sizes  # no single panel takes the page


@pytest.mark.skipif(not REAL_TRACE.is_dir(), reason="no committed trace of the default model")
def test_real_trace_findings_are_the_traced_ones():
    """The headline numbers on the page are the trace's: the first answer token and its
    probability, and the count the model chose."""
    from tracegen.panels import build_panels
    from tracegen.panels.story import count_position
    from tracegen.panels.words import fmt_pct

    trace = load_trace(REAL_TRACE)
    panels = {p.key: p for p in build_panels(trace)}
    first_prob = trace.derived("lens_topk_probs")[-1, trace.n_prompt - 1, 0]
    assert fmt_pct(first_prob) in panels["p8"].caption
    count = count_position(trace)
    assert trace.generated_strings[count.step].strip() in panels["p5"].caption
    check_specs(panels.values())
