"""KoCLIP's dual encoder as Flax modules: math only, parameters passed in as a pytree.

Module and parameter names mirror the hub's Flax `FlaxHybridCLIP` checkpoints (its
`flax_model.msgpack` loads without renaming): `text_model` is RoBERTa, `vision_model` is a
CLIP vision transformer (nested once more under `vision_model`, as `FlaxCLIPVisionModule`
stores it) or a google ViT, then two bias-free projections and a scalar `logit_scale`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from koclip.config import KoCLIPConfig, TextConfig, VisionConfig

_INIT = nn.initializers.normal(0.02)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return {"quick_gelu": quick_gelu, "gelu": exact_gelu}[name]


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


# --- RoBERTa (text tower) ------------------------------------------------------------------


class _RobertaSelfAttention(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        d = self.config.hidden_size
        q, k, v = (_dense(d, n)(h) for n in ("query", "key", "value"))
        return attention(q, k, v, self.config.num_heads, mask)


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
        attended = _RobertaSelfAttention(c, name="self")(h, mask)
        return _DenseNorm(c.hidden_size, c.layer_norm_eps, name="output")(attended, h)


class _Intermediate(nn.Module):
    features: int
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _activation(self.activation)(_dense(self.features, "dense")(x))


class _RobertaLayer(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        h = _RobertaAttention(c, name="attention")(h, mask)
        inner = _Intermediate(c.intermediate_size, "gelu", name="intermediate")(h)
        return _DenseNorm(c.hidden_size, c.layer_norm_eps, name="output")(inner, h)


class _RobertaLayers(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        for i in range(self.config.num_layers):
            h = _RobertaLayer(self.config, name=str(i))(h, mask)
        return h


class _RobertaEncoder(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        return _RobertaLayers(self.config, name="layer")(h, mask)


class _RobertaEmbeddings(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        c = self.config
        words = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=_INIT, name="word_embeddings")
        positions = nn.Embed(
            c.max_positions, c.hidden_size, embedding_init=_INIT, name="position_embeddings"
        )
        types = nn.Embed(
            c.type_vocab_size, c.hidden_size, embedding_init=_INIT, name="token_type_embeddings"
        )
        h = words(input_ids) + positions(position_ids) + types(token_type_ids)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(h)


class _Pooler(nn.Module):
    features: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return jnp.tanh(_dense(self.features, "dense")(h[:, 0]))


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
        h = _RobertaEncoder(c, name="encoder")(h, attention_mask)
        return _Pooler(c.hidden_size, name="pooler")(h)


# --- CLIP vision transformer (koclip-base) ---------------------------------------------------


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
        h = _activation(c.activation)(_dense(c.intermediate_size, "fc1")(h))
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


class _ClipLayers(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for i in range(self.config.num_layers):
            h = _ClipLayer(self.config, name=str(i))(h)
        return h


class _ClipEncoder(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return _ClipLayers(self.config, name="layers")(h)


class _ClipEmbeddings(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        cls = self.param("class_embedding", _INIT, (c.hidden_size,))
        patches = nn.Conv(
            c.hidden_size,
            (c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            use_bias=False,
            kernel_init=_INIT,
            name="patch_embedding",
        )(pixels)
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
        h = _ClipEncoder(self.config, name="encoder")(h)
        return nn.LayerNorm(epsilon=eps, name="post_layernorm")(h[:, 0])


class ClipVisionTower(nn.Module):
    """CLIP ViT; pooled output is `post_layernorm(h[:, 0])`."""

    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        return _ClipVisionTransformer(self.config, name="vision_model")(pixels)


# --- google ViT (koclip-large) ---------------------------------------------------------------


class _VitSelfAttention(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        d = self.config.hidden_size
        q, k, v = (_dense(d, n)(h) for n in ("query", "key", "value"))
        return attention(q, k, v, self.config.num_heads, None)


class _VitAttention(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        attended = _VitSelfAttention(self.config, name="attention")(h)
        return _DenseOnly(self.config.hidden_size, name="output")(attended)


class _DenseOnly(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense(self.features, "dense")(x)


class _VitLayer(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = self.config
        eps = c.layer_norm_eps
        h = h + _VitAttention(c, name="attention")(
            nn.LayerNorm(epsilon=eps, name="layernorm_before")(h)
        )
        inner = _Intermediate(c.intermediate_size, c.activation, name="intermediate")(
            nn.LayerNorm(epsilon=eps, name="layernorm_after")(h)
        )
        return h + _DenseOnly(c.hidden_size, name="output")(inner)


class _VitLayers(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for i in range(self.config.num_layers):
            h = _VitLayer(self.config, name=str(i))(h)
        return h


class _VitEncoder(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return _VitLayers(self.config, name="layer")(h)


class _VitPatchEmbeddings(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Conv(
            c.hidden_size,
            (c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            kernel_init=_INIT,
            name="projection",
        )(pixels)
        return x.reshape(x.shape[0], -1, c.hidden_size)


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
        h = _VitEncoder(c, name="encoder")(h)
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="layernorm")(h)
        return _Pooler(c.hidden_size, name="pooler")(h)


# --- the dual encoder --------------------------------------------------------------------------


def vision_tower(config: VisionConfig, name: str | None = None) -> nn.Module:
    cls = ClipVisionTower if config.kind == "clip" else VitVisionTower
    return cls(config, name=name)


class KoCLIPModule(nn.Module):
    """The whole model; `text_features`/`image_features` give projected, unnormalised features."""

    config: KoCLIPConfig

    def setup(self) -> None:
        c = self.config
        self.text_model = TextTower(c.text)
        self.vision_model = vision_tower(c.vision)
        self.text_projection = _dense(c.projection_dim, "text_projection", use_bias=False)
        self.visual_projection = _dense(c.projection_dim, "visual_projection", use_bias=False)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(c.logit_scale_init), ()
        )

    def text_features(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
    ) -> jax.Array:
        pooled = self.text_model(input_ids, attention_mask, token_type_ids, position_ids)
        return self.text_projection(pooled)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision_model(pixel_values))

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        text = l2_normalize(
            self.text_features(input_ids, attention_mask, token_type_ids, position_ids)
        )
        image = l2_normalize(self.image_features(pixel_values))
        return text, image, self.logit_scale


class TextEncoderModule(nn.Module):
    """Text tower + projection alone, under the same parameter names as `KoCLIPModule`."""

    config: KoCLIPConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
    ) -> jax.Array:
        pooled = TextTower(self.config.text, name="text_model")(
            input_ids, attention_mask, token_type_ids, position_ids
        )
        return _dense(self.config.projection_dim, "text_projection", use_bias=False)(pooled)


class VisionEncoderModule(nn.Module):
    """Vision tower + projection alone, under the same parameter names as `KoCLIPModule`."""

    config: KoCLIPConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        pooled = vision_tower(self.config.vision, name="vision_model")(pixel_values)
        return _dense(self.config.projection_dim, "visual_projection", use_bias=False)(pooled)


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def logits(
    text_embeds: jax.Array, image_embeds: jax.Array, logit_scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`(logits_per_text, logits_per_image)` from L2-normalised embeddings."""
    per_text = jnp.exp(logit_scale) * text_embeds @ image_embeds.T
    return per_text, per_text.T
