"""The model zoo: ONNX models built in code, with deterministic random weights.

Why build instead of download: the partitioner, the perf models and the demo
need real architectures at real sizes (and a few small models that each stress
one partitioning hazard) on machines with no network and no weight files.
Weights are random but seeded per model, so the same call gives the same bytes
and any measurement or plan can be reproduced; they are scaled so that outputs
stay finite, which is all a scheduler needs of them.

Every model uses opset 17 and IR version 8; its first axis of every graph
input and output is the batch, named ``N`` unless ``build(name, batch=...)``
fixes it.

Usage::

    from hetsched import zoo
    model = zoo.build("resnet18")     # onnx.ModelProto, input [N, 3, 224, 224]
    zoo.describe("control-flow")      # one line: what it is, what it stresses
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import NamedTuple

import onnx

from hetsched.zoo import cnn, detector, ocr, stress, transformer
from hetsched.zoo.builder import BATCH_DIM, IR_VERSION, OPSET, GraphBuilder
from partitioner.errors import UsageError

__all__ = ["BATCH_DIM", "IR_VERSION", "NAMES", "OPSET", "build", "describe"]


class _Entry(NamedTuple):
    """How to build one zoo model, and the line ``describe`` returns for it."""

    define: Callable[[GraphBuilder], None]
    description: str


_ZOO: dict[str, _Entry] = {
    "lenet5": _Entry(cnn.lenet5, (
        "LeNet-5: 3 tanh convs + 2 FCs on 1x32x32, 10 classes; a tiny pure chain")),
    "resnet18": _Entry(cnn.resnet18, (
        "ResNet-18: basic blocks [2,2,2,2] with unfused BN, 224x224, 1000 classes; "
        "chain with short skips")),
    "resnet50": _Entry(cnn.resnet50, (
        "ResNet-50 v1.5: bottlenecks [3,4,6,3] with unfused BN, 224x224, 1000 classes; "
        "the standard CNN benchmark")),
    "vgg16": _Entry(cnn.vgg16, (
        "VGG16: 13 convs + FCs 25088-4096-4096-1000, 224x224; ~550 MB of weights, "
        "90% in the FCs: stresses memory, transfers and weight-heavy parts")),
    "mobilenetv2": _Entry(cnn.mobilenetv2, (
        "MobileNetV2 1.0: inverted residuals with depthwise (group) convs and ReLU6, "
        "224x224, 1000 classes; many cheap, memory-bound nodes")),
    "googlenet": _Entry(cnn.googlenet, (
        "GoogLeNet (Inception v1, with BN, no aux heads): 9 modules of 4 parallel "
        "branches joined by Concat; branchy graph where METIS parts can form cycles")),
    "nfnet-f0-like": _Entry(cnn.nfnet_f0_like, (
        "NFNet-F0-like: normalizer-free ResNet, baked weight-standardized grouped convs, "
        "gamma-GELU (Erf), squeeze-excite, skip gains; depth reduced to (1,1,2,1) "
        "from F0's (1,2,6,3)")),
    "vit-tiny": _Entry(transformer.vit_tiny, (
        "ViT-Tiny/16: 12 pre-norm blocks, dim 192, 3 heads, MLP 768, class token, "
        "224x224, 1000 classes; attention diamonds on a constant-width residual stream")),
    "yolov8n": _Entry(detector.yolov8n, (
        "YOLOv8n detector as exported: C2f/SPPF backbone, PAN neck over 3 scales, decoupled "
        "head, DFL decoding in the graph, 320x320 -> [N, 84, 2100]; branchy, and scales poorly "
        "over threads (one instance per core outruns one wide session)")),
    "ocr-mobile": _Entry(ocr.ocr_mobile, (
        "mobile text-line recognizer after PaddleOCR's rec_mv3_none_bilstm_ctc: MobileNetV3 "
        "x0.5 over a 3x32x320 line, the map turned into 80 time steps, a 2-layer BiLSTM "
        "(hidden 96), CTC head over 97 classes -> [N, 80, 97]; scales poorly over threads")),
    "control-flow": _Entry(stress.control_flow, (
        "stress: If (cond from sum(x) > 0) and Loop (trip count min(N+1, 4)) whose bodies "
        "read outer-scope tensors and initializers, MLP work before, between, after")),
    "multi-io": _Entry(stress.multi_io, (
        "stress: float32 + int64 (Gather embedding, Cast) inputs, 3 outputs, the output "
        "'embedding' also consumed inside the graph")),
    "shared-weight": _Entry(stress.shared_weight, (
        "stress: one MatMul weight used at both ends of a chain, one bias shared by two "
        "parallel branches")),
    "constant-weights": _Entry(stress.constant_weights, (
        "stress: 3 convs + MatMul whose weights live in Constant nodes (PaddleOCR-style), "
        "no initializers")),
    "wrong-shapes": _Entry(stress.wrong_shapes, (
        "stress: Reshapes to runtime-computed targets (Shape->Gather(->Div)->Concat) and a "
        "graph output declared [N,3] that really is [N,5]; passes the full checker, ORT runs "
        "it with a warning")),
}

NAMES: tuple[str, ...] = tuple(_ZOO)


def _entry(name: str) -> _Entry:
    """The zoo entry for ``name``, or a UsageError that lists the valid names."""
    try:
        return _ZOO[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown zoo model {name!r}; valid names: {', '.join(NAMES)}"
        ) from None


def describe(name: str) -> str:
    """One line: the architecture and what it stresses in partitioning and scheduling."""
    return _entry(name).description


def seed_of(name: str) -> int:
    """The model's weight seed: a stable hash of its name (not Python's salted ``hash``)."""
    return zlib.crc32(name.encode())


def build(name: str, batch: int | None = None) -> onnx.ModelProto:
    """Build zoo model ``name``: batch axis ``N`` when ``batch`` is None, else fixed.

    Deterministic: the same arguments give a byte-identical serialized model.
    """
    entry = _entry(name)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                              or batch < 1):
        raise UsageError(f"batch must be a positive int or None, got {batch!r}")
    builder = GraphBuilder(seed_of(name), batch)
    entry.define(builder)
    return builder.model(name, entry.description)
