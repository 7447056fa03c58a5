"""Loading an ONNX model for partitioning: clear errors for bad files, then normalization.

Normalization makes a model safe to cut without changing what it computes:

- every top-level node gets a unique, non-empty name (plans refer to nodes by name);
- weights held in top-level ``Constant`` nodes (as PaddleOCR exports do) become
  initializers, so they are copied into each part that reads them instead of
  being cut as if they were activations.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from partitioner.errors import ModelFileError

_FIX = "re-export the model, or check that the file was copied whole"


def read_model(
    source: str | os.PathLike[str] | bytes | onnx.ModelProto,
) -> tuple[onnx.ModelProto, str]:
    """Read and check a model from a path, serialized bytes or a proto.

    Returns the model and the sha256 of its serialized form (the file's bytes for a
    path), which plans and cost files use to recognise their model.  Raises
    ModelFileError naming the problem and the fix.
    """
    if isinstance(source, (onnx.ModelProto, bytes)):
        data = source if isinstance(source, bytes) else source.SerializeToString()
        model = source if isinstance(source, onnx.ModelProto) else _parse(data, "model bytes")
        _check(model, data, "model")
        return model, hashlib.sha256(data).hexdigest()
    path = Path(source)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; check the path")
    data = path.read_bytes()
    model = _parse(data, str(path))
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # missing or short external data files
        raise ModelFileError(f"{path}: its external weight data cannot be read ({exc}); {_FIX}") from exc
    _check(model, str(path), str(path))
    return model, hashlib.sha256(data).hexdigest()


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise ModelFileError(f"{label}: not an ONNX model ({exc}); {_FIX}") from exc
    return model


def _check(model: onnx.ModelProto, serialized: bytes | str, label: str) -> None:
    """onnx.checker on the serialized bytes (or the path, for models too big for one protobuf)."""
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelFileError(f"{label}: not an ONNX model (no graph, or a graph without nodes); {_FIX}")
    if isinstance(serialized, bytes) and len(serialized) >= 2**31 - 1:
        return  # the checker refuses protos over 2 GiB; ONNX Runtime will still validate at load
    try:
        onnx.checker.check_model(serialized)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{label}: invalid ONNX model ({first}); {_FIX}") from exc


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with unique node names and top-level Constant weights turned into initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _name_nodes(out.graph)
    _constants_to_initializers(out.graph)
    return out


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}__{index}"
        seen.add(name)
        node.name = name


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    outputs = {v.name for v in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        value = _constant_value(node) if node.output[0] not in outputs else None
        if value is None:
            keep.append(node)
        else:
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a top-level Constant node yields, or None if it is not a plain constant."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    return None  # strings and sparse values stay Constant nodes


def subgraph_outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies, at any depth) read from the enclosing scope."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            names |= _free_names(sub)
    return names


def _free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer}
    free: set[str] = set()
    for node in graph.node:
        used = set(node.input) | subgraph_outer_names(node)
        free |= {n for n in used if n and n not in defined}
        defined |= set(node.output)
    free |= {v.name for v in graph.output if v.name not in defined}
    return free

