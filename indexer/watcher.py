"""A live library: watch the photo folder and index what changes, seconds after it lands.

Filesystem events (inotify, FSEvents, ... through `watchdog`; polling where those cannot
be used) only say *which paths changed*. `Debouncer` waits until each has been quiet for a
while and its size and mtime stopped changing (a copy in progress is not read half-way),
then hands them over in batches; each batch is one `IndexSession.run(paths)`, the same
plan -> load -> encode -> write pass as `index`, so there is one write path. The session
(lock, database, model) is held for the watcher's whole life.

If events may have been lost (the kernel's queue overflowed) or the photo folder went away
and came back (an unmounted disk), the next pass is a full incremental one.

An object store's root (s3://bucket/prefix) sends no events: its watcher makes a full pass
every `poll_interval` seconds, each reading only what the listing says changed; a store that
does not answer is tried again at the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from indexer.pipeline import IndexOptions, IndexSession
from indexer.summary import Summary
from koclip.encoder import Encoder

log = logging.getLogger("koclip_search.watch")
T = TypeVar("T")

Stat = tuple[int, int, bool] | None  # (size, mtime_ns, is_dir), None when absent
# During a pass the index file is saved whenever that costs at most this share of the time,
# so photos become searchable batch by batch, not at the end of a long import.
SAVE_SHARE = 0.1


@dataclass(frozen=True)
class WatchOptions:
    """How a watcher waits and batches (seconds)."""

    quiet: float = 2.0  # a path must see no event, and keep its size and mtime, this long
    max_wait: float = 10.0  # during a long import, a pass starts at least this often
    max_paths: int = 256  # changed paths per pass (a bigger burst is cut into passes)
    poll: bool = False  # poll instead of native events (network file systems)
    poll_interval: float = 30.0  # each look walks the tree: ~2 CPU-s per 100k files
    root_check: float = 2.0  # how often to check that the photo folder is still there
    rescan: float = 6 * 3600.0  # a full incremental pass this often anyway (0: never)

    def __post_init__(self) -> None:
        for name in ("quiet", "max_wait", "poll_interval", "root_check", "rescan"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, not {value}")
        if self.max_paths < 1:
            raise ValueError("max_paths must be at least 1")


# -- deciding when to read: pure logic, with the clock and stat passed in -------------------


@dataclass
class _Pending:
    first: float  # when it was first reported (for max_wait)
    changed: float  # last event, or last time its stat was seen to change
    stat: Stat


@dataclass
class Debouncer:
    """Changed paths in, batches of settled paths out.

    A path is settled once `quiet` seconds passed since its last event and its stat stayed
    the same over that time (polled file systems and copies that report few events). A
    folder waits for the paths under it that are still changing. Settled paths are held
    back while others still change (one pass for a burst), until there are `max_paths` of
    them or the oldest was reported `max_wait` seconds ago.
    """

    quiet: float
    max_wait: float
    max_paths: int
    stat: Callable[[str], Stat]
    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def add(self, path: str) -> None:
        """An event touched `path` (relative to the photo root, os-native)."""
        now = self.clock()
        old = self._pending.get(path)
        self._pending[path] = _Pending(old.first if old else now, now, self.stat(path))

    def clear(self) -> None:
        """Forget every pending path (a full pass is about to cover them)."""
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)

    def take(self) -> list[str] | None:
        """The paths to index now, oldest first, or None to wait."""
        now = self.clock()
        settled = self._settled(now)
        if not settled:
            return None
        busy = len(settled) < len(self._pending)
        oldest = min(self._pending[p].first for p in settled)
        if busy and len(settled) < self.max_paths and now - oldest < self.max_wait:
            return None  # a burst is still landing: take it in one pass
        settled.sort(key=lambda p: self._pending[p].first)
        batch = settled[: self.max_paths]
        for path in batch:
            del self._pending[path]
        return batch

    def wait_hint(self) -> float | None:
        """Seconds until `take` may return something new (None: nothing is pending)."""
        if not self._pending:
            return None
        now = self.clock()
        pending = self._pending.values()
        times = [p.changed + self.quiet for p in pending if now - p.changed < self.quiet]
        times.append(min(p.first for p in pending) + self.max_wait)
        return max(0.0, min(times) - now)

    def _settled(self, now: float) -> list[str]:
        quiet: list[str] = []
        for path, p in self._pending.items():
            if now - p.changed < self.quiet:
                continue
            st = self.stat(path)
            if st != p.stat:  # still being written
                p.stat, p.changed = st, now
                continue
            quiet.append(path)
        if len(quiet) == len(self._pending):
            return quiet
        # A folder is not taken while something under it still changes.
        busy_folders: set[str] = set()
        for path in set(self._pending).difference(quiet):
            parent = os.path.dirname(path)
            while parent and parent not in busy_folders:
                busy_folders.add(parent)
                parent = os.path.dirname(parent)
        return [p for p in quiet if p not in busy_folders]


# -- the photo folder's presence ------------------------------------------------------------


def _probe(root: Path) -> tuple[tuple[int, int] | None, bool]:
    """((device, inode), or None if it cannot be listed; whether it is empty) of the root."""
    try:
        st = os.stat(root)
        with os.scandir(root) as it:
            empty = next(it, None) is None
    except OSError:
        return None, True
    return (st.st_dev, st.st_ino), empty


# -- events ---------------------------------------------------------------------------------


class _Events:
    """watchdog events as changed paths (relative, os-native) on a queue.

    Reads (open, close without writing) and folder metadata changes are not asked for, so
    the indexer's own reads cause no events; hidden names and the library folder are dropped.
    """

    def __init__(self, root: Path, library_dir: Path, options: WatchOptions) -> None:
        self.root = root
        self.library_dir = library_dir
        self.options = options
        self.paths: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.polling = options.poll
        self.overflowed = threading.Event()
        self._observer = None

    def start(self) -> None:
        """Start watching (native events, else polling; a warning says why)."""
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )

        wanted = [
            FileCreatedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileDeletedEvent,
            FileClosedEvent,
            DirCreatedEvent,
            DirMovedEvent,
            DirDeletedEvent,
        ]
        events = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if type(event) in wanted:
                    events._put(event.src_path)
                    events._put(getattr(event, "dest_path", ""))

        if not self.polling:
            try:
                self._observer = self._start(_native_observer(), Handler(), wanted)
                _OverflowListener.attach(self.overflowed)
                return
            except OSError as exc:  # e.g. the inotify watch limit
                log.warning("cannot watch %s natively (%s); polling instead", self.root, exc)
                self.polling = True
        self._observer = self._start(self._polling_observer(), Handler(), wanted)

    def stop(self) -> None:
        """Stop watching; events not yet read are dropped."""
        _OverflowListener.detach(self.overflowed)
        if self._observer is not None:
            self._observer.stop()
            with contextlib.suppress(RuntimeError):
                self._observer.join(timeout=10)
            self._observer = None

    def _start(self, observer, handler, wanted):
        observer.schedule(handler, os.fspath(self.root), recursive=True, event_filter=wanted)
        observer.start()
        return observer

    def _polling_observer(self):
        from watchdog.observers.polling import PollingObserverVFS

        def listdir(path):  # hidden entries (the library among them) are never walked
            with os.scandir(path) as it:
                return [e for e in it if not e.name.startswith(".")]

        return PollingObserverVFS(os.stat, listdir, polling_interval=self.options.poll_interval)

    def _put(self, path: str | bytes) -> None:
        if not path:
            return
        path = os.fsdecode(path)
        if path == os.fspath(self.library_dir) or path.startswith(
            os.fspath(self.library_dir) + os.sep
        ):
            return
        rel = os.path.relpath(path, self.root)
        if rel == os.curdir or rel.startswith(os.pardir):
            return  # the root itself: its presence is checked on its own
        if any(part.startswith(".") for part in rel.split(os.sep)):
            return
        self.paths.put(rel)


def _native_observer():
    from watchdog.observers import Observer

    return Observer()


class _OverflowListener(logging.Handler):
    """watchdog reports a kernel event-queue overflow only in its log: listen there."""

    _flags: set[threading.Event] = set()
    _installed: _OverflowListener | None = None
    _guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            for flag in list(self._flags):
                flag.set()

    @classmethod
    def attach(cls, flag: threading.Event) -> None:
        with cls._guard:
            cls._flags.add(flag)
            if cls._installed is None:
                cls._installed = cls(logging.WARNING)
                logging.getLogger("watchdog.observers").addHandler(cls._installed)

    @classmethod
    def detach(cls, flag: threading.Event) -> None:
        with cls._guard:
            cls._flags.discard(flag)


# -- the watcher ----------------------------------------------------------------------------

PassCallback = Callable[[Summary, bool], None]  # (summary, whether it was a full pass)


def watch(
    photo_dir: Path | str,
    options: IndexOptions | None = None,
    watch_options: WatchOptions | None = None,
    *,
    on_pass: PassCallback | None = None,
    on_state: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    encoder: Encoder | None = None,
    mailbox: Mailbox | None = None,
) -> None:
    """Index `photo_dir` now, then keep indexing what changes until `stop` is set (or Ctrl-C).

    Holds the library's lock (as a watcher) throughout; `on_pass` gets each pass's summary
    (those that changed something), `on_state` a line when the watcher's state changes
    ("watching", "photo folder gone", ...). Work put in `mailbox` runs between two passes.
    Raises what `index_photos` raises.
    """
    stop = stop or threading.Event()
    options = _stoppable(options or IndexOptions(), stop)
    with IndexSession(
        photo_dir, options, encoder=encoder, kind="watcher", save_share=SAVE_SHARE
    ) as session:
        watch_options = watch_options or WatchOptions()
        if session.object_root is not None:
            box = mailbox or Mailbox()
            box.open.set()
            try:
                _poll_objects(session, watch_options, on_pass, on_state, stop, box)
            finally:
                box.close()
            return
        watcher = _Watcher(session, watch_options, on_pass, on_state, stop)
        watcher.mailbox = mailbox or Mailbox()
        watcher.mailbox.open.set()
        try:
            watcher.run()
        finally:
            watcher.mailbox.close()


def _poll_objects(
    session: IndexSession,
    options: WatchOptions,
    on_pass: PassCallback | None,
    on_state: Callable[[str], None] | None,
    stop: threading.Event,
    mailbox: Mailbox,
) -> None:
    """An object store's watcher: a full pass (listing, then only what changed) every
    `options.poll_interval` seconds until stopped. A store that cannot be listed or read
    (unreachable, credentials refused meanwhile) or a listing with none of the library's
    photos is tried again at the next poll: that pass stops before it plans, so it removes
    nothing (the batches committed before are kept). The first pass is reported, later ones
    when they changed something (photos, or the failures)."""
    from indexer.pipeline import PhotosGoneError
    from storage import StorageError

    state = on_state or (lambda _line: None)
    where = session.where
    interval = options.poll_interval
    announced = False
    failures: tuple | None = None  # the last reported pass's (None: none reported yet)
    with contextlib.suppress(Stopped):
        while not stop.is_set():
            try:
                summary = session.run(None)
            except (StorageError, PhotosGoneError) as exc:
                state(f"{exc}; trying again in {interval:g} s")
                announced = False
            else:
                changed = summary.new + summary.updated + summary.moved + summary.deleted
                if on_pass and (changed or summary.failures != failures):
                    on_pass(summary, True)
                    failures = summary.failures
                if not announced:
                    state(f"watching {where} (polling every {interval:g} s)")
                    announced = True
            deadline = time.monotonic() + interval
            while not stop.is_set() and time.monotonic() < deadline:
                mailbox.serve(session)
                stop.wait(min(0.2, max(0.0, deadline - time.monotonic())))


class Mailbox:
    """Writes of this process (set-aside, restore) handed to the watcher that holds the
    library's writer lock, to run on its thread between two passes."""

    def __init__(self) -> None:
        self.open = threading.Event()  # set while the watcher holds the lock and answers
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()

    def post(self, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` on the watcher's thread and return what it returns; TimeoutError if the
        watcher does not take it within `timeout` seconds (a long pass: it is not run then)."""
        future: Future = Future()
        self._jobs.put((fn, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.cancel():
                raise
            return future.result()  # taken in the meantime: it finishes, never abandoned

    def serve(self, session: IndexSession) -> None:
        """Run what was posted (on the watcher's thread); the session then reloads what
        those writes changed before its next pass."""
        while True:
            try:
                fn, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                session.library_changed()

    def close(self) -> None:
        """The watcher stopped: refuse what is still waiting (the poster takes the lock itself)."""
        self.open.clear()
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(TimeoutError("the watcher stopped"))


class Stopped(Exception):
    """Raised from inside a pass when the watcher is asked to stop."""


def _stoppable(options: IndexOptions, stop: threading.Event) -> IndexOptions:
    hook = options.on_batch_committed

    def committed(batches: int) -> None:
        if hook:
            hook(batches)
        if stop.is_set():
            raise Stopped

    return dataclasses.replace(options, on_batch_committed=committed)


class _Watcher:
    def __init__(
        self,
        session: IndexSession,
        options: WatchOptions,
        on_pass: PassCallback | None,
        on_state: Callable[[str], None] | None,
        stop: threading.Event,
    ) -> None:
        self.session = session
        self.root = session.photo_root
        self.options = options
        self.on_pass = on_pass
        self.on_state = on_state or (lambda _line: None)
        self.stop = stop
        self.mailbox = Mailbox()
        self.identity = _probe(self.root)[0]
        self.debouncer = Debouncer(
            options.quiet, options.max_wait, options.max_paths, stat=self._stat
        )

    def run(self) -> None:
        with contextlib.suppress(Stopped):
            while not self.stop.is_set():
                identity = self._present()
                if identity is None:
                    self._wait_for_root()
                    continue
                self.identity = identity
                with self._watching() as events:
                    self.debouncer.clear()
                    self._pass(None)  # what changed while nobody watched
                    self.on_state(f"watching {self.root} ({self._how(events)})")
                    self._follow(events)

    def _present(self) -> tuple[int, int] | None:
        """The root's identity if it is there; an empty folder in its place (a mount point
        without its disk) does not count as the root until it was the root all along."""
        identity, empty = _probe(self.root)
        if identity is None or (empty and identity != self.identity):
            return None
        return identity

    @contextlib.contextmanager
    def _watching(self) -> Iterator[_Events]:
        events = _Events(self.root, self.session.library_dir, self.options)
        events.start()
        try:
            yield events
        finally:
            events.stop()

    def _follow(self, events: _Events) -> None:
        """Turn events into passes until stopped or the root goes away."""
        next_root_check = time.monotonic() + self.options.root_check
        next_rescan = time.monotonic() + (self.options.rescan or float("inf"))
        while not self.stop.is_set():
            hint = self.debouncer.wait_hint()
            wait = self.options.root_check if hint is None else hint
            self._drain(events, min(max(wait, 0.05), self.options.root_check))
            now = time.monotonic()
            if now >= next_root_check:
                next_root_check = now + self.options.root_check
                if self._present() != self.identity:
                    return  # gone or replaced: watched again from scratch, with a full pass
            full = events.overflowed.is_set() or now >= next_rescan
            batch = None if full else self.debouncer.take()
            if not full and batch is None:
                continue
            if self._present() != self.identity:
                return  # events from a root that has just gone are no reason to delete
            if full:
                events.overflowed.clear()  # events were lost: look at everything
                next_rescan = now + (self.options.rescan or float("inf"))
                self.debouncer.clear()
            self._pass(batch)

    def _drain(self, events: _Events, timeout: float) -> None:
        """Take in events for `timeout` seconds (or until stopped)."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            self.mailbox.serve(self.session)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.debouncer.add(events.paths.get(timeout=min(left, 0.2)))
            except queue.Empty:
                continue
            # The first change of a quiet spell: look again as soon as it may be settled.
            deadline = min(deadline, time.monotonic() + self.options.quiet)

    def _wait_for_root(self) -> None:
        """Wait until the photo folder is back; nothing is indexed meanwhile, so its photos
        are not taken for deleted."""
        self.on_state(f"photo folder {self.root} is gone; waiting for it to come back")
        next_check = time.monotonic() + self.options.root_check
        while not self.stop.wait(0.2):
            self.mailbox.serve(self.session)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + self.options.root_check
            if self._present() is not None:
                self.on_state(f"photo folder {self.root} is back")
                return

    def _pass(self, paths: list[str] | None) -> None:
        summary = self.session.run(paths)
        changed = summary.new + summary.updated + summary.moved + summary.deleted
        if self.on_pass and (changed or summary.failed or paths is None):
            self.on_pass(summary, paths is None)

    def _stat(self, path: str) -> Stat:
        try:
            st = os.stat(self.root / path)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            # A folder's mtime moves with every entry added, and those entries report their
            # own events: only whether it is (still) a folder counts.
            return (0, 0, True)
        return (st.st_size, st.st_mtime_ns, False)

    @staticmethod
    def _how(events: _Events) -> str:
        return f"polling every {events.options.poll_interval:g} s" if events.polling else "events"


class WatchThread:
    """`watch` on a background thread (a server's): `start`, then `close` to stop it.

    An error that stops the watcher (another process holds the lock, ...) is logged and
    kept in `error`; the process goes on without watching.
    """

    def __init__(
        self,
        photo_dir: Path | str,
        options: IndexOptions | None = None,
        watch_options: WatchOptions | None = None,
    ) -> None:
        self.photo_dir = photo_dir
        # What `watch` gets besides this object's own stop event and mailbox.
        self._watch_args = (photo_dir, options, watch_options)
        self.error: BaseException | None = None
        self.mailbox = Mailbox()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="koclip-watch", daemon=True)

    def start(self) -> None:
        """Index what changed since the last run, then keep watching."""
        self._thread.start()

    def holds_lock(self) -> bool:
        """Whether the watcher runs and holds the library's writer lock (so a write of this
        process must go through `exclusive`)."""
        return self._thread.is_alive() and self.mailbox.open.is_set()

    def exclusive(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run `fn` on the watcher's thread between two passes, under its writer lock;
        TimeoutError if no pass ends within `timeout` seconds (then `fn` did not run)."""
        return self.mailbox.post(fn, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop at the next committed batch and wait for it (at most `timeout` seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        from koclip.errors import KoclipSearchError

        try:
            watch(
                *self._watch_args,
                on_pass=lambda summary, _full: log.info("%s", summary.to_text()),
                on_state=lambda line: log.warning("%s", line),
                stop=self._stop,
                mailbox=self.mailbox,
            )
        except KoclipSearchError as exc:
            self.error = exc
            log.error("not watching %s: %s", self.photo_dir, exc)
        except Exception as exc:
            self.error = exc
            log.exception("the watcher of %s stopped", self.photo_dir)
