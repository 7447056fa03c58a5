"""How well each perf model predicts a part's measured latency, per zoo model.

For every zoo model, plans 0.8/0.2 and 4 x 0.25, 1 and 2 threads, batches 1..32
(batch 1 always; larger ones while the whole-model run fits --max-run-s):
the parts run on their real inputs; after 3 warm-up runs (a session's first runs are
slower: allocation, cold caches), the first --train runs feed a history model and the
next --test runs are the "measured" latency (median); parts shorter than --budget-s / 5
run more often, as many runs as fit --budget-s (50 at most), because a 20 µs part's
runs vary by tens of percent on this machine and a served part is timed thousands of
times anyway.  Predictors:

- naive: sum of the part's node times (ort-profile of the whole model, same batch and threads);
- composition: the fitted correction alpha * scaled sum + c0 * nodes + c1 * (1 - share) (the sum
  scaled so the model's node times add up to its measured run; share = the part's share of
  them), fitted
  leaving this model out (the other models' parts only), per thread count;
- history: the history model (Welford mean, outliers rejected) fed the training runs;
- regression: batch-size fit over the other batches' history, at held-out batches inside their range.

Writes bench/results/perfmodel_accuracy.json, a PNG and its section of bench/RESULTS.md.

    python bench/perfmodel_accuracy.py [--models a,b] [--threads 1,2] [--max-run-s 0.4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from results_md import write_section

from hetsched import zoo
from hetsched.sequential import SequentialRunner
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.partition import partition
from perfmodels.composition import CompositionSample, fit_composition, naive_sum, node_share, scaled_node_sum
from perfmodels.costs import NodeCosts
from perfmodels.history import HistoryKey, HistoryModel
from perfmodels.measure import cpu_session, timed_runs
from perfmodels.profile import profile
from perfmodels.regression import fit_batch_model

HERE = Path(__file__).parent
PLANS = {"80/20": [0.8, 0.2], "4x25": [0.25] * 4}
BATCHES = (1, 2, 4, 8, 16, 32)
PREDICTORS = ("naive", "composition", "history", "regression")
WARM_RUNS = 3  # untimed for the history: a session's first runs are slower (allocation, cold caches)
MAX_RUNS = 50  # history and test runs per part at most (more only lets drift in: see the note below)


def measure_model(name: str, threads: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (plan, part, threads, batch): node sum, node count, history mean, measured median."""
    model = zoo.build(name)
    base = build_graph(model, batch=1)
    plans = {label: partition(base, ratios) for label, ratios in PLANS.items()}
    rows: list[dict[str, Any]] = []
    for count in threads:
        for batch in BATCHES:
            started = time.perf_counter()
            graph = build_graph(model, batch=batch)
            costs = profile(graph, threads=count, repeats=3)
            if batch > 1 and costs.whole_model_s > args.max_run_s:
                print(f"  {name}: {count}t batch {batch} skipped (whole model {costs.whole_model_s:.2f} s)")
                break
            feeds = random_feeds(model, batch)
            for label, result in plans.items():
                rows += _measure_plan(name, label, result, feeds, costs, count, batch, args)
            elapsed = time.perf_counter() - started
            print(f"  {name}: {count}t batch {batch} done in {elapsed:.1f} s", flush=True)
    return rows


def _measure_plan(name: str, label: str, result: Any, feeds: dict[str, np.ndarray],
                  costs: NodeCosts, threads: int, batch: int,
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    sources = [p.model for p in result.parts]
    values = SequentialRunner(result.plan, sources, threads).run_all(feeds)
    rows = []
    history = HistoryModel(min_samples=3)  # samples 4 and 5 may be rejected as outliers
    for part, source in zip(result.plan.parts, sources):
        inputs = {n: values[n] for n in part.inputs}
        session = cpu_session(source, threads)
        once_s = min(timed_runs(session, inputs, WARM_RUNS))  # the first runs allocate and warm caches
        train, test = (max(count, min(MAX_RUNS, int(args.budget_s / max(once_s, 1e-9))))
                       for count in (args.train, args.test))
        samples = timed_runs(session, inputs, train + test)
        key = HistoryKey(f"part{part.index}", f"cpu:{threads}t", f"batch={batch}")
        for sample in samples[:train]:
            history.record(key, sample)
        rows.append({
            "model": name, "plan": label, "part": part.index, "threads": threads, "batch": batch,
            "nodes": len(part.nodes), "node_sum_s": naive_sum(costs.seconds, part.nodes),
            "scaled_sum_s": scaled_node_sum(costs, part.nodes), "share": node_share(costs, part.nodes),
            "history_s": history.predict(key),
            "measured_s": statistics.median(samples[train:]),
        })
    return rows


def predict_all(rows: list[dict[str, Any]]) -> None:
    """Fill each row's predictions (composition leaves the row's model out of its fit)."""
    by_threads: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_threads[row["threads"]].append(row)
    for count, group in by_threads.items():
        for name in {r["model"] for r in group}:
            others = [CompositionSample(r["scaled_sum_s"], r["nodes"], r["measured_s"], r["share"])
                      for r in group if r["model"] != name]
            fit = fit_composition(f"cpu:{count}t", others) if len(others) >= 2 else None
            for r in group:
                if r["model"] == name:
                    r["composition_s"] = (fit.predict(r["scaled_sum_s"], r["nodes"], r["share"]) if fit
                                          else float("nan"))
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        r["naive_s"] = r["node_sum_s"]
        series[(r["model"], r["plan"], r["part"], r["threads"])].append(r)
    for points in series.values():
        for r in points:
            others = [(p["batch"], p["history_s"]) for p in points if p["batch"] != r["batch"]]
            fit = fit_batch_model(others) if len({b for b, _ in others}) >= 2 else None
            r["regression_s"] = fit.predict(r["batch"]) if fit is not None else float("nan")


def errors(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and predictor: MAPE and worst absolute percentage error (finite predictions only)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        out[name] = {}
        for predictor in PREDICTORS:
            ape = [abs(r[f"{predictor}_s"] - r["measured_s"]) / r["measured_s"] * 100
                   for r in rows if r["model"] == name and np.isfinite(r[f"{predictor}_s"])]
            out[name][predictor] = {"mape": float(np.mean(ape)) if ape else float("nan"),
                                    "worst": float(np.max(ape)) if ape else float("nan"), "n": len(ape)}
    return out


def plot(table: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(table)
    fig, ax = plt.subplots(figsize=(13, 5))
    for i, predictor in enumerate(PREDICTORS):
        ax.bar(np.arange(len(models)) + (i - 1.5) * 0.2, [table[m][predictor]["mape"] for m in models],
               width=0.2, label=predictor)
    ax.axhline(5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_ylabel("MAPE of part latency, % (log)")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.legend()
    ax.set_title("Predicted vs measured part latency (plans 80/20 and 4x25, 1-2 threads, batches 1-32)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(table: dict[str, dict[str, dict[str, float]]], rows: list[dict[str, Any]],
             args: argparse.Namespace) -> str:
    lines = [
        "## Perf model accuracy (bench/perfmodel_accuracy.py)", "",
        f"`python bench/perfmodel_accuracy.py --threads {args.threads} --max-run-s {args.max_run_s}` on "
        f"{date.today()}, {platform.node()} (2-core shared VM), Python {platform.python_version()}"
        + (f"; then `--append --models {args.models}` re-measured those models and refitted every "
           "predictor over all rows. " if args.append else ". ") +
        f"{len(rows)} part measurements (median of {args.test}+ runs after {args.train}+ history runs, "
        f"more for parts shorter than {args.budget_s / 5 * 1e3:.0f} ms; 3 warm-up runs before). "
        "Batches stop where the whole model takes longer than --max-run-s per run. "
        "Cells: MAPE % / worst %; regression only at held-out batches inside the fitted range.", "",
        "| model | batches | naive sum | composition (leave-model-out) | history | regression |",
        "|---|---|---|---|---|---|",
    ]
    for name, cells in table.items():
        batches = sorted({r["batch"] for r in rows if r["model"] == name})
        lines.append(f"| {name} | {','.join(map(str, batches))} | " + " | ".join(
            f"{cells[p]['mape']:.1f} / {cells[p]['worst']:.1f}" for p in PREDICTORS) + " |")
    better = [m for m, c in table.items() if c["composition"]["mape"] < c["naive"]["mape"]]
    lines += ["", f"- Composition better than the naive sum on {len(better)} of {len(table)} models.",
              "- Worst MAPE per predictor: " + ", ".join(
                  f"{p} {max(c[p]['mape'] for c in table.values()):.1f}% "
                  f"({max(table, key=lambda m: table[m][p]['mape'])})" for p in PREDICTORS),
              "", "![perf model accuracy](results/perfmodel_accuracy.png)", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.NAMES))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--max-run-s", type=float, default=0.4)
    parser.add_argument("--train", type=int, default=5, help="history runs per part, at least")
    parser.add_argument("--test", type=int, default=5, help="measured runs per part, at least")
    parser.add_argument("--budget-s", type=float, default=0.05,
                        help="short parts run more often: as many runs as fit this, up to 50, "
                        "for the history and again for the measurement")
    parser.add_argument("--append", action="store_true",
                        help="keep the other models' rows of the last run's JSON (re-measure only --models)")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    names = args.models.split(",")
    previous = HERE / "results" / "perfmodel_accuracy.json"
    rows: list[dict[str, Any]] = []
    if args.append and previous.exists():
        rows = [r for r in json.loads(previous.read_text())["rows"] if r["model"] not in names]
    for name in names:
        rows += measure_model(name, threads, args)
    order = list(zoo.NAMES)
    rows.sort(key=lambda r: (order.index(r["model"]), r["plan"], r["threads"], r["batch"], r["part"]))
    predict_all(rows)
    table = errors(rows)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "perfmodel_accuracy.json").write_text(json.dumps({"rows": rows, "errors": table}, indent=1))
    plot(table, out / "perfmodel_accuracy.png")
    write_section(markdown(table, rows, args), HERE / "RESULTS.md", marker="perfmodel_accuracy")
    print(markdown(table, rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
