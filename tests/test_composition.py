"""The composition correction: exact on synthetic parts, never negative, round-trips."""

from __future__ import annotations

import math

import pytest

from perfmodels.composition import (
    CompositionModel,
    CompositionSample,
    fit_composition,
    naive_sum,
    node_share,
    scaled_node_sum,
)
from perfmodels.costs import NodeCosts


def parts(alpha: float, c0: float, c1: float) -> list[CompositionSample]:
    shapes = [(0.004, 10, 0.2), (0.010, 40, 0.5), (0.001, 3, 0.8), (0.020, 90, 0.3), (0.0005, 12, 0.1),
              (0.007, 25, 1.0)]
    return [CompositionSample(s, n, alpha * s + c0 * n + c1 * (1 - f), f) for s, n, f in shapes]


def test_recovers_known_coefficients() -> None:
    model = fit_composition("cpu:1t", parts(0.9, 2e-6, 3e-5))
    assert (model.alpha, model.c0_s, model.c1_s) == pytest.approx((0.9, 2e-6, 3e-5), rel=1e-6)
    assert model.rel_rmse < 1e-9
    assert model.predict(0.01, 20, 0.25) == pytest.approx(0.9 * 0.01 + 2e-6 * 20 + 3e-5 * 0.75)


def test_the_call_cost_is_not_counted_twice() -> None:
    """A model of 10 us of compute and an 8 us session call, measured whole in 18 us, split in
    halves: each half's scaled node sum (9 us) already holds half the call, so it takes 13 us.
    The fit finds alpha = 1 and c1 = the call, and predicts the whole model as measured."""
    call, compute = 8e-6, 10e-6
    whole = call + compute
    samples = [CompositionSample(share * whole, nodes, call + share * compute, share)
               for share, nodes in [(0.5, 3), (0.5, 7), (0.25, 2), (0.75, 9), (0.1, 1), (0.9, 5)]]
    model = fit_composition("cpu:1t", samples)
    assert (model.alpha, model.c1_s) == pytest.approx((1.0, call), rel=1e-6)
    assert model.predict(whole, 4, 1.0) == pytest.approx(whole, rel=1e-6)


def test_coefficients_never_go_negative() -> None:
    """Parts faster than their node sum by a per-node amount would want c0 < 0: it is clamped."""
    samples = [CompositionSample(s, n, max(1e-6, s - 1e-5 * n), 0.25) for s, n in
               [(0.004, 10), (0.010, 40), (0.001, 3), (0.020, 90)]]
    model = fit_composition("cpu:1t", samples)
    assert min(model.alpha, model.c0_s, model.c1_s) >= 0


def test_needs_two_parts() -> None:
    with pytest.raises(ValueError, match=">= 2 measured parts"):
        fit_composition("cpu:1t", parts(1, 0, 0)[:1])


def test_naive_sum_ignores_unknown_nodes_and_round_trip() -> None:
    assert naive_sum({"a": 1.0, "b": 2.0}, ["a", "c"]) == 1.0
    model = fit_composition("cpu:2t", parts(1.1, 0, 1e-4))
    assert CompositionModel.from_dict(model.to_dict()) == model
    assert math.isfinite(model.rel_rmse)


def test_parts_the_profile_cannot_explain_do_not_pull_the_fit() -> None:
    """Ten parts, milliseconds and microseconds, follow alpha = 1, c1 = 5 us exactly; three
    microsecond parts whose profile is noise run 3x their prediction.  The fit still finds the
    ten's coefficients (plain least squares finds c1 = 6.7 us)."""
    small = [(3e-6, 0.2), (6e-6, 0.6), (1e-5, 0.4), (2e-6, 0.1)]
    consistent = parts(1.0, 0.0, 5e-6) + [CompositionSample(s, 3, s + 5e-6 * (1 - f), f) for s, f in small]
    noise = [CompositionSample(s, 2, 3 * (s + 5e-6 * (1 - f)), f) for s, f in
             [(2e-6, 0.3), (4e-6, 0.5), (3e-6, 0.2)]]
    model = fit_composition("cpu:1t", consistent + noise)
    assert model.alpha == pytest.approx(1.0, rel=0.02)
    assert model.c1_s == pytest.approx(5e-6, rel=0.1)


def test_scaled_sum_takes_the_whole_models_time_from_history_when_given() -> None:
    """Node times sum to 4 ms and the profile's whole run took 2 ms; the history says 3 ms."""
    costs = NodeCosts("cpu:1t", "ort-profile", 1, 1, {"a": 0.001, "b": 0.003}, 0.002, "sha")
    assert node_share(costs, ["a"]) == 0.25
    assert scaled_node_sum(costs, ["a"]) == pytest.approx(0.0005)
    assert scaled_node_sum(costs, ["a"], whole_s=0.003) == pytest.approx(0.00075)
    for unknown in (math.nan, 0.0, None):  # no history: the profile's own run
        assert scaled_node_sum(costs, ["a"], whole_s=unknown) == pytest.approx(0.0005)
