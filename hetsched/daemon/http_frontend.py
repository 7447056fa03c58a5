"""KServe v2 over HTTP, as Triton serves it (aiohttp): JSON and the binary tensor data extension.

An inference body is a JSON header, then — when the ``Inference-Header-Content-Length``
header says where the JSON ends — each binary input's bytes in input order
(``parameters.binary_data_size``).  Answers mirror it: outputs asked as binary
(or all of them, with ``binary_data_output``) follow the JSON header.  Errors are
``{"error": "..."}`` with the status :func:`~hetsched.daemon.service.status_of`
gives, so ``tritonclient.http`` raises them with their message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import DecompressSizeError, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from hetsched.clock import MonotonicClock
from hetsched.daemon import config as configs
from hetsched.daemon.access import AdminSecret
from hetsched.daemon.service import EXTENSIONS, SERVER_NAME, InferenceService, ServedModel, status_of
from hetsched.daemon.tensors import from_bytes, from_json, to_bytes, to_json
from hetsched.errors import HetschedError, InvalidInputError

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    service: InferenceService, version: str, max_body_bytes: int, admin: AdminSecret | None = None
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
    api = _Api(service, version, admin)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    app.router.add_get("/v2/health/live", api.live)
    app.router.add_get("/v2/health/ready", api.ready)
    app.router.add_get("/v2", api.server_metadata)
    app.router.add_get("/v2/models/stats", api.statistics)
    app.router.add_post("/v2/repository/index", api.index)
    app.router.add_post("/v2/repository/models/{name}/load", api.load)
    app.router.add_post("/v2/repository/models/{name}/unload", api.unload)
    for prefix in (model, versioned):
        app.router.add_get(prefix, api.model_metadata)
        app.router.add_get(prefix + "/ready", api.model_ready)
        app.router.add_get(prefix + "/config", api.model_config)
        app.router.add_get(prefix + "/stats", api.statistics)
        app.router.add_post(prefix + "/infer", api.infer)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes Triton's ``{"error": "..."}`` with a status that says whose fault it is."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.text or exc.reason)
    except HetschedError as exc:
        return _error(status_of(exc), str(exc))
    except DecompressSizeError as exc:
        return _error(413, f"the body inflates past the size limit ({exc.message})")
    except (HttpProcessingError, RequestPayloadError) as exc:  # e.g. not the gzip its Content-Encoding says
        cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        return _error(400, f"unreadable request body: {getattr(cause, 'message', cause)}".strip())
    except Exception as exc:  # a bug of ours: this request fails, the server keeps serving
        log.exception("internal error answering %s %s", request.method, request.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Api:
    def __init__(self, service: InferenceService, version: str, admin: AdminSecret | None) -> None:
        self.service = service
        self.version = version
        self.admin = admin

    async def live(self, request: web.Request) -> web.Response:
        return web.Response()

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.service.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS})

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self._model(request).metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._model(request)
        except HetschedError:
            return web.Response(status=400)
        return web.Response()

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(configs.to_dict(self._model(request).config))

    async def statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        stats = self.service.statistics(name, request.match_info.get("version", ""))
        return web.json_response({"model_stats": stats})

    async def index(self, request: web.Request) -> web.Response:
        body = await _json_body(request, default={})
        return web.json_response(self.service.index(ready_only=bool(body.get("ready", False))))

    async def load(self, request: web.Request) -> web.Response:
        if self.admin:
            self.admin.check(request.headers)
        name = request.match_info["name"]
        parameters = (await _json_body(request, default={})).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInputError("load request: 'parameters' must be an object")
        config = parameters.get("config")
        files = {}
        for key, value in parameters.items():
            if key == "config":
                continue
            try:
                files[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise InvalidInputError(
                    f"load of {name!r}: parameter {key!r} is not base64 file content"
                ) from None
        await asyncio.get_running_loop().run_in_executor(None, self.service.load, name, config, files)
        return web.Response()

    async def unload(self, request: web.Request) -> web.Response:
        if self.admin:
            self.admin.check(request.headers)
        await asyncio.get_running_loop().run_in_executor(
            None, self.service.unload, request.match_info["name"]
        )
        return web.Response()

    async def infer(self, request: web.Request) -> web.Response:
        served = self._model(request)
        arrived_s = MonotonicClock.now()
        body = await request.read()  # aiohttp inflates gzip/deflate bodies and checks the inflated size
        stamps = self.service.stamps(served, "http", arrived_s)
        header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
        doc = _parse_json(header)
        inputs = _decode_inputs(doc, binary)
        outputs, binary_outputs = _requested_outputs(doc)
        result = await asyncio.wrap_future(self.service.submit(served, inputs, outputs, stamps=stamps))
        response = _encode_response(request, served, doc.get("id"), result, binary_outputs)
        if stamps is not None:  # aiohttp writes the response once this returns: not seen here
            stamps.encoded_s = MonotonicClock.now()
            self.service.record(served, stamps)
        return response

    def _model(self, request: web.Request) -> ServedModel:
        return self.service.get(request.match_info["name"], request.match_info.get("version", ""))


async def _json_body(request: web.Request, default: dict[str, Any]) -> dict[str, Any]:
    raw = await request.read()
    return _parse_json(raw) if raw.strip() else default


def _parse_json(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return doc


def _split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidInputError(
            f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} bytes; it must "
            "be the size of the JSON header that starts the body"
        )
    return view[:length], view[length:]


def _decode_inputs(doc: dict[str, Any], binary: memoryview) -> dict[str, tuple[np.ndarray, str]]:
    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError("the request has no 'inputs' list")
    inputs: dict[str, tuple[np.ndarray, str]] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not {"name", "datatype", "shape"} <= set(entry):
            raise InvalidInputError("each input needs 'name', 'datatype' and 'shape'")
        name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise InvalidInputError(f"input {name!r}: 'shape' must be a list of integers, got {shape!r}")
        if name in inputs:
            raise InvalidInputError(f"input {name!r} appears twice")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInputError(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} "
                    f"bytes of binary data after the JSON header (offset {offset})"
                )
            value = from_bytes(name, binary[offset : offset + size], datatype, shape)
            offset += size
        elif "data" in entry:
            value = from_json(name, entry["data"], datatype, shape)
        else:
            raise InvalidInputError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        inputs[name] = (value, datatype)
    if offset != len(binary):
        raise InvalidInputError(
            f"{len(binary) - offset} bytes of binary data follow the inputs: the inputs' "
            f"binary_data_size add up to {offset}, the body carries {len(binary)}"
        )
    return inputs


def _requested_outputs(doc: dict[str, Any]) -> tuple[list[str] | None, set[str] | bool]:
    """The outputs asked for (None: all) and which go binary (True: all of them)."""
    all_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    entries = doc.get("outputs")
    if entries is None:
        return None, all_binary
    if not isinstance(entries, list):
        raise InvalidInputError("'outputs' must be a list")
    names, binary = [], set()
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry:
            raise InvalidInputError("each requested output needs a 'name'")
        parameters = entry.get("parameters") or {}
        if parameters.get("classification"):
            raise InvalidInputError("the classification extension is not supported; ask for the raw output")
        names.append(entry["name"])
        if parameters.get("binary_data", all_binary):
            binary.add(entry["name"])
    return names, binary


def _encode_response(
    request: web.Request,
    served: ServedModel,
    request_id: Any,
    result: dict[str, np.ndarray],
    binary: set[str] | bool,
) -> web.Response:
    outputs, blobs = [], []
    for name, value in result.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _datatype_of(served, name),
            "shape": list(value.shape),
        }
        if binary is True or (isinstance(binary, set) and name in binary):
            raw = to_bytes(value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_json(value)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": served.name, "model_version": served.version, "outputs": outputs}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc).encode()
    headers = {}
    if blobs:
        headers[HEADER_LENGTH] = str(len(header))
    body = b"".join([header, *blobs])
    encoding = _accepted_encoding(request.headers.get("Accept-Encoding", ""))
    if encoding:
        compressor = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
        body = compressor.compress(body) + compressor.flush()
        headers["Content-Encoding"] = encoding
    content_type = "application/octet-stream" if blobs else "application/json"
    return web.Response(body=body, headers=headers, content_type=content_type)


def _accepted_encoding(accept: str) -> str | None:
    offered = {part.split(";")[0].strip() for part in accept.split(",")}
    return next((e for e in ("gzip", "deflate") if e in offered), None)


def _datatype_of(served: ServedModel, output: str) -> str:
    return next(t.datatype for t in served.outputs if t.name == output)
