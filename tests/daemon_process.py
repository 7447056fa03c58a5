"""Models for the daemon's repository in tests (the daemon itself: hetsched.daemon.process)."""

from __future__ import annotations

from pathlib import Path

import onnx

from hetsched import zoo


def add_model(
    repository: Path, name: str, model: onnx.ModelProto, config: str | None = None, version: int = 1
) -> Path:
    """Write ``model`` (and a config.pbtxt when given) as ``repository/name/version/model.onnx``."""
    directory = repository / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save_model(model, str(path))
    if config is not None:
        (repository / name / "config.pbtxt").write_text(config)
    return path


def add_zoo_model(repository: Path, name: str, zoo_name: str, config: str | None = None) -> Path:
    return add_model(repository, name, zoo.build(zoo_name), config)


def string_model() -> onnx.ModelProto:
    """Strings in, strings out (``BYTES`` on the wire)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 2])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
