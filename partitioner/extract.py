"""One standalone ONNX model per part, computing exactly its nodes and nothing else.

We build each part directly from the node list instead of using
``onnx.utils.Extractor``, which walks back from the requested outputs and
silently pulls in (and so duplicates) upstream nodes whenever a crossing tensor
is not listed among the part's inputs.  Here a part's inputs are, by
construction, every dynamic tensor its nodes (or their If/Loop bodies) read and
do not produce themselves; nothing else can enter.

A part keeps the source model's IR version, opset and domain imports, model-local
functions and metadata; it holds only the initializers its nodes read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from partitioner.graph import OpGraph
from partitioner.model_io import subgraph_outer_names
from partitioner.shapes import Dim, symbolic_shapes


@dataclass(frozen=True)
class PartModel:
    """A part's model and its interface; ``nodes`` are node names in execution order."""

    index: int
    model: onnx.ModelProto
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[str, ...]


def part_interfaces(
    graph: OpGraph, assign: np.ndarray
) -> list[tuple[list[int], list[str], list[str]]]:
    """Per part: node indices, input tensors (model inputs first), output tensors (model outputs first)."""
    k = int(assign.max()) + 1 if len(assign) else 0
    model_outputs = graph.outputs
    result = []
    for part in range(k):
        members = [i for i in range(len(graph)) if assign[i] == part]
        produced = {t for i in members for t in graph.nodes[i].outputs}
        read = [t for i in members for t in graph.nodes[i].inputs if t not in produced]
        read = list(dict.fromkeys(read))
        inputs = [t for t in graph.inputs if t in read] + [t for t in read if t not in graph.inputs]
        needed_elsewhere = {
            t for t in produced for u in graph.consumers.get(t, []) if assign[u] != part
        }
        outputs = [t for t in model_outputs if t in produced]
        outputs += sorted(needed_elsewhere - set(outputs), key=lambda t: (graph.producer[t], t))
        result.append((members, inputs, outputs))
    return result


def extract_parts(graph: OpGraph, assign: np.ndarray) -> list[PartModel]:
    """Build every part's model; parts are numbered as in ``assign``."""
    parts = []
    shapes = symbolic_shapes(graph.model)
    for index, (members, inputs, outputs) in enumerate(part_interfaces(graph, assign)):
        model = build_submodel(graph, members, inputs, outputs, f"part_{index}", shapes)
        names = tuple(graph.nodes[i].name for i in members)
        parts.append(PartModel(index, model, tuple(inputs), tuple(outputs), names))
    return parts


def build_submodel(
    graph: OpGraph,
    members: Sequence[int],
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str,
    shapes: dict[str, tuple[Dim, ...]] | None = None,
) -> onnx.ModelProto:
    """A valid model running exactly ``members`` (node indices) from ``inputs`` to ``outputs``.

    ``shapes`` (from :func:`partitioner.shapes.symbolic_shapes`) declares cut tensors with
    the model's symbolic dims; without it, only their rank is declared.
    """
    shapes = shapes or {}
    source = graph.model
    protos = [source.graph.node[i] for i in sorted(members)]
    weights = _initializers_read(source.graph, protos)
    model = onnx.ModelProto()  # filled in place: copying 500 MB of weights twice costs seconds
    body = model.graph
    body.name = name
    body.node.extend(protos)
    body.initializer.extend(weights)
    body.input.extend(_value_info(graph, t, graph.model.graph.input, shapes) for t in inputs)
    body.output.extend(_value_info(graph, t, graph.model.graph.output, shapes) for t in outputs)
    if source.ir_version < 4:  # before IR 4, every initializer must also be a graph input
        body.input.extend(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)) for w in weights)
    model.opset_import.extend(source.opset_import)
    model.ir_version = source.ir_version
    model.functions.extend(source.functions)
    model.producer_name = "hetsched"
    model.domain = source.domain
    model.model_version = source.model_version
    helper.set_model_props(model, {**{p.key: p.value for p in source.metadata_props}, "hetsched.part": name})
    return model


def _initializers_read(graph: onnx.GraphProto, protos: Sequence[onnx.NodeProto]) -> list[onnx.TensorProto]:
    read: set[str] = set()
    for node in protos:
        read.update(node.input)
        read.update(subgraph_outer_names(node))
    return [t for t in graph.initializer if t.name in read]


def _value_info(
    graph: OpGraph,
    tensor: str,
    declared: Sequence[onnx.ValueInfoProto],
    shapes: dict[str, tuple[Dim, ...]],
) -> onnx.ValueInfoProto:
    """Model inputs (outputs) keep their declaration as part inputs (outputs); cut tensors are
    declared with their symbolic shape, or their rank with every dim left open.

    Concrete sizes are never declared for cut tensors: they vary with the batch, and
    ONNX Runtime rejects inputs that contradict a declared shape.
    """
    for value in declared:
        if value.name == tensor:
            return value
    size = graph.sizes.get(tensor)
    elem_type = (size.elem_type if size else 0) or onnx.TensorProto.FLOAT
    dims: list[Dim] | None = None
    if tensor in shapes:
        dims = list(shapes[tensor])
    elif size is not None and size.shape is not None:
        dims = [None] * len(size.shape)
    if dims is None:  # rank unknown: leave the shape out (ONNX Runtime accepts it, the checker does not)
        value = onnx.ValueInfoProto(name=tensor)
        value.type.tensor_type.elem_type = elem_type
        return value
    return helper.make_tensor_value_info(tensor, elem_type, dims)
