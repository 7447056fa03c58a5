"""Per-request overhead of the daemon over the in-process API, on a tiny model, one request at a time.

Side by side in one run, rounds interleaved so the machine's noise hits every
path alike: plain ONNX Runtime ``session.run`` (the floor), ``Model.infer`` in
process (hetsched's runtime), and a `hetsched serve` child process driven by
``tritonclient`` over gRPC and over HTTP (binary tensors).  Reports the median
and p99 latency of each path and the daemon's overhead over the in-process API
(difference of medians), and a no-op call over each protocol (health) as the
floor that the protocol stack and ``tritonclient`` cost before any inference;
writes bench/results/daemon_overhead.json and its section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/daemon_overhead.py [--requests 2000] [--rounds 3]

With the bench extra installed, a real Triton (hetsched/tritonserver.py: its Python
backend running ONNX Runtime on the same file) is measured the same way beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from results_md import package_version, write_section
from timing import timed_calls, tree_cpu_s

import hetsched
from hetsched.daemon.process import DaemonProcess
from hetsched.progress import ProgressBar

HERE = Path(__file__).parent
WIDTH = 16


def tiny_model() -> onnx.ModelProto:
    """Two small MatMuls with a ReLU between: microseconds of compute, so overhead dominates."""
    rng = np.random.default_rng(0)
    weights = [
        helper.make_tensor(
            f"w{i}", TensorProto.FLOAT, [WIDTH, WIDTH], rng.standard_normal(WIDTH * WIDTH).astype(np.float32)
        )
        for i in range(2)
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[int(0.99 * (len(ordered) - 1))] * 1e6,
        "requests": len(ordered),
    }


def run(requests: int, rounds: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    model = tiny_model()
    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "repository"
        (repository / "tiny" / "1").mkdir(parents=True)
        onnx.save_model(model, str(repository / "tiny" / "1" / "model.onnx"))
        (repository / "tiny" / "config.pbtxt").write_text("max_batch_size: 0\n")  # no batcher: one hop less
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        runtime = hetsched.Runtime(perfmodel_dir=Path(scratch) / "perfmodels")
        loaded = runtime.load(model, name="tiny")
        loaded.warm_up(32)
        daemon = DaemonProcess(repository, perfmodel_dir=Path(scratch) / "perfmodels-daemon")
        grpc = grpcclient.InferenceServerClient(daemon.grpc)
        http = httpclient.InferenceServerClient(daemon.http)
        grpc_input = grpcclient.InferInput("x", list(x.shape), "FP32")
        grpc_input.set_data_from_numpy(x)
        http_input = httpclient.InferInput("x", list(x.shape), "FP32")
        http_input.set_data_from_numpy(x, binary_data=True)
        paths: dict[str, Callable[[], Any]] = {
            "onnxruntime": lambda: session.run(None, {"x": x}),
            "in-process": lambda: loaded.infer({"x": x}),
            "daemon gRPC": lambda: grpc.infer("tiny", [grpc_input]),
            "daemon HTTP": lambda: http.infer("tiny", [http_input]),
            "gRPC no-op (ServerLive)": grpc.is_server_live,  # the protocol's floor, no inference
            "HTTP no-op (health/live)": http.is_server_live,
        }
        triton, triton_clients = _start_triton(
            Path(scratch), model_path=repository / "tiny" / "1" / "model.onnx"
        )
        if triton is not None:  # Triton's own overhead, same client, same model (its Python backend)
            t_grpc, t_http = triton_clients
            paths["Triton gRPC"] = lambda: t_grpc.infer("tiny", [grpc_input])
            paths["Triton HTTP"] = lambda: t_http.infer("tiny", [http_input])
            paths["Triton gRPC no-op"] = t_grpc.is_server_live
        servers = {name: daemon.process.pid for name in paths if name.startswith(("daemon", "gRPC", "HTTP"))}
        if triton is not None:
            servers.update({name: triton.process.pid for name in paths if name.startswith("Triton")})
        samples: dict[str, list[float]] = {name: [] for name in paths}
        cpu_s = dict.fromkeys(servers, 0.0)  # the server's own CPU (all its processes) over its calls
        bar = ProgressBar("daemon overhead")
        try:
            for round_ in range(rounds):
                for index, (name, call) in enumerate(paths.items()):
                    before = tree_cpu_s(servers[name]) if name in servers else 0.0
                    samples[name] += timed_calls(call, requests, warmup=requests // 10)
                    if name in servers:
                        cpu_s[name] += tree_cpu_s(servers[name]) - before
                    bar(round_ * len(paths) + index + 1, rounds * len(paths))
        finally:
            grpc.close()
            http.close()
            code = daemon.stop()
            runtime.close()
            if triton is not None:
                for client in triton_clients:
                    client.close()  # an open HTTP client holds Triton's shutdown for 30 s
                triton.stop()
        if code != 0:
            raise RuntimeError(f"the daemon exited with {code}:\n{daemon.text()[-2000:]}")
    results = {name: summary(values) for name, values in samples.items()}
    calls = rounds * (requests + requests // 10)
    for name, seconds in cpu_s.items():
        results[name]["server_cpu_us"] = seconds / calls * 1e6
    base = results["in-process"]["median_us"]
    for name in ("daemon gRPC", "daemon HTTP", "Triton gRPC", "Triton HTTP"):
        if name in results:
            results[name]["overhead_median_us"] = results[name]["median_us"] - base
    return results


def _start_triton(scratch: Path, model_path: Path) -> tuple[Any, tuple[Any, Any]]:
    """A real Triton serving the same file (1 instance, 1 thread, no batching), or None without one."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from hetsched.tritonserver import TritonConfig, TritonServer, triton_available

    missing = triton_available()
    if missing:
        print(f"no Triton row: {missing}", file=sys.stderr)
        return None, (None, None)
    server = TritonServer(
        {"tiny": model_path}, TritonConfig(instances=1, threads=1), workdir=scratch / "triton"
    )
    return server, (
        grpcclient.InferenceServerClient(server.grpc),
        httpclient.InferenceServerClient(server.http),
    )


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Daemon overhead (bench/daemon_overhead.py)",
        "",
        "`PYTHONPATH=.:bench python bench/daemon_overhead.py "
        f"--requests {args.requests} --rounds {args.rounds}` on "
        f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
        f"{date.today().isoformat()}. A {WIDTH}x{WIDTH} two-MatMul model, batch 1, one request at a time, "
        f"{args.rounds} interleaved rounds of {args.requests} requests per path; `tritonclient` "
        f"{package_version('tritonclient')} against `hetsched serve` on loopback (no dynamic batcher) and, "
        "when installed, a real Triton 2.51 (`nvidia-pytriton`; its Python backend running ONNX Runtime on "
        "the same file, 1 instance, 1 thread). Both servers share the 2 cores with the client. Server CPU: "
        "user + system time of the server's processes (Triton's backend stub included) over a path's calls, "
        "divided by them: what a request costs the machine, which bounds the rate the cores can serve.",
        "",
        "| path | median µs | p99 µs | overhead over in-process (median) µs | server CPU µs per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        overhead = f"{row['overhead_median_us']:.0f}" if "overhead_median_us" in row else ""
        cpu = f"{row['server_cpu_us']:.0f}" if "server_cpu_us" in row else ""
        lines.append(f"| {name} | {row['median_us']:.0f} | {row['p99_us']:.0f} | {overhead} | {cpu} |")
    grpc = results["daemon gRPC"]["overhead_median_us"]
    lines += [
        "",
        f"Target: daemon overhead ≤ 500 µs median over gRPC: {'met' if grpc <= 500 else 'NOT met'} "
        f"({grpc:.0f} µs).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = run(args.requests, args.rounds)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "daemon_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results, args)
    print(text)
    write_section(text, HERE / "RESULTS.md", "daemon_overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
