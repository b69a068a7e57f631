"""The set-aside journal (table `set_aside`): what `duplicates --set-aside` moved out of the
photo folder, or is moving, and the photo rows it needs. Every statement the set-aside flow
(`indexer.aside`) runs is here, named for what it means; each function is one transaction.

The caller holds the writer lock: between two of these calls nobody else writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import undefer

from db.library import Library, write_errors
from db.schema import PHOTO_COLUMNS, Photo, SetAside

MOVING, ASIDE, RESTORING = "moving", "aside", "restoring"


@dataclass(frozen=True)
class JournalEntry:
    """One journal row, without its copy of the vectors."""

    id: int
    path: str
    disk_path: bytes | None
    dest: bytes  # os.fsencode form
    state: str

    def disk_relpath(self) -> str:
        """The relative path to open, derived as `Photo.disk_relpath` derives it."""
        return Photo.disk_relpath(self)  # type: ignore[arg-type]  # needs .path, .disk_path


_ENTRY_COLUMNS = (SetAside.id, SetAside.path, SetAside.disk_path, SetAside.dest, SetAside.state)


def journal_rows_in_state(library: Library, *states: str) -> list[JournalEntry]:
    """The journal rows in any of `states` (every row when none is given), by id."""
    query = select(*_ENTRY_COLUMNS).order_by(SetAside.id)
    if states:
        query = query.where(SetAside.state.in_(states))
    with library.session() as s, s.begin():
        return [JournalEntry(*row) for row in s.execute(query).all()]


def journal_entry(library: Library, photo_id: int) -> JournalEntry | None:
    """The journal row of one photo, if it has one."""
    with library.session() as s, s.begin():
        row = s.execute(select(*_ENTRY_COLUMNS).where(SetAside.id == photo_id)).first()
    return None if row is None else JournalEntry(*row)


def photo_to_move(library: Library, photo_id: int) -> Photo | None:
    """The photo row to copy into the journal (vectors and thumbnail loaded), or None."""
    with library.session() as s, s.begin():
        return s.scalars(
            select(Photo)
            .where(Photo.id == photo_id)
            .options(undefer(Photo.embedding), undefer(Photo.pthumb))
        ).first()


def photo_id_at(library: Library, key: str) -> int | None:
    """The id of the photo row indexed under the library key `key`, if any."""
    with library.session() as s, s.begin():
        return s.scalar(select(Photo.id).where(Photo.path == key))


def mark_moving(library: Library, photo: Photo, dest: str | os.PathLike[str]) -> None:
    """Step 1 of a move: a "moving" row holding a copy of the photo row commits."""
    values = {c: getattr(photo, c) for c in PHOTO_COLUMNS}
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(
            insert(SetAside).values(
                **values, dest=os.fsencode(dest), state=MOVING, set_at=time.time()
            )
        )


def mark_state(library: Library, photo_id: int, state: str) -> None:
    """Set one journal row's state (RESTORING before a restore, ASIDE when one is undone)."""
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(update(SetAside).where(SetAside.id == photo_id).values(state=state))


def forget_move(library: Library, photo_id: int) -> None:
    """Drop a journal row whose move never happened (the photo row stays as it is)."""
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(delete(SetAside).where(SetAside.id == photo_id))


def settle_moved(library: Library, photo_id: int) -> None:
    """Step 3 of a move: the photo row goes and the journal row says "aside", together."""
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(delete(Photo).where(Photo.id == photo_id))
        s.execute(update(SetAside).where(SetAside.id == photo_id).values(state=ASIDE))


def settle_restored(library: Library, photo_id: int) -> None:
    """Step 3 of a restore: the photo row comes back as it was and the journal row goes."""
    with write_errors(library.directory), library.session() as s, s.begin():
        row = s.scalars(
            select(SetAside).where(SetAside.id == photo_id).options(undefer(SetAside.embedding))
        ).one()
        values = {c: getattr(row, c) for c in PHOTO_COLUMNS}
        if s.get(Photo, photo_id) is None:
            s.execute(insert(Photo).values(**values))
        s.execute(delete(SetAside).where(SetAside.id == photo_id))
