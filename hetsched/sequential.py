"""The reference executor: a plan's parts run one after another in plan order with ONNX Runtime.

It is the oracle the scheduler's answers are checked against and what
``hetsched demo`` runs until the runtime exists: no threads, no placement,
just the data flow of ``plan.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from partitioner.plan import PartitionPlan
from perfmodels.measure import ModelSource, cpu_session


def run_whole(model: ModelSource, feeds: Mapping[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Plain ONNX Runtime on the whole model: the answer every transformed run must match."""
    session = cpu_session(model, threads)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


class SequentialRunner:
    """Sessions for every part of a plan, created once, run in plan order per call."""

    def __init__(
        self,
        plan: PartitionPlan,
        models: str | os.PathLike[str] | Sequence[ModelSource],
        threads: int = 1,
    ) -> None:
        self.plan = plan
        if isinstance(models, (str, os.PathLike)):
            sources: list[ModelSource] = [str(Path(models) / p.file) for p in plan.parts]
        else:
            sources = list(models)
        self.sessions = [cpu_session(m, threads) for m in sources]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs, computed part by part in plan order."""
        values = self.run_all(feeds)
        return {name: values[name] for name in self.plan.model_outputs}

    def run_all(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor crossing the plan (model inputs, cut tensors, outputs): real inputs per part."""
        values: dict[str, np.ndarray] = dict(feeds)
        for index in self.plan.order:
            part = self.plan.parts[index]
            results = self.sessions[index].run(part.outputs, {n: values[n] for n in part.inputs})
            values.update(zip(part.outputs, results))
        return values
