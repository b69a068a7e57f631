"""The one thread that owns the `Searcher`, and the requests waiting for it, in lanes.

Searches are gathered into batches: the thread takes the first waiting request, waits up to
`window` seconds for more of the same lane (up to `max_batch`), then runs them together (one
forward pass of the text tower for every text query of the batch, one FAISS call per group of
equal options). Text and image queries are separate lanes, so an image's vision pass never
joins or holds a text batch beyond its own turn. Other Searcher work (`call`: opening the
library, warming, compositions, duplicates) runs alone, in arrival order with the batches.

The lanes are bounded: past `queue_size` waiting requests a new one is refused at once with
`QueueFull` (the web answers 503 `busy` with Retry-After) instead of piling up. A request
whose future is cancelled before its batch runs (its client went away) is dropped from the
queue and never encoded; one cancelled once its batch runs just has its answer ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("koclip_search.web")

# Defaults of `serve --batch-window-ms/--max-batch/--queue-size`, measured with a
# koclip-base-sized text tower (fp32, 2 shared CPU cores): one query 209 ms; a batch of 8
# 397 ms, of 16 643 ms (40 ms a query, the best), of 32 1.4 s (44 ms a query), of 64 6.4 s.
# The window is the spread of requests that clients send together (a few ms on loopback),
# small beside one forward pass; the tiny test model (0.3 ms a pass) is the exception.
BATCH_WINDOW = 0.005
MAX_BATCH = 16
QUEUE_SIZE = 256
CALL = "call"  # the lane of one-off work, never batched nor bounded


class QueueFull(Exception):
    """Too many requests are waiting for the search thread (`queue_size`)."""


class BatchObserver(Protocol):
    """What the batcher reports (the web's Prometheus metrics)."""

    def batch(self, lane: str, size: int) -> None: ...

    def rejected(self, lane: str) -> None: ...

    def skipped(self, lane: str, count: int) -> None: ...


@dataclass(eq=False)
class _Entry:
    lane: str
    item: Any
    bounded: bool
    future: Future = field(default_factory=Future)


class SearchThread:
    """One thread running every Searcher call and batch; `handlers` answer a lane's batch:
    a list of items -> a list of results or exceptions, one per item, in order."""

    def __init__(
        self,
        handlers: dict[str, Callable[[list[Any]], Sequence[Any]]],
        *,
        window: float = BATCH_WINDOW,
        max_batch: int = MAX_BATCH,
        queue_size: int = QUEUE_SIZE,
        observer: BatchObserver | None = None,
        name: str = "koclip-search_0",  # the name its one-thread executor gave it before
    ) -> None:
        if window < 0 or max_batch < 1 or queue_size < 1:
            raise ValueError("window >= 0, max_batch >= 1 and queue_size >= 1")
        self.handlers = dict(handlers)
        self.window = window
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.observer = observer
        self._entries: deque[_Entry] = deque()
        self._waiting = 0  # entries of bounded lanes in `_entries`
        self._cond = threading.Condition()
        self._closing = False
        self._name = name
        self._thread: threading.Thread | None = None  # started by the first request

    # -- submitting ----------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, bounded: bool = False) -> Future:
        """Run `fn(*args)` alone on the thread, in turn; its future. `bounded`: it counts
        as a waiting request (a search), QueueFull when `queue_size` wait; else (the
        server's own work: opening, warming, closing) it is never refused."""
        return self._put(_Entry(CALL, (fn, args), bounded))

    def submit(self, lane: str, item: Any) -> Future:
        """Queue `item` for the next batch of `lane`; QueueFull when `queue_size` wait."""
        if lane not in self.handlers:
            raise ValueError(f"no lane {lane!r}")
        return self._put(_Entry(lane, item, True))

    def depth(self) -> int:
        """Requests waiting for a batch (cancelled ones leave at once)."""
        return self._waiting

    def _put(self, entry: _Entry) -> Future:
        with self._cond:
            if self._closing:
                raise RuntimeError("the search thread is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if entry.bounded:
                if self._waiting >= self.queue_size:
                    if self.observer is not None:
                        self.observer.rejected(entry.lane)
                    raise QueueFull(f"{self._waiting} requests are waiting")
                self._waiting += 1
            self._entries.append(entry)
            self._cond.notify_all()
        if entry.bounded:
            entry.future.add_done_callback(lambda f: self._forget(entry, f))
        return entry.future

    def _forget(self, entry: _Entry, future: Future) -> None:
        """A future cancelled while queued leaves the queue (and the queue's count) at once."""
        if not future.cancelled():
            return
        with self._cond:
            try:
                self._entries.remove(entry)
            except ValueError:
                return  # taken into a batch already: skipped there
            self._waiting -= 1
        if self.observer is not None:
            self.observer.skipped(entry.lane, 1)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._entries and not self._closing:
                    self._cond.wait()
                if not self._entries:
                    return  # closing, nothing left
                first = self._entries.popleft()
                if first.bounded:
                    self._waiting -= 1
                batch = [first] if first.lane == CALL else self._gather(first)
            if first.lane == CALL:
                self._run_call(first)
            else:
                self._run_batch(first.lane, batch)

    def _gather(self, first: _Entry) -> list[_Entry]:
        """`first` and the entries of its lane that arrive within the window (lock held)."""
        batch = [first]
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            for entry in list(self._entries):
                if entry.lane == first.lane and len(batch) < self.max_batch:
                    self._entries.remove(entry)
                    self._waiting -= 1
                    batch.append(entry)
            left = deadline - time.monotonic()
            if len(batch) >= self.max_batch or left <= 0 or self._closing:
                break
            self._cond.wait(left)
        return batch

    @staticmethod
    def _run_call(entry: _Entry) -> None:
        if not entry.future.set_running_or_notify_cancel():
            return
        fn, args = entry.item
        try:
            result = fn(*args)
        except BaseException as exc:
            entry.future.set_exception(exc)
        else:
            entry.future.set_result(result)

    def _run_batch(self, lane: str, batch: list[_Entry]) -> None:
        # Cancelled before their turn (the client went away): never encoded.
        live = [e for e in batch if e.future.set_running_or_notify_cancel()]
        if self.observer is not None:
            if len(live) < len(batch):
                self.observer.skipped(lane, len(batch) - len(live))
            if live:
                self.observer.batch(lane, len(live))
        if not live:
            return
        try:
            results = list(self.handlers[lane]([e.item for e in live]))
            if len(results) != len(live):
                raise RuntimeError(f"{len(results)} answers for a batch of {len(live)}")
        except BaseException as exc:  # the batch as a whole failed: each request says so
            log.debug("a %s batch of %d failed", lane, len(live), exc_info=True)
            results = [exc] * len(live)
        for entry, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
