"""The public model objects: the seed's `load_koclip` API and the batch encoders.

`KoCLIP` holds a config and a (possibly one-tower) parameter pytree and runs jitted pure
functions over them. `KoCLIPEncoder` adds the tokenizer and the image transform and returns
L2-normalised float32 numpy arrays, padding every batch to a bucket so XLA compiles once per
bucket shape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from koclip.checkpoints import (
    CheckpointFiles,
    load_params,
    load_tokenizer,
    loaded_towers,
    model_id_for,
    resolve,
    tower_params,
)
from koclip.config import KoCLIPConfig
from koclip.errors import KoCLIPError
from koclip.model import KoCLIPModule, TextEncoderModule, VisionEncoderModule, l2_normalize
from koclip.numpy_encoder import ensemble
from koclip.preprocess import DEFAULT_PROMPT, apply_prompt, nfc, preprocess
from koclip.tokenizer import WordPieceTokenizer, load_wordpiece

# Padded text lengths. A query's cost grows with its padded length (RoBERTa-large at batch 1 on
# 2 cores: 35 ms at 1 token, 52 ms at 8, 64 ms at 16), so short lengths get fine buckets; each
# bucket compiles once (and once per machine, with the persistent compilation cache).
TEXT_LENGTH_BUCKETS = (4, 8, 12, 16, 20, 24, 28, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass(frozen=True)
class KoCLIPOutput:
    """What the seed's `model(**inputs)` returned, with the same field names."""

    logits_per_image: jax.Array
    logits_per_text: jax.Array
    text_embeds: jax.Array
    image_embeds: jax.Array


@partial(jax.jit, static_argnums=0)
def _text_features(config: KoCLIPConfig, params: Any, ids, mask, types, positions) -> jax.Array:
    return TextEncoderModule(config).apply({"params": params}, ids, mask, types, positions)


@partial(jax.jit, static_argnums=0)
def _image_features(config: KoCLIPConfig, params: Any, pixels: jax.Array) -> jax.Array:
    return VisionEncoderModule(config).apply({"params": params}, pixels)


@partial(jax.jit, static_argnums=0)
def _text_embeds(config: KoCLIPConfig, params: Any, ids, mask, types, positions) -> jax.Array:
    return l2_normalize(_text_features(config, params, ids, mask, types, positions))


@partial(jax.jit, static_argnums=0)
def _image_embeds(config: KoCLIPConfig, params: Any, pixels: jax.Array) -> jax.Array:
    return l2_normalize(_image_features(config, params, pixels))


class KoCLIP:
    """KoCLIP's dual encoder over a parameter pytree (the seed's `model`)."""

    def __init__(self, config: KoCLIPConfig, params: dict[str, Any]) -> None:
        self.config = config
        # One device_put of the whole tree: far cheaper than an array at a time.
        self.params = jax.device_put(params)
        self.towers = loaded_towers(self.params)

    @property
    def module(self) -> KoCLIPModule:
        return KoCLIPModule(self.config)

    def _pixels(self, pixel_values: Any) -> jax.Array:
        pixels = jnp.asarray(pixel_values, dtype=jnp.float32)
        c = self.config.vision.num_channels
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4:
            raise ValueError(f"pixel_values must be 4-d, got shape {pixels.shape}")
        if pixels.shape[-1] != c and pixels.shape[1] == c:
            pixels = jnp.transpose(pixels, (0, 2, 3, 1))  # NCHW (PyTorch processors) -> NHWC
        return pixels

    def _text_inputs(self, input_ids, attention_mask, token_type_ids, position_ids):
        ids = jnp.asarray(input_ids, dtype=jnp.int32)
        if ids.ndim == 1:
            ids = ids[None]
        mask = (
            jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        )
        types = (
            jnp.zeros_like(ids)
            if token_type_ids is None
            else jnp.asarray(token_type_ids, jnp.int32)
        )
        if position_ids is None:
            # KoCLIP was trained in Flax with positions 0..L-1, not RoBERTa's padding offset.
            position_ids = jnp.broadcast_to(jnp.arange(ids.shape[-1], dtype=jnp.int32), ids.shape)
        return (
            ids,
            mask.reshape(ids.shape),
            types.reshape(ids.shape),
            jnp.asarray(position_ids, jnp.int32),
        )

    def get_text_features(
        self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None
    ) -> jax.Array:
        """Projected (unnormalised) text features, as transformers' method of that name."""
        inputs = self._text_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        return _text_features(self.config, tower_params(self.params, "text"), *inputs)

    def get_image_features(self, pixel_values) -> jax.Array:
        """Projected (unnormalised) image features; NHWC or NCHW pixels."""
        return _image_features(
            self.config, tower_params(self.params, "vision"), self._pixels(pixel_values)
        )

    def __call__(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        **_: Any,
    ) -> KoCLIPOutput:
        if input_ids is None or pixel_values is None:
            raise ValueError("KoCLIP needs both input_ids and pixel_values")
        inputs = self._text_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        text = _text_embeds(self.config, tower_params(self.params, "text"), *inputs)
        image = _image_embeds(
            self.config, tower_params(self.params, "vision"), self._pixels(pixel_values)
        )
        per_text = jnp.exp(self.params["logit_scale"]) * text @ image.T
        return KoCLIPOutput(per_text.T, per_text, text, image)


class KoCLIPProcessor:
    """Tokenizer + image transform with the seed's call signature."""

    def __init__(self, tokenizer: Any, image_size: int = 224, max_length: int = 512) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_length = max_length

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str = "np",
        padding: bool | str = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if return_tensors not in ("np", "jax"):
            raise ValueError(f"return_tensors must be 'np' or 'jax', not {return_tensors!r}")
        out: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            enc = self.tokenizer(
                [nfc(t) for t in texts],
                padding=padding,
                truncation=True,
                max_length=kwargs.get("max_length", self.max_length),
                return_tensors="np",
            )
            out["input_ids"] = enc["input_ids"].astype(np.int32)
            out["attention_mask"] = enc["attention_mask"].astype(np.int32)
            if "token_type_ids" in enc:
                out["token_type_ids"] = enc["token_type_ids"].astype(np.int32)
        if images is not None:
            imgs = [images] if isinstance(images, Image.Image) else list(images)
            out["pixel_values"] = np.stack([preprocess(i, self.image_size) for i in imgs])
        if not out:
            raise ValueError("give text, images or both")
        if return_tensors == "jax":
            out = {k: jnp.asarray(v) for k, v in out.items()}
        return out


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


def _pow2_buckets(limit: int) -> tuple[int, ...]:
    out, b = [], 1
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return tuple(out)


class KoCLIPEncoder:
    """Batch encoders for the indexer and search: lists in, L2-normalised float32 arrays out."""

    def __init__(
        self,
        model: KoCLIP,
        tokenizer: WordPieceTokenizer | None,
        model_id: str,
        fingerprint: str,
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.dim = model.config.projection_dim
        self.image_size = model.config.vision.image_size
        self.towers = model.towers
        self._batch_buckets = _pow2_buckets(batch_size)
        self._max_length = min(model.config.text.max_positions, TEXT_LENGTH_BUCKETS[-1])

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 224, 224, 3) preprocessed pixels -> (n, dim) unit vectors."""
        pixels = np.asarray(pixels, dtype=np.float32)
        n = len(pixels)
        out = np.empty((n, self.dim), dtype=np.float32)
        params = tower_params(self.model.params, "vision")
        for start in range(0, n, self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            size = _bucket(len(chunk), self._batch_buckets)
            if size != len(chunk):
                pad = np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            emb = _image_embeds(self.model.config, params, chunk)
            out[start : start + self.batch_size] = np.asarray(emb)[
                : min(self.batch_size, n - start)
            ]
        return out

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (n, dim) unit vectors, through the exact CLIP transform."""
        if not len(images):
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(np.stack([preprocess(i, self.image_size) for i in images]))

    def encode_texts(
        self, texts: Sequence[str], prompt: str | Sequence[str] | None = DEFAULT_PROMPT
    ) -> np.ndarray:
        """Strings -> (n, dim) unit vectors; NFC, then the prompt template unless `prompt=None`.

        Several templates (a list) give the renormalised mean of each text's templated
        embeddings, CLIP's prompt ensembling.
        """
        if self.tokenizer is None:
            raise KoCLIPError("the text tower was not loaded; pass towers=(..., 'text')")
        if prompt is not None and not isinstance(prompt, str):
            return ensemble([self.encode_texts(texts, t) for t in prompt])
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if not n:
            return out
        params = tower_params(self.model.params, "text")
        prepared = [apply_prompt(t, prompt) for t in texts]
        for start in range(0, n, self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            ids_list = self.tokenizer.batch_ids(chunk, self._max_length)
            length = _bucket(max(len(x) for x in ids_list), TEXT_LENGTH_BUCKETS)
            ids, mask = self.tokenizer.pad(
                ids_list, min(length, self._max_length), _bucket(len(chunk), self._batch_buckets)
            )
            types = np.zeros_like(ids)
            positions = np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape)
            emb = _text_embeds(self.model.config, params, ids, mask, types, positions)
            out[start : start + len(chunk)] = np.asarray(emb)[: len(chunk)]
        return out


def _load(
    name_or_path: str | os.PathLike[str], towers: Sequence[str], cache_dir: str | None
) -> tuple[CheckpointFiles, KoCLIP]:
    files = resolve(name_or_path, cache_dir=cache_dir)
    params = load_params(files, towers)
    return files, KoCLIP(files.config, params)


def load_koclip(
    name_or_path: str | os.PathLike[str] = "koclip-base", cache_dir: str | None = None
) -> tuple[KoCLIP, KoCLIPProcessor]:
    """The seed's entry point: `model, processor = load_koclip("koclip-base")`."""
    files, model = _load(name_or_path, ("text", "vision"), cache_dir)
    tokenizer = load_tokenizer(files, cache_dir)
    processor = KoCLIPProcessor(
        tokenizer, files.config.vision.image_size, min(files.config.text.max_positions, 512)
    )
    return model, processor


def load_encoder(
    name_or_path: str | os.PathLike[str] = "koclip-base",
    towers: Sequence[str] = ("text", "vision"),
    batch_size: int = 32,
    cache_dir: str | None = None,
) -> KoCLIPEncoder:
    """Batch encoders; load only the towers you need (search: text; indexing: vision)."""
    files, model = _load(name_or_path, towers, cache_dir)
    tokenizer = load_wordpiece(files.directory, cache_dir) if "text" in towers else None
    return KoCLIPEncoder(
        model, tokenizer, model_id_for(name_or_path), files.fingerprint, batch_size=batch_size
    )
