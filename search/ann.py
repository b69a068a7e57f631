"""Tune a loaded FAISS index for searching: nprobe, efSearch and the re-rank depth.

Which index a library gets, and building it, belong to db.vectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.vectors import IVF_PQ

if TYPE_CHECKING:
    import faiss

# The indexes are built by db/vectors.INDEX_FACTORIES, which also says which type a library
# gets by its size (FLAT_MAX, SQ8_MAX: the indexer switches types itself); this module tunes
# them for searching.

# ivf-pq proposes k x RERANK_FACTOR candidates (at least RERANK_MIN), re-ranked exactly from
# the stored vectors. 20 is the smallest factor that holds recall@10 >= 0.95 on clustered and
# on anisotropic CLIP-like vectors (bench/bigindex.py --r, --spread cone).
RERANK_FACTOR = 20
RERANK_MIN = 200
# Search-time knobs, set after loading rather than trusted from the file, so tuning them here
# takes effect without a reindex. bench/search.py measures the recall each one gives.
HNSW_EF_SEARCH = 128
IVF_NPROBE_FRACTION = 1 / 16
IVF_NPROBE_MIN = 16
# ivf-pq probes twice the share: its re-rank makes the order exact, so recall is bounded by
# the lists probed (bench/bigindex.py --nprobe measures recall against the lists probed).
IVF_PQ_NPROBE_FRACTION = 1 / 8
# ... but never more than this many lists: with a share, a query would scan n/8 codes (12.5M
# at 100M photos); a fixed count scans n * IVF_PQ_NPROBE_MAX / nlist, which grows as
# sqrt(n). It holds recall because the rule's lists only get fuller as n grows (nlist ~
# 2 sqrt(n): n / nlist >= nlist / 8 photos a list), and a query's neighbours then sit in no
# more lists than at 2M (bench/bigindex.py --nlist: see the README's "Millions of photos").
IVF_PQ_NPROBE_MAX = 256
# From this many queries on, a flat batch is one sgemm; below, query by query (SIMD): the
# smallest batch at which sgemm wins, also on a loaded machine (bench/search.py measures both).
BLAS_MIN_QUERIES = 16


# What each type promises, for `info` (measured by bench/search.py and bench/bigindex.py).
RECALL = {
    "flat": "exact",
    "hnsw": "recall@10 >= 0.95 (1.000 measured at 200k)",
    "ivf-sq8": "recall@10 >= 0.95 (0.988 measured at 1M)",
    IVF_PQ: "recall@10 >= 0.95, exact scores (re-ranked; 0.998 at 1M, 0.968 on CLIP-like vectors)",
}


def rerank_candidates(k: int) -> int:
    """How many candidates a compressed index proposes for an exact top-k."""
    return max(k * RERANK_FACTOR, RERANK_MIN)


def tune(index: faiss.Index) -> None:
    """Set the search-time knobs (efSearch, nprobe) of a freshly built or loaded index."""
    import faiss

    from db.vectors import inner_index

    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    elif isinstance(inner, faiss.IndexIVF):
        pq = isinstance(inner, faiss.IndexIVFPQ)
        fraction = IVF_PQ_NPROBE_FRACTION if pq else IVF_NPROBE_FRACTION
        nprobe = round(inner.nlist * fraction)
        if pq:
            nprobe = min(nprobe, IVF_PQ_NPROBE_MAX)
        inner.nprobe = min(inner.nlist, max(IVF_NPROBE_MIN, nprobe))


def enable_blas_for_batches(dim: int) -> None:
    """Route batches of >= BLAS_MIN_QUERIES queries to faiss's sgemm path.

    faiss >= 1.9 compares `nq * dim` with a threshold of 128000, so at dim 512 a batch of up
    to 249 queries scans the database once per query, much slower than one sgemm for such a
    batch (bench/search.py measures both). Older
    faiss compares `nq` with a threshold of 20.
    """
    import faiss

    product_semantics = faiss_blas_threshold_default() > 10_000
    faiss.cvar.distance_compute_blas_threshold = (
        BLAS_MIN_QUERIES * dim if product_semantics else BLAS_MIN_QUERIES
    )


def faiss_blas_threshold_default() -> int:
    """faiss's own distance_compute_blas_threshold, as it was before search changed it."""
    import faiss

    global _BLAS_DEFAULT
    if _BLAS_DEFAULT is None:
        _BLAS_DEFAULT = faiss.cvar.distance_compute_blas_threshold
    return _BLAS_DEFAULT


_BLAS_DEFAULT: int | None = None
