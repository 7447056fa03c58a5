"""A mobile text-line recognizer, after PaddleOCR's ``rec_mv3_none_bilstm_ctc``.

Why an OCR model in the zoo: it is the other kind of model (with the
detector) where the wide/narrow trade-off is real.  A mobile recognizer is
built to be cheap per line, so each layer is small: depthwise convolutions
over a 32-pixel-high strip, squeeze-excite gates, and then a bidirectional
LSTM stepping over 80 columns one at a time, each step a 96-wide
matrix-vector product too small to share among threads.  A second intra-op
thread buys less than a second instance on the other core (bench/thread_scaling.py).  The graph
is a conv chain, a bend (the feature map becomes a sequence: Squeeze and
Transpose put time first, as ONNX's LSTM wants), then the recurrent chain, so
a partitioner can put the convolutions and the recurrence on different
processors.

Sizes are PaddleOCR's English recognizer: a 3x32x320 line image;
MobileNetV3-large at scale 0.5 whose down-sampling strides halve the height
but keep the width (stride (2, 1)), so 80 time steps survive the final 2x2
max pool; batch norm folded into the conv biases, as an inference export has
it; a 2-layer BiLSTM with hidden size 96; a linear CTC head over 97 classes
(95 printable characters, space and the blank) and the per-step Softmax the
export ends with.  The output is ``[N, 80, 97]``; CTC decoding is left to the
caller.
"""

from __future__ import annotations

import math

from hetsched.zoo.builder import GraphBuilder, conv, relu, squeeze_excite

LINE_HEIGHT = 32
LINE_WIDTH = 320
STEPS = LINE_WIDTH // 4  # the stem halves the width and the last max pool halves it again
HIDDEN = 96
CLASSES = 97  # 95 printable ASCII characters, space, and the CTC blank
BACKBONE_OUT = 480  # MobileNetV3-large's last conv (960) at scale 0.5

# MobileNetV3-large at scale 0.5 as PaddleOCR's recognizer configures it:
# (kernel, expanded channels, out channels, squeeze-excite, activation, stride).
# A (2, 1) stride halves the height and keeps the width.
_BLOCKS: list[tuple[int, int, int, bool, str, int | tuple[int, int]]] = [
    (3, 8, 8, False, "relu", 1),
    (3, 32, 16, False, "relu", (2, 1)),
    (3, 40, 16, False, "relu", 1),
    (5, 40, 24, True, "relu", (2, 1)),
    (5, 64, 24, True, "relu", 1),
    (5, 64, 24, True, "relu", 1),
    (3, 120, 40, False, "hardswish", 1),
    (3, 104, 40, False, "hardswish", 1),
    (3, 96, 40, False, "hardswish", 1),
    (3, 96, 40, False, "hardswish", 1),
    (3, 240, 56, True, "hardswish", 1),
    (3, 336, 56, True, "hardswish", 1),
    (5, 336, 80, True, "hardswish", (2, 1)),
    (5, 480, 80, True, "hardswish", 1),
    (5, 480, 80, True, "hardswish", 1),
]


def _act(b: GraphBuilder, x: str, name: str, kind: str) -> str:
    if kind == "relu":
        return relu(b, x, f"{name}.relu")
    return b.add("HardSwish", [x], f"{name}.hardswish")


def _conv_act(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, kind: str,
              stride: int | tuple[int, int] = 1, group: int = 1) -> str:
    """Conv with its batch norm folded into the bias (an inference export), then ``kind``."""
    return _act(b, conv(b, x, f"{name}.conv", cin, cout, k, stride, group, bias=True), name, kind)


def _residual_unit(b: GraphBuilder, x: str, name: str, cin: int, block: tuple) -> str:
    """Expand 1x1, depthwise kxk (with the stride), optional gate, project 1x1, shortcut."""
    k, mid, cout, se, kind, stride = block
    y = _conv_act(b, x, f"{name}.expand", cin, mid, 1, kind)
    y = _conv_act(b, y, f"{name}.depthwise", mid, mid, k, kind, stride, group=mid)
    if se:
        y = squeeze_excite(b, y, f"{name}.se", mid, reduction=4, hard=True)
    y = conv(b, y, f"{name}.linear.conv", mid, cout, 1, bias=True, gain=1.0)
    if stride == 1 and cin == cout:
        y = b.add("Add", [x, y], f"{name}.add")
    return y


def _backbone(b: GraphBuilder, image: str) -> str:
    """[N, 3, 32, 320] -> [N, 480, 1, 80]."""
    x = _conv_act(b, image, "backbone.conv1", 3, 8, 3, "hardswish", stride=2)
    cin = 8
    for i, block in enumerate(_BLOCKS):
        x = _residual_unit(b, x, f"backbone.blocks.{i}", cin, block)
        cin = block[2]
    x = _conv_act(b, x, "backbone.conv2", cin, BACKBONE_OUT, 1, "hardswish")
    return b.add("MaxPool", [x], "backbone.pool", kernel_shape=[2, 2], strides=[2, 2])


def _bilstm_layer(b: GraphBuilder, x: str, name: str, fin: int) -> str:
    """One bidirectional LSTM layer: [T, N, fin] -> [T, N, 2*HIDDEN].

    ONNX's LSTM gives Y as [T, 2, N, H]; the export transposes it to
    [T, N, 2, H] and folds the two directions into 2H features.
    """
    std = 1.0 / math.sqrt(HIDDEN)  # the frameworks' LSTM init: uniform(-1/sqrt(H), 1/sqrt(H))
    w = b.weight(f"{name}.weight_ih", (2, 4 * HIDDEN, fin), std)
    r = b.weight(f"{name}.weight_hh", (2, 4 * HIDDEN, HIDDEN), std)
    bias = b.weight(f"{name}.bias", (2, 8 * HIDDEN), std)
    y = b.add("LSTM", [x, w, r, bias], name, outputs=[f"{name}.y"],
              direction="bidirectional", hidden_size=HIDDEN)
    y = b.add("Transpose", [y], f"{name}.transpose", perm=[0, 2, 1, 3])
    return b.add("Reshape", [y, b.ints("lstm.fold_directions", [0, 0, -1])], f"{name}.fold")


def ocr_mobile(b: GraphBuilder) -> None:
    """Mobile recognizer: MobileNetV3 strip backbone, map to sequence, 2-layer BiLSTM, CTC head."""
    image = b.input("input", b.batched([3, LINE_HEIGHT, LINE_WIDTH]))
    x = _backbone(b, image)
    x = b.add("Squeeze", [x, b.ints("neck.height_axis", [2])], "neck.squeeze")  # [N, 480, 80]
    x = b.add("Transpose", [x], "neck.to_sequence", perm=[2, 0, 1])  # [80, N, 480]: time first
    x = _bilstm_layer(b, x, "neck.lstm.0", BACKBONE_OUT)
    x = _bilstm_layer(b, x, "neck.lstm.1", 2 * HIDDEN)
    x = b.add("Transpose", [x], "neck.to_batch", perm=[1, 0, 2])  # [N, 80, 192]
    w = b.weight("head.fc.weight", (2 * HIDDEN, CLASSES), 1.0 / math.sqrt(2 * HIDDEN))
    x = b.add("MatMul", [x, w], "head.fc.matmul")
    x = b.add("Add", [x, b.weight("head.fc.bias", (CLASSES,), 0.01)], "head.fc.add")
    b.add("Softmax", [x], "probs", axis=-1)
    b.output("probs", b.batched([STEPS, CLASSES]))
