"""Folder, date, place and camera filters, and the photo lookups `similar` needs, as typed SQL over db.Photo."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

from sqlalchemy import ColumnElement

import db
from db import photos
from search.errors import QueryError


@dataclass(frozen=True)
class Filter:
    """Which photos a query may return: under a folder (relative to the photo root), in a time
    range, at any of some places, taken with any of some cameras (all that are set apply)."""

    under: str | None = None  # POSIX, NFC, relative to the photo root; None or "" = everywhere
    after: datetime | None = None  # inclusive
    before: datetime | None = None  # exclusive
    # Place labels ("제주특별자치도 서귀포시"): the photo's place is one or lies inside one.
    places: tuple[str, ...] = ()
    cameras: tuple[tuple[str, str], ...] = ()  # (make, model) pairs

    @property
    def active(self) -> bool:
        """False when the filter lets every photo through."""
        return (
            bool(self.under)
            or self.after is not None
            or self.before is not None
            or bool(self.places)
            or bool(self.cameras)
        )

    @property
    def empty(self) -> bool:
        """True when the time range holds no instant (an understood date outside --after/--before):
        nothing passes."""
        return self.after is not None and self.before is not None and self.after >= self.before

    def narrowed(
        self,
        after: datetime | None = None,
        before: datetime | None = None,
        places: Sequence[str] = (),
        cameras: Sequence[tuple[str, str]] = (),
    ) -> Filter:
        """This filter and more: the time ranges intersected (possibly to nothing: `empty`),
        the places and cameras set (each a choice of several)."""
        lo = max((d for d in (self.after, after) if d is not None), default=None)
        hi = min((d for d in (self.before, before) if d is not None), default=None)
        return replace(
            self,
            after=lo,
            before=hi,
            places=tuple(places) or self.places,
            cameras=tuple(cameras) or self.cameras,
        )

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
        if self.places:
            out.append(photos.place_condition(self.places))
        if self.cameras:
            out.append(photos.camera_condition(self.cameras))
        return out


def relative_to_root(path: str | os.PathLike[str], photo_root: Path) -> str | None:
    """`path` as the library stores it (POSIX, NFC, relative to the root), or None if outside.
    Under an object store's root (a `storage.ObjectPath`, a str) `path` is its URL or a key
    relative to it, never a local file (an absolute local path is outside)."""
    if isinstance(photo_root, str):
        text = os.fspath(path)
        base = photo_root.rstrip("/") + "/"
        if text.startswith(base):
            text = text[len(base) :]
        elif text.startswith("/"):
            return None
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if "://" in text or ".." in parts:
            return None
        return db.path_key("/".join(parts))
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    root = Path(os.path.abspath(photo_root))
    for candidate in (absolute, absolute.resolve()):
        if candidate.is_relative_to(root):
            rel = PurePosixPath(*candidate.relative_to(root).parts).as_posix()
            return db.path_key("" if rel == "." else rel)
    return None


def folder_filter(under: str | os.PathLike[str], photo_root: Path) -> str:
    """Resolve --under: an existing folder (absolute or from the cwd), else a path from the root."""
    text = os.fspath(under)
    found = find_on_disk(Path(text))
    if os.path.isabs(text) or found.is_dir():
        rel = relative_to_root(found, photo_root)
        if rel is None:
            raise QueryError(f"folder {text}: not inside the library's photo folder {photo_root}")
        return rel
    parts = [p for p in PurePosixPath(text.replace(os.sep, "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise QueryError(f"folder {text}: '..' is only allowed in paths that exist")
    return db.path_key("/".join(parts))


def find_on_disk(path: Path) -> Path:
    """`path` itself if it exists, else the one file whose name differs from it only by Unicode
    normalisation (a query typed in NFC naming an NFD file); `path` unchanged when there is no
    such file or several."""
    if os.path.lexists(path):
        return path
    parent, name = path.parent, path.name
    if parent != path and not os.path.lexists(parent):
        parent = find_on_disk(parent)
    want = db.path_key(name)
    try:
        matches = [e for e in os.listdir(parent) if db.path_key(e) == want]
    except (OSError, ValueError):  # not a folder, unreadable, an embedded NUL
        return path
    return parent / matches[0] if len(matches) == 1 else path
