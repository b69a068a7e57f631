"""The words a photo carries besides its pixels (file name, folders, keywords, caption, place),
for the lexical half of a search: SQLite FTS5 with the trigram tokenizer, which matches
Hangul inside words without a morphological analyser ("일출봉" finds "제주_성산일출봉.jpg").

Trigrams need three characters; a shorter word (most Korean nouns have two syllables: 가족,
바다) is matched with LIKE over the same table, a scan of its text columns only.

The table is an ordinary FTS5 table (it keeps its own copy of the text) keyed by the photo's
id, written in the same transaction as the photo's row, so it is as crash-safe as the rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

TABLE = "photo_words"
COLUMNS = ("name", "folders", "keywords", "caption", "place")
CREATE = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5("
    + ", ".join(COLUMNS)
    + ", tokenize='trigram')"
)
# FTS5's own copy of the text (an ordinary FTS5 table keeps one): a plain table, `id` the
# rowid, c0, c1... the COLUMNS in order. Counting and scanning it reads the rows directly, not
# through the virtual table (a count is a walk of its b-tree; a LIKE scan several times
# quicker), with the same values and so the same answers.
CONTENT = f"{TABLE}_content"
CONTENT_COLUMNS = tuple(f"c{i}" for i in range(len(COLUMNS)))
# A photo row deleted (removed, re-indexed under a new id, set aside, the library emptied)
# takes its words with it, whichever code deletes it.
FORGET_TRIGGER = (
    f"CREATE TRIGGER IF NOT EXISTS photos_forget_words AFTER DELETE ON photos "
    f"BEGIN DELETE FROM {TABLE} WHERE rowid = old.id; END"
)
# A word shorter than this is not looked up (one syllable matches too much).
MIN_CHARS = 2
MAX_WORDS = 16
# Separators inside file and folder names: IMG_2024-07-01 제주.성산 -> words.
_SEPARATORS = re.compile(r"[\s_\-.,()\[\]{}+=~!@#$%^&*'\"]+")


@dataclass(frozen=True)
class PhotoWords:
    """One photo's words, one string a column."""

    photo_id: int
    name: str = ""
    folders: str = ""
    keywords: str = ""
    caption: str = ""
    place: str = ""

    @classmethod
    def of(
        cls,
        photo_id: int,
        relpath: str,
        *,
        keywords: Iterable[str] = (),
        caption: str | None = None,
        place: str | None = None,
    ) -> PhotoWords:
        """From a photo's relative path (POSIX) and its facts."""
        *folders, filename = relpath.split("/")
        stem = filename.rsplit(".", 1)[0] if "." in filename else filename
        return cls(
            photo_id,
            name=_words(stem),
            folders=" ".join(_words(f) for f in folders),
            keywords=" ".join(k.strip() for k in keywords if k.strip()),
            caption=(caption or "").strip(),
            place=(place or "").strip(),
        )

    def row(self) -> dict[str, object]:
        return {"rowid": self.photo_id, **{c: getattr(self, c) for c in COLUMNS}}


def create_table(session: Session) -> None:
    session.execute(text(CREATE))


def put(session: Session, words: Sequence[PhotoWords]) -> None:
    """Store (or replace) these photos' words."""
    if not words:
        return
    forget(session, [w.photo_id for w in words])
    names = ", ".join(COLUMNS)
    values = ", ".join(f":{c}" for c in COLUMNS)
    session.execute(
        text(f"INSERT INTO {TABLE}(rowid, {names}) VALUES (:rowid, {values})"),
        [w.row() for w in words],
    )


def stored(session: Session, photo_ids: Sequence[int]) -> dict[int, PhotoWords]:
    """The words stored for these photos, by id (photos without words are absent)."""
    out: dict[int, PhotoWords] = {}
    ids = list(photo_ids)
    names = ", ".join(COLUMNS)
    for start in range(0, len(ids), 500):
        marks = ", ".join(str(int(i)) for i in ids[start : start + 500])
        rows = session.execute(text(f"SELECT rowid, {names} FROM {TABLE} WHERE rowid IN ({marks})"))
        out.update((row[0], PhotoWords(*row)) for row in rows)
    return out


def forget(session: Session, photo_ids: Sequence[int]) -> None:
    """Drop these photos' words (removed or re-indexed photos)."""
    ids = list(photo_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join(str(int(i)) for i in chunk)
        session.execute(text(f"DELETE FROM {TABLE} WHERE rowid IN ({marks})"))


def query_words(query: str) -> list[str]:
    """The words of a query's text worth looking up (the caller passes the words searched
    for, not those composed away with `-`): split like names, short ones and duplicates
    dropped, at most MAX_WORDS."""
    seen: dict[str, None] = {}
    for word in _SEPARATORS.split(query.lower()):
        if len(word) >= MIN_CHARS:
            seen.setdefault(word, None)
    return list(seen)[:MAX_WORDS]


def ranking(
    session: Session,
    words: Sequence[str],
    *,
    limit: int = 1000,
    memo: dict[tuple[str, str], Any] | None = None,
) -> list[tuple[int, float]]:
    """Photos whose words contain any of `words`, best first: each word found counts by its
    rarity in the library (log(N / photos with it)), so a rare word outweighs a common one.
    Returns (photo id, score), at most `limit`.

    `memo`: a dict kept by the caller across the rankings of one transaction (the queries of
    a batch): the table's size and each word's photos are then read once for all of them."""
    if not words:
        return []
    memo = {} if memo is None else memo
    total = memo.get(("total", ""))
    if total is None:
        total = memo["total", ""] = (
            session.execute(text(f"SELECT count(*) FROM {CONTENT}")).scalar() or 0
        )
    if not total:
        return []
    scores: dict[int, float] = {}
    for word in words:
        ids = memo.get(("word", word))
        if ids is None:
            ids = memo["word", word] = _ids_with(session, word)
        if not ids or len(ids) == total:
            continue  # everywhere: says nothing
        weight = math.log(total / len(ids))
        for photo_id in ids:
            scores[photo_id] = scores.get(photo_id, 0.0) + weight
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:limit]


def _ids_with(session: Session, word: str) -> list[int]:
    if len(word) >= 3:  # the trigram index answers
        phrase = '"' + word.replace('"', '""') + '"'
        sql = f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH :q"
        return [r[0] for r in session.execute(text(sql), {"q": phrase})]
    pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    where = " OR ".join(f"{c} LIKE :p ESCAPE '\\'" for c in CONTENT_COLUMNS)
    return [
        r[0]
        for r in session.execute(text(f"SELECT id FROM {CONTENT} WHERE {where}"), {"p": pattern})
    ]


def fuse(*rankings: Sequence[int], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each ranking (ids, best first) adds 1 / (k + rank) to an id's
    score. k = 60 is the usual constant (Cormack et al., 2009): no scores to calibrate, and a
    photo high in either list comes up."""
    fused: dict[int, float] = {}
    for ranked in rankings:
        for rank, photo_id in enumerate(ranked, start=1):
            fused[photo_id] = fused.get(photo_id, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def _words(name: str) -> str:
    return " ".join(w for w in _SEPARATORS.split(name) if w)
