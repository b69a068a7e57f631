"""Where a library's photos are: a folder on this machine, or a URL in object storage.

The rows hold each photo's key relative to the root (POSIX, NFC). A folder root turns a key
into a path on disk; a URL root (`s3://bucket/prefix`, as `db.Library.root_url` gives it)
into the object's URL (`s3://bucket/prefix/2024/a.jpg`), what results carry where they carry
a path for a folder. Nothing here reads an object: that is `storage`'s, for the web's
originals and thumbnails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import db
from search.errors import QueryError
from search.filters import folder_filter, relative_to_root
from storage import ObjectPath


@dataclass(frozen=True)
class PhotoRoot:
    """A library's photo root: `path` (a folder) or `url` (object storage), exactly one."""

    path: Path | None = None
    url: str | None = None

    @classmethod
    def of(cls, library: db.Library) -> PhotoRoot:
        """The root of an opened library (its manifest says which kind)."""
        url = library.root_url()
        return cls(url=url) if url is not None else cls(path=library.photo_root())

    @classmethod
    def at(cls, root: Path | ObjectPath) -> PhotoRoot:
        """The root search.library.root_of gives: a folder, or a URL (storage.ObjectPath)."""
        return cls(url=str(root)) if isinstance(root, ObjectPath) else cls(path=Path(root))

    @property
    def is_url(self) -> bool:
        return self.url is not None

    def __str__(self) -> str:
        return self.url if self.url is not None else str(self.path)

    def locate(self, row: db.Photo) -> Path | ObjectPath:
        """Where the photo of a row is: its path on disk, or its object's URL."""
        if self.url is not None:
            return photo_url(self.url, row.disk_relpath())
        assert self.path is not None
        return self.path / row.disk_relpath()

    def key(self, text: str | os.PathLike[str]) -> str | None:
        """The library key `text` names (a path absolute or relative to a folder root; for a
        URL root the object's URL or its key), or None when it is outside the root."""
        if self.url is None:
            assert self.path is not None
            rel = relative_to_root(self.path / text, self.path)
            return rel or None
        return object_key(os.fspath(text), self.url)

    def folder(self, under: str | os.PathLike[str]) -> str:
        """--under as a key prefix ("" for the whole root)."""
        if self.url is None:
            assert self.path is not None
            return folder_filter(under, self.path)
        text = os.fspath(under)
        whole = text.strip("/. ") == "" or text.rstrip("/") == self.url.rstrip("/")
        key = "" if whole else object_key(text, self.url)
        if key is None:
            raise QueryError(f"folder {text}: not inside the library's photo root {self.url}")
        return key


def photo_url(root_url: str, key: str) -> ObjectPath:
    """The URL of the object under `root_url` whose key (relative to it) is `key`."""
    return ObjectPath(root_url) / key


def object_key(text: str, root_url: str) -> str | None:
    """The key (POSIX, NFC, relative to `root_url`) that `text` names: a URL under the root,
    or a key already relative to it; None when it is outside the root (another bucket or
    prefix, an absolute local path, or a `..` that leaves it)."""
    return relative_to_root(text, ObjectPath(root_url)) or None
