"""dmda's re-timing of a stale wide worker (PROBE_AFTER_S), on and off, in process.

Each run makes a fresh runtime (default workers: one wide worker and a narrow one per core), warms
it up as a first start does, notes what warm-up predicted for the wide and a narrow worker, then
sends open-loop Poisson batch-1 requests through ``Model.infer`` from a thread pool (as the
daemon's gRPC threads call it).  Runs alternate re-timing on (1 s) and off, round by round; per
run: the predictions, the share of tasks on the wide worker, p50 and p99.  Writes its section of
bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/retiming.py [--model vit-tiny] [--rate 26] [--requests 300] \\
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from results_md import write_section

import hetsched.policies.dmda as dmda
from hetsched import zoo
from hetsched.runtime import Runtime
from partitioner.feeds import random_feeds

HERE = Path(__file__).parent
MODES = {"re-timing": 1.0, "never": float("inf")}  # label -> PROBE_AFTER_S


def one_run(proto: Any, rate: float, requests: int, seed: int) -> dict[str, Any]:
    feeds = random_feeds(proto, 1, seed=0)
    with Runtime(gpu_streams=0, trace=True) as runtime:
        model = runtime.load(proto)
        model.warm_up(32)
        predicted = model._part_lengths(1)[0]
        latencies: list[float] = []

        def one() -> None:
            started = time.perf_counter()
            model.infer(feeds)
            latencies.append(time.perf_counter() - started)

        arrivals = random.Random(seed)
        with ThreadPoolExecutor(32) as pool:
            at = time.perf_counter()
            for _ in range(requests):
                at += arrivals.expovariate(rate)
                time.sleep(max(0.0, at - time.perf_counter()))
                pool.submit(one)
        assert runtime.tracer is not None
        starts = [e for e in runtime.tracer.events() if e.event == "start"][-requests:]
        wide = {w.name for w in runtime.specs if len(w.cores) > 1}
    narrow = [s for name, s in predicted.items() if name not in wide]
    return {"wide_ms": 1e3 * min(predicted[name] for name in wide), "narrow_ms": 1e3 * min(narrow),
            "wide_share": sum(e.worker in wide for e in starts) / len(starts),
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-tiny")
    parser.add_argument("--rate", type=float, default=26.0, help="offered requests per second")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    proto = zoo.build(args.model)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in MODES}
    for index in range(args.rounds):
        for label, after in MODES.items():
            dmda.PROBE_AFTER_S = after
            row = one_run(proto, args.rate, args.requests, seed=index)
            runs[label].append(row)
            print(f"round {index + 1}/{args.rounds} {label}: warm-up predicted wide {row['wide_ms']:.1f} ms, "
                  f"narrow {row['narrow_ms']:.1f} ms; wide {row['wide_share']:.0%} of tasks, "
                  f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)
    command = "PYTHONPATH=.:bench python bench/retiming.py " + " ".join(sys.argv[1:])
    lines = [
        f"## dmda's re-timing of a stale wide worker: {args.model} at {args.rate:g} req/s "
        "(bench/retiming.py)",
        "",
        f"`{command.strip()}` on {platform.node()} ({os.cpu_count()} cores, no GPU), "
        f"{date.today().isoformat()}. In process, a fresh runtime per run (warmed up as a first start "
        f"is), {args.requests} open-loop Poisson batch-1 requests through `Model.infer` from a thread "
        "pool; re-timing on (PROBE_AFTER_S = 1 s) and off alternate round by round. Predicted: what "
        "warm-up timed for the wide worker and a narrow one.",
        "",
        "| re-timing | p99 ms (median) | p99 per round | wide tasks per round "
        "| predicted wide / narrow ms per round |",
        "|---|---:|---|---|---|",
    ]
    for label, rows in runs.items():
        p99s = ", ".join(f"{r['p99_ms']:.0f}" for r in rows)
        shares = ", ".join(f"{r['wide_share']:.0%}" for r in rows)
        predictions = ", ".join(f"{r['wide_ms']:.1f} / {r['narrow_ms']:.1f}" for r in rows)
        lines.append(f"| {label} | {statistics.median(r['p99_ms'] for r in rows):.0f} | {p99s} | {shares} | "
                     f"{predictions} |")
    text = "\n".join(lines)
    print(text)
    write_section(text, HERE / "RESULTS.md", f"retiming_{args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
