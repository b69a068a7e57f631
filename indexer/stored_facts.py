"""A photo's facts as the library stores them: its columns (db.schema.Photo, schema 4), its
place name, and its words (db.lexical), written with the photo's row in one transaction.

`Facts.columns` turns what `indexer.facts.read_facts` read into the row's values, with the
place of its GPS position (`db.places`, offline; its tables load on a background thread as a
session opens, so the first photo abroad does not wait for them); `words` makes the photo's
words from them. `fill_facts` reads the facts of the photos stored before schema 4
(metadata only: nothing is decoded or encoded again), as `indexer.phash.fill_phashes` does
for the perceptual hashes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from db import Library, lexical, photo_writes, photos, write_errors
from db.places import KOREA, Place, Places
from db.schema import FACT_COLUMNS, chunks
from indexer.facts import PhotoFacts, read_facts

# Stored in `photos.facts`: bump when what is read or stored changes, and photos read with an
# older version are read again (none yet: 1 is the first).
FACTS_VERSION = 1
# The facts columns `Facts.columns` fills, all NULL: not read yet.
NOT_READ: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
# Photos read per transaction of the backfill.
FILL_CHUNK = 256

# (done, total) of a backfill, reported after each chunk.
FillProgress = Callable[[int, int], None]


def place_path(place: Place) -> tuple[str, ...]:
    """A place's names top-down, as stored in `photos.place_path` and counted by
    `db.photos.place_counts`: inside Korea its levels (제주특별자치도, 서귀포시, 성산읍), abroad
    the country first (프랑스, 파리); `place.text` is always them joined by one space."""
    if place.country_code == KOREA:
        return place.levels or (place.country,)
    return (place.country, *place.levels)


class Facts:
    """Turns facts read from a photo into the row's columns and words, with places looked up
    in this process's tables (loaded on a background thread from the first photo with a
    position on, `prepare`)."""

    def __init__(self, places: Places | None = None) -> None:
        self.places = places if places is not None else Places()
        self._ready: threading.Thread | None = None

    def prepare(self) -> None:
        """Load the place tables on a background thread (a lookup meanwhile waits for them)."""
        if self._ready is None:
            self._ready = threading.Thread(target=self._warm, name="koclip-places", daemon=True)
            self._ready.start()

    def _warm(self) -> None:
        try:
            self.places.prepare()  # the city table (abroad)
            self.places.place_of(37.5665, 126.9780)  # Korea's polygons (Seoul)
        except Exception:  # noqa: S110 - a lookup meets the same error and goes without a place
            pass

    def place_of(self, facts: PhotoFacts) -> Place | None:
        """The place of the facts' position (None without one, or if it cannot be named)."""
        if not facts.has_position:
            return None
        self.prepare()  # the first position: the tables start loading (a lookup waits for them)
        try:
            return self.places.place_of(facts.lat, facts.lon)
        except Exception:  # the tables cannot load here (a broken install): no place
            return None

    def columns(self, facts: PhotoFacts | None) -> tuple[dict[str, Any], str]:
        """The row's fact columns (db.schema.FACT_COLUMNS) for the facts read, and the place
        part of the photo's words (see `words`); all NULL for None (not read: a later run
        reads them)."""
        if facts is None:
            return dict(NOT_READ), ""
        place = self.place_of(facts)
        columns = {
            "lat": facts.lat,
            "lon": facts.lon,
            "place": place.text if place else None,
            "place_path": _json(place_path(place)) if place else None,
            "camera_make": facts.camera_make,
            "camera_model": facts.camera_model,
            "lens": facts.lens,
            "keywords": "\n".join(facts.keywords) or None,
            "caption": facts.caption,
            "facts": FACTS_VERSION,
            "facts_problems": ",".join(facts.unreadable) or None,
        }
        # The stored name with its other spellings ("Paris"), and the names a person wrote
        # into the photo (XMP City, IPTC Sub-location): what a query may call the place.
        names = [place.text, *place.aliases] if place else []
        names += facts.place_names
        return columns, " ".join(dict.fromkeys(n for n in names if n))


def words(
    photo_id: int, relpath: str, columns: dict[str, Any], place_words: str = ""
) -> lexical.PhotoWords:
    """A photo's words: its name and folders, and (once read) its keywords, caption and place."""
    return lexical.PhotoWords.of(
        photo_id,
        relpath,
        keywords=(columns.get("keywords") or "").split("\n"),
        caption=columns.get("caption"),
        place=place_words,
    )


def moved_words(
    stored: lexical.PhotoWords | None, photo_id: int, relpath: str
) -> lexical.PhotoWords:
    """The words of a photo at a new path (moved, or an exact copy of `stored`'s photo): its
    new name and folders, the stored keywords, caption and place."""
    words = lexical.PhotoWords.of(photo_id, relpath)
    if stored is None:
        return words
    return lexical.PhotoWords(
        photo_id,
        name=words.name,
        folders=words.folders,
        keywords=stored.keywords,
        caption=stored.caption,
        place=stored.place,
    )


def _json(names: tuple[str, ...]) -> str:
    return json.dumps(list(names), ensure_ascii=False)


# -- libraries indexed before schema 4 ---------------------------------------------------------


def missing_facts(library: Library) -> list[tuple[int, str, str]]:
    """(id, key path, on-disk relative path) of every photo whose facts were not read yet."""
    with library.session() as s, s.begin():
        return photos.missing_facts(s)


def fill_facts(
    library: Library,
    photo_root: Path,
    facts: Facts,
    *,
    workers: int = 2,
    progress: FillProgress | None = None,
) -> int:
    """Read the facts of every photo stored without them (metadata only: nothing is decoded
    or encoded) and store them with the photo's words; hold the lock. A file that cannot be
    opened now is left as it is, to be tried again next run. Returns how many photos were
    filled."""
    todo = missing_facts(library)
    if not todo:
        return 0
    filled = done = 0
    if progress:
        progress(0, len(todo))
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="koclip-facts") as pool:
        for chunk in chunks(todo, FILL_CHUNK):
            read = list(pool.map(lambda t: read_facts(photo_root / t[2]), chunk))
            values, new_words = [], []
            for (pid, key, _), found in zip(chunk, read, strict=True):
                if found.unreadable == ("file",):
                    continue  # gone or unreadable now: next run
                columns, place_words = facts.columns(found)
                values.append({"id": pid, **columns})
                new_words.append(words(pid, key, columns, place_words))
            if values:
                with write_errors(library.directory), library.session() as s, s.begin():
                    photo_writes.update_photos(s, values)
                    lexical.put(s, new_words)
            filled += len(values)
            done += len(chunk)
            if progress:
                progress(done, len(todo))
    return filled
