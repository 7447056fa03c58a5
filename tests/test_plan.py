"""PartitionPlan promises: JSON round trip, and validate() rejects every broken rule with a named cause."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from partitioner.errors import CyclicPlanError, PlanFormatError
from partitioner.plan import PartitionPlan, PlanPart


def part(index: int, inputs: list[str], outputs: list[str], nodes: list[str], deps: list[int]) -> PlanPart:
    return PlanPart(index, f"part_{index}.onnx", inputs, outputs, nodes, deps, index, 0.5, 0.5)


def plan(parts: list[PlanPart], order: list[int] | None = None) -> PartitionPlan:
    return PartitionPlan(
        source_model="m.onnx", source_sha256="0" * 64, ratios=[0.5, 0.5], method="metis", batch=1,
        arch="static", cost_source="static-flops", model_inputs=["x"], model_outputs=["y"],
        parts=parts, cuts=[], order=order if order is not None else list(range(len(parts))),
    )


GOOD = plan([part(0, ["x"], ["h"], ["a"], []), part(1, ["h"], ["y"], ["b"], [0])])


def test_round_trip_through_json(tmp_path: Path) -> None:
    GOOD.validate(["a", "b"])
    GOOD.save(tmp_path)
    assert PartitionPlan.load(tmp_path) == GOOD


def test_cycle_is_reported_with_its_path() -> None:
    bad = plan([part(0, ["x", "g"], ["h"], ["a"], [1]), part(1, ["h"], ["y", "g"], ["b"], [0])])
    with pytest.raises(CyclicPlanError) as info:
        bad.validate()
    assert info.value.cycle in ([0, 1, 0], [1, 0, 1])


@pytest.mark.parametrize(
    "broken, message",
    [
        (plan([part(0, ["x"], ["h"], ["a"], []), part(1, ["h"], ["y"], ["a"], [0])]), "in parts 0 and 1"),
        (plan([part(0, ["x"], ["h"], ["a"], []), part(1, ["q"], ["y"], ["b"], [0])]), "no earlier part"),
        (plan([part(0, ["x"], ["h"], ["a"], []), part(1, ["h"], ["y"], ["b"], [])]), "without depending"),
        (plan([part(0, ["x"], ["h"], ["a"], []), part(1, ["h"], ["z"], ["b"], [0])]), "produced by no part"),
        (dataclasses.replace(GOOD, order=[1, 0]), "before part 0"),
    ],
)
def test_validate_names_the_broken_rule(broken: PartitionPlan, message: str) -> None:
    with pytest.raises(PlanFormatError, match=message):
        broken.validate()


def test_validate_checks_node_coverage() -> None:
    with pytest.raises(PlanFormatError, match="missing \\['c'\\]"):
        GOOD.validate(["a", "b", "c"])


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "hetsched.plan/0"}), "[]"])
def test_unreadable_plans_say_how_to_fix(tmp_path: Path, text: str) -> None:
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(PlanFormatError, match="hetsched partition"):
        PartitionPlan.load(tmp_path)
