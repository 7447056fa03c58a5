"""What-if: dmda's per-task wide/narrow choice against the two static configurations, simulated.

One 2-core group, Poisson arrivals of one-task requests at fractions of the
machine's limit, on the simulated platform (the real scheduler and dmda, a
virtual clock, each task taking exactly its table time).  Three configurations
of the same cores:

- ``dmda``: the wide worker and the two narrow ones, dmda choosing per task;
- ``wide only``: one worker with both cores (one ORT session with 2 threads);
- ``narrow only``: two one-core workers (two 1-thread sessions, Triton's one
  instance per core).

For several scaling ratios (wide time W vs narrow time N), it reports p50/p99 of
each and whether dmda's p99 is within 5% of the better static configuration at
that rate: the issue 4 / issue 6 target, here without any machine noise, so a
miss is the policy's and not the VM's.  Writes bench/results/wide_or_narrow.json,
a PNG and its section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/wide_or_narrow.py [--requests 4000]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from results_md import write_section

from hetsched.clock import FakeClock
from hetsched.perf import TableOracle
from hetsched.policies import make_policy
from hetsched.scheduler import Scheduler
from hetsched.simulate import SimulatedExecutor, poisson_arrivals, table_duration
from hetsched.task import Job, Task, WorkerSpec

HERE = Path(__file__).parent
WIDE = WorkerSpec("wide", "cpu:2t", "host:0", (0, 1))
NARROW = [WorkerSpec("n0", "cpu:1t", "host:0", (0,)), WorkerSpec("n1", "cpu:1t", "host:0", (1,))]
CONFIGS = {"dmda": [WIDE, *NARROW], "wide only": [WIDE], "narrow only": NARROW}
NARROW_S = 0.018
WIDE_S = (0.0095, 0.010, 0.012, 0.016)  # near-perfect, good, fair and poor thread scaling
FRACTIONS = (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TOLERANCE = 1.05


def one_task_job(index: int) -> Job:
    job = Job(f"r{index}", [[]])
    job.tasks = [Task("s", 0, job, "x=1", 1)]
    return job


def latencies(workers: list[WorkerSpec], table: dict[tuple[str, str], float], rate_per_s: float,
              requests: int, seed: int = 0) -> list[float]:
    """Seconds from arrival to answer of each of ``requests`` Poisson arrivals."""
    clock = FakeClock()
    executor = SimulatedExecutor(clock, table_duration(table))
    executor.scheduler = Scheduler(make_policy("dmda"), workers, clock=clock, executor=executor,
                                   perf=TableOracle(table))
    arrivals = poisson_arrivals(executor, rate_per_s, requests, one_task_job, seed)
    return [job.tasks[0].end_s - arrived for arrived, job in arrivals]


def measure(requests: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for wide_s in WIDE_S:
        table = {("s", "cpu:2t"): wide_s, ("s", "cpu:1t"): NARROW_S}
        limit = max(2 / NARROW_S, 1 / wide_s)
        points = []
        for fraction in FRACTIONS:
            point: dict[str, Any] = {"fraction": fraction, "rate_per_s": fraction * limit}
            for label, workers in CONFIGS.items():
                seconds = latencies(workers, table, fraction * limit, requests)
                point[label] = {"p50_ms": float(np.percentile(seconds, 50)) * 1e3,
                                "p99_ms": float(np.percentile(seconds, 99)) * 1e3}
            best = min(point["wide only"]["p99_ms"], point["narrow only"]["p99_ms"])
            point["dmda_within"] = point["dmda"]["p99_ms"] <= best * TOLERANCE
            points.append(point)
        results[f"{wide_s * 1e3:g}"] = {"wide_ms": wide_s * 1e3, "narrow_ms": NARROW_S * 1e3,
                                        "limit_per_s": limit, "points": points}
        print(f"W {wide_s * 1e3:g} ms / N {NARROW_S * 1e3:g} ms: dmda within 5% of the best static p99 "
              f"at {sum(p['dmda_within'] for p in points)} of {len(points)} rates", flush=True)
    return results


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["## dmda's wide/narrow choice, simulated (bench/wide_or_narrow.py)", "",
             f"`PYTHONPATH=.:bench python bench/wide_or_narrow.py --requests {args.requests}` on "
             f"{date.today()}: one 2-core group on the simulated platform (no machine noise), Poisson "
             "arrivals of one-task requests at fractions of the limit (the better of 2/N and 1/W). "
             "Cells: p50 / p99 ms; * marks rates where dmda's p99 is more than 5% above the better "
             "static configuration's.", ""]
    for result in results.values():
        lines += [f"### wide {result['wide_ms']:g} ms, narrow {result['narrow_ms']:g} ms "
                  f"(limit {result['limit_per_s']:.0f} req/s)", "",
                  "| config | " + " | ".join(f"{f:.2f}" for f in FRACTIONS) + " |",
                  "|---|" + "---|" * len(FRACTIONS)]
        for label in CONFIGS:
            cells = [f"{p[label]['p50_ms']:.0f} / {p[label]['p99_ms']:.0f}"
                     + ("*" if label == "dmda" and not p["dmda_within"] else "") for p in result["points"]]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![p99 vs rate](results/wide_or_narrow.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results.values()):
        for label in CONFIGS:
            ax.plot([p["fraction"] for p in result["points"]], [p[label]["p99_ms"] for p in result["points"]],
                    marker="o", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("offered load (fraction of the limit)")
        ax.set_ylabel("p99 latency (ms, log)")
        ax.set_title(f"W {result['wide_ms']:g} ms, N {result['narrow_ms']:g} ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per configuration and rate")
    args = parser.parse_args()
    results = measure(args.requests)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "wide_or_narrow.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "wide_or_narrow.png")
    write_section(markdown(results, args), HERE / "RESULTS.md", marker="wide_or_narrow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
