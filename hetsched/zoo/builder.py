"""A small ONNX graph builder, and the layers the zoo's families share.

Why not ``onnx.helper`` directly: every zoo model needs the same chores done
the same way -- unique, meaningful node and weight names (the partitioner's
plans and error messages print them), deterministic random weights drawn from
one seeded generator in a fixed order (so the same call yields the same bytes),
a batch axis that is either the symbol ``N`` or a fixed size, and weights
scaled so that deep nets stay finite on random inputs.  The builder does those
chores once; the family modules only say what the architecture is.

Naming convention: a node's (first) output tensor carries the node's name, a
weight is named ``<layer>.<role>`` (``layer1.0.conv1.weight``), shared scalar
constants are named after their meaning (``relu6.max``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17  # default domain; LayerNormalization needs 17, Gelu (20) is written with Erf
IR_VERSION = 8  # the IR that opset 17 shipped with; onnxruntime 1.32 loads it
BATCH_DIM = "N"  # name of the symbolic first axis of every graph input and output
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL

Dims = Sequence[int | str | None]


class GraphBuilder:
    """Collects nodes, weights and graph I/O of one model (or of one If/Loop body).

    A body builder, made with :meth:`subgraph`, shares its parent's generator,
    name registries and initializer list: weights it creates become initializers
    of the main graph, so the body reads them from the outer scope, as exporters do.
    """

    def __init__(self, seed: int, batch: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        # initializers are written straight into the result: VGG16's 550 MB are copied once
        self._model = onnx.ModelProto()
        self._node_names: set[str] = set()
        self._tensor_names: set[str] = set()

    def subgraph(self) -> GraphBuilder:
        """A builder for an If branch or Loop body sharing this model's weights and names."""
        body = GraphBuilder.__new__(GraphBuilder)
        body.rng, body.batch = self.rng, self.batch
        body.nodes, body.inputs, body.outputs = [], [], []
        body._model = self._model
        body._node_names, body._tensor_names = self._node_names, self._tensor_names
        return body

    # -- graph inputs and outputs ------------------------------------------------

    def batched(self, dims: Dims) -> list[int | str | None]:
        """``dims`` with the batch axis in front: the symbol ``N``, or the fixed batch."""
        first: int | str = BATCH_DIM if self.batch is None else self.batch
        return [first, *dims]

    def input(self, name: str, dims: Dims | None, elem_type: int = FLOAT) -> str:
        """Declare a graph input of the exact shape ``dims`` (use :meth:`batched`).

        ``dims=None`` leaves the shape unknown, for Loop-carried body inputs.
        """
        self._claim_tensor(name)
        shape = None if dims is None else list(dims)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, dims: Dims | None, elem_type: int = FLOAT) -> None:
        """Declare a graph output; ``dims=None`` leaves its shape unknown (If/Loop bodies)."""
        shape = None if dims is None else list(dims)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    # -- weights -------------------------------------------------------------------

    def weight(self, name: str, shape: Sequence[int], std: float) -> str:
        """A float32 initializer with zero-mean random entries of standard deviation ``std``.

        Drawn uniform (as PyTorch's default init is), which is several times faster
        than normal draws: VGG16's 138 M weights must build in seconds.
        """
        values = self.rng.random(tuple(shape), dtype=np.float32)
        values -= np.float32(0.5)
        values *= np.float32(std * math.sqrt(12.0))  # uniform(-0.5, 0.5) has std 1/sqrt(12)
        return self.tensor(name, values)

    def uniform(self, name: str, shape: Sequence[int], low: float, high: float) -> str:
        """A float32 initializer uniform in [low, high): BN statistics, gains."""
        values = self.rng.random(tuple(shape), dtype=np.float32)
        values *= np.float32(high - low)
        values += np.float32(low)
        return self.tensor(name, values)

    def tensor(self, name: str, values: np.ndarray) -> str:
        """An initializer holding ``values`` as is."""
        self._claim_tensor(name)
        proto = self._model.graph.initializer.add()
        proto.name = name
        proto.dims.extend(values.shape)
        proto.data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
        proto.raw_data = values.tobytes()  # C order whatever the array's layout; 0-d stays 0-d
        return name

    def scalar(self, name: str, value: float | int, dtype: type = np.float32) -> str:
        """A shared scalar initializer, created on first use and reused by every caller."""
        if name not in self._tensor_names:
            self.tensor(name, np.array(value, dtype=dtype))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        """A shared 1-D int64 initializer (shapes, axes, indices)."""
        if name not in self._tensor_names:
            self.tensor(name, np.array(values, dtype=np.int64))
        return name

    # -- nodes ---------------------------------------------------------------------

    def add(
        self, op: str, inputs: Sequence[str], name: str, outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> str:
        """Append one node; its only output is named ``name`` unless ``outputs`` says otherwise."""
        outs = [name] if outputs is None else list(outputs)
        if name in self._node_names:
            raise ValueError(f"node name {name!r} used twice")
        self._node_names.add(name)
        for out in outs:
            self._claim_tensor(out)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0]

    def _claim_tensor(self, name: str) -> None:
        """Tensor names are single-assignment across the model and all its bodies."""
        if name in self._tensor_names:
            raise ValueError(f"tensor name {name!r} used twice")
        self._tensor_names.add(name)

    # -- results -------------------------------------------------------------------

    def graph(self, name: str) -> onnx.GraphProto:
        """The body graph (no initializers of its own: it reads the outer scope)."""
        return helper.make_graph(self.nodes, name, self.inputs, self.outputs)

    def model(self, name: str, doc: str) -> onnx.ModelProto:
        """The finished model at :data:`OPSET` / :data:`IR_VERSION`; call once, at the end.

        Assembled in place rather than with ``helper.make_model``, whose graph
        copy alone takes seconds on VGG16.
        """
        model = self._model
        model.ir_version = IR_VERSION
        model.producer_name = "hetsched.zoo"
        model.opset_import.append(helper.make_opsetid("", OPSET))
        graph = model.graph
        graph.name, graph.doc_string = name, doc
        graph.node.extend(self.nodes)
        graph.input.extend(self.inputs)
        graph.output.extend(self.outputs)
        return model


# -- layers shared by the families ----------------------------------------------------


def conv(
    b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int,
    stride: int | tuple[int, int] = 1, group: int = 1, bias: bool = False, gain: float = 2.0,
    pad: int | None = None,
) -> str:
    """Conv with He-scaled weights (std sqrt(gain / fan_in)); padding k//2 unless ``pad``.

    ``stride`` is one number or (height, width): text recognizers halve the
    height and keep the width.
    """
    strides = [stride, stride] if isinstance(stride, int) else list(stride)
    fan_in = cin // group * k * k
    w = b.weight(f"{name}.weight", (cout, cin // group, k, k), math.sqrt(gain / fan_in))
    inputs = [x, w]
    if bias:
        inputs.append(b.weight(f"{name}.bias", (cout,), 0.01))
    pad = k // 2 if pad is None else pad
    return b.add(
        "Conv", inputs, name, kernel_shape=[k, k], strides=strides,
        pads=[pad, pad, pad, pad], group=group,
    )


def batch_norm(b: GraphBuilder, x: str, name: str, c: int, gamma: float = 1.0,
               eps: float = 1e-5) -> str:
    """Inference BatchNormalization with sane running statistics (var near 1, mean near 0).

    ``gamma`` scales the learned scale; residual branches end with a small one
    so that sums of many blocks stay in range, as zero-init-residual training does.
    """
    scale = b.uniform(f"{name}.weight", (c,), 0.8 * gamma, 1.2 * gamma)
    shift = b.uniform(f"{name}.bias", (c,), -0.1, 0.1)
    mean = b.uniform(f"{name}.running_mean", (c,), -0.1, 0.1)
    var = b.uniform(f"{name}.running_var", (c,), 0.8, 1.2)
    return b.add("BatchNormalization", [x, scale, shift, mean, var], name, epsilon=eps)


def relu(b: GraphBuilder, x: str, name: str) -> str:
    """Relu node."""
    return b.add("Relu", [x], name)


def squeeze_excite(b: GraphBuilder, x: str, name: str, c: int, reduction: int = 2,
                   hard: bool = False) -> str:
    """GlobalAveragePool -> 1x1 Conv down to c/reduction -> Relu -> 1x1 Conv up -> gate -> Mul.

    The gate is Sigmoid, or with ``hard`` MobileNetV3's HardSigmoid (PaddleOCR's slope 0.2).
    """
    s = b.add("GlobalAveragePool", [x], f"{name}.pool")
    s = conv(b, s, f"{name}.fc1", c, c // reduction, 1, bias=True)
    s = relu(b, s, f"{name}.relu")
    s = conv(b, s, f"{name}.fc2", c // reduction, c, 1, bias=True, gain=1.0)
    if hard:
        s = b.add("HardSigmoid", [s], f"{name}.hardsigmoid", alpha=0.2, beta=0.5)
    else:
        s = b.add("Sigmoid", [s], f"{name}.sigmoid")
    return b.add("Mul", [x, s], f"{name}.mul")


def conv_bn_relu(
    b: GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1,
    eps: float = 1e-5,
) -> str:
    """The Conv -> BatchNormalization -> Relu unit of unfused PyTorch exports."""
    y = conv(b, x, f"{name}.conv", cin, cout, k, stride)
    y = batch_norm(b, y, f"{name}.bn", cout, eps=eps)
    return relu(b, y, f"{name}.relu")


def linear(b: GraphBuilder, x: str, name: str, fin: int, fout: int,
           gain: float = 1.0, output: str | None = None) -> str:
    """Gemm with transB=1 (a PyTorch Linear on a 2-D input), weight [fout, fin]."""
    w = b.weight(f"{name}.weight", (fout, fin), math.sqrt(gain / fin))
    bias = b.weight(f"{name}.bias", (fout,), 0.01)
    outs = None if output is None else [output]
    return b.add("Gemm", [x, w, bias], name, outputs=outs, transB=1)


def dense(b: GraphBuilder, x: str, name: str, fin: int, fout: int, std: float | None = None,
          output: str | None = None) -> str:
    """MatMul + Add on an input of any rank (transformer-style Linear), weight [fin, fout]."""
    w = b.weight(f"{name}.weight", (fin, fout), std if std is not None else 1 / math.sqrt(fin))
    bias = b.weight(f"{name}.bias", (fout,), 0.01)
    y = b.add("MatMul", [x, w], f"{name}.matmul")
    outs = None if output is None else [output]
    return b.add("Add", [y, bias], f"{name}.add", outputs=outs)


def gelu(b: GraphBuilder, x: str, name: str) -> str:
    """GELU written as 0.5 * x * (1 + erf(x / sqrt 2)), the opset < 20 export pattern."""
    y = b.add("Div", [x, b.scalar("gelu.sqrt2", math.sqrt(2.0))], f"{name}.div")
    y = b.add("Erf", [y], f"{name}.erf")
    y = b.add("Add", [y, b.scalar("gelu.one", 1.0)], f"{name}.add")
    y = b.add("Mul", [x, y], f"{name}.mul")
    return b.add("Mul", [y, b.scalar("gelu.half", 0.5)], f"{name}.half")


def classifier_head(b: GraphBuilder, x: str, fin: int, classes: int) -> None:
    """GlobalAveragePool -> Flatten -> Gemm into the graph output ``logits``."""
    y = b.add("GlobalAveragePool", [x], "avgpool")
    y = b.add("Flatten", [y], "flatten", axis=1)
    linear(b, y, "fc", fin, classes, output="logits")
    b.output("logits", b.batched([classes]))
