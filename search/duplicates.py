"""Duplicate groups of a library, of three kinds: identical files, the same picture in several
renditions, and similar shots of one moment.

- identical: equal content hashes (the indexer's blake2b of the file).
- same picture: perceptual hashes (koclip.images.perceptual) within SAME_BITS bits, and stored
  thumbnails that still match once aligned (`residuals` at most SAME_RESIDUAL, every pair
  in one vectorised pass: a crop, a new format or a colour shift pass, a subject that
  moved does not). The pixels decide; the
  embedding only confirms the borderline half (a residual above SAME_RESIDUAL / 2 needs a
  cosine of at least `confirm`), so the decision holds whatever the model's weights.
- similar: embedding cosine of at least `threshold`, and not the same picture.

Candidates never come from an all-pairs loop: each photo's k nearest neighbours over the
stored embeddings (FAISS, exact up to EXACT_MAX photos; above, `inverted_pairs`), kept when
their cosine passes the lowest threshold in play, plus photos
whose hashes agree exactly on one of four 16-bit bands (any pair within 3 bits shares one; most
pairs within SAME_BITS do), plus equal content hashes. Only those pairs are scored.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import db
from db import embeddings, photos
from koclip.images.perceptual import hamming, residuals
from koclip.names import DUPLICATE_KINDS as KINDS
from koclip.names import MIN_SIMILAR_COS, SIMILAR_COS
from search.filters import Filter
from search.results import json_path
from storage import ObjectPath

SAME_BITS = 16  # perceptual-hash bits two renditions of one picture may differ by
SAME_RESIDUAL = 0.45  # koclip.images.perceptual.residual of two renditions of one picture
CONFIRM_COS = 0.80
NEIGHBOURS = 16
EXACT_MAX = 20_000  # up to this many photos, neighbours are found exactly
PROBES = 4  # k-means lists searched per photo above EXACT_MAX
_BANDS = 4
# A camera's own formats: a file in one of them whose date came from the camera (EXIF
# DateTimeOriginal) is taken for the camera original, kept over any re-encode of it.
ORIGINAL_SUFFIXES = frozenset({".jpg", ".jpeg", ".heic", ".heif"})


def is_camera_original(path: str, taken_at_source: str) -> bool:
    """Whether a photo looks like the camera's own file: the camera's date in its EXIF, and
    an original format (JPEG, HEIC); a PNG, WebP or a JPEG saved without EXIF is a re-encode."""
    return taken_at_source == "exif" and Path(path).suffix.lower() in ORIGINAL_SUFFIXES


@dataclass(frozen=True)
class DuplicateOptions:
    """What `find_duplicates` looks for."""

    kind: str = "all"  # one of KINDS, or "all"
    threshold: float = SIMILAR_COS  # cosine for "similar"
    confirm: float = CONFIRM_COS  # cosine confirming a borderline "same picture"
    same_bits: int = SAME_BITS
    same_residual: float = SAME_RESIDUAL
    under: str | None = None  # POSIX, NFC, relative to the photo root
    neighbours: int = NEIGHBOURS

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "all"):
            raise ValueError(f"kind must be one of {', '.join(KINDS)} or all, not {self.kind!r}")
        if not MIN_SIMILAR_COS <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine between {MIN_SIMILAR_COS} and 1")
        if not -1.0 <= self.confirm <= 1.0:
            raise ValueError("confirm must be a cosine between -1 and 1")
        if not 0 <= self.same_bits <= 32 or self.neighbours < 1:
            raise ValueError("same_bits must be 0..32 and neighbours at least 1")


@dataclass(frozen=True)
class DuplicatePhoto:
    """One member of a group."""

    id: int
    path: str  # absolute, as on disk; the object's URL for a root in object storage
    relpath: str  # the library's key
    width: int
    height: int
    bytes: int
    taken_at: datetime
    similarity: float  # cosine with the keeper (1.0 for the keeper and identical files)
    camera_original: bool = False  # see is_camera_original

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of `duplicates --json`."""
        return {
            "path": json_path(self.path),
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "taken_at": self.taken_at.isoformat(),
            "similarity": round(float(self.similarity), 4),
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Photos of one kind; the first is the suggested keeper."""

    kind: str
    photos: tuple[DuplicatePhoto, ...]
    reason: str  # why the keeper was suggested

    @property
    def keep(self) -> DuplicatePhoto:
        """The suggested keeper."""
        return self.photos[0]

    @property
    def extras(self) -> tuple[DuplicatePhoto, ...]:
        """Everything but the keeper: what `--set-aside` moves."""
        return self.photos[1:]

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of `duplicates --json`."""
        return {
            "kind": self.kind,
            "keep": json_path(self.keep.path),
            "reason": self.reason,
            "photos": [p.to_json() for p in self.photos],
        }


@dataclass
class Table:
    """The columns grouping needs, one row per photo (arrays aligned by row)."""

    ids: np.ndarray  # int64
    phash: np.ndarray  # int64; rows without a hash hold 0 and `has_hash` False
    has_hash: np.ndarray  # bool
    content: np.ndarray  # object: content hash strings
    vectors: np.ndarray  # (n, dim) float32 unit vectors
    pixels: np.ndarray  # int64 width * height
    sizes: np.ndarray  # int64 bytes
    taken: np.ndarray  # datetime64[s]
    paths: np.ndarray  # object: relpath keys
    original: np.ndarray | None = None  # bool: is_camera_original (None: none is)


def find_duplicates(library: db.Library, options: DuplicateOptions) -> list[DuplicateGroup]:
    """The library's duplicate groups of `options.kind`, largest first."""
    manifest = library.manifest()
    if manifest is None:
        return []
    flt = Filter(under=options.under or None)
    with library.session() as s, s.begin():
        rows = photos.rows_for_duplicates(s, *flt.conditions())
        if len(rows) < 2:
            return []
        ids = np.fromiter((r.id for r in rows), np.int64, len(rows))
        vecs = embeddings.vectors_for(s, ids)
        table = _table(rows, vecs)
        exact = len(ids) <= EXACT_MAX and options.kind != "identical"
        pairs = _candidates(table, options, neighbour_search(table.vectors) if exact else None)
        groups = group(table, pairs, options, lambda ids: photos.thumbnails(s, ids))
    url = library.root_url()
    root: Path | ObjectPath = ObjectPath(url) if url else library.photo_root()
    info = {r.id: r for r in rows}
    return [
        _described(kind, [int(table.ids[r]) for r in g], sims_by_id(table, sims), info, root)
        for kind, g, sims in groups
    ]


def _table(rows: list, vecs: np.ndarray) -> Table:
    phash = np.array([r.phash if r.phash is not None else 0 for r in rows], np.int64)
    return Table(
        ids=np.array([r.id for r in rows], np.int64),
        phash=phash,
        has_hash=np.array([r.phash is not None for r in rows], bool),
        content=np.array([r.content_hash for r in rows], object),
        vectors=np.ascontiguousarray(vecs, np.float32),
        pixels=np.array([r.width * r.height for r in rows], np.int64),
        sizes=np.array([r.size for r in rows], np.int64),
        taken=np.array([r.taken_at for r in rows], "datetime64[s]"),
        paths=np.array([r.path for r in rows], object),
        original=np.array([is_camera_original(r.path, r.taken_at_source) for r in rows], bool),
    )


def neighbour_search(vecs: np.ndarray) -> Callable[[np.ndarray, int], tuple]:
    """Exact k-NN by inner product over `vecs` (row numbers as ids)."""
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    return index.search


def inverted_pairs(vecs: np.ndarray, floor: float, k: int) -> np.ndarray:
    """(m, 2) row pairs i < j: each row with its k nearest others (inner product at least
    `floor`) among the rows of the PROBES k-means lists nearest it (~2 sqrt(n) lists): what a
    FAISS inverted-file search of every row with nprobe PROBES finds, computed list by list as
    one matrix product of the rows probing a list with its members, so it runs at BLAS speed
    (FAISS scans its lists one query at a time: ~3-4x slower at 100k)."""
    import faiss

    n, dim = vecs.shape
    nlist = int(2 * np.sqrt(n))
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, 20 * nlist), replace=False))
    # coarse lists are enough: near duplicates are very close
    kmeans = faiss.Kmeans(dim, nlist, niter=10, seed=0, spherical=True, verbose=False)
    kmeans.cp.min_points_per_centroid = 1  # fewer training points than FAISS suggests: fine here
    kmeans.train(vecs[sample])
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    _, probes = quantizer.search(vecs, min(PROBES, nlist))
    members_of = _inverted(probes[:, 0], nlist)  # each row lives in its nearest list
    probing = _inverted(probes.ravel(), nlist)  # flat positions: row * PROBES + probe
    width = probes.shape[1]
    found = []
    for lst in range(nlist):
        members, queries = members_of[lst], probing[lst] // width
        if not len(members) or not len(queries):
            continue
        step = max(1, (1 << 24) // len(members))  # scores stay under 64 MB
        for start in range(0, len(queries), step):
            q = queries[start : start + step]
            scores = vecs[q] @ vecs[members].T
            qi, mj = np.nonzero(scores >= floor)
            found.append((q[qi], members[mj], scores[qi, mj]))
    if not found:
        return np.zeros((0, 2), np.int64)
    i, j, score = (np.concatenate(parts) for parts in zip(*found, strict=True))
    keep = i != j
    i, j, score = i[keep], j[keep], score[keep]
    order = np.lexsort((-score, i))  # by row, best first
    i, j = i[order], j[order]
    first = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    rank = np.arange(len(i)) - np.repeat(first, np.diff(np.r_[first, len(i)]))
    top = rank < k
    return np.sort(np.stack([i[top], j[top]], 1), axis=1).astype(np.int64)


def _inverted(lists: np.ndarray, nlist: int) -> list[np.ndarray]:
    """Positions in `lists` by list number."""
    order = np.argsort(lists, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(lists, minlength=nlist))]
    return [order[bounds[c] : bounds[c + 1]] for c in range(nlist)]


# -- candidates ---------------------------------------------------------------------------------


def _candidates(table: Table, options: DuplicateOptions, knn) -> np.ndarray:
    """(m, 2) row pairs i < j worth scoring: near neighbours by embedding, hash band matches,
    equal content hashes."""
    bands = band_pairs(table.phash, table.has_hash)
    bands = bands[hamming(table.phash[bands[:, 0]], table.phash[bands[:, 1]]) <= options.same_bits]
    parts = [_knn_pairs(table, options, knn), bands]
    parts.append(_content_pairs(table.content))
    pairs = np.concatenate([p for p in parts if len(p)] or [np.zeros((0, 2), np.int64)])
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _knn_pairs(table: Table, options: DuplicateOptions, knn) -> np.ndarray:
    floor = min(options.threshold, options.confirm)
    if options.kind == "identical":
        return np.zeros((0, 2), np.int64)
    if len(table.ids) > EXACT_MAX:
        return inverted_pairs(table.vectors, floor, options.neighbours)
    out = []
    k = min(options.neighbours + 1, len(table.ids))
    for start in range(0, len(table.ids), 4096):
        scores, rows = knn(table.vectors[start : start + 4096], k)
        qi, col = np.nonzero((scores >= floor) & (rows >= 0))
        i, j = qi + start, rows[qi, col]
        keep = i != j
        out.append(np.sort(np.stack([i[keep], j[keep]], 1), axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def band_pairs(phash: np.ndarray, has_hash: np.ndarray) -> np.ndarray:
    """(m, 2) row pairs whose hashes agree exactly on one 16-bit band (sorted per band)."""
    rows = np.nonzero(has_hash)[0]
    out = []
    unsigned = phash[rows].view(np.uint64)
    for b in range(_BANDS):
        key = (unsigned >> np.uint64(16 * b)) & np.uint64(0xFFFF)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        # a huge bucket is a flat hash (blank frames, one colour): it says nothing, skip it
        for size in np.unique(sizes[(sizes >= 2) & (sizes <= 256)]).tolist():
            first = starts[sizes == size]
            ii, jj = np.triu_indices(size, 1)
            members = rows[order[first[:, None] + np.arange(size)[None, :]]]  # (buckets, size)
            out.append(np.stack([members[:, ii].ravel(), members[:, jj].ravel()], 1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out)
    return np.sort(pairs, axis=1)


def _content_pairs(content: np.ndarray) -> np.ndarray:
    order = np.argsort(content, kind="stable")
    same = content[order][1:] == content[order][:-1]
    idx = np.flatnonzero(same)
    return np.sort(np.stack([order[idx], order[idx + 1]], 1), axis=1).astype(np.int64)


# -- grouping -----------------------------------------------------------------------------------


def group(
    table: Table,
    pairs: np.ndarray,
    options: DuplicateOptions,
    thumbnails: Callable[[np.ndarray], dict[int, bytes]],
) -> list[tuple[str, list[int], dict[int, float]]]:
    """(kind, rows keeper first, cosine with the keeper by row) per group, largest first;
    `thumbnails` gives the stored thumbnails of photo ids."""
    i, j = pairs[:, 0], pairs[:, 1]
    cos = _pair_cosines(table.vectors, i, j)
    identical = table.content[i] == table.content[j]
    both = table.has_hash[i] & table.has_hash[j]
    dist = hamming(table.phash[i], table.phash[j])
    close = np.flatnonzero(both & (dist <= options.same_bits) & ~identical)
    thumbs = thumbnails(np.unique(table.ids[pairs[close]])) if len(close) else {}
    looks = np.full(len(pairs), np.inf)
    scored = [c for c in close.tolist() if int(table.ids[i[c]]) in thumbs]
    scored = [c for c in scored if int(table.ids[j[c]]) in thumbs]
    if scored:
        rows = np.array(scored)
        a = _thumb_stack(thumbs, table.ids[i[rows]])
        b = _thumb_stack(thumbs, table.ids[j[rows]])
        # every pair at once; a pair within limit / 2 uncut is not cropped at all
        looks[rows] = residuals(a, b, good_enough=options.same_residual / 2)
    limit = options.same_residual
    same = identical | ((looks <= limit) & ((looks <= limit / 2) | (cos >= options.confirm)))
    n = len(table.ids)
    clusters = _components(n, pairs[same])
    out: list[tuple[str, list[int], dict[int, float]]] = []
    keepers: dict[int, int] = {}  # row -> its cluster's keeper row
    for members in clusters:
        ordered = _keeper_first(table, members)
        for m in ordered:
            keepers[m] = ordered[0]
        if len(ordered) < 2:
            continue
        kind = "identical" if len(set(table.content[ordered])) == 1 else "same"
        out.append((kind, ordered, _cosines(table, ordered)))
    if options.kind in ("similar", "all"):
        similar = (~same) & (cos >= options.threshold)
        ki = np.array([keepers.get(int(a), int(a)) for a in i[similar]], np.int64)
        kj = np.array([keepers.get(int(b), int(b)) for b in j[similar]], np.int64)
        distinct = ki != kj
        for members in _components(n, np.stack([ki[distinct], kj[distinct]], 1)):
            if len(members) >= 2:
                ordered = _keeper_first(table, members)
                out.append(("similar", ordered, _cosines(table, ordered)))
    wanted = KINDS if options.kind == "all" else (options.kind,)
    if options.kind == "identical":
        out = [g for g in out if g[0] == "identical"] + _identical_inside(table, out)
    out = [g for g in out if g[0] in wanted]
    out.sort(key=lambda g: (-len(g[1]), KINDS.index(g[0]), table.paths[g[1][0]]))
    return out


def _thumb_stack(thumbs: dict[int, bytes], ids: np.ndarray) -> np.ndarray:
    """The stored thumbnails of `ids` as one (n, side * side) uint8 array."""
    return np.frombuffer(b"".join(thumbs[int(x)] for x in ids), np.uint8).reshape(len(ids), -1)


def _pair_cosines(vecs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine of each pair (i[k], j[k]), in chunks so memory stays flat."""
    out = np.zeros(len(i), np.float32)
    for start in range(0, len(i), 65536):
        a, b = vecs[i[start : start + 65536]], vecs[j[start : start + 65536]]
        out[start : start + 65536] = np.einsum("nd,nd->n", a, b)
    return out


def _identical_inside(table: Table, groups: list) -> list:
    """Identical sub-groups of the same-picture groups (for --kind identical)."""
    out = []
    for kind, rows, _ in groups:
        if kind != "same":
            continue
        by_hash: dict[str, list[int]] = {}
        for r in rows:
            by_hash.setdefault(table.content[r], []).append(r)
        for members in by_hash.values():
            if len(members) >= 2:
                ordered = _keeper_first(table, members)
                out.append(("identical", ordered, {r: 1.0 for r in ordered}))
    return out


def _components(n: int, edges: np.ndarray) -> list[list[int]]:
    """Connected components (of size >= 1 among rows in `edges`) by union-find."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    touched = np.unique(edges) if len(edges) else np.zeros(0, np.int64)
    comps: dict[int, list[int]] = {}
    for r in touched.tolist():
        comps.setdefault(find(r), []).append(r)
    return list(comps.values())


def _keeper_first(table: Table, rows: list[int]) -> list[int]:
    """The camera original first (over a larger re-encode of it), then the largest pixel
    count, then largest file, then earliest taken, then path."""
    original = table.original if table.original is not None else np.zeros(len(table.ids), bool)
    return sorted(
        rows,
        key=lambda r: (
            not original[r],
            -table.pixels[r],
            -table.sizes[r],
            table.taken[r],
            table.paths[r],
        ),
    )


def _cosines(table: Table, ordered: list[int]) -> dict[int, float]:
    keeper = table.vectors[ordered[0]]
    sims = table.vectors[ordered] @ keeper
    return {
        r: 1.0 if table.content[r] == table.content[ordered[0]] else float(s)
        for r, s in zip(ordered, sims, strict=True)
    }


def choose_keepers(
    groups: list[DuplicateGroup], keep: Collection[str]
) -> tuple[list[DuplicateGroup], list[str]]:
    """`groups` with the photo of each library key in `keep` moved first as its groups'
    keeper ("chosen"), and the keys found in no group. ValueError if two chosen photos
    share a group."""
    wanted = set(keep)
    found: set[str] = set()
    out = []
    for g in groups:
        chosen = [p for p in g.photos if p.relpath in wanted]
        if len(chosen) > 1:
            names = " and ".join(p.relpath for p in chosen)
            raise ValueError(f"{names} are in one group: keep only one of them")
        if not chosen:
            out.append(g)
            continue
        found.add(chosen[0].relpath)
        rest = tuple(p for p in g.photos if p is not chosen[0])
        out.append(DuplicateGroup(g.kind, (chosen[0], *rest), "chosen"))
    return out, sorted(wanted - found)


def extras_to_move(groups: list[DuplicateGroup]) -> list[int]:
    """Ids of every group's non-keepers, keepers of other groups left out (a keeper of a
    "same" group may be a non-keeper of a "similar" one: that picture keeps one copy)."""
    keepers = {g.keep.id for g in groups}
    return list(dict.fromkeys(p.id for g in groups for p in g.extras if p.id not in keepers))


def keeper_reason(photos: list[DuplicatePhoto]) -> str:
    """Why the first photo is suggested over the second."""
    keep, other = photos[0], photos[1]
    if keep.camera_original and not other.camera_original:
        fmt = Path(keep.relpath).suffix.lstrip(".").upper()
        larger = keep.width * keep.height < other.width * other.height or keep.bytes < other.bytes
        over = " over a larger re-encode" if larger else ""
        return f"camera original (EXIF date, {fmt}){over}"
    if keep.width * keep.height != other.width * other.height:
        return f"most pixels ({keep.width}x{keep.height})"
    if keep.bytes != other.bytes:
        return f"largest file ({keep.bytes} bytes)"
    # Compared as the order compares them (`_keeper_first`: whole seconds).
    if keep.taken_at.replace(microsecond=0) != other.taken_at.replace(microsecond=0):
        return "taken first"
    return "first by path"


def sims_by_id(table: Table, sims: dict[int, float]) -> dict[int, float]:
    """Row-keyed cosines re-keyed by photo id."""
    return {int(table.ids[r]): s for r, s in sims.items()}


def _described(
    kind: str, ids: list[int], sims: dict[int, float], info: dict, root: Path | ObjectPath
) -> DuplicateGroup:
    """A group's members in order; `root` is the photo folder, or a URL root's URL."""
    members = []
    for pid in ids:
        r = info[pid]
        members.append(
            DuplicatePhoto(
                id=pid,
                path=str(root / r.on_disk),
                relpath=r.path,
                width=r.width,
                height=r.height,
                bytes=r.size,
                taken_at=r.taken_at,
                similarity=sims[pid],
                camera_original=is_camera_original(r.path, r.taken_at_source),
            )
        )
    return DuplicateGroup(kind, tuple(members), keeper_reason(members))


@dataclass(frozen=True)
class DuplicateSummary:
    """What a list of groups comes to: how many groups and photos, and the extras that a
    set-aside would move out of the photo folder (`extras_to_move`) with their bytes."""

    groups: int
    photos: int
    extras: int
    extra_bytes: int

    def to_json(self) -> dict[str, int]:
        """The JSON shape of `duplicates --json`'s "summary": every field by its name."""
        return asdict(self)


def summarize(groups: list[DuplicateGroup]) -> DuplicateSummary:
    """The groups' counts and the bytes their extras hold (each photo counted once)."""
    sizes = {p.id: p.bytes for g in groups for p in g.photos}
    extras = extras_to_move(groups)
    return DuplicateSummary(len(groups), len(sizes), len(extras), sum(sizes[i] for i in extras))
