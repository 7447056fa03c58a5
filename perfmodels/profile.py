"""Per-node CPU time of a model, measured with ONNX Runtime: the weights METIS balances.

Two methods (:data:`METHODS`), both on ``CPUExecutionProvider`` with the
session options a CPU worker runs with (``intra_op_num_threads=threads``,
one inter-op thread, sequential execution, all graph optimizations on):

``isolated`` (StarONNX's method)
    One run of the whole model with every intermediate tensor exposed as an
    output gives each node its real input values; then every node runs alone in
    a single-node model (:func:`partitioner.extract.build_submodel`) and is
    timed with ``perf_counter`` around ``session.run``.  Each node pays its own
    call overhead, its own layout reorders (NCHWc) and loses every fusion
    (BatchNormalization, Relu and Add run as separate kernels), so the sum
    overshoots the whole model.  One session per node makes it slow.

``ort-profile``
    ONNX Runtime's own profiler on the whole, optimized model: the
    ``<name>_kernel_time`` events of each run.  Its kernels are ORT's, not the
    model's, so each is mapped back to a model node (:class:`_OwnerIndex`):

    1. a kernel named exactly like a model node belongs to it;
    2. otherwise, to the model node or tensor whose name the kernel name
       contains as a whole token (longest wins): ORT names fused and
       re-laid-out kernels after a node or its output tensor
       (``layer1.0.relu1_nchwc``, ``blocks.0.attn.q.matmul/MatMulAddFusion``);
       when the kernel's op type (``Conv``, ``FusedConv`` -> ``Conv``,
       ``Gemm`` -> ``MatMul``) is not that node's, the nearest upstream node of
       that op type within three hops takes it (``relu1_nchwc`` is the Conv
       that Relu and BatchNormalization were fused into);
    3. kernels with generated names (``ReorderOutput_token_3``, ``Gelu_token_0``)
       are spread over the run's matched nodes in proportion to their time.

    Nodes fused away (or constant-folded) cost 0: their time is inside the
    kernel of the node that survived.  Kernels of If/Loop/Scan bodies nest inside their parent's
    kernel event and are dropped, as the parent's time already counts them.
    Per node, the median over the timed runs.  The whole-model time comes from
    a plain session whose runs alternate with the profiled ones, so both see
    the same machine load.

Why ``ort-profile`` is the default: on the zoo at batch 1, 1 thread (a shared
2-core x86 VM; measured by ``bench/profile_methods.py``, numbers in bench/RESULTS.md), its node
costs add up to the whole-model time within about 1 % on ResNet-18/50,
MobileNetV2, GoogLeNet, ViT-Tiny and VGG16, because they are the kernels that
really run.  The isolated sum lands anywhere from 0 % to +34 % on the same
models (unfused BatchNormalization/Relu/Add, per-node layout reorders and call
overhead, against whatever load the machine had while the sum was taken) and
2-6x over on models of microsecond nodes (LeNet-5, the control-flow stress
model), where per-call overhead dominates.  ``ort-profile`` is also about twice
as fast (ResNet-50: ~3 s against ~6 s), since it builds two sessions instead of
one per node.  Its own bias: the profiler adds a microsecond or two per kernel,
visible only on models made of microsecond kernels (LeNet-5: sum 1.2-1.4x).
``isolated`` stays for comparison with StarONNX and for runtimes whose kernel
names cannot be mapped back.

Only this module's functions import onnxruntime, lazily, so importing
:mod:`perfmodels` stays free of it.  The library never prints; progress goes
to the caller's ``progress(done, total)`` and details to ``logging``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from partitioner.errors import UsageError
from partitioner.extract import build_submodel
from partitioner.feeds import random_feeds
from partitioner.graph import OpGraph, OpNode
from perfmodels.costs import NodeCosts
from perfmodels.measure import WARMUP_RUNS, Feeds, Progress
from perfmodels.measure import cpu_session as _session
from perfmodels.measure import timed_runs as _timed_runs
from perfmodels.measure import warm_up as _warm_up

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["DEFAULT_METHOD", "METHODS", "NodeCosts", "profile"]

log = logging.getLogger(__name__)

METHODS: dict[str, str] = {
    "isolated": "each node alone in its own session (StarONNX); sum overshoots, loses fusions",
    "ort-profile": "ONNX Runtime's profiler on the whole optimized model, kernels mapped to nodes",
}
DEFAULT_METHOD = "ort-profile"


NODE_BUDGET_S = 0.05  # timed runs per node fit in this (isolated) ...
MODEL_BUDGET_S = 1.0  # ... or per whole model (ort-profile, whole-model time)


def profile(
    graph: OpGraph,
    method: str = DEFAULT_METHOD,
    threads: int = 1,
    repeats: int | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> NodeCosts:
    """Measure every node's CPU seconds at ``graph.batch`` with one of :data:`METHODS`.

    ``repeats`` fixes the number of timed runs (per node, or of the whole model);
    ``None`` adapts it to the budgets above so large models stay quick.
    ``progress(done, total)`` is called after each node (isolated) or each
    timed run (ort-profile).  Inputs are random (``seed``), which is what
    kernels' speed depends on for the float models we serve.
    """
    if method not in METHODS:
        raise UsageError(f"unknown profiling method {method!r}; choose one of {', '.join(METHODS)}")
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if repeats is not None and repeats < 1:
        raise UsageError(f"repeats must be >= 1 (or None to adapt), got {repeats}")
    feeds = random_feeds(graph.model, graph.batch, _input_dims(graph), seed)
    if method == "isolated":
        seconds, whole_s = _profile_isolated(graph, feeds, threads, repeats, progress)
    else:
        seconds, whole_s = _profile_ort(graph, feeds, threads, repeats, progress)
    digest = graph.source_sha256
    costs = NodeCosts(f"cpu:{threads}t", method, graph.batch, threads, seconds, whole_s, digest)
    log.info("profiled %d nodes with %s: sum %.3g s, whole model %.3g s",
             len(seconds), method, costs.total_s(), whole_s)
    return costs


def _whole_model_seconds(graph: OpGraph, feeds: Feeds, threads: int, repeats: int | None) -> float:
    """Median seconds of one plain (unprofiled) run of the whole model."""
    session = _session(graph.model, threads)
    runs = _warm_up(session, feeds, repeats, MODEL_BUDGET_S)
    return statistics.median(_timed_runs(session, feeds, runs))


def _input_dims(graph: OpGraph) -> dict[str, int]:
    """Symbolic input dims -> the sizes the graph was built with (so feeds match its shapes)."""
    dims: dict[str, int] = {}
    for value in graph.model.graph.input:
        size = graph.sizes.get(value.name)
        if size is None or size.shape is None:
            continue
        for dim, length in zip(value.type.tensor_type.shape.dim, size.shape):
            if dim.dim_param:
                dims.setdefault(dim.dim_param, length)
    return dims


# -- isolated ----------------------------------------------------------------------------


def _profile_isolated(graph: OpGraph, feeds: Feeds, threads: int, repeats: int | None,
                      progress: Progress | None) -> tuple[dict[str, float], float]:
    """Each node alone in its own session, fed the values it sees inside the model."""
    whole_s = _whole_model_seconds(graph, feeds, threads, repeats)
    values = _all_values(graph, feeds, threads)
    seconds: dict[str, float] = {}
    for node in graph.nodes:
        seconds[node.name] = _isolated_seconds(graph, node, values, threads, repeats)
        if progress is not None:
            progress(node.index + 1, len(graph.nodes))
    return seconds, whole_s


def _all_values(graph: OpGraph, feeds: Feeds, threads: int) -> dict[str, Any]:
    """Every graph input and top-level node output, from one run exposing them all.

    Holds all activations at once: memory grows with batch x depth.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(graph.model)
    declared = {v.name for v in probe.graph.output}
    names = [t for node in graph.nodes for t in node.outputs]
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in declared)
    session = _session(probe, threads)
    exposed = [v.name for v in probe.graph.output]
    return {**feeds, **dict(zip(exposed, session.run(exposed, feeds)))}


def _isolated_seconds(graph: OpGraph, node: OpNode, values: Mapping[str, Any], threads: int,
                      repeats: int | None) -> float:
    """Median seconds of ``node`` run alone; 0 (logged) if ORT cannot run it alone."""
    model = build_submodel(graph, [node.index], node.inputs, node.outputs, f"node_{node.index}")
    _set_io_types(model, values)
    feeds = {name: values[name] for name in node.inputs}
    try:
        session = _session(model, threads)
        runs = _warm_up(session, feeds, repeats, NODE_BUDGET_S)
        return statistics.median(_timed_runs(session, feeds, runs))
    except Exception as exc:  # onnxruntime raises its own exception types, not a common base
        log.warning("node %r (%s) cannot run alone (%s); its cost is set to 0",
                    node.name, node.op_type, str(exc).splitlines()[0] if str(exc) else exc)
        return 0.0


def _set_io_types(model: onnx.ModelProto, values: Mapping[str, Any]) -> None:
    """Give part inputs/outputs the element type their observed values have.

    ``build_submodel`` falls back to float for tensors shape inference could not
    type; the measured values know better, and ORT rejects a wrong declared type.
    """
    for value in [*model.graph.input, *model.graph.output]:
        array = values.get(value.name)
        if isinstance(array, np.ndarray) and value.type.HasField("tensor_type") \
                and array.dtype != np.dtype(object):
            value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(array.dtype)


# -- ort-profile -------------------------------------------------------------------------


def _profile_ort(graph: OpGraph, feeds: Feeds, threads: int, repeats: int | None,
                 progress: Progress | None) -> tuple[dict[str, float], float]:
    """ORT's kernel times over the timed runs, mapped back to model nodes (see module doc).

    Each profiled run is paired with a run of a plain, unprofiled session: the
    whole-model time is then taken under the same machine load as the kernels
    (other processes slow both alike) and without the profiler's overhead.
    """
    plain = _session(graph.model, threads)
    _warm_up(plain, feeds, repeats=1, budget_s=0.0)  # warm only: the rounds below time it
    with tempfile.TemporaryDirectory(prefix="hetsched-profile-") as tmp:
        session = _session(graph.model, threads, profile_prefix=os.path.join(tmp, "ort"))
        runs = _warm_up(session, feeds, repeats, MODEL_BUDGET_S / 2)  # two runs per round
        whole: list[float] = []
        for done in range(1, runs + 1):
            whole += _timed_runs(plain, feeds, 1)
            session.run(None, feeds)
            if progress is not None:
                progress(done, runs)
        events = _end_profiling(session)
    return _attribute(graph, _kernel_runs(events, skip=WARMUP_RUNS)), statistics.median(whole)


def _end_profiling(session: ort.InferenceSession) -> list[dict[str, Any]]:
    """Stop profiling and return the trace's events; the trace file is deleted."""
    trace_path = session.end_profiling()
    try:
        with open(trace_path, encoding="utf-8") as handle:
            events: list[dict[str, Any]] = json.load(handle)
    finally:
        os.remove(trace_path)
    return events


# -- ORT trace -> node costs ---------------------------------------------------------------

Kernel = dict[str, Any]  # one trace event: name, ts and dur (microseconds), args.op_name

# Op types ORT's fusions produce -> the model op types whose node names they keep.
_FUSED_FROM: dict[str, tuple[str, ...]] = {
    "FusedConv": ("Conv",),
    "FusedGemm": ("Gemm", "MatMul"),
    "Gemm": ("Gemm", "MatMul"),
    "FusedMatMul": ("MatMul",),
}
_UPSTREAM_HOPS = 3  # Conv <- BatchNormalization <- Add <- Relu: the longest fused chain we walk


def _kernel_runs(events: Iterable[Mapping[str, Any]], skip: int) -> list[list[Kernel]]:
    """Top-level kernel events of each ``model_run`` after the first ``skip`` (warm-up) runs."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip:]
    kernels = sorted(
        (dict(e) for e in events
         if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
        key=lambda e: (e["ts"], -e["dur"]),
    )
    starts = [run["ts"] for run in runs]
    grouped: list[list[Kernel]] = [[] for _ in runs]
    for kernel in kernels:
        at = bisect_right(starts, kernel["ts"]) - 1
        if at >= 0 and kernel["ts"] <= runs[at]["ts"] + runs[at]["dur"]:
            grouped[at].append(kernel)
    return [_top_level(run) for run in grouped]


def _top_level(kernels: list[Kernel]) -> list[Kernel]:
    """Drop kernels nested in an earlier one: If/Loop/Scan bodies, already in their parent's time.

    ``kernels`` are sorted by start, longer first on ties; sequential execution
    means a body's kernels lie wholly inside their control-flow node's event.
    """
    kept: list[Kernel] = []
    end = float("-inf")
    for kernel in kernels:
        if kernel["ts"] + kernel["dur"] <= end:
            continue
        kept.append(kernel)
        end = max(end, kernel["ts"] + kernel["dur"])
    return kept


def _attribute(graph: OpGraph, runs: list[list[Kernel]]) -> dict[str, float]:
    """Per node, the median over runs of the seconds of the kernels it owns (module doc)."""
    owners = _OwnerIndex(graph)
    table = np.zeros((max(len(runs), 1), len(graph.nodes)))
    unmatched: dict[str, float] = {}
    for row, kernels in zip(table, runs):
        stray_s = 0.0
        for kernel in kernels:
            seconds = float(kernel["dur"]) * 1e-6
            owner = owners.owner(kernel["name"].removesuffix("_kernel_time"),
                                 str(kernel.get("args", {}).get("op_name", "")))
            if owner is None:
                stray_s += seconds
                unmatched[kernel["name"]] = unmatched.get(kernel["name"], 0.0) + seconds
            else:
                row[owner] += seconds
        matched_s = row.sum()
        if matched_s > 0:
            row *= 1.0 + stray_s / matched_s
        elif len(row):
            row += stray_s / len(row)
    if unmatched:
        log.debug("spread %d unnamed kernels over matched nodes: %s", len(unmatched),
                  ", ".join(sorted(unmatched, key=unmatched.__getitem__, reverse=True)[:10]))
    if not any(runs):
        log.warning("ONNX Runtime's trace holds no kernel events; every node costs 0")
    medians = np.median(table, axis=0)
    return {node.name: float(medians[node.index]) for node in graph.nodes}


class _OwnerIndex:
    """Maps ORT kernel names back to model node indices; memoized, kernels repeat every run."""

    def __init__(self, graph: OpGraph) -> None:
        self.graph = graph
        labels = {t: i for t, i in graph.producer.items() if not t.isdigit()}  # "3" is everywhere
        labels.update((node.name, node.index) for node in graph.nodes)  # node names win
        self.by_name = {node.name: node.index for node in graph.nodes}
        self.labels = sorted(labels.items(), key=lambda item: -len(item[0]))
        self.op_types = {node.op_type for node in graph.nodes}
        self.cache: dict[tuple[str, str], int | None] = {}

    def owner(self, kernel: str, op_name: str) -> int | None:
        key = (kernel, op_name)
        if key not in self.cache:
            self.cache[key] = self._find(kernel, op_name)
        return self.cache[key]

    def _find(self, kernel: str, op_name: str) -> int | None:
        if kernel in self.by_name:
            return self.by_name[kernel]
        found = next((i for label, i in self.labels if _contains_token(kernel, label)), None)
        if found is None:
            return None
        wanted = {op_name, *_FUSED_FROM.get(op_name, (op_name.removeprefix("Fused"),))}
        if self.graph.nodes[found].op_type in wanted or not wanted & self.op_types:
            return found
        return self._upstream(found, wanted)

    def _upstream(self, start: int, wanted: set[str]) -> int:
        """Nearest node of a ``wanted`` op type feeding ``start``, else ``start`` itself."""
        queue = deque([(start, 0)])
        seen = {start}
        while queue:
            index, hops = queue.popleft()
            if self.graph.nodes[index].op_type in wanted:
                return index
            if hops == _UPSTREAM_HOPS:
                continue
            for tensor in self.graph.nodes[index].inputs:
                source = self.graph.producer.get(tensor)
                if source is not None and source not in seen:
                    seen.add(source)
                    queue.append((source, hops + 1))
        return start


def _contains_token(text: str, name: str) -> bool:
    """Whether ``name`` occurs in ``text`` not glued to letters or digits (``conv1`` is not in
    ``conv10``), so short tensor names do not match every kernel."""
    start = text.find(name)
    while start >= 0:
        end = start + len(name)
        before_ok = start == 0 or not text[start - 1].isalnum()
        after_ok = end == len(text) or not text[end].isalnum()
        if before_ok and after_ok:
            return True
        start = text.find(name, start + 1)
    return False
