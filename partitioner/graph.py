"""ONNX model -> weighted op graph: what METIS and the baselines cut.

Vertices are the top-level nodes of the (normalized) model, in the model's own
order, which ONNX requires to be topological.  A node reads the tensors it
names as inputs plus the outer-scope names its If/Loop/Scan bodies use.  Edge
(u, v) carries the bytes of the tensors u produces and v reads, at a concrete
batch size.  Initializers are not edges: every part that reads one gets a copy.

Node weight is a cost in seconds for one processor kind (``arch``): profiled
(see :mod:`perfmodels.profile`) or, without a profile, a static FLOP estimate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from partitioner.errors import InternalError, UsageError
from partitioner.model_io import normalize, read_model, subgraph_outer_names
from partitioner.shapes import TensorSize, infer_sizes

# Nominal rate that turns a FLOP estimate into seconds; only ratios between nodes matter.
STATIC_FLOPS_PER_S = 1e10
STATIC_ARCH = "static"


@dataclass(frozen=True)
class OpNode:
    """One top-level node: ``inputs`` are the dynamic tensors it reads (no initializers)."""

    index: int
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class OpGraph:
    """The weighted graph of one model at one batch size.

    Fields:
        model: the normalized model the node indices refer to.
        batch: batch size the tensor sizes were computed at.
        nodes: vertices, ``nodes[i].index == i``, in topological order.
        inputs / outputs: the model's true graph inputs and its outputs.
        initializers: names of weights (never transfers).
        sizes: every dynamic tensor's size at ``batch``.
        producer: tensor -> index of the node that writes it.
        consumers: tensor -> indices of the nodes that read it (sorted).
        source_sha256: sha256 of the model as read (file bytes or serialized proto).
        cost_s: per node, seconds on ``arch``.
        arch / cost_source: which processor kind and how the costs were obtained.
    """

    model: onnx.ModelProto
    batch: int
    nodes: list[OpNode]
    inputs: list[str]
    outputs: list[str]
    initializers: frozenset[str]
    sizes: dict[str, TensorSize]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    source_sha256: str
    cost_s: np.ndarray
    arch: str
    cost_source: str
    _edges: dict[tuple[int, int], int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def nbytes(self, tensor: str) -> int:
        """Bytes of a dynamic tensor at this graph's batch."""
        return self.sizes[tensor].nbytes

    def edges(self) -> dict[tuple[int, int], int]:
        """(producer, consumer) -> bytes of the tensors between them; producer < consumer."""
        if self._edges is None:
            edges: dict[tuple[int, int], int] = {}
            for tensor, users in self.consumers.items():
                if tensor not in self.producer:
                    continue
                src = self.producer[tensor]
                for dst in users:
                    edges[(src, dst)] = edges.get((src, dst), 0) + self.nbytes(tensor)
            self._edges = edges
        return self._edges

    def predecessors(self) -> list[list[int]]:
        preds: list[list[int]] = [[] for _ in self.nodes]
        for src, dst in self.edges():
            preds[dst].append(src)
        return preds

    def successors(self) -> list[list[int]]:
        succs: list[list[int]] = [[] for _ in self.nodes]
        for src, dst in self.edges():
            succs[src].append(dst)
        return succs

    def with_costs(self, cost_s: Mapping[str, float], arch: str, source: str) -> OpGraph:
        """The same graph weighted by measured costs (node name -> seconds).

        Nodes missing from ``cost_s`` (e.g. fused away by ONNX Runtime) cost zero.
        """
        unknown = set(cost_s) - {n.name for n in self.nodes}
        if len(unknown) == len(cost_s) and cost_s:
            raise UsageError(
                "the costs file names none of this model's nodes; profile this very model "
                "with `hetsched profile MODEL --out costs.json`"
            )
        costs = np.array([max(0.0, float(cost_s.get(n.name, 0.0))) for n in self.nodes])
        return OpGraph(
            self.model, self.batch, self.nodes, self.inputs, self.outputs, self.initializers,
            self.sizes, self.producer, self.consumers, self.source_sha256, costs, arch, source,
            self._edges,
        )


def build_graph(
    source: str | os.PathLike[str] | bytes | onnx.ModelProto,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
) -> OpGraph:
    """Read, normalize and weigh a model (static FLOP costs until real costs are attached)."""
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    original, sha256 = read_model(source)
    model = normalize(original)
    graph = model.graph
    initializers = frozenset(t.name for t in graph.initializer)
    inputs = [v.name for v in graph.input if v.name not in initializers]
    nodes, producer, consumers = _vertices(graph, initializers)
    dynamic = [*inputs, *producer]
    sizes = infer_sizes(model, batch, dims, dynamic)
    costs = np.array([_static_flops(model, node, sizes) / STATIC_FLOPS_PER_S for node in nodes])
    return OpGraph(
        model, batch, nodes, inputs, [v.name for v in graph.output], initializers, sizes,
        producer, consumers, sha256, costs, STATIC_ARCH, "static-flops",
    )


def _vertices(
    graph: onnx.GraphProto, initializers: frozenset[str]
) -> tuple[list[OpNode], dict[str, int], dict[str, list[int]]]:
    nodes: list[OpNode] = []
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for index, proto in enumerate(graph.node):
        reads = [n for n in proto.input if n] + sorted(subgraph_outer_names(proto))
        reads = [n for n in dict.fromkeys(reads) if n not in initializers]
        for name in reads:
            if name in producer and producer[name] >= index:
                raise InternalError(f"node {proto.name!r} reads {name!r} before it is produced")
            consumers.setdefault(name, []).append(index)
        outputs = tuple(n for n in proto.output if n)
        for name in outputs:
            producer[name] = index
        nodes.append(OpNode(index, proto.name, proto.op_type, tuple(reads), outputs))
    return nodes, producer, consumers


def _static_flops(model: onnx.ModelProto, node: OpNode, sizes: Mapping[str, TensorSize]) -> float:
    """Rough FLOPs of a node: multiply-adds for Conv/MatMul/Gemm, one per output element otherwise."""
    out_elems = 0.0
    for name in node.outputs:
        shape = sizes[name].shape if name in sizes else None
        out_elems += float(np.prod(shape)) if shape is not None else 0.0
    proto = model.graph.node[node.index]
    if node.op_type in ("Conv", "ConvTranspose") and len(proto.input) > 1:
        weight = _initializer_shape(model, proto.input[1])
        if weight is not None:
            return 2.0 * out_elems * float(np.prod(weight[1:]))
    if node.op_type in ("MatMul", "Gemm") and proto.input[0] in sizes:
        shape = sizes[proto.input[0]].shape
        if shape:
            transposed = any(a.name == "transA" and a.i for a in proto.attribute)
            inner = shape[0] if transposed and len(shape) == 2 else shape[-1]
            return 2.0 * out_elems * float(inner)
    return out_elems


def _initializer_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...] | None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return tuple(tensor.dims)
    return None
