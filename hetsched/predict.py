"""Predicted time of each part of a plan on one processor kind, and where each number came from.

Sources, best first (StarPU's order of trust):

1. ``history``: the part ran at this batch on this kind often enough to be trusted;
2. ``regression``: a batch-size fit over the batches it did run, inside their range;
3. ``composition``: its nodes' profiled times through the fitted correction
   (:mod:`perfmodels.composition`), scaled to the whole model's history when the whole
   model was calibrated; ``node-sum`` when no correction is fitted yet;
4. ``none``: nothing to go on (NaN): calibrate it.

Node profiles come from the source model, profiled at the batch asked and
cached beside the plan, so a fresh plan is predicted without any history.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from hetsched.calibrate import PlanSource, cpu_arch, load_composition, node_costs, whole_model_stage_id
from partitioner.plan import PlanPart
from perfmodels.composition import CompositionModel, naive_sum, node_share, scaled_node_sum
from perfmodels.costs import NodeCosts
from perfmodels.history import HistoryModel
from perfmodels.regression import fit_batch_model
from perfmodels.store import PerfModelStore


@dataclass(frozen=True)
class PartPrediction:
    index: int
    file: str
    ms: float
    source: str


@dataclass(frozen=True)
class PlanPrediction:
    """Per-part predictions; ``total_ms`` is their sum (the parts one after another on one kind)."""

    batch: int
    arch: str
    parts: list[PartPrediction]

    @property
    def total_ms(self) -> float:
        return sum(p.ms for p in self.parts)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "batch": self.batch, "arch": self.arch,
            "parts": [{"index": p.index, "file": p.file, "ms": _round(p.ms), "source": p.source}
                      for p in self.parts],
            "total_ms": _round(self.total_ms),
        }


def _round(ms: float) -> float | None:
    return round(ms, 4) if math.isfinite(ms) else None


def predict_plan(
    directory: str | os.PathLike[str], batch: int, threads: int, store: PerfModelStore
) -> PlanPrediction:
    """Predict every part of the plan in ``directory`` at ``batch`` on ``cpu:<threads>t``."""
    source = PlanSource.open(directory)
    arch = cpu_arch(threads)
    history = store.load_history()
    composition = load_composition(store, arch)
    costs: list[NodeCosts | None] = []  # profiled lazily, at most once

    def profiled() -> NodeCosts | None:
        if not costs:
            costs.append(node_costs(source, batch, threads))
        return costs[0]

    whole: list[float] = []  # the whole model's seconds by its history, looked up at most once

    def whole_s() -> float:
        if not whole:
            stage = whole_model_stage_id(source)
            whole.append(_from_history(history, stage, arch, batch)[0] if stage else math.nan)
        return whole[0]

    parts = []
    for part in source.plan.parts:
        stage = source.stages[part.index]
        seconds, origin = _from_history(history, stage, arch, batch)
        if not math.isfinite(seconds):
            seconds, origin = _from_nodes(part, profiled(), composition, whole_s)
        parts.append(PartPrediction(part.index, part.file, seconds * 1e3, origin))
    return PlanPrediction(batch, arch, parts)


def _from_history(history: HistoryModel, stage: str, arch: str, batch: int) -> tuple[float, str]:
    """The trusted history at this batch, else a batch-size fit inside the batches that ran."""
    points = [(b, seconds) for b, seconds, _ in history.batch_points(stage, arch)]
    exact = [seconds for b, seconds in points if b == batch]
    if exact:
        return exact[0], "history"
    fit = fit_batch_model(points) if points else None
    if fit is not None and math.isfinite(fit.predict(batch)):
        return fit.predict(batch), "regression"
    return math.nan, "none"


def _from_nodes(
    part: PlanPart, costs: NodeCosts | None, composition: CompositionModel | None,
    whole_s: Callable[[], float],
) -> tuple[float, str]:
    """The part from its nodes' profile: through the composition correction, its share of the
    profile scaled to the whole model's history when there is one (else to the profile's run)."""
    if costs is None:
        return math.nan, "none"
    if composition is None:
        return naive_sum(costs.seconds, part.nodes), "node-sum"
    share = node_share(costs, part.nodes)
    scaled = scaled_node_sum(costs, part.nodes, whole_s())
    return composition.predict(scaled, len(part.nodes), share), "composition"
