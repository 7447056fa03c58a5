"""Part models on disk: external data for big weights, and models too small for the asked k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import partitioner.partition as partition_module
from hetsched import zoo
from hetsched.sequential import SequentialRunner, run_whole
from partitioner.errors import RatiosError
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.partition import partition
from partitioner.plan import PartitionPlan


def test_large_weights_are_saved_as_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition_module, "EXTERNAL_DATA_BYTES", 0)
    model = zoo.build("shared-weight")
    result = partition(build_graph(model), [0.5, 0.5])
    result.save(tmp_path)
    for part in result.plan.parts:
        assert (tmp_path / f"{part.file}.data").stat().st_size > 0
    plan = PartitionPlan.load(tmp_path)
    feeds = random_feeds(model, 3)
    got = SequentialRunner(plan, tmp_path).run(feeds)
    for name, value in run_whole(model, feeds).items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def work_inside_one_if() -> onnx.ModelProto:
    """Three top-level nodes; all the work is in the If's branches (reading x from outside)."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    body = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"])]
    then_out = helper.make_tensor_value_info("r", TensorProto.FLOAT, None)
    then_g = helper.make_graph(body, "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "else", [],
                               [helper.make_tensor_value_info("n", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(nodes, "one_if", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[w, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_too_few_top_level_nodes_for_k_is_a_clear_error() -> None:
    graph = build_graph(work_inside_one_if())
    with pytest.raises(RatiosError, match="only 3 top-level nodes; ask for at most 3"):
        partition(graph, [0.25] * 4)


def test_work_inside_one_if_still_partitions_at_the_top_level() -> None:
    model = work_inside_one_if()
    result = partition(build_graph(model), [0.5, 0.5])
    branch_part = next(p for p in result.parts if "branch" in p.nodes)
    assert "x" in branch_part.inputs  # read only from inside the If's body
    assert "w" in {t.name for t in branch_part.model.graph.initializer}
    feeds = random_feeds(model, 2)
    got = SequentialRunner(result.plan, [p.model for p in result.parts]).run(feeds)
    np.testing.assert_allclose(got["y"], run_whole(model, feeds)["y"], rtol=1e-6)
