"""Sizes of every tensor at a concrete batch: shape inference first, a measured run where it cannot tell.

Real models defeat static inference (shapes computed at run time, data-dependent
Loop trip counts, wrong declared output shapes), so inference only runs on a
copy whose inputs are concrete and whose declared intermediate/output shapes are
dropped; whatever stays unknown is measured by one ONNX Runtime run that
exposes those tensors as outputs.  If even that run fails, a size is guessed and
the source says so: edge weights degrade, the partition still comes out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from partitioner.feeds import random_feeds, resolve_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSize:
    """What we know of one tensor at the chosen batch; ``source`` is inferred|measured|guessed."""

    elem_type: int  # onnx.TensorProto data type, 0 when unknown
    shape: tuple[int, ...] | None
    nbytes: int
    source: str


def _itemsize(elem_type: int) -> int:
    if elem_type == 0:
        return 4
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    return 8 if dtype == np.dtype(object) else int(dtype.itemsize)


def infer_sizes(
    model: onnx.ModelProto, batch: int, dims: Mapping[str, int] | None, wanted: Iterable[str]
) -> dict[str, TensorSize]:
    """Sizes of the ``wanted`` tensors (graph inputs and node outputs) at ``batch``."""
    wanted = list(dict.fromkeys(wanted))
    known = _inferred(model, batch, dims)
    sizes = {name: known[name] for name in wanted if name in known}
    missing = [name for name in wanted if name not in sizes]
    if missing:
        sizes.update(_measured(model, batch, dims, missing))
    return sizes


def _concrete_copy(model: onnx.ModelProto, batch: int, dims: Mapping[str, int] | None) -> onnx.ModelProto:
    """A weight-free copy with concrete input shapes and no declared intermediate/output shapes."""
    copy = _weightless_copy(model)
    graph = copy.graph
    initializers = {t.name for t in model.graph.initializer}
    for value in graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        shape = resolve_shape(value, batch, dims)
        value.type.tensor_type.shape.ClearField("dim")
        for size in shape:
            value.type.tensor_type.shape.dim.add().dim_value = size
    del graph.value_info[:]
    for value in graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    return copy


Dim = int | str | None  # a size, a symbolic name, or unknown

# Initializers with more elements than this are replaced by typed inputs for shape inference:
# inference needs their shapes only, and copying 500 MB of weights costs seconds.
_WEIGHT_ELEMENTS = 1024


def _weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with big top-level initializers turned into declared inputs of the same type and shape."""
    copy = onnx.ModelProto()
    for field_name in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(copy, field_name, getattr(model, field_name))
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph, source = copy.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    declared = {v.name for v in source.input}
    for tensor in source.initializer:
        if int(np.prod(tensor.dims, dtype=np.int64)) <= _WEIGHT_ELEMENTS:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            declared_input = helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            graph.input.append(declared_input)
    return copy


def symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Shapes with the model's own symbolic dims (e.g. ("N", 64, 56, 56)), where inference knows the rank."""
    copy = _weightless_copy(model)
    del copy.graph.value_info[:]
    for value in copy.graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # best effort: callers fall back to the rank of the measured shape
        return {}
    out: dict[str, tuple[Dim, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.HasField("shape"):
            out[value.name] = tuple(_dim(d) for d in tensor.shape.dim)
    return out


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or None


def _inferred(model: onnx.ModelProto, batch: int, dims: Mapping[str, int] | None) -> dict[str, TensorSize]:
    copy = _concrete_copy(model, batch, dims)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception as exc:  # inference is best effort; measurement covers the rest
        log.info("shape inference failed (%s); sizes will be measured", exc)
        return {}
    out: dict[str, TensorSize] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        size = _size_of(value)
        if size is not None:
            out[value.name] = size
    return out


def _size_of(value: onnx.ValueInfoProto) -> TensorSize | None:
    if not value.type.HasField("tensor_type"):
        return None
    tensor = value.type.tensor_type
    if tensor.elem_type == 0 or not tensor.HasField("shape"):
        return None
    shape: list[int] = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        shape.append(dim.dim_value)
    nbytes = int(np.prod(shape, dtype=np.int64)) * _itemsize(tensor.elem_type)
    return TensorSize(tensor.elem_type, tuple(shape), nbytes, "inferred")


def _measured(
    model: onnx.ModelProto, batch: int, dims: Mapping[str, int] | None, names: list[str]
) -> dict[str, TensorSize]:
    import onnxruntime as ort  # lazily: only models that defeat inference pay for a session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {v.name for v in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in declared)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        values = session.run(names, random_feeds(model, batch, dims))
    except Exception as exc:
        log.warning("could not measure %d tensor sizes (%s); guessing them", len(names), exc)
        return {name: TensorSize(0, None, 4 * batch, "guessed") for name in names}
    out: dict[str, TensorSize] = {}
    for name, value in zip(names, values):
        array = np.asarray(value)
        elem_type = helper.np_dtype_to_tensor_dtype(array.dtype) if array.dtype != object else 8
        out[name] = TensorSize(int(elem_type), tuple(array.shape), int(array.nbytes), "measured")
    return out
