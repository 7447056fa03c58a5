"""The partitioning pipeline: weighted graph -> assignment (METIS + repair, or a baseline) -> plan + parts."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from partitioner.acyclic import repair
from partitioner.baselines import best_split_points, contiguous_split
from partitioner.errors import RatiosError
from partitioner.extract import PartModel, extract_parts
from partitioner.graph import OpGraph
from partitioner.metis import metis_assign
from partitioner.plan import CutTensor, PartitionPlan, PlanPart
from partitioner.quality import measure, part_edges

log = logging.getLogger(__name__)

METHODS = {
    "metis": "pymetis k-way with target weights, then acyclic repair and refinement",
    "contiguous": "consecutive runs of the topological order closest to the ratios (layer split)",
    "best-split": "consecutive runs, each boundary at the fewest live bytes near its target",
}

# Parts whose weights exceed this are saved with external data (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30


def parse_ratios(ratios: str | Sequence[float], n_nodes: int | None = None) -> tuple[float, ...]:
    """Validated ratios normalized to sum exactly 1; RatiosError names the problem and the fix."""
    if isinstance(ratios, str):
        try:
            values = [float(x) for x in ratios.split(",") if x.strip()]
        except ValueError as exc:
            raise RatiosError(f"ratios {ratios!r} are not numbers; write them like 0.8,0.2") from exc
    else:
        values = [float(x) for x in ratios]
    if not values:
        raise RatiosError("no ratios given; write them like 0.8,0.2 (one per part, summing to 1)")
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        raise RatiosError(f"ratio {bad[0]} is not positive; every part needs a share > 0, e.g. 0.8,0.2")
    total = sum(values)
    if abs(total - 1.0) > 1e-3:
        raise RatiosError(f"ratios sum to {total:g}, not 1; scale them, e.g. 0.8,0.2")
    if n_nodes is not None and len(values) > n_nodes:
        raise RatiosError(
            f"{len(values)} parts asked but the model has only {n_nodes} top-level nodes; "
            f"ask for at most {n_nodes} ratios"
        )
    return tuple(v / total for v in values)


@dataclass(frozen=True)
class PartitionResult:
    """A validated plan and the part models it names."""

    plan: PartitionPlan
    parts: list[PartModel]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``part_<i>.onnx`` (external data for large weights) and ``plan.json``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for part, meta in zip(self.parts, self.plan.parts):
            weights = sum(t.ByteSize() for t in part.model.graph.initializer)
            external = weights > EXTERNAL_DATA_BYTES
            onnx.save_model(
                part.model, str(out / meta.file), save_as_external_data=external,
                all_tensors_to_one_file=True, location=f"{meta.file}.data", size_threshold=1024,
            )
        return self.plan.save(out)


def partition(
    graph: OpGraph,
    ratios: str | Sequence[float],
    method: str = "metis",
    seed: int = 0,
    source_label: str = "<memory>",
) -> PartitionResult:
    """Split a weighted graph into len(ratios) parts, validated, ready to save or run."""
    if method not in METHODS:
        raise RatiosError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    targets = parse_ratios(ratios, len(graph))
    assign, part_targets, ratio_index, quality = _assign(graph, targets, method, seed)
    assign, part_targets, ratio_index, notes = _drop_empty(assign, part_targets, ratio_index)
    parts = extract_parts(graph, assign)
    plan = _make_plan(graph, assign, targets, part_targets, ratio_index, parts, method, quality, notes,
                      source_label)
    plan.validate([n.name for n in graph.nodes])
    return PartitionResult(plan, parts)


def _assign(
    graph: OpGraph, targets: tuple[float, ...], method: str, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int], dict[str, object]]:
    identity = list(range(len(targets)))
    if method == "contiguous":
        assign = contiguous_split(graph, targets)
    elif method == "best-split":
        assign = best_split_points(graph, targets)
    else:
        raw = metis_assign(graph, targets, seed)
        assign, order, report = repair(graph, raw, targets)
        quality: dict[str, object] = {
            "metis_imbalance": round(report.before.imbalance, 6),
            "metis_cut_bytes": report.before.cut_bytes,
            "metis_acyclic": report.before.acyclic,
            "repair_moved_nodes": report.moved_nodes,
            "repair_seed": report.seed,
        }
        return assign, np.asarray(targets)[list(order)], list(order), quality
    return assign, np.asarray(targets), identity, {}


def _drop_empty(
    assign: np.ndarray, targets: np.ndarray, ratio_index: list[int]
) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    counts = np.bincount(assign, minlength=len(targets))
    if counts.all():
        return assign, targets, ratio_index, []
    keep = [p for p in range(len(targets)) if counts[p]]
    renumber = np.full(len(targets), -1, dtype=np.int64)
    renumber[keep] = np.arange(len(keep))
    note = f"{len(targets) - len(keep)} part(s) came out empty and were dropped; {len(keep)} remain"
    log.warning(note)
    return renumber[assign], targets[keep], [ratio_index[p] for p in keep], [note]


def _make_plan(
    graph: OpGraph,
    assign: np.ndarray,
    asked: tuple[float, ...],
    part_targets: np.ndarray,
    ratio_index: list[int],
    parts: list[PartModel],
    method: str,
    quality: dict[str, object],
    notes: list[str],
    source_label: str,
) -> PartitionPlan:
    achieved = measure(graph, assign, part_targets)
    quality.update({"imbalance": round(achieved.imbalance, 6), "cut_bytes": achieved.cut_bytes})
    deps = part_edges(graph, assign)
    plan_parts = [
        PlanPart(
            index=p.index, file=f"part_{p.index}.onnx", inputs=list(p.inputs), outputs=list(p.outputs),
            nodes=list(p.nodes), depends_on=sorted(a for a, b in deps if b == p.index),
            ratio_index=ratio_index[p.index], target_share=round(float(part_targets[p.index]), 6),
            cost_share=round(achieved.shares[p.index], 6),
        )
        for p in parts
    ]
    return PartitionPlan(
        source_model=source_label,
        source_sha256=graph.source_sha256,
        ratios=[round(r, 6) for r in asked], method=method, batch=graph.batch, arch=graph.arch,
        cost_source=graph.cost_source, model_inputs=list(graph.inputs),
        model_outputs=list(graph.outputs), parts=plan_parts, cuts=_cuts(graph, assign),
        order=list(range(len(parts))), quality=quality, notes=notes,
    )


def _cuts(graph: OpGraph, assign: np.ndarray) -> list[CutTensor]:
    cuts = []
    for tensor, users in graph.consumers.items():
        src = graph.producer.get(tensor)
        if src is None:
            continue
        readers = sorted({int(assign[u]) for u in users} - {int(assign[src])})
        if readers:
            size = graph.sizes[tensor]
            dtype = helper.tensor_dtype_to_np_dtype(size.elem_type).name if size.elem_type else "unknown"
            shape = list(size.shape) if size.shape is not None else None
            cuts.append(CutTensor(tensor, size.nbytes, dtype, shape, int(assign[src]), readers))
    return sorted(cuts, key=lambda c: (c.producer, c.name))
