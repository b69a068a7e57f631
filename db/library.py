"""A library on disk: folder layout, SQLite engine and sessions, manifest, writer lock, index file.

Layout of a library folder (default `PHOTO_DIR/.koclip-search/`)::

    library.sqlite3      photos (+ embeddings), failures, manifest; WAL mode
    index-<type>.faiss   the FAISS index for the manifest's index type, replaced atomically
    manifest.json        a human-readable mirror of the manifest row
    lock                 flock'ed by the one process allowed to write

Readers never lock: SQLite WAL gives each read transaction a snapshot, and the index file is
only ever replaced by rename, so a reader sees a whole file. The index file may lag the
database by the batches written since its last save: FAISS hits whose id has no row are
stale (skip them); rows not yet in the file become searchable after the next save.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import quote

import faiss
import numpy as np
from sqlalchemy import ColumnElement, Engine, create_engine, event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import vectors
from db.errors import (
    LibraryError,
    LibraryLockedError,
    LibraryNotFoundError,
    LibraryWriteError,
    SchemaVersionError,
)
from db.schema import SCHEMA_VERSION, Base, ManifestRow, Photo, blob_to_vector

LIBRARY_DIRNAME = ".koclip-search"
DB_NAME = "library.sqlite3"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"


@dataclass(frozen=True)
class Manifest:
    """How a library's vectors were made; vectors from another model must not be mixed in."""

    model_id: str  # as given to koclip.load_encoder ("koclip-base" or an absolute path)
    fingerprint: str  # koclip.checkpoint_fingerprint of the weights
    dim: int
    preprocess_version: str  # koclip.preprocess.PREPROCESS_VERSION
    index_type: str  # a key of db.vectors.INDEX_FACTORIES (one of INDEX_TYPES, or registered)
    photo_root: str  # relative to the library folder ("..") or absolute
    # The arithmetic of the towers that made the vectors ("fp32", "int8", or both as
    # "fp32+int8"); koclip only uses int8 where it agrees with fp32, so they mix.
    precision: str = "fp32"
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> str:
        """The manifest.json text."""
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"


def is_library(directory: Path) -> bool:
    """True if `directory` holds a library database (it may still be being created)."""
    return (Path(directory) / DB_NAME).is_file()


def default_library_dir(photo_root: Path) -> Path:
    """Where a photo folder's library lives unless --library says otherwise."""
    return Path(photo_root) / LIBRARY_DIRNAME


def index_filename(index_type: str) -> str:
    """File name of the FAISS index of one type (the type is in the name so a switch is atomic)."""
    return f"index-{index_type}.faiss"


class Library:
    """An opened library folder: engine, sessions, manifest, index file. Use `open` or `create`."""

    def __init__(self, directory: Path, engine: Engine, *, readonly: bool) -> None:
        self.directory = Path(directory)
        self.engine = engine
        self.readonly = readonly
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, readonly: bool = True) -> Library:
        """Open an existing library; raises LibraryNotFoundError (also while it is being created) or SchemaVersionError."""
        directory = Path(directory)
        db_path = directory / DB_NAME
        if not db_path.is_file():
            raise LibraryNotFoundError(
                f"no library at {directory} (run `koclip-search index PHOTO_DIR` first)"
            )
        engine = _make_engine(db_path, readonly=readonly)
        library = cls(directory, engine, readonly=readonly)
        try:
            library.check_schema()
            if not readonly:
                _add_new_columns(engine)
        except BaseException:
            engine.dispose()
            raise
        return library

    @classmethod
    def create(cls, directory: Path) -> Library:
        """Open a library for writing, creating its folder and tables if needed.

        The caller should hold `lock()` (taken before this, see `LibraryLock`) while writing.
        """
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryWriteError(
                f"cannot create the library folder {directory}: {exc.strerror}"
            ) from exc
        engine = _make_engine(directory / DB_NAME, readonly=False)
        library = cls(directory, engine, readonly=False)
        try:
            with write_errors(directory):
                library.check_schema()
                Base.metadata.create_all(engine)
                _add_new_columns(engine)
        except BaseException:
            engine.dispose()
            raise
        return library

    @classmethod
    def reset(cls, directory: Path) -> Library:
        """Delete the database (with its WAL files) and create an empty one; hold the lock."""
        for suffix in ("", "-wal", "-shm"):
            (Path(directory) / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
        return cls.create(directory)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -----------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.directory / DB_NAME

    @property
    def manifest_path(self) -> Path:
        """The manifest.json mirror."""
        return self.directory / MANIFEST_NAME

    @property
    def lock_path(self) -> Path:
        """The writer lock file."""
        return self.directory / LOCK_NAME

    def index_path(self, index_type: str | None = None) -> Path:
        """The FAISS file for `index_type` (default: the manifest's type)."""
        if index_type is None:
            manifest = self.manifest()
            index_type = manifest.index_type if manifest else vectors.DEFAULT_INDEX_TYPE
        return self.directory / index_filename(index_type)

    def photo_root(self) -> Path:
        """Absolute photo root that the stored relative paths hang from."""
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        return (self.directory / manifest.photo_root).resolve()

    def resolve(self, relpath: str) -> Path:
        """Absolute path of a stored (relative, POSIX) photo path."""
        return self.photo_root() / relpath

    # -- database --------------------------------------------------------------------------

    def session(self) -> Session:
        """A new ORM session; use `with library.session() as s, s.begin(): ...`.

        Each transaction is one snapshot (explicit BEGIN). Keep reader transactions short: a
        long-open one stops SQLite from checkpointing the WAL.
        """
        return self._sessions()

    def check_schema(self) -> None:
        """Raise SchemaVersionError if the database was written by another schema version."""
        try:
            with self.engine.connect() as conn:
                has_manifest = conn.execute(
                    text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='manifest'")
                ).first()
                row = None
                if has_manifest:
                    row = conn.execute(
                        text("SELECT schema_version FROM manifest WHERE id = 1")
                    ).first()
        except OperationalError as exc:
            if not self.readonly:
                raise  # create() reports it as a write error
            raise LibraryError(f"cannot read the library at {self.directory}: {exc.orig}") from exc
        if row is None and self.readonly:
            # A writer is creating it: tables or the manifest are not there yet.
            raise LibraryNotFoundError(
                f"the library at {self.directory} is not ready yet (still being created)"
            )
        if row is not None and row[0] != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the library at {self.directory} has schema version {row[0]}, this program "
                f"uses {SCHEMA_VERSION}; run `koclip-search index --rebuild` to rebuild it"
            )

    def manifest(self, session: Session | None = None) -> Manifest | None:
        """The manifest row (None for a library not yet written to)."""
        with _maybe_session(self, session) as s:
            s.flush()  # a manifest set in this transaction is read back
            # Read as a plain row: a library written before a column was added lacks it (a
            # reader cannot add it), and the Manifest default stands in.
            row = s.execute(text("SELECT * FROM manifest WHERE id = 1")).mappings().first()
            if row is None:
                return None
            return Manifest(**{f.name: row[f.name] for f in fields(Manifest) if f.name in row})

    def set_manifest(self, session: Session, manifest: Manifest) -> Manifest:
        """Write the manifest row in the caller's transaction; call `write_manifest_json` after commit."""
        now = time.time()
        row = session.get(ManifestRow, 1)
        values = asdict(manifest) | {"schema_version": SCHEMA_VERSION, "updated_at": now}
        if row is None:
            values["created_at"] = now
            session.add(ManifestRow(id=1, **values))
        else:
            values["created_at"] = row.created_at
            for key, value in values.items():
                setattr(row, key, value)
        return Manifest(**values)

    def write_manifest_json(self) -> None:
        """Atomically refresh manifest.json from the database (a mirror; the row is the truth)."""
        manifest = self.manifest()
        if manifest is not None:
            atomic_write_bytes(self.manifest_path, manifest.to_json().encode("utf-8"))

    def photo_ids(self, session: Session | None = None) -> np.ndarray:
        """Sorted int64 ids of every photo row."""
        with _maybe_session(self, session) as s:
            ids = s.scalars(select(Photo.id).order_by(Photo.id)).all()
        return np.asarray(ids, dtype=np.int64)

    @staticmethod
    def iter_embeddings(
        session: Session, *where: ColumnElement[bool], chunk: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunks of the stored embeddings of every photo (or those matching the
        `where` conditions on Photo), by id, within `session`'s transaction."""
        last = -1
        while True:
            rows = session.execute(
                select(Photo.id, Photo.embedding)
                .where(Photo.id > last, *where)
                .order_by(Photo.id)
                .limit(chunk)
            ).all()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.stack([blob_to_vector(r[1]) for r in rows])
            last = int(ids[-1])
            yield ids, vecs

    def photos_by_id(self, session: Session, ids: np.ndarray | list[int]) -> dict[int, Photo]:
        """Rows for FAISS ids (ids without a row, e.g. -1 or stale ones, are absent)."""
        wanted = [int(i) for i in ids if i >= 0]
        if not wanted:
            return {}
        rows = session.scalars(select(Photo).where(Photo.id.in_(wanted))).all()
        return {row.id: row for row in rows}

    # -- FAISS index -----------------------------------------------------------------------

    def load_index(self) -> faiss.Index | None:
        """The saved FAISS index of the manifest's type, or None if there is none yet."""
        path = self.index_path()
        if not path.exists():
            return None
        return vectors.read_index(path)

    def build_index(self, index_type: str | None = None) -> faiss.Index:
        """A fresh index of every stored embedding (one read snapshot); does not save it.

        Types that train (IVF) train on a random sample spread over the whole collection.
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        index_type = index_type or manifest.index_type
        with self.session() as s, s.begin():
            ids = self.photo_ids(s)
            return vectors.build_index(
                index_type,
                manifest.dim,
                self.iter_embeddings(s),
                len(ids),
                sample=lambda rows: self.vectors_for(s, ids[rows]),
            )

    def vectors_for(self, session: Session, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored embeddings (n, dim) for existing ids, in the order given (LibraryError if one is missing)."""
        wanted = [int(i) for i in ids]
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(wanted), 900):  # SQLite caps the parameters of one query
            chunk = wanted[start : start + 900]
            rows = session.execute(select(Photo.id, Photo.embedding).where(Photo.id.in_(chunk)))
            found.update((pid, blob_to_vector(blob)) for pid, blob in rows)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise LibraryError(f"no stored embedding for photo ids {missing[:5]}")
        if not wanted:
            return np.zeros((0, 0), np.float32)
        return np.stack([found[i] for i in wanted])

    def save_index(self, index: faiss.Index, index_type: str | None = None) -> None:
        """Atomically replace the index file of `index_type` (default: the manifest's). Hold the lock."""
        vectors.write_index(index, self.index_path(index_type))

    def reconcile_index(self) -> tuple[faiss.Index, bool]:
        """The saved index if its ids equal the database's, else one rebuilt (and saved) from it.

        Returns (index, rebuilt). The caller holds the lock, so no row changes meanwhile.
        Row embeddings never change under an id, so equal id sets mean equal contents.
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        try:
            index = self.load_index()
        except LibraryError:
            index = None  # unreadable file: rebuilding it is the repair
        if (
            index is not None
            and index.d == manifest.dim
            and np.array_equal(np.sort(vectors.index_ids(index)), self.photo_ids())
        ):
            return index, False
        index = self.build_index()
        self.save_index(index)
        return index, True

    # -- locking ---------------------------------------------------------------------------

    def lock(self) -> LibraryLock:
        """The writer lock of this library (see LibraryLock)."""
        return LibraryLock(self.directory)


class LibraryLock:
    """Exclusive, non-blocking writer lock: `fcntl.flock` on `<library>/lock`.

    `with LibraryLock(dir):` raises LibraryLockedError at once if another process holds it.
    The kernel drops it when the holder dies, so a killed indexer never leaves it stuck.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise LibraryLockedError(
                    f"another indexer{who} is already writing to the library at {self.directory}; "
                    "wait for it to finish"
                ) from None
            raise LibraryWriteError(f"cannot lock {self.path}: {exc.strerror}") from exc
        with contextlib.suppress(OSError):  # the pid is only for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

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


def relative_photo_root(library_dir: Path, photo_root: Path) -> str:
    """What the manifest records: ".."-style when the library is inside the photo root, else absolute."""
    library_dir, photo_root = Path(library_dir).resolve(), Path(photo_root).resolve()
    if library_dir.is_relative_to(photo_root):
        return Path(os.path.relpath(photo_root, library_dir)).as_posix()
    return str(photo_root)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file atomically (temp, fsync, rename, fsync folder); LibraryWriteError on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        vectors.fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LibraryWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


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


def _add_new_columns(engine: Engine) -> None:
    """Add the manifest columns newer than schema 1 to an older library (writers only)."""
    with engine.begin() as conn:
        present = {r[1] for r in conn.execute(text("PRAGMA table_info(manifest)"))}
        if present and "precision" not in present:
            conn.execute(
                text("ALTER TABLE manifest ADD COLUMN precision VARCHAR NOT NULL DEFAULT 'fp32'")
            )


@contextlib.contextmanager
def _maybe_session(library: Library, session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
        return
    with library.session() as s, s.begin():
        yield s


def _make_engine(db_path: Path, *, readonly: bool) -> Engine:
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

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit transactions are unreliable).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")  # a committed batch survives power loss too
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: object) -> None:
        conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    return engine
