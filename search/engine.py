"""Top-k over a library's FAISS index: unfiltered, or exact inside a folder/date filter.

What is committed is what is searched: the saved index file may lag the database (an indexer
killed between a commit and its next save), so the reader adds the committed rows the file
lacks from their stored embeddings, searched exactly beside the index (any index type, no
lock, no write). Ids the file holds but the database no longer does are dropped by the row
lookup of every search.

A compressed index (`ivf-pq`) only proposes candidates: `top_k` fetches k x r of them, reads
their float32 vectors from the database by id (one indexed query; no second copy of the
vectors to keep consistent, so the library stays crash-safe as it is) and returns them in
exact cosine order with exact scores.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

import db
from db import embeddings, photos, vectors
from search import ann
from search.filters import Filter

if TYPE_CHECKING:
    import faiss


@dataclass(frozen=True)
class LoadedIndex:
    """One loaded index file: the FAISS index, the id of each storage row, and how to find rows."""

    index: faiss.Index
    ids: np.ndarray  # FAISS id of each storage row (a bare IVF's: in list order)
    # Committed rows the file lacks (saved after it), searched exactly: ids and unit vectors.
    extra_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra: np.ndarray | None = None
    # The newest committed photo id already reconciled with (None: not yet).
    checked_max: int | None = None
    file_bytes: int = 0  # size of the index file read

    @classmethod
    def read(cls, path: Path, dim: int | None = None) -> LoadedIndex:
        """Load and tune an index file (db.LibraryCorruptError if it is not the library's)."""
        index = vectors.read_index(path, dim)
        ann.tune(index)
        return cls(index, vectors.index_ids(index), file_bytes=Path(path).stat().st_size)

    @functools.cached_property
    def order(self) -> np.ndarray:
        """argsort of ids, to map ids back to storage rows (made on first use: only an index
        with flat storage needs it, and it costs 8 bytes a photo)."""
        return np.argsort(self.ids, kind="stable")

    @property
    def compressed(self) -> bool:
        """Whether the index holds lossy codes only, so its candidates are re-ranked."""
        return vectors.is_compressed(self.index)

    @property
    def ntotal(self) -> int:
        """Vectors searched: the file's and the committed rows added beside it."""
        return self.index.ntotal + len(self.extra_ids)

    def resident_bytes(self) -> int:
        """Memory held for searching: the index's arrays (the file holds them as they are in
        RAM), an IndexIDMap2's reverse map (~40 bytes an entry in libstdc++'s unordered_map),
        the id arrays kept here, and the committed rows added beside the file."""
        import faiss

        size = self.file_bytes + self.ids.nbytes + self.extra_ids.nbytes
        if isinstance(self.index, faiss.IndexIDMap2):
            size += 40 * self.index.ntotal
        size += 0 if self.extra is None else self.extra.nbytes
        return size + (self.order.nbytes if "order" in self.__dict__ else 0)

    def caught_up(self, library: db.Library) -> LoadedIndex:
        """This index with every committed row it lacks added (self if none is new).

        Cheap when nothing was committed since the last call: one max(id) lookup. Ids only
        grow (AUTOINCREMENT), so after the first full comparison only newer ids are read.
        """
        with library.session() as s, s.begin():
            newest = photos.newest_id(s)
            if newest == self.checked_max:
                return self
            if self.checked_max is None:
                have = np.concatenate([self.ids, self.extra_ids])
                missing = np.setdiff1d(photos.photo_ids(s), have, assume_unique=True)
                chunks = [(missing, embeddings.vectors_for(s, missing))] if len(missing) else []
            else:
                newer = db.Photo.id > self.checked_max
                chunks = list(embeddings.iter_embeddings(s, newer))
        if not chunks:
            return replace(self, checked_max=newest)
        ids = np.concatenate([self.extra_ids, *(c[0] for c in chunks)])
        parts = ([] if self.extra is None else [self.extra]) + [c[1] for c in chunks]
        extra = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        return replace(self, extra_ids=ids, extra=extra, checked_max=newest)

    def search_extra(
        self, queries: np.ndarray, k: int, keep: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact (scores, ids) over the added rows (those in `keep` only, if given), <= k each."""
        if self.extra is None:
            return _empty(len(queries), 0)
        rows = slice(None) if keep is None else np.isin(self.extra_ids, keep)
        ids, vecs = self.extra_ids[rows], self.extra[rows]
        scores = np.asarray(queries, np.float32) @ vecs.T
        return _top(scores, np.broadcast_to(ids, scores.shape), k)

    def flat_storage(self) -> faiss.IndexFlat | None:
        """The IndexFlat holding exact vectors row by row, or None (IVF-SQ8 keeps only codes)."""
        import faiss

        inner = vectors.inner_index(self.index)
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        return inner if isinstance(inner, faiss.IndexFlat) else None

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Storage rows of the given ids; ids not in the index (saved later) are dropped."""
        sorted_ids = self.ids[self.order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == ids
        return np.sort(self.order[pos[hit]]).astype(np.int64)


class IndexView:
    """The library's saved FAISS index, reloaded when the indexer replaces the file.

    Thread-safe: a reload swaps one immutable LoadedIndex, and each search works on the one
    it started with.
    """

    def __init__(self, library: db.Library, index_type: str, dim: int) -> None:
        self.library = library
        self.path: Path = library.index_path(index_type)
        self.dim = dim
        self._stamp: tuple[int, int] | None = None
        self._loaded: LoadedIndex | None = None
        self._lock = threading.Lock()

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def refresh(self) -> LoadedIndex | None:
        """The current index, (re)loaded if the file changed (the indexer saves by rename)."""
        with self._lock:
            stamp = self._current_stamp()
            if stamp is None:
                # `reindex` switched types: the manifest names the new file, the old one is gone.
                manifest = self.library.manifest()
                if manifest is not None:
                    self.path = self.library.index_path(manifest.index_type)
                    stamp = self._current_stamp()
            if stamp != self._stamp or (stamp is not None and self._loaded is None):
                self._loaded = None if stamp is None else LoadedIndex.read(self.path, self.dim)
                self._stamp = stamp
                ann.enable_blas_for_batches(self.dim)
            if self._loaded is not None:
                self._loaded = self._loaded.caught_up(self.library)
            return self._loaded

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The loaded FAISS index (None before the indexer's first save)."""
        return None if self._loaded is None else self._loaded.index


def top_k(
    loaded: LoadedIndex | None, session: Session, flt: Filter, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query, best first; ids are -1 once candidates run out.

    Callers bound `k` by the library's size (see `candidate_limit`): the arrays are (n, k).
    """
    if loaded is None or (flt.active and loaded.flat_storage() is None):
        # Nothing saved yet (first minutes of a first index run), or a filter over an index
        # without exact vectors: scan what is committed.
        return _scan_database(session, flt, queries, k)
    if flt.active:
        keep = photos.ids_where(session, *flt.conditions())
        scores, ids = _search_filtered(loaded, keep, queries, k)
        return _with_extra(loaded, scores, ids, queries, k, keep)
    ntotal = loaded.index.ntotal
    if not ntotal:
        return _with_extra(loaded, *_empty(len(queries), 0), queries, k)
    if loaded.compressed:
        reranked = _reranked(loaded, session, queries, k)
        if reranked is None:  # too few candidates: every committed row, exactly
            return _scan_database(session, Filter(), queries, k)
        return _with_extra(loaded, *reranked, queries, k)
    reach = min(k, ntotal)
    with few_query_threads(len(queries)):
        scores, ids = vectors.search(loaded.index, queries, reach)
    if (ids < 0).any():
        # The ANN index could not reach `reach` of its vectors (HNSW's beam, IVF's probed
        # lists): only an exhaustive scan makes a long page complete.
        if loaded.flat_storage() is None:
            return _scan_database(session, Filter(), queries, k)  # every committed row
        scores, ids = _exhaustive(loaded, queries, reach)
    return _with_extra(loaded, scores, ids, queries, k)


def _with_extra(
    loaded: LoadedIndex,
    scores: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's top-k merged with the committed rows added beside it."""
    if loaded.extra is None:
        return _pad(scores, ids, k)
    more_s, more_i = loaded.search_extra(queries, k, keep)
    both_s, both_i = _top(np.hstack([scores, more_s]), np.hstack([ids, more_i]), k)
    return _pad(both_s, both_i, k)


def candidate_limit(loaded: LoadedIndex | None, session: Session) -> int:
    """How many distinct candidates a search can return at most (committed or indexed photos)."""
    committed = photos.photo_count(session)
    return max(committed, 0 if loaded is None else loaded.ntotal)


def _exhaustive(loaded: LoadedIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over every vector of the index's own flat storage."""
    storage = loaded.flat_storage()
    with few_query_threads(len(queries)):
        scores, rows = storage.search(np.ascontiguousarray(queries, np.float32), k)
    return scores, np.where(rows >= 0, loaded.ids[np.maximum(rows, 0)], -1)


def _reranked(
    loaded: LoadedIndex, session: Session, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact top-k (scores, ids) among a compressed index's k x r candidates, re-scored with
    the photos' stored float32 vectors; None when the candidates cannot give an exact page
    (they would be the whole index, the probed lists hold fewer than k of them, or stale
    ids leave fewer than k), for the caller to scan instead.
    """
    ntotal = loaded.index.ntotal
    fetch = ann.rerank_candidates(k)
    if fetch >= ntotal:
        return None
    with few_query_threads(len(queries)):
        _, cand = vectors.search(loaded.index, queries, fetch)
    found, stored = embeddings.stored_vectors(session, cand[cand >= 0], loaded.index.d)
    if not len(found):
        return None
    pos = np.minimum(np.searchsorted(found, cand), len(found) - 1)
    hit = (found[pos] == cand) & (cand >= 0)
    if (hit.sum(axis=1) < k).any():
        return None
    exact = np.asarray(queries, np.float32) @ stored.T
    scores = np.where(hit, np.take_along_axis(exact, pos, 1), -np.inf).astype(np.float32)
    return _top(scores, np.where(hit, cand, -1), k)


def _search_filtered(
    loaded: LoadedIndex, keep: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among the photos the filter lets through (`keep`), for an index with exact
    vectors (flat, HNSW): faiss scans the subset's rows only (IDSelectorArray). No candidate
    short list is post-filtered, so a narrow filter still gets its true top-k. (Without exact
    vectors, `top_k` scans the subset's stored embeddings in the database instead.)
    """
    storage = loaded.flat_storage()
    rows = loaded.rows_of(keep)
    if not len(rows):
        return _empty(len(queries), k)
    import faiss

    params = faiss.SearchParameters(sel=faiss.IDSelectorArray(rows))
    with few_query_threads(len(queries)):
        scores, found = storage.search(
            np.ascontiguousarray(queries, np.float32), min(k, len(rows)), params=params
        )
    ids = np.where(found >= 0, loaded.ids[np.maximum(found, 0)], -1)
    return _pad(scores, ids, k)


@contextlib.contextmanager
def few_query_threads(n_queries: int) -> Iterator[None]:
    """Search fewer queries than OpenMP threads on one thread.

    faiss parallelises IVF/HNSW search over queries, so one query keeps one thread busy and
    the others only join its barrier; on a loaded machine a descheduled idle thread stalls
    that barrier for a scheduler tick, many times the query's own cost on a busy machine
    (bench/search.py measures it). Batches (>= one query per thread) keep every thread.
    """
    import faiss

    threads = faiss.omp_get_max_threads()
    if n_queries >= threads:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _scan_database(
    session: Session, flt: Filter, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the filter's stored embeddings, a chunk at a time (bounded memory)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for ids, vecs in embeddings.iter_embeddings(session, *flt.conditions(), chunk=8192):
        scores = queries @ vecs.T
        best_s = np.concatenate([best_s, scores], axis=1)
        best_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
        best_s, best_i = _top(best_s, best_i, k)
    return _pad(best_s, best_i, k)


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row, sorted by score descending (ties by id, for stable paging)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, 1)
        ids = np.take_along_axis(ids, part, 1)
    order = np.lexsort((ids, -scores), axis=1) if scores.size else np.zeros_like(ids)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, ids
    n = len(scores)
    return (
        np.concatenate([scores, np.full((n, missing), -np.inf, np.float32)], axis=1),
        np.concatenate([ids, np.full((n, missing), -1, np.int64)], axis=1),
    )


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
