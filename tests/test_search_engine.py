"""The FAISS side of search on a synthetic library (random vectors written through db/).

Exact filtered top-k for every index type against numpy brute force, paging, the faiss
batch fast path, and the index choice. No model: vectors go straight into the database.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import db
from db import vectors
from search import Searcher, ann, reindex
from tests.search_fixtures import synthetic_library

DIM = 16
N = 3000
FOLDERS = ["a", "a/b", "a/bc", "c", "c/깊은/폴더"]


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    """A library of N random unit vectors under FOLDERS with spread-out dates."""
    root = tmp_path_factory.mktemp("synthetic")
    vecs = _vectors(N, 0)
    ids = synthetic_library(root, vecs, FOLDERS)
    paths = [f"{FOLDERS[i % len(FOLDERS)]}/{i:05d}.jpg" for i in range(N)]
    dates = [datetime(2020, 1, 1) + timedelta(hours=7 * i) for i in range(N)]
    return root, ids, vecs, paths, dates


def _reference(vecs, ids, q, keep, k):
    rows = np.flatnonzero(keep)
    scores = vecs[rows] @ q
    order = np.lexsort((ids[rows], -scores))[:k]
    return ids[rows][order], scores[order]


FILTERS = [
    ({"under": "a/b"}, lambda p, d: p.startswith("a/b/")),
    ({"under": "c/깊은"}, lambda p, d: p.startswith("c/깊은/")),
    (
        {"after": "2020-06-01", "before": "2020-07"},
        lambda p, d: datetime(2020, 6, 1) <= d < datetime(2020, 7, 1),
    ),
    (
        {"under": "a", "after": "2021-03-05 06:00"},
        lambda p, d: p.startswith("a/") and d >= datetime(2021, 3, 5, 6),
    ),
    ({"under": "nowhere"}, lambda p, d: False),
]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf-sq8"])
def test_filtered_top_k_is_exact_for_every_index_type(synthetic, tmp_path, kind) -> None:
    import shutil

    root, ids, vecs, paths, dates = synthetic
    copy = tmp_path / "lib"
    shutil.copytree(root, copy)
    reindex(db.default_library_dir(copy), kind)
    queries = _vectors(5, 1)
    with Searcher(copy) as searcher:
        for opts, rule in FILTERS:
            keep = np.array([rule(p, d) for p, d in zip(paths, dates, strict=True)])
            for q in queries:
                for k in (1, 7, 40):
                    got = searcher.vector(q, k=k, **opts)
                    ref_ids, ref_scores = _reference(vecs, ids, q, keep, k)
                    assert [h.photo_id for h in got] == ref_ids.tolist(), (kind, opts, k)
                    np.testing.assert_allclose([h.score for h in got], ref_scores, atol=1e-5)


def test_unfiltered_flat_is_exact_and_pages(synthetic) -> None:
    root, ids, vecs, *_ = synthetic
    q = _vectors(1, 2)[0]
    ref_ids, _ = _reference(vecs, ids, q, np.ones(N, bool), 60)
    with Searcher(root) as searcher:
        assert [h.photo_id for h in searcher.vector(q, k=60)] == ref_ids.tolist()
        pages = [searcher.vector(q, k=20, offset=o) for o in (0, 20, 40)]
        assert [h.photo_id for p in pages for h in p] == ref_ids.tolist()
        assert [h.rank for h in pages[1]] == list(range(21, 41))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf-sq8"])
def test_pages_reach_the_whole_library_for_every_index_type(synthetic, tmp_path, kind) -> None:
    import shutil

    root, ids, vecs, *_ = synthetic
    copy = tmp_path / "lib"
    shutil.copytree(root, copy)
    reindex(db.default_library_dir(copy), kind)
    q = _vectors(1, 6)[0]
    ref_ids, _ = _reference(vecs, ids, q, np.ones(N, bool), N)
    with Searcher(copy) as searcher:
        # More than exists is the whole library, in exact order, with nothing allocated for
        # the photos that do not exist (a k of 10**12 once asked numpy for 3.6 TiB).
        assert [h.photo_id for h in searcher.vector(q, k=10**12)] == ref_ids.tolist()
        tail = searcher.vector(q, k=20, offset=N - 20)
        assert [h.photo_id for h in tail] == ref_ids[-20:].tolist()
        assert [h.rank for h in tail] == list(range(N - 19, N + 1))
        assert len(searcher.vector(q, k=2**63 - 1, offset=N - 5)) == 5
        assert not searcher.vector(q, k=10, offset=10**15)


def _tuned_index(kind: str, vecs: np.ndarray, ids: np.ndarray):
    """db's index of `kind` over in-memory vectors, tuned as search tunes a loaded one."""
    index = vectors.build_index(kind, vecs.shape[1], [(ids, vecs)], len(vecs), vecs.__getitem__)
    ann.tune(index)
    return index


@pytest.mark.parametrize("kind", ["hnsw", "ivf-sq8"])
def test_ann_recall_on_clustered_vectors(kind, tmp_path) -> None:
    """Fresh or loaded from a file saved with the weakest search knobs, recall@10 >= 0.95."""
    import faiss

    from search.engine import LoadedIndex

    rng = np.random.default_rng(3)
    centres = _vectors(40, 4)
    base = centres[rng.integers(0, 40, 4000)] + 0.15 * rng.standard_normal((4000, DIM))
    base = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
    queries = base[:50] + 0.05 * rng.standard_normal((50, DIM)).astype(np.float32)
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :10] * 10

    def recall(index) -> float:
        _, found = index.search(queries, 10)
        return np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])

    index = _tuned_index(kind, base, np.arange(4000) * 10)
    assert recall(index) >= 0.95
    inner = faiss.downcast_index(index.index)
    if kind == "hnsw":
        inner.hnsw.efSearch = 1
    else:
        inner.nprobe = 1
    assert recall(index) < 0.95  # the knobs the file carries would not do
    db.vectors.write_index(index, tmp_path / "weak.faiss")
    assert recall(LoadedIndex.read(tmp_path / "weak.faiss").index) >= 0.95


def test_index_choice_follows_the_collection() -> None:
    # The README's promise: exact search up to 200,000 photos, IVF-SQ8 above.
    assert vectors.auto_index_type(10) == "flat"
    assert vectors.auto_index_type(200_000) == "flat"
    assert vectors.auto_index_type(200_001) == "ivf-sq8"


def test_enabling_the_batch_path_twice_changes_nothing() -> None:
    import faiss

    ann.enable_blas_for_batches(512)
    once = faiss.cvar.distance_compute_blas_threshold
    ann.enable_blas_for_batches(512)  # faiss's own default is read once, not the value we set
    assert faiss.cvar.distance_compute_blas_threshold == once


def test_reindex_refuses_unknown_types(synthetic) -> None:
    from db import LibraryError

    with pytest.raises(LibraryError, match="unknown index type"):
        reindex(db.default_library_dir(synthetic[0]), "lsh")


def test_compilation_cache_lives_under_the_koclip_cache(tmp_path: Path, monkeypatch) -> None:
    import jax

    from koclip.runtime import compilation_cache_dir, enable_compilation_cache

    monkeypatch.setenv("KOCLIP_CACHE_DIR", str(tmp_path))
    assert compilation_cache_dir() == tmp_path / "jax"
    previous = jax.config.jax_compilation_cache_dir
    try:
        assert enable_compilation_cache() == tmp_path / "jax"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    finally:
        if previous:
            enable_compilation_cache(Path(previous))


def test_disk_text_cache_keys_on_model_and_prompt(tmp_path: Path) -> None:
    from search.encode import DiskTextCache

    cache = DiskTextCache(tmp_path / "c" / "text.sqlite3")
    v = _vectors(1, 9)[0]
    cache.put("model-a", [("이것은 {} 이다.", "강아지", v)])
    np.testing.assert_array_equal(cache.get("model-a", "이것은 {} 이다.", "강아지"), v)
    assert cache.get("model-b", "이것은 {} 이다.", "강아지") is None
    assert cache.get("model-a", "", "강아지") is None
    cache.close()
    again = DiskTextCache(tmp_path / "c" / "text.sqlite3")
    assert again.get("model-a", "이것은 {} 이다.", "강아지") is not None


def test_disk_text_cache_is_bounded_and_never_raises(tmp_path: Path, monkeypatch) -> None:
    from search.encode import DiskTextCache

    cache = DiskTextCache(tmp_path / "text.sqlite3")
    monkeypatch.setattr(DiskTextCache, "MAX_ROWS", 5)
    for i in range(12):
        cache.put("m", [("", f"t{i}", _vectors(1, i)[0])])
    assert cache.get("m", "", "t0") is None and cache.get("m", "", "t11") is not None
    (tmp_path / "file").write_text("x")
    broken = DiskTextCache(tmp_path / "file" / "text.sqlite3")  # parent is a file
    broken.put("m", [("", "t", _vectors(1, 0)[0])])
    assert broken.get("m", "", "t") is None


def test_single_queries_run_on_one_thread_and_restore_it() -> None:
    import faiss

    from search.engine import few_query_threads

    before = faiss.omp_get_max_threads()
    with few_query_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    with few_query_threads(before):
        assert faiss.omp_get_max_threads() == before
