"""The writer lock of a library: `fcntl.flock` on `<library>/lock`, and who holds it.

One process at a time writes to a library (an indexer, a watcher, a set-aside); readers never
lock. The lock file says who holds it (a LockHolder as JSON), for messages and for `info`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from db.errors import LibraryLockedError, LibraryWriteError

LOCK_NAME = "lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a library's writer lock, as its lock file says."""

    pid: int
    kind: str  # "indexer" (a one-off run) or "watcher" (index --watch, serve --watch)
    since: float  # unix seconds the lock was taken
    last_commit: float | None  # unix seconds of the holder's last committed batch

    def to_json(self) -> dict[str, Any]:
        """The lock file's content."""
        return asdict(self)


class LibraryLock:
    """Exclusive, non-blocking writer lock: `fcntl.flock` on `<library>/lock`.

    `with LibraryLock(dir):` raises LibraryLockedError at once if another process holds it.
    The kernel drops it when the holder dies, so a killed indexer never leaves it stuck.
    The file says who holds it (a LockHolder as JSON), for that message and for `info`.
    """

    def __init__(self, directory: Path, kind: str = "indexer") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.kind = kind
        self._fd: int | None = None
        self._holder: LockHolder | None = None

    def acquire(self) -> None:
        """Take the lock or raise LibraryLockedError / LibraryWriteError."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LibraryWriteError(
                f"cannot create the lock file {self.path}: {exc.strerror}"
            ) from exc
        try:
            _flock_retrying(fd)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LibraryLockedError(_locked_message(holder, self.directory)) from None
            raise LibraryWriteError(f"cannot lock {self.path}: {exc.strerror}") from exc
        self._fd = fd
        self._holder = LockHolder(os.getpid(), self.kind, time.time(), None)
        self._write_holder()

    def note_commit(self) -> None:
        """Record in the lock file that a batch was just committed (`info` shows when)."""
        if self._fd is not None and self._holder is not None:
            self._holder = replace(self._holder, last_commit=time.time())
            self._write_holder()

    @staticmethod
    def is_held(directory: Path) -> bool:
        """Whether a writer holds the lock of `directory` now (a shared lock taken and dropped)."""
        try:
            fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return False  # no lock file: nobody ever wrote here
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EACCES)
        finally:
            os.close(fd)  # closing drops the shared lock
        return False

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with the next taker)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LibraryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write_holder(self) -> None:
        data = json.dumps(self._holder.to_json()).encode()
        with contextlib.suppress(OSError):  # the holder is only for messages and `info`
            os.pwrite(self._fd, data + b"\n", 0)
            os.ftruncate(self._fd, len(data) + 1)


def lock_holder(directory: Path) -> tuple[LockHolder | None, bool]:
    """(what the lock file says, whether a process holds the lock now), without writing.

    The holder is that of the last taker when nobody holds it now; None if the file is
    absent or unreadable.
    """
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None, False
    try:
        holder = _read_holder(fd)
        try:
            # A shared lock is refused only while a writer holds the exclusive one. A writer
            # starting in this instant retries (see _flock_retrying), so the probe never
            # makes it fail.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return holder, exc.errno in (errno.EWOULDBLOCK, errno.EACCES)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return holder, False
    finally:
        os.close(fd)


def _flock_retrying(fd: int, tries: int = 5) -> None:
    """flock(LOCK_EX | LOCK_NB), retried over ~0.1 s: `lock_holder` may hold a shared probe."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES) or attempt == tries - 1:
                raise
            time.sleep(0.02)


def _read_holder(fd: int) -> LockHolder | None:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if text.isdigit():  # written by an older version: the pid only
        return LockHolder(int(text), "indexer", 0.0, None)
    try:
        # raw_decode: a holder rewriting the file may leave a longer old tail for a moment.
        data, _ = json.JSONDecoder().raw_decode(text)
        return LockHolder(
            int(data["pid"]),
            str(data["kind"]),
            float(data["since"]),
            None if data.get("last_commit") is None else float(data["last_commit"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def holder_text(holder: LockHolder | None, held: bool = True) -> str:
    """Who writes to a library, for messages: "a watcher (pid N: index --watch or serve
    --watch)", "an indexer (pid N)", or "another process" when the lock file does not say
    (or nobody holds the lock any more)."""
    if holder is None or not held:
        return "another process"
    if holder.kind == "watcher":
        return f"a watcher (pid {holder.pid}: index --watch or serve --watch)"
    return f"an indexer (pid {holder.pid})"


def _locked_message(holder: LockHolder | None, directory: Path) -> str:
    who = holder_text(holder)
    if holder is not None and holder.kind == "watcher":
        return (
            f"{who} holds the library at {directory} and already indexes changes as they "
            "land; stop it to run another indexer"
        )
    return f"{who} is already writing to the library at {directory}; wait for it to finish"
