"""KoCLIP's text tower and projection in plain numpy, for one-shot queries.

A `koclip-search search` process encodes one or a few short texts and exits. Through JAX
that costs importing JAX and Flax, tracing RoBERTa-large's 24 layers and loading the compiled
program, about 1.5 s on 2 cores, before a 50 ms forward pass. The same forward pass in numpy
over the memory-mapped converted weights needs none of that and takes about 90 ms for an
8-token query (OpenBLAS, float32), so one-shot processes use this and long-lived ones
(`serve`, the Python API) keep the jitted encoder in `koclip.api`.

The math is `koclip.model.TextTower` + `text_projection` step for step: positions 0..L-1,
post-LN layers, exact (erf) GELU, the pooler's `tanh(dense(h[:, 0]))`. Tests hold it to
the JAX encoder and to transformers' PyTorch reference.

Every constant is float32 on purpose: under NumPy 2's promotion rules a float64 scalar
would turn the activations float64 and every weight matrix would be converted per call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from koclip.checkpoints import load_params, model_id_for, resolve
from koclip.config import KoCLIPConfig
from koclip.errors import KoCLIPError
from koclip.preprocess import DEFAULT_PROMPT, apply_prompt
from koclip.tokenizer import WordPieceTokenizer, load_wordpiece

_F32 = np.float32
_SQRT_HALF = _F32(0.7071067811865476)


def erf(x: np.ndarray) -> np.ndarray:
    """float32 erf (Abramowitz & Stegun 7.1.26; |error| < 1e-6 in float32): numpy has no erf."""
    a = np.abs(x)
    t = _F32(1) / (_F32(1) + _F32(0.3275911) * a)
    poly = t * (
        _F32(0.254829592)
        + t
        * (
            _F32(-0.284496736)
            + t * (_F32(1.421413741) + t * (_F32(-1.453152027) + t * _F32(1.061405429)))
        )
    )
    return np.copysign(_F32(1) - poly * np.exp(-a * a), x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, `x * Phi(x)`, as RoBERTa's `hidden_act="gelu"`."""
    return _F32(0.5) * x * (_F32(1) + erf(x * _SQRT_HALF))


def layer_norm(x: np.ndarray, params: Mapping[str, np.ndarray], eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + _F32(eps)) * params["scale"] + params["bias"]


def dense(x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
    out = x @ params["kernel"]
    return out + params["bias"] if "bias" in params else out


def text_features(
    config: KoCLIPConfig,
    params: Mapping[str, Any],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
) -> np.ndarray:
    """Projected, unnormalised text features of a (batch, length) id array, positions 0..L-1."""
    c = config.text
    tower = params["text_model"]
    ids = np.asarray(input_ids)
    batch, length = ids.shape
    if length > c.max_positions:
        raise ValueError(f"{length} tokens is more than the model's {c.max_positions} positions")
    emb = tower["embeddings"]
    h = (
        emb["word_embeddings"]["embedding"][ids]
        + emb["position_embeddings"]["embedding"][:length]
        + emb["token_type_embeddings"]["embedding"][0]
    )
    h = layer_norm(h.reshape(batch * length, c.hidden_size), emb["LayerNorm"], c.layer_norm_eps)
    heads, head_dim = c.num_heads, c.hidden_size // c.num_heads
    # Padded keys get the lowest float, as the JAX model does, so a row's padding cannot matter.
    masked = (np.asarray(attention_mask) <= 0)[:, None, None, :]
    scale = _F32(1 / np.sqrt(head_dim))

    def split(x: np.ndarray) -> np.ndarray:  # (batch*length, hidden) -> (batch, heads, length, d)
        return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    layers = tower["encoder"]["layer"]
    for i in range(c.num_layers):
        layer = layers[str(i)]
        attn = layer["attention"]
        q, k, v = (split(dense(h, attn["self"][n])) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(0, 1, 3, 2)) * scale
        scores = np.where(masked, np.finfo(np.float32).min, scores)
        scores -= scores.max(-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(-1, keepdims=True)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(batch * length, c.hidden_size)
        out = attn["output"]
        h = layer_norm(dense(attended, out["dense"]) + h, out["LayerNorm"], c.layer_norm_eps)
        inner = gelu(dense(h, layer["intermediate"]["dense"]))
        out = layer["output"]
        h = layer_norm(dense(inner, out["dense"]) + h, out["LayerNorm"], c.layer_norm_eps)
    first = h.reshape(batch, length, c.hidden_size)[:, 0]
    pooled = np.tanh(dense(first, tower["pooler"]["dense"]))
    return dense(pooled, params["text_projection"]).astype(np.float32, copy=False)


class NumpyTextEncoder:
    """Strings -> L2-normalised text embeddings, the interface of `KoCLIPEncoder.encode_texts`."""

    towers = frozenset({"text"})

    def __init__(
        self,
        config: KoCLIPConfig,
        params: Mapping[str, Any],
        tokenizer: WordPieceTokenizer,
        model_id: str,
        fingerprint: str,
        batch_size: int = 8,
    ) -> None:
        missing = [k for k in ("text_model", "text_projection") if k not in params]
        if missing:
            raise KoCLIPError(f"the text tower's parameters are missing: {', '.join(missing)}")
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.dim = config.projection_dim
        self._max_length = min(config.text.max_positions, 512)

    def encode_texts(
        self, texts: Sequence[str], prompt: str | Sequence[str] | None = DEFAULT_PROMPT
    ) -> np.ndarray:
        """(n, dim) unit vectors; NFC, then the prompt template (a list is averaged), unless None."""
        if prompt is not None and not isinstance(prompt, str):
            return ensemble([self.encode_texts(texts, t) for t in prompt])
        out = np.empty((len(texts), self.dim), np.float32)
        prepared = [apply_prompt(t, prompt) for t in texts]
        for start in range(0, len(prepared), self.batch_size):
            ids_list = self.tokenizer.batch_ids(
                prepared[start : start + self.batch_size], self._max_length
            )
            length = max(len(x) for x in ids_list)
            ids = np.full((len(ids_list), length), self.tokenizer.pad_token_id, np.int64)
            mask = np.zeros((len(ids_list), length), np.int32)
            for row, x in enumerate(ids_list):
                ids[row, : len(x)] = x
                mask[row, : len(x)] = 1
            features = text_features(self.config, self.params, ids, mask)
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            out[start : start + len(ids_list)] = features / np.maximum(norms, _F32(1e-12))
        return out


def ensemble(per_template: Sequence[np.ndarray]) -> np.ndarray:
    """CLIP's prompt ensembling: the renormalised mean of each template's unit embeddings."""
    if not len(per_template):
        raise ValueError("give at least one prompt template, or prompt=None")
    mean = np.mean(np.stack(per_template), axis=0)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def load_text_encoder(
    name_or_path: str | os.PathLike[str] = "koclip-base", cache_dir: str | None = None
) -> NumpyTextEncoder:
    """The text tower alone, memory-mapped from the converted-weights cache; imports no JAX."""
    files = resolve(name_or_path, cache_dir=cache_dir)
    params = load_params(files, ("text",))
    tokenizer = load_wordpiece(files.directory, cache_dir)
    return NumpyTextEncoder(
        files.config, params, tokenizer, model_id_for(name_or_path), files.fingerprint
    )
