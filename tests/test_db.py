"""db/: schema, sessions, manifest, lock, FAISS wrapper (no model involved)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import json
import sqlite3
from datetime import datetime

import faiss
import numpy as np
import pytest
from sqlalchemy import select, text

import db
from db import embeddings, photos, vectors
from db.engine import DB_NAME
from db.index_files import index_filename
from db.testing import synthetic_manifest
from indexer.testing_facts import FACT_COLUMNS, make_schema_three

DIM = 8


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _photo(path: str, vec: np.ndarray, content_hash: str = "h") -> db.Photo:
    return db.Photo(
        path=path,
        size=1,
        mtime_ns=1,
        content_hash=content_hash,
        width=4,
        height=3,
        taken_at=datetime(2024, 5, 1, 12, 0, 0),
        taken_at_source="exif",
        indexed_at=0.0,
        embedding=db.vector_to_blob(vec),
    )


@pytest.fixture
def library(tmp_path):
    lib = db.Library.create(tmp_path / "photos" / db.LIBRARY_DIRNAME)
    with lib.session() as s, s.begin():
        lib.set_manifest(s, synthetic_manifest(DIM, fingerprint="abc123"))
    lib.write_manifest_json()
    yield lib
    lib.close()


def _add(lib: db.Library, vecs: np.ndarray, prefix: str = "p") -> list[int]:
    with lib.session() as s, s.begin():
        rows = [_photo(f"{prefix}{i}.jpg", v) for i, v in enumerate(vecs)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def test_manifest_roundtrip_and_json_mirror(library):
    m = library.manifest()
    assert (m.model_id, m.dim, m.index_type, m.schema_version) == (
        "synthetic",
        DIM,
        "flat",
        db.SCHEMA_VERSION,
    )
    assert m.created_at > 0 and m.updated_at >= m.created_at
    assert json.loads(library.manifest_path.read_text("utf-8"))["fingerprint"] == "abc123"
    assert library.photo_root() == (library.directory / "..").resolve()
    assert library.resolve("a/b.jpg") == library.photo_root() / "a/b.jpg"


def test_relative_photo_root(tmp_path):
    root = tmp_path / "photos"
    assert db.relative_photo_root(root / ".koclip-search", root) == ".."
    assert db.relative_photo_root(tmp_path / "elsewhere", root) == str(root.resolve())


def test_ids_are_never_reused(library):
    rng = np.random.default_rng(0)
    first = _add(library, _unit(rng, 3))
    with library.session() as s, s.begin():
        s.delete(s.get(db.Photo, first[-1]))
    (again,) = _add(library, _unit(rng, 1), prefix="q")
    assert again > max(first)
    assert list(library.photo_ids()) == [*first[:-1], again]


def test_reader_sees_committed_snapshot_while_writer_is_mid_transaction(library):
    rng = np.random.default_rng(1)
    _add(library, _unit(rng, 2))
    reader = db.Library.open(library.directory, readonly=True)
    try:
        with library.session() as w, w.begin():
            w.add(_photo("new.jpg", _unit(rng, 1)[0]))
            w.flush()
            assert len(reader.photo_ids()) == 2  # uncommitted row is invisible
        assert len(reader.photo_ids()) == 3
        with reader.session() as s, s.begin():
            row = s.scalars(select(db.Photo).where(db.Photo.path == "new.jpg")).one()
            assert row.vector().shape == (DIM,) and row.taken_at.year == 2024
            with pytest.raises(Exception, match="readonly"):
                s.execute(text("DELETE FROM photos"))
    finally:
        reader.close()


def test_change_stamp_moves_with_every_commit_by_another_connection(library):
    rng = np.random.default_rng(2)
    (pid,) = _add(library, _unit(rng, 1))
    reader = db.Library.open(library.directory, readonly=True)

    def stamp() -> tuple[int, int]:
        with reader.session() as s, s.begin():
            return photos.change_stamp(s)

    try:
        before = stamp()
        assert stamp() == before  # nothing committed: the same stamp, query after query
        # A commit that keeps the photo count and the newest id (a move) still moves it.
        with library.session() as w, w.begin():
            w.get(db.Photo, pid).path = "moved/p0.jpg"
        after = stamp()
        assert after != before and stamp() == after
        # Another thread reads through its own connection: a stamp of its own, never equal.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert pool.submit(stamp).result() != after
    finally:
        reader.close()


def test_candidate_reads_by_id(library):
    rng = np.random.default_rng(3)
    ids = _add(library, _unit(rng, 3))
    with library.session() as s, s.begin():
        s.delete(s.get(db.Photo, ids[1]))
    # More ids than SQLite takes parameters in one statement, most without a row.
    wanted = [ids[2], -1, ids[1], ids[0], ids[0], *range(10**6, 10**6 + 40_000)]
    with library.session() as s, s.begin():
        assert photos.present_ids(s, wanted) == {ids[0], ids[2]}
        assert photos.taken_at_by_id(s, wanted) == {
            ids[0]: datetime(2024, 5, 1, 12, 0, 0),
            ids[2]: datetime(2024, 5, 1, 12, 0, 0),
        }
        assert set(photos.photos_by_id(s, np.array(wanted))) == {ids[0], ids[2]}
        assert photos.present_ids(s, []) == set() and photos.taken_at_by_id(s, []) == {}


def test_open_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(db.LibraryNotFoundError, match="koclip-search index"):
        db.Library.open(tmp_path / "nothing")


def test_a_library_from_a_newer_version_says_upgrade_not_rebuild(library):
    with library.session() as s, s.begin():
        s.execute(text("UPDATE manifest SET schema_version = 99"))
    for readonly in (True, False):
        with pytest.raises(db.SchemaVersionError) as info:
            db.Library.open(library.directory, readonly=readonly)
        assert "newer koclip-search" in str(info.value) and "upgrade" in str(info.value)
        assert "--rebuild" not in str(info.value)  # which would destroy the newer library
    with library.session() as s, s.begin():
        assert s.execute(text("SELECT schema_version FROM manifest")).scalar() == 99  # untouched


def test_schema_version_mismatch_refused(library):
    with library.session() as s, s.begin():
        s.execute(text("UPDATE manifest SET schema_version = 0"))
    with pytest.raises(db.SchemaVersionError, match="--rebuild"):
        db.Library.open(library.directory)
    library.close()
    with db.Library.reset(library.directory) as fresh:  # what --rebuild does
        assert fresh.manifest() is None and not len(fresh.photo_ids())
    assert db.is_library(library.directory) and not db.is_library(library.directory.parent)


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    lib_dir = tmp_path / "lib"
    with (
        db.LibraryLock(lib_dir),
        pytest.raises(db.LibraryLockedError, match=r"pid \d+.*already writing"),
    ):
        db.LibraryLock(lib_dir).acquire()
    with db.LibraryLock(lib_dir):  # released: can be taken again
        pass


def test_sqlite_disk_full_is_a_write_error_and_rolls_back(library):
    rng = np.random.default_rng(2)
    _add(library, _unit(rng, 1))
    with library.engine.connect() as conn:  # cap the file at its current size: a real SQLITE_FULL
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
    big = [_photo(f"big{i}.jpg", _unit(rng, 1)[0], content_hash="x" * 4000) for i in range(50)]
    with (
        pytest.raises(db.LibraryWriteError, match="full"),
        db.write_errors(library.directory),
        library.session() as s,
        s.begin(),
    ):
        s.add_all(big)
    assert len(library.photo_ids()) == 1


def test_build_index_matches_brute_force(library):
    rng = np.random.default_rng(3)
    vecs = _unit(rng, 50)
    ids = np.asarray(_add(library, vecs))
    index = library.build_index()
    queries = _unit(rng, 4)
    scores, got = vectors.search(index, queries, 5)
    brute = queries @ vecs.T
    want = ids[np.argsort(-brute, axis=1)[:, :5]]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_index_roundtrip_remove_and_ids(tmp_path):
    rng = np.random.default_rng(4)
    index = vectors.make_index("flat", DIM)
    vectors.add(index, np.array([10, 20, 30]), _unit(rng, 3))
    assert vectors.remove(index, [20])
    path = tmp_path / "i.faiss"
    vectors.write_index(index, path)
    back = vectors.read_index(path)
    assert list(vectors.index_ids(back)) == [10, 30]
    assert isinstance(back, faiss.IndexIDMap2)
    assert vectors.search(vectors.make_index("flat", DIM), _unit(rng, 1), 3)[1].shape == (1, 1)


def test_unknown_index_type_lists_known(tmp_path):
    with pytest.raises(db.LibraryError, match="known: flat"):
        vectors.make_index("nope", DIM)


def test_register_index_type(monkeypatch):
    monkeypatch.setitem(
        vectors.INDEX_FACTORIES,
        "hnsw-test",
        lambda d, n: faiss.IndexHNSWFlat(d, 8, faiss.METRIC_INNER_PRODUCT),
    )
    rng = np.random.default_rng(5)
    index = vectors.build_index("hnsw-test", DIM, [(np.arange(5), _unit(rng, 5))])
    assert index.ntotal == 5
    assert not vectors.remove(index, [1])  # HNSW cannot remove: the caller rebuilds


def test_write_index_disk_full_keeps_old_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    path = tmp_path / "i.faiss"
    old = vectors.make_index("flat", DIM)
    vectors.add(old, np.array([1]), _unit(rng, 1))
    vectors.write_index(old, path)
    before = path.read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_writer = faiss.PyCallbackIOWriter
    monkeypatch.setattr(faiss, "PyCallbackIOWriter", lambda _write: real_writer(full))
    new = vectors.make_index("flat", DIM)
    vectors.add(new, np.arange(100), _unit(rng, 100))
    with pytest.raises(db.LibraryWriteError, match="No space left"):
        vectors.write_index(new, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["i.faiss"]  # no temp file left behind


def test_reconcile_rebuilds_on_disagreement(library):
    rng = np.random.default_rng(7)
    _add(library, _unit(rng, 5))
    index, rebuilt = library.reconcile_index()  # no file yet
    assert rebuilt and index.ntotal == 5
    assert library.index_path().name == index_filename("flat")
    index, rebuilt = library.reconcile_index()
    assert not rebuilt
    _add(library, _unit(rng, 2), prefix="late")  # committed rows the file has not seen
    index, rebuilt = library.reconcile_index()
    assert rebuilt and sorted(vectors.index_ids(index)) == list(library.photo_ids())
    library.index_path().write_bytes(b"garbage")  # a corrupt file is repaired too
    index, rebuilt = library.reconcile_index()
    assert rebuilt and index.ntotal == 7
    assert (library.directory / DB_NAME).exists()


@pytest.mark.parametrize("index_type", ["hnsw", "ivf-sq8"])
def test_approximate_types_build_from_the_library(library, index_type):
    rng = np.random.default_rng(8)
    vecs = _unit(rng, 120)
    ids = np.asarray(_add(library, vecs))
    index = library.build_index(index_type)
    assert index.is_trained and index.ntotal == 120
    _, got = vectors.search(index, vecs[:10], 1)
    assert (got[:, 0] == ids[:10]).mean() >= 0.8  # approximate, but finds the vector itself


def test_training_sample_is_spread_and_sized(library):
    probe = vectors.make_index("ivf-sq8", DIM, 1_000_000)
    # Enough for faiss's k-means (39 points per cell, or it warns), far fewer than all of them.
    cells = faiss.extract_index_ivf(probe).nlist
    assert 39 * cells <= vectors.training_size(probe, 1_000_000) <= 200_000
    assert vectors.training_size(vectors.make_index("ivf-sq8", DIM, 10), 10) == 10
    assert vectors.ivf_nlist(10) == 1 and vectors.ivf_nlist(1_000_000) == 2048


def test_vectors_for_in_order_and_missing(library):
    rng = np.random.default_rng(9)
    vecs = _unit(rng, 3)
    ids = _add(library, vecs)
    with library.session() as s, s.begin():
        np.testing.assert_array_equal(embeddings.vectors_for(s, ids[::-1]), vecs[::-1])
        with pytest.raises(db.LibraryError, match="no stored embedding"):
            embeddings.vectors_for(s, [ids[0], 999])


def test_content_hash(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    digest, size, mtime_ns = db.hash_file(a)
    assert db.content_hash(b) == digest and len(digest) == 32
    assert (size, mtime_ns) == (3_000_000, a.stat().st_mtime_ns)


def test_every_column_after_schema_one_has_its_migration_step():
    """A column in db.schema that no step adds would leave older libraries without it."""
    from db import migrate, schema

    added = {(c.table, c.name) for step in migrate.STEPS for c in step.columns}
    assert [s.version for s in migrate.STEPS] == list(range(2, db.SCHEMA_VERSION + 1))
    assert frozenset(range(1, db.SCHEMA_VERSION)) == migrate.MIGRATABLE
    for table, name in added:
        assert name in schema.Base.metadata.tables[table].c, (table, name)


def test_a_schema_one_library_is_read_as_is_then_upgraded_by_the_writer(library):
    (pid,) = _add(library, _unit(np.random.default_rng(0), 1))
    library.close()
    conn = sqlite3.connect(library.db_path)
    for table, column in [
        ("photos", "disk_path"),
        ("photos", "phash"),
        ("photos", "pthumb"),
        ("manifest", "precision"),
        ("manifest", "index_choice"),
    ]:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("UPDATE manifest SET schema_version = 1")
    conn.commit()
    conn.close()

    with db.Library.open(library.directory) as reader:  # reads it as it is, writes nothing
        m = reader.manifest()
        assert (m.schema_version, m.precision, m.index_choice) == (1, "fp32", "")
        with reader.session() as s, s.begin():
            row = s.get(db.Photo, pid)
            assert (row.disk_path, row.phash, row.disk_relpath()) == (None, None, "p0.jpg")
    with sqlite3.connect(library.db_path) as conn:
        assert "phash" not in [r[1] for r in conn.execute("PRAGMA table_info(photos)")]

    with db.Library.open(library.directory, readonly=False) as writer:
        assert writer.manifest().schema_version == db.SCHEMA_VERSION
    with sqlite3.connect(library.db_path) as conn:
        for table, wanted in [
            ("photos", {"disk_path", "phash", "pthumb"}),
            ("manifest", {"precision", "index_choice"}),
        ]:
            assert wanted <= {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        assert conn.execute("SELECT precision, index_choice FROM manifest").fetchone() == (
            "fp32",
            "",
        )


def test_a_schema_three_library_is_read_as_is_then_gains_facts_columns_and_words(library):
    from db import lexical

    (pid,) = _add(library, _unit(np.random.default_rng(0), 1))
    library.close()
    make_schema_three(library.directory)

    reader = db.Library.open(library.directory)  # reads it as it is, writes nothing
    with reader, reader.session() as s, s.begin():
        row = s.get(db.Photo, pid)
        assert (row.place, row.lat, row.camera_make, row.facts, row.camera) == (None,) * 5
        assert lexical.ranking(s, ["p0"]) == []  # no words stored yet: none found
        assert photos.place_counts(s) == [] and photos.camera_counts(s) == []
        counts = photos.facts_counts(s)
        assert counts == {"place": 0, "camera": 0, "keywords": 0, "unreadable": 0, "unread": 1}
    with sqlite3.connect(library.db_path) as conn:
        assert "place" not in [r[1] for r in conn.execute("PRAGMA table_info(photos)")]

    with db.Library.open(library.directory, readonly=False) as writer:
        assert writer.manifest().schema_version == db.SCHEMA_VERSION
        with writer.session() as s, s.begin():
            assert s.get(db.Photo, pid).facts is None  # read by the next index run
            words = [
                lexical.PhotoWords.of(pid, "제주/성산 일출봉.jpg"),
                lexical.PhotoWords.of(99, "x.jpg"),
            ]
            lexical.put(s, words)
        with writer.session() as s, s.begin():
            assert [i for i, _ in lexical.ranking(s, ["일출봉"])] == [pid]
    with sqlite3.connect(library.db_path) as conn:
        assert set(FACT_COLUMNS) <= {r[1] for r in conn.execute("PRAGMA table_info(photos)")}
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(photos)")}
        assert "ix_photos_place" in indexes
        conn.execute("DELETE FROM photos WHERE id = ?", (pid,))  # its words go with it
        assert conn.execute("SELECT rowid FROM photo_words").fetchall() == [(99,)]


def test_a_new_library_has_the_words_table_and_the_place_index(library):
    with sqlite3.connect(library.db_path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"photo_words", "ix_photos_place", "photos_forget_words"} <= names


def test_place_camera_and_facts_counts(library):
    rng = np.random.default_rng(1)
    facts = [
        dict(place="제주특별자치도 서귀포시 성산읍", place_path='["제주특별자치도", "서귀포시", "성산읍"]',
             camera_make="Apple", camera_model="iPhone 15", keywords="바다\n일출", facts=1),
        dict(place="제주특별자치도 서귀포시 성산읍", place_path='["제주특별자치도", "서귀포시", "성산읍"]',
             camera_make="Apple", camera_model="iPhone 15", facts=1, facts_problems="xmp"),
        dict(place="프랑스 파리", place_path='["프랑스", "파리"]', camera_make="Canon",
             camera_model="Canon EOS R5", facts=1),
        dict(place="일본", place_path='["일본"]', camera_model="X100V", facts=1),
        dict(facts=1, facts_problems="gps,xmp"),
        dict(),  # not read yet
    ]  # fmt: skip
    with library.session() as s, s.begin():
        for i, (values, vec) in enumerate(zip(facts, _unit(rng, len(facts)), strict=True)):
            row = _photo(f"p{i}.jpg", vec)
            for key, value in values.items():
                setattr(row, key, value)
            s.add(row)
    with library.session() as s, s.begin():
        assert photos.place_counts(s) == [
            (("제주특별자치도", "서귀포시", "성산읍"), 2),
            (("일본",), 1),
            (("프랑스", "파리"), 1),
        ]
        assert photos.camera_counts(s) == [
            ("Apple", "iPhone 15", 2),
            ("", "X100V", 1),
            ("Canon", "Canon EOS R5", 1),
        ]
        assert photos.facts_counts(s) == {
            "place": 4, "camera": 4, "keywords": 1, "unreadable": 2, "unread": 1,
        }  # fmt: skip
        labels = [r.camera for r in s.scalars(select(db.Photo).order_by(db.Photo.id))]
        assert labels == ["Apple iPhone 15", "Apple iPhone 15", "Canon EOS R5", "X100V", None, None]


def test_a_schema_four_library_is_read_as_is_then_gains_etags_and_the_endpoint(library):
    (pid,) = _add(library, _unit(np.random.default_rng(0), 1))
    library.close()
    conn = sqlite3.connect(library.db_path)
    conn.execute("ALTER TABLE photos DROP COLUMN etag")
    conn.execute("ALTER TABLE manifest DROP COLUMN endpoint")
    conn.execute("UPDATE manifest SET schema_version = 4")
    conn.commit()
    conn.close()

    with db.Library.open(library.directory) as reader:  # reads it as it is, writes nothing
        m = reader.manifest()
        assert (m.schema_version, m.endpoint) == (4, "")
        assert reader.root_url() is None and reader.root_endpoint() is None
        with reader.session() as s, s.begin():
            assert s.get(db.Photo, pid).etag is None
    with sqlite3.connect(library.db_path) as conn:
        assert "etag" not in [r[1] for r in conn.execute("PRAGMA table_info(photos)")]

    with db.Library.open(library.directory, readonly=False) as writer:
        assert writer.manifest().schema_version == db.SCHEMA_VERSION == 5
    with sqlite3.connect(library.db_path) as conn:
        assert "etag" in [r[1] for r in conn.execute("PRAGMA table_info(photos)")]
        assert conn.execute("SELECT endpoint FROM manifest").fetchone() == ("",)


def test_a_url_root_is_no_folder(library):
    assert library.root_url() is None and library.photo_root().is_dir()
    with library.session() as s, s.begin():
        m = library.manifest(s)
        library.set_manifest(
            s,
            dataclasses.replace(m, photo_root="s3://bucket/사진", endpoint="http://127.0.0.1:9000"),
        )
    assert library.root_url() == "s3://bucket/사진"
    assert library.root_endpoint() == "http://127.0.0.1:9000"
    with pytest.raises(db.LibraryError, match="s3://bucket/사진, not in a folder"):
        library.photo_root()
