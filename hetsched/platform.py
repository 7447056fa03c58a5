"""What the runtime needs from a platform of workers: this machine's threads or a Dask cluster.

A platform is the scheduler's executor (``start``, ``prefetch``) plus what a
runtime does around it: the workers it offers (``specs``), sessions created for
every stage of a model on every worker (``load``, ``unload``), and data of a
finished request freed wherever it was kept (``release``).  A platform whose
workers come and go (Dask) tells the runtime through ``on_join`` / ``on_leave``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hetsched.task import Job, Task, WorkerSpec
from perfmodels.transfer import BusModel

Report = Callable[[Task, BaseException | None], None]
# (task, source node, target node, bytes, start, end on the scheduler's clock): a move of a task's
# inputs made ahead of the task, for traces
TransferReport = Callable[[Task, str, str, int, float, float], None]
CLIENT_MEMORY = "host:0"  # where a request's inputs arrive and its answers are returned


@dataclass(frozen=True)
class StageModel:
    """What a worker needs to build a session for one stage: serialized part model and its interface."""

    stage: str
    model_bytes: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class TaskIO:
    """A task's data, for a platform whose workers keep tensors themselves (a cluster).

    ``values`` is the request's tensors by name: arrays here, or the platform's references to
    tensors a worker keeps.  Of the part's ``outputs``, ``keep`` are read by later parts (they
    stay where they were made) and ``reply`` are the model's outputs (they come back here).
    """

    values: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    keep: tuple[str, ...]
    reply: tuple[str, ...]


class Platform(Protocol):
    specs: list[WorkerSpec]
    bus: BusModel  # transfer costs between the platform's memory nodes
    report: Report | None  # the scheduler's task_done, connected by the runtime
    on_transfer: TransferReport | None  # the runtime's tracer, if it traces
    on_join: Callable[[WorkerSpec], None] | None
    on_leave: Callable[[WorkerSpec], None] | None

    def start(self, task: Task, worker: WorkerSpec) -> None: ...

    def prefetch(self, task: Task, worker: WorkerSpec) -> None: ...

    def run_here(self, job: Job, submit: Callable[[Job], None]) -> None:
        """``submit(job)`` for a caller that waits for it on this thread: a platform whose workers
        are threads of this process may run the job's tasks on the caller's thread meanwhile."""
        submit(job)

    def hand_over(self) -> None:
        """Callbacks are about to run on this thread: a task it kept to run here goes to its worker."""

    def load(self, stages: list[StageModel]) -> None:
        """Create a session of every stage on every worker; returns when all exist."""

    def unload(self, stage_ids: list[str]) -> None: ...

    def release(self, job: Job) -> None:
        """The job finished: free whatever of its tensors the workers keep."""

    def stop(self) -> None: ...
