"""The in-process API (DESIGN.md): a Runtime of pinned workers and a scheduler; models loaded as plans.

::

    with hetsched.Runtime(workers="auto", policy="dmda") as rt:
        model = rt.load("model.onnx", ratios=(0.8, 0.2), name="resnet")
        out = model.infer({"input": x})          # dict of numpy arrays, blocking
        fut = model.submit({"input": x})         # concurrent.futures.Future

A request becomes a :class:`~hetsched.task.Job`: one task per part, following
the plan's DAG.  Its tensors live in the job's own dictionary, so no request can
ever read another's rows.  Every executed task feeds the history model, which
the policy reads back (and which is saved to the per-host store on close when
one is given).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from hetsched.admission import Lines
from hetsched.batching import DynamicBatcher, SizeTable, choose_batch
from hetsched.clock import MonotonicClock
from hetsched.errors import (
    InvalidInputError,
    OverloadedError,
    RuntimeClosedError,
    TaskFailedError,
    UsageError,
    WorkerLostError,
)
from hetsched.perf import HistoryOracle
from hetsched.platform import CLIENT_MEMORY, Platform, StageModel, TaskIO
from hetsched.policies import make_policy
from hetsched.scheduler import Instrument, Scheduler
from hetsched.task import Job, Task, WorkerSpec
from hetsched.topology import (
    Provider,
    accelerator_workers,
    cpu_workers,
    discover,
    discover_gpus,
    gpu_workers,
)
from hetsched.trace import TraceRecorder
from hetsched.workers import ThreadExecutor
from partitioner.feeds import random_feeds, random_values
from partitioner.graph import build_graph
from partitioner.partition import partition
from partitioner.plan import PartitionPlan
from perfmodels.history import HistoryKey, HistoryModel, footprint, stage_id
from perfmodels.store import PerfModelStore
from perfmodels.transfer import BusModel

log = logging.getLogger(__name__)

Inputs = Mapping[str, np.ndarray]
CLOSE_TIMEOUT_S = 60.0
MAX_REQUEST_ATTEMPTS = 3  # a request whose worker died is resent at most this often in all
JOB_SEPARATOR = "#"  # a job is named <model name>#<sequence number>
FOOTPRINT_CACHE = 1024  # distinct request shapes remembered per model
CHOOSER_REFRESH_S = 0.1  # the batch-size chooser re-reads its predictions at most this often
# jobs in flight per worker slot before further requests wait outside the scheduler (in their model's
# batcher, or the runtime's admission queue) and are placed when a worker frees up
LOOKAHEAD = 2
_AT_CLIENT, _NOWHERE = frozenset({CLIENT_MEMORY}), frozenset[str]()  # a task's inputs' first places


def job_model_name(job: Job) -> str:
    """The name of the model a runtime job belongs to (what instruments attribute its tasks to)."""
    return job.name.rpartition(JOB_SEPARATOR)[0]


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, dtype, and shape with None for the batch (and other symbolic) dims."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]


class Model:
    """A loaded model: validated requests in, futures of output dictionaries out."""

    def __init__(self, runtime: Runtime, name: str, plan: PartitionPlan, stages: list[str],
                 input_values: list[onnx.ValueInfoProto], max_queue: int | None = None,
                 pin: Mapping[int, frozenset[str]] | None = None) -> None:
        self.runtime = runtime
        self.name = name
        self.plan = plan
        self.stages = stages
        self.input_values = input_values  # the model's true inputs, as declared
        # per part: outputs other parts read (kept where they are made) and the model's outputs
        consumed = {name for part in plan.parts for name in part.inputs}
        self.part_io = [(tuple(part.inputs), tuple(part.outputs),
                         tuple(n for n in part.outputs if n in consumed),
                         tuple(n for n in part.outputs if n in plan.model_outputs)) for part in plan.parts]
        self.depends_on = [list(part.depends_on) for part in plan.parts]
        # request shapes -> their footprint and each part's task fields (_shaped)
        self._by_shapes: dict[tuple[tuple[str, tuple[int, ...]], ...], _Shaped] = {}
        self.inputs = [_input_spec(value) for value in input_values]
        self._input_names = frozenset(spec.name for spec in self.inputs)
        # per part: where each input is when a request arrives (the client's memory for the model's
        # own inputs, nowhere yet for another part's outputs); copied into each task
        self._input_nodes = [{n: _AT_CLIENT if n in self._input_names else _NOWHERE for n in part.inputs}
                             for part in plan.parts]
        self._feed_inputs = [tuple(n for n in part.inputs if n in self._input_names) for part in plan.parts]
        self._accepted_shapes: set[tuple[str, tuple[int, ...]]] = set()  # (input, shape) checked already
        self.batcher: DynamicBatcher | None = None
        # (read at, predicted seconds by batch size, rows per second by batch size): choose_batch's,
        # every size read at the present load (SizeTable)
        self._chooser_table: tuple[float, list[float], list[float]] | None = None
        self._sizes = SizeTable()
        self.unloaded = False
        self.max_queue = max_queue
        self.pin = dict(pin or {})  # part -> the only workers that may run it
        self._pending = 0  # accepted and not answered yet, bounded by max_queue
        self._pending_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests accepted and not answered yet (waiting for a batch, queued or running)."""
        return self._pending

    def submit(self, inputs: Inputs, copy: bool = True, run_here: bool = False
               ) -> Future[dict[str, np.ndarray]]:
        """Queue one request (any batch size).

        Bad inputs raise InvalidInputError and a full queue raises OverloadedError, both
        before anything is queued; an accepted request is always answered.  The arrays are
        copied, so the caller may reuse them at once; ``copy=False`` hands them over instead
        (the caller will not write to them until the future is done), which saves a copy of
        every input.  ``run_here``: the caller will wait for the answer on this thread, so the
        request's tasks on core workers that can start at once run on it (pinned to the worker's
        first core meanwhile), sparing two thread wake-ups; the call returns when they are done
        (what ``infer`` does).
        A batching model's requests are always sent by its batcher.
        """
        if self.unloaded:
            raise UsageError(f"model {self.name!r} was unloaded; load it again to send it requests")
        feeds, batch = self._validate(inputs, copy)
        with self._pending_lock:
            queued = self._pending
            full = self.max_queue is not None and queued >= self.max_queue
            if not full:
                self._pending += 1
        if full:
            if self.batcher is not None:
                self.batcher.refused()  # outside the lock: the batcher takes its own
            raise OverloadedError(f"model {self.name!r}: {queued} requests already queued "
                                  f"(max_queue={self.max_queue}); retry later or raise max_queue")
        try:
            if self.batcher is not None:
                self.runtime._check_open()
                future = self.batcher.submit(feeds, batch)
            else:
                caller = threading.current_thread() if run_here else None
                future = self.runtime._submit(self, feeds, batch, caller=caller)
        except BaseException:
            self._answered()
            raise
        future.add_done_callback(self._answered)
        return future

    def _answered(self, _: object = None) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _shaped(self, feeds: Mapping[str, np.ndarray]) -> _Shaped:
        """What a request's tasks take from its shapes alone: its footprint (the history key), and
        per part (stage, index, input bytes, where the inputs are, the workers allowed), the
        dictionaries to copy into each task.  Cached by shapes: requests repeat a few, and building
        these on every request was a measurable share of a small model's overhead."""
        shapes = tuple((name, value.shape) for name, value in feeds.items())
        shaped = self._by_shapes.get(shapes)
        if shaped is None:
            if len(self._by_shapes) >= FOOTPRINT_CACHE:
                self._by_shapes.clear()
            parts = tuple((stage, index, {n: feeds[n].nbytes for n in self._feed_inputs[index]},
                           self._input_nodes[index], self.pin.get(index))
                          for index, stage in enumerate(self.stages))
            shaped = self._by_shapes[shapes] = (footprint(dict(shapes)), parts)
        return shaped

    def warm_up(self, max_requests: int, batch: int = 1) -> int:
        """Send random requests one at a time until every worker's perf model of every part is
        trusted at this batch size (StarPU's calibration), ``max_requests`` at most; returns how
        many ran.  Runs before the model takes traffic, so the first users meet a calibrated
        scheduler rather than paying for exploration."""
        sent = 0
        while sent < max_requests and not self.calibrated(batch):
            feeds = random_values(self.input_values, batch, seed=sent)
            self.runtime._submit(self, feeds, batch).result()
            sent += 1
        return sent

    def calibrated(self, batch: int) -> bool:
        """Whether every (part, worker) pair has a trusted prediction at this batch size."""
        shapes = {spec.name: tuple(batch if d is None else d for d in spec.shape) for spec in self.inputs}
        probe = Job("probe", [p.depends_on for p in self.plan.parts])
        tasks = [Task(stage, part.index, probe, footprint(shapes), batch)
                 for stage, part in zip(self.stages, self.plan.parts)]
        return all(math.isfinite(self.runtime.oracle.predict(task, worker))
                   for task in tasks for worker in self.runtime.specs if self.may_run(task.part, worker))

    def may_run(self, part: int, worker: WorkerSpec) -> bool:
        """Whether ``worker`` may run ``part`` (every worker may, unless the part is pinned)."""
        allowed = self.pin.get(part)
        return allowed is None or worker.name in allowed

    def batch_for(self, rate_per_s: float, max_batch: int) -> int:
        """The batch-size chooser's answer at ``rate_per_s`` (:func:`choose_batch`), on predictions
        read at most every CHOOSER_REFRESH_S: reading them takes ~0.4 ms (yolov8n, 3 workers, 4
        sizes) and the batcher asks on every arrival and every finished job, while the window
        medians behind them move over dozens of runs."""
        now = self.runtime.scheduler.clock.now()
        table = self._chooser_table
        if table is None or now - table[0] > CHOOSER_REFRESH_S:
            sizes = range(max_batch + 1)  # index = batch size; 0 unused
            table = self._chooser_table = (now, *self._sizes.update(
                [self.predicted_s(n) if n else math.nan for n in sizes],
                [self.rows_per_s(n) if n else math.nan for n in sizes]))
        return choose_batch(rate_per_s, table[1].__getitem__, max_batch, table[2].__getitem__)

    def submit_batch(self, feeds: dict[str, np.ndarray], rows: int, turn: _Turn | None
                     ) -> Future[dict[str, np.ndarray]]:
        """The batcher's way in: a batch it formed, counted for the chooser's load (SizeTable)."""
        self._sizes.formed(rows)
        return self.runtime._submit(self, feeds, rows, turn)

    def predicted_s(self, batch: int) -> float:
        """Predicted seconds of one batch: its parts one after another, each on its fastest kind
        (NaN until calibrated); the latency the batch-size chooser weighs."""
        total = 0.0
        for lengths in self._part_lengths(batch):
            total += min((s for s in lengths.values() if math.isfinite(s)), default=math.nan)
        return total

    def rows_per_s(self, batch: int) -> float:
        """Rows per second the workers sustain in batches of ``batch`` (NaN until calibrated): what
        the batch-size chooser's "keeps up" reads.  Each core group runs its wide worker or its
        narrow ones side by side, whichever delivers more; coreless workers (GPU streams, remote
        nodes) add their own.  A job's parts run one after another on a worker."""
        per_part = self._part_lengths(batch)
        seconds = {w.name: sum(lengths.get(w.name, math.nan) for lengths in per_part)
                   for w in self.runtime.specs}

        def rate(workers: list[WorkerSpec]) -> float:
            return sum(batch / seconds[w.name] for w in workers)

        total = 0.0
        for outer in self.runtime.specs:
            cores = set(outer.cores)
            if cores and any(cores < set(w.cores) for w in self.runtime.specs):
                continue  # a narrow worker: counted with its group
            inner = [w for w in self.runtime.specs if w.cores and set(w.cores) < cores]
            modes = [r for r in (rate([outer]), rate(inner) if inner else math.nan) if math.isfinite(r)]
            total += max(modes, default=math.nan)
        return total

    def _part_lengths(self, batch: int) -> list[dict[str, float]]:
        """Per part, the predicted seconds of a batch of ``batch`` on each worker that may run it."""
        shapes = {spec.name: tuple(batch if d is None else d for d in spec.shape) for spec in self.inputs}
        probe = Job("probe", [p.depends_on for p in self.plan.parts])
        lengths = []
        for stage, part in zip(self.stages, self.plan.parts):
            task = Task(stage, part.index, probe, footprint(shapes), batch)
            lengths.append({w.name: self.runtime.oracle.predict(task, w) for w in self.runtime.specs
                            if self.may_run(part.index, w)})
        return lengths

    def infer(self, inputs: Inputs, timeout: float | None = None) -> dict[str, np.ndarray]:
        """Run one request and wait for its outputs (``timeout`` seconds at most, if given, once the
        request's tasks that ran on this thread are done: see ``submit``'s ``run_here``)."""
        return self.submit(inputs, run_here=True).result(timeout)

    def _validate(self, inputs: Inputs, copy: bool) -> tuple[dict[str, np.ndarray], int]:
        expected = self._input_names
        if inputs.keys() != expected:
            missing, unknown = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
            raise InvalidInputError(f"model {self.name!r}: missing inputs {missing}, unexpected {unknown}; "
                                    f"it takes {sorted(expected)}")
        feeds: dict[str, np.ndarray] = {}
        batch: int | None = None  # rows, when an input has a batch dimension
        accepted = self._accepted_shapes
        for spec in self.inputs:
            value = inputs[spec.name]
            if type(value) is not np.ndarray:
                value = np.asarray(value)
            if value.dtype != spec.dtype:
                raise InvalidInputError(f"model {self.name!r} input {spec.name!r}: dtype {value.dtype}, "
                                        f"expected {spec.dtype}; convert with .astype(np.{spec.dtype})")
            shape = value.shape
            if (spec.name, shape) not in accepted:  # requests repeat a few shapes: check each once
                self._check_shape(spec, shape)
                if len(accepted) >= FOOTPRINT_CACHE:
                    accepted.clear()
                accepted.add((spec.name, shape))
            if shape and spec.shape[0] is None:
                if batch is not None and shape[0] != batch:
                    raise InvalidInputError(f"model {self.name!r}: inputs disagree on the batch size "
                                            f"({batch} and {shape[0]})")
                batch = shape[0]
            # the caller may reuse its array (unless it handed it over); the sessions read C order
            feeds[spec.name] = np.array(value, order="C", copy=True) if copy else np.ascontiguousarray(value)
        if batch is None:
            return feeds, 1
        if batch < 1:
            raise InvalidInputError(f"model {self.name!r}: empty batch; send at least one row")
        return feeds, batch

    def _check_shape(self, spec: InputSpec, shape: tuple[int, ...]) -> None:
        if len(shape) != len(spec.shape) or any(
                want is not None and got != want for got, want in zip(shape, spec.shape)):
            shown = tuple("N" if d is None else d for d in spec.shape)
            raise InvalidInputError(f"model {self.name!r} input {spec.name!r}: shape {shape}, "
                                    f"expected {shown} (N = batch)")


class Runtime:
    """Workers found on this machine, one scheduler, any number of loaded models."""

    def __init__(self, workers: str = "auto", policy: str = "dmda", narrow: bool = True,
                 perfmodel_dir: str | os.PathLike[str] | None = None, trace: bool = False,
                 instruments: Sequence[Instrument] = (), cluster: Any = None, gpu_streams: int = 2,
                 accelerators: Sequence[Provider] = (), numa_copies: bool = False) -> None:
        """``workers``: this machine's core groups (:func:`~hetsched.topology.core_groups`), beside
        ``gpu_streams`` workers on each GPU found (0: none; GPUs need onnxruntime-gpu) and one
        worker per accelerator, named by its execution provider as in ORT's ``providers`` list
        (e.g. ``[("VitisAIExecutionProvider", {"config_file": "vaip_config.json"})]``).
        ``cluster``: a ``distributed.Client`` or a Dask scheduler address; then the workers are the
        cluster's (a hetsched host on each Dask worker) instead of this machine's.
        ``numa_copies``: on a machine of several NUMA nodes, copy each task's inputs to its worker's
        node while the worker is busy (:mod:`hetsched.placement`; not measured on such a machine yet)."""
        self.executor: Platform
        if cluster is not None:
            from hetsched.cluster.executor import DaskExecutor

            self.executor = DaskExecutor(cluster, self._task_io, narrow=narrow)
        else:
            topology = discover()
            gpus = discover_gpus() if gpu_streams else []
            self.executor = ThreadExecutor(cpu_workers(topology, workers, narrow)
                                           + gpu_workers(gpus, gpu_streams, topology)
                                           + accelerator_workers(accelerators, topology), self._run_task,
                                           self._task_io, topology.node_cores() if numa_copies else None)
        self.store = PerfModelStore(perfmodel_dir) if perfmodel_dir is not None else None
        history = self.store.load_history() if self.store else HistoryModel()
        self._recorded = HistoryModel(min_samples=history.min_samples)  # what this run learned
        # Samples are kept apart only when there is a store to merge them into (a second lock per task).
        self.oracle = (_RecordingOracle(history, self._recorded, self.executor.bus) if self.store
                       else HistoryOracle(history, self.executor.bus))
        self.tracer = TraceRecorder() if trace else None
        self.scheduler = Scheduler(make_policy(policy), list(self.executor.specs), clock=MonotonicClock(),
                                   executor=self.executor, perf=self.oracle,
                                   instruments=[*instruments, *([self.tracer] if self.tracer else [])],
                                   backlog=self._backlogged)
        self.executor.report = self.scheduler.task_done
        self.executor.on_transfer = self.tracer.on_transfer if self.tracer else None
        self.executor.on_join = self._joined
        self.executor.on_leave = self._left
        self.models: dict[str, Model] = {}
        self._batchers: tuple[DynamicBatcher, ...] = ()  # of the loaded models that batch
        self._slots = self._count_slots()
        self._sequence = itertools.count()
        # id(request's _JobData) -> (its future, its model), from admission to answer (a resent request
        # keeps its entry): what close() drains and unload() waits for
        self._in_flight: dict[int, tuple[Future[dict[str, np.ndarray]], Model]] = {}
        # accepted requests waiting for room (see _admit), and batchers waiting for their turn to send
        # a batch (_take_turn): a line per model, the models served in turn
        self._held: Lines[_JobData | DynamicBatcher] = Lines()
        self._turns = 0  # room kept for batchers whose turn came, until their batch is admitted
        self._releasing = threading.local()  # whether this thread is in _release_held already
        # The hot paths take the plain lock (a C call); only close() and unload() wait, on the condition
        # over that same lock, and a finishing job notifies it only while someone waits.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._waiting = 0
        self._closed = False
        log.info("runtime: policy %s, workers %s", policy, [w.name for w in self.specs])

    @property
    def specs(self) -> list[WorkerSpec]:
        """The workers scheduled now (on a cluster they come and go)."""
        return list(self.scheduler.workers)

    def _count_slots(self) -> int:
        """How many jobs can run at once: one per core (narrow workers), or per worker without cores."""
        cores = {core for spec in self.specs for core in spec.cores}
        return len(cores | {spec.name for spec in self.specs if not spec.cores})

    def _joined(self, spec: WorkerSpec) -> None:
        self.scheduler.add_worker(spec)
        self._slots = self._count_slots()
        self._release_held()
        self._poke_batchers()
        log.info("worker %s joined (%s)", spec.name, spec.arch)

    def _left(self, spec: WorkerSpec) -> None:
        self.scheduler.remove_worker(spec.name)
        self._slots = self._count_slots()
        self._release_held()
        self._poke_batchers()
        log.warning("worker %s left; its queued tasks are placed on the others", spec.name)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, model: str | os.PathLike[str] | bytes | onnx.ModelProto,
             ratios: Sequence[float] = (1.0,), name: str | None = None, profile: bool = False,
             batch: int = 1, max_batch: int = 1, max_queue_delay_s: float = 0.002,
             max_queue: int | None = None, pin: Mapping[int, Sequence[str]] | None = None) -> Model:
        """Partition ``model`` by ``ratios`` and create every part's session on every worker now.

        ``max_batch`` > 1 turns on dynamic batching: requests wait at most
        ``max_queue_delay_s`` to join a batch whose size the chooser picks for the
        observed arrival rate (``batch`` is the size tensor bytes are weighed at).
        ``max_queue`` bounds the requests accepted and not yet answered: past it,
        ``submit`` raises OverloadedError at once instead of growing memory.
        ``pin`` maps a part's index to the names of the only workers that may run it (say, part 0
        on one cluster node and part 1 on another); unpinned parts go wherever the policy says.
        """
        if max_queue is not None and max_queue < 1:
            raise UsageError(f"max_queue must be at least 1, got {max_queue}")
        if self._closed:
            raise RuntimeClosedError("this runtime is closed; create a new one to load models")
        if name is None:
            is_path = isinstance(model, (str, os.PathLike))
            stem = os.path.splitext(os.path.basename(str(model)))[0]
            name = stem if is_path else f"model{len(self.models)}"
        if name in self.models:
            raise UsageError(f"a model named {name!r} is loaded already; unload it or pick another name")
        graph = build_graph(model, batch=batch)
        if profile:
            from perfmodels.profile import profile as profile_nodes

            costs = profile_nodes(graph)
            graph = graph.with_costs(costs.seconds, costs.arch, costs.method)
        result = partition(graph, list(ratios), source_label=str(model) if isinstance(model, str) else name)
        pins = self._check_pin(pin or {}, len(result.parts))
        blobs = [part.model.SerializeToString() for part in result.parts]
        stages = [stage_id(blob) for blob in blobs]
        stage_models = [StageModel(s, b, p.inputs, p.outputs) for s, b, p in zip(stages, blobs, result.parts)]
        self.executor.load(stage_models)
        initializers = {t.name for t in graph.model.graph.initializer}
        input_values = [v for v in graph.model.graph.input if v.name not in initializers]
        loaded = Model(self, name, result.plan, stages, input_values, max_queue, pins)
        if max_batch > 1:
            if not rows_independent(graph.model):
                raise UsageError(f"model {name!r}: the outputs of a batch differ from its requests run "
                                 "one by one (rows depend on each other), so requests cannot be batched "
                                 "together; load it with max_batch=1")
            loaded.batcher = DynamicBatcher(
                loaded.submit_batch, max_batch,
                max_queue_delay_s,
                self.scheduler.clock, target=lambda rate: loaded.batch_for(rate, max_batch),
                may_leave=self._batch_may_leave, take_turn=lambda batcher: self._take_turn(loaded, batcher),
                leave_turns=lambda batcher: self._leave_turns(loaded, batcher))
        self.models[name] = loaded
        self._batchers = tuple(m.batcher for m in self.models.values() if m.batcher is not None)
        return loaded

    def _check_pin(self, pin: Mapping[int, Sequence[str]], parts: int) -> dict[int, frozenset[str]]:
        names = {spec.name for spec in self.specs}
        for part, workers in pin.items():
            if not 0 <= part < parts:
                raise UsageError(f"pin names part {part}, but the plan has parts 0..{parts - 1}")
            unknown = sorted(set(workers) - names)
            if unknown or not workers:
                raise UsageError(f"pin of part {part}: unknown workers {unknown or 'none given'}; "
                                 f"the workers are {sorted(names)}")
        return {part: frozenset(workers) for part, workers in pin.items()}

    def unload(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is None:
            raise UsageError(f"no model named {name!r} is loaded; loaded: {sorted(self.models)}")
        if model.batcher is not None:
            model.batcher.close()
        self._batchers = tuple(m.batcher for m in self.models.values() if m.batcher is not None)
        model.unloaded = True
        with self._idle:  # its requests in flight (and waiting for room) finish first
            self._waiting += 1
            self._idle.wait_for(lambda: all(m is not model for _, m in self._in_flight.values())
                                and not any(isinstance(data, _JobData) and data.model is model
                                            for data in self._held)
                                and not self._turns, CLOSE_TIMEOUT_S)  # a batch being formed may be its own
            self._waiting -= 1
        still_used = {stage for other in self.models.values() for stage in other.stages}
        unused = [stage for stage in model.stages if stage not in still_used]  # a model loaded twice shares
        self.executor.unload(unused)

    def _submit(self, model: Model, feeds: dict[str, np.ndarray], batch: int, turn: _Turn | None = None,
                caller: threading.Thread | None = None) -> Future[dict[str, np.ndarray]]:
        future: Future[dict[str, np.ndarray]] = Future()
        data = _JobData(model, feeds, batch, future, dict(feeds), caller,
                        arrived_s=self.scheduler.clock.now())
        self._admit(data, turn)
        return future

    def _admit(self, data: _JobData, turn: _Turn | None = None) -> None:
        """Start the request's job now if there is room (:meth:`_room`) and nothing waits for it,
        else hold it until a job ends, in its model's line (first come first served within a
        model, the models in turn: :mod:`hetsched.admission`): a request placed when a worker
        frees up is placed on what is known then, where one placed at arrival behind a backlog is
        placed on guesses (a worker that turns out slower keeps its queue while the others idle;
        Triton's instances take requests from one queue as they free up).  Batching models wait
        in their batcher, which takes its place in its model's line (:meth:`_take_turn`);
        ``turn``: the room kept for a batch whose turn came, which it takes now."""
        # One critical section decides and records: a request is always in _held or _in_flight (or,
        # as a batch being formed, in the room kept for its turn), which close() waits on, never
        # between them.
        with self._lock:
            if turn is not None:  # kept before any close(), which waits for it
                self._use_turn(turn)
                held = False
            else:
                self._check_open()
                held = bool(self._held) or not self._room()
            if held:
                data.held = True
                self._held.append(data.model, data)
            else:
                self._in_flight[id(data)] = (data.future, data.model)
        if held:
            self._release_held()  # room may have freed up meanwhile
        else:
            self._start_job(data)

    def _release_held(self) -> None:
        """Start held requests while there is room (after a job ends, or workers change).

        Not reentrant per thread: a job that fails at once ends inside ``_start_job`` and would
        call back in here, a few frames per held request; the outer loop drains them instead."""
        if getattr(self._releasing, "active", False):
            return
        self._releasing.active = True
        try:
            while True:
                with self._lock:
                    if not self._held or not self._room():
                        return
                    held = self._held.popleft()
                    batcher, start = None, None
                    if isinstance(held, DynamicBatcher):  # its turn: the room is kept for the batch
                        batcher, turn = held, _Turn()     # it forms now, until _admit takes it
                        self._turns += 1
                    elif held.future.cancelled():  # its caller gave up while it waited
                        if self._waiting:  # close() or unload() may be waiting for the queue to empty
                            self._idle.notify_all()
                    else:
                        start = held
                        self._in_flight[id(held)] = (held.future, held.model)
                if batcher is not None:
                    self._serve_turn(batcher, turn)
                elif start is not None:
                    self._start_job(start)
        finally:
            self._releasing.active = False

    def _start_job(self, data: _JobData) -> None:
        """One job of the request in ``data``, which is in ``_in_flight`` already (a resent request
        starts a new one); if it cannot be submitted, the request is answered with the error."""
        model, feeds = data.model, data.feeds
        sequence = next(self._sequence)
        data.attempts += 1
        job = Job(f"{model.name}{JOB_SEPARATOR}{sequence}", model.depends_on, payload=data,
                  on_done=self._job_done)
        request_footprint, parts = model._shaped(feeds)
        batch, priority = data.batch, -sequence
        job.tasks = [Task(stage, index, job, request_footprint, batch, priority, dict(nbytes), dict(nodes),
                          allowed) for stage, index, nbytes, nodes, allowed in parts]
        if self.tracer is not None and data.held:  # its wait in the line, before the scheduler saw it
            self.tracer.on_arrival(job.name, data.arrived_s)
        try:
            if data.caller is threading.current_thread():  # (not when held, started by another thread)
                self.executor.run_here(job, self.scheduler.submit)
            else:
                self.scheduler.submit(job)
        except BaseException as exc:  # an accepted request is always answered
            with self._lock:
                self._in_flight.pop(id(data), None)
                if self._waiting:
                    self._idle.notify_all()
            # (answered already when an interrupt came while this thread ran one of its tasks)
            if not data.future.done() and data.future.set_running_or_notify_cancel():
                data.future.set_exception(exc)
            self._poke_batchers()
            if not isinstance(exc, Exception):
                raise  # an interrupt of the caller's thread: the caller sees it

    def _batch_may_leave(self) -> bool:
        """Whether a batcher should send what it has rather than let the batch grow: a worker slot
        is free (jobs in flight < cores in use), or requests wait for room already, so the batch
        waits for its turn anyway and is sized when the turn comes."""
        return len(self._in_flight) + self._turns < self._slots or bool(self._held)

    def _take_turn(self, model: Model, batcher: DynamicBatcher) -> bool:
        """Whether ``batcher`` may send a batch now (room, and nothing waiting); if not, it takes its
        place in its model's line and its turn comes in ``_release_held`` (a batcher that waited
        until nothing was held starved while another model was overloaded)."""
        with self._lock:
            if not self._held and self._room():
                return True
            self._held.append(model, batcher)
            return False

    def _serve_turn(self, batcher: DynamicBatcher, turn: _Turn) -> None:
        """Let ``batcher`` send its batch into the room kept for it; room it did not use is freed."""
        try:
            batcher.serve_turn(turn)
        except Exception:  # the job whose end freed the room must still be answered
            log.exception("the batcher of a model failed to form its batch")
        finally:
            with self._lock:
                self._use_turn(turn)

    def _use_turn(self, turn: _Turn) -> None:
        """(Under the lock.)  The room kept for ``turn`` is taken (by its batch) or given up, once."""
        if not turn.used:
            turn.used = True
            self._turns -= 1
            if self._waiting:
                self._idle.notify_all()

    def _leave_turns(self, model: Model, batcher: DynamicBatcher) -> None:
        """A closing batcher flushes what it holds: its turn, if still queued, is dropped."""
        with self._lock:
            self._held.remove(model, batcher)
            if self._waiting:
                self._idle.notify_all()

    def _room(self) -> bool:
        """Whether a job started now would wait behind less than the lookahead (about one job
        queued behind each worker slot's running one), or there is no worker to wait for (the job
        then fails at once rather than wait for one).  The lookahead keeps every worker fed (and
        prefetching) while placements and batch sizes are still decided on what is known when
        they run; past it, requests wait in their batcher or the admission queue."""
        return not self._slots or len(self._in_flight) + self._turns < LOOKAHEAD * self._slots

    def _backlogged(self) -> bool:
        """Whether requests wait for room (held, or in a batcher while there is none): the scheduler's
        policy reads it as past capacity, since what it is pushed then is the rate the workers
        serve, not the offered one.  (A batch that just left on its turn is pushed with the held
        line perhaps empty, while the requests behind it wait in their batcher.)"""
        if self._held:
            return True
        if self._room():
            return False
        for batcher in self._batchers:  # a plain loop: the policy asks on every push
            if batcher.waiting:
                return True
        return False

    def _poke_batchers(self) -> None:
        """Room or capacity may have freed up: waiting batches may go."""
        for batcher in self._batchers:
            batcher.poke()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError("this runtime is closed; no new requests are accepted")

    @staticmethod
    def _run_task(task: Task, session: Any) -> None:
        """On a worker thread: run one part on the job's own tensors."""
        data: _JobData = task.job.payload
        model, values = data.model, data.values
        inputs, names, consumed, _ = model.part_io[task.part]
        outputs = dict(zip(names, session.run(names, {n: values[n] for n in inputs})))
        values.update(outputs)
        if consumed:  # where the tensors other parts read are now, for their transfer estimates
            assert task.worker is not None
            task.job.place({n: outputs[n].nbytes for n in consumed}, {task.worker.memory_node})

    @staticmethod
    def _task_io(task: Task) -> TaskIO:
        """What a cluster worker must read, compute, keep and send back for ``task``."""
        data: _JobData = task.job.payload
        inputs, outputs, keep, reply = data.model.part_io[task.part]
        return TaskIO(data.values, inputs, outputs, keep, reply)

    def _job_done(self, job: Job, error: BaseException | None) -> None:
        data: _JobData = job.payload
        self.executor.hand_over()  # the callbacks below run on this thread, and may block
        self.executor.release(job)
        if isinstance(error, WorkerLostError) and self._resend(job, data, error):
            return
        future = data.future
        outcome: dict[str, np.ndarray] | BaseException
        try:
            outcome = ({n: data.values[n] for n in data.model.plan.model_outputs} if error is None
                       else self._failure(job, error))
        except Exception as exc:  # a bug of ours: the caller gets it rather than a wait forever
            outcome = exc
        data.values.clear()
        with self._lock:
            self._in_flight.pop(id(data), None)
            if self._waiting:
                self._idle.notify_all()
        if self._held:  # a slot is free
            self._release_held()
        if self._batchers:
            self._poke_batchers()
        # The answer last: it wakes the caller, who would otherwise wait for this thread's bookkeeping.
        if not future.set_running_or_notify_cancel():
            return  # the caller cancelled it while queued
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    @staticmethod
    def _failure(job: Job, error: BaseException) -> TaskFailedError:
        """The error a failed request is answered with: which part failed where, and why."""
        failed = job.failed_task
        worker = failed.worker.name if failed and failed.worker else "?"
        part = failed.part if failed else "?"
        message = f"{job.name}: part {part} failed on {worker}: {type(error).__name__}: {error}"
        wrapped = TaskFailedError(message, failed, worker)
        wrapped.__cause__ = error
        return wrapped

    def _resend(self, job: Job, data: _JobData, error: WorkerLostError) -> bool:
        """Run a request whose worker died again from its inputs, if attempts are left."""
        if data.attempts >= MAX_REQUEST_ATTEMPTS or data.future.done() or self._closed:
            return False
        log.warning("%s: %s; resending the request (attempt %d of %d)", job.name, error,
                    data.attempts + 1, MAX_REQUEST_ATTEMPTS)
        data.values = dict(data.feeds)
        self._start_job(data)  # still in _in_flight: close() waits for it
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop accepting requests, finish those in flight, stop the workers, save what was learned."""
        for model in self.models.values():  # flush what waits for a batch
            if model.batcher is not None:
                model.batcher.close()
        with self._idle:
            if self._closed:
                return
            self._closed = True
            self._waiting += 1
            drained = self._idle.wait_for(lambda: not self._in_flight and not self._held and not self._turns,
                                          timeout)
            self._waiting -= 1
            stranded = [future for future, _ in self._in_flight.values()] + [
                d.future for d in self._held if isinstance(d, _JobData)]
            self._held.clear()
        if not drained:
            log.warning("closing with %d requests still in flight after %.0f s", len(stranded), timeout)
        self.executor.stop()
        for future in stranded:  # never leave a caller waiting forever
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeClosedError(f"the runtime closed after {timeout:.0f} s "
                                                        "before this request finished"))
        if self.store is not None:
            self.store.add_history(self._recorded)


# a request's footprint, and per part: stage, index, input bytes, input nodes, allowed workers
_PartFields = tuple[str, int, dict[str, int], dict[str, frozenset[str]], frozenset[str] | None]
_Shaped = tuple[str, tuple[_PartFields, ...]]


@dataclass(eq=False)
class _Turn:
    """The room kept for one batcher's turn (see Runtime._release_held), taken or given up once."""

    used: bool = False


@dataclass
class _JobData:
    """One request: its inputs, its future, and the tensors of its current job (name -> value)."""

    model: Model
    feeds: dict[str, np.ndarray]
    batch: int
    future: Future[dict[str, np.ndarray]]
    values: dict[str, Any]  # arrays here, or references to tensors a cluster worker keeps
    caller: threading.Thread | None = None  # a caller that waits for the answer on its thread (run_here)
    attempts: int = 0
    arrived_s: float = math.nan  # when the runtime got it
    held: bool = False  # it waited for room in the admission line before its job started


class _RecordingOracle(HistoryOracle):
    """Predicts from the full history; also keeps this run's samples apart, to merge into the store."""

    def __init__(self, history: HistoryModel, recorded: HistoryModel, bus: BusModel | None = None) -> None:
        super().__init__(history, bus)
        self.recorded = recorded

    def record(self, task: Task, worker: WorkerSpec, duration_s: float) -> None:
        super().record(task, worker, duration_s)
        if duration_s > 0:
            self.recorded.record(HistoryKey(task.stage, worker.arch, task.footprint), duration_s)


def rows_independent(model: onnx.ModelProto) -> bool:
    """Whether each row's answer is independent of the other rows of its batch, so requests may be
    batched together (a batch-wide reduction feeding an If, a trip count from the batch size... are not).

    Probed, not proved: for a few random pairs of requests, the joint run must equal the two
    separate runs, row for row.
    """
    from hetsched.sequential import run_whole

    for seed in range(3):
        first, second = random_feeds(model, 1, seed=seed), random_feeds(model, 2, seed=seed + 100)
        joint = run_whole(model, {n: np.concatenate([first[n], second[n]]) for n in first})
        apart = [run_whole(model, first), run_whole(model, second)]
        for output, value in joint.items():
            rows = [part[output] for part in apart]
            if value.ndim == 0 or any(r.ndim == 0 for r in rows) or not (
                    value.shape[0] == 3 and np.allclose(value, np.concatenate(rows), rtol=1e-4, atol=1e-5)):
                return False
    return True


def _input_spec(value: onnx.ValueInfoProto) -> InputSpec:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return InputSpec(value.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims)
