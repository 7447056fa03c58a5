"""History perf models: Welford statistics, outlier rejection and reset, trust threshold,
footprints, batch points and thread safety -- all on synthetic measurements."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfmodels.history import (
    WINDOW,
    HistoryKey,
    HistoryModel,
    RunningStats,
    footprint,
    stage_id,
)

KEY = HistoryKey(stage="abcd", arch="cpu:2t", footprint="input=1x3x224x224")


def _stats(values: list[float], *, reject: bool = False) -> RunningStats:
    stats = RunningStats()
    for value in values:
        stats.add(value, reject_outliers=reject)
    return stats


def test_running_stats_match_numpy_on_a_known_series() -> None:
    values = [0.010, 0.012, 0.011, 0.013, 0.009, 0.0105, 0.0115]
    stats = _stats(values)
    assert stats.count == len(values)
    assert stats.mean == pytest.approx(np.mean(values), rel=1e-12)
    assert stats.variance == pytest.approx(np.var(values, ddof=1), rel=1e-9)
    assert stats.std == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    assert stats.relative_std == pytest.approx(np.std(values, ddof=1) / np.mean(values), rel=1e-9)


def test_variance_is_nan_below_two_samples() -> None:
    assert math.isnan(RunningStats().variance)
    one = _stats([3.0])
    assert one.mean == 3.0 and math.isnan(one.variance) and math.isnan(one.std)
    assert math.isnan(one.relative_std)


samples = st.lists(st.floats(min_value=0.0, max_value=1e3, allow_nan=False), min_size=0, max_size=60)


@given(values=samples, cut=st.integers(min_value=0, max_value=60))
def test_merge_of_two_halves_equals_all_at_once(values: list[float], cut: int) -> None:
    cut = min(cut, len(values))
    left, right = _stats(values[:cut]), _stats(values[cut:])
    left.merge(right)
    whole = _stats(values)
    scale = max(values, default=1.0) or 1.0
    assert left.count == whole.count
    assert left.mean == pytest.approx(whole.mean, rel=1e-9, abs=1e-12 * scale)
    assert left.m2 == pytest.approx(whole.m2, rel=1e-7, abs=1e-9 * scale * scale)
    if len(values) >= 2:
        assert left.variance == pytest.approx(np.var(values, ddof=1), rel=1e-6, abs=1e-9 * scale**2)


def test_slow_spike_is_rejected_and_does_not_move_the_mean() -> None:
    stats = _stats([1.0, 1.1, 0.9, 1.0, 1.05], reject=True)
    before = stats.mean
    assert stats.add(10.0) is False
    assert (stats.count, stats.rejected, stats.mean) == (5, 1, before)
    assert stats.add(1.02) is True  # an accepted sample ends the run of outliers
    assert stats.recent_outliers == []


def test_faster_samples_are_genuine_and_kept() -> None:
    stats = _stats([1.0] * 5, reject=True)
    assert stats.add(0.1) is True
    assert stats.count == 6 and stats.rejected == 0


def test_no_rejection_before_min_samples() -> None:
    stats = RunningStats()
    for value in (1.0, 1.0, 50.0):
        assert stats.add(value, min_samples=5) is True
    assert stats.count == 3


def test_lasting_shift_resets_the_entry_to_the_recent_samples() -> None:
    """The machine became 3x slower: the first four are rejected, the fifth in a row
    proves the change is lasting and the entry restarts from those five samples."""
    stats = _stats([1.0, 1.01, 0.99, 1.0, 1.0, 1.02], reject=True)
    shifted = [3.0, 3.1, 2.9, 3.05, 2.95]
    results = [stats.add(x, min_samples=5) for x in shifted]
    assert results == [False, False, False, False, True]
    assert stats.count == 5 and stats.resets == 1 and stats.rejected == 0
    assert stats.mean == pytest.approx(np.mean(shifted), rel=1e-12)
    assert stats.variance == pytest.approx(np.var(shifted, ddof=1), rel=1e-9)
    assert stats.add(3.0) is True  # the new level is now the normal one


def test_running_stats_dict_round_trip_and_validation() -> None:
    stats = _stats([0.1, 0.2, 0.3])
    stats.rejected = 2
    back = RunningStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back == stats
    with pytest.raises(ValueError):
        RunningStats.from_dict({**stats.to_dict(), "count": -1})
    with pytest.raises(TypeError):
        RunningStats.from_dict({**stats.to_dict(), "mean": "fast"})


def test_prediction_is_the_median_of_the_recent_window() -> None:
    """A skewed series: the mean sits above every typical run, the median is one of them."""
    model = HistoryModel(min_samples=3)
    for value in [1.0, 1.0, 1.1, 0.9, 1.0, 1.45, 1.4]:  # two bursts, under the outlier bar
        assert model.record(KEY, value)
    assert model.stats(KEY).mean > 1.1
    assert model.predict(KEY) == 1.0
    model.record(KEY, 1.2)  # an even window: the mean of its two middle samples
    assert model.predict(KEY) == pytest.approx(1.05)


def test_window_keeps_the_last_samples_and_follows_a_lasting_change() -> None:
    stats = _stats([1.0] * WINDOW)
    for value in [2.0] * (WINDOW // 2):
        stats.add(value)
    assert stats.median == 1.0  # still most of the window
    stats.add(2.0)
    assert stats.median == 2.0 and len(stats.window) == WINDOW
    assert stats.window == [1.0] * (WINDOW // 2) + [2.0] * (WINDOW // 2 + 1)


def test_merged_window_keeps_the_newer_samples_last() -> None:
    older, newer = _stats([5.0] * WINDOW), _stats([1.0, 2.0])
    older.merge(newer)
    assert older.window[-2:] == [1.0, 2.0] and len(older.window) == WINDOW
    empty = RunningStats()
    empty.merge(newer)
    assert empty.window == [1.0, 2.0] and empty.median == 1.5


def test_window_survives_the_dict_round_trip_and_is_validated() -> None:
    stats = _stats([0.3, 0.1, 0.2])
    back = RunningStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back.window == [0.3, 0.1, 0.2] and back.median == 0.2
    with pytest.raises(ValueError, match="window holds 1 samples"):  # trusted, yet nothing to predict
        RunningStats.from_dict({**stats.to_dict(), "window": [0.1]})
    longer = RunningStats.from_dict({**stats.to_dict(), "window": [9.0] + [0.1] * WINDOW})
    assert longer.window == [0.1] * WINDOW  # written by a larger WINDOW: its newest samples
    with pytest.raises(TypeError, match="window"):
        RunningStats.from_dict({k: v for k, v in stats.to_dict().items() if k != "window"})


def test_footprint_is_sorted_stable_and_escapes_separators() -> None:
    assert footprint({"input": (1, 3, 224, 224)}) == "input=1x3x224x224"
    numpy_dims: list[Any] = [np.int64(4), 2]
    assert footprint({"b": [4, 7], "a": numpy_dims}) == "a=4x2,b=4x7"
    assert footprint({"x=y,z": [2]}) == "x%3Dy%2Cz=2"
    assert footprint({"s": []}) == "s="
    with pytest.raises(ValueError, match="concrete dims"):
        footprint({"input": ["N", 3]})  # type: ignore[list-item]


def test_stage_id_is_a_short_content_hash() -> None:
    assert stage_id(b"part") == stage_id(b"part")
    assert stage_id(b"part") != stage_id(b"part2")
    assert len(stage_id(b"")) == 16 and int(stage_id(b""), 16) >= 0


def test_history_is_nan_below_min_samples_and_trusted_at_it() -> None:
    model = HistoryModel(min_samples=3)
    assert math.isnan(model.predict(KEY)) and not model.is_trusted(KEY)
    for value in (0.010, 0.012):
        model.record(KEY, value)
        assert math.isnan(model.predict(KEY)) and not model.is_trusted(KEY)
    model.record(KEY, 0.011)
    assert model.is_trusted(KEY)
    assert model.predict(KEY) == pytest.approx(0.011)


def test_history_rejects_bad_durations_and_min_samples() -> None:
    model = HistoryModel()
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="duration_s"):
            model.record(KEY, bad)
    with pytest.raises(ValueError, match="min_samples"):
        HistoryModel(min_samples=0)


def test_stats_is_a_snapshot() -> None:
    model = HistoryModel()
    model.record(KEY, 1.0)
    snapshot = model.stats(KEY)
    model.record(KEY, 2.0)
    assert snapshot.count == 1 and model.stats(KEY).count == 2
    assert model.stats(HistoryKey("x", "y", "z")).count == 0


def test_batch_points_parse_footprints_of_trusted_entries() -> None:
    model = HistoryModel(min_samples=2)
    fills = {
        "input=4x3x8x8": 0.004,
        "input=1x3x8x8": 0.001,
        "a=2x5,b=2": 0.002,  # every input shares batch 2
        "a=2x5,b=3": 0.9,  # inputs disagree: no batch
        "s=": 0.9,  # a scalar has no batch dim
        "input=0x3": 0.9,  # empty batch
    }
    for fp, value in fills.items():
        for _ in range(2):
            model.record(HistoryKey("st", "cpu:2t", fp), value)
    model.record(HistoryKey("st", "cpu:2t", "input=8x3x8x8"), 0.008)  # not trusted yet
    for _ in range(2):
        model.record(HistoryKey("st", "cuda:sm90", "input=16x3x8x8"), 0.5)  # other arch
    points = model.batch_points("st", "cpu:2t")
    assert points == [(1, 0.001, 2), (2, 0.002, 2), (4, 0.004, 2)]


def test_history_merge_statistics_and_dict_round_trip() -> None:
    left, right = HistoryModel(min_samples=2), HistoryModel(min_samples=2)
    other = HistoryKey("s2", "cpu:2t", "input=2x3")
    for value in (1.0, 1.1):
        left.record(KEY, value)
    for value in (0.9, 1.2):
        right.record(KEY, value)
    right.record(other, 0.5)
    left.merge(right)
    assert left.stats(KEY).count == 4
    assert left.predict(KEY) == pytest.approx(np.mean([1.0, 1.1, 0.9, 1.2]))
    assert left.keys() == sorted([KEY, other])
    snap = left.statistics()
    assert (snap.entries, snap.trusted, snap.samples, snap.rejected) == (2, 1, 5, 0)
    back = HistoryModel.from_dict(json.loads(json.dumps(left.to_dict())))
    assert back.to_dict() == left.to_dict() and back.min_samples == 2


def test_history_from_dict_rejects_malformed_documents() -> None:
    good = HistoryModel().to_dict()
    for bad in ({**good, "entries": {}}, {**good, "min_samples": "5"},
                {**good, "entries": [{"stage": 1, "arch": "a", "footprint": "f", "stats": {}}]}):
        with pytest.raises((TypeError, ValueError)):
            HistoryModel.from_dict(bad)


def test_concurrent_records_from_many_threads_lose_nothing() -> None:
    model = HistoryModel()
    threads_n, per_thread = 8, 500
    barrier = threading.Barrier(threads_n)

    def work(index: int) -> None:
        key = HistoryKey("s", f"cpu:{index % 2}t", "input=1")
        barrier.wait()
        for _ in range(per_thread):
            model.record(KEY, 0.01)
            model.record(key, 0.02)
            model.predict(KEY)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.stats(KEY).count == threads_n * per_thread
    assert model.predict(KEY) == pytest.approx(0.01)
    assert model.statistics().samples == 2 * threads_n * per_thread
