"""Tensors on the wire: KServe v2 datatypes, JSON and binary encodings, checked against the model.

The protocol names datatypes (``FP32``, ``INT64``, ``BYTES``...); numpy and ONNX
name them otherwise.  Binary data is each tensor's bytes in row-major order,
little-endian; a ``BYTES`` tensor is each element as a 4-byte little-endian
length followed by its bytes (Triton's encoding).  Every decoding error is an
InvalidInputError whose message says what was expected, answered as HTTP 400 /
gRPC INVALID_ARGUMENT.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from hetsched.errors import InvalidInputError


def wire_datatype(dtype: np.dtype[Any]) -> str:
    """The protocol's name of a numpy dtype (strings and bytes are ``BYTES``), by tritonclient's table."""
    name = "BYTES" if dtype.kind in "OSU" else np_to_triton_dtype(np.dtype(dtype))
    if name is None:
        raise InvalidInputError(f"dtype {dtype} has no KServe v2 datatype")
    return str(name)


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a protocol datatype (BYTES: object arrays of bytes), by tritonclient's table."""
    dtype = triton_to_np_dtype(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInputError(f"unknown datatype {datatype!r}; use FP32, INT64, BYTES... (KServe v2 names)")
    return np.dtype(dtype)


def config_datatype(datatype: str) -> str:
    """The model-config enum name (``TYPE_FP32``; ``BYTES`` is ``TYPE_STRING``)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol shows it: shape with -1 for any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def check(self, value: np.ndarray, datatype: str, max_batch_size: int) -> None:
        """Raise InvalidInputError unless ``value`` (sent as ``datatype``) fits this input."""
        if datatype != self.datatype:
            raise InvalidInputError(f"input {self.name!r}: datatype {datatype}, expected {self.datatype}")
        if value.ndim != len(self.shape) or any(w != -1 and g != w for g, w in zip(value.shape, self.shape)):
            raise InvalidInputError(
                f"input {self.name!r}: shape {list(value.shape)}, expected {list(self.shape)} (-1: any size)"
            )
        if max_batch_size > 0 and value.shape[0] > max_batch_size:
            raise InvalidInputError(
                f"input {self.name!r}: batch of {value.shape[0]} rows exceeds the model's "
                f"max_batch_size {max_batch_size}; split the request"
            )


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInputError(f"shape {list(shape)} has a negative dimension")
        count *= dim
    return count


def from_bytes(name: str, raw: bytes | memoryview, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode one tensor's binary data, checking that its size matches its shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(name, raw, count).reshape(shape)
    dtype = numpy_dtype(datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {name!r}: {len(raw)} bytes of data, expected {count * dtype.itemsize} "
            f"for shape {list(shape)} of {datatype}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def from_json(name: str, data: Any, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode one tensor's JSON ``data`` (flat or nested lists, row-major)."""
    count = element_count(shape)
    dtype = numpy_dtype(datatype)
    try:
        if datatype == "BYTES":
            flat = np.array([_to_bytes(item) for item in _flatten(data)], dtype=np.object_)
        else:
            flat = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"input {name!r}: data is not a list of {datatype} values ({exc})") from None
    if flat.size != count:
        raise InvalidInputError(
            f"input {name!r}: {flat.size} values, expected {count} for shape {list(shape)}"
        )
    return flat.reshape(shape)


def to_bytes(value: np.ndarray) -> bytes:
    """One tensor's binary data (row-major, little-endian; BYTES length-prefixed)."""
    if value.dtype.kind in "OSU":
        return _serialize_bytes(value)
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def to_json(value: np.ndarray) -> list[Any]:
    """One tensor's JSON ``data``: a flat row-major list (BYTES as UTF-8 strings)."""
    if value.dtype.kind in "OSU":
        return [_as_text(item) for item in value.reshape(-1)]
    return list(value.reshape(-1).tolist())


def for_model(value: np.ndarray, model_dtype: np.dtype[Any]) -> np.ndarray:
    """BYTES arrive as bytes; an ONNX string input wants str."""
    if value.dtype == np.object_ and model_dtype == np.object_:
        return np.vectorize(_as_text, otypes=[np.object_])(value) if value.size else value
    return value


def _serialize_bytes(value: np.ndarray) -> bytes:
    chunks = []
    for item in value.reshape(-1):
        raw = item.encode() if isinstance(item, str) else bytes(item)
        chunks.append(struct.pack("<I", len(raw)))
        chunks.append(raw)
    return b"".join(chunks)


def _deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    items: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInputError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInputError(f"input {name!r}: a BYTES element of {length} bytes runs past the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInputError(f"input {name!r}: {len(items)} BYTES elements, expected {count}")
    return np.array(items + [b""], dtype=np.object_)[:-1]  # the sentinel keeps numpy from making 2-D


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [leaf for item in data for leaf in _flatten(item)]
    return [data]


def _to_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    raise TypeError(f"{item!r} is not a string")


def _as_text(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, (bytes, bytearray)) else str(item)
