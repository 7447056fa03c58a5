"""The bus model: latency + nbytes / bandwidth per link, zero on one node, NaN when unknown;
fitted from synthetic points, refined by observations, clamped, saved and loaded."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from perfmodels.transfer import (
    FORMAT,
    MAX_BANDWIDTH_BYTES_PER_S,
    BusFormatError,
    BusModel,
    CalibrationUnavailable,
    LinkModel,
    Measurement,
    calibrate,
    calibrate_cuda,
    calibrate_host,
    cuda_device_count,
    fit_latency_bandwidth,
    link_kinds,
)

SIZES = [4096 * 4**i for i in range(8)]
LAT, BW = 10e-6, 10e9  # 10 us, 10 GB/s


def line(nbytes: float, latency_s: float = LAT, bandwidth: float = BW) -> float:
    return latency_s + nbytes / bandwidth


def pcie() -> BusModel:
    bus = BusModel()
    bus.set_link("host:0", "cuda:0", "pinned", LAT, BW)
    bus.set_link("host:0", "cuda:0", "pageable", 2 * LAT, BW / 2)
    return bus


def test_same_node_costs_nothing_even_without_links() -> None:
    assert BusModel().predict("cuda:1", "cuda:1", 1 << 30) == 0.0


def test_unknown_link_predicts_nan() -> None:
    bus = pcie()
    assert math.isnan(bus.predict("cuda:0", "host:0", 1024))  # only H2D was set
    assert math.isnan(bus.predict("host:0", "host:1", 1024))
    assert math.isnan(bus.predict("host:0", "cuda:1", 1024, kind="pinned"))


def test_prediction_is_latency_plus_bytes_over_bandwidth() -> None:
    bus = pcie()
    assert bus.predict("host:0", "cuda:0", 0) == pytest.approx(LAT)
    assert bus.predict("host:0", "cuda:0", 10**9) == pytest.approx(LAT + 0.1)
    assert bus.predict("host:0", "cuda:0", 10**9, kind="pageable") == pytest.approx(2 * LAT + 0.2)


def test_default_kind_prefers_pinned_then_pageable() -> None:
    assert link_kinds("host:0", "cuda:3") == ("pinned", "pageable")
    assert link_kinds("worker:tcp://10.0.0.2:8786", "host:0") == ("network",)
    bus = BusModel()
    bus.set_link("host:0", "cuda:0", "pageable", LAT, BW)
    assert bus.predict("host:0", "cuda:0", 0) == pytest.approx(LAT)


@pytest.mark.parametrize("src, dst, kind", [
    ("host:0", "cuda:0", "memcpy"), ("host:0", "host:1", "pinned"), ("gpu:0", "host:0", "memcpy"),
    ("host:x", "host:0", "memcpy"), ("host:0", "worker:", "network"),
])
def test_bad_links_are_rejected(src: str, dst: str, kind: str) -> None:
    with pytest.raises(ValueError):
        BusModel().set_link(src, dst, kind, LAT, BW)


@pytest.mark.parametrize("latency_s, bandwidth", [(-1e-6, BW), (LAT, 0.0), (LAT, -BW), (LAT, math.nan)])
def test_impossible_priors_are_rejected(latency_s: float, bandwidth: float) -> None:
    with pytest.raises(ValueError, match="latency"):
        LinkModel(latency_s, bandwidth)


def test_fit_recovers_exact_parameters() -> None:
    latency_s, bandwidth = fit_latency_bandwidth([(n, line(n)) for n in SIZES])
    assert latency_s == pytest.approx(LAT, rel=1e-6)
    assert bandwidth == pytest.approx(BW, rel=1e-6)


def test_fit_recovers_parameters_through_noise() -> None:
    rng = np.random.default_rng(7)
    points = [(n, line(n) * float(rng.uniform(0.95, 1.05))) for n in SIZES for _ in range(5)]
    latency_s, bandwidth = fit_latency_bandwidth(points)
    assert latency_s == pytest.approx(LAT, rel=0.1)
    assert bandwidth == pytest.approx(BW, rel=0.1)


def test_fit_clamps_negative_latency_to_zero() -> None:
    latency_s, bandwidth = fit_latency_bandwidth([(1000, 1e-6), (2000, 2.5e-6), (4000, 5.5e-6)])
    assert latency_s == 0.0
    assert 0 < bandwidth < math.inf


def test_fit_clamps_flat_timings_to_pure_latency() -> None:
    latency_s, bandwidth = fit_latency_bandwidth([(1000, 5e-6), (2000, 4e-6), (4000, 3e-6)])
    assert bandwidth == pytest.approx(MAX_BANDWIDTH_BYTES_PER_S)
    assert latency_s > 0


@pytest.mark.parametrize("points", [[(1000, 1e-6), (1000, 2e-6)], [(1000, 0.0), (2000, 1e-6)],
                                    [(-1, 1e-6), (2000, 1e-6)], [(1000, math.nan), (2000, 1e-6)]])
def test_fit_rejects_unusable_points(points: list[tuple[int, float]]) -> None:
    with pytest.raises(ValueError):
        fit_latency_bandwidth(points)


def test_observations_below_the_minimum_leave_the_prior_alone() -> None:
    link = LinkModel(LAT, BW)
    for _ in range(10):
        link.observe(1 << 20, 1.0)  # one size only: no slope to fit
    assert link.count == 10 and not link.refined
    assert link.predict(1 << 20) == pytest.approx(line(1 << 20))
    link.observe(1 << 10, 1.0)
    assert link.refined and link.predict(1 << 20) > 0.5


def test_refinement_moves_toward_observed_truth() -> None:
    true_latency, true_bw = 50e-6, 2e9  # slower than calibrated: contention
    link = LinkModel(LAT, BW, prior_weight=8)
    n = 1 << 24
    errors = [abs(link.predict(n) - line(n, true_latency, true_bw))]
    for rounds in range(4):
        for size in SIZES:
            link.observe(size, line(size, true_latency, true_bw))
        errors.append(abs(link.predict(n) - line(n, true_latency, true_bw)))
    assert errors == sorted(errors, reverse=True) and errors[-1] <= errors[0] / 4
    # blended exactly as 32 observations against 8 pseudo-observations
    latency_s, bandwidth = link.fitted()
    assert latency_s == pytest.approx(0.8 * true_latency + 0.2 * LAT)
    assert 1 / bandwidth == pytest.approx(0.8 / true_bw + 0.2 / BW)


def test_uncalibrated_link_learns_from_observations_alone() -> None:
    bus = BusModel()
    bus.observe("host:0", "cuda:0", SIZES[0], line(SIZES[0]))
    assert math.isnan(bus.predict("host:0", "cuda:0", 1 << 20))
    for size in SIZES[1:3]:
        bus.observe("host:0", "cuda:0", size, line(size))
    assert bus.predict("host:0", "cuda:0", 1 << 20) == pytest.approx(line(1 << 20))
    bus.observe("host:0", "host:0", 10, 1.0)  # same node: nothing to learn
    assert bus.keys() == [("host:0", "cuda:0", "pinned")]


def test_refined_link_never_goes_negative() -> None:
    link = LinkModel(0.0, BW, prior_weight=0)
    for size, duration_s in [(1000, 1e-6), (2000, 2.5e-6), (4000, 5.5e-6), (8000, 5e-6)]:
        link.observe(size, duration_s)
    latency_s, bandwidth = link.fitted()
    assert latency_s >= 0 and bandwidth > 0


def test_json_round_trip_keeps_priors_and_observations() -> None:
    bus = pcie()
    bus.observe("host:0", "cuda:0", 4096, 20e-6)
    bus.observe("cuda:0", "host:0", 4096, 20e-6)  # an uncalibrated link with NaN prior
    bus.set_link("host:0", "worker:tcp://node2:8786", "network", 1e-3, 1e9)
    raw = json.loads(json.dumps(bus.to_dict(), allow_nan=False))
    assert raw["format"] == FORMAT
    again = BusModel.from_dict(raw)
    assert again.to_dict() == bus.to_dict()
    assert again.predict("host:0", "cuda:0", 12345) == bus.predict("host:0", "cuda:0", 12345)


@pytest.mark.parametrize("raw", [{"format": "hetsched.bus/0", "links": []}, {"links": []},
                                 {"format": FORMAT, "links": [{"src": "host:0"}]}])
def test_foreign_files_are_refused_with_the_fix(raw: dict[str, object]) -> None:
    with pytest.raises(BusFormatError, match="re-run the bus calibration"):
        BusModel.from_dict(raw)


def test_statistics_is_a_frozen_snapshot() -> None:
    bus = pcie()
    before = bus.statistics()
    bus.set_link("host:0", "cuda:0", "pinned", 1.0, 1.0)
    assert [s.kind for s in before.links] == ["pageable", "pinned"]
    assert before.links[1].latency_s == pytest.approx(LAT)
    assert bus.statistics() != before


def test_measurements_fit_one_link_each() -> None:
    points = [Measurement("host:0", "cuda:0", "pinned", n, line(n), 5) for n in SIZES]
    points += [Measurement("cuda:0", "host:0", "pinned", n, line(n, 2 * LAT), 5) for n in SIZES]
    bus = BusModel.from_measurements(points)
    assert bus.predict("host:0", "cuda:0", 0) == pytest.approx(LAT)
    assert bus.predict("cuda:0", "host:0", 0) == pytest.approx(2 * LAT)


def test_host_calibration_gives_a_usable_link() -> None:
    done: list[tuple[int, int]] = []
    sizes = (4096, 65536, 1 << 20)
    measurements = calibrate_host(sizes, repeats=3, progress=lambda d, t: done.append((d, t)))
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert [m.nbytes for m in measurements] == list(sizes)
    link = BusModel.from_measurements(measurements).link("host:0", "host:0", "memcpy")
    assert link is not None
    latency_s, bandwidth = link.fitted()
    assert math.isfinite(latency_s) and latency_s >= 0
    assert math.isfinite(bandwidth) and bandwidth > 0


def test_calibrate_reports_progress_over_the_whole_run() -> None:
    done: list[tuple[int, int]] = []
    bus = calibrate(progress=lambda d, t: done.append((d, t)), sizes=(4096, 65536), repeats=3)
    assert ("host:0", "host:0", "memcpy") in bus.keys()
    assert done[-1][0] == done[-1][1] == len(bus.keys()) * 2


def test_cuda_calibration_says_what_is_missing() -> None:
    if cuda_device_count() > 0:
        pytest.skip("a GPU is present; test_cuda_calibration covers it")
    with pytest.raises(CalibrationUnavailable, match="cupy|device"):
        calibrate_cuda(0)


def test_cuda_calibration() -> None:
    pytest.importorskip("cupy")
    if cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    measurements = calibrate_cuda(0, sizes=(4096, 1 << 20, 1 << 22), repeats=3)
    bus = BusModel.from_measurements(measurements)
    assert len(bus.keys()) == 4
    for key in bus.keys():
        assert bus.predict(key[0], key[1], 1 << 20, kind=key[2]) > 0
