"""A damaged or unfinished library: one clear message from every command, `index` repairs what
the database can rebuild, and readers see every committed photo."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import db
from cli.main import main
from db import embeddings, vectors
from tests.indexer_fixtures import assert_consistent, index, open_lib, write_jpeg
from tests.search_fixtures import one_line_error

N_PHOTOS = 6


def _invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _sql(library_dir: Path, statement: str) -> None:
    conn = sqlite3.connect(library_dir / "library.sqlite3")
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _checkpointed(library_dir: Path) -> Path:
    """Fold the WAL into the database file, so damage to the file is all there is."""
    conn = sqlite3.connect(library_dir / "library.sqlite3")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    return library_dir / "library.sqlite3"


def _overwrite(path: Path, start: int, length: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    end = len(data) if length is None else start + length
    data[start:end] = np.random.default_rng(0).bytes(end - start)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_dim_index(library_dir: Path) -> None:
    index = vectors.make_index("flat", 8)
    vectors.add(index, np.array([1]), np.ones((1, 8), np.float32) / np.sqrt(8))
    vectors.write_index(index, library_dir / "index-flat.faiss")


# name -> (damage, file named in the message, repaired by a plain `index` run)
DAMAGE = {
    "malformed database": (lambda d: _overwrite(_checkpointed(d), 4096), "library.sqlite3", False),
    "truncated database": (
        lambda d: _truncate(_checkpointed(d)),
        "library.sqlite3",
        False,
    ),
    "not a database": (lambda d: _overwrite(_checkpointed(d), 0, 100), "library.sqlite3", False),
    "zero-byte database": (lambda d: _checkpointed(d).write_bytes(b""), "library.sqlite3", True),
    "faiss wrong dim": (_wrong_dim_index, "index-flat.faiss", True),
    "faiss unreadable": (
        lambda d: (d / "index-flat.faiss").write_bytes(b"not an index"),
        "index-flat.faiss",
        True,
    ),
    "unknown index type": (
        lambda d: _sql(d, "UPDATE manifest SET index_type = 'bogus'"),
        "library.sqlite3",
        True,
    ),
    "manifest dim": (lambda d: _sql(d, "UPDATE manifest SET dim = 7"), "library.sqlite3", True),
    "manifest garbage": (
        lambda d: _sql(d, "UPDATE manifest SET dim = 'abc', updated_at = 'x'"),
        "library.sqlite3",
        True,
    ),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "photos"
    for i in range(N_PHOTOS):
        write_jpeg(root / f"d{i % 2}/{i}.jpg", i)
    index(root, tiny_checkpoint)
    return root


@pytest.fixture(params=list(DAMAGE))
def damaged(request, pristine: Path, tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "photos"
    shutil.copytree(pristine, root)
    DAMAGE[request.param][0](root / db.LIBRARY_DIRNAME)
    return root, request.param


def test_a_damaged_library_is_one_line_naming_the_file(damaged, tiny_checkpoint) -> None:
    root, kind = damaged
    _, named, repairable = DAMAGE[kind]
    for args in (["search", "바다", "--library", root], ["info", "--library", root]):
        line = one_line_error(_invoke(*args))
        if kind == "zero-byte database":  # an empty file: nothing was ever finished there
            assert "never finished" in line and "koclip-search index" in line, line
            continue
        assert named in line and "koclip-search index" in line, (args, line)
        if not repairable:
            assert "--rebuild" in line and "backup" in line, line

    import uvicorn

    from web import create_app

    with pytest.MonkeyPatch.context() as m:
        m.setattr(uvicorn.Server, "run", lambda server, sockets=(): [s.close() for s in sockets])
        m.setattr(uvicorn.Config, "configure_logging", lambda config: None)
        served = _invoke("serve", "--library", root, "--port", "0")
    # serve starts anyway (the page explains); a library it cannot open is warned of at once.
    assert served.exit_code == 0 and served.exception is None, served.output
    if named == "library.sqlite3":
        assert served.stderr.startswith("Warning: "), served.stderr
    app = create_app(root, warm=False)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        response = c.get("/api/search", params={"q": "바다"})
    assert response.status_code == 503, response.text
    assert set(response.json()) == {"error", "code"}, response.json()

    result = _invoke("index", root, "--model", tiny_checkpoint)
    if not repairable:
        line = one_line_error(result)
        assert named in line and "--rebuild" in line, line
        result = _invoke("index", root, "--model", tiny_checkpoint, "--rebuild")
    assert result.exit_code == 0, (result.output, result.exception)
    with open_lib(root) as lib:
        assert len(lib.photo_ids()) == N_PHOTOS
        assert_consistent(lib)
        assert lib.manifest().index_type == "flat" and lib.manifest().dim == 16
        assert '"dim": 16' in lib.manifest_path.read_text("utf-8")
    result = _invoke("search", "바다", "--library", root, "--paths")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == N_PHOTOS, result.output


def test_a_short_embedding_is_reported_and_indexed_again(pristine, tmp_path, tiny_checkpoint):
    root = tmp_path / "photos"
    shutil.copytree(pristine, root)
    library_dir = root / db.LIBRARY_DIRNAME
    with open_lib(root) as lib:
        with lib.session() as s, s.begin():
            victim = int(lib.photo_ids(s)[-1])
            relpath = s.get(db.Photo, victim).path
        path = lib.resolve(relpath)
    _sql(library_dir, f"UPDATE photos SET embedding = substr(embedding, 1, 6) WHERE id = {victim}")
    line = one_line_error(_invoke("similar", path, "--library", root))
    assert "library.sqlite3" in line and "damaged embedding" in line, line
    with (
        pytest.raises(db.LibraryCorruptError, match="koclip-search index"),
        open_lib(root) as lib,
        lib.session() as s,
        s.begin(),
    ):
        list(embeddings.iter_embeddings(s))

    from web import create_app

    app = create_app(root, warm=False)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        response = c.get(f"/api/photos/{victim}/similar")
    assert response.status_code == 503, response.text
    assert "damaged embedding" in response.json()["error"]

    summary = index(root, tiny_checkpoint)
    assert summary.new == 1 and summary.unchanged == N_PHOTOS - 1, summary
    with open_lib(root) as lib:
        assert victim not in lib.photo_ids() and len(lib.photo_ids()) == N_PHOTOS
        assert_consistent(lib)


# -- a first run that failed ------------------------------------------------------------------


def test_a_first_run_that_failed_is_told_apart_from_one_running(tmp_path, tiny_checkpoint):
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    library_dir = root / db.LIBRARY_DIRNAME
    with db.LibraryLock(library_dir), db.Library.create(library_dir):
        pass  # tables, no manifest: what a run killed before its first commit leaves
    line = one_line_error(_invoke("search", "바다", "--library", root))
    assert "never finished" in line and f"koclip-search index {root}" in line, line
    with db.LibraryLock(library_dir):
        line = one_line_error(_invoke("info", "--library", root))
        assert "being created right now" in line, line
    index(root, tiny_checkpoint)  # the command the message names finishes it
    assert _invoke("search", "바다", "--library", root).exit_code == 0


@pytest.mark.parametrize("existing_folder", [False, True])
def test_a_first_run_failing_before_any_photo_leaves_no_library(
    tmp_path, tiny_checkpoint, existing_folder
):
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    library_dir = tmp_path / "lib"
    if existing_folder:
        library_dir.mkdir()
        (library_dir / "notes.txt").write_text("mine")
    with pytest.raises(Exception):  # noqa: B017 - whatever the model's loader raises
        index(root, tmp_path / "no-such-model", library=library_dir)
    if existing_folder:
        assert sorted(p.name for p in library_dir.iterdir()) == ["lock", "notes.txt"]
    else:
        assert not library_dir.exists()
    line = one_line_error(_invoke("search", "바다", "--library", library_dir))
    assert "no library" in line, line
    index(root, tiny_checkpoint, library=library_dir)
    with pytest.raises(Exception):  # noqa: B017 - a later failure keeps what was indexed
        index(root, tmp_path / "no-such-model", library=library_dir, rebuild=True)
    assert db.is_library(library_dir)


# -- what is committed is what is searched ----------------------------------------------------


def _commit_without_saving(root: Path, ckpt: Path) -> None:
    """An indexing run stopped right after its first commit, before saving the index file
    (what a kill -9 leaves)."""

    class Stop(Exception):
        pass

    def stop(_batches: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        index(root, ckpt, save_interval=3600.0, on_batch_committed=stop)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf-sq8"])
def test_readers_see_every_committed_photo(tmp_path, tiny_checkpoint, index_type) -> None:
    from search import Searcher, reindex

    root = tmp_path / "photos"
    for i in range(4):
        write_jpeg(root / f"old/{i}.jpg", i)
    index(root, tiny_checkpoint)
    reindex(root / db.LIBRARY_DIRNAME, index_type)
    for i in range(4, 8):
        write_jpeg(root / f"new/{i}.jpg", i)
    _commit_without_saving(root, tiny_checkpoint)
    with open_lib(root) as lib:
        committed = lib.photo_ids().tolist()
        assert len(committed) == 8 and lib.load_index().ntotal == 4  # the file lags
    with Searcher(root) as searcher:
        found = [h.photo_id for h in searcher.text("사진", k=100)]
        assert sorted(found) == committed
        assert (
            sorted(h.photo_id for h in searcher.text("사진", k=100, under="new")) == committed[4:]
        )
        info = searcher.info()
        assert info.photos == info.indexed_vectors == 8
        loaded = searcher.index.refresh()
        assert searcher.index.refresh() is loaded  # nothing committed since: no work
        # A photo no longer committed is never shown, though the file still holds it.
        with db.Library.create(root / db.LIBRARY_DIRNAME) as lib, lib.session() as s, s.begin():
            s.execute(db.Photo.__table__.delete().where(db.Photo.id == committed[0]))
        assert committed[0] not in [h.photo_id for h in searcher.text("사진", k=100)]
        assert searcher.info().indexed_vectors == 7


# -- leftovers of interrupted runs ------------------------------------------------------------


def test_leftovers_are_not_counted_and_the_next_run_removes_them(
    pristine, tmp_path, tiny_checkpoint
):
    from search import Searcher, reindex

    root = tmp_path / "photos"
    shutil.copytree(pristine, root)
    library_dir = root / db.LIBRARY_DIRNAME
    with Searcher(root) as searcher:
        before = searcher.info()
    leftovers = ["index-hnsw.faiss", ".index-flat.faiss.x1y2.tmp", ".manifest.json.99.tmp"]
    for name in leftovers:
        shutil.copyfile(library_dir / "index-flat.faiss", library_dir / name)
    with Searcher(root) as searcher:
        after = searcher.info()
    assert (after.size_bytes, after.indexed_vectors) == (before.size_bytes, before.indexed_vectors)
    index(root, tiny_checkpoint)
    assert not [n for n in leftovers if (library_dir / n).exists()]
    for name in leftovers:
        shutil.copyfile(library_dir / "index-flat.faiss", library_dir / name)
    reindex(library_dir, "flat")
    assert not [n for n in leftovers if (library_dir / n).exists()]


# -- unreadable files -------------------------------------------------------------------------


def test_a_file_that_could_not_be_read_is_retried_when_it_can(
    tmp_path, tiny_checkpoint, monkeypatch
):
    import indexer.load

    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    write_jpeg(root / "locked.jpg", 2)
    real = indexer.load.hash_file

    def denied(path):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    with monkeypatch.context() as m:
        m.setattr(indexer.load, "hash_file", denied)
        first = index(root, tiny_checkpoint)
    assert first.failures == (("locked.jpg", "cannot read: Permission denied"),)
    second = index(root, tiny_checkpoint)  # permissions fixed: size and mtime did not change
    assert second.new + second.updated == 1 and not second.failures, second


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_chmod_makes_an_unreadable_file_indexed(tmp_path, tiny_checkpoint):
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    locked = write_jpeg(root / "locked.jpg", 2)
    locked.chmod(0o000)
    try:
        assert index(root, tiny_checkpoint).failures[0][0] == "locked.jpg"
    finally:
        locked.chmod(0o644)
    second = index(root, tiny_checkpoint)
    assert second.new + second.updated == 1 and not second.failures, second


# -- thumbnails on a full disk ----------------------------------------------------------------


def test_thumbnails_still_come_when_the_cache_cannot_be_written(pristine, monkeypatch) -> None:
    from web import create_app, thumbnails

    def full(_data, _target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(thumbnails, "_write_atomic", full)
    app = create_app(pristine, warm=False)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        response = c.get("/api/photos/1/thumbnail?size=large")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"
