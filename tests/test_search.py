"""search.Searcher end to end: a tiny library built by the real indexer, checked by brute force."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import db
from db import LibraryError
from search import (
    DateError,
    ModelMismatchError,
    QueryError,
    QueryImageError,
    Searcher,
    SearchResults,
    Term,
    find_library,
    reindex,
)
from tests.search_fixtures import (
    BROKEN,
    DUPLICATE,
    DUPLICATE_OF,
    PHOTOS,
    Reference,
    assert_matches,
    indexed_photos,
)


@pytest.fixture(scope="session")
def photo_root(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return indexed_photos(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="session")
def library_dir(photo_root: Path) -> Path:
    return db.default_library_dir(photo_root)


@pytest.fixture(scope="session")
def reference(library_dir: Path) -> Reference:
    return Reference.load(library_dir)


@pytest.fixture(scope="session")
def encoder(tiny_checkpoint: Path):
    from koclip import load_encoder

    return load_encoder(str(tiny_checkpoint), towers=("text", "vision"))


@pytest.fixture(scope="module")
def searcher(photo_root: Path):
    with Searcher(photo_root) as s:
        yield s


def _text_vector(encoder, text: str, prompt: bool = True) -> np.ndarray:
    from koclip import DEFAULT_PROMPT

    return encoder.encode_texts([text], prompt=DEFAULT_PROMPT if prompt else None)[0]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# -- ranking and composition ------------------------------------------------------------------


def test_library_holds_every_readable_photo(reference: Reference) -> None:
    assert len(reference.ids) == len(PHOTOS) + 1  # + the duplicate; the broken file failed
    assert BROKEN not in {r.path for r in reference.rows.values()}


# The tests comparing rankings with brute force search literally: the embedding ranking alone
# (the words of file names fused into it are tests/test_search_facts.py's part).
@pytest.mark.parametrize("prompt", [True, False])
def test_text_ranking_matches_brute_force(searcher, reference, encoder, prompt: bool) -> None:
    q = _text_vector(encoder, "바닷가에서 노는 강아지", prompt)
    results = searcher.text("바닷가에서 노는 강아지", k=5, prompt=prompt, literal=True)
    assert isinstance(results, SearchResults)
    assert results.query == "바닷가에서 노는 강아지"
    assert_matches(results.hits, reference.ranking(q)[:5], reference.scores(q))
    assert [h.rank for h in results] == [1, 2, 3, 4, 5]
    top = results[0]
    row = reference.rows[top.photo_id]
    assert top.path == reference.root / row.path and top.path.is_absolute()
    assert (top.width, top.height, top.taken_at, top.size) == (
        row.width,
        row.height,
        row.taken_at,
        row.size,
    )


@pytest.mark.parametrize("prompt", [True, False])
def test_numpy_backend_ranks_as_brute_force(photo_root, reference, encoder, prompt) -> None:
    q = _text_vector(encoder, "노을 지는 바다", prompt)
    with Searcher(photo_root, backend="numpy") as s:
        results = s.text("노을 지는 바다", k=5, prompt=prompt, literal=True)
        assert s.encoder.backend == "numpy"
    assert_matches(results.hits, reference.ranking(q)[:5], reference.scores(q))


def test_unknown_backend_is_refused(photo_root) -> None:
    with pytest.raises(ValueError, match="backend"):
        Searcher(photo_root, backend="torch")


def test_nfd_query_is_the_nfc_query(searcher) -> None:
    import unicodedata

    nfd = unicodedata.normalize("NFD", "강아지")
    assert nfd != "강아지"
    a, b = searcher.text(nfd, k=3), searcher.text("강아지", k=3)
    assert a.query == "강아지"
    assert [h.photo_id for h in a] == [h.photo_id for h in b]


def test_composed_query_is_the_renormalised_weighted_sum(searcher, reference, encoder) -> None:
    e = {t: _text_vector(encoder, t) for t in ("바다", "노을", "사람", "강아지")}
    results = searcher.compose("바다 + 노을 - 사람", k=6, literal=True)
    q = _unit(e["바다"] + e["노을"] - e["사람"])
    assert results.query == "바다 + 노을 - 사람"
    assert_matches(results.hits, reference.ranking(q)[:6], reference.scores(q))

    weighted = searcher.compose(["2:강아지", "-", "0.5:사람"], k=4, literal=True)
    q = _unit(2 * e["강아지"] - 0.5 * e["사람"])
    assert_matches(weighted.hits, reference.ranking(q)[:4], reference.scores(q))
    same = searcher.compose([Term(2.0, text="강아지"), Term(-0.5, text="사람")], k=4, literal=True)
    assert [h.photo_id for h in same] == [h.photo_id for h in weighted]


def test_image_term_uses_the_photo_embedding(searcher, reference, photo_root, encoder) -> None:
    from koclip import open_image

    path = photo_root / "2024/자동차.jpg"
    stored = reference.vectors[list(reference.ids).index(reference.id_of("2024/자동차.jpg"))]
    fresh = encoder.encode_images([open_image(path)])[0]
    assert float(stored @ fresh) > 0.9999  # reusing the stored vector is what encoding gives
    text = _text_vector(encoder, "빨간 자동차")
    results = searcher.compose([str(path), "+", "빨간 자동차"], k=5)
    q = _unit(stored + text)
    expected = reference.ranking(q, keep=lambda r: r.path != "2024/자동차.jpg")[:5]
    assert_matches(results.hits, expected, reference.scores(q))


def test_terms_that_cancel_out_are_refused(searcher) -> None:
    with pytest.raises(QueryError, match="cancel"):
        searcher.compose("강아지 - 강아지")


def test_text_cache_skips_the_encoder(searcher) -> None:
    searcher.text("빨간 소파", k=1)
    hits, misses = searcher.encoder.cache.hits, searcher.encoder.cache.misses
    searcher.text("빨간 소파", k=1)
    searcher.compose("빨간 소파 + 파란 자동차", k=1)
    assert searcher.encoder.cache.hits == hits + 2
    assert searcher.encoder.cache.misses == misses + 1  # only 파란 자동차 was new


def test_text_embeddings_persist_across_searchers(photo_root) -> None:
    with Searcher(photo_root, disk_cache=True) as first_searcher:
        first = first_searcher.text("한강 공원 자전거", k=3)
    with Searcher(photo_root, disk_cache=True) as again:
        second = again.text("한강 공원 자전거", k=3)
        assert not again.encoder._encoders  # answered from the on-disk cache: no tower loaded
    assert [h.photo_id for h in second] == [h.photo_id for h in first]
    assert [h.score for h in second] == [h.score for h in first]
    with Searcher(photo_root) as cold:  # the Python API keeps no disk cache by default
        cold.text("한강 공원 자전거", k=3)
        assert list(cold.encoder._encoders) == ["text"]  # only the tower the query needs


def test_warm_loads_the_tower_whatever_the_caches_hold(photo_root) -> None:
    with Searcher(photo_root, disk_cache=True) as s:
        s.warm()
        assert list(s.encoder._encoders) == ["text"]


def test_batch_of_texts_matches_single_queries(searcher) -> None:
    batch = searcher.texts(["강아지", "바다", "자동차"], k=4)
    for results, text in zip(batch, ["강아지", "바다", "자동차"], strict=True):
        assert [h.photo_id for h in results] == [h.photo_id for h in searcher.text(text, k=4)]


# -- filters, paging, threshold ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("under", "prefix"),
    [("2023/여행", "2023/여행/"), ("2024", "2024/"), ("2024/바다/", "2024/바다/")],
)
def test_folder_filter_is_exact_and_segment_aware(
    searcher, reference, encoder, under, prefix
) -> None:
    q = _text_vector(encoder, "바다")
    expected = reference.ranking(q, keep=lambda r: r.path.startswith(prefix))
    results = searcher.text("바다", k=50, under=under, literal=True)
    assert_matches(results.hits, expected, reference.scores(q))
    assert all("여행ab" not in str(h.path) for h in results)
    # k smaller than the subset: still the subset's own top-k, not a post-filtered short list.
    assert_matches(
        searcher.text("바다", k=2, under=under, literal=True).hits,
        expected[:2],
        reference.scores(q),
    )


def test_folder_filter_accepts_an_absolute_folder(searcher, photo_root) -> None:
    results = searcher.text("바다", k=50, under=photo_root / "2023" / "집")
    assert {h.path.name for h in results} == {"고양이.jpg", "소파.jpg"}


def test_folder_outside_the_library_is_refused(searcher, tmp_path) -> None:
    with pytest.raises(QueryError, match="not inside"):
        searcher.text("바다", under=tmp_path)


def test_date_filter_is_exact(searcher, reference, encoder) -> None:
    q = _text_vector(encoder, "노을")
    lo, hi = datetime(2023, 5, 2), datetime(2024, 1, 1)
    expected = reference.ranking(q, keep=lambda r: lo <= r.taken_at < hi)
    results = searcher.text("노을", k=50, after="2023-05-02", before="2024", literal=True)
    assert_matches(results.hits, expected, reference.scores(q))
    assert {h.path.name for h in results} == {
        "노을.jpg",
        "산.jpg",
        "옆폴더.jpg",
        "고양이.jpg",
        "소파.jpg",
    }
    assert_matches(
        searcher.text("노을", k=1, after="2023-05-02", before="2024", literal=True).hits,
        expected[:1],
        reference.scores(q),
    )


def test_date_falls_back_to_mtime(searcher) -> None:
    results = searcher.text("강아지", k=50, before="2021-12-31")
    assert [h.path.name for h in results] == ["강아지.png"]
    assert results[0].taken_at == datetime(2021, 3, 4, 5, 6, 7)


def test_folder_and_date_filters_combine(searcher) -> None:
    results = searcher.text("바다", k=50, under="2024", after="2024-07-16")
    assert {h.path.name for h in results} == {"모래.jpg", "사람들.jpg"}


def test_offset_pages_through_the_ranking(searcher) -> None:
    full = searcher.text("사람", k=9)
    pages = [searcher.text("사람", k=3, offset=o) for o in (0, 3, 6)]
    assert [h.photo_id for p in pages for h in p] == [h.photo_id for h in full]
    assert [h.rank for h in pages[2]] == [7, 8, 9]
    assert len(searcher.text("사람", k=5, offset=100)) == 0


def test_threshold_keeps_scores_at_or_above_it(searcher) -> None:
    full = searcher.text("산", k=14)
    cut = full[5].score
    kept = searcher.text("산", k=14, threshold=cut)
    assert [h.photo_id for h in kept] == [h.photo_id for h in full if h.score >= cut]
    assert len(searcher.text("산", threshold=1.01)) == 0


# -- similar ----------------------------------------------------------------------------------


def test_similar_excludes_the_photo_and_its_duplicates(reference, photo_root) -> None:
    me, copy = reference.id_of(DUPLICATE_OF), reference.id_of(DUPLICATE)
    q = reference.vectors[list(reference.ids).index(me)]
    with Searcher(photo_root) as fresh:
        results = fresh.image(photo_root / DUPLICATE_OF, k=5)
        assert not fresh.encoder._encoders  # the stored vector is reused: no tower loaded
    expected = reference.ranking(q, keep=lambda r: r.id not in (me, copy))[:5]
    assert_matches(results.hits, expected, reference.scores(q))
    assert results.query == str(photo_root / DUPLICATE_OF)


def test_similar_by_photo_id_uses_the_stored_vector(reference, photo_root, tmp_path) -> None:
    me, copy = reference.id_of(DUPLICATE_OF), reference.id_of(DUPLICATE)
    root = tmp_path / "photos"
    shutil.copytree(photo_root, root)
    (root / DUPLICATE_OF).unlink()  # the file may be gone; its vector is still in the library
    with Searcher(root) as fresh:
        by_id = fresh.similar(me, k=50)
        assert not fresh.encoder._encoders
        with pytest.raises(QueryError, match="no photo with id"):
            fresh.similar(10**9)
    assert not {me, copy} & {h.photo_id for h in by_id}
    assert len(by_id) == len(reference.ids) - 2
    assert by_id.query == str(root / DUPLICATE_OF)


def test_pages_cut_ties_the_same_way_every_time(searcher, reference) -> None:
    """Exact duplicates score the same; paging must neither repeat nor drop one of them."""
    me, copy = reference.id_of(DUPLICATE_OF), reference.id_of(DUPLICATE)
    q = reference.vectors[list(reference.ids).index(me)]
    full = [h.photo_id for h in searcher.vector(q, k=50)]
    assert full[:2] == sorted([me, copy])
    for k in (1, 2, 3):
        paged = [
            h.photo_id for o in range(0, len(full), k) for h in searcher.vector(q, k=k, offset=o)
        ]
        assert paged == full
    under = [h.photo_id for o in (0, 1) for h in searcher.vector(q, k=1, offset=o, after="2020")]
    assert sorted(under) == sorted([me, copy])


def test_a_batch_finds_what_each_query_finds_alone(searcher) -> None:
    """A batch of 24 queries takes faiss's matrix-product path, one query its scan path."""
    words = ["바다", "노을", "고양이", "산", "강아지", "소파 위에 고양이", "자동차", "눈"]
    queries = [f"{w} {i}" for i in range(3) for w in words]
    for q, got in zip(queries, searcher.texts(queries, k=5), strict=True):
        alone = searcher.text(q, k=5)
        assert [h.photo_id for h in got] == [h.photo_id for h in alone], q
        np.testing.assert_allclose([h.score for h in got], [h.score for h in alone], atol=1e-5)


def test_a_searcher_can_be_shared_between_threads(photo_root) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queries = ["바다", "노을", "고양이", "바다", "소파 위에 고양이", "노을"] * 3
    with Searcher(photo_root) as shared:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda t: [h.photo_id for h in shared.text(t, k=5)], queries))
            sims = list(
                pool.map(lambda i: [h.photo_id for h in shared.similar(i, k=3)], range(1, 9))
            )
        expected = [[h.photo_id for h in shared.text(t, k=5)] for t in queries]
        assert got == expected
        assert sims == [[h.photo_id for h in shared.similar(i, k=3)] for i in range(1, 9)]


def test_similar_with_a_copy_outside_the_library(searcher, reference, photo_root, tmp_path) -> None:
    outside = tmp_path / "복사.jpg"
    shutil.copyfile(photo_root / DUPLICATE_OF, outside)
    ids = {h.photo_id for h in searcher.image(outside, k=50)}
    assert ids and not ids & {reference.id_of(DUPLICATE_OF), reference.id_of(DUPLICATE)}


def test_similar_with_a_new_image_encodes_it(photo_root, reference, encoder, tmp_path) -> None:
    from PIL import Image

    from koclip import open_image

    path = tmp_path / "new.png"
    Image.new("RGB", (50, 40), (12, 200, 90)).save(path)
    q = encoder.encode_images([open_image(path)])[0]
    with Searcher(photo_root) as fresh:
        results = fresh.image(str(path), k=4)
        assert list(fresh.encoder._encoders) == ["vision"]  # only the tower the query needs
    assert_matches(results.hits, reference.ranking(q)[:4], reference.scores(q), tol=1e-4)


def test_similar_with_a_pil_image(searcher, photo_root, reference) -> None:
    from koclip import open_image

    results = searcher.image(open_image(photo_root / "2024/밤.jpg"), k=50)
    assert reference.id_of("2024/밤.jpg") not in {h.photo_id for h in results}
    assert results.query == "<image>"


@pytest.mark.parametrize("name", ["missing.jpg", "broken.jpg", "empty.png"])
def test_unreadable_query_image(searcher, tmp_path, name: str) -> None:
    if name == "broken.jpg":
        (tmp_path / name).write_bytes(b"\xff\xd8 nope")
    elif name == "empty.png":
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(QueryImageError, match="cannot read the query image"):
        searcher.image(tmp_path / name)
    with pytest.raises(QueryImageError):
        searcher.compose([str(tmp_path / name), "+", "바다"])


# -- JSON, bad input, discovery ---------------------------------------------------------------


def test_json_shape(searcher) -> None:
    out = searcher.text("소파 위에 고양이", k=2).to_json()
    assert list(out) == ["query", "understood", "results"]
    assert out["query"] == "소파 위에 고양이"
    assert out["understood"]["text"] == "소파 위에 고양이" and out["understood"]["facts"] == []
    first = out["results"][0]
    assert list(first) == [
        "rank", "score", "path", "width", "height", "taken_at", "place", "lat", "lon", "camera",
    ]  # fmt: skip
    assert first["place"] is None and first["camera"] is None  # the fixtures carry no GPS, camera
    assert first["rank"] == 1 and isinstance(first["score"], float)
    assert Path(first["path"]).is_absolute()
    assert isinstance(first["width"], int) and isinstance(first["height"], int)
    datetime.fromisoformat(first["taken_at"])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.text(""), QueryError),
        (lambda s: s.text("   "), QueryError),
        (lambda s: s.compose(""), QueryError),
        (lambda s: s.compose("바다 +"), QueryError),
        (lambda s: s.text("바다", k=0), QueryError),
        (lambda s: s.text("바다", k=-3), QueryError),
        (lambda s: s.text("바다", offset=-1), QueryError),
        (lambda s: s.text("바다", after="yesterday"), DateError),
        (lambda s: s.text("바다", before="2023-02-30"), DateError),
        (lambda s: s.text("바다", after="2024", before="2023"), DateError),
        (lambda s: s.vector(np.ones(3)), QueryError),
    ],
)
def test_bad_queries_raise_query_errors(searcher, call, error) -> None:
    with pytest.raises(error):
        call(searcher)


def test_unknown_library(tmp_path) -> None:
    with pytest.raises(LibraryError, match="no library"):
        Searcher(tmp_path)
    with pytest.raises(LibraryError, match="no .koclip-search"):
        find_library(start=tmp_path)


def test_library_found_from_cwd_upward(photo_root, library_dir, monkeypatch) -> None:
    monkeypatch.chdir(photo_root / "2023" / "여행")
    assert find_library() == library_dir
    assert find_library(photo_root) == library_dir
    assert find_library(library_dir) == library_dir
    monkeypatch.chdir(library_dir)
    assert find_library() == library_dir


def test_model_must_be_the_librarys(photo_root, tiny_checkpoint, tiny_checkpoint_other) -> None:
    Searcher(photo_root, model=str(tiny_checkpoint)).close()
    with pytest.raises(ModelMismatchError, match="built with"):
        Searcher(photo_root, model=str(tiny_checkpoint_other))


# -- index types, stale ids ---------------------------------------------------------------------


@pytest.fixture
def library_copy(photo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the indexed folder, for tests that change the library."""
    root = tmp_path / "photos"
    shutil.copytree(photo_root, root)
    return root


@pytest.mark.parametrize("kind", ["hnsw", "ivf-sq8", "flat"])
def test_reindex_switches_type_and_filters_stay_exact(
    library_copy, reference, encoder, kind
) -> None:
    library_dir = db.default_library_dir(library_copy)
    report = reindex(library_dir, kind)
    assert report.index_type == kind and report.vectors == len(reference.ids)
    with db.Library.open(library_dir) as lib:
        assert lib.manifest().index_type == kind
        assert sorted(p.name for p in library_dir.glob("index-*.faiss")) == [f"index-{kind}.faiss"]
    q = _text_vector(encoder, "바다")
    with Searcher(library_copy) as s:
        expected = reference.ranking(q, keep=lambda r: r.path.startswith("2024/"))
        hits = s.text("바다", k=3, under="2024", literal=True).hits
        assert_matches(hits, expected[:3], reference.scores(q))
        unfiltered = s.text("바다", k=5)
        assert len(unfiltered) == 5
        assert s.info().index_type == kind


def test_stale_index_ids_are_skipped(library_copy, reference) -> None:
    """Rows deleted after the index was saved (an indexer mid-run) never surface."""
    from sqlalchemy import delete

    library_dir = db.default_library_dir(library_copy)
    gone = {reference.id_of("2024/자동차.jpg"), reference.id_of("2024/밤.jpg")}
    with db.Library.create(library_dir) as lib, lib.session() as s, s.begin():
        s.execute(delete(db.Photo).where(db.Photo.id.in_(gone)))
    with Searcher(library_copy) as searcher:
        q = np.ones(reference.vectors.shape[1], np.float32)
        results = searcher.vector(q, k=len(reference.ids))
        assert len(results) == len(reference.ids) - 2
        assert not gone & {h.photo_id for h in results}


def test_without_an_index_file_the_database_is_scanned(library_copy, reference) -> None:
    library_dir = db.default_library_dir(library_copy)
    for f in library_dir.glob("index-*.faiss"):
        f.unlink()
    q = reference.vectors[0]
    with Searcher(library_copy) as searcher:
        results = searcher.vector(q, k=4)
    assert_matches(results.hits, reference.ranking(q)[:4], reference.scores(q))


def test_index_file_replaced_while_open_is_reloaded(library_copy, reference) -> None:
    library_dir = db.default_library_dir(library_copy)
    with Searcher(library_copy) as searcher:
        q = reference.vectors[0]
        assert len(searcher.vector(q, k=50)) == len(reference.ids)
        with db.Library.create(library_dir) as lib:
            index = lib.build_index()
            index.remove_ids(np.asarray([reference.ids[0]], np.int64))
            lib.save_index(index)
        # Reloaded; the photo the new file lacks is still committed, so it is still found.
        assert len(searcher.vector(q, k=50)) == len(reference.ids)
        assert searcher.index.faiss_index.ntotal == len(reference.ids) - 1


def test_reindex_while_open_follows_the_manifest(library_copy, reference) -> None:
    library_dir = db.default_library_dir(library_copy)
    with Searcher(library_copy) as searcher:
        q = reference.vectors[3]
        before = [h.photo_id for h in searcher.vector(q, k=5)]
        reindex(library_dir, "hnsw")
        assert [h.photo_id for h in searcher.vector(q, k=5)] == before
        assert searcher.index.path.name == "index-hnsw.faiss"
        assert searcher.index.faiss_index is not None


def test_cheap_info_skips_the_index_and_the_disk(searcher, reference) -> None:
    info = searcher.info(full=False)
    assert info.photos == len(reference.ids)
    assert info.indexed_vectors is None and info.size_bytes is None


def test_photo_lookups_by_id_and_by_path(searcher, reference) -> None:
    me = reference.id_of(DUPLICATE_OF)
    photo = searcher.photo(me)
    assert (photo.id, photo.relpath, photo.path) == (
        me,
        DUPLICATE_OF,
        reference.root / DUPLICATE_OF,
    )
    assert photo.content_hash == reference.rows[me].content_hash
    assert searcher.photo_at(DUPLICATE_OF) == photo == searcher.photo_at(photo.path)
    assert searcher.photo(10**9) is None
    for elsewhere in ("없는/사진.jpg", "2023/../../" + DUPLICATE_OF, "/etc/hosts", ""):
        assert searcher.photo_at(elsewhere) is None, elsewhere


def test_folders_count_photos_with_their_subfolders(searcher, reference) -> None:
    expected: dict[str, int] = {}
    for row in reference.rows.values():
        for parent in Path(row.path).parents[:-1]:
            expected[parent.as_posix()] = expected.get(parent.as_posix(), 0) + 1
    assert searcher.folders() == sorted(expected.items())
    assert dict(searcher.folders())["2023/여행"] == 4


def test_info(searcher, reference, tiny_checkpoint) -> None:
    info = searcher.info()
    assert info.photos == len(reference.ids) and info.failed == 1
    assert info.model == str(tiny_checkpoint.resolve())
    assert info.index_type == "flat" and info.indexed_vectors == len(reference.ids)
    assert info.size_bytes > 0 and info.last_indexed is not None
    assert info.precision == "fp32"
    assert info.to_json()["endpoint"] is None  # a folder's library has none
    assert set(info.to_json()) == {
        "library",
        "photo_root",
        "endpoint",
        "photos",
        "failed",
        "model",
        "index_type",
        "precision",
        "indexed_vectors",
        "size_bytes",
        "last_indexed",
        "writer",
        "index_memory",
        "recall_target",
        "retrain_at",
        "index_automatic",
        "switch_at",
        "facts",
        "exclude",
    }
    assert info.to_json()["exclude"] == [] and info.excludes == ()
    assert info.writer is None  # no indexer or watcher holds it
    assert info.index_memory > 0 and info.recall_target == "exact" and info.retrain_at is None
    assert info.to_json()["switch_at"] == {"photos": 200_000, "index_type": "ivf-sq8"}
    assert info.index_automatic
