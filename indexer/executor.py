"""Where stages 2 and 3 run: the files of a plan in, encoded batches out.

The stages themselves are written once: `load` (indexer.load) reads one file, `load_chunk`
reads a few in threads, `encode` runs the vision tower over a batch. An executor only decides
where they run and how many files are in flight:

* `LocalExecutor`: a thread pool of this process reads ahead of the encoder, which runs on
  the calling thread (the default).
* `indexer.ray_executor.RayExecutor`: Ray workers each read and encode whole batches.

The driver (indexer.pipeline) plans, commits each batch through the writer, and puts the
files the writer hands back (a twin deleted meanwhile) on the `Feed` again, to be decoded.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Container, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from indexer.load import Loaded, Reader, load
from indexer.plan import Task
from koclip.encoder import Encoder

# (task, force_decode): a forced file is decoded even if its content hash is known.
Job = tuple[Task, bool]


@dataclass
class Feed:
    """The files still to read, shared by the driver (which adds retries) and an executor."""

    queue: deque[Job]
    known_hashes: Container[str]  # content hashes with a stored embedding: no decode for those
    max_pixels: int | None
    batch_size: int
    facts: bool = True  # read each photo's facts (False: the benchmark's baseline)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = len(self.queue)


class Executor(Protocol):
    """Turns a feed into batches of loaded items, each decoded item with its `embedding`."""

    def batches(self, feed: Feed) -> Iterator[list[Loaded]]:
        """Batches as they are ready; an empty one only reports progress. Reads the feed
        again after each batch (the driver may have put files back)."""
        ...

    def in_flight(self) -> int:
        """Files taken off the feed and not yet handed out in a batch."""
        ...

    def close(self) -> None:
        """Release what the executor holds (threads, a Ray connection)."""
        ...


def encode(encoder: Encoder, items: Sequence[Loaded]) -> None:
    """Stage 3: the decoded items' embeddings; their pixels are let go."""
    todo = [item for item in items if item.pixels is not None]
    if not todo:
        return
    vectors = encoder.encode_pixels(np.stack([item.pixels for item in todo]))
    for item, vector in zip(todo, vectors, strict=True):
        item.embedding = vector
        item.pixels = None


def load_chunk(
    jobs: Sequence[Job],
    known_hashes: Container[str],
    max_pixels: int | None,
    threads: int,
    *,
    facts: bool = True,
    read: Reader | None = None,
) -> list[Loaded]:
    """Stage 2 for a few files at once, in `threads` threads; results in the jobs' order.
    `read`: an object store's reader (a Ray worker's, see indexer.ray_executor)."""
    kw = {"known_hashes": known_hashes, "max_pixels": max_pixels, "facts": facts, "read": read}
    if threads <= 1 or len(jobs) <= 1:
        return [load(task, force_decode=force, **kw) for task, force in jobs]
    with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="koclip-load") as pool:
        return list(pool.map(lambda job: load(job[0], force_decode=job[1], **kw), jobs))


class LocalExecutor:
    """Reads in `workers` threads of this process, at most `2 * batch_size + workers` files
    in flight, so memory stays flat whatever the collection size; encodes on the caller's
    thread while the threads read on. With `read` (an object-store root: indexer.objects),
    each thread reads its object through it, so `workers` also bounds the GETs in flight."""

    def __init__(
        self, encoder: Encoder, workers: int | None = None, *, read: Reader | None = None
    ) -> None:
        self.encoder = encoder
        self.workers = workers or os.cpu_count() or 1
        self.read = read
        self._in_flight = 0

    def batches(self, feed: Feed) -> Iterator[list[Loaded]]:
        queue = feed.queue
        cap = 2 * feed.batch_size + self.workers
        pending: list[Loaded] = []
        futures: set[Future[Loaded]] = set()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="koclip-load")

        def fill() -> None:
            while queue and len(futures) < cap:
                task, force = queue.popleft()
                kw = {
                    "known_hashes": feed.known_hashes,
                    "max_pixels": feed.max_pixels,
                    "facts": feed.facts,
                    "read": self.read,
                }
                futures.add(pool.submit(load, task, force_decode=force, **kw))

        try:
            fill()
            while futures or pending:
                if futures:
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    futures.difference_update(finished)
                    pending.extend(f.result() for f in finished)
                    fill()
                last = not futures and not queue
                while (batch := take_batch(pending, feed.batch_size, last)) is not None:
                    encode(self.encoder, batch)
                    self._in_flight = len(futures) + len(pending)
                    yield batch
                    fill()
                self._in_flight = len(futures) + len(pending)
                yield []
        finally:
            # On an error (or Ctrl-C) drop the queued reads instead of finishing them first.
            pool.shutdown(wait=True, cancel_futures=True)
            self._in_flight = 0

    def in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        pass


def take_batch(pending: list[Loaded], batch_size: int, last: bool) -> list[Loaded] | None:
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
def pil_bomb_check_off() -> Iterator[None]:
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
