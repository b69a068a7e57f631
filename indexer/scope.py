"""Stage 1 for a watcher's pass: discovery limited to the paths that changed.

The same rules as `discover` (hidden names, --exclude, the library folder left out, symlinks
followed), applied to a few files and folders instead of the whole tree.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

from db import IMAGE_SUFFIXES
from indexer.discover import FoundFile, UnreadableDir, discover, is_excluded
from koclip.preprocess import nfc


def scope_of(paths: Iterable[str]) -> tuple[str, ...]:
    """The changed paths (relative, os-native) with those under another one left out, sorted."""
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}):
        if kept and (path == kept[-1] or path.startswith(kept[-1] + os.sep)):
            continue
        kept.append(path)
    return tuple(kept)


def as_relpath(path: str) -> str:
    """A relative, os-native path as the library stores it: POSIX and NFC."""
    return nfc(path.replace(os.sep, "/"))


def discover_paths(
    root: Path,
    paths: Collection[str],
    *,
    exclude: Sequence[str] = (),
    skip: Iterable[Path] = (),
) -> Iterator[FoundFile | UnreadableDir]:
    """Image files at or under `paths` (relative to `root`, os-native, see `scope_of`).

    A path that is gone yields nothing: what the library holds there is gone too.
    """
    if not os.path.isdir(root):
        # The root went away (unmounted): its photos are not gone, only out of sight.
        yield UnreadableDir(".", "the photo folder is not there")
        return
    skip = [Path(p).resolve() for p in skip]
    for path in scope_of(paths):
        rel = as_relpath(path)
        if _hidden_or_excluded(rel, exclude):
            continue
        full = Path(root) / path
        if any(full == s or s in full.parents for s in skip):
            continue
        try:
            st = full.stat()
        except OSError:
            continue  # gone (or a broken link): nothing to index
        if full.is_dir():
            yield from _walk(full, rel, exclude, skip)
        elif os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES and full.is_file():
            yield FoundFile(rel, os.fspath(full), st.st_size, st.st_mtime_ns)


def _walk(
    folder: Path, rel: str, exclude: Sequence[str], skip: list[Path]
) -> Iterator[FoundFile | UnreadableDir]:
    """`discover` of a subfolder, its paths made relative to the photo root again."""
    for item in discover(folder, skip=skip):
        if isinstance(item, UnreadableDir):
            sub = rel if item.relpath == "." else f"{rel}/{item.relpath}"
            yield UnreadableDir(sub, item.reason)
            continue
        full_rel = f"{rel}/{item.relpath}"
        # --exclude globs match paths from the photo root, so they are checked here.
        if not _hidden_or_excluded(full_rel, exclude):
            yield FoundFile(full_rel, item.path, item.size, item.mtime_ns)


def _hidden_or_excluded(rel: str, exclude: Sequence[str]) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return True
    return any(is_excluded("/".join(parts[: i + 1]), exclude) for i in range(len(parts)))
