"""Each panel's measurement on its own, on a trace that `tracegen run` made from a tiny
random-weight Llama: frozen facts, the shapes their comments state, verdicts decided there,
and numbers that are the trace's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tracegen.panels import DEFINITIONS
from tracegen.panels.types import VERDICTS
from tracegen.store import load_trace


@pytest.fixture(scope="module")
def trace(tiny_trace):
    return load_trace(tiny_trace)


@pytest.fixture(scope="module")
def facts(trace):
    return {d.key: d.measure(trace) for d in DEFINITIONS}


def test_every_measurement_is_frozen_and_judged(facts):
    for key, value in facts.items():
        assert dataclasses.is_dataclass(value), key
        assert value.verdict in VERDICTS, key
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.verdict = "borne out"


def test_lens_measurement(trace, facts):
    f = facts["p6"]
    n, depth = trace.n_positions, trace.n_layers + 1
    assert f.takeover.shape == (n,) and f.kl.shape == f.target_rank.shape == (depth, n)
    for p in range(n):  # from the take-over depth up, the final token stays on top
        t = int(f.takeover[p])
        assert (f.target_rank[t:, p] == 0).all() and (t == 0 or f.target_rank[t - 1, p] != 0)
    assert f.median_takeover_fraction == pytest.approx(np.median(f.takeover / trace.n_layers))


def test_heads_measurement(trace, facts):
    from tracegen.panels.heads import INDUCTION_THRESHOLD, PREVIOUS_THRESHOLD

    f = facts["p4"]
    shape = (trace.n_layers, trace.model.n_heads)
    assert all(grid.shape == shape for grid in f.scores.values())
    assert f.previous_heads == int((f.scores["p"] >= PREVIOUS_THRESHOLD).sum())
    assert f.induction_heads == int((f.scores["i"] >= INDUCTION_THRESHOLD).sum())
    # Previous-token and induction scores come from every prompt row, measured at trace time
    # (tests/test_attention_policy.py checks them against the whole matrices).
    assert np.array_equal(f.scores["p"], trace.derived("head_previous_token"))
    assert np.array_equal(f.scores["i"], trace.derived("head_induction"))
    position = trace.n_prompt - 1
    end = [trace.attention_row(i, position) for i in range(trace.n_layers)]
    assert f.scores["e"].max() <= 1 + 1e-3 and np.stack(end).sum(-1).max() <= 1 + 1e-2


def test_attention_measurement(trace, facts):
    f = facts["p3"]
    assert f.attn.shape == (trace.n_layers, trace.model.n_heads, trace.n_prompt)
    assert f.attn.sum(-1) == pytest.approx(np.ones(f.attn.shape[:2]), abs=1e-2)
    layer, head = f.best_start_head
    assert f.best_start_mass == pytest.approx(f.start_mass.max())
    assert f.start_mass[layer, head] == f.best_start_mass


def test_flops_entropy_and_determinism_measurements(trace, facts):
    flops = facts["p2"]
    assert flops.per_layer.shape == (trace.n_layers, len(trace.flops_components))
    assert sum(flops.shares.values()) == pytest.approx(
        (flops.per_layer.sum() + flops.unembedding) / flops.total
    )
    entropy = facts["p10"]
    steps = trace.n_positions - (trace.n_prompt - 1)
    assert (
        entropy.entropy.shape
        == (trace.n_layers + 1, steps)
        == (
            trace.n_layers + 1,
            len(entropy.chosen),
        )
    )
    assert entropy.output_entropy[entropy.lowest_step] == entropy.output_entropy.min()
    norms = facts["p9"].norms
    assert norms["query"].shape == (trace.n_layers, trace.model.n_heads)
    assert norms["key"].shape == (trace.n_layers, trace.model.n_kv_heads)


def test_words_and_charts_need_only_the_facts(facts):
    """A measurement is all its words and charts read: the same facts, the same caption."""
    for definition in DEFINITIONS:
        f = facts[definition.key]
        assert definition.words(f) == definition.words(f)
        assert len(definition.charts(f)) == len(definition.words(f).alts)
