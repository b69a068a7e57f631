"""A live library: the watcher's debouncing, scoped passes, the lock, and `index --watch` end to end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import db
from cli.main import main
from indexer import Debouncer, IndexOptions, IndexSession, WatchOptions, WatchThread
from search import Searcher
from tests.indexer_fixtures import assert_consistent, index, open_lib, rows, write_jpeg

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 120.0  # seconds to wait for a change to show; generous, never a measure


# -- the debouncer, on a fake clock ---------------------------------------------------------


class FakeFS:
    """A clock and a stat function the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.files: dict[str, tuple[int, int, bool]] = {}

    def clock(self) -> float:
        return self.now

    def stat(self, path: str):
        return self.files.get(path)

    def write(self, path: str, size: int) -> None:
        self.files[path] = (size, int(self.now * 1e9), False)


def _debouncer(fs: FakeFS, quiet=2.0, max_wait=10.0, max_paths=100) -> Debouncer:
    return Debouncer(quiet, max_wait, max_paths, stat=fs.stat, clock=fs.clock)


def test_a_file_is_taken_once_it_stopped_changing():
    fs = FakeFS()
    d = _debouncer(fs)
    fs.write("a.jpg", 10)
    d.add("a.jpg")
    fs.now = 1.9
    assert d.take() is None
    fs.now = 2.0
    assert d.take() == ["a.jpg"]
    assert d.take() is None and len(d) == 0


def test_a_file_written_slowly_without_events_waits_for_its_last_write():
    """Polled and network file systems report a copy once: its growing size holds it back."""
    fs = FakeFS()
    d = _debouncer(fs)
    fs.write("slow.jpg", 100)
    d.add("slow.jpg")
    for step in range(1, 6):  # grows every 2.5 s, no further events
        fs.now = 2.5 * step
        fs.write("slow.jpg", 100 * (step + 1))
        assert d.take() is None
    fs.now += 1.9
    assert d.take() is None
    fs.now += 0.2
    assert d.take() == ["slow.jpg"]


def test_a_burst_is_one_batch_once_it_ends():
    fs = FakeFS()
    d = _debouncer(fs)
    for i in range(50):  # a file every 0.1 s: the first are long settled before the last lands
        fs.now = 0.1 * i
        fs.write(f"{i}.jpg", 1)
        d.add(f"{i}.jpg")
        assert d.take() is None
    fs.now += 2.0
    assert d.take() == [f"{i}.jpg" for i in range(50)]


def test_a_long_import_is_cut_into_batches():
    fs = FakeFS()
    d = _debouncer(fs, max_wait=10.0, max_paths=8)
    taken: list[list[str]] = []
    for i in range(100):  # one file a second for 100 s, with the next always being written
        fs.now = float(i)
        fs.write(f"{i:03d}.jpg", 1)
        d.add(f"{i:03d}.jpg")
        while (batch := d.take()) is not None:
            taken.append(batch)
    fs.now += 2.0
    while (batch := d.take()) is not None:
        taken.append(batch)
    flat = [p for batch in taken for p in batch]
    assert flat == [f"{i:03d}.jpg" for i in range(100)]  # each once, oldest first
    assert all(len(b) <= 8 for b in taken) and 1 < len(taken) < 100


def test_the_oldest_change_waits_at_most_max_wait_during_a_burst():
    fs = FakeFS()
    d = _debouncer(fs, quiet=1.0, max_wait=5.0)
    fs.write("first.jpg", 1)
    d.add("first.jpg")
    t = 0.0
    while (batch := d.take()) is None:
        t += 0.5
        fs.now = t
        fs.write("busy.jpg", int(t * 10))  # another file keeps changing
        d.add("busy.jpg")
    assert batch == ["first.jpg"] and t >= 5.0


def test_a_folder_waits_for_files_still_being_written_in_it():
    fs = FakeFS()
    d = _debouncer(fs)
    fs.files["trip"] = (4096, 0, True)
    d.add("trip")
    fs.write(os.path.join("trip", "big.jpg"), 1)
    d.add(os.path.join("trip", "big.jpg"))
    for step in range(1, 4):
        fs.now = 1.5 * step
        fs.write(os.path.join("trip", "big.jpg"), step + 1)
        d.add(os.path.join("trip", "big.jpg"))
        assert d.take() is None  # the folder is quiet, but not what is in it
    fs.now += 2.0
    assert sorted(d.take()) == sorted(["trip", os.path.join("trip", "big.jpg")])


def test_wait_hint_says_when_to_look_again():
    fs = FakeFS()
    d = _debouncer(fs, quiet=2.0)
    assert d.wait_hint() is None
    fs.write("a.jpg", 1)
    d.add("a.jpg")
    fs.now = 0.5
    assert d.wait_hint() == pytest.approx(1.5)


def test_watch_options_are_checked():
    with pytest.raises(ValueError, match="quiet"):
        WatchOptions(quiet=-1)
    with pytest.raises(ValueError, match="max_paths"):
        WatchOptions(max_paths=0)


# -- the lock says who holds it ----------------------------------------------------------


def test_lock_refuses_a_second_writer_and_names_the_watcher(tmp_path):
    lib = tmp_path / "lib"
    assert db.lock_holder(lib) == (None, False)
    with db.LibraryLock(lib, "watcher") as lock:
        with pytest.raises(db.LibraryLockedError, match=f"a watcher \\(pid {os.getpid()}"):
            db.LibraryLock(lib).acquire()
        holder, held = db.lock_holder(lib)
        assert held and holder.kind == "watcher" and holder.pid == os.getpid()
        assert holder.last_commit is None
        lock.note_commit()
        assert db.lock_holder(lib)[0].last_commit is not None
    holder, held = db.lock_holder(lib)
    assert not held and holder.kind == "watcher"  # the last holder is still on file
    with db.LibraryLock(lib):  # free again
        pass


def test_lock_file_of_an_older_version_still_names_the_pid(tmp_path):
    (tmp_path / "lock").write_text("4242\n")
    holder, held = db.lock_holder(tmp_path)
    assert holder.pid == 4242 and holder.kind == "indexer" and not held


# -- scoped passes: the same stages on a few paths ----------------------------------------


def test_scoped_passes_add_move_and_delete(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    for i in range(4):
        write_jpeg(root / f"a/{i}.jpg", i)
    (root / "locked").mkdir()
    (root / "locked").chmod(0)
    try:
        with IndexSession(root, IndexOptions(model=str(tiny_checkpoint), batch_size=4)) as s:
            first = s.run()
            assert first.new == 4
            if os.geteuid() != 0:
                assert [p for p, _ in first.failures] == ["locked/"]
            with open_lib(root) as lib:
                ids = {p: r.id for p, r in rows(lib).items()}
            write_jpeg(root / "b/new.jpg", 10)
            assert s.run(["b"]).new == 1
            (root / "a").rename(root / "trip")
            moved = s.run(["a", "trip"])
            assert (moved.moved, moved.new, moved.deleted) == (4, 0, 0)
            (root / "trip/0.jpg").unlink()
            assert s.run([os.path.join("trip", "0.jpg")]).deleted == 1
            assert s.run(["nothing-here"]).deleted == 0
    finally:
        (root / "locked").chmod(0o755)
    with open_lib(root) as lib:
        now = {p: r.id for p, r in rows(lib).items()}
        assert_consistent(lib)
        with lib.session() as sess, sess.begin():
            dirs = sess.scalars(
                db.Failure.__table__.select().with_only_columns(db.Failure.path)
            ).all()
    assert sorted(now) == ["b/new.jpg", "trip/1.jpg", "trip/2.jpg", "trip/3.jpg"]
    assert all(now[f"trip/{i}.jpg"] == ids[f"a/{i}.jpg"] for i in (1, 2, 3))  # moved, same ids
    if os.geteuid() != 0:
        assert dirs == ["locked"]  # a pass elsewhere leaves other folders' failures alone


def test_scoped_pass_keeps_hidden_excluded_and_library_paths_out(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    write_jpeg(root / "keep.jpg", 1)
    options = IndexOptions(model=str(tiny_checkpoint), exclude=("*/screens/*",))
    with IndexSession(root, options) as s:
        s.run()
        write_jpeg(root / ".hidden/x.jpg", 2)
        write_jpeg(root / "a/screens/x.jpg", 3)
        write_jpeg(root / "a/ok.jpg", 4)
        summary = s.run([".hidden", "a", os.path.join(db.LIBRARY_DIRNAME, "library.sqlite3")])
    assert summary.new == 1
    with open_lib(root) as lib:
        assert sorted(rows(lib)) == ["a/ok.jpg", "keep.jpg"]


# -- the watcher on a thread: root gone and back, stop ---------------------------------------


def _paths(root: Path) -> set[str]:
    try:
        with open_lib(root) as lib:
            return set(rows(lib))
    except db.LibraryError:
        return set()


def _eventually(check, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the watcher exited: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_watcher_waits_out_a_missing_root_and_resumes_with_a_full_pass(tmp_path, tiny_checkpoint):
    root, away = tmp_path / "p", tmp_path / "unmounted"
    write_jpeg(root / "a.jpg", 1)
    library = tmp_path / "lib"  # outside the root, as for a removable disk
    options = IndexOptions(model=str(tiny_checkpoint), library=library)
    # Root checks are rare here: what protects the photos is the check before each pass.
    watcher = WatchThread(root, options, WatchOptions(quiet=0.2, root_check=3.0))
    watcher.start()
    try:
        _eventually(lambda: _paths_in(library) == {"a.jpg"}, "the first pass")
        root.rename(away)  # the disk goes away: nothing may be taken for deleted ...
        write_jpeg(away / "a.jpg", 5)  # ... even when events still come from it
        write_jpeg(away / "b.jpg", 2)  # (it comes back with a changed and a new photo)
        time.sleep(1.0)  # settle time passes while it is gone (not a measure: any wait works)
        assert _paths_in(library) == {"a.jpg"}
        away.rename(root)
        _eventually(lambda: _paths_in(library) == {"a.jpg", "b.jpg"}, "the pass after return")
        write_jpeg(root / "c.jpg", 3)  # and it is watched again
        _eventually(lambda: _paths_in(library) == {"a.jpg", "b.jpg", "c.jpg"}, "a new photo")
        assert db.lock_holder(library)[1]
    finally:
        watcher.close()
    assert watcher.error is None
    assert not db.lock_holder(library)[1]


def _paths_in(library: Path) -> set[str]:
    try:
        with db.Library.open(library) as lib:
            return set(rows(lib))
    except db.LibraryError:
        return set()


def test_serve_runs_the_watcher_for_the_apps_life(tmp_path):
    from fastapi.testclient import TestClient

    from web import create_app

    class Fake:
        started = closed = False

        def start(self):
            self.started = True

        def close(self):
            self.closed = True

    fake = Fake()
    app = create_app(tmp_path, warm=False, watcher=fake)
    with TestClient(app):
        assert fake.started and not fake.closed
    assert fake.closed


# -- index --watch end to end --------------------------------------------------------------


def _search(root: Path) -> set[str] | None:
    """Every photo path `search --json` returns, relative to the root (None: no library yet)."""
    result = CliRunner().invoke(
        main, ["search", "사진", "--library", str(root), "--json", "-k", "1000"]
    )
    if result.exit_code != 0:
        return None
    return {
        Path(r["path"]).relative_to(root).as_posix() for r in json.loads(result.stdout)["results"]
    }


def _searched_by(searcher: Searcher, root: Path) -> set[str]:
    return {hit.path.relative_to(root).as_posix() for hit in searcher.text("사진", k=1000)}


def _write_slowly(path: Path, data: bytes, chunks: int = 5, pause: float = 0.3) -> None:
    """A camera import or network copy: the file grows over a few seconds."""
    step = len(data) // chunks + 1
    with open(path, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()
            time.sleep(pause)


def _spawn_watcher(root, checkpoint, settle: str, *extra: str, stdout) -> subprocess.Popen:
    """`koclip-search index ROOT --watch` as its own process (batches of 2), stderr piped."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli import main; main()",
            "index",
            str(root),
            "--watch",
            "--model",
            str(checkpoint),
            "--settle",
            settle,
            "--batch-size",
            "2",
            *extra,
        ],
        cwd=REPO,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_index_watch_end_to_end(tmp_path, tiny_checkpoint):
    root, src = tmp_path / "p", tmp_path / "src"
    for i in range(3):
        write_jpeg(root / f"old/{i}.jpg", i)
    for i in range(10, 16):
        write_jpeg(src / f"{i}.jpg", i, (320, 240))
    proc = _spawn_watcher(root, tiny_checkpoint, "1", "--json", stdout=subprocess.PIPE)
    stack = contextlib.ExitStack()
    try:
        expect = {f"old/{i}.jpg" for i in range(3)}
        _eventually(lambda: _search(root) == expect, "the first pass", proc)
        reader = stack.enter_context(Searcher(root))
        assert _searched_by(reader, root) == expect
        # One writer: a second indexer is refused and told a watcher holds the library.
        second = CliRunner().invoke(main, ["index", str(root), "--model", str(tiny_checkpoint)])
        assert (
            second.exit_code == db.LibraryLockedError.exit_code and "a watcher" in second.output
        ), second.output
        info = json.loads(
            CliRunner().invoke(main, ["info", "--library", str(root), "--json"]).stdout
        )
        assert info["writer"]["kind"] == "watcher" and info["writer"]["pid"] == proc.pid

        # Photos copied in, one of them written slowly in chunks.
        shutil.copy(src / "10.jpg", root / "new1.jpg")
        (root / "import").mkdir()
        shutil.copy(src / "11.jpg", root / "import/a.jpg")
        _write_slowly(root / "import/slow.jpg", (src / "12.jpg").read_bytes())
        expect |= {"new1.jpg", "import/a.jpg", "import/slow.jpg"}
        _eventually(lambda: _search(root) == expect, "copied photos", proc)

        # A renamed folder, and a deletion.
        (root / "old").rename(root / "renamed")
        (root / "new1.jpg").unlink()
        expect = (expect - {f"old/{i}.jpg" for i in range(3)} - {"new1.jpg"}) | {
            f"renamed/{i}.jpg" for i in range(3)
        }
        _eventually(lambda: _search(root) == expect, "rename and delete", proc)
        # A reader opened before the changes sees them without being reopened.
        _eventually(lambda: _searched_by(reader, root) == expect, "a long-lived reader", proc)
        info = json.loads(
            CliRunner().invoke(main, ["info", "--library", str(root), "--json"]).stdout
        )
        assert info["failed"] == 0 and info["writer"]["last_commit"] is not None
    finally:
        stack.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: stops cleanly
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Stopped watching" in err
    passes = [json.loads(line) for line in out.splitlines()]
    assert passes[0]["full"] and passes[0]["new"] == 3
    assert sum(p["moved"] for p in passes) == 3  # the renamed folder's photos were not re-encoded
    with open_lib(root) as lib:
        assert_consistent(lib)
    assert not db.lock_holder(root / db.LIBRARY_DIRNAME)[1]
    again = index(root, tiny_checkpoint)
    assert again.new == again.deleted == 0 and again.unchanged == len(expect)


@pytest.mark.slow
def test_kill9_of_a_watcher_loses_nothing_committed(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    proc = _spawn_watcher(root, tiny_checkpoint, "0.2", stdout=subprocess.DEVNULL)
    try:
        _eventually(lambda: _paths(root) == {"a.jpg"}, "the first pass", proc)
        for i in range(2, 12):
            write_jpeg(root / f"{i}.jpg", i)
        _eventually(lambda: len(_paths(root)) > 1, "a batch of the import", proc)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    summary = index(root, tiny_checkpoint)  # the next run takes what the killed one had not
    assert summary.new + summary.unchanged == 11 and summary.failed == 0
    with open_lib(root) as lib:
        assert len(rows(lib)) == 11
        assert_consistent(lib)


def test_stop_event_ends_watch_between_passes(tmp_path, tiny_checkpoint):
    from indexer import watch

    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    stop = threading.Event()
    passes = []

    def on_pass(summary, full):
        passes.append(full)
        stop.set()

    watch(root, IndexOptions(model=str(tiny_checkpoint)), on_pass=on_pass, stop=stop)
    assert passes == [True]
    assert not db.lock_holder(root / db.LIBRARY_DIRNAME)[1]


def test_a_kernel_queue_overflow_reported_in_watchdogs_log_is_noticed():
    import logging

    from indexer.watcher import _OverflowListener

    flag = threading.Event()
    _OverflowListener.attach(flag)
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert flag.is_set()
    finally:
        _OverflowListener.detach(flag)


@pytest.mark.slow
def test_watcher_polls_where_native_events_cannot_be_had(tmp_path, tiny_checkpoint, monkeypatch):
    from indexer import watcher as watch_mod

    def no_inotify():
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watch_mod, "_native_observer", no_inotify)
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    options = WatchOptions(quiet=0.2, poll_interval=0.2)
    states: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=watch_mod.watch,
        args=(root, IndexOptions(model=str(tiny_checkpoint)), options),
        kwargs={"on_state": states.append, "stop": stop},
    )
    thread.start()
    try:
        _eventually(lambda: _paths(root) == {"a.jpg"}, "the first pass")
        write_jpeg(root / "sub/b.jpg", 2)
        _eventually(lambda: _paths(root) == {"a.jpg", "sub/b.jpg"}, "a polled new photo")
        (root / "a.jpg").unlink()
        _eventually(lambda: _paths(root) == {"sub/b.jpg"}, "a polled deletion")
    finally:
        stop.set()
        thread.join(60)
    assert any("polling every 0.2 s" in s for s in states), states


def test_watch_flags(tmp_path, monkeypatch):
    import cli.index_cmd as index_cmd

    seen = []
    monkeypatch.setattr(index_cmd, "_watch", lambda _d, _o, w, as_json: seen.append(w))

    def run(*args):
        return CliRunner().invoke(main, ["index", str(tmp_path), *args])

    assert run("--watch").exit_code == 0 and not seen[-1].poll
    assert run("--watch", "--poll", "--json").exit_code == 0
    assert seen[-1].poll and seen[-1].poll_interval == 30.0
    assert run("--watch", "--poll", "7", "--settle", "0.5").exit_code == 0
    assert (seen[-1].poll_interval, seen[-1].quiet) == (7.0, 0.5)
    refused = run("--poll")
    assert refused.exit_code == 2 and "--watch" in refused.output


@pytest.mark.slow
def test_serve_watch_shows_new_photos_without_a_restart(tmp_path, tiny_checkpoint):
    from fastapi.testclient import TestClient

    from web import create_app

    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    watcher = WatchThread(root, IndexOptions(model=str(tiny_checkpoint)), WatchOptions(quiet=0.2))
    app = create_app(root, warm=False, watcher=watcher)

    def shown(client) -> set[str] | None:
        response = client.get("/api/search", params={"q": "사진", "k": 200})
        if response.status_code != 200:
            return None  # 503 until the watcher's first pass made the library
        return {hit["relpath"] for hit in response.json()["results"]}

    with TestClient(app, base_url="http://127.0.0.1") as client:
        _eventually(lambda: shown(client) == {"a.jpg"}, "the first pass")
        write_jpeg(root / "new/b.jpg", 2)
        _eventually(lambda: shown(client) == {"a.jpg", "new/b.jpg"}, "a new photo on the page")
        assert db.lock_holder(root / db.LIBRARY_DIRNAME)[0].kind == "watcher"
    assert watcher.error is None
    assert not db.lock_holder(root / db.LIBRARY_DIRNAME)[1]  # stopped with the app
