"""The scale benchmark's growth fit (bench/scale.py): the fit and the linear/quadratic call.
The benchmark itself is not a test; only its arithmetic is."""

from __future__ import annotations

import math

import pytest

from bench.scale import LINEAR_SHARE, fit_growth

SIZES = [186, 512, 1024, 2048]


def test_fit_recovers_a_line():
    growth = fit_growth(SIZES, [700e6 + 1.5e5 * n for n in SIZES])
    assert growth.a == pytest.approx(700e6, rel=1e-9)
    assert growth.b == pytest.approx(1.5e5, rel=1e-9)
    assert abs(growth.c) < 1e-6 and abs(growth.share) < 1e-9
    assert growth.linear


def test_fit_recovers_a_parabola():
    a, b, c = 600e6, 2e5, 1200.0
    growth = fit_growth(SIZES, [a + b * n + c * n * n for n in SIZES])
    assert (growth.a, growth.b, growth.c) == pytest.approx((a, b, c), rel=1e-9)
    at = 2048
    assert growth.share == pytest.approx(c * at * at / (a + b * at + c * at * at), rel=1e-9)
    assert not growth.linear


@pytest.mark.parametrize(
    "share, linear", [(LINEAR_SHARE - 0.01, True), (LINEAR_SHARE + 0.01, False)]
)
def test_the_call_flips_at_the_threshold(share, linear):
    """A quadratic term worth just under, then just over, the threshold at 2,048 tokens."""
    a, b, at = 1e9, 1e5, 2048
    rest = a + b * at
    c = share * rest / (1 - share) / at**2  # c*n^2 / (rest + c*n^2) = share
    growth = fit_growth(SIZES, [a + b * n + c * n * n for n in SIZES], at=at)
    assert growth.share == pytest.approx(share, rel=1e-6)
    assert growth.linear is linear


def test_slower_than_linear_counts_as_linear():
    growth = fit_growth(SIZES, [1e9 + 1e5 * n - 5.0 * n * n for n in SIZES])
    assert growth.c < 0 and growth.linear


def test_noisy_line_stays_linear():
    """A few percent of noise on a line does not make it quadratic."""
    noise = [1.02, 0.98, 1.03, 0.99]
    growth = fit_growth(SIZES, [(700e6 + 1e5 * n) * k for n, k in zip(SIZES, noise, strict=True)])
    assert growth.linear


def test_a_fit_that_is_not_positive_is_not_linear():
    growth = fit_growth(SIZES, [-1e6 - 10.0 * n for n in SIZES])
    assert math.isnan(growth.share) and not growth.linear


def test_three_sizes_are_needed():
    with pytest.raises(ValueError, match="3 sizes"):
        fit_growth([186, 512], [1.0, 2.0])


def test_a_narrow_span_is_not_judged():
    """Three sizes within 4x of each other: fitted and printed, but no PASS or FAIL."""
    from bench.scale import growth_verdict

    narrow = fit_growth([186, 272, 387], [1.0e9, 1.3e9, 1.2e9])
    assert narrow.span == pytest.approx(387 / 186)
    assert growth_verdict("run peak RSS", narrow).status == "n/a"
    wide = fit_growth(SIZES, [1e9 + 1e5 * n for n in SIZES])
    assert growth_verdict("run peak RSS", wide).status == "PASS"
