"""NUMA placement: arrays bound to a node's memory (real mbind / move_pages on this machine's node
0), and a runtime whose core workers span two nodes copying inputs to each worker's node.

This machine has one NUMA node.  The second node of the runtime test is the one fake: a /sys
node tree that puts core 1 on node 1, and node 1's memory standing for node 0's (mbind to a node
that does not exist fails).  Sessions, scheduler, copier threads and copies are real.
"""

from __future__ import annotations

import ctypes
import os
import platform
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hetsched import numa, runtime, zoo
from hetsched.placement import NumaPlacer
from hetsched.sequential import run_whole
from hetsched.topology import discover
from partitioner.feeds import random_feeds

GET_MEMPOLICY = {"x86_64": 239, "aarch64": 236}.get(platform.machine())
LIBC = ctypes.CDLL(None, use_errno=True)


def get_mempolicy(address: int | None, flags: int) -> tuple[int, int, int]:
    """get_mempolicy(2): (return value, mode, first word of the node mask)."""
    mode, mask = ctypes.c_int(-1), (ctypes.c_ulong * 16)()
    result = LIBC.syscall(GET_MEMPOLICY, ctypes.byref(mode), mask, ctypes.c_ulong(16 * 64),
                          ctypes.c_void_p(address), flags)
    return result, mode.value, mask[0]


def memory_syscalls_allowed() -> bool:
    """Whether the kernel's memory-policy syscalls may run here (a sandbox may refuse them all:
    Docker's default seccomp without CAP_SYS_NICE).  Asked by get_mempolicy of this thread, not by
    the mbind / move_pages under test, so a break in those fails the tests rather than skip them."""
    return (GET_MEMPOLICY is not None and ctypes.sizeof(ctypes.c_void_p) == 8
            and get_mempolicy(None, 0)[0] == 0)


pytestmark = pytest.mark.skipif(not memory_syscalls_allowed(),
                                reason="needs Linux on 64-bit x86 or arm, memory-policy syscalls allowed")


def memory_policy(array: np.ndarray) -> tuple[int, int]:
    """The kernel's policy for the memory under ``array``: (mode, node mask), by get_mempolicy(2)
    with MPOL_F_ADDR: what mbind set there, whichever node the pages happen to be on."""
    result, mode, mask = get_mempolicy(array.ctypes.data, 2)
    assert result == 0, os.strerror(ctypes.get_errno())
    return mode, mask


def test_this_process_can_place_memory() -> None:
    assert numa.supported()


def test_a_copy_to_a_node_prefers_that_node_and_has_its_pages_there() -> None:
    array = np.random.default_rng(0).random((512, 1024), dtype=np.float32)  # 2 MiB: many pages
    copy = numa.copy_to(array, 0)
    assert np.array_equal(copy, array) and copy.flags.writeable
    assert memory_policy(copy) == (1, 1 << 0)  # MPOL_PREFERRED, node 0
    assert memory_policy(array)[0] != 1  # plain numpy memory has the default policy
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
    with runtime.Runtime(workers="auto", gpu_streams=0, numa_copies=True) as rt:
        assert rt.executor.placer is None  # type: ignore[attr-defined]


def test_strings_and_failed_copies_leave_inputs_in_place_and_the_copier_serving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Object arrays (ONNX strings) are not copied; a copy that raises leaves its input as it was,
    and the copier goes on with the next one.  (Every array is reported on node 1, the fake.)"""
    monkeypatch.setattr(numa, "node_of", lambda array: 1)
    real_copy_to = numa.copy_to
    monkeypatch.setattr(numa, "copy_to", lambda array, node: (
        (_ for _ in ()).throw(ValueError("boom")) if array.dtype == np.int8 else real_copy_to(array, node)))
    placer = NumaPlacer({0: sorted(os.sched_getaffinity(0))[:1]})
    try:
        values = {"text": np.array(["x"] * 20000, dtype=object), "bad": np.zeros(1 << 17, np.int8),
                  "good": np.ones(1 << 15, np.float32)}
        originals = dict(values)
        job = SimpleNamespace(name="r0")
        placer.prefetch(SimpleNamespace(id=1, job=job), values, ["text", "bad", "good"], 0)  # type: ignore[arg-type]
        for _ in range(500):
            if values["good"] is not originals["good"]:
                break
            time.sleep(0.01)
    finally:
        placer.stop()
    assert values["text"] is originals["text"] and values["bad"] is originals["bad"]
    assert values["good"] is not originals["good"] and np.array_equal(values["good"], originals["good"])
    assert (placer.copies, placer.skipped) == (1, 1)
    assert not any(thread.is_alive() for thread in placer._threads)


def test_without_numa_copies_asked_for_no_placer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = two_nodes(tmp_path)
    monkeypatch.setattr(runtime, "discover", lambda: discover(sys_node=nodes))
    with runtime.Runtime(workers="auto", gpu_streams=0) as rt:
        assert len({w.memory_node for w in rt.specs}) == 2
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
    with runtime.Runtime(workers="auto", gpu_streams=0, trace=True, numa_copies=True) as rt:
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
