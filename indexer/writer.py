"""Stage 4: write results into the library, one transaction per batch, then into FAISS.

Order of operations is what makes a kill -9 harmless: a batch's rows and embeddings commit
together; only then are its vectors added to the in-memory index, which is saved (atomically)
now and then and at the end. At the next start the saved file is reconciled with the rows.

Each save also checks that the index still fits the library (`db.vectors.due_rebuild`): an
automatic type is switched as the library crosses a size threshold, an IVF index is
retrained once the library has outgrown its lists. The rebuild reads the committed rows
(`db.Library.switch_index`: a training sample, then chunks), so it costs the index and the
sample in memory, not the library, and a crash during it leaves the saved index in use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import faiss
import numpy as np
from sqlalchemy.orm import Session

from db import (
    Failure,
    Library,
    Photo,
    blob_to_vector,
    disk_path_value,
    lexical,
    photos,
    vector_to_blob,
    write_errors,
)
from db import photo_writes as writes
from db import vectors as faiss_ops
from db.errors import LibraryError
from db.manifest import add_precision
from db.schema import FACT_COLUMNS
from indexer.load import Loaded, mtime_datetime
from indexer.plan import Plan, in_scope
from indexer.stored_facts import Facts, moved_words, words


@dataclass
class Counts:
    """Running totals for the summary."""

    new: int = 0
    updated: int = 0
    moved: int = 0
    deleted: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)


@dataclass(frozen=True)
class IndexRebuild:
    """An index being rebuilt because it no longer fits the library (progress and summary)."""

    previous: str  # the type before
    index_type: str  # the type being built (the same one when retraining)
    photos: int  # vectors the new index holds
    added: int | None = None  # vectors added so far; None while it trains on its sample
    done: bool = False

    @property
    def retrain(self) -> bool:
        """Same type, trained again for a grown library (not a switch)."""
        return self.previous == self.index_type

    def describe(self) -> str:
        """`flat -> ivf-sq8 for 250,000 photos` or `ivf-pq retrained for 4,200,000 photos`."""
        what = (
            f"{self.index_type} retrained"
            if self.retrain
            else f"{self.previous} -> {self.index_type}"
        )
        return f"{what} for {self.photos:,} photos"


RebuildCallback = Callable[[IndexRebuild], None]


def due_rebuild(library: Library, index: faiss.Index) -> IndexRebuild | None:
    """The rebuild the library's index needs now (a switch of its automatic type by size, or a
    retraining of a grown IVF index), or None. `index` must hold every committed photo."""
    manifest = library.manifest()
    if manifest is None:
        return None
    kind = faiss_ops.due_rebuild(manifest.index_type, manifest.automatic_index, index, index.ntotal)
    return None if kind is None else IndexRebuild(manifest.index_type, kind, index.ntotal)


def rebuild(
    library: Library, due: IndexRebuild, on_rebuild: RebuildCallback | None = None
) -> faiss.Index:
    """Carry out `due` (see `db.Library.switch_index`), reporting progress; hold the lock.
    The caller drops its own index first, so memory never holds both."""
    if on_rebuild:
        on_rebuild(due)

    def progress(added: int, total: int) -> None:
        on_rebuild(replace(due, added=added))

    manifest = library.manifest()
    if manifest is None:
        raise LibraryError(f"the library at {library.directory} has no manifest yet")
    index = library.switch_index(
        due.index_type,
        automatic=manifest.automatic_index,
        progress=progress if on_rebuild else None,
    )
    if on_rebuild:
        on_rebuild(replace(due, added=index.ntotal, done=True))
    return index


class Writer:
    """Applies loaded/encoded files to the database and the in-memory FAISS index."""

    def __init__(
        self,
        library: Library,
        index: faiss.Index,
        plan: Plan,
        *,
        save_interval: float = 30.0,
        save_share: float | None = None,
        on_rebuild: RebuildCallback | None = None,
        precision: str | None = None,
        facts: Facts | None = None,
    ) -> None:
        self.library = library
        # The encoder's precision, named in the manifest with the first vector it stores.
        self.precision = precision
        # A photo's facts become its columns and words here (places looked up on this thread).
        self.facts = facts if facts is not None else Facts()
        self.index = index
        self.plan = plan
        self.on_rebuild = on_rebuild
        self.rebuilds: list[IndexRebuild] = []  # what this pass rebuilt, in order
        self.counts = Counts(unchanged=plan.unchanged, failures=list(plan.still_failed))
        self.save_interval = save_interval
        # A watcher saves as often as saving takes at most this share of the time, instead
        # of every `save_interval` seconds: a small library's new photos show at once, a
        # large one's index file is not rewritten every batch.
        self.save_share = save_share
        self._save_seconds = 0.0
        self.batches_committed = 0
        self._dirty = False
        self._needs_rebuild = False
        self._last_save = time.monotonic()

    def write_batch(self, items: list[Loaded]) -> list[Loaded]:
        """Commit one batch; returns items that turned out to need encoding after all.

        A decoded item carries its `embedding`. The whole batch commits or, on any error
        (disk full, ...), none of it does and LibraryWriteError is raised.
        """
        batch = _Batch()
        retry: list[Loaded] = []
        with write_errors(self.library.directory), self.library.session() as s, s.begin():
            for item in items:
                if not self._apply(s, item, item.embedding, batch):
                    retry.append(item)
            batch.execute(s)
            relabelled = bool(batch.added and self.precision) and add_precision(s, self.precision)
        if relabelled:
            self.library.write_manifest_json()
        added, removed, counts, new_hashes = batch.added, batch.removed, batch.counts, batch.hashes
        # Committed: now the in-memory index and the totals may follow.
        self._merge(counts)
        self.plan.known_hashes.update(new_hashes)
        self._apply_to_index(added, removed)
        self.batches_committed += 1
        interval = self.save_interval
        if self.save_share is not None:
            interval = self._save_seconds / self.save_share
        if time.monotonic() - self._last_save >= interval:
            self.save()
        return retry

    def finish(self) -> Counts:
        """Drop what is gone, record folder failures, save the index; returns the totals."""
        plan = self.plan
        with write_errors(self.library.directory), self.library.session() as s, s.begin():
            removed = writes.delete_photos_at(s, plan.gone)
            writes.clear_failures(s, plan.gone_failures, files_only=True)
            for where in in_scope(Failure.path, plan.scope):
                writes.clear_folder_failures(s, where)
            for d in plan.unreadable_dirs:
                writes.record_failure(s, d.relpath, "dir", 0, 0, d.reason)
            for link in plan.outside_links:
                writes.record_failure(s, link.relpath, "link", 0, 0, link.reason)
            for file, reason in plan.name_clashes:
                writes.record_failure(s, file.relpath, "file", file.size, file.mtime_ns, reason)
            # Same file, its on-disk name now kept (no re-encoding).
            writes.update_photos(
                s,
                [
                    {"id": pid, "disk_path": disk_path_value(key, disk)}
                    for pid, key, disk in plan.renamed
                ],
            )
        self.counts.deleted += len(removed)
        self.counts.failures += [(d.relpath + "/", d.reason) for d in plan.unreadable_dirs]
        self.counts.failures += [
            (link.relpath + ("/" if link.is_dir else ""), link.reason)
            for link in plan.outside_links
        ]
        self.counts.failures += [(f.relpath, r) for f, r in plan.name_clashes]
        plan.gone.clear()
        self._apply_to_index([], removed)
        if self._needs_rebuild:
            self.index = self.library.build_index()
            self._needs_rebuild = False
            self._dirty = True
        if self._dirty:
            self.save()
        return self.counts

    def save(self) -> None:
        """Atomically write the in-memory index (a reader then sees every committed batch),
        then rebuild it if it no longer fits the library's size."""
        started = time.monotonic()
        if not self._needs_rebuild:
            self.library.save_index(self.index)
        self._dirty = False
        self._last_save = time.monotonic()
        self._save_seconds = self._last_save - started
        if not self._needs_rebuild:
            self.fit_index()

    def fit_index(self) -> None:
        """Switch or retrain the index if `due_rebuild` says so (the file is saved first)."""
        due = due_rebuild(self.library, self.index)
        if due is None:
            return
        self.index = None  # the saved file holds it; free it before building the new one
        self.index = rebuild(self.library, due, self.on_rebuild)
        self.rebuilds.append(due)
        self._last_save = time.monotonic()

    # -- one file ---------------------------------------------------------------------------

    def _apply(self, s: Session, item: Loaded, vec: np.ndarray | None, batch: _Batch) -> bool:
        """Apply one file (its new row goes into `batch`); False: decode it after all."""
        counts, removed = batch.counts, batch.removed
        relpath = item.task.file.relpath
        disk_path = disk_path_value(relpath, item.task.file.on_disk)
        etag = item.task.file.etag or None  # an object's ETag; NULL for a file
        known = item.task.known
        if item.touched:  # same bytes, new mtime (copied back, touched): refresh the stat only
            values = {"size": item.size, "mtime_ns": item.mtime_ns, "disk_path": disk_path}
            values["etag"] = etag
            row = s.get(Photo, known.photo_id)
            if row is not None and row.taken_at_source == "mtime":
                values["taken_at"] = mtime_datetime(item.mtime_ns)
            writes.update_photo(s, known.photo_id, **values)
            counts.unchanged += 1
            return True
        if item.reuse:
            source = self._reuse_source(s, item.content_hash)
            if source is None:
                return False  # its twin was deleted meanwhile: decode and encode after all
        # New content at this path: the old row (or failure) goes; a new id comes.
        if known is not None and known.photo_id is not None:
            writes.delete_photo(s, known.photo_id)
            removed.append(known.photo_id)
        if item.error is not None:  # recorded over any older failure of the path
            writes.record_failure(s, relpath, "file", item.size, item.mtime_ns, item.error)
            counts.failures.append((relpath, item.error))
            return True
        batch.cleared.append(relpath)  # an older failure of the path goes
        was_known = known is not None
        if item.reuse and source.path in self.plan.gone:  # a move: same row, same id, new path
            self.plan.gone.discard(source.path)
            values = {"path": relpath, "disk_path": disk_path}
            values |= {"size": item.size, "mtime_ns": item.mtime_ns, "etag": etag}
            if source.taken_at_source == "mtime":
                values["taken_at"] = mtime_datetime(item.mtime_ns)
            writes.update_photo(s, source.id, **values)  # its facts stay
            stored = lexical.stored(s, [source.id]).get(source.id)
            lexical.put(s, [moved_words(stored, source.id, relpath)])
            if was_known:
                counts.updated += 1
            else:
                counts.moved += 1
            return True
        if item.reuse:  # an exact duplicate of an indexed photo: copy its embedding
            vec = blob_to_vector(source.embedding)
            meta = (source.width, source.height, source.taken_at, source.taken_at_source)
            if source.taken_at_source == "mtime":
                meta = (*meta[:2], mtime_datetime(item.mtime_ns), "mtime")
            phash, pthumb = source.phash, source.pthumb
            # The same bytes say the same things: its facts and words are the twin's.
            facts = {c: getattr(source, c) for c in FACT_COLUMNS}
            stored = lexical.stored(s, [source.id]).get(source.id)
            batch.words.append(lambda pid, r=relpath, w=stored: moved_words(w, pid, r))
        else:
            meta = (item.width, item.height, item.taken_at, item.taken_at_source)
            phash, pthumb = item.phash, item.pthumb
            facts, place_words = self.facts.columns(item.facts)
            batch.words.append(lambda pid, r=relpath, c=facts, p=place_words: words(pid, r, c, p))
        batch.rows.append(
            {
                "path": relpath,
                "disk_path": disk_path,
                "etag": etag,
                "size": item.size,
                "mtime_ns": item.mtime_ns,
                "content_hash": item.content_hash,
                "width": meta[0],
                "height": meta[1],
                "taken_at": meta[2],
                "taken_at_source": meta[3],
                "indexed_at": time.time(),
                "embedding": vector_to_blob(vec),
                "phash": phash,
                "pthumb": pthumb,
                **facts,
            }
        )
        batch.vectors.append(vec)
        batch.hashes.add(item.content_hash)
        if was_known:
            counts.updated += 1
        else:
            counts.new += 1
        return True

    def _reuse_source(self, s: Session, content_hash: str):
        """The row to take an embedding from: a gone one (a move) first, else any (a duplicate)."""
        rows = photos.reuse_sources(s, content_hash)
        for row in rows:
            if row.path in self.plan.gone:
                return row
        return rows[0] if rows else None

    # -- index and totals -------------------------------------------------------------------

    def _apply_to_index(self, added: list[tuple[int, np.ndarray]], removed: list[int]) -> None:
        if removed and not faiss_ops.remove(self.index, removed):
            self._needs_rebuild = True  # this index type cannot remove: rebuild at the end
        if added and not self.index.is_trained:
            self._needs_rebuild = True  # an IVF made while the library was empty: train at the end
        elif added:
            ids = np.fromiter((i for i, _ in added), dtype=np.int64, count=len(added))
            faiss_ops.add(self.index, ids, np.stack([v for _, v in added]))
        if added or removed:
            self._dirty = True

    def _merge(self, c: Counts) -> None:
        t = self.counts
        t.new += c.new
        t.updated += c.updated
        t.moved += c.moved
        t.unchanged += c.unchanged
        t.failures += c.failures


@dataclass
class _Batch:
    """One batch's changes: deletions run at once (in file order); the new rows and the
    clearing of old failures are written together at the end, one statement each."""

    counts: Counts = field(default_factory=Counts)
    removed: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # new photo rows, in file order
    vectors: list[np.ndarray] = field(default_factory=list)  # their embeddings
    cleared: list[str] = field(default_factory=list)  # paths whose failure rows go
    hashes: set[str] = field(default_factory=set)
    added: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (new id, vector)
    # The new rows' words, each made once its row has an id.
    words: list[Callable[[int], lexical.PhotoWords]] = field(default_factory=list)

    def execute(self, s: Session) -> None:
        writes.clear_failures(s, self.cleared)
        ids = writes.insert_photos(s, self.rows)  # one executemany
        self.added = list(zip(ids, self.vectors, strict=True))
        lexical.put(s, [make(pid) for pid, make in zip(ids, self.words, strict=True)])
