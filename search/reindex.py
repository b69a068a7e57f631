"""`reindex`: rebuild a library's FAISS index as another type from its stored embeddings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import db
from db.vectors import INDEX_TYPES
from search import ann


@dataclass(frozen=True)
class ReindexReport:
    """What `reindex` did."""

    previous_type: str
    index_type: str
    vectors: int
    size_bytes: int


def reindex(directory: Path, index_type: str = ann.AUTO) -> ReindexReport:
    """Rebuild the index as `index_type` ("auto": by collection size) without re-encoding.

    Takes the writer lock (db.LibraryLockedError if an indexer runs), writes the new file
    atomically, then switches the manifest, then removes the old file, so a concurrent
    search always finds a complete index of the type its manifest names.
    """
    if index_type != ann.AUTO and index_type not in INDEX_TYPES:
        raise db.LibraryError(
            f"unknown index type {index_type!r}; choose auto, {', '.join(INDEX_TYPES)}"
        )
    with db.LibraryLock(directory), db.Library.create(directory) as library:
        manifest = library.manifest()
        if manifest is None:
            raise db.LibraryNotFoundError(f"the library at {directory} has nothing indexed yet")
        library.remove_leftovers()  # an interrupted reindex's file of another type, temp files
        kind = index_type
        if kind == ann.AUTO:
            kind = ann.auto_index_type(len(library.photo_ids()))
        index = library.build_index(kind)
        ann.tune(index)
        library.save_index(index, kind)
        if kind != manifest.index_type:
            with db.write_errors(library.directory), library.session() as s, s.begin():
                library.set_manifest(s, dataclasses.replace(manifest, index_type=kind))
            library.write_manifest_json()
            library.index_path(manifest.index_type).unlink(missing_ok=True)
        size = library.index_path(kind).stat().st_size
    return ReindexReport(manifest.index_type, kind, index.ntotal, size)
