"""Tiny models that each put one hard case of graph partitioning in front of the partitioner.

The big classifiers are mostly chains; the cases that break a naive extractor
are rarer: names read from the outer scope inside If/Loop bodies, graph outputs
also consumed inside, initializers shared by far-apart nodes, weights held in
Constant nodes, and declared shapes that lie.  Each model here isolates such a
case in a graph of 14+ nodes on [N, 16]-sized tensors, so it builds in
milliseconds and can still be cut into 8 parts.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from hetsched.zoo.builder import BOOL, FLOAT, INT64, GraphBuilder, dense, relu

FEATURES = 16
CLASSES = 10
MAX_TRIPS = 4


def dense_relu(b: GraphBuilder, x: str, name: str, fin: int = FEATURES,
               fout: int = FEATURES) -> str:
    """MatMul + Add + Relu, the unit of work between the interesting nodes."""
    return relu(b, dense(b, x, name, fin, fout), f"{name}.relu")


def logits_head(b: GraphBuilder, x: str, fin: int = FEATURES) -> None:
    """Final MatMul + Add into the graph output ``logits`` [N, 10]."""
    dense(b, x, "head", fin, CLASSES, output="logits")
    b.output("logits", b.batched([CLASSES]))


# -- control-flow -------------------------------------------------------------------


def then_branch(b: GraphBuilder, h: str) -> GraphBuilder:
    """Reads the outer computed ``h`` and the outer initializer ``branch.then.weight``."""
    body = b.subgraph()
    w = b.weight("branch.then.weight", (FEATURES, FEATURES), 1 / math.sqrt(FEATURES))
    y = body.add("MatMul", [h, w], "branch.then.matmul")
    y = body.add("Relu", [y], "branch.then.relu")
    body.output(y, None)
    return body


def else_branch(b: GraphBuilder, h: str, x: str) -> GraphBuilder:
    """Reads outer ``h``, the graph input ``x`` and the outer initializer ``branch.else.shift``."""
    body = b.subgraph()
    shift = b.weight("branch.else.shift", (FEATURES,), 0.1)
    y = body.add("Sub", [h, shift], "branch.else.sub")
    y = body.add("Add", [y, x], "branch.else.add_input")
    y = body.add("Tanh", [y], "branch.else.tanh")
    body.output(y, None)
    return body


def loop_body(b: GraphBuilder, outer: str) -> GraphBuilder:
    """state <- relu(state @ W + outer): reads the outer computed ``outer`` and initializer W."""
    body = b.subgraph()
    body.input("loop.body.iter", [], INT64)
    cond_in = body.input("loop.body.cond_in", [], BOOL)
    state = body.input("loop.body.state_in", None)
    w = b.weight("loop.body.weight", (FEATURES, FEATURES), 0.5 / math.sqrt(FEATURES))
    y = body.add("MatMul", [state, w], "loop.body.matmul")
    y = body.add("Add", [y, outer], "loop.body.add_outer")
    y = body.add("Relu", [y], "loop.body.relu")
    cond = body.add("Identity", [cond_in], "loop.body.cond_out")
    body.output(cond, [], BOOL)
    body.output(y, None)
    return body


def trip_count(b: GraphBuilder, x: str) -> str:
    """min(batch + 1, 4): a data-dependent trip count (from the input's shape), at most 4."""
    shape = b.add("Shape", [x], "loop.trip.shape")
    batch = b.add("Gather", [shape, b.scalar("loop.trip.batch_axis", 0, np.int64)],
                  "loop.trip.batch")
    trips = b.add("Add", [batch, b.scalar("loop.trip.one", 1, np.int64)], "loop.trip.plus_one")
    return b.add("Min", [trips, b.scalar("loop.trip.max", MAX_TRIPS, np.int64)], "loop.trip")


def control_flow(b: GraphBuilder) -> None:
    """MLP -> If (cond = sum(x) > 0) -> MLP -> Loop (trip = min(N + 1, 4)) -> MLP."""
    x = b.input("x", b.batched([FEATURES]))
    h = dense_relu(b, dense_relu(b, x, "pre.0"), "pre.1")
    total = b.add("ReduceSum", [x], "cond.sum", keepdims=0)
    cond = b.add("Greater", [total, b.scalar("cond.zero", 0.0)], "cond.greater")
    branch = b.add("If", [cond], "branch.if", then_branch=then_branch(b, h).graph("then"),
                   else_branch=else_branch(b, h, x).graph("else"))
    mid = dense_relu(b, branch, "mid.0")
    body = loop_body(b, mid).graph("loop_body")
    state = b.add("Loop", [trip_count(b, x), "", mid], "loop", body=body)
    logits_head(b, dense_relu(b, state, "post.0"))


# -- multi-io -----------------------------------------------------------------------

VOCAB = 8  # random_feeds draws int inputs in [0, 3): every id is a valid row
TOKENS = 4


def multi_io(b: GraphBuilder) -> None:
    """Float features + int64 token ids in; outputs embedding (also used inside), logits, score."""
    x = b.input("features", b.batched([FEATURES]))
    ids = b.input("token_ids", b.batched([TOKENS]), INT64)
    table = b.weight("embedding.weight", (VOCAB, FEATURES), 1.0)
    emb = b.add("Gather", [table, ids], "embedding.gather", axis=0)
    pooled = b.add("ReduceMean", [emb], "embedding.mean", axes=[1], keepdims=0)
    ids_float = b.add("Cast", [ids], "ids.cast", to=FLOAT)
    ids_proj = dense(b, ids_float, "ids.proj", TOKENS, FEATURES)
    h = dense(b, x, "encoder", FEATURES, FEATURES)
    h = b.add("Add", [h, pooled], "encoder.mix_embedding")
    h = b.add("Add", [h, ids_proj], "encoder.mix_ids")
    embedding = b.add("Relu", [h], "encoder.relu", outputs=["embedding"])
    b.output(embedding, b.batched([FEATURES]))
    logits_head(b, dense_relu(b, embedding, "classifier.0"))
    score = dense(b, embedding, "score", FEATURES, 1)
    b.add("Sigmoid", [score], "score.sigmoid", outputs=["score"])
    b.output("score", b.batched([1]))


# -- shared-weight ------------------------------------------------------------------


def shared_weight(b: GraphBuilder) -> None:
    """``shared.weight`` feeds the first and the last MatMul of a 16-node chain;
    ``branch.bias`` feeds an Add on each of two parallel branches."""
    x = b.input("x", b.batched([FEATURES]))
    w = b.weight("shared.weight", (FEATURES, FEATURES), 1 / math.sqrt(FEATURES))
    h = b.add("MatMul", [x, w], "start.matmul")
    h = b.add("Add", [h, b.weight("start.bias", (FEATURES,), 0.01)], "start.add")
    h = relu(b, h, "start.relu")
    h = dense_relu(b, dense_relu(b, h, "chain.1"), "chain.2")
    bias = b.weight("branch.bias", (FEATURES,), 0.1)
    wa = b.weight("branch.a.weight", (FEATURES, FEATURES), 1 / math.sqrt(FEATURES))
    a = b.add("Add", [b.add("MatMul", [h, wa], "branch.a.matmul"), bias], "branch.a.add")
    c = b.add("Mul", [h, b.scalar("branch.b.scale", 0.5)], "branch.b.mul")
    c = b.add("Tanh", [b.add("Add", [c, bias], "branch.b.add")], "branch.b.tanh")
    h = relu(b, b.add("Add", [a, c], "join.add"), "join.relu")
    h = b.add("MatMul", [h, w], "end.matmul")
    h = b.add("Add", [h, b.weight("end.bias", (FEATURES,), 0.01)], "end.add")
    logits_head(b, h)


# -- constant-weights ---------------------------------------------------------------


def constant(b: GraphBuilder, name: str, shape: tuple[int, ...], std: float) -> str:
    """A Constant node holding random weights (PaddleOCR-style exports), output named ``name``."""
    values = (b.rng.standard_normal(shape, dtype=np.float32) * np.float32(std))
    return b.add("Constant", [], name, value=numpy_helper.from_array(values, name))


def constant_conv(b: GraphBuilder, x: str, name: str, cin: int, cout: int,
                  stride: int) -> str:
    """3x3 Conv + Relu whose weight and bias come from Constant nodes."""
    w = constant(b, f"{name}.weight", (cout, cin, 3, 3), math.sqrt(2 / (cin * 9)))
    bias = constant(b, f"{name}.bias", (cout,), 0.01)
    y = b.add("Conv", [x, w, bias], name, kernel_shape=[3, 3], strides=[stride, stride],
              pads=[1, 1, 1, 1])
    return relu(b, y, f"{name}.relu")


def constant_weights(b: GraphBuilder) -> None:
    """Three convs and a MatMul classifier, every weight in a Constant node, no initializers."""
    x = b.input("image", b.batched([3, FEATURES, FEATURES]))
    x = constant_conv(b, x, "conv1", 3, 8, 1)
    x = constant_conv(b, x, "conv2", 8, 16, 2)
    x = constant_conv(b, x, "conv3", 16, 16, 2)
    x = b.add("GlobalAveragePool", [x], "pool")
    x = b.add("Flatten", [x], "flatten", axis=1)
    w = constant(b, "fc.weight", (16, CLASSES), 1 / math.sqrt(16))
    x = b.add("MatMul", [x, w], "fc.matmul")
    b.add("Add", [x, constant(b, "fc.bias", (CLASSES,), 0.01)], "fc.add", outputs=["logits"])
    b.output("logits", b.batched([CLASSES]))


# -- wrong-shapes -------------------------------------------------------------------

TRUE_OUT = 5
DECLARED_OUT = 3  # the lie: the graph output is declared [N, 3] but computed [N, 5]


def runtime_shape(b: GraphBuilder, batch: str, name: str, tail: list[int]) -> str:
    """Concat([batch], tail): a Reshape target only known when the graph runs."""
    return b.add("Concat", [batch, b.ints(f"{name}.tail", tail)], name, axis=0)


def wrong_shapes(b: GraphBuilder) -> None:
    """Reshapes to runtime-computed targets (Shape -> Gather -> Concat) and a declared
    output of [N, 3] where the model really returns [N, 5]."""
    x = b.input("x", b.batched([FEATURES]))
    h = dense_relu(b, x, "encoder", FEATURES, 24)
    shape = b.add("Shape", [h], "encoder.shape")
    batch = b.add("Gather", [shape, b.ints("encoder.batch_axis", [0])], "encoder.batch", axis=0)
    width = b.add("Gather", [shape, b.ints("encoder.feature_axis", [1])], "encoder.width", axis=0)
    # Div is beyond ONNX's shape-data propagation: even data_prop=True cannot see 4
    groups = b.add("Div", [width, b.ints("split.group_size", [6])], "split.groups")
    target = b.add("Concat", [batch, groups, b.ints("split.tail", [6])], "split.target", axis=0)
    y = b.add("Reshape", [h, target], "split.reshape")
    y = b.add("Transpose", [y], "split.transpose", perm=[0, 2, 1])
    y = b.add("MatMul", [y, b.weight("mix.weight", (4, 8), 0.5)], "mix.matmul")
    y = relu(b, y, "mix.relu")
    y = b.add("Reshape", [y, runtime_shape(b, batch, "merge.target", [-1])], "merge.reshape")
    y = dense(b, y, "head", 48, TRUE_OUT)
    b.add("Reshape", [y, runtime_shape(b, batch, "out.target", [-1])], "out.reshape",
          outputs=["y"])
    b.output("y", b.batched([DECLARED_OUT]))
