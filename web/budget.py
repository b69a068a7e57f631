"""One pixel budget for every decode the server makes: uploads, thumbnails, originals' checks.

Each image is limited on its own (koclip.preprocess.MAX_PIXELS), but four uploads of a 100 MP
PNG decoded at once would still hold ~3 GB. So the process decodes at most `DECODES.total`
pixels at a time: a decode first reserves the pixels it will hold (read from the header, after
JPEG draft scaling), waits a little for others to finish, and past that wait the request is
answered 503 `busy` with Retry-After instead of queueing without bound. When the last large
decode ends, the freed memory is handed back to the system (glibc keeps it otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from koclip.images.preprocess import DRAFT_FACTOR, IMAGE_SIZE, MAX_PIXELS
from web.errors import ApiError

# Seconds an upload waits for pixels before a 503 (the sender can try again), and a library
# photo's thumbnail or check (the page asks for them itself, a few at a time per browser).
UPLOAD_WAIT = 3.0
LIBRARY_WAIT = 30.0
RETRY_AFTER = 2
# A decode this large hands memory back to the system when nothing else is decoding.
TRIM_PIXELS = 4_000_000


class ServerBusy(ApiError):
    """Too many pixels are being decoded right now, or too many searches wait (`message`):
    503 `busy`, with Retry-After."""

    def __init__(self, retry_after: int = RETRY_AFTER, message: str | None = None) -> None:
        super().__init__(
            503,
            "busy",
            message or f"the server is decoding other large photos; try again in {retry_after} s",
        )
        self.headers = {"Retry-After": str(retry_after)}


class DecodeBudget:
    """At most `total` pixels decoded at once in this process (one image may take it all)."""

    def __init__(self, total: int = MAX_PIXELS) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int, wait: float) -> Iterator[None]:
        """Hold `pixels` (at most the whole budget) while the block runs; ServerBusy when they
        are not free within `wait` seconds."""
        need = max(1, min(int(pixels), self.total))
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + need <= self.total, timeout=wait):
                raise ServerBusy()
            self.used += need
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                idle = self.used == 0
                self._cond.notify_all()
            if idle and need >= TRIM_PIXELS:
                release_memory()


DECODES = DecodeBudget()


def pixels_to_decode(source: bytes | Path | BinaryIO, size: int = IMAGE_SIZE) -> int:
    """Pixels that decoding `source` as koclip.preprocess.open_image does (JPEG drafted for
    `size`) will hold, from its header only; 1 when it cannot be read (the decode will say why).
    A file object is read through a duplicate of its descriptor and left where it was."""
    try:
        with _peek(source) as f, Image.open(f) as image:
            if image.format == "JPEG":
                image.draft("RGB", (DRAFT_FACTOR * size, DRAFT_FACTOR * size))
            width, height = image.size
    except Exception:  # not an image, damaged...: open_image reports it
        return 1
    return max(1, width * height)


@contextlib.contextmanager
def _peek(source: bytes | Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield f
    elif isinstance(source, io.BytesIO):  # an object read from a bucket: its bytes, shared
        yield io.BytesIO(source.getvalue())
    else:
        # The duplicate shares the file offset: put it back where the caller had it.
        fd = source.fileno()
        where = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                f.seek(0)
                yield f
        finally:
            os.lseek(fd, where, os.SEEK_SET)


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; nothing elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
