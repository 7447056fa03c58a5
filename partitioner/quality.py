"""How good an assignment of nodes to parts is: shares, imbalance, cut bytes, and the graph of parts.

Cut bytes count each tensor once per part that reads it from another part:
that is what would travel if each part ran on its own processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from partitioner.graph import OpGraph


@dataclass(frozen=True)
class Quality:
    """Summary of one assignment (shares in [0, 1], imbalance in share points)."""

    shares: tuple[float, ...]
    imbalance: float  # max over parts of |share - target|
    cut_bytes: int
    acyclic: bool


def shares(graph: OpGraph, assign: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the total cost in each part (uniform over nodes if all costs are zero)."""
    weights = graph.cost_s if graph.cost_s.sum() > 0 else np.ones(len(graph))
    totals = np.bincount(assign, weights=weights, minlength=k)
    return np.asarray(totals / totals.sum())


def cut_bytes(graph: OpGraph, assign: np.ndarray) -> int:
    """Bytes crossing parts: each produced tensor, once per other part that reads it."""
    total = 0
    for tensor, users in graph.consumers.items():
        src = graph.producer.get(tensor)
        if src is None:
            continue
        readers = {int(assign[u]) for u in users} - {int(assign[src])}
        total += len(readers) * graph.nbytes(tensor)
    return total


def part_edges(graph: OpGraph, assign: np.ndarray) -> set[tuple[int, int]]:
    """Edges (a, b) of the graph of parts: part b reads something part a produces."""
    return {
        (int(assign[s]), int(assign[d])) for s, d in graph.edges() if assign[s] != assign[d]
    }


def find_cycle(k: int, edges: set[tuple[int, int]]) -> list[int] | None:
    """A cycle among parts as a path whose last element repeats the first, or None."""
    succ: dict[int, list[int]] = {p: [] for p in range(k)}
    for a, b in sorted(edges):
        succ[a].append(b)
    colour = [0] * k  # 0 new, 1 on the stack, 2 done
    stack_path: list[int] = []

    def visit(p: int) -> list[int] | None:
        colour[p] = 1
        stack_path.append(p)
        for q in succ[p]:
            if colour[q] == 1:
                return stack_path[stack_path.index(q):] + [q]
            if colour[q] == 0 and (found := visit(q)) is not None:
                return found
        stack_path.pop()
        colour[p] = 2
        return None

    for start in range(k):
        if colour[start] == 0 and (found := visit(start)) is not None:
            return found
    return None


def measure(graph: OpGraph, assign: np.ndarray, targets: Sequence[float] | np.ndarray) -> Quality:
    k = len(targets)
    got = shares(graph, assign, k)
    imbalance = float(np.max(np.abs(got - np.asarray(targets))))
    acyclic = find_cycle(k, part_edges(graph, assign)) is None
    return Quality(tuple(float(s) for s in got), imbalance, cut_bytes(graph, assign), acyclic)
