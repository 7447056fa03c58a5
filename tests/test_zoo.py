"""The model zoo: every model is valid ONNX, runs in ONNX Runtime at any batch with
finite outputs, builds deterministically, and each stress model really contains
the partitioning hazard it is named after.

Fixtures are module-scoped and parametrized by name, so pytest runs all tests of
one model together and holds at most one big model (VGG16: 550 MB) at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hetsched import zoo
from partitioner.errors import UsageError
from partitioner.feeds import random_feeds

STRESS = ("control-flow", "multi-io", "shared-weight", "constant-weights", "wrong-shapes")
BIG = ("vgg16", "resnet50", "nfnet-f0-like")  # not run again at the fixed batch

# ops that make each architecture what it is (and that a lazy rewrite would lose)
SIGNATURE_OPS = {
    "lenet5": {"Conv", "Tanh", "AveragePool", "Gemm"},
    "resnet18": {"Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "GlobalAveragePool"},
    "resnet50": {"Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "GlobalAveragePool"},
    "vgg16": {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"},
    "mobilenetv2": {"Conv", "BatchNormalization", "Clip", "Add", "GlobalAveragePool"},
    "googlenet": {"Conv", "BatchNormalization", "Relu", "MaxPool", "Concat"},
    "nfnet-f0-like": {"Conv", "Erf", "Mul", "AveragePool", "GlobalAveragePool", "Sigmoid"},
    "vit-tiny": {"LayerNormalization", "MatMul", "Softmax", "Erf", "Reshape", "Transpose",
                 "Expand"},
    "yolov8n": {"Conv", "Sigmoid", "Mul", "Split", "Concat", "MaxPool", "Resize", "Softmax"},
    "ocr-mobile": {"Conv", "HardSwish", "HardSigmoid", "Squeeze", "Transpose", "LSTM", "Reshape",
                   "MatMul", "Softmax"},
    "control-flow": {"If", "Loop", "MatMul", "Relu"},
    "multi-io": {"Gather", "Cast", "MatMul", "Sigmoid"},
    "shared-weight": {"MatMul", "Add", "Tanh"},
    "constant-weights": {"Constant", "Conv", "MatMul"},
    "wrong-shapes": {"Shape", "Gather", "Concat", "Reshape"},
}


@pytest.fixture(scope="module", params=zoo.NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model(name: str) -> onnx.ModelProto:
    return zoo.build(name)


@pytest.fixture(scope="module")
def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def make_session(model_bytes: bytes) -> ort.InferenceSession:
    """A CPU session; severity 3 silences wrong-shapes' expected output-size warning."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def session(model_bytes: bytes) -> ort.InferenceSession:
    return make_session(model_bytes)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its If/Loop bodies, depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)


def outer_names_read(body: onnx.GraphProto) -> set[str]:
    """Names a body reads that it neither receives as input nor computes itself."""
    local = {v.name for v in body.input} | {t.name for t in body.initializer}
    read: set[str] = set()
    for node in all_nodes(body):
        local.update(node.output)
        read.update(i for i in node.input if i)
    return read - local


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim]


# -- every model --------------------------------------------------------------------


def test_model_passes_the_full_checker(model_bytes: bytes) -> None:
    onnx.checker.check_model(model_bytes, full_check=True)  # bytes: no second serialization


def test_model_uses_opset_17_and_the_zoo_ir_version(model: onnx.ModelProto) -> None:
    assert {(o.domain, o.version) for o in model.opset_import} == {("", zoo.OPSET)}
    assert zoo.OPSET == 17
    assert model.ir_version == zoo.IR_VERSION


def test_model_runs_at_batch_1_and_2_with_finite_outputs(
    model: onnx.ModelProto, session: ort.InferenceSession
) -> None:
    for batch in (1, 2):
        outputs = session.run(None, random_feeds(model, batch))
        assert len(outputs) == len(model.graph.output)
        for out in outputs:
            assert out.shape[0] == batch
            assert np.isfinite(out).all()


def test_batch_axis_is_named_N_on_every_input_and_output(model: onnx.ModelProto) -> None:
    for value in [*model.graph.input, *model.graph.output]:
        assert dims(value)[0] == zoo.BATCH_DIM == "N"


def test_build_is_deterministic(name: str, model_bytes: bytes) -> None:
    again = zoo.build(name).SerializeToString()
    same = again == model_bytes  # not in the assert: pytest would diff 550 MB on failure
    assert same, f"{hashlib.sha256(again).hexdigest()} != {hashlib.sha256(model_bytes).hexdigest()}"


def test_fixed_batch_is_written_into_every_input_and_output(name: str) -> None:
    fixed = zoo.build(name, batch=3)
    for value in [*fixed.graph.input, *fixed.graph.output]:
        assert dims(value)[0] == 3
    if name not in BIG:
        outputs = make_session(fixed.SerializeToString()).run(None, random_feeds(fixed, 3))
        assert all(out.shape[0] == 3 for out in outputs)


def test_nodes_and_weights_have_unique_meaningful_names(model: onnx.ModelProto) -> None:
    names = [node.name for node in all_nodes(model.graph)]
    assert all(names) and len(names) == len(set(names))
    weights = [t.name for t in model.graph.initializer]
    assert all("." in w or w in ("cls_token", "pos_embed") for w in weights)


def test_model_has_its_signature_ops(name: str, model: onnx.ModelProto) -> None:
    ops = {node.op_type for node in all_nodes(model.graph)}
    assert SIGNATURE_OPS[name] <= ops
    assert set(SIGNATURE_OPS) == set(zoo.NAMES)


def test_describe_is_one_line(name: str) -> None:
    line = zoo.describe(name)
    assert line and "\n" not in line


# -- the public surface -------------------------------------------------------------


def test_names_are_the_documented_models_in_a_stable_order() -> None:
    assert zoo.NAMES[:10] == ("lenet5", "resnet18", "resnet50", "vgg16", "mobilenetv2",
                              "googlenet", "nfnet-f0-like", "vit-tiny", "yolov8n", "ocr-mobile")
    assert set(zoo.NAMES[10:]) == set(STRESS)


@pytest.mark.parametrize("call", [zoo.build, zoo.describe])
def test_unknown_name_raises_usage_error_listing_valid_names(call: object) -> None:
    with pytest.raises(UsageError) as info:
        call("resnet19")  # type: ignore[operator]
    assert "resnet19" in str(info.value)
    assert all(valid in str(info.value) for valid in zoo.NAMES)


@pytest.mark.parametrize("batch", [0, -2, True, 1.5])
def test_bad_batch_raises_usage_error(batch: object) -> None:
    with pytest.raises(UsageError, match="batch"):
        zoo.build("lenet5", batch=batch)  # type: ignore[arg-type]


# -- the stress models contain their hazard -----------------------------------------


@pytest.mark.parametrize("stress", STRESS)
def test_stress_model_is_big_enough_to_cut_in_8(stress: str) -> None:
    assert len(zoo.build(stress).graph.node) >= 12


def test_control_flow_bodies_read_computed_tensors_and_initializers_from_outside() -> None:
    graph = zoo.build("control-flow").graph
    computed = set(producers(graph))
    initializers = {t.name for t in graph.initializer}
    ops = {node.op_type: node for node in graph.node}
    assert {"If", "Loop"} <= set(ops)
    bodies = [a.g for node in (ops["If"], ops["Loop"]) for a in node.attribute
              if a.type == onnx.AttributeProto.GRAPH]
    assert len(bodies) == 3  # then, else, loop body
    for body in bodies:
        outer = outer_names_read(body)
        assert outer & computed, body.name
        assert outer & initializers, body.name
    # the If condition and the Loop trip count are computed from data, not constants
    assert ops["If"].input[0] in computed
    assert ops["Loop"].input[0] in computed


def test_control_flow_loop_trip_count_follows_the_batch_up_to_4() -> None:
    model = zoo.build("control-flow")
    graph = model.graph
    graph.output.append(onnx.helper.make_tensor_value_info("loop.trip", onnx.TensorProto.INT64,
                                                           None))
    session = make_session(model.SerializeToString())
    trips = {b: int(session.run(["loop.trip"], random_feeds(model, b))[0]) for b in (1, 2, 5)}
    assert trips == {1: 2, 2: 3, 5: 4}


def test_multi_io_has_float_and_int_inputs_and_an_output_consumed_inside() -> None:
    graph = zoo.build("multi-io").graph
    types = {v.type.tensor_type.elem_type for v in graph.input}
    assert {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64} <= types
    assert len(graph.output) == 3
    consumed = {i for node in graph.node for i in node.input}
    assert any(out.name in consumed for out in graph.output)


def ancestors(graph: onnx.GraphProto, node: onnx.NodeProto) -> set[str]:
    """Names of the nodes ``node`` depends on (transitively)."""
    made_by = producers(graph)
    seen: set[str] = set()
    todo = [made_by[i] for i in node.input if i in made_by]
    while todo:
        current = todo.pop()
        if current.name not in seen:
            seen.add(current.name)
            todo.extend(made_by[i] for i in current.input if i in made_by)
    return seen


def test_shared_weight_reuses_initializers_far_apart_and_across_branches() -> None:
    graph = zoo.build("shared-weight").graph
    index = {node.name: i for i, node in enumerate(graph.node)}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in set(node.input):
            users.setdefault(i, []).append(node)
    shared = {t.name: users[t.name] for t in graph.initializer if len(users.get(t.name, [])) >= 2}
    first, last = shared["shared.weight"]
    assert index[last.name] - index[first.name] >= 10
    a, b = shared["branch.bias"]
    assert a.name not in ancestors(graph, b) and b.name not in ancestors(graph, a)


def test_constant_weights_live_in_constant_nodes_only() -> None:
    graph = zoo.build("constant-weights").graph
    assert not graph.initializer
    made_by = producers(graph)
    weighted = [n for n in graph.node if n.op_type in ("Conv", "MatMul")]
    assert len(weighted) >= 4
    for node in weighted:
        assert made_by[node.input[1]].op_type == "Constant"


def test_wrong_shapes_declares_a_wrong_output_and_hides_reshape_targets() -> None:
    model = zoo.build("wrong-shapes")
    declared = dims(model.graph.output[0])
    (real,) = make_session(model.SerializeToString()).run(None, random_feeds(model, 2))
    assert declared[1] != real.shape[1]
    made_by = producers(model.graph)
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert all(made_by[n.input[1]].op_type == "Concat" for n in reshapes)
    # static inference learns the rank of each Reshape output, but none of its sizes
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: dims(v) for v in inferred.graph.value_info}
    for node in reshapes[:2]:
        assert not any(isinstance(d, int) for d in shapes.get(node.output[0], [])), node.name
