"""Acyclic repair turns a cyclic assignment into topologically numbered parts, keeping balance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from partitioner.acyclic import is_acyclic, repair
from partitioner.graph import build_graph
from partitioner.quality import find_cycle, measure, part_edges


def chain(n: int, op: str = "Relu") -> onnx.ModelProto:
    """x -> n0 -> n1 -> ... -> n{n-1}"""
    nodes = [helper.make_node(op, [f"t{i}" if i else "x"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    "assign", [[0, 1, 0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 1, 1, 0]]
)
def test_repair_breaks_cycles_of_an_alternating_chain(assign: list[int]) -> None:
    graph = build_graph(chain(8))
    cyclic = np.array(assign)
    assert find_cycle(2, part_edges(graph, cyclic)) is not None
    ranks, order, report = repair(graph, cyclic, [0.5, 0.5])
    assert not report.before.acyclic and report.after.acyclic
    assert is_acyclic(graph, ranks)
    assert sorted(order) == [0, 1]
    assert report.after.imbalance <= 0.01  # 8 equal nodes split 4/4
    assert report.after.cut_bytes < report.before.cut_bytes


def test_repair_keeps_uneven_targets_with_their_parts() -> None:
    graph = build_graph(chain(10))
    targets = [0.2, 0.8]
    ranks, order, report = repair(graph, np.array([1, 0] * 5), targets)
    ranked_targets = [targets[i] for i in order]
    shares = measure(graph, ranks, ranked_targets).shares
    assert shares == pytest.approx(ranked_targets)


def test_find_cycle_returns_the_path() -> None:
    assert find_cycle(3, {(0, 1), (1, 2), (2, 0)}) == [0, 1, 2, 0]
    assert find_cycle(3, {(0, 1), (1, 2), (0, 2)}) is None
