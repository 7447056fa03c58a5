"""Random DAG-shaped ONNX models for property tests: branches, joins, shared weights, inner outputs.

Every tensor is [N, D] float32, so any op can read any earlier tensor; a
Hypothesis ``draw`` picks the structure, numpy a fixed-seed set of weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

D = 8
UNARY = ("Relu", "Sigmoid", "Tanh", "Neg")
BINARY = ("Add", "Mul", "Sub")


@st.composite
def random_dag_models(draw: st.DrawFn, max_nodes: int = 24) -> onnx.ModelProto:
    """A valid model with 2..max_nodes nodes, 1-2 inputs, every sink (and maybe an inner tensor) an output."""
    n_inputs = draw(st.integers(1, 2))
    n_nodes = draw(st.integers(2, max_nodes))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    tensors = [f"in{i}" for i in range(n_inputs)]
    weights = [numpy_helper.from_array((rng.standard_normal((D, D)) * 0.3).astype(np.float32), "w0")]
    nodes, read = [], set()
    for i in range(n_nodes):
        kind = draw(st.sampled_from(("unary", "binary", "matmul", "concat")))
        a = draw(st.sampled_from(tensors[-6:]))  # mostly recent tensors: long paths and joins
        b = draw(st.sampled_from(tensors))
        out = f"t{i}"
        if kind == "unary":
            nodes.append(helper.make_node(draw(st.sampled_from(UNARY)), [a], [out], name=f"n{i}"))
        elif kind == "binary":
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [a, b], [out], name=f"n{i}"))
            read.add(b)
        elif kind == "matmul":
            if draw(st.booleans()):  # a new weight, or reuse one (shared by distant nodes)
                weights.append(numpy_helper.from_array(
                    (rng.standard_normal((D, D)) * 0.3).astype(np.float32), f"w{len(weights)}"))
            w = draw(st.sampled_from([t.name for t in weights]))
            nodes.append(helper.make_node("MatMul", [a, w], [out], name=f"n{i}"))
        else:
            nodes.append(helper.make_node("Concat", [a, b], [f"c{i}"], name=f"n{i}_cat", axis=1))
            slice_args = [f"c{i}", "s_start", "s_end", "s_axis"]  # back to width D
            nodes.append(helper.make_node("Slice", slice_args, [out], name=f"n{i}_slice"))
            read.add(b)
        read.add(a)
        tensors.append(out)
    consts = [numpy_helper.from_array(np.array([v], dtype=np.int64), name)
              for name, v in (("s_start", D // 2), ("s_end", D // 2 + D), ("s_axis", 1))]
    sinks = [t for t in tensors[n_inputs:] if t not in read]
    extra = draw(st.sampled_from([t for t in tensors[n_inputs:] if t in read] or [None]))
    outputs = sinks + ([extra] if extra and draw(st.booleans()) else [])
    used_inputs = [t for t in tensors[:n_inputs] if t in read] or tensors[:1]
    graph = helper.make_graph(
        nodes, "random_dag",
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", D]) for t in used_inputs],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", D]) for t in outputs],
        initializer=weights + consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
