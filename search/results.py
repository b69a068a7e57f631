"""Typed search results and their JSON form."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import db
from search.cutoff import Cutoff
from search.understand import Understood


@dataclass(frozen=True)
class SearchHit:
    """One photo found: `score` is the cosine similarity between the query and the photo
    (also when the photo's words brought it up: the fusion orders, the score stays the
    cosine), None for a query of facts only (no text, nothing to compare); `path` is the file
    as it is on disk (an NFD name stays NFD), or for a root in object storage the object's
    URL (`s3://bucket/prefix/key`, a str), `relpath` the library's key for it (NFC,
    relative to the photo root: for matching and display)."""

    rank: int
    score: float | None
    path: Path | str
    photo_id: int
    width: int | None = None
    height: int | None = None
    taken_at: datetime | None = None
    size: int | None = None
    relpath: str = ""
    # Where and with what it was taken (its metadata; None where it does not say): the place
    # name ("제주특별자치도 서귀포시 성산읍", "프랑스 파리"), WGS84 degrees, the camera as people
    # say it ("Apple iPhone 15").
    place: str | None = None
    lat: float | None = None
    lon: float | None = None
    camera: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The hit as the CLI's --json prints it."""
        return {
            "rank": self.rank,
            "score": None if self.score is None else round(self.score, 4),
            "path": json_path(self.path),
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            **facts_json(self),
        }


@dataclass(frozen=True)
class PhotoInfo:
    """One library photo as stored (no query, no score): what a detail view shows."""

    id: int
    # absolute, as on disk (the file may be gone since it was indexed); for a root in object
    # storage the object's URL, a str (s3://bucket/prefix/key)
    path: Path | str
    relpath: str  # the library's key: POSIX, NFC, relative to the photo root
    width: int
    height: int
    taken_at: datetime
    taken_at_source: str  # "exif" | "mtime"
    size: int
    content_hash: str
    place: str | None = None  # as in SearchHit
    lat: float | None = None
    lon: float | None = None
    camera: str | None = None


def stored_facts(row: db.Photo) -> dict[str, Any]:
    """The facts a SearchHit or PhotoInfo carries, from a photo row (keyword arguments)."""
    return {"place": row.place, "lat": row.lat, "lon": row.lon, "camera": row.camera}


def facts_json(item: SearchHit | PhotoInfo) -> dict[str, Any]:
    """A hit's or photo's facts as JSON fields (null where the photo does not say)."""
    return {"place": item.place, "lat": item.lat, "lon": item.lon, "camera": item.camera}


@dataclass(frozen=True)
class SearchResults:
    """The hits for one query, in the order asked (best first by default), after offset
    paging and the threshold. `understood`: the dates, places and cameras read from a text
    query and the rest searched (None for image queries and literal ones); `cutoff`: the
    relevance cutoff applied (threshold auto), None otherwise."""

    query: str
    hits: tuple[SearchHit, ...]
    understood: Understood | None = None
    cutoff: Cutoff | None = None

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]

    @property
    def paths(self) -> list[Path | str]:
        """Absolute paths of the hits (URLs for a root in object storage), best first."""
        return [hit.path for hit in self.hits]

    def to_json(self) -> dict[str, Any]:
        """`{"query": ..., "results": [...]}` exactly as the CLI's --json prints it, with
        `"understood": {...}` for a text query and `"cutoff": {...}` when one applied."""
        body: dict[str, Any] = {"query": self.query}
        if self.understood is not None:
            body["understood"] = self.understood.to_json()
        if self.cutoff is not None:
            body["cutoff"] = {
                "threshold": self.cutoff.threshold,
                "kept": self.cutoff.kept,
                "how": self.cutoff.how,
            }
        body["results"] = [hit.to_json() for hit in self.hits]
        return body


def json_path(path: str | os.PathLike[str]) -> str:
    """A path as JSON text: its exact name (NFD stays NFD); bytes that are not UTF-8, which
    no JSON string can hold, as \\xNN escapes."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as people read it: NFC, bytes that are not UTF-8 as \\xNN escapes."""
    return db.path_key(os.fspath(path))
