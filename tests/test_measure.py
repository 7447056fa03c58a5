"""The sessions perfmodels.measure makes: what every worker, profile and bench runs with."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from perfmodels.measure import cpu_session, session_options


def _matmul_chain(size: int = 384, depth: int = 4) -> bytes:
    """Matrix products big enough that ONNX Runtime splits each over its intra-op pool."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"y{i}"]))
        last = f"y{i}"
    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size])

    graph = helper.make_graph(nodes, "chain", [value("x")], [value(last)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _thread_cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread CPU time from /proc")
def test_a_workers_intra_op_threads_stop_spinning_when_a_run_returns() -> None:
    """A pool thread spinning after its run takes the core from the next session on it (another
    stage, the narrow worker there): ORT's default spin went on ~60 ms after each run here.  Within
    a run they spin (blocking between operators cost yolov8n 14% on 2 threads)."""
    import onnxruntime as ort

    before = set(os.listdir("/proc/self/task"))
    session = ort.InferenceSession(_matmul_chain(), session_options(2, spin=True),
                                   providers=["CPUExecutionProvider"])
    pool = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
    assert pool, "a 2-thread session starts an intra-op thread"
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    x = {"x": np.ones((384, 384), np.float32)}
    for _ in range(5):
        session.run(None, x)
    spent = sum(map(_thread_cpu_s, pool))
    time.sleep(0.3)
    idle_cpu_s = sum(map(_thread_cpu_s, pool)) - spent
    assert idle_cpu_s < 0.025, f"the session's intra-op threads used {idle_cpu_s:.3f} s of CPU while idle"


def test_sessions_that_may_share_their_cores_never_spin() -> None:
    """Profiling, calibration and a Dask host's lanes: other processes may run on the same cores."""
    session = cpu_session(_matmul_chain(), threads=2)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_local_workers_sessions_spin_and_stop_after_each_run() -> None:
    """The sessions a wide CPU worker creates: its cores are its own while it runs (the scheduler
    reserves them), so its threads may spin."""
    from hetsched.task import WorkerSpec
    from hetsched.workers import session_options as worker_options

    options = worker_options(WorkerSpec("cpu0", "cpu:2t", "host:0", (0, 1)))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.get_session_config_entry("session.intra_op.thread_affinities") == "2"
