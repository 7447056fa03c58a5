"""Acyclic repair: turn METIS's undirected k-way assignment into parts that form a DAG.

METIS ignores edge direction, so part A may feed part B while B feeds A.  We
follow the acyclic-partitioning literature (Herrmann, Özkaya, Uçar, Kaya,
Çatalyürek, "Multilevel algorithms for acyclic partitioning of directed acyclic
graphs", SIAM J. Sci. Comput. 2019; Moreira, Popp, Schulz, "Graph partitioning
with acyclicity constraints", SEA 2017): a partition is acyclic iff its parts can
be numbered so every edge goes from a lower or equal number to a higher one.

1. Choose an order of METIS's parts (all orders for k <= 4; otherwise orders
   by mean and median node position and a greedy feedback-arc-set order of the
   graph of parts, weighted by cut bytes).
2. For each order, make ranks monotone along edges two ways: push nodes
   forward (rank = max(own, preds')) in topological order, or pull them back
   (rank = min(own, succs')) in reverse order.  Keep the best candidate.
3. More starts (a multi-start, as dagP also seeds from topological orders):
   the topological order that METIS's ranks induce (rank, then node index)
   re-cut into runs matching the ratios, each boundary at the fewest live
   bytes within ``tol``; the same on the model's own node order; and the
   plain contiguous split, so the result is never worse on the objective than
   the layer-split baseline.
4. Refine each start with moves that keep ranks monotone (a node may go to any
   rank between its latest predecessor's and its earliest successor's),
   greedily, first restoring balance (share within ``tol`` of its target),
   then cutting bytes; keep the best.  The report says which start won.

Part numbers after repair are ranks, so part 0 may run first and part i only
depends on parts < i.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from partitioner.baselines import split_along
from partitioner.graph import OpGraph
from partitioner.quality import Quality, cut_bytes, measure, part_edges

# Weight of one share point of imbalance beyond tolerance against the whole cut.
_BALANCE_WEIGHT = 100.0
_EMPTY_PENALTY = 1e6
_MAX_PASSES = 12


@dataclass(frozen=True)
class RepairReport:
    """Quality of METIS's assignment and of the repaired one (targets in METIS's numbering before)."""

    before: Quality
    after: Quality
    moved_nodes: int
    seed: str  # which start won: metis, metis-order, topological or contiguous


@dataclass
class _Objective:
    node_share: np.ndarray
    targets: np.ndarray
    tol: float
    total_bytes: float

    def balance(self, part_share: np.ndarray, counts: np.ndarray) -> float:
        excess = np.maximum(0.0, np.abs(part_share - self.targets) - self.tol)
        return _BALANCE_WEIGHT * float(excess.sum()) + _EMPTY_PENALTY * int((counts == 0).sum())

    def __call__(self, graph: OpGraph, ranks: np.ndarray) -> float:
        k = len(self.targets)
        part_share = np.bincount(ranks, weights=self.node_share, minlength=k)
        counts = np.bincount(ranks, minlength=k)
        return self.balance(part_share, counts) + cut_bytes(graph, ranks) / self.total_bytes


def repair(
    graph: OpGraph, assign: np.ndarray, targets: Sequence[float], tol: float = 0.01
) -> tuple[np.ndarray, tuple[int, ...], RepairReport]:
    """Acyclic assignment with parts numbered topologically, and a report.

    Part i of the result was balanced against ``targets[order[i]]``.
    """
    k = len(targets)
    target_arr = np.asarray(targets, dtype=float)
    before = measure(graph, assign, targets)
    if k == 1:
        return assign.copy(), (0,), RepairReport(before, before, 0, "metis")
    weights = graph.cost_s if graph.cost_s.sum() > 0 else np.ones(len(graph))
    node_share = weights / weights.sum()
    total_bytes = float(sum(graph.edges().values()) or 1)
    preds, succs = graph.predecessors(), graph.successors()

    def objective_for(order: tuple[int, ...]) -> _Objective:
        return _Objective(node_share, target_arr[list(order)], tol, total_bytes)

    ranks, order = _monotone_ranks(graph, assign, k, objective_for, preds, succs)
    ranks, order = _fill_empty(ranks, order, node_share)
    # METIS's clustering re-cut along its own topological order (rank, then node index).
    sequence = np.lexsort((np.arange(len(graph)), ranks))
    identity = tuple(range(k))
    seeds = [
        ("metis", ranks, order),
        ("metis-order", split_along(graph, sequence, target_arr[list(order)], tol), order),
        ("topological", split_along(graph, np.arange(len(graph)), target_arr, tol), identity),
        ("contiguous", split_along(graph, np.arange(len(graph)), target_arr, 0.0), identity),
    ]
    scored = []
    for label, seed_ranks, seed_order in seeds:
        objective = objective_for(seed_order)
        refined = _refine(graph, seed_ranks, objective, preds, succs)
        scored.append((objective(graph, refined), label, refined, seed_order))
    _, label, ranks, order = min(scored, key=lambda item: item[0])  # ties: the earlier seed
    after = measure(graph, ranks, target_arr[list(order)])
    rank_of = np.empty(k, dtype=np.int64)
    rank_of[list(order)] = np.arange(k)
    moved = int((rank_of[assign] != ranks).sum())
    return ranks, order, RepairReport(before, after, moved, label)


def _monotone_ranks(
    graph: OpGraph,
    assign: np.ndarray,
    k: int,
    objective_for: Callable[[tuple[int, ...]], _Objective],
    preds: list[list[int]],
    succs: list[list[int]],
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The best order of METIS's parts and push/pull fix: ranks monotone along every edge."""
    best: tuple[float, np.ndarray, tuple[int, ...]] | None = None
    for order in _candidate_orders(graph, assign, k):
        rank_of = np.empty(k, dtype=np.int64)
        rank_of[list(order)] = np.arange(k)
        objective = objective_for(order)
        start = rank_of[assign]
        for ranks in (_push_forward(start, preds), _pull_back(start, succs)):
            score = objective(graph, ranks)
            if best is None or score < best[0]:
                best = (score, ranks, order)
    assert best is not None
    return best[1], best[2]


def _fill_empty(
    ranks: np.ndarray, order: tuple[int, ...], node_share: np.ndarray
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Give every part at least one node by splitting the heaviest parts in topological order.

    METIS may return empty parts when k is large for the graph, and a single-node
    move cannot refill them when every neighbour is alone in its part.  Splitting
    part p at a node index into p (earlier nodes) and p + 1 (later nodes), and
    shifting the parts after it, keeps ranks monotone along every edge: node
    indices are a topological order.
    """
    k = len(order)
    counts = np.bincount(ranks, minlength=k)
    if counts.all():
        return ranks, order
    keep = [r for r in range(k) if counts[r]]
    missing = [order[r] for r in range(k) if not counts[r]]
    new_order = [order[r] for r in keep]
    remap = np.full(k, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    ranks = remap[ranks]
    while missing:
        counts = np.bincount(ranks)
        shares = np.bincount(ranks, weights=node_share)
        splittable = [p for p in range(len(counts)) if counts[p] >= 2]
        p = max(splittable, key=lambda q: (shares[q], counts[q]))
        members = np.flatnonzero(ranks == p)
        before = np.cumsum(node_share[members]) - node_share[members]
        cut = int(np.clip(np.searchsorted(before, shares[p] / 2), 1, len(members) - 1))
        ranks[ranks > p] += 1
        ranks[members[cut:]] = p + 1
        new_order.insert(p + 1, missing.pop(0))
    return ranks, tuple(new_order)


def _candidate_orders(graph: OpGraph, assign: np.ndarray, k: int) -> list[tuple[int, ...]]:
    if k <= 4:
        return list(itertools.permutations(range(k)))
    positions = np.arange(len(graph), dtype=float)
    mean = [positions[assign == p].mean() if (assign == p).any() else 0.0 for p in range(k)]
    median = [float(np.median(positions[assign == p])) if (assign == p).any() else 0.0 for p in range(k)]
    orders = {
        tuple(int(p) for p in np.argsort(mean, kind="stable")),
        tuple(int(p) for p in np.argsort(median, kind="stable")),
        _feedback_arc_order(graph, assign, k, mean),
    }
    return sorted(orders)


def _feedback_arc_order(graph: OpGraph, assign: np.ndarray, k: int, tie: list[float]) -> tuple[int, ...]:
    """Eades-Lin-Smyth greedy order of parts, so that few bytes flow backwards."""
    weight: dict[tuple[int, int], float] = {}
    for (s, d), nbytes in graph.edges().items():
        a, b = int(assign[s]), int(assign[d])
        if a != b:
            weight[(a, b)] = weight.get((a, b), 0.0) + nbytes
    left = sorted(range(k), key=lambda p: tie[p])
    head: list[int] = []
    tail: list[int] = []

    def flow(p: int, into: bool) -> float:
        if into:
            return sum(w for (a, b), w in weight.items() if b == p and a in left)
        return sum(w for (a, b), w in weight.items() if a == p and b in left)

    while left:
        sinks = [p for p in left if flow(p, into=False) == 0]
        sources = [p for p in left if flow(p, into=True) == 0]
        if sinks:
            pick, tail_side = sinks[-1], True
        elif sources:
            pick, tail_side = sources[0], False
        else:
            pick, tail_side = max(left, key=lambda p: flow(p, False) - flow(p, True)), False
        left.remove(pick)
        (tail if tail_side else head).append(pick)
    return tuple(head + tail[::-1])


def _push_forward(ranks: np.ndarray, preds: list[list[int]]) -> np.ndarray:
    out = ranks.tolist()
    for v, before in enumerate(preds):
        for u in before:
            if out[u] > out[v]:
                out[v] = out[u]
    return np.asarray(out, dtype=np.int64)


def _pull_back(ranks: np.ndarray, succs: list[list[int]]) -> np.ndarray:
    out = ranks.tolist()
    for v in range(len(out) - 1, -1, -1):
        for w in succs[v]:
            if out[w] < out[v]:
                out[v] = out[w]
    return np.asarray(out, dtype=np.int64)


def _refine(
    graph: OpGraph,
    ranks: np.ndarray,
    objective: _Objective,
    preds: list[list[int]],
    succs: list[list[int]],
) -> np.ndarray:
    """Greedy monotone-rank moves while the objective improves."""
    k = len(objective.targets)
    r = ranks.tolist()
    part_share = np.bincount(ranks, weights=objective.node_share, minlength=k)
    counts = np.bincount(ranks, minlength=k)
    touched = _tensors_touched(graph)
    for _ in range(_MAX_PASSES):
        improved = False
        for v in range(len(r)):
            lo = max((r[u] for u in preds[v]), default=0)
            hi = min((r[w] for w in succs[v]), default=k - 1)
            if lo == hi or counts[r[v]] == 1:
                continue
            move = _best_move(graph, r, v, range(lo, hi + 1), part_share, counts, objective, touched[v])
            if move is not None:
                src = r[v]
                part_share[src] -= objective.node_share[v]
                part_share[move] += objective.node_share[v]
                counts[src] -= 1
                counts[move] += 1
                r[v] = move
                improved = True
        if not improved:
            break
    return np.asarray(r, dtype=np.int64)


def _best_move(
    graph: OpGraph,
    r: list[int],
    v: int,
    dests: range,
    part_share: np.ndarray,
    counts: np.ndarray,
    objective: _Objective,
    tensors: list[str],
) -> int | None:
    src = r[v]
    base_balance = objective.balance(part_share, counts)
    base_cut = _local_cut(graph, r, tensors)
    best, best_delta = None, -1e-12
    for dst in dests:
        if dst == src:
            continue
        part_share[src] -= objective.node_share[v]
        part_share[dst] += objective.node_share[v]
        counts[src] -= 1
        counts[dst] += 1
        r[v] = dst
        delta = objective.balance(part_share, counts) - base_balance
        delta += (_local_cut(graph, r, tensors) - base_cut) / objective.total_bytes
        r[v] = src
        part_share[src] += objective.node_share[v]
        part_share[dst] -= objective.node_share[v]
        counts[src] += 1
        counts[dst] -= 1
        if delta < best_delta:
            best, best_delta = dst, delta
    return best


def _tensors_touched(graph: OpGraph) -> list[list[str]]:
    """Per node, the produced tensors whose cut changes when the node moves."""
    touched: list[list[str]] = [[] for _ in graph.nodes]
    for node in graph.nodes:
        for name in (*node.inputs, *node.outputs):
            if name in graph.producer and name in graph.consumers:
                touched[node.index].append(name)
    return touched


def _local_cut(graph: OpGraph, r: list[int], tensors: list[str]) -> int:
    total = 0
    for name in tensors:
        src = r[graph.producer[name]]
        readers = {r[u] for u in graph.consumers[name]}
        readers.discard(src)
        total += len(readers) * graph.nbytes(name)
    return total


def is_acyclic(graph: OpGraph, assign: np.ndarray) -> bool:
    """True if no edge goes from a higher part number to a lower one (parts in topological order)."""
    return all(a <= b for a, b in part_edges(graph, assign))
