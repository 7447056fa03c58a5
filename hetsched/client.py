"""``hetsched.Client``: numpy in, numpy out, over the KServe v2 protocol (a hetsched or a Triton server).

A thin convenience over ``tritonclient``: the same protocol, so anything done
here can be done with ``tritonclient`` directly.  ::

    with hetsched.Client("localhost:8001") as client:          # gRPC; "http://localhost:8000" for HTTP
        client.load_model("resnet", "resnet50.onnx", ratios=(0.8, 0.2), max_batch_size=8)
        out = client.infer("resnet", {"input": x})             # {"logits": array}
        fut = client.infer_async("resnet", {"input": x})       # concurrent.futures.Future

Server errors raise :class:`~hetsched.errors.ServerError` with the server's
message and its status (``"404"`` over HTTP, ``"NOT_FOUND"`` over gRPC).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hetsched import protojson
from hetsched.errors import ServerError, UsageError

Arrays = dict[str, np.ndarray]


class Client:
    def __init__(
        self, url: str = "localhost:8001", headers: Mapping[str, str] | None = None, concurrency: int = 8
    ) -> None:
        """``url``: ``grpc://host:port``, ``http://host:port``, or ``host:port`` for gRPC.

        ``headers`` go with every request (e.g. the server's ``--admin-header``);
        ``concurrency`` bounds the HTTP requests ``infer_async`` runs at once.
        """
        scheme, sep, address = url.partition("://")
        if not sep:
            scheme, address = "grpc", url
        if scheme not in ("grpc", "http"):
            raise UsageError(f"url {url!r}: the scheme must be grpc:// or http://")
        self.protocol = scheme
        self.url = address
        self.headers = dict(headers or {})
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module: Any = module
        self._client = self._connect()
        self._local = threading.local()  # HTTP clients are not thread-safe: one per pool thread
        self._pool = ThreadPoolExecutor(concurrency, "hetsched-client") if scheme == "http" else None
        self._outputs: dict[tuple[str, str], list[str]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._client.close()

    # -- models -----------------------------------------------------------------------------------

    def models(self) -> list[dict[str, str]]:
        """The repository index: ``[{"name", "version", "state", "reason"}]``."""
        index = self._json(self._client.get_model_repository_index)
        entries = index.get("models", []) if isinstance(index, dict) else index
        return [{k: str(e.get(k, "")) for k in ("name", "version", "state", "reason")} for e in entries]

    def load_model(
        self,
        name: str,
        model: str | os.PathLike[str] | bytes | onnx.ModelProto,
        *,
        ratios: Sequence[float] | None = None,
        max_batch_size: int | None = None,
        max_queue_delay_us: int | None = None,
        max_queue: int | None = None,
        profile: bool | None = None,
        warmup: int | None = None,
        workers: str | None = None,
        policy: str | None = None,
        config: Mapping[str, Any] | None = None,
        version: int = 1,
    ) -> None:
        """Upload a model with its config and load it (a reload when the name is loaded already).

        The keyword settings become the config's ``hetsched.*`` parameters and Triton's
        batching fields; ``config`` adds any other Triton config field (JSON form).
        """
        blob = _model_bytes(model)
        document = _config(
            name,
            ratios,
            max_batch_size,
            max_queue_delay_us,
            max_queue,
            profile,
            warmup,
            workers,
            policy,
            config,
        )
        with _translated():
            self._client.load_model(
                name,
                headers=self.headers,
                config=json.dumps(document),
                files={f"file:{version}/model.onnx": blob},
            )
        self._outputs = {k: v for k, v in self._outputs.items() if k[0] != name}

    def unload_model(self, name: str) -> None:
        with _translated():
            self._client.unload_model(name, headers=self.headers)
        self._outputs = {k: v for k, v in self._outputs.items() if k[0] != name}

    def is_ready(self, name: str | None = None) -> bool:
        """Whether the server (or the named model) is ready."""
        with _translated():
            if name is None:
                return bool(self._client.is_server_ready(headers=self.headers))
            return bool(self._client.is_model_ready(name, headers=self.headers))

    def metadata(self, name: str) -> dict[str, Any]:
        return self._json(self._client.get_model_metadata, name)

    def statistics(self, name: str = "") -> list[dict[str, Any]]:
        return list(self._json(self._client.get_inference_statistics, name).get("model_stats", []))

    # -- requests ---------------------------------------------------------------------------------

    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
    ) -> Arrays:
        """Run one request (any batch the model accepts); returns the outputs by name."""
        return self._infer(self._client, name, inputs, outputs, version)

    def infer_async(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
    ) -> Future[Arrays]:
        """Send one request without waiting; the future holds what :meth:`infer` returns."""
        if self._pool is not None:
            return self._pool.submit(
                lambda: self._infer(self._thread_client(), name, inputs, outputs, version)
            )
        future: Future[Arrays] = Future()
        wanted = self._output_names(name, version, outputs)

        def done(result: Any, error: Any) -> None:
            if error is not None:
                future.set_exception(_server_error(error))
            else:
                future.set_result({n: result.as_numpy(n) for n in wanted})

        with _translated():
            self._client.async_infer(
                name,
                self._inputs(inputs),
                done,
                model_version=version,
                outputs=self._requested(outputs),
                headers=self.headers,
            )
        return future

    def _infer(
        self,
        client: Any,
        name: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        version: str,
    ) -> Arrays:
        wanted = self._output_names(name, version, outputs)
        with _translated():
            result = client.infer(
                name,
                self._inputs(inputs),
                model_version=version,
                outputs=self._requested(outputs),
                headers=self.headers,
            )
        return {n: result.as_numpy(n) for n in wanted}

    def _inputs(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        from tritonclient.utils import np_to_triton_dtype

        made = []
        for input_name, value in inputs.items():
            array = np.asarray(value)
            datatype = "BYTES" if array.dtype.kind in "OSU" else np_to_triton_dtype(array.dtype)
            if array.dtype.kind == "U":
                array = array.astype(np.object_)
            tensor = self._module.InferInput(input_name, list(array.shape), datatype)
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            made.append(tensor)
        return made

    def _requested(self, outputs: Sequence[str] | None) -> list[Any] | None:
        if outputs is None:
            return None
        if self.protocol == "http":
            return [self._module.InferRequestedOutput(n, binary_data=True) for n in outputs]
        return [self._module.InferRequestedOutput(n) for n in outputs]

    def _output_names(self, name: str, version: str, outputs: Sequence[str] | None) -> list[str]:
        if outputs is not None:
            return list(outputs)
        key = (name, version)
        if key not in self._outputs:
            meta = self._json(self._client.get_model_metadata, name, version)
            self._outputs[key] = [o["name"] for o in meta["outputs"]]
        return self._outputs[key]

    def _connect(self) -> Any:
        return self._module.InferenceServerClient(self.url)

    def _thread_client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
        return client

    def _json(self, method: Any, *args: Any) -> Any:
        """An answer as HTTP's JSON whichever the protocol (gRPC's protos converted, numbers kept numbers)."""
        with _translated():
            answer = method(*args, headers=self.headers)
        return protojson.to_dict(answer) if self.protocol == "grpc" else answer


def _config(
    name: str,
    ratios: Sequence[float] | None,
    max_batch_size: int | None,
    max_queue_delay_us: int | None,
    max_queue: int | None,
    profile: bool | None,
    warmup: int | None,
    workers: str | None,
    policy: str | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    document: dict[str, Any] = {"name": name, "platform": "onnxruntime_onnx", **(extra or {})}
    if max_batch_size is not None:
        document["max_batch_size"] = max_batch_size
    if max_queue_delay_us is not None:
        document.setdefault("dynamic_batching", {})["max_queue_delay_microseconds"] = max_queue_delay_us
    settings = {
        "ratios": ",".join(f"{r:g}" for r in ratios) if ratios else None,
        "profile": None if profile is None else str(profile).lower(),
        "warmup": warmup,
        "max_queue": max_queue,
        "workers": workers,
        "policy": policy,
    }
    parameters = document.setdefault("parameters", {})
    for key, value in settings.items():
        if value is not None:
            parameters[f"hetsched.{key}"] = {"string_value": str(value)}
    return document


def _model_bytes(model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> bytes:
    if isinstance(model, bytes):
        return model
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    path = Path(model)
    if not path.is_file():
        raise UsageError(f"{path}: no such model file; check the path")
    return path.read_bytes()


def _server_error(error: Any) -> ServerError:
    status = str(error.status() or "") if hasattr(error, "status") else ""
    message = error.message() if hasattr(error, "message") else str(error)
    return ServerError(message, status.removeprefix("StatusCode."))


@contextmanager
def _translated() -> Iterator[None]:
    from tritonclient.utils import InferenceServerException

    try:
        yield
    except InferenceServerException as exc:
        raise _server_error(exc) from None
