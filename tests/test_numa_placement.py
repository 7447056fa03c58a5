"""NUMA placement: arrays bound to a node's memory (real mbind / move_pages on this machine's node
0), and a runtime whose core workers span two nodes copying inputs to each worker's node.

This machine has one NUMA node.  The second node of the runtime test is the one fake: a /sys
node tree that puts core 1 on node 1, and node 1's memory standing for node 0's (mbind to a node
that does not exist fails).  Sessions, scheduler, copier threads and copies are real.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from hetsched import numa, runtime, zoo
from hetsched.sequential import run_whole
from hetsched.topology import discover
from partitioner.feeds import random_feeds

pytestmark = pytest.mark.skipif(not numa.supported(), reason="NUMA placement needs Linux on x86-64 or arm64")


def test_a_copy_to_a_node_has_its_pages_there() -> None:
    array = np.random.default_rng(0).random((512, 1024), dtype=np.float32)  # 2 MiB: many pages
    copy = numa.copy_to(array, 0)
    assert np.array_equal(copy, array) and copy.flags.writeable
    assert numa.node_of(copy) == 0
    assert numa.node_of(copy[300:]) == 0  # a page in the middle, not only the first


def test_memory_not_touched_yet_has_no_node_and_a_missing_node_fails_clearly() -> None:
    assert numa.node_of(numa.empty_on(0, (1024,), np.dtype(np.float32))) is None
    missing = len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) + 7
    with pytest.raises(OSError, match=f"NUMA node {missing}"):
        numa.copy_to(np.zeros(4), missing)


def test_one_node_makes_no_placer() -> None:
    if len(discover().numa_nodes) > 1:
        pytest.skip("this machine has several NUMA nodes")
    with runtime.Runtime(workers="auto", gpu_streams=0) as rt:
        assert rt.executor.placer is None  # type: ignore[attr-defined]


def two_nodes(tmp_path: Path) -> Path:
    cores = sorted(os.sched_getaffinity(0))
    for node, core in enumerate(cores[:2]):
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(f"{core}\n")
    return tmp_path


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two NUMA nodes need two cores")
@pytest.mark.parametrize("name", ["googlenet", "resnet18"])
def test_inputs_copied_to_the_workers_node_give_the_same_answers(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = two_nodes(tmp_path)
    monkeypatch.setattr(runtime, "discover", lambda: discover(sys_node=nodes))
    real_empty_on = numa.empty_on
    monkeypatch.setattr(numa, "empty_on", lambda node, shape, dtype: real_empty_on(0, shape, dtype))
    proto = zoo.build(name)
    feeds = [random_feeds(proto, 1, seed=seed) for seed in range(16)]
    with runtime.Runtime(workers="auto", gpu_streams=0, trace=True) as rt:
        assert [w.memory_node for w in rt.specs] == ["host:0", "host:1"]
        placer = rt.executor.placer  # type: ignore[attr-defined]
        assert placer is not None
        model = rt.load(proto, ratios=(0.5, 0.5))
        futures: list[Future[dict[str, np.ndarray]]] = [model.submit(f) for f in feeds]
        answers = [future.result(timeout=120) for future in futures]
    assert rt.tracer is not None
    copies = rt.tracer.transfers()  # after close: the copier threads have stopped
    for feed, answer in zip(feeds, answers):
        for output, want in run_whole(proto, feed).items():
            np.testing.assert_allclose(answer[output], want, rtol=1e-4, atol=1e-5)
    # Every request's input lands on node 0 and its worker is on node 0 or 1; every part's outputs on
    # node 0 (real memory).  So the worker on node 1 has copies made for most of its tasks.
    assert placer.copies > 0 and placer.skipped == 0
    assert len(copies) == placer.copies  # each copy swapped in is in the trace, to the worker's node
    assert {c.target for c in copies} <= {"host:0", "host:1"} and all(c.source != c.target for c in copies)
