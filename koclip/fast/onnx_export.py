"""KoCLIP's towers as ONNX graphs, built node by node from our own parameter tree.

No torch and no tracing: each graph is `koclip.fast.numpy_encoder`'s math written with the `onnx`
helper API, step for step — the CLIP vision transformer (pre-LN, quick GELU,
`post_layernorm(h[:, 0])`), google's ViT (pre-LN, exact GELU, final LayerNorm, tanh pooler),
RoBERTa (post-LN, exact GELU, tanh pooler, positions 0..L-1), then the bias-free projection.
Outputs are projected, unnormalised features, as the other backends return them.

GELU and quick GELU are ONNX Runtime's fused kernels (`com.microsoft` Gelu, QuickGelu) and the
patch embedding is one product over flattened patches. Node names follow the parameter paths
(`vision/layers/3/fc2/MatMul:…`), so layers can be kept out of quantisation by name, and every
activation-by-activation product (the attention scores and their weighted sum) is tagged, so
the quantiser leaves those in float32 and quantises only products with a weight matrix.

Measured and dropped (int8, ViT-B/32, CPU time per image, same run): ONNX Runtime's
MultiHeadAttention with one packed QKV product (+19% over these transposes) and
SkipLayerNormalization for each residual add + LayerNorm (+17% more): both slower on its CPU kernels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig, TextConfig, VisionConfig

OPSET = 17  # LayerNormalization; old enough for every runtime that has it
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib kernels (Gelu, QuickGelu)
_ATTENTION_TAG = "/attn_act/"  # in the name of each activation x activation MatMul

Params = Mapping[str, Any]


def is_activation_matmul(node_name: str) -> bool:
    """True for the attention's score and context products (no weight matrix to quantise)."""
    return _ATTENTION_TAG in node_name


class _Builder:
    """Accumulates nodes and initializers; every name it hands out is unique."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._ids = itertools.count()

    def const(self, value: Any, name: str, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        arr = np.array(value, dtype=dtype, order="C")  # keeps 0-d scalars 0-d
        name = f"{name}:{next(self._ids)}"
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], name: str, domain: str = "", **attrs: Any
    ) -> str:
        out = f"{name}/{op_type}:{next(self._ids)}"
        node = self.helper.make_node(op_type, list(inputs), [out], name=out, domain=domain, **attrs)
        self.nodes.append(node)
        return out

    # --- layers ------------------------------------------------------------------------------

    def dense(self, x: str, params: Params, name: str) -> str:
        kernel = np.asarray(params["kernel"], np.float32)
        out = self.op("MatMul", [x, self.const(kernel.reshape(-1, kernel.shape[-1]), name)], name)
        if "bias" in params:
            out = self.op("Add", [out, self.const(params["bias"], f"{name}/bias")], name)
        return out

    def layer_norm(self, x: str, params: Params, eps: float, name: str) -> str:
        scale = self.const(params["scale"], f"{name}/scale")
        bias = self.const(params["bias"], f"{name}/bias")
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=float(eps))

    def gelu(self, x: str, name: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as ONNX Runtime's one fused kernel."""
        return self.op("Gelu", [x], name, domain=MS_DOMAIN)

    def quick_gelu(self, x: str, name: str) -> str:
        """CLIP's x * sigmoid(1.702 x), as ONNX Runtime's one fused kernel."""
        return self.op("QuickGelu", [x], name, domain=MS_DOMAIN, alpha=1.702)

    def attention(
        self,
        x: str,
        params: Params,
        names: Sequence[str],
        hidden: int,
        heads: int,
        name: str,
        key_mask: str | None = None,
    ) -> str:
        """Multi-head self-attention; `key_mask` (batch, 1, 1, length) bool, True = real token."""
        head_dim = hidden // heads
        split = self.const([0, 0, heads, head_dim], f"{name}/split", np.int64)

        def project(sub: str, perm: list[int]) -> str:
            y = self.dense(x, params[sub], f"{name}/{sub}")
            y = self.op("Reshape", [y, split], name)
            return self.op("Transpose", [y], name, perm=perm)

        q = project(names[0], [0, 2, 1, 3])  # (b, heads, L, d)
        k = project(names[1], [0, 2, 3, 1])  # (b, heads, d, L)
        v = project(names[2], [0, 2, 1, 3])
        scores = self.op("MatMul", [q, k], f"{name}{_ATTENTION_TAG}scores")
        scores = self.op("Mul", [scores, self.const(1 / math.sqrt(head_dim), f"{name}/s")], name)
        if key_mask is not None:
            lowest = self.const(np.finfo(np.float32).min, f"{name}/lowest")
            scores = self.op("Where", [key_mask, scores, lowest], name)
        weights = self.op("Softmax", [scores], name, axis=-1)
        context = self.op("MatMul", [weights, v], f"{name}{_ATTENTION_TAG}context")
        context = self.op("Transpose", [context], name, perm=[0, 2, 1, 3])
        return self.op(
            "Reshape", [context, self.const([0, 0, hidden], f"{name}/merge", np.int64)], name
        )

    def first_token(self, x: str, name: str) -> str:
        """h[:, 0]: (b, L, d) -> (b, d)."""
        return self.op("Gather", [x, self.const(0, f"{name}/zero", np.int64)], name, axis=1)

    def with_class_token(self, patches: str, token: Any, hidden: int, name: str) -> str:
        """Prepend a learned (hidden,) token to each row of (b, n, hidden) patches."""
        shape = self.op("Shape", [patches], name)
        batch = self.op("Slice", [shape, *self._ints([0], [1], name=name)], name)
        target = self.op(
            "Concat", [batch, self.const([1, hidden], f"{name}/t", np.int64)], name, axis=0
        )
        cls = self.op("Expand", [self.const(np.reshape(token, (1, 1, hidden)), name), target], name)
        return self.op("Concat", [cls, patches], name, axis=1)

    def _ints(self, *values: list[int], name: str = "") -> list[str]:
        return [self.const(v, f"{name}/i", np.int64) for v in values]

    def patch_embed(self, pixels: str, c: VisionConfig, params: Params, name: str) -> str:
        """A VALID stride-`patch` convolution over NHWC pixels -> (b, patches, hidden).

        Written as one product (cheaper than a convolution, and quantisable): each patch's
        pixels in (row, column, channel) order, the HWIO kernel flattened the same way.
        """
        p, grid = c.patch_size, c.image_size // c.patch_size
        shape = [0, grid, p, grid, p, c.num_channels]
        tiles = self.op("Reshape", [pixels, self.const(shape, f"{name}/tiles", np.int64)], name)
        tiles = self.op("Transpose", [tiles], name, perm=[0, 1, 3, 2, 4, 5])
        flat = [0, grid * grid, p * p * c.num_channels]
        flat = self.op("Reshape", [tiles, self.const(flat, f"{name}/flat", np.int64)], name)
        return self.dense(flat, params, name)

    def model(self, inputs: list[Any], output: str, out_dim: int, graph_name: str) -> Any:
        h = self.helper
        from onnx import TensorProto

        out_info = h.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", out_dim])
        self.nodes.append(h.make_node("Identity", [output], ["features"], name="features"))
        graph = h.make_graph(self.nodes, graph_name, inputs, [out_info], self.initializers)
        model = h.make_model(
            graph,
            opset_imports=[h.make_opsetid("", OPSET), h.make_opsetid(MS_DOMAIN, 1)],
            producer_name="koclip-search",
        )
        model.ir_version = 8  # readable by every onnxruntime >= 1.13
        return model


# --- vision ----------------------------------------------------------------------------------


def _clip_pooled(b: _Builder, c: VisionConfig, tower: Params, pixels: str) -> str:
    t = tower["vision_model"]
    emb = t["embeddings"]
    eps = c.layer_norm_eps
    h = b.patch_embed(pixels, c, emb["patch_embedding"], "vision/patch")
    h = b.with_class_token(h, emb["class_embedding"], c.hidden_size, "vision/cls")
    h = b.op(
        "Add", [h, b.const(emb["position_embedding"]["embedding"][None], "vision/pos")], "vision"
    )
    h = b.layer_norm(h, t["pre_layrnorm"], eps, "vision/pre_layrnorm")
    for i in range(c.num_layers):
        layer = t["encoder"]["layers"][str(i)]
        name = f"vision/layers/{i}"
        x = b.layer_norm(h, layer["layer_norm1"], eps, f"{name}/layer_norm1")
        names = ("q_proj", "k_proj", "v_proj")
        x = b.attention(x, layer["self_attn"], names, c.hidden_size, c.num_heads, f"{name}/attn")
        x = b.dense(x, layer["self_attn"]["out_proj"], f"{name}/out_proj")
        h = b.op("Add", [h, x], name)
        x = b.layer_norm(h, layer["layer_norm2"], eps, f"{name}/layer_norm2")
        x = b.quick_gelu(b.dense(x, layer["mlp"]["fc1"], f"{name}/fc1"), f"{name}/act")
        h = b.op("Add", [h, b.dense(x, layer["mlp"]["fc2"], f"{name}/fc2")], name)
    return b.layer_norm(b.first_token(h, "vision/cls_out"), t["post_layernorm"], eps, "vision/post")


def _vit_pooled(b: _Builder, c: VisionConfig, tower: Params, pixels: str) -> str:
    emb = tower["embeddings"]
    eps = c.layer_norm_eps
    h = b.patch_embed(pixels, c, emb["patch_embeddings"]["projection"], "vision/patch")
    h = b.with_class_token(h, emb["cls_token"], c.hidden_size, "vision/cls")
    h = b.op("Add", [h, b.const(emb["position_embeddings"], "vision/pos")], "vision")
    for i in range(c.num_layers):
        layer = tower["encoder"]["layer"][str(i)]
        name = f"vision/layer/{i}"
        attn = layer["attention"]
        x = b.layer_norm(h, layer["layernorm_before"], eps, f"{name}/layernorm_before")
        names = ("query", "key", "value")
        x = b.attention(x, attn["attention"], names, c.hidden_size, c.num_heads, f"{name}/attn")
        h = b.op("Add", [h, b.dense(x, attn["output"]["dense"], f"{name}/attn_out")], name)
        x = b.layer_norm(h, layer["layernorm_after"], eps, f"{name}/layernorm_after")
        x = b.gelu(b.dense(x, layer["intermediate"]["dense"], f"{name}/fc1"), f"{name}/act")
        h = b.op("Add", [h, b.dense(x, layer["output"]["dense"], f"{name}/fc2")], name)
    h = b.layer_norm(h, tower["layernorm"], eps, "vision/layernorm")
    pooled = b.dense(b.first_token(h, "vision/cls_out"), tower["pooler"]["dense"], "vision/pooler")
    return b.op("Tanh", [pooled], "vision/pooler")


def vision_graph(config: KoCLIPConfig, params: Params) -> Any:
    """The vision tower + visual projection: `pixels` (batch, size, size, 3) NHWC float32 in."""
    from onnx import TensorProto

    c = config.vision
    b = _Builder()
    shape = ["batch", c.image_size, c.image_size, c.num_channels]
    pixels = b.helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)
    pooled = (_clip_pooled if c.kind == "clip" else _vit_pooled)(
        b, c, params["vision_model"], "pixels"
    )
    out = b.dense(pooled, params["visual_projection"], "visual_projection")
    return b.model([pixels], out, config.projection_dim, "koclip_vision")


# --- text ------------------------------------------------------------------------------------


def _roberta_pooled(b: _Builder, c: TextConfig, tower: Params) -> str:
    emb = tower["embeddings"]
    eps = c.layer_norm_eps
    words = b.op(
        "Gather", [b.const(emb["word_embeddings"]["embedding"], "text/words"), "input_ids"], "text"
    )
    # positions 0..L-1 and token type 0, as KoCLIP was trained in Flax
    length = b.op(
        "Slice", [b.op("Shape", ["input_ids"], "text"), *b._ints([1], [2], name="text")], "text"
    )
    table = b.const(emb["position_embeddings"]["embedding"], "text/positions")
    positions = b.op(
        "Slice",
        [table, b.const([0], "text/p0", np.int64), length, b.const([0], "text/ax", np.int64)],
        "text",
    )
    token_type = b.const(emb["token_type_embeddings"]["embedding"][0], "text/type0")
    h = b.op("Add", [b.op("Add", [words, positions], "text"), token_type], "text")
    h = b.layer_norm(h, emb["LayerNorm"], eps, "text/embeddings")
    real = b.op("Greater", ["attention_mask", b.const(0, "text/zero", np.int64)], "text")
    key_mask = b.op("Unsqueeze", [real, b.const([1, 2], "text/axes", np.int64)], "text")
    for i in range(c.num_layers):
        layer = tower["encoder"]["layer"][str(i)]
        name = f"text/layer/{i}"
        attn = layer["attention"]
        names = ("query", "key", "value")
        x = b.attention(
            h, attn["self"], names, c.hidden_size, c.num_heads, f"{name}/attn", key_mask
        )
        x = b.op("Add", [b.dense(x, attn["output"]["dense"], f"{name}/attn_out"), h], name)
        h = b.layer_norm(x, attn["output"]["LayerNorm"], eps, f"{name}/attn_norm")
        x = b.gelu(b.dense(h, layer["intermediate"]["dense"], f"{name}/fc1"), f"{name}/act")
        x = b.op("Add", [b.dense(x, layer["output"]["dense"], f"{name}/fc2"), h], name)
        h = b.layer_norm(x, layer["output"]["LayerNorm"], eps, f"{name}/out_norm")
    pooled = b.dense(b.first_token(h, "text/cls_out"), tower["pooler"]["dense"], "text/pooler")
    return b.op("Tanh", [pooled], "text/pooler")


def text_graph(config: KoCLIPConfig, params: Params) -> Any:
    """RoBERTa + text projection: int64 `input_ids` and `attention_mask` (batch, length) in."""
    from onnx import TensorProto

    b = _Builder()
    inputs = [
        b.helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"])
        for n in ("input_ids", "attention_mask")
    ]
    pooled = _roberta_pooled(b, config.text, params["text_model"])
    out = b.dense(pooled, params["text_projection"], "text_projection")
    return b.model(inputs, out, config.projection_dim, "koclip_text")


def tower_graph(config: KoCLIPConfig, params: Params, tower: str) -> Any:
    """The ONNX model of one tower ("text" or "vision")."""
    if tower == "vision":
        return vision_graph(config, params)
    if tower == "text":
        return text_graph(config, params)
    raise ValueError(f"tower must be 'text' or 'vision', not {tower!r}")
