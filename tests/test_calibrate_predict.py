"""calibrate fills the per-host store; predict says where each number came from, best source first."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from hetsched.calibrate import (
    PlanSource,
    calibrate,
    load_composition,
    node_costs,
    whole_model_stage,
    whole_model_stage_id,
)
from hetsched.predict import predict_plan
from partitioner.errors import UsageError
from partitioner.graph import build_graph
from partitioner.partition import partition
from perfmodels.composition import node_share
from perfmodels.history import HistoryKey, HistoryModel, footprint
from perfmodels.store import PerfModelStore

from test_acyclic import chain


@pytest.fixture()
def plan_dir(tmp_path: Path) -> Path:
    model = tmp_path / "chain.onnx"
    onnx.save(chain(12, op="Sigmoid"), str(model))
    partition(build_graph(model), [0.5, 0.5], source_label=str(model)).save(tmp_path / "plan")
    return tmp_path / "plan"


def test_fresh_plan_is_predicted_from_node_profiles(plan_dir: Path, tmp_path: Path) -> None:
    prediction = predict_plan(plan_dir, batch=2, threads=1, store=PerfModelStore(tmp_path / "store"))
    assert [p.source for p in prediction.parts] == ["node-sum", "node-sum"]
    assert all(p.ms > 0 for p in prediction.parts)


def test_calibrated_batches_come_from_history_then_regression_then_composition(
    plan_dir: Path, tmp_path: Path
) -> None:
    store = PerfModelStore(tmp_path / "store")
    report = calibrate(plan_dir, batches=[1, 2, 4], threads=[1], store=store)
    assert sorted(report.measured_s) == [(p, "cpu:1t", b) for p in (0, 1) for b in (1, 2, 4)]
    assert load_composition(store, "cpu:1t") is not None
    history = store.load_history()
    whole = whole_model_stage(PlanSource.open(plan_dir))
    assert whole is not None  # the source model is at hand: it is calibrated whole, too
    assert {k.stage for k in history.keys()} == {*PlanSource.open(plan_dir).stages, whole[0]}
    assert len(history.keys()) == 9 and all(history.is_trusted(k) for k in history.keys())
    sources = {b: {p.source for p in predict_plan(plan_dir, b, 1, store).parts} for b in (2, 3, 16)}
    assert sources == {2: {"history"}, 3: {"regression"}, 16: {"composition"}}


def test_composition_scales_the_profile_to_the_whole_models_history(plan_dir: Path, tmp_path: Path) -> None:
    """A part never run at batch 16 takes its share of the profile times what the whole model's
    history says at 16 -- not the profile's own run of the whole model, taken once."""
    store = PerfModelStore(tmp_path / "store")
    calibrate(plan_dir, batches=[1, 2], threads=[1], store=store)
    source = PlanSource.open(plan_dir)
    whole = whole_model_stage(source)
    assert whole is not None
    delta = HistoryModel()
    key = HistoryKey(whole[0], "cpu:1t", footprint({"x": (16, 4)}))
    for _ in range(delta.min_samples):
        delta.record(key, 0.25)  # far from anything a 12-node chain takes: the scale is visible
    store.add_history(delta)
    composition = load_composition(store, "cpu:1t")
    costs = node_costs(source, 16, 1)
    assert composition is not None and costs is not None
    prediction = predict_plan(plan_dir, 16, 1, store)
    for part, predicted in zip(source.plan.parts, prediction.parts):
        share = node_share(costs, part.nodes)
        expected = composition.predict(share * 0.25, len(part.nodes), share)
        assert predicted.source == "composition"
        assert predicted.ms == pytest.approx(expected * 1e3, rel=1e-9)


def test_a_source_model_changed_since_partitioning_is_not_timed_as_the_whole(
    plan_dir: Path, tmp_path: Path
) -> None:
    onnx.save(chain(5, op="Relu"), str(tmp_path / "chain.onnx"))  # the plan's source, edited
    with pytest.raises(UsageError, match="changed since it was partitioned"):
        whole_model_stage(PlanSource.open(plan_dir))


def test_the_whole_models_stage_id_is_cached_beside_the_plan(plan_dir: Path) -> None:
    source = PlanSource.open(plan_dir)
    whole = whole_model_stage(source)
    assert whole is not None and whole_model_stage_id(source) == whole[0]
    assert json.loads((plan_dir / "costs" / "whole-stage.json").read_text())["stage"] == whole[0]
    Path(source.plan.source_model).unlink()  # the cache answers without the source model
    assert whole_model_stage_id(source) == whole[0]


def test_without_source_model_or_history_the_prediction_is_nan(plan_dir: Path, tmp_path: Path) -> None:
    plan_file = plan_dir / "plan.json"
    raw = json.loads(plan_file.read_text())
    raw["source_model"] = str(tmp_path / "gone.onnx")
    plan_file.write_text(json.dumps(raw))
    prediction = predict_plan(plan_dir, batch=1, threads=1, store=PerfModelStore(tmp_path / "store"))
    assert all(p.source == "none" and math.isnan(p.ms) for p in prediction.parts)
    assert prediction.to_json_dict()["total_ms"] is None


def test_predict_cli_prints_the_json_contract(plan_dir: Path, tmp_path: Path) -> None:
    env = {"HETSCHED_PERFMODEL_DIR": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "hetsched", "predict", str(plan_dir), "--batch", "2", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [p["file"] for p in out["parts"]] == ["part_0.onnx", "part_1.onnx"]
    assert out["total_ms"] == pytest.approx(sum(p["ms"] for p in out["parts"]), rel=1e-3)
    assert {p["source"] for p in out["parts"]} == {"node-sum"}
