"""The batch encoder: texts and images in, L2-normalised float32 rows out, over any backend.

The backend (`Features`) computes projected features: `koclip.api.KoCLIP` with jitted JAX
programs, or `koclip.fast.numpy_encoder.NumpyKoCLIP` in plain numpy. Everything else is here once:
tokenising, prompt templates and their ensembles, batching and normalising. A jitted backend
asks for `bucketed` batches: each is padded to a bucket of rows and tokens so XLA compiles once
per bucket shape; the numpy one compiles nothing, so its batches are just big enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from koclip.config import KoCLIPConfig
from koclip.errors import KoCLIPError
from koclip.images.preprocess import DEFAULT_PROMPT, apply_prompt, preprocess
from koclip.tokenizer import WordPieceTokenizer

# Padded text lengths. A query's cost grows with its padded length (every layer runs over every
# padded position), so short lengths get fine buckets; each bucket compiles once (and once per
# machine, with the persistent compilation cache).
TEXT_LENGTH_BUCKETS = (4, 8, 12, 16, 20, 24, 28, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class Features(Protocol):
    """What the encoder needs of a model: projected, unnormalised features of each tower."""

    config: KoCLIPConfig
    params: Any
    towers: frozenset[str]
    bucketed: bool

    def get_text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any: ...

    def get_image_features(self, pixel_values: np.ndarray) -> Any: ...


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `n` (the largest one if none does)."""
    return next((b for b in buckets if n <= b), buckets[-1])


def pow2_buckets(limit: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `limit`, then `limit`."""
    out, b = [], 1
    while b < limit:
        out.append(b)
        b *= 2
    return (*out, limit)


def unit_rows(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def ensemble(per_template: Sequence[np.ndarray]) -> np.ndarray:
    """CLIP's prompt ensembling: the renormalised mean of each template's unit embeddings."""
    if not len(per_template):
        raise ValueError("give at least one prompt template, or prompt=None")
    mean = np.mean(np.stack(per_template), axis=0)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


class Encoder:
    """Batch encoders for the indexer and search: lists in, L2-normalised float32 arrays out."""

    def __init__(
        self,
        model: Features,
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
        self.config = model.config
        self.dim = model.config.projection_dim
        self.image_size = model.config.vision.image_size
        self.towers = model.towers
        if tokenizer is not None and "text" not in self.towers:
            raise KoCLIPError("a tokenizer was given but the text tower's parameters are missing")
        self._max_length = min(model.config.text.max_positions, TEXT_LENGTH_BUCKETS[-1])

    @property
    def params(self) -> Any:
        return self.model.params

    @property
    def precision(self) -> str:
        """The arithmetic of the backend's towers: "fp32" (jitted or numpy), "bf16" or "int8"."""
        return getattr(self.model, "precision", "fp32")

    def _rows(self, n: int) -> int:
        return bucket(n, pow2_buckets(self.batch_size)) if self.model.bucketed else n

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) preprocessed pixels -> (n, dim) unit vectors."""
        pixels = np.asarray(pixels, dtype=np.float32)
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            n = len(chunk)
            if self._rows(n) != n:
                pad = np.zeros((self._rows(n) - n, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            out[start : start + n] = unit_rows(self.model.get_image_features(chunk))[:n]
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
        if "text" not in self.towers:
            raise KoCLIPError("the text tower was not loaded; pass towers=(..., 'text')")
        if self.tokenizer is None:
            raise KoCLIPError("no tokenizer was given for the text tower")
        if prompt is not None and not isinstance(prompt, str):
            return ensemble([self.encode_texts(texts, t) for t in prompt])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        prepared = [apply_prompt(t, prompt) for t in texts]
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            ids_list = self.tokenizer.batch_ids(chunk, self._max_length)
            length = None
            if self.model.bucketed:
                longest = max(len(x) for x in ids_list)
                length = min(bucket(longest, TEXT_LENGTH_BUCKETS), self._max_length)
            ids, mask = self.tokenizer.pad(ids_list, length, self._rows(len(chunk)))
            features = self.model.get_text_features(ids, mask)
            out[start : start + len(chunk)] = unit_rows(features)[: len(chunk)]
        return out
