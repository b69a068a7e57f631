"""`Searcher`: Korean text, photos or composed queries against one library, as typed results."""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

import db
from db import embeddings, lexical, photos
from db.vectors import retrain_at
from koclip.images.preprocess import nfc
from search.cutoff import Cutoff, adaptive_cutoff
from search.dates import parse_range
from search.duplicates import DuplicateGroup, DuplicateOptions, find_duplicates
from search.encode import QueryEncoder, combine, open_query_image, query_image_path
from search.engine import IndexView, candidate_limit, top_k
from search.errors import QueryError, QueryImageError
from search.filters import (
    Filter,
    find_on_disk,
    relative_to_root,
)
from search.library import (
    LibraryInfo,
    check_model,
    describe_library,
    find_library,
    folder_counts,
    open_read_only,
    root_of,
)
from search.query import Term, check_text, describe, parse_query
from search.results import PhotoInfo, SearchHit, SearchResults, display_path, stored_facts
from search.roots import PhotoRoot
from search.understand import Understood, Vocabulary, understand

DEFAULT_K = 20
# An in-memory image query cannot be matched to its file by bytes; a library photo whose
# embedding equals it (to float noise between batch shapes) is taken to be the image itself.
SAME_IMAGE_SCORE = 1 - 1e-4
# Up to this many candidates a search fetches without first counting the library.
_CHEAP_FETCH = 4096
# `folders` and `vocabulary` read the library again at once when anything was committed to it
# since (`db.photos.change_stamp`), and at least this often (seconds) whatever the stamp says.
FOLDERS_TTL = 30.0
# How results are ordered: by the query (cosine, fused with the photos' words), or by date
# among the photos relevant to it (see `SearchOptions.threshold`).
SORTS = ("relevance", "newest", "oldest")
THRESHOLDS = ("auto", "none")
# A text query's words are looked up in the photos' names, folders, keywords, captions and
# places; the best LEXICAL_DEPTH matches are fused (reciprocal rank fusion) with at least the
# FUSE_DEPTH nearest photos by embedding.
LEXICAL_DEPTH = 500
FUSE_DEPTH = 256
# Photo ids (over all its words) `_words_memo` keeps at most (then it starts again).
WORDS_MEMO = 1_000_000
# "Every candidate": a page of the whole library (bounded by its size when fetched).
_ALL = 10**12


@dataclass(frozen=True)
class SearchOptions:
    """Paging, threshold, order and filters shared by every kind of query.

    `threshold`: a number (only photos whose cosine is at least it), "auto" (the photos that
    stand out for the query: `search.cutoff.adaptive_cutoff` over its scores), "none", or None:
    "auto" under the date sorts, "none" under relevance. `sort`: "relevance" (the default),
    "newest" or "oldest" (taken first, among the photos the threshold keeps). `literal`: the
    query's text goes to the text tower as typed: no dates, places or cameras understood, no
    match on the photos' words. `today`: the day "작년", "이번 달"... count from (default: the
    local date now)."""

    k: int = DEFAULT_K
    offset: int = 0
    threshold: float | str | None = None
    under: str | os.PathLike[str] | None = None
    after: str | datetime | None = None
    before: str | datetime | None = None
    sort: str = "relevance"
    literal: bool = False
    today: date | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be a whole number of at least 1, not {self.k!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise QueryError(f"offset must be a whole number of at least 0, not {self.offset!r}")
        if isinstance(self.threshold, str):
            word = self.threshold.strip().lower()
            if word not in THRESHOLDS:
                raise QueryError(
                    f"threshold must be a number, auto or none, not {self.threshold!r}"
                )
            object.__setattr__(self, "threshold", word)
        elif self.threshold is not None and (
            isinstance(self.threshold, bool) or not math.isfinite(self.threshold)
        ):
            raise QueryError(f"threshold must be a finite number, not {self.threshold!r}")
        if self.sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}, not {self.sort!r}")
        if self.today is not None and not isinstance(self.today, date):
            raise QueryError(f"today must be a date, not {self.today!r}")
        for name in ("under", "after", "before"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                check_text(os.fspath(value), name)

    @property
    def cut(self) -> float | str | None:
        """The threshold that applies: a number, "auto", or None (keep every photo)."""
        if self.threshold is None:
            return "auto" if self.sort != "relevance" else None
        return None if self.threshold == "none" else self.threshold


@dataclass(frozen=True)
class TextRequest:
    """One text query of a batch (`Searcher.search_many`) with its own options.

    `composed`: the query is read in the composed syntax (`바다 + 노을 - 사람`, `2:강아지`,
    image paths), as `compose` reads a string; else it is one phrase, as `text` reads it.
    `files=False` (queries from the web): only an image suffix makes an image term, the
    file system is never consulted (see `parse_query`)."""

    query: str
    options: SearchOptions = field(default_factory=SearchOptions)
    prompt: bool = True
    composed: bool = False
    files: bool = True


@dataclass(frozen=True)
class ImageRequest:
    """One in-memory image query of a batch (`Searcher.search_images`): a PIL image, echoed
    as `label` when given, with its own options."""

    image: Any
    label: str | None = None
    options: SearchOptions = field(default_factory=SearchOptions)


@dataclass
class _Planned:
    """A request of a batch once understood and parsed, before its texts are encoded."""

    index: int
    opts: SearchOptions
    flt: Filter
    understood: Understood | None
    terms: list[Term] | None  # composed: the terms (none: a query of facts only)
    rest: str = ""  # a phrase (`text`): the words left for the text tower


@dataclass
class _Query:
    """One query vector with what it must not return.

    `vector` None: a query of facts only (every photo passing the filter, by date). `words`:
    looked up in the photos' words and fused with the vector's ranking."""

    text: str
    vector: np.ndarray | None
    exclude: set[int]
    exclude_same: bool = False  # drop hits that score as the image itself
    words: list[str] = field(default_factory=list)
    understood: Understood | None = None


class Searcher:
    """Search one library; loads only the model tower a query needs.

    `disk_cache` keeps text embeddings across processes; `backend="numpy"` encodes queries
    without JAX (quicker to a first answer, slower per query after: for one-shot scripts).

    A long-lived Searcher follows its library: every query first reads the manifest, and
    when the library was re-indexed with another model since (`index --rebuild --model
    other`), it takes up that model (its towers are loaded on next use, the old ones dropped)
    before encoding anything, so a query is never encoded by a model whose vectors the
    library no longer holds (a database file the rebuild replaced is opened again). A
    Searcher opened for a named `model` refuses instead (ModelMismatchError), as it would
    have when opened.

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
        self._model = model
        self._encoder_args = (cache_size, disk_cache, backend)
        try:
            check_model(self.manifest, model)
            self._set_root()
            self.encoder = self._new_encoder(self.manifest)
        except BaseException:
            self.library.close()
            raise
        self.index = IndexView(self.library, self.manifest.index_type, self.manifest.dim)
        self._folders: tuple[tuple[int, int], float, list[tuple[str, int]]] | None = None
        self._database = _file_identity(self.library.db_path)
        # Libraries of a database file since replaced: closed with the Searcher, not before
        # (a lookup on another thread may still be reading one).
        self._retired: list[db.Library] = []
        self._vocabulary: tuple[tuple[int, int], float, Vocabulary] | None = None
        self._words: tuple[tuple[int, int], dict[tuple[str, str], Any]] | None = None

    # -- queries ------------------------------------------------------------------------------

    def text(self, query: str, *, prompt: bool = True, **options: Any) -> SearchResults:
        """Photos matching a text (no `+`/`-` composition; see `compose`). The dates, places
        and cameras it names filter the photos (`understand`), the rest is encoded and also
        looked up in the photos' words; `literal=True` encodes the whole text as typed."""
        return self.texts([query], prompt=prompt, **options)[0]

    def texts(
        self, queries: Sequence[str], *, prompt: bool = True, **options: Any
    ) -> list[SearchResults]:
        """Several text queries (as `text`) with the same options, encoded in one batch;
        those with the same filters are searched in one FAISS call. The first query that
        fails raises its error (see `search_many` for answers each with its own)."""
        opts = SearchOptions(**options)
        if not queries:
            return []
        answers = self.search_many([TextRequest(q, opts, prompt) for q in queries])
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers  # type: ignore[return-value]

    def search_many(
        self,
        requests: Sequence[TextRequest],
        *,
        resolve: Callable[[Term], Term] | None = None,
    ) -> list[SearchResults | Exception]:
        """Several text queries, each with its own options, answered as `text` (or `compose`
        for a `composed` request) would answer each alone, but encoded together: every text
        not cached goes to the text tower in one batch per prompt setting, and the queries
        with equal options and filters are searched in one FAISS call.

        A request that fails (a date that does not exist, an empty query, an image term that
        cannot be read) gets its exception in its place; the others are answered.
        `resolve` maps each image term of a composed query first (the web: a library photo,
        or QueryImageError)."""
        out: list[SearchResults | Exception | None] = [None] * len(requests)
        if not requests:
            return []
        try:
            self.follow_library()
        except Exception as exc:  # the library itself: no request can be answered
            return [exc] * len(requests)
        planned: list[_Planned] = []
        # The library's places and cameras, looked up (its stamp checked) once for the batch.
        vocabulary = functools.cache(self.vocabulary)
        for i, request in enumerate(requests):
            try:
                planned.append(self._plan(i, request, resolve, vocabulary))
            except Exception as exc:
                out[i] = exc
        # Every text not cached, once per prompt setting, in one call of the text tower.
        wanted: dict[bool, dict[str, None]] = {}
        for p in planned:
            texts = wanted.setdefault(requests[p.index].prompt, {})
            if p.rest:
                texts[p.rest] = None
            texts.update(dict.fromkeys(t.text for t in p.terms or () if t.is_text))
        vectors: dict[tuple[bool, str], np.ndarray] = {}
        failed: dict[bool, Exception] = {}
        for prompt, texts in wanted.items():
            if not texts:
                continue
            try:
                encoded = self.encoder.texts(list(texts), prompt=prompt)
            except Exception as exc:
                failed[prompt] = exc
                continue
            vectors.update(((prompt, t), v) for t, v in zip(texts, encoded, strict=True))
        # Each request's query vector, then the requests grouped by options and filter.
        groups: dict[tuple[SearchOptions, Filter], list[tuple[int, _Query]]] = {}
        for p in planned:
            request = requests[p.index]
            if request.prompt in failed:
                out[p.index] = failed[request.prompt]
                continue
            try:
                query = self._planned_query(p, request, vectors)
            except Exception as exc:
                out[p.index] = exc
                continue
            key = (p.opts, _with_facts(p.flt, p.understood))
            groups.setdefault(key, []).append((p.index, query))
        return self._search_groups(groups, out)

    def _plan(
        self,
        index: int,
        request: TextRequest,
        resolve: Callable[[Term], Term] | None,
        vocabulary: Callable[[], Vocabulary],
    ) -> _Planned:
        """Validate a request's options, understand it, parse it (nothing encoded yet)."""
        opts = request.options
        if not isinstance(opts, SearchOptions):
            raise QueryError(f"options must be SearchOptions, not {type(opts).__name__}")
        flt = self._filter(opts)
        if not request.composed:
            understood, rest = self._read_text(request.query, opts, vocabulary)
            return _Planned(index, opts, flt, understood, None, rest)
        understood = None
        words = [request.query]
        if not opts.literal:
            understood = _understand(request.query, opts.today, vocabulary())
            if understood.has_facts:
                words = [understood.text] if understood.text else []
        terms = parse_query(words, files=request.files) if words else []
        if resolve is not None:
            terms = [t if t.is_text else resolve(t) for t in terms]
        if not terms and (understood is None or not understood.has_facts):
            raise QueryError("the query is empty")
        return _Planned(index, opts, flt, understood, terms)

    def _planned_query(
        self,
        planned: _Planned,
        request: TextRequest,
        vectors: dict[tuple[bool, str], np.ndarray],
    ) -> _Query:
        """A planned request's query, from the batch's text vectors (as `text` or `compose`)."""
        opts, understood = planned.opts, planned.understood
        if planned.terms is None:  # a phrase, as `text` builds it
            label = nfc(request.query).strip()
            rest = planned.rest
            vector = vectors[(request.prompt, rest)] if rest else None
            words = [] if opts.literal else lexical.query_words(rest)
            return _Query(label, vector, set(), words=words, understood=understood)
        terms = planned.terms
        if terms:
            text_vectors = [vectors[(request.prompt, t.text)] for t in terms if t.is_text]
            query = self._compose(terms, request.prompt, text_vectors)
        else:
            query = _Query("", None, set())
        return _understood_query(query, terms, understood, opts.literal)

    def search_images(self, requests: Sequence[ImageRequest]) -> list[SearchResults | Exception]:
        """Several in-memory image queries, each with its own options, answered as `image`
        would answer each alone, their images encoded by the vision tower in one batch."""
        out: list[SearchResults | Exception | None] = [None] * len(requests)
        if not requests:
            return []
        try:
            self.follow_library()
        except Exception as exc:
            return [exc] * len(requests)
        ready: list[tuple[int, SearchOptions, Filter]] = []
        for i, request in enumerate(requests):
            try:
                ready.append((i, request.options, self._filter(request.options)))
            except Exception as exc:
                out[i] = exc
        if not ready:
            return out  # type: ignore[return-value]
        try:
            encoded = self.encoder.images([requests[i].image for i, _, _ in ready])
        except Exception as exc:
            for i, _, _ in ready:
                out[i] = exc
            return out  # type: ignore[return-value]
        groups: dict[tuple[SearchOptions, Filter], list[tuple[int, _Query]]] = {}
        for (i, opts, flt), vector in zip(ready, encoded, strict=True):
            label = Term(image=requests[i].image, label=requests[i].label).describe()
            groups.setdefault((opts, flt), []).append((i, _Query(label, vector, set(), True)))
        return self._search_groups(groups, out)

    def _search_groups(
        self,
        groups: dict[tuple[SearchOptions, Filter], list[tuple[int, _Query]]],
        out: list[Any],
    ) -> list[SearchResults | Exception]:
        """Each group of queries sharing options and filter in one `_search` (one FAISS call);
        a group that fails answers each of its requests with the error."""
        for (opts, flt), members in groups.items():
            try:
                found: list[Any] = self._search([q for _, q in members], opts, flt)
            except Exception as exc:
                found = [exc] * len(members)
            for (i, _), results in zip(members, found, strict=True):
                out[i] = results
        return out

    def compose(
        self,
        terms: str | Sequence[str] | Sequence[Term],
        *,
        prompt: bool = True,
        understood: Understood | None = None,
        **options: Any,
    ) -> SearchResults:
        """A composed query such as `바다 + 노을 - 사람` or `2:강아지 + ./beach.jpg`: the weighted
        sum of the terms' unit embeddings, renormalised.

        A query given as text (a string, or argv words) is understood first (see `text`);
        `Term`s are taken as they are, with the facts of `understood` when given (the query
        the terms are the rest of: the web parses the rest itself). The words of the positive
        text terms are looked up in the photos' words (unless `literal`)."""
        opts, flt = self._options(options)
        if isinstance(terms, str) or (terms and not isinstance(terms[0], Term)):
            words = [terms] if isinstance(terms, str) else list(terms)  # type: ignore[list-item]
            if understood is None and not opts.literal:
                understood = self.understand(" ".join(words), today=opts.today)
                if understood.has_facts:
                    words = [understood.text] if understood.text else []
            terms = parse_query(words) if words else []
        terms = list(terms)  # type: ignore[arg-type]
        if not terms and (understood is None or not understood.has_facts):
            raise QueryError("the query is empty")
        query = self._compose(terms, prompt) if terms else _Query("", None, set())
        query = _understood_query(query, terms, understood, opts.literal)
        return self._grouped([query], opts, flt)[0]

    def understand(self, query: str, *, today: date | None = None) -> Understood:
        """The dates, places and cameras `query` names, and the rest (see search.understand),
        with this library's places and cameras; DateError for a date that does not exist."""
        return _understand(query, today, self.vocabulary())

    def vocabulary(self) -> Vocabulary:
        """The library's places and cameras with their photo counts, for `understand`;
        cached like `folders`."""
        with self.library.session() as s, s.begin():
            stamp = photos.change_stamp(s)
            cached = self._vocabulary
            if cached and cached[0] == stamp and time.monotonic() - cached[1] < FOLDERS_TTL:
                return cached[2]
            vocabulary = Vocabulary.build(
                places=photos.place_counts(s), cameras=photos.camera_counts(s)
            )
        self._vocabulary = (stamp, time.monotonic(), vocabulary)
        return vocabulary

    def places(self) -> list[tuple[str, int]]:
        """Every place of the library at every level ("제주특별자치도", "제주특별자치도
        서귀포시") with its photo count, most photos first."""
        return self.vocabulary().place_counts()

    def _read_text(
        self, query: str, opts: SearchOptions, vocabulary: Callable[[], Vocabulary]
    ) -> tuple[Understood | None, str]:
        """(what a text query was understood as, the text left for the text tower)."""
        text = nfc(query).strip()
        check_text(text, "the query text")
        if opts.literal:
            if not text:
                raise QueryError("the query is empty")
            return None, text
        understood = _understand(text, opts.today, vocabulary())
        if not understood.text and not understood.has_facts:
            raise QueryError("the query is empty")
        return understood, understood.text

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
            label = str(self.root.locate(row))
        return self._search([_Query(label, vector, exclude)], opts, flt)[0]

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
        self.follow_library()
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
        rel = self.root.key(path)
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
            stamp = photos.change_stamp(s)
            cached = self._folders
            if cached and cached[0] == stamp and time.monotonic() - cached[1] < FOLDERS_TTL:
                return cached[2]
            folders = folder_counts(s)
        self._folders = (stamp, time.monotonic(), folders)
        return folders

    def _info(self, row: db.Photo) -> PhotoInfo:
        stored = (row.width, row.height, row.taken_at, row.taken_at_source, row.size)
        path = self.root.locate(row)
        return PhotoInfo(row.id, path, row.path, *stored, row.content_hash, **stored_facts(row))

    # -- following the library ----------------------------------------------------------------

    def follow_library(self) -> bool:
        """Take up the model the library's vectors are made with now, if it changed since this
        Searcher last looked (a re-index with another model, or other preprocessing); True if
        it did. ModelMismatchError if this Searcher was opened for a named model the library
        no longer holds; db.LibraryNotFoundError if the re-index has not written its manifest
        yet."""
        reopened = self._reopen_if_replaced()
        manifest = self.library.manifest()
        if manifest is None:
            raise db.LibraryNotFoundError(
                f"the library at {self.directory} is being re-indexed and has nothing yet"
            )
        if _same_vectors(manifest, self.manifest):
            self.manifest = manifest  # index type, precision, times: the rest follows itself
            if reopened:
                self._set_root()
                self.index = IndexView(self.library, manifest.index_type, manifest.dim)
            return False
        check_model(manifest, self._model)
        encoder = self._new_encoder(manifest)
        old, self.encoder = self.encoder, encoder
        self.manifest = manifest
        self._set_root()
        self.index = IndexView(self.library, manifest.index_type, manifest.dim)
        self._folders = None
        old.close()
        return True

    def _reopen_if_replaced(self) -> bool:
        """Open the library's database again if its file was replaced (`index --rebuild` of a
        damaged or old database deletes it and starts a new one); True if it was."""
        now = _file_identity(self.library.db_path)
        if now is None or now == self._database:
            return False  # unchanged, or being replaced right now: the old one stands
        library = db.Library.open(self.directory, readonly=True)
        self._retired.append(self.library)
        self.library, self._database = library, now
        self._folders = None
        return True

    def _new_encoder(self, manifest: db.Manifest) -> QueryEncoder:
        cache_size, disk_cache, backend = self._encoder_args
        return QueryEncoder(manifest, cache_size, persistent=disk_cache, backend=backend)

    # -- embedding ----------------------------------------------------------------------------

    def _compose(
        self, terms: list[Term], prompt: bool, text_vectors: Sequence[np.ndarray] | None = None
    ) -> _Query:
        """The terms' weighted sum; `text_vectors`: the text terms' vectors, when encoded
        already (a batch), else encoded here."""
        if text_vectors is None:
            texts = [t.text for t in terms if t.is_text]
            text_vectors = self.encoder.texts(texts, prompt=prompt) if texts else []
        text_vecs = iter(text_vectors)
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
        if self.root.is_url and (stored := self._object_vector(os.fspath(image))) is not None:
            return stored
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

    def _object_vector(self, text: str) -> tuple[np.ndarray, set[int], bool] | None:
        """A photo of an object root named by its URL or key: its stored vector (no object is
        read); None when `text` is a file on this machine instead (it is encoded as for any
        library); QueryImageError for a URL or key the library does not hold."""
        key = self.root.key(text)
        if key is not None:
            with self.library.session() as s, s.begin():
                row = photos.photo_by_relpath(s, key)
                if row is not None:
                    return (*self._stored(s, row), False)
        if "://" in text or not os.path.isfile(os.path.expanduser(text)):
            raise QueryImageError(f"{text} is not a photo in the library at {self.root}")
        return None

    def _set_root(self) -> None:
        """Where the library's photos are now: `photo_root` is its folder, or the URL of its
        root in object storage (a storage.ObjectPath); `root` says which, and maps keys."""
        self.photo_root = root_of(self.library)
        self.root = PhotoRoot.at(self.photo_root)

    def _stored(self, session: Any, row: db.Photo) -> tuple[np.ndarray, set[int]]:
        """A library photo's stored vector (checked: LibraryCorruptError if damaged), and the
        ids that are it (itself, its exact copies)."""
        same = {p.id for p in photos.photos_with_hash(session, row.content_hash)}
        return embeddings.vectors_for(session, [row.id])[0], same | {row.id}

    # -- searching ----------------------------------------------------------------------------

    def _options(self, options: dict[str, Any]) -> tuple[SearchOptions, Filter]:
        """Validate options and resolve the filter before any model is loaded (the library's
        current one: see `follow_library`)."""
        opts = SearchOptions(**options)
        self.follow_library()
        return opts, self._filter(opts)

    def _filter(self, opts: SearchOptions) -> Filter:
        """The WHERE filter of `--under/--after/--before` (DateError, QueryError)."""
        after, before = parse_range(opts.after, opts.before)
        under = self.root.folder(opts.under) if opts.under is not None else None
        return Filter(under=under or None, after=after, before=before)

    def _grouped(
        self, batch: list[_Query], opts: SearchOptions, flt: Filter
    ) -> list[SearchResults]:
        """Search each query with its own facts applied: those sharing a filter together."""
        filters = [_with_facts(flt, q.understood) for q in batch]
        out: list[SearchResults | None] = [None] * len(batch)
        for group in dict.fromkeys(filters):
            at = [i for i, f in enumerate(filters) if f == group]
            for i, results in zip(
                at, self._search([batch[i] for i in at], opts, group), strict=True
            ):
                out[i] = results
        return out  # type: ignore[return-value]

    def _search(self, batch: list[_Query], opts: SearchOptions, flt: Filter) -> list[SearchResults]:
        if flt.empty:  # an understood date outside --after/--before: nothing to find
            return [self._results(q, [], opts) for q in batch]
        ranked = [q for q in batch if q.vector is not None]
        found: dict[int, SearchResults] = {}
        if ranked:
            cut = opts.cut
            want = opts.offset + opts.k
            if cut == "auto" or opts.sort != "relevance":
                want = _ALL  # the cutoff reads every score; a date order needs every kept photo
            elif any(q.words for q in ranked):
                want = max(want, FUSE_DEPTH)
            loaded = self.index.refresh()
            # One snapshot for the batch: the candidates are read as ids, and only the photos
            # that end up on a page as rows (every page's in one read).
            with self.library.session() as s, s.begin():
                memo = self._words_memo(s)
                kept = self._nearest(s, loaded, ranked, flt, want)
                pages = [
                    self._ranked_page(s, q, k, opts, flt, memo)
                    for q, k in zip(ranked, kept, strict=True)
                ]
                rows = photos.photos_by_id(s, [i for page, _ in pages for _, i in page])
            for q, (page, cutoff) in zip(ranked, pages, strict=True):
                hits = [(score, rows[i]) for score, i in page if i in rows]
                found[id(q)] = self._results(q, hits, opts, cutoff)
        for q in batch:
            if q.vector is None:
                found[id(q)] = self._listing(q, opts, flt)
        return [found[id(q)] for q in batch]

    def _words_memo(self, s: Any) -> dict[tuple[str, str], Any]:
        """The lookups of the photos' words (`lexical.ranking`'s memo) made since the library
        last changed: kept while nothing is committed to it (`db.photos.change_stamp`, read
        first in the session, so the memo and the session's snapshot agree)."""
        stamp = photos.change_stamp(s)
        cached = self._words
        if cached is not None and cached[0] == stamp and _memo_ids(cached[1]) < WORDS_MEMO:
            return cached[1]
        memo: dict[tuple[str, str], Any] = {}
        self._words = (stamp, memo)
        return memo

    def _nearest(
        self, s: Any, loaded: Any, batch: list[_Query], flt: Filter, want: int
    ) -> list[list[tuple[float, int]]]:
        """Each query's nearest photos passing the filter, at least `want` of them (or all
        there are), best first, as (score, id)."""
        queries = np.stack([q.vector for q in batch]).astype(np.float32)
        # One candidate past the page, so `_settled` can see whether the page ends inside a tie.
        fetch = (
            min(want, _ALL)
            + 1
            + max(len(q.exclude) for q in batch)
            + (1 if any(q.exclude_same for q in batch) else 0)
        )
        # A query's candidates are taken from the first fetch that settles it, so its answer
        # is the one it gets alone, whatever its batch-mates needed.
        done: list[list[tuple[float, int]] | None] = [None] * len(batch)
        limit = None
        while True:
            if fetch > _CHEAP_FETCH:
                # Never allocate for more candidates than exist (`-k 10**12` is a page of
                # the whole library); one column past the last one tells `_settled` so.
                limit = limit or candidate_limit(loaded, s) + 1
                fetch = min(fetch, limit)
            scores, ids = top_k(loaded, s, flt, queries, fetch)
            present = photos.present_ids(s, np.unique(ids[ids >= 0]).tolist())
            kept = [
                self._keep(q, sc, ii, present) for q, sc, ii in zip(batch, scores, ids, strict=True)
            ]
            for j, (k, sc, ii) in enumerate(zip(kept, scores, ids, strict=True)):
                if done[j] is None and _settled(k, sc, ii, want):
                    done[j] = k
            if all(k is not None for k in done):
                break
            fetch *= 2
        # Equal scores (exact duplicates) come back from FAISS in an order that depends on k;
        # ordering them by id makes pages of one ranking agree with each other.
        return [sorted(k, key=lambda pair: (-pair[0], pair[1])) for k in done]  # type: ignore[arg-type]

    @staticmethod
    def _keep(
        query: _Query, scores: np.ndarray, ids: np.ndarray, present: set[int]
    ) -> list[tuple[float, int]]:
        out = []
        exclude, same = query.exclude, query.exclude_same
        for score, pid in zip(scores.tolist(), ids.tolist(), strict=True):
            if pid < 0 or pid in exclude or pid not in present:
                continue
            if same and score >= SAME_IMAGE_SCORE:
                continue
            out.append((score, pid))
        return out

    def _lexical(
        self, s: Any, query: _Query, flt: Filter, memo: dict[tuple[str, str], Any]
    ) -> tuple[list[int], dict[int, float]]:
        """The photos whose words hold the query's words (passing the filter), best first, and
        the cosine of each."""
        ranked = [i for i, _ in lexical.ranking(s, query.words, limit=LEXICAL_DEPTH, memo=memo)]
        ranked = [i for i in ranked if i not in query.exclude]
        if flt.active and ranked:
            allowed = set(photos.ids_where(s, *flt.conditions(), db.Photo.id.in_(ranked)).tolist())
            ranked = [i for i in ranked if i in allowed]
        present = photos.present_ids(s, ranked)
        ranked = [i for i in ranked if i in present]
        if not ranked:
            return [], {}
        scores = (embeddings.vectors_for(s, ranked) @ query.vector).tolist()
        return ranked, dict(zip(ranked, scores, strict=True))

    def _ranked_page(
        self,
        s: Any,
        query: _Query,
        kept: list[tuple[float, int]],
        opts: SearchOptions,
        flt: Filter,
        memo: dict[tuple[str, str], Any],
    ) -> tuple[list[tuple[float, int]], Cutoff | None]:
        """A ranked query's page as (score, id), fused with its words' matches, cut, ordered
        as asked; and the cutoff applied."""
        words: list[int] = []
        scored = {pid: score for score, pid in kept}
        if query.words:
            words, more = self._lexical(s, query, flt, memo)
            scored = {**more, **scored}
        cutoff = None
        cut = opts.cut
        if cut == "auto":
            cutoff = adaptive_cutoff(np.asarray([score for score, _ in kept], np.float64))
            matched = set(words)  # a photo named for the query is relevant to it
            survivors = [i for i, score in scored.items() if cutoff.keeps(score) or i in matched]
        elif cut is not None:
            survivors = [i for i, score in scored.items() if score >= cut]
        else:
            survivors = list(scored)
        alive = set(survivors)
        if opts.sort != "relevance":
            newest = opts.sort == "newest"
            taken = photos.taken_at_by_id(s, alive)
            alive &= taken.keys()
            order = sorted(alive, key=lambda i: _date_key(taken[i], i, newest))
        elif words:
            embedding = [pid for _, pid in kept]
            order = [i for i, _ in lexical.fuse(embedding, words) if i in alive]
        else:
            order = [pid for _, pid in kept if pid in alive]
        page = [(scored[i], i) for i in order[opts.offset : opts.offset + opts.k]]
        return page, cutoff

    def _listing(self, query: _Query, opts: SearchOptions, flt: Filter) -> SearchResults:
        """A query of facts only: every photo passing the filter, newest (or oldest) first."""
        with self.library.session() as s, s.begin():
            rows = photos.photos_by_date(
                s,
                *flt.conditions(),
                newest=opts.sort != "oldest",
                offset=opts.offset,
                limit=opts.k,
            )
            page = [(None, row) for row in rows if row.id not in query.exclude]
        return self._results(query, page, opts)

    def _results(
        self,
        query: _Query,
        page: list[tuple[float | None, db.Photo]],
        opts: SearchOptions,
        cutoff: Cutoff | None = None,
    ) -> SearchResults:
        hits = []
        for i, (score, row) in enumerate(page):
            hits.append(
                SearchHit(
                    rank=opts.offset + i + 1,
                    score=None if score is None else float(score),
                    path=self.root.locate(row),
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
        return SearchResults(
            query=display_path(query.text),
            hits=tuple(hits),
            understood=query.understood,
            cutoff=cutoff,
        )

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database connections."""
        self.encoder.close()
        self.library.close()
        for library in self._retired:
            library.close()
        self._retired.clear()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, or None when it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_vectors(a: db.Manifest, b: db.Manifest) -> bool:
    """Whether queries encoded for manifest `b` still match the vectors of manifest `a`."""
    return (a.model_id, a.fingerprint, a.dim, a.preprocess_version) == (
        b.model_id,
        b.fingerprint,
        b.dim,
        b.preprocess_version,
    )


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


def _memo_ids(memo: dict[tuple[str, str], Any]) -> int:
    """How many photo ids a words memo holds."""
    return sum(len(v) for v in memo.values() if isinstance(v, list))


def _understand(query: str, today: date | None, vocabulary: Vocabulary) -> Understood:
    """What `query` names (see `Searcher.understand`), with the library's `vocabulary`."""
    return understand(query, today=today or date.today(), vocabulary=vocabulary)


def _understood_query(
    query: _Query, terms: Sequence[Term], understood: Understood | None, literal: bool
) -> _Query:
    """A composed query with what was understood of it: the facts (shown as its text when
    there are any), and the positive text terms' words for the name match (unless
    `literal`)."""
    if understood is not None and understood.has_facts:
        query.text = understood.query
    query.understood = understood
    if not literal:
        positive = [t.text for t in terms if t.is_text and t.weight > 0]
        query.words = lexical.query_words(" ".join(positive))  # type: ignore[arg-type]
    return query


def _with_facts(flt: Filter, understood: Understood | None) -> Filter:
    """The filter narrowed by what a query was understood to name."""
    if understood is None or not understood.has_facts:
        return flt
    after, before = understood.datetime_range()
    return flt.narrowed(after, before, understood.places, understood.cameras)


def _date_key(taken_at: datetime | None, photo_id: int, newest: bool) -> tuple[float, int]:
    stamp = taken_at.timestamp() if taken_at else 0.0
    return (-stamp if newest else stamp), photo_id
