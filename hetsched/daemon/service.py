"""The daemon's core, apart from any protocol: models loaded from the repository into runtimes,
requests checked and submitted, states and statistics kept.

The HTTP and gRPC front ends decode requests into numpy arrays, call
:meth:`InferenceService.submit` and encode what its future returns; every error
is a :class:`~hetsched.errors.HetschedError` that each front end maps to its own
status (:func:`status_of`).  Loading is slow (profile, partition, sessions,
warm-up) and blocking, so front ends run it in a thread; the model table is
swapped in one assignment, so requests never see a half-loaded model.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from hetsched.clock import MonotonicClock
from hetsched.daemon import config as configs
from hetsched.daemon.repository import ModelRepository, ModelSource
from hetsched.daemon.stats import ModelStats, TaskStats
from hetsched.daemon.tensors import TensorSpec, for_model
from hetsched.errors import (
    AccessDeniedError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    RuntimeClosedError,
    UsageError,
)
from hetsched.runtime import Model, Runtime, rows_independent
from hetsched.topology import Provider
from hetsched.trace import RequestStamps
from partitioner.model_io import read_model

log = logging.getLogger(__name__)

SERVER_NAME = "hetsched"
EXTENSIONS = [
    "classification_not_supported",
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "schedule_policy",
    "parameters",
]
Arrays = dict[str, np.ndarray]


def status_of(error: BaseException) -> int:
    """The HTTP status of an error (gRPC front ends map these numbers to their codes)."""
    if isinstance(error, ModelNotFoundError):
        return 404
    if isinstance(error, AccessDeniedError):
        return 403
    if isinstance(error, UsageError):
        return 400
    if isinstance(error, (OverloadedError, RuntimeClosedError)):
        return 503
    return 500


@dataclass
class ServedModel:
    """One version of one model, ready to take requests."""

    name: str
    version: str
    config: mc.ModelConfig
    settings: configs.Settings
    inputs: dict[str, TensorSpec]
    outputs: list[TensorSpec]
    model: Model
    stats: ModelStats

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor_dict(t) for t in self.inputs.values()],
            "outputs": [_tensor_dict(t) for t in self.outputs],
        }


@dataclass(frozen=True)
class ModelState:
    """A model version's state in the repository index."""

    state: str  # "READY", "LOADING", "UNAVAILABLE"
    reason: str = ""


class InferenceService:
    """Models of one repository served by runtimes of this machine's workers."""

    def __init__(
        self,
        repository: ModelRepository,
        workers: str = "auto",
        policy: str = "dmda",
        perfmodel_dir: str | None = None,
        cluster: str | None = None,
        trace_file: str | None = None,
        gpu_streams: int = 2,
        accelerators: Sequence[Provider] = (),
        numa_copies: bool = False,
    ) -> None:
        self.repository = repository
        self.numa_copies = numa_copies  # inputs copied to their workers' NUMA nodes
        self.gpu_streams = gpu_streams  # workers per GPU found
        self.accelerators = accelerators  # execution providers, one worker each
        self.trace_file = trace_file  # every task's trace, written there (Chrome JSON) on close
        self.cluster = cluster  # a Dask scheduler address: its workers run the models
        self.workers = workers
        self.policy = policy
        self.perfmodel_dir = perfmodel_dir
        self.task_stats = TaskStats()
        self.runtimes: dict[tuple[str, str], Runtime] = {}
        self.served: dict[str, dict[str, ServedModel]] = {}  # name -> version -> model; replaced, not edited
        self.states: dict[str, dict[str, ModelState]] = {}
        self.ready = False  # set once the repository's models were loaded at start
        self._load_locks: dict[str, threading.Lock] = {}
        self._table_lock = threading.Lock()
        self._generations = itertools.count(1)  # runtime model names stay unique across reloads
        self._closed = False

    # -- models -----------------------------------------------------------------------------------

    def load_repository(self) -> None:
        """Load every model of the repository; a model that fails is UNAVAILABLE, the others serve."""
        failed = []
        for name in self.repository.names():
            try:
                self.load(name)
            except Exception as exc:  # that model is UNAVAILABLE with its reason; the others serve
                failed.append(name)
                log.error("model %r not loaded: %s", name, exc)
        self.ready = True
        log.info("ready: models %s%s", sorted(self.served), f"; unavailable: {failed}" if failed else "")

    def load(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model from the repository, or from an upload written there first."""
        with self._lock_for(name):
            if self._closed:
                raise RuntimeClosedError("the server is shutting down; it loads no more models")
            if files:
                self.repository.write_upload(name, config_json, dict(files))
            elif config_json is not None:
                raise UsageError(
                    f"load of {name!r}: a config override without files is not supported; "
                    "upload the model file with it, or edit config.pbtxt in the repository"
                )
            source = self.repository.read(name)
            self._set_states(name, {str(v): ModelState("LOADING") for v in source.versions})
            loaded: dict[str, ServedModel] = {}
            try:
                for version, path in source.versions.items():
                    log.info("loading model %r version %d from %s", name, version, path)
                    loaded[str(version)] = self._load_version(source, str(version), path)
            except BaseException as exc:
                for served in loaded.values():
                    served.model.runtime.unload(served.model.name)
                self._set_states(name, {str(v): ModelState("UNAVAILABLE", str(exc)) for v in source.versions})
                raise
            with self._table_lock:
                old = self.served.get(name, {})
                self.served = {**self.served, name: loaded}
            self._set_states(name, {v: ModelState("READY") for v in loaded})
            self._retire(old)
            log.info("model %r ready: versions %s", name, sorted(loaded, key=int))

    def unload(self, name: str) -> None:
        with self._lock_for(name):
            with self._table_lock:
                if name not in self.served:
                    raise ModelNotFoundError(f"no model {name!r} is loaded; loaded: {sorted(self.served)}")
                old = self.served[name]
                self.served = {k: v for k, v in self.served.items() if k != name}
            self._set_states(name, {v: ModelState("UNAVAILABLE", "unloaded") for v in old})
            self._retire(old)
            log.info("model %r unloaded", name)

    def get(self, name: str, version: str = "") -> ServedModel:
        """The model version asked for (the highest one when ``version`` is empty), or ModelNotFoundError."""
        versions = self.served.get(name)
        if not versions:
            state = self.states.get(name, {})
            why = "; ".join(f"version {v}: {s.state} {s.reason}".strip() for v, s in state.items())
            raise ModelNotFoundError(
                f"model {name!r} is not ready"
                + (f" ({why})" if why else "")
                + f"; ready models: {sorted(self.served)}"
            )
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no ready version {version!r}; ready: {sorted(versions)}"
            )
        return versions[version]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index: every model on disk or loaded, with its versions' states."""
        names = sorted(set(self.repository.names()) | set(self.states))
        entries = []
        for name in names:
            states = self.states.get(name)
            if not states:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"})
                continue
            for version, state in sorted(states.items(), key=lambda item: int(item[0])):
                entries.append(
                    {"name": name, "version": version, "state": state.state, "reason": state.reason}
                )
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries

    def pending(self) -> int:
        """Requests accepted and not answered yet, over every served model."""
        return sum(m.model.pending for versions in self.served.values() for m in versions.values())

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        if not name:
            return [
                m.stats.as_dict(m.name, m.version)
                for versions in self.served.values()
                for m in versions.values()
            ]
        if version:
            served = [self.get(name, version)]
        else:
            self.get(name)  # raises for an unknown model
            served = list(self.served[name].values())
        return [m.stats.as_dict(m.name, m.version) for m in served]

    # -- requests ---------------------------------------------------------------------------------

    def submit(
        self,
        served: ServedModel,
        inputs: Mapping[str, tuple[np.ndarray, str]],
        outputs: list[str] | None = None,
        run_here: bool = False,
        stamps: RequestStamps | None = None,
    ) -> Future[Arrays]:
        """Check a request's inputs (each an array and the datatype it was sent as) and queue it.

        The future holds the requested outputs (all when ``outputs`` is None).  Raises
        InvalidInputError or OverloadedError before anything is queued.  ``run_here``: the caller
        waits for the answer on this thread (Model.submit's ``run_here``).  ``stamps`` (from
        :meth:`stamps`, when tracing): when the request went to the model and came back.
        """
        started = time.perf_counter()
        expected = served.inputs
        if set(inputs) != set(expected):
            raise InvalidInputError(
                f"model {served.name!r}: inputs {sorted(inputs)}, expected {sorted(expected)}"
            )
        known = [t.name for t in served.outputs]
        unknown = [n for n in outputs or [] if n not in known]
        if unknown:
            raise InvalidInputError(
                f"model {served.name!r}: no output {unknown[0]!r}; its outputs are {known}"
            )
        feeds = {}
        for name, (value, datatype) in inputs.items():
            expected[name].check(value, datatype, served.config.max_batch_size)
            model_dtype = next(s.dtype for s in served.model.inputs if s.name == name)
            feeds[name] = for_model(value, model_dtype)
        rows = next((v.shape[0] for v, _ in inputs.values() if v.ndim), 1)
        if stamps is not None:
            stamps.submitted_s = MonotonicClock.now()
        try:
            if served.model.unloaded:  # a reload retired this version between lookup and submit
                served = self.get(served.name, served.version)
            future = served.model.submit(feeds, copy=False, run_here=run_here)  # the arrays are the request's
        except OverloadedError:
            with served.stats.lock:
                served.stats.rejected += 1
            raise
        wanted = outputs or known
        answer: Future[Arrays] = Future()

        def settle(done: Future[Arrays]) -> None:
            if stamps is not None:
                stamps.answered_s = MonotonicClock.now()
            error = done.exception()
            served.stats.answered(time.perf_counter() - started, rows, ok=error is None)
            if error is not None:
                answer.set_exception(error)
            else:
                result = done.result()
                answer.set_result({n: result[n] for n in wanted})

        future.add_done_callback(settle)
        return answer

    @staticmethod
    def stamps(served: ServedModel, frontend: str, arrived_s: float | None = None) -> RequestStamps | None:
        """A request's stamps, received now (arrived at ``arrived_s`` when the frontend saw it
        earlier), when the model's runtime traces; None (nothing to stamp) when it does not."""
        if served.model.runtime.tracer is None:
            return None
        received_s = MonotonicClock.now()
        stamps = RequestStamps(frontend, served.name, received_s if arrived_s is None else arrived_s)
        stamps.received_s = received_s
        return stamps

    @staticmethod
    def record(served: ServedModel, stamps: RequestStamps) -> None:
        """Keep a request's stamps in its model's trace (a frontend is done with it)."""
        tracer = served.model.runtime.tracer
        if tracer is not None:
            tracer.on_request(stamps)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish what is in flight, stop the workers, save the perf history."""
        with self._table_lock:
            self._closed = True
            self.served = {}
        for runtime in self.runtimes.values():
            runtime.close()
        if self.trace_file:
            self._save_traces(Path(self.trace_file))

    def _save_traces(self, path: Path) -> None:
        """One Chrome trace per runtime (a second runtime's file is named after its workers and policy)."""
        for index, ((workers, policy), runtime) in enumerate(sorted(self.runtimes.items())):
            if runtime.tracer is None:
                continue
            target = path if index == 0 else path.with_name(f"{path.stem}-{workers}-{policy}{path.suffix}")
            runtime.tracer.save(target)
            moved = runtime.tracer.transfer_summary()
            log.info("trace of %d task events and %d transfers (%.0f%% of their time hidden under compute) "
                     "written to %s", len(runtime.tracer.events()), moved.transfers,
                     100 * moved.hidden_share if moved.transfers else 0.0, target)
            for row in runtime.tracer.summary():
                log.info("worker %s: %d tasks, busy %.0f%% of the trace, %s", row.worker, row.tasks,
                         100 * row.utilization, "CPU time unknown" if math.isnan(row.off_cpu_share)
                         else f"{100 * row.off_cpu_share:.0f}% of it off CPU (waiting for its core)")

    def _load_version(self, source: ModelSource, version: str, path: Path) -> ServedModel:
        name, config = source.name, source.config
        model, _ = read_model(path)
        independent = True
        if (
            not config.input
            and not config.output
            and not source.max_batch_size_given
            and _first_dims_free(model)
        ):
            try:  # autocompletion would batch it: only if its rows are independent
                independent = rows_independent(model)
                why = "rows of a batch depend on each other"
            except UsageError as exc:  # inputs random requests cannot make (strings, symbolic dims)
                independent, why = False, f"batching not probed: {exc}"
            if not independent:
                log.warning("model %r: %s; serving it with max_batch_size 0", name, why)
        completed = configs.complete(
            config,
            model,
            name,
            rows_independent=independent,
            max_batch_size_given=source.max_batch_size_given,
        )
        settings = configs.settings(completed)
        runtime = self._runtime(settings.workers or self.workers, settings.policy or self.policy)
        runtime_name = f"{name}/{version}#{next(self._generations)}"
        started = time.perf_counter()
        loaded = runtime.load(
            model,
            ratios=settings.ratios,
            name=runtime_name,
            profile=settings.profile,
            max_batch=settings.max_batch,
            max_queue_delay_s=settings.max_queue_delay_s,
            max_queue=settings.max_queue,
        )
        shares = ", ".join(f"{p.cost_share:.0%}" for p in loaded.plan.parts)
        log.info(
            "model %r version %s: %d part(s) (cost shares %s), sessions on %d workers, %.1f s",
            name,
            version,
            len(loaded.plan.parts),
            shares,
            len(runtime.specs),
            time.perf_counter() - started,
        )
        try:
            # every batch size the batcher may form, in powers of two (the batch regression fills in
            # between): under load the scheduler then knows batches' costs instead of exploring them
            sizes = sorted({1 << k for k in range(settings.max_batch.bit_length())} | {settings.max_batch})
            for batch in sizes if settings.warmup else []:
                sent = loaded.warm_up(settings.warmup, batch)
                calibrated = "every worker" if loaded.calibrated(batch) else "some workers (the rest live)"
                log.info(
                    "model %r version %s: batch %d, %d warm-up requests calibrated %s",
                    name,
                    version,
                    batch,
                    sent,
                    calibrated,
                )
        except UsageError as exc:  # e.g. a symbolic dimension random requests cannot size
            log.warning("model %r: no warm-up (%s)", name, exc)
        except BaseException:
            runtime.unload(runtime_name)
            raise
        stats = ModelStats()
        self.task_stats.models[runtime_name] = stats  # counted from here: warm-up requests are not traffic
        inputs = configs.tensor_specs(completed, inputs=True)
        return ServedModel(
            name,
            version,
            completed,
            settings,
            {t.name: t for t in inputs},
            configs.tensor_specs(completed, inputs=False),
            loaded,
            stats,
        )

    def _runtime(self, workers: str, policy: str) -> Runtime:
        key = (workers, policy)
        if key not in self.runtimes:
            if self.runtimes and self.cluster is None:
                log.warning(
                    "a second runtime (workers %s, policy %s) shares this machine's cores with %s; "
                    "their sessions may compete for cores",
                    workers,
                    policy,
                    sorted(self.runtimes),
                )
            self.runtimes[key] = Runtime(
                workers=workers,
                policy=policy,
                perfmodel_dir=self.perfmodel_dir,
                instruments=[self.task_stats],
                cluster=self.cluster,
                trace=self.trace_file is not None,
                gpu_streams=self.gpu_streams,
                accelerators=self.accelerators,
                numa_copies=self.numa_copies,
            )
        return self.runtimes[key]

    def _retire(self, old: dict[str, ServedModel]) -> None:
        """Unload replaced versions once their requests in flight are answered (Runtime.unload waits)."""
        for served in old.values():
            served.model.runtime.unload(served.model.name)
            self.task_stats.models.pop(served.model.name, None)

    def _set_states(self, name: str, states: dict[str, ModelState]) -> None:
        with self._table_lock:
            self.states = {**self.states, name: states}

    def _lock_for(self, name: str) -> threading.Lock:
        with self._table_lock:
            return self._load_locks.setdefault(name, threading.Lock())


def _tensor_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _first_dims_free(model: Any) -> bool:
    initializers = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] + list(model.graph.output)
    dims = [v.type.tensor_type.shape.dim for v in values]
    return all(len(d) > 0 and not d[0].HasField("dim_value") for d in dims)
