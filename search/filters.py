"""Folder and date filters, and the photo lookups `similar` needs, as typed SQL over db.Photo."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

import db
from koclip.preprocess import nfc
from search.errors import QueryError


@dataclass(frozen=True)
class Filter:
    """Which photos a query may return: under a folder (relative to the photo root) and/or in a time range."""

    under: str | None = None  # POSIX, NFC, relative to the photo root; None or "" = everywhere
    after: datetime | None = None  # inclusive
    before: datetime | None = None  # exclusive

    @property
    def active(self) -> bool:
        """False when the filter lets every photo through."""
        return bool(self.under) or self.after is not None or self.before is not None

    def conditions(self) -> list[ColumnElement[bool]]:
        """SQL conditions on db.Photo; a folder is a range on the unique `path` index."""
        out: list[ColumnElement[bool]] = []
        if self.under:
            # Segment-aware prefix: "a/b/" <= path < "a/b0" ('0' follows '/'), so a/bc is out.
            out += [db.Photo.path >= self.under + "/", db.Photo.path < self.under + "0"]
        if self.after is not None:
            out.append(db.Photo.taken_at >= self.after)
        if self.before is not None:
            out.append(db.Photo.taken_at < self.before)
        return out


def relative_to_root(path: str | os.PathLike[str], photo_root: Path) -> str | None:
    """`path` as the library stores it (POSIX, NFC, relative to the root), or None if outside."""
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    root = Path(os.path.abspath(photo_root))
    for candidate in (absolute, absolute.resolve()):
        if candidate.is_relative_to(root):
            rel = PurePosixPath(*candidate.relative_to(root).parts).as_posix()
            return nfc("" if rel == "." else rel)
    return None


def folder_filter(under: str | os.PathLike[str], photo_root: Path) -> str:
    """Resolve --under: an existing folder (absolute or from the cwd), else a path from the root."""
    text = os.fspath(under)
    if os.path.isabs(text) or os.path.isdir(text):
        rel = relative_to_root(text, photo_root)
        if rel is None:
            raise QueryError(f"folder {text}: not inside the library's photo folder {photo_root}")
        return rel
    parts = [p for p in PurePosixPath(text.replace(os.sep, "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise QueryError(f"folder {text}: '..' is only allowed in paths that exist")
    return nfc("/".join(parts))


def filtered_ids(session: Session, flt: Filter) -> np.ndarray:
    """Sorted ids of the photos the filter lets through (ids only: reads the indexes, not the rows)."""
    rows = session.scalars(select(db.Photo.id).where(*flt.conditions()).order_by(db.Photo.id))
    return np.fromiter(rows, dtype=np.int64)


def photos_with_hash(session: Session, content_hash: str) -> list[db.Photo]:
    """Rows whose file has exactly these bytes (the query image itself and its duplicates)."""
    return list(session.scalars(select(db.Photo).where(db.Photo.content_hash == content_hash)))


def photo_at(session: Session, relpath: str) -> db.Photo | None:
    """The row of a path relative to the photo root, if indexed."""
    return session.scalars(select(db.Photo).where(db.Photo.path == relpath)).first()
