"""The plan latency model: critical path of one request and pipelined throughput, on hand-built plans.

Times are chosen exact in binary floating point (quarters of a second), so sums compare exactly.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from partitioner.plan import CutTensor, PartitionPlan, PlanPart
from perfmodels.latency import HostOverhead, Processor, pipeline_throughput, plan_latency
from perfmodels.transfer import BusModel

CPU = Processor("cpu0", "host:0", "cpu:2c")
CPU1 = Processor("cpu1", "host:0", "cpu:2c")
GPU = Processor("gpu0", "cuda:0", "cuda:sm90")
GPU_B = Processor("gpu0-stream1", "cuda:0", "cuda:sm90")


def part(index: int, inputs: list[str], outputs: list[str], deps: list[int]) -> PlanPart:
    return PlanPart(index, f"part_{index}.onnx", inputs, outputs, [f"n{index}"], deps, index, 0.25, 0.25)


def cut(name: str, nbytes: int, producer: int, consumers: list[int]) -> CutTensor:
    return CutTensor(name, nbytes, "float32", [nbytes // 4], producer, consumers)


def make_plan(parts: list[PlanPart], cuts: list[CutTensor], batch: int = 1) -> PartitionPlan:
    return PartitionPlan(
        source_model="m.onnx", source_sha256="0" * 64, ratios=[0.5, 0.5], method="metis", batch=batch,
        arch="static", cost_source="static-flops", model_inputs=["x"], model_outputs=["y"],
        parts=parts, cuts=cuts, order=list(range(len(parts))),
    )


def pcie() -> BusModel:
    """0.25 s + bytes / 1000 B/s each way: 500 bytes take 0.75 s, 250 bytes 0.5 s."""
    bus = BusModel()
    bus.set_link("host:0", "cuda:0", "pinned", 0.25, 1000.0)
    bus.set_link("cuda:0", "host:0", "pinned", 0.25, 1000.0)
    return bus


#   x -> [0] -a(500 B)-> [1] -b(250 B)-> [2] -> y
CHAIN = make_plan(
    [part(0, ["x"], ["a"], []), part(1, ["a"], ["b"], [0]), part(2, ["b"], ["y"], [1])],
    [cut("a", 500, 0, [1]), cut("b", 250, 1, [2])],
)

#          +-> [1] -b-+
#   x -> [0]          +-> [3] -> y
#          +-> [2] -c-+        (a: 500 B read by 1 and 2; b, c: 250 B)
DIAMOND = make_plan(
    [part(0, ["x"], ["a"], []), part(1, ["a"], ["b"], [0]), part(2, ["a"], ["c"], [0]),
     part(3, ["b", "c"], ["y"], [1, 2])],
    [cut("a", 500, 0, [1, 2]), cut("b", 250, 1, [3]), cut("c", 250, 2, [3])],
)


def check_schedule(plan: PartitionPlan, assignment: dict[int, Processor], result_start: tuple[float, ...],
                   result_finish: tuple[float, ...]) -> None:
    """Invariants of every schedule: dependencies respected, one part at a time per processor."""
    for p in plan.parts:
        assert all(result_finish[d] <= result_start[p.index] for d in p.depends_on)
    for i in range(len(plan.parts)):
        for j in range(i + 1, len(plan.parts)):
            if assignment[i] == assignment[j]:
                assert result_finish[i] <= result_start[j] or result_finish[j] <= result_start[i]


def test_chain_across_cpu_and_gpu_adds_compute_and_both_transfers() -> None:
    assignment = {0: CPU, 1: GPU, 2: CPU}
    result = plan_latency(CHAIN, assignment, [1.0, 2.0, 3.0], pcie())
    check_schedule(CHAIN, assignment, result.start_s, result.finish_s)
    assert result.total_s == 1.0 + 0.75 + 2.0 + 0.5 + 3.0
    assert result.start_s == (0.0, 1.75, 4.25)
    assert result.critical_path == (0, 1, 2)
    assert result.transfer_critical_s == result.transfer_total_s == 1.25
    assert result.compute_s == 6.0 and result.overhead_s == 0.0
    assert [(t.tensor, t.src, t.dst) for t in result.transfers] == [("a", "host:0", "cuda:0"),
                                                                   ("b", "cuda:0", "host:0")]


def test_chain_on_one_node_moves_nothing() -> None:
    result = plan_latency(CHAIN, {0: CPU, 1: CPU1, 2: CPU}, [1.0, 2.0, 3.0], BusModel())
    assert result.total_s == 6.0 and result.transfers == ()


def test_bytes_scale_with_batch() -> None:
    result = plan_latency(CHAIN, {0: CPU, 1: GPU, 2: CPU}, [1.0, 2.0, 3.0], pcie(), batch=2)
    assert result.transfer_total_s == (0.25 + 1.0) + (0.25 + 0.5)


def test_model_inputs_and_outputs_start_and_end_on_host() -> None:
    on_gpu = {0: GPU, 1: GPU, 2: GPU}
    with pytest.raises(ValueError, match="io_nbytes"):
        plan_latency(CHAIN, on_gpu, [1.0, 2.0, 3.0], pcie())
    result = plan_latency(CHAIN, on_gpu, [1.0, 2.0, 3.0], pcie(), io_nbytes={"x": 750, "y": 250})
    assert result.total_s == 1.0 + 1.0 + 2.0 + 3.0 + 0.5
    assert [t.tensor for t in result.transfers] == ["x", "y"]


@pytest.mark.parametrize("compute, path", [([1.0, 2.0, 3.0, 4.0], (0, 2, 3)),
                                           ([1.0, 3.0, 2.0, 4.0], (0, 1, 3))])
def test_diamond_on_two_processors_overlaps_the_branches(compute: list[float], path: tuple[int, ...]) -> None:
    assignment = {0: CPU, 1: CPU, 2: CPU1, 3: CPU}
    result = plan_latency(DIAMOND, assignment, compute, BusModel())
    check_schedule(DIAMOND, assignment, result.start_s, result.finish_s)
    assert result.total_s == 1.0 + max(2.0, 3.0) + 4.0
    assert result.critical_path == path


def test_diamond_on_one_processor_adds_the_branches() -> None:
    result = plan_latency(DIAMOND, {i: CPU for i in range(4)}, [1.0, 2.0, 3.0, 4.0], BusModel())
    assert result.total_s == 1.0 + 2.0 + 3.0 + 4.0
    assert result.critical_path == (0, 1, 2, 3)


def test_a_tensor_moves_once_per_node_and_only_across_nodes() -> None:
    # both branches on the GPU (two streams): `a` crosses once; `b`, `c` come back to the host
    assignment = {0: CPU, 1: GPU, 2: GPU_B, 3: CPU}
    result = plan_latency(DIAMOND, assignment, [1.0, 2.0, 2.0, 4.0], pcie())
    assert sorted((t.tensor, t.dst) for t in result.transfers) == [("a", "cuda:0"), ("b", "host:0"),
                                                                  ("c", "host:0")]
    # b and c are ready together and take turns on the one cuda:0 -> host:0 link
    assert result.total_s == 1.0 + 0.75 + 2.0 + 0.5 + 0.5 + 4.0
    assert result.transfer_critical_s == 0.75 + 0.5 + 0.5


def test_host_overhead_is_paid_per_part_and_per_byte() -> None:
    overhead = HostOverhead(per_part_s=0.25, per_byte_s=0.001)
    sizes = {"x": 250, "y": 250}
    result = plan_latency(CHAIN, {i: CPU for i in range(3)}, [1.0, 2.0, 3.0], BusModel(), overhead,
                          io_nbytes=sizes)
    # bytes handled per part: 250+500, 500+250, 250+250
    assert result.overhead_s == pytest.approx(3 * 0.25 + 0.001 * 2000)
    assert result.total_s == pytest.approx(6.0 + result.overhead_s)


def test_throughput_is_set_by_the_busiest_processor() -> None:
    result = pipeline_throughput(CHAIN, {0: CPU, 1: GPU, 2: CPU}, [1.0, 2.0, 3.0], pcie())
    assert result.bottleneck == "processor cpu0"
    assert result.requests_per_s == 1 / 4.0
    assert dict(result.busy_s) == {"processor cpu0": 4.0, "processor gpu0": 2.0,
                                   "link host:0->cuda:0": 0.75, "link cuda:0->host:0": 0.5}


def test_throughput_can_be_bound_by_a_link() -> None:
    slow = BusModel()
    slow.set_link("host:0", "cuda:0", "pageable", 0.0, 50.0)  # a: 10 s
    slow.set_link("cuda:0", "host:0", "pageable", 0.0, 1000.0)
    result = pipeline_throughput(CHAIN, {0: CPU, 1: GPU, 2: CPU1}, [1.0, 2.0, 3.0], slow)
    assert result.bottleneck == "link host:0->cuda:0"
    assert result.requests_per_s == 1 / 10.0


@pytest.mark.parametrize("assignment, compute, message", [
    ({0: CPU, 1: GPU}, [1.0, 2.0, 3.0], r"parts \[2\] have no processor"),
    ({0: CPU, 1: GPU, 2: CPU}, [1.0, math.nan, 3.0], "part 1 has compute time nan"),
    ({0: CPU, 1: GPU, 2: CPU}, {0: 1.0, 1: 2.0}, "part 2 has compute time nan"),
    ({0: CPU, 1: GPU, 2: CPU}, [1.0, -2.0, 3.0], "part 1 has compute time -2.0"),
    ({0: CPU, 1: Processor("cpu0", "cuda:0", "x"), 2: CPU}, [1.0, 2.0, 3.0], "named 'cpu0'"),
])
def test_bad_inputs_are_rejected_by_name(assignment: dict[int, Processor],
                                         compute: list[float] | dict[int, float], message: str) -> None:
    for model in (plan_latency, pipeline_throughput):
        with pytest.raises(ValueError, match=message):
            model(CHAIN, assignment, compute, pcie())


def test_an_uncalibrated_link_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="no link host:0 -> cuda:0"):
        plan_latency(CHAIN, {0: CPU, 1: GPU, 2: CPU}, [1.0, 2.0, 3.0], BusModel())


def test_bad_batch_and_overhead_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch"):
        plan_latency(CHAIN, {i: CPU for i in range(3)}, [1.0, 2.0, 3.0], BusModel(), batch=0)
    with pytest.raises(ValueError, match="per_part_s"):
        HostOverhead(per_part_s=-1.0)


BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnx", "onnxruntime", "hetsched", "cupy"):
            raise ImportError("perf models must not import " + name)
sys.meta_path.insert(0, Block())
import perfmodels.latency, perfmodels.transfer
"""


def test_perf_models_import_without_onnx_onnxruntime_or_the_runtime() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
