"""The perf-model store: round trips, merging under a lock across processes, bad files set
aside without raising, the default directory, and imports free of ONNX Runtime."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perfmodels.history import HistoryKey, HistoryModel
from perfmodels.store import ENV_DIR, HISTORY_FORMAT, PerfModelStore, default_dir

REPO = Path(__file__).resolve().parents[1]
KEY = HistoryKey(stage="0123456789abcdef", arch="cpu:2t", footprint="input=4x3x8x8")
ADDS, PER_ADD = 20, 10


def _sample(worker: int, add: int, i: int) -> float:
    """Distinct, deterministic durations close together (none is an outlier)."""
    return 0.010 + 1e-6 * (worker * 1000 + add * PER_ADD + i)


def _add_samples(directory: str, worker: int, barrier: Any) -> None:
    """One process: ADDS separate add_history calls of PER_ADD samples each."""
    store = PerfModelStore(directory)
    own = HistoryKey(KEY.stage, KEY.arch, f"input={worker + 1}x3x8x8")
    barrier.wait()
    for add in range(ADDS):
        delta = HistoryModel()
        for i in range(PER_ADD):
            delta.record(KEY, _sample(worker, add, i))
            delta.record(own, _sample(worker, add, i))
        store.add_history(delta)


def _files(directory: Path, marker: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if marker in p.name)


def test_history_round_trip(tmp_path: Path) -> None:
    store = PerfModelStore(tmp_path / "a" / "b")
    assert store.load_history().keys() == []
    assert not (tmp_path / "a").exists()  # reading never creates the directory
    delta = HistoryModel(min_samples=3)
    for value in (0.01, 0.011, 0.012):
        delta.record(KEY, value)
    merged = store.add_history(delta)
    loaded = store.load_history()
    assert loaded.to_dict() == merged.to_dict() == delta.to_dict()
    assert loaded.min_samples == 3 and loaded.predict(KEY) == pytest.approx(0.011)
    doc = json.loads((store.directory / "history.json").read_text())
    assert doc["format"] == HISTORY_FORMAT and isinstance(doc["host"], str)
    assert _files(store.directory, ".tmp") == []


def test_add_history_merges_exactly(tmp_path: Path) -> None:
    store = PerfModelStore(tmp_path)
    values = [0.01 + 0.001 * i for i in range(12)]
    for chunk in (values[:5], values[5:]):
        delta = HistoryModel()
        for value in chunk:
            delta.record(KEY, value)
        store.add_history(delta)
    stats = store.load_history().stats(KEY)
    assert stats.count == 12
    assert stats.mean == pytest.approx(np.mean(values), rel=1e-12)
    assert stats.variance == pytest.approx(np.var(values, ddof=1), rel=1e-9)


def test_two_processes_adding_at_once_lose_no_sample(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_add_samples, args=(str(tmp_path), w, barrier)) for w in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    model = PerfModelStore(tmp_path).load_history()
    everything = [_sample(w, a, i) for w in (0, 1) for a in range(ADDS) for i in range(PER_ADD)]
    stats = model.stats(KEY)
    assert (stats.count, stats.rejected) == (2 * ADDS * PER_ADD, 0)
    assert stats.mean == pytest.approx(np.mean(everything), rel=1e-12)
    assert stats.variance == pytest.approx(np.var(everything, ddof=1), rel=1e-6)
    for worker in (0, 1):
        own = HistoryKey(KEY.stage, KEY.arch, f"input={worker + 1}x3x8x8")
        assert model.stats(own).count == ADDS * PER_ADD


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe binary",
        json.dumps({"format": "hetsched.history/0", "host": "h", "min_samples": 5,
                    "entries": []}).encode(),
        json.dumps({"format": HISTORY_FORMAT, "host": "h", "min_samples": 5,
                    "entries": [{"stage": "s", "arch": "a", "footprint": "f",
                                 "stats": {"count": "3", "mean": 1.0, "m2": 0.0,
                                           "rejected": 0}}]}).encode(),
        json.dumps([1, 2]).encode(),
    ],
    ids=["bad-json", "not-utf8", "old-format", "wrong-types", "not-an-object"],
)
def test_bad_history_file_is_set_aside_and_a_fresh_model_returned(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "history.json").write_bytes(content)
    store = PerfModelStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="perfmodels.store"):
        model = store.load_history()
    assert model.keys() == []
    aside = _files(tmp_path, "history.json.corrupt-")
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert not (tmp_path / "history.json").exists()
    assert "set aside" in caplog.text


def test_add_history_over_a_corrupt_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "history.json").write_text("garbage")
    delta = HistoryModel()
    delta.record(KEY, 0.5)
    merged = PerfModelStore(tmp_path).add_history(delta)
    assert merged.stats(KEY).count == 1
    assert PerfModelStore(tmp_path).load_history().stats(KEY).count == 1
    assert len(_files(tmp_path, ".corrupt-")) == 1


def test_json_documents_round_trip_and_bad_ones_are_set_aside(tmp_path: Path) -> None:
    store = PerfModelStore(tmp_path / "new")
    assert store.load_json("bus", "hetsched.bus/1") is None
    payload = {"links": [{"latency_s": 1e-5, "bandwidth_bytes_per_s": 1.2e10}]}
    store.save_json("bus", "hetsched.bus/1", payload)
    assert store.load_json("bus", "hetsched.bus/1") == payload
    assert store.load_json("bus", "hetsched.bus/2") is None  # a newer reader recalibrates
    assert len(_files(store.directory, "bus.json.corrupt-")) == 1
    assert store.load_json("bus", "hetsched.bus/2") is None
    (store.directory / "comp.json").write_text(json.dumps({"format": "c/1", "payload": [1]}))
    assert store.load_json("comp", "c/1") is None
    assert len(_files(store.directory, "comp.json.corrupt-")) == 1


def test_json_names_and_payloads_are_checked(tmp_path: Path) -> None:
    store = PerfModelStore(tmp_path)
    for name in ("history", "../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="model name"):
            store.save_json(name, "f/1", {})
    with pytest.raises(ValueError):
        store.save_json("nan", "f/1", {"x": float("nan")})
    assert _files(tmp_path, ".tmp") == []


def test_default_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "models"))
    assert default_dir() == tmp_path / "models"
    assert PerfModelStore().directory == tmp_path / "models"
    monkeypatch.delenv(ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = default_dir()
    assert found.parent == tmp_path / "cache" / "hetsched" / "perfmodels" and found.name
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_dir().parent == tmp_path / "home" / ".cache" / "hetsched" / "perfmodels"


def test_perf_model_modules_import_without_onnxruntime() -> None:
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None\n"
        "sys.modules['onnx'] = None\n"
        "import perfmodels.history, perfmodels.regression, perfmodels.store\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'hetsched')\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
