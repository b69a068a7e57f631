"""Photo files as a library sees them: which names are images, and their content hashes
(equal hashes mean byte-identical files: moves, exact duplicates)."""

from __future__ import annotations

import hashlib
import os
import unicodedata

# The files the indexer takes and the names search's query parser reads as image terms.
# HEIC/HEIF/AVIF decode through pillow-heif (registered by koclip.images.preprocess.open_image);
# where it is missing they are recorded as failures with the reason, not silently skipped.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | {".heic", ".heif", ".avif"}
)
_CHUNK = 1 << 20


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(blake2b-128 hex of the whole file, size, mtime_ns), the stat taken from the same open file.

    Raises OSError. hashlib releases the GIL on large buffers, so threads hash in parallel.
    """
    digest = hashlib.blake2b(digest_size=16)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest(), st.st_size, st.st_mtime_ns


def hash_bytes(data: bytes) -> str:
    """The `photos.content_hash` of bytes in memory (an object read from a store)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_hash(path: str | os.PathLike[str]) -> str:
    """The `photos.content_hash` of a file (blake2b-128 hex of its bytes)."""
    return hash_file(path)[0]


def path_key(name: str) -> str:
    """The library's key for a file name or relative path as os.fsdecode gives it: NFC, with
    bytes that are not UTF-8 written as \\xNN escapes (SQLite text holds no lone surrogates).

    The key is for matching and display only; files are opened by their name on disk.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return unicodedata.normalize("NFC", text)
