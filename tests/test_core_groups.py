"""Core groups from a workers spec: NUMA nodes, NxK, and core lists (on a made-up two-node topology,
and through a real runtime on this machine's cores)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hetsched import zoo
from hetsched.errors import UsageError
from hetsched.runtime import Runtime
from hetsched.sequential import run_whole
from hetsched.topology import Core, Topology, core_groups, cpu_workers
from partitioner.feeds import random_feeds

# two NUMA nodes whose cores interleave by number, as on many two-socket machines
TWO_NODES = Topology(tuple(Core(i, i % 2, i % 2) for i in range(4)))


def test_numa_groups_follow_the_nodes_and_nxk_the_core_order() -> None:
    assert core_groups(TWO_NODES, "numa") == [(0, 2), (1, 3)]
    assert core_groups(TWO_NODES, "2x2") == [(0, 1), (2, 3)]  # across the nodes


@pytest.mark.parametrize(("spec", "groups"), [
    ("0-1;2,3", [(0, 1), (2, 3)]),
    ("0,2;1,3", [(0, 2), (1, 3)]),
    ("3;0-2", [(3,), (0, 1, 2)]),
    ("1", [(1,)]),  # cores left out are left alone
])
def test_core_lists_give_exactly_those_groups(spec: str, groups: list[tuple[int, ...]]) -> None:
    assert core_groups(TWO_NODES, spec) == groups


@pytest.mark.parametrize(("spec", "message"), [
    ("0-1;1,2", r"cores \[1\] are in more than one group"),
    ("0;7", r"may not use cores \[7\]"),
    ("0;;1", r"'' is not a core list"),
    ("0-a", r"'0-a' is not a core list"),
    ("2y1", r"'2y1' is not a core list; write e.g. 0-3;4-7 \(or NxK"),
    ("x2", r"use auto, numa, socket, NxK"),
])
def test_a_bad_core_list_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        core_groups(TWO_NODES, spec)


def test_a_listed_group_that_crosses_nodes_puts_each_narrow_worker_on_its_cores_memory() -> None:
    wide, *narrow = cpu_workers(TWO_NODES, "0,1")
    assert (wide.name, wide.cores, wide.memory_node) == ("cpu0", (0, 1), "host:0")
    assert [(w.cores, w.memory_node) for w in narrow] == [((0,), "host:0"), ((1,), "host:1")]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_runtime_on_listed_cores_runs_there_and_equals_onnxruntime() -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    proto = zoo.build("lenet5")
    feeds = random_feeds(proto, 2, seed=5)
    with Runtime(workers=f"{second};{first}", gpu_streams=0) as runtime:
        assert [spec.cores for spec in runtime.specs] == [(second,), (first,)]
        model = runtime.load(proto, ratios=(0.5, 0.5))
        want = run_whole(proto, feeds)["logits"]
        np.testing.assert_allclose(model.infer(feeds, timeout=60)["logits"], want, rtol=1e-5, atol=1e-6)
