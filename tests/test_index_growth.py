"""`index` keeps the index fit for the library's size: it switches an automatic type
(flat -> ivf-sq8 -> ivf-pq) as the library crosses a threshold, retrains an IVF index the
library has outgrown, and keeps a type chosen with `reindex --index` at any size.

The thresholds are db.vectors module constants, made small here (monkeypatch); the crash
tests of the same rebuild are in test_indexer_crash.py.
"""

from __future__ import annotations

import dataclasses
import sqlite3

import faiss
import numpy as np
import pytest
from sqlalchemy import delete

import db
from cli.search_cmd import format_info
from db import vectors
from indexer import IndexOptions, IndexSession
from search import Searcher, reindex
from tests.indexer_fixtures import assert_consistent, index, open_lib, rows, write_jpeg
from tests.search_fixtures import synthetic_library, synthetic_photos


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """flat up to 8 photos, ivf-sq8 up to 14, ivf-pq above."""
    monkeypatch.setattr(vectors, "FLAT_MAX", 8)
    monkeypatch.setattr(vectors, "SQ8_MAX", 14)


def _photos(root, start: int, n: int) -> None:
    for i in range(start, start + n):
        write_jpeg(root / f"d{i % 2}/{i:03d}.jpg", i)


def _state(root) -> tuple[str, str, list[str]]:
    """(manifest type, choice, index files), after checking the library is whole."""
    with open_lib(root) as lib:
        manifest = lib.manifest()
        assert_consistent(lib)
        assert lib.leftovers() == []
        files = sorted(p.name for p in lib.directory.glob("index-*.faiss"))
        return manifest.index_type, manifest.index_choice, files


def test_the_automatic_type_switches_as_the_library_grows(
    tmp_path, tiny_checkpoint, small_thresholds
):
    root = tmp_path / "p"
    _photos(root, 0, 6)
    assert index(root, tiny_checkpoint).index_rebuilds == ()
    assert _state(root) == ("flat", "auto", ["index-flat.faiss"])
    with Searcher(root) as searcher:
        info = searcher.info()
    assert info.index_automatic and info.switch_at == (8, "ivf-sq8")
    assert "flat (6 vectors), automatic (ivf-sq8 past 8 photos)" in format_info(info)

    _photos(root, 6, 4)
    events = []
    grown = index(root, tiny_checkpoint, on_index_rebuild=events.append)
    assert grown.new == 4 and grown.index_rebuilds == ("flat -> ivf-sq8 for 10 photos",)
    assert "index: flat -> ivf-sq8 for 10 photos" in grown.to_text()
    assert grown.to_json()["index_rebuilds"] == ["flat -> ivf-sq8 for 10 photos"]
    assert _state(root) == ("ivf-sq8", "auto", ["index-ivf-sq8.faiss"])
    # Progress: announced (training), vectors added, done.
    assert events[0].added is None and not events[0].done
    assert [e.added for e in events[1:-1]] == sorted(e.added for e in events[1:-1])
    assert events[-1].done and events[-1].added == 10
    assert {(e.previous, e.index_type) for e in events} == {("flat", "ivf-sq8")}

    _photos(root, 10, 6)
    assert index(root, tiny_checkpoint).index_rebuilds == ("ivf-sq8 -> ivf-pq for 16 photos",)
    assert _state(root) == ("ivf-pq", "auto", ["index-ivf-pq.faiss"])
    again = index(root, tiny_checkpoint)
    assert again.index_rebuilds == () and again.unchanged == 16
    with open_lib(root) as lib:
        stored = {p.id: p.vector() for p in rows(lib).values()}
    with Searcher(root) as searcher:
        assert searcher.info().indexed_vectors == 16
        for photo_id, vector in list(stored.items())[:4]:
            assert searcher.vector(vector, k=3)[0].photo_id == photo_id


def test_a_shrinking_library_switches_back_only_at_half_the_threshold(
    tmp_path, tiny_checkpoint, small_thresholds
):
    root = tmp_path / "p"
    _photos(root, 0, 16)
    assert index(root, tiny_checkpoint).index_rebuilds == ("flat -> ivf-pq for 16 photos",)
    for i in range(3):
        (root / f"d{i % 2}/{i:03d}.jpg").unlink()
    shrunk = index(root, tiny_checkpoint)  # 13: ivf-sq8's size, but not half of ivf-pq's
    assert shrunk.deleted == 3 and shrunk.index_rebuilds == ()
    assert _state(root)[0] == "ivf-pq"
    for i in range(3, 9):
        (root / f"d{i % 2}/{i:03d}.jpg").unlink()
    assert index(root, tiny_checkpoint).index_rebuilds == ("ivf-pq -> flat for 7 photos",)
    assert _state(root) == ("flat", "auto", ["index-flat.faiss"])


def test_a_chosen_type_is_kept_at_any_size(tmp_path, tiny_checkpoint, small_thresholds):
    root = tmp_path / "p"
    _photos(root, 0, 6)
    index(root, tiny_checkpoint)
    library_dir = root / db.LIBRARY_DIRNAME
    reindex(library_dir, "flat")
    assert _state(root) == ("flat", "chosen", ["index-flat.faiss"])
    with Searcher(root) as searcher:
        info = searcher.info()
    assert not info.index_automatic and info.switch_at is None
    assert "chosen with `reindex --index`" in format_info(info)
    _photos(root, 6, 12)
    assert index(root, tiny_checkpoint).index_rebuilds == ()
    assert _state(root) == ("flat", "chosen", ["index-flat.faiss"])
    reindex(library_dir)  # hands the choice back to the size rule
    assert _state(root) == ("ivf-pq", "auto", ["index-ivf-pq.faiss"])


def test_an_outgrown_ivf_index_is_retrained(tmp_path, tiny_checkpoint, monkeypatch):
    """A chosen ivf-sq8 of 8 photos has 4 lists (2 points each here); past 32 photos it is
    retrained with the lists the rule gives 33 photos (16), and stays ivf-sq8."""
    monkeypatch.setattr(vectors, "MIN_POINTS_PER_CENTROID", 2)
    root = tmp_path / "p"
    _photos(root, 0, 8)
    index(root, tiny_checkpoint)
    reindex(root / db.LIBRARY_DIRNAME, "ivf-sq8")
    with open_lib(root) as lib:
        index_file = lib.load_index()
        assert vectors.inner_index(index_file).nlist == 4
        assert vectors.retrain_at(index_file) == 32
    _photos(root, 8, 24)
    assert index(root, tiny_checkpoint).index_rebuilds == ()  # 32: not past it yet
    _photos(root, 32, 1)
    assert index(root, tiny_checkpoint).index_rebuilds == ("ivf-sq8 retrained for 33 photos",)
    assert _state(root) == ("ivf-sq8", "chosen", ["index-ivf-sq8.faiss"])
    with open_lib(root) as lib:
        index_file = lib.load_index()
        assert vectors.inner_index(index_file).nlist == vectors.ivf_nlist(33) == 16


def test_a_watcher_pass_switches_too(tmp_path, tiny_checkpoint, small_thresholds):
    """The watcher's passes are `IndexSession.run(paths)`: the same check after each save."""
    root = tmp_path / "p"
    _photos(root, 0, 6)
    options = IndexOptions(model=str(tiny_checkpoint), batch_size=4, workers=2)
    with IndexSession(root, options) as session:
        assert session.run().new == 6
        _photos(root, 6, 4)
        passed = session.run(["d0", "d1"])
        assert passed.new == 4 and passed.index_rebuilds == ("flat -> ivf-sq8 for 10 photos",)
        _photos(root, 10, 1)  # the pass after adds to the new index
        assert session.run(["d0/010.jpg"]).new == 1
    assert _state(root) == ("ivf-sq8", "auto", ["index-ivf-sq8.faiss"])


def test_a_library_past_a_threshold_is_switched_by_the_next_run(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """Grown under the old rules (or by an older version): nothing new, still switched."""
    root = tmp_path / "p"
    _photos(root, 0, 10)
    index(root, tiny_checkpoint)
    monkeypatch.setattr(vectors, "FLAT_MAX", 8)
    summary = index(root, tiny_checkpoint)
    assert summary.unchanged == 10 and summary.index_rebuilds == ("flat -> ivf-sq8 for 10 photos",)
    assert _state(root) == ("ivf-sq8", "auto", ["index-ivf-sq8.faiss"])


def test_a_library_from_before_the_choice_was_recorded(tmp_path, tiny_checkpoint):
    """No index_choice column: readers take a size-rule type as automatic and any other as
    chosen; the next writer adds the column and records that."""
    roots = {kind: tmp_path / kind for kind in ("flat", "hnsw")}
    for kind, root in roots.items():
        _photos(root, 0, 5)
        index(root, tiny_checkpoint)
        conn = sqlite3.connect(root / db.LIBRARY_DIRNAME / "library.sqlite3")
        with conn:
            conn.execute("ALTER TABLE manifest DROP COLUMN index_choice")
            conn.execute("UPDATE manifest SET index_type = ?", (kind,))
        conn.close()
        with open_lib(root) as lib:
            old = lib.manifest()
            assert old.index_choice == "" and old.automatic_index == (kind == "flat")
        index(root, tiny_checkpoint)
        with open_lib(root) as lib:
            manifest = lib.manifest()
            assert manifest.index_type == kind
            assert manifest.index_choice == ("auto" if kind == "flat" else "chosen")
            assert_consistent(lib)
        assert '"index_choice"' in (root / db.LIBRARY_DIRNAME / "manifest.json").read_text()


def test_a_damaged_choice_is_named_and_repaired(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    _photos(root, 0, 3)
    index(root, tiny_checkpoint)
    conn = sqlite3.connect(root / db.LIBRARY_DIRNAME / "library.sqlite3")
    with conn:
        conn.execute("UPDATE manifest SET index_choice = 'sometimes'")
    conn.close()
    with pytest.raises(db.LibraryCorruptError, match="index type choice 'sometimes'"):
        open_lib(root).manifest()
    index(root, tiny_checkpoint)
    assert _state(root)[1] == "auto"


def test_due_rebuild_rules():
    flat = vectors.make_index("flat", 8)
    assert vectors.due_rebuild("flat", True, flat, vectors.FLAT_MAX) is None
    assert vectors.due_rebuild("flat", True, flat, vectors.FLAT_MAX + 1) == "ivf-sq8"
    assert vectors.due_rebuild("flat", True, flat, vectors.SQ8_MAX + 1) == "ivf-pq"
    assert vectors.due_rebuild("flat", False, flat, vectors.SQ8_MAX + 1) is None
    assert vectors.due_rebuild("hnsw", True, flat, 10) == "flat"  # not a size-rule type
    ivf = vectors.make_index("ivf-sq8", 8, 312)  # capped at 312 // 39 = 8 lists
    ivf.train(np.random.default_rng(0).standard_normal((312, 8)).astype(np.float32))
    limit = vectors.retrain_at(ivf)
    assert vectors.inner_index(ivf).nlist == 8 and limit == 4 * 39 * 8
    assert vectors.due_rebuild("ivf-sq8", False, ivf, limit) is None
    assert vectors.due_rebuild("ivf-sq8", False, ivf, limit + 1) == "ivf-sq8"


def test_a_lagging_index_file_is_caught_up_without_retraining(tmp_path):
    """A run killed between a commit and its next save: the next writer adds the rows the
    file lacks and drops the deleted ones; the lists it was trained with stay."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((600, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    root = tmp_path / "lib"
    ids = synthetic_library(root, vecs[:500], ["a"])
    library_dir = db.default_library_dir(root)
    reindex(library_dir, "ivf-sq8")
    with db.LibraryLock(library_dir), db.Library.create(library_dir) as lib:
        centroids = _centroids(lib.load_index())
        with lib.session() as s, s.begin():
            s.add_all(synthetic_photos(vecs[500:], ["a"], start=500))
            s.execute(delete(db.Photo).where(db.Photo.id.in_(ids[:20].tolist())))
        index, changed = lib.reconcile_index()
        assert changed
        np.testing.assert_array_equal(_centroids(index), centroids)
        assert np.array_equal(np.sort(vectors.index_ids(index)), lib.photo_ids())
        assert lib.reconcile_index()[1] is False  # saved: whole now
    with open_lib(root, library_dir) as lib:
        assert_consistent(lib)


def _centroids(index: faiss.Index) -> np.ndarray:
    inner = vectors.inner_index(index)
    return inner.quantizer.reconstruct_n(0, inner.nlist)


def test_manifest_default_reads_as_automatic_for_size_rule_types():
    manifest = db.Manifest("m", "f", 8, "p", "ivf-pq", "..")
    assert manifest.index_choice == "" and manifest.automatic_index
    assert not dataclasses.replace(manifest, index_type="hnsw").automatic_index
    assert not dataclasses.replace(manifest, index_choice="chosen").automatic_index
