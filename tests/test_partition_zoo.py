"""Every zoo model x every ratio set: the parts, run in plan order, compute what the whole model computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from hetsched import zoo
from hetsched.sequential import SequentialRunner, run_whole
from partitioner.feeds import random_feeds
from partitioner.graph import OpGraph, build_graph
from partitioner.partition import partition

from checks import assert_each_node_once

RATIOS = {
    "50/50": [0.5, 0.5],
    "75/25": [0.75, 0.25],
    "80/20": [0.8, 0.2],
    "90/10": [0.9, 0.1],
    "4 equal": [0.25] * 4,
    "8 equal": [0.125] * 8,
}
BATCH = 2


Reference = tuple[OpGraph, dict[str, np.ndarray], dict[str, np.ndarray]]


@pytest.fixture(scope="module", params=zoo.NAMES)
def reference(request: pytest.FixtureRequest) -> Reference:
    """Module-scoped and parametrized, so pytest runs all ratios of one model before building the next
    (vgg16 alone holds 550 MB of weights)."""
    graph = build_graph(zoo.build(request.param), batch=BATCH)
    feeds = random_feeds(graph.model, BATCH)
    return graph, feeds, run_whole(graph.model, feeds)


@pytest.mark.parametrize("label", RATIOS)
def test_parts_compute_the_whole_model(reference: Reference, label: str) -> None:
    graph, feeds, expected = reference
    result = partition(graph, RATIOS[label])
    names = [n.name for n in graph.nodes]
    result.plan.validate(names)
    assert_each_node_once(result, names)
    assert len(result.plan.parts) == len(RATIOS[label])
    for part in result.parts:
        weights = sum(len(t.raw_data) for t in part.model.graph.initializer)
        if weights < 64 << 20:  # the checker re-serializes; ORT's load below checks the big parts
            onnx.checker.check_model(part.model)
    got = SequentialRunner(result.plan, [p.model for p in result.parts]).run(feeds)
    for output, value in expected.items():
        np.testing.assert_allclose(got[output], value, rtol=1e-4, atol=1e-5, err_msg=output)
