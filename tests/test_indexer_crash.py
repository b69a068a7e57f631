"""Nothing lost: kill -9 mid-run, the writer lock, disk full and permission errors."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import event

import db
from db import engine as engine_mod
from db import photos, vectors
from search import Searcher
from tests.indexer_fixtures import assert_consistent, index, open_lib, rows, write_jpeg

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# The indexer in a subprocess that can be killed: after each committed batch it sleeps
# `delay` seconds; after batch `pause_after` it writes its pid to `marker` and waits to be
# killed (committed to SQLite, not yet saved to FAISS unless save_interval is 0).
SCRIPT = """
import os, sys, time
from pathlib import Path
from indexer import IndexOptions, index_photos
root, ckpt, save_interval, delay, pause_after, marker = sys.argv[1:]

def committed(batches):
    time.sleep(float(delay))
    if batches == int(pause_after):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)

options = IndexOptions(model=ckpt, batch_size=4, workers=2, save_interval=float(save_interval),
                       on_batch_committed=committed)
index_photos(Path(root), options)
"""
# The random kill moment comes from this seed; KILL_SEED=n reruns the kill point of a failure.
KILL_SEED = int(os.environ.get("KILL_SEED", "20240"))


def _photos(root: Path, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        write_jpeg(root / f"d{i % 3}/{i:03d}.jpg", i)


def _spawn(
    root: Path, ckpt: Path, save_interval: float, delay=0.0, pause_after=0, marker=""
) -> subprocess.Popen:
    args = [str(root), str(ckpt), str(save_interval), str(delay), str(pause_after), str(marker)]
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args],
        cwd=REPO,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"indexer exited early: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "indexer never reached the pause point"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _assert_each_file_once(root: Path, n: int) -> None:
    with open_lib(root) as lib:
        paths = list(rows(lib))
        assert sorted(paths) == sorted(f"d{i % 3}/{i:03d}.jpg" for i in range(n))
        assert_consistent(lib)


@pytest.mark.parametrize(
    "save_interval", [3600.0, 0.0], ids=["index-file-behind", "index-file-saved"]
)
def test_kill9_after_committed_batches_then_resume(tmp_path, tiny_checkpoint, save_interval):
    root, n = tmp_path / "p", 30
    _photos(root, n)
    marker = tmp_path / "paused"
    proc = _spawn(root, tiny_checkpoint, save_interval, pause_after=3, marker=marker)
    try:
        _wait_for(marker, proc)
        # Paused after 3 committed batches, holding the lock. A second indexer refuses at once:
        started = time.monotonic()
        with pytest.raises(db.LibraryLockedError, match=f"pid {proc.pid}.*already writing"):
            index(root, tiny_checkpoint)
        assert time.monotonic() - started < 5
        # ... while a reader sees exactly the committed batches.
        with open_lib(root) as lib:
            assert len(lib.photo_ids()) == 12
            assert lib.load_index().ntotal == (12 if save_interval == 0 else 0)
    finally:
        _kill(proc)
    summary = index(root, tiny_checkpoint)
    assert (summary.new, summary.unchanged) == (n - 12, 12)  # committed rows kept, not redone
    _assert_each_file_once(root, n)
    again = index(root, tiny_checkpoint)
    assert (again.new, again.unchanged) == (0, n)


def test_kill9_at_a_random_moment_then_resume(tmp_path, tiny_checkpoint):
    delay = random.Random(KILL_SEED).uniform(0, 0.6)
    root, n = tmp_path / "p", 40
    _photos(root, n)
    proc = _spawn(root, tiny_checkpoint, 0.0, delay=0.05)
    with _reproduce_with(f"KILL_SEED={KILL_SEED} (killed {delay:.3f} s after the first commit)"):
        try:
            _wait_for(root / db.LIBRARY_DIRNAME / "library.sqlite3", proc)
            while _committed(root) == 0 and proc.poll() is None:  # the run is under way ...
                time.sleep(0.01)
            time.sleep(delay)  # ... and somewhere in its ~0.5 s of batches it dies
        finally:
            _kill(proc)
        summary = index(root, tiny_checkpoint)
        assert summary.new + summary.unchanged == n and summary.failed == 0, summary
        _assert_each_file_once(root, n)


# The same, with flat kept up to 8 photos only, paused for a kill at one point of the index
# switch that the library's growth calls for: while the new index trains ("training"), once
# its file is written but the manifest still names the old one ("written"), once the
# manifest names it but the old file is not yet removed ("switched").
SWITCH_SCRIPT = """
import os, sys, time
from pathlib import Path
import db
from db import vectors
from indexer import IndexOptions, index_photos
root, ckpt, point, marker = sys.argv[1:]
vectors.FLAT_MAX = 8

def pause():
    Path(marker).write_text(str(os.getpid()))
    time.sleep(3600)

def on_rebuild(event):
    if point == "training" and event.added is None:
        pause()

real_save, real_json = db.Library.save_index, db.Library.write_manifest_json

def save_index(self, index, index_type=None):
    real_save(self, index, index_type)
    if point == "written" and index_type == "ivf-sq8":
        pause()

def write_manifest_json(self):
    real_json(self)
    if point == "switched" and self.manifest().index_type == "ivf-sq8":
        pause()

db.Library.save_index, db.Library.write_manifest_json = save_index, write_manifest_json
options = IndexOptions(model=ckpt, batch_size=4, workers=2, on_index_rebuild=on_rebuild)
index_photos(Path(root), options)
"""


@pytest.mark.parametrize("point", ["training", "written", "switched"])
def test_kill9_during_an_index_switch_keeps_an_index_then_finishes(
    tmp_path, tiny_checkpoint, point, monkeypatch
):
    root = tmp_path / "p"
    _photos(root, 6)
    index(root, tiny_checkpoint)  # flat
    _photos(root, 6, start=6)  # 12 photos: past flat's 8
    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        [sys.executable, "-c", SWITCH_SCRIPT, str(root), str(tiny_checkpoint), point, str(marker)],
        cwd=REPO,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(marker, proc)
    finally:
        _kill(proc)
    # Every committed photo is searchable through the index the manifest names: the old one
    # until the new file is whole and named, the new one after.
    live = "ivf-sq8" if point == "switched" else "flat"
    with open_lib(root) as lib:
        assert lib.manifest().index_type == live
        assert_consistent(lib)
        stored = {p.id: p.vector() for p in rows(lib).values()}
    assert len(stored) == 12
    with Searcher(root) as searcher:
        for photo_id, vector in list(stored.items())[:3]:
            hits = searcher.vector(vector, k=12)
            assert len(hits) == 12 and hits[0].photo_id == photo_id
    # The next run (same rules) removes what the killed one left and finishes the switch.
    monkeypatch.setattr(vectors, "FLAT_MAX", 8)
    summary = index(root, tiny_checkpoint)
    assert (summary.new, summary.unchanged) == (0, 12)
    redone = () if point == "switched" else ("flat -> ivf-sq8 for 12 photos",)
    assert summary.index_rebuilds == redone
    with open_lib(root) as lib:
        assert lib.manifest().index_type == "ivf-sq8" and lib.leftovers() == []
        assert sorted(p.name for p in lib.directory.glob("index-*")) == ["index-ivf-sq8.faiss"]
        assert_consistent(lib)


@contextlib.contextmanager
def _reproduce_with(how: str):
    """Any failure inside names what reproduces it."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nreproduce with {how}") from exc


def _committed(root: Path) -> int:
    try:
        with open_lib(root) as lib:
            return len(lib.photo_ids())
    except db.LibraryError:
        return 0  # not created yet


def _cap_database_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new connection may not grow the file: SQLite reports a real SQLITE_FULL."""
    real = engine_mod.make_engine

    def make_engine(db_path, *, readonly):
        engine = real(db_path, readonly=readonly)

        @event.listens_for(engine, "connect")
        def cap(dbapi_conn, _record):
            pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

        return engine

    monkeypatch.setattr(engine_mod, "make_engine", make_engine)


def test_database_full_is_a_clear_error_and_the_library_stays_usable(
    tmp_path, tiny_checkpoint, monkeypatch
):
    root = tmp_path / "p"
    _photos(root, 6)
    index(root, tiny_checkpoint)
    _photos(root, 120, start=6)
    with monkeypatch.context() as m:
        _cap_database_growth(m)
        with pytest.raises(db.LibraryWriteError, match="full"):
            index(root, tiny_checkpoint)
    with open_lib(root) as lib:  # whole batches only; the index file is reconciled on the next run
        committed = len(lib.photo_ids())
        assert 6 <= committed < 126 and (committed - 6) % 4 == 0
    summary = index(root, tiny_checkpoint)
    assert summary.new == 126 - committed
    _assert_each_file_once(root, 126)


def test_index_file_disk_full_keeps_the_old_file(tmp_path, tiny_checkpoint, monkeypatch):
    root = tmp_path / "p"
    _photos(root, 6)
    index(root, tiny_checkpoint)
    lib_dir = root / db.LIBRARY_DIRNAME
    before = (lib_dir / "index-flat.faiss").read_bytes()
    _photos(root, 3, start=6)

    def no_space(_data):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_writer = faiss.PyCallbackIOWriter
    with monkeypatch.context() as m:
        m.setattr(faiss, "PyCallbackIOWriter", lambda _write: real_writer(no_space))
        with pytest.raises(db.LibraryWriteError, match="No space left on device"):
            index(root, tiny_checkpoint)
    assert (lib_dir / "index-flat.faiss").read_bytes() == before
    assert not [p for p in lib_dir.iterdir() if p.name.endswith(".tmp")]
    summary = index(root, tiny_checkpoint)  # the rows committed before the save are kept
    assert summary.new + summary.unchanged == 9
    _assert_each_file_once(root, 9)


def test_library_that_cannot_be_created_is_a_clear_error(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    _photos(root, 1)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(db.LibraryWriteError, match="Not a directory"):
        index(root, tiny_checkpoint, library=tmp_path / "afile" / "lib")
    (root / db.LIBRARY_DIRNAME).write_text("in the way")  # the default spot cannot be a folder
    with pytest.raises(db.LibraryWriteError, match="--library"):
        index(root, tiny_checkpoint)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_library_is_a_clear_error_and_unchanged(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    _photos(root, 3)
    index(root, tiny_checkpoint)
    lib_dir = root / db.LIBRARY_DIRNAME
    _photos(root, 2, start=3)
    snapshot = {p.name: p.read_bytes() for p in lib_dir.iterdir() if p.is_file()}
    for p in [lib_dir, *lib_dir.iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with pytest.raises(db.LibraryError):
            index(root, tiny_checkpoint)
    finally:
        for p in [lib_dir, *lib_dir.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert {p.name: p.read_bytes() for p in lib_dir.iterdir() if p.is_file()} == snapshot


def test_reader_ignores_stale_ids(tmp_path, tiny_checkpoint):
    """A FAISS file that lags the database: hits without a row are simply absent."""
    root = tmp_path / "p"
    _photos(root, 4)
    index(root, tiny_checkpoint)
    with open_lib(root) as lib:
        ids = lib.photo_ids()
        with lib.session() as s, s.begin():
            found = photos.photos_by_id(s, np.array([*ids[:2], 10_000, -1]))
        assert sorted(found) == ids[:2].tolist()
