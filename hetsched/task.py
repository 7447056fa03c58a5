"""Tasks and the workers they run on, as the scheduler sees them (no ONNX Runtime here).

A request batch becomes a :class:`Job`: one :class:`Task` per part of the plan,
linked by the plan's DAG.  A :class:`WorkerSpec` names a processor: its kind
(the ``Arch`` that keys perf models), its memory node, and the cores it needs
(a wide worker and the narrow workers over the same cores never run at once).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

_ids = itertools.count()


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: ``cores`` it occupies while running (empty for GPU streams and remote workers)."""

    name: str
    arch: str  # e.g. "cpu:2t", "cuda:NVIDIA H100"; keys the perf models
    memory_node: str  # e.g. "host:0", "cuda:0"
    cores: tuple[int, ...] = ()
    device: str = "cpu"  # "cpu", "cuda", "accelerator" (arch names its execution provider), "remote"
    device_index: int = 0  # which device of its kind (a GPU's CUDA number)
    provider_options: tuple[tuple[str, str], ...] = ()  # an accelerator's execution provider options

    def overlaps(self, other: WorkerSpec) -> bool:
        """Whether the two cannot run at the same time (they share a core, or are the same worker)."""
        return self.name == other.name or bool(set(self.cores) & set(other.cores))


class TaskState(Enum):
    WAITING = "waiting"  # some input is not produced yet
    READY = "ready"  # inputs produced; in the policy's hands
    ASSIGNED = "assigned"  # a worker was chosen, not started
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(eq=False, slots=True)  # slots: one is made per part per request
class Task:
    """One part of one request batch.

    Fields:
        stage: id of the part model (the history key's stage).
        part: index of the part in its plan.
        job: the request batch it belongs to.
        footprint: input shapes, the history key's footprint.
        batch: rows in this batch.
        priority: higher runs first where a policy honours priorities (dmdas).
        input_bytes: bytes of each input, for transfer estimates (name -> nbytes).
        input_nodes: memory nodes where each input has a copy now (name -> set of nodes).
        allowed: names of the only workers that may run it (a pinned part), None for any worker.
        predicted_s / worker / times: filled by the scheduler and its policy.
        compute_s: set by an executor whose worker timed the compute itself.
        cpu_s: set by a local worker: its thread's CPU time during the run.
    """

    stage: str
    part: int
    job: Job
    footprint: str
    batch: int
    priority: int = 0
    input_bytes: dict[str, int] = field(default_factory=dict)
    input_nodes: dict[str, Set[str]] = field(default_factory=dict)
    allowed: frozenset[str] | None = None
    id: int = field(default_factory=_ids.__next__)
    state: TaskState = TaskState.WAITING
    worker: WorkerSpec | None = None
    predicted_s: float = math.nan
    submit_s: float = math.nan
    ready_s: float = math.nan
    start_s: float = math.nan
    end_s: float = math.nan
    failed_on: set[str] = field(default_factory=set)  # workers it failed on (for retries)
    compute_s: float = math.nan  # compute time as the worker measured it (remote workers report one)
    # CPU time of the thread that ran it, during the run; on a CPU worker the rest of the run is the
    # time that thread waited for its core while other threads ran there (ORT's threads spin)
    cpu_s: float = math.nan

    def __repr__(self) -> str:
        return f"Task(#{self.id} {self.job.name} part {self.part} {self.state.value})"


@dataclass(eq=False, slots=True)
class Job:
    """One request batch through a plan: its tasks, their dependencies, and what to call when done.

    ``depends_on[i]`` lists the parts task i waits for (the plan's DAG).
    ``on_done(job, error)`` is called once, from the thread that finished the last task.
    """

    name: str
    depends_on: list[list[int]]
    payload: Any = None
    on_done: Callable[[Job, BaseException | None], None] | None = None
    tasks: list[Task] = field(default_factory=list)
    error: BaseException | None = None
    failed_task: Task | None = None  # the task whose failure failed the job
    finished: bool = False
    remaining: int = 0  # tasks not closed yet (the scheduler's count)

    def place(self, tensors: dict[str, int], nodes: Set[str]) -> None:
        """Tensors (name -> bytes) now have copies on ``nodes``: what the transfer estimates of the
        tasks consuming them read (executors call it when a task's outputs are stored)."""
        for task in self.tasks:
            for name, nbytes in tensors.items():
                if name in task.input_nodes:
                    task.input_nodes[name] = frozenset(nodes)
                    task.input_bytes[name] = nbytes
