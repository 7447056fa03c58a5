"""hetsched on a real Dask cluster: distributed.LocalCluster, worker processes, one thread each.

Every answer is compared with plain ONNX Runtime on the same input; workers are killed and added
while requests are in flight.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from daemon_process import add_model

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess
from hetsched.errors import HetschedError, RemoteTaskError, TaskFailedError, UsageError
from hetsched.runtime import Model, Runtime
from hetsched.sequential import run_whole
from partitioner.feeds import random_feeds

from checks import reshape_by_three

distributed = pytest.importorskip("distributed")

MODELS = {
    "lenet5": (0.5, 0.5),
    "googlenet": (0.5, 0.5),
    "multi-io": (0.75, 0.25),
    "control-flow": (0.4, 0.3, 0.3),
}
Arrays = dict[str, np.ndarray]


def new_cluster(workers: int) -> distributed.LocalCluster:
    return distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    )


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    with new_cluster(3) as cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


def expected(model: onnx.ModelProto, batch: int, seed: int) -> tuple[Arrays, Arrays]:
    feeds = random_feeds(model, batch, seed=seed)
    return feeds, run_whole(model, feeds)


def assert_same(got: Arrays, want: Arrays) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("policy", ["dmda", "eager"])
def test_every_answer_across_nodes_equals_plain_onnxruntime(client: distributed.Client, policy: str) -> None:
    """Four partitioned models at once, batch sizes 1-3, 6 threads; every part may run on any node."""
    protos = {name: zoo.build(name) for name in MODELS}
    cases = [(name, batch, seed) for seed in range(3) for name in MODELS for batch in (1, 2, 3)]
    references = {case: expected(protos[case[0]], case[1], case[2]) for case in cases}
    with Runtime(cluster=client, policy=policy, trace=True) as runtime:
        assert len(runtime.specs) == 3 and all(spec.device == "remote" for spec in runtime.specs)
        runtime.executor.prefetch_min_s = 0.0  # inputs go ahead whenever a worker is busy (loopback is fast)
        models = {name: runtime.load(protos[name], ratios, name=name) for name, ratios in MODELS.items()}

        def one(i: int) -> None:
            name, batch, seed = cases[i % len(cases)]
            feeds, want = references[(name, batch, seed)]
            assert_same(models[name].infer(feeds, timeout=120), want)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(one, range(150)))
        assert runtime.tracer is not None
        used = {event.worker for event in runtime.tracer.events() if event.worker}
        stats = runtime.scheduler.statistics()
        moved = runtime.tracer.transfer_summary()
    assert stats.finished_jobs == 150 and stats.failed_jobs == 0
    assert len(used) == 3, "every node ran tasks"
    if policy == "dmda":  # it queues tasks on busy workers, whose inputs then go ahead (eager never queues)
        assert runtime.executor.prefetched > 0
        assert moved.transfers > 0 and moved.nbytes > 0 and 0 <= moved.hidden_share <= 1


def test_a_part_boundary_crossing_nodes_moves_data_peer_to_peer(client: distributed.Client) -> None:
    proto = zoo.build("googlenet")
    with Runtime(cluster=client) as runtime:
        first, second = sorted(spec.name for spec in runtime.specs)[:2]
        model = runtime.load(proto, ratios=(0.5, 0.5), pin={0: [first], 1: [second]})
        for seed in range(4):
            feeds, want = expected(proto, 2, seed)
            assert_same(model.infer(feeds, timeout=120), want)
        src, dst = (next(s for s in runtime.specs if s.name == n).memory_node for n in (first, second))
        link = runtime.executor.bus.link(src, dst)
        assert link is not None and link.count == 4, "each request's cut tensors went worker to worker"


def test_pins_naming_unknown_workers_or_parts_are_refused(client: distributed.Client) -> None:
    with Runtime(cluster=client) as runtime:
        with pytest.raises(UsageError, match="unknown workers \\['cpu0'\\]"):
            runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5), pin={0: ["cpu0"]})
        with pytest.raises(UsageError, match="parts 0..1"):
            runtime.load(zoo.build("lenet5"), ratios=(0.5, 0.5), pin={2: [runtime.specs[0].name]})


def test_a_failing_part_fails_only_its_request(client: distributed.Client) -> None:
    with Runtime(cluster=client) as runtime:
        model = runtime.load(reshape_by_three(), ratios=(0.5, 0.5))
        futures = [model.submit({"x": np.ones((1 if i % 3 == 0 else 3, 4), np.float32)}) for i in range(12)]
        for i, future in enumerate(futures):
            if i % 3:
                np.testing.assert_array_equal(future.result(timeout=60)["y"], -np.ones((4, 3), np.float32))
                continue
            with pytest.raises(TaskFailedError) as info:
                future.result(timeout=60)
            assert isinstance(info.value.__cause__, RemoteTaskError) and "reshape" in str(info.value)


def _load_test(
    model: Model, proto: onnx.ModelProto, seconds: float, during: Callable[[], object]
) -> tuple[int, list[str]]:
    """Send requests from 4 threads for ``seconds`` while ``during()`` runs; check every answer."""
    stop = threading.Event()
    answered, errors = [0], []
    references = [expected(proto, 1 + seed % 2, seed) for seed in range(6)]

    def sender(index: int) -> None:
        i = index
        while not stop.is_set():
            feeds, want = references[i % len(references)]
            i += 4
            try:
                got = model.infer(feeds, timeout=120)
            except HetschedError as exc:  # a clear error is acceptable, a wrong answer or a hang is not
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            assert_same(got, want)
            answered[0] += 1

    with ThreadPoolExecutor(4) as pool:
        senders = [pool.submit(sender, i) for i in range(4)]
        time.sleep(seconds / 3)
        during()
        time.sleep(2 * seconds / 3)
        stop.set()
        for future in senders:
            future.result(timeout=180)
    return answered[0], errors


def test_a_worker_killed_under_load_loses_no_request() -> None:
    proto = zoo.build("googlenet")
    with new_cluster(3) as cluster, distributed.Client(cluster) as client:
        with Runtime(cluster=client) as runtime:
            model = runtime.load(proto, ratios=(0.5, 0.5))
            victim = runtime.specs[0]
            pids = client.run(os.getpid)
            victim_pid = pids[victim.memory_node.partition(":")[2]]
            answered, errors = _load_test(model, proto, 6.0, lambda: os.kill(victim_pid, signal.SIGKILL))
            names = {spec.name for spec in runtime.specs}
    # requests running on the victim, or holding data there, were resent (how many depends on timing)
    assert answered > 20 and not errors, errors
    assert victim.name not in names


def test_a_worker_added_under_load_gets_work() -> None:
    proto = zoo.build("googlenet")
    with new_cluster(1) as cluster, distributed.Client(cluster) as client:
        with Runtime(cluster=client, trace=True) as runtime:
            model = runtime.load(proto, ratios=(0.5, 0.5))
            first = runtime.specs[0].name

            def add_worker() -> None:
                cluster.scale(2)
                client.wait_for_workers(2, timeout=60)

            answered, errors = _load_test(model, proto, 6.0, add_worker)
            assert runtime.tracer is not None
            used = {event.worker for event in runtime.tracer.events() if event.worker}
    assert answered > 10 and not errors, errors
    assert len(used - {first}) == 1, f"the new worker ran tasks: {used}"


def test_the_daemon_serves_on_a_dask_cluster(client: distributed.Client, tmp_path: Path) -> None:
    """``hetsched serve --dask-scheduler``: Triton's own client in, answers from the cluster's workers."""
    import tritonclient.grpc as grpcclient

    proto = zoo.build("lenet5")
    add_model(
        tmp_path, "lenet5", proto, 'parameters { key: "hetsched.ratios" value { string_value: "0.5,0.5" } }'
    )
    address = client.scheduler.address
    with DaemonProcess(tmp_path, "--dask-scheduler", address, perfmodel_dir=tmp_path / "perf") as server:
        triton = grpcclient.InferenceServerClient(server.grpc)
        for seed in range(3):
            feeds, want = expected(proto, 1 + seed, seed)
            request = grpcclient.InferInput("input", list(feeds["input"].shape), "FP32")
            request.set_data_from_numpy(feeds["input"])
            answer = triton.infer("lenet5", [request])
            for name, value in want.items():
                np.testing.assert_allclose(answer.as_numpy(name), value, rtol=1e-4, atol=1e-5)
        triton.close()
        assert "3 workers" in server.text() and "dask@" in server.text()


def test_a_dask_worker_with_two_threads_is_a_core_group() -> None:
    """A wide worker (both threads) for a lone request, two narrow ones (a thread each) under load."""
    proto = zoo.build("googlenet")
    references = [expected(proto, 1, seed) for seed in range(4)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        with Runtime(cluster=client, trace=True) as runtime:
            wide, *narrow = runtime.specs
            assert wide.arch == "cpu:2t@127.0.0.1" and [w.arch for w in narrow] == ["cpu:1t@127.0.0.1"] * 2
            assert all(wide.overlaps(w) for w in narrow) and not narrow[0].overlaps(narrow[1])
            model = runtime.load(proto)
            model.warm_up(12)
            for feeds, want in references:
                assert_same(model.infer(feeds, timeout=60), want)
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda i: model.infer(references[i % 4][0], timeout=60), range(24)))
            for i, got in enumerate(answers):
                assert_same(got, references[i % 4][1])
            assert runtime.tracer is not None
            used = {event.worker for event in runtime.tracer.events() if event.worker}
    assert used == {wide.name, narrow[0].name, narrow[1].name}


def test_part_models_travel_once_per_worker_and_runtimes_share_hosts(client: distributed.Client) -> None:
    proto = zoo.build("lenet5")
    feeds, want = expected(proto, 2, 0)
    with Runtime(cluster=client) as first, Runtime(cluster=client) as second:
        first.load(proto, ratios=(0.5, 0.5), name="a")
        assert first.executor.shipped_bytes > 0
        other = second.load(proto, ratios=(0.5, 0.5), name="b")
        assert second.executor.shipped_bytes == 0, "the hosts had these stages already"
        first.unload("a")  # the second runtime still uses the same stages on the same hosts
        assert_same(other.infer(feeds, timeout=60), want)


def test_inputs_go_ahead_only_when_moving_them_costs_more_than_a_round_trip() -> None:
    from hetsched.cluster.executor import worth_sending_ahead
    from perfmodels.transfer import BusModel

    bus = BusModel()
    bus.set_link("host:0", "worker:tcp://a:1", "network", 1e-3, 1e9)  # 1 ms + bytes / 1 GB/s
    destination = "worker:tcp://a:1"
    assert not worth_sending_ahead(bus, [("host:0", 600_000)], destination)  # 0.6 ms of bytes < 1 ms
    assert worth_sending_ahead(bus, [("host:0", 600_000)] * 2, destination)  # 1.2 ms > 1 ms
    assert worth_sending_ahead(bus, [("host:0", 1)], destination, threshold_s=0.0)
    assert worth_sending_ahead(bus, [("worker:tcp://b:1", 10)], destination), "an unmeasured link"
