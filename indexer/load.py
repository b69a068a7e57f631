"""Stage 2: read one file: content hash, metadata (its facts: indexer.facts), decode, preprocess.

Runs in a thread pool (of this process, or of a Ray worker: see indexer.executor): hashlib
and PIL release the GIL on large buffers, so threads overlap with each other and with the
encoder.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import numpy as np
from PIL import Image

from db import hash_bytes, hash_file
from indexer.discover import FoundFile
from indexer.facts import PhotoFacts, read_facts
from indexer.phash import fingerprints
from indexer.plan import UNREADABLE, Task
from koclip.errors import ImageError, ImageTooLargeError
from koclip.images.preprocess import open_image, preprocess
from storage import ObjectChangedError, ObjectDeniedError, ObjectError, ObjectGoneError

# Reads a found object's bytes (indexer.objects.object_reader); raises storage errors.
Reader = Callable[[FoundFile], bytes]

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


@dataclass
class Loaded:
    """What a worker made of a task; exactly one of error / touched / reuse / pixels applies."""

    task: Task
    size: int
    mtime_ns: int
    content_hash: str = ""
    error: str | None = None
    touched: bool = False  # same content as indexed (only size/mtime to refresh)
    reuse: bool = False  # content already has a stored embedding: no decode, no encode
    pixels: np.ndarray | None = None  # (224, 224, 3) float32, until encoded
    embedding: np.ndarray | None = None  # (dim,) unit vector, once encoded (pixels then dropped)
    width: int = 0
    height: int = 0
    taken_at: datetime | None = None
    taken_at_source: str = "mtime"
    phash: int | None = (
        None  # perceptual fingerprints of the decoded pixels (koclip.images.perceptual)
    )
    pthumb: bytes | None = None
    facts: PhotoFacts | None = None  # what its metadata says (None: not read, see `load`)


def load(
    task: Task,
    *,
    known_hashes: Container[str],
    max_pixels: int | None,
    force_decode: bool = False,
    facts: bool = True,
    read: Reader | None = None,
) -> Loaded:
    """Hash the file; decode and preprocess it unless its content is already indexed, and
    read its facts from the header the size is read from (`facts=False` skips them: the
    benchmark's baseline; the date is then read alone, as before facts were stored).

    With `read`, the file is an object of a store: its bytes are read once (bounded by
    size before the download, see storage.ObjectRoot.read) and everything else works on
    them in memory, with the same guards. An object that changed or vanished while it was
    read is a failure tried again next run; a store that stops answering (or refuses the
    credentials) raises, ending the run after the batches already committed."""
    file = task.file
    data: bytes | None = None
    if read is None:
        try:
            chash, size, mtime_ns = hash_file(file.path)
        except OSError as exc:
            reason = f"{UNREADABLE}: {exc.strerror or exc}"
            return Loaded(task, file.size, file.mtime_ns, error=reason)
    else:
        try:
            data = read(file)
        except (ObjectChangedError, ObjectGoneError, ObjectDeniedError) as exc:
            return Loaded(task, file.size, file.mtime_ns, error=f"{UNREADABLE}: {exc}")
        except ObjectError as exc:  # too large: stays failed until the object changes
            return Loaded(task, file.size, file.mtime_ns, error=str(exc))
        chash, size, mtime_ns = hash_bytes(data), len(data), file.mtime_ns
    out = Loaded(task, size, mtime_ns, content_hash=chash)
    if task.known is not None and task.known.content_hash == chash:
        out.touched = True
        return out
    if chash in known_hashes and not force_decode:
        out.reuse = True
        return out

    def source() -> str | BinaryIO:
        return file.path if data is None else io.BytesIO(data)

    try:
        if data is not None and not data:
            raise ImageError("empty file (0 bytes)")
        image = open_image(source(), max_pixels=max_pixels, draft=True)
        out.pixels = preprocess(image)
        out.phash, out.pthumb = fingerprints(image)
        if facts:
            out.width, out.height, out.facts = read_header(source())
            out.taken_at = out.facts.taken_at
        else:
            out.width, out.height, out.taken_at = read_metadata(source())
    except ImageTooLargeError as exc:
        out.error = f"{exc} (raise --max-megapixels to index it)"
        return out
    except ImageError as exc:
        out.error = str(exc)
        return out
    except Exception as exc:  # a decoder bug on one odd file must not stop the run
        out.error = f"cannot decode ({type(exc).__name__}: {exc})"
        return out
    if out.taken_at is None:
        out.taken_at = mtime_datetime(mtime_ns)
    else:
        out.taken_at = out.taken_at.replace(tzinfo=None)  # its local wall time, as stored
        out.taken_at_source = "exif"
    return out


def read_header(path: str | BinaryIO) -> tuple[int, int, PhotoFacts]:
    """(width, height) as displayed (after EXIF orientation), and the photo's facts: one open
    of the header, no decode (the decode that precedes it already validated the file)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            facts = read_facts(im)
            try:
                orientation = im.getexif().get(_ORIENTATION)
            except Exception:  # broken EXIF: read_facts has noted it
                orientation = None
    except Exception as exc:  # gone or changed since the decode: a failure, like the decode
        raise ImageError(f"cannot read its header ({type(exc).__name__})") from None
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return width, height, facts


def read_metadata(path: str | BinaryIO) -> tuple[int, int, datetime | None]:
    """(width, height) as displayed (after EXIF orientation), and EXIF DateTimeOriginal if any.

    Reads the header only; the decode that precedes it already validated the file.
    """
    with Image.open(path) as im:
        width, height = im.size
        try:
            exif = im.getexif()
            orientation = exif.get(_ORIENTATION)
            taken = parse_exif_datetime(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
        except Exception:  # broken EXIF must not cost the photo: PIL raises many types here
            orientation, taken = None, None
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return width, height, taken


def parse_exif_datetime(value: object) -> datetime | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (naive local time) -> datetime; None if absent or invalid."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # "0000:00:00 00:00:00" and other camera placeholders


def mtime_datetime(mtime_ns: int) -> datetime:
    """A file's mtime as naive local time (the same convention as EXIF)."""
    return datetime.fromtimestamp(mtime_ns / 1e9)
