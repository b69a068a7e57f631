"""The SQLite side of a library: its engine (WAL for the writer, read-only URIs for readers)
and the one hook that turns every SQLite error into a LibraryError naming the file: a damaged
database as LibraryCorruptError, a failed write as LibraryWriteError (`library_error`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import OperationalError

from db import migrate
from db.errors import LibraryCorruptError, LibraryError, LibraryWriteError, index_command

DB_NAME = "library.sqlite3"


def make_engine(db_path: Path, *, readonly: bool) -> Engine:
    """SQLite engine: WAL + synchronous FULL for the writer, a read-only URI for readers."""

    def connect() -> sqlite3.Connection:
        uri = f"file:{quote(os.fspath(db_path.resolve()))}"
        if not readonly:
            return sqlite3.connect(uri + "?mode=rwc", uri=True, check_same_thread=False)
        try:
            conn = sqlite3.connect(uri + "?mode=ro", uri=True, check_same_thread=False)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return conn
        except sqlite3.OperationalError:
            # Read-only media: WAL needs a -shm file it cannot create; nobody can be writing
            # there, so reading the file as immutable is safe.
            return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, check_same_thread=False)

    engine = create_engine("sqlite://", creator=connect)

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # One place for every query, connect included: no sqlite3 error leaves as a traceback.
        error = library_error(context.original_exception, db_path, readonly=readonly)
        if error is not None:
            raise error from context.original_exception

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit transactions are unreliable).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 10000")
        if readonly:
            migrate.reader_views(dbapi_conn.execute)
        else:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")  # a committed batch survives power loss too
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: object) -> None:
        conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    return engine


def library_error(exc: BaseException, db_path: Path, *, readonly: bool) -> LibraryError | None:
    """The LibraryError an SQLite error stands for (None: a bug, raised as it is).

    A damaged file is LibraryCorruptError whoever reads it; any other operational failure
    (disk full, read-only, I/O, locked) is a write error for the writer and a read error for
    a reader.
    """
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    primary = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    missing_table = readonly and "no such table" in str(exc)
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB) or missing_table:
        return LibraryCorruptError(
            f"the library database {db_path} is damaged ({exc}); restore it from a backup, or "
            f"rebuild it with `{index_command(db_path.parent, rebuild=True)}`"
        )
    if primary not in SQLITE_RESOURCE_ERRORS:
        return None  # misuse, constraints, "no such column": bugs, raised as they are
    if readonly:
        return LibraryError(f"cannot read the library database {db_path}: {exc}")
    return LibraryWriteError(f"cannot write the library at {db_path.parent}: {exc}")


SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
# What the file's surroundings cause: PERM, BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN.
SQLITE_RESOURCE_ERRORS = frozenset({3, 5, 6, 7, 8, 10, 13, 14})


@contextlib.contextmanager
def write_errors(directory: Path) -> Iterator[None]:
    """Turn SQLite / OS write failures (disk full, read-only, permission) into LibraryWriteError."""
    try:
        yield
    except OperationalError as exc:
        raise LibraryWriteError(f"cannot write the library at {directory}: {exc.orig}") from exc
    except OSError as exc:
        raise LibraryWriteError(
            f"cannot write the library at {directory}: {exc.strerror or exc}"
        ) from exc
