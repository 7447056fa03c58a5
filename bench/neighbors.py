"""A light batching model beside an overloaded one in one daemon: is the neighbour still served?

Two models in one ``hetsched serve``, offered load at the same time through ``tritonclient`` gRPC
(bench/load.py's open loop, Poisson arrivals): ``big`` (yolov8n, not batching:
``max_batch_size: 0``) at more than the machine serves, and ``small`` (lenet5, with the daemon's
default dynamic batching) at a light rate.  Both share the workers, so the small model's requests
wait for a core like everyone's; the question is whether they wait their turn or until the big
model's backlog is gone.  Per model: answers per second, p50 and p99, errors, medians over rounds.
``--compare-with DIR`` runs, alternating with this checkout round by round, a daemon on another
checkout's code (DIR first on its PYTHONPATH), for a before/after in one run.  Writes
bench/results/neighbors.json and its section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/neighbors.py [--big-rate 57] [--small-rate 20] [--seconds 10] \
        [--rounds 3] [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import onnx
from load import LoadResult, Target, closed_loop, open_loop
from results_md import write_section

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess

HERE = Path(__file__).parent
ROOT = HERE.parent
MODELS = {"big": ("yolov8n", "max_batch_size: 0\n"), "small": ("lenet5", "")}  # name -> (zoo model, config)


def repository(scratch: Path) -> Path:
    root = scratch / "repo"
    for name, (zoo_name, config) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        onnx.save(zoo.build(zoo_name), root / name / "1" / "model.onnx")
        if config:
            (root / name / "config.pbtxt").write_text(config)
    return root


def one_run(code: Path, repo: Path, perfmodels: Path, rates: dict[str, float], seconds: float
            ) -> dict[str, LoadResult]:
    """Both models' open loops at once, on a fresh daemon running ``code``."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(code), *([previous] if previous else [])])
    try:
        with DaemonProcess(repo, perfmodel_dir=perfmodels) as daemon:
            targets = {name: Target(f"grpc://{daemon.grpc}", name) for name in MODELS}
            for target in targets.values():
                closed_loop(target, 2, 2.0)  # warm-up: sessions, the scheduler's history
            results: dict[str, LoadResult] = {}

            def drive(name: str) -> None:
                results[name] = open_loop(targets[name], rates[name], seconds, "poisson", drain_s=60.0)

            threads = [threading.Thread(target=drive, args=(name,)) for name in MODELS]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return results
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def median_row(runs: list[dict[str, LoadResult]], name: str) -> dict[str, Any]:
    results = [run[name] for run in runs]
    errors: dict[str, int] = {}
    for result in results:
        for kind, count in result.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    return {"answers_per_s": statistics.median(r.achieved_rate for r in results),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "p99_range_ms": [min(r.p99_ms for r in results), max(r.p99_ms for r in results)],
            "sent": sum(r.sent for r in results), "errors": errors}


def report(rows: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    command = (f"`PYTHONPATH=.:bench python bench/neighbors.py --big-rate {args.big_rate:g} --small-rate "
               f"{args.small_rate:g} --seconds {args.seconds:g} --rounds {args.rounds}"
               + (f" --compare-with {args.compare_with}" if args.compare_with else "") + "`")
    lines = ["## A batching model beside an overloaded one (bench/neighbors.py)", "",
             f"{command} on {platform.node()} ({os.cpu_count()} cores, no GPU), {date.today()}. One daemon "
             f"serves `big` (yolov8n, `max_batch_size: 0`) at {args.big_rate:g} req/s offered, more than "
             f"the machine serves, and `small` (lenet5, default dynamic batching) at {args.small_rate:g} "
             f"req/s, both open-loop Poisson through `tritonclient` gRPC for {args.seconds:g} s at the "
             f"same time; client and daemon share the cores. Medians over {args.rounds} rounds (p99's "
             "range in brackets); errors summed.", "",
             "| code | model | answers/s | p50 ms | p99 ms | errors |", "|---|---|---:|---:|---:|---|"]
    for code, models in rows.items():
        for name, row in models.items():
            errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "none"
            lines.append(f"| {code} | {name} | {row['answers_per_s']:.1f} | {row['p50_ms']:.0f} | "
                         f"{row['p99_ms']:.0f} [{row['p99_range_ms'][0]:.0f}–{row['p99_range_ms'][1]:.0f}] "
                         f"| {errors} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rate", type=float, default=57.0)
    parser.add_argument("--small-rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare-with", default="",
                        help="another checkout's root: its code runs a daemon too, round by round")
    args = parser.parse_args()
    codes = {"this checkout": ROOT}
    if args.compare_with:
        codes[f"{args.compare_with}"] = Path(args.compare_with).resolve()
    rates = {"big": args.big_rate, "small": args.small_rate}
    scratch = Path(tempfile.mkdtemp(prefix="hetsched-neighbors-"))
    repo = repository(scratch)
    runs: dict[str, list[dict[str, LoadResult]]] = {label: [] for label in codes}
    for round_ in range(args.rounds):
        order = list(codes.items()) if round_ % 2 == 0 else list(codes.items())[::-1]
        for label, code in order:
            results = one_run(code, repo, scratch / f"perfmodels-{round_}-{len(runs[label])}-{hash(label)}",
                              rates, args.seconds)
            runs[label].append(results)
            print(f"round {round_ + 1}/{args.rounds} {label}: "
                  + "; ".join(f"{name} {r.line()}" for name, r in results.items()), flush=True)
    rows = {label: {name: median_row(label_runs, name) for name in MODELS}
            for label, label_runs in runs.items()}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "neighbors.json").write_text(json.dumps(
        {"rows": rows,
         "runs": {k: [{n: asdict(r) for n, r in run.items()} for run in v] for k, v in runs.items()}},
        indent=1))
    write_section(report(rows, args), HERE / "RESULTS.md", marker="neighbors")
    print(report(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
