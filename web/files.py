"""Opening a library photo for the web: never a file outside the photo root, only image bytes.

The file is opened first and then judged by what was opened, so nothing can be swapped in
between the check and the read: the open descriptor's real path (Linux: /proc/self/fd) must
lie inside the real photo root, and it must be a regular file. A symlink inside the root that
points inside it still works; one that leads out of it (to /etc/passwd, or a linked folder
elsewhere, even one indexed with `index --follow-links`) is answered 404.

A photo of a root in object storage is read through `storage` in one bounded GET (at most
koclip.names.MAX_PHOTO_BYTES, refused from its size before any byte is downloaded) into
memory, only by a plain key under the root's prefix (no `..`, no empty or leading part); an
object that is gone is answered 404, as a file that is.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image

from koclip import ImageError
from koclip.images.preprocess import open_image
from koclip.names import MAX_PHOTO_BYTES, MAX_PIXELS
from web.budget import DECODES, LIBRARY_WAIT, pixels_to_decode
from web.errors import ApiError

if TYPE_CHECKING:
    from storage import ObjectRoot

CHUNK = 1 << 16


def open_photo(root: Path, path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file whose real path lies inside `root`;
    ApiError 404 otherwise (gone, unreadable, a link out of the root, not a file)."""
    try:
        # O_NONBLOCK: a FIFO named like a photo must not hang the request; no effect on files.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        raise ApiError(404, "unreadable", "the photo file is no longer there") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _inside(_real_path(fd, path), root):
            raise ApiError(404, "unreadable", "the photo file is not a file in the photo folder")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_object(root: ObjectRoot, key: str, max_bytes: int = MAX_PHOTO_BYTES) -> io.BytesIO:
    """The object `key` (relative to `root`'s prefix) read into memory, if it is a plain key
    under the prefix and at most `max_bytes`; ApiError 404 otherwise (gone, too large, not
    readable). A store that does not answer, or refuses the credentials, raises its own
    storage error (503)."""
    from storage import ObjectError, ObjectGoneError, ObjectTooLargeError

    if not plain_key(key):
        raise ApiError(404, "unreadable", "the photo is not an object under the photo root")
    try:
        return root.open(key, max_bytes=max_bytes)
    except ObjectGoneError:
        raise ApiError(404, "unreadable", "the photo is no longer in the bucket") from None
    except ObjectTooLargeError as exc:
        raise ApiError(404, "unreadable", f"the photo cannot be sent: {exc}") from None
    except ObjectError as exc:
        raise ApiError(404, "unreadable", f"the photo cannot be read: {exc}") from None


def plain_key(key: str) -> bool:
    """Whether `key` names an object under a root's prefix and nothing else: relative, no
    empty part, no `.` or `..` part, no NUL."""
    return bool(key) and "\0" not in key and all(p not in ("", ".", "..") for p in key.split("/"))


def image_type(f: BinaryIO) -> str:
    """The media type of the image in `f`, after checking that it decodes (ImageError if not);
    `f` is left open at its start, so the bytes checked are the bytes then sent.

    Pillow reads through a duplicate of the descriptor: it closes the file it was given once
    an image that may hold several frames (PNG, GIF, TIFF...) is loaded, and `f` must stay
    open to be sent.
    """
    try:
        with DECODES.reserve(pixels_to_decode(f), LIBRARY_WAIT), _duplicate(f) as checked:
            open_image(checked, max_pixels=MAX_PIXELS, draft=True).close()
        with _duplicate(f) as checked, Image.open(checked) as image:
            kind = image.format or ""
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError, ValueError):
            f.seek(0)
    return Image.MIME.get(kind) or f"image/{kind.lower() or 'octet-stream'}"


def _duplicate(f: BinaryIO) -> BinaryIO:
    """A second file object on `f`'s open file, at its start (closing it leaves `f` open);
    for bytes in memory (an object read from a bucket) a second reader of the same bytes."""
    if isinstance(f, io.BytesIO):
        return io.BytesIO(f.getvalue())  # shares the bytes: no copy until written
    dup = os.fdopen(os.dup(f.fileno()), "rb")
    dup.seek(0)
    return dup


def read_chunks(f: BinaryIO) -> Iterator[bytes]:
    """The rest of `f`, chunk by chunk; closes it at the end (or when the client goes)."""
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def _real_path(fd: int, opened: Path) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    # No /proc (macOS, BSD): the path's real target, if it is the very file we hold.
    real = os.path.realpath(opened)
    try:
        st, held = os.stat(real), os.fstat(fd)
    except OSError:
        return ""
    return real if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino) else ""


def _inside(real: str, root: Path) -> bool:
    top = os.path.realpath(root)
    return bool(real) and (real == top or real.startswith(top.rstrip("/") + "/"))
