"""Calibration: run each part of a plan on each processor kind until its history model is trusted.

For every CPU kind (``cpu:<threads>t``) and batch size, the parts run on their
real inputs (the plan executed once in order), warm up, then are timed until
:class:`perfmodels.history.HistoryModel` trusts the entry.  Samples go to the
per-host store (:class:`perfmodels.store.PerfModelStore`).  When the source
model is at hand, its nodes are profiled at the same batch and kind, and the
composition correction (:mod:`perfmodels.composition`) is fitted from the
measured parts and stored too.

GPU and accelerator kinds (the runtime's GPU and accelerator workers) are not
calibrated here: they calibrate online, as dmda sends each uncalibrated
(stage, kind) pair tasks until its history is trusted.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from hetsched.sequential import SequentialRunner
from partitioner.errors import UsageError
from partitioner.feeds import random_values
from partitioner.graph import build_graph
from partitioner.partition import partition
from partitioner.plan import PartitionPlan
from perfmodels.composition import (
    CompositionModel,
    CompositionSample,
    fit_composition,
    node_share,
    scaled_node_sum,
)
from perfmodels.costs import NodeCosts
from perfmodels.history import HistoryKey, HistoryModel, footprint, stage_id
from perfmodels.measure import cpu_session, timed_runs
from perfmodels.profile import DEFAULT_METHOD, profile
from perfmodels.store import PerfModelStore
from perfmodels.transfer import FORMAT as BUS_FORMAT
from perfmodels.transfer import BusFormatError, BusModel
from perfmodels.transfer import calibrate as calibrate_bus

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

StepProgress = Callable[[str], Callable[[int, int], None]]
BUS_DOC = "bus"
COMPOSITION_DOC = "composition"
COMPOSITION_FORMAT = "hetsched.compositions/3"  # /2: S scaled to the profile's run, not the history
MAX_COMPOSITION_SAMPLES = 2000
MAX_RUNS_PER_ENTRY = 40  # stop calibrating an entry that outliers keep from trusting


def cpu_arch(threads: int) -> str:
    """The processor-kind key of a CPU core group running ``threads`` intra-op threads."""
    return f"cpu:{threads}t"


@dataclass
class CalibrationReport:
    """What calibration measured: per (part, arch, batch) median seconds, and fitted corrections."""

    measured_s: dict[tuple[int, str, int], float] = field(default_factory=dict)
    composition: dict[str, CompositionModel] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlanSource:
    """A plan directory and its part models (weights not loaded: only interfaces are read)."""

    directory: Path
    plan: PartitionPlan
    stages: list[str]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> PlanSource:
        path = Path(directory)
        plan = PartitionPlan.load(path)
        stages = [stage_id((path / p.file).read_bytes()) for p in plan.parts]
        return cls(path, plan, stages)

    @functools.cached_property
    def input_values(self) -> list[onnx.ValueInfoProto]:
        """Declared model inputs, gathered from the parts that read them (read once)."""
        found: dict[str, onnx.ValueInfoProto] = {}
        for part in self.plan.parts:
            model = onnx.load(str(self.directory / part.file), load_external_data=False)
            for value in model.graph.input:
                if value.name in self.plan.model_inputs:
                    found.setdefault(value.name, value)
        return [found[name] for name in self.plan.model_inputs]

    def source_model(self) -> Path | None:
        """The source model file, when the plan names one that still exists."""
        path = Path(self.plan.source_model)
        return path if path.is_file() else None


def calibrate(
    directory: str | os.PathLike[str],
    batches: Sequence[int],
    threads: Sequence[int],
    store: PerfModelStore,
    min_samples: int = 5,
    progress: StepProgress | None = None,
) -> CalibrationReport:
    """Calibrate every part at every batch on every CPU kind; results go into ``store``.

    The whole source model, when at hand and the plan has several parts, is calibrated too, as
    the runtime serves it unpartitioned (:func:`whole_model_stage`): its history scales the node
    profile in the composition correction, in the fit here as in :func:`hetsched.predict.predict_plan`.
    """
    source = PlanSource.open(directory)
    report = CalibrationReport()
    delta = HistoryModel(min_samples=min_samples)
    whole = whole_model_stage(source)
    for count in threads:
        runner = SequentialRunner(source.plan, source.directory, count)  # sessions made once per kind
        timed_whole = None if whole is None else (whole[0], cpu_session(whole[1], count))
        samples: list[CompositionSample] = []
        for batch in batches:
            label = f"{cpu_arch(count)} batch {batch}"
            bar = progress(label) if progress else None
            measured, whole_s = _calibrate_batch(source, runner, batch, count, delta, bar, timed_whole)
            for index, seconds in measured.items():
                report.measured_s[(index, cpu_arch(count), batch)] = seconds
            samples += _composition_samples(source, batch, count, measured, report, whole_s)
        if samples:
            model = _add_composition_samples(store, cpu_arch(count), samples)
            if model is not None:
                report.composition[model.arch] = model
    store.add_history(delta)
    return report


def whole_model_stage(source: PlanSource) -> tuple[str, bytes] | None:
    """The source model as the runtime serves it unpartitioned (a one-part plan): its stage id and
    bytes.  None when the plan is one part already or its source model is not at hand."""
    model = source.source_model()
    if model is None or len(source.plan.parts) == 1:
        return None
    graph = build_graph(model)
    if graph.source_sha256 != source.plan.source_sha256:
        raise UsageError(f"{model} changed since it was partitioned; re-run `hetsched partition`")
    blob = partition(graph, [1.0]).parts[0].model.SerializeToString()
    return stage_id(blob), blob


def whole_model_stage_id(source: PlanSource) -> str | None:
    """:func:`whole_model_stage`'s id, cached beside the plan (``costs/whole-stage.json``): it
    takes partitioning the source model again, and every ``hetsched predict`` may ask."""
    cache = source.directory / "costs" / "whole-stage.json"
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["source_sha256"] == source.plan.source_sha256:
            return str(cached["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: computed again below
    whole = whole_model_stage(source)
    if whole is None:
        return None
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps({"source_sha256": source.plan.source_sha256, "stage": whole[0]}),
                     encoding="utf-8")
    return whole[0]


def _calibrate_batch(
    source: PlanSource, runner: SequentialRunner, batch: int, threads: int, delta: HistoryModel,
    progress: Callable[[int, int], None] | None, whole: tuple[str, ort.InferenceSession] | None,
) -> tuple[dict[int, float], float]:
    """Median seconds per part (and of the whole model, NaN without it) at one batch and thread
    count; every sample goes into ``delta``."""
    feeds = random_values(source.input_values, batch)
    values = runner.run_all(feeds)  # also the warm-up: each session has just run once at this batch
    # Keyed by the request's input shapes, as the runtime keys every task it runs.
    request_footprint = footprint({name: tuple(np.shape(v)) for name, v in feeds.items()})
    medians: dict[int, float] = {}
    for done, part in enumerate(source.plan.parts, start=1):
        inputs = {name: values[name] for name in part.inputs}
        key = HistoryKey(source.stages[part.index], cpu_arch(threads), request_footprint)
        medians[part.index] = _time_until_trusted(runner.sessions[part.index], inputs, key, delta)
        if progress is not None:
            progress(done, len(source.plan.parts))
    if whole is None:
        return medians, math.nan
    stage, session = whole
    timed_runs(session, feeds, 1)  # its warm-up
    key = HistoryKey(stage, cpu_arch(threads), request_footprint)
    return medians, _time_until_trusted(session, feeds, key, delta)


def _time_until_trusted(session: ort.InferenceSession, inputs: Mapping[str, Any], key: HistoryKey,
                        delta: HistoryModel) -> float:
    """Run until ``delta`` trusts ``key`` (at most MAX_RUNS_PER_ENTRY runs); their median seconds."""
    samples: list[float] = []
    while not delta.is_trusted(key) and len(samples) < MAX_RUNS_PER_ENTRY:
        run = timed_runs(session, inputs, 1)[0]
        samples.append(run)
        delta.record(key, run)
    return statistics.median(samples) if samples else math.nan


def node_costs(source: PlanSource, batch: int, threads: int) -> NodeCosts | None:
    """The source model's node profile at this batch and kind, cached in ``<plan dir>/costs/``."""
    cache = source.directory / "costs" / f"batch{batch}-{cpu_arch(threads).replace(':', '')}.json"
    if cache.is_file():
        return NodeCosts.load(cache)
    model = source.source_model()
    if model is None:
        return None
    costs = profile(build_graph(model, batch=batch), DEFAULT_METHOD, threads=threads)
    if costs.model_sha256 != source.plan.source_sha256:
        raise UsageError(f"{model} changed since it was partitioned; re-run `hetsched partition`")
    cache.parent.mkdir(exist_ok=True)
    costs.save(cache)
    return costs


def _composition_samples(
    source: PlanSource, batch: int, threads: int, measured: dict[int, float], report: CalibrationReport,
    whole_s: float,
) -> list[CompositionSample]:
    costs = node_costs(source, batch, threads)
    if costs is None:
        note = f"no source model at {source.plan.source_model!r}: composition not fitted"
        if note not in report.notes:
            report.notes.append(note)
        return []
    return [
        CompositionSample(scaled_node_sum(costs, part.nodes, whole_s), len(part.nodes), measured[part.index],
                          node_share(costs, part.nodes))
        for part in source.plan.parts
        if math.isfinite(measured.get(part.index, math.nan))
    ]


def _add_composition_samples(
    store: PerfModelStore, arch: str, samples: list[CompositionSample]
) -> CompositionModel | None:
    """Keep the measured parts of every calibration (newest MAX_COMPOSITION_SAMPLES) and refit."""
    doc = store.load_json(COMPOSITION_DOC, COMPOSITION_FORMAT) or {}
    kept = doc.get("samples", {}).get(arch, []) + [
        [s.node_sum_s, s.n_nodes, s.measured_s, s.share] for s in samples]
    kept = kept[-MAX_COMPOSITION_SAMPLES:]
    everything = [CompositionSample(float(a), int(n), float(m), float(f)) for a, n, m, f in kept]
    model = fit_composition(arch, everything) if len(everything) >= 2 else None
    doc.setdefault("samples", {})[arch] = kept
    if model is not None:
        doc.setdefault("models", {})[arch] = model.to_dict()
    store.save_json(COMPOSITION_DOC, COMPOSITION_FORMAT, doc)
    return model


def ensure_bus_model(store: PerfModelStore, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[BusModel, bool]:
    """The stored bus model, or a fresh calibration saved to the store (StarPU calibrates its bus
    once per host, on first start).  Returns the model and whether it was calibrated now."""
    doc = store.load_json(BUS_DOC, BUS_FORMAT)
    if doc is not None:
        try:
            return BusModel.from_dict(doc), False
        except (BusFormatError, ValueError, KeyError, TypeError) as exc:
            log.warning("stored bus model unreadable (%s); calibrating again", exc)
    bus = calibrate_bus(progress=progress)
    store.save_json(BUS_DOC, BUS_FORMAT, bus.to_dict())
    return bus, True


def load_composition(store: PerfModelStore, arch: str) -> CompositionModel | None:
    """The stored composition correction of a processor kind, if calibrated."""
    doc = store.load_json(COMPOSITION_DOC, COMPOSITION_FORMAT) or {}
    raw = doc.get("models", {}).get(arch)
    return CompositionModel.from_dict(raw) if raw else None
