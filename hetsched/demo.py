"""The main job (the README's first command): a zoo model is profiled, partitioned, checked against
plain ONNX Runtime, served by ``hetsched serve`` on this machine's processors and put under a short
load beside plain ONNX Runtime and, when the bench extra brings it, a real Triton; a table and a PNG.

Every server is driven the same way: a closed loop, first one request at a time (latency), then
two requests in flight per core (throughput), each request through its own ``tritonclient`` gRPC
client (plain ONNX Runtime: threads sharing one session, as a user would serve it themselves).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hetsched import zoo
from hetsched.sequential import SequentialRunner
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.partition import partition
from partitioner.plan import PartitionPlan
from perfmodels.measure import cpu_session
from perfmodels.profile import DEFAULT_METHOD, profile

Progress = Callable[[int, int], None]
Call = Callable[[], object]
MAX_BATCH = 4  # what Triton's ORT backend completes a config with; both servers batch up to it


@dataclass(frozen=True)
class PathResult:
    """One way of serving the model, under the same closed-loop load."""

    label: str
    p50_ms: float  # one request at a time
    p99_ms: float
    rps: float  # with `in_flight` requests always outstanding
    loaded_p50_ms: float
    loaded_p99_ms: float


@dataclass
class DemoReport:
    """What the demo did and found."""

    model: str
    batch: int
    plan: PartitionPlan
    plan_dir: Path
    profile_method: str
    max_abs_diff: float
    in_flight: int
    results: list[PathResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it did not run
    plot: Path | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    model: str = "googlenet",
    ratios: str = "0.8,0.2",
    batch: int = 1,
    out_dir: str | None = None,
    seconds: float = 5.0,
    triton: bool = True,
    progress: Callable[[str], Progress] | None = None,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Run the main job; ``progress(label)`` returns a callback for each long step, ``say`` logs steps."""
    steps: dict[str, float] = {}
    out = Path(out_dir or tempfile.mkdtemp(prefix="hetsched-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    with _step(steps, "profile", say, f"{model}: building and profiling ({DEFAULT_METHOD})"):
        proto = zoo.build(model)
        graph = build_graph(proto, batch=batch)
        costs = profile(graph, DEFAULT_METHOD, progress=progress("profile") if progress else None)
        graph = graph.with_costs(costs.seconds, costs.arch, costs.method)
    with _step(steps, "partition", say, f"partitioning into {ratios} with METIS"):
        result = partition(graph, ratios, source_label=f"zoo:{model}")
        plan_dir = out / "plan"
        result.save(plan_dir)
    feeds = random_feeds(proto, batch)
    with _step(steps, "check", say, "checking the parts against the whole model"):
        diff = _max_diff(proto, result.plan, plan_dir, feeds)
    report = DemoReport(model, batch, result.plan, plan_dir, costs.method, diff, 2 * _cores())
    model_path = out / f"{model}.onnx"
    onnx.save_model(proto, str(model_path))
    with _step(steps, "onnxruntime", say, f"plain ONNX Runtime: {seconds:.0f} s of load"):
        report.results.append(_measure_onnxruntime(proto, feeds, report.in_flight, seconds))
    with _step(steps, "runtime", say, "hetsched in process (hetsched.Runtime): load, warm up, load"):
        report.results.append(_measure_runtime(proto, ratios, feeds, report.in_flight, seconds))
    with _step(steps, "hetsched", say, "hetsched serve: start, warm up, load"):
        report.results.append(
            _measure_hetsched(out, model, model_path, ratios, feeds, report.in_flight, seconds)
        )
    if triton:
        with _step(steps, "triton", say, "Triton (Python backend running ONNX Runtime): start, load"):
            _measure_triton(report, model, model_path, feeds, seconds)
    else:
        report.skipped["Triton"] = "--no-triton"
    report.plot = _plot(report, out / "demo.png")
    report.step_seconds.update(steps)
    return report


@contextmanager
def _step(steps: dict[str, float], name: str, say: Callable[[str], None], what: str) -> Iterator[None]:
    say(f"... {what}")
    start = time.perf_counter()
    yield
    steps[name] = time.perf_counter() - start


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _max_diff(
    proto: onnx.ModelProto, plan: PartitionPlan, plan_dir: Path, feeds: dict[str, np.ndarray]
) -> float:
    whole = cpu_session(proto)
    names = [o.name for o in whole.get_outputs()]
    expected = dict(zip(names, whole.run(names, feeds)))
    got = SequentialRunner(plan, plan_dir).run(feeds)
    return max(float(np.max(np.abs(expected[n] - got[n]))) if expected[n].size else 0.0 for n in names)


def closed_loop(make_call: Callable[[], Call], in_flight: int, seconds: float) -> tuple[list[float], float]:
    """Latencies (s) and requests/s with ``in_flight`` callers, each with its own ``make_call()``."""
    deadline = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(in_flight)]
    calls = [make_call() for _ in range(in_flight)]
    for call in calls:
        call()  # connections open, sessions warm

    def caller(index: int) -> None:
        call, mine = calls[index], latencies[index]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            call()
            mine.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = [value for mine in latencies for value in mine]
    return merged, len(merged) / (time.perf_counter() - start)


def _result(label: str, make_call: Callable[[], Call], in_flight: int, seconds: float) -> PathResult:
    alone, _ = closed_loop(make_call, 1, seconds / 2)
    loaded, rps = closed_loop(make_call, in_flight, seconds)
    return PathResult(label, _pct(alone, 50), _pct(alone, 99), rps, _pct(loaded, 50), _pct(loaded, 99))


def _pct(values: list[float], q: float) -> float:
    """The q-th percentile of ``values`` (seconds), in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1e3


def _measure_onnxruntime(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray], in_flight: int, seconds: float
) -> PathResult:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return _result("plain ONNX Runtime", lambda: lambda: session.run(None, feeds), in_flight, seconds)


def _measure_runtime(
    proto: onnx.ModelProto, ratios: str, feeds: dict[str, np.ndarray], in_flight: int, seconds: float
) -> PathResult:
    from hetsched.runtime import Runtime, rows_independent

    with Runtime() as runtime:
        max_batch = MAX_BATCH if rows_independent(proto) else 1
        model = runtime.load(proto, ratios=[float(r) for r in ratios.split(",")], max_batch=max_batch)
        model.warm_up(64)
        return _result(f"hetsched.Runtime ({ratios})", lambda: lambda: model.infer(feeds), in_flight, seconds)


def _grpc_calls(url: str, model: str, feeds: dict[str, np.ndarray], opened: list[Any]) -> Callable[[], Call]:
    """A factory of calls through their own tritonclient gRPC clients (kept in ``opened`` to close)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    def make_call() -> Call:
        client = grpcclient.InferenceServerClient(url)
        opened.append(client)
        inputs = []
        for name, value in feeds.items():
            tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return lambda: client.infer(model, inputs)

    return make_call


def _measure_hetsched(
    out: Path,
    model: str,
    model_path: Path,
    ratios: str,
    feeds: dict[str, np.ndarray],
    in_flight: int,
    seconds: float,
) -> PathResult:
    from hetsched.daemon.process import DaemonProcess

    version = out / "repository" / model / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.onnx").write_bytes(model_path.read_bytes())
    (out / "repository" / model / "config.pbtxt").write_text(
        f'parameters {{ key: "hetsched.ratios" value {{ string_value: "{ratios}" }} }}\n'
    )
    opened: list[Any] = []
    # A perf-model store of its own: the demo calibrates from scratch, whatever ran here before.
    with DaemonProcess(out / "repository", perfmodel_dir=out / "perfmodels") as server:
        try:
            return _result(
                f"hetsched serve ({ratios})",
                _grpc_calls(server.grpc, model, feeds, opened),
                in_flight,
                seconds,
            )
        finally:
            for client in opened:
                client.close()


def _measure_triton(
    report: DemoReport, model: str, model_path: Path, feeds: dict[str, np.ndarray], seconds: float
) -> None:
    """Triton in its two static extremes: one instance with every core (latency), one per core."""
    try:
        from hetsched.tritonserver import TritonConfig, TritonServer, triton_available
    except ImportError as exc:  # nvidia-pytriton is the bench extra
        report.skipped["Triton"] = f"{exc}; pip install 'hetsched[bench]'"
        return
    missing = triton_available()
    if missing:
        report.skipped["Triton"] = missing
        return
    cores = _cores()
    for config in (TritonConfig(1, cores, MAX_BATCH, 0), TritonConfig(cores, 1, MAX_BATCH, 0)):
        opened: list[Any] = []
        with TritonServer({model: model_path}, config) as server:
            try:
                result = _result(
                    config.label(), _grpc_calls(server.grpc, model, feeds, opened), report.in_flight, seconds
                )
            finally:
                for client in opened:
                    client.close()  # an open HTTP client holds Triton's shutdown
        report.results.append(result)


def _plot(report: DemoReport, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        report.skipped["plot"] = "matplotlib is not installed; pip install 'hetsched[bench]'"
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in report.results]
    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(labels))
    latency.bar(x - 0.2, [r.p50_ms for r in report.results], 0.4, label="p50")
    latency.bar(x + 0.2, [r.p99_ms for r in report.results], 0.4, label="p99")
    latency.set_title("one request at a time")
    latency.set_ylabel("latency (ms)")
    throughput.bar(x, [r.rps for r in report.results], 0.6, color="C2")
    throughput.set_title(f"{report.in_flight} requests in flight")
    throughput.set_ylabel("requests / s")
    for axis in (latency, throughput):
        axis.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        axis.grid(True, axis="y", alpha=0.3)
    latency.legend()
    fig.suptitle(f"{report.model}, batch {report.batch}, {_cores()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_report(report: DemoReport) -> str:
    """The plan, the correctness check, and the servers side by side."""
    plan = report.plan
    lines = [
        f"model {report.model} (zoo), batch {report.batch}, costs from {report.profile_method}, "
        f"method {plan.method}, ratios {','.join(f'{r:g}' for r in plan.ratios)}",
        f"{'part':>4}  {'nodes':>5}  {'target':>6}  {'share':>6}  {'cut out':>10}  file",
    ]
    for part in plan.parts:
        out_bytes = sum(c.nbytes * len(c.consumers) for c in plan.cuts if c.producer == part.index)
        lines.append(
            f"{part.index:>4}  {len(part.nodes):>5}  {part.target_share:>6.1%}  {part.cost_share:>6.1%}  "
            f"{_human_bytes(out_bytes):>10}  {report.plan_dir / part.file}"
        )
    verdict = "OK" if report.max_abs_diff <= 1e-4 else "MISMATCH"
    lines += [
        f"cut bytes: {_human_bytes(plan.cut_bytes)}; imbalance {plan.quality.get('imbalance', 0):.2%}",
        f"max |parts - whole| = {report.max_abs_diff:.2e}  [{verdict}]",
        "",
        f"{'':32} {'one at a time':>17}   {f'{report.in_flight} in flight':>28}",
        f"{'server':32} {'p50 ms':>8} {'p99 ms':>8}   {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9}"
        "   req/s vs ORT",
    ]
    base = report.results[0].rps if report.results else float("nan")
    for r in report.results:
        lines.append(
            f"{r.label:32} {r.p50_ms:8.1f} {r.p99_ms:8.1f}   {r.rps:8.1f} {r.loaded_p50_ms:9.1f} "
            f"{r.loaded_p99_ms:9.1f}   x{r.rps / base:.2f}"
        )
    lines.append("(ONNX Runtime and hetsched.Runtime in this process; the servers through tritonclient gRPC)")
    lines += [f"({name} skipped: {why})" for name, why in report.skipped.items()]
    if report.plot is not None:
        lines.append(f"plot: {report.plot}")
    lines.append("steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.step_seconds.items()))
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
