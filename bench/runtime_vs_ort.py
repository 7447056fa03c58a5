"""hetsched against plain ONNX Runtime on this machine, under open-loop load.

Per model, the same request stream (batch 1, constant or Poisson arrivals at a
fixed rate) goes to each configuration:

- ``ort 1x2t``: one session, 2 intra-op threads, one serving thread;
- ``ort 2x1t``: two 1-thread sessions, two serving threads;
- ``hetsched 2x1``: hetsched unpartitioned on two one-core groups (narrow workers only);
- ``hetsched auto``: unpartitioned, the wide worker and the two narrow ones (dmda picks per task);
- ``hetsched 50/50`` and ``hetsched 80/20``: partitioned plans on the auto workers.

Latency = completion time - intended arrival time (queueing included).  Rates
are fractions of the machine's limit, the sum of the narrow workers' isolated
throughputs (2 / one-thread latency).  The scheduler's overhead per task on a tiny
model has a bench of its own, bench/task_overhead.py.  Writes
bench/results/runtime_vs_ort.json, a PNG and its section of RESULTS.md.

With ``--rounds N`` every configuration is swept N times, the configurations interleaved
within each round (the machine's speed drifts by 2x within an hour: one sweep after another
compared hours, not servers); cells are medians over the rounds, p99's range in brackets, and
each hetsched configuration is counted against the better plain-ORT configuration cell by cell.

    python bench/runtime_vs_ort.py [--models resnet50,googlenet,vit-tiny] [--seconds 3] \
        [--min-requests 100] [--rounds 1] [--fractions 0.2,0.4,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from results_md import write_section

from hetsched import zoo
from hetsched.runtime import Runtime
from partitioner.feeds import random_feeds
from perfmodels.measure import cpu_session, median_seconds

HERE = Path(__file__).parent
FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.95, 1.1)
Submit = Callable[[dict[str, np.ndarray]], Future[Any]]


class PlainOrt:
    """N serving threads, each with its own session of T threads, pulling from one queue."""

    def __init__(self, model: bytes, sessions: int, threads: int) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, args=(cpu_session(model, threads),), daemon=True)
            for _ in range(sessions)]
        for thread in self._threads:
            thread.start()

    def _serve(self, session: Any) -> None:
        while (item := self._queue.get()) is not None:
            feeds, future = item
            future.set_result(session.run(None, feeds))

    def submit(self, feeds: dict[str, np.ndarray]) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((feeds, future))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


def open_loop(submit: Submit, feeds: dict[str, np.ndarray], rate: float, count: int,
              poisson: bool, seed: int = 0) -> dict[str, float]:
    """Submit ``count`` requests at ``rate`` per second; latency and sustained throughput."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate, count) if poisson else np.full(count, 1 / rate)
    arrivals = np.cumsum(gaps) - gaps[0]
    latencies: list[float] = [0.0] * count
    done_at: list[float] = [0.0] * count
    finished = threading.Semaphore(0)
    start = time.perf_counter()

    def record(i: int, intended: float) -> Callable[[Future[Any]], None]:
        def callback(_: Future[Any]) -> None:
            now = time.perf_counter()
            latencies[i], done_at[i] = now - intended, now
            finished.release()
        return callback

    for i, offset in enumerate(arrivals):
        intended = start + offset
        delay = intended - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submit(feeds).add_done_callback(record(i, intended))
    for _ in range(count):
        finished.acquire(timeout=300)
    span = max(done_at) - start
    return {"rate": rate, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p90_ms": float(np.percentile(latencies, 90) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3), "throughput": count / span}


def warm_hetsched(model: Any, feeds: dict[str, np.ndarray]) -> None:
    """Calibrate every worker: alone (the wide worker), then in bursts (the narrow ones)."""
    for _ in range(12):
        model.infer(feeds)
    for _ in range(8):
        for future in [model.submit(feeds) for _ in range(6)]:
            future.result()


def configurations(proto: Any, feeds: dict[str, np.ndarray]) -> list[tuple[str, Callable[[], Any]]]:
    blob = proto.SerializeToString()

    def hetsched(workers: str, narrow: bool, ratios: tuple[float, ...]) -> Callable[[], Any]:
        def make() -> Any:
            runtime = Runtime(workers=workers, narrow=narrow, policy="dmda")
            model = runtime.load(proto, ratios=ratios)
            warm_hetsched(model, feeds)
            return runtime, model.submit
        return make

    def plain(sessions: int, threads: int) -> Callable[[], Any]:
        def make() -> Any:
            server = PlainOrt(blob, sessions, threads)
            for _ in range(5):
                server.submit(feeds).result()
            return server, server.submit
        return make

    return [("ort 1x2t", plain(1, 2)), ("ort 2x1t", plain(2, 1)),
            ("hetsched 2x1", hetsched("2x1", False, (1.0,))),
            ("hetsched auto", hetsched("auto", True, (1.0,))),
            ("hetsched 50/50", hetsched("auto", True, (0.5, 0.5))),
            ("hetsched 80/20", hetsched("auto", True, (0.8, 0.2)))]


def sweep_points(submit: Submit, feeds: dict[str, np.ndarray], limit: float, label: str,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    points = []
    for poisson in (False, True):
        for fraction in args.fractions:
            rate = fraction * limit
            count = max(args.min_requests, int(rate * args.seconds))
            point = open_loop(submit, feeds, rate, count, poisson)
            point.update({"fraction": fraction, "poisson": poisson})
            points.append(point)
            print(f"  {label:15} {'poisson' if poisson else 'constant':8} {fraction:4.2f}: "
                  f"p50 {point['p50_ms']:7.1f} p99 {point['p99_ms']:8.1f} ms, "
                  f"{point['throughput']:6.1f} req/s", flush=True)
    return points


def over_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (arrivals, fraction): the medians over the rounds, and p99's range."""
    combined = []
    for same in zip(*rounds):
        point = {key: same[0][key] for key in ("rate", "fraction", "poisson")}
        for key in ("p50_ms", "p90_ms", "p99_ms", "throughput"):
            point[key] = statistics.median(p[key] for p in same)
        point["p99_range_ms"] = [min(p["p99_ms"] for p in same), max(p["p99_ms"] for p in same)]
        combined.append(point)
    return combined


def measure_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    proto = zoo.build(name)
    feeds = random_feeds(proto, 1)
    one_thread_s, _ = median_seconds(proto, feeds, threads=1, repeats=10)
    limit = 2 / one_thread_s
    print(f"{name}: 1-thread latency {one_thread_s * 1e3:.1f} ms, machine limit {limit:.1f} req/s",
          flush=True)
    chosen = [(label, make) for label, make in configurations(proto, feeds)
              if not args.configs or label in args.configs.split(",")]
    rounds: dict[str, list[list[dict[str, Any]]]] = {label: [] for label, _ in chosen}
    for round_ in range(args.rounds):
        if args.rounds > 1:
            print(f" round {round_ + 1}/{args.rounds}", flush=True)
        for label, make in chosen:
            server, submit = make()
            rounds[label].append(sweep_points(submit, feeds, limit, label, args))
            server.close()
    return {"limit_per_s": limit, "one_thread_ms": one_thread_s * 1e3,
            "configs": {label: over_rounds(sweeps) for label, sweeps in rounds.items()}, "rounds": rounds}


def wins_over_plain(configs: dict[str, list[dict[str, Any]]], label: str) -> tuple[int, int]:
    """At how many cells ``label``'s p99 was at or below the better plain-ORT configuration's."""
    plain = [points for other, points in configs.items() if other.startswith("ort")]
    if not plain:
        return 0, 0
    cells = list(zip(configs[label], *plain))
    return sum(ours["p99_ms"] <= min(p["p99_ms"] for p in rivals) for ours, *rivals in cells), len(cells)


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    rounds = f" --rounds {args.rounds}" if args.rounds > 1 else ""
    lines = ["## hetsched vs plain ONNX Runtime (bench/runtime_vs_ort.py)", "",
             f"`python bench/runtime_vs_ort.py --seconds {args.seconds} "
             f"--min-requests {args.min_requests}{rounds}` on {date.today()}, "
             f"{platform.node()} "
             "(2-core shared VM, no GPU). Open loop, batch 1; latency includes queueing. Rates are "
             "fractions of the machine limit (2 / one-thread latency). The scheduler's overhead per "
             "task: section of bench/task_overhead.py.", ""]
    for name, model in results.items():
        lines += [f"### {name} (limit {model['limit_per_s']:.1f} req/s)", "",
                  "| config | arrivals | " + " | ".join(f"{f:.2f}" for f in args.fractions)
                  + " | best throughput |",
                  "|---|---|" + "---|" * len(args.fractions) + "---|"]
        for label, points in model["configs"].items():
            for poisson in (False, True):
                row = [p for p in points if p["poisson"] == poisson]
                cells = " | ".join(f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f}" + (
                    " [{:.0f}–{:.0f}]".format(*p["p99_range_ms"]) if args.rounds > 1 else "") for p in row)
                best = max(p["throughput"] for p in row)
                lines.append(f"| {label} | {'poisson' if poisson else 'constant'} | {cells} | {best:.1f} |")
        over = "medians over the rounds, p99's range in brackets; " if args.rounds > 1 else ""
        lines += ["", f"Cells: p50 / p99 latency in ms at each fraction of the limit ({over}best "
                  "throughput in req/s).", ""]
        for label in model["configs"]:
            wins, cells = wins_over_plain(model["configs"], label)
            if label.startswith("hetsched") and cells:
                lines.append(f"- {label}: p99 at or below the better plain-ORT configuration's at "
                             f"{wins}/{cells} cells.")
        lines.append("")
    lines += ["![latency vs throughput](results/runtime_vs_ort.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, model) in zip(axes[0], results.items()):
        for label, points in model["configs"].items():
            row = [p for p in points if p["poisson"]]
            ax.plot([p["throughput"] for p in row], [p["p99_ms"] for p in row], marker="o", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("achieved throughput (req/s)")
        ax.set_ylabel("p99 latency (ms, log)")
        ax.set_title(f"{name}, Poisson arrivals")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,googlenet,vit-tiny")
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate point")
    parser.add_argument("--min-requests", type=int, default=100,
                        help="per rate point at least (a p99 of fewer requests is their maximum)")
    parser.add_argument("--configs", default="", help="only these configurations, comma-separated; "
                        "written to a section of their own (e.g. 'ort 1x2t,hetsched auto')")
    parser.add_argument("--section", default="", help="RESULTS.md section (and results/ file stem) to "
                        "write; default runtime_vs_ort, or runtime_vs_ort_subset with --configs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweeps per configuration, interleaved; cells are medians over them")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                        help="offered rates, as fractions of the machine limit, comma-separated")
    args = parser.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",")]
    results = {name: measure_model(name, args) for name in args.models.split(",")}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = args.section or "runtime_vs_ort" + ("_subset" if args.configs else "")
    (out / f"{stem}.json").write_text(json.dumps({"models": results}, indent=1))
    plot(results, out / f"{stem}.png")
    text = markdown(results, args).replace("results/runtime_vs_ort.png", f"results/{stem}.png")
    if args.configs:
        label = f"(bench/runtime_vs_ort.py, configs: {args.configs})"
        text = text.replace("(bench/runtime_vs_ort.py)", label)
        text = text.replace("--seconds", f"--configs '{args.configs}' --seconds")
    if args.fractions != [float(f) for f in parser.get_default("fractions").split(",")]:
        text = text.replace("--seconds", f"--fractions {','.join(map(str, args.fractions))} --seconds")
    if args.models != parser.get_default("models"):
        text = text.replace("--seconds", f"--models {args.models} --seconds")
    write_section(text, HERE / "RESULTS.md", marker=stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
