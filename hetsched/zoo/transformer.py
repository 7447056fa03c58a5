"""Vision transformer (ViT-Tiny/16) written out the way an opset-17 export spells it.

Why it is in the zoo: attention is a diamond repeated twelve times (q, k and v
fan out of one LayerNormalization and meet again in two MatMuls), and the
residual stream is a long edge of constant width, so a partitioner sees many
equal-cost cut points whose tensors are all [N, 197, 192].  Heads are split
with Reshape/Transpose against shape constants whose batch entry is 0 (copy),
so the batch axis stays dynamic; the class token is broadcast to the batch
with Shape -> Concat -> Expand.  GELU is the Erf formula (Gelu is opset 20).
"""

from __future__ import annotations

import math

import numpy as np

from hetsched.zoo.builder import GraphBuilder, conv, dense, gelu

PATCH = 16
IMAGE = 224
DIM = 192
HEADS = 3
HEAD_DIM = DIM // HEADS
DEPTH = 12
MLP_DIM = 768
TOKENS = (IMAGE // PATCH) ** 2 + 1  # 196 patches + the class token
CLASSES = 1000
EMBED_STD = 0.02  # trunc-normal std of timm's cls_token / pos_embed


def layer_norm(b: GraphBuilder, x: str, name: str) -> str:
    """LayerNormalization over the last axis (opset 17), eps 1e-6 as timm's ViT."""
    scale = b.uniform(f"{name}.weight", (DIM,), 0.9, 1.1)
    shift = b.uniform(f"{name}.bias", (DIM,), -0.05, 0.05)
    return b.add("LayerNormalization", [x, scale, shift], name, axis=-1, epsilon=1e-6)


def embed(b: GraphBuilder, image: str) -> str:
    """Patchify with a 16x16/16 conv, prepend the class token, add position embeddings."""
    y = conv(b, image, "patch_embed.proj", 3, DIM, PATCH, stride=PATCH, bias=True, gain=1.0,
             pad=0)
    y = b.add("Reshape", [y, b.ints("patch_embed.shape", [0, DIM, -1])], "patch_embed.flatten")
    patches = b.add("Transpose", [y], "patch_embed.transpose", perm=[0, 2, 1])
    batch = b.add("Shape", [image], "cls_token.batch", start=0, end=1)
    shape = b.add("Concat", [batch, b.ints("cls_token.tail", [1, DIM])], "cls_token.shape",
                  axis=0)
    cls = b.weight("cls_token", (1, 1, DIM), EMBED_STD)
    cls = b.add("Expand", [cls, shape], "cls_token.expand")
    tokens = b.add("Concat", [cls, patches], "cls_token.concat", axis=1)
    pos = b.weight("pos_embed", (1, TOKENS, DIM), EMBED_STD)
    return b.add("Add", [tokens, pos], "pos_embed.add")


def split_heads(b: GraphBuilder, x: str, name: str, perm: list[int]) -> str:
    """[N, T, D] -> [N, T, H, D/H] -> transposed by ``perm`` (k is transposed for q @ k^T)."""
    y = b.add("Reshape", [x, b.ints("attn.heads_shape", [0, 0, HEADS, HEAD_DIM])],
              f"{name}.reshape")
    return b.add("Transpose", [y], f"{name}.transpose", perm=perm)


def attention(b: GraphBuilder, x: str, name: str) -> str:
    """Multi-head self-attention: softmax(q k^T / sqrt(d)) v, heads merged, projected."""
    q = split_heads(b, dense(b, x, f"{name}.q", DIM, DIM), f"{name}.q", [0, 2, 1, 3])
    k = split_heads(b, dense(b, x, f"{name}.k", DIM, DIM), f"{name}.k", [0, 2, 3, 1])
    v = split_heads(b, dense(b, x, f"{name}.v", DIM, DIM), f"{name}.v", [0, 2, 1, 3])
    scores = b.add("MatMul", [q, k], f"{name}.scores")
    scale = b.scalar("attn.scale", 1.0 / math.sqrt(HEAD_DIM))
    scores = b.add("Mul", [scores, scale], f"{name}.scale")
    probs = b.add("Softmax", [scores], f"{name}.softmax", axis=-1)
    y = b.add("MatMul", [probs, v], f"{name}.context")
    y = b.add("Transpose", [y], f"{name}.merge.transpose", perm=[0, 2, 1, 3])
    y = b.add("Reshape", [y, b.ints("attn.merge_shape", [0, 0, DIM])], f"{name}.merge.reshape")
    return dense(b, y, f"{name}.proj", DIM, DIM)


def encoder_block(b: GraphBuilder, x: str, name: str) -> str:
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of width 768."""
    y = attention(b, layer_norm(b, x, f"{name}.norm1"), f"{name}.attn")
    x = b.add("Add", [x, y], f"{name}.residual1")
    y = dense(b, layer_norm(b, x, f"{name}.norm2"), f"{name}.mlp.fc1", DIM, MLP_DIM)
    y = gelu(b, y, f"{name}.mlp.act")
    y = dense(b, y, f"{name}.mlp.fc2", MLP_DIM, DIM)
    return b.add("Add", [x, y], f"{name}.residual2")


def vit_tiny(b: GraphBuilder) -> None:
    """ViT-Ti/16 (Dosovitskiy et al. 2021; DeiT-Tiny sizes): 12 blocks, dim 192, 3 heads."""
    image = b.input("input", b.batched([3, IMAGE, IMAGE]))
    x = embed(b, image)
    for i in range(DEPTH):
        x = encoder_block(b, x, f"blocks.{i}")
    x = layer_norm(b, x, "norm")
    cls = b.add("Gather", [x, b.scalar("head.cls_index", 0, dtype=np.int64)], "head.cls_token",
                axis=1)
    dense(b, cls, "head", DIM, CLASSES, output="logits")
    b.output("logits", b.batched([CLASSES]))
