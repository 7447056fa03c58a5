"""Per-node profiling: the costs file, both methods on small models, and how ORT's kernels
are mapped back to model nodes (on synthetic traces, so no assertion depends on timing)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from partitioner.errors import UsageError
from partitioner.graph import OpGraph, build_graph
from perfmodels.profile import (
    DEFAULT_METHOD,
    METHODS,
    NodeCosts,
    _attribute,
    _kernel_runs,
    profile,
)

FIX = "hetsched profile MODEL --out costs.json"
RNG = np.random.default_rng(0)


def _weight(name: str, shape: tuple[int, ...], scale: float = 0.2) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], output: str,
           weights: list[onnx.TensorProto], out_shape: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def conv_chain() -> onnx.ModelProto:
    """x -> conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> relu2 (ORT fuses each triple)."""
    weights, nodes, x = [], [], "x"
    for i, cin in ((1, 3), (2, 8)):
        weights += [_weight(f"w{i}", (8, cin, 3, 3)), _weight(f"b{i}", (8,)),
                    numpy_helper.from_array(np.ones(8, np.float32), f"s{i}"),
                    _weight(f"m{i}", (8,)),
                    numpy_helper.from_array(np.ones(8, np.float32), f"v{i}")]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"],
                             [f"n{i}"], name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x = f"r{i}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])]
    return _model(nodes, inputs, "r2", weights, ["N", 8, 16, 16])


def branchy() -> onnx.ModelProto:
    r"""Two MatMul branches joined by Adds::

        x -> mm_a -> relu_a --\
          \-> mm_b -> tanh_b --+-> join -> mm_c -> skip(+x) -> y
    """
    weights = [_weight(n, (16, 16)) for n in ("wa", "wb", "wc")]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="mm_a"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("MatMul", ["x", "wb"], ["b"], name="mm_b"),
        helper.make_node("Tanh", ["b"], ["tb"], name="tanh_b"),
        helper.make_node("Add", ["ra", "tb"], ["j"], name="join"),
        helper.make_node("MatMul", ["j", "wc"], ["c"], name="mm_c"),
        helper.make_node("Add", ["c", "x"], ["y"], name="skip"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])]
    return _model(nodes, inputs, "y", weights, ["N", 16])


def with_if() -> onnx.ModelProto:
    """An If whose branches read outer-scope tensors ``h`` and ``x`` (no inputs of their own)."""
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["h", "x"], ["t"], name="then_mul")], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["h", "x"], ["e"], name="else_sub")], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceSum", ["h"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["y"], name="branch",
                         then_branch=then_branch, else_branch=else_branch),
    ]
    weights = [_weight("w", (16, 16)), numpy_helper.from_array(np.array(0, np.float32), "zero")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])]
    return _model(nodes, inputs, "y", weights, ["N", 16])


MODELS = {"conv_chain": conv_chain, "branchy": branchy, "with_if": with_if}


@pytest.fixture(scope="module", params=sorted(MODELS))
def graph(request: pytest.FixtureRequest) -> OpGraph:
    return build_graph(MODELS[request.param](), batch=2)


def _costs(**overrides: object) -> NodeCosts:
    fields: dict[str, object] = dict(
        arch="cpu:1t", method="isolated", batch=2, threads=1,
        seconds={"conv1": 1.5e-4, "bn1": 0.0}, whole_model_s=2e-4, model_sha256="ab" * 32,
    )
    fields.update(overrides)
    return NodeCosts(**fields)  # type: ignore[arg-type]


# -- the costs file -------------------------------------------------------------------------


def test_costs_round_trip_through_json(tmp_path: Path) -> None:
    costs = _costs()
    costs.save(tmp_path / "costs.json")
    assert NodeCosts.load(tmp_path / "costs.json") == costs
    assert json.loads((tmp_path / "costs.json").read_text())["format"] == "hetsched.costs/1"
    assert [p.name for p in tmp_path.iterdir()] == ["costs.json"]  # no temporary file left


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    _costs(batch=1).save(tmp_path / "costs.json")
    _costs(batch=4).save(tmp_path / "costs.json")
    assert NodeCosts.load(tmp_path / "costs.json").batch == 4


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "no such costs file"),
        (b"\x00\xffnot json", "not a JSON costs file"),
        (b"{not json", "not a JSON costs file"),
        (b"[1, 2]", "costs format is None"),
        (b'{"format": "hetsched.costs/0"}', "costs format is 'hetsched.costs/0'"),
        (b'{"format": "hetsched.costs/1", "arch": "cpu:1t"}', "malformed costs file"),
    ],
    ids=["missing", "binary", "garbage", "not-an-object", "old-version", "missing-fields"],
)
def test_load_rejects_bad_files_with_the_fix(tmp_path: Path, content: bytes | None,
                                             complaint: str) -> None:
    path = tmp_path / "costs.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        NodeCosts.load(path)
    message = str(info.value)
    assert complaint in message and FIX in message and "\n" not in message


def test_load_rejects_negative_seconds(tmp_path: Path) -> None:
    _costs(seconds={"conv1": 1.0}).save(tmp_path / "costs.json")
    data = json.loads((tmp_path / "costs.json").read_text())
    data["seconds"]["conv1"] = -1.0
    (tmp_path / "costs.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="non-negative"):
        NodeCosts.load(tmp_path / "costs.json")


# -- both methods on real (small) models ----------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_node_gets_a_cost(graph: OpGraph, method: str, caplog: pytest.LogCaptureFixture,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where ORT's trace would be left
    calls: list[tuple[int, int]] = []
    with caplog.at_level(logging.WARNING, logger="perfmodels.profile"):
        costs = profile(graph, method, threads=1, repeats=2, progress=lambda *a: calls.append(a))
    assert not caplog.records  # no node fell back to a cost of 0
    assert set(costs.seconds) == {node.name for node in graph.nodes}
    assert all(np.isfinite(s) and s >= 0 for s in costs.seconds.values())
    assert all(costs.seconds[n.name] > 0 for n in graph.nodes if n.op_type in ("Conv", "MatMul"))
    assert costs.whole_model_s > 0
    assert (costs.arch, costs.method, costs.batch, costs.threads) == ("cpu:1t", method, 2, 1)
    assert len(costs.model_sha256) == 64
    total = len(graph.nodes) if method == "isolated" else 2
    assert calls == [(done, total) for done in range(1, total + 1)]
    assert list(tmp_path.iterdir()) == []  # the ORT trace file was deleted


def test_isolated_runs_an_if_reading_outer_scope_tensors() -> None:
    graph = build_graph(with_if(), batch=2)
    costs = profile(graph, "isolated", repeats=1)
    assert costs.seconds["branch"] > 0


def test_costs_attach_to_the_graph(graph: OpGraph) -> None:
    costs = profile(graph, DEFAULT_METHOD, threads=2, repeats=1)
    weighted = graph.with_costs(costs.seconds, costs.arch, costs.method)
    assert weighted.arch == "cpu:2t" and weighted.cost_source == DEFAULT_METHOD
    assert list(weighted.cost_s) == [costs.seconds[n.name] for n in graph.nodes]


def test_profile_rejects_bad_arguments() -> None:
    graph = build_graph(branchy())
    with pytest.raises(UsageError, match="choose one of"):
        profile(graph, "psychic")
    with pytest.raises(UsageError, match="threads"):
        profile(graph, threads=0)
    with pytest.raises(UsageError, match="repeats"):
        profile(graph, repeats=0)


def test_importing_the_profiler_does_not_import_onnxruntime() -> None:
    """Perf models stay importable where only the scheduler runs; sessions load ORT lazily."""
    code = "import sys, perfmodels.profile; sys.exit('onnxruntime' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_methods_are_described() -> None:
    assert DEFAULT_METHOD in METHODS
    assert all(desc and "\n" not in desc for desc in METHODS.values())


# -- ORT trace -> node costs (synthetic traces: deterministic) -------------------------------


def _run(ts: int, dur: int) -> dict[str, object]:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _kernel(name: str, op: str, ts: int, dur: int) -> dict[str, object]:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op}}


def test_fused_kernels_go_to_the_node_of_their_op_type() -> None:
    """ORT names conv+bn+relu after the Relu's output (``r1_nchwc``); the Conv owns it."""
    graph = build_graph(conv_chain())
    events = [_run(0, 1000),
              _kernel("r1_nchwc", "Conv", 10, 300), _kernel("conv2", "FusedConv", 400, 100)]
    seconds = _attribute(graph, _kernel_runs(events, skip=0))
    assert seconds == pytest.approx({"conv1": 300e-6, "bn1": 0, "relu1": 0,
                                     "conv2": 100e-6, "bn2": 0, "relu2": 0})


def test_generated_kernels_are_spread_in_proportion() -> None:
    graph = build_graph(branchy())
    events = [_run(0, 1000), _kernel("mm_a", "MatMul", 0, 300), _kernel("mm_c", "MatMul", 300, 100),
              _kernel("ReorderOutput_token_3", "ReorderOutput", 400, 40)]
    seconds = _attribute(graph, _kernel_runs(events, skip=0))
    assert seconds["mm_a"] == pytest.approx(330e-6) and seconds["mm_c"] == pytest.approx(110e-6)
    assert seconds["join"] == 0


def test_longest_token_match_wins_and_digits_do_not_glue() -> None:
    graph = build_graph(branchy())
    events = [_run(0, 1000), _kernel("mm_b/MatMulAddFusion", "Gemm", 0, 50),
              _kernel("mm_bb", "MatMul", 60, 10)]  # "mm_b" glued to "b": not a match, so spread
    seconds = _attribute(graph, _kernel_runs(events, skip=0))
    assert seconds["mm_b"] == pytest.approx(60e-6)


def test_warm_up_runs_and_nested_body_kernels_are_not_counted() -> None:
    graph = build_graph(with_if())
    events = [
        _run(0, 100), _kernel("mm", "MatMul", 0, 90),  # warm-up
        _run(200, 100), _kernel("mm", "MatMul", 200, 10), _kernel("branch", "If", 220, 50),
        _kernel("then_mul", "Mul", 230, 20),  # inside the If: already in its 50
        _run(400, 100), _kernel("mm", "MatMul", 400, 30), _kernel("branch", "If", 440, 50),
        _run(600, 100), _kernel("mm", "MatMul", 600, 20), _kernel("branch", "If", 640, 50),
    ]
    seconds = _attribute(graph, _kernel_runs(events, skip=1))
    assert seconds == pytest.approx({"mm": 20e-6, "total": 0, "positive": 0, "branch": 50e-6})
