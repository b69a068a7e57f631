"""The photos' vectors as stored: streamed in chunks (index builds), read by id (re-ranking,
`similar`, the writer's reuse), each checked against the size the library's dim calls for.
The rest of the photo-row reads are in `db.photos`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from db.errors import LibraryCorruptError, LibraryError, index_command
from db.photos import ID_CHUNK
from db.schema import ManifestRow, Photo, blob_to_vector

# -- embeddings --------------------------------------------------------------------------------


def iter_embeddings(
    session: Session, *where: ColumnElement[bool], chunk: int = 4096
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks of the stored embeddings of every photo (or those matching the
    `where` conditions on Photo), by id, within `session`'s transaction."""
    expected = _blob_bytes(session)
    last = -1
    while True:
        rows = session.execute(
            select(Photo.id, Photo.embedding)
            .where(Photo.id > last, *where)
            .order_by(Photo.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([_stored_vector(session, pid, blob, expected) for pid, blob in rows])
        last = int(ids[-1])
        yield ids, vecs


def stored_vectors(session: Session, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids, vectors (n, dim)) of those of the given ids that have a row (others are
    left out), for search's re-rank of a few hundred candidates; LibraryCorruptError if a
    stored vector is not `dim` float32s.

    One plain statement per 900 ids on the session's connection (its errors still go
    through the engine's hook), not the ORM: this read is on every search's path, and the
    ORM's per-row overhead is several times its cost (bench/bigindex.py measures it).
    """
    conn = session.connection()
    found: list[tuple[int, bytes]] = []
    wanted = np.unique(np.asarray(ids, np.int64)).tolist()
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start : start + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        found += conn.exec_driver_sql(
            f"SELECT id, embedding FROM {Photo.__tablename__} WHERE id IN ({marks})",
            tuple(chunk),
        ).all()
    found.sort()
    for pid, blob in found:
        if len(blob) != 4 * dim:
            _stored_vector(session, pid, blob, 4 * dim)  # raises, naming the photo
    ids_found = np.fromiter((r[0] for r in found), np.int64, len(found))
    vecs = np.frombuffer(b"".join(r[1] for r in found), "<f4").reshape(len(found), dim)
    return ids_found, vecs.astype(np.float32)


def vectors_for(session: Session, ids: np.ndarray | list[int]) -> np.ndarray:
    """Stored embeddings (n, dim) for existing ids, in the order given (LibraryError if one is missing)."""
    wanted = [int(i) for i in ids]
    found: dict[int, np.ndarray] = {}
    expected = _blob_bytes(session)
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start : start + ID_CHUNK]
        rows = session.execute(select(Photo.id, Photo.embedding).where(Photo.id.in_(chunk)))
        found.update((pid, _stored_vector(session, pid, blob, expected)) for pid, blob in rows)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise LibraryError(f"no stored embedding for photo ids {missing[:5]}")
    if not wanted:
        return np.zeros((0, 0), np.float32)
    return np.stack([found[i] for i in wanted])


def _blob_bytes(session: Session) -> int | None:
    """Bytes of one stored embedding, by the manifest's dim (None without a sound one)."""
    dim = session.scalar(select(ManifestRow.dim).where(ManifestRow.id == 1))
    return 4 * dim if isinstance(dim, int) and dim > 0 else None


def _stored_vector(
    session: Session, photo_id: int, blob: bytes, expected: int | None
) -> np.ndarray:
    """One stored embedding; LibraryCorruptError naming the file if its size is wrong."""
    if expected is not None and len(blob) != expected:
        where = session.info.get("directory")
        command = index_command(where) if where else "koclip-search index PHOTO_DIR"
        raise LibraryCorruptError(
            f"the library database {session.info.get('db_path', '')} holds a damaged embedding "
            f"(photo {photo_id}: {len(blob)} bytes, not {expected}); run `{command}` to "
            "index that photo again"
        )
    return blob_to_vector(blob)
