"""The logit lens's entropy and KL agree with a float64 recomputation within 1e-4 nats (KL:
plus 1e-4 of its value), at a vocabulary as large as the default model's, where a float32
matrix-kernel accumulation over the vocabulary was off by 5e-3 nats."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch", reason="tracing needs the trace extra: pip install '.[trace]'")
pytestmark = pytest.mark.model

VOCAB, WIDTH, POSITIONS, DEPTHS = 49_152, 64, 24, 4


def lens_case(spread: float) -> tuple[SimpleNamespace, SimpleNamespace]:
    """A head that is a plain [WIDTH, VOCAB] matrix, and residual streams whose logits spread
    over about +-`spread` nats, the last depth sharper than the first."""
    generator = torch.Generator().manual_seed(0)
    unembed = torch.randn(WIDTH, VOCAB, generator=generator) / WIDTH**0.5
    streams = [
        torch.randn(POSITIONS, WIDTH, generator=generator) * spread * (depth + 1) / DEPTHS
        for depth in range(DEPTHS + 1)
    ]
    adapter = SimpleNamespace(logits=lambda resid: resid @ unembed)
    layers = [{"resid_in": streams[i], "resid_out": streams[i + 1]} for i in range(DEPTHS)]
    return adapter, SimpleNamespace(layers=layers)


def float64_statistics(adapter, capture) -> tuple[torch.Tensor, torch.Tensor]:
    depths = [capture.layers[0]["resid_in"]] + [layer["resid_out"] for layer in capture.layers]
    final = adapter.logits(depths[-1]).double().log_softmax(-1)
    entropy, kl = [], []
    for resid in depths:
        log_p = adapter.logits(resid).double().log_softmax(-1)
        entropy.append(-(log_p.exp() * log_p).sum(-1))
        kl.append((final.exp() * (final - log_p)).sum(-1))
    return torch.stack(entropy), torch.stack(kl)


@pytest.mark.parametrize("spread", [3.0, 30.0])
def test_entropy_and_kl_within_1e4_nats_of_float64(spread: float) -> None:
    from tracegen.derive import logit_lens

    adapter, capture = lens_case(spread)
    lens = logit_lens(adapter, capture, [0, 1], top_k=5)
    entropy, kl = float64_statistics(adapter, capture)
    entropy_error = (lens["lens_entropy"].double() - entropy).abs()
    kl_error = (lens["lens_kl"].double() - kl).abs()
    assert float(entropy_error.max()) <= 1e-4, float(entropy_error.max())
    assert bool((kl_error <= 1e-4 + 1e-4 * kl).all()), float((kl_error - 1e-4 * kl).max())
    # The last depth is the final distribution itself: its KL is exactly 0.
    assert float(lens["lens_kl"][-1].abs().max()) == 0.0


def einsum_statistics(adapter, capture) -> dict[str, torch.Tensor]:
    """The lens's entropy and KL as tracegen computed them before: one float32 einsum over the
    vocabulary for each dot product, and a softmax's q."""
    depths = [capture.layers[0]["resid_in"]] + [layer["resid_out"] for layer in capture.layers]
    final = adapter.logits(depths[-1])
    q = final.softmax(-1)
    q_log_q = torch.einsum("nv,nv->n", q, final) - torch.logsumexp(final, -1)
    entropy, kl = [], []
    for resid in depths:
        logits = adapter.logits(resid)
        lse = torch.logsumexp(logits, -1)
        p = logits.softmax(-1)
        entropy.append(lse - torch.einsum("nv,nv->n", p, logits))
        kl.append(q_log_q - (torch.einsum("nv,nv->n", q, logits) - lse))
    return {"lens_entropy": torch.stack(entropy), "lens_kl": torch.stack(kl)}


def test_the_gate_refuses_a_lens_summed_in_one_float32_accumulation() -> None:
    from tracegen.derive import logit_lens
    from tracegen.verify import TOLERANCES, lens_sample, lens_statistics_errors

    adapter, capture = lens_case(30.0)
    positions = lens_sample(POSITIONS, POSITIONS - 1)
    assert positions[0] == 0 and positions[-1] == POSITIONS - 1 and len(positions) == 8
    tolerance = TOLERANCES["float32"]["lens_statistics"]
    exact = logit_lens(adapter, capture, [0], top_k=5)
    error, _ = lens_statistics_errors(adapter, capture, exact, positions)
    assert error <= tolerance
    error, where = lens_statistics_errors(adapter, capture, einsum_statistics(adapter, capture),
                                          positions)  # fmt: skip
    assert error > tolerance, (error, where)
    assert where.startswith("depth ") and " position " in where
