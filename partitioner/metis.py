"""k-way METIS on the op graph, with target part weights (tpwgts) = the asked ratios.

METIS sees an undirected graph with integer weights, so costs and bytes are
scaled to integers (relative precision ~1e-6, never zero), and parallel edges
(u->v and v->u never both exist in a DAG, but two tensors between one pair
may) are summed.  The result may have cyclic dependencies between parts; see
:mod:`partitioner.acyclic`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import pymetis

from partitioner.graph import OpGraph

_SCALE = 1_000_000
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _c_stdout_to_log() -> Iterator[None]:
    """METIS prints warnings ("too many parts") on the C stdout; send them to the log instead.

    The partitioner runs offline in one thread, so borrowing fd 1 briefly is safe.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.info("METIS: %s", " ".join(text.split()))


def scaled_vertex_weights(graph: OpGraph) -> list[int]:
    """Node costs as positive integers summing to about 1e6."""
    total = float(graph.cost_s.sum())
    if total <= 0:
        return [1] * len(graph)
    return [int(round(c / total * _SCALE)) + 1 for c in graph.cost_s]


def metis_assign(graph: OpGraph, ratios: Sequence[float], seed: int = 0) -> np.ndarray:
    """Part index per node from METIS k-way, k = len(ratios); deterministic for a seed."""
    k = len(ratios)
    if k == 1:
        return np.zeros(len(graph), dtype=np.int64)
    xadj, adjncy, eweights = _csr(graph)
    options = pymetis.Options(seed=seed, ncuts=4, niter=20)
    with _c_stdout_to_log():
        result = pymetis.part_graph(
            k,
            pymetis.CSRAdjacency(xadj, adjncy),
            vweights=scaled_vertex_weights(graph),
            eweights=eweights,
            tpwgts=[float(r) for r in ratios],
            options=options,
        )
    return np.asarray(result[1], dtype=np.int64)


def _csr(graph: OpGraph) -> tuple[list[int], list[int], list[int]]:
    edges = graph.edges()
    peak = max(edges.values(), default=1) or 1
    neighbours: list[dict[int, int]] = [{} for _ in graph.nodes]
    for (src, dst), nbytes in edges.items():
        weight = int(round(nbytes / peak * _SCALE)) + 1
        neighbours[src][dst] = neighbours[src].get(dst, 0) + weight
        neighbours[dst][src] = neighbours[dst].get(src, 0) + weight
    xadj = [0]
    adjncy: list[int] = []
    eweights: list[int] = []
    for adjacent in neighbours:
        for other in sorted(adjacent):
            adjncy.append(other)
            eweights.append(adjacent[other])
        xadj.append(len(adjncy))
    return xadj, adjncy, eweights
