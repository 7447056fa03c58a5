"""Random input feeds for any ONNX model: what profiling, size measurement and checks run on.

Symbolic dimensions are resolved from ``dims`` (a name -> size map); the first
dimension of an input, when symbolic or unknown, is the batch.  Integer inputs
are drawn from ``[0, 3)`` and booleans uniformly, so index-like inputs stay in
range for the models we build; floats are standard normal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper

from partitioner.errors import UsageError


def resolve_shape(
    value: onnx.ValueInfoProto, batch: int, dims: Mapping[str, int] | None = None
) -> tuple[int, ...]:
    """Concrete shape of a graph input: batch for the first symbolic dim, ``dims`` for others."""
    dims = dims or {}
    shape = value.type.tensor_type.shape
    out: list[int] = []
    for axis, dim in enumerate(shape.dim):
        if dim.HasField("dim_value"):
            out.append(dim.dim_value)
        elif dim.dim_param in dims:
            out.append(int(dims[dim.dim_param]))
        elif axis == 0:
            out.append(batch)
        else:
            raise UsageError(
                f"input {value.name!r}: dimension {axis} is symbolic ({dim.dim_param or '?'}) "
                f"and not the batch; give its size: --dim {dim.dim_param or 'NAME'}=128 on the command "
                f"line, dims={{'{dim.dim_param or 'NAME'}': 128}} in Python"
            )
    return tuple(out)


def random_feeds(
    model: onnx.ModelProto,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One random array per true graph input (initializers that double as inputs are skipped)."""
    initializers = {t.name for t in model.graph.initializer}
    return random_values([v for v in model.graph.input if v.name not in initializers], batch, dims, seed)


def random_values(
    values: Iterable[onnx.ValueInfoProto],
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One random array per declared tensor (e.g. a plan's model inputs, gathered from its parts)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in values:
        if not value.type.HasField("tensor_type"):
            raise UsageError(f"input {value.name!r} is not a tensor; only tensor inputs are supported")
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = resolve_shape(value, batch, dims)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 3, shape).astype(dtype)
        else:
            raise UsageError(f"input {value.name!r} has dtype {dtype}, which random feeds do not support")
    return feeds
