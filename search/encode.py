"""Query embeddings: loads only the tower a query needs, caches text embeddings, composes terms."""

from __future__ import annotations

import math
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import db
from db.text_cache import TEXT_CACHE_FILENAME, DiskTextCache
from koclip.checkpoints.cache import default_cache_root
from koclip.errors import os_reason
from koclip.images.preprocess import nfc
from koclip.loader import BACKENDS
from search.errors import ModelMismatchError, QueryError, QueryImageError
from search.query import check_text

TEXT_CACHE_SIZE = 256


class TextCache:
    """A small LRU of text embeddings keyed by (NFC text, prompt); values are read-only."""

    def __init__(self, maxsize: int = TEXT_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, bool], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, bool]) -> np.ndarray | None:
        """The cached vector, marking it recently used; None on a miss."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, bool], value: np.ndarray) -> None:
        """Store a vector, evicting the least recently used one past `maxsize`."""
        value = np.array(value, dtype=np.float32)
        value.setflags(write=False)
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class QueryEncoder:
    """Turns query texts and images into unit vectors with the library's own model."""

    def __init__(
        self,
        manifest: db.Manifest,
        cache_size: int = TEXT_CACHE_SIZE,
        persistent: bool = True,
        backend: str = "jax",
    ) -> None:
        """`backend`: where fp32 towers run (`koclip.load_encoder`): "jax", the jitted towers,
        fastest per query once compiled (serve, the Python API), or "numpy", no JAX import,
        tracing or compile, the one-shot CLI's choice."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.manifest = manifest
        self.backend = backend
        self.cache = TextCache(cache_size)
        self.disk = (
            DiskTextCache(default_cache_root() / TEXT_CACHE_FILENAME) if persistent else None
        )
        self._encoders: dict[str, Any] = {}
        # Loading and running the towers, one caller at a time: a fast tokenizer raises
        # "Already borrowed" when two threads use it at once.
        self._model_lock = threading.RLock()

    @classmethod
    def for_model(cls, model: str | os.PathLike[str], **kwargs: Any) -> QueryEncoder:
        """An encoder of a model on its own, no library (eval): loaded as a library's model is."""
        from koclip import model_id_for, resolve
        from koclip.images.preprocess import PREPROCESS_VERSION

        files = resolve(model)
        manifest = db.Manifest(
            model_id=model_id_for(model),
            fingerprint=files.fingerprint,
            dim=files.config.projection_dim,
            preprocess_version=PREPROCESS_VERSION,
            index_type=db.vectors.DEFAULT_INDEX_TYPE,  # unused: no library, no index
            photo_root=".",
        )
        return cls(manifest, **kwargs)

    def encoder(self, tower: str) -> Any:
        """The koclip encoder holding only `tower` ("text" or "vision"), loaded on first use."""
        with self._model_lock:
            return self._load(tower)

    def _load(self, tower: str) -> Any:
        if tower not in self._encoders:
            # A damaged or missing checkpoint raises koclip's CheckpointError as it is: that is
            # a model failure, not a mismatch. Only weights that changed since indexing are one.
            from koclip import load_encoder

            enc = load_encoder(
                self.manifest.model_id,
                towers=(tower,),
                backend=self.backend,
                compilation_cache=self.backend == "jax",
            )
            if enc.fingerprint != self.manifest.fingerprint:
                raise ModelMismatchError(
                    f"the weights of {self.manifest.model_id} changed since the library was "
                    "built; re-index with `koclip-search index --rebuild`"
                )
            self._encoders[tower] = enc
        return self._encoders[tower]

    def texts(self, texts: Sequence[str], prompt: bool = True) -> np.ndarray:
        """(n, dim) unit vectors; repeated texts come from the caches, the rest in one batch."""
        from koclip import DEFAULT_PROMPT

        template = DEFAULT_PROMPT if prompt else ""
        keys = [(nfc(check_text(t, "the query text")).strip(), prompt) for t in texts]
        if any(not text for text, _ in keys):
            raise QueryError("the query is empty")
        out = np.empty((len(keys), self.manifest.dim), np.float32)
        missing: dict[tuple[str, bool], list[int]] = {}
        for i, key in enumerate(keys):
            cached = self.cache.get(key)
            if cached is None and self.disk is not None:
                cached = self.disk.get(self.manifest.fingerprint, template, key[0])
                if cached is not None:
                    self.cache.put(key, cached)
            if cached is None:
                missing.setdefault(key, []).append(i)
            else:
                out[i] = cached
        if missing:
            with self._model_lock:
                vecs = self._load("text").encode_texts(
                    [t for t, _ in missing], prompt=template or None
                )
            for (key, rows), vec in zip(missing.items(), vecs, strict=True):
                self.cache.put(key, vec)
                out[rows] = vec
            if self.disk is not None:
                self.disk.put(
                    self.manifest.fingerprint,
                    [(template, t, v) for (t, _), v in zip(missing, vecs, strict=True)],
                )
        return out

    def warm(self, tower: str) -> None:
        """Load `tower` and run it once on a one-item batch, compiling that shape now."""
        from PIL import Image

        with self._model_lock:
            enc = self._load(tower)
            if tower == "text":
                enc.encode_texts(["준비"])
            else:
                enc.encode_images([Image.new("RGB", (enc.image_size, enc.image_size))])

    def images(self, images: Sequence[Any]) -> np.ndarray:
        """(n, dim) unit vectors of PIL images."""
        with self._model_lock:
            return self._load("vision").encode_images(list(images))

    def close(self) -> None:
        """Release the on-disk cache's connection."""
        if self.disk is not None:
            self.disk.close()


def query_image_path(image: str | os.PathLike[str]) -> Path:
    """The path of an image named in a query, once `os.stat` shows a regular file (a FIFO is
    never opened, so never waited on); QueryImageError says what it is instead."""
    path = Path(os.fspath(image)).expanduser()
    text = db.path_key(os.fspath(image))  # as people read it; the file keeps its own bytes
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        why = "no such file"
    except ValueError:  # an embedded NUL: no file can have that name
        why = "a file name cannot hold a NUL character"
    except OSError as exc:
        why = os_reason(exc)
    else:
        if stat.S_ISREG(mode):
            return path
        why = "a folder, not an image" if stat.S_ISDIR(mode) else "not a regular file"
    raise QueryImageError(f"cannot read the query image {text}: {why}")


def open_query_image(path: str | os.PathLike[str]) -> Any:
    """Open an image named in a query as RGB; QueryImageError says why it cannot be read."""
    from koclip import ImageError, open_image

    try:
        return open_image(os.fspath(path))
    except (ImageError, OSError) as exc:
        why = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        raise QueryImageError(f"cannot read the query image {path}: {why}") from None


def combine(weights: Sequence[float], vectors: np.ndarray) -> np.ndarray:
    """Weighted sum of unit vectors, renormalised; QueryError if the terms cancel out."""
    if not all(math.isfinite(w) for w in weights):
        raise QueryError("a term's weight must be a finite number")
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    scale = np.asarray(weights, np.float64)
    # Only the weights' ratios matter: scaled to at most 1, a weight of 1e30 cannot overflow.
    scale = (scale / max(np.abs(scale).max(), 1e-300)).astype(np.float32)
    total = (scale[:, None] * vectors / np.maximum(norms, 1e-12)).sum(0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("the query's terms cancel each other out")
    return (total / norm).astype(np.float32)
