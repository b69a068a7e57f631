"""The FAISS wrapper: free functions over arrays; ids are the `photos` primary keys.

Every index is an inner-product index over the L2-normalised embeddings, so scores are
cosine similarities. Most are an `IndexIDMap2` over the bare index; `ivf-pq` is an
`IndexIVFPQ` holding the ids in its own inverted lists (an IDMap2 would add ~50 bytes per
photo, as much as the codes themselves). The index file is a cache: the database
holds every embedding, and `build_index` recreates the file from them at any time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from db.errors import LibraryCorruptError, LibraryError, LibraryWriteError, index_command
from koclip.files import atomic_path
from koclip.names import FLAT, HNSW, IVF_PQ, IVF_SQ8

DEFAULT_INDEX_TYPE = FLAT
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80

# Which type a library gets by its size, unless the user chose one (`reindex --index`).
# Exact search over 200k x 512 float32 (400 MB) is ~25 ms on one core: cheap next to the
# text encoder; above it an ANN index keeps queries under 10 ms.
FLAT_MAX = 200_000
# Above this, ivf-pq: ivf-sq8 holds ~560 bytes a 512-d photo in RAM (1.1 GB at 2M), ivf-pq
# ~90 (bench/bigindex.py; flat 2,105). Up to 2M the SQ8 codes fit a desktop's spare memory
# and need no re-rank reads; past it they would not (51 GB at 100M), and PQ's re-rank costs
# the same few ms whatever the size.
SQ8_MAX = 2_000_000
# The automatic types, smallest library first. A library switches up the ladder as soon as
# it passes a threshold, and back down only once it has shrunk to half of it, so a library
# hovering at a threshold is not rebuilt on every run.
AUTO_LADDER = (FLAT, IVF_SQ8, IVF_PQ)


def auto_index_type(n: int) -> str:
    """The index type a collection of `n` photos gets when none was chosen."""
    if n <= FLAT_MAX:
        return FLAT
    return IVF_SQ8 if n <= SQ8_MAX else IVF_PQ


# faiss's floor of training points per centroid (it warns below it): caps a small library's
# IVF lists and PQ centroids.
MIN_POINTS_PER_CENTROID = 39


def ivf_nlist(n: int) -> int:
    """~2 sqrt(n) IVF cells, a power of two, with >= 39 training points per cell."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(max(n, 1)), 1)))
    return max(1, min(nlist, n // MIN_POINTS_PER_CENTROID))


def _hnsw(dim: int, n: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def _ivf_sq8(dim: int, n: int) -> faiss.Index:
    return faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        ivf_nlist(n),
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )


def pq_params(dim: int, n: int) -> tuple[int, int]:
    """(sub-quantisers M, bits per code) of `ivf-pq` for `n` vectors of `dim` values.

    M = dim / 8 (the largest divisor of dim up to it): one byte per 8 dimensions, 64 bytes
    for a 512-d photo, 32x smaller than float32. Fewer bytes lose too much to find the true
    top-10 among k x r candidates (bench/bigindex.py); more would outgrow 100 bytes a photo
    with the ids. 8 bits (256 centroids per sub-quantiser, faiss's fast path) once there are
    >= 39 training points per centroid (faiss's floor); a tiny library gets fewer bits.
    """
    m = max(d for d in range(1, max(dim // 8, 1) + 1) if dim % d == 0)
    bits = int(math.floor(math.log2(max(n, 2) / MIN_POINTS_PER_CENTROID))) if n >= 2 else 1
    return m, max(1, min(8, bits))


def _ivf_pq(dim: int, n: int) -> faiss.Index:
    """IVF (nlist by `ivf_nlist`, the same rule as ivf-sq8) over residuals coded by PQ
    (`pq_params`). Search re-ranks its candidates exactly (search.engine), so the codes only
    need to put the true neighbours among the candidates, not order them."""
    m, bits = pq_params(dim, n)
    return faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, ivf_nlist(n), m, bits, faiss.METRIC_INNER_PRODUCT
    )


# name -> factory(dim, n_vectors) -> bare inner-product index (not yet wrapped, maybe untrained).
# n_vectors is the collection size, for factories that size themselves (IVF lists, ...).
# Parameters of hnsw / ivf-sq8 as measured by bench/search.py (recall@10 0.98 at 1M vectors).
IndexFactory = Callable[[int, int], faiss.Index]
INDEX_FACTORIES: dict[str, IndexFactory] = {
    FLAT: lambda dim, n: faiss.IndexFlatIP(dim),
    HNSW: _hnsw,
    IVF_SQ8: _ivf_sq8,
    IVF_PQ: _ivf_pq,
}
# Types whose index holds the ids itself (no IndexIDMap2 wrapper).
BARE_TYPES = {IVF_PQ}
INDEX_TYPES = tuple(INDEX_FACTORIES)  # the built-in types, which a library may be switched to


def register_index_type(name: str, factory: IndexFactory) -> None:
    """Add an index type (e.g. "hnsw") that `make_index` and `build_index` can then make."""
    INDEX_FACTORIES[name] = factory


def make_index(index_type: str, dim: int, n_vectors: int = 0) -> faiss.Index:
    """An empty inner-product index of the given type taking SQLite ids (untrained if the type
    trains): an IndexIDMap2, or the bare index of a BARE_TYPES type."""
    try:
        factory = INDEX_FACTORIES[index_type]
    except KeyError:
        known = ", ".join(sorted(INDEX_FACTORIES))
        raise LibraryError(f"unknown index type {index_type!r} (known: {known})") from None
    index = factory(dim, n_vectors)
    return index if index_type in BARE_TYPES else faiss.IndexIDMap2(index)


def inner_index(index: faiss.Index) -> faiss.Index:
    """The bare index (downcast) under an IndexIDMap2, or the index itself."""
    if isinstance(index, faiss.IndexIDMap):
        index = index.index
    return faiss.downcast_index(index)


def is_compressed(index: faiss.Index) -> bool:
    """Whether the index keeps only lossy codes (PQ), so search must re-rank its candidates
    with the stored float32 vectors."""
    return isinstance(inner_index(index), faiss.IndexIVFPQ)


def build_index(
    index_type: str,
    dim: int,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    n_vectors: int = 0,
    sample: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> faiss.IndexIDMap2:
    """A new index holding every (ids, vectors) chunk of a collection of `n_vectors`.

    `chunks` yields (int64 ids (n,), float32 vectors (n, dim)); pass a generator over the
    database (see `Library.iter_embeddings`) to keep memory to the index itself. A type that
    trains is trained on `sample(rows)`, the vectors at the given sorted positions of the
    collection: a seeded random sample spread over all of it (see `training_size`). Without
    `sample` it trains on the first chunk. `progress(added, n_vectors)` is called once the
    index is trained (added 0) and after each chunk.
    """
    index = make_index(index_type, dim, n_vectors)
    if not index.is_trained and sample is not None and n_vectors:
        take = training_size(index, n_vectors)
        rows = np.sort(np.random.default_rng(0).choice(n_vectors, take, replace=False))
        index.train(np.ascontiguousarray(sample(rows), dtype=np.float32))
    if progress:
        progress(0, n_vectors)
    for ids, vectors in chunks:
        if not index.is_trained:
            index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        add(index, ids, vectors)
        if progress:
            progress(index.ntotal, n_vectors)
    return index


def retrain_at(index: faiss.Index) -> int | None:
    """Library size past which an IVF index is rebuilt (retrained), or None if it trains not.

    The list count follows ~2 sqrt(n) (`ivf_nlist`), so `nlist` lists suit ~nlist**2 / 4
    photos; at 4x that (nlist**2) the lists are 4x longer than planned and each query scans
    4x the codes for the same recall. A small library's lists are capped at n / 39 (faiss's
    training floor), so they suit ~39 nlist photos: 4x that is the mark there.
    """
    inner = inner_index(index)
    if not isinstance(inner, faiss.IndexIVF):
        return None
    return max(inner.nlist**2, 4 * MIN_POINTS_PER_CENTROID * inner.nlist)


def due_rebuild(index_type: str, automatic: bool, index: faiss.Index, n: int) -> str | None:
    """The type a library's index should be rebuilt as now, or None if it is fit as it is.

    `index_type` is the library's type and `index` its index (for what it was trained on);
    `n` the photos it holds. An automatic type follows `auto_index_type` (up at once, down
    only at half the threshold: see AUTO_LADDER); any IVF is retrained past `retrain_at`.
    """
    target = index_type
    if automatic:
        wanted = auto_index_type(n)
        rank = {kind: i for i, kind in enumerate(AUTO_LADDER)}
        here = rank.get(index_type)
        up = here is None or rank[wanted] > here
        down = here is not None and rank[auto_index_type(2 * n)] < here  # at half the threshold
        if up or down:
            target = wanted
    if target != index_type:
        return target
    limit = retrain_at(index)
    return index_type if limit is not None and n > limit and index.is_trained else None


def training_size(index: faiss.Index, n_vectors: int) -> int:
    """How many vectors to train an untrained index on (64 per IVF cell: as good as all of them)."""
    try:
        per = 64 * faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF: train on up to 100k
        per = 100_000
    return min(n_vectors, max(per, 1))


def add(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add vectors under the given ids (the caller makes sure the ids are not already present)."""
    if len(ids):
        index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.ascontiguousarray(ids, dtype=np.int64),
        )


def remove(index: faiss.Index, ids: Iterable[int]) -> bool:
    """Remove ids; False when this index type cannot remove (rebuild it from the database)."""
    ids = np.fromiter(ids, dtype=np.int64)
    if not len(ids):
        return True
    try:
        index.remove_ids(ids)
    except RuntimeError:  # e.g. HNSW: removal is not implemented
        return False
    return True


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id in the index, as int64: an IndexIDMap2's in insertion order (its storage
    rows), a bare IVF's list by list."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    invlists = faiss.extract_index_ivf(index).invlists
    parts = []
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = invlists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ids, size).copy())
            invlists.release_ids(lst, ids)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids), each (n_queries, k); missing hits have id -1."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    return index.search(queries, k)


def read_index(path: Path, dim: int | None = None) -> faiss.Index:
    """Load an index file written by `write_index`; LibraryCorruptError if it cannot be read
    or (given `dim`) holds vectors of another size. The message says how to rebuild it."""
    path = Path(path)
    repair = f"run `{index_command(path.parent)}` to rebuild it from the database"
    try:
        index = faiss.read_index(os.fspath(path))
    except RuntimeError as exc:  # faiss reports missing and corrupt files alike
        # faiss prefixes "Error in <C++ signature> at <source file>:<line>: ".
        why = re.sub(r"^Error in .*? at \S+: ", "", str(exc).strip()).splitlines()[0]
        raise LibraryCorruptError(f"cannot read the FAISS index {path} ({why}); {repair}") from exc
    if dim is not None and index.d != dim:
        raise LibraryCorruptError(
            f"the FAISS index {path} holds vectors of {index.d} values, the library's have "
            f"{dim}; {repair}"
        )
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    """Write atomically (koclip.files.atomic_path): a reader or a crash sees the old file or the
    new one, never part of one. On failure the old file is untouched and LibraryWriteError says why.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # Through Python's file object, so a full disk surfaces as the OSError it is.
            writer = faiss.PyCallbackIOWriter(f.write)
            try:
                faiss.write_index(index, writer)
            finally:
                del writer  # flushes its buffer into f
    except OSError as exc:
        raise LibraryWriteError(
            f"cannot write the FAISS index {path}: {exc.strerror or exc}"
        ) from exc
