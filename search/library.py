"""Finding and opening a library for reading, checking its model, and describing it (`info`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

import db
from db import photos
from db.settings import library_excludes
from search.ann import RECALL
from search.errors import ModelMismatchError
from storage import ObjectPath


def root_of(library: db.Library) -> Path | ObjectPath:
    """The library's photo root: its folder, or its object store's URL (storage.ObjectPath:
    results of an object root carry their objects' URLs)."""
    url = library.root_url()
    return ObjectPath(url) if url else library.photo_root()


def find_library(given: str | os.PathLike[str] | None = None, start: Path | None = None) -> Path:
    """The library folder: `given` (a library folder or a photo root holding one), else the
    nearest `.koclip-search/` from `start` (default: the cwd) upward."""
    if given is not None:
        path = Path(given).expanduser().absolute()
        for candidate in (path, path / db.LIBRARY_DIRNAME):
            if db.is_library(candidate):
                return candidate
        raise db.LibraryNotFoundError(
            f"no library at {path} (run `koclip-search index PHOTO_DIR` first)"
        )
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        for candidate in (directory, directory / db.LIBRARY_DIRNAME):
            if candidate.name == db.LIBRARY_DIRNAME and db.is_library(candidate):
                return candidate
    raise db.LibraryNotFoundError(
        f"no {db.LIBRARY_DIRNAME}/ library in {here} or above; pass --library DIR "
        "or run `koclip-search index PHOTO_DIR` first"
    )


def open_read_only(directory: Path) -> tuple[db.Library, db.Manifest]:
    """Open a library read-only with its manifest; db.LibraryError if it is unusable or empty."""
    library = db.Library.open(directory, readonly=True)
    try:
        manifest = library.manifest()
    except db.LibraryError:
        library.close()
        raise
    if manifest is None:
        library.close()
        raise db.LibraryNotFoundError(f"the library at {directory} has nothing indexed yet")
    return library, manifest


def check_model(manifest: db.Manifest, model: str | None) -> None:
    """Refuse a `--model` other than the one the library's vectors were made with."""
    if model is None:
        return
    from koclip import checkpoint_fingerprint, is_local, model_id_for

    if model_id_for(model) == manifest.model_id:
        return
    same = False
    if is_local(model):  # a copy of the same weights elsewhere is fine; compare cheaply
        # An unreadable checkpoint raises CheckpointError: a model failure, not a mismatch.
        same = checkpoint_fingerprint(model) == manifest.fingerprint
    # A different hub name is refused without downloading its weights to compare.
    if not same:
        raise ModelMismatchError(
            f"the library was built with {manifest.model_id}, not {model}; "
            "search it with its own model or re-index with `koclip-search index --rebuild`"
        )


@dataclass(frozen=True)
class LibraryInfo:
    """What `koclip-search info` reports."""

    library: Path
    photo_root: Path | ObjectPath  # a folder, or an object store's root (its URL)
    photos: int
    failed: int
    model: str
    index_type: str
    indexed_vectors: int | None  # None: not counted, or no index saved yet
    size_bytes: int | None  # None: not measured
    last_indexed: datetime | None
    # The process holding the writer lock now ("watcher" or "indexer"), else None.
    writer: db.LockHolder | None = None
    precision: str = "fp32"  # the towers' arithmetic that made the vectors (db.Manifest)
    index_memory: int | None = None  # bytes the loaded index holds (None: not loaded)
    recall_target: str | None = None  # what the index type promises (search.ann.RECALL)
    retrain_at: int | None = None  # photos past which `index` retrains an IVF index
    # Whether `index` switches the type by size (False: chosen with `reindex --index`), and
    # the next switch up: (photos past which, type), None at the top or when chosen.
    index_automatic: bool = True
    switch_at: tuple[int, str] | None = None
    # Photos with a place, a camera, keywords, with facts that could not be read
    # ("unreadable"), and not read yet ("unread": indexed before facts were stored, until
    # the next `index`): db.photos.facts_counts.
    facts: dict[str, int] = field(default_factory=dict)
    # The library's exclude patterns (db.settings): what `index` and every watcher skip.
    excludes: tuple[str, ...] = ()
    # The object store's endpoint of a URL root as shown (no secrets); None: a folder, or
    # the store's default.
    endpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (paths as strings, the time as ISO 8601)."""
        writer = None
        if self.writer is not None:
            writer = {
                "kind": self.writer.kind,
                "pid": self.writer.pid,
                "since": _iso(self.writer.since),
                "last_commit": _iso(self.writer.last_commit),
            }
        return {
            "library": str(self.library),
            "photo_root": str(self.photo_root),
            "endpoint": self.endpoint,
            "photos": self.photos,
            "failed": self.failed,
            "model": self.model,
            "index_type": self.index_type,
            "precision": self.precision,
            "indexed_vectors": self.indexed_vectors,
            "size_bytes": self.size_bytes,
            "last_indexed": self.last_indexed.isoformat(timespec="seconds")
            if self.last_indexed
            else None,
            "writer": writer,
            "index_memory": self.index_memory,
            "recall_target": self.recall_target,
            "retrain_at": self.retrain_at,
            "index_automatic": self.index_automatic,
            "switch_at": None
            if self.switch_at is None
            else {"photos": self.switch_at[0], "index_type": self.switch_at[1]},
            "facts": dict(self.facts),
            "exclude": list(self.excludes),
        }


def _iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds).isoformat(timespec="seconds") if seconds else None


def describe_library(
    library: db.Library,
    *,
    indexed_vectors: int | None = None,
    disk: bool = True,
    index_memory: int | None = None,
    retrain_at: int | None = None,
) -> LibraryInfo:
    """Counts, model and index of an opened library from one read snapshot; `disk` adds its
    size on disk (a walk of the library folder)."""
    with library.session() as s, s.begin():
        manifest = library.manifest(s)
        if manifest is None:
            raise db.LibraryNotFoundError(
                f"the library at {library.directory} has nothing indexed yet"
            )
        count = photos.photo_count(s)
        failed = photos.failure_count(s)
        last = photos.last_indexed_at(s)
        facts = photos.facts_counts(s)
        excludes = library_excludes(s)
    holder, held = db.lock_holder(library.directory)
    # The writer's last commit counts too: deletions and moves leave no newer indexed_at.
    last_commit = holder.last_commit if holder else None
    last = max(filter(None, (last, manifest.updated_at, last_commit)), default=None)
    size = _size_on_disk(library) if disk else None
    return LibraryInfo(
        library=library.directory.absolute(),
        photo_root=root_of(library),
        endpoint=library.root_endpoint() if library.root_url() else None,
        photos=count,
        failed=failed,
        model=manifest.model_id,
        index_type=manifest.index_type,
        indexed_vectors=indexed_vectors,
        size_bytes=size,
        last_indexed=datetime.fromtimestamp(last) if last else None,
        writer=holder if held else None,
        precision=manifest.precision,
        index_memory=index_memory,
        retrain_at=retrain_at,
        recall_target=RECALL.get(manifest.index_type),
        index_automatic=manifest.automatic_index,
        switch_at=_next_switch(manifest.index_type) if manifest.automatic_index else None,
        facts=facts,
        excludes=excludes,
    )


def _next_switch(index_type: str) -> tuple[int, str] | None:
    """(photos past which, type) of an automatic type's next switch up, or None at the top."""
    from db import vectors

    ladder = vectors.AUTO_LADDER
    if index_type not in ladder or index_type == ladder[-1]:
        return None
    limit = {vectors.FLAT: vectors.FLAT_MAX, vectors.IVF_SQ8: vectors.SQ8_MAX}[index_type]
    return limit, vectors.auto_index_type(limit + 1)


def _size_on_disk(library: db.Library) -> int:
    """Bytes of the library's files; what an interrupted run left behind is not counted."""
    leftovers = set(library.leftovers())
    return sum(
        p.stat().st_size for p in library.directory.rglob("*") if p.is_file() and p not in leftovers
    )


def folder_counts(session: Session) -> list[tuple[str, int]]:
    """Every folder holding photos (relative to the photo root) and its photo count, subfolders
    included, sorted by folder."""
    counts: dict[str, int] = {}
    for path in photos.all_paths(session):
        for parent in PurePosixPath(path).parents:
            if str(parent) != ".":
                counts[str(parent)] = counts.get(str(parent), 0) + 1
    return sorted(counts.items())
