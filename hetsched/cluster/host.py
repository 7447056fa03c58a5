"""The hetsched host on each Dask worker: its ONNX Runtime sessions and the tensors it keeps.

:class:`HetschedHost` is a Dask worker plugin (``client.register_plugin``), so
every worker of the cluster — also one that joins later — runs one.  It adds
handlers to the worker's own RPC server, which the runtime calls through Dask's
connection pools:

- ``hetsched_load(owner, stages, models)``: sessions for ``stages``; the part
  models travel once per worker (a stage this worker already holds is only
  named), the answer lists the stages whose bytes it still needs;
- ``hetsched_run(job, stage, inputs, local, fetch, outputs, keep, send_back)``: one
  task.  Inputs come inline (the request's own tensors), from this worker's
  store (``local``) or from the worker that made them (``fetch``: address ->
  names), peer to peer; the outputs later parts read are kept here, the model's
  outputs go back in the answer;
- ``hetsched_stage(job, inputs, fetch)``: a task's inputs sent ahead while the
  worker still runs another (prefetch); the task then finds them local;
- ``hetsched_get`` / ``hetsched_free``: a peer reads kept tensors; a finished
  request's are dropped;
- ``hetsched_echo`` / ``hetsched_pull`` / ``hetsched_blob``: network calibration.

Names of message fields avoid ``reply``, ``op`` and ``close``, which Dask's RPC reads itself.

Why handlers rather than ``client.submit``: a submitted task goes through the Dask
scheduler, which cost 13-17 ms per task on this 2-core machine, while a direct
call costs about 1.4 ms (bench/RESULTS.md).  Dask still provides the cluster, its
membership, the plugin deployment and the communication.

A Dask worker with T threads is a core group to hetsched: a wide lane (sessions
with T intra-op threads) and, when T > 1, T narrow lanes (one thread each, pinned
to a core); each lane runs on a thread of its own and the scheduler never runs the
wide lane beside a narrow one (as for local core groups).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from distributed import WorkerPlugin
from distributed.protocol import to_serialize

from perfmodels.measure import cpu_session

log = logging.getLogger(__name__)

PLUGIN_NAME = "hetsched"
WIDE = -1  # the lane whose sessions use every thread of the Dask worker
STALE_S = 600.0  # a request's kept tensors outlive any request by far after this long
SWEEP_S = 60.0
HANDLERS = ("load", "unload", "run", "stage", "get", "free", "echo", "pull", "blob")


def _pin(cores: set[int] | None) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cores)
        except OSError as exc:  # a core outside the worker's cpuset: run unpinned
            log.warning("could not pin a hetsched lane to %s: %s", cores, exc)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class HetschedHost(WorkerPlugin):
    """Sessions per stage (shared by the runtimes that loaded it) and tensors per request."""

    name = PLUGIN_NAME
    idempotent = True  # registering it again (a second runtime) keeps the running host

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.threads = max(1, int(worker.state.nthreads))
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        # One thread per lane: the wide lane's sessions use every thread, each narrow lane's one,
        # pinned to a core of its own when the process may use that many.
        self.lanes = {WIDE: ThreadPoolExecutor(1, thread_name_prefix="hetsched-wide")}
        if self.threads > 1:
            for lane in range(self.threads):
                pin = {cores[lane]} if len(cores) >= self.threads else None
                self.lanes[lane] = ThreadPoolExecutor(
                    1, thread_name_prefix=f"hetsched-lane{lane}", initializer=_pin, initargs=(pin,)
                )
        self.models: dict[str, bytes] = {}  # stage -> part model
        self.sessions: dict[tuple[str, int], Any] = {}  # (stage, intra-op threads) -> session
        self.owners: dict[str, set[str]] = {}  # stage -> runtimes that loaded it
        self.data: dict[str, dict[str, np.ndarray]] = {}  # request (job key) -> tensors kept
        self.kept_since: dict[str, float] = {}  # request -> when its first tensor was kept
        self.swept = time.monotonic()
        for handler in HANDLERS:
            worker.handlers[f"hetsched_{handler}"] = getattr(self, handler)
        log.info("hetsched host on %s: %d thread(s)", worker.address, self.threads)

    def teardown(self, worker: Any) -> None:
        for handler in HANDLERS:
            worker.handlers.pop(f"hetsched_{handler}", None)
        for pool in self.lanes.values():
            pool.shutdown(wait=False)

    async def _on(self, lane: int, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.lanes[lane], function, *args)

    def _thread_counts(self) -> list[int]:
        """Intra-op thread counts of the sessions each stage needs: the wide lane's, the narrow ones'."""
        return [self.threads, 1] if self.threads > 1 else [1]

    # -- models ---------------------------------------------------------------------------------

    async def load(self, owner: str, stages: list[str], models: dict[str, bytes]) -> dict[str, Any]:
        self.models.update(models)
        missing = [stage for stage in stages if stage not in self.models]
        try:
            for stage in stages:
                for threads in self._thread_counts() if stage in self.models else []:
                    if (stage, threads) not in self.sessions:
                        self.sessions[stage, threads] = await self._on(WIDE, self._session, stage, threads)
                if stage in self.models:
                    self.owners.setdefault(stage, set()).add(owner)
        except Exception as exc:  # reported to the loading runtime
            return {"status": "error", "error": _error(exc)}
        return {"status": "ok", "missing": missing}

    def _session(self, stage: str, threads: int) -> Any:
        # not a local worker's spinning threads: lanes, and other Dask workers, share these cores
        return cpu_session(self.models[stage], threads)

    async def unload(self, owner: str, stages: list[str]) -> dict[str, Any]:
        for stage in stages:
            owners = self.owners.get(stage, set())
            owners.discard(owner)
            if not owners:  # nobody uses it any more
                self.owners.pop(stage, None)
                self.models.pop(stage, None)
                for threads in self._thread_counts():
                    self.sessions.pop((stage, threads), None)
        return {"status": "ok"}

    # -- tasks ----------------------------------------------------------------------------------

    async def run(
        self,
        job: str,
        stage: str,
        lane: int,
        inputs: dict[str, np.ndarray],
        local: list[str],
        fetch: dict[str, list[str]],
        outputs: list[str],
        keep: list[str],
        send_back: list[str],
    ) -> dict[str, Any]:
        feeds = dict(inputs)
        transfers: list[tuple[str, int, float]] = []
        kept = self.data.get(job, {})
        if any(name not in kept for name in local):
            return {"status": "lost", "detail": f"{self.worker.address} no longer holds inputs of {job}"}
        feeds.update({name: kept[name] for name in local})
        lost = await self._fetch(job, fetch, feeds, transfers)
        if lost:
            return lost
        threads = self.threads if lane == WIDE else 1
        session = self.sessions.get((stage, threads))
        if session is None or lane not in self.lanes:
            return {"status": "error", "error": f"stage {stage} lane {lane} is not on {self.worker.address}"}
        start = time.perf_counter()
        try:
            results = await self._on(lane, session.run, outputs, feeds)
        except Exception as exc:  # the request's error, answered to it
            return {"status": "error", "error": _error(exc)}
        compute_s = time.perf_counter() - start
        produced = dict(zip(outputs, results))
        if keep:
            self._keep(job, {name: produced[name] for name in keep})
        return {
            "status": "ok",
            "compute_s": compute_s,
            "values": {name: to_serialize(produced[name]) for name in send_back},
            "nbytes": {name: int(produced[name].nbytes) for name in keep},
            "transfers": transfers,
        }

    async def _fetch(
        self,
        job: str,
        fetch: dict[str, list[str]],
        into: dict[str, np.ndarray],
        transfers: list[tuple[str, int, float]],
    ) -> dict[str, Any] | None:
        """Read tensors kept by peers (address -> names) into ``into``; an answer to send on loss."""
        for peer, names in fetch.items():
            start = time.perf_counter()
            try:
                answer = await self.worker.rpc(peer).hetsched_get(job=job, names=names)
            except OSError as exc:  # the peer died: the request is resent from its inputs
                return {"status": "lost", "detail": f"reading {names} of {job} from {peer}: {_error(exc)}"}
            if answer["status"] != "ok":
                return {"status": "lost", "detail": f"{peer} no longer holds {names} of {job}"}
            values = answer["values"]
            transfers.append((peer, sum(v.nbytes for v in values.values()), time.perf_counter() - start))
            into.update(values)
        return None

    async def stage(
        self, job: str, inputs: dict[str, np.ndarray], fetch: dict[str, list[str]]
    ) -> dict[str, Any]:
        """A task's inputs sent ahead (the runtime's prefetch): kept here until it runs."""
        values = dict(inputs)
        transfers: list[tuple[str, int, float]] = []
        lost = await self._fetch(job, fetch, values, transfers)
        if lost:
            return lost
        self._keep(job, values)
        return {"status": "ok", "transfers": transfers}

    def _keep(self, job: str, values: dict[str, np.ndarray]) -> None:
        """Keep a request's tensors until the runtime frees them; those of a runtime that vanished
        without freeing (its process died) are dropped after STALE_S."""
        now = time.monotonic()
        self.data.setdefault(job, {}).update(values)
        self.kept_since.setdefault(job, now)
        if now - self.swept > SWEEP_S:
            self.swept = now
            for stale in [j for j, since in self.kept_since.items() if now - since > STALE_S]:
                log.warning(
                    "dropping tensors of %s, kept %.0f s and never freed", stale, now - self.kept_since[stale]
                )
                self.data.pop(stale, None)
                self.kept_since.pop(stale, None)

    async def get(self, job: str, names: list[str]) -> dict[str, Any]:
        kept = self.data.get(job, {})
        if any(name not in kept for name in names):
            return {"status": "lost"}
        return {"status": "ok", "values": {name: to_serialize(kept[name]) for name in names}}

    async def free(self, job: str) -> dict[str, Any]:
        self.data.pop(job, None)
        self.kept_since.pop(job, None)
        return {"status": "ok"}

    # -- calibration ----------------------------------------------------------------------------

    async def echo(self, payload: Any = None) -> dict[str, Any]:
        """The client times sending ``payload`` here (the answer is small)."""
        return {"status": "ok"}

    async def blob(self, nbytes: int) -> dict[str, Any]:
        return {"status": "ok", "value": to_serialize(np.zeros(nbytes, np.uint8))}

    async def pull(self, peer: str, sizes: list[int], repeats: int) -> dict[str, Any]:
        """Median seconds to read each size from ``peer``: the worker-to-worker link."""
        medians = []
        for nbytes in sizes:
            times = []
            for _ in range(repeats + 1):  # the first one opens the connection
                start = time.perf_counter()
                await self.worker.rpc(peer).hetsched_blob(nbytes=nbytes)
                times.append(time.perf_counter() - start)
            medians.append(float(np.median(times[1:])))
        return {"status": "ok", "seconds": medians}
