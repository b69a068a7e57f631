"""Writes of photo and failure rows, in the caller's transaction (the indexer's, under the
writer lock). Reads are in `db.photos`; the set-aside journal has its own module.

The new rows of a batch go in as one DB-API executemany (`insert_photos`): through the ORM's
per-row machinery the same insert was most of a batch's cost once the commit is shared by
many photos.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.schema import Failure, Photo

# Statements name at most this many paths or ids (SQLite caps the parameters of one).
CHUNK = 500

# The largest photo id ever handed out (sqlite_sequence keeps it past deletions).
_LAST_ID = text(
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'photos'), 0), "
    "coalesce((SELECT max(id) FROM photos), 0))"
)


def insert_photos(session: Session, rows: list[dict[str, Any]]) -> range:
    """Add new photo rows (dicts with the same keys, no id); returns their ids, in order.

    The ids are handed out here, as AUTOINCREMENT would (past every id ever used; the writer
    lock makes this the only writer), so the rows go in as one executemany (SQLite's
    RETURNING would take one statement a row). Each value goes through its column type's
    conversion, as SQLAlchemy would, without its per-row machinery.
    """
    if not rows:
        return range(0)
    last = session.execute(_LAST_ID).scalar_one()
    ids = range(last + 1, last + 1 + len(rows))
    conn = session.connection()
    table = Photo.__table__
    keys = list(rows[0])
    names = [*keys, "id"]
    convert = [(i, table.c[n].type.bind_processor(conn.dialect)) for i, n in enumerate(keys)]
    convert = [(i, f) for i, f in convert if f is not None]
    values = []
    for photo_id, row in zip(ids, rows, strict=True):
        v = [row[n] for n in keys]
        v.append(photo_id)
        for i, f in convert:
            if v[i] is not None:
                v[i] = f(v[i])
        values.append(tuple(v))
    sql = f"INSERT INTO photos ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    conn.exec_driver_sql(sql, values)
    return ids


def update_photo(session: Session, photo_id: int, **values: Any) -> None:
    """Set some columns of one photo row."""
    session.execute(update(Photo).where(Photo.id == photo_id).values(**values))


def update_photos(session: Session, values: list[dict[str, Any]]) -> None:
    """Set some columns of many photo rows: dicts holding the row's `id` and the new values."""
    if values:
        session.execute(update(Photo), values)


def delete_photo(session: Session, photo_id: int) -> None:
    """Remove one photo row (its id is never handed out again)."""
    session.execute(delete(Photo).where(Photo.id == photo_id))


def delete_photos(session: Session, ids: Sequence[int]) -> None:
    """Remove the photo rows of these ids."""
    for chunk in chunks(ids, CHUNK):
        session.execute(delete(Photo).where(Photo.id.in_(chunk)))


def delete_photos_at(session: Session, paths: Iterable[str]) -> list[int]:
    """Remove the photo rows of these key paths; returns the ids removed."""
    removed: list[int] = []
    for chunk in chunks(sorted(paths), CHUNK):
        ids = session.scalars(select(Photo.id).where(Photo.path.in_(chunk))).all()
        session.execute(delete(Photo).where(Photo.id.in_(ids)))
        removed.extend(ids)
    return removed


def delete_everything(session: Session) -> None:
    """Remove every photo and failure row (another model's vectors, or --rebuild)."""
    session.execute(delete(Photo))
    session.execute(delete(Failure))


def record_failure(
    session: Session, relpath: str, kind: str, size: int, mtime_ns: int, reason: str
) -> None:
    """Record (or replace) why a file or folder could not be indexed."""
    values = dict(kind=kind, size=size, mtime_ns=mtime_ns, reason=reason, recorded_at=time.time())
    stmt = sqlite_insert(Failure).values(path=relpath, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=[Failure.path], set_=values))


def clear_failures(session: Session, paths: Iterable[str], *, files_only: bool = False) -> None:
    """Forget the failures recorded for these paths (only those of files, if `files_only`)."""
    kind = [Failure.kind == "file"] if files_only else []
    for chunk in chunks(sorted(paths), CHUNK):
        session.execute(delete(Failure).where(Failure.path.in_(chunk), *kind))


def clear_folder_failures(session: Session, where: ColumnElement[bool]) -> None:
    """Forget the unreadable folders and unfollowed links matching `where` (on Failure.path)."""
    session.execute(delete(Failure).where(Failure.kind.in_(("dir", "link")), where))


def chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """`items` in slices of at most `n`."""
    for i in range(0, len(items), n):
        yield items[i : i + n]
