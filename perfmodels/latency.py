"""The latency of a partitioned model: one request's critical path, and pipelined throughput.

The split-inference formulation: a request's latency is its compute on each
processor, plus the host-side handling of every part's inputs and outputs, plus
the transfers of the tensors that cross memory nodes, combined along the DAG of
parts.  Everything here is arithmetic on predictions (compute seconds per part,
a :class:`~perfmodels.transfer.BusModel`); nothing runs a model.

The schedule it assumes, in the runtime's terms:

- model inputs are on ``host:0`` at time 0; model outputs must end on ``host:0``;
- a tensor moves once per destination memory node, from its producer's node, as
  soon as its producer finishes (the runtime prefetches when it assigns a task);
- a link (one direction between two nodes) carries one transfer at a time, in the
  order transfers are issued (producers in ``plan.order``, model inputs first);
  different links, and transfers and compute, overlap;
- a processor runs one part at a time: parts are list-scheduled in ``plan.order``,
  each starting when its processor is free and all its inputs are on its node.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from partitioner.errors import UsageError
from perfmodels.transfer import BusModel, node_type

if TYPE_CHECKING:  # partitioner.plan pulls in onnx (through the graph types); perf models never need it
    from partitioner.plan import PartitionPlan

HOST = "host:0"  # where requests arrive and answers leave

_Event = tuple[str, int]  # ("part", part index) or ("move", move index): what an event waited for
_Timed = tuple[float, _Event | None]  # a time, and the event that set it (None: the request's arrival)


@dataclass(frozen=True)
class Processor:
    """Where a part runs: a worker's ``name``, the ``memory_node`` its data must be on, its ``arch``."""

    name: str
    memory_node: str
    arch: str

    def __post_init__(self) -> None:
        node_type(self.memory_node)


@dataclass(frozen=True)
class HostOverhead:
    """Host-side cost of running one part: a session call plus handling its inputs and outputs.

    ``per_part_s + per_byte_s * (bytes of the part's inputs + outputs)``, added to the part's
    time on its processor (the worker thread does it before and after the compute).
    """

    per_part_s: float = 0.0
    per_byte_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("per_part_s", "per_byte_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"HostOverhead.{name} = {value!r} must be a finite number >= 0")


@dataclass(frozen=True)
class TransferTiming:
    """One scheduled move of ``tensor`` between memory nodes (seconds from the request's arrival)."""

    tensor: str
    src: str
    dst: str
    nbytes: int
    start_s: float
    finish_s: float

    @property
    def duration_s(self) -> float:
        return self.finish_s - self.start_s


@dataclass(frozen=True)
class LatencyBreakdown:
    """One request through the plan.

    Fields:
        total_s: end to end, from inputs on ``host:0`` to the last output back on ``host:0``.
        compute_s, overhead_s: summed over all parts (not only the critical path).
        transfer_total_s: all transfers' seconds; transfer_critical_s: those on the critical path.
        start_s, finish_s: per part index, seconds from the request's arrival.
        critical_path: part indices, first to last, of the chain of waits that sets ``total_s``.
        transfers: every move, in issue order.
    """

    total_s: float
    compute_s: float
    overhead_s: float
    transfer_total_s: float
    transfer_critical_s: float
    start_s: tuple[float, ...]
    finish_s: tuple[float, ...]
    critical_path: tuple[int, ...]
    transfers: tuple[TransferTiming, ...]


@dataclass(frozen=True)
class ThroughputBreakdown:
    """Steady state of pipelined requests: the busiest resource sets the rate.

    ``busy_s`` maps each resource (``"processor <name>"``, ``"link <src>-><dst>"``) to its
    seconds of work per request; ``requests_per_s = 1 / bottleneck_s`` (inf when nothing costs).
    """

    requests_per_s: float
    bottleneck: str
    bottleneck_s: float
    busy_s: Mapping[str, float]


@dataclass(frozen=True)
class _Move:
    tensor: str
    src: str
    dst: str
    nbytes: int
    duration_s: float
    after: int | None  # producing part; None for a model input (there at time 0)


@dataclass(frozen=True)
class _Problem:
    """Validated inputs: per part its processor, compute and overhead seconds; every move."""

    plan: PartitionPlan
    processors: tuple[Processor, ...]
    compute_s: tuple[float, ...]
    overhead_s: tuple[float, ...]
    moves: tuple[_Move, ...]


def _processors(plan: PartitionPlan, assignment: Mapping[int, Processor]) -> tuple[Processor, ...]:
    missing = [p.index for p in plan.parts if p.index not in assignment]
    if missing:
        raise UsageError(f"parts {missing} have no processor in the assignment; assign every part")
    by_name: dict[str, Processor] = {}
    for part in plan.parts:
        proc = assignment[part.index]
        if by_name.setdefault(proc.name, proc) != proc:
            raise UsageError(f"two different processors are named {proc.name!r}; names must be unique")
    return tuple(assignment[p.index] for p in plan.parts)


def _compute(plan: PartitionPlan, compute_s: Mapping[int, float] | Sequence[float]) -> tuple[float, ...]:
    values = []
    for part in plan.parts:
        i = part.index
        has = i in compute_s if isinstance(compute_s, Mapping) else i < len(compute_s)
        value = compute_s[i] if has else math.nan
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(
                f"part {i} has compute time {value!r} s; give a finite time >= 0 for every part "
                "(NaN means its perf model needs calibration first)"
            )
        values.append(float(value))
    return tuple(values)


def _sizes(plan: PartitionPlan, io_nbytes: Mapping[str, int] | None, batch: int | None) -> dict[str, int]:
    """Bytes of every tensor whose size is known (cuts, then ``io_nbytes``), scaled to ``batch``."""
    if batch is not None and not (isinstance(batch, int) and batch >= 1):
        raise UsageError(f"batch {batch!r} must be an integer >= 1")
    factor = 1.0 if batch is None else batch / plan.batch
    known = {c.name: c.nbytes for c in plan.cuts} | dict(io_nbytes or {})
    return {name: round(nbytes * factor) for name, nbytes in known.items()}


def _size(sizes: Mapping[str, int], tensor: str, why: str) -> int:
    if tensor not in sizes:
        raise UsageError(f"the size of {tensor!r} is unknown but {why}; pass io_nbytes={{{tensor!r}: ...}}")
    return sizes[tensor]


def _overheads(plan: PartitionPlan, overhead: HostOverhead, sizes: Mapping[str, int]) -> tuple[float, ...]:
    if overhead.per_byte_s == 0:
        return tuple(overhead.per_part_s for _ in plan.parts)
    why = "HostOverhead.per_byte_s prices it"
    return tuple(
        overhead.per_part_s + overhead.per_byte_s * sum(_size(sizes, t, why) for t in (*p.inputs, *p.outputs))
        for p in plan.parts
    )


def _moves(plan: PartitionPlan, processors: Sequence[Processor], bus: BusModel,
           sizes: Mapping[str, int]) -> tuple[_Move, ...]:
    """Every cross-node move, in issue order: model inputs first, then producers in ``plan.order``."""
    readers: dict[str, list[str]] = {}
    for index in plan.order:
        for tensor in plan.parts[index].inputs:
            readers.setdefault(tensor, []).append(processors[index].memory_node)
    sources: list[tuple[str, str, int | None]] = [(t, HOST, None) for t in plan.model_inputs]
    sources += [(t, processors[i].memory_node, i) for i in plan.order for t in plan.parts[i].outputs]
    moves = []
    for tensor, src, after in sources:
        wanted = list(readers.get(tensor, []))
        if tensor in plan.model_outputs and after is not None:
            wanted.append(HOST)
        for dst in dict.fromkeys(n for n in wanted if n != src):
            nbytes = _size(sizes, tensor, f"it must move {src} -> {dst}")
            duration_s = bus.predict(src, dst, nbytes)
            if math.isnan(duration_s):
                raise UsageError(f"the bus model has no link {src} -> {dst} (moving {tensor!r}); "
                                 "calibrate it first (perfmodels.transfer.calibrate or BusModel.set_link)")
            moves.append(_Move(tensor, src, dst, nbytes, duration_s, after))
    return tuple(moves)


def _prepare(plan: PartitionPlan, assignment: Mapping[int, Processor],
             compute_s: Mapping[int, float] | Sequence[float], bus: BusModel, overhead: HostOverhead,
             batch: int | None, io_nbytes: Mapping[str, int] | None) -> _Problem:
    plan.validate()
    processors = _processors(plan, assignment)
    compute = _compute(plan, compute_s)
    sizes = _sizes(plan, io_nbytes, batch)
    return _Problem(plan, processors, compute, _overheads(plan, overhead, sizes),
                    _moves(plan, processors, bus, sizes))


def _latest(candidates: Sequence[_Timed]) -> _Timed:
    """The latest candidate; on ties the first, so callers list data waits before resource waits."""
    best = candidates[0]
    for candidate in candidates[1:]:
        if candidate[0] > best[0]:
            best = candidate
    return best


class _Simulation:
    """List schedule of one request: part and move times, and for each what it waited for."""

    def __init__(self, problem: _Problem) -> None:
        n = len(problem.plan.parts)
        self.problem = problem
        self.start_s, self.finish_s = [0.0] * n, [0.0] * n
        self.part_wait: list[_Event | None] = [None] * n
        self.move_times: list[tuple[float, float]] = []
        self.move_wait: list[_Event | None] = []
        self.arrival: dict[tuple[str, str], _Timed] = {  # (tensor, memory node) -> when it is there
            (t, HOST): (0.0, None) for t in problem.plan.model_inputs
        }
        self.link_free: dict[tuple[str, str], _Timed] = {}
        self.proc_free: dict[str, _Timed] = {}

    def run(self) -> _Timed:
        """Schedule everything; returns when (and on what) the request completes."""
        self._issue(None)
        for index in self.problem.plan.order:
            self._run_part(index)
            self._issue(index)
        plan = self.problem.plan
        ends = [self.arrival[(t, HOST)] for t in plan.model_outputs]
        ends += [(self.finish_s[p.index], ("part", p.index)) for p in plan.parts]
        return _latest(ends) if ends else (0.0, None)

    def _issue(self, after: int | None) -> None:
        for i, move in enumerate(self.problem.moves):
            if move.after != after:
                continue
            link = (move.src, move.dst)
            source = self.arrival[(move.tensor, move.src)]
            start, wait = _latest([source, self.link_free.get(link, (0.0, None))])
            finish = start + move.duration_s
            self.move_times.append((start, finish))
            self.move_wait.append(wait)
            self.arrival[(move.tensor, move.dst)] = self.link_free[link] = (finish, ("move", i))

    def _run_part(self, index: int) -> None:
        part, proc = self.problem.plan.parts[index], self.problem.processors[index]
        candidates: list[_Timed] = [(0.0, None)]
        candidates += [(self.finish_s[d], ("part", d)) for d in part.depends_on]
        candidates += [self.arrival[(t, proc.memory_node)] for t in part.inputs]
        candidates.append(self.proc_free.get(proc.name, (0.0, None)))
        start, self.part_wait[index] = _latest(candidates)
        finish = start + self.problem.compute_s[index] + self.problem.overhead_s[index]
        self.start_s[index], self.finish_s[index] = start, finish
        self.proc_free[proc.name] = (finish, ("part", index))
        for tensor in part.outputs:
            self.arrival[(tensor, proc.memory_node)] = (finish, ("part", index))

    def critical(self, end: _Event | None) -> tuple[tuple[int, ...], float]:
        """Walk the waits back from ``end``: the parts on the critical path and its transfer seconds."""
        parts: list[int] = []
        transfer_s = 0.0
        while end is not None:
            kind, i = end
            if kind == "part":
                parts.append(i)
                end = self.part_wait[i]
            else:
                transfer_s += self.problem.moves[i].duration_s
                end = self.move_wait[i]
        return tuple(reversed(parts)), transfer_s


def plan_latency(plan: PartitionPlan, assignment: Mapping[int, Processor],
                 compute_s: Mapping[int, float] | Sequence[float], bus: BusModel,
                 overhead: HostOverhead = HostOverhead(), batch: int | None = None,
                 io_nbytes: Mapping[str, int] | None = None) -> LatencyBreakdown:
    """End-to-end seconds of one request through ``plan`` placed by ``assignment`` (see module doc).

    ``compute_s`` gives each part's seconds on its processor at ``batch``; tensor bytes (cuts,
    and ``io_nbytes`` for model inputs/outputs, which the plan does not record) are at
    ``plan.batch`` and scaled linearly to ``batch``.  A model input or output's size is needed
    only when it crosses memory nodes or ``overhead.per_byte_s`` prices it.

    Raises UsageError (a ValueError) for an unassigned part, a missing/NaN compute time, an
    unknown size that is needed, or a link the bus model cannot predict.
    """
    problem = _prepare(plan, assignment, compute_s, bus, overhead, batch, io_nbytes)
    sim = _Simulation(problem)
    total_s, end = sim.run()
    path, transfer_critical_s = sim.critical(end)
    transfers = tuple(
        TransferTiming(m.tensor, m.src, m.dst, m.nbytes, start, finish)
        for m, (start, finish) in zip(problem.moves, sim.move_times)
    )
    return LatencyBreakdown(
        total_s=total_s, compute_s=sum(problem.compute_s), overhead_s=sum(problem.overhead_s),
        transfer_total_s=sum(m.duration_s for m in problem.moves), transfer_critical_s=transfer_critical_s,
        start_s=tuple(sim.start_s), finish_s=tuple(sim.finish_s), critical_path=path, transfers=transfers,
    )


def pipeline_throughput(plan: PartitionPlan, assignment: Mapping[int, Processor],
                        compute_s: Mapping[int, float] | Sequence[float], bus: BusModel,
                        overhead: HostOverhead = HostOverhead(), batch: int | None = None,
                        io_nbytes: Mapping[str, int] | None = None) -> ThroughputBreakdown:
    """Requests per second when requests are pipelined: 1 / the busiest resource's seconds per request.

    Each processor is busy for its parts' compute + overhead, each link (one direction between
    two memory nodes) for its transfers; resources work concurrently on different requests.
    Same arguments and errors as :func:`plan_latency`.
    """
    problem = _prepare(plan, assignment, compute_s, bus, overhead, batch, io_nbytes)
    busy: dict[str, float] = {}
    for index, proc in enumerate(problem.processors):
        key = f"processor {proc.name}"
        busy[key] = busy.get(key, 0.0) + problem.compute_s[index] + problem.overhead_s[index]
    for move in problem.moves:
        key = f"link {move.src}->{move.dst}"
        busy[key] = busy.get(key, 0.0) + move.duration_s
    if not busy:
        return ThroughputBreakdown(math.inf, "", 0.0, types.MappingProxyType({}))
    bottleneck = max(busy, key=lambda k: busy[k])  # first of equals: processors before links
    seconds = busy[bottleneck]
    rate = 1.0 / seconds if seconds > 0 else math.inf
    return ThroughputBreakdown(rate, bottleneck, seconds, types.MappingProxyType(busy))
