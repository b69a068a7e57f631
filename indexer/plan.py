"""Change detection: discovered files against the library, by size and mtime (cheap, no reads;
an object's listing adds its ETag); files that could not be read are tried again on every
run."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, or_, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from db import Failure, Photo, photos
from indexer.discover import FoundFile, OutsideLink, UnreadableDir

# How a failure to open or read a file begins; such failures are retried on every run.
UNREADABLE = "cannot read"


@dataclass(frozen=True)
class Known:
    """What the library holds for a path."""

    photo_id: int | None  # None for a recorded failure
    size: int
    mtime_ns: int
    content_hash: str | None
    reason: str | None = None
    on_disk: str | None = None  # the stored on-disk relative path (None: the key itself)
    etag: str | None = None  # an object's stored ETag (None: a file, or a failure)


@dataclass(frozen=True)
class Task:
    """A file that must be read: new, or changed since it was indexed (or failed)."""

    file: FoundFile
    known: Known | None


@dataclass
class Plan:
    """The work of one run, decided before any file is read."""

    tasks: list[Task] = field(default_factory=list)
    unchanged: int = 0
    still_failed: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    gone: set[str] = field(default_factory=set)  # indexed paths no longer found
    gone_failures: set[str] = field(default_factory=set)
    unreadable_dirs: list[UnreadableDir] = field(default_factory=list)
    name_clashes: list[tuple[FoundFile, str]] = field(default_factory=list)
    outside_links: list[OutsideLink] = field(default_factory=list)
    # Unchanged photos whose on-disk name is not the one stored (a library made before names
    # were kept, or a file renamed NFC <-> NFD): (photo id, key, on-disk relative path).
    renamed: list[tuple[int, str, str]] = field(default_factory=list)
    known_hashes: set[str] = field(default_factory=set)  # content hashes with a stored embedding
    # The paths (files or folders, relative, NFC) this plan covers; None: the whole tree.
    scope: tuple[str, ...] | None = None


def load_known(session: Session) -> tuple[dict[str, Known], set[str]]:
    """Every indexed or failed path of the library, and the set of stored content hashes."""
    known = load_known_under(session, None)
    hashes = {k.content_hash for k in known.values() if k.content_hash is not None}
    return known, hashes


def load_known_under(session: Session, scope: Collection[str] | None) -> dict[str, Known]:
    """The indexed or failed paths at or under the `scope` paths (None: all of them)."""
    known: dict[str, Known] = {}
    for where in in_scope(Photo.path, scope):
        for row in photos.rows_for_plan(session, where):
            known[row.path] = Known(
                row.id, row.size, row.mtime_ns, row.content_hash, on_disk=row.on_disk, etag=row.etag
            )
    for where in in_scope(Failure.path, scope):
        for fail in photos.failures_for_plan(session, where):
            if fail.kind == "file":
                known.setdefault(
                    fail.path, Known(None, fail.size, fail.mtime_ns, None, fail.reason)
                )
    return known


def in_scope(
    column: InstrumentedAttribute[str], scope: Collection[str] | None, chunk: int = 200
) -> Iterator[ColumnElement[bool]]:
    """SQL conditions (one per chunk of paths) for `column` at or under a path of `scope`."""
    if scope is None:
        yield true()
        return
    paths = sorted(scope)
    for start in range(0, len(paths), chunk):
        # "p/" <= path < "p0" is everything under p ("0" follows "/"), on the path index.
        yield or_(
            *(
                or_(column == p, and_(column >= p + "/", column < p + "0"))
                for p in paths[start : start + chunk]
            )
        )


def make_plan(
    found: Iterable[FoundFile | UnreadableDir | OutsideLink],
    known: dict[str, Known],
    known_hashes: set[str],
    scope: Collection[str] | None = None,
) -> Plan:
    """Sort every discovered file into unchanged / still failed / to read; the rest is gone.

    With a `scope`, `found` and `known` cover only those paths (a watcher's pass).
    """
    plan = Plan(known_hashes=set(known_hashes), scope=None if scope is None else tuple(scope))
    seen: set[str] = set()
    for item in found:
        if isinstance(item, UnreadableDir):
            plan.unreadable_dirs.append(item)
            continue
        if isinstance(item, OutsideLink):
            plan.outside_links.append(item)
            continue
        if item.relpath in seen:
            plan.name_clashes.append(
                (item, "another file has the same name once Unicode-normalised")
            )
            continue
        seen.add(item.relpath)
        old = known.get(item.relpath)
        if old is not None and _same(old, item):
            if old.photo_id is not None:
                plan.unchanged += 1
                if (old.on_disk or item.relpath) != item.on_disk:
                    plan.renamed.append((old.photo_id, item.relpath, item.on_disk))
                continue
            if not (old.reason or "").startswith(UNREADABLE):
                plan.still_failed.append((item.relpath, old.reason or "failed"))
                continue
            # A file that could not be opened may be readable now (chmod changes neither
            # size nor mtime): trying again costs one failed open() if it still is not.
        plan.tasks.append(Task(item, old))
    # Files under a folder we could not list are still there as far as we know: keep them.
    blocked = tuple("" if d.relpath == "." else d.relpath + "/" for d in plan.unreadable_dirs)
    for path, old in known.items():
        if path in seen or (blocked and path.startswith(blocked)):
            continue
        (plan.gone if old.photo_id is not None else plan.gone_failures).add(path)
    return plan


def _same(old: Known, item: FoundFile) -> bool:
    """Whether a found file is the one the library knows, from its listing alone: same size
    and mtime (an object's LastModified), and for an indexed object the same ETag."""
    if (old.size, old.mtime_ns) != (item.size, item.mtime_ns):
        return False
    return not item.etag or old.photo_id is None or old.etag == item.etag
