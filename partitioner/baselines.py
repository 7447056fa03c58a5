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
    n = len(graph)
    before = np.concatenate([[0.0], np.cumsum(_node_shares(graph))])  # share before node i
    bounds = np.cumsum(ratios)[:-1]
    cuts = [int(np.argmin(np.abs(before[1:n] - b))) + 1 for b in bounds]
    return _assign_from_cuts(n, _spread(cuts, n))


def live_bytes(graph: OpGraph) -> np.ndarray:
    """live[p] = bytes crossing a cut just before node p (tensors made before p, read at or after)."""
    n = len(graph)
    diff = np.zeros(n + 1, dtype=np.int64)
    for tensor, users in graph.consumers.items():
        src = graph.producer.get(tensor)
        if src is None:
            continue
        last = max(users)
        if last > src:
            diff[src + 1] += graph.nbytes(tensor)
            diff[last + 1] -= graph.nbytes(tensor)
    return np.cumsum(diff)[:n]


def best_split_points(graph: OpGraph, ratios: Sequence[float], window: float = 0.05) -> np.ndarray:
    """Each boundary at the fewest live bytes within ``window`` share points of its target."""
    n = len(graph)
    before = np.concatenate([[0.0], np.cumsum(_node_shares(graph))])
    live = live_bytes(graph)
    cuts: list[int] = []
    for bound in np.cumsum(ratios)[:-1]:
        positions = np.arange(1, n)
        close = positions[np.abs(before[1:n] - bound) <= window]
        if close.size == 0:
            close = positions[[int(np.argmin(np.abs(before[1:n] - bound)))]]
        cuts.append(int(close[np.argmin(live[close])]))
    return _assign_from_cuts(n, _spread(cuts, n))
