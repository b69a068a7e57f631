"""JPEG thumbnails of library photos, made once (EXIF-oriented) and cached in the library folder."""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from koclip.images.preprocess import open_image
from koclip.names import MAX_PIXELS
from web.budget import DECODES, LIBRARY_WAIT, pixels_to_decode

log = logging.getLogger("koclip_search.web")

# Long side in pixels: "small" fills a grid cell on a 2x display, "large" the detail view.
SIZES = {"small": 384, "large": 1600}
QUALITY = 82
THUMBS_DIRNAME = "thumbs"


class ThumbnailCache:
    """`<library>/thumbs/<size>/<photo id>-<content hash>.jpg`, written atomically.

    The content hash in the name means a rebuilt library (ids start over) or a changed
    file (new id, new hash) never serves a stale picture. A read-only library folder
    falls back to a private temporary folder.
    """

    def __init__(self, library_dir: Path) -> None:
        self.directory = _writable_dir(Path(library_dir) / THUMBS_DIRNAME)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, photo_id: int, content_hash: str, size: str) -> Path:
        """Where the thumbnail of one photo at one size lives (it may not exist yet)."""
        if size not in SIZES:
            raise ValueError(f"unknown thumbnail size {size!r}")
        return self.directory / size / f"{int(photo_id)}-{content_hash[:16]}.jpg"

    def get(
        self,
        photo_id: int,
        content_hash: str,
        open_source: Callable[[], BinaryIO],
        size: str,
        *,
        reopen: bool = True,
    ) -> Path | bytes:
        """The cached thumbnail, made first if needed from the file `open_source()` opens (it
        is opened every time, and whatever it raises is raised: a photo no longer in the photo
        folder has no thumbnail either); ImageError if it cannot be read. `reopen=False` (a
        photo in object storage, where opening means downloading it) opens it only to make
        the thumbnail: a cached one is served as long as the library holds the photo.

        When the cache cannot be written (disk full, quota, read-only, permissions) the JPEG
        is returned as bytes instead, so the page keeps working; the cause goes to the log.
        """
        target = self.path_for(photo_id, content_hash, size)
        if not reopen and target.is_file():
            return target
        # Opened every time, cached or not: a thumbnail is shown only while its photo is still
        # a file inside the photo folder (open_source raises otherwise), as the original is.
        with open_source() as source:
            if target.is_file():
                return target
            # One maker per file: a page asking for 40 thumbnails twice must not decode 80 photos.
            with self._lock_for(target.name + size):
                if not target.is_file():
                    data = _jpeg(make_thumbnail(source, SIZES[size]))
                    try:
                        _write_atomic(data, target)
                    except OSError as exc:
                        log.warning(
                            "cannot cache the thumbnail %s (%s)", target, exc.strerror or exc
                        )
                        return data
        return target

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            if len(self._locks) > 1024:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault(key, threading.Lock())


def make_thumbnail(source: Path | BinaryIO, long_side: int) -> Image.Image:
    """The photo, EXIF-oriented, shrunk to fit `long_side` (never enlarged)."""
    # draft decoding: a 12 MP JPEG decodes at 1/4 or 1/8 scale, still >= long_side per side.
    # The decode counts against the server's pixel budget (web.budget) until it is shrunk.
    half = (long_side + 1) // 2
    with DECODES.reserve(pixels_to_decode(source, half), LIBRARY_WAIT):
        image = open_image(source, max_pixels=MAX_PIXELS, draft=True, size=half)
        image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    return out.getvalue()


def _write_atomic(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)  # readers see the old state or the whole file, never half of it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _writable_dir(preferred: Path) -> Path:
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=preferred, prefix=".probe-"):
            pass
        return preferred
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="koclip-thumbs-"))
        log.warning("cannot write thumbnails to %s (%s); using %s", preferred, exc, fallback)
        return fallback
