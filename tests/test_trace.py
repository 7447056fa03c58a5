"""Traces on a simulated platform (exact times): Chrome trace slices per worker, one async slice per
request, and the per-worker summary; a frontend's request stamps as nested slices; and `hetsched
serve --trace-file` writing one on stop, with every client request's way through each frontend."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from daemon_process import add_zoo_model
from onnx import TensorProto, helper, numpy_helper

from hetsched.clock import FakeClock
from hetsched.daemon.process import DaemonProcess
from hetsched.perf import TableOracle
from hetsched.policies import make_policy
from hetsched.runtime import Runtime
from hetsched.scheduler import Scheduler
from hetsched.simulate import SimulatedExecutor, table_duration
from hetsched.task import Job, Task, WorkerSpec
from hetsched.trace import PHASES, RequestStamps, TraceRecorder

WORKERS = [WorkerSpec("a", "cpu:1t", "host:0", (0,)), WorkerSpec("b", "cpu:1t", "host:0", (1,))]


def traced_run() -> TraceRecorder:
    """Three two-part requests (parts of 2 s then 1 s; batches of 1, 2, 3 rows) submitted at t=0 on
    two one-core workers."""
    clock = FakeClock()
    table = {("s0", "cpu:1t"): 2.0, ("s1", "cpu:1t"): 1.0}
    executor = SimulatedExecutor(clock, table_duration(table))
    recorder = TraceRecorder()
    scheduler = Scheduler(make_policy("eager"), WORKERS, clock=clock, executor=executor,
                          perf=TableOracle(table), instruments=[recorder])
    executor.scheduler = scheduler
    for i in range(3):
        job = Job(f"r{i}", [[], [0]])
        job.tasks = [Task(stage, part, job, f"x={i + 1}", i + 1) for part, stage in enumerate(("s0", "s1"))]
        scheduler.submit(job)
    executor.run()
    return recorder


def test_chrome_trace_has_a_slice_per_task_and_an_async_slice_per_request() -> None:
    trace = traced_run().chrome_trace()
    events = trace["traceEvents"]
    rows = {e["args"]["name"] for e in events if e["ph"] == "M"}
    slices = [e for e in events if e["ph"] == "X"]
    assert rows == {"a", "b"} and len(slices) == 6
    assert sorted(e["dur"] for e in slices) == pytest.approx([1e6] * 3 + [2e6] * 3)
    assert {e["name"]: e["args"]["rows"] for e in slices} == {  # each task's batch, to read batching
        f"r{i} part {part}": i + 1 for i in range(3) for part in (0, 1)}
    begins = {e["name"]: e["ts"] for e in events if e["ph"] == "b" and e["cat"] == "request"}
    ends = {e["name"]: e["ts"] for e in events if e["ph"] == "e" and e["cat"] == "request"}
    assert set(begins) == set(ends) == {"r0", "r1", "r2"}
    assert all(begins[job] == 0 for job in begins)  # every request arrived at t=0
    for job, end in ends.items():  # a request ends with its last task
        mine = [e["ts"] + e["dur"] for e in slices if e["name"].startswith(f"{job} ")]
        assert end == pytest.approx(max(mine))
    assert max(ends.values()) == pytest.approx(5e6)  # 3 x (2 + 1) s of work on two workers
    json.dumps(trace)  # what Perfetto reads


def frontend_slices(events: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per frontend request (its id): each slice's name -> (begin, end) in µs.  Checks that each has
    one begin and one end, no later than it, and that the whole request's slice (the one with
    ``args``) begins first and ends last among its id's events."""
    found: dict[str, dict[tuple[str, str], float]] = {}
    order: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("cat") == "frontend":
            assert (e["name"], e["ph"]) not in found.setdefault(e["id"], {}), e
            found[e["id"]][(e["name"], e["ph"])] = e["ts"]
            order.setdefault(e["id"], []).append(e)
    slices = {}
    for ident, stamps in found.items():
        names = {name for name, _ in stamps}
        assert all((n, "b") in stamps and (n, "e") in stamps and stamps[(n, "b")] <= stamps[(n, "e")]
                   for n in names), stamps
        first, last = order[ident][0], order[ident][-1]
        assert first["ph"] == "b" and "args" in first and last == {**last, "ph": "e", "name": first["name"]}
        slices[ident] = {n: (stamps[(n, "b")], stamps[(n, "e")]) for n in names}
    return slices


def test_a_frontends_stamps_become_a_request_slice_with_its_phases_nested() -> None:
    recorder = traced_run()
    grpc = RequestStamps("grpc", "m", 1.0)
    for offset, point in enumerate(("received_s", "submitted_s", "answered_s", "encoded_s", "sent_s"), 1):
        setattr(grpc, point, 1.0 + offset / 10)
    http = RequestStamps("http", "m", 2.0)  # no sending seen
    http.received_s, http.submitted_s, http.answered_s, http.encoded_s = 2.0, 2.25, 2.5, 3.0
    recorder.on_request(grpc)
    recorder.on_request(http)
    found = list(frontend_slices(recorder.chrome_trace()["traceEvents"]).values())
    assert [sorted(f) for f in found] == [sorted(["grpc m", *(p for p, _, _ in PHASES)]),
                                           sorted(["http m", "receive", "decode", "model", "encode"])]
    whole = found[0].pop("grpc m")
    assert whole == pytest.approx((1e6, 1.5e6))  # the simulated run's first event is at t=0
    assert [t for p, _, _ in PHASES for t in found[0][p]] == pytest.approx(
        [1e6 + (i + j) * 1e5 for i in range(5) for j in (0, 1)])
    assert found[1]["http m"] == pytest.approx((2e6, 3e6))
    assert found[1]["receive"] == pytest.approx((2e6, 2e6))
    assert found[1]["encode"] == pytest.approx((2.5e6, 3e6))


def test_transfers_get_a_row_per_link_and_the_share_hidden_under_compute() -> None:
    """A transfer over before its task started is hidden; one still running when it started, only
    up to the start."""
    recorder = traced_run()
    starts = {(e.job, e.part): e for e in recorder.events() if e.event == "start"}
    early, late = starts[("r0", 1)], starts[("r2", 0)]

    def task(event: Any) -> Any:  # what on_transfer reads of a task
        return SimpleNamespace(id=event.task_id, job=SimpleNamespace(name=event.job))

    recorder.on_transfer(task(early), "host:0", "host:1", 4096, early.when_s - 1.0, early.when_s - 0.5)
    recorder.on_transfer(task(late), "host:1", "host:0", 1024, late.when_s - 0.5, late.when_s + 0.5)
    summary = recorder.transfer_summary()
    assert (summary.transfers, summary.nbytes) == (2, 5120)
    assert summary.seconds == pytest.approx(1.5) and summary.hidden_share == pytest.approx(1.0 / 1.5)
    events = recorder.chrome_trace()["traceEvents"]
    rows = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    moves = [e for e in events if e["ph"] == "X" and rows[e["tid"]].startswith("transfers")]
    assert {rows[e["tid"]] for e in moves} == {"transfers host:0 -> host:1", "transfers host:1 -> host:0"}
    assert sorted(e["args"]["bytes"] for e in moves) == [1024, 4096]
    assert sorted(e["dur"] for e in moves) == pytest.approx([0.5e6, 1e6])


def test_no_transfers_no_hidden_share() -> None:
    assert math.isnan(traced_run().transfer_summary().hidden_share)


def test_summary_gives_each_workers_busy_time() -> None:
    summary = {row.worker: row for row in traced_run().summary()}
    assert sum(row.tasks for row in summary.values()) == 6
    assert sum(row.busy_s for row in summary.values()) == pytest.approx(9.0)
    assert all(0 < row.utilization <= 1 for row in summary.values())
    assert all(math.isnan(row.off_cpu_share) for row in summary.values())  # a simulated run has no CPU


def test_a_tasks_cpu_time_is_in_its_slice_and_the_off_cpu_share_in_the_summary() -> None:
    """Tasks of 4 s and 2 s whose threads were on CPU 3 s and 2 s: a quarter of a 4 s slice, and a
    sixth of the worker's busy time, off CPU; a task without a CPU time counts for busy time only."""
    recorder = TraceRecorder()
    job = Job("r", [[], [], []])
    job.tasks = [Task("s", part, job, "x=1", 1) for part in range(3)]
    for task, (start, end, cpu) in zip(job.tasks, [(0.0, 4.0, 3.0), (4.0, 6.0, 2.0), (6.0, 7.0, math.nan)]):
        task.cpu_s = cpu
        recorder.on_event("start", task, WORKERS[0], start)
        recorder.on_event("end", task, WORKERS[0], end)
    slices = [e for e in recorder.chrome_trace()["traceEvents"] if e["ph"] == "X"]
    assert [e["args"].get("cpu_ms") for e in slices] == [3000.0, 2000.0, None]
    (row,) = recorder.summary()
    assert row.busy_s == pytest.approx(7.0)
    assert row.off_cpu_share == pytest.approx(1 / 6)


def _product_chain(size: int = 256, depth: int = 6) -> onnx.ModelProto:
    """Matrix products of a few milliseconds each on one core."""
    rng = np.random.default_rng(0)
    nodes, weights, last = [], [], "x"
    for i in range(depth):
        weights.append(numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"y{i}"]))
        last = f"y{i}"
    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, size])

    graph = helper.make_graph(nodes, "chain", [value("x")], [value(last)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _off_cpu_share(core: int, crowded: bool) -> float:
    """A one-core worker's off-CPU share over 20 requests, with a process spinning on its core or not."""
    model = _product_chain()
    feeds = {"x": np.ones((64, 256), np.float32)}
    spinner = (subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\n"
                                 "while True: pass"]) if crowded else None)
    try:
        with Runtime(workers=str(core), trace=True) as runtime:
            loaded = runtime.load(model)
            for _ in range(20):
                loaded.submit(feeds).result(timeout=60)  # on the worker's own thread
            assert runtime.tracer is not None
            (row,) = [r for r in runtime.tracer.summary() if r.tasks >= 20]
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return row.off_cpu_share


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins a process to the worker's core")
def test_a_worker_crowded_off_its_core_shows_it_as_time_off_cpu() -> None:
    """A process spinning on a one-core worker's core takes about half of it: the worker's tasks
    then spend a large share of their time off CPU, which they do not on a quiet core."""
    core = min(os.sched_getaffinity(0))
    quiet, crowded = _off_cpu_share(core, crowded=False), _off_cpu_share(core, crowded=True)
    assert 0 <= quiet < 0.2
    assert crowded > 0.3


def test_the_daemon_writes_its_trace_on_stop(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    add_zoo_model(tmp_path / "repository", "lenet5", "lenet5",
                  'parameters { key: "hetsched.ratios" value { string_value: "0.5,0.5" } }')
    trace_file = tmp_path / "trace.json"
    server = DaemonProcess(tmp_path / "repository", "--trace-file", str(trace_file),
                           perfmodel_dir=tmp_path / "p")
    client = grpcclient.InferenceServerClient(server.grpc)
    request = grpcclient.InferInput("input", [1, 1, 32, 32], "FP32")
    request.set_data_from_numpy(np.zeros((1, 1, 32, 32), np.float32))
    for _ in range(3):
        client.infer("lenet5", [request])
    answers: list[Any] = []
    client.start_stream(lambda result, error: answers.append(error or result))
    client.async_stream_infer("lenet5", [request])
    client.stop_stream()  # waits for the answer
    client.close()
    wrong = grpcclient.InferInput("input", [1, 1, 32, 31], "FP32")  # traced, refused, not recorded
    wrong.set_data_from_numpy(np.zeros((1, 1, 32, 31), np.float32))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT|shape"):
        grpcclient.InferenceServerClient(server.grpc).infer("lenet5", [wrong])
    http = httpclient.InferenceServerClient(server.http)
    http_request = httpclient.InferInput("input", [1, 1, 32, 32], "FP32")
    http_request.set_data_from_numpy(np.zeros((1, 1, 32, 32), np.float32))
    http.infer("lenet5", [http_request])
    http.close()
    assert server.stop() == 0, server.text()[-2000:]
    assert not any(isinstance(a, Exception) for a in answers) and len(answers) == 1
    events = json.loads(trace_file.read_text())["traceEvents"]
    jobs = {e["name"]: e["ts"] for e in events
            if e["ph"] == "b" and e["cat"] == "request" and not e["name"].endswith(" held")}
    ended = {e["name"]: e["ts"] for e in events if e["ph"] == "e" and e["cat"] == "request"}
    assert len(jobs) >= 5  # the warm-up's requests are traced too
    assert sum(e["ph"] == "X" for e in events) == 2 * len(jobs)
    # every task ran on a local worker's thread (or a handler's), which timed its CPU
    assert all(0 < e["args"]["cpu_ms"] for e in events if e["ph"] == "X")
    assert "% of it off CPU" in server.text()
    requests = list(frontend_slices(events).values())  # the clients' five, not the warm-up's
    assert sorted(next(n for n in r if n.startswith(("grpc", "http"))) for r in requests) == [
        "grpc lenet5"] * 3 + ["grpc stream lenet5", "http lenet5"]
    for r in requests:
        whole = next(v for n, v in r.items() if "lenet5" in n)
        kind = next(n for n in r if "lenet5" in n)
        # the phases each frontend sees, in order, one after the other, within the whole
        seen = [p for p, _, _ in PHASES if p in r]
        assert seen == {"grpc lenet5": ["receive", "decode", "model", "encode", "send"],
                        "grpc stream lenet5": ["receive", "decode", "model", "encode"],
                        "http lenet5": ["receive", "decode", "model", "encode"]}[kind]
        assert r[seen[0]][0] == whole[0] and r[seen[-1]][1] == whole[1]
        if kind == "grpc lenet5":  # stamped at grpc's poller, before a pool thread ran the handler
            assert r["receive"][0] < r["receive"][1]
        assert all(r[a][1] == r[b][0] and r[a][0] <= r[a][1] for a, b in zip(seen, seen[1:]))
        # on the scheduler's clock: a job of the trace runs within the request's model phase
        start, end = r["model"]
        assert any(start <= jobs[j] and ended[j] <= end for j in jobs), (r, jobs, ended)


class _Gated:
    """A real session whose first run waits for a gate: the worker stays busy until it opens."""

    def __init__(self, session: Any, gate: Any) -> None:
        self.session, self.gate, self.runs = session, gate, 0

    def run(self, names: Any, feeds: Any) -> Any:
        self.runs += 1
        if self.runs == 1:
            assert self.gate.wait(30)
        return self.session.run(names, feeds)


def test_a_request_that_waited_for_room_shows_its_wait_nested_in_its_job() -> None:
    """One worker kept busy while six requests arrive: those beyond the lookahead wait in the
    admission line, and the trace shows each such wait as a "held" slice from the request's
    arrival to its admission, first in its job's slice; the others have none."""
    import threading

    from hetsched import zoo
    from hetsched.runtime import LOOKAHEAD, Runtime
    from hetsched.sequential import run_whole
    from partitioner.feeds import random_feeds

    proto = zoo.build("lenet5")
    gate = threading.Event()
    with Runtime(workers="1x1", narrow=False, gpu_streams=0, policy="eager", trace=True) as runtime:
        model = runtime.load(proto)
        worker = runtime.executor.workers["cpu0"]  # type: ignore[attr-defined]
        for stage, session in list(worker.sessions.items()):
            worker.sessions[stage] = _Gated(session, gate)
        cases = [random_feeds(proto, 1, seed=seed) for seed in range(6)]
        futures = [model.submit(feeds) for feeds in cases]
        gate.set()
        for feeds, future in zip(cases, futures):
            np.testing.assert_allclose(future.result(30)["logits"], run_whole(proto, feeds)["logits"],
                                       rtol=1e-5, atol=1e-6)
        assert runtime.tracer is not None
        events = runtime.tracer.chrome_trace()["traceEvents"]
    jobs = [e for e in events if e.get("cat") == "request"]
    by_id: dict[int, list[dict[str, Any]]] = {}
    for e in jobs:
        by_id.setdefault(e["id"], []).append(e)
    mine = [slices for slices in by_id.values() if slices[0]["name"].startswith(model.name)][-6:]
    held = [slices for slices in mine if len(slices) == 4]
    assert len(held) == 6 - LOOKAHEAD and all(len(s) == 2 for s in mine if s not in held)
    for job_b, held_b, held_e, job_e in held:  # nested: the job begins with its wait, ends last
        assert (job_b["ph"], held_b["ph"], held_e["ph"], job_e["ph"]) == ("b", "b", "e", "e")
        assert held_b["name"] == f"{job_b['name']} held"
        assert job_b["ts"] == held_b["ts"] < held_e["ts"] <= job_e["ts"]
        tasks = [e["ts"] for e in events if e["ph"] == "X" and e["name"].startswith(job_b["name"] + " ")]
        assert held_e["ts"] <= min(tasks)  # admitted, then run
