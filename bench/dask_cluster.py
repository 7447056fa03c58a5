"""hetsched on a Dask cluster: per-task overhead against local execution, throughput from 1 to 3
Dask worker processes, and a simulated projection to many nodes with the calibrated network model.

All in one run on this machine:

1. Overhead: a tiny model (microseconds of compute) one request at a time through a local
   ``Runtime`` and through ``Runtime(cluster=...)`` on a 1-worker cluster, as 1 part and as
   2 parts, rounds interleaved; the remote per-task overhead is the difference of medians per
   task.  A bare Dask RPC round trip (the hetsched host's echo) and ``client.submit`` (the Dask
   scheduler path, which hetsched avoids) are measured beside it.
2. Scaling: googlenet, batch 1, whole model, closed loop (2 requests in flight per worker) on
   clusters of 1, 2 and 3 single-thread worker processes, and on the local runtime (every core of
   this machine).  The client's own CPU time per task is recorded: it bounds how many nodes one
   client can feed.
3. Projection: the real scheduler (dmda) on a simulated platform of N remote nodes (virtual
   clock), each running the request in the compute time measured in 2, with the request's
   input sent over the client -> worker link calibrated in 2; capped by the client's dispatch
   rate from 2 (the simulator does not model it).

Writes bench/results/dask_cluster.json, bench/results/dask_scaling.png and its section of
bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/dask_cluster.py [--requests 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from daemon_overhead import WIDTH, tiny_model
from dask_processes import DaskProcesses
from results_md import package_version, write_section
from timing import timed_calls

import hetsched
from hetsched import zoo
from hetsched.clock import FakeClock
from hetsched.perf import TableOracle
from hetsched.policies import make_policy
from hetsched.progress import ProgressBar
from hetsched.scheduler import Scheduler
from hetsched.simulate import SimulatedExecutor, table_duration
from hetsched.task import Job, Task, WorkerSpec
from partitioner.feeds import random_feeds

HERE = Path(__file__).parent
NODES = (1, 2, 4, 8, 16, 32, 64)


def overhead(requests: int, rounds: int) -> dict[str, Any]:
    from distributed.protocol import to_serialize

    model = tiny_model()
    x = {"x": np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)}
    samples: dict[str, list[float]] = {}
    with DaskProcesses(1) as client:
        local, remote = hetsched.Runtime(), hetsched.Runtime(cluster=client)
        paths: dict[str, Callable[[], Any]] = {}
        for parts, ratios in ((1, (1.0,)), (2, (0.5, 0.5))):
            for label, runtime in (("local", local), ("Dask", remote)):
                loaded = runtime.load(model, ratios=ratios, name=f"tiny{parts}")
                loaded.warm_up(64)
                paths[f"{label}, {parts} part(s)"] = lambda m=loaded: m.infer(x)
        address = remote.specs[0].memory_node.partition(":")[2]
        paths["Dask RPC round trip (echo)"] = lambda: client.sync(
            client.rpc(address).hetsched_echo, payload=to_serialize(x["x"])
        )
        paths["Dask client.submit + result"] = lambda: client.submit(np.negative, x["x"], pure=False).result()
        bar = ProgressBar("overhead")
        for round_ in range(rounds):
            for index, (name, call) in enumerate(paths.items()):
                samples.setdefault(name, []).extend(timed_calls(call, requests, warmup=requests // 10))
                bar(round_ * len(paths) + index + 1, rounds * len(paths))
        local.close()
        remote.close()
    medians = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    per_task = {
        parts: (medians[f"Dask, {parts} part(s)"] - medians[f"local, {parts} part(s)"]) / parts
        for parts in (1, 2)
    }
    return {
        "median_ms": medians,
        "remote_overhead_per_task_ms": per_task,
        "requests": requests,
        "rounds": rounds,
    }


def closed_loop(model: Any, feeds: dict[str, np.ndarray], in_flight: int, seconds: float) -> float:
    """Requests per second with ``in_flight`` requests always outstanding."""
    done = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def sender() -> None:
        while time.perf_counter() < stop:
            model.infer(feeds, timeout=120)
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=sender) for _ in range(in_flight)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / (time.perf_counter() - start)


CONFIGS = ((1, 1), (2, 1), (3, 1), (1, 2))  # (Dask workers, threads each)


def scaling(seconds: float, rounds: int) -> dict[str, Any]:
    """Requests/s of the local runtime and of each cluster config, rounds interleaved (median kept)."""
    proto = zoo.build("googlenet")
    feeds = random_feeds(proto, 1, seed=0)
    samples: dict[str, list[float]] = {}
    rows: dict[str, Any] = {}
    bar = ProgressBar("scaling")
    steps = rounds * (1 + len(CONFIGS))
    for round_ in range(rounds):
        with hetsched.Runtime() as runtime:
            loaded = runtime.load(proto, name="googlenet")
            loaded.warm_up(16)
            cores = len({core for spec in runtime.specs for core in spec.cores})
            samples.setdefault("local", []).append(closed_loop(loaded, feeds, 2 * cores, seconds))
            rows["local"] = {"workers": f"{cores} cores"}
        bar(round_ * (1 + len(CONFIGS)) + 1, steps)
        for index, (workers, threads) in enumerate(CONFIGS):
            key = f"Dask {workers}x{threads}"
            with DaskProcesses(workers, threads) as client, hetsched.Runtime(cluster=client) as runtime:
                loaded = runtime.load(proto, name="googlenet")
                loaded.warm_up(16)
                cpu_before, tasks_before = time.process_time(), runtime.scheduler.statistics().tasks_done
                samples.setdefault(key, []).append(closed_loop(loaded, feeds, 2 * workers * threads, seconds))
                cpu = time.process_time() - cpu_before
                tasks = runtime.scheduler.statistics().tasks_done - tasks_before
                link = runtime.executor.bus.statistics().links[0]
                rows[key] = {
                    "workers": f"{workers} x {threads} thread(s)",
                    "client_cpu_ms_per_task": cpu / max(tasks, 1) * 1e3,
                    "compute_ms": loaded.predicted_s(1) * 1e3,  # what the history learned, compute alone
                    "link_latency_ms": link.latency_s * 1e3,
                    "link_bandwidth_gbs": link.bandwidth_bytes_per_s / 1e9,
                }
            bar(round_ * (1 + len(CONFIGS)) + index + 2, steps)
    for key, values in samples.items():
        rows[key]["rps"] = statistics.median(values)
        rows[key]["rps_runs"] = values
    rows["input_bytes"] = int(sum(v.nbytes for v in feeds.values()))
    return rows


def project(measured: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Throughput of N nodes: the real dmda scheduler on a virtual clock, each request one task whose
    input crosses the calibrated link; then capped by the client's measured dispatch rate."""
    one = measured["Dask 1x1"]
    compute_s = one["compute_ms"] / 1e3
    transfer_s = one["link_latency_ms"] / 1e3 + measured["input_bytes"] / (one["link_bandwidth_gbs"] * 1e9)
    dispatch_cap = 1e3 / one["client_cpu_ms_per_task"]
    out = {}
    for nodes in NODES:
        clock = FakeClock()
        workers = [
            WorkerSpec(f"node{i}", "cpu:1t@remote", f"worker:tcp://10.0.0.{i}:1", device="remote")
            for i in range(nodes)
        ]
        table = {("googlenet", "cpu:1t@remote"): compute_s}
        executor = SimulatedExecutor(clock, table_duration(table), transfer_s=transfer_s)
        scheduler = Scheduler(
            make_policy("dmda"), workers, clock=clock, executor=executor, perf=TableOracle(table, transfer_s)
        )
        executor.scheduler = scheduler
        jobs = 40 * nodes
        for i in range(jobs):
            job = Job(f"r{i}", [[]])
            job.tasks = [
                Task(
                    "googlenet",
                    0,
                    job,
                    "input=1",
                    1,
                    input_bytes={"input": measured["input_bytes"]},
                    input_nodes={"input": {"host:0"}},
                )
            ]
            scheduler.submit(job)
        simulated = jobs / executor.run()
        out[nodes] = {"simulated_rps": simulated, "projected_rps": min(simulated, dispatch_cap)}
    return out


def plot(measured: dict[str, Any], projected: dict[int, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    nodes = list(projected)
    ax.plot(
        nodes,
        [projected[n]["simulated_rps"] for n in nodes],
        "--",
        color="grey",
        label="simulated (dmda, calibrated network)",
    )
    ax.plot(
        nodes, [projected[n]["projected_rps"] for n in nodes], "-o", label="projected (client dispatch cap)"
    )
    dask = [measured[f"Dask {w}x1"] for w in (1, 2, 3)]
    ax.plot([1, 2, 3], [r["rps"] for r in dask], "s", color="C3", label="measured: 1-thread Dask workers")
    ax.plot([1], [measured["Dask 1x2"]["rps"]], "v", color="C4", label="measured: 1 Dask worker x 2 threads")
    ax.plot([1], [measured["local"]["rps"]], "^", color="C2", label="measured: local runtime (2 cores)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes (one single-thread Dask worker each)")
    ax.set_ylabel("googlenet requests / s (batch 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    over, scale, proj = results["overhead"], results["scaling"], results["projection"]
    per_task = over["remote_overhead_per_task_ms"]
    worst = max(per_task.values())
    local_rps = scale["local"]["rps"]
    one = scale["Dask 1x1"]
    group, per_core = scale["Dask 1x2"]["rps"] / local_rps, scale["Dask 2x1"]["rps"] / local_rps
    command = (
        f"--requests {args.requests} --rounds {args.rounds} --seconds {args.seconds} "
        f"--scaling-rounds {args.scaling_rounds}"
    )
    lines = [
        "## Dask cluster (bench/dask_cluster.py)",
        "",
        f"`PYTHONPATH=.:bench python bench/dask_cluster.py {command}` "
        f"on {platform.node()} ({os.cpu_count()} cores), {date.today().isoformat()}; distributed "
        f"{package_version('distributed')}, a Dask scheduler and single-thread "
        "`dask worker --no-nanny` processes on this machine (bench/dask_processes.py).",
        "",
        "Per request, one at a time (tiny model, medians of "
        f"{over['rounds']} interleaved rounds of {over['requests']}):",
        "",
        "| path | median ms |",
        "|---|---:|",
        *[f"| {name} | {value:.2f} |" for name, value in over["median_ms"].items()],
        "",
        f"Remote overhead per task (Dask − local, per part): 1 part {per_task[1]:.2f} ms, "
        f"2 parts {per_task[2]:.2f} ms. Target ≤ 2 ms median: {'met' if worst <= 2 else 'NOT met'}. "
        "Tasks go straight to each worker's hetsched host over Dask's RPC; `client.submit` (row above) "
        "would route every task through the Dask scheduler.",
        "",
        f"Throughput, googlenet batch 1, closed loop (2 requests in flight per thread), median of "
        f"{args.scaling_rounds} interleaved rounds of {args.seconds:.0f} s:",
        "",
        "| platform | workers | requests/s | client CPU ms/task |",
        "|---|---:|---:|---:|",
        f"| local runtime | {scale['local']['workers']} | {local_rps:.1f} | |",
        *[
            f"| Dask | {scale[f'Dask {w}x{t}']['workers']} | {scale[f'Dask {w}x{t}']['rps']:.1f} | "
            f"{scale[f'Dask {w}x{t}']['client_cpu_ms_per_task']:.2f} |"
            for w, t in CONFIGS
        ],
        "",
        f"On a single node, one Dask worker owning both cores (a core group: wide + 2 narrow hetsched "
        f"workers) reaches {group:.0%} of the local runtime's throughput, two 1-thread workers "
        f"{per_core:.0%} (target: no loss, ≥ ~95% given the noise). What the cluster path adds per "
        "request here: the input sent over loopback TCP, two RPCs, and the client's CPU (column "
        "above), all on the same 2 cores as the compute. Scaling past 2 workers is bounded by this "
        "machine's 2 cores.",
        "",
        f"Projection to N nodes (compute {one['compute_ms']:.1f} ms per request measured on one worker; "
        f"client→worker link {one['link_latency_ms']:.2f} ms + bytes / {one['link_bandwidth_gbs']:.2f} GB/s "
        f"as calibrated; the client's dispatch rate, {1e3 / one['client_cpu_ms_per_task']:.0f} tasks/s "
        "from its measured CPU per task, caps it):",
        "",
        "| nodes | simulated requests/s | projected requests/s |",
        "|---:|---:|---:|",
        *[f"| {n} | {row['simulated_rps']:.0f} | {row['projected_rps']:.0f} |" for n, row in proj.items()],
        "",
        "The simulator charges each request its input transfer but not contention on the client's link; "
        "beyond the cap, one hetsched client cannot feed more nodes (run several daemons behind a "
        "balancer). Plot: bench/results/dask_scaling.png.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--scaling-rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "overhead": overhead(args.requests, args.rounds),
        "scaling": scaling(args.seconds, args.scaling_rounds),
    }
    results["projection"] = project(results["scaling"])
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dask_cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results["scaling"], results["projection"], HERE / "results" / "dask_scaling.png")
    text = report(results, args)
    print(text)
    write_section(text, HERE / "RESULTS.md", "dask_cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
