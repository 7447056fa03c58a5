"""Dynamic batching: the chooser's arithmetic, and batched answers equal to unbatched ONNX Runtime."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from hetsched import zoo
from hetsched.batching import ArrivalRate, DynamicBatcher, SizeTable, batch_latency_s, choose_batch
from hetsched.clock import FakeClock, MonotonicClock
from hetsched.errors import UsageError
from hetsched.runtime import Runtime
from hetsched.sequential import run_whole
from partitioner.feeds import random_feeds


def test_no_rate_means_no_waiting() -> None:
    assert choose_batch(0.0, lambda n: 0.01 * n, 32) == 1


def test_low_rate_keeps_batches_small_high_rate_grows_them() -> None:
    def compute(n: int) -> float:  # 10 ms fixed + 1 ms per row: batching pays
        return 0.010 + 0.001 * n

    assert choose_batch(10.0, compute, 32) == 1  # 11 ms per request keeps up with 10/s
    high = choose_batch(500.0, compute, 32)
    assert high > 1 and high / compute(high) > 500.0
    latencies = {n: batch_latency_s(n, 500.0, compute(n), n / compute(n)) for n in range(1, 33)}
    assert high == min(latencies, key=latencies.__getitem__)
    barely = min(n for n in latencies if n / compute(n) > 500.0)  # 11: 500.0/s * 1.0009
    assert high > barely, "a size that only just keeps up queues without bound: headroom wins"


def test_near_capacity_a_batch_with_headroom_beats_one_that_only_just_keeps_up() -> None:
    """An ocr-mobile-like shape through the daemon: two narrow workers, 11.3 ms a row at batch 1 (177
    rows/s), 9.6 ms a row at batch 4 (208).  At 170/s batch 1 keeps up at 96% utilization, where
    a request queues ~70 ms for a worker, against ~22 ms for batches of 2 at 89%: the chooser
    takes 2, where it used to take 1 (the smallest size that keeps up).  Where batches cost the
    same per row they buy no headroom, and batch 1 stays: it waits for no one."""
    per_row = {1: 0.0113, 2: 0.0105, 3: 0.0100, 4: 0.0096}

    def compute(n: int) -> float:
        return n * per_row[n]

    def rows(n: int) -> float:
        return 2 / per_row[n]

    assert choose_batch(120.0, compute, 4, rows) == 1  # 68% utilized: nothing to gain
    assert choose_batch(170.0, compute, 4, rows) == 2
    assert batch_latency_s(1, 170.0, compute(1), rows(1)) > 0.0113 + 0.06  # queueing at 96%
    flat = lambda n: 2 / 0.0113  # noqa: E731
    assert choose_batch(170.0, lambda n: n * 0.0113, 4, flat) == 1


def test_overload_takes_the_best_throughput_and_unknown_sizes_are_skipped() -> None:
    assert choose_batch(1e6, lambda n: 0.010 + 0.001 * n, 8) == 8
    assert choose_batch(100.0, lambda n: math.nan if n < 4 else 0.001 * n, 8) == 4


def test_the_arrival_rate_of_steady_poisson_arrivals_reads_steady() -> None:
    """Poisson arrivals at 57/s for 20 s: after the first second, every reading is within 40% of
    57 (the average of inter-arrival gaps this replaced read these arrivals as 23 to 163/s); after
    the rate drops to 20/s, within 3 s it reads about 20."""
    rng = np.random.default_rng(1)
    clock = FakeClock()
    rate = ArrivalRate(clock)
    assert rate.per_s == 0.0
    readings = []
    for gap in rng.exponential(1 / 57, size=57 * 20):
        clock.advance(float(gap))
        rate.tick()
        if clock.now() > 1.0:
            readings.append(rate.per_s)
    assert 57 / 1.4 < min(readings) and max(readings) < 57 * 1.4, (min(readings), max(readings))
    assert float(np.median(readings)) == pytest.approx(57, rel=0.05)
    for gap in rng.exponential(1 / 20, size=20 * 3):
        clock.advance(float(gap))
        rate.tick()
    assert rate.per_s == pytest.approx(20, rel=0.4)


def test_the_first_arrivals_read_their_own_rate() -> None:
    """Half a second of 10/s reads 10/s, not the 5/s of a full window's count."""
    clock = FakeClock()
    rate = ArrivalRate(clock)
    for _ in range(6):
        rate.tick()
        clock.advance(0.1)
    assert rate.per_s == pytest.approx(10, rel=0.15)


def test_keeping_up_counts_workers_side_by_side() -> None:
    """A batch of n takes 4 + 6n ms on the fastest worker (100 rows/s one request after another),
    but two narrow workers of 18 ms a row side by side sustain 111: at 105/s single requests keep
    up, so the chooser must not make them wait for each other."""
    def compute(n: int) -> float:
        return 0.004 + 0.006 * n  # 100 rows/s one batch of 1 after another, 125 in batches of 2

    assert choose_batch(105.0, compute, 4) == 2  # judged by one worker alone
    assert choose_batch(105.0, compute, 4, rows_per_s=lambda n: 2 * n / (0.018 * n)) == 1
    assert choose_batch(150.0, compute, 4, rows_per_s=lambda n: math.nan if n == 1 else 200.0) == 2


def test_the_runtime_counts_a_core_group_in_its_better_mode() -> None:
    """Wide worker 10 ms a row, narrow ones 18 ms: the group sustains 2 / 18 ms (both narrow busy);
    with wide 8 ms it is 1 / 8 ms; per batch size, from the history the runtime records."""
    from partitioner.feeds import random_values
    from perfmodels.history import HistoryKey, footprint

    for wide_s in (0.010, 0.008):
        with Runtime(workers="1x2", policy="dmda", gpu_streams=0) as runtime:  # the capacity of cores alone
            model = runtime.load(zoo.build("lenet5"), max_batch=4)
            assert math.isnan(model.rows_per_s(1))  # not calibrated: the chooser skips the size
            wide = next(w for w in runtime.specs if len(w.cores) == 2)
            for batch in (1, 2):
                shape = footprint({n: v.shape for n, v in random_values(model.input_values, batch).items()})
                for worker in runtime.specs:
                    seconds = batch * (wide_s if worker is wide else 0.018)
                    key = HistoryKey(model.stages[0], worker.arch, shape)
                    for _ in range(runtime.oracle.history.min_samples):
                        runtime.oracle.history.record(key, seconds)
            best = max(1 / wide_s, 2 / 0.018)
            assert model.rows_per_s(1) == pytest.approx(best)
            assert model.rows_per_s(2) == pytest.approx(best)
            assert model.predicted_s(1) == pytest.approx(wide_s)


def test_the_chooser_reads_every_batch_size_at_the_load_the_running_sizes_show() -> None:
    """ocr-mobile-like costs: calibrated before traffic, a batch of 1 takes 3.65 ms a row, of 2
    3.71 and of 4 3.88; under load only the size that runs is re-timed, batch 1 at 5.6 ms beside
    the daemon's threads.  As they stand, the stale sizes look 1.5x cheaper a
    row and the chooser switches to them (then back, once their windows fill with loaded runs);
    read at the load batch 1 shows, batch 1 keeps the best throughput."""
    import time

    from partitioner.feeds import random_values
    from perfmodels.history import HistoryKey, footprint

    proto = zoo.build("lenet5")
    with Runtime(workers="1x1", gpu_streams=0) as runtime:
        model = runtime.load(proto, max_batch=4)
        (worker,) = runtime.specs
        history = runtime.oracle.history

        def record(batch: int, seconds: float, runs: int) -> None:
            shape = footprint({n: v.shape for n, v in random_values(model.input_values, batch).items()})
            for _ in range(runs):
                history.record(HistoryKey(model.stages[0], worker.arch, shape), seconds)

        for batch, per_row in ((1, 0.00365), (2, 0.00371), (4, 0.00388)):
            record(batch, batch * per_row, history.min_samples)
        assert model.batch_for(400.0, 4) == 1  # past capacity: the best throughput, quietly
        time.sleep(0.11)  # past the chooser's refresh
        for seed in range(SizeTable.FRESH_AFTER):  # batches of 1 formed (and timed, fast: lenet5)
            model.submit(random_feeds(proto, 1, seed=seed)).result(timeout=30)
        record(1, 0.0056, 64)  # the window of batch 1 now holds loaded runs only
        time.sleep(0.11)
        assert model.predicted_s(2) / 2 < model.predicted_s(1) / 1.4, "batch 2 is stale, batch 1 loaded"
        assert model.batch_for(400.0, 4) == 1
        assert model._sizes.load == pytest.approx(0.0056 / 0.00365), "the batches formed set the load"
        assert model.batch_for(200.0, 4) == 1  # at 5.6/3.65 times its quiet cost no size keeps up


def _form(table: SizeTable, rows: int, batches: int) -> None:
    for _ in range(batches):
        table.formed(rows)


def test_a_size_first_timed_under_load_joins_the_table_at_that_load() -> None:
    table = SizeTable()
    nan = math.nan
    seconds, rows = table.update([nan, 0.010, nan], [nan, 100.0, nan])  # before traffic: batch 1 timed
    assert seconds[1] == 0.010 and rows[1] == 100.0 and math.isnan(seconds[2]) and math.isnan(rows[2])
    _form(table, 1, SizeTable.FRESH_AFTER - 1)
    seconds, _ = table.update([nan, 0.020, nan], [nan, 50.0, nan])
    assert table.load == 1.0 and seconds[1] == 0.010, "half a window of loaded runs is not yet their median"
    _form(table, 1, 1)
    # batch 1 runs 2x slower now, and batch 2 is first timed: at that load
    seconds, rows = table.update([nan, 0.020, 0.030], [nan, 50.0, 66.0])
    assert table.load == pytest.approx(2.0)
    assert seconds[1:] == pytest.approx([0.020, 0.030]) and rows[1:] == pytest.approx([50.0, 66.0])
    _form(table, 1, 1)
    seconds, rows = table.update([nan, 0.010, 0.030], [nan, 100.0, 66.0])  # the load went: batch 2 too
    assert seconds[1:] == pytest.approx([0.010, 0.015]) and rows[1:] == pytest.approx([100.0, 132.0])


def test_a_size_dropped_under_load_keeps_the_cost_its_loaded_runs_showed() -> None:
    """Quietly batch 2 costs what two of batch 1 do; loaded, 20% more a row (as ocr-mobile's
    batches of 2 did through the daemon past saturation).  Once both windows hold loaded runs,
    the table learns that, and keeps it after batch 2 goes unused, scaled with the load."""
    table = SizeTable()
    nan = math.nan
    table.update([nan, 0.010, 0.020], [nan, 200.0, 200.0])
    _form(table, 1, SizeTable.FRESH_AFTER)
    _form(table, 2, SizeTable.FRESH_AFTER)
    seconds, rows = table.update([nan, 0.015, 0.036], [nan, 133.0, 111.0])
    assert seconds[2] / seconds[1] == pytest.approx(2.4) and rows[1] > rows[2]
    for _ in range(SizeTable.STALE_AFTER + 1):  # batch 2 unused; batch 1 goes on at the same load
        _form(table, 1, 3)
        seconds, rows = table.update([nan, 0.015, 0.036], [nan, 133.0, 111.0])
    assert seconds[2] / seconds[1] == pytest.approx(2.4), "a dropped size looks cheap again"
    _form(table, 1, 3)
    seconds, rows = table.update([nan, 0.030, 0.036], [nan, 66.5, 111.0])  # load doubles; batch 2 stale
    assert seconds[1:] == pytest.approx([0.030, 0.072]) and rows[2] == pytest.approx(55.5)


def test_batched_answers_equal_unbatched_onnxruntime() -> None:
    model = zoo.build("lenet5")
    cases = [random_feeds(model, rows, seed=seed) for seed, rows in enumerate([1, 2, 1, 3, 1, 1, 2, 4] * 25)]
    with Runtime(policy="dmda") as runtime:
        loaded = runtime.load(model, ratios=(0.5, 0.5), max_batch=8, max_queue_delay_s=0.005)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda feeds: loaded.infer(feeds, timeout=60), cases))
        batches = list(loaded.batcher.batches) if loaded.batcher else []
    for feeds, got in zip(cases, answers):
        np.testing.assert_allclose(got["logits"], run_whole(model, feeds)["logits"], rtol=1e-5, atol=1e-6)
    assert sum(batches) == sum(f["input"].shape[0] for f in cases)
    assert max(batches) <= 8


def test_a_model_whose_outputs_ignore_the_batch_cannot_be_batched() -> None:
    with Runtime(policy="eager") as runtime, pytest.raises(UsageError, match="max_batch=1"):
        runtime.load(zoo.build("control-flow"), max_batch=4)


def doubling(launched: list[int]) -> Callable[[dict[str, np.ndarray], int], Future]:
    """A ``run_batch`` answering at once with twice the input; records each batch's rows."""
    def run_batch(feeds: dict[str, np.ndarray], rows: int, turn: object = None) -> Future:
        launched.append(rows)
        done: Future = Future()
        done.set_result({"y": feeds["x"] * 2})
        return done
    return run_batch


def test_requests_wait_while_every_worker_is_busy_then_leave_as_one_batch() -> None:
    """Like Triton's dynamic batcher: no capacity, no launch; a worker freeing up takes them all."""
    import threading

    launched: list[int] = []
    capacity = threading.Event()
    asked = threading.Event()

    def may_leave() -> bool:
        asked.set()
        return capacity.is_set()

    batcher = DynamicBatcher(doubling(launched), max_batch=8, max_delay_s=0.0, clock=MonotonicClock(),
                             may_leave=may_leave)
    futures = [batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1) for i in range(3)]
    assert asked.wait(30)
    assert launched == []  # held: no worker could take it
    capacity.set()
    batcher.poke()
    answers = [f.result(timeout=30)["y"] for f in futures]
    batcher.close()
    assert launched == [3]
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, np.full((1, 2), 2 * i, np.float32))


@pytest.mark.parametrize(("want", "requests", "launched_rows"), [(1, 3, [1, 1, 1]), (2, 4, [2, 2])])
def test_with_every_worker_busy_requests_leave_at_the_choosers_size(
        want: int, requests: int, launched_rows: list[int]) -> None:
    """Every worker busy (max batch 8).  The chooser says single requests keep up: they leave at
    once, one by one, queued behind the running work where any worker that frees up takes them,
    instead of waiting for capacity that never comes here.  It wants batches of 2: batches of 2
    leave, not one of 4 that the chooser had judged worse."""
    launched: list[int] = []
    batcher = DynamicBatcher(doubling(launched), max_batch=8, max_delay_s=0.0, clock=MonotonicClock(),
                             target=lambda rate: want, may_leave=lambda: False)
    futures = [batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1) for i in range(requests)]
    answers = [f.result(timeout=30)["y"] for f in futures]
    batcher.close()
    assert launched == launched_rows
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, np.full((1, 2), 2 * i, np.float32))


def test_without_room_requests_wait_and_leave_in_the_batch_chosen_when_their_turn_comes() -> None:
    """Past capacity the backlog waits in the batcher, not in the workers' queues: nothing leaves
    while the runtime gives no turn, and when the turn comes the batch is the chooser's size at
    that moment; the next batch asks for a turn of its own."""
    import threading

    launched: list[int] = []
    room = threading.Event()
    queued = threading.Event()
    want = [1]

    def take_turn(batcher: DynamicBatcher) -> bool:
        if room.is_set():
            return True
        queued.set()
        return False

    batcher = DynamicBatcher(doubling(launched), max_batch=8, max_delay_s=0.0, clock=MonotonicClock(),
                             target=lambda rate: want[0], may_leave=lambda: False, take_turn=take_turn)
    futures = [batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1) for i in range(6)]
    assert queued.wait(30)
    assert launched == []  # no turn: not one request went to the scheduler
    want[0] = 3  # meanwhile the chooser changed its mind
    room.set()
    batcher.serve_turn(object())  # the runtime's call, from the thread that freed the room
    answers = [f.result(timeout=30)["y"] for f in futures]
    batcher.close()
    assert launched == [3, 3]
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, np.full((1, 2), 2 * i, np.float32))


def test_past_capacity_a_batching_models_backlog_waits_in_its_batcher() -> None:
    """48 requests at once on one core: at most LOOKAHEAD jobs per worker slot are ever in the
    scheduler, the rest wait in the batcher (to leave in batches chosen when the worker frees
    up), and every answer is its own request's."""
    from hetsched.runtime import LOOKAHEAD
    from hetsched.task import Task, WorkerSpec

    model = zoo.build("lenet5")
    cases = [random_feeds(model, 1, seed=seed) for seed in range(48)]
    count = {"now": 0, "peak": 0}

    class InScheduler:  # called under the scheduler's lock
        def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
            if event == "submit":
                count["now"] += 1
                count["peak"] = max(count["peak"], count["now"])
            elif event in ("end", "fail"):
                count["now"] -= 1

    with Runtime(workers="1x1", policy="dmda", instruments=[InScheduler()]) as runtime:
        loaded = runtime.load(model, max_batch=4)
        futures = [loaded.submit(feeds) for feeds in cases]
        answers = [future.result(timeout=60) for future in futures]
    assert 1 <= count["peak"] <= LOOKAHEAD * 1
    for feeds, got in zip(cases, answers):
        np.testing.assert_allclose(got["logits"], run_whole(model, feeds)["logits"], rtol=1e-5, atol=1e-6)


def test_requests_a_full_queue_refuses_still_count_toward_the_rate_the_chooser_reads() -> None:
    """Past capacity a full queue lets in only what the workers answer, which batch 1 keeps up
    with; sized for that, the chooser would never batch behind a full queue.  So the batcher
    counts every arrival, let in or refused."""
    from hetsched.errors import OverloadedError

    proto = zoo.build("lenet5")
    with Runtime(workers="1x1", gpu_streams=0) as runtime:
        model = runtime.load(proto, max_batch=4, max_queue_delay_s=0.0, max_queue=1)
        assert model.batcher is not None
        big = random_feeds(proto, 512, seed=0)  # ~10 ms: the queue stays full meanwhile
        accepted, refused = [], 0
        for _ in range(5):
            try:
                accepted.append(model.submit(big))
            except OverloadedError as exc:
                assert "max_queue=1" in str(exc)
                refused += 1
        answers = [future.result(timeout=60) for future in accepted]
        assert refused >= 1, "the queue of one never filled"
        assert model.batcher.rate.arrivals == len(accepted) + refused
    for got in answers:
        np.testing.assert_allclose(got["logits"], run_whole(proto, big)["logits"], rtol=1e-5, atol=1e-6)
