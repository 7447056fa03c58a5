"""Two versions of hetsched through the daemon, the same sweep side by side: did a change help?

A change to the scheduler or the batcher is judged here before it is called a speed-up.  The
baseline is a git ref, checked out into a temporary worktree; the candidate is this working tree.
Per round, each version gets a fresh `hetsched serve` (its own repository and perf-model directory,
calibrated at load as a first start is) and the same sweep of open-loop Poisson rates through
``tritonclient`` gRPC (bench/load.py), low to high, with a pause between rates so the daemon's
Chrome trace splits by rate; the versions alternate round by round, so the machine's noise hits
them alike.  Per version and rate: answers per second, p99 (medians over rounds) and the rows per
task the daemon ran.  Writes bench/results/<section>.json and its section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/versions.py --baseline 0c17a8d [--model ocr-mobile] \\
        [--rates 83,138,166,193] [--rounds 3] [--duration 6] [--config ''] [--section versions]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import onnx
from load import Target, closed_loop, open_loop
from results_md import publish

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess

HERE = Path(__file__).parent
ROOT = HERE.parent
PAUSE_S = 2.0  # idle between rates: the gap that splits the trace by rate


def worktree(ref: str, where: Path) -> Path:
    """A checkout of ``ref`` (its tracked files only) at ``where``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    return where


def short(ref: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def this_tree() -> str:
    """The candidate's label: its commit, and whether the code the daemon runs differs from it."""
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                            "hetsched", "perfmodels", "partitioner"],
                           check=True, capture_output=True, text=True).stdout.strip()
    return f"this tree ({short('HEAD')}{' + uncommitted changes' if dirty else ''})"


def rows_by_rate(trace_file: Path, phases: int) -> list[dict[str, int]]:
    """Rows per task in each of the trace's last ``phases`` bursts of work (split at idle gaps)."""
    events = json.loads(trace_file.read_text())["traceEvents"]
    tasks = sorted((e for e in events if e["ph"] == "X" and "rows" in e.get("args", {})),
                   key=lambda e: e["ts"])
    bursts: list[list[dict[str, Any]]] = []
    end = -float("inf")
    for task in tasks:
        if task["ts"] - end > PAUSE_S / 2 * 1e6:
            bursts.append([])
        bursts[-1].append(task)
        end = max(end, task["ts"] + task["dur"])
    mixes = [dict(Counter(str(t["args"]["rows"]) for t in burst)) for burst in bursts[-phases:]]
    return [{}] * (phases - len(mixes)) + mixes


def one_sweep(source: Path | None, model_path: Path, name: str, config: str, rates: list[float],
              duration_s: float, min_requests: int, scratch: Path) -> list[dict[str, Any]]:
    run = scratch / f"run-{time.time_ns()}"
    (run / "repository" / name / "1").mkdir(parents=True)
    (run / "repository" / name / "1" / "model.onnx").symlink_to(model_path)
    (run / "repository" / name / "config.pbtxt").write_text(config)
    trace_file = run / "trace.json"
    rows = []
    with DaemonProcess(run / "repository", "--trace-file", str(trace_file), perfmodel_dir=run / "perfmodels",
                       source=source) as daemon:
        target = Target(f"grpc://{daemon.grpc}", name)
        closed_loop(target, 2, 3.0)  # the clients' warm-up, after the daemon's own
        for rate in rates:
            time.sleep(PAUSE_S)
            seconds = max(duration_s, min_requests / rate)
            result = open_loop(target, rate, seconds, "poisson", drain_s=max(10.0, seconds))
            print(f"    {result.line()}", flush=True)
            rows.append({"rate": rate, "answers_per_s": result.achieved_rate, "p50_ms": result.p50_ms,
                         "p99_ms": result.p99_ms, "errors": sum(result.errors.values())})
    for row, mix in zip(rows, rows_by_rate(trace_file, len(rows))):
        row["rows"] = mix
    return rows


def report(results: dict[str, Any], command: str) -> str:
    versions = list(results["runs"])
    lines = [
        f"## {results['model']}: {versions[0]} against {versions[1]} through the daemon (bench/versions.py)",
        "",
        f"`{command}` on {platform.node()} ({os.cpu_count()} cores, no GPU), {date.today().isoformat()}. "
        f"Each version in a fresh `hetsched serve` per round (fresh perf models, calibrated at load), "
        f"config `{results['config'] or '(none: the defaults)'}`; the same open-loop Poisson sweep through "
        f"`tritonclient` gRPC, {results['duration_s']:g} s per rate and at least {results['min_requests']} "
        f"requests, low to high; {results['rounds']} rounds, the versions alternating. Cells: median "
        "answers/s, p50 and p99 over the rounds (p99 per round in brackets), and the rows per task that "
        "ran, summed over the rounds (rows×tasks).",
        "",
        "| offered req/s | " + " | ".join(versions) + " |",
        "|---:|" + "---|" * len(versions),
    ]
    for index, rate in enumerate(results["rates"]):
        cells = []
        for version in versions:
            runs = [sweep[index] for sweep in results["runs"][version]]
            mix: Counter[str] = Counter()
            for run in runs:
                mix.update(run["rows"])
            errors = sum(run["errors"] for run in runs)
            p99s = ", ".join(f"{run['p99_ms']:.0f}" for run in runs)
            cells.append(
                f"{statistics.median(r['answers_per_s'] for r in runs):.0f} req/s, "
                f"p50 {statistics.median(r['p50_ms'] for r in runs):.1f} ms, p99 "
                f"{statistics.median(r['p99_ms'] for r in runs):.0f} "
                f"[{p99s}] ms"
                + (f" ({errors} err)" if errors else "")
                + "; rows " + " ".join(f"{rows}×{mix[rows]}" for rows in sorted(mix, key=int)))
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git ref of the version to compare against")
    parser.add_argument("--model", default="ocr-mobile")
    parser.add_argument("--rates", default="83,138,166,193", help="offered requests per second, low to high")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per rate")
    parser.add_argument("--min-requests", type=int, default=100)
    parser.add_argument("--config", default="", help="the model's config.pbtxt (default: none)")
    parser.add_argument("--section", default="versions")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="hetsched-versions-"))
    model_path = scratch / f"{args.model}.onnx"
    onnx.save(zoo.build(args.model), model_path)
    baseline = worktree(args.baseline, scratch / "baseline")
    versions: dict[str, Path | None] = {f"baseline {short(args.baseline)}": baseline, this_tree(): None}
    runs: dict[str, list[list[dict[str, Any]]]] = {version: [] for version in versions}
    try:
        for index in range(args.rounds):
            for version, source in versions.items():
                print(f"round {index + 1}/{args.rounds}: {version}", flush=True)
                runs[version].append(one_sweep(source, model_path, args.model, args.config, rates,
                                               args.duration, args.min_requests, scratch))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    results = {"model": args.model, "config": args.config, "rates": rates, "rounds": args.rounds,
               "duration_s": args.duration, "min_requests": args.min_requests, "runs": runs}
    publish(results, args.section, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
