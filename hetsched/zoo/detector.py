"""A one-stage object detector: YOLOv8n as Ultralytics exports it to ONNX, at 320x320.

Why a detector in the zoo: it is the kind of model where the wide/narrow trade-off
is real.  Its many small convolutions on small feature maps scale poorly over
intra-op threads, so one instance per core sustains more than one wide session
(on the 2-core VM, Triton 2x1t about 40 req/s against 1x2t's 26-28:
bench/compare_triton.py, section compare_triton_detector of bench/RESULTS.md)
while the wide session has the lower latency when idle -- the choice a Triton
user must make once and hetsched makes per request.  It is also branchy: C2f blocks split and
concatenate, the neck joins three scales top-down and bottom-up, and the head
has two branches per scale, so METIS parts can form cycles.

The graph follows the export (opset 17): Conv with BN folded into its bias,
SiLU as ``x * Sigmoid(x)``, nearest ``Resize`` for upsampling, and the decoding
inside the graph (distribution focal loss as Softmax + a fixed 1x1 Conv, boxes
from anchor points and strides), so the output is ``[N, 84, 2100]``: 4 box
coordinates (cx, cy, w, h in pixels) and 80 class scores for each of the
40x40 + 20x20 + 10x10 anchors.
"""

from __future__ import annotations

import numpy as np

from hetsched.zoo.builder import GraphBuilder, conv

YOLO_SIZE = 320
YOLO_CLASSES = 80
YOLO_REG_MAX = 16  # bins of the box-side distribution (DFL)
YOLO_STRIDES = (8, 16, 32)


def conv_silu(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
    """Ultralytics' Conv: Conv (BN folded into the bias) -> SiLU."""
    y = conv(b, x, f"{name}.conv", cin, cout, k, stride, bias=True)
    s = b.add("Sigmoid", [y], f"{name}.sigmoid")
    return b.add("Mul", [y, s], f"{name}.silu")


def c2f(b: GraphBuilder, x: str, name: str, cin: int, cout: int, n: int, shortcut: bool) -> str:
    """CSP bottleneck with 2 convs: split in halves, n bottlenecks on the second, concat all."""
    c = cout // 2
    y = conv_silu(b, x, f"{name}.cv1", cin, 2 * c, 1)
    first, second = f"{name}.split.0", f"{name}.split.1"
    b.add("Split", [y, b.ints(f"{name}.split.sizes", [c, c])], f"{name}.split", outputs=[first, second],
          axis=1)
    parts = [first, second]
    for i in range(n):
        h = conv_silu(b, parts[-1], f"{name}.m.{i}.cv1", c, c, 3)
        h = conv_silu(b, h, f"{name}.m.{i}.cv2", c, c, 3)
        parts.append(b.add("Add", [parts[-1], h], f"{name}.m.{i}.add") if shortcut else h)
    joined = b.add("Concat", parts, f"{name}.concat", axis=1)
    return conv_silu(b, joined, f"{name}.cv2", (2 + n) * c, cout, 1)


def sppf(b: GraphBuilder, x: str, name: str, c: int, k: int = 5) -> str:
    """Spatial pyramid pooling, fast: three chained k x k max pools, concatenated."""
    half = c // 2
    y = conv_silu(b, x, f"{name}.cv1", c, half, 1)
    pools = [y]
    for i in range(3):
        pools.append(b.add("MaxPool", [pools[-1]], f"{name}.pool{i}", kernel_shape=[k, k], strides=[1, 1],
                           pads=[k // 2] * 4))
    joined = b.add("Concat", pools, f"{name}.concat", axis=1)
    return conv_silu(b, joined, f"{name}.cv2", 4 * half, c, 1)


def upsample(b: GraphBuilder, x: str, name: str) -> str:
    """Nearest-neighbour 2x upsampling, as ``nn.Upsample`` exports it."""
    scales = b.tensor(f"{name}.scales", np.array([1, 1, 2, 2], dtype=np.float32))
    return b.add("Resize", [x, "", scales], name, mode="nearest")


def detect_head(b: GraphBuilder, x: str, name: str, cin: int, finest: int = 64) -> str:
    """One scale's box and class branches, flattened to ``[N, 4 * reg_max + classes, H * W]``;
    branch widths follow Ultralytics' rule from the finest scale's ``finest`` channels."""
    box_c, cls_c = max(16, finest // 4, 4 * YOLO_REG_MAX), max(finest, min(YOLO_CLASSES, 100))
    box = conv_silu(b, x, f"{name}.box.0", cin, box_c, 3)
    box = conv_silu(b, box, f"{name}.box.1", box_c, box_c, 3)
    box = conv(b, box, f"{name}.box.2", box_c, 4 * YOLO_REG_MAX, 1, bias=True, gain=1.0)
    cls = conv_silu(b, x, f"{name}.cls.0", cin, cls_c, 3)
    cls = conv_silu(b, cls, f"{name}.cls.1", cls_c, cls_c, 3)
    cls = conv(b, cls, f"{name}.cls.2", cls_c, YOLO_CLASSES, 1, bias=True, gain=1.0)
    joined = b.add("Concat", [box, cls], f"{name}.concat", axis=1)
    width = 4 * YOLO_REG_MAX + YOLO_CLASSES
    return b.add("Reshape", [joined, b.ints(f"{name}.flat_shape", [0, width, -1])], f"{name}.flatten")


def anchors(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points (cell centres, ``[2, A]``) and their strides (``[1, A]``) over the three scales."""
    points, strides = [], []
    for stride in YOLO_STRIDES:
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells) + 0.5, np.arange(cells) + 0.5, indexing="ij")
        points.append(np.stack([xs.reshape(-1), ys.reshape(-1)]))
        strides.append(np.full((1, cells * cells), stride))
    return (np.concatenate(points, axis=1).astype(np.float32),
            np.concatenate(strides, axis=1).astype(np.float32))


def decode(b: GraphBuilder, raw: str) -> None:
    """DFL box decoding and class sigmoids into the graph output ``detections`` [N, 84, A]."""
    box_name, cls_name = "decode.box", "decode.cls"
    b.add("Split", [raw, b.ints("decode.split.sizes", [4 * YOLO_REG_MAX, YOLO_CLASSES])], "decode.split",
          outputs=[box_name, cls_name], axis=1)
    bins = b.add("Reshape", [box_name, b.ints("dfl.shape", [0, 4, YOLO_REG_MAX, -1])], "dfl.reshape")
    bins = b.add("Transpose", [bins], "dfl.transpose", perm=[0, 2, 1, 3])
    bins = b.add("Softmax", [bins], "dfl.softmax", axis=1)
    bin_values = np.arange(YOLO_REG_MAX, dtype=np.float32).reshape(1, YOLO_REG_MAX, 1, 1)
    expected = b.tensor("dfl.weight", bin_values)  # the 1x1 Conv takes each side's expected bin
    sides = b.add("Conv", [bins, expected], "dfl.conv", kernel_shape=[1, 1])
    sides = b.add("Reshape", [sides, b.ints("dfl.out_shape", [0, 4, -1])], "dfl.flatten")
    lt, rb = "decode.lt", "decode.rb"
    b.add("Split", [sides, b.ints("decode.sides", [2, 2])], "decode.split_sides", outputs=[lt, rb], axis=1)
    points, strides = anchors(YOLO_SIZE)
    anchor = b.tensor("decode.anchors", points)
    top_left = b.add("Sub", [anchor, lt], "decode.x1y1")
    bottom_right = b.add("Add", [anchor, rb], "decode.x2y2")
    centre = b.add("Add", [top_left, bottom_right], "decode.sum")
    centre = b.add("Div", [centre, b.scalar("decode.two", 2.0)], "decode.centre")
    size = b.add("Sub", [bottom_right, top_left], "decode.wh")
    boxes = b.add("Concat", [centre, size], "decode.boxes", axis=1)
    boxes = b.add("Mul", [boxes, b.tensor("decode.strides", strides)], "decode.pixels")
    scores = b.add("Sigmoid", [cls_name], "decode.scores")
    b.add("Concat", [boxes, scores], "detections", axis=1)
    b.output("detections", b.batched([4 + YOLO_CLASSES, points.shape[1]]))


def yolov8n(b: GraphBuilder) -> None:
    """YOLOv8n (depth 0.33, width 0.25): backbone to P5 with SPPF, PAN neck, decoupled head, decode."""
    x = b.input("images", b.batched([3, YOLO_SIZE, YOLO_SIZE]))
    x = conv_silu(b, x, "model.0", 3, 16, 3, 2)
    x = conv_silu(b, x, "model.1", 16, 32, 3, 2)
    x = c2f(b, x, "model.2", 32, 32, 1, shortcut=True)
    x = conv_silu(b, x, "model.3", 32, 64, 3, 2)
    p3 = c2f(b, x, "model.4", 64, 64, 2, shortcut=True)
    x = conv_silu(b, p3, "model.5", 64, 128, 3, 2)
    p4 = c2f(b, x, "model.6", 128, 128, 2, shortcut=True)
    x = conv_silu(b, p4, "model.7", 128, 256, 3, 2)
    x = c2f(b, x, "model.8", 256, 256, 1, shortcut=True)
    p5 = sppf(b, x, "model.9", 256)
    x = b.add("Concat", [upsample(b, p5, "model.10"), p4], "model.11", axis=1)
    n4 = c2f(b, x, "model.12", 384, 128, 1, shortcut=False)
    x = b.add("Concat", [upsample(b, n4, "model.13"), p3], "model.14", axis=1)
    out3 = c2f(b, x, "model.15", 192, 64, 1, shortcut=False)
    x = b.add("Concat", [conv_silu(b, out3, "model.16", 64, 64, 3, 2), n4], "model.17", axis=1)
    out4 = c2f(b, x, "model.18", 192, 128, 1, shortcut=False)
    x = b.add("Concat", [conv_silu(b, out4, "model.19", 128, 128, 3, 2), p5], "model.20", axis=1)
    out5 = c2f(b, x, "model.21", 384, 256, 1, shortcut=False)
    heads = [detect_head(b, out, f"model.22.{i}", c) for i, (out, c) in enumerate(((out3, 64), (out4, 128),
                                                                                   (out5, 256)))]
    decode(b, b.add("Concat", heads, "model.22.concat", axis=2))
