"""Baseline splitters METIS is compared against (same ratios, same graph, same quality measure).

Both cut the model's topological node order into consecutive runs, which is
what split-inference work does with a chain of layers, so both are acyclic by
construction:

- ``contiguous_split``: boundaries where the cumulative cost share is closest
  to the cumulative target ("layer split").
- ``best_split_points``: each boundary moved, within ``window`` share points
  of the contiguous one, to the position with the fewest live bytes (for two
  parts: the best single split point).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from partitioner.graph import OpGraph


def _node_shares(graph: OpGraph) -> np.ndarray:
    weights = graph.cost_s if graph.cost_s.sum() > 0 else np.ones(len(graph))
    return np.asarray(weights / weights.sum())


def _assign_from_cuts(n: int, cuts: Sequence[int]) -> np.ndarray:
    """cuts[i] = first node index of part i + 1 (strictly increasing, within 1..n-1)."""
    assign = np.zeros(n, dtype=np.int64)
    for cut in cuts:
        assign[cut:] += 1
    return assign


def _spread(cuts: list[int], n: int) -> list[int]:
    """Make cut positions strictly increasing inside 1..n-1 so no part is empty."""
    k = len(cuts) + 1
    out: list[int] = []
    for i, cut in enumerate(cuts):
        low = out[-1] + 1 if out else 1
        high = n - (k - 1 - i)
        out.append(min(max(cut, low), high))
    return out


def contiguous_split(graph: OpGraph, ratios: Sequence[float]) -> np.ndarray:
    """Consecutive runs of the topological order with shares closest to the ratios."""
    return split_along(graph, np.arange(len(graph)), ratios, window=0.0)


def best_split_points(graph: OpGraph, ratios: Sequence[float], window: float = 0.05) -> np.ndarray:
    """Each boundary at the fewest live bytes within ``window`` share points of its target."""
    return split_along(graph, np.arange(len(graph)), ratios, window)


def split_along(
    graph: OpGraph, sequence: np.ndarray, ratios: Sequence[float] | np.ndarray, window: float
) -> np.ndarray:
    """Cut a topological ``sequence`` of node indices into len(ratios) consecutive runs.

    Each boundary goes where the cumulative share is closest to its target or,
    with ``window`` > 0, to the position with the fewest live bytes among those
    within ``window`` share points of it.  Part i of the result gets ratios[i].
    """
    n = len(sequence)
    shares = _node_shares(graph)[sequence]
    before = np.concatenate([[0.0], np.cumsum(shares)])[1:n]  # share before position p, p = 1..n-1
    live = live_bytes(graph, sequence)[1:n]
    positions = np.arange(1, n)
    cuts: list[int] = []
    for bound in np.cumsum(ratios)[:-1]:
        distance = np.abs(before - bound)
        close = positions[distance <= max(window, float(distance.min()))]
        cuts.append(int(close[np.argmin(live[close - 1])]))
    assign_by_position = _assign_from_cuts(n, _spread(cuts, n))
    assign = np.empty(n, dtype=np.int64)
    assign[sequence] = assign_by_position
    return assign


def live_bytes(graph: OpGraph, sequence: np.ndarray | None = None) -> np.ndarray:
    """live[p] = bytes crossing a cut just before position p of a topological ``sequence``
    (default: node index order): tensors made before p and read at or after it."""
    n = len(graph)
    position = np.arange(n) if sequence is None else np.argsort(sequence)
    diff = np.zeros(n + 1, dtype=np.int64)
    for tensor, users in graph.consumers.items():
        src = graph.producer.get(tensor)
        if src is None:
            continue
        first, last = int(position[src]), max(int(position[u]) for u in users)
        if last > first:
            diff[first + 1] += graph.nbytes(tensor)
            diff[last + 1] -= graph.nbytes(tensor)
    return np.cumsum(diff)[:n]
