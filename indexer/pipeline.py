"""The orchestrator: discover -> load/preprocess (thread pool) -> encode -> write.

Only here do the stages meet. Loading runs `workers` threads ahead of the encoder with at
most `2 * batch_size + workers` files in flight, so memory stays flat whatever the
collection size; the encoder and the writer run on the calling thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from db import (
    Library,
    LibraryError,
    LibraryLock,
    LibraryNotFoundError,
    LibraryWriteError,
    default_library_dir,
)
from db.library import DB_NAME, LOCK_NAME
from indexer.discover import discover
from indexer.load import Loaded, load
from indexer.phash import fill_phashes
from indexer.plan import Plan, Task, load_known, make_plan
from indexer.setup import open_for_indexing, prepare
from indexer.summary import Summary
from indexer.writer import Writer
from koclip import KoCLIPEncoder
from koclip.preprocess import MAX_PIXELS

ProgressCallback = Callable[[int, int], None]  # (files done, files to read)


@dataclass(frozen=True)
class IndexOptions:
    """Knobs of `index_photos` (the CLI flags)."""

    library: Path | None = None  # default: PHOTO_DIR/.koclip-search
    model: str | None = None  # default: the library's model, else koclip-base
    batch_size: int = 32
    workers: int | None = None  # default: one per CPU
    exclude: tuple[str, ...] = ()
    max_megapixels: float = MAX_PIXELS / 1e6
    rebuild: bool = False
    # Follow symlinks that lead out of the photo folder (default: record them as failures
    # and leave them; see indexer.discover). The web never serves files outside the folder.
    follow_links: bool = False
    save_interval: float = 30.0  # seconds between index saves during a run
    # Called with the number of batches committed so far, after each commit (before the
    # FAISS file catches up): a place to watch a run, or to stop it there.
    on_batch_committed: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_megapixels) and self.max_megapixels > 0):
            raise ValueError(f"max_megapixels must be a positive number, not {self.max_megapixels}")
        if not (math.isfinite(self.save_interval) and self.save_interval >= 0):
            raise ValueError(f"save_interval must be a number >= 0, not {self.save_interval}")


def index_photos(
    photo_dir: Path,
    options: IndexOptions = IndexOptions(),
    progress: ProgressCallback | None = None,
    encoder: KoCLIPEncoder | None = None,
) -> Summary:
    """Bring the library of `photo_dir` up to date; raises LibraryError (and koclip errors) if it cannot run.

    `encoder` (a loaded vision tower) replaces `options.model` when a caller already holds one.
    """
    start = time.perf_counter()
    photo_root = Path(photo_dir).expanduser().resolve()
    if not photo_root.is_dir():
        raise LibraryError(f"{photo_dir} is not a folder")
    if options.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    library_dir = Path(options.library).expanduser().resolve() if options.library else None
    library_dir = library_dir or default_library_dir(photo_root)
    before = _listing(library_dir)
    with (
        _lock(library_dir, default=options.library is None),
        _undone_if_nothing_indexed(library_dir, before),
        open_for_indexing(library_dir, rebuild=options.rebuild) as library,
    ):
        encoder = prepare(
            library,
            photo_root,
            options.model,
            batch_size=options.batch_size,
            rebuild=options.rebuild,
            encoder=encoder,
        )
        # Repair what the database can rebuild: rows with a damaged vector are read again as
        # new files, the mirror and the index file follow the row, leftovers go.
        library.drop_damaged_embeddings(encoder.dim)
        library.remove_leftovers()
        library.write_manifest_json()
        index, _ = library.reconcile_index()
        with library.session() as s, s.begin():
            known, hashes = load_known(s)
        found = discover(
            photo_root,
            exclude=options.exclude,
            skip=[library_dir],
            follow_links=options.follow_links,
        )
        plan = make_plan(found, known, hashes)
        writer = Writer(library, index, plan, save_interval=options.save_interval)
        max_pixels = int(options.max_megapixels * 1e6)
        _run_stages(plan, encoder, writer, options, progress)
        counts = writer.finish()
        # Photos indexed before perceptual hashes were stored get one (decode only).
        fill_phashes(library, photo_root, workers=options.workers or 2, max_pixels=max_pixels)
    return Summary(
        new=counts.new,
        updated=counts.updated,
        moved=counts.moved,
        deleted=counts.deleted,
        unchanged=counts.unchanged,
        failures=tuple(sorted(counts.failures)),
        seconds=time.perf_counter() - start,
    )


@contextlib.contextmanager
def _lock(library_dir: Path, *, default: bool) -> Iterator[None]:
    """The writer lock, with a hint when the default library cannot be made in the photo folder."""
    lock = LibraryLock(library_dir)
    try:
        lock.acquire()
    except LibraryWriteError as exc:
        if not default:
            raise
        raise LibraryWriteError(
            f"{exc} (a read-only photo folder? put the library elsewhere with --library DIR)"
        ) from exc
    try:
        yield
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
    encoder: KoCLIPEncoder,
    writer: Writer,
    options: IndexOptions,
    progress: ProgressCallback | None,
) -> None:
    batch_size = options.batch_size
    workers = options.workers or os.cpu_count() or 1
    max_pixels = int(options.max_megapixels * 1e6)
    cap = 2 * batch_size + workers
    queue: deque[tuple[Task, bool]] = deque((t, False) for t in plan.tasks)
    total = len(plan.tasks)
    pending: list[Loaded] = []
    futures: set[Future[Loaded]] = set()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="koclip-load")

    def fill() -> None:
        while queue and len(futures) < cap:
            task, force = queue.popleft()
            load_kw = {
                "known_hashes": plan.known_hashes,
                "max_pixels": max_pixels,
                "force_decode": force,
            }
            futures.add(pool.submit(load, task, **load_kw))

    def flush(items: list[Loaded]) -> None:
        pixels = [i.pixels for i in items if i.pixels is not None]
        embeddings = encoder.encode_pixels(np.stack(pixels)) if pixels else None
        retry = writer.write_batch(items, embeddings)
        for item in items:
            item.pixels = None  # let the batch's memory go
        queue.extend((item.task, True) for item in retry)
        if options.on_batch_committed:
            options.on_batch_committed(writer.batches_committed)

    if progress:
        progress(0, total)
    try:
        with _pil_bomb_check_off():
            fill()
            while futures or pending:
                if futures:
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    futures.difference_update(finished)
                    pending.extend(f.result() for f in finished)
                    fill()
                last = not futures and not queue
                while (batch := _take_batch(pending, batch_size, last)) is not None:
                    flush(batch)
                    fill()
                if progress:
                    progress(total - len(queue) - len(futures) - len(pending), total)
    finally:
        # On an error (or Ctrl-C) drop the queued reads instead of finishing them first.
        pool.shutdown(wait=True, cancel_futures=True)


def _take_batch(pending: list[Loaded], batch_size: int, last: bool) -> list[Loaded] | None:
    """Cut a batch off `pending`: the items up to `batch_size` images to encode (all, if `last`).

    Items that need no encoder (failures, moves, duplicates) ride along; a long run of them
    is flushed on its own so a rename of 10,000 files still commits as it goes.
    """
    if last and pending:
        batch = pending[:]
        pending.clear()
        return batch
    n_pixels = 0
    for i, item in enumerate(pending):
        if item.pixels is not None:
            n_pixels += 1
            if n_pixels == batch_size:
                batch = pending[: i + 1]
                del pending[: i + 1]
                return batch
    if len(pending) - n_pixels >= 8 * batch_size:
        batch = [i for i in pending if i.pixels is None]
        pending[:] = [i for i in pending if i.pixels is not None]
        return batch
    return None


@contextlib.contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    """Our limit (--max-megapixels, checked from the header before decoding) replaces PIL's.

    PIL's own check would refuse images below a raised limit and warn (print) between its
    two thresholds. It is process-wide, so it is put back after the run.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
