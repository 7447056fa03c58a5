"""A Triton model repository on disk: ``<root>/<model>/config.pbtxt``, ``<root>/<model>/<N>/model.onnx``.

Served as Triton serves it: the versions a config's ``version_policy`` names
(by default the latest), the file ``default_model_filename`` names (by default
``model.onnx``).  A model uploaded through the load request (config and files in
the request, as ``tritonclient``'s ``load_model(..., files=...)`` sends them) is
written here as an ordinary model directory, replacing the old one at once — so
unlike Triton, whose uploads live in a temporary directory, it comes back after a
restart.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tritonclient.grpc import model_config_pb2 as mc

from hetsched.daemon.config import ConfigError, parse_json, read_file, sets_max_batch_size, to_text
from hetsched.errors import ModelNotFoundError, UsageError

CONFIG = "config.pbtxt"
DEFAULT_FILENAME = "model.onnx"


@dataclass(frozen=True)
class ModelSource:
    """What the repository holds for one model: its config as written and the versions to serve."""

    name: str
    config: mc.ModelConfig
    versions: dict[int, Path]  # version -> model file
    max_batch_size_given: bool = False  # the config sets it, maybe to 0 (protobuf cannot tell)


class ModelRepository:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UsageError(f"model repository {self.root} is not a directory; create it (it may be empty)")

    def names(self) -> list[str]:
        """Every model directory: one holding a config or a numeric version directory."""
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and _looks_like_model(entry)
        )

    def read(self, name: str) -> ModelSource:
        """The model's config (empty when absent: completed from the model later) and versions to serve."""
        directory = self._directory(name)
        if not directory.is_dir():
            raise ModelNotFoundError(
                f"no model {name!r} in the repository {self.root}; it holds {self.names()}"
            )
        config_path = directory / CONFIG
        config, given = read_file(config_path) if config_path.is_file() else (mc.ModelConfig(), False)
        filename = config.default_model_filename or DEFAULT_FILENAME
        available = sorted(int(d.name) for d in directory.iterdir() if d.is_dir() and d.name.isdigit())
        chosen = _versions(config, available, name)
        missing = [v for v in chosen if not (directory / str(v) / filename).is_file()]
        if missing:
            raise ConfigError(
                f"model {name!r}: version {missing[0]} has no {filename} in {directory / str(missing[0])}"
            )
        return ModelSource(name, config, {v: directory / str(v) / filename for v in chosen}, given)

    def write_upload(self, name: str, config_json: str | None, files: dict[str, bytes]) -> None:
        """Replace the model's directory with the uploaded config and files (keys ``file:<path>``)."""
        if config_json is None:
            raise UsageError(
                f"load of {name!r} carries files but no 'config'; Triton's load request needs "
                "both (tritonclient: load_model(name, config=json, files={...}))"
            )
        config = parse_json(config_json, f"uploaded config of {name!r}")
        staging = Path(tempfile.mkdtemp(prefix=f".upload-{name}-", dir=self.root))
        try:
            for key, content in files.items():
                target = staging / _relative(key, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            text = to_text(config)
            if sets_max_batch_size(config_json) and not sets_max_batch_size(text):
                text += "max_batch_size: 0\n"  # keep an explicit 0, which protobuf's text leaves out
            (staging / CONFIG).write_text(text)
            _versions(
                config,
                sorted(int(d.name) for d in staging.iterdir() if d.is_dir() and d.name.isdigit()),
                name,
            )
            self._replace(name, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _replace(self, name: str, staging: Path) -> None:
        directory = self._directory(name)
        retired = self.root / f".retired-{name}-{os.getpid()}"
        if directory.exists():
            os.replace(directory, retired)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)

    def _directory(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or name in ("..",):
            raise UsageError(f"model name {name!r} is not a directory name; use letters, digits, '-', '_'")
        return self.root / name


def _looks_like_model(directory: Path) -> bool:
    return (directory / CONFIG).is_file() or any(d.is_dir() and d.name.isdigit() for d in directory.iterdir())


def _versions(config: mc.ModelConfig, available: list[int], name: str) -> list[int]:
    """The versions a config's version policy serves, among those on disk."""
    if not available:
        raise ConfigError(f"model {name!r} has no version directory; put the model in <repository>/{name}/1/")
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        wanted = [int(v) for v in policy.specific.versions]
        absent = sorted(set(wanted) - set(available))
        if absent:
            raise ConfigError(
                f"model {name!r}: version_policy asks for versions {absent}, not on disk (found {available})"
            )
        return sorted(wanted)
    count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
    return available[-count:]


def _relative(key: str, name: str) -> PurePosixPath:
    """``file:1/model.onnx`` -> ``1/model.onnx``, refusing paths that leave the model's directory."""
    if not key.startswith("file:"):
        raise UsageError(f"load of {name!r}: parameter {key!r} is neither 'config' nor a 'file:<path>'")
    path = PurePosixPath(key[len("file:") :])
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UsageError(f"load of {name!r}: file path {key!r} must stay inside the model's directory")
    return path
