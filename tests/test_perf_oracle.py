"""The history oracle: exact footprints first, then a batch regression refitted only when it matters."""

from __future__ import annotations

import math

import pytest

import hetsched.perf as perf
from hetsched.perf import HistoryOracle
from hetsched.task import Job, Task, WorkerSpec
from perfmodels.history import HistoryKey, HistoryModel, footprint

WORKER = WorkerSpec("cpu0", "cpu:2t", "host:0", (0, 1))


def task(batch: int) -> Task:
    return Task("stage", 0, Job("j", [[]]), footprint({"x": (batch, 8)}), batch)


def record(history: HistoryModel, batch: int, seconds: float, times: int = 5) -> None:
    for _ in range(times):
        history.record(HistoryKey("stage", "cpu:2t", footprint({"x": (batch, 8)})), seconds)


def test_exact_history_then_regression_inside_the_range_then_nan() -> None:
    history = HistoryModel(min_samples=5)
    oracle = HistoryOracle(history)
    assert math.isnan(oracle.predict(task(1), WORKER))  # nothing known: run it to calibrate
    record(history, 1, 0.010)
    record(history, 4, 0.025)
    assert oracle.predict(task(1), WORKER) == pytest.approx(0.010)
    assert 0.010 < oracle.predict(task(2), WORKER) < 0.025  # between the calibrated sizes
    assert math.isnan(oracle.predict(task(8), WORKER))  # outside them: not trusted


def test_the_regression_is_refitted_only_when_a_batch_appears_or_a_prediction_moves(monkeypatch) -> None:
    """Each served request may nudge a batch's median; refitting on every one cost ~30 ms per
    prediction."""
    fits = []
    real_fit = perf.fit_batch_model
    monkeypatch.setattr(perf, "fit_batch_model", lambda points: fits.append(points) or real_fit(points))
    history = HistoryModel(min_samples=5)
    oracle = HistoryOracle(history)
    record(history, 1, 0.010)
    record(history, 4, 0.025)
    oracle.predict(task(2), WORKER)
    record(history, 1, 0.0101, times=1)  # a sample 1% off: batch 1's median barely moves
    oracle.predict(task(2), WORKER)
    assert len(fits) == 1
    record(history, 1, 0.030, times=7)  # most of batch 1's window is new: its median moves far, refit
    oracle.predict(task(2), WORKER)
    record(history, 8, 0.05)  # a new batch size: refit
    oracle.predict(task(2), WORKER)
    assert len(fits) == 3 and len(fits[-1]) == 3
