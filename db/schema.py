"""SQLAlchemy 2.0 schema of a library: photos (with their embeddings), failures, manifest."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TypeVar

import numpy as np
from sqlalchemy import Float, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump when tables or column meanings change, with its step in db.migrate (which upgrades an
# older library, or lets a reader read it as it is); any other version is refused (index --rebuild).
SCHEMA_VERSION = 5


class Base(DeclarativeBase):
    """Declarative base of every table in a library database."""


class Photo(Base):
    """One indexed image; its primary key is its FAISS id and is never reused.

    A row's embedding never changes: a modified file gets a new row (new id), so the set of
    ids alone tells whether the FAISS index matches the database.
    """

    __tablename__ = "photos"
    # AUTOINCREMENT: ids of deleted rows are never handed out again (a stale FAISS vector
    # could otherwise point at an unrelated new photo).
    __table_args__ = (
        Index("ix_photos_content_hash", "content_hash"),
        Index("ix_photos_taken_at", "taken_at"),  # date filters; rows hold their blobs inline
        Index("ix_photos_place", "place"),  # place filters: equal to a label or below it
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # POSIX, NFC, relative to the photo root: the key that matching, filters and display use.
    # A name that is not UTF-8 shows its odd bytes as \xNN escapes here.
    path: Mapped[str] = mapped_column(String, unique=True)
    # The relative path as the file system spells it (os.fsencode bytes), when it is not
    # `path` itself (an NFD name, bytes that are not UTF-8); NULL when it is. Every file
    # access and every result path uses `disk_relpath()`.
    disk_path: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None)
    size: Mapped[int] = mapped_column(Integer)  # bytes
    mtime_ns: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String)  # blake2b-128 hex of the whole file
    width: Mapped[int] = mapped_column(Integer)  # pixels, after EXIF orientation
    height: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime]  # naive local time: EXIF DateTimeOriginal, else the file's mtime
    taken_at_source: Mapped[str] = mapped_column(String)  # "exif" | "mtime"
    indexed_at: Mapped[float] = mapped_column(Float)  # unix seconds
    # Perceptual fingerprints of the decoded, oriented pixels (koclip.images.perceptual): the 64-bit
    # DCT hash as a signed int64, and a 24x24 grey thumbnail (576 bytes, deferred). NULL until
    # the indexer has computed them (a library made before schema 3).
    phash: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    pthumb: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    # The object's ETag (no quotes) when the photo root is an object store (schema 5); NULL
    # for a file of a local folder. With size and mtime_ns (LastModified) it tells an
    # unchanged object from its listing alone.
    etag: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    # Facts from the photo's metadata (indexer.facts.read_facts), schema 4. `facts` is the
    # FACTS_VERSION they were read with, NULL until read (a library made before schema 4: the
    # next index run reads them, metadata only). Each fact is NULL where the photo does not say
    # it or says it unreadably; `facts_problems` names the unreadable fields, comma-joined.
    lat: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)  # WGS84
    lon: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    # db.places.Place.text of the position ("제주특별자치도 서귀포시 성산읍", "프랑스 파리"),
    # and its names top-down as a JSON list (Place.text is them joined by one space).
    place: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    place_path: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    camera_make: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    camera_model: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    lens: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    keywords: Mapped[str | None] = mapped_column(String, nullable=True, default=None)  # "\n"-joined
    caption: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    facts: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    facts_problems: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
    # float32 little-endian, L2-normalised; deferred so listing rows does not read the vectors.
    embedding: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)

    def vector(self) -> np.ndarray:
        """The stored embedding as a float32 array."""
        return blob_to_vector(self.embedding)

    def disk_relpath(self) -> str:
        """The relative path to open (os.fsdecode form: exact bytes survive as surrogates)."""
        return disk_relpath(self.path, self.disk_path)

    @property
    def camera(self) -> str | None:
        """The camera as people say it ("Apple iPhone 15"), as PhotoFacts.camera builds it."""
        return camera_label(self.camera_make, self.camera_model)


def camera_label(make: str | None, model: str | None) -> str | None:
    """Make and model as people say it: "Apple iPhone 15", "Canon EOS R5" (not "Canon Canon
    EOS R5"), the make alone or the model alone when only one is known."""
    if not make or not model:
        return model or make or None
    brand = make.split()[0].casefold()
    return model if model.casefold().startswith(brand) else f"{make} {model}"


def disk_relpath(path: str, disk_path: bytes | None) -> str:
    """The relative path to open for a row's `path` and `disk_path` columns (see Photo)."""
    return path if disk_path is None else os.fsdecode(disk_path)


def disk_path_value(key: str, disk_relpath: str) -> bytes | None:
    """What `photos.disk_path` stores for a file found at `disk_relpath` under the key `key`."""
    return None if disk_relpath == key else os.fsencode(disk_relpath)


class Failure(Base):
    """A file (or folder) that could not be indexed, and why; retried when its size or mtime
    changes, and on every run if it could not be read at all (permissions)."""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)  # POSIX, NFC, relative to the photo root
    kind: Mapped[str] = mapped_column(String)  # "file" | "dir" | "link" (left unfollowed)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String)
    recorded_at: Mapped[float] = mapped_column(Float)


class ManifestRow(Base):
    """The single row (id 1) describing how the library's vectors were made."""

    __tablename__ = "manifest"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schema_version: Mapped[int] = mapped_column(Integer)  # db.schema.SCHEMA_VERSION
    # The checkpoint as given (a name or an absolute path), and its weights' fingerprint.
    model_id: Mapped[str] = mapped_column(String)
    fingerprint: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)  # values per stored embedding
    # koclip.preprocess.PREPROCESS_VERSION, and the FAISS index type (its file's name).
    preprocess_version: Mapped[str] = mapped_column(String)
    index_type: Mapped[str] = mapped_column(String)
    # relative to the library folder, or absolute, or an object-store URL ("s3://bucket/prefix")
    photo_root: Mapped[str] = mapped_column(String)
    # "fp32", "bf16", "int8" or several "+"-joined; added after schema 1 shipped (db.migrate adds the column).
    precision: Mapped[str] = mapped_column(String, default="fp32", server_default="fp32")
    # "auto" (the indexer switches the type by size), "chosen" (`reindex --index`: kept at any
    # size), or "" in a library made before it was recorded (see Manifest.automatic_index).
    index_choice: Mapped[str] = mapped_column(String, default="", server_default="")
    # The object store's endpoint of a URL root, as shown (no user info or query); "" for AWS
    # itself or a local root (schema 5).
    endpoint: Mapped[str] = mapped_column(String, default="", server_default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


def vector_to_blob(vector: np.ndarray) -> bytes:
    """Serialise one embedding for the `embedding` column."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    """Read one embedding back from the `embedding` column."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)


class SetAside(Base):
    """The journal of `duplicates --set-aside`: one row per photo moved (or being moved) out of
    the photo folder, holding its whole photo row so `--restore` brings it back as it was.

    state "moving": the photo row is still there, the file may be at either place or both
    (same inode); "aside": the file is at `dest` and its photo row is gone; "restoring": the
    file may be at either place. A writer finishes or undoes a half-done move under the lock.
    """

    __tablename__ = "set_aside"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the photo's id, kept on restore
    path: Mapped[str] = mapped_column(String, unique=True)
    disk_path: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # os.fsencode form; relative to the library folder when inside it (so the journal follows
    # a library that is moved or copied), else absolute.
    dest: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String)  # "moving" | "aside" | "restoring"
    set_at: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime]
    taken_at_source: Mapped[str] = mapped_column(String)
    indexed_at: Mapped[float] = mapped_column(Float)
    phash: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pthumb: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # b"" once the library's vectors were remade (index --rebuild, another model): a restore
    # then puts the file back without its old row, and the next `index` encodes it.
    embedding: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    # The photo's facts (schema 4), as in Photo.
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    place: Mapped[str | None] = mapped_column(String, nullable=True)
    place_path: Mapped[str | None] = mapped_column(String, nullable=True)
    camera_make: Mapped[str | None] = mapped_column(String, nullable=True)
    camera_model: Mapped[str | None] = mapped_column(String, nullable=True)
    lens: Mapped[str | None] = mapped_column(String, nullable=True)
    keywords: Mapped[str | None] = mapped_column(String, nullable=True)
    caption: Mapped[str | None] = mapped_column(String, nullable=True)
    facts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    facts_problems: Mapped[str | None] = mapped_column(String, nullable=True)


class KeptPhoto(Base):
    """Why a photo is kept: one row per photo set aside as an extra of a duplicate group, naming
    that group's keeper. While the extra is aside, no set-aside moves the keeper (as another
    group's extra); the row goes with the extra's journal row. Added after schema 3 without a
    version step: `Library.create` (every writer) creates the table, nothing else reads it."""

    __tablename__ = "set_aside_kept"

    extra_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # a `set_aside` row's id
    keeper_id: Mapped[int] = mapped_column(Integer, index=True)
    keeper_path: Mapped[str] = mapped_column(String)  # the keeper's library key
    kept_at: Mapped[float] = mapped_column(Float)


# The facts columns of a photo (schema 4): NULL in a row until its metadata is read.
FACT_COLUMNS = (
    "lat", "lon", "place", "place_path", "camera_make", "camera_model", "lens", "keywords",
    "caption", "facts", "facts_problems",
)  # fmt: skip
# The columns a SetAside row copies from (and gives back to) its Photo row.
PHOTO_COLUMNS = (
    "id", "path", "disk_path", "size", "mtime_ns", "content_hash", "width", "height",
    "taken_at", "taken_at_source", "indexed_at", "phash", "pthumb", "embedding", *FACT_COLUMNS,
)  # fmt: skip


T = TypeVar("T")


def chunks(items: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    """`items`, `n` at a time (the last chunk may be shorter): one statement's `IN (...)` list,
    or one batch of updates."""
    for start in range(0, len(items), n):
        yield items[start : start + n]
