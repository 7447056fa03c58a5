"""A caller that waits for its request on its thread (``Model.infer``) runs the request's tasks itself.

Checked on real sessions wrapped by a recorder of the thread (and its cores) that calls
``run``: the request's tasks run on the caller's thread pinned to the worker's core, the
caller's own mask comes back afterwards, and the worker stays taken meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest

from hetsched import zoo
from hetsched.platform import StageModel
from hetsched.runtime import Runtime
from hetsched.sequential import run_whole
from hetsched.task import Job, Task, WorkerSpec
from hetsched.workers import ThreadExecutor
from partitioner.feeds import random_feeds


class Recorded:
    """A real session whose ``run`` notes which thread called it, on which cores, and may wait for
    a gate first."""

    def __init__(self, session: Any, calls: list[tuple[int, set[int]]], gate: threading.Event | None = None):
        self.session, self.calls, self.gate = session, calls, gate

    def run(self, names: Any, feeds: Any) -> Any:
        self.calls.append((threading.get_ident(), os.sched_getaffinity(0)))
        if self.gate is not None and len(self.calls) == 1:
            assert self.gate.wait(30)
        return self.session.run(names, feeds)


def record(runtime: Runtime, calls: list[tuple[int, set[int]]], gate: threading.Event | None = None,
           kind: type[Recorded] = Recorded) -> Any:
    """Wrap every session of the one worker ``cpu0`` in ``kind``; returns the worker."""
    worker = runtime.executor.workers["cpu0"]  # type: ignore[attr-defined]
    for stage, session in list(worker.sessions.items()):
        worker.sessions[stage] = kind(session, calls, gate)
    return worker


def lenet5(batch: int, seed: int) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """The model, an input, and plain ONNX Runtime's answer to it."""
    proto = zoo.build("lenet5")
    feeds = random_feeds(proto, batch, seed=seed)
    return proto, feeds, run_whole(proto, feeds)["logits"]


def test_infer_runs_every_part_on_the_calling_thread_pinned_to_the_workers_core() -> None:
    proto, feeds, want = lenet5(2, 1)
    mask = os.sched_getaffinity(0)
    calls: list[tuple[int, set[int]]] = []
    with Runtime(workers="1x1", narrow=False, gpu_streams=0) as runtime:
        model = runtime.load(proto, ratios=(0.5, 0.5))
        worker = record(runtime, calls)
        np.testing.assert_allclose(model.infer(feeds, timeout=30)["logits"], want, rtol=1e-5, atol=1e-6)
        assert calls == [(threading.get_ident(), {worker.spec.cores[0]})] * 2  # both parts, in turn
        assert os.sched_getaffinity(0) == mask  # the caller's own cores again
        calls.clear()
        np.testing.assert_allclose(model.submit(feeds).result(30)["logits"], want, rtol=1e-5, atol=1e-6)
        assert [thread for thread, _ in calls] == [worker._thread.ident] * 2  # submit: the worker's thread


def test_a_worker_running_a_callers_task_takes_no_other_until_it_ends() -> None:
    proto, feeds, want = lenet5(1, 2)
    calls: list[tuple[int, set[int]]] = []
    gate = threading.Event()
    with Runtime(workers="1x1", narrow=False, gpu_streams=0) as runtime:
        model = runtime.load(proto)
        worker = record(runtime, calls, gate)
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(model.infer(feeds, timeout=30)))
        caller.start()
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:  # until the caller's task is held at the gate
            time.sleep(0.001)
        assert calls, "the caller's task never started"
        other = model.submit(feeds)
        time.sleep(0.2)
        assert len(calls) == 1 and not other.done(), "a second task started on a taken worker"
        gate.set()
        caller.join(30)
        np.testing.assert_allclose(other.result(30)["logits"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(answers[0]["logits"], want, rtol=1e-5, atol=1e-6)
        assert [thread for thread, _ in calls] == [caller.ident, worker._thread.ident]


class Interrupted(Recorded):
    """Its first run is interrupted, as by Ctrl-C while the caller's thread runs the task."""

    def run(self, names: Any, feeds: Any) -> Any:
        self.calls.append((threading.get_ident(), os.sched_getaffinity(0)))
        if len(self.calls) == 1:
            raise KeyboardInterrupt
        return self.session.run(names, feeds)


def test_an_interrupt_while_the_caller_runs_a_task_frees_its_worker() -> None:
    proto, feeds, want = lenet5(1, 3)
    mask = os.sched_getaffinity(0)
    calls: list[tuple[int, set[int]]] = []
    with Runtime(workers="1x1", narrow=False, gpu_streams=0) as runtime:
        model = runtime.load(proto)
        record(runtime, calls, kind=Interrupted)
        with pytest.raises(KeyboardInterrupt):
            model.infer(feeds, timeout=30)
        assert os.sched_getaffinity(0) == mask
        assert runtime.scheduler.statistics().running == () and model.pending == 0
        np.testing.assert_allclose(model.submit(feeds).result(30)["logits"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.infer(feeds, timeout=30)["logits"], want, rtol=1e-5, atol=1e-6)


def test_a_callback_that_infers_again_is_answered_too() -> None:
    """A done-callback runs on the thread that finished the request (a worker's, or a caller's
    running it here); an ``infer`` made there runs its own task there as well."""
    proto, feeds, want = lenet5(1, 4)
    with Runtime(workers="1x1", narrow=False, gpu_streams=0) as runtime:
        model = runtime.load(proto, ratios=(0.5, 0.5))
        nested: list[Any] = []
        done = threading.Event()

        def again(_: Any) -> None:
            nested.append(model.infer(feeds, timeout=30))
            done.set()

        model.submit(feeds).add_done_callback(again)  # finished on the worker's thread
        assert done.wait(30)
        done.clear()
        first = model.submit(feeds, run_here=True)  # finished on this thread
        first.add_done_callback(again)
        assert done.wait(30)
        for answer in [first.result(30), *nested]:
            np.testing.assert_allclose(answer["logits"], want, rtol=1e-5, atol=1e-6)
        assert runtime.scheduler.statistics().running == ()


def test_a_task_kept_to_run_here_goes_to_its_worker_when_callbacks_are_about_to_run() -> None:
    """``hand_over``: while a caller's thread submits, a task that started on it is kept to run
    there once the submit returns; if a callback then runs on that thread first (another
    request finished by the same scheduler call) and waits for the kept task's worker, only
    handing the task to the worker's own thread lets it run.  Without ``hand_over`` the wait
    below times out: the task would run on this thread after the wait."""
    proto = zoo.build("lenet5")
    feeds = random_feeds(proto, 1, seed=5)
    stage = StageModel("whole", proto.SerializeToString(), tuple(feeds), ("logits",))
    ran_on: list[int] = []
    answers: list[np.ndarray] = []

    def run_task(task: Task, session: Any) -> None:
        ran_on.append(threading.get_ident())
        answers.append(session.run(["logits"], feeds)[0])

    core = min(os.sched_getaffinity(0))
    spec = WorkerSpec("cpu0", "cpu:1t", "host:0", (core,))
    executor = ThreadExecutor([spec], run_task)
    ended = threading.Event()
    executor.report = lambda task, error: ended.set()
    try:
        executor.load([stage])
        job = Job("kept", [[]])
        job.tasks = [Task("whole", 0, job, "1", 1, worker=spec)]

        def submit(job: Job) -> None:
            executor.start(job.tasks[0], spec)  # the scheduler starts it on this thread's worker
            assert not ended.is_set() and not ran_on  # kept: it runs once submit returns
            executor.hand_over()  # what the runtime does before a job's callbacks run here
            assert ended.wait(30), "the kept task never ran: a callback waiting for it would hang"

        executor.run_here(job, submit)
        assert ran_on == [executor.workers["cpu0"]._thread.ident]  # the worker's thread, once
        np.testing.assert_allclose(answers[0], run_whole(proto, feeds)["logits"], rtol=1e-5, atol=1e-6)
    finally:
        executor.stop()
