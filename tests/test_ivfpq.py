"""`ivf-pq`: a compressed index whose candidates are re-ranked exactly from stored vectors.

A synthetic library of clustered unit vectors written through db/ (no model), switched to
ivf-pq by `reindex`, searched through `Searcher.vector` against numpy brute force.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import faiss
import numpy as np
import pytest
from sqlalchemy import delete

import db
from db import vectors
from search import Searcher, ann, reindex
from search.engine import LoadedIndex
from tests.search_fixtures import synthetic_library, synthetic_photos

DIM = 32
N = 4000
CLUSTERS = 40
FOLDERS = ["a", "a/b", "c", "c/깊은/폴더"]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around CLUSTERS centres (a photo collection's spread, not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = _unit(np.random.default_rng(99).standard_normal((CLUSTERS, DIM)))
    return _unit(centres[rng.integers(0, CLUSTERS, n)] + 0.2 * rng.standard_normal((n, DIM)))


@pytest.fixture(scope="module")
def pq_library(tmp_path_factory: pytest.TempPathFactory):
    """A library of N clustered vectors, indexed as ivf-pq: (root, ids, vectors)."""
    root = tmp_path_factory.mktemp("pq")
    library_dir = db.default_library_dir(root)
    vecs = _clustered(N, 0)
    ids = synthetic_library(root, vecs, FOLDERS)
    report = reindex(library_dir, "ivf-pq")
    assert (report.previous_type, report.index_type, report.vectors) == ("flat", "ivf-pq", N)
    return root, ids, vecs


def _copy(pq_library, tmp_path):
    root, ids, vecs = pq_library
    shutil.copytree(root, tmp_path / "lib")
    return tmp_path / "lib", ids, vecs


def _exact(vecs, ids, q, k, keep=None):
    rows = np.arange(len(ids)) if keep is None else np.flatnonzero(keep)
    scores = vecs[rows] @ q
    order = np.lexsort((ids[rows], -scores))[:k]
    return ids[rows][order], scores[order]


def test_the_index_is_compressed_and_holds_every_id(pq_library) -> None:
    root, ids, _ = pq_library
    loaded = LoadedIndex.read(db.default_library_dir(root) / "index-ivf-pq.faiss", DIM)
    assert loaded.compressed
    assert np.array_equal(np.sort(loaded.ids), ids)
    m, bits = vectors.pq_params(DIM, N)
    assert (m, bits) == (4, 6)  # dim / 8 sub-quantisers; 2**6 centroids: >= 39 points each
    assert loaded.index.code_size == 3  # 4 x 6 bits: 24x smaller than float32


def test_recall_after_rerank_and_scores_are_exact(pq_library) -> None:
    root, ids, vecs = pq_library
    queries = _clustered(40, 1)
    recalls = []
    with Searcher(root) as searcher:
        for q in queries:
            hits = searcher.vector(q, k=10)
            ref_ids, _ = _exact(vecs, ids, q, 10)
            recalls.append(len({h.photo_id for h in hits} & set(ref_ids.tolist())) / 10)
            by_id = dict(zip(ids.tolist(), (vecs @ q).tolist(), strict=True))
            got = [h.score for h in hits]
            # Exact cosine scores, in exact order (not the PQ approximations).
            np.testing.assert_allclose(got, [by_id[h.photo_id] for h in hits], atol=1e-5)
            assert got == sorted(got, reverse=True)
    assert np.mean(recalls) >= 0.95


def test_pages_agree_with_one_long_page(pq_library) -> None:
    root, ids, vecs = pq_library
    q = _clustered(1, 2)[0]
    with Searcher(root) as searcher:
        whole = [h.photo_id for h in searcher.vector(q, k=60)]
        pages = [searcher.vector(q, k=20, offset=o) for o in (0, 20, 40)]
        assert [h.photo_id for p in pages for h in p] == whole
        assert [h.rank for h in pages[2]] == list(range(41, 61))
        # Beyond what k x r candidates can hold: the whole library, in exact order.
        ref_ids, _ = _exact(vecs, ids, q, N)
        assert [h.photo_id for h in searcher.vector(q, k=10**12)] == ref_ids.tolist()
        tail = searcher.vector(q, k=20, offset=N - 20)
        assert [h.photo_id for h in tail] == ref_ids[-20:].tolist()


FILTERS = [
    ({"under": "a/b"}, lambda i: FOLDERS[i % 4] == "a/b"),
    ({"under": "c/깊은"}, lambda i: FOLDERS[i % 4].startswith("c/깊은")),
    (
        {"after": "2020-06-01", "before": "2020-07"},
        lambda i: (
            datetime(2020, 6, 1)
            <= datetime(2020, 1, 1) + timedelta(hours=7 * i)
            < datetime(2020, 7, 1)
        ),
    ),
]


def test_filters_are_exact(pq_library) -> None:
    root, ids, vecs = pq_library
    with Searcher(root) as searcher:
        for opts, rule in FILTERS:
            keep = np.array([rule(i) for i in range(N)])
            for q in _clustered(3, 3):
                for k in (1, 25):
                    got = searcher.vector(q, k=k, **opts)
                    ref_ids, ref_scores = _exact(vecs, ids, q, k, keep)
                    assert [h.photo_id for h in got] == ref_ids.tolist(), opts
                    np.testing.assert_allclose([h.score for h in got], ref_scores, atol=1e-5)


def test_too_few_candidates_falls_back_to_an_exact_scan(pq_library, tmp_path, monkeypatch) -> None:
    """One probed list holds fewer than k vectors: the page comes from every committed row."""
    copy, ids, vecs = _copy(pq_library, tmp_path)
    monkeypatch.setattr(ann, "IVF_NPROBE_MIN", 1)
    monkeypatch.setattr(ann, "IVF_PQ_NPROBE_FRACTION", 0.0)
    q = _clustered(1, 4)[0]
    ref_ids, _ = _exact(vecs, ids, q, 150)
    with Searcher(copy) as searcher:
        index = searcher.index.refresh().index
        assert vectors.inner_index(index).nprobe == 1
        assert [h.photo_id for h in searcher.vector(q, k=150)] == ref_ids.tolist()


def test_rows_added_or_deleted_after_the_save_are_searched_exactly(pq_library, tmp_path) -> None:
    """Committed rows the file lacks are searched beside it; ids it holds but the database no
    longer does are dropped, and the page is still the exact top-k of what is committed."""
    copy, ids, vecs = _copy(pq_library, tmp_path)
    library_dir = db.default_library_dir(copy)
    new = _clustered(30, 5)
    q = new[0]
    nearest = _exact(vecs, ids, q, 5)[0]
    with db.LibraryLock(library_dir), db.Library.create(library_dir) as lib:
        with lib.session() as s, s.begin():
            s.add_all(synthetic_photos(new, FOLDERS, start=N))
            s.execute(delete(db.Photo).where(db.Photo.id.in_(nearest.tolist())))
        all_ids = lib.photo_ids()
        with lib.session() as s, s.begin():
            all_vecs = db.embeddings.vectors_for(s, all_ids)
    ref_ids, ref_scores = _exact(all_vecs, all_ids, q, 20)
    with Searcher(copy) as searcher:
        got = searcher.vector(q, k=20)
        assert [h.photo_id for h in got] == ref_ids.tolist()
        np.testing.assert_allclose([h.score for h in got], ref_scores, atol=1e-5)


def test_incremental_adds_and_removes_keep_the_index_whole(pq_library) -> None:
    """What the indexer does between rebuilds: add and remove ids in place."""
    root, ids, _ = pq_library
    index = vectors.read_index(db.default_library_dir(root) / "index-ivf-pq.faiss", DIM)
    new = _clustered(10, 6)
    vectors.add(index, np.arange(10**6, 10**6 + 10), new)
    assert vectors.remove(index, ids[:5])
    held = np.sort(vectors.index_ids(index))
    assert np.array_equal(held, np.concatenate([ids[5:], np.arange(10**6, 10**6 + 10)]))
    ann.tune(index)
    _, found = vectors.search(index, new[:1], 50)
    assert 10**6 in found[0]


def test_reindex_round_trip_and_info(pq_library, tmp_path) -> None:
    copy, ids, vecs = _copy(pq_library, tmp_path)
    library_dir = db.default_library_dir(copy)
    with Searcher(copy) as searcher:
        info = searcher.info()
        before = [h.photo_id for h in searcher.vector(vecs[7], k=10)]
    assert (info.index_type, info.indexed_vectors) == ("ivf-pq", N)
    assert "re-ranked" in info.recall_target and info.to_json()["index_memory"] > 0
    nlist = vectors.inner_index(searcher.index.faiss_index).nlist
    # A 4x bigger library than the lists were made for: here nlist is capped at N / 39
    # (faiss's training floor), so they suit ~39 nlist photos; uncapped, nlist**2 / 4.
    assert nlist == N // 39 and info.retrain_at == 4 * 39 * nlist > N
    assert not info.index_automatic and info.switch_at is None  # `reindex --index ivf-pq`
    # Codes (3 bytes) + one id (8) per photo plus the ids kept for reconciling (8): far
    # below flat's 4 * DIM + id map.
    assert info.index_memory < N * (4 * DIM)
    reindex(library_dir, "flat")
    assert not (library_dir / "index-ivf-pq.faiss").exists()
    with Searcher(copy) as searcher:
        assert searcher.info().index_type == "flat"
        assert searcher.info().retrain_at is None  # nothing trained
        flat = [h.photo_id for h in searcher.vector(vecs[7], k=10)]
    assert flat == _exact(vecs, ids, vecs[7], 10)[0].tolist()
    assert len(set(flat) & set(before)) >= 9
    reindex(library_dir, "ivf-pq")  # the same seeded sample: the same index again
    with Searcher(copy) as searcher:
        assert [h.photo_id for h in searcher.vector(vecs[7], k=10)] == before
    with db.LibraryLock(library_dir), db.Library.create(library_dir) as lib:
        assert lib.manifest().index_type == "ivf-pq"
        index, rebuilt = lib.reconcile_index()  # what `index` does first: the file is sound
        assert not rebuilt and index.ntotal == N


def test_index_choice_by_size() -> None:
    assert vectors.auto_index_type(200_000) == "flat"
    assert vectors.auto_index_type(2_000_000) == "ivf-sq8"
    assert vectors.auto_index_type(2_000_001) == "ivf-pq"
    assert ann.rerank_candidates(10) == 10 * ann.RERANK_FACTOR
    assert ann.rerank_candidates(1) == ann.RERANK_MIN


def test_pq_probes_a_share_of_the_lists_then_a_fixed_count() -> None:
    """nlist / 8 lists while that is at most IVF_PQ_NPROBE_MAX, then that many: a 100M
    library's query scans ~1.6M codes, not 12.5M."""
    probes = {}
    for nlist in (256, 2048, 4096, 16384):
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(64), 64, nlist, 8, 8, faiss.METRIC_INNER_PRODUCT)
        ann.tune(index)
        probes[nlist] = index.nprobe
    cap = ann.IVF_PQ_NPROBE_MAX
    assert probes == {256: 32, 2048: 256, 4096: min(512, cap), 16384: cap}
    assert cap < 16384 // 8


def test_pq_parameters_follow_the_rule() -> None:
    assert vectors.pq_params(512, 10**6) == (64, 8)  # 64 bytes a photo
    assert vectors.pq_params(512, 10**8) == (64, 8)
    assert vectors.pq_params(768, 10**6) == (96, 8)
    assert vectors.pq_params(20, 10**6) == (2, 8)  # the largest divisor of 20 up to 20 // 8
    assert vectors.pq_params(512, 1000) == (64, 4)  # 16 centroids: >= 39 points each


def test_rerank_reads_skip_missing_ids_and_name_a_damaged_vector(pq_library, tmp_path) -> None:
    copy, ids, vecs = _copy(pq_library, tmp_path)
    library_dir = db.default_library_dir(copy)
    with db.Library.open(library_dir) as lib, lib.session() as s, s.begin():
        found, got = db.embeddings.stored_vectors(s, np.array([ids[9], -1, 10**9, ids[3]]), DIM)
    assert found.tolist() == [ids[3], ids[9]]
    np.testing.assert_array_equal(got, vecs[[3, 9]])
    with (
        db.LibraryLock(library_dir),
        db.Library.create(library_dir) as lib,
        lib.session() as s,
        s.begin(),
    ):
        s.get(db.Photo, int(ids[3])).embedding = b"\0" * 12
    with (
        db.Library.open(library_dir) as lib,
        lib.session() as s,
        s.begin(),
        pytest.raises(db.LibraryCorruptError, match=f"photo {ids[3]}: 12 bytes"),
    ):
        db.embeddings.stored_vectors(s, ids[:5], DIM)
