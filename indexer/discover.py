"""Stage 1: walk the photo folder and yield image files (and folders that could not be read)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from db import IMAGE_SUFFIXES
from koclip.preprocess import nfc


@dataclass(frozen=True)
class FoundFile:
    """An image file: `relpath` is POSIX, NFC, relative to the root; `path` is the real path to open."""

    relpath: str
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class UnreadableDir:
    """A folder whose listing failed; its contents are left as they were in the library."""

    relpath: str
    reason: str


def is_excluded(relpath: str, patterns: Sequence[str]) -> bool:
    """True if a glob matches the relative path or its last part (case-insensitive)."""
    if not patterns:
        return False
    rel = relpath.lower()
    name = rel.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in _lower(patterns)
    )


def discover(
    root: Path, *, exclude: Sequence[str] = (), skip: Iterable[Path] = ()
) -> Iterator[FoundFile | UnreadableDir]:
    """Depth-first, name-sorted walk of `root`.

    Hidden files and folders and those in `skip` (the library) are left out, as are
    `exclude` globs. Symlinks are followed, but a folder already visited (by its device and
    inode) is not entered again, so loops end.
    """
    exclude = _lower(exclude)
    skip_ids = {_dir_id(p) for p in skip if os.path.isdir(p)}
    root_id = _dir_id(root)
    seen = {root_id}
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        dirpath, rel = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield UnreadableDir(
                rel.rstrip("/") or ".", f"cannot list folder: {exc.strerror or exc}"
            )
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            entry_rel = f"{rel}{nfc(entry.name)}"
            try:
                is_dir = entry.is_dir()
                if is_dir:
                    if is_excluded(entry_rel, exclude):
                        continue
                    st = entry.stat()
                    ident = (st.st_dev, st.st_ino)
                    if ident in seen or ident in skip_ids:
                        continue
                    seen.add(ident)
                    subdirs.append((entry.path, entry_rel + "/"))
                elif (
                    entry.is_file()
                    and _is_image(entry.name)
                    and not is_excluded(entry_rel, exclude)
                ):
                    st = entry.stat()
                    yield FoundFile(entry_rel, entry.path, st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # vanished or a broken link while we looked: nothing to index
        stack.extend(reversed(subdirs))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _lower(patterns: Iterable[str]) -> tuple[str, ...]:
    return tuple(nfc(p).lower().rstrip("/") for p in patterns)


def _dir_id(path: Path | str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)
