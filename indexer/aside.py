"""`duplicates --set-aside` / `--restore`: move photos out of the photo folder and back, never
deleting, never overwriting, journaled in the library (table `set_aside`, see `db.journal`)
under the writer lock.

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

What moves is checked at the moment it moves (`_check_source`): the file must be reached from
the real photo folder through no symbolic link, be a plain file, be the file that was indexed
(size, mtime and content hash of its row), and not be a kept photo's file (the keeper itself,
a hard link to it, or the file a keeper's link points at). A photo kept when its group was set
aside is never moved as another group's extra while that group's extras are aside (the
journal names each extra's keeper: table `set_aside_kept`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from db import (
    Library,
    LibraryError,
    LibraryLock,
    Photo,
    disk_path_value,
    embeddings,
    hash_file,
    path_key,
    vectors,
)
from db.journal import (
    ASIDE,
    MOVING,
    RESTORING,
    JournalEntry,
    forget_move,
    journal_entry,
    journal_rows_in_state,
    kept_photos,
    mark_moving,
    mark_state,
    photo_files,
    photo_id_at,
    photo_to_move,
    settle_moved,
    settle_restored,
    stored_dest,
)

ASIDE_DIRNAME = "set-aside"  # default destination, inside the library folder (never indexed)
TMP_SUFFIX = ".set-aside.tmp"  # `.NAME.set-aside.tmp`: a copy across file systems, until linked


class SetAsideError(LibraryError):
    """A set-aside or restore that cannot be done as asked (another file system, a folder the
    indexer would index again)."""

    http_status = 409
    code = "set_aside_refused"


class CrossFilesystemError(SetAsideError):
    """The destination is on another file system: moving means copying, which must be allowed
    (`--cross-filesystem`, or `cross_filesystem` in the web request)."""

    code = "cross_filesystem"


class StaleGroupError(SetAsideError):
    """The photos asked for are no longer one duplicate group: the library changed since they
    were listed. Nothing was moved."""

    exit_code = 1
    code = "stale_group"


class ObjectRootAsideError(SetAsideError):
    """The photos are in object storage: set-aside and restore move files within a folder,
    and a bucket has none (a journaled copy-then-delete there is not done yet)."""

    http_status = 400
    code = "set_aside_object_storage"


def refuse_object_root(library: Library) -> None:
    """ObjectRootAsideError if the library's photos are in object storage (nothing moved)."""
    url = library.root_url()
    if url is not None:
        raise ObjectRootAsideError(
            f"setting duplicates aside (and restoring them) is not available for photos in "
            f"object storage ({url}) yet; nothing was moved (`duplicates --json` lists them)"
        )


@dataclass(frozen=True)
class AsideGroup:
    """One duplicate group as the caller saw it (its photo ids) and the photo it keeps."""

    photos: tuple[int, ...]
    keep: int

    def __post_init__(self) -> None:
        if self.keep not in self.photos:
            raise ValueError("the keeper must be one of the group's photos")


class Skipped(NamedTuple):
    """A photo left where it was: its library key (None for an id with no photo row), why,
    and its id."""

    path: str | None
    reason: str
    id: int | None = None


@dataclass
class AsideReport:
    """What one set-aside or restore run did."""

    moved: list[str] = field(default_factory=list)  # library keys
    ids: list[int] = field(default_factory=list)  # the moved photos' ids, in `moved`'s order
    # Where each moved photo's file is now (absolute, as on disk), in `moved`'s order: in the
    # set-aside folder after a set-aside, back in the photo folder after a restore.
    places: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    recovered: int = 0  # half-done moves of an interrupted run, finished or undone

    def skip(self, path: str | None, reason: str, photo_id: int | None = None) -> None:
        """Record a photo left where it was."""
        self.skipped.append(Skipped(path, reason, photo_id))

    def record_move(self, path: str, photo_id: int, place: Path) -> None:
        """Record a photo moved, its file now at `place`."""
        self.moved.append(path)
        self.ids.append(photo_id)
        self.places.append(os.fspath(place))

    def to_json(self) -> dict:
        """The JSON form for the CLI (`path` is null for an id that is no photo)."""
        return {
            "moved": self.moved,
            "skipped": [{"path": p, "id": i, "reason": r} for p, r, i in self.skipped],
            "recovered": self.recovered,
        }


def default_aside_dir(library_dir: Path) -> Path:
    """Where non-keepers go unless told: a folder in the library, which the indexer skips."""
    return Path(library_dir) / ASIDE_DIRNAME


def aside_destination(library_dir: Path, dest_root: Path | str | None = None) -> Path:
    """The absolute folder a set-aside into `dest_root` (None: the default) moves files to."""
    return Path(dest_root or default_aside_dir(library_dir)).expanduser().absolute()


def check_destination(
    library_dir: Path, dest_root: Path | str | None = None, *, cross_filesystem: bool = False
) -> Path:
    """The destination of a set-aside into `dest_root`, checked as a set-aside checks it
    before moving anything (SetAsideError if refused); nothing is written. What is checked
    per photo at the moment it moves (the file unchanged, not a keeper's) is not."""
    dest = aside_destination(library_dir, dest_root)
    with Library.open(Path(library_dir)) as library:
        refuse_object_root(library)
        root = library.photo_root()
    _check_destination(root, Path(library_dir), dest, cross_filesystem)
    return dest


def set_aside_groups(
    library_dir: Path,
    groups: Sequence[AsideGroup],
    current_groups: Callable[[], Iterable[Collection[int]]],
    dest_root: Path | None = None,
    *,
    cross_filesystem: bool = False,
    after_each: object = None,
    lock_held: bool = False,
) -> AsideReport:
    """Move every non-keeper of `groups` under `dest_root` (default: `default_aside_dir`),
    keeping relative paths. Under the writer lock, `current_groups()` (the duplicate groups as
    the library has them now, each as its photo ids) must still hold each of `groups` as one
    whole group, else StaleGroupError and nothing moves. Each extra's keeper is journaled with
    it: while the extra is aside no set-aside moves that keeper, and none ever moves a file
    that is a keeper's (a link to it).
    `lock_held`: the caller already holds the writer lock (a watcher of this process, between
    two passes)."""
    wanted = [frozenset(g.photos) for g in groups]
    keepers = {g.keep for g in groups}
    keeper_of: dict[int, int] = {}
    for g in groups:
        for p in g.photos:
            if p not in keepers:
                keeper_of.setdefault(p, g.keep)

    def check(library: Library) -> dict[int, int]:
        now = {frozenset(int(i) for i in ids) for ids in current_groups()}
        if any(ids not in now for ids in wanted):
            raise StaleGroupError(
                "these photos are no longer one duplicate group (the library changed since "
                "they were listed); reload the duplicates and choose again"
            )
        return keeper_of

    return _set_aside(
        library_dir, list(keeper_of), dest_root, cross_filesystem, after_each, lock_held, check
    )


def set_aside(
    library_dir: Path,
    photo_ids: Iterable[int],
    dest_root: Path | None = None,
    *,
    cross_filesystem: bool = False,
    after_each: object = None,
    lock_held: bool = False,
) -> AsideReport:
    """Move the given photos under `dest_root`, keeping their relative paths, with every check
    of `set_aside_groups` but the group's (which is the way in for duplicate groups)."""
    return _set_aside(
        library_dir, photo_ids, dest_root, cross_filesystem, after_each, lock_held, None
    )


def _set_aside(
    library_dir: Path,
    photo_ids: Iterable[int],
    dest_root: Path | None,
    cross_filesystem: bool,
    after_each: object,
    lock_held: bool,
    check: Callable[[Library], dict[int, int]] | None,
) -> AsideReport:
    library_dir = Path(library_dir)
    dest_root = aside_destination(library_dir, dest_root)
    with _writer(library_dir, lock_held), Library.create(library_dir) as library:
        refuse_object_root(library)
        report = AsideReport()
        report.recovered = recover(library, report)
        root = library.photo_root()
        _check_destination(root, library_dir, dest_root, cross_filesystem)
        keeper_of = check(library) if check is not None else {}
        kept_ids, kept_keys = kept_photos(library)
        kept_ids |= set(keeper_of.values())
        files = photo_files(library, kept_ids)
        guard = _Guard(root, dest_root, kept_ids, kept_keys, files)
        for pid in photo_ids:
            keeper = keeper_of.get(int(pid))
            kept_for = (keeper, files[keeper][0]) if keeper in files else None
            _move_one(library, guard, int(pid), cross_filesystem, report, kept_for)
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
    aside are passed over), or all of them; skips any whose place is taken. A photo whose
    journaled vectors are another model's (the library was rebuilt since) comes back without
    a row: the next `index` encodes it with the library's model."""
    library_dir = Path(library_dir)
    with _writer(library_dir, lock_held), Library.create(library_dir) as library:
        refuse_object_root(library)
        report = AsideReport()
        report.recovered = recover(library, report)
        root = library.photo_root()
        rows = [e.id for e in journal_rows_in_state(library, ASIDE)]
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


# -- what may move ------------------------------------------------------------------------------


class _Guard:
    """What one run may move: files of the photo folder that are not kept photos' files."""

    def __init__(
        self,
        root: Path,
        dest_root: Path,
        kept_ids: set[int],
        kept_keys: set[str],
        files: dict[int, tuple[str, str]],
    ) -> None:
        self.root, self.dest_root = root, dest_root
        self.kept_ids, self.kept_keys = kept_ids, kept_keys
        self.kept_files: set[tuple[int, int]] = set()  # (device, inode) of every kept file
        for _, rel in files.values():
            for stat_fn in (os.lstat, os.stat):  # the name, and what a link points at
                with contextlib.suppress(OSError, ValueError):
                    st = stat_fn(root / rel)
                    self.kept_files.add((st.st_dev, st.st_ino))

    def check_source(self, row: Photo) -> os.stat_result:
        """The checked file of `row` at this moment; SetAsideError (why) if it may not move."""
        if row.id in self.kept_ids or row.path in self.kept_keys:
            raise SetAsideError("it was kept on purpose when its duplicate group was set aside")
        src = real_file(self.root, row.disk_relpath())
        st = os.lstat(src)
        if (st.st_dev, st.st_ino) in self.kept_files:
            raise SetAsideError("it is the kept photo's own file (a link to it or its target)")
        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            raise SetAsideError("the file changed since it was indexed (run index, then choose)")
        digest, size, mtime_ns = hash_file(src)
        if (digest, size, mtime_ns) != (row.content_hash, row.size, row.mtime_ns):
            raise SetAsideError("the file's content changed since it was indexed (run index)")
        return st


def real_file(top: Path, rel: str) -> Path:
    """`top / rel`, a plain file reached through no symbolic link from the real folder `top`;
    SetAsideError (why) otherwise, FileNotFoundError if nothing is there."""
    rel_path = Path(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise SetAsideError("its path leaves the photo folder")
    path = top / rel_path
    _real_folder(top, path.parent)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise SetAsideError("it is a symbolic link: only a file itself is set aside")
    if not stat.S_ISREG(st.st_mode):
        raise SetAsideError("it is not a plain file")
    return path


def _real_folder(top: Path, folder: Path) -> None:
    """SetAsideError unless `folder`, at or under `top`, is reached from the real `top`
    through no symbolic link (a folder above `top` is not ours to judge)."""
    try:
        rel = folder.relative_to(top)
    except ValueError:
        return
    real_top = Path(os.path.realpath(top))
    real = Path(os.path.realpath(folder))
    if real == real_top / rel:
        return
    if not real.is_relative_to(real_top):
        raise SetAsideError(f"{folder} leads outside {top} now (a symbolic link)")
    raise SetAsideError(f"{folder} is reached through a symbolic link now")


# -- one photo ------------------------------------------------------------------------------------


def _move_one(
    library: Library,
    guard: _Guard,
    pid: int,
    cross_fs: bool,
    report: AsideReport,
    kept_for: tuple[int, str] | None = None,
) -> bool:
    row = photo_to_move(library, pid)
    if row is None:
        report.skip(None, f"no photo with id {pid} (indexed again since?)", pid)
        return False
    src, dest = guard.root / row.disk_relpath(), guard.dest_root / row.disk_relpath()
    try:
        checked = guard.check_source(row)
    except FileNotFoundError:
        report.skip(row.path, "the file is gone", pid)
        return False
    except (SetAsideError, OSError) as exc:
        report.skip(row.path, _why(exc), pid)
        return False
    if os.path.lexists(dest):
        report.skip(row.path, f"{dest} already exists", pid)
        return False
    mark_moving(library, row, dest, kept_for)
    try:
        _transfer(src, dest, cross_fs, checked, guard.dest_root)
    except SetAsideError as exc:  # this file stays where it is; the others go on
        forget_move(library, pid)
        report.skip(row.path, str(exc), pid)
        return False
    _settle_moving(library, pid)
    report.record_move(row.path, pid, dest)
    return True


def _restore_one(library: Library, root: Path, pid: int, report: AsideReport) -> bool:
    entry = journal_entry(library, pid)
    if entry is None:
        return False
    src = root / entry.disk_relpath()
    dest = entry.destination(library.directory)
    try:
        _real_folder(root, _existing(src.parent))
    except SetAsideError as exc:
        report.skip(entry.path, str(exc), pid)
        return False
    if os.path.lexists(src) or photo_id_at(library, entry.path) is not None:
        report.skip(entry.path, "another file is at its place now", pid)
        return False
    if not os.path.lexists(dest):
        report.skip(entry.path, f"{dest} is gone", pid)
        return False
    try:
        _check_aside_copy(entry, dest)
    except (SetAsideError, OSError) as exc:
        report.skip(entry.path, _why(exc), pid)
        return False
    mark_state(library, pid, RESTORING)
    try:
        _transfer(dest, src, True, None, root)
    except SetAsideError as exc:
        mark_state(library, pid, ASIDE)
        report.skip(entry.path, str(exc), pid)
        return False
    _settle_restoring(library, pid)
    report.record_move(entry.path, pid, src)
    _prune_empty(dest, entry.disk_relpath(), root, library.directory)
    return True


def _prune_empty(dest: Path, rel: str, root: Path, library_dir: Path) -> None:
    """After `dest` (a file set aside as `rel`) went back: remove the folders its set-aside
    left empty, from its own up to (not including) the set-aside folder itself. Only empty
    folders, only inside that set-aside folder, never the photo folder or one of its
    folders (the library's own excepted), never through a symbolic link."""
    depth = len(Path(rel).parts)
    if depth < 2:
        return
    top = dest.parents[depth - 1]  # the set-aside folder: dest is top / rel
    real_root = Path(os.path.realpath(root))
    real_library = Path(os.path.realpath(library_dir))
    folder = dest.parent
    while folder != top and folder.is_relative_to(top):
        if os.path.islink(folder):
            return
        real = Path(os.path.realpath(folder))
        in_photos = real.is_relative_to(real_root) and not real.is_relative_to(real_library)
        if in_photos or real_root.is_relative_to(real):
            return
        try:
            os.rmdir(folder)  # fails unless empty
        except OSError:
            return
        folder = folder.parent


def _check_aside_copy(entry: JournalEntry, dest: Path) -> None:
    """SetAsideError unless the file aside is still the photo that was set aside."""
    st = os.lstat(dest)
    if not stat.S_ISREG(st.st_mode):
        raise SetAsideError(f"{dest} is not a plain file now (a symbolic link?); left there")
    if st.st_size != entry.size or hash_file(dest)[0] != entry.content_hash:
        raise SetAsideError(f"{dest} is another file than the photo set aside; left there")


def _existing(folder: Path) -> Path:
    """The nearest folder of `folder`'s chain that exists (what a mkdir would go through)."""
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _transfer(
    src: Path, dest: Path, cross_fs: bool, checked: os.stat_result | None, top: Path
) -> None:
    """Move a file without ever overwriting: link then unlink (copy + link across devices).
    `checked`: the source as checked (it must still be that file); `top`: the real folder
    `dest` must stay inside. SetAsideError (the file left where it was) if it cannot be
    placed at `dest` or removed from `src`."""
    try:
        _real_folder(top, _existing(dest.parent))
        dest.parent.mkdir(parents=True, exist_ok=True)
        _real_folder(top, dest.parent)
    except OSError as exc:
        raise SetAsideError(f"cannot make the folder {dest.parent}: {exc.strerror}") from exc
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.EXDEV or not cross_fs:
            raise SetAsideError(f"cannot move {src} to {dest}: {exc.strerror}") from exc
        _copy_into_place(src, dest)
    else:
        placed = os.lstat(dest)
        if checked is not None and (placed.st_dev, placed.st_ino) != (
            checked.st_dev,
            checked.st_ino,
        ):
            _undo_place(dest)
            raise SetAsideError(f"{src} was replaced while it was being moved; left in place")
    _fsync_dir(dest.parent)
    try:
        os.unlink(src)
    except OSError as exc:  # immutable, a read-only folder: the new name goes again
        _undo_place(dest)
        raise SetAsideError(
            f"cannot remove {src}: {exc.strerror}; it was left where it was"
        ) from exc
    _fsync_dir(src.parent)


def _undo_place(dest: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(dest)
        _fsync_dir(dest.parent)


def _temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{TMP_SUFFIX}")


def _copy_into_place(src: Path, dest: Path) -> None:
    """Across file systems: a durable copy under a temp name, then linked to `dest`. A kill
    leaves the temp name to `recover`, which removes it (the journal row says "moving")."""
    tmp = _temp_name(dest)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a killed run's (we hold the lock)
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
    settle_moved(library, pid)


def _settle_restoring(library: Library, pid: int) -> None:
    """Step 3 of a restore: the photo row comes back as it was, the journal row goes."""
    settle_restored(library, pid)


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
            vectors.add(index, new, embeddings.vectors_for(s, new))
    library.save_index(index)


# -- after a database was replaced ----------------------------------------------------------------


def journal_rows_from_folder(library_dir: Path, known: set[str], first_id: int) -> list[dict]:
    """Journal rows (as `db.journal.SavedJournal` holds them, ids from `first_id`) for the files
    in the default set-aside folder that no saved row names: what an unreadable database's
    journal held there. They have no vectors: restored, the next `index` encodes them."""
    folder = default_aside_dir(library_dir)
    out: list[dict] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if name.endswith(TMP_SUFFIX) or full.is_symlink() or not full.is_file():
                continue
            rel = os.path.relpath(full, folder)
            key = path_key(Path(rel).as_posix())
            if key in known:
                continue
            digest, size, mtime_ns = hash_file(full)
            out.append(
                {
                    "id": first_id + len(out),
                    "path": key,
                    "disk_path": disk_path_value(key, Path(rel).as_posix()),
                    "size": size,
                    "mtime_ns": mtime_ns,
                    "content_hash": digest,
                    "width": 0,
                    "height": 0,
                    "taken_at": datetime.fromtimestamp(mtime_ns / 1e9),
                    "taken_at_source": "mtime",
                    "indexed_at": 0.0,
                    "dest": stored_dest(library_dir, full),
                    "state": ASIDE,
                    "set_at": time.time(),
                }
            )
    return out


# -- recovery -------------------------------------------------------------------------------------


def recover(library: Library, report: AsideReport | None = None) -> int:
    """Finish or undo the moves an interrupted run left half done; hold the lock. A row that
    cannot be settled now (a file that cannot be removed) is undone where it can be, else left
    for a later run, and never stops the others; why goes to `report`. Returns how many
    journal rows it looked at."""
    root = library.photo_root()
    pending = journal_rows_in_state(library, MOVING, RESTORING)
    for entry in pending:
        src, dest = root / entry.disk_relpath(), entry.destination(library.directory)
        for tmp in (_temp_name(src), _temp_name(dest)):  # a copy a kill interrupted
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        try:
            why = _recover_one(library, entry, src, dest)
        except (OSError, SetAsideError) as exc:
            why = f"an interrupted {'set-aside' if entry.state == MOVING else 'restore'} "
            why += f"cannot be settled yet: {_why(exc)}"
        if why and report is not None:
            report.skip(entry.path, why, entry.id)
    return len(pending)


def _recover_one(library: Library, entry: JournalEntry, src: Path, dest: Path) -> str | None:
    """Settle one half-done row; a message when it was undone rather than finished."""
    _real_folder(library.photo_root(), _existing(src.parent))  # never unlink through a link
    here, there = os.path.lexists(src), os.path.lexists(dest)
    linked = here and there and _same_file(src, dest)
    if entry.state == MOVING:
        if linked:
            try:
                src.unlink()  # the destination holds it: finish the move
            except OSError as exc:  # cannot be removed: undo instead
                why = f"cannot remove {src}: {exc.strerror}; it was left where it was"
                try:
                    dest.unlink()
                except OSError:  # an immutable file: neither name can go
                    why += f" (and {dest}, the same file, cannot be removed either)"
                forget_move(library, entry.id)
                return why
            _settle_moving(library, entry.id)
        elif here:  # never got there (anything else at the destination is not ours)
            forget_move(library, entry.id)
        else:
            _settle_moving(library, entry.id)
    elif linked or (here and not there):
        if linked:
            try:
                dest.unlink()
            except OSError as exc:  # the copy aside cannot be removed: stays aside
                src.unlink()
                mark_state(library, entry.id, ASIDE)
                return f"cannot remove {dest}: {exc.strerror}; it stays set aside"
        _settle_restoring(library, entry.id)
    else:  # still (only) aside
        mark_state(library, entry.id, ASIDE)
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Both names are one file (hard link) or hold the same bytes (a finished copy)."""
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    return sa.st_size == sb.st_size and hash_file(str(a))[0] == hash_file(str(b))[0]


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


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
        raise CrossFilesystemError(
            f"{dest_root} is on another file system than the photos; moving there means "
            "copying each photo (pass --cross-filesystem to allow it)"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
