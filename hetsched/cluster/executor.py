"""The Dask platform: every Dask worker is a hetsched worker; tasks run on their hetsched hosts.

``Runtime(cluster=client_or_address)`` builds a :class:`DaskExecutor`.  It
installs :class:`~hetsched.cluster.host.HetschedHost` on every worker, measures
the network (client <-> worker, worker <-> worker) into the bus model the dmda
policy reads, ships each part model once per worker, and runs each task by one
direct call to the chosen worker's host.  The request's inputs travel inline
with the task; a part's outputs that later parts read stay on its worker and
the next worker reads them from there (peer to peer); the model's outputs come
back in the answer.

dmda assigns a task to a worker's queue while that worker may still be busy;
then the task's inputs are sent at once (:meth:`DaskExecutor.prefetch`), so
moving them overlaps the running task, as StarPU's prefetch does.

Workers come and go: a watcher compares the scheduler's list of workers with
ours every ``watch_interval_s``.  A new worker gets the loaded models and its
links measured, then tasks.  A worker that left (or whose call failed) is taken
out of scheduling at once; its running calls end with :class:`WorkerLostError`,
and the runtime resends those requests from their inputs.  Every call is
bounded by ``run_timeout_s``.

Completions are reported from one thread of ours, never from Dask's event loop,
so the scheduler and the callers' callbacks cannot stall Dask's communication.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from distributed import Client
from distributed.protocol import to_serialize

from hetsched.clock import MonotonicClock
from hetsched.cluster.host import PLUGIN_NAME, WIDE, HetschedHost
from hetsched.cluster.network import calibrate_links, memory_node
from hetsched.errors import RemoteTaskError, UsageError, WorkerLostError
from hetsched.platform import CLIENT_MEMORY, Report, StageModel, TaskIO, TransferReport
from hetsched.task import Job, Task, WorkerSpec
from perfmodels.transfer import BusModel

log = logging.getLogger(__name__)

RUN_TIMEOUT_S = 300.0
WATCH_INTERVAL_S = 0.5
SUSPECT_S = 10.0  # a worker whose call failed is not taken back before this, even if still listed
LOAD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Kept:
    """A tensor kept on the worker at ``address`` (what a request's values hold instead of an array)."""

    address: str
    nbytes: int


def worker_specs(address: str, threads: int, first_slot: int, narrow: bool = True) -> list[WorkerSpec]:
    """The hetsched workers of one Dask worker with ``threads`` threads, as on a local core group:
    a wide one using every thread (listed first) and, with ``narrow``, one per thread.

    Their ``cores`` are slots numbered from ``first_slot`` (unique in the runtime), which keep the
    scheduler from running the wide one and a narrow one at once, as for local cores.  Workers on
    one host share a perf model kind (same hardware, same thread count).
    """
    host = address.split("://")[-1].rsplit(":", 1)[0]
    name = f"dask@{address.split('://')[-1]}"
    slots = tuple(range(first_slot, first_slot + threads))
    specs = [WorkerSpec(name, f"cpu:{threads}t@{host}", memory_node(address), slots, "remote")]
    if narrow and threads > 1:
        specs += [
            WorkerSpec(f"{name}/{lane}", f"cpu:1t@{host}", memory_node(address), (slot,), "remote")
            for lane, slot in enumerate(slots)
        ]
    return specs


def lane_of(worker: WorkerSpec) -> int:
    """Which of its Dask worker's lanes a hetsched worker is (WIDE or a narrow index)."""
    _, sep, lane = worker.name.rpartition("/")
    return int(lane) if sep else WIDE


def worth_sending_ahead(
    bus: BusModel, moves: list[tuple[str, int]], destination: str, threshold_s: float | None = None
) -> bool:
    """Whether moving ``moves`` ((source node, bytes) each) to ``destination`` takes longer on their
    links' bandwidth than one more round trip costs (the links' latency, or ``threshold_s``): only
    then does sending a task's inputs ahead, in a call of their own, pay."""
    seconds, latency = 0.0, 0.0
    for source, nbytes in moves:
        link = bus.link(source, destination)
        if link is None:
            return True  # not measured: assume the network is slow
        link_latency, bandwidth = link.fitted()
        seconds += nbytes / bandwidth
        latency = max(latency, link_latency)
    return seconds > (latency if threshold_s is None else threshold_s)


class DaskExecutor:
    """The scheduler's executor over the hetsched hosts of a Dask cluster (see the module text)."""

    def __init__(
        self,
        cluster: Client | str,
        task_io: Callable[[Task], TaskIO],
        narrow: bool = True,
        run_timeout_s: float = RUN_TIMEOUT_S,
        watch_interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        self._owns_client = not isinstance(cluster, Client)
        self.client = Client(cluster) if isinstance(cluster, str) else cluster
        self._task_io = task_io
        self.run_timeout_s = run_timeout_s
        self.owner = uuid.uuid4().hex[:12]  # this runtime, on hosts other runtimes may share
        self.bus = BusModel()
        self.report: Report | None = None
        self.on_transfer: TransferReport | None = None
        self.on_join: Callable[[WorkerSpec], None] | None = None
        self.on_leave: Callable[[WorkerSpec], None] | None = None
        assert self.client.loop is not None, "a synchronous Client runs its own event loop"
        self._loop = self.client.loop.asyncio_loop  # type: ignore[attr-defined]  # tornado's AsyncIOLoop
        self._lock = threading.Lock()
        self.narrow = narrow
        self._workers: dict[str, list[WorkerSpec]] = {}  # address -> its workers, scheduled now
        self._next_slot = 1 << 20  # slots of remote workers, apart from any local core number
        self._suspects: dict[str, float] = {}  # address -> when its call failed
        self._calls: dict[str, set[asyncio.Task[None]]] = {}  # address -> calls in flight there
        self._stages: dict[str, StageModel] = {}  # every stage loaded, for workers that join
        self._held: dict[int, set[str]] = {}  # id(job) -> addresses keeping some of its tensors
        self._busy: dict[int, WorkerSpec] = {}  # task id -> worker, for tasks started and not reported
        # task id -> (address, the staging call, the input names it sends): inputs prefetched
        self._staged: dict[int, tuple[str, Future[bool], list[str]]] = {}
        self.prefetched = 0  # tasks whose inputs were sent ahead while their worker was busy
        # inputs go ahead when they take longer than this to move (None: the link's round trip)
        self.prefetch_min_s: float | None = None
        self.shipped_bytes = 0  # part models sent to hosts (each host receives a stage once)
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()

        self.client.register_plugin(HetschedHost(), name=PLUGIN_NAME)
        listed = self._listed()
        if not listed:
            raise UsageError(
                f"the Dask cluster at {self.address} has no workers; "
                "start some (dask worker <scheduler address>) and try again"
            )
        self._sync(calibrate_links(self.client.rpc, self.bus, CLIENT_MEMORY, sorted(listed)))
        for address, nthreads in sorted(listed.items()):
            self._workers[address] = self._specs(address, nthreads)
        self.specs = [spec for specs in self._workers.values() for spec in specs]
        self._reporter = threading.Thread(target=self._report_loop, name="hetsched-dask-reports", daemon=True)
        self._reporter.start()
        # Started by the first load, once the runtime has connected on_join / on_leave.
        self._watcher = threading.Thread(
            target=self._watch, args=(watch_interval_s,), name="hetsched-dask-watch", daemon=True
        )
        log.info(
            "Dask cluster %s: %d Dask workers, %d hetsched workers",
            self.address,
            len(self._workers),
            len(self.specs),
        )

    # -- helpers --------------------------------------------------------------------------------

    def _specs(self, address: str, threads: int) -> list[WorkerSpec]:
        specs = worker_specs(address, threads, self._next_slot, self.narrow)
        self._next_slot += threads
        return specs

    @property
    def address(self) -> str:
        """The Dask scheduler's address."""
        return str(getattr(self.client.scheduler, "address", "?"))

    def _sync(self, coroutine: Any, timeout: float = LOAD_TIMEOUT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _listed(self) -> dict[str, int]:
        """Workers the Dask scheduler lists now: address -> threads."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {address: int(meta.get("nthreads", 1)) for address, meta in info.items()}

    def _address(self, worker: WorkerSpec) -> str:
        return worker.memory_node.partition(":")[2]

    def _job_key(self, job: Job) -> str:
        return f"{self.owner}/{job.name}"

    # -- models ---------------------------------------------------------------------------------

    def load(self, stages: list[StageModel]) -> None:
        if not self._watcher.is_alive() and not self._stopping.is_set():
            self._watcher.start()
        with self._lock:
            self._stages.update({stage.stage: stage for stage in stages})
            addresses = list(self._workers)
        self._sync(self._ship_all(addresses, stages))

    async def _ship_all(self, addresses: list[str], stages: list[StageModel]) -> None:
        await asyncio.gather(*(self._ship(address, stages) for address in addresses))

    async def _ship(self, address: str, stages: list[StageModel]) -> None:
        """Sessions for ``stages`` on one host; part models it lacks are sent (once per worker)."""
        host = self.client.rpc(address)
        ids = [stage.stage for stage in stages]
        answer = await host.hetsched_load(owner=self.owner, stages=ids, models={})
        if answer["status"] == "ok" and answer["missing"]:
            blobs = {stage.stage: stage.model_bytes for stage in stages if stage.stage in answer["missing"]}
            self.shipped_bytes += sum(len(blob) for blob in blobs.values())
            answer = await host.hetsched_load(owner=self.owner, stages=list(blobs), models=blobs)
        if answer["status"] != "ok":
            raise RemoteTaskError(f"creating sessions on {address} failed: {answer['error']}")

    def unload(self, stage_ids: list[str]) -> None:
        with self._lock:
            for stage in stage_ids:
                self._stages.pop(stage, None)
            addresses = list(self._workers)

        async def unload_all() -> None:
            await asyncio.gather(
                *(self.client.rpc(a).hetsched_unload(owner=self.owner, stages=stage_ids) for a in addresses),
                return_exceptions=True,
            )

        self._sync(unload_all())

    # -- tasks ----------------------------------------------------------------------------------

    def _inputs(self, io: TaskIO, address: str) -> tuple[dict[str, Any], list[str], dict[str, list[str]]]:
        """A task's inputs as the worker at ``address`` gets them: inline (arrays here), local (kept
        there already) or fetched from the peer keeping them."""
        inline: dict[str, Any] = {}
        local: list[str] = []
        fetch: dict[str, list[str]] = {}
        for name in io.inputs:
            value = io.values[name]
            if not isinstance(value, Kept):
                inline[name] = value
            elif value.address == address:
                local.append(name)
            else:
                fetch.setdefault(value.address, []).append(name)
        return inline, local, fetch

    def prefetch(self, task: Task, worker: WorkerSpec) -> None:
        """The policy chose ``worker`` for ``task`` (dmda: at once, while the worker may still be busy).

        If the worker is busy and moving the inputs takes longer than the extra round trip a
        separate send costs, they are sent now — arrays from here, kept tensors pulled by the worker
        from their peers — so the transfer overlaps the running task and the task starts on local
        data.  Otherwise they go with the task (one round trip, not two).
        """
        address = self._address(worker)
        with self._lock:
            if address not in self._workers or not any(w.overlaps(worker) for w in self._busy.values()):
                return
        io = self._task_io(task)
        inline, _, fetch = self._inputs(io, address)
        moves = [(CLIENT_MEMORY, int(value.nbytes)) for value in inline.values()]
        moves += [(memory_node(peer), io.values[n].nbytes) for peer, names in fetch.items() for n in names]
        if not moves or not worth_sending_ahead(self.bus, moves, worker.memory_node, self.prefetch_min_s):
            return
        key = self._job_key(task.job)
        sources = ",".join(sorted({source for source, _ in moves}))
        moved = (task, sources, worker.memory_node, sum(nbytes for _, nbytes in moves), MonotonicClock.now())
        staging = asyncio.run_coroutine_threadsafe(self._stage(address, key, inline, fetch, moved),
                                                   self._loop)
        with self._lock:
            self._staged[task.id] = (
                address,
                staging,
                [*inline, *(n for names in fetch.values() for n in names)],
            )
            self._held.setdefault(id(task.job), set()).add(address)
            self.prefetched += 1

    async def _stage(
        self, address: str, job: str, inline: dict[str, Any], fetch: dict[str, list[str]],
        moved: tuple[Task, str, str, int, float],
    ) -> bool:
        """Send ``inline`` and have the worker pull ``fetch`` for a task; ``moved`` is (the task,
        its inputs' sources, the worker's node, bytes, when the move began) for the trace."""
        values = {name: to_serialize(value) for name, value in inline.items()}
        try:
            answer = await self.client.rpc(address).hetsched_stage(job=job, inputs=values, fetch=fetch)
        except OSError:
            return False  # the task itself will report the worker's loss
        self._observe(address, answer.get("transfers", ()))
        staged = answer["status"] == "ok"
        if staged and self.on_transfer is not None:
            self.on_transfer(*moved, MonotonicClock.now())
        return bool(staged)

    @staticmethod
    def run_here(job: Job, submit: Callable[[Job], None]) -> None:
        """Every task runs on a cluster worker; a caller waiting here only submits."""
        submit(job)

    @staticmethod
    def hand_over() -> None:
        """No task is ever kept to run here."""

    def start(self, task: Task, worker: WorkerSpec) -> None:
        address = self._address(worker)
        with self._lock:
            if address not in self._workers:
                raise WorkerLostError(f"{worker.name} left the cluster before {task} started")
            self._busy[task.id] = worker
            staged = self._staged.pop(task.id, None)
        io = self._task_io(task)
        staging, names = (staged[1], staged[2]) if staged and staged[0] == address else (None, [])
        asyncio.run_coroutine_threadsafe(self._call(task, worker, address, io, staging, names), self._loop)

    async def _call(
        self,
        task: Task,
        worker: WorkerSpec,
        address: str,
        io: TaskIO,
        staging: Future[bool] | None,
        staged: list[str],
    ) -> None:
        call = asyncio.current_task()
        assert call is not None
        self._calls.setdefault(address, set()).add(call)  # only touched on the event loop
        error: BaseException | None
        try:
            inline, local, fetch = self._inputs(io, address)
            if staging is not None and await asyncio.wrap_future(staging):  # prefetched: all local now
                inline, fetch, local = {}, {}, [*local, *staged]
            message = dict(
                job=self._job_key(task.job),
                stage=task.stage,
                lane=lane_of(worker),
                inputs={name: to_serialize(value) for name, value in inline.items()},
                local=local,
                fetch=fetch,
                outputs=list(io.outputs),
                keep=list(io.keep),
                send_back=list(io.reply),
            )
            call_host = self.client.rpc(address).hetsched_run(**message)
            answer = await asyncio.wait_for(call_host, self.run_timeout_s)
            error = self._accept(task, worker, address, io, answer)
        except asyncio.CancelledError:
            error = WorkerLostError(f"{worker.name} left the cluster while it ran {task}")
        except TimeoutError:
            error = WorkerLostError(f"{worker.name} did not answer {task} within {self.run_timeout_s:.0f} s")
            self._events.put(("suspect", address))
        except OSError as exc:  # the connection failed: the worker died or is unreachable
            error = WorkerLostError(f"{worker.name} is unreachable ({type(exc).__name__}: {exc})")
            self._events.put(("suspect", address))
        finally:
            self._calls[address].discard(call)
            with self._lock:
                del self._busy[task.id]
        self._events.put(("done", task, error))

    def _accept(
        self, task: Task, worker: WorkerSpec, address: str, io: TaskIO, answer: dict[str, Any]
    ) -> BaseException | None:
        """Store what the worker answered in the request's values; an error to report, or None."""
        if answer["status"] == "lost":
            return WorkerLostError(answer["detail"])
        if answer["status"] != "ok":
            return RemoteTaskError(f"{worker.name}: {answer['error']}")
        returned = answer["values"]
        io.values.update(returned)
        if answer["nbytes"]:
            with self._lock:
                self._held.setdefault(id(task.job), set()).add(address)
        sizes = {name: int(value.nbytes) for name, value in returned.items()}
        for name, nbytes in answer["nbytes"].items():
            sizes[name] = nbytes
            if name not in returned:
                io.values[name] = Kept(address, nbytes)
        task.job.place({n: s for n, s in sizes.items() if n not in returned}, {worker.memory_node})
        task.job.place({n: s for n, s in sizes.items() if n in returned}, {worker.memory_node, CLIENT_MEMORY})
        task.compute_s = answer["compute_s"]
        self._observe(address, answer["transfers"])
        return None

    def _observe(self, address: str, transfers: Any) -> None:
        """Feed the peer-to-peer reads a worker timed to the network model."""
        for peer, nbytes, seconds in transfers:
            if seconds > 0:
                self.bus.observe(memory_node(peer), memory_node(address), int(nbytes), seconds)

    def release(self, job: Job) -> None:
        with self._lock:
            addresses = self._held.pop(id(job), set())
            for task in job.tasks:  # staged for tasks that never started (their request failed)
                self._staged.pop(task.id, None)
        key = self._job_key(job)

        async def free() -> None:
            await asyncio.gather(
                *(self.client.rpc(a).hetsched_free(job=key) for a in addresses), return_exceptions=True
            )  # a dead worker freed everything already

        if addresses:
            asyncio.run_coroutine_threadsafe(free(), self._loop)

    # -- membership and reports -----------------------------------------------------------------

    def _report_loop(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                if event[0] == "done":
                    assert self.report is not None, "the runtime connects the executor to its scheduler"
                    self.report(event[1], event[2])
                elif event[0] == "suspect":
                    self._leave(event[1], suspect=True)
            except Exception:  # a bug of ours; keep reporting the other tasks
                log.exception("hetsched: handling %s failed", event[0])

    def _leave(self, address: str, suspect: bool = False) -> None:
        with self._lock:
            specs = self._workers.pop(address, [])
            if suspect:
                self._suspects[address] = time.monotonic()
        if not specs:
            return
        log.warning("%s left the cluster%s", specs[0].name, " (its call failed)" if suspect else "")
        for spec in specs:
            if self.on_leave is not None:
                self.on_leave(spec)

        def cancel_calls() -> None:
            for call in list(self._calls.get(address, ())):
                call.cancel()

        self._loop.call_soon_threadsafe(cancel_calls)

    def _join(self, address: str, nthreads: int) -> None:
        with self._lock:
            stages = list(self._stages.values())
            known = list(self._workers)
        self._sync(self._ship(address, stages))
        self._sync(calibrate_links(self.client.rpc, self.bus, CLIENT_MEMORY, [address], known))
        with self._lock:
            specs = self._workers[address] = self._specs(address, nthreads)
        log.info("%s joined the cluster (%d part models shipped)", specs[0].name, len(stages))
        for spec in specs:
            if self.on_join is not None:
                self.on_join(spec)

    def _watch(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                listed = self._listed()
            except Exception as exc:  # the scheduler is briefly unreachable: keep the workers we have
                log.warning("Dask scheduler unreachable (%s); keeping the current workers", exc)
                continue
            now = time.monotonic()
            with self._lock:
                gone = [a for a in self._workers if a not in listed]
                for address, since in list(self._suspects.items()):
                    if address not in listed or now - since > SUSPECT_S:
                        del self._suspects[address]
                new = {a: n for a, n in listed.items() if a not in self._workers and a not in self._suspects}
            for address in gone:
                self._leave(address)
            for address, nthreads in new.items():
                try:
                    self._join(address, nthreads)
                except Exception as exc:  # it may have died again; the next look decides
                    log.warning("worker %s could not join: %s", address, exc)

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=10)
        with self._lock:
            stages = list(self._stages)
        if stages:
            try:
                self.unload(stages)
            except Exception as exc:  # the cluster may be gone already
                log.warning("unloading from the cluster failed: %s", exc)
        self._events.put(None)
        self._reporter.join(timeout=10)
        if self._owns_client:
            self.client.close()
