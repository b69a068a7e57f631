"""Photos sent to the server to search by: size-limited, decoded in memory, never stored on disk."""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict
from functools import partial
from typing import Any, NamedTuple

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from koclip import ImageError
from koclip.images.preprocess import IMAGE_SIZE, open_image
from koclip.names import MAX_PIXELS
from search import text_problem
from web.budget import DECODES, UPLOAD_WAIT, pixels_to_decode
from web.errors import ApiError
from web.hosts import body_limited

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Multipart framing around the file: boundaries, headers, a few small form fields.
_MULTIPART_SLACK = 64 * 1024
# What the server's body limit lets through to the upload route (whose own checks, above, say
# first why an upload is too large).
UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + 2 * _MULTIPART_SLACK
UPLOAD_FIELD = "image"
# How an upload is echoed (the `query` of its results) when it comes without a file name.
UPLOAD_LABEL = "uploaded photo"
_MAX_LABEL = 100
# The longest side an upload keeps for paging, in times its short side: the model only sees
# the centre square, and a 100000x1000 strip would otherwise be kept whole (300 MB).
KEEP_ASPECT = 2


class Upload(NamedTuple):
    """An upload's bytes, and the label its results echo: its file name, or UPLOAD_LABEL."""

    data: bytes
    label: str


class StoredUpload(NamedTuple):
    """A decoded upload kept for paging, with its label."""

    image: Image.Image
    label: str


class UploadTooLarge(ApiError):
    """The request body went past the limit (checked while it streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"the photo is larger than {limit // (1024 * 1024)} MB")


def upload_label(filename: str | None) -> str:
    """The name a client gave its file (its last path segment, shortened), or UPLOAD_LABEL."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or text_problem(name) is not None:
        return UPLOAD_LABEL
    return name if len(name) <= _MAX_LABEL else name[: _MAX_LABEL - 1] + "…"


async def read_upload(request: Request, limit: int = MAX_UPLOAD_BYTES) -> Upload:
    """The image of a request: a raw body (`Content-Type: image/...`) or a multipart form
    with an `image` field; 413 past `limit`, 400 when there is no image."""
    filename = None
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise UploadTooLarge(limit)  # refuse before reading a byte
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        too_large = partial(UploadTooLarge, MAX_UPLOAD_BYTES)
        receive = body_limited(request.receive, limit + _MULTIPART_SLACK, too_large)
        limited = Request(request.scope, receive)
        # Starlette spools big parts to the system temp folder, never near the photos.
        async with limited.form(max_files=1, max_fields=16) as form:
            field = form.get(UPLOAD_FIELD)
            if not isinstance(field, UploadFile):
                raise ApiError(400, "no_image", f"the form has no file field {UPLOAD_FIELD!r}")
            data = await field.read(limit + 1)
            filename = field.filename
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(limit)
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise UploadTooLarge(limit)
    if not data:
        raise ApiError(400, "no_image", "no photo was sent")
    return Upload(data, upload_label(filename))


def decode_upload(data: bytes) -> Image.Image:
    """Decode with the indexer's guards (format sniffing, pixel limit, EXIF orientation); 400 if
    bad, 503 `busy` when the server's decode budget (web.budget) stays taken.

    Only what the encoder can use is returned (and kept for paging): the centre of the photo at
    most KEEP_ASPECT times as long as it is wide (the model sees its centre square), at most
    twice the model input on its short side; the full decode is dropped before the budget is
    released, so the upload store holds at most ~5 MB a photo."""
    with DECODES.reserve(pixels_to_decode(data), UPLOAD_WAIT):
        try:
            image = open_image(io.BytesIO(data), max_pixels=MAX_PIXELS)
        except ImageError as exc:
            raise ApiError(400, "bad_image", f"cannot read the photo: {exc}") from None
        box = _centre(image.size)
        short = min(box[2] - box[0], box[3] - box[1])
        scale = min(1.0, 2 * IMAGE_SIZE / short)
        size = (
            max(1, round((box[2] - box[0]) * scale)),
            max(1, round((box[3] - box[1]) * scale)),
        )
        if scale < 1.0 or box != (0, 0, *image.size):
            resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.NEAREST
            full = image
            image = full.resize(size, resample, box=box, reducing_gap=3.0 if scale < 1 else None)
            full.close()
            del full
    return image


def _centre(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box of the centre of an image of `size`, at most KEEP_ASPECT:1."""
    width, height = size
    if width > KEEP_ASPECT * height:
        keep = KEEP_ASPECT * height
        left = (width - keep) // 2
        return left, 0, left + keep, height
    if height > KEEP_ASPECT * width:
        keep = KEEP_ASPECT * width
        top = (height - keep) // 2
        return 0, top, width, top + keep
    return 0, 0, width, height


class UploadStore:
    """The last few decoded uploads by random token, so paging does not send the photo again."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, image: Image.Image, label: str = UPLOAD_LABEL) -> str:
        """Keep `image` and its label (in memory only) and return its token."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = StoredUpload(image, label)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> StoredUpload:
        """The image (and label) behind a token; 404 once it has been evicted."""
        with self._lock:
            stored = self._items.get(token)
            if stored is not None:
                self._items.move_to_end(token)
        if stored is None:
            raise ApiError(
                404, "upload_expired", "that photo is no longer on the server; send it again"
            )
        return stored
