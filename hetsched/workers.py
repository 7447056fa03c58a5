"""Real workers: one thread per worker, pinned to its cores, owning one ONNX Runtime session per stage.

This is the only layer of the runtime that touches ONNX Runtime.  A worker's sessions use
its device's execution provider (:func:`providers`): the CPU's, or for a GPU worker the CUDA
provider on its device, or an accelerator's own, with the CPU's for what the device cannot
run; a GPU or accelerator worker whose session did not get its provider (a CUDA or cuDNN
library that did not load: ONNX Runtime then warns and runs on the CPU) fails its load
instead of passing CPU runs off as the device's.
A CPU worker thread pins itself with ``os.sched_setaffinity`` (on Linux, pid 0 is the calling
thread) to the first core of its group, then creates its sessions, so ORT's own
threads are made by a pinned thread.  A session of a K-core worker runs K
intra-op threads: the calling thread plus K-1 that ORT pins through
``session.intra_op.thread_affinities`` (1-based logical processor ids, one
entry per extra thread) — setting the thread count turns ORT's own pinning off,
so we set it ourselves.  Sessions are created at load time, never on a request.

:class:`ThreadExecutor` is the scheduler's executor: ``start`` hands a task to
its worker's inbox; the worker runs it and reports with ``scheduler.task_done``.
A caller that will wait for its request on its own thread (``Model.infer``) runs
the request's tasks that start while it submits itself instead (:meth:`ThreadExecutor.run_here`),
pinned for the time of the task to its worker's first core: handing a task to a sleeping
thread and the answer back to another costs two wake-ups, each several times the
scheduler's own work on a small model.  The worker stays the unit of placement: its
slot is taken, and no other task starts on it meanwhile.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from hetsched import numa
from hetsched.affinity import name_os_thread, pin_thread
from hetsched.errors import DeviceUnavailableError
from hetsched.placement import NumaPlacer, host_node
from hetsched.platform import Report, StageModel, TaskIO, TransferReport
from hetsched.task import Job, Task, WorkerSpec
from perfmodels.measure import session_options as measured_session_options
from perfmodels.transfer import BusModel

log = logging.getLogger(__name__)

_STOP = object()
_SESSION_CREATION = threading.Lock()


def _thread_ids() -> set[int]:
    """This process's thread ids (Linux: /proc/self/task)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def session_options(worker: WorkerSpec) -> Any:
    """ORT options for a session on ``worker``: its core count, extra threads pinned to its cores
    and spinning during a run (the scheduler gives no other session those cores meanwhile)."""
    options = measured_session_options(max(1, len(worker.cores)), spin=True)
    if len(worker.cores) > 1:
        affinities = ";".join(str(core + 1) for core in worker.cores[1:])
        options.add_session_config_entry("session.intra_op.thread_affinities", affinities)
    return options


# Batches change shape from one task to the next: cuDNN's exhaustive search would time every new
# shape in every session (the perf history would learn those runs), and an arena grown by powers
# of two holds memory for sizes that are not asked again, once per stream and stage.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}


def providers(worker: WorkerSpec) -> list[Any]:
    """The execution providers of a session on ``worker``, in ONNX Runtime's order of preference."""
    if worker.device == "cuda":
        return [("CUDAExecutionProvider", {"device_id": str(worker.device_index), **CUDA_OPTIONS}),
                "CPUExecutionProvider"]
    if worker.device == "accelerator":
        return [(worker.arch, dict(worker.provider_options)), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Worker:
    """A thread (pinned to its cores, if it has any) running the tasks handed to it; sessions keyed
    by stage."""

    def __init__(self, spec: WorkerSpec, on_done: Callable[[Task, BaseException | None], None],
                 run_task: Callable[[Task, Any], None]) -> None:
        self.spec = spec
        self._on_done = on_done
        self._run_task = run_task
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # run(task) hands a task to the thread: a task alone (control messages are tuples), put
        # with the queue's own method, no Python frame between the scheduler and the queue
        self.run: Callable[[Task], None] = self._inbox.put
        self.sessions: dict[str, Any] = {}
        self.pinned: tuple[int, ...] = ()
        self.ort_threads: dict[int, tuple[int, ...]] = {}  # ORT intra-op thread id -> its cores
        self._thread = threading.Thread(target=self._loop, name=f"hetsched-{spec.name}", daemon=True)
        self._thread.start()

    def load(self, stages: list[StageModel]) -> Future[None]:
        """Create sessions for ``stages`` on the worker's own (pinned) thread."""
        future: Future[None] = Future()
        self._inbox.put(("load", stages, future))
        return future

    def unload(self, stage_ids: list[str]) -> None:
        self._inbox.put(("unload", stage_ids, None))

    def stop(self) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout=30)

    def run_here(self, task: Task) -> None:
        """Run ``task`` on the calling thread, pinned to this worker's first core meanwhile (its
        session's other threads are pinned to the other cores already), then unpinned again."""
        if not hasattr(os, "sched_setaffinity"):
            self._execute(task)
            return
        mask = os.sched_getaffinity(0)
        try:
            pin_thread((self.spec.cores[0],))  # without the GIL while the thread moves (affinity.py)
        except OSError:  # outside the caller's cpuset: run unpinned rather than not at all
            self._execute(task)
            return
        try:
            self._execute(task)
        finally:
            pin_thread(mask)

    def _loop(self) -> None:
        name_os_thread()
        self._pin()
        while True:
            item = self._inbox.get()
            if item.__class__ is Task:
                self._execute(item)
                continue
            if item is _STOP:
                return
            kind, payload, future = item
            if kind == "load":
                self._load(payload, future)
            else:
                for stage in payload:
                    self.sessions.pop(stage, None)

    def _pin(self) -> None:
        if self.spec.cores and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, {self.spec.cores[0]})
                self.pinned = tuple(sorted(os.sched_getaffinity(0)))
            except OSError as exc:  # e.g. a core outside the container's cpuset
                log.warning("%s: could not pin to core %d (%s)", self.spec.name, self.spec.cores[0], exc)

    def _load(self, stages: list[StageModel], future: Future[None]) -> None:
        try:
            for stage in stages:
                if stage.stage not in self.sessions:
                    self.sessions[stage.stage] = self._new_session(stage.model_bytes)
            future.set_result(None)
        except BaseException as exc:  # reported to the loader, the worker keeps serving
            future.set_exception(exc)

    def _new_session(self, model_bytes: bytes) -> Any:
        """A session whose extra intra-op threads are pinned to the worker's other cores.

        ONNX Runtime 1.32 on Linux was seen to leave its threads on the creating thread's
        mask despite ``session.intra_op.thread_affinities`` (checked in /proc), so the
        threads a session creates are found and pinned here; ``ort_threads`` records it.
        """
        import onnxruntime as ort

        wanted = providers(self.spec)
        device_provider = wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
        if device_provider not in ort.get_available_providers():
            self._unavailable(device_provider, f"this onnxruntime has {ort.get_available_providers()}")
        with _SESSION_CREATION:  # one creation at a time, so new threads belong to this session
            before = _thread_ids()
            session = ort.InferenceSession(model_bytes, session_options(self.spec), providers=wanted)
            created = sorted(_thread_ids() - before)
        if device_provider not in session.get_providers():  # listed, but its libraries did not load
            self._unavailable(device_provider, f"the session runs on {session.get_providers()}")
        if self.spec.device != "cpu":  # a device error fails the task, not re-runs it on the CPU unseen
            session.disable_fallback()
        extra = self.spec.cores[1:]
        for index, tid in enumerate(created):
            if extra:
                core = extra[index % len(extra)]
                try:
                    os.sched_setaffinity(tid, {core})
                    self.ort_threads[tid] = (core,)
                except OSError as exc:
                    log.warning("%s: could not pin ORT thread %d to core %d (%s)",
                                self.spec.name, tid, core, exc)
        return session

    def _unavailable(self, provider: str, why: str) -> None:
        raise DeviceUnavailableError(
            f"worker {self.spec.name} ({self.spec.arch}): ONNX Runtime did not enable {provider} ({why}); "
            "install the build that has it and check that its libraries load (for CUDA: onnxruntime-gpu "
            "and the CUDA and cuDNN versions it was built for), or run without this device (gpu_streams=0)")

    def _execute(self, task: Task) -> None:
        error: BaseException | None = None
        cpu = time.thread_time()
        try:
            self._run_task(task, self.sessions[task.stage])
        except BaseException as exc:  # the task's error goes to its request, never lost
            error = exc
        task.cpu_s = time.thread_time() - cpu
        try:
            self._on_done(task, error)
        except Exception:  # a bug of ours; keep serving the other tasks
            log.exception("%s: reporting %s failed", self.spec.name, task)
        if error is not None and not isinstance(error, Exception):
            raise error  # an interrupt (Ctrl-C of a caller running the task here): reported, then passed on


class _Caller(threading.local):
    """Per thread: the job whose tasks this thread runs itself (ThreadExecutor.run_here), and the
    task of it that started last, not run yet."""

    job: Job | None = None
    task: Task | None = None


class ThreadExecutor:
    """The platform of this machine's worker threads: core groups and GPU streams."""

    def __init__(self, specs: list[WorkerSpec], run_task: Callable[[Task, Any], None],
                 task_io: Callable[[Task], TaskIO] | None = None,
                 numa_nodes: Mapping[int, Sequence[int]] | None = None) -> None:
        """``task_io`` (a task's tensors) and ``numa_nodes`` (node -> its cores): copy each task's
        inputs to its worker's NUMA node (:mod:`hetsched.placement`) when there are several nodes;
        without them, never."""
        self._run_task = run_task
        self._task_io = task_io
        self.specs = specs
        self.workers = {spec.name: Worker(spec, self._done, run_task) for spec in specs}
        self.report: Report | None = None
        self.on_transfer: TransferReport | None = None
        self.on_join: Callable[[WorkerSpec], None] | None = None  # a machine's workers never change
        self.on_leave: Callable[[WorkerSpec], None] | None = None
        self.bus = BusModel()  # every worker reads host memory: nothing must move
        self._caller = _Caller()
        self.placer = (NumaPlacer(numa_nodes) if task_io is not None and numa_nodes is not None
                       and len(numa_nodes) > 1 and numa.supported() else None)

    def load(self, stages: list[StageModel]) -> None:
        for future in [worker.load(stages) for worker in self.workers.values()]:
            future.result()

    def unload(self, stage_ids: list[str]) -> None:
        for worker in self.workers.values():
            worker.unload(stage_ids)

    def release(self, job: Job) -> None:
        """A job's tensors live in its own dictionary, which the runtime clears."""

    def _done(self, task: Task, error: BaseException | None) -> None:
        assert self.report is not None, "the runtime connects the executor to its scheduler"
        self.report(task, error)

    def start(self, task: Task, worker: WorkerSpec) -> None:
        caller = self._caller
        # A GPU or accelerator task stays on its worker's thread: a CUDA session keeps state per
        # calling thread, and sets the thread's current device.
        if caller.job is task.job and caller.task is None and worker.cores:
            caller.task = task  # run_here runs it on this thread once the scheduler lets go
        else:
            self.workers[worker.name].run(task)

    def hand_over(self) -> None:
        """Send the task this thread kept to run here to its worker instead: callbacks are about to
        run on this thread, and one may block (say, on another request that waits for this worker)."""
        caller = self._caller
        if caller.task is not None:
            task, caller.task = caller.task, None
            assert task.worker is not None
            self.workers[task.worker.name].run(task)

    def run_here(self, job: Job, submit: Callable[[Job], None]) -> None:
        """``submit(job)``, then run on this thread each task of ``job`` that starts on it meanwhile
        (at once, or when a task run here ends and the next part's worker is free); the tasks that
        start later, on other threads, run on their workers.  Not nested: a thread already running
        a job's tasks here submits another job plainly."""
        caller = self._caller
        if caller.job is not None:
            submit(job)
            return
        caller.job = job
        try:
            submit(job)
            while (task := caller.task) is not None:
                caller.task = None
                assert task.worker is not None
                self.workers[task.worker.name].run_here(task)
        finally:
            caller.job = None
            self.hand_over()  # one that started as submit raised, or as an interrupt came: its worker runs it

    def prefetch(self, task: Task, worker: WorkerSpec) -> None:
        """Every worker can read host memory; where the core workers span NUMA nodes, the task's
        inputs are copied to its worker's node meanwhile."""
        if self.placer is not None and worker.cores:
            assert self._task_io is not None
            io = self._task_io(task)
            self.placer.prefetch(task, io.values, io.inputs, host_node(worker), self.on_transfer)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if self.placer is not None:
            self.placer.stop()
