"""Stage 1: walk the photo folder and yield image files (and folders that could not be read).

Symlinks: by default a link whose target lies outside the photo root (a file, or a folder)
is not followed; it is reported as an `OutsideLink`, which the run records as a failure with
the reason, so nothing is left out silently. `follow_links=True` (`index --follow-links`)
follows every link. A link to a file inside the root is indexed as a photo of its own (an
alias). A link to a folder inside the root is never entered: that folder is indexed once, at
its own path, whichever pass sees it first (a watcher's pass over the link included), so no
photo gets a second path through a link and loops end. A folder reached twice (by its device
and inode, e.g. a bind mount) is entered once.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from db import IMAGE_SUFFIXES, path_key
from koclip.images.preprocess import nfc

OUTSIDE_LINK_REASON = (
    "a link to outside the photo folder, not followed (index --follow-links follows it)"
)


@dataclass(frozen=True)
class FoundFile:
    """An image file: `relpath` is its key (POSIX, NFC, relative to the root; see
    db.path_key); `path` is what the load stage opens (the real path of a file; an object's
    key relative to the root, see indexer.objects); `disk_relpath` the relative path as the
    file system (or store) spells it, when that is not `relpath` ("" when it is); `etag` an
    object's ETag ("" for a file)."""

    relpath: str
    path: str
    size: int
    mtime_ns: int
    disk_relpath: str = ""
    etag: str = ""

    @property
    def on_disk(self) -> str:
        """The relative path as the file system spells it (os.fsdecode form)."""
        return self.disk_relpath or self.relpath


@dataclass(frozen=True)
class UnreadableDir:
    """A folder whose listing failed; its contents are left as they were in the library."""

    relpath: str
    reason: str


@dataclass(frozen=True)
class OutsideLink:
    """A symlink to an image file or a folder outside the photo root, left unfollowed."""

    relpath: str
    is_dir: bool
    reason: str = OUTSIDE_LINK_REASON


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
    root: Path,
    *,
    exclude: Sequence[str] = (),
    skip: Iterable[Path] = (),
    follow_links: bool = False,
    under: str = "",
) -> Iterator[FoundFile | UnreadableDir | OutsideLink]:
    """Depth-first, name-sorted walk of `root`, or of its subfolder `under` (relative,
    os-native; the paths yielded stay relative to `root`).

    Hidden files and folders and those in `skip` (the library) are left out, as are
    `exclude` globs. Symlinks inside the root are followed, those leading out of it only
    with `follow_links` (else an OutsideLink is yielded); a folder already visited (by its
    device and inode) is not entered again, and a link to a folder inside the root is not
    entered at all (its folder is walked at its own path), so loops end.
    """
    exclude = _lower(exclude)
    skip_ids = {_dir_id(p) for p in skip if os.path.isdir(p)}
    root_real = os.path.realpath(root)
    start = os.path.join(os.fspath(root), under) if under else os.fspath(root)
    seen = {_dir_id(start)}
    prefix = f"{path_key(under.replace(os.sep, '/'))}/" if under else ""
    disk_prefix = f"{under.replace(os.sep, '/')}/" if under else ""
    # (folder to list, its key prefix, its on-disk relative prefix)
    stack: list[tuple[str, str, str]] = [(start, prefix, disk_prefix)]
    while stack:
        dirpath, rel, disk_rel = stack.pop()
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
            entry_rel = f"{rel}{path_key(entry.name)}"
            entry_disk = f"{disk_rel}{entry.name}"
            try:
                is_dir = entry.is_dir()
                if is_excluded(entry_rel, exclude) or not (is_dir or _is_image(entry.name)):
                    continue
                if entry.is_symlink():
                    leads_in = inside(os.path.realpath(entry.path), root_real)
                    if is_dir and leads_in:
                        continue  # an alias of a folder that is walked at its own path
                    if not follow_links and not leads_in:
                        if is_dir or entry.is_file():
                            yield OutsideLink(entry_rel, is_dir)
                        continue
                if is_dir:
                    st = entry.stat()
                    ident = (st.st_dev, st.st_ino)
                    if ident in seen or ident in skip_ids:
                        continue
                    seen.add(ident)
                    subdirs.append((entry.path, entry_rel + "/", entry_disk + "/"))
                elif entry.is_file():
                    st = entry.stat()
                    disk = "" if entry_disk == entry_rel else entry_disk
                    yield FoundFile(entry_rel, entry.path, st.st_size, st.st_mtime_ns, disk)
            except OSError:
                continue  # vanished or a broken link while we looked: nothing to index
        stack.extend(reversed(subdirs))


def through_inner_link(root_real: str, path: str) -> bool:
    """True if `path` (relative to the root, os-native) passes through a link to a folder
    inside the root: an alias that `discover` never enters."""
    full = os.path.join(root_real, path)
    real = os.path.realpath(full)
    return real != os.path.normpath(full) and inside(real, root_real)


def inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip("/") + "/")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _lower(patterns: Iterable[str]) -> tuple[str, ...]:
    return tuple(nfc(p).lower().rstrip("/") for p in patterns)


def _dir_id(path: Path | str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)
