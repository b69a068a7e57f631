"""`duplicates --set-aside` / `--restore`: move photos out of the photo folder and back, never
deleting, never overwriting, journaled in the library (table `set_aside`) under the writer lock.

One photo moves in three durable steps, so a kill -9 anywhere leaves a state the next run
finishes or undoes (`recover`):

1. journal row "moving" (with a copy of the photo row) commits; the file is still in place;
2. the file is hard-linked at its destination (fails rather than overwrite), then unlinked
   from the photo folder; across file systems (only when allowed) it is copied to a temp
   name beside the destination, fsynced, linked into place, and the temp name removed;
3. the photo row is deleted and the journal row becomes "aside", in one transaction.

Restoring runs the same steps the other way ("restoring", link back, photo row reinserted
with its old id and embedding, journal row deleted). Searches meanwhile simply do not see a
photo that is aside: FAISS hits without a row are dropped by every reader.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import undefer

from db import (
    Library,
    LibraryError,
    LibraryLock,
    Photo,
    hash_file,
    lexical,
    vectors,
    write_errors,
)
from db.schema import PHOTO_COLUMNS, SetAside
from indexer.stored_facts import words

ASIDE_DIRNAME = "set-aside"  # default destination, inside the library folder (never indexed)


class SetAsideError(LibraryError):
    """A set-aside or restore that cannot be done as asked (another file system, a folder the
    indexer would index again)."""

    http_status = 409
    code = "set_aside_refused"


@dataclass
class AsideReport:
    """What one set-aside or restore run did."""

    moved: list[str] = field(default_factory=list)  # library keys
    ids: list[int] = field(default_factory=list)  # the moved photos' ids, in `moved`'s order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    recovered: int = 0  # half-done moves of an interrupted run, finished or undone

    def to_json(self) -> dict:
        """The JSON form for the CLI."""
        return {
            "moved": self.moved,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "recovered": self.recovered,
        }


def default_aside_dir(library_dir: Path) -> Path:
    """Where non-keepers go unless told: a folder in the library, which the indexer skips."""
    return Path(library_dir) / ASIDE_DIRNAME


def set_aside(
    library_dir: Path,
    photo_ids: Iterable[int],
    dest_root: Path | None = None,
    *,
    cross_filesystem: bool = False,
    after_each: object = None,
    lock_held: bool = False,
) -> AsideReport:
    """Move the given photos under `dest_root`, keeping their relative paths. `lock_held`: the
    caller already holds the writer lock (a watcher of this process, between two passes)."""
    library_dir = Path(library_dir)
    dest_root = Path(dest_root or default_aside_dir(library_dir)).expanduser().absolute()
    with _writer(library_dir, lock_held), Library.create(library_dir) as library:
        report = AsideReport(recovered=recover(library))
        root = library.photo_root()
        _check_destination(root, library_dir, dest_root, cross_filesystem)
        for pid in photo_ids:
            _move_one(library, root, dest_root, int(pid), cross_filesystem, report)
            if callable(after_each):
                after_each(len(report.moved))
        _sync_index(library)
    return report


def restore(
    library_dir: Path,
    photo_ids: Iterable[int] | None = None,
    *,
    after_each: object = None,
    lock_held: bool = False,
) -> AsideReport:
    """Put the set-aside photos back where they were: those of `photo_ids` (ids no longer
    aside are passed over), or all of them; skips any whose place is taken."""
    library_dir = Path(library_dir)
    with _writer(library_dir, lock_held), Library.create(library_dir) as library:
        report = AsideReport(recovered=recover(library))
        root = library.photo_root()
        with library.session() as s, s.begin():
            rows = s.execute(select(SetAside.id).order_by(SetAside.id)).scalars().all()
        if photo_ids is not None:
            wanted = {int(i) for i in photo_ids}
            rows = [pid for pid in rows if pid in wanted]
        for pid in rows:
            _restore_one(library, root, pid, report)
            if callable(after_each):
                after_each(len(report.moved))
        _sync_index(library)
    return report


def _writer(library_dir: Path, lock_held: bool) -> contextlib.AbstractContextManager:
    """The writer lock, unless the caller holds it already."""
    return contextlib.nullcontext() if lock_held else LibraryLock(library_dir)


# -- one photo ------------------------------------------------------------------------------------


def _move_one(
    library: Library, root: Path, dest_root: Path, pid: int, cross_fs: bool, report: AsideReport
) -> bool:
    with write_errors(library.directory), library.session() as s, s.begin():
        row = s.scalars(
            select(Photo)
            .where(Photo.id == pid)
            .options(undefer(Photo.embedding), undefer(Photo.pthumb))
        ).first()
        if row is None:
            report.skipped.append((str(pid), "no such photo (indexed again since?)"))
            return False
        src = root / row.disk_relpath()
        dest = dest_root / row.disk_relpath()
        if not os.path.lexists(src):
            report.skipped.append((row.path, "the file is gone"))
            return False
        if os.path.lexists(dest):
            report.skipped.append((row.path, f"{dest} already exists"))
            return False
        values = {c: getattr(row, c) for c in PHOTO_COLUMNS}
        s.execute(
            insert(SetAside).values(
                **values, dest=os.fsencode(dest), state="moving", set_at=time.time()
            )
        )
    try:
        _transfer(src, dest, cross_fs)
    except SetAsideError as exc:  # this file stays where it is; the others go on
        with write_errors(library.directory), library.session() as s, s.begin():
            s.execute(delete(SetAside).where(SetAside.id == pid))
        report.skipped.append((values["path"], str(exc)))
        return False
    _settle_moving(library, pid)
    report.moved.append(values["path"])
    report.ids.append(pid)
    return True


def _restore_one(library: Library, root: Path, pid: int, report: AsideReport) -> bool:
    with write_errors(library.directory), library.session() as s, s.begin():
        row = s.get(SetAside, pid)
        src = root / (row.path if row.disk_path is None else os.fsdecode(row.disk_path))
        dest = Path(os.fsdecode(row.dest))
        taken = s.scalar(select(Photo.id).where(Photo.path == row.path))
        if os.path.lexists(src) or taken is not None:
            report.skipped.append((row.path, "another file is at its place now"))
            return False
        if not os.path.lexists(dest):
            report.skipped.append((row.path, f"{dest} is gone"))
            return False
        s.execute(update(SetAside).where(SetAside.id == pid).values(state="restoring"))
    try:
        _transfer(dest, src, cross_fs=True)
    except SetAsideError as exc:
        with write_errors(library.directory), library.session() as s, s.begin():
            s.execute(update(SetAside).where(SetAside.id == pid).values(state="aside"))
        report.skipped.append((row.path, str(exc)))
        return False
    _settle_restoring(library, pid)
    report.moved.append(row.path)
    report.ids.append(pid)
    return True


def _transfer(src: Path, dest: Path, cross_fs: bool) -> None:
    """Move a file without ever overwriting: link then unlink (copy + link across devices).
    SetAsideError (the file left where it was) if it cannot be placed at `dest`."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.EXDEV or not cross_fs:
            raise SetAsideError(f"cannot move {src} to {dest}: {exc.strerror}") from exc
        _copy_into_place(src, dest)
    _fsync_dir(dest.parent)
    os.unlink(src)
    _fsync_dir(src.parent)


def _copy_into_place(src: Path, dest: Path) -> None:
    """Across file systems: a durable copy under a temp name, then linked to `dest`."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(src, tmp, follow_symlinks=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.link(tmp, dest)  # FileExistsError rather than overwrite
    except OSError as exc:
        raise SetAsideError(f"cannot copy {src} to {dest}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _settle_moving(library: Library, pid: int) -> None:
    """Step 3 of a move: the photo row goes, the journal row says "aside"."""
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(delete(Photo).where(Photo.id == pid))
        s.execute(update(SetAside).where(SetAside.id == pid).values(state="aside"))


def _settle_restoring(library: Library, pid: int) -> None:
    """Step 3 of a restore: the photo row comes back as it was, the journal row goes."""
    with write_errors(library.directory), library.session() as s, s.begin():
        row = s.scalars(
            select(SetAside).where(SetAside.id == pid).options(undefer(SetAside.embedding))
        ).one()
        values = {c: getattr(row, c) for c in PHOTO_COLUMNS}
        if s.get(Photo, pid) is None:
            s.execute(insert(Photo).values(**values))
            lexical.put(s, [words(pid, row.path, values, values["place"] or "")])
        s.execute(delete(SetAside).where(SetAside.id == pid))


def _sync_index(library: Library) -> None:
    """Make the saved FAISS file hold exactly the photo rows' ids again (the rows moved to or
    from the journal, this run's and a killed run's); a kill before this is repaired by the
    next run or the next `index`, which rebuilds a file whose ids differ from the rows."""
    index = library.load_index()
    if index is None:
        return
    have, rows = vectors.index_ids(index), library.photo_ids()
    gone = np.setdiff1d(have, rows)
    new = np.setdiff1d(rows, have)
    if not len(gone) and not len(new):
        return
    if len(gone) and not vectors.remove(index, gone.tolist()):
        index = library.build_index()  # a type that cannot remove: rebuilt from the rows
    elif len(new):
        with library.session() as s, s.begin():
            vectors.add(index, new, library.vectors_for(s, new))
    library.save_index(index)


# -- recovery -------------------------------------------------------------------------------------


def recover(library: Library) -> int:
    """Finish or undo the moves an interrupted run left half done; hold the lock. Returns how
    many journal rows it settled."""
    root = library.photo_root()
    with library.session() as s, s.begin():
        pending = s.execute(
            select(
                SetAside.id, SetAside.path, SetAside.disk_path, SetAside.dest, SetAside.state
            ).where(SetAside.state != "aside")
        ).all()
    for pid, path, disk, dest_raw, state in pending:
        src = root / (path if disk is None else os.fsdecode(disk))
        dest = Path(os.fsdecode(dest_raw))
        here, there = os.path.lexists(src), os.path.lexists(dest)
        linked = here and there and _same_file(src, dest)
        if state == "moving":
            if linked:
                src.unlink()  # the destination holds it: finish the move
                _settle_moving(library, pid)
            elif here:  # never got there (anything else at the destination is not ours)
                with write_errors(library.directory), library.session() as s, s.begin():
                    s.execute(delete(SetAside).where(SetAside.id == pid))
            else:
                _settle_moving(library, pid)
        elif linked or (here and not there):
            if linked:
                dest.unlink()
            _settle_restoring(library, pid)
        else:  # still (only) aside
            with write_errors(library.directory), library.session() as s, s.begin():
                s.execute(update(SetAside).where(SetAside.id == pid).values(state="aside"))
    return len(pending)


def _same_file(a: Path, b: Path) -> bool:
    """Both names are one file (hard link) or hold the same bytes (a finished copy)."""
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    return sa.st_size == sb.st_size and hash_file(str(a))[0] == hash_file(str(b))[0]


def _check_destination(root: Path, library_dir: Path, dest_root: Path, cross_fs: bool) -> None:
    resolved = dest_root.resolve()
    inside_library = resolved.is_relative_to(Path(library_dir).resolve())
    if resolved.is_relative_to(root) and not inside_library:
        raise SetAsideError(
            f"{dest_root} is inside the photo folder, so the indexer would index it again; "
            "choose a folder outside it (or leave --set-aside without a folder)"
        )
    probe = resolved
    while not probe.exists():
        probe = probe.parent
    if os.stat(probe).st_dev != os.stat(root).st_dev and not cross_fs:
        raise SetAsideError(
            f"{dest_root} is on another file system than the photos; moving there means "
            "copying (pass --cross-filesystem to allow it)"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
