"""Perceptual fingerprints (koclip.images.perceptual) stored for photos indexed before schema 3.

New photos get theirs in the load stage; `fill_phashes` decodes (never encodes) the rest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from db import Library, photo_writes, photos, write_errors
from db.schema import chunks
from koclip.images.perceptual import grey_trimmed, phash, thumbnail
from koclip.images.preprocess import open_image


def fingerprints(image) -> tuple[int, bytes]:
    """(phash, thumbnail) of a decoded, oriented image."""
    grey = grey_trimmed(image)
    return phash(grey=grey), thumbnail(grey=grey)


# -- libraries indexed before schema 3 ---------------------------------------------------------


def missing_phashes(library: Library) -> list[tuple[int, str]]:
    """(id, on-disk relative path) of every photo without a perceptual hash yet."""
    with library.session() as s, s.begin():
        return photos.missing_phashes(s)


def fill_phashes(
    library: Library, photo_root: Path, *, workers: int = 2, max_pixels: int | None = None
) -> int:
    """Hash every photo stored without a perceptual hash (decode only, no encoding); hold the
    lock. Files that cannot be decoded now stay NULL and are tried again next run. Returns
    how many were filled."""
    todo = missing_phashes(library)
    filled = 0
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="koclip-phash") as pool:
        for chunk in chunks(todo, 256):
            hashes = pool.map(lambda t: _hash_file(photo_root / t[1], max_pixels), chunk)
            values = [
                {"id": pid, "phash": h[0], "pthumb": h[1]}
                for (pid, _), h in zip(chunk, hashes, strict=True)
                if h is not None
            ]
            if values:
                with write_errors(library.directory), library.session() as s, s.begin():
                    photo_writes.update_photos(s, values)
                filled += len(values)
    return filled


def _hash_file(path: Path, max_pixels: int | None) -> tuple[int, bytes] | None:
    try:
        return fingerprints(open_image(path, max_pixels=max_pixels, draft=True))
    except Exception:  # gone, unreadable or undecodable now: left for the next run
        return None
