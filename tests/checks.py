"""Shared assertions: a partition computes exactly what the whole model computes, and no node twice."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from hetsched.sequential import SequentialRunner, run_whole
from partitioner.feeds import random_feeds
from partitioner.partition import PartitionResult


def assert_same_as_whole(model: onnx.ModelProto, result: PartitionResult, batch: int = 2,
                         rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Run the parts in plan order and the whole model on the same random inputs; compare all outputs."""
    feeds = random_feeds(model, batch)
    expected = run_whole(model, feeds)
    got = SequentialRunner(result.plan, [p.model for p in result.parts]).run(feeds)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)


def assert_each_node_once(result: PartitionResult, node_names: list[str]) -> None:
    """Every node of the model runs in exactly one part model, and part models hold nothing else."""
    seen: list[str] = []
    for part in result.parts:
        seen += [n.name for n in part.model.graph.node]
    assert sorted(seen) == sorted(node_names)


def reshape_by_three() -> onnx.ModelProto:
    """x [N, 4] -> Relu -> Reshape to [-1, 3] -> Neg: fails unless 4N is a multiple of 3."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["s"], name="reshape"),
             helper.make_node("Neg", ["s"], ["y"], name="neg")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 3])
    graph = helper.make_graph(nodes, "fragile", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
