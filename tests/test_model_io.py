"""Reading models: bad files give one clear error; normalization keeps what the model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hetsched.sequential import run_whole
from partitioner.errors import ModelFileError
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.model_io import normalize, read_model, subgraph_outer_names

from test_acyclic import chain


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        read_model(tmp_path / "nope.onnx")


@pytest.mark.parametrize("content", [b"this is not a model at all \x00\x01", b""])
def test_non_onnx_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="re-export"):
        read_model(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    data = chain(6).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelFileError):
        read_model(path)


def test_normalize_names_nodes_uniquely_and_lifts_constants() -> None:
    weight = numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=weight),
        helper.make_node("MatMul", ["x", "c"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"], name="dup"),
        helper.make_node("Relu", ["z"], ["out"], name="dup"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fixed = normalize(model)
    names = [n.name for n in fixed.graph.node]
    assert len(set(names)) == len(names) == 3 and all(names)
    assert [t.name for t in fixed.graph.initializer] == ["c"]
    x = random_feeds(model, 2)["x"]
    np.testing.assert_allclose(run_whole(fixed, {"x": x})["out"], np.maximum(x @ np.full((4, 4), 0.5), 0),
                               rtol=1e-6)


def test_outer_scope_names_of_if_bodies_are_node_inputs() -> None:
    then_g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["r"])], "then", [],
                               [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["r2"])], "else", [],
                               [helper.make_tensor_value_info("r2", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then_g, else_branch=else_g)
    assert subgraph_outer_names(node) == {"a", "b"}


def test_unknown_sizes_are_measured_by_a_real_run() -> None:
    """Reshape to a target computed at run time: inference cannot tell, one ORT run does."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("ReduceProd", ["s"], ["p"], name="prod", keepdims=1),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("NonZero", ["r"], ["nz"], name="nonzero"),
        helper.make_node("Reshape", ["r", "p"], ["flat"], name="flatten"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["M"]),
                               helper.make_tensor_value_info("nz", TensorProto.INT64, [2, "K"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    g = build_graph(model, batch=4)
    assert g.sizes["flat"].nbytes == 4 * 3 * 4
    assert g.sizes["nz"].source == "measured"
    assert onnx.TensorProto.INT64 == g.sizes["nz"].elem_type
