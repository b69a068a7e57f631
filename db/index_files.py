"""The FAISS file of a library, through its whole life: load, build from the stored vectors,
save (atomically), switch to another type, reconcile with the database after a crash, and the
leftovers an interrupted run leaves. `db.vectors` holds the FAISS operations themselves.

`IndexFiles` is a part of `db.Library` (it reads the manifest and the rows through it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from db import embeddings, photo_writes, photos, vectors
from db.engine import write_errors
from db.errors import LibraryError
from db.manifest import INDEX_AUTO, INDEX_CHOSEN

if TYPE_CHECKING:
    from db.library import Library


def index_filename(index_type: str) -> str:
    """File name of the FAISS index of one type (the type is in the name so a switch is atomic)."""
    return f"index-{index_type}.faiss"


class IndexFiles:
    """The index-file methods of `db.Library` (a mixin: `self` is the Library)."""

    def index_path(self: Library, index_type: str | None = None) -> Path:
        """The FAISS file for `index_type` (default: the manifest's type)."""
        if index_type is None:
            manifest = self.manifest()
            index_type = manifest.index_type if manifest else vectors.DEFAULT_INDEX_TYPE
        return self.directory / index_filename(index_type)

    def load_index(self: Library) -> faiss.Index | None:
        """The saved FAISS index of the manifest's type, or None if there is none yet."""
        path = self.index_path()
        if not path.exists():
            return None
        return vectors.read_index(path)

    def build_index(
        self: Library,
        index_type: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> faiss.Index:
        """A fresh index of every stored embedding (one read snapshot); does not save it.

        Types that train (IVF) train on a random sample spread over the whole collection;
        the vectors are then streamed in chunks, so memory holds the index, the sample and
        one chunk. `progress(added, total)`: see `vectors.build_index`.
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        index_type = index_type or manifest.index_type
        with self.session() as s, s.begin():
            ids = photos.photo_ids(s)
            return vectors.build_index(
                index_type,
                manifest.dim,
                embeddings.iter_embeddings(s),
                len(ids),
                sample=lambda rows: embeddings.vectors_for(s, ids[rows]),
                progress=progress,
            )

    def switch_index(
        self: Library,
        index_type: str,
        *,
        automatic: bool,
        progress: Callable[[int, int], None] | None = None,
        before_switch: Callable[[faiss.Index], None] | None = None,
    ) -> faiss.Index:
        """Rebuild the index as `index_type` from the stored vectors and make it the library's,
        recording whether the type is automatic (Manifest.index_choice). Hold the lock.

        The new file is written whole (atomically) first, then the manifest names it, then
        the old type's file goes: a reader always finds a whole index of the type the manifest
        names, and a crash at any point leaves the previous index usable (a new file the
        manifest does not name yet is a leftover that the next writer removes and redoes).
        `before_switch(index)` runs on the built index before it is saved (search tunes it).
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        index = self.build_index(index_type, progress)
        if before_switch is not None:
            before_switch(index)
        self.save_index(index, index_type)
        choice = INDEX_AUTO if automatic else INDEX_CHOSEN
        if (index_type, choice) != (manifest.index_type, manifest.index_choice):
            with write_errors(self.directory), self.session() as s, s.begin():
                self.set_manifest(s, replace(manifest, index_type=index_type, index_choice=choice))
            self.write_manifest_json()
        if index_type != manifest.index_type:
            self.index_path(manifest.index_type).unlink(missing_ok=True)
        return index

    def save_index(self: Library, index: faiss.Index, index_type: str | None = None) -> None:
        """Atomically replace the index file of `index_type` (default: the manifest's). Hold the lock."""
        vectors.write_index(index, self.index_path(index_type))

    def reconcile_index(self: Library) -> tuple[faiss.Index, bool]:
        """The saved index, brought up to the database's ids and saved; one rebuilt from the
        database if the file is unreadable, of another size, or cannot drop the ids it must.

        Returns (index, changed). The caller holds the lock, so no row changes meanwhile.
        Row embeddings never change under an id, so equal id sets mean equal contents, and a
        file that lags the database (a run killed between a commit and its next save) only
        needs the rows it lacks added and the deleted ones removed: no retraining, however
        big the library.
        """
        manifest = self.manifest()
        if manifest is None:
            raise LibraryError(f"the library at {self.directory} has no manifest yet")
        try:
            index = self.load_index()
        except LibraryError:
            index = None  # unreadable file: rebuilding it is the repair
        if index is not None and index.d == manifest.dim and index.is_trained:
            held = np.sort(vectors.index_ids(index))
            ids = self.photo_ids()
            if np.array_equal(held, ids):
                return index, False
            if len(np.unique(held)) == len(held) and vectors.remove(
                index, np.setdiff1d(held, ids, assume_unique=True)
            ):
                missing = np.setdiff1d(ids, held, assume_unique=True)
                with self.session() as s, s.begin():
                    for start in range(0, len(missing), 4096):
                        chunk = missing[start : start + 4096]
                        vectors.add(index, chunk, embeddings.vectors_for(s, chunk))
                self.save_index(index)
                return index, True
        index = self.build_index()
        self.save_index(index)
        return index, True

    def drop_damaged_embeddings(self: Library, dim: int) -> list[str]:
        """Delete rows whose stored embedding is not `dim` float32s; returns their paths, which
        the indexer then reads again as new files. Hold the lock."""
        with write_errors(self.directory), self.session() as s, s.begin():
            bad = photos.damaged_embeddings(s, dim)
            photo_writes.delete_photos(s, [pid for pid, _ in bad])
        return [path for _, path in bad]

    def leftovers(self: Library) -> list[Path]:
        """Files an interrupted run left behind: index files of a type the manifest does not
        name, temp files of atomic writes. Not part of the library (info does not count them)."""
        manifest = self.manifest(check=False)
        live = index_filename(manifest.index_type) if manifest else None
        found = []
        for path in self.directory.glob("*"):
            name = path.name
            stale_index = name.startswith("index-") and name.endswith(".faiss") and name != live
            temp = name.startswith(".") and name.endswith(".tmp")
            if (stale_index or temp) and path.is_file():
                found.append(path)
        return sorted(found)

    def remove_leftovers(self: Library) -> list[Path]:
        """Delete `leftovers()`; hold the lock (a writer's temp files are then its own, dead)."""
        removed = []
        for path in self.leftovers():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed
