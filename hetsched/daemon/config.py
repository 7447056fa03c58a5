"""Triton model configurations: read, completed from the ONNX model, and hetsched's settings in them.

A model's ``config.pbtxt`` is parsed with Triton's own ``model_config_pb2``, so
any config Triton accepts parses here.  Like Triton's ONNX Runtime backend, a
missing config (or one without inputs and outputs) is completed from the model:
inputs, outputs, their datatypes and dims, and — for a model whose every input
and output has a free first dimension — ``max_batch_size`` 4 with the dynamic
batcher on.  hetsched's own settings ride in the ``parameters`` map:

==========================  ===========  =================================================
key                         default      meaning
==========================  ===========  =================================================
``hetsched.ratios``         ``1``        partition ratios, e.g. ``0.8,0.2`` (one part per ratio)
``hetsched.profile``        ``auto``     profile node costs before partitioning (auto: when
                                         there is more than one part)
``hetsched.warmup``         ``32``       most random requests sent at load to calibrate
                                         every worker (0: none)
``hetsched.max_queue``      ``256``      requests accepted and not answered, per model;
                                         past it: HTTP 503 / gRPC UNAVAILABLE
``hetsched.workers``        the daemon's core groups (``auto``, ``numa``, ``socket``, ``NxK``, ``0-1;2,3``)
``hetsched.policy``         the daemon's scheduling policy (``dmda``, ``eager``...)
==========================  ===========  =================================================

Triton's own fields are honoured where they mean the same thing:
``dynamic_batching.max_queue_delay_microseconds`` is the batcher's delay and
``dynamic_batching.default_queue_policy.max_queue_size`` bounds the queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from hetsched import protojson
from hetsched.daemon.tensors import TensorSpec, config_datatype, wire_datatype
from hetsched.errors import UsageError
from partitioner.errors import RatiosError
from partitioner.partition import parse_ratios

DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size
DEFAULT_WARMUP = 32
DEFAULT_MAX_QUEUE = 256
PREFIX = "hetsched."
KNOWN = ("ratios", "profile", "warmup", "max_queue", "workers", "policy")


class ConfigError(UsageError):
    """A model configuration that cannot be parsed or does not fit its model."""


@dataclass(frozen=True)
class Settings:
    """How hetsched serves one model (from the config's ``hetsched.*`` parameters)."""

    ratios: tuple[float, ...] = (1.0,)
    profile: bool = False
    warmup: int = DEFAULT_WARMUP
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = 1  # rows the dynamic batcher may join (1: off)
    max_queue_delay_s: float = 0.0
    workers: str | None = None  # None: the daemon's
    policy: str | None = None


def parse_text(text: str, where: str) -> mc.ModelConfig:
    """A ``config.pbtxt``'s text, parsed; errors name the file and the line."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(
            f"{where}: not a valid Triton model config ({exc}); see Triton's model_config.proto "
            "for the fields"
        ) from None


def parse_json(text: str | bytes, where: str) -> mc.ModelConfig:
    """The JSON form of a config, as Triton's load request carries it."""
    try:
        return json_format.Parse(text, mc.ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(f"{where}: not a valid Triton model config in JSON ({exc})") from None


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def to_dict(config: mc.ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP ``/config`` answers it: proto field names, 64-bit integers as
    numbers (protobuf's JSON mapping writes them as strings; Triton does not)."""
    doc = protojson.to_dict(config)
    doc.setdefault("max_batch_size", 0)  # clients read it to know whether the first dim is the batch
    return doc


def read_file(path: Path) -> tuple[mc.ModelConfig, bool]:
    """The config in ``path``, and whether it sets ``max_batch_size`` (even to 0)."""
    text = path.read_text()
    return parse_text(text, str(path)), sets_max_batch_size(text)


def sets_max_batch_size(text: str) -> bool:
    """Whether a config's text names ``max_batch_size``: protobuf cannot tell an explicit 0 from none,
    and an explicit 0 (no batching) must not be autocompleted to a batching model."""
    return re.search(r"(^|[\s{,\"])max_batch_size\"?\s*:", text, re.MULTILINE) is not None


def complete(
    config: mc.ModelConfig,
    model: onnx.ModelProto,
    name: str,
    rows_independent: bool = True,
    max_batch_size_given: bool = False,
) -> mc.ModelConfig:
    """A copy of ``config`` with what it leaves out taken from the model, and checked against it.

    ``rows_independent`` is False for a model whose rows depend on each other, and
    ``max_batch_size_given`` True when the config sets max_batch_size, even to 0: then
    batching is not turned on by default.
    """
    done = mc.ModelConfig()
    done.CopyFrom(config)
    if done.name and done.name != name:
        raise ConfigError(f"model {name!r}: its config names it {done.name!r}; make the two agree")
    done.name = name
    if not done.platform and not done.backend:
        done.platform = "onnxruntime_onnx"
    if done.platform not in ("", "onnxruntime_onnx") or done.backend not in ("", "onnxruntime"):
        raise ConfigError(
            f"model {name!r}: platform {done.platform or done.backend!r}; hetsched serves ONNX "
            'models only (platform: "onnxruntime_onnx")'
        )
    inputs, outputs = _tensors(model, inputs=True), _tensors(model, inputs=False)
    batchable = rows_independent and all(
        shape and shape[0] == -1 for shape in [t.shape for t in inputs] + [t.shape for t in outputs]
    )
    autocompleted = not done.input and not done.output
    if autocompleted and done.max_batch_size == 0 and not max_batch_size_given and batchable:
        done.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not done.HasField("dynamic_batching") and not done.HasField("sequence_batching"):
            done.dynamic_batching.SetInParent()
    if done.max_batch_size < 0:
        raise ConfigError(f"model {name!r}: max_batch_size {done.max_batch_size} is negative")
    if done.max_batch_size > 0 and not all(t.shape and t.shape[0] == -1 for t in inputs + outputs):
        raise ConfigError(
            f"model {name!r}: max_batch_size {done.max_batch_size} needs a free first dimension "
            "on every input and output of the model; set max_batch_size: 0"
        )
    skip = 1 if done.max_batch_size > 0 else 0
    _merge(done.input, inputs, skip, name, "input")
    _merge(done.output, outputs, skip, name, "output")
    settings(done)  # reject bad hetsched.* parameters at load, not at the first request
    return done


def tensor_specs(config: mc.ModelConfig, inputs: bool) -> list[TensorSpec]:
    """Inputs or outputs as the protocol shows them: a -1 batch dimension first when batching."""
    batch = (-1,) if config.max_batch_size > 0 else ()
    entries = config.input if inputs else config.output
    return [TensorSpec(e.name, _wire(e.data_type), batch + tuple(e.dims)) for e in entries]


def settings(config: mc.ModelConfig) -> Settings:
    """hetsched's settings for a completed config; bad values raise ConfigError naming the key."""
    params = {
        key[len(PREFIX) :]: value.string_value
        for key, value in config.parameters.items()
        if key.startswith(PREFIX)
    }
    unknown = sorted(set(params) - set(KNOWN))
    if unknown:
        raise ConfigError(
            f"model {config.name!r}: unknown parameters {[PREFIX + k for k in unknown]}; "
            f"known: {[PREFIX + k for k in KNOWN]}"
        )
    try:
        ratios = tuple(parse_ratios(params["ratios"])) if "ratios" in params else (1.0,)
    except RatiosError as exc:
        raise ConfigError(f"model {config.name!r}: {PREFIX}ratios: {exc}") from None
    profile_value = params.get("profile", "auto").lower()
    if profile_value not in ("auto", "true", "false"):
        raise ConfigError(
            f"model {config.name!r}: {PREFIX}profile is {profile_value!r}; use true, false or auto"
        )
    batching = config.HasField("dynamic_batching") and config.max_batch_size > 1
    queue_size = config.dynamic_batching.default_queue_policy.max_queue_size
    return Settings(
        ratios=ratios,
        profile=len(ratios) > 1 if profile_value == "auto" else profile_value == "true",
        warmup=_integer(config.name, params, "warmup", DEFAULT_WARMUP, minimum=0),
        max_queue=_integer(config.name, params, "max_queue", queue_size or DEFAULT_MAX_QUEUE, minimum=1),
        max_batch=config.max_batch_size if batching else 1,
        max_queue_delay_s=config.dynamic_batching.max_queue_delay_microseconds / 1e6,
        workers=params.get("workers") or None,
        policy=params.get("policy") or None,
    )


def _integer(model: str, params: dict[str, str], key: str, default: int, minimum: int) -> int:
    if key not in params:
        return default
    try:
        value = int(params[key])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"model {model!r}: {PREFIX}{key} is {params[key]!r}; give an integer >= {minimum}")
    return value


def _tensors(model: onnx.ModelProto, inputs: bool) -> list[TensorSpec]:
    initializers = {t.name for t in model.graph.initializer}
    values = (
        [v for v in model.graph.input if v.name not in initializers] if inputs else list(model.graph.output)
    )
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, wire_datatype(dtype), dims))
    return specs


def _merge(entries: Any, model_specs: list[TensorSpec], skip: int, name: str, kind: str) -> None:
    """Fill ``entries`` (config inputs or outputs) from the model, or check the declared ones against it."""
    by_name = {spec.name: spec for spec in model_specs}
    if not entries:
        for spec in model_specs:
            entry = entries.add()
            entry.name = spec.name
            entry.data_type = mc.DataType.Value(config_datatype(spec.datatype))
            entry.dims.extend(spec.shape[skip:])
        return
    declared = {entry.name for entry in entries}
    if kind == "input" and declared != set(by_name):
        raise ConfigError(
            f"model {name!r}: config inputs {sorted(declared)}, but the model takes "
            f"{sorted(by_name)}; list every model input, or none to take them from the model"
        )
    for entry in entries:
        found = by_name.get(entry.name)
        if found is None:
            raise ConfigError(
                f"model {name!r}: config {kind} {entry.name!r} is not a model {kind}; the model's: "
                f"{sorted(by_name)}"
            )
        if _wire(entry.data_type) != found.datatype:
            raise ConfigError(
                f"model {name!r}: config {kind} {entry.name!r} is {mc.DataType.Name(entry.data_type)}"
                f", the model's is {config_datatype(found.datatype)}"
            )
        model_dims = found.shape[skip:]
        if len(entry.dims) != len(model_dims) or any(
            m != -1 and d != m for d, m in zip(entry.dims, model_dims)
        ):
            raise ConfigError(
                f"model {name!r}: config {kind} {entry.name!r} has dims {list(entry.dims)}, the "
                f"model's are {list(model_dims)}" + (" after the batch dimension" if skip else "")
            )


def _wire(data_type: int) -> str:
    name = mc.DataType.Name(data_type)
    if name in ("TYPE_INVALID", "TYPE_BF16"):
        raise ConfigError(f"datatype {name} is not served; use a numpy datatype")
    return "BYTES" if name == "TYPE_STRING" else name[len("TYPE_") :]
