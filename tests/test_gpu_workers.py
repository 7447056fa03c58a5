"""GPU workers: found through ONNX Runtime's CUDA provider and the CUDA driver, one worker per stream.

This machine has no GPU and a CPU-only onnxruntime, so what runs here is the real discovery
(which finds nothing), the real load of a GPU worker whose CUDA provider does not load (which
must fail, not compute on the CPU as a "GPU"), and the scheduling of tasks on GPU workers with
their provider list swapped for the CPU's (the one thin stand-in).  On a machine with
onnxruntime-gpu and a GPU, the last test runs the real thing.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from hetsched import workers, zoo
from hetsched.errors import DeviceUnavailableError, UsageError
from hetsched.runtime import Runtime
from hetsched.sequential import run_whole
from hetsched.topology import Gpu, discover, discover_gpus, gpu_workers
from partitioner.feeds import random_feeds

CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_each_gpu_gives_its_streams_as_workers_holding_no_cores() -> None:
    topology = discover()
    specs = gpu_workers([Gpu(0, "A"), Gpu(1, "B")], 2, topology)
    assert [(s.name, s.arch, s.cores, s.device, s.device_index) for s in specs] == [
        ("gpu0.s0", "cuda:A", (), "cuda", 0), ("gpu0.s1", "cuda:A", (), "cuda", 0),
        ("gpu1.s0", "cuda:B", (), "cuda", 1), ("gpu1.s1", "cuda:B", (), "cuda", 1)]
    name, options = workers.providers(specs[2])[0]
    assert name == "CUDAExecutionProvider" and options["device_id"] == "1"
    assert gpu_workers([Gpu(0, "A")], 0, topology) == []
    with pytest.raises(UsageError, match="gpu_streams=-1"):
        gpu_workers([Gpu(0, "A")], -1, topology)


@pytest.mark.skipif(CUDA, reason="this onnxruntime has the CUDA provider")
def test_without_the_cuda_provider_no_gpu_is_found() -> None:
    assert discover_gpus() == []
    with Runtime(workers="1x1") as runtime:
        assert all(spec.device == "cpu" for spec in runtime.specs)


@pytest.mark.skipif(CUDA, reason="this onnxruntime has the CUDA provider")
def test_a_gpu_worker_whose_cuda_provider_does_not_load_fails_its_load(monkeypatch: Any) -> None:
    monkeypatch.setattr("hetsched.runtime.discover_gpus", lambda: [Gpu(0, "no such GPU")])
    with Runtime(workers="1x1", gpu_streams=1) as runtime:
        with pytest.raises(DeviceUnavailableError, match="CUDAExecutionProvider.*gpu_streams=0"):
            runtime.load(zoo.build("lenet5"))


def workers_that_ran(runtime: Runtime, monkeypatch: Any) -> list[str]:
    """The names of the workers of every task run from now on, in order (read from the perf records)."""
    ran: list[str] = []
    record = runtime.oracle.record

    def recording(task: Any, worker: Any, seconds: float) -> None:
        ran.append(worker.name)
        record(task, worker, seconds)

    monkeypatch.setattr(runtime.oracle, "record", recording)
    return ran


def answers_like_plain_onnxruntime(runtime: Runtime, name: str, rtol: float) -> None:
    proto = zoo.build(name)
    model = runtime.load(proto, ratios=(0.5, 0.5))
    cases = [random_feeds(proto, batch, seed=seed) for seed in range(6) for batch in (1, 2)]
    wanted = [run_whole(proto, feeds) for feeds in cases]

    def one(i: int) -> None:
        got = model.infer(cases[i % len(cases)], timeout=120)
        for output, value in wanted[i % len(cases)].items():
            np.testing.assert_allclose(got[output], value, rtol=rtol, atol=rtol, err_msg=output)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(96)))


def test_tasks_run_on_gpu_workers_beside_the_core_groups(monkeypatch: Any) -> None:
    """The GPU workers' provider list is the CPU's here (no GPU): what is checked is that workers
    without cores take tasks beside the core groups and every answer stays exact."""
    monkeypatch.setattr("hetsched.runtime.discover_gpus", lambda: [Gpu(0, "stand-in")])
    monkeypatch.setattr(workers, "providers", lambda spec: ["CPUExecutionProvider"])
    with Runtime(workers="1x1", gpu_streams=2) as runtime:
        assert [s.name for s in runtime.specs] == ["cpu0", "gpu0.s0", "gpu0.s1"]
        assert runtime._slots == 3  # a core, and each stream
        ran = workers_that_ran(runtime, monkeypatch)
        threads: dict[str, set[int | None]] = {}
        for worker in runtime.executor.workers.values():  # type: ignore[attr-defined]
            original = worker._run_task

            def run_task(task: Any, session: Any, name: str = worker.spec.name,
                         original: Any = original) -> None:
                threads.setdefault(name, set()).add(threading.get_ident())
                original(task, session)

            worker._run_task = run_task
        answers_like_plain_onnxruntime(runtime, "googlenet", rtol=1e-4)
        for name in ("gpu0.s0", "gpu0.s1"):  # never on a caller's thread (infer's run_here)
            assert threads[name] == {runtime.executor.workers[name]._thread.ident}  # type: ignore[attr-defined]
    assert {"cpu0", "gpu0.s0", "gpu0.s1"} <= set(ran)


@pytest.mark.skipif(not CUDA or not discover_gpus(), reason="needs onnxruntime-gpu and a GPU")
def test_on_a_gpu_its_workers_run_cuda_sessions_and_answer_like_plain_onnxruntime(monkeypatch: Any) -> None:
    with Runtime(workers="auto", gpu_streams=2) as runtime:
        gpu = [w for w in runtime.executor.workers.values() if w.spec.device == "cuda"]  # type: ignore[attr-defined]
        assert gpu, "a GPU was found, so it has workers"
        ran = workers_that_ran(runtime, monkeypatch)
        answers_like_plain_onnxruntime(runtime, "googlenet", rtol=1e-3)  # cuDNN sums in other orders
    assert {w.spec.name for w in gpu} & set(ran), "no task ran on a GPU"


def test_an_accelerator_named_by_its_provider_takes_tasks_beside_the_core_groups(monkeypatch: Any) -> None:
    """The stock onnxruntime's one provider besides the CPU's is Azure's, which takes no node of these
    models (its sessions compute on the CPU provider behind it): a real provider list through the
    accelerator path, though no accelerator computes."""
    with Runtime(workers="1x1", gpu_streams=0, accelerators=["AzureExecutionProvider"]) as runtime:
        assert [(s.name, s.arch, s.cores, s.device) for s in runtime.specs] == [
            ("cpu0", "cpu:1t", (0,), "cpu"), ("acc0", "AzureExecutionProvider", (), "accelerator")]
        ran = workers_that_ran(runtime, monkeypatch)
        answers_like_plain_onnxruntime(runtime, "googlenet", rtol=1e-4)
        accelerator = runtime.executor.workers["acc0"]  # type: ignore[attr-defined]
        assert all(s.get_providers()[0] == "AzureExecutionProvider" for s in accelerator.sessions.values())
    assert {"cpu0", "acc0"} <= set(ran)


def test_an_accelerator_this_onnxruntime_lacks_fails_the_load_and_a_bad_name_fails_at_once() -> None:
    with Runtime(workers="1x1", gpu_streams=0,
                 accelerators=[("VitisAIExecutionProvider", {"config_file": "vaip_config.json"})]) as runtime:
        assert runtime.specs[1].provider_options == (("config_file", "vaip_config.json"),)
        with pytest.raises(DeviceUnavailableError, match="acc0 .*VitisAIExecutionProvider"):
            runtime.load(zoo.build("lenet5"))
    with pytest.raises(UsageError, match="execution provider"):
        Runtime(workers="1x1", accelerators=["dpu"])
