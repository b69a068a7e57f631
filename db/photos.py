"""Reads of photo rows, named for what they are for: the one place that writes SQL against
`photos` and `failures` for the packages above `db` (the indexer's batched writes stay in
`indexer.writer`, on the same tables). Each takes the caller's session, so several reads
share one snapshot.

The embeddings come back as float32 arrays, checked against the manifest's size
(LibraryCorruptError naming the photo otherwise).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import ColumnElement, Integer, and_, bindparam, column, func, or_, select
from sqlalchemy.orm import Session

from db.schema import FACT_COLUMNS, Failure, Photo, disk_relpath

# The facts columns (schema 4), as a row copies them from its exact twin.
FACTS = tuple(getattr(Photo, name) for name in FACT_COLUMNS)

# SQLite caps the parameters of one statement; reads by id go in chunks of this many.
ID_CHUNK = 900

# -- ids and counts -----------------------------------------------------------------------------


def photo_ids(session: Session) -> np.ndarray:
    """Sorted int64 ids of every photo row."""
    ids = session.scalars(select(Photo.id).order_by(Photo.id)).all()
    return np.asarray(ids, dtype=np.int64)


def ids_where(session: Session, *where: ColumnElement[bool]) -> np.ndarray:
    """Sorted ids of the photos matching the conditions on Photo (reads the indexes, not the rows)."""
    rows = session.scalars(select(Photo.id).where(*where).order_by(Photo.id))
    return np.fromiter(rows, dtype=np.int64)


def photo_count(session: Session) -> int:
    """How many photos the library holds."""
    return session.scalar(select(func.count()).select_from(Photo)) or 0


def failure_count(session: Session) -> int:
    """How many files (and folders) are recorded as failed."""
    return session.scalar(select(func.count()).select_from(Failure)) or 0


def has_rows(session: Session) -> bool:
    """Whether anything was ever committed: a photo or a recorded failure."""
    return any(session.scalar(select(t.id).limit(1)) is not None for t in (Photo, Failure))


def newest_id(session: Session) -> int:
    """The highest photo id (0 for none); ids only grow, so a new one means new rows."""
    return session.scalar(select(func.max(Photo.id))) or 0


def change_stamp(session: Session) -> tuple[int, int]:
    """A stamp of the library as this session's connection sees it, cheap enough for every
    query (no row is read): it changes whenever another connection (an indexer, a watcher)
    commits, whatever the commit changed. SQLite's `data_version` counts per connection, so
    the stamp also names the connection (a token of its own: one thread's connection is not
    another's, and a connection opened later never reuses an older one's token)."""
    conn = session.connection()
    token = conn.info.get(_STAMP_TOKEN)
    if token is None:
        token = conn.info[_STAMP_TOKEN] = next(_stamp_tokens)
    version = conn.exec_driver_sql("PRAGMA data_version").scalar_one()
    return token, int(version)


_STAMP_TOKEN = "koclip.change_stamp"
_stamp_tokens = itertools.count(1)


def last_indexed_at(session: Session) -> float | None:
    """Unix seconds of the newest row's indexing (None for none)."""
    return session.scalar(select(func.max(Photo.indexed_at)))


def all_paths(session: Session) -> Iterator[str]:
    """Every photo's key path (POSIX, NFC, relative to the photo root)."""
    return iter(session.scalars(select(Photo.path)))


# -- facts ------------------------------------------------------------------------------------


def place_counts(session: Session) -> list[tuple[tuple[str, ...], int]]:
    """(place names top-down, photos there) for every place a photo was placed at, most
    photos first: what `search.understand.Vocabulary.build(places=...)` takes."""
    rows = session.execute(
        select(Photo.place_path, func.count())
        .where(Photo.place_path.is_not(None))
        .group_by(Photo.place_path)
        .order_by(func.count().desc(), Photo.place_path)
    )
    out: dict[tuple[str, ...], int] = {}
    for raw, count in rows:
        path = _place_path(raw)
        if path:
            out[path] = out.get(path, 0) + count
    return sorted(out.items(), key=lambda item: (-item[1], item[0]))


def _place_path(raw: str) -> tuple[str, ...]:
    """A stored place_path (a JSON list of names), () if it is not one."""
    try:
        names = json.loads(raw)
    except ValueError:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        return ()
    return tuple(names)


def camera_counts(session: Session) -> list[tuple[str, str, int]]:
    """(make, model, photos) for every camera the photos name, most photos first; "" where
    a photo names only the make or only the model."""
    make, model = func.coalesce(Photo.camera_make, ""), func.coalesce(Photo.camera_model, "")
    rows = session.execute(
        select(make, model, func.count())
        .where((Photo.camera_make.is_not(None)) | (Photo.camera_model.is_not(None)))
        .group_by(make, model)
        .order_by(func.count().desc(), make, model)
    )
    return [(mk, md, count) for mk, md, count in rows]


def facts_counts(session: Session) -> dict[str, int]:
    """How many photos have a place ("place"), a camera ("camera"), keywords ("keywords"),
    facts that could not be read ("unreadable"), and facts not read yet ("unread": a library
    made before schema 4, until its next index run)."""

    def count(condition: ColumnElement[bool]) -> Any:
        return func.count().filter(condition)

    row = session.execute(
        select(
            count(Photo.place.is_not(None)),
            count(Photo.camera_make.is_not(None) | Photo.camera_model.is_not(None)),
            count(Photo.keywords.is_not(None)),
            count(Photo.facts_problems.is_not(None)),
            count(Photo.facts.is_(None)),
        )
    ).one()
    return dict(zip(("place", "camera", "keywords", "unreadable", "unread"), row, strict=True))


def missing_facts(session: Session) -> list[tuple[int, str, str]]:
    """(id, key path, on-disk relative path) of every photo whose facts were not read yet."""
    rows = session.execute(
        select(Photo.id, Photo.path, Photo.disk_path)
        .where(Photo.facts.is_(None))
        .order_by(Photo.id)
    )
    return [(pid, path, disk_relpath(path, disk)) for pid, path, disk in rows]


# -- rows -------------------------------------------------------------------------------------


def photo_by_relpath(session: Session, relpath: str) -> Photo | None:
    """The row of a path relative to the photo root (its key), if indexed."""
    return session.scalars(select(Photo).where(Photo.path == relpath)).first()


def photos_with_hash(session: Session, content_hash: str) -> list[Photo]:
    """Rows whose file has exactly these bytes (a file and its exact duplicates)."""
    return list(session.scalars(select(Photo).where(Photo.content_hash == content_hash)))


def photos_by_id(session: Session, ids: np.ndarray | list[int]) -> dict[int, Photo]:
    """Rows for FAISS ids (ids without a row, e.g. -1 or stale ones, are absent)."""
    wanted = _id_list(ids)
    if wanted == "[]":
        return {}
    rows = session.scalars(select(Photo).where(Photo.id.in_(_LISTED)), {"ids": wanted})
    return {row.id: row for row in rows}


def present_ids(session: Session, ids: Collection[int]) -> set[int]:
    """Which of these ids (FAISS candidates: -1 and stale ids may be among them) have a photo
    row; reads the primary key only, no row."""
    wanted = _id_list(ids)
    if wanted == "[]":
        return set()
    return set(session.scalars(select(Photo.id).where(Photo.id.in_(_LISTED)), {"ids": wanted}))


def taken_at_by_id(session: Session, ids: Collection[int]) -> dict[int, datetime | None]:
    """When each of these photos was taken, by id, for ordering candidates by date (ids
    without a row are absent)."""
    wanted = _id_list(ids)
    if wanted == "[]":
        return {}
    found = session.execute(
        select(Photo.id, Photo.taken_at).where(Photo.id.in_(_LISTED)), {"ids": wanted}
    )
    return {pid: taken for pid, taken in found}


# Reads by a list of ids take it as one JSON array (`ids`), a table of them: one parameter
# however many ids (no chunks under SQLite's cap on parameters), one statement SQLAlchemy
# compiles once (an IN of n parameters is built and compiled anew for every n).
_LISTED = select(column("value", Integer)).select_from(func.json_each(bindparam("ids")))


def _id_list(ids: Collection[int] | np.ndarray) -> str:
    """Ids as the JSON array `_LISTED` reads (negative ids, FAISS's "none", left out)."""
    return json.dumps(sorted({int(i) for i in ids if i >= 0}))


# -- facts: where and with what ------------------------------------------------------------------


def place_condition(labels: Collection[str]) -> ColumnElement[bool]:
    """Photos taken at any of these places: a label is a place's names from the top level down
    joined by spaces ("제주특별자치도 서귀포시"); a photo is there when its `place` equals it or
    starts with it plus a space (an index range on `place`, no LIKE)."""
    # " " + 1 is "!": [label + " ", label + "!") holds exactly the texts starting label + " ".
    return or_(
        *(
            or_(Photo.place == label, and_(Photo.place >= label + " ", Photo.place < label + "!"))
            for label in labels
        )
    )


def camera_condition(cameras: Collection[tuple[str, str]]) -> ColumnElement[bool]:
    """Photos taken with any of these (make, model) pairs ("" for a part a photo lacks, as
    `camera_counts` gives them)."""
    make_, model_ = func.coalesce(Photo.camera_make, ""), func.coalesce(Photo.camera_model, "")
    return or_(*(and_(make_ == make, model_ == model) for make, model in cameras))


def photos_by_date(
    session: Session,
    *where: ColumnElement[bool],
    newest: bool = True,
    offset: int = 0,
    limit: int | None = None,
) -> list[Photo]:
    """The photos matching the conditions, newest (or oldest) taken first, ties by id; a page
    of them from `offset`, at most `limit` (None: all)."""
    order = (Photo.taken_at.desc(), Photo.id) if newest else (Photo.taken_at, Photo.id)
    query = select(Photo).where(*where).order_by(*order).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


class PlanRow(NamedTuple):
    """What planning an indexing run needs of one photo row."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str
    on_disk: str | None  # the name on disk where it is not `path`
    etag: str | None = None  # an object's ETag (object-store roots)


class FailureRow(NamedTuple):
    """A recorded failure, as planning reads it."""

    path: str
    kind: str
    size: int
    mtime_ns: int
    reason: str


def rows_for_plan(session: Session, where: ColumnElement[bool]) -> Iterator[PlanRow]:
    """The photo rows matching `where` (a condition on Photo.path), as planning reads them."""
    rows = session.execute(
        select(
            Photo.id,
            Photo.path,
            Photo.size,
            Photo.mtime_ns,
            Photo.content_hash,
            Photo.disk_path,
            Photo.etag,
        ).where(where)
    )
    for pid, path, size, mtime, chash, disk, etag in rows:
        on_disk = None if disk is None else disk_relpath(path, disk)
        yield PlanRow(pid, path, size, mtime, chash, on_disk, etag)


def failures_for_plan(session: Session, where: ColumnElement[bool]) -> Iterator[FailureRow]:
    """The failure rows matching `where` (a condition on Failure.path)."""
    rows = session.execute(
        select(Failure.path, Failure.kind, Failure.size, Failure.mtime_ns, Failure.reason).where(
            where
        )
    )
    return (FailureRow(*row) for row in rows)


def reuse_sources(session: Session, content_hash: str) -> list[Any]:
    """The rows holding these bytes, by id, with what a new row copies from one (its
    embedding, size in pixels, date, fingerprints and facts) and its path."""
    return list(
        session.execute(
            select(
                Photo.id,
                Photo.path,
                Photo.width,
                Photo.height,
                Photo.taken_at,
                Photo.taken_at_source,
                Photo.embedding,
                Photo.phash,
                Photo.pthumb,
                *FACTS,
            )
            .where(Photo.content_hash == content_hash)
            .order_by(Photo.id)
        )
    )


def missing_phashes(session: Session) -> list[tuple[int, str]]:
    """(id, on-disk relative path) of every photo without a perceptual hash yet."""
    rows = session.execute(
        select(Photo.id, Photo.path, Photo.disk_path).where(Photo.phash.is_(None))
    )
    return [(pid, disk_relpath(path, disk)) for pid, path, disk in rows]


class DuplicateRow(NamedTuple):
    """What grouping duplicates needs of one photo row."""

    id: int
    path: str
    on_disk: str  # the relative path to open
    width: int
    height: int
    size: int
    taken_at: datetime
    content_hash: str
    phash: int | None
    taken_at_source: str = "mtime"  # "exif": the date is the camera's (DateTimeOriginal)


def rows_for_duplicates(session: Session, *where: ColumnElement[bool]) -> list[DuplicateRow]:
    """The photo rows matching the conditions, by id, as duplicate grouping reads them."""
    rows = session.execute(
        select(
            Photo.id,
            Photo.path,
            Photo.disk_path,
            Photo.width,
            Photo.height,
            Photo.size,
            Photo.taken_at,
            Photo.content_hash,
            Photo.phash,
            Photo.taken_at_source,
        )
        .where(*where)
        .order_by(Photo.id)
    )
    return [
        DuplicateRow(pid, path, disk_relpath(path, disk), *more) for pid, path, disk, *more in rows
    ]


def thumbnails(session: Session, ids: Collection[int]) -> dict[int, bytes]:
    """Stored perceptual thumbnails by photo id (photos without one are absent)."""
    out: dict[int, bytes] = {}
    wanted = [int(i) for i in ids]
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start : start + ID_CHUNK]
        found = session.execute(select(Photo.id, Photo.pthumb).where(Photo.id.in_(chunk)))
        out.update((pid, raw) for pid, raw in found if raw is not None)
    return out


def damaged_embeddings(session: Session, dim: int) -> list[tuple[int, str]]:
    """(id, path) of the rows whose stored embedding is not `dim` float32s."""
    rows = session.execute(
        select(Photo.id, Photo.path).where(func.length(Photo.embedding) != 4 * dim)
    )
    return [(pid, path) for pid, path in rows]


def first_embedding_size(session: Session) -> tuple[int, int] | None:
    """(id, bytes) of one stored embedding, for a cheap check of the manifest's dim."""
    found = session.execute(select(Photo.id, func.length(Photo.embedding)).limit(1)).first()
    return None if found is None else (found[0], found[1])
