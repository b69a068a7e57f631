"""What the web API does, as plain blocking functions over one warm `search.Searcher`.

Every Searcher call runs on one dedicated thread (`web.batcher.SearchThread`): the Searcher's
caches, index reloads and its own SQLite connections are not thread-safe. Text queries, and
separately uploaded-image queries, that arrive together are answered in batches there
(`Searcher.search_many` / `search_images`): one forward pass for every query of a batch and
one FAISS call per group of equal options, each request still getting its own answer. A
large text tower is memory-bound at batch 1, so a batch costs little more than one query.
Photo lookups run beside searches on two database threads: the library's SQLAlchemy engine
keeps one SQLite connection per thread for at most five threads (SingletonThreadPool) and
closes the others' connections, so it must never be reached from the 40-thread pool.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from PIL import Image

import db
from indexer.aside import (
    AsideGroup,
    AsideReport,
    CrossFilesystemError,
    restore,
    set_aside_groups,
)
from koclip import ImageError, KoclipSearchError
from search import (
    ImageRequest,
    PhotoInfo,
    QueryImageError,
    Searcher,
    SearchOptions,
    SearchResults,
    Term,
    TextRequest,
    parse_query,
)
from search.duplicates import SIMILAR_COS, DuplicateGroup, DuplicateOptions
from search.filters import folder_filter
from web.batcher import BATCH_WINDOW, MAX_BATCH, QUEUE_SIZE, BatchObserver, QueueFull, SearchThread
from web.budget import ServerBusy
from web.errors import ApiError
from web.files import image_type, open_object, open_photo
from web.thumbnails import ThumbnailCache
from web.uploads import UploadStore

log = logging.getLogger("koclip_search.web")
T = TypeVar("T")

DEFAULT_K = 40
MAX_K = 200
# Infinite scroll stops here: each page re-ranks offset + k candidates.
MAX_OFFSET = 10_000
WARMUP_QUERY = "사진"
# Threads that touch the library's engine: these plus the search thread stay within the
# five of its SingletonThreadPool (see the module docstring).
DB_THREADS = 2
# How long a set-aside or restore waits for this server's watcher to finish its pass.
WRITE_WAIT = 30.0
# Seconds a client refused with a full queue is told to wait (Retry-After).
QUEUE_RETRY_AFTER = 1
TEXT, IMAGE = "text", "image"  # the batched lanes


@dataclass(frozen=True)
class Options(SearchOptions):
    """Paging and filters of one request, as the page sends them, and the prompt switch."""

    k: int = DEFAULT_K
    under: str | None = None  # relative to the photo root, POSIX
    prompt: bool = True


@dataclass(frozen=True)
class DuplicateQuery:
    """Which duplicate groups the page shows (the CLI's --kind, --threshold, --under)."""

    kind: str = "all"
    threshold: float | None = None
    under: str | None = None  # relative to the photo root, POSIX


class Backend:
    """The library behind the web page: opened on first use, then kept open with its model warm.

    `watcher` (serve --watch) holds the library's writer lock in this process; set-aside and
    restore then run on its thread between two passes instead of taking the lock.
    """

    def __init__(
        self,
        library: str | os.PathLike[str] | None,
        model: str | None = None,
        watcher: Any = None,
        *,
        batch_window: float = BATCH_WINDOW,
        max_batch: int = MAX_BATCH,
        queue_size: int = QUEUE_SIZE,
        observer: BatchObserver | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        """`batch_window` (seconds), `max_batch`, `queue_size`: see web.batcher; `observer`
        hears of every batch, rejection and skipped request (the metrics)."""
        self.library_arg = library
        self.model = model
        self.watcher = watcher
        # The object store's endpoint for a library of photos in object storage (None: the
        # one it was indexed through, else $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL);
        # credentials come from the standard chain of this process.
        self.endpoint_url = endpoint_url
        self._objects: Any = None  # the storage.ObjectRoot, opened on first use
        self._write_lock = threading.Lock()  # one set-aside or restore at a time
        self.uploads = UploadStore()
        self._searcher: Searcher | None = None
        # One thread owns the Searcher: opened, used and closed there.
        self._thread_args = {
            "window": batch_window,
            "max_batch": max_batch,
            "queue_size": queue_size,
            "observer": observer,
        }
        self._worker = self._search_thread()
        self._db = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="koclip-db")
        self._open_lock = threading.Lock()
        self._thumbs: ThumbnailCache | None = None
        # Health: "starting" until the text tower is warm ("ready"); "no_library" or "error"
        # (with `_detail`) when warming could not run.
        self.state = "starting"
        self._detail = ""
        self._warming = threading.Lock()

    def _search_thread(self) -> SearchThread:
        handlers = {TEXT: self._text_batch, IMAGE: self._image_batch}
        return SearchThread(handlers, **self._thread_args)

    # -- lifetime -------------------------------------------------------------------------

    def searcher(self) -> Searcher:
        """The open Searcher; opens the library on first use (db.LibraryError until one exists)."""
        if self._searcher is None:
            with self._open_lock:
                if self._searcher is None:
                    self._searcher = self._worker.call(
                        lambda: Searcher(self.library_arg, model=self.model)
                    ).result()
        return self._searcher

    def warm(self) -> None:
        """Load the text tower and compile it now, so the first real query is fast; the
        health check says `ready` from then on."""
        started = time.perf_counter()
        with self._warming:
            try:
                self.call(lambda s: s.text(WARMUP_QUERY, k=1))
            except db.LibraryNotFoundError as exc:
                self.state, self._detail = "no_library", str(exc)
                raise
            except Exception as exc:
                lines = str(exc).strip().splitlines()
                self.state, self._detail = "error", lines[0] if lines else type(exc).__name__
                raise
            self.state, self._detail = "ready", ""
        log.info("text model warm in %.1f s", time.perf_counter() - started)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of the health check: 200 `ready` once the library is open and
        the text tower warm, else 503 with the state (`starting`, `no_library`, `error`).
        Short of ready, it starts warming in the background (once at a time), so a library
        indexed after the server started is picked up."""
        state, detail = self.state, self._detail
        if state == "ready":
            searcher = self._searcher
            body: dict[str, Any] = {"status": "ready"}
            if searcher is not None:
                body["library"] = db.path_key(os.fspath(searcher.directory))
                body["model"] = searcher.manifest.model_id
            body["queue"] = self._worker.depth()
            return 200, body
        self.start_warming()
        body = {"status": state}
        if detail:
            body["detail"] = detail
        return 503, body

    def start_warming(self) -> None:
        """Warm the text tower on a thread of its own, unless it is warming already."""
        if not self._warming.locked():
            threading.Thread(target=self._warm_quietly, name="koclip-warm", daemon=True).start()

    def _warm_quietly(self) -> None:
        try:
            self.warm()
        except KoclipSearchError as exc:  # no library yet, another model...: health says so
            log.warning("not warming the model: %s", exc)
        except Exception:
            log.exception("warming the model failed")

    def close(self) -> None:
        """Release the Searcher (after any search still running) and its thread."""
        with self._open_lock:
            searcher, self._searcher = self._searcher, None
            if searcher is not None:
                try:
                    self._worker.call(searcher.close).result()
                except Exception:  # shutting down: log, do not fail the exit
                    log.exception("closing the library failed")
            self._worker.close()
            self._db.shutdown(wait=True)
            self._worker = self._search_thread()
            self._db = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="koclip-db")
            if self.state == "ready":
                self.state = "starting"

    def call(self, fn: Callable[[Searcher], T]) -> T:
        """Run `fn(searcher)` on the search thread and wait for it (alone, in turn)."""
        return self._worker.call(fn, self.searcher()).result()

    @property
    def search_thread(self) -> SearchThread:
        """The thread that owns the Searcher, with its batching settings."""
        return self._worker

    def queued(self, fn: Callable[[Searcher], T]) -> T:
        """Run a search `fn(searcher)` alone on the search thread, counted in the bounded
        queue (ServerBusy when it is full), and wait for it."""
        searcher = self.searcher()
        try:
            future = self._worker.call(fn, searcher, bounded=True)
        except QueueFull:
            raise self._queue_full() from None
        return future.result()

    def queue_depth(self) -> int:
        """Searches waiting for the search thread."""
        return self._worker.depth()

    def read(self, fn: Callable[[Searcher], T]) -> T:
        """Run a library lookup `fn(searcher)` on a database thread and wait for it."""
        return self._db.submit(fn, self.searcher()).result()

    # -- searching --------------------------------------------------------------------------

    def search(self, query: str, opts: Options) -> SearchResults:
        """The box's query in the CLI's composed syntax, understood (dates, places, cameras)
        unless `literal`; image terms must be library photos. Waits for its batch."""
        return self.submit_search(query, opts).result()

    def submit_search(self, query: str, opts: Options) -> Future:
        """Queue the box's query (see `search`) for the next text batch: its future.
        ServerBusy (503 `busy`, Retry-After) when the queue is full."""
        self.searcher()  # no library: say so before judging the query
        return self._submit(TEXT, (query, opts))

    def submit_image(self, image: Image.Image, label: str, opts: Options) -> Future:
        """Queue an uploaded image's search (see `image`, without a query) for the next image
        batch: its future. ServerBusy when the queue is full."""
        self.searcher()
        return self._submit(IMAGE, (image, label, opts))

    def _submit(self, lane: str, item: Any) -> Future:
        try:
            return self._worker.submit(lane, item)
        except QueueFull:
            raise self._queue_full() from None

    def _queue_full(self) -> ServerBusy:
        return ServerBusy(
            QUEUE_RETRY_AFTER,
            f"the server has {self._worker.queue_size} searches waiting; try again in "
            f"{QUEUE_RETRY_AFTER} s",
        )

    def _text_batch(self, items: list[tuple[str, Options]]) -> list[Any]:
        """A batch of box queries, on the search thread: `Searcher.search_many`."""
        s = self.searcher()
        out: list[Any] = [None] * len(items)
        requests: list[tuple[int, TextRequest]] = []
        for i, (query, opts) in enumerate(items):
            try:
                options = SearchOptions(**self._kwargs(s, opts))
            except Exception as exc:
                out[i] = exc
                continue
            requests.append(
                (i, TextRequest(query, options, prompt=opts.prompt, composed=True, files=False))
            )
        answers = s.search_many([r for _, r in requests], resolve=lambda t: _library_term(s, t))
        for (i, _), answer in zip(requests, answers, strict=True):
            out[i] = answer
        if any(isinstance(a, SearchResults) for a in answers) and self.state != "ready":
            self.state, self._detail = "ready", ""  # the text tower ran: it is warm
        return out

    def _image_batch(self, items: list[tuple[Image.Image, str, Options]]) -> list[Any]:
        """A batch of uploaded-image searches, on the search thread: `Searcher.search_images`."""
        s = self.searcher()
        out: list[Any] = [None] * len(items)
        requests: list[tuple[int, ImageRequest]] = []
        for i, (image, label, opts) in enumerate(items):
            try:
                options = SearchOptions(**self._kwargs(s, opts))
            except Exception as exc:
                out[i] = exc
                continue
            requests.append((i, ImageRequest(image, label, options)))
        for (i, _), answer in zip(requests, s.search_images([r for _, r in requests]), strict=True):
            out[i] = answer
        return out

    def compose(
        self, terms: list[tuple[float, str | None, int | None]], opts: Options
    ) -> SearchResults:
        """Weighted terms given as (weight, text, photo id), exactly one of text or id each."""
        built = []
        for weight, text, photo_id in terms:
            if text is not None:
                built.append(Term(weight=weight, text=text))
            else:
                built.append(Term(weight=weight, image=self.photo(photo_id).path))
        return self.queued(lambda s: s.compose(built, prompt=opts.prompt, **self._kwargs(s, opts)))

    def similar(self, photo_id: int, opts: Options) -> SearchResults:
        """Photos like a library photo, by its stored vector (its file may be gone); it and its
        exact duplicates are left out."""
        self.photo(photo_id)  # an unknown id is a 404 here, not a bad query
        return self.queued(lambda s: s.similar(photo_id, **self._kwargs(s, opts)))

    def image(
        self, image: Image.Image, query: str | None, label: str, opts: Options
    ) -> SearchResults:
        """Photos like an uploaded image (echoed as `label`), optionally composed with the
        box's query: `q` is added to the photo as terms of the CLI's syntax (`photo + q`)."""
        if not query or not query.strip():
            return self.submit_image(image, label, opts).result()
        self.searcher()
        terms = [Term(weight=1.0, image=image, label=label)]
        terms += [self._library_term(t) for t in parse_query(query, files=False)]
        return self.queued(lambda s: s.compose(terms, prompt=opts.prompt, **self._kwargs(s, opts)))

    def _kwargs(self, searcher: Searcher, opts: Options) -> dict[str, Any]:
        under = None
        if opts.under and searcher.root.is_url:  # a root in object storage: a key prefix
            under = opts.under.lstrip("/")
        elif opts.under:
            # Always from the photo root: a URL never names a folder relative to the server's
            # cwd (and search refuses one that `..` takes out of the root).
            under = os.fspath(searcher.photo_root / opts.under.lstrip("/"))
        return {
            "k": opts.k,
            "offset": opts.offset,
            "threshold": opts.threshold,
            "under": under,
            "after": opts.after or None,
            "before": opts.before or None,
            "sort": opts.sort,
            "literal": opts.literal,
        }

    def _library_term(self, term: Term) -> Term:
        """An image term from the box becomes a library photo, or the query is refused."""
        if term.is_text:
            return term
        return self.read(lambda s: _library_term(s, term))

    # -- library lookups --------------------------------------------------------------------

    def photo(self, photo_id: int) -> PhotoInfo:
        """One photo by library id; 404 if there is none."""
        found = self.read(lambda s: s.photo(photo_id))
        if found is None:
            raise ApiError(404, "not_found", f"no photo with id {photo_id} in the library")
        return found

    def thumbnail(self, photo_id: int, size: str) -> tuple[Path | bytes, str]:
        """(cached JPEG, or its bytes when the cache cannot be written; ETag) of a photo;
        koclip.ImageError if its file can no longer be read, ApiError 404 if it is no longer a
        file in the photo folder (see web.files)."""
        photo = self.photo(photo_id)
        searcher = self.searcher()
        root = searcher.photo_root
        if self._thumbs is None:
            self._thumbs = ThumbnailCache(searcher.directory)
        if searcher.root.is_url:  # read only to make it: the cache is this machine's
            path = self._thumbs.get(
                photo.id, photo.content_hash, lambda: self._open_object(photo), size, reopen=False
            )
        else:
            path = self._thumbs.get(
                photo.id, photo.content_hash, lambda: open_photo(root, photo.path), size
            )
        return path, photo.content_hash

    def original(self, photo_id: int) -> tuple[PhotoInfo, BinaryIO, str, int]:
        """(photo, its file opened, media type, size): only a file inside the photo folder that
        decodes as an image (the bytes checked are the bytes sent); ApiError 404 otherwise."""
        photo = self.photo(photo_id)
        searcher = self.searcher()
        url = searcher.root.is_url
        f = self._open_object(photo) if url else open_photo(searcher.photo_root, photo.path)
        try:
            media_type = image_type(f)
            size = len(f.getvalue()) if isinstance(f, BytesIO) else os.fstat(f.fileno()).st_size
            return photo, f, media_type, size
        except ImageError as exc:
            f.close()
            raise ApiError(404, "unreadable", f"the photo file cannot be read: {exc}") from None
        except BaseException:
            f.close()
            raise

    def _open_object(self, photo: PhotoInfo) -> BytesIO:
        """A photo of a root in object storage, read into memory (see web.files.open_object)."""
        url = self.searcher().root.url
        if self._objects is None or self._objects.url != url:
            from storage import open_root

            # As `index` takes it (storage.open_root): the one given, else the environment's,
            # else the one the library was indexed through.
            self._objects = open_root(
                url,
                endpoint_url=self.endpoint_url,
                stored_endpoint=lambda: self.read(lambda s: s.library.root_endpoint()),
            )
        top = f"{url}/"
        where = str(photo.path)
        key = where[len(top) :] if where.startswith(top) else ""
        return open_object(self._objects, key)

    def info(self) -> dict[str, Any]:
        """Counts and model for the page header; cheap (no index file read, no disk walk)."""
        return self.read(lambda s: s.info(full=False)).to_json()

    def places(self) -> list[dict[str, Any]]:
        """Every place of the library at every level with its photo count, most photos first."""
        return [{"place": p, "photos": n} for p, n in self.read(Searcher.places)]

    def folders(self) -> list[dict[str, Any]]:
        """Every folder holding photos (relative to the root) with its photo count, subfolders included."""
        return [{"folder": f, "photos": n} for f, n in self.read(Searcher.folders)]

    # -- duplicates -------------------------------------------------------------------------

    def duplicates(self, query: DuplicateQuery) -> list[DuplicateGroup]:
        """The duplicate groups `query` selects, largest first."""
        options = self._duplicate_options(query)
        return self.call(lambda s: s.duplicates(options))

    def refuse_object_root(self) -> None:
        """indexer.aside.ObjectRootAsideError (400) for a library of photos in object storage."""
        if self.searcher().root.is_url:
            from indexer.aside import refuse_object_root

            self.read(lambda s: refuse_object_root(s.library))

    def aside_folder(self) -> Path:
        """Where set-aside photos go (the CLI's default: set-aside/ in the library folder)."""
        from indexer.aside import default_aside_dir

        return default_aside_dir(self.searcher().directory)

    def set_aside(
        self,
        photo_ids: list[int],
        keep: int,
        query: DuplicateQuery,
        cross_filesystem: bool = False,
    ) -> AsideReport:
        """Move a group's photos but `keep` to the default set-aside folder (the CLI's journal
        and rule: still that group as `query` finds it, under the writer lock, else
        indexer.aside.StaleGroupError, 409 `stale_group`: the page is out of date). Copying
        to another file system only with `cross_filesystem` (else 409 `cross_filesystem`)."""
        if keep not in photo_ids:
            raise ApiError(422, "bad_request", "keep: must be one of the group's photos")
        self.refuse_object_root()
        group = AsideGroup(tuple(dict.fromkeys(photo_ids)), keep)
        directory = self.searcher().directory

        def current() -> list[list[int]]:
            return [[p.id for p in g.photos] for g in self.duplicates(query)]

        def move(held: bool) -> AsideReport:
            return set_aside_groups(
                directory, [group], current, cross_filesystem=cross_filesystem, lock_held=held
            )

        try:
            return self._write(move)
        except CrossFilesystemError:
            raise ApiError(
                409,
                "cross_filesystem",
                f"the set-aside folder {self.aside_folder()} is on another file system than "
                "the photos: each photo would be copied there, then removed here; confirm to "
                "copy them",
            ) from None

    def restore(self, photo_ids: list[int] | None) -> AsideReport:
        """Put set-aside photos back (those of `photo_ids`, or all): the CLI's --restore."""
        self.refuse_object_root()
        directory = self.searcher().directory
        return self._write(lambda held: restore(directory, photo_ids, lock_held=held))

    def _write(self, fn: Callable[[bool], T]) -> T:
        """Run `fn(lock_held)` as the library's one writer: on this server's watcher thread
        when it holds the lock, else under the lock taken here; ApiError 423 `library_busy`
        (naming the holder) when another process holds it."""
        with self._write_lock:
            watcher = self.watcher
            if watcher is not None and getattr(watcher, "holds_lock", lambda: False)():
                try:
                    return watcher.exclusive(lambda: fn(True), WRITE_WAIT)
                except TimeoutError:
                    if watcher.holds_lock():
                        raise ApiError(
                            423,
                            "library_busy",
                            "this server's watcher is indexing new photos; try again when "
                            "its pass is done",
                        ) from None
            try:
                return fn(False)
            except db.LibraryLockedError:
                raise self._busy() from None

    def _busy(self) -> ApiError:
        directory = self.searcher().directory
        who = db.holder_text(*db.lock_holder(directory))
        return ApiError(
            423,
            "library_busy",
            f"{who} is writing to the library at {directory}; try again when it is done",
        )

    def _duplicate_options(self, query: DuplicateQuery) -> DuplicateOptions:
        under = None
        if query.under and query.under.strip("/"):
            searcher = self.searcher()
            root = searcher.photo_root
            if searcher.root.is_url:  # a root in object storage: a key prefix under it
                under = searcher.root.folder(query.under.lstrip("/"))
            else:
                # From the photo root, as for searches: a URL never names a folder from the cwd.
                under = folder_filter(os.fspath(root / query.under.lstrip("/")), root)
        threshold = SIMILAR_COS if query.threshold is None else query.threshold
        return DuplicateOptions(kind=query.kind, threshold=threshold, under=under)


def _library_term(searcher: Searcher, term: Term) -> Term:
    """An image term from the box as the library photo it names (on the caller's thread),
    or QueryImageError: the page searches by library photos only."""
    if term.is_text:
        return term
    photo = searcher.photo_at(term.image)
    if photo is None:
        raise QueryImageError(
            f"{term.image} is not a photo in the library (in the web page, image terms are "
            "paths relative to the photo folder; drop a photo to search by one from elsewhere)"
        )
    return Term(weight=term.weight, image=photo.path)
