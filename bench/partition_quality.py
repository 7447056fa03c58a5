"""Partition quality per zoo model and ratio set: METIS + repair against two baseline splitters.

For each model x ratios: asked vs achieved share (worst part), bytes cut by
each method, METIS's own cut and cyclicity before repair, and the time to
partition; plus the time to partition a synthetic 1,000-node branchy graph.
Writes bench/results/partition_quality.json, a PNG plot, and its section of
bench/RESULTS.md.

    python bench/partition_quality.py [--costs profile|static] [--models a,b] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from results_md import write_section

from hetsched import zoo
from partitioner.graph import OpGraph, build_graph
from partitioner.partition import partition
from perfmodels.profile import DEFAULT_METHOD, profile

HERE = Path(__file__).parent
RATIOS = {
    "50/50": [0.5, 0.5], "75/25": [0.75, 0.25], "80/20": [0.8, 0.2], "90/10": [0.9, 0.1],
    "4x25": [0.25] * 4, "8x12.5": [0.125] * 8,
}
METHODS = ("metis", "contiguous", "best-split")


def weighted_graph(name: str, costs: str, batch: int) -> OpGraph:
    graph = build_graph(zoo.build(name), batch=batch)
    if costs == "profile":
        measured = profile(graph, DEFAULT_METHOD, progress=_progress(f"profile {name}"))
        graph = graph.with_costs(measured.seconds, measured.arch, measured.method)
    return graph


def _progress(label: str):  # type: ignore[no-untyped-def]
    from hetsched.progress import ProgressBar

    return ProgressBar(label)


def imbalance_floor(graph: OpGraph, ratios: list[float]) -> float:
    """Least possible imbalance (share points): the part holding the heaviest node has at least its share."""
    heaviest = float(graph.cost_s.max() / graph.cost_s.sum()) if graph.cost_s.sum() > 0 else 0.0
    return max(0.0, heaviest - max(ratios)) * 100


def measure_model(name: str, graph: OpGraph) -> list[dict[str, Any]]:
    rows = []
    for label, ratios in RATIOS.items():
        row: dict[str, Any] = {"model": name, "nodes": len(graph), "ratios": label,
                                  "floor_pp": round(imbalance_floor(graph, ratios), 2)}
        for method in METHODS:
            started = time.perf_counter()
            plan = partition(graph, ratios, method=method).plan
            elapsed = time.perf_counter() - started
            row[f"{method}_cut_bytes"] = plan.cut_bytes
            row[f"{method}_imbalance_pp"] = round(100 * plan.quality["imbalance"], 2)
            row[f"{method}_seconds"] = round(elapsed, 3)
            if method == "metis":
                row["parts"] = len(plan.parts)
                row["metis_raw_cut_bytes"] = plan.quality["metis_cut_bytes"]
                row["metis_raw_acyclic"] = plan.quality["metis_acyclic"]
                row["seed"] = plan.quality["repair_seed"]
                row["asked"] = [round(p.target_share, 3) for p in plan.parts]
                row["achieved"] = [round(p.cost_share, 3) for p in plan.parts]
        rows.append(row)
        print(f"  {name:14} {label:7} metis {row['metis_cut_bytes']:>11} B "
              f"({row['metis_imbalance_pp']:5.2f} pp)"
              f"  contiguous {row['contiguous_cut_bytes']:>11} B ({row['contiguous_imbalance_pp']:5.2f} pp)"
              f"  best-split {row['best-split_cut_bytes']:>11} B", flush=True)
    return rows


def synthetic_dag(n_nodes: int, width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A branchy DAG of n_nodes MatMul/Add/Relu nodes: each node reads one or two recent tensors."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array((rng.standard_normal((width, width)) * 0.1).astype(np.float32), "w")
    tensors, nodes, read = ["x"], [], set()
    for i in range(n_nodes):
        a = tensors[-1 - int(rng.integers(0, min(len(tensors), 8)))]
        b = tensors[-1 - int(rng.integers(0, min(len(tensors), 8)))]
        op = ("MatMul", "Add", "Relu")[i % 3]
        inputs = [a, "w"] if op == "MatMul" else [a, b] if op == "Add" else [a]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"n{i}"))
        read.update(inputs)
        tensors.append(f"t{i}")
    outputs = [t for t in tensors[1:] if t not in read]
    graph = helper.make_graph(
        nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", width]) for t in outputs], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def time_large_graph(n_nodes: int = 1000, repeats: int = 3) -> dict[str, Any]:
    graph = build_graph(synthetic_dag(n_nodes), batch=8)
    out: dict[str, Any] = {"nodes": len(graph)}
    for label in ("80/20", "4x25", "8x12.5"):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            plan = partition(graph, RATIOS[label]).plan
            times.append(time.perf_counter() - started)
        out[label] = {"median_s": round(float(np.median(times)), 3),
                      "imbalance_pp": round(100 * plan.quality["imbalance"], 2)}
        print(f"  synthetic {n_nodes} nodes {label}: {np.median(times):.3f} s", flush=True)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(RATIOS)
    models = sorted({str(r["model"]) for r in rows}, key=list(zoo.NAMES).index)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, method in zip(axes, ("contiguous", "best-split")):
        for i, label in enumerate(labels):
            ratio = []
            for model in models:
                row = next(r for r in rows if r["model"] == model and r["ratios"] == label)
                ratio.append(row["metis_cut_bytes"] / max(row[f"{method}_cut_bytes"], 1))
            ax.bar(np.arange(len(models)) + i * 0.13 - 0.33, ratio, width=0.13, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
        ax.set_ylabel(f"METIS+repair cut / {method} cut (lower is better)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("Bytes cut: METIS + acyclic repair vs baselines")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict[str, Any]], large: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Partition quality (bench/partition_quality.py)",
        "",
        f"`python bench/partition_quality.py --costs {args.costs} --batch {args.batch}` on {date.today()}, "
        f"{platform.node()} ({platform.processor() or platform.machine()}, 2 cores), Python "
        f"{platform.python_version()}. Node costs: {args.costs}. Imbalance = worst part's |achieved - asked| "
        "share, in percentage points. Cut = bytes crossing parts at the batch size, each tensor once per "
        "reading part.",
        "",
        "| model | nodes | ratios | floor pp | METIS+repair cut | imb. pp | won by | contiguous cut "
        "| imb. pp | best-split cut | imb. pp | METIS raw acyclic | s (METIS) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['nodes']} | {r['ratios']} | {r['floor_pp']} | {r['metis_cut_bytes']} | "
            f"{r['metis_imbalance_pp']} | {r['seed']} | "
            f"{r['contiguous_cut_bytes']} | {r['contiguous_imbalance_pp']} | {r['best-split_cut_bytes']} | "
            f"{r['best-split_imbalance_pp']} | {r['metis_raw_acyclic']} | {r['metis_seconds']} |")
    timings = ", ".join(
        f"{k}: {v['median_s']} s ({v['imbalance_pp']} pp)" for k, v in large.items() if isinstance(v, dict))
    lines += ["", *summary(rows), "",
              f"Synthetic branchy DAG, {large['nodes']} nodes, METIS + repair, median of 3: {timings}.",
              "", "![cut bytes vs baselines](results/partition_quality.png)", ""]
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked row by row, exceptions named."""
    big = [r for r in rows if r["nodes"] >= 50]
    within = [r for r in big if r["metis_imbalance_pp"] <= 3.0]
    floored = [r for r in big if r not in within and r["floor_pp"] > 0]
    worse = [r for r in rows if r["metis_cut_bytes"] > r["contiguous_cut_bytes"]]
    lines = [
        f"- Share within 3 points of the asked one (models with >= 50 nodes): {len(within)} of {len(big)}; "
        f"{len(floored)} of the others have a floor above 0 (one node heavier than the largest target).",
    ]
    lines += [f"  - {r['model']} {r['ratios']}: {r['metis_imbalance_pp']} pp (floor {r['floor_pp']} pp)"
              for r in big if r not in within]
    lines.append(f"- METIS + repair cut <= contiguous split's: {len(rows) - len(worse)} of {len(rows)}.")
    lines += [f"  - {r['model']} {r['ratios']}: {r['metis_cut_bytes']} B vs {r['contiguous_cut_bytes']} B, "
              f"imbalance {r['metis_imbalance_pp']} pp vs {r['contiguous_imbalance_pp']} pp" for r in worse]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", choices=("profile", "static"), default="profile")
    parser.add_argument("--models", default=",".join(zoo.NAMES))
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += measure_model(name, weighted_graph(name, args.costs, args.batch))
    large = time_large_graph()
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "partition_quality.json").write_text(json.dumps({"rows": rows, "large": large}, indent=1))
    plot(rows, out_dir / "partition_quality.png")
    write_section(markdown(rows, large, args), HERE / "RESULTS.md", marker="partition_quality")
    return 0


if __name__ == "__main__":
    sys.exit(main())
