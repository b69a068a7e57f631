"""The set-aside journal (table `set_aside`): what `duplicates --set-aside` moved out of the
photo folder, or is moving, and the photo rows it needs. Every statement the set-aside flow
(`indexer.aside`) runs is here, named for what it means; each function is one transaction.

The caller holds the writer lock: between two of these calls nobody else writes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session, undefer

from db import lexical
from db.engine import write_errors
from db.library import Library
from db.schema import PHOTO_COLUMNS, KeptPhoto, Photo, SetAside

MOVING, ASIDE, RESTORING = "moving", "aside", "restoring"


@dataclass(frozen=True)
class JournalEntry:
    """One journal row, without its copy of the vectors."""

    id: int
    path: str
    disk_path: bytes | None
    dest: bytes  # os.fsencode form
    state: str
    size: int
    content_hash: str

    def disk_relpath(self) -> str:
        """The relative path to open, derived as `Photo.disk_relpath` derives it."""
        return Photo.disk_relpath(self)  # type: ignore[arg-type]  # needs .path, .disk_path

    def destination(self, library_dir: Path) -> Path:
        """Where the file is (or goes) while aside: `dest` from the library folder (an absolute
        `dest`, outside the library, stays as it is)."""
        return Path(library_dir).absolute() / os.fsdecode(self.dest)


_ENTRY_COLUMNS = (
    SetAside.id,
    SetAside.path,
    SetAside.disk_path,
    SetAside.dest,
    SetAside.state,
    SetAside.size,
    SetAside.content_hash,
)


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


def photo_files(library: Library, photo_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """(library key, relative path on disk) of each of `photo_ids` that has a photo row."""
    ids = sorted({int(i) for i in photo_ids})
    out: dict[int, tuple[str, str]] = {}
    with library.session() as s, s.begin():
        for start in range(0, len(ids), 500):
            for row in s.execute(
                select(Photo.id, Photo.path, Photo.disk_path).where(
                    Photo.id.in_(ids[start : start + 500])
                )
            ):
                out[row.id] = (row.path, Photo.disk_relpath(row))  # type: ignore[arg-type]
    return out


def stored_dest(library_dir: Path, dest: Path) -> bytes:
    """The `dest` column for a destination: relative to the library folder when inside it."""
    top, there = os.path.abspath(library_dir), os.path.abspath(dest)
    if os.path.commonpath([top, there]) == top:
        return os.fsencode(os.path.relpath(there, top))
    return os.fsencode(there)


def mark_moving(
    library: Library, photo: Photo, dest: Path, keeper: tuple[int, str] | None = None
) -> None:
    """Step 1 of a move: a "moving" row holding a copy of the photo row commits, with the
    (id, library key) of the keeper it is set aside for, if any."""
    values = {c: getattr(photo, c) for c in PHOTO_COLUMNS}
    now = time.time()
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(
            insert(SetAside).values(
                **values, dest=stored_dest(library.directory, dest), state=MOVING, set_at=now
            )
        )
        if keeper is not None:
            s.execute(delete(KeptPhoto).where(KeptPhoto.extra_id == photo.id))
            s.add(
                KeptPhoto(
                    extra_id=photo.id, keeper_id=keeper[0], keeper_path=keeper[1], kept_at=now
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
        s.execute(delete(KeptPhoto).where(KeptPhoto.extra_id == photo_id))


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
        # Vectors of another model (dropped by a rebuild): no row, the next `index` encodes it.
        if row.embedding and s.get(Photo, photo_id) is None:
            s.execute(insert(Photo).values(**values))
            keywords = (values.get("keywords") or "").split("\n")
            words = lexical.PhotoWords.of(
                photo_id, row.path, keywords=keywords, caption=values.get("caption"),
                place=values.get("place") or "",
            )  # fmt: skip
            lexical.put(s, [words])
        s.execute(delete(SetAside).where(SetAside.id == photo_id))
        s.execute(delete(KeptPhoto).where(KeptPhoto.extra_id == photo_id))


# -- photos kept on purpose -----------------------------------------------------------------------


def kept_photos(library: Library) -> tuple[set[int], set[str]]:
    """The ids and library keys of the keepers whose set-aside extras are still aside."""
    with library.session() as s, s.begin():
        rows = s.execute(select(KeptPhoto.keeper_id, KeptPhoto.keeper_path)).all()
    return {r.keeper_id for r in rows}, {r.keeper_path for r in rows}


# -- rebuilds ---------------------------------------------------------------------------------


def drop_journal_vectors(session: Session) -> None:
    """The library's vectors are being remade (another model, `index --rebuild`): the journal's
    copies are another model's, so restored photos are encoded again instead."""
    session.execute(update(SetAside).values(embedding=b""))


@dataclass(frozen=True)
class SavedJournal:
    """The journal read out of a database about to be replaced (`index --rebuild`)."""

    rows: list[dict]
    kept: list[dict]


def save_journal(db_path: Path) -> SavedJournal:
    """Whatever the journal tables of `db_path` still hold (a damaged or newer database is read
    as far as it can be); their vectors are left behind."""
    columns = [c for c in PHOTO_COLUMNS if c != "embedding"] + ["dest", "state", "set_at"]
    saved = SavedJournal([], [])
    if not Path(db_path).is_file():
        return saved
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            with contextlib.suppress(sqlite3.Error):
                have = {r[1] for r in conn.execute("PRAGMA table_info(set_aside)")}
                if set(columns) - _NULLABLE <= have:
                    names = [c for c in columns if c in have]
                    for r in conn.execute(f"SELECT {', '.join(names)} FROM set_aside"):
                        saved.rows.append(dict(zip(names, r, strict=True)))
            with contextlib.suppress(sqlite3.Error):
                query = "SELECT extra_id, keeper_id, keeper_path, kept_at FROM set_aside_kept"
                for e, k, p, t in conn.execute(query):
                    saved.kept.append(
                        {"extra_id": e, "keeper_id": k, "keeper_path": p, "kept_at": t}
                    )
        finally:
            conn.close()
    return saved


_NULLABLE = frozenset({"disk_path", "phash", "pthumb"})


def put_back_journal(library: Library, saved: SavedJournal) -> None:
    """Write a saved journal into the (new) database, without vectors; new photos get ids
    above every id it names (a journal row's id is its photo's)."""
    if not saved.rows and not saved.kept:
        return
    top = max([r["id"] for r in saved.rows] + [k["keeper_id"] for k in saved.kept] + [0], default=0)
    with write_errors(library.directory), library.session() as s, s.begin():
        s.execute(text("DELETE FROM sqlite_sequence WHERE name = 'photos'"))
        s.execute(
            text("INSERT INTO sqlite_sequence (name, seq) VALUES ('photos', :top)"), {"top": top}
        )
        for row in saved.rows:
            values = dict.fromkeys(_NULLABLE) | row | {"embedding": b""}
            if isinstance(values["taken_at"], str):  # as SQLAlchemy stores it
                values["taken_at"] = datetime.fromisoformat(values["taken_at"])
            s.execute(insert(SetAside).values(**values))
        for row in saved.kept:
            s.execute(insert(KeptPhoto).values(**row))
