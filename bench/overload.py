"""Past saturation: what each daemon configuration answers, and which batches and workers it ran.

One model, one offered rate above what the machine serves, through `hetsched serve` and
``tritonclient`` gRPC or HTTP (bench/load.py's open loop, Poisson arrivals).  Configurations
alternate round by round, each in a fresh daemon with a fresh perf-model directory (calibrated at
load, as a first start is), so the machine's noise hits them alike; per configuration, the median
over rounds of answers per second and p99, the share of the machine's CPU time left idle meanwhile
(with a backlog waiting, idle cores are lost throughput), the CPU each server spends per answer,
split by what its threads do (model workers, gRPC handlers, ...; Triton: backend stubs and
tritonserver), and, from the daemon's Chrome trace, how many rows each task ran and on which kind
of worker.  Triton's one instance per core (``triton 2x1t`` on two cores, with and without its
dynamic batcher) runs the same load in the same rounds, through bench's real Triton server
(hetsched.tritonserver), for the bar hetsched must reach.  Writes bench/results/<section>.json
and its section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/overload.py [--model yolov8n] [--rate 57] [--rounds 3] \\
        [--protocol grpc|http] [--section overload]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import onnx
from load import Target, closed_loop, open_loop, server_url
from results_md import publish
from timing import cpu_by_role, thread_cpu_s, tree_cpu_s

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess
from hetsched.tritonserver import TritonConfig, TritonServer

HERE = Path(__file__).parent
NARROW_ONLY = 'parameters { key: "hetsched.workers" value: { string_value: "%dx1" } }\n'
BATCH8 = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"
CONFIGS = {  # label -> config.pbtxt (completed from the model by the daemon)
    "default": "",
    "b1": "max_batch_size: 0\n",
    "narrow only": NARROW_ONLY % (os.cpu_count() or 1),
    "b1 narrow only": "max_batch_size: 0\n" + NARROW_ONLY % (os.cpu_count() or 1),
    # Triton's 2x1t setup in bench/compare_triton.py batches up to 8 rows with a 2 ms delay
    "b8": BATCH8,
    "b8 narrow only": BATCH8 + NARROW_ONLY % (os.cpu_count() or 1),
}
CORES = os.cpu_count() or 1
TRITON = {  # label -> how Triton serves the model
    f"triton {CORES}x1t": TritonConfig(instances=CORES, threads=1),
    f"triton {CORES}x1t b8": TritonConfig(instances=CORES, threads=1, max_batch_size=8,
                                          max_queue_delay_us=2000),
}


def role(process: str, thread: str) -> str:
    """What a server's thread does, from the names the OS knows (hetsched names its own threads:
    hetsched.affinity.name_os_thread; ORT's threads take their worker's name)."""
    if process.startswith("triton_python"):
        return "backend stubs"
    if process.startswith("tritonserver"):
        return "tritonserver"
    if thread.startswith("hetsched-grpc"):
        return "gRPC handlers"
    if thread.startswith("hetsched-batch"):
        return "batcher"
    if thread.startswith("hetsched-"):
        return "workers"
    if thread == process:
        return "event loop (HTTP) and gRPC poller"  # the unnamed Python threads: asyncio's, grpc's
    return "gRPC core"  # grpc's C++ threads (event_engine, ...)


def cpu_times() -> list[int]:
    """The machine's CPU time by kind since boot (/proc/stat's first line, in ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def task_mix(trace_file: Path, last_s: float) -> dict[str, Any]:
    """Rows per task and the wide worker's share of tasks, over the trace's last ``last_s`` seconds."""
    events = json.loads(trace_file.read_text())["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    slices = [e for e in events if e["ph"] == "X"]
    since = max((e["ts"] + e["dur"] for e in slices), default=0.0) - last_s * 1e6
    tasks = [e for e in slices if e["ts"] >= since]
    # a wide worker's name is a prefix of its narrow workers' ("cpu0" of "cpu0.1")
    wide = {n for n in names.values() if any(o.startswith(n + ".") for o in names.values())}
    on_wide = sum(names[e["tid"]] in wide for e in tasks)
    rows = Counter(e["args"]["rows"] for e in tasks)
    return {"tasks": len(tasks), "wide_share": on_wide / len(tasks) if tasks else 0.0,
            "rows": {str(k): rows[k] for k in sorted(rows)}}


def measure(target: Target, rate: float, seconds: float, server_pid: int) -> dict[str, Any]:
    """The open-loop load against a warmed-up server: answers, p99, errors, the idle CPU share, and
    the CPU the server (all its processes) and this client spent per answer."""
    closed_loop(target, 2, 3.0)  # the clients' warm-up, after the server's own
    threads_before = thread_cpu_s(server_pid)
    before, server_before = cpu_times(), tree_cpu_s(server_pid)
    result = open_loop(target, rate, seconds, "poisson", drain_s=30.0)
    spent = [a - b for a, b in zip(cpu_times(), before)]
    server_s = tree_cpu_s(server_pid) - server_before
    by_role = cpu_by_role(threads_before, thread_cpu_s(server_pid), role)
    answers = max(1, result.completed)
    return {"answers_per_s": result.achieved_rate, "p99_ms": result.p99_ms, "errors": dict(result.errors),
            "idle_share": spent[3] / sum(spent),
            "server_cpu_ms": server_s / answers * 1e3, "client_cpu_ms": result.client_cpu_ms,
            "cpu_ms_by_role": {name: s / answers * 1e3 for name, s in sorted(by_role.items())}}


def triton_run(model_path: Path, name: str, config: TritonConfig, rate: float, seconds: float,
               scratch: Path, protocol: str) -> dict[str, Any]:
    server = TritonServer({name: model_path}, config, workdir=scratch / f"triton-{time.time_ns()}")
    try:
        row = measure(Target(server_url(server, protocol), name), rate, seconds, server.process.pid)
    finally:
        server.stop()
    return {**row, "tasks": 0, "wide_share": 0.0, "rows": {}}  # no trace of Triton's batches here


def one_run(model_path: Path, name: str, config: str, rate: float, seconds: float, scratch: Path,
            protocol: str) -> dict[str, Any]:
    run = scratch / f"run-{time.time_ns()}"
    (run / "repository" / name / "1").mkdir(parents=True)
    (run / "repository" / name / "1" / "model.onnx").symlink_to(model_path)
    (run / "repository" / name / "config.pbtxt").write_text(config)
    trace_file = run / "trace.json"
    with DaemonProcess(run / "repository", "--trace-file", str(trace_file),
                       perfmodel_dir=run / "perfmodels") as d:
        started = time.perf_counter()
        row = measure(Target(server_url(d, protocol), name), rate, seconds, d.process.pid)
        load_s = time.perf_counter() - started  # the trace's last seconds: written at the daemon's stop
    return {**row, **task_mix(trace_file, load_s)}


def run(name: str, rate: float, seconds: float, rounds: int, labels: list[str], protocol: str
        ) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="hetsched-overload-"))
    model_path = scratch / f"{name}.onnx"
    onnx.save(zoo.build(name), model_path)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for index in range(rounds):
        for label in labels:
            row = (triton_run(model_path, name, TRITON[label], rate, seconds, scratch, protocol)
                   if label in TRITON else one_run(model_path, name, CONFIGS[label], rate, seconds, scratch,
                                                   protocol))
            runs[label].append(row)
            print(f"round {index + 1}/{rounds} {label}: {row['answers_per_s']:.1f} answers/s, "
                  f"p99 {row['p99_ms']:.0f} ms, idle {row['idle_share']:.1%}, "
                  f"server CPU {row['server_cpu_ms']:.2f} ms and client {row['client_cpu_ms']:.2f} ms "
                  f"per answer ({roles(row['cpu_ms_by_role'])}), wide {row['wide_share']:.0%} of tasks, "
                  f"rows {row['rows']}", flush=True)
    return {"model": name, "rate": rate, "seconds": seconds, "rounds": rounds, "protocol": protocol,
            "runs": runs}


def roles(cpu_ms: dict[str, float]) -> str:
    """A server's CPU ms per answer by role, the largest first."""
    return ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(cpu_ms.items(), key=lambda kv: -kv[1])
                     if ms >= 0.005)


def report(results: dict[str, Any], command: str) -> str:
    lines = [
        f"## Past saturation: {results['model']} at {results['rate']:g} req/s offered (bench/overload.py)",
        "",
        f"`{command}` on {platform.node()} ({os.cpu_count()} cores, no GPU), {date.today().isoformat()}. "
        f"Each round runs every configuration in a fresh server (hetsched: fresh perf models, calibrated at "
        f"load; Triton: `nvidia-pytriton`'s tritonserver, Python backend running ONNX Runtime), "
        f"{results['seconds']:g} s of open-loop Poisson batch-1 requests through `tritonclient` "
        f"{'HTTP' if results['protocol'] == 'http' else 'gRPC'}; "
        f"medians over {results['rounds']} rounds. Idle: the machine's idle CPU time meanwhile (client "
        f"included). CPU per answer: the server's processes' user + system time (Triton's backend stubs "
        f"included), and the load generator's (this process), over the load, divided by the answers; "
        f"refused requests cost CPU too. By role: the server's threads' on-CPU time (schedstat) by what "
        f"they do (`overload.role`: hetsched names its threads; a gRPC handler that runs its own request's "
        f"task, when a worker is free at once, counts the model's run too), per answer, medians per role. "
        f"Wide: tasks run on a wide (all-core) worker; rows: tasks by batch rows, all rounds.",
        "",
        "| config | answers/s (median) | per round | p99 ms (median) | idle | server CPU ms per answer "
        "| by role | client CPU ms per answer | wide tasks | tasks by rows |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for label, rows in results["runs"].items():
        rates = [r["answers_per_s"] for r in rows]
        mix: Counter[str] = Counter()
        for r in rows:
            mix.update(r["rows"])
        traced = label not in TRITON  # Triton's batches are not traced here
        wide = f"{statistics.median(r['wide_share'] for r in rows):.0%}" if traced else "–"
        by_rows = ", ".join(f"{k}: {v}" for k, v in sorted(mix.items(), key=lambda kv: int(kv[0])))
        names = {name for r in rows for name in r["cpu_ms_by_role"]}
        by_role = {name: statistics.median(r["cpu_ms_by_role"].get(name, 0.0) for r in rows)
                   for name in names}
        lines.append(
            f"| {label} | {statistics.median(rates):.1f} | {', '.join(f'{x:.1f}' for x in rates)} | "
            f"{statistics.median(r['p99_ms'] for r in rows):.0f} | "
            f"{statistics.median(r['idle_share'] for r in rows):.1%} | "
            f"{statistics.median(r['server_cpu_ms'] for r in rows):.2f} | {roles(by_role)} | "
            f"{statistics.median(r['client_cpu_ms'] for r in rows):.2f} | {wide} | "
            f"{by_rows if traced else '–'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--rate", type=float, default=57.0, help="offered requests per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    known = [*CONFIGS, *TRITON]
    parser.add_argument("--configs", default=",".join(known), help=f"comma-separated, of {known}")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                        help="tritonclient's, against both servers")
    parser.add_argument("--section", default="overload", help="RESULTS.md section and results/<section>.json")
    args = parser.parse_args()
    labels = [label.strip() for label in args.configs.split(",")]
    unknown = sorted(set(labels) - set(known))
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {known}")
    results = run(args.model, args.rate, args.seconds, args.rounds, labels, args.protocol)
    publish(results, args.section, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
