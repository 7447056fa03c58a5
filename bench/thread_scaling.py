"""How each model scales over this machine's cores: the trade-off behind wide and narrow workers.

For each model, batch 1, in plain ONNX Runtime sessions with a local worker's options:

- latency of one request on 1 thread and on every core, back to back and after idle gaps
  (Poisson, ``--gap-ms`` mean): a server at low load sees the second;
- throughput of one session per core (each 1 thread, pinned to its core, all running at once)
  against one session with every core's threads, back to back.

A model whose one-per-core throughput is well above the wide session's is one where Triton's
static choice costs (one wide instance: latency; one per core: throughput).  Writes its section
of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/thread_scaling.py [--models ocr-mobile,yolov8n,googlenet,vit-tiny]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from results_md import package_version, write_section

from hetsched import zoo
from partitioner.feeds import random_feeds
from perfmodels.measure import session_options

HERE = Path(__file__).parent


def session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, session_options(threads, spin=True),
                                providers=["CPUExecutionProvider"])


def latency_ms(run: Any, requests: int, gap_s: float, rng: np.random.Generator) -> float:
    """Median ms of ``requests`` calls, each after an exponential idle gap of mean ``gap_s`` (0: none)."""
    times = []
    for _ in range(requests):
        if gap_s:
            time.sleep(rng.exponential(gap_s))
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def per_core_throughput(model_bytes: bytes, feeds: dict[str, np.ndarray], cores: list[int],
                        seconds: float) -> float:
    """Requests/s of one 1-thread session per core, each pinned to its core, all at once."""
    counts: list[int] = []
    ready = threading.Barrier(len(cores))

    def loop(core: int) -> None:
        os.sched_setaffinity(0, {core})
        s = session(model_bytes, 1)
        s.run(None, feeds)
        ready.wait()
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            s.run(None, feeds)
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=loop, args=(core,)) for core in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def wide_throughput(s: Any, feeds: dict[str, np.ndarray], seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.run(None, feeds)
        n += 1
    return n / seconds


def measure(name: str, cores: list[int], requests: int, gap_s: float, seconds: float) -> dict[str, float]:
    proto = zoo.build(name)
    model_bytes, feeds = proto.SerializeToString(), random_feeds(proto, 1, seed=0)
    narrow, wide = session(model_bytes, 1), session(model_bytes, len(cores))
    rng = np.random.default_rng(0)
    row: dict[str, float] = {}
    for label, s in (("1t", narrow), ("wide", wide)):
        for _ in range(3):
            s.run(None, feeds)
        row[f"{label}_ms"] = latency_ms(lambda s=s: s.run(None, feeds), requests, 0.0, rng)
        row[f"{label}_idle_ms"] = latency_ms(lambda s=s: s.run(None, feeds), requests, gap_s, rng)
    row["per_core_rps"] = per_core_throughput(model_bytes, feeds, cores, seconds)
    row["wide_rps"] = wide_throughput(wide, feeds, seconds)
    return row


def report(rows: dict[str, dict[str, float]], cores: int, command: str, gap_ms: float) -> str:
    lines = [
        "## Thread scaling of the zoo's models (bench/thread_scaling.py)",
        "",
        f"`{command}` on {platform.node()} ({cores} cores), {date.today().isoformat()}, onnxruntime "
        f"{package_version('onnxruntime')}. Batch 1, a local worker's session options. Latency: median ms "
        f"on 1 thread and on {cores} (wide), back to back and after Poisson idle gaps of {gap_ms:.0f} ms "
        f"mean. Throughput: one 1-thread session per core, pinned, all at once, against one {cores}-thread "
        "session, back to back.",
        "",
        "| model | 1t ms | wide ms | speed-up | 1t after idle | wide after idle | per core req/s "
        "| wide req/s | per core / wide |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['1t_ms']:.1f} | {r['wide_ms']:.1f} | {r['1t_ms'] / r['wide_ms']:.2f}x "
            f"| {r['1t_idle_ms']:.1f} | {r['wide_idle_ms']:.1f} | {r['per_core_rps']:.0f} "
            f"| {r['wide_rps']:.0f} | {r['per_core_rps'] / r['wide_rps']:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ocr-mobile,yolov8n,googlenet,vit-tiny")
    parser.add_argument("--requests", type=int, default=40, help="per latency median")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="mean idle gap before each request")
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput figure")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    rows = {}
    for name in args.models.split(","):
        print(f"{name}...", flush=True)
        rows[name] = measure(name, cores, args.requests, args.gap_ms / 1e3, args.seconds)
        print(f"  {rows[name]}", flush=True)
    command = "PYTHONPATH=.:bench python bench/thread_scaling.py " + " ".join(sys.argv[1:])
    text = report(rows, len(cores), command.strip(), args.gap_ms)
    print(text)
    write_section(text, HERE / "RESULTS.md", "thread_scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
