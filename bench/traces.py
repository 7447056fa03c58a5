"""Traces of hetsched and Triton under the same open-loop load: where each request's time goes.

One model, one offered rate (a fraction of hetsched's closed-loop capacity, measured first), the same
Poisson schedule through ``tritonclient`` gRPC or HTTP (``--protocol``; bench/load.py) against:

- ``hetsched serve --trace-file``: a Chrome trace (open it in Perfetto: one row per worker, each
  task a slice, each job an async slice from its admission to its answer, each client request one
  through its frontend), per worker its busy share and its tasks' time and CPU time (how much of
  their time they waited for a core);
- Triton (``hetsched.tritonserver``, Python backend running ONNX Runtime) in each static config,
  with its trace API at level TIMESTAMPS for every request.

From both: per request, the time waiting in the server's queue (hetsched: its arrival in the
runtime, through the admission line, to its first task's start; Triton: QUEUE_START to
COMPUTE_START) and computing (hetsched: the sum of its tasks; Triton: COMPUTE_START to COMPUTE_END),
medians and p99, beside the client's latency. And each client request's way through the frontend,
from the moment it holds the whole request to the call's end over gRPC, or to the response handed to
the HTTP library (hetsched: its frontend stamps, hetsched.trace.RequestStamps; Triton:
GRPC_WAITREAD_END to GRPC_SEND_END, HTTP_RECV_END to HTTP_SEND_START), by phase: decode, model
(batcher, admission line and scheduler; Triton: its queue, backend and stub), encode, send; what is
left of the client's latency is the upload, the client and the network stack. Writes the traces and
bench/results/<section>.json to bench/results/ and its section of bench/RESULTS.md (``--section``,
default ``traces``: a run on another model can keep the first).

    PYTHONPATH=.:bench python bench/traces.py [--model googlenet] [--fraction 0.8] [--duration 10] \\
        [--protocol grpc|http] [--also-b1] [--section traces]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from load import Target, closed_loop, open_loop, server_url
from results_md import write_section

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess
from hetsched.trace import off_cpu_share

HERE = Path(__file__).parent


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median_ms": float("nan"), "p99_ms": float("nan"), "count": 0}
    array = np.array(values) * 1e3
    return {
        "median_ms": float(np.median(array)),
        "p99_ms": float(np.percentile(array, 99)),
        "count": len(values),
    }


def hetsched_breakdown(trace: dict[str, Any], protocol: str = "grpc") -> dict[str, Any]:
    """Queue and compute per request, and busy share per worker, from our Chrome trace."""
    events = trace["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    arrived = {e["name"]: e["ts"] for e in events if e["ph"] == "b" and e["cat"] == "request"}
    answered = {e["name"]: e["ts"] for e in events if e["ph"] == "e" and e["cat"] == "request"}
    first_start: dict[str, float] = {}
    compute: dict[str, float] = defaultdict(float)
    busy: dict[str, float] = defaultdict(float)
    tasks: dict[str, list[tuple[float, float]]] = defaultdict(list)  # worker -> (duration, cpu) seconds
    for e in events:
        if e["ph"] == "X":
            job = e["name"].rsplit(" part ", 1)[0]
            first_start[job] = min(first_start.get(job, e["ts"]), e["ts"])
            compute[job] += e["dur"]
            busy[names[e["tid"]]] += e["dur"]
            if "cpu_ms" in e.get("args", {}):
                tasks[names[e["tid"]]].append((e["dur"] / 1e6, e["args"]["cpu_ms"] / 1e3))
    jobs = [j for j in arrived if j in answered and j in first_start]
    span = max(answered.values(), default=0) - min(arrived.values(), default=0)
    return {
        "queue": _stats([(first_start[j] - arrived[j]) / 1e6 for j in jobs]),
        "compute": _stats([compute[j] / 1e6 for j in jobs]),
        "in_server": _stats([(answered[j] - arrived[j]) / 1e6 for j in jobs]),
        "busy_share": {w: t / span for w, t in sorted(busy.items())} if span > 0 else {},
        "workers": {w: _worker_stats(timed) for w, timed in sorted(tasks.items())},
        "frontend": _frontend_stats(_hetsched_frontend(events, protocol)),
    }


def _worker_stats(tasks: list[tuple[float, float]]) -> dict[str, Any]:
    """A worker's tasks (duration, CPU seconds): their times, CPU times and share off CPU, and the
    slowest tenth's median time, CPU time and time off CPU: whether long tasks computed more or
    waited for their core."""
    slowest = sorted(tasks)[len(tasks) - max(1, len(tasks) // 10):]
    return {"tasks": len(tasks), "task": _stats([d for d, _ in tasks]), "cpu": _stats([c for _, c in tasks]),
            "off_cpu_share": off_cpu_share(tasks),
            "slowest_tenth": {"task": _stats([d for d, _ in slowest]), "cpu": _stats([c for _, c in slowest]),
                              "off_cpu": _stats([d - c for d, c in slowest])}}


FRONTEND = ("receive", "decode", "model", "encode", "send", "handled")
# 'handled': from holding the whole request to the last point both servers stamp, the call's end
# over gRPC, the response handed to the HTTP library over HTTP (hetsched sees no HTTP sending)
HANDLED_UNTIL = {"grpc": "send", "http": "encode"}


def _hetsched_frontend(events: list[dict[str, Any]], protocol: str) -> list[dict[str, float]]:
    """Per client request of the protocol's unary frontend (the calls the load makes), each phase's
    seconds, from its stamps' slices."""
    stamps: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    frontends: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "frontend":
            stamps[e["id"]][(e["name"], e["ph"])] = e["ts"]
            if "args" in e:  # the whole request's slice
                frontends[e["id"]] = e["args"]["frontend"]
    requests = []
    last = HANDLED_UNTIL[protocol]
    for ident, seen in stamps.items():
        if frontends.get(ident) != protocol:  # the other protocol's, the stream's
            continue
        row = {p: (seen[(p, "e")] - seen[(p, "b")]) / 1e6 for p in FRONTEND[:-1] if (p, "b") in seen}
        row["handled"] = (seen[(last, "e")] - seen[("decode", "b")]) / 1e6
        requests.append(row)
    return requests


def _frontend_stats(requests: list[dict[str, float]]) -> dict[str, Any]:
    return {p: _stats([r[p] for r in requests if p in r]) for p in FRONTEND}


def triton_breakdown(path: Path, protocol: str = "grpc") -> dict[str, Any]:
    """Queue and compute per request from Triton's TIMESTAMPS trace (entries of one id may be split)."""
    stamps: dict[int, dict[str, int]] = defaultdict(dict)
    for entry in json.loads(path.read_text() or "[]"):
        for stamp in entry.get("timestamps", []):
            stamps[entry["id"]][stamp["name"]] = int(stamp["ns"])

    def between(first: str, last: str) -> list[float]:
        return [(s[last] - s[first]) / 1e9 for s in stamps.values() if first in s and last in s]

    read, send = ("GRPC_WAITREAD_END", "GRPC_SEND") if protocol == "grpc" else ("HTTP_RECV_END", "HTTP_SEND")
    phases = {"decode": (read, "QUEUE_START"),
              "model": ("QUEUE_START", "INFER_RESPONSE_COMPLETE"),
              "encode": ("INFER_RESPONSE_COMPLETE", f"{send}_START"),
              "send": (f"{send}_START", f"{send}_END"),
              "handled": (read, f"{send}_END" if protocol == "grpc" else f"{send}_START")}
    frontend = [{p: (s[b] - s[a]) / 1e9 for p, (a, b) in phases.items()}
                for s in stamps.values() if all(n in s for pair in phases.values() for n in pair)]
    return {
        "queue": _stats(between("QUEUE_START", "COMPUTE_START")),
        "compute": _stats(between("COMPUTE_START", "COMPUTE_END")),
        "in_server": _stats(between("REQUEST_START", "REQUEST_END")),
        "frontend": _frontend_stats(frontend),  # no "receive": Triton stamps no call's arrival
    }


def traced_row(load: Any, trace_path: Path, protocol: str) -> dict[str, Any]:
    """A hetsched row: the client's latency, and the breakdown its daemon's trace gives."""
    return {
        "client": {"p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "achieved": load.achieved_rate},
        **hetsched_breakdown(json.loads(trace_path.read_text()), protocol),
        "trace": str(trace_path.relative_to(HERE.parent)),
    }


def run(model_name: str, fraction: float, duration: float, section: str, also_b1: bool = False,
        protocol: str = "grpc") -> dict[str, Any]:
    """The traces go to bench/results/<section>_<server>.json: a run keeps those an older section cites."""
    from hetsched.tritonserver import TritonConfig, TritonServer, triton_available

    cores = len(os.sched_getaffinity(0))
    proto = zoo.build(model_name)
    results: dict[str, Any] = {"model": model_name, "cores": cores, "fraction": fraction,
                               "protocol": protocol, "servers": {}}

    def target(server: Any) -> Target:
        return Target(server_url(server, protocol), model_name)

    (HERE / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "repository"
        (repository / model_name / "1").mkdir(parents=True)
        model_path = repository / model_name / "1" / "model.onnx"
        onnx.save_model(proto, str(model_path))
        trace_path = HERE / "results" / f"{section}_hetsched.json"
        perf = Path(scratch) / "perf"
        with DaemonProcess(repository, perfmodel_dir=perf) as daemon:  # untraced: its capacity sets the rate
            capacity = closed_loop(target(daemon), 2 * cores, duration).achieved_rate
        rate = fraction * capacity
        with DaemonProcess(repository, "--trace-file", str(trace_path), perfmodel_dir=perf) as daemon:
            load = open_loop(target(daemon), rate, duration)
        results.update(capacity=capacity, rate=rate)
        results["servers"]["hetsched"] = traced_row(load, trace_path, protocol)
        if also_b1:  # the same load without the dynamic batcher: what the time before the scheduler is
            (repository / model_name / "config.pbtxt").write_text("max_batch_size: 0\n")
            b1_path = HERE / "results" / f"{section}_hetsched_b1.json"
            b1_perf = Path(scratch) / "perf-b1"
            with DaemonProcess(repository, "--trace-file", str(b1_path), perfmodel_dir=b1_perf) as daemon:
                load = open_loop(target(daemon), rate, duration)
            results["servers"]["hetsched b1"] = traced_row(load, b1_path, protocol)
        missing = triton_available()
        if missing:
            results["triton_missing"] = missing
            return results
        for config in (TritonConfig(1, cores), TritonConfig(cores, 1)):
            workdir = Path(scratch) / config.label().replace(" ", "_")
            workdir.mkdir()
            raw = workdir / "trace.json"
            extra = [
                "--trace-config",
                f"triton,file={raw}",
                "--trace-config",
                "level=TIMESTAMPS",
                "--trace-config",
                "rate=1",
                "--trace-config",
                "count=-1",
            ]
            with TritonServer({model_name: model_path}, config, workdir, extra_args=extra) as server:
                load = open_loop(target(server), rate, duration)
            kept = HERE / "results" / f"{section}_{config.label().replace(' ', '_')}.json"
            shutil.copyfile(raw, kept)
            results["servers"][config.label()] = {
                "client": {"p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "achieved": load.achieved_rate},
                **triton_breakdown(raw, protocol),
                "trace": str(kept.relative_to(HERE.parent)),
            }
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Traces under the same load (bench/traces.py)",
        "",
        f"`PYTHONPATH=.:bench python bench/traces.py --model {args.model} --fraction {args.fraction} "
        f"--duration {args.duration}"
        + (" --also-b1" if args.also_b1 else "")
        + (f" --protocol {args.protocol}" if args.protocol != "grpc" else "")
        + (f" --section {args.section}" if args.section != "traces" else "") + "` on"
        f" {platform.node()} ({results['cores']} cores), "
        f"{date.today().isoformat()}. "
        f"{results['model']}, batch 1, Poisson at {results['rate']:.1f} req/s ({results['fraction']:.0%} of "
        f"hetsched's closed-loop capacity {results['capacity']:.1f} req/s), tritonclient "
        f"{'gRPC' if results['protocol'] == 'grpc' else 'HTTP'}. Per request, "
        "median / p99 ms: client latency, time in the server, queued (waiting for a worker), computing. "
        "hetsched's job starts when its batch reaches the runtime, so 'queued' holds its wait in the "
        "admission line (a \"held\" slice in the trace) and for a worker; the wait in the dynamic "
        "batcher before that is in the frontend's 'model' phase below only. Its trace also holds the "
        "~30 warm-up requests of the model's load. A Triton request is one client request; a hetsched "
        "one is a batch of them. Triton's REQUEST_END comes after its response was sent.",
        "",
        "| server | client | in server | queued | computing | trace |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, row in results["servers"].items():
        cells = [f"{row['client']['p50_ms']:.0f} / {row['client']['p99_ms']:.0f}"]
        cells += [
            f"{row[k]['median_ms']:.1f} / {row[k]['p99_ms']:.1f}" for k in ("in_server", "queue", "compute")
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | `{row['trace']}` |")
    lines += [
        "",
        ("Through the gRPC frontend, per client request, median / p99 ms: from holding the whole "
         "message to the call's end ('handled'), by phase; 'receive' is hetsched's from the call's "
         "headers at grpc's poller to its handler holding the message (Triton stamps no arrival), and "
         if results["protocol"] == "grpc" else
         "Through the HTTP frontend, per client request, median / p99 ms: from holding the whole body "
         "to the response handed to the HTTP library ('handled': hetsched sees no sending, so Triton's "
         "'send' is outside it), by phase; 'receive' is hetsched's handler reading the body, and ")
        + "'client - handled' the difference of their medians: the upload, the client, the network stack.",
        "",
        "| server | receive | decode | model | encode | send | handled | client - handled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in results["servers"].items():
        phases = row.get("frontend", {})
        cells = [f"{phases[p]['median_ms']:.2f} / {phases[p]['p99_ms']:.2f}" if phases[p]["count"] else "—"
                 for p in FRONTEND]
        handled = phases["handled"]
        left = f"{row['client']['p50_ms'] - handled['median_ms']:.1f}" if handled["count"] else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {left} |")
    lines += ["", ("hetsched's workers: busy share of the trace; per task, median / p99 ms from its start "
                   "on the worker to its end, and of the CPU time of the thread that ran it; the share "
                   "of the tasks' time off CPU (the hand-over to the thread, then waiting for the core "
                   "while other threads ran there); and the slowest tenth of the tasks' median ms: "
                   "time / CPU / off CPU. Triton's trace holds no CPU times."),
              "", "| server | worker | busy | tasks | task | CPU | off CPU | slowest tenth |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, row in results["servers"].items():
        for worker, timed in row.get("workers", {}).items():
            busy = row["busy_share"].get(worker, 0.0)
            tenth = timed["slowest_tenth"]
            slowest = " / ".join(f"{tenth[k]['median_ms']:.2f}" for k in ("task", "cpu", "off_cpu"))
            lines.append(f"| {label} | {worker} | {busy:.0%} | {timed['tasks']} | "
                         f"{timed['task']['median_ms']:.2f} / {timed['task']['p99_ms']:.2f} | "
                         f"{timed['cpu']['median_ms']:.2f} / {timed['cpu']['p99_ms']:.2f} | "
                         f"{timed['off_cpu_share']:.0%} | {slowest} |")
    if "triton_missing" in results:
        lines.append(f"No Triton rows: {results['triton_missing']}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet")
    parser.add_argument("--fraction", type=float, default=0.8, help="of hetsched's closed-loop capacity")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--also-b1", action="store_true",
                        help="also trace hetsched with batching off (max_batch_size: 0) at the same rate")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--section", default="traces", help="RESULTS.md section and results/<section>.json")
    args = parser.parse_args()
    results = run(args.model, args.fraction, args.duration, args.section, args.also_b1, args.protocol)
    (HERE / "results" / f"{args.section}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results, args)
    print(text)
    write_section(text, HERE / "RESULTS.md", args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
