"""Stage 1 for a watcher's pass: discovery limited to the paths that changed.

The same rules as `discover` (hidden names, --exclude, the library folder left out, links out
of the root not followed unless asked), applied to a few files and folders instead of the whole tree.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

from db import IMAGE_SUFFIXES, path_key
from indexer.discover import (
    FoundFile,
    OutsideLink,
    UnreadableDir,
    discover,
    inside,
    is_excluded,
    through_inner_link,
)


def scope_of(paths: Iterable[str]) -> tuple[str, ...]:
    """The changed paths (relative, os-native) with those under another one left out, sorted."""
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}):
        if kept and (path == kept[-1] or path.startswith(kept[-1] + os.sep)):
            continue
        kept.append(path)
    return tuple(kept)


def as_relpath(path: str) -> str:
    """A relative, os-native path as the library keys it: POSIX and NFC (db.path_key)."""
    return path_key(path.replace(os.sep, "/"))


def discover_paths(
    root: Path,
    paths: Collection[str],
    *,
    exclude: Sequence[str] = (),
    skip: Iterable[Path] = (),
    follow_links: bool = False,
) -> Iterator[FoundFile | UnreadableDir | OutsideLink]:
    """Image files at or under `paths` (relative to `root`, os-native, see `scope_of`).

    A path that is gone yields nothing: what the library holds there is gone too. A path
    that leads out of the root through a symlink (itself or a folder above it) is an
    OutsideLink unless `follow_links`, as in a full pass.
    """
    if not os.path.isdir(root):
        # The root went away (unmounted): its photos are not gone, only out of sight.
        yield UnreadableDir(".", "the photo folder is not there")
        return
    skip = [Path(p).resolve() for p in skip]
    root_real = os.path.realpath(root)
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
        is_dir = full.is_dir()
        is_image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES and full.is_file()
        if not (is_dir or is_image):
            continue
        # Through a link to a folder inside the root (the folder itself for a folder, the
        # folder above for a file): an alias a full pass never enters.
        if through_inner_link(root_real, path if is_dir else os.path.dirname(path)):
            continue
        if not follow_links and not inside(os.path.realpath(full), root_real):
            yield OutsideLink(rel, is_dir)
        elif is_dir:
            yield from discover(
                root, exclude=exclude, skip=skip, follow_links=follow_links, under=path
            )
        else:
            disk = path.replace(os.sep, "/")
            yield FoundFile(
                rel, os.fspath(full), st.st_size, st.st_mtime_ns, "" if disk == rel else disk
            )


def _hidden_or_excluded(rel: str, exclude: Sequence[str]) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return True
    return any(is_excluded("/".join(parts[: i + 1]), exclude) for i in range(len(parts)))
