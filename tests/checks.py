"""Shared assertions: a partition computes exactly what the whole model computes, and no node twice."""

from __future__ import annotations

import numpy as np
import onnx

from hetsched.sequential import SequentialRunner, run_whole
from partitioner.feeds import random_feeds
from partitioner.partition import PartitionResult


def assert_same_as_whole(model: onnx.ModelProto, result: PartitionResult, batch: int = 2,
                         rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Run the parts in plan order and the whole model on the same random inputs; compare all outputs."""
    feeds = random_feeds(model, batch)
    expected = run_whole(model, feeds)
    got = SequentialRunner(result.plan, [p.model for p in result.parts]).run(feeds)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)


def assert_each_node_once(result: PartitionResult, node_names: list[str]) -> None:
    """Every node of the model runs in exactly one part model, and part models hold nothing else."""
    seen: list[str] = []
    for part in result.parts:
        seen += [n.name for n in part.model.graph.node]
    assert sorted(seen) == sorted(node_names)
