"""The orchestrator: discover -> plan -> load/preprocess -> encode -> write.

Only here do the stages meet. Planning and writing run on the calling thread (the driver);
an executor (indexer.executor) decides where loading and encoding run: a thread pool of this
process ahead of the encoder (the default), or Ray workers (`IndexOptions.ray`). Either way
the files in flight are bounded, so memory stays flat whatever the collection size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import (
    Library,
    LibraryError,
    LibraryLock,
    LibraryNotFoundError,
    LibraryWriteError,
    default_library_dir,
    photos,
)
from db import rebuild as staging_rebuild
from db.engine import DB_NAME
from db.lock import LOCK_NAME
from db.settings import library_excludes, merge_excludes, store_excludes
from indexer.discover import discover
from indexer.executor import Executor, Feed, Job, LocalExecutor, pil_bomb_check_off
from indexer.objects import discover_objects, object_reader
from indexer.phash import fill_phashes
from indexer.plan import Plan, load_known, load_known_under, make_plan
from indexer.ray_executor import RayExecutor, RayOptions, require_ray
from indexer.scope import as_relpath, discover_paths, scope_of
from indexer.setup import DEFAULT_MODEL, open_for_indexing, prepare
from indexer.stored_facts import Facts, fill_facts
from indexer.summary import Summary
from indexer.writer import IndexRebuild, RebuildCallback, Writer, due_rebuild, rebuild
from koclip import checkpoint_fingerprint
from koclip.encoder import Encoder
from koclip.names import MAX_PIXELS, PRECISIONS
from storage import DEFAULT_WORKERS, ObjectRoot, Retry, is_url, open_root

ProgressCallback = Callable[[int, int], None]  # (files done, files to read)
# Makes the executor of a session from its loaded encoder and photo root (a folder, or an
# object store's root; default: from the options, see `make_executor`); a benchmark passes
# one with a stand-in encoder.
ExecutorFactory = Callable[["Encoder", "Path | ObjectRoot", "IndexOptions"], Executor]


@dataclass(frozen=True)
class IndexOptions:
    """Knobs of `index_photos` (the CLI flags)."""

    library: Path | None = None  # default: PHOTO_DIR/.koclip-search (required for a URL root)
    model: str | None = None  # default: the library's model, else koclip-base
    batch_size: int = 32
    workers: int | None = None  # default: one per CPU
    # Patterns to add to the library's excludes (db.settings: kept for every later run and
    # watcher), and patterns to take out of them; a session runs with the result.
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    max_megapixels: float = MAX_PIXELS / 1e6
    rebuild: bool = False
    # Follow symlinks that lead out of the photo folder (default: record them as failures
    # and leave them; see indexer.discover). The web never serves files outside the folder.
    follow_links: bool = False
    save_interval: float = 30.0  # seconds between index saves during a run
    # "auto" (bf16 where the CPU has it, else fp32), "fp32", "bf16" or "int8"
    # (koclip.fast.precision); None: $KOCLIP_PRECISION, else auto
    precision: str | None = None
    # Called with the number of batches committed so far, after each commit (before the
    # FAISS file catches up): a place to watch a run, or to stop it there.
    on_batch_committed: Callable[[int], None] | None = None
    # Called while the index is rebuilt because the library outgrew it (a switch of its
    # automatic type, or a retraining): once before, during the adding, once when done.
    on_index_rebuild: RebuildCallback | None = None
    # A full pass that finds none of the library's photos (a card or disk not mounted: an
    # empty folder in its place) removes them from the library only when this is set.
    allow_empty_root: bool = False
    # Read and encode on a Ray cluster instead of this process (indexer.ray_executor).
    ray: RayOptions | None = None
    # Read each new photo's facts (date, place, camera, keywords: indexer.facts) in this
    # process's load stage; False only for a benchmark's baseline (bench/index.py): its
    # photos are then stored as not read yet, and the next run with facts reads them.
    facts: bool = True
    # Called with (photos done, photos to read) while a library indexed before facts were
    # stored gets them (metadata only, after the pass): a place for a progress bar.
    on_facts_backfill: Callable[[int, int], None] | None = None
    # An object-store root's endpoint (e.g. MinIO's URL); default: $AWS_ENDPOINT_URL_S3 /
    # $AWS_ENDPOINT_URL as boto reads them, else the one the library was indexed through.
    endpoint_url: str | None = None
    # How often and how patiently an object-store request is tried (default: storage.Retry()).
    storage_retry: Retry | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_megapixels) and self.max_megapixels > 0):
            raise ValueError(f"max_megapixels must be a positive number, not {self.max_megapixels}")
        if not (math.isfinite(self.save_interval) and self.save_interval >= 0):
            raise ValueError(f"save_interval must be a number >= 0, not {self.save_interval}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")


class PhotosGoneError(LibraryError):
    """A full `index` found none of the library's photos in the photo folder: refused, since
    an unmounted disk looks just like that (`--allow-empty-root` asks for it)."""

    http_status = 409
    code = "photos_gone"


class UrlRootError(LibraryError):
    """A photo root at a URL cannot be indexed as asked (no --library)."""

    code = "bad_root"


class UnknownExcludeError(LibraryError):
    """`include` names a pattern that is not one of the library's excludes (a typo would
    otherwise go unnoticed); nothing was changed."""

    http_status = 400
    code = "unknown_exclude"


def index_photos(
    photo_dir: Path | str,
    options: IndexOptions = IndexOptions(),
    progress: ProgressCallback | None = None,
    encoder: Encoder | None = None,
    make_executor: ExecutorFactory | None = None,
) -> Summary:
    """Bring the library of `photo_dir` (a folder, or an object store's URL such as
    "s3://bucket/prefix": storage) up to date; raises LibraryError (and koclip errors,
    storage errors) if it cannot run.

    `encoder` (a loaded vision tower) replaces `options.model` when a caller already holds one.
    """
    start = time.perf_counter()
    with IndexSession(photo_dir, options, encoder=encoder, make_executor=make_executor) as session:
        summary = session.run(progress=progress, refuse_all_gone=not options.allow_empty_root)
    return dataclasses.replace(summary, seconds=time.perf_counter() - start)


class IndexSession:
    """The writer's side of a library, held open: its lock, database, FAISS index and model.

    `run()` is one incremental pass: of the whole tree, or only of some changed paths (a
    watcher keeps one session for its whole life and runs a pass per burst of changes).
    Raises LibraryError (and koclip errors) if the library cannot be opened for writing.
    """

    def __init__(
        self,
        photo_dir: Path | str,
        options: IndexOptions = IndexOptions(),
        *,
        encoder: Encoder | None = None,
        kind: str = "indexer",
        save_share: float | None = None,
        make_executor: ExecutorFactory | None = None,
    ) -> None:
        if options.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        # An object store's root (s3://bucket/prefix), else a folder.
        self.object_root: ObjectRoot | None = None
        if is_url(photo_dir):
            self.object_root = _object_root(str(photo_dir), options)
            self.photo_root = Path()  # no folder: every use below asks `object_root` first
            self.where = self.object_root.display
        else:
            self.photo_root = Path(photo_dir).expanduser().resolve()
            if not self.photo_root.is_dir():
                raise LibraryError(f"{photo_dir} is not a folder")
            self.where = str(self.photo_root)
        if options.ray is not None:
            require_ray()  # before the lock and the model: the install line comes at once
        self.options = options
        self.save_share = save_share  # see Writer: a watcher saves by cost, not by the clock
        # Places are looked up for every pass; their tables load (on a background thread) when
        # the first photo with a GPS position comes, so a library without any pays nothing.
        self.facts = Facts()
        library_dir = Path(options.library).expanduser().resolve() if options.library else None
        self.library_dir = library_dir or default_library_dir(self.photo_root)
        self._stack = contextlib.ExitStack()
        before = _listing(self.library_dir)  # before the lock, which makes the folder
        try:
            self.lock = self._stack.enter_context(
                _lock(self.library_dir, default=options.library is None, kind=kind)
            )
            self._stack.enter_context(_undone_if_nothing_indexed(self.library_dir, before))
            self.library = self._stack.enter_context(
                open_for_indexing(self.library_dir, rebuild=options.rebuild)
            )
            # --rebuild over a library with photos: built aside, swapped in when complete
            # (db.rebuild), so its old vectors stay searchable until then.
            self._rebuild_into: Library | None = None
            prepared = False
            if options.rebuild and self.library.has_rows():
                # A staging library that never got its model (a wrong --model) is not kept.
                self._stack.callback(lambda: prepared or staging_rebuild.discard(self.library_dir))
                self._rebuild_into, self.library = (
                    self.library,
                    self._stack.enter_context(staging_rebuild.open_staging(self.library)),
                )
            self.encoder = self._prepare(options, encoder)
            prepared = True
            self.options = options = self._remember_excludes(options)
            # Repair what the database can rebuild: rows with a damaged vector are read again as
            # new files, the mirror and the index file follow the row, leftovers go.
            self.library.drop_damaged_embeddings(self.encoder.dim)
            self.library.remove_leftovers()
            self.library.write_manifest_json()
            self._index, _ = self.library.reconcile_index()
            # A library that outgrew its index before this run (or before the type switched
            # by itself) gets the index it should have now, before anything is added to it.
            self._rebuilt: list[IndexRebuild] = []
            due = due_rebuild(self.library, self._index)
            if due is not None:
                self._index = None
                self._index = rebuild(self.library, due, options.on_index_rebuild)
                self._rebuilt.append(due)
            self.executor = (make_executor or default_executor)(
                self.encoder, self.object_root or self.photo_root, options
            )
            self._stack.callback(self.executor.close)
        except BaseException:
            # The exception reaches the stack's managers: a failed first run is undone.
            self._stack.__exit__(*sys.exc_info())
            raise
        self._hashes: set[str] | None = None  # stored content hashes, kept between passes
        self._stale = False

    def _remember_excludes(self, options: IndexOptions) -> IndexOptions:
        """The options with the library's excludes as this run applies them: the stored ones,
        `options.exclude` added, `options.include` taken out (stored when they changed, in
        the library itself, not the staging one of a rebuild)."""
        home = self._rebuild_into or self.library
        with home.session() as s, s.begin():
            stored = library_excludes(s)
            merged, unknown = merge_excludes(stored, options.exclude, options.include)
            if unknown:
                have = ", ".join(stored) if stored else "none"
                raise UnknownExcludeError(
                    f"{', '.join(unknown)}: not among the library's excludes ({have}); "
                    "nothing was changed"
                )
            if merged != stored:
                store_excludes(s, merged)
        return dataclasses.replace(options, exclude=merged, include=())

    def _prepare(self, options: IndexOptions, encoder: Encoder | None) -> Encoder:
        """The vision tower, and the manifest written for it (setup.prepare)."""
        model, rebuild = options.model, options.rebuild
        if self._rebuild_into is not None:
            # The staging library: resumed when it holds the same model's vectors (a rebuild
            # interrupted earlier), else started afresh; the model defaults to the library's.
            main = self._rebuild_into.manifest(check=False)
            model = model or (main.model_id if main else None)
            staged = self.library.manifest(check=False)
            rebuild = staged is None or (
                (encoder.fingerprint if encoder else checkpoint_fingerprint(model or DEFAULT_MODEL))
                != staged.fingerprint
            )
        root = self.object_root
        return prepare(
            self.library,
            root.url if root else self.photo_root,
            model,
            endpoint=(root.endpoint_display or "") if root else "",
            batch_size=options.batch_size,
            rebuild=rebuild,
            encoder=encoder,
            precision=options.precision,
        )

    def _finish_rebuild(self, refuse_all_gone: bool) -> None:
        """The staging library complete: its rows replace the library's (db.rebuild.apply)."""
        target, staging = self._rebuild_into, self.library
        assert target is not None
        with staging.session() as s, s.begin():
            staged = photos.photo_count(s)
        if refuse_all_gone and not staged and target.has_rows():
            raise PhotosGoneError(
                f"{self.where} has none of the library's photos (a card or disk not "
                "mounted?); the library was not rebuilt and is unchanged. If they are gone for "
                "good, run again with --allow-empty-root"
            )
        staging_rebuild.apply(target, staging)
        self.library, self._rebuild_into = target, None
        self.lock.note_commit()

    def run(
        self,
        paths: Collection[str] | None = None,
        progress: ProgressCallback | None = None,
        *,
        refuse_all_gone: bool = False,
    ) -> Summary:
        """One incremental pass over the tree, or over `paths` (relative to the photo root,
        files or folders, os-native) only: their new, changed and gone photos.

        `refuse_all_gone`: a full pass that finds not one image file while the library holds
        photos raises PhotosGoneError before anything is changed (an unmounted card)."""
        start = time.perf_counter()
        if self._stale:
            # The last pass stopped half-way (an error, Ctrl-C): the in-memory index may
            # disagree with the committed rows, so it is made from them again.
            self._index, _ = self.library.reconcile_index()
            self._stale = False
        scope = None if paths is None else scope_of(paths)
        with self.library.session() as s, s.begin():
            if scope is None or self._hashes is None:
                known, self._hashes = load_known(s)
            if scope is not None:
                known = load_known_under(s, [as_relpath(p) for p in scope])
        skip = [self.library_dir]
        if self.object_root is not None:
            if scope is not None:
                raise ValueError("an object-store root is indexed by full passes only")
            found = discover_objects(self.object_root, exclude=self.options.exclude)
        elif scope is None:
            found = discover(
                self.photo_root,
                exclude=self.options.exclude,
                skip=skip,
                follow_links=self.options.follow_links,
            )
        else:
            found = discover_paths(
                self.photo_root,
                scope,
                exclude=self.options.exclude,
                skip=skip,
                follow_links=self.options.follow_links,
            )
        plan_scope = None if scope is None else [as_relpath(p) for p in scope]
        plan = make_plan(found, known, self._hashes, scope=plan_scope)
        if (
            refuse_all_gone
            and self.object_root is not None
            and not (plan.tasks or plan.unchanged or plan.still_failed)
        ):
            held = f" (the library's {len(plan.gone):,} would be removed)" if plan.gone else ""
            raise PhotosGoneError(
                f"no photos at {self.where}{held}; nothing was changed. If that is right, run "
                "again with --allow-empty-root"
            )
        if (
            refuse_all_gone
            and scope is None
            and plan.gone
            and not plan.tasks
            and not (plan.unchanged or plan.still_failed)
        ):
            raise PhotosGoneError(
                f"{self.where} has none of the library's {len(plan.gone):,} photos (a "
                "card or disk not mounted?); nothing was changed. If they are gone for good, "
                "run again with --allow-empty-root to remove them from the library"
            )
        writer = Writer(
            self.library,
            self._index,
            plan,
            save_interval=self.options.save_interval,
            save_share=self.save_share,
            on_rebuild=self.options.on_index_rebuild,
            precision=self.encoder.precision,
            facts=self.facts,
        )
        self._index = None  # the writer's now: a rebuild during the pass frees the old one
        hook = self.options.on_batch_committed

        def committed(batches: int) -> None:
            self.lock.note_commit()
            if hook:
                hook(batches)

        options = dataclasses.replace(self.options, on_batch_committed=committed)
        try:
            _run_stages(plan, self.executor, writer, options, progress)
            counts = writer.finish()
            # (An object root's photos all get their fingerprints and facts when read.)
            if scope is None and self.object_root is None:
                # Photos indexed before perceptual hashes were stored get one (decode only).
                fill_phashes(
                    self.library,
                    self.photo_root,
                    workers=self.options.workers or 2,
                    max_pixels=int(self.options.max_megapixels * 1e6),
                )
                # Photos indexed before facts were stored get them (metadata only).
                if self.options.facts:
                    fill_facts(
                        self.library,
                        self.photo_root,
                        self.facts,
                        workers=self.options.workers or 2,
                        progress=self.options.on_facts_backfill,
                    )
            if scope is None and self._rebuild_into is not None:
                self._finish_rebuild(refuse_all_gone)
        except BaseException:
            self._stale = True
            raise
        self._index = writer.index
        self._hashes = plan.known_hashes
        if counts.deleted:
            self.lock.note_commit()
        rebuilt, self._rebuilt = [*self._rebuilt, *writer.rebuilds], []
        return Summary(
            new=counts.new,
            updated=counts.updated,
            moved=counts.moved,
            deleted=counts.deleted,
            unchanged=counts.unchanged,
            failures=tuple(sorted(counts.failures)),
            seconds=time.perf_counter() - start,
            index_rebuilds=tuple(r.describe() for r in rebuilt),
            notes=tuple(
                f"Ray node skipped: {node}" for node in getattr(self.executor, "skipped_nodes", ())
            ),
        )

    def library_changed(self) -> None:
        """Another writer of this process changed the rows and index file while this session
        held the lock (set-aside, restore): the next pass starts from them again."""
        self._stale = True
        self._hashes = None

    def close(self) -> None:
        """Close the library and release the lock."""
        self._stack.close()

    def __enter__(self) -> IndexSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)


def default_executor(
    encoder: Encoder, photo_root: Path | ObjectRoot, options: IndexOptions
) -> Executor:
    """Ray workers if `options.ray` asks for them (for an object-store root each worker reads
    its objects from the store itself), else this process's threads (for an object-store root
    at least storage.DEFAULT_WORKERS of them, each read one GET)."""
    if options.ray is not None:
        return RayExecutor(options.ray, encoder, photo_root, batch_size=options.batch_size)
    if isinstance(photo_root, ObjectRoot):
        workers = options.workers or max(os.cpu_count() or 1, DEFAULT_WORKERS)
        return LocalExecutor(encoder, workers, read=object_reader(photo_root))
    return LocalExecutor(encoder, options.workers)


def _object_root(url: str, options: IndexOptions) -> ObjectRoot:
    """The object store's root at `url`, checked (one listing, no object read: an unchanged
    root reads none) before the library is touched: refused credentials, a missing bucket or
    an unreachable store end the run here (exit 2), with nothing made on disk. Reads that are
    refused later (a key allowed to list, not to read) end the run with the same line."""
    if options.library is None:
        raise UrlRootError(f"{url} is not a folder: say where its library goes with --library DIR")
    library_dir = Path(options.library).expanduser()
    root = open_root(
        url,
        endpoint_url=options.endpoint_url,
        stored_endpoint=lambda: _stored_endpoint(library_dir),
        retry=options.storage_retry,
    )
    root.probe(read_one=False)
    return root


def _stored_endpoint(library_dir: Path) -> str | None:
    """The endpoint an existing library was indexed through (None: none, or no library)."""
    try:
        with Library.open(library_dir) as library:
            return library.root_endpoint()
    except LibraryError:
        return None


@contextlib.contextmanager
def _lock(library_dir: Path, *, default: bool, kind: str) -> Iterator[LibraryLock]:
    """The writer lock, with a hint when the default library cannot be made in the photo folder."""
    lock = LibraryLock(library_dir, kind)
    try:
        lock.acquire()
    except LibraryWriteError as exc:
        if not default:
            raise
        raise LibraryWriteError(
            f"{exc} (a read-only photo folder? put the library elsewhere with --library DIR)"
        ) from exc
    try:
        yield lock
    finally:
        lock.release()


def _listing(folder: Path) -> set[str] | None:
    """Names in a folder (None if there is no such folder)."""
    try:
        return {p.name for p in folder.iterdir()}
    except OSError:
        return None


@contextlib.contextmanager
def _undone_if_nothing_indexed(library_dir: Path, before: set[str] | None) -> Iterator[None]:
    """A first run that fails before anything is committed leaves no half-made library: the
    files it created are removed (the folder too, if it made it: `before` is None), so no
    reader mistakes them for a library. Runs under the writer lock; a library that held
    anything is never touched."""
    try:
        yield
    except BaseException:
        if before is None or DB_NAME not in before:
            _remove_unfinished(library_dir, before or set(), made_dir=before is None)
        raise


def _remove_unfinished(library_dir: Path, before: set[str], *, made_dir: bool) -> None:
    try:
        with Library.open(library_dir, readonly=True) as library:
            if library.has_rows():
                return
    except LibraryNotFoundError:
        pass  # no tables or no manifest yet: nothing was committed
    except LibraryError:
        return  # unreadable: leave it for a person to look at
    for path in library_dir.iterdir():
        if path.name not in before and path.name != LOCK_NAME:
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if made_dir:
        # The lock file goes last; it is ours (held) and the folder was made by this run.
        with contextlib.suppress(OSError):
            (library_dir / LOCK_NAME).unlink()
            library_dir.rmdir()


def _run_stages(
    plan: Plan,
    executor: Executor,
    writer: Writer,
    options: IndexOptions,
    progress: ProgressCallback | None,
) -> None:
    """The driver: hands the plan's files to the executor and commits each batch it returns."""
    queue: deque[Job] = deque((t, False) for t in plan.tasks)
    max_pixels = int(options.max_megapixels * 1e6)
    feed = Feed(queue, plan.known_hashes, max_pixels, options.batch_size, facts=options.facts)
    total = feed.total
    if progress:
        progress(0, total)
    with pil_bomb_check_off(), contextlib.closing(executor.batches(feed)) as batches:
        for batch in batches:
            if batch:
                retry = writer.write_batch(batch)
                queue.extend((item.task, True) for item in retry)
                if options.on_batch_committed:
                    options.on_batch_committed(writer.batches_committed)
            if progress:
                progress(total - len(queue) - executor.in_flight(), total)
