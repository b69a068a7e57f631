"""SQLAlchemy 2.0 schema of a library: photos (with their embeddings), failures, manifest."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import Float, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump when tables or column meanings change; an older library is refused (index --rebuild).
SCHEMA_VERSION = 1


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
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)  # POSIX, NFC, relative to the photo root
    size: Mapped[int] = mapped_column(Integer)  # bytes
    mtime_ns: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String)  # blake2b-128 hex of the whole file
    width: Mapped[int] = mapped_column(Integer)  # pixels, after EXIF orientation
    height: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime]  # naive local time: EXIF DateTimeOriginal, else the file's mtime
    taken_at_source: Mapped[str] = mapped_column(String)  # "exif" | "mtime"
    indexed_at: Mapped[float] = mapped_column(Float)  # unix seconds
    # float32 little-endian, L2-normalised; deferred so listing rows does not read the vectors.
    embedding: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)

    def vector(self) -> np.ndarray:
        """The stored embedding as a float32 array."""
        return blob_to_vector(self.embedding)


class Failure(Base):
    """A file (or folder) that could not be indexed, and why; retried when its size or mtime changes."""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)  # POSIX, NFC, relative to the photo root
    kind: Mapped[str] = mapped_column(String)  # "file" | "dir"
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String)
    recorded_at: Mapped[float] = mapped_column(Float)


class ManifestRow(Base):
    """The single row (id 1) describing how the library's vectors were made."""

    __tablename__ = "manifest"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schema_version: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String)
    fingerprint: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    preprocess_version: Mapped[str] = mapped_column(String)
    index_type: Mapped[str] = mapped_column(String)
    photo_root: Mapped[str] = mapped_column(String)  # relative to the library folder, or absolute
    # "fp32", "int8" or "fp32+int8"; added after schema 1 shipped (db.library adds the column).
    precision: Mapped[str] = mapped_column(String, default="fp32", server_default="fp32")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


def vector_to_blob(vector: np.ndarray) -> bytes:
    """Serialise one embedding for the `embedding` column."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    """Read one embedding back from the `embedding` column."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)
