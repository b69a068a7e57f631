"""The FastAPI app behind `koclip-search serve`: the page, the JSON API, thumbnails and originals.

    from web import create_app
    app = create_app("~/Pictures/.koclip-search")      # uvicorn.run(app, host="127.0.0.1")

Routes only parse, call `Backend` in the thread pool (model and FAISS work never runs on the
event loop) and shape results with search's own `SearchResults.to_json()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from importlib import resources
from pathlib import PurePath
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.responses import Response

from koclip import ImageError
from koclip.names import DUPLICATE_KINDS
from search import PhotoInfo, SearchResults, display_path, facts_json, json_path
from search.duplicates import MIN_SIMILAR_COS, DuplicateGroup
from web.backend import DEFAULT_K, MAX_K, MAX_OFFSET, Backend, DuplicateQuery, Options
from web.batcher import BATCH_WINDOW, MAX_BATCH, QUEUE_SIZE
from web.errors import ApiError, install_handlers
from web.files import read_chunks
from web.hosts import BodyLimit, HostGuard, OriginGuard
from web.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from web.params import PhotoId, Text
from web.thumbnails import SIZES
from web.uploads import MAX_UPLOAD_BYTES, UPLOAD_BODY_BYTES, decode_upload, read_upload

log = logging.getLogger("koclip_search.web")

LOCAL_HOSTS = ("127.0.0.1", "localhost")
# The page's own assets only: no inline script, no third-party origin.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
THUMB_CACHE = "private, max-age=3600"
# Bytes of a JSON request body: a composed query of 16 terms of MAX_TEXT characters, each sent
# as \uXXXX escapes, is under 100 KB; a set-aside names at most MAX_GROUP ids.
MAX_BODY_BYTES = 256 * 1024


# How often a request waiting for its batch checks that its client is still there.
DISCONNECT_POLL = 0.1


class ClientGone(ApiError):
    """The client closed the connection before its search ran (nobody reads this answer)."""

    def __init__(self) -> None:
        super().__init__(499, "client_closed", "the client closed the connection")


class SecurityHeaders:
    """Headers every answer carries (and the CSP of every HTML page). Pure ASGI, not
    Starlette's BaseHTTPMiddleware: that one hides a client's disconnect from the routes
    (`request.is_disconnected()`), which a queued search watches. `extra`: more headers for
    every answer (a replica's name)."""

    def __init__(self, app: Any, extra: dict[str, str] | None = None) -> None:
        self.app = app
        self.extra = dict(extra or {})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", CSP)
                for name, value in self.extra.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, sending)


class Background(Protocol):
    """Work that runs beside the server for its whole life (the watcher of serve --watch)."""

    def start(self) -> None: ...

    def close(self) -> None: ...


# -- response shapes (for the OpenAPI description) ------------------------------------------


class Hit(BaseModel):
    """One result: the CLI's --json fields, plus the library id and where to fetch the picture."""

    rank: int
    score: float | None = Field(description="cosine with the query; null for a query of facts only")
    path: str
    width: int | None
    height: int | None
    taken_at: str | None
    place: str | None = Field(
        None, description="where it was taken (e.g. 제주특별자치도 서귀포시 성산읍)"
    )
    lat: float | None = None
    lon: float | None = None
    camera: str | None = Field(None, description="make and model, e.g. Apple iPhone 15")
    id: int
    relpath: str = Field(description="path relative to the library's photo folder")
    thumbnail: str
    preview: str
    original: str


class UnderstoodFact(BaseModel):
    """One fact read from the query: its kind, the words it took, how it is shown."""

    kind: Literal["date", "place", "camera"]
    words: str
    value: str
    without: str = Field(description="the query without this fact's words (its chip's removal)")


class Understood(BaseModel):
    """What a text query was understood as (search.understand): the filters and the rest."""

    text: str = Field(description="the rest, searched by its meaning and its words")
    after: str | None = None
    before: str | None = None
    places: list[str] = []
    camera: str | None = None
    cameras: list[list[str]] = []
    facts: list[UnderstoodFact] = []


class CutoffModel(BaseModel):
    """The relevance cutoff applied (threshold auto)."""

    threshold: float | None
    kept: int
    how: str


class SearchResponse(BaseModel):
    """The CLI's --json shape (`query`, `understood`, `results`) plus paging."""

    query: str
    understood: Understood | None = None
    cutoff: CutoffModel | None = None
    results: list[Hit]
    offset: int
    k: int
    next_offset: int | None = Field(description="offset of the next page; null when done")
    upload: str | None = Field(None, description="token to page an image search without re-sending")


class PhotoResponse(BaseModel):
    """A library photo's metadata and links."""

    id: int
    path: str
    relpath: str
    width: int
    height: int
    taken_at: str
    taken_at_source: str
    size: int
    place: str | None = None
    lat: float | None = None
    lon: float | None = None
    camera: str | None = None
    thumbnail: str
    preview: str
    original: str
    similar: str


class HealthResponse(BaseModel):
    """Whether the server can answer searches now."""

    status: Literal["ready", "starting", "no_library", "error"] = Field(
        description="ready (200) once the library is open and the text model warm; else 503: "
        "starting, no_library (none indexed yet) or error (see detail)"
    )
    detail: str | None = None
    library: str | None = None
    model: str | None = None
    queue: int | None = Field(None, description="searches waiting")


class InfoResponse(BaseModel):
    """What the page header shows."""

    library: str
    photo_root: str = Field(description="the photo folder, or the URL of a root in object storage")
    endpoint: str | None = Field(None, description="an object store's endpoint, as shown")
    photos: int
    failed: int
    model: str
    precision: str  # the towers' arithmetic that made the vectors: "fp32", "bf16", "bf16+fp32", ...
    index_type: str


class Folder(BaseModel):
    """A folder (relative to the photo folder) and how many photos it holds, subfolders included."""

    folder: str
    photos: int


Sort = Literal["relevance", "newest", "oldest"]


class Place(BaseModel):
    """A place of the library, at any level ("제주특별자치도 서귀포시"), and its photo count."""

    place: str
    photos: int


class ComposeTerm(BaseModel):
    """One weighted term: a text or a library photo id."""

    weight: float = Field(1.0, allow_inf_nan=False)
    text: Text | None = None
    photo_id: PhotoId | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ComposeTerm:
        if (self.text is None) == (self.photo_id is None):
            raise ValueError("each term has exactly one of text or photo_id")
        return self


class ComposeRequest(BaseModel):
    """A composed query as data: `바다 + 노을 - 사람` is three terms with weights 1, 1, -1."""

    terms: list[ComposeTerm] = Field(min_length=1, max_length=16)
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    under: Text | None = None
    after: Text | None = None
    before: Text | None = None
    sort: Sort = "relevance"
    prompt: bool = True

    def options(self) -> Options:
        """The paging and filters."""
        return Options(**self.model_dump(exclude={"terms"}))


class DuplicatePhoto(BaseModel):
    """A member of a group: the CLI's --json fields, plus its id and links."""

    path: str
    width: int
    height: int
    bytes: int
    taken_at: str
    similarity: float = Field(description="cosine with the suggested keeper")
    id: int
    relpath: str
    thumbnail: str
    preview: str
    original: str


class DuplicateGroupModel(BaseModel):
    """One group, the suggested keeper first (the CLI's --json, plus `keep_id`)."""

    kind: Literal[DUPLICATE_KINDS]
    keep: str
    keep_id: int
    reason: str
    photos: list[DuplicatePhoto]


class DuplicatesResponse(BaseModel):
    """A page of groups, largest first."""

    groups: list[DuplicateGroupModel]
    total: int = Field(description="groups in all")
    offset: int
    limit: int
    aside_folder: str = Field(description="where set-aside photos go")


Kind = Literal[(*DUPLICATE_KINDS, "all")]
MAX_GROUP = 1000  # photos a set-aside request may name
MAX_GROUPS = 500


class SetAsideRequest(BaseModel):
    """One group as the page shows it (its photo ids), the photo to keep, and the list's
    filters, so the server can check that it is still that group."""

    photos: list[PhotoId] = Field(min_length=2, max_length=MAX_GROUP)
    keep: PhotoId
    kind: Kind = "all"
    threshold: float | None = Field(None, ge=MIN_SIMILAR_COS, le=1.0, allow_inf_nan=False)
    under: Text | None = None
    cross_filesystem: bool = Field(
        False,
        description="allow copying when the set-aside folder is on another file system than "
        "the photos (the page asks first, after a 409 `cross_filesystem`)",
    )


MAX_RESTORE = 100_000
# Routes whose bodies may be larger: an upload (its own checks come first), a long restore
# (MAX_RESTORE ids of up to 19 digits each).
BODY_LIMITS = {
    "/api/image": UPLOAD_BODY_BYTES,
    "/api/duplicates/restore": 24 * MAX_RESTORE + MAX_BODY_BYTES,
}


class RestoreRequest(BaseModel):
    """The photos to put back (ids a set-aside answered with); none: every set-aside photo."""

    photos: list[PhotoId] | None = Field(None, max_length=MAX_RESTORE)


class Skipped(BaseModel):
    """A photo left where it was, and why (`path` null: the id names no photo now)."""

    path: str | None
    id: int | None = None
    reason: str


class AsideResponse(BaseModel):
    """What a set-aside or restore did (the CLI's --json, plus the ids moved)."""

    moved: list[str]
    ids: list[int]
    skipped: list[Skipped]
    recovered: int
    folder: str


def search_options(
    k: Annotated[int, Query(ge=1, le=MAX_K, description="results per page")] = DEFAULT_K,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="results to skip")] = 0,
    threshold: Annotated[
        str | None,
        Query(
            pattern=r"^(auto|none|[-+]?(\d+(\.\d*)?|\.\d+))$",
            description="min cosine (a number), auto (the photos that stand out; the default "
            "when sorted by date) or none",
        ),
    ] = None,
    under: Annotated[Text | None, Query(description="folder, relative to the photo folder")] = None,
    after: Annotated[
        Text | None, Query(description="taken on or after (2023, 2023-05, ...)")
    ] = None,
    before: Annotated[Text | None, Query(description="taken before")] = None,
    prompt: Annotated[bool, Query(description="wrap text in the prompt template")] = True,
    sort: Annotated[Sort, Query(description="relevance, newest or oldest")] = "relevance",
    literal: Annotated[
        bool, Query(description="search the text as typed: no dates, places, cameras or words")
    ] = False,
) -> Options:
    """Paging, filters and order shared by every search route."""
    cut: float | str | None = threshold
    if threshold is not None and threshold not in ("auto", "none"):
        cut = float(threshold)
        if not -1.0 <= cut <= 1.0:
            raise ApiError(422, "bad_request", "threshold: a cosine is between -1 and 1")
    return Options(
        k=k,
        offset=offset,
        threshold=cut,
        under=under,
        after=after,
        before=before,
        sort=sort,
        literal=literal,
        prompt=prompt,
    )


OptionsDep = Annotated[Options, Depends(search_options)]
PhotoIdPath = Annotated[PhotoId, FastAPIPath(description="the photo's library id")]
QueryText = Annotated[Text, Query(min_length=1, description="the query")]


# -- shaping --------------------------------------------------------------------------------


def _links(photo_id: int) -> dict[str, str]:
    base = f"/api/photos/{photo_id}"
    return {
        "thumbnail": f"{base}/thumbnail",
        "preview": f"{base}/thumbnail?size=large",
        "original": f"{base}/original",
    }


def shape(results: SearchResults, opts: Options, upload: str | None = None) -> dict[str, Any]:
    """search's own JSON (as `--json` prints it), each hit given its id, relative path and
    links, each understood fact the query without it."""
    body = results.to_json()
    if results.understood is not None:
        for i, fact in enumerate(body["understood"]["facts"]):
            fact["without"] = results.understood.without(i)
    for hit, item in zip(results.hits, body["results"], strict=True):
        relpath = hit.relpath or display_path(hit.path.name)
        item.update({"id": hit.photo_id, "relpath": relpath, **_links(hit.photo_id)})
    full = len(results) == opts.k
    body.update(
        {
            "offset": opts.offset,
            "k": opts.k,
            "upload": upload,
            "next_offset": opts.offset + opts.k if full else None,
        }
    )
    return body


def _group_json(group: DuplicateGroup) -> dict[str, Any]:
    body = group.to_json()
    body["keep_id"] = group.keep.id
    for photo, item in zip(group.photos, body["photos"], strict=True):
        item.update({"id": photo.id, "relpath": photo.relpath, **_links(photo.id)})
    return body


def _photo_json(photo: PhotoInfo) -> dict[str, Any]:
    return {
        "id": photo.id,
        "path": json_path(photo.path),
        "relpath": photo.relpath,
        "width": photo.width,
        "height": photo.height,
        "taken_at": photo.taken_at.isoformat(),
        "taken_at_source": photo.taken_at_source,
        "size": photo.size,
        **facts_json(photo),
        **_links(photo.id),
        "similar": f"/api/photos/{photo.id}/similar",
    }


# -- the app --------------------------------------------------------------------------------


def create_app(
    library_dir: str | os.PathLike[str] | None,
    model: str | None = None,
    *,
    warm: bool = True,
    allowed_hosts: list[str] | None = None,
    watcher: Background | None = None,
    batch_window: float = BATCH_WINDOW,
    max_batch: int = MAX_BATCH,
    queue_size: int = QUEUE_SIZE,
    endpoint_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> FastAPI:
    """The web app for one library (a library folder or a photo folder holding one; None: the
    nearest from the cwd). The library may not exist yet: the page says so until it does.

    `warm` loads and compiles the text model in the background at startup. `allowed_hosts`
    (default: 127.0.0.1 and localhost) guards against DNS rebinding; ["*"] allows any.
    `watcher` (serve --watch: an `indexer.WatchThread`) is started with the app and stopped
    at its shutdown. Text (and, apart, image) searches that arrive within `batch_window`
    seconds of each other are answered as one batch of at most `max_batch`; past
    `queue_size` waiting searches a request is answered 503 `busy` (see web.batcher).
    `endpoint_url`: the object store's endpoint for a library of photos in object storage
    (default: the URL's own, or $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL). `headers`: more
    headers on every answer (a replica's name).
    """
    metrics = Metrics()
    backend = Backend(
        library_dir,
        model,
        watcher=watcher,
        batch_window=batch_window,
        max_batch=max_batch,
        queue_size=queue_size,
        observer=metrics,
        endpoint_url=endpoint_url,
    )
    metrics.watch_queue(backend.queue_depth)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm:
            backend.start_warming()
        if watcher is not None:
            watcher.start()
        yield
        if watcher is not None:
            await run_in_threadpool(watcher.close)
        backend.close()

    app = FastAPI(
        title="koclip-search",
        summary="Search a photo library with Korean (or English) text, photos, or both.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger page loads its scripts from a CDN: ours is below
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.backend = backend
    app.state.metrics = metrics
    install_handlers(app)
    # Outermost last: the Host is checked first, then the Origin, then the body's size; every
    # request is counted, refused ones too.
    app.add_middleware(BodyLimit, default=MAX_BODY_BYTES, limits=BODY_LIMITS)
    app.add_middleware(OriginGuard)
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts or list(LOCAL_HOSTS))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    app.add_middleware(SecurityHeaders, extra=headers)

    static = resources.files("web") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text("utf-8"))

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        """The API described from /api/openapi.json by our own page (works offline)."""
        return HTMLResponse((static / "api.html").read_text("utf-8"))

    _add_api_routes(app, backend)
    _add_duplicate_routes(app, backend)
    _add_server_routes(app, backend, metrics)
    return app


def _add_server_routes(app: FastAPI, backend: Backend, metrics: Metrics) -> None:
    @app.get(
        "/api/health",
        response_model=HealthResponse,
        response_model_exclude_none=True,
        tags=["server"],
        responses={503: {"model": HealthResponse, "description": "not ready (yet)"}},
    )
    async def health() -> JSONResponse:
        """200 `ready` once the library is open and the text model warm; 503 before, with the
        state: `starting`, `no_library` (nothing indexed yet: picked up once it is) or
        `error`. Needs no library; never waits for a search."""
        status, body = backend.health()
        return JSONResponse(body, status_code=status)

    @app.get(
        "/metrics",
        tags=["server"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}}},
    )
    async def prometheus() -> Response:
        """Prometheus metrics (text format): requests by route and status, latency by route,
        the search queue's depth, batch sizes, searches refused (503 busy) or dropped (their
        client left)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)


async def answered(request: Request, future: Future) -> Any:
    """The result of a queued search, waited for without holding a thread; when the client
    goes away first, the search is cancelled (skipped if its batch has not run yet)."""
    waiting = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                future.cancel()
                raise ClientGone()
    except asyncio.CancelledError:
        future.cancel()
        raise


def _add_api_routes(app: FastAPI, backend: Backend) -> None:
    async def searched(
        fn: Callable[..., SearchResults], *args: Any, opts: Options, upload: str | None = None
    ) -> dict[str, Any]:
        """Run a search in the thread pool; its results as the page gets them."""
        results = await run_in_threadpool(fn, *args, opts)
        return shape(results, opts, upload)

    @app.get("/api/info", response_model=InfoResponse, tags=["library"])
    async def info() -> dict[str, Any]:
        """Photo counts and model of the library (503 `no_library` until one is indexed)."""
        return await run_in_threadpool(backend.info)

    @app.get("/api/folders", response_model=list[Folder], tags=["library"])
    async def folders() -> list[dict[str, Any]]:
        """Folders holding photos, for the folder filter."""
        return await run_in_threadpool(backend.folders)

    @app.get("/api/places", response_model=list[Place], tags=["library"])
    async def places() -> list[dict[str, Any]]:
        """The library's places at every level with their photo counts, most photos first
        (a query naming one searches there)."""
        return await run_in_threadpool(backend.places)

    @app.get("/api/search", response_model=SearchResponse, tags=["search"])
    async def search(
        request: Request,
        q: QueryText,
        opts: OptionsDep,
    ) -> dict[str, Any]:
        """Text or a composed query in the CLI's syntax: `바다 + 노을 - 사람`, `2:강아지`,
        `2023/여행/바다.jpg + 노을` (image terms are photos of the library, by relative path).
        Dates, places and cameras it names filter the photos (`understood`; 400 `bad_date` for
        a day that does not exist), its words also match file names and keywords; `literal`
        turns both off. Queries that arrive together are answered in one batch; 503 `busy`
        (Retry-After) when too many wait."""
        future = await run_in_threadpool(backend.submit_search, q, opts)
        return shape(await answered(request, future), opts)

    @app.post("/api/compose", response_model=SearchResponse, tags=["search"])
    async def compose(body: ComposeRequest) -> dict[str, Any]:
        """A composed query given as weighted terms (texts and library photo ids)."""
        terms = [(t.weight, t.text, t.photo_id) for t in body.terms]
        return await searched(backend.compose, terms, opts=body.options())

    @app.post(
        "/api/image",
        response_model=SearchResponse,
        tags=["search"],
        openapi_extra={"requestBody": _IMAGE_BODY},
    )
    async def image_search(
        request: Request,
        opts: OptionsDep,
        q: Annotated[Text | None, Query(description="text to compose with")] = None,
    ) -> dict[str, Any]:
        """Photos like an uploaded image (raw body or multipart field `image`, at most 20 MB),
        composed with the text `q` when given (`photo + q`, in the search box's syntax). The
        results' `query` names the upload by its file name (else "uploaded photo"). The image
        is kept in memory only; page with `GET /api/image/{upload}`."""
        upload = await read_upload(request)
        image = await run_in_threadpool(decode_upload, upload.data)
        token = backend.uploads.put(image, upload.label)
        return await _image_results(request, image, q, upload.label, opts, token)

    @app.get("/api/image/{upload}", response_model=SearchResponse, tags=["search"])
    async def image_page(
        request: Request,
        upload: Text,
        opts: OptionsDep,
        q: Annotated[Text | None, Query()] = None,
    ) -> dict[str, Any]:
        """More results for an image sent before (404 `upload_expired` once forgotten)."""
        stored = backend.uploads.get(upload)
        return await _image_results(request, stored.image, q, stored.label, opts, upload)

    async def _image_results(
        request: Request, image: Any, q: str | None, label: str, opts: Options, token: str
    ) -> dict[str, Any]:
        """An image search: batched with others when it is the image alone (the uploads were
        read and decoded before, off the search thread), else composed on its own."""
        if q and q.strip():
            return await searched(backend.image, image, q, label, opts=opts, upload=token)
        future = await run_in_threadpool(backend.submit_image, image, label, opts)
        return shape(await answered(request, future), opts, token)

    @app.get("/api/photos/{photo_id}", response_model=PhotoResponse, tags=["photos"])
    async def photo(photo_id: PhotoIdPath) -> dict[str, Any]:
        """A photo's path, size and date."""
        return _photo_json(await run_in_threadpool(backend.photo, photo_id))

    @app.get("/api/photos/{photo_id}/similar", response_model=SearchResponse, tags=["search"])
    async def similar(photo_id: PhotoIdPath, opts: OptionsDep) -> dict[str, Any]:
        """Photos like a library photo (it and its exact duplicates left out)."""
        return await searched(backend.similar, photo_id, opts=opts)

    @app.get(
        "/api/photos/{photo_id}/thumbnail",
        response_class=FileResponse,
        tags=["photos"],
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def thumbnail(
        request: Request,
        photo_id: PhotoIdPath,
        size: Annotated[str, Query(pattern="^(small|large)$")] = "small",
    ) -> Response:
        """A JPEG thumbnail (EXIF-oriented; `small` for grids, `large` for the detail view),
        made on first request and cached in the library folder."""
        try:
            path, digest = await run_in_threadpool(backend.thumbnail, photo_id, size)
        except ImageError as exc:
            raise ApiError(404, "unreadable", f"the photo file cannot be read: {exc}") from None
        etag = f'"{digest[:16]}-{SIZES[size]}"'
        headers = {"ETag": etag, "Cache-Control": THUMB_CACHE}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if isinstance(path, bytes):  # made, but the cache could not be written (disk full)
            return Response(path, media_type="image/jpeg", headers=headers)
        return FileResponse(path, media_type="image/jpeg", headers=headers)

    @app.get("/api/photos/{photo_id}/original", response_class=FileResponse, tags=["photos"])
    async def original(photo_id: PhotoIdPath) -> Response:
        """The photo file itself, by library id only (no path in a URL ever reaches the disk);
        only an image file inside the photo folder is ever sent (see web.files)."""
        found, f, media_type, size = await run_in_threadpool(backend.original, photo_id)
        # A photo in object storage has a URL for its path: its name is its key's last part.
        name = display_path(
            found.path.name if isinstance(found.path, PurePath) else found.relpath.rsplit("/")[-1]
        )
        disposition = (
            f'inline; filename="{name}"'
            if name.isascii() and '"' not in name
            else f"inline; filename*=utf-8''{quote(name)}"
        )
        headers = {"Content-Length": str(size), "Content-Disposition": disposition}
        return StreamingResponse(read_chunks(f), media_type=media_type, headers=headers)


def _add_duplicate_routes(app: FastAPI, backend: Backend) -> None:
    @app.get("/api/duplicates", response_model=DuplicatesResponse, tags=["duplicates"])
    async def duplicates(
        kind: Annotated[Kind, Query(description="identical, same, similar or all")] = "all",
        threshold: Annotated[
            float | None,
            Query(ge=MIN_SIMILAR_COS, le=1.0, description="cosine for similar shots"),
        ] = None,
        under: Annotated[
            Text | None, Query(description="folder, relative to the photo folder")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_GROUPS, description="groups per page")] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="groups to skip")] = 0,
    ) -> dict[str, Any]:
        """Duplicate groups (`koclip-search duplicates`), largest first, each with its
        suggested keeper and why."""
        query = DuplicateQuery(kind, threshold, under)
        groups = await run_in_threadpool(backend.duplicates, query)
        folder = await run_in_threadpool(backend.aside_folder)
        return {
            "groups": [_group_json(g) for g in groups[offset : offset + limit]],
            "total": len(groups),
            "offset": offset,
            "limit": limit,
            "aside_folder": json_path(folder),
        }

    @app.post("/api/duplicates/set-aside", response_model=AsideResponse, tags=["duplicates"])
    async def set_aside(body: SetAsideRequest) -> dict[str, Any]:
        """Move a group's photos but `keep` into the set-aside folder (as `duplicates
        --set-aside`: never deleted, never overwritten, journaled). 409 `stale_group` if they
        are no longer that group; 409 `cross_filesystem` if moving means copying and
        `cross_filesystem` was not set; 423 `library_busy` while another process writes."""
        query = DuplicateQuery(body.kind, body.threshold, body.under)
        report = await run_in_threadpool(
            backend.set_aside, body.photos, body.keep, query, body.cross_filesystem
        )
        return await _aside_json(report)

    @app.post("/api/duplicates/restore", response_model=AsideResponse, tags=["duplicates"])
    async def restore(body: RestoreRequest) -> dict[str, Any]:
        """Put set-aside photos back where they were, with their ids (as `duplicates
        --restore`): those named, or all."""
        report = await run_in_threadpool(backend.restore, body.photos)
        return await _aside_json(report)

    async def _aside_json(report: Any) -> dict[str, Any]:
        folder = await run_in_threadpool(backend.aside_folder)
        return {**report.to_json(), "ids": report.ids, "folder": json_path(folder)}


_IMAGE_BODY = {
    "required": True,
    "description": f"the photo, at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB",
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        },
    },
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("koclip-search")
    except PackageNotFoundError:
        return "0"
