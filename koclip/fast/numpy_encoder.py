"""KoCLIP's towers in plain numpy, for one-shot processes.

A `koclip-search search` or `similar` process encodes one or a few queries and exits.
Through JAX that costs importing JAX and Flax, tracing the tower and loading its compiled
program before the first forward pass. The same forward pass in numpy (OpenBLAS, float32) over
the memory-mapped converted weights needs none of that, though each pass is slower than the
jitted one (`bench/search.py`), so one-shot processes use this (`koclip.load_encoder(...,
backend="numpy")`) and long-lived ones (`serve`, the indexer, the Python API) keep the jitted
encoders of `koclip.api`. Both are the same batch encoder (`koclip.encoder`) over a different
features backend.

The math is `koclip.model` step for step: RoBERTa with positions 0..L-1, post-LN layers, exact
(erf) GELU and the pooler's `tanh(dense(h[:, 0]))`; the CLIP vision transformer (pre-LN,
quick GELU, `post_layernorm(h[:, 0])`) and google's ViT (pre-LN, exact GELU, final LayerNorm,
tanh pooler); then the bias-free projections. Tests hold it to the JAX encoders and to
transformers' PyTorch reference.

Every constant is float32 on purpose: under NumPy 2's promotion rules a float64 scalar would
turn the activations float64, and every weight matrix would then be converted on each call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from koclip.checkpoints.hub import resolve
from koclip.checkpoints.params import loaded_towers, tower_params
from koclip.checkpoints.registry import model_id_for
from koclip.checkpoints.weights import load_params
from koclip.config import KoCLIPConfig, VisionConfig
from koclip.encoder import Encoder
from koclip.tokenizer import load_wordpiece

_F32 = np.float32
_SQRT_HALF = _F32(0.7071067811865476)
Params = Mapping[str, Any]


def erf(x: np.ndarray) -> np.ndarray:
    """float32 erf (Abramowitz & Stegun 7.1.26; |error| < 1e-6 in float32): numpy has no erf."""
    a = np.abs(x)
    t = _F32(1) / (_F32(1) + _F32(0.3275911) * a)
    poly = _F32(-1.453152027) + t * _F32(1.061405429)
    poly = _F32(0.254829592) + t * (_F32(-0.284496736) + t * (_F32(1.421413741) + t * poly))
    return np.copysign(_F32(1) - t * poly * np.exp(-a * a), x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, `x * Phi(x)` (RoBERTa, google ViT)."""
    return _F32(0.5) * x * (_F32(1) + erf(x * _SQRT_HALF))


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """CLIP's `x * sigmoid(1.702 x)`."""
    return x / (_F32(1) + np.exp(_F32(-1.702) * x))


def layer_norm(x: np.ndarray, params: Params, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + _F32(eps)) * params["scale"] + params["bias"]


def dense(x: np.ndarray, params: Params) -> np.ndarray:
    out = x @ params["kernel"]
    return out + params["bias"] if "bias" in params else out


def attention(
    h: np.ndarray, params: Params, names: Sequence[str], heads: int, mask: np.ndarray | None
) -> np.ndarray:
    """Multi-head self-attention over (batch, length, hidden); `mask` (batch, length), 1 = real.

    `names` are the query, key and value sub-modules. Masked keys get the lowest float32, as
    in the JAX model, so padding cannot change a row.
    """
    batch, length, hidden = h.shape
    head_dim = hidden // heads

    def project(name: str) -> np.ndarray:  # -> (batch, heads, length, head_dim)
        x = dense(h, params[name])
        return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = (project(n) for n in names)
    scores = (q @ k.transpose(0, 1, 3, 2)) * _F32(1 / np.sqrt(head_dim))
    if mask is not None:
        padded = (np.asarray(mask) <= 0)[:, None, None, :]
        scores = np.where(padded, np.finfo(np.float32).min, scores)
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)


# --- text: RoBERTa + text_projection ------------------------------------------------------------


def text_features(
    config: KoCLIPConfig, params: Params, input_ids: np.ndarray, attention_mask: np.ndarray
) -> np.ndarray:
    """Projected, unnormalised text features of a (batch, length) id array, positions 0..L-1."""
    c = config.text
    tower = params["text_model"]
    ids = np.asarray(input_ids)
    length = ids.shape[1]
    if length > c.max_positions:
        raise ValueError(f"{length} tokens is more than the model's {c.max_positions} positions")
    emb = tower["embeddings"]
    h = (
        emb["word_embeddings"]["embedding"][ids]
        + emb["position_embeddings"]["embedding"][:length]
        + emb["token_type_embeddings"]["embedding"][0]
    )
    h = layer_norm(h, emb["LayerNorm"], c.layer_norm_eps)
    for i in range(c.num_layers):
        layer = tower["encoder"]["layer"][str(i)]
        attn = layer["attention"]
        attended = attention(
            h, attn["self"], ("query", "key", "value"), c.num_heads, attention_mask
        )
        out = attn["output"]
        h = layer_norm(dense(attended, out["dense"]) + h, out["LayerNorm"], c.layer_norm_eps)
        inner = gelu(dense(h, layer["intermediate"]["dense"]))
        out = layer["output"]
        h = layer_norm(dense(inner, out["dense"]) + h, out["LayerNorm"], c.layer_norm_eps)
    pooled = np.tanh(dense(h[:, 0], tower["pooler"]["dense"]))
    return dense(pooled, params["text_projection"]).astype(np.float32, copy=False)


# --- vision: CLIP ViT or google ViT + visual_projection ------------------------------------------


def _patches(pixels: np.ndarray, kernel: np.ndarray, patch: int) -> np.ndarray:
    """A VALID, stride-`patch` convolution as one matmul: (b, h, w, c) -> (b, patches, out).

    Each patch flattens in (row, column, channel) order, the order of Flax's HWIO kernel.
    """
    b, height, width, channels = pixels.shape
    rows, cols = height // patch, width // patch
    x = pixels.reshape(b, rows, patch, cols, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, rows * cols, -1) @ kernel.reshape(-1, kernel.shape[-1])


def _clip_pooled(c: VisionConfig, tower: Params, pixels: np.ndarray) -> np.ndarray:
    t = tower["vision_model"]
    emb = t["embeddings"]
    h = _patches(pixels, emb["patch_embedding"]["kernel"], c.patch_size)
    cls = np.broadcast_to(emb["class_embedding"], (h.shape[0], 1, c.hidden_size))
    h = np.concatenate([cls, h], axis=1) + emb["position_embedding"]["embedding"]
    h = layer_norm(h, t["pre_layrnorm"], c.layer_norm_eps)
    for i in range(c.num_layers):
        layer = t["encoder"]["layers"][str(i)]
        attn = layer["self_attn"]
        x = layer_norm(h, layer["layer_norm1"], c.layer_norm_eps)
        x = attention(x, attn, ("q_proj", "k_proj", "v_proj"), c.num_heads, None)
        h = h + dense(x, attn["out_proj"])
        x = layer_norm(h, layer["layer_norm2"], c.layer_norm_eps)
        h = h + dense(quick_gelu(dense(x, layer["mlp"]["fc1"])), layer["mlp"]["fc2"])
    return layer_norm(h[:, 0], t["post_layernorm"], c.layer_norm_eps)


def _vit_pooled(c: VisionConfig, tower: Params, pixels: np.ndarray) -> np.ndarray:
    emb = tower["embeddings"]
    proj = emb["patch_embeddings"]["projection"]
    h = _patches(pixels, proj["kernel"], c.patch_size) + proj["bias"]
    cls = np.broadcast_to(emb["cls_token"], (h.shape[0], 1, c.hidden_size))
    h = np.concatenate([cls, h], axis=1) + emb["position_embeddings"]
    for i in range(c.num_layers):
        layer = tower["encoder"]["layer"][str(i)]
        attn = layer["attention"]
        x = layer_norm(h, layer["layernorm_before"], c.layer_norm_eps)
        x = attention(x, attn["attention"], ("query", "key", "value"), c.num_heads, None)
        h = h + dense(x, attn["output"]["dense"])
        x = layer_norm(h, layer["layernorm_after"], c.layer_norm_eps)
        h = h + dense(gelu(dense(x, layer["intermediate"]["dense"])), layer["output"]["dense"])
    h = layer_norm(h, tower["layernorm"], c.layer_norm_eps)
    return np.tanh(dense(h[:, 0], tower["pooler"]["dense"]))


def image_features(config: KoCLIPConfig, params: Params, pixel_values: np.ndarray) -> np.ndarray:
    """Projected, unnormalised image features of (batch, size, size, 3) preprocessed pixels."""
    c = config.vision
    pixels = np.asarray(pixel_values, np.float32)
    if pixels.ndim != 4 or pixels.shape[1:] != (c.image_size, c.image_size, c.num_channels):
        raise ValueError(
            f"pixel_values must be (n, {c.image_size}, {c.image_size}, {c.num_channels}), "
            f"got {pixels.shape}"
        )
    pooled = (_clip_pooled if c.kind == "clip" else _vit_pooled)(c, params["vision_model"], pixels)
    return dense(pooled, params["visual_projection"]).astype(np.float32, copy=False)


# --- the backend of the batch encoder ------------------------------------------------------------


class NumpyKoCLIP:
    """`koclip.encoder`'s backend in numpy: a (possibly one-tower) tree of memory-mapped arrays."""

    bucketed = False  # nothing is compiled: each batch is padded just to its longest text

    def __init__(self, config: KoCLIPConfig, params: Params) -> None:
        self.config = config
        self.params = params
        self.towers = loaded_towers(params)

    def get_text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return text_features(
            self.config, tower_params(self.params, "text"), input_ids, attention_mask
        )

    def get_image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        return image_features(self.config, tower_params(self.params, "vision"), pixel_values)


def _numpy_encoder(
    name_or_path: str | os.PathLike[str],
    towers: Sequence[str],
    batch_size: int,
    cache_dir: str | None,
) -> Encoder:
    """The towers asked for, memory-mapped from the converted-weights cache; imports no JAX
    (`koclip.loader.load_encoder` with `backend="numpy"`)."""
    files = resolve(name_or_path, cache_dir=cache_dir)
    model = NumpyKoCLIP(files.config, load_params(files, towers))
    tokenizer = load_wordpiece(files.directory, cache_dir) if "text" in towers else None
    return Encoder(model, tokenizer, model_id_for(name_or_path), files.fingerprint, batch_size)
