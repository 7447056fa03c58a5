"""The runtime end to end: real pinned workers, real ONNX Runtime sessions, every policy.

Every answer is compared with plain ONNX Runtime on the same input, so a request
that received another request's rows fails the test.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from hetsched import zoo
from hetsched.errors import InvalidInputError, RuntimeClosedError, TaskFailedError, UsageError
from hetsched.policies import POLICIES
from hetsched.runtime import Runtime
from hetsched.scheduler import WorkerFault
from hetsched.sequential import run_whole
from partitioner.feeds import random_feeds
from perfmodels.store import PerfModelStore

from checks import reshape_by_three

MODELS = {"lenet5": (0.5, 0.5), "multi-io": (0.75, 0.25), "control-flow": (0.4, 0.3, 0.3)}


Arrays = dict[str, np.ndarray]


def expected(model: onnx.ModelProto, batch: int, seed: int) -> tuple[Arrays, Arrays]:
    feeds = random_feeds(model, batch, seed=seed)
    return feeds, run_whole(model, feeds)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_answer_equals_plain_onnxruntime(policy: str) -> None:
    """1,000 requests from 8 threads, batch sizes 1-4, three partitioned models loaded at once."""
    protos = {name: zoo.build(name) for name in MODELS}
    cases = [(name, batch, seed) for seed in range(12) for name in MODELS for batch in (1, 2, 3, 4)]
    references = {case: expected(protos[case[0]], case[1], case[2]) for case in cases}
    with Runtime(policy=policy) as runtime:
        models = {name: runtime.load(protos[name], ratios, name=name) for name, ratios in MODELS.items()}

        def one(i: int) -> None:
            name, batch, seed = cases[i % len(cases)]
            feeds, want = references[(name, batch, seed)]
            got = models[name].infer(feeds, timeout=60)
            assert set(got) == set(want)
            for output, value in want.items():
                np.testing.assert_allclose(got[output], value, rtol=1e-5, atol=1e-6, err_msg=output)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(1000)))
        stats = runtime.scheduler.statistics()
    assert stats.finished_jobs == 1000 and stats.failed_jobs == 0


def test_a_failing_part_fails_only_its_request() -> None:
    with Runtime(policy="dmda") as runtime:
        model = runtime.load(reshape_by_three(), ratios=(0.5, 0.5))
        good = np.ones((3, 4), np.float32)
        bad = np.ones((1, 4), np.float32)
        futures = [model.submit({"x": bad if i % 4 == 0 else good}) for i in range(20)]
        for i, future in enumerate(futures):
            if i % 4 == 0:
                with pytest.raises(TaskFailedError) as info:
                    future.result(timeout=30)
                assert info.value.__cause__ is not None and info.value.worker.startswith("cpu")
            else:
                np.testing.assert_array_equal(future.result(timeout=30)["y"], -np.ones((4, 3), np.float32))


def test_a_worker_fault_is_retried_on_another_worker() -> None:
    with Runtime(policy="eager") as runtime:
        model = runtime.load(zoo.build("lenet5"))
        victim = runtime.executor.workers["cpu0"]
        original = victim._run_task
        failures = []

        def broken(task, session):  # type: ignore[no-untyped-def]
            failures.append(task)
            raise WorkerFault("simulated device loss")

        victim._run_task = broken
        feeds, want = expected(zoo.build("lenet5"), 2, 0)
        for _ in range(5):
            np.testing.assert_allclose(model.infer(feeds, timeout=30)["logits"], want["logits"], rtol=1e-5)
        victim._run_task = original
        assert runtime.scheduler.statistics().tasks_retried == len(failures)


@pytest.mark.parametrize("bad, message", [
    ({"wrong": np.zeros((1, 1, 32, 32), np.float32)},
     "missing inputs \\['input'\\], unexpected \\['wrong'\\]"),
    ({"input": np.zeros((1, 1, 32, 32), np.float64)}, "dtype float64, expected float32"),
    ({"input": np.zeros((1, 3, 32, 32), np.float32)},
     "shape \\(1, 3, 32, 32\\), expected \\('N', 1, 32, 32\\)"),
    ({"input": np.zeros((1, 32, 32), np.float32)}, "shape \\(1, 32, 32\\)"),
])
def test_bad_input_is_refused_before_anything_is_queued(bad: Arrays, message: str) -> None:
    with Runtime(policy="dmda") as runtime:
        model = runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5))
        with pytest.raises(InvalidInputError, match=message):
            model.submit(bad)
        assert runtime.scheduler.statistics().submitted_jobs == 0


def test_a_shape_once_accepted_does_not_let_a_bad_one_through() -> None:
    with Runtime(policy="dmda", workers="1x1") as runtime:
        model = runtime.load(zoo.build("multi-io"))
        good, _ = expected(zoo.build("multi-io"), 2, 0)
        model.infer(good, timeout=30)
        with pytest.raises(InvalidInputError, match="disagree on the batch size \\(2 and 3\\)"):
            model.submit({"features": good["features"], "token_ids": np.zeros((3, 4), np.int64)})
        with pytest.raises(InvalidInputError, match="shape \\(2, 5\\), expected \\('N', 4\\)"):
            model.submit({"features": good["features"], "token_ids": np.zeros((2, 5), np.int64)})
        with pytest.raises(InvalidInputError, match="empty batch"):
            model.submit({"features": good["features"][:0], "token_ids": good["token_ids"][:0]})
        assert runtime.scheduler.statistics().submitted_jobs == 1


def test_arrays_handed_over_read_only_are_answered_like_copies() -> None:
    """What the daemon does with the buffers a request arrived in: no copy, and they may be read-only."""
    with Runtime(policy="dmda") as runtime:
        model = runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5))
        feeds, want = expected(zoo.build("lenet5"), 3, 4)
        x = feeds["input"]
        frozen = np.frombuffer(x.tobytes(), dtype=x.dtype).reshape(x.shape)
        assert not frozen.flags.writeable
        out = model.submit({"input": frozen}, copy=False).result(timeout=30)
        np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-5)
        # what the request's job reads is the handed-over buffer itself, and a copy by default
        handed, _ = model._validate({"input": frozen}, copy=False)
        copied, _ = model._validate({"input": frozen}, copy=True)
        assert np.shares_memory(handed["input"], frozen) and not np.shares_memory(copied["input"], frozen)


def test_close_drains_in_flight_work_then_refuses_more() -> None:
    runtime = Runtime(policy="dmdas")
    model = runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5))
    feeds, want = expected(zoo.build("lenet5"), 1, 3)
    futures = [model.submit(feeds) for _ in range(50)]
    runtime.close()
    assert all(f.done() for f in futures)
    for future in futures:
        np.testing.assert_allclose(future.result()["logits"], want["logits"], rtol=1e-5)
    with pytest.raises(RuntimeClosedError):
        model.submit(feeds)


def test_past_capacity_requests_wait_for_room_outside_the_scheduler() -> None:
    """48 requests at once on one core, a model that does not batch: at most LOOKAHEAD jobs per
    worker slot are ever in the scheduler, the rest wait in the runtime's admission queue to be
    placed when a worker frees up; they enter in arrival order, and every answer is its own."""
    from hetsched.runtime import LOOKAHEAD
    from hetsched.task import Task, WorkerSpec

    proto = zoo.build("lenet5")
    cases = [random_feeds(proto, 1, seed=seed) for seed in range(48)]
    count = {"now": 0, "peak": 0}
    entered: list[object] = []  # the futures of the jobs submitted to the scheduler, in order

    class InScheduler:  # called under the scheduler's lock
        def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
            if event == "submit":
                count["now"] += 1
                count["peak"] = max(count["peak"], count["now"])
                entered.append(task.job.payload.future)
            elif event in ("end", "fail"):
                count["now"] -= 1

    with Runtime(workers="1x1", policy="dmda", instruments=[InScheduler()]) as runtime:
        model = runtime.load(proto)
        futures = [model.submit(feeds) for feeds in cases]
        answers = [future.result(timeout=60) for future in futures]
    assert 1 <= count["peak"] <= LOOKAHEAD * 1
    assert entered == futures
    for feeds, got in zip(cases, answers):
        np.testing.assert_allclose(got["logits"], run_whole(proto, feeds)["logits"], rtol=1e-5, atol=1e-6)


def test_a_light_batching_model_is_served_in_turn_beside_an_overloaded_one() -> None:
    """One core, two models: 20 requests of one that does not batch (most of them held for room),
    then one of a model that batches, then 20 more of the first.  The models are served in turn,
    so the batch goes to the scheduler within a job or two of its arrival, not after the
    backlog before it (one line for both models: 20th) nor after every request (the batcher used
    to wait until nothing at all was held: 40th); the first model's requests keep their order."""
    from hetsched.task import Task, WorkerSpec

    proto = zoo.build("lenet5")
    entered: list[object] = []  # the model of each job submitted to the scheduler, in order

    class InScheduler:  # called under the scheduler's lock
        def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
            if event == "submit":
                data = task.job.payload
                entered.append("batching" if data.model.name == "batching" else data.future)

    with Runtime(workers="1x1", policy="dmda", instruments=[InScheduler()]) as runtime:
        plain = runtime.load(proto, name="plain")
        batching = runtime.load(proto, name="batching", max_batch=4, max_queue_delay_s=0.0)
        big = [random_feeds(proto, 512, seed=seed) for seed in range(40)]  # ~10 ms each
        small = random_feeds(proto, 1, seed=99)
        first = [plain.submit(feeds) for feeds in big[:20]]
        alone = batching.submit(small)
        time.sleep(0.05)  # the batcher's thread sees the request (and the lines) meanwhile
        if first[-1].done():
            pytest.skip("the first 20 requests were answered before the others came: no overload")
        later = [plain.submit(feeds) for feeds in big[20:]]
        answers = [future.result(timeout=60) for future in first + later]
        answer = alone.result(timeout=60)
    position = entered.index("batching")
    assert position < 20, f"the batch entered {position}th, after the backlog before it"
    assert [e for e in entered if e != "batching"] == first + later
    np.testing.assert_allclose(answer["logits"], run_whole(proto, small)["logits"], rtol=1e-5, atol=1e-6)
    for feeds, got in zip(big, answers):
        np.testing.assert_allclose(got["logits"], run_whole(proto, feeds)["logits"], rtol=1e-5, atol=1e-6)


def test_the_callers_array_may_change_after_submit() -> None:
    with Runtime(policy="ws") as runtime:
        model = runtime.load(zoo.build("lenet5"))
        feeds, want = expected(zoo.build("lenet5"), 2, 1)
        x = feeds["input"].copy()
        future = model.submit({"input": x})
        x[:] = 0  # the runtime copied it at submit
        np.testing.assert_allclose(future.result(timeout=30)["logits"], want["logits"], rtol=1e-5)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores")
def test_workers_and_their_onnxruntime_threads_run_on_their_cores() -> None:
    with Runtime(policy="dmda", gpu_streams=0) as runtime:  # the core groups' workers only
        runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5))
        workers = runtime.executor.workers
        wide = next(w for w in workers.values() if len(w.spec.cores) > 1)
        for worker in workers.values():
            assert worker.pinned == (worker.spec.cores[0],)
        assert wide.ort_threads, "a wide worker's sessions start extra intra-op threads"
        for tid, cores in wide.ort_threads.items():
            status = Path(f"/proc/self/task/{tid}/status").read_text()
            allowed = status.split("Cpus_allowed_list:")[1].split()[0]
            assert allowed == ",".join(map(str, cores)) and cores[0] in wide.spec.cores[1:]


def test_cancelled_requests_do_not_disturb_the_others() -> None:
    with Runtime(policy="dmda") as runtime:
        model = runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5))
        feeds, want = expected(zoo.build("lenet5"), 1, 5)
        futures = [model.submit(feeds) for _ in range(40)]
        for future in futures[::3]:
            future.cancel()
        for future in futures:
            if not future.cancelled():
                np.testing.assert_allclose(future.result(timeout=30)["logits"], want["logits"], rtol=1e-5)
        np.testing.assert_allclose(model.infer(feeds, timeout=30)["logits"], want["logits"], rtol=1e-5)


def test_unloading_one_copy_keeps_the_other_serving() -> None:
    proto = zoo.build("lenet5")
    feeds, want = expected(proto, 1, 6)
    with Runtime(policy="ws") as runtime:
        first, second = runtime.load(proto, name="a"), runtime.load(proto, name="b")
        runtime.unload("a")
        np.testing.assert_allclose(second.infer(feeds, timeout=30)["logits"], want["logits"], rtol=1e-5)
        with pytest.raises(UsageError, match="unloaded"):
            first.submit(feeds)


def test_what_a_runtime_learned_is_saved_to_the_store(tmp_path: Path) -> None:
    proto = zoo.build("lenet5")
    feeds, _ = expected(proto, 1, 7)
    with Runtime(policy="dmda", perfmodel_dir=tmp_path) as runtime:
        model = runtime.load(proto, ratios=(0.5, 0.5))
        for _ in range(12):
            model.infer(feeds, timeout=30)
    history = PerfModelStore(tmp_path).load_history()
    assert {k.stage for k in history.keys()} == set(model.stages)
    seen = sum(history.stats(k).count + history.stats(k).rejected for k in history.keys())
    assert seen == 24  # 12 requests x 2 parts; a slow first run may be kept apart as an outlier
