"""`reindex`: rebuild a library's FAISS index as another type from its stored embeddings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import db
from db.vectors import INDEX_TYPES, auto_index_type
from koclip.names import AUTO_INDEX
from search import ann


@dataclass(frozen=True)
class ReindexReport:
    """What `reindex` did."""

    previous_type: str
    index_type: str
    vectors: int
    size_bytes: int


def reindex(
    directory: Path,
    index_type: str = AUTO_INDEX,
    progress: Callable[[int, int], None] | None = None,
) -> ReindexReport:
    """Rebuild the index as `index_type` without re-encoding: "auto" picks the type by the
    library's size and lets `index` switch it as the library grows (db.INDEX_AUTO); a named
    type is kept at any size (db.INDEX_CHOSEN; `index` still retrains it as it grows).

    Takes the writer lock (db.LibraryLockedError if an indexer runs) and switches as
    `db.Library.switch_index` does, so a concurrent search always finds a complete index of
    the type its manifest names. `progress(added, total)` follows the build.
    """
    if index_type != AUTO_INDEX and index_type not in INDEX_TYPES:
        raise db.LibraryError(
            f"unknown index type {index_type!r}; choose auto, {', '.join(INDEX_TYPES)}"
        )
    with db.LibraryLock(directory), db.Library.create(directory) as library:
        manifest = library.manifest()
        if manifest is None:
            raise db.LibraryNotFoundError(f"the library at {directory} has nothing indexed yet")
        library.remove_leftovers()  # an interrupted reindex's file of another type, temp files
        automatic = index_type == AUTO_INDEX
        kind = auto_index_type(len(library.photo_ids())) if automatic else index_type
        index = library.switch_index(
            kind, automatic=automatic, progress=progress, before_switch=ann.tune
        )
        size = library.index_path(kind).stat().st_size
    return ReindexReport(manifest.index_type, kind, index.ntotal, size)
