"""Batch-size regression: exact recovery of known laws, the model choice, no extrapolation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perfmodels.regression import BatchFit, fit_batch_model

BATCHES = [1, 2, 4, 8, 16, 32, 64]


def _linear(n: float) -> float:
    return 0.003 * n + 0.002


def _power(n: float) -> float:
    return 0.002 * n**0.8 + 0.001


def test_known_linear_series_is_recovered_and_chosen() -> None:
    fit = fit_batch_model([(n, _linear(n)) for n in BATCHES])
    assert fit is not None and fit.kind == "linear"
    assert fit.params == pytest.approx((0.003, 0.002), rel=1e-3)
    assert (fit.n_min, fit.n_max) == (1, 64) and fit.rel_rmse < 1e-9
    for n in range(1, 65):
        assert fit.predict(n) == pytest.approx(_linear(n), rel=1e-3)


def test_known_power_law_is_recovered_and_chosen() -> None:
    fit = fit_batch_model([(n, _power(n)) for n in BATCHES])
    assert fit is not None and fit.kind == "power"
    assert fit.params == pytest.approx((0.002, 0.8, 0.001), rel=1e-3)
    for n in range(1, 65):
        assert fit.predict(n) == pytest.approx(_power(n), rel=1e-3)


def test_power_law_off_the_exponent_grid_is_refined() -> None:
    points = [(n, 0.001 * n**1.3337 + 0.0005) for n in BATCHES]
    fit = fit_batch_model(points)
    assert fit is not None and fit.kind == "power"
    assert fit.params[1] == pytest.approx(1.3337, rel=1e-4)
    assert fit.rel_rmse < 1e-6


def test_predict_is_nan_outside_the_observed_range() -> None:
    fit = fit_batch_model([(n, _power(n)) for n in (4, 8, 16)])
    assert fit is not None
    assert math.isnan(fit.predict(3)) and math.isnan(fit.predict(17))
    assert not math.isnan(fit.predict(4)) and not math.isnan(fit.predict(16))


def test_fewer_than_two_batch_sizes_give_no_fit() -> None:
    assert fit_batch_model([]) is None
    assert fit_batch_model([(8, 0.01), (8, 0.011), (8, 0.009)]) is None


def test_two_batch_sizes_give_a_linear_fit_even_for_a_curve() -> None:
    fit = fit_batch_model([(1, _power(1)), (64, _power(64))])
    assert fit is not None and fit.kind == "linear"
    assert fit.predict(1) == pytest.approx(_power(1)) and fit.predict(64) == pytest.approx(_power(64))


def test_power_law_with_nonpositive_scale_is_rejected() -> None:
    """Time that falls with batch size would need ``a < 0``: only the linear fit remains."""
    fit = fit_batch_model([(n, 0.05 - 0.01 * n**0.5) for n in (1, 4, 9, 16)])
    assert fit is not None and fit.kind == "linear"


def test_noisy_power_law_with_duplicates_stays_within_a_few_percent() -> None:
    rng = np.random.default_rng(7)
    points = [(n, _power(n) * (1 + rng.normal(0, 0.02))) for n in BATCHES for _ in range(3)]
    fit = fit_batch_model(points)
    assert fit is not None and fit.rel_rmse < 0.05
    for n in range(1, 65):
        assert fit.predict(n) == pytest.approx(_power(n), rel=0.04)


def test_relative_weights_keep_small_batches_accurate() -> None:
    """Neither law fits a fixed floor then a linear climb; an absolute least-squares line
    is off by ~50% at batch 1 to serve the big batches, the relative fit spreads its error."""
    points = [(n, max(0.001, 0.0001 * n) + 0.0002) for n in (2**k for k in range(11))]
    fit = fit_batch_model(points)
    assert fit is not None and fit.rel_rmse < 0.15
    errors = [abs(fit.predict(n) / y - 1) for n, y in points]
    assert max(errors) < 0.25


def test_bad_points_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="batch sizes"):
        fit_batch_model([(0, 0.1), (2, 0.2)])
    with pytest.raises(ValueError, match="times"):
        fit_batch_model([(1, 0.0), (2, 0.2)])
    with pytest.raises(ValueError, match="times"):
        fit_batch_model([(1, math.nan), (2, 0.2)])
    with pytest.raises(ValueError, match="kind"):
        BatchFit("cubic", (1.0,), 1, 2, 0.0)
