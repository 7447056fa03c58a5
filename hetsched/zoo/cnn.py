"""Convolutional classifiers at their standard sizes, as unfused PyTorch exports look.

They span the shapes a partitioner meets: plain chains (LeNet-5, VGG16, whose
weights sit in a few huge FC layers), chains with short skips (ResNets,
MobileNetV2 with depthwise convs), and wide branchy graphs (GoogLeNet's four
parallel Inception branches).  BatchNormalization stays unfused on purpose:
real exports carry it, and ONNX Runtime fuses it into the conv at session
time, which the perf models must learn.  Names follow torchvision's module
names so plans read like the PyTorch model.

Every function takes a fresh :class:`GraphBuilder` and declares the graph's
input ``input`` and output ``logits``.
"""

from __future__ import annotations

import numpy as np

from hetsched.zoo.builder import (
    GraphBuilder,
    batch_norm,
    classifier_head,
    conv,
    conv_bn_relu,
    gelu,
    linear,
    relu,
    squeeze_excite,
)

IMAGENET_CLASSES = 1000
RESIDUAL_GAMMA = 0.2  # BN scale ending a residual branch: keeps 16-block sums in range


def image_input(b: GraphBuilder, channels: int = 3, size: int = 224) -> str:
    """The NCHW image input ``input``."""
    return b.input("input", b.batched([channels, size, size]))


def max_pool(b: GraphBuilder, x: str, name: str, k: int, stride: int, pad: int = 0,
             ceil: bool = False) -> str:
    """MaxPool with square kernel; ``ceil`` as torchvision's GoogLeNet uses it."""
    return b.add("MaxPool", [x], name, kernel_shape=[k, k], strides=[stride, stride],
                 pads=[pad] * 4, ceil_mode=int(ceil))


# -- LeNet-5 ------------------------------------------------------------------------


def lenet5(b: GraphBuilder) -> None:
    """LeCun 1998: 3 tanh convs with average pooling, 2 FCs, 32x32 grey input, 10 classes."""
    x = image_input(b, channels=1, size=32)
    for i, (cin, cout) in enumerate([(1, 6), (6, 16)], start=1):
        x = conv(b, x, f"conv{i}", cin, cout, 5, bias=True, gain=1.0, pad=0)
        x = b.add("Tanh", [x], f"tanh{i}")
        x = b.add("AveragePool", [x], f"pool{i}", kernel_shape=[2, 2], strides=[2, 2])
    x = conv(b, x, "conv3", 16, 120, 5, bias=True, gain=1.0, pad=0)
    x = b.add("Tanh", [x], "tanh3")
    x = b.add("Flatten", [x], "flatten", axis=1)
    x = linear(b, x, "fc1", 120, 84)
    x = b.add("Tanh", [x], "tanh4")
    linear(b, x, "fc2", 84, 10, output="logits")
    b.output("logits", b.batched([10]))


# -- VGG16 --------------------------------------------------------------------------

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(b: GraphBuilder) -> None:
    """Simonyan & Zisserman config D: 13 3x3 convs, 5 max pools, FCs 25088-4096-4096-1000."""
    x = image_input(b)
    cin, index = 3, 0
    for item in VGG16_CONFIG:
        if item == "M":
            x = max_pool(b, x, f"features.{index}", 2, 2)
            index += 1
            continue
        cout = int(item)
        x = conv(b, x, f"features.{index}", cin, cout, 3, bias=True)
        x = relu(b, x, f"features.{index + 1}")
        cin, index = cout, index + 2
    x = b.add("Flatten", [x], "flatten", axis=1)
    x = relu(b, linear(b, x, "classifier.0", 512 * 7 * 7, 4096, gain=2.0), "classifier.1")
    x = relu(b, linear(b, x, "classifier.3", 4096, 4096, gain=2.0), "classifier.4")
    linear(b, x, "classifier.6", 4096, IMAGENET_CLASSES, output="logits")
    b.output("logits", b.batched([IMAGENET_CLASSES]))


# -- ResNets ------------------------------------------------------------------------


def resnet_stem(b: GraphBuilder, x: str) -> str:
    """7x7/2 conv, BN, ReLU, 3x3/2 max pool: 224 -> 56."""
    x = conv(b, x, "conv1", 3, 64, 7, stride=2)
    x = relu(b, batch_norm(b, x, "bn1", 64), "relu")
    return max_pool(b, x, "maxpool", 3, 2, pad=1)


def shortcut(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    """Identity, or the 1x1 strided conv + BN ``downsample`` when the shape changes."""
    if stride == 1 and cin == cout:
        return x
    y = conv(b, x, f"{name}.downsample.0", cin, cout, 1, stride=stride)
    return batch_norm(b, y, f"{name}.downsample.1", cout)


def basic_block(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    """ResNet-18/34 block: two 3x3 convs and a skip."""
    y = conv(b, x, f"{name}.conv1", cin, cout, 3, stride=stride)
    y = relu(b, batch_norm(b, y, f"{name}.bn1", cout), f"{name}.relu1")
    y = conv(b, y, f"{name}.conv2", cout, cout, 3)
    y = batch_norm(b, y, f"{name}.bn2", cout, gamma=RESIDUAL_GAMMA)
    y = b.add("Add", [y, shortcut(b, x, name, cin, cout, stride)], f"{name}.add")
    return relu(b, y, f"{name}.relu2")


def bottleneck(b: GraphBuilder, x: str, name: str, cin: int, width: int, stride: int) -> str:
    """ResNet-50 v1.5 block: 1x1 reduce, 3x3 (strided), 1x1 expand x4, and a skip."""
    cout = width * 4
    y = conv(b, x, f"{name}.conv1", cin, width, 1)
    y = relu(b, batch_norm(b, y, f"{name}.bn1", width), f"{name}.relu1")
    y = conv(b, y, f"{name}.conv2", width, width, 3, stride=stride)
    y = relu(b, batch_norm(b, y, f"{name}.bn2", width), f"{name}.relu2")
    y = conv(b, y, f"{name}.conv3", width, cout, 1)
    y = batch_norm(b, y, f"{name}.bn3", cout, gamma=RESIDUAL_GAMMA)
    y = b.add("Add", [y, shortcut(b, x, name, cin, cout, stride)], f"{name}.add")
    return relu(b, y, f"{name}.relu3")


def resnet18(b: GraphBuilder) -> None:
    """He et al. 2016, 18 layers: basic blocks [2, 2, 2, 2], widths 64-512."""
    x = resnet_stem(b, image_input(b))
    cin = 64
    for stage, width in enumerate([64, 128, 256, 512], start=1):
        for i in range(2):
            stride = 2 if stage > 1 and i == 0 else 1
            x = basic_block(b, x, f"layer{stage}.{i}", cin, width, stride)
            cin = width
    classifier_head(b, x, 512, IMAGENET_CLASSES)


def resnet50(b: GraphBuilder) -> None:
    """He et al. 2016, 50 layers: bottlenecks [3, 4, 6, 3], output width 2048."""
    x = resnet_stem(b, image_input(b))
    cin = 64
    for stage, (width, depth) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3]), start=1):
        for i in range(depth):
            stride = 2 if stage > 1 and i == 0 else 1
            x = bottleneck(b, x, f"layer{stage}.{i}", cin, width, stride)
            cin = width * 4
    classifier_head(b, x, 2048, IMAGENET_CLASSES)


# -- MobileNetV2 --------------------------------------------------------------------

# expansion t, output channels c, repeats n, first stride s (Sandler et al. table 2)
MOBILENETV2_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def relu6(b: GraphBuilder, x: str, name: str) -> str:
    """ReLU6 as Clip with shared min/max scalars, as PyTorch exports it."""
    return b.add("Clip", [x, b.scalar("relu6.min", 0.0), b.scalar("relu6.max", 6.0)], name)


def conv_bn_relu6(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int,
                  stride: int = 1, group: int = 1) -> str:
    """torchvision's Conv2dNormActivation with ReLU6 (submodules .0 conv, .1 bn, .2 act)."""
    y = conv(b, x, f"{name}.0", cin, cout, k, stride=stride, group=group)
    y = batch_norm(b, y, f"{name}.1", cout)
    return relu6(b, y, f"{name}.2")


def inverted_residual(b: GraphBuilder, x: str, name: str, cin: int, cout: int,
                      stride: int, expand: int) -> str:
    """1x1 expand, 3x3 depthwise (group = channels), linear 1x1 project, skip when shapes match."""
    hidden, y, i = cin * expand, x, 0
    if expand != 1:
        y = conv_bn_relu6(b, y, f"{name}.conv.{i}", cin, hidden, 1)
        i += 1
    y = conv_bn_relu6(b, y, f"{name}.conv.{i}", hidden, hidden, 3, stride=stride, group=hidden)
    y = conv(b, y, f"{name}.conv.{i + 1}", hidden, cout, 1, gain=1.0)
    residual = stride == 1 and cin == cout
    y = batch_norm(b, y, f"{name}.conv.{i + 2}", cout,
                   gamma=RESIDUAL_GAMMA if residual else 1.0)
    return b.add("Add", [x, y], f"{name}.add") if residual else y


def mobilenetv2(b: GraphBuilder) -> None:
    """Sandler et al. 2018, width 1.0: 17 inverted residual blocks, 1280-wide last conv."""
    x = conv_bn_relu6(b, image_input(b), "features.0", 3, 32, 3, stride=2)
    cin, index = 32, 1
    for expand, cout, repeats, first_stride in MOBILENETV2_CONFIG:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            x = inverted_residual(b, x, f"features.{index}", cin, cout, stride, expand)
            cin, index = cout, index + 1
    x = conv_bn_relu6(b, x, f"features.{index}", cin, 1280, 1)
    classifier_head(b, x, 1280, IMAGENET_CLASSES)


# -- GoogLeNet ----------------------------------------------------------------------

# in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj (Szegedy et al. table 1)
INCEPTION_CONFIG = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}
GOOGLENET_BN_EPS = 1e-3


def inception(b: GraphBuilder, x: str, name: str) -> str:
    """Four parallel branches (1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1) joined by Concat."""
    cin, c1, r3, c3, r5, c5, pool_proj = INCEPTION_CONFIG[name]
    eps = GOOGLENET_BN_EPS
    b1 = conv_bn_relu(b, x, f"{name}.branch1", cin, c1, 1, eps=eps)
    b2 = conv_bn_relu(b, x, f"{name}.branch2.0", cin, r3, 1, eps=eps)
    b2 = conv_bn_relu(b, b2, f"{name}.branch2.1", r3, c3, 3, eps=eps)
    b3 = conv_bn_relu(b, x, f"{name}.branch3.0", cin, r5, 1, eps=eps)
    b3 = conv_bn_relu(b, b3, f"{name}.branch3.1", r5, c5, 5, eps=eps)
    b4 = max_pool(b, x, f"{name}.branch4.0", 3, 1, pad=1, ceil=True)
    b4 = conv_bn_relu(b, b4, f"{name}.branch4.1", cin, pool_proj, 1, eps=eps)
    return b.add("Concat", [b1, b2, b3, b4], f"{name}.concat", axis=1)


def googlenet(b: GraphBuilder) -> None:
    """Szegedy et al. 2015 (Inception v1) with BN, 9 Inception modules, no auxiliary heads."""
    eps = GOOGLENET_BN_EPS
    x = conv_bn_relu(b, image_input(b), "conv1", 3, 64, 7, stride=2, eps=eps)
    x = max_pool(b, x, "maxpool1", 3, 2, ceil=True)
    x = conv_bn_relu(b, x, "conv2", 64, 64, 1, eps=eps)
    x = conv_bn_relu(b, x, "conv3", 64, 192, 3, eps=eps)
    x = max_pool(b, x, "maxpool2", 3, 2, ceil=True)
    for name in INCEPTION_CONFIG:
        x = inception(b, x, name)
        if name in ("inception3b", "inception4e"):
            pool = "maxpool3" if name == "inception3b" else "maxpool4"
            k = 3 if name == "inception3b" else 2
            x = max_pool(b, x, pool, k, 2, ceil=True)
    classifier_head(b, x, 1024, IMAGENET_CLASSES)


# -- NFNet-F0-like ------------------------------------------------------------------

NF_ALPHA = 0.2  # residual branch scale
NF_GAMMA = 1.7015043497085571  # GELU gamma: keeps activations at unit variance without BN
NF_WIDTHS = (256, 512, 1536, 1536)
NF_DEPTHS = (1, 1, 2, 1)  # F0 has (1, 2, 6, 3); reduced to keep the model small
NF_GROUP_WIDTH = 128


def ws_conv(b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int,
            stride: int = 1, group: int = 1) -> str:
    """Scaled weight-standardized conv with the standardization baked into the weights.

    Each output filter has zero mean and norm 1 over its fan-in, which is what
    ScaledStdConv2d computes on the fly; the export carries the result.
    """
    fan_in = cin // group * k * k
    w = b.rng.random((cout, cin // group, k, k), dtype=np.float32)
    w -= w.mean(axis=(1, 2, 3), keepdims=True)
    w /= w.std(axis=(1, 2, 3), keepdims=True) * (fan_in ** 0.5)
    weight = b.tensor(f"{name}.weight", w)
    bias = b.weight(f"{name}.bias", (cout,), 0.01)
    return b.add("Conv", [x, weight, bias], name, kernel_shape=[k, k],
                 strides=[stride, stride], pads=[k // 2] * 4, group=group)


def nf_act(b: GraphBuilder, x: str, name: str) -> str:
    """gamma * GELU(x), the NFNet activation (GELU written with Erf)."""
    y = gelu(b, x, f"{name}.gelu")
    return b.add("Mul", [y, b.scalar("nf.gelu_gamma", NF_GAMMA)], f"{name}.gamma")


def nf_block(b: GraphBuilder, x: str, name: str, cin: int, cout: int, stride: int,
             beta: float) -> str:
    """NF-ResNet bottleneck: x + alpha * skip_gain * 2 * SE(convs(act(x) * beta))."""
    out = b.add("Mul", [nf_act(b, x, f"{name}.act1"), b.scalar(f"{name}.beta", beta)],
                f"{name}.beta_scale")
    skip = x
    if stride > 1 or cin != cout:
        skip = out
        if stride > 1:
            skip = b.add("AveragePool", [skip], f"{name}.downsample.pool", kernel_shape=[2, 2],
                         strides=[2, 2], ceil_mode=1, count_include_pad=0)
        skip = ws_conv(b, skip, f"{name}.downsample.conv", cin, cout, 1)
    mid = cout // 2
    groups = mid // NF_GROUP_WIDTH
    y = ws_conv(b, out, f"{name}.conv1", cin, mid, 1)
    y = ws_conv(b, nf_act(b, y, f"{name}.act2"), f"{name}.conv2", mid, mid, 3, stride, groups)
    y = ws_conv(b, nf_act(b, y, f"{name}.act2b"), f"{name}.conv2b", mid, mid, 3, 1, groups)
    y = ws_conv(b, nf_act(b, y, f"{name}.act3"), f"{name}.conv3", mid, cout, 1)
    y = squeeze_excite(b, y, f"{name}.attn_last", cout)
    gain = float(b.rng.uniform(0.5, 1.0))  # learned skipinit gain (0 at init, O(1) trained)
    y = b.add("Mul", [y, b.scalar("nf.attn_gain", 2.0)], f"{name}.attn_gain_scale")
    y = b.add("Mul", [y, b.scalar(f"{name}.skipinit_gain", gain)], f"{name}.skipinit_scale")
    y = b.add("Mul", [y, b.scalar("nf.alpha", NF_ALPHA)], f"{name}.alpha_scale")
    return b.add("Add", [y, skip], f"{name}.add")


def nfnet_f0_like(b: GraphBuilder) -> None:
    """Brock et al. 2021 NFNet-F0 structure at reduced depth: (1, 1, 2, 1), not (1, 2, 6, 3)."""
    x = image_input(b)
    x = ws_conv(b, x, "stem.conv1", 3, 16, 3, stride=2)
    x = ws_conv(b, nf_act(b, x, "stem.act2"), "stem.conv2", 16, 32, 3)
    x = ws_conv(b, nf_act(b, x, "stem.act3"), "stem.conv3", 32, 64, 3)
    x = ws_conv(b, nf_act(b, x, "stem.act4"), "stem.conv4", 64, 128, 3, stride=2)
    cin, expected_var = 128, 1.0
    for stage, (cout, depth) in enumerate(zip(NF_WIDTHS, NF_DEPTHS)):
        for i in range(depth):
            stride = 2 if stage > 0 and i == 0 else 1
            if i == 0:
                expected_var = 1.0  # a transition block resets the signal's variance
            beta = expected_var ** -0.5
            x = nf_block(b, x, f"stages.{stage}.{i}", cin, cout, stride, beta)
            expected_var += NF_ALPHA ** 2
            cin = cout
    x = ws_conv(b, x, "final_conv", cin, 2 * cin, 1)
    x = nf_act(b, x, "final_act")
    classifier_head(b, x, 2 * cin, IMAGENET_CLASSES)
