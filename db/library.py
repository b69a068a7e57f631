"""A library on disk: folder layout, SQLite engine and sessions, manifest, writer lock, index file.

Layout of a library folder (default `PHOTO_DIR/.koclip-search/`)::

    library.sqlite3      photos (+ embeddings), failures, manifest; WAL mode
    index-<type>.faiss   the FAISS index for the manifest's index type, replaced atomically
    manifest.json        a human-readable mirror of the manifest row
    lock                 flock'ed by the one process allowed to write; says who (LockHolder)

Readers never lock: SQLite WAL gives each read transaction a snapshot, and the index file is
only ever replaced by rename, so a reader sees a whole file. The index file may lag the
database by the batches written since its last save: FAISS hits whose id has no row are
stale (skip them); rows not yet in the file are added from their stored embeddings by
the reader (search.engine), so what is committed is what is searched.

Every SQLite error surfaces as a LibraryError that names the file: a damaged database as
LibraryCorruptError, a failed write as LibraryWriteError (one engine hook, `_library_error`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import faiss
import numpy as np
from sqlalchemy import ColumnElement, Engine, create_engine, delete, event, func, select, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import vectors
from db.errors import (
    LIBRARY_DIRNAME,
    LibraryCorruptError,
    LibraryError,
    LibraryLockedError,
    LibraryNotFoundError,
    LibraryWriteError,
    SchemaVersionError,
    index_command,
)
from db.schema import (
    MIGRATABLE,
    SCHEMA_VERSION,
    Base,
    Failure,
    ManifestRow,
    Photo,
    blob_to_vector,
    upgrade_photos,
)
from koclip.files import atomic_path

DB_NAME = "library.sqlite3"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
# Manifest.index_choice: the type follows the library's size, or was chosen by the user.
INDEX_AUTO = "auto"
INDEX_CHOSEN = "chosen"


@dataclass(frozen=True)
class Manifest:
    """How a library's vectors were made; vectors from another model must not be mixed in."""

    model_id: str  # as given to koclip.load_encoder ("koclip-base" or an absolute path)
    fingerprint: str  # koclip.checkpoint_fingerprint of the weights
    dim: int
    preprocess_version: str  # koclip.preprocess.PREPROCESS_VERSION
    index_type: str  # a key of db.vectors.INDEX_FACTORIES (one of INDEX_TYPES, or registered)
    photo_root: str  # relative to the library folder ("..") or absolute
    # The arithmetic of the towers that made the vectors ("fp32", "bf16", "int8", or several
    # "+"-joined, e.g. "bf16+fp32"); koclip only uses a fast path where it agrees with fp32,
    # so they mix.
    precision: str = "fp32"
    # Whether the index type follows the library's size: INDEX_AUTO, INDEX_CHOSEN (by
    # `reindex --index`), or "" where not recorded (a library from before it was).
    index_choice: str = ""
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def automatic_index(self) -> bool:
        """Whether `index` may switch the type as the library grows or shrinks. Where the
        choice was not recorded, a type the size rule gives (flat, ivf-sq8, ivf-pq) counts as
        automatic, any other (hnsw) as chosen."""
        if self.index_choice:
            return self.index_choice == INDEX_AUTO
        return self.index_type in vectors.AUTO_LADDER

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
        # Sessions carry the file they read, for messages about what they find damaged.
        info = {"db_path": self.directory / DB_NAME, "directory": self.directory}
        self._sessions = sessionmaker(engine, expire_on_commit=False, info=info)

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
            if readonly:
                library.check_vectors()
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
                with engine.begin() as conn:
                    upgrade_photos(conn.connection.driver_connection, readonly=False)
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
        """Absolute path of a relative photo path (open files by `Photo.disk_relpath()`)."""
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
            raise self._unfinished()
        if row is not None and row[0] != SCHEMA_VERSION and row[0] not in MIGRATABLE:
            raise SchemaVersionError(
                f"the library at {self.directory} has schema version {row[0]}, this program "
                f"uses {SCHEMA_VERSION}; run `koclip-search index --rebuild` to rebuild it"
            )

    def _unfinished(self) -> LibraryNotFoundError:
        """Why a library has no manifest yet: a writer is creating it, or a first run failed."""
        if LibraryLock.is_held(self.directory):
            return LibraryNotFoundError(
                f"the library at {self.directory} is being created right now by another "
                "`koclip-search index`; try again when it has indexed its first photos"
            )
        return LibraryNotFoundError(
            f"the library at {self.directory} was never finished (its first indexing run "
            f"stopped before indexing anything); run `{index_command(self.directory)}` to "
            "finish it"
        )

    def is_intact(self) -> bool:
        """SQLite's quick_check of the whole file (it reads every page: for --rebuild, not every open)."""
        try:
            with self.engine.connect() as conn:
                return conn.exec_driver_sql("PRAGMA quick_check").scalar() == "ok"
        except LibraryCorruptError:
            return False

    def manifest(self, session: Session | None = None, *, check: bool = True) -> Manifest | None:
        """The manifest row (None for a library not yet written to).

        LibraryCorruptError if a value cannot be right (edited by hand, damaged); `check=False`
        returns it as stored, for the indexer to repair.
        """
        with _maybe_session(self, session) as s:
            s.flush()  # a manifest set in this transaction is read back
            # Read as a plain row: a library written before a column was added lacks it (a
            # reader cannot add it), and the Manifest default stands in.
            row = s.execute(text("SELECT * FROM manifest WHERE id = 1")).mappings().first()
            if row is None:
                return None
            manifest = Manifest(**{f.name: row[f.name] for f in fields(Manifest) if f.name in row})
        problems = manifest_problems(manifest) if check else []
        if problems:
            raise LibraryCorruptError(
                f"the manifest in {self.db_path} is damaged ({'; '.join(problems)}); run "
                f"`{index_command(self.directory)}` to repair it"
            )
        return manifest

    def check_vectors(self) -> None:
        """LibraryCorruptError if the stored embeddings do not have the manifest's size (one row read)."""
        manifest = self.manifest()
        if manifest is None:
            return
        with self.session() as s, s.begin():
            found = s.execute(select(Photo.id, func.length(Photo.embedding)).limit(1)).first()
        if found is not None and found[1] != 4 * manifest.dim:
            raise LibraryCorruptError(
                f"the manifest in {self.db_path} says vectors have {manifest.dim} values, but "
                f"photo {found[0]} has {found[1]} bytes; run `{index_command(self.directory)}` "
                "to repair it"
            )

    def set_manifest(self, session: Session, manifest: Manifest) -> Manifest:
        """Write the manifest row in the caller's transaction; call `write_manifest_json` after commit."""
        now = time.time()
        row = session.get(ManifestRow, 1)
        values = asdict(manifest) | {"schema_version": SCHEMA_VERSION, "updated_at": now}
        if row is None:
            values["created_at"] = now
            session.add(ManifestRow(id=1, **values))
        else:
            sound = isinstance(row.created_at, (int, float))  # a damaged row gets a new one
            values["created_at"] = row.created_at if sound else now
            for key, value in values.items():
                setattr(row, key, value)
        return Manifest(**values)

    def write_manifest_json(self) -> None:
        """Atomically refresh manifest.json from the database (a mirror; the row is the truth)."""
        manifest = self.manifest()
        if manifest is not None:
            atomic_write_bytes(self.manifest_path, manifest.to_json().encode("utf-8"))

    def has_rows(self) -> bool:
        """Whether anything was ever committed: a photo or a recorded failure."""
        with self.session() as s, s.begin():
            return any(s.scalar(select(t.id).limit(1)) is not None for t in (Photo, Failure))

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
        expected = _blob_bytes(session)
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
            vecs = np.stack([_stored_vector(session, pid, blob, expected) for pid, blob in rows])
            last = int(ids[-1])
            yield ids, vecs

    @staticmethod
    def stored_vectors(
        session: Session, ids: np.ndarray, dim: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sorted ids, vectors (n, dim)) of those of the given ids that have a row (others are
        left out), for search's re-rank of a few hundred candidates; LibraryCorruptError if a
        stored vector is not `dim` float32s.

        One plain statement per 900 ids on the session's connection (its errors still go
        through the engine's hook): through the ORM the same read of 100 ids took 4-15 ms,
        this ~1.3 ms (bench/bigindex.py's machine, pages cached).
        """
        conn = session.connection()
        found: list[tuple[int, bytes]] = []
        wanted = np.unique(np.asarray(ids, np.int64)).tolist()
        for start in range(0, len(wanted), 900):  # SQLite caps the parameters of one query
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            found += conn.exec_driver_sql(
                f"SELECT id, embedding FROM {Photo.__tablename__} WHERE id IN ({marks})",
                tuple(chunk),
            ).all()
        found.sort()
        for pid, blob in found:
            if len(blob) != 4 * dim:
                _stored_vector(session, pid, blob, 4 * dim)  # raises, naming the photo
        ids_found = np.fromiter((r[0] for r in found), np.int64, len(found))
        vecs = np.frombuffer(b"".join(r[1] for r in found), "<f4").reshape(len(found), dim)
        return ids_found, vecs.astype(np.float32)

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

    def build_index(
        self,
        index_type: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> faiss.Index:
        """A fresh index of every stored embedding (one read snapshot); does not save it.

        Types that train (IVF) train on a random sample spread over the whole collection;
        the vectors are then streamed in chunks, so memory holds the index, the sample and
        one chunk. `progress(added, total)`: see `vectors.build_index`.
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
                progress=progress,
            )

    def switch_index(
        self,
        index_type: str,
        *,
        automatic: bool,
        progress: Callable[[int, int], None] | None = None,
        before_switch: Callable[[faiss.Index], None] | None = None,
    ) -> faiss.Index:
        """Rebuild the index as `index_type` from the stored vectors and make it the library's,
        recording whether the type is automatic (Manifest.index_choice). Hold the lock.

        The new file is written whole (atomically) first, then the manifest names it, then
        the old type's file goes: a reader always finds a whole index of the type the manifest
        names, and a crash at any point leaves the previous index usable (a new file the
        manifest does not name yet is a leftover that the next writer removes and redoes).
        `before_switch(index)` runs on the built index before it is saved (search tunes it).
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        index = self.build_index(index_type, progress)
        if before_switch is not None:
            before_switch(index)
        self.save_index(index, index_type)
        choice = INDEX_AUTO if automatic else INDEX_CHOSEN
        if (index_type, choice) != (manifest.index_type, manifest.index_choice):
            with write_errors(self.directory), self.session() as s, s.begin():
                self.set_manifest(s, replace(manifest, index_type=index_type, index_choice=choice))
            self.write_manifest_json()
        if index_type != manifest.index_type:
            self.index_path(manifest.index_type).unlink(missing_ok=True)
        return index

    def vectors_for(self, session: Session, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored embeddings (n, dim) for existing ids, in the order given (LibraryError if one is missing)."""
        wanted = [int(i) for i in ids]
        found: dict[int, np.ndarray] = {}
        expected = _blob_bytes(session)
        for start in range(0, len(wanted), 900):  # SQLite caps the parameters of one query
            chunk = wanted[start : start + 900]
            rows = session.execute(select(Photo.id, Photo.embedding).where(Photo.id.in_(chunk)))
            found.update((pid, _stored_vector(session, pid, blob, expected)) for pid, blob in rows)
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
        """The saved index, brought up to the database's ids and saved; one rebuilt from the
        database if the file is unreadable, of another size, or cannot drop the ids it must.

        Returns (index, changed). The caller holds the lock, so no row changes meanwhile.
        Row embeddings never change under an id, so equal id sets mean equal contents, and a
        file that lags the database (a run killed between a commit and its next save) only
        needs the rows it lacks added and the deleted ones removed: no retraining, however
        big the library.
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        try:
            index = self.load_index()
        except LibraryError:
            index = None  # unreadable file: rebuilding it is the repair
        if index is not None and index.d == manifest.dim and index.is_trained:
            held = np.sort(vectors.index_ids(index))
            ids = self.photo_ids()
            if np.array_equal(held, ids):
                return index, False
            if len(np.unique(held)) == len(held) and vectors.remove(
                index, np.setdiff1d(held, ids, assume_unique=True)
            ):
                missing = np.setdiff1d(ids, held, assume_unique=True)
                with self.session() as s, s.begin():
                    for start in range(0, len(missing), 4096):
                        chunk = missing[start : start + 4096]
                        vectors.add(index, chunk, self.vectors_for(s, chunk))
                self.save_index(index)
                return index, True
        index = self.build_index()
        self.save_index(index)
        return index, True

    def drop_damaged_embeddings(self, dim: int) -> list[str]:
        """Delete rows whose stored embedding is not `dim` float32s; returns their paths, which
        the indexer then reads again as new files. Hold the lock."""
        with write_errors(self.directory), self.session() as s, s.begin():
            bad = s.execute(
                select(Photo.id, Photo.path).where(func.length(Photo.embedding) != 4 * dim)
            ).all()
            if bad:
                s.execute(delete(Photo).where(Photo.id.in_([pid for pid, _ in bad])))
        return [path for _, path in bad]

    def leftovers(self) -> list[Path]:
        """Files an interrupted run left behind: index files of a type the manifest does not
        name, temp files of atomic writes. Not part of the library (info does not count them)."""
        manifest = self.manifest(check=False)
        live = index_filename(manifest.index_type) if manifest else None
        found = []
        for path in self.directory.glob("*"):
            name = path.name
            stale_index = name.startswith("index-") and name.endswith(".faiss") and name != live
            temp = name.startswith(".") and name.endswith(".tmp")
            if (stale_index or temp) and path.is_file():
                found.append(path)
        return sorted(found)

    def remove_leftovers(self) -> list[Path]:
        """Delete `leftovers()`; hold the lock (a writer's temp files are then its own, dead)."""
        removed = []
        for path in self.leftovers():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed

    # -- locking ---------------------------------------------------------------------------

    def lock(self, kind: str = "indexer") -> LibraryLock:
        """The writer lock of this library (see LibraryLock)."""
        return LibraryLock(self.directory, kind)


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


def _locked_message(holder: LockHolder | None, directory: Path) -> str:
    if holder is not None and holder.kind == "watcher":
        return (
            f"a watcher (pid {holder.pid}, index --watch or serve --watch) holds the library at "
            f"{directory} and already indexes changes as they land; stop it to run another indexer"
        )
    who = f" (pid {holder.pid})" if holder is not None else ""
    return (
        f"another indexer{who} is already writing to the library at {directory}; "
        "wait for it to finish"
    )


def relative_photo_root(library_dir: Path, photo_root: Path) -> str:
    """What the manifest records: ".."-style when the library is inside the photo root, else absolute."""
    library_dir, photo_root = Path(library_dir).resolve(), Path(photo_root).resolve()
    if library_dir.is_relative_to(photo_root):
        return Path(os.path.relpath(photo_root, library_dir)).as_posix()
    return str(photo_root)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file atomically (koclip.files.atomic_path); LibraryWriteError on failure."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
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


def manifest_problems(manifest: Manifest) -> list[str]:
    """What cannot be right in a manifest's values (empty when it is sound)."""
    problems = []
    for name in ("model_id", "fingerprint", "preprocess_version", "photo_root"):
        value = getattr(manifest, name)
        if not isinstance(value, str) or not value:
            problems.append(f"{name} {value!r}")
    if (
        not isinstance(manifest.index_type, str)
        or manifest.index_type not in vectors.INDEX_FACTORIES
    ):
        problems.append(f"unknown index type {manifest.index_type!r}")
    if manifest.index_choice not in ("", INDEX_AUTO, INDEX_CHOSEN):
        problems.append(f"unknown index type choice {manifest.index_choice!r}")
    dim = manifest.dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 65536:
        problems.append(f"dim {dim!r}")
    for name in ("created_at", "updated_at"):
        value = getattr(manifest, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} {value!r}")
    return problems


def _blob_bytes(session: Session) -> int | None:
    """Bytes of one stored embedding, by the manifest's dim (None without a sound one)."""
    dim = session.scalar(select(ManifestRow.dim).where(ManifestRow.id == 1))
    return 4 * dim if isinstance(dim, int) and dim > 0 else None


def _stored_vector(
    session: Session, photo_id: int, blob: bytes, expected: int | None
) -> np.ndarray:
    """One stored embedding; LibraryCorruptError naming the file if its size is wrong."""
    if expected is not None and len(blob) != expected:
        where = session.info.get("directory")
        command = index_command(where) if where else "koclip-search index PHOTO_DIR"
        raise LibraryCorruptError(
            f"the library database {session.info.get('db_path', '')} holds a damaged embedding "
            f"(photo {photo_id}: {len(blob)} bytes, not {expected}); run `{command}` to "
            "index that photo again"
        )
    return blob_to_vector(blob)


def _library_error(exc: BaseException, db_path: Path, *, readonly: bool) -> LibraryError | None:
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


def _add_new_columns(engine: Engine) -> None:
    """Add the manifest columns newer than schema 1 to an older library (writers only).

    Each has a default that means "as before" and every reader reads the row by name
    (`Library.manifest`), so an older program still reads a library that has them and this
    one reads a library that lacks them: no schema version bump, no refusal either way.
    """
    with engine.begin() as conn:
        present = {r[1] for r in conn.execute(text("PRAGMA table_info(manifest)"))}
        if present and "precision" not in present:
            conn.execute(
                text("ALTER TABLE manifest ADD COLUMN precision VARCHAR NOT NULL DEFAULT 'fp32'")
            )
        if present and "index_choice" not in present:
            conn.execute(
                text("ALTER TABLE manifest ADD COLUMN index_choice VARCHAR NOT NULL DEFAULT ''")
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

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # One place for every query, connect included: no sqlite3 error leaves as a traceback.
        error = _library_error(context.original_exception, db_path, readonly=readonly)
        if error is not None:
            raise error from context.original_exception

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit transactions are unreliable).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 10000")
        if readonly:
            upgrade_photos(dbapi_conn, readonly=True)
        else:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")  # a committed batch survives power loss too
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: object) -> None:
        conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    return engine
