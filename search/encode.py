"""Query embeddings: loads only the tower a query needs, caches text embeddings, composes terms."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import db
from koclip.cache import default_cache_root
from koclip.preprocess import nfc
from koclip.runtime import enable_compilation_cache
from search.errors import ModelMismatchError, QueryError, QueryImageError
from search.query import check_text

TEXT_CACHE_SIZE = 256
# "jax": the jitted towers, fastest per query once compiled (serve, the Python API).
# "numpy": no JAX import, tracing or compile, ~1.5 s less to a one-shot process's first answer
# and ~2x the jitted forward pass after that (koclip/numpy_encoder.py): the CLI's choice.
BACKENDS = ("jax", "numpy")


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


class DiskTextCache:
    """Text embeddings kept across processes, so a repeated one-shot query (paging with
    --offset, a re-run) needs no text tower at all. Best effort: any SQLite error is a miss."""

    MAX_ROWS = 20_000  # ~40 MB at dim 512

    def __init__(self, path: Path | None = None) -> None:
        self.path = path  # None: text-embeddings.sqlite3 in koclip's cache folder, found on use
        self._conn: sqlite3.Connection | None = None
        self._broken = False
        # One connection shared by the Searcher's threads, one statement at a time.
        self._lock = threading.RLock()

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._broken:
            try:
                if self.path is None:
                    self.path = default_cache_root() / "text-embeddings.sqlite3"
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=1.0, isolation_level=None, check_same_thread=False
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (fingerprint TEXT, prompt TEXT, "
                    "text TEXT, vector BLOB, PRIMARY KEY (fingerprint, prompt, text))"
                )
                self._conn = conn
            except (sqlite3.Error, OSError):
                self._broken = True
        return self._conn

    def get(self, fingerprint: str, prompt: str, text: str) -> np.ndarray | None:
        """The stored vector, or None."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = conn.execute(
                    "SELECT vector FROM embeddings WHERE fingerprint=? AND prompt=? AND text=?",
                    (fingerprint, prompt, text),
                ).fetchone()
            except sqlite3.Error:
                return None
        return None if row is None else np.frombuffer(row[0], "<f4").astype(np.float32)

    def put(self, fingerprint: str, items: list[tuple[str, str, np.ndarray]]) -> None:
        """Store (prompt, text, vector) items, dropping the oldest rows past MAX_ROWS."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                    [(fingerprint, p, t, np.asarray(v, "<f4").tobytes()) for p, t, v in items],
                )
                conn.execute(
                    "DELETE FROM embeddings WHERE rowid <= (SELECT MAX(rowid) FROM embeddings) - ?",
                    (self.MAX_ROWS,),
                )
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Close the connection (reopened on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class QueryEncoder:
    """Turns query texts and images into unit vectors with the library's own model."""

    def __init__(
        self,
        manifest: db.Manifest,
        cache_size: int = TEXT_CACHE_SIZE,
        persistent: bool = True,
        backend: str = "jax",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.manifest = manifest
        self.backend = backend
        self.cache = TextCache(cache_size)
        self.disk = DiskTextCache() if persistent else None
        self._encoders: dict[str, Any] = {}
        # Loading and running the towers, one caller at a time: a fast tokenizer raises
        # "Already borrowed" when two threads use it at once.
        self._model_lock = threading.RLock()

    @classmethod
    def for_model(cls, model: str | os.PathLike[str], **kwargs: Any) -> QueryEncoder:
        """An encoder of a model on its own, no library (eval): loaded as a library's model is."""
        from koclip import model_id_for, resolve
        from koclip.preprocess import PREPROCESS_VERSION

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
            enc = self._fast(tower)
            if enc is None and self.backend == "numpy":
                from koclip import load_numpy_encoder

                enc = load_numpy_encoder(self.manifest.model_id, towers=(tower,))
            elif enc is None:
                from koclip import load_encoder

                enable_compilation_cache()
                enc = load_encoder(self.manifest.model_id, towers=(tower,))
            if enc.fingerprint != self.manifest.fingerprint:
                raise ModelMismatchError(
                    f"the weights of {self.manifest.model_id} changed since the library was "
                    "built; re-index with `koclip-search index --rebuild`"
                )
            self._encoders[tower] = enc
        return self._encoders[tower]

    def _fast(self, tower: str) -> Any | None:
        """The tower on a fast path (bf16 or int8, `koclip.precision`) where it is chosen, else
        None (the numpy or jitted fp32 tower).

        An explicit $KOCLIP_PRECISION of bf16 or int8 is used by every backend (and raises
        where it cannot run). `auto` takes bf16 in long-lived processes (serve, the Python API:
        51 against 325 ms a text query at koclip-base size, `bench/precision.py`) but not in the
        one-shot CLI, whose single query is faster on the memory-mapped numpy tower than
        compiling a graph first.
        """
        from koclip import precision

        asked = precision.requested_precision(None)
        if asked == "fp32" or (asked == "auto" and self.backend == "numpy"):
            return None
        chosen = precision.chosen_precision(asked)
        if chosen == "fp32":
            return None
        try:
            return precision.load_fast_encoder(self.manifest.model_id, chosen, towers=(tower,))
        except precision.PrecisionError:
            if asked != "auto":
                raise
            return None

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
        why = exc.strerror or str(exc)
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
    except ImageError as exc:
        raise QueryImageError(f"cannot read the query image {path}: {exc}") from None
    except OSError as exc:
        raise QueryImageError(
            f"cannot read the query image {path}: {exc.strerror or exc}"
        ) from None


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
