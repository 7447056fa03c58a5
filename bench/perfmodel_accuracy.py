"""How well each perf model predicts a part's measured latency, per zoo model.

For every zoo model, plans 0.8/0.2 and 4 x 0.25, 1 and 2 threads, batches 1..32
(batch 1 always; larger ones while the whole-model run fits --max-run-s):
the parts run on their real inputs; after 3 warm-up runs per batch (a session's first
runs are slower: allocation, cold caches), 2 x --runs runs per batch alternate between
feeding a history model and the "measured" latency (median of its runs), and every stage
(the whole model, each plan's parts) at every batch takes turns, run after run.
Alternating, not the first runs for one and the next for the other, nor one batch after
another, because this shared VM's speed drifts by tens of percent over seconds (a
neighbour's burst): taken one after the other, the history of a 9 ms part was off by up
to 80% of a measurement that followed it, and a batch-size fit met a batch measured in a
slow spell (128 µs between neighbours of 40): that is the machine's drift, not the
models' error.  Parts shorter than --budget-s / --runs run more often, as many runs as fit
--budget-s (50 at most each), because a 20 µs part's runs vary by tens of percent here
and a served part is timed thousands of times anyway.  The node profile takes
--profile-runs runs (default: as many as fit its budget, as
``hetsched profile`` does).  Predictors:

- naive: sum of the part's node times (ort-profile of the whole model, same batch and threads);
- share x whole: the part's share of the profile's node times, times the whole model's time as
  its history says (the whole model is a stage of its own, timed in turn with the parts);
- composition: the fitted correction alpha * (share x whole) + c0 * nodes + c1 * (1 - share),
  fitted leaving this model out (the other models' parts only), per thread count;
- history: the history model (median of its recent window) fed the training runs;
- regression: batch-size fit over the other batches' history, at held-out batches inside their range.

Writes bench/results/perfmodel_accuracy.json, a PNG and its section of bench/RESULTS.md.

    python bench/perfmodel_accuracy.py [--models a,b] [--threads 1,2] [--max-run-s 1.0] [--refit]
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
from typing import Any, NamedTuple

import numpy as np
from results_md import write_section

from hetsched import zoo
from hetsched.sequential import SequentialRunner
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.partition import partition
from perfmodels.composition import CompositionSample, fit_composition, naive_sum, node_share
from perfmodels.costs import NodeCosts
from perfmodels.history import HistoryKey, HistoryModel
from perfmodels.measure import cpu_session, timed_runs
from perfmodels.profile import profile
from perfmodels.regression import fit_batch_model

HERE = Path(__file__).parent
PLANS = {"80/20": [0.8, 0.2], "4x25": [0.25] * 4}
BATCHES = (1, 2, 4, 8, 16, 32)
PREDICTORS = ("naive", "scaled", "composition", "history", "regression")
WHOLE = "whole"  # the unpartitioned model, a stage of its own
WARM_RUNS = 3  # untimed for the history: a session's first runs are slower (allocation, cold caches)
MAX_RUNS = 50  # history runs, and measured runs, per part at most


def measure_model(name: str, threads: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (plan, part, threads, batch): the profile's numbers, history, measured median."""
    model = zoo.build(name)
    base = build_graph(model, batch=1)
    plans = {label: partition(base, ratios) for label, ratios in PLANS.items()}
    rows: list[dict[str, Any]] = []
    for count in threads:
        started = time.perf_counter()
        runners = {label: SequentialRunner(r.plan, [p.model for p in r.parts], count)
                   for label, r in plans.items()}
        costs: dict[int, NodeCosts] = {}
        values: dict[int, dict[str, dict[str, np.ndarray]]] = {}  # batch -> plan -> tensor -> value
        for batch in BATCHES:
            profiled = profile(build_graph(model, batch=batch), threads=count,
                               repeats=args.profile_runs)
            if batch > 1 and profiled.whole_model_s > args.max_run_s:
                print(f"  {name}: {count}t batches from {batch} skipped "
                      f"(whole model {profiled.whole_model_s:.2f} s)")
                break
            costs[batch] = profiled
            feeds = random_feeds(model, batch)
            values[batch] = {label: runner.run_all(feeds) for label, runner in runners.items()}
            values[batch][WHOLE] = feeds
        stages = [_Stage(WHOLE, 0, model, list(values[1][WHOLE]))]
        stages += [_Stage(label, part.index, source.model, part.inputs) for label, result in plans.items()
                   for part, source in zip(result.plan.parts, result.parts)]
        samples = _take_turns(stages, values, count, args)
        whole_s = {batch: _history(samples[(WHOLE, 0, batch)]) for batch in costs}
        for label, index, _, _ in stages[1:]:
            part = plans[label].plan.parts[index]
            for batch, node_costs in costs.items():
                taken = samples[(label, part.index, batch)]
                rows.append({
                    "model": name, "plan": label, "part": part.index, "threads": count, "batch": batch,
                    "nodes": len(part.nodes), "node_sum_s": naive_sum(node_costs.seconds, part.nodes),
                    "share": node_share(node_costs, part.nodes),
                    "whole_history_s": whole_s[batch], "history_s": _history(taken),
                    "measured_s": statistics.median(taken[1::2]),
                })
        elapsed = time.perf_counter() - started
        print(f"  {name}: {count}t batches {','.join(map(str, costs))} done in {elapsed:.1f} s", flush=True)
    return rows


class _Stage(NamedTuple):
    label: str  # WHOLE or a plan's label
    index: int  # the part's index (0 for the whole model)
    source: Any  # its model
    inputs: list[str]


def _take_turns(stages: list[_Stage],
                values: dict[int, dict[str, dict[str, np.ndarray]]], threads: int,
                args: argparse.Namespace) -> dict[tuple[str, int, int], list[float]]:
    """Seconds of every run of every stage (the whole model and each plan's parts) at every batch.

    All of them take turns, run after run, each at its share of the runs (the one furthest
    behind its count goes next), so that the machine's drift hits them alike: the parts and the
    whole model they are compared with are timed over the same stretch of time.
    """
    sessions, inputs, wanted = {}, {}, {}
    for label, index, source, names in stages:
        session = sessions[(label, index)] = cpu_session(source, threads)
        for batch, by_plan in values.items():
            key = (label, index, batch)
            feeds = inputs[key] = {n: by_plan[label][n] for n in names}
            once_s = min(timed_runs(session, feeds, WARM_RUNS))  # the first runs allocate, warm caches
            wanted[key] = 2 * max(args.runs, min(MAX_RUNS, int(args.budget_s / max(once_s, 1e-9))))
    samples: dict[tuple[str, int, int], list[float]] = {key: [] for key in inputs}
    # Batch-major, so that every run follows another stage's run: stage-major, a stage's batch 1
    # always followed another session and its batch 2 its own batch 1 (warm), which made batch 1 of
    # microsecond parts 20-40% slower than batch 2 and threw every batch-size fit through it off.
    order = sorted(inputs, key=lambda key: key[2])
    while True:  # the key furthest behind runs next: every stage is timed over the same stretch
        key = min(order, key=lambda k: len(samples[k]) / wanted[k])
        if len(samples[key]) >= wanted[key]:
            return samples
        samples[key] += timed_runs(sessions[key[:2]], inputs[key], 1)


def _history(samples: list[float]) -> float:
    """What the history model predicts after the even runs (the odd ones are the measurement)."""
    history = HistoryModel(min_samples=3)
    key = HistoryKey("stage", "cpu", "batch")
    for sample in samples[0::2]:
        history.record(key, sample)
    return history.predict(key)


def predict_all(rows: list[dict[str, Any]]) -> None:
    """Fill each row's predictions (composition leaves the row's model out of its fit)."""
    by_threads: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_threads[row["threads"]].append(row)
    for r in rows:
        r["naive_s"] = r["node_sum_s"]
        r["scaled_s"] = r["share"] * r["whole_history_s"]  # the profile's share of the model's time
    for count, group in by_threads.items():
        for name in {r["model"] for r in group}:
            others = [CompositionSample(r["scaled_s"], r["nodes"], r["measured_s"], r["share"])
                      for r in group if r["model"] != name]
            fit = fit_composition(f"cpu:{count}t", others) if len(others) >= 2 else None
            for r in group:
                if r["model"] == name:
                    r["composition_s"] = (fit.predict(r["scaled_s"], r["nodes"], r["share"]) if fit
                                          else float("nan"))
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
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
        width = 0.8 / len(PREDICTORS)
        ax.bar(np.arange(len(models)) + (i - (len(PREDICTORS) - 1) / 2) * width,
               [table[m][predictor]["mape"] for m in models], width=width, label=predictor)
    ax.axhline(5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_ylabel("MAPE of part latency, % (log)")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.legend()
    ax.set_title("Predicted vs measured part latency (plans 80/20 and 4x25, 1-2 threads, batches 1-32)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(table: dict[str, dict[str, dict[str, float]]], rows: list[dict[str, Any]],
             measured: dict[str, Any]) -> str:
    lines = [
        "## Perf model accuracy (bench/perfmodel_accuracy.py)", "",
        f"`{measured['command']}` on {measured['date']}, {measured['host']} (2-core shared VM), "
        f"Python {measured['python']}. {len(rows)} part measurements: per part and batch, the median of "
        f"{measured['runs']}+ runs alternating with as many history runs (more for parts shorter than "
        f"{measured['budget_s'] / measured['runs'] * 1e3:.0f} ms), every stage (the whole model, each "
        "plan's parts) at every batch taking turns; 3 warm-up runs before. " + measured.get("note", "") +
        "Batches stop where the whole model takes longer than --max-run-s per run. "
        "Cells: MAPE % / worst %; regression only at held-out batches inside the fitted range.", "",
        "| model | batches | naive sum | share x whole | composition (leave-model-out) | history "
        "| regression |",
        "|---|---|---|---|---|---|---|",
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
    parser.add_argument("--max-run-s", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=9,
                        help="history runs per part and batch, at least; as many measured runs between them")
    parser.add_argument("--budget-s", type=float, default=0.3,
                        help="short parts run more often: as many runs as fit this, up to 50, "
                        "for the history and again for the measurement")
    parser.add_argument("--profile-runs", type=int, default=None,
                        help="timed runs of each node profile (default: as many as fit its budget, "
                        "as `hetsched profile` does)")
    parser.add_argument("--append", action="store_true",
                        help="keep the other models' rows of the last run's JSON (re-measure only --models)")
    parser.add_argument("--refit", action="store_true",
                        help="measure nothing: refit every predictor on the last run's rows and rewrite "
                        "the table (after a change to a predictor)")
    args = parser.parse_args()
    previous = HERE / "results" / "perfmodel_accuracy.json"
    if args.refit:
        last = json.loads(previous.read_text())
        rows, measured = last["rows"], last["measured"]
    else:
        rows, measured = _measure(args, previous)
    predict_all(rows)
    table = errors(rows)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    previous.write_text(json.dumps({"measured": measured, "rows": rows, "errors": table}, indent=1))
    plot(table, out / "perfmodel_accuracy.png")
    write_section(markdown(table, rows, measured), HERE / "RESULTS.md", marker="perfmodel_accuracy")
    print(markdown(table, rows, measured))
    return 0


def _measure(args: argparse.Namespace, previous: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of --models (and, with --append, the last run's other rows) and how they were taken."""
    threads = [int(t) for t in args.threads.split(",")]
    names = args.models.split(",")
    rows: list[dict[str, Any]] = []
    if args.append and previous.exists():
        rows = [r for r in json.loads(previous.read_text())["rows"] if r["model"] not in names]
    for name in names:
        rows += measure_model(name, threads, args)
    order = list(zoo.NAMES)
    rows.sort(key=lambda r: (order.index(r["model"]), r["plan"], r["threads"], r["batch"], r["part"]))
    command = " ".join(["python bench/perfmodel_accuracy.py", *sys.argv[1:]])
    if args.append and previous.exists():  # the rows kept were measured by the earlier command
        command = f"{json.loads(previous.read_text())['measured']['command']}`, then `{command}"
    measured = {"command": command, "date": str(date.today()), "host": platform.node(),
                "python": platform.python_version(), "runs": args.runs, "budget_s": args.budget_s}
    return rows, measured


if __name__ == "__main__":
    sys.exit(main())
