"""PartitionPlan: what the runtime needs to run a model as parts, saved as ``plan.json``.

Parts are numbered in a topological order of the graph of parts (part i only
reads from parts < i), ``depends_on`` gives the DAG itself so parts with no
path between them may run at the same time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from partitioner.errors import CyclicPlanError, PlanFormatError
from partitioner.quality import find_cycle

FORMAT = "hetsched.plan/1"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class CutTensor:
    """A tensor one part produces and other parts read (``nbytes`` at the plan's batch)."""

    name: str
    nbytes: int
    dtype: str
    shape: list[int] | None
    producer: int
    consumers: list[int]


@dataclass(frozen=True)
class PlanPart:
    """One part: its model file, interface, nodes, and shares of the cost."""

    index: int
    file: str
    inputs: list[str]
    outputs: list[str]
    nodes: list[str]
    depends_on: list[int]
    ratio_index: int  # which of the asked ratios this part was balanced against
    target_share: float
    cost_share: float  # achieved share of the model's cost (predicted from node costs)


@dataclass(frozen=True)
class PartitionPlan:
    """A validated split of one model; see DESIGN.md for the contract."""

    source_model: str
    source_sha256: str
    ratios: list[float]
    method: str
    batch: int
    arch: str
    cost_source: str
    model_inputs: list[str]
    model_outputs: list[str]
    parts: list[PlanPart]
    cuts: list[CutTensor]
    order: list[int]
    quality: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    format: str = FORMAT

    @property
    def cut_bytes(self) -> int:
        return sum(c.nbytes * len(c.consumers) for c in self.cuts)

    def validate(self, node_names: Sequence[str] | None = None) -> None:
        """Check the promises: nodes in exactly one part, a DAG of parts, every input available.

        Raises CyclicPlanError with the cycle path, or PlanFormatError naming the broken rule.
        """
        seen: dict[str, int] = {}
        for part in self.parts:
            for name in part.nodes:
                if name in seen:
                    raise PlanFormatError(f"node {name!r} is in parts {seen[name]} and {part.index}")
                seen[name] = part.index
        if node_names is not None and set(node_names) != set(seen):
            missing = sorted(set(node_names) - set(seen))[:5]
            extra = sorted(set(seen) - set(node_names))[:5]
            raise PlanFormatError(
                f"plan does not cover the model's nodes: missing {missing}, unknown {extra}"
            )
        edges = {(d, p.index) for p in self.parts for d in p.depends_on}
        cycle = find_cycle(len(self.parts), edges)
        if cycle is not None:
            raise CyclicPlanError("the parts depend on each other in a cycle", cycle)
        self._check_order(edges)
        self._check_dataflow()

    def _check_order(self, edges: set[tuple[int, int]]) -> None:
        if sorted(self.order) != list(range(len(self.parts))):
            raise PlanFormatError(f"order {self.order} is not a permutation of the parts")
        position = {p: i for i, p in enumerate(self.order)}
        for a, b in edges:
            if position[a] >= position[b]:
                raise PlanFormatError(f"order runs part {b} before part {a}, which it depends on")

    def _check_dataflow(self) -> None:
        available: dict[str, int] = {name: -1 for name in self.model_inputs}
        for index in self.order:
            part = self.parts[index]
            for name in part.inputs:
                if name not in available:
                    raise PlanFormatError(f"part {index} reads {name!r}, which no earlier part produces")
                if available[name] >= 0 and available[name] not in part.depends_on:
                    raise PlanFormatError(f"part {index} reads {name!r} without depending on its producer")
            available.update({name: index for name in part.outputs})
        missing = [name for name in self.model_outputs if name not in available]
        if missing:
            raise PlanFormatError(f"model outputs {missing} are produced by no part")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PartitionPlan:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanFormatError(f"plan.json is not JSON ({exc}); re-run `hetsched partition`") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise PlanFormatError(f"plan format {found!r} is not {FORMAT!r}; re-run `hetsched partition`")
        try:
            raw["parts"] = [PlanPart(**p) for p in raw["parts"]]
            raw["cuts"] = [CutTensor(**c) for c in raw["cuts"]]
            return cls(**raw)
        except (KeyError, TypeError) as exc:
            raise PlanFormatError(f"plan.json is missing or has unknown fields ({exc})") from exc

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``plan.json`` atomically into ``directory``."""
        path = Path(directory) / PLAN_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PartitionPlan:
        path = Path(directory)
        path = path / PLAN_FILE if path.is_dir() else path
        if not path.is_file():
            raise PlanFormatError(
                f"{path}: no plan here; create one with `hetsched partition MODEL --out DIR`"
            )
        return cls.from_json(path.read_text())
