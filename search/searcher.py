"""`Searcher`: Korean text, photos or composed queries against one library, as typed results."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import db
from db import photos
from db.vectors import retrain_at
from koclip.preprocess import nfc
from search.dates import parse_range
from search.duplicates import DuplicateGroup, DuplicateOptions, find_duplicates
from search.encode import QueryEncoder, combine, open_query_image, query_image_path
from search.engine import IndexView, candidate_limit, top_k
from search.errors import QueryError, QueryImageError
from search.filters import (
    Filter,
    find_on_disk,
    folder_filter,
    relative_to_root,
)
from search.library import (
    LibraryInfo,
    check_model,
    describe_library,
    find_library,
    folder_counts,
    open_read_only,
)
from search.query import Term, check_text, describe, parse_query
from search.results import PhotoInfo, SearchHit, SearchResults, display_path, stored_facts

DEFAULT_K = 20
# An in-memory image query cannot be matched to its file by bytes; a library photo whose
# embedding equals it (to float noise between batch shapes) is taken to be the image itself.
SAME_IMAGE_SCORE = 1 - 1e-4
# Up to this many candidates a search fetches without first counting the library.
_CHEAP_FETCH = 4096
# `folders` rescans at once when photos come or go, and at least this often (seconds) for
# changes that keep the count and the newest id (a move).
FOLDERS_TTL = 30.0


@dataclass(frozen=True)
class SearchOptions:
    """Paging, threshold and filters shared by every kind of query."""

    k: int = DEFAULT_K
    offset: int = 0
    threshold: float | None = None
    under: str | os.PathLike[str] | None = None
    after: str | datetime | None = None
    before: str | datetime | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be a whole number of at least 1, not {self.k!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise QueryError(f"offset must be a whole number of at least 0, not {self.offset!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise QueryError(f"threshold must be a finite number, not {self.threshold!r}")
        for name in ("under", "after", "before"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                check_text(os.fspath(value), name)


@dataclass
class _Query:
    """One query vector with what it must not return."""

    text: str
    vector: np.ndarray
    exclude: set[int]
    exclude_same: bool = False  # drop hits that score as the image itself


class Searcher:
    """Search one library; loads only the model tower a query needs.

    `disk_cache` keeps text embeddings across processes; `backend="numpy"` encodes queries
    without JAX (quicker to a first answer, slower per query after: for one-shot scripts).

    Example:

        with Searcher("~/Pictures") as searcher:
            for hit in searcher.text("바닷가에서 노는 강아지", k=5):
                print(hit.rank, f"{hit.score:.3f}", hit.path)
    """

    def __init__(
        self,
        library: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        cache_size: int = 256,
        disk_cache: bool = False,
        backend: str = "jax",
    ) -> None:
        self.directory = find_library(library)
        self.library, self.manifest = open_read_only(self.directory)
        try:
            check_model(self.manifest, model)
            self.photo_root = self.library.photo_root()
            self.encoder = QueryEncoder(
                self.manifest, cache_size, persistent=disk_cache, backend=backend
            )
        except BaseException:
            self.library.close()
            raise
        self.index = IndexView(self.library, self.manifest.index_type, self.manifest.dim)
        self._folders: tuple[tuple[int, int | None], float, list[tuple[str, int]]] | None = None

    # -- queries ------------------------------------------------------------------------------

    def text(self, query: str, *, prompt: bool = True, **options: Any) -> SearchResults:
        """Photos matching a text, taken literally (no `+`/`-` parsing; see `compose`)."""
        return self.texts([query], prompt=prompt, **options)[0]

    def texts(
        self, queries: Sequence[str], *, prompt: bool = True, **options: Any
    ) -> list[SearchResults]:
        """Several text queries encoded in one batch and searched in one FAISS call."""
        opts, flt = self._options(options)
        if not queries:
            return []
        vectors = self.encoder.texts(list(queries), prompt=prompt)
        batch = [_Query(nfc(q).strip(), v, set()) for q, v in zip(queries, vectors, strict=True)]
        return self._search(batch, opts, flt)

    def image(
        self, image: str | os.PathLike[str] | Any, *, label: str | None = None, **options: Any
    ) -> SearchResults:
        """Photos similar to an image (a path inside or outside the library, or a PIL image,
        echoed as `label` when given); the image itself and its exact duplicates are not
        returned."""
        opts, flt = self._options(options)
        vector, exclude, same = self._image_vector(image)
        label = Term(image=image, label=label).describe()
        return self._search([_Query(label, vector, exclude, same)], opts, flt)[0]

    def similar(self, photo_id: int, **options: Any) -> SearchResults:
        """Photos like a library photo, by its stored embedding (its file may be gone);
        the photo itself and its exact duplicates are not returned."""
        opts, flt = self._options(options)
        with self.library.session() as s, s.begin():
            row = s.get(db.Photo, int(photo_id))
            if row is None:
                raise QueryError(f"no photo with id {photo_id} in the library")
            vector, exclude = self._stored(s, row)
            label = str(self.photo_root / row.path)
        return self._search([_Query(label, vector, exclude)], opts, flt)[0]

    def compose(
        self, terms: str | Sequence[str] | Sequence[Term], *, prompt: bool = True, **options: Any
    ) -> SearchResults:
        """A composed query such as `바다 + 노을 - 사람` or `2:강아지 + ./beach.jpg`: the weighted
        sum of the terms' unit embeddings, renormalised."""
        opts, flt = self._options(options)
        if isinstance(terms, str) or (terms and not isinstance(terms[0], Term)):
            terms = parse_query(terms)  # type: ignore[arg-type]
        terms = list(terms)
        if not terms:
            raise QueryError("the query is empty")
        return self._search([self._compose(terms, prompt)], opts, flt)[0]

    def vector(self, embedding: np.ndarray, **options: Any) -> SearchResults:
        """Photos nearest to a raw embedding of the library's model (normalised here)."""
        opts, flt = self._options(options)
        vector = np.asarray(embedding, np.float32).reshape(-1)
        if vector.shape != (self.manifest.dim,):
            raise QueryError(
                f"the embedding has {vector.size} values; this library's have {self.manifest.dim}"
            )
        vector = combine([1.0], vector[None])
        return self._search([_Query("<vector>", vector, set())], opts, flt)[0]

    def warm(self, towers: Sequence[str] = ("text",)) -> None:
        """Load and compile the given towers now (caches bypassed), so the first query is fast."""
        for tower in towers:
            self.encoder.warm(tower)

    def info(self, full: bool = True) -> LibraryInfo:
        """Photo and failure counts, model, index type, last indexed time; `full` adds the
        index's vector count (loading it, as a search would) and the library's size on disk."""
        indexed = memory = retrain = None
        if full:
            loaded = self.index.refresh()
            if loaded is not None:
                # Searchable committed photos: the file's ids still in the database, and the
                # rows added beside it (a stale id of a deleted photo is never shown).
                held = np.concatenate([loaded.ids, loaded.extra_ids])
                indexed = int(np.isin(held, self.library.photo_ids()).sum())
                memory = loaded.resident_bytes()
                retrain = retrain_at(loaded.index)
        return describe_library(
            self.library,
            indexed_vectors=indexed,
            disk=full,
            index_memory=memory,
            retrain_at=retrain,
        )

    # -- the library's photos -----------------------------------------------------------------

    def photo(self, photo_id: int) -> PhotoInfo | None:
        """A library photo by id (its file may be gone), or None if there is none."""
        with self.library.session() as s, s.begin():
            row = s.get(db.Photo, int(photo_id))
            return None if row is None else self._info(row)

    def photo_at(self, path: str | os.PathLike[str]) -> PhotoInfo | None:
        """The library photo at `path` (absolute, or relative to the photo root), or None if
        it is not one (outside the photo root included, whatever `..` it holds)."""
        rel = relative_to_root(self.photo_root / path, self.photo_root)
        if not rel:
            return None
        with self.library.session() as s, s.begin():
            row = photos.photo_by_relpath(s, rel)
            return None if row is None else self._info(row)

    def duplicates(self, options: DuplicateOptions | None = None) -> list[DuplicateGroup]:
        """The library's duplicate groups (search.duplicates), largest first."""
        return find_duplicates(self.library, options or DuplicateOptions())

    def folders(self) -> list[tuple[str, int]]:
        """Every folder holding photos (relative to the photo root) with its photo count,
        subfolders included, sorted; cached (see FOLDERS_TTL)."""
        with self.library.session() as s, s.begin():
            stamp = photos.count_and_newest(s)
            cached = self._folders
            if cached and cached[0] == stamp and time.monotonic() - cached[1] < FOLDERS_TTL:
                return cached[2]
            folders = folder_counts(s)
        self._folders = (stamp, time.monotonic(), folders)
        return folders

    def _info(self, row: db.Photo) -> PhotoInfo:
        stored = (row.width, row.height, row.taken_at, row.taken_at_source, row.size)
        path = self.photo_root / row.disk_relpath()
        return PhotoInfo(row.id, path, row.path, *stored, row.content_hash, **stored_facts(row))

    # -- embedding ----------------------------------------------------------------------------

    def _compose(self, terms: list[Term], prompt: bool) -> _Query:
        texts = [t.text for t in terms if t.is_text]
        text_vecs = iter(self.encoder.texts(texts, prompt=prompt) if texts else ())
        vectors, exclude = [], set()
        for term in terms:
            if term.is_text:
                vectors.append(next(text_vecs))
                continue
            vector, ids, _ = self._image_vector(term.image)
            vectors.append(vector)
            if term.weight > 0:
                exclude |= ids
        vector = combine([t.weight for t in terms], np.stack(vectors))
        return _Query(describe(terms), vector, exclude)

    def _image_vector(self, image: Any) -> tuple[np.ndarray, set[int], bool]:
        """(unit vector, ids that are this image, whether to drop hits scoring as the image)."""
        if not isinstance(image, (str, os.PathLike)):
            return self.encoder.images([image])[0], set(), True
        path = query_image_path(find_on_disk(Path(image).expanduser()))
        try:
            digest = db.content_hash(path)
        except OSError as exc:
            raise QueryImageError(f"cannot read the query image {image}: {exc.strerror}") from None
        rel = relative_to_root(path, self.photo_root)
        with self.library.session() as s, s.begin():
            same = photos.photos_with_hash(s, digest)
            if same:
                # Same bytes, same embedding: no need to load the vision tower at all.
                return (*self._stored(s, same[0]), False)
            row = photos.photo_by_relpath(s, rel) if rel else None
            # A file changed since it was indexed is still "the image itself".
            exclude = {row.id} if row is not None else set()
        vector = self.encoder.images([open_query_image(path)])[0]
        return vector, exclude, False

    def _stored(self, session: Any, row: db.Photo) -> tuple[np.ndarray, set[int]]:
        """A library photo's stored vector (checked: LibraryCorruptError if damaged), and the
        ids that are it (itself, its exact copies)."""
        same = {p.id for p in photos.photos_with_hash(session, row.content_hash)}
        return photos.vectors_for(session, [row.id])[0], same | {row.id}

    # -- searching ----------------------------------------------------------------------------

    def _options(self, options: dict[str, Any]) -> tuple[SearchOptions, Filter]:
        """Validate options and resolve the filter before any model is loaded."""
        opts = SearchOptions(**options)
        after, before = parse_range(opts.after, opts.before)
        under = folder_filter(opts.under, self.photo_root) if opts.under is not None else None
        return opts, Filter(under=under or None, after=after, before=before)

    def _search(self, batch: list[_Query], opts: SearchOptions, flt: Filter) -> list[SearchResults]:
        queries = np.stack([q.vector for q in batch]).astype(np.float32)
        want = opts.offset + opts.k
        # One candidate past the page, so `_settled` can see whether the page ends inside a tie.
        fetch = (
            want
            + 1
            + max(len(q.exclude) for q in batch)
            + (1 if any(q.exclude_same for q in batch) else 0)
        )
        loaded = self.index.refresh()
        with self.library.session() as s, s.begin():
            limit = None
            while True:
                if fetch > _CHEAP_FETCH:
                    # Never allocate for more candidates than exist (`-k 10**12` is a page of
                    # the whole library); one column past the last one tells `_settled` so.
                    limit = limit or candidate_limit(loaded, s) + 1
                    fetch = min(fetch, limit)
                scores, ids = top_k(loaded, s, flt, queries, fetch)
                rows = photos.photos_by_id(s, np.unique(ids[ids >= 0]))
                kept = [
                    self._keep(q, sc, ii, rows)
                    for q, sc, ii in zip(batch, scores, ids, strict=True)
                ]
                if all(
                    _settled(k, sc, ii, want) for k, sc, ii in zip(kept, scores, ids, strict=True)
                ):
                    break
                fetch *= 2
        return [self._results(q, k, opts) for q, k in zip(batch, kept, strict=True)]

    @staticmethod
    def _keep(
        query: _Query, scores: np.ndarray, ids: np.ndarray, rows: dict[int, db.Photo]
    ) -> list[tuple[float, db.Photo]]:
        out = []
        for score, pid in zip(scores.tolist(), ids.tolist(), strict=True):
            if pid < 0 or pid in query.exclude or pid not in rows:
                continue
            if query.exclude_same and score >= SAME_IMAGE_SCORE:
                continue
            out.append((score, rows[pid]))
        return out

    def _results(
        self, query: _Query, kept: list[tuple[float, db.Photo]], opts: SearchOptions
    ) -> SearchResults:
        # Equal scores (exact duplicates) come back from FAISS in an order that depends on k;
        # ordering them by id makes pages of one ranking agree with each other.
        kept = sorted(kept, key=lambda pair: (-pair[0], pair[1].id))
        page = kept[opts.offset : opts.offset + opts.k]
        hits = []
        for i, (score, row) in enumerate(page):
            if opts.threshold is not None and score < opts.threshold:
                break
            hits.append(
                SearchHit(
                    rank=opts.offset + i + 1,
                    score=float(score),
                    path=self.photo_root / row.disk_relpath(),
                    photo_id=row.id,
                    width=row.width,
                    height=row.height,
                    taken_at=row.taken_at,
                    size=row.size,
                    relpath=row.path,
                    **stored_facts(row),
                )
            )
        # A label may hold a file name that is not UTF-8: shown escaped, as every path is.
        return SearchResults(query=display_path(query.text), hits=tuple(hits))

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database connections."""
        self.encoder.close()
        self.library.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settled(
    kept: list[tuple[float, db.Photo]], scores: np.ndarray, ids: np.ndarray, want: int
) -> bool:
    """Whether the first `want` hits can be cut from `kept`.

    Fetching further is needed when too few candidates survived (stale ids, exclusions) or
    when the last candidate fetched ties with the last hit wanted: photos of that score may
    lie beyond what was fetched, and a page must not cut a group of equal scores by chance.
    """
    if ids[-1] < 0:
        return True  # every candidate there is was fetched
    if len(kept) < want:
        return False
    return bool(scores[-1] < kept[want - 1][0])
