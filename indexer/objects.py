"""Photo roots in object storage (`index s3://bucket/prefix`): discovery from the listing and
the load stage's reader. Change detection needs no read (indexer.plan compares size,
LastModified and ETag); an object is read once, when it is new or changed, and its content
hash then tells a moved object (its stored vector is reused) from a new one. Links, set-aside
and mounts do not apply to object roots.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from db import IMAGE_SUFFIXES
from indexer.discover import FoundFile, is_excluded
from indexer.load import Reader
from koclip.names import MAX_PHOTO_BYTES
from storage import ObjectEntry, ObjectRoot


def discover_objects(root: ObjectRoot, *, exclude: Sequence[str] = ()) -> Iterator[FoundFile]:
    """The image objects under the root, as found files: `path` is the key relative to the
    root as the store spells it, `etag` the listed ETag."""
    for entry in root.list():
        name = entry.relpath.rsplit("/", 1)[-1]
        if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
            continue
        if is_excluded(entry.relpath, exclude):
            continue
        yield FoundFile(
            entry.relpath, entry.on_store, entry.size, entry.mtime_ns, entry.key, etag=entry.etag
        )


def object_reader(root: ObjectRoot, max_bytes: int = MAX_PHOTO_BYTES) -> Reader:
    """Reads a found object's bytes: at most `max_bytes` (refused before the download), and
    only the object that was listed (its ETag and size)."""

    def read(file: FoundFile) -> bytes:
        expect = ObjectEntry(file.relpath, file.size, file.mtime_ns, file.etag, file.disk_relpath)
        return root.read(file.relpath, max_bytes=max_bytes, expect=expect)

    return read
