"""A library on disk: its folder, SQLite engine and sessions, manifest and writer lock.

Layout of a library folder (default `PHOTO_DIR/.koclip-search/`)::

    library.sqlite3      photos (+ embeddings), failures, manifest; WAL mode (db.engine)
    index-<type>.faiss   the FAISS index for the manifest's index type, replaced atomically
                         (db.index_files)
    manifest.json        a human-readable mirror of the manifest row (db.manifest)
    lock                 flock'ed by the one process allowed to write; says who (db.lock)

Readers never lock: SQLite WAL gives each read transaction a snapshot, and the index file is
only ever replaced by rename, so a reader sees a whole file. The index file may lag the
database by the batches written since its last save: FAISS hits whose id has no row are
stale (skip them); rows not yet in the file are added from their stored embeddings by
the reader (search.engine), so what is committed is what is searched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import engine as sqlite_engine
from db import migrate, photos
from db.engine import DB_NAME, write_errors
from db.errors import (
    LIBRARY_DIRNAME,
    LibraryCorruptError,
    LibraryError,
    LibraryNotFoundError,
    LibraryWriteError,
    SchemaVersionError,
    index_command,
)
from db.index_files import IndexFiles
from db.lock import LOCK_NAME, LibraryLock
from db.manifest import MANIFEST_NAME, Manifest, manifest_problems, read_manifest, store_manifest
from db.schema import SCHEMA_VERSION, Base
from koclip.files import atomic_path
from storage import is_url


def is_library(directory: Path) -> bool:
    """True if `directory` holds a library database (it may still be being created)."""
    return (Path(directory) / DB_NAME).is_file()


def default_library_dir(photo_root: Path) -> Path:
    """Where a photo folder's library lives unless --library says otherwise."""
    return Path(photo_root) / LIBRARY_DIRNAME


class Library(IndexFiles):
    """An opened library folder: engine, sessions, manifest; its index file through
    `IndexFiles` (db.index_files). Use `open` or `create`."""

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
        return cls._opened(directory, readonly, cls._check_for_readers if readonly else _upgrade)

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
        return cls._opened(directory, False, _create_tables)

    @classmethod
    def _opened(cls, directory: Path, readonly: bool, setup: Callable[[Library], None]) -> Library:
        """The library with its engine, after `setup(library)`; the engine is let go if that fails."""
        engine = sqlite_engine.make_engine(directory / DB_NAME, readonly=readonly)
        library = cls(directory, engine, readonly=readonly)
        try:
            setup(library)
        except BaseException:
            engine.dispose()
            raise
        return library

    def _check_for_readers(self) -> None:
        self.check_schema()
        self.check_vectors()

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

    def photo_root(self) -> Path:
        """Absolute photo root that the stored relative paths hang from. A library of an
        object-store root has no folder: LibraryError (ask `root_url` first)."""
        manifest = self._stored_manifest()
        if is_url(manifest.photo_root):
            raise LibraryError(
                f"the photos of the library at {self.directory} are at {manifest.photo_root}, "
                "not in a folder"
            )
        return (self.directory / manifest.photo_root).resolve()

    def root_url(self) -> str | None:
        """The object-store URL of the photo root ("s3://bucket/prefix"), None for a folder."""
        root = self._stored_manifest().photo_root
        return root if is_url(root) else None

    def root_endpoint(self) -> str | None:
        """The endpoint a URL root was indexed through (as shown: no secrets), or None."""
        return self._stored_manifest().endpoint or None

    def _stored_manifest(self) -> Manifest:
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        return manifest

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
                version = migrate.stored_version(conn.exec_driver_sql)
        except OperationalError as exc:
            if not self.readonly:
                raise  # create() reports it as a write error
            raise LibraryError(f"cannot read the library at {self.directory}: {exc.orig}") from exc
        if version is None and self.readonly:
            raise self._unfinished()
        if version is not None and version > SCHEMA_VERSION:
            # Made by a newer koclip-search: a rebuild would throw its work away.
            raise SchemaVersionError(
                f"the library at {self.directory} was written by a newer koclip-search (schema "
                f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade koclip-search to "
                "use it (`pip install -U koclip-search`), and keep the library as it is"
            )
        if version is not None and version != SCHEMA_VERSION and version not in migrate.MIGRATABLE:
            raise SchemaVersionError(
                f"the library at {self.directory} has schema version {version}, this program "
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
            manifest = read_manifest(s)
        if manifest is None:
            return None
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
            found = photos.first_embedding_size(s)
        if found is not None and found[1] != 4 * manifest.dim:
            raise LibraryCorruptError(
                f"the manifest in {self.db_path} says vectors have {manifest.dim} values, but "
                f"photo {found[0]} has {found[1]} bytes; run `{index_command(self.directory)}` "
                "to repair it"
            )

    def set_manifest(self, session: Session, manifest: Manifest) -> Manifest:
        """Write the manifest row in the caller's transaction; call `write_manifest_json` after commit."""
        return store_manifest(session, manifest)

    def write_manifest_json(self) -> None:
        """Atomically refresh manifest.json from the database (a mirror; the row is the truth)."""
        manifest = self.manifest()
        if manifest is not None:
            atomic_write_bytes(self.manifest_path, manifest.to_json().encode("utf-8"))

    def has_rows(self) -> bool:
        """Whether anything was ever committed: a photo or a recorded failure."""
        with self.session() as s, s.begin():
            return photos.has_rows(s)

    def photo_ids(self, session: Session | None = None) -> np.ndarray:
        """Sorted int64 ids of every photo row (db.photos.photo_ids in a session of its own
        when none is given)."""
        with _maybe_session(self, session) as s:
            return photos.photo_ids(s)

    def lock(self, kind: str = "indexer") -> LibraryLock:
        """The writer lock of this library (see LibraryLock)."""
        return LibraryLock(self.directory, kind)


def _upgrade(library: Library) -> None:
    """A writer's open: check the version, then bring the schema up to this program's."""
    library.check_schema()
    _migrate(library)


def _create_tables(library: Library) -> None:
    """A writer's open that may create the library: its tables, then the upgrade."""
    with write_errors(library.directory):
        library.check_schema()
        Base.metadata.create_all(library.engine)
        _migrate(library)


def _migrate(library: Library) -> None:
    with library.engine.begin() as conn:  # through the engine: its errors are LibraryErrors
        migrate.upgrade(conn.exec_driver_sql)


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
def _maybe_session(library: Library, session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
        return
    with library.session() as s, s.begin():
        yield s
