"""KoCLIP's dual encoder as one two-tower Flax module: math only, parameters passed in as a pytree.

Module and parameter names mirror the hub's Flax `FlaxHybridCLIP` checkpoints (its
`flax_model.msgpack` loads without renaming): `text_model` is RoBERTa, `vision_model` is a
CLIP vision transformer (nested once more under `vision_model`, as `FlaxCLIPVisionModule`
stores it) or a google ViT, then two bias-free projections and a scalar `logit_scale`.
`KoCLIPModule.encode_text`/`encode_image` return unit vectors; either tower can be applied
alone over a one-tower parameter tree (`method="encode_text"`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from koclip.config import KoCLIPConfig, TextConfig, VisionConfig

_INIT = nn.initializers.normal(0.02)

Path_ = tuple[str, ...]


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


_ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": exact_gelu,
    "tanh": jnp.tanh,
    None: lambda x: x,
}


def _dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=_INIT, name=name)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int, mask: jax.Array | None
) -> jax.Array:
    """Multi-head scaled dot-product attention over [batch, length, hidden] inputs."""
    b, length, hidden = q.shape
    head_dim = hidden // num_heads

    def split(x: jax.Array) -> jax.Array:
        return x.reshape(b, x.shape[1], num_heads, head_dim)

    scores = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / math.sqrt(head_dim)
    if mask is not None:
        # mask: [batch, key_length], 1 for real tokens.
        big_negative = jnp.finfo(scores.dtype).min
        scores = jnp.where(mask[:, None, None, :] > 0, scores, big_negative)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, split(v))
    return out.reshape(b, length, hidden)


class _Dense(nn.Module):
    """`activation(dense(x))` under a scope of its own: the hub's `*/dense` sub-modules."""

    features: int
    activation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _ACTIVATIONS[self.activation](_dense(self.features, "dense")(x))


class _Stack(nn.Module):
    """`config.num_layers` copies of `layer` named "0".."n-1", under the extra scopes `path`.

    The hub nests each tower's layers as `encoder/layer/N` (`encoder/layers/N` for CLIP); a
    scope per name keeps those parameter paths without a shell module per tower.
    """

    layer: type[nn.Module]
    config: Any
    path: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, h: jax.Array, *args: Any) -> jax.Array:
        if self.path:
            inner = _Stack(self.layer, self.config, self.path[1:], name=self.path[0])
            return inner(h, *args)
        for i in range(self.config.num_layers):
            h = self.layer(self.config, name=str(i))(h, *args)
        return h


# --- RoBERTa (text tower) ------------------------------------------------------------------


class _DenseNorm(nn.Module):
    """`dense` then residual then `LayerNorm` (RoBERTa's post-LN sublayer output)."""

    features: int
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        x = _dense(self.features, "dense")(x)
        return nn.LayerNorm(epsilon=self.eps, name="LayerNorm")(x + residual)


class _RobertaAttention(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        attended = _SelfAttention(c.hidden_size, c.num_heads, name="self")(h, mask)
        return _DenseNorm(c.hidden_size, c.layer_norm_eps, name="output")(attended, h)


class _RobertaLayer(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        h = _RobertaAttention(c, name="attention")(h, mask)
        inner = _Dense(c.intermediate_size, "gelu", name="intermediate")(h)
        return _DenseNorm(c.hidden_size, c.layer_norm_eps, name="output")(inner, h)


class _RobertaEmbeddings(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        c = self.config

        def embed(rows: int, name: str) -> nn.Embed:
            return nn.Embed(rows, c.hidden_size, embedding_init=_INIT, name=name)

        h = (
            embed(c.vocab_size, "word_embeddings")(input_ids)
            + embed(c.max_positions, "position_embeddings")(position_ids)
            + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(h)


class TextTower(nn.Module):
    """RoBERTa as in `klue/roberta-large`; returns the pooled `tanh(dense(h[:, 0]))`."""

    config: TextConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
    ) -> jax.Array:
        c = self.config
        h = _RobertaEmbeddings(c, name="embeddings")(input_ids, token_type_ids, position_ids)
        h = _Stack(_RobertaLayer, c, ("layer",), name="encoder")(h, attention_mask)
        return _Dense(c.hidden_size, "tanh", name="pooler")(h[:, 0])


# --- vision towers: CLIP ViT (koclip-base) and google ViT (koclip-large) ---------------------


def _patchify(c: VisionConfig, name: str, use_bias: bool) -> nn.Conv:
    return nn.Conv(
        c.hidden_size,
        (c.patch_size, c.patch_size),
        strides=(c.patch_size, c.patch_size),
        padding="VALID",
        use_bias=use_bias,
        kernel_init=_INIT,
        name=name,
    )


class _ClipAttention(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        d = self.config.hidden_size
        q, k, v = (_dense(d, n)(h) for n in ("q_proj", "k_proj", "v_proj"))
        return _dense(d, "out_proj")(attention(q, k, v, self.config.num_heads, None))


class _Mlp(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = self.config
        h = _ACTIVATIONS[c.activation](_dense(c.intermediate_size, "fc1")(h))
        return _dense(c.hidden_size, "fc2")(h)


class _ClipLayer(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        eps = self.config.layer_norm_eps
        h = h + _ClipAttention(self.config, name="self_attn")(
            nn.LayerNorm(epsilon=eps, name="layer_norm1")(h)
        )
        return h + _Mlp(self.config, name="mlp")(nn.LayerNorm(epsilon=eps, name="layer_norm2")(h))


class _ClipEmbeddings(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        cls = self.param("class_embedding", _INIT, (c.hidden_size,))
        patches = _patchify(c, "patch_embedding", use_bias=False)(pixels)
        b = patches.shape[0]
        patches = patches.reshape(b, -1, c.hidden_size)
        cls = jnp.broadcast_to(cls, (b, 1, c.hidden_size))
        h = jnp.concatenate([cls, patches], axis=1)
        positions = nn.Embed(
            c.num_patches + 1, c.hidden_size, embedding_init=_INIT, name="position_embedding"
        )
        return h + positions(jnp.arange(c.num_patches + 1))[None]


class _ClipVisionTransformer(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        eps = self.config.layer_norm_eps
        h = _ClipEmbeddings(self.config, name="embeddings")(pixels)
        h = nn.LayerNorm(epsilon=eps, name="pre_layrnorm")(h)  # sic: CLIP's own spelling
        h = _Stack(_ClipLayer, self.config, ("layers",), name="encoder")(h)
        return nn.LayerNorm(epsilon=eps, name="post_layernorm")(h[:, 0])


class ClipVisionTower(nn.Module):
    """CLIP ViT; pooled output is `post_layernorm(h[:, 0])`, nested as the hub nests it."""

    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        return _ClipVisionTransformer(self.config, name="vision_model")(pixels)


class _SelfAttention(nn.Module):
    """`query`/`key`/`value` projections and attention (RoBERTa's and google ViT's)."""

    hidden_size: int
    num_heads: int

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        q, k, v = (_dense(self.hidden_size, n)(h) for n in ("query", "key", "value"))
        return attention(q, k, v, self.num_heads, mask)


class _VitAttention(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = self.config
        attended = _SelfAttention(c.hidden_size, c.num_heads, name="attention")(h)
        return _Dense(c.hidden_size, name="output")(attended)


class _VitLayer(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = self.config
        eps = c.layer_norm_eps
        h = h + _VitAttention(c, name="attention")(
            nn.LayerNorm(epsilon=eps, name="layernorm_before")(h)
        )
        inner = _Dense(c.intermediate_size, c.activation, name="intermediate")(
            nn.LayerNorm(epsilon=eps, name="layernorm_after")(h)
        )
        return h + _Dense(c.hidden_size, name="output")(inner)


class _VitPatchEmbeddings(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = _patchify(self.config, "projection", use_bias=True)(pixels)
        return x.reshape(x.shape[0], -1, self.config.hidden_size)


class _VitEmbeddings(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        cls = self.param("cls_token", _INIT, (1, 1, c.hidden_size))
        patches = _VitPatchEmbeddings(c, name="patch_embeddings")(pixels)
        cls = jnp.broadcast_to(cls, (patches.shape[0], 1, c.hidden_size))
        positions = self.param("position_embeddings", _INIT, (1, c.num_patches + 1, c.hidden_size))
        return jnp.concatenate([cls, patches], axis=1) + positions


class VitVisionTower(nn.Module):
    """google ViT; pooled output is `tanh(dense(layernorm(h)[:, 0]))`."""

    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        h = _VitEmbeddings(c, name="embeddings")(pixels)
        h = _Stack(_VitLayer, c, ("layer",), name="encoder")(h)
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="layernorm")(h)
        return _Dense(c.hidden_size, "tanh", name="pooler")(h[:, 0])


# --- the two-tower model -----------------------------------------------------------------------


class KoCLIPModule(nn.Module):
    """Both towers, their projections and `logit_scale`; each tower also runs alone.

    `text_features`/`image_features` are projected and unnormalised (transformers'
    `get_*_features`); `encode_text`/`encode_image` are those as unit vectors.
    """

    config: KoCLIPConfig

    def setup(self) -> None:
        c = self.config
        self.text_model = TextTower(c.text)
        self.vision_model = (ClipVisionTower if c.vision.kind == "clip" else VitVisionTower)(
            c.vision
        )
        self.text_projection = _dense(c.projection_dim, "text_projection", use_bias=False)
        self.visual_projection = _dense(c.projection_dim, "visual_projection", use_bias=False)

    def text_features(self, *text_inputs: jax.Array) -> jax.Array:
        """`TextTower`'s inputs (ids, mask, token types, positions) -> projected features."""
        return self.text_projection(self.text_model(*text_inputs))

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision_model(pixel_values))

    def encode_text(self, *text_inputs: jax.Array) -> jax.Array:
        return l2_normalize(self.text_features(*text_inputs))

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        return l2_normalize(self.image_features(pixel_values))

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
    ) -> tuple[jax.Array | None, jax.Array | None, jax.Array]:
        """`(text unit vectors or None, image unit vectors or None, logit_scale)`."""
        text = image = None
        if input_ids is not None:
            text = self.encode_text(input_ids, attention_mask, token_type_ids, position_ids)
        if pixel_values is not None:
            image = self.encode_image(pixel_values)
        # Declared here, not in setup, so a one-tower tree can apply `encode_text` alone.
        scale = self.param(
            "logit_scale", nn.initializers.constant(self.config.logit_scale_init), ()
        )
        return text, image, scale


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def logits(
    text_embeds: jax.Array, image_embeds: jax.Array, logit_scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`(logits_per_text, logits_per_image)` from L2-normalised embeddings."""
    per_text = jnp.exp(logit_scale) * text_embeds @ image_embeds.T
    return per_text, per_text.T


def param_shapes(config: KoCLIPConfig) -> dict[Path_, tuple[int, ...]]:
    """Every parameter's path and shape, traced from the module without allocating."""
    from koclip.tree import flatten

    module = KoCLIPModule(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    size = config.vision.image_size
    pixels = jnp.zeros((1, size, size, config.vision.num_channels), jnp.float32)
    tree = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, pixels, ids, ids, ids))
    return {k: tuple(v.shape) for k, v in flatten(tree["params"]).items()}
