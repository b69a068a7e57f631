"""Split a query into facts (when, where, with what) and the rest, for the text tower.

Pure and fast: no database, no model, nothing heavier than the standard library; what the
library holds comes in as a `Vocabulary`, built once per library.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from search.errors import DateError
from search.understand import cameras as _cameras
from search.understand import places as _places
from search.understand.dates import DateFact, understand_date
from search.understand.words import AFTER_FACT, BEFORE_FACT, OPERATORS, WEIGHT, is_plain, variants

MAX_DATE_WORDS = 6  # "2023년 3월 5일부터 2024년 까지": longer date phrases are not read
# Only the first words of a query are read for facts (a pasted essay stays linear and fast).
MAX_SCANNED = 64
_PUNCTUATION = ".,!?;:…·\"'()[]{}<>“”‘’"


class Vocabulary:
    """What a library holds that a query may name: its places (every level) and cameras, with
    photo counts, turned once into lookup tables (`Vocabulary.build`)."""

    def __init__(self, places: _places.PlaceIndex, cameras: _cameras.CameraIndex) -> None:
        self.places = places
        self.cameras = cameras

    @classmethod
    def build(
        cls,
        places: Iterable[tuple[Sequence[str], int]] = (),
        cameras: Iterable[tuple[str, str, int]] = (),
    ) -> Vocabulary:
        """`places`: (names from the top level down, photo count) rows, e.g.
        (("제주특별자치도", "서귀포시", "성산읍"), 12) or (("일본", "도쿄"), 3); the counts of
        rows sharing a prefix add up. `cameras`: (make, model, photo count) rows, e.g.
        ("Apple", "iPhone 13 Pro", 40). Rows with a count of 0 are ignored."""
        return cls(_places.PlaceIndex(places), _cameras.CameraIndex(cameras))

    @classmethod
    def empty(cls) -> Vocabulary:
        """A library with no places and no cameras: only dates are understood."""
        return cls.build()

    def place_counts(self) -> list[tuple[str, int]]:
        """Every place at every level ("제주특별자치도 서귀포시") with its photo count, most
        photos first (the web page's list of places)."""
        rows = [(_places.label(p), n) for p, n in self.places.counts.items()]
        return sorted(rows, key=lambda row: (-row[1], row[0]))

    def camera_counts(self) -> list[tuple[str, str, int]]:
        """Every (make, model) with its photo count, most photos first."""
        rows = [(make, model, n) for (make, model), n in self.cameras.counts.items()]
        return sorted(rows, key=lambda row: (-row[2], row[0], row[1]))


@dataclass(frozen=True)
class Fact:
    """One understood fact: its `kind` ("date", "place" or "camera"), the user's `words` it
    took from the query (with their particles and filler, as typed) and its `value` as shown."""

    kind: str
    words: str
    value: str


@dataclass(frozen=True)
class Understood:
    """A query split into facts and the rest.

    `text` is the rest for the text tower: the user's remaining words as typed (NFC), `+`/`-`
    composition intact, "" when the query was only facts. `after`/`before` are an inclusive
    day range (either may be None). `places` are the named places, each as its names from the
    top level down joined by spaces ("제주특별자치도", "서울특별시 강남구", "일본 도쿄"): a photo
    is there when its place equals one or starts with it plus a space; several places add up.
    `cameras` are the library's (make, model) pairs the camera words named (`camera` is how
    they are shown)."""

    text: str
    after: date | None = None
    before: date | None = None
    places: tuple[str, ...] = ()
    camera: str | None = None
    cameras: tuple[tuple[str, str], ...] = ()
    facts: tuple[Fact, ...] = ()
    query: str = field(default="", repr=False)

    @property
    def has_facts(self) -> bool:
        """True when anything was understood (a date, a place or a camera)."""
        return bool(self.facts)

    def date_label(self) -> str | None:
        """The day range as shown (2025-06-01–2025-08-31), or None without one."""
        if self.after is None and self.before is None:
            return None
        return DateFact(self.after, self.before).label()

    def datetime_range(self) -> tuple[datetime | None, datetime | None]:
        """The day range as search filters take it (search.dates.parse_range): the first
        day's midnight inclusive, the midnight after the last day exclusive (local wall time)."""
        lo = datetime.combine(self.after, time()) if self.after else None
        hi = datetime.combine(self.before + timedelta(days=1), time()) if self.before else None
        return lo, hi

    def describe(self) -> str:
        """One line: "understood: 2025-06-01–2025-08-31 · 제주특별자치도 · 바다"."""
        parts = [self.date_label(), *self.places, self.camera, self.text or None]
        shown = [p for p in parts if p]
        return "understood: " + (" · ".join(shown) if shown else "(empty query)")

    def to_json(self) -> dict[str, Any]:
        """The understanding as JSON-ready values (dates as ISO strings)."""
        return {
            "text": self.text,
            "after": self.after.isoformat() if self.after else None,
            "before": self.before.isoformat() if self.before else None,
            "places": list(self.places),
            "camera": self.camera,
            "cameras": [list(c) for c in self.cameras],
            "facts": [{"kind": f.kind, "words": f.words, "value": f.value} for f in self.facts],
        }

    def without(self, index: int) -> str:
        """The query with fact `index`'s words taken out (the web's chip removal): asking it
        again understands every other fact and drops that one."""
        words = self.facts[index].words.split()
        tokens = self.query.split()
        for start in range(len(tokens) - len(words) + 1):
            if tokens[start : start + len(words)] == words:
                del tokens[start : start + len(words)]
                break
        return " ".join(tokens)


@dataclass
class _Found:
    kind: str
    start: int
    end: int
    value: Any  # DateFact, tuple of place paths, or (label, cameras)
    phrase: str = ""  # a date's words as read (its particle stripped)


def understand(query: str, *, today: date, vocabulary: Vocabulary) -> Understood:
    """Split `query` into dates, places, cameras and the rest; see the module docs.

    Raises DateError (exit 2, HTTP 400) for a date that does not exist (13월, 2월 30일)."""
    if isinstance(today, datetime):  # a datetime would not compare with the dates below
        today = today.date()
    text = unicodedata.normalize("NFC", query)
    tokens = text.split()
    eligible = _eligible(tokens)
    found: list[_Found] = []
    i = 0
    while i < min(len(tokens), MAX_SCANNED):
        hit = _match_at(tokens, eligible, i, today, vocabulary) if eligible[i] else None
        if hit is None:
            i += 1
        else:
            found.append(hit)
            i = hit.end
    if not found:
        return Understood(text=" ".join(tokens), query=" ".join(tokens))
    taken = [False] * len(tokens)
    for hit in found:
        for k in range(hit.start, hit.end):
            taken[k] = True
    for hit in found:
        _take_filler(tokens, eligible, taken, hit)
    return _assemble(tokens, taken, found, _joined_date(found, today))


def _joined_date(found: list[_Found], today: date) -> DateFact | None:
    """Date words apart in the query read as one phrase when they make one: 2023년 제주 여름
    is the summer of 2023, not 2023 and this year's summer."""
    phrases = [hit.phrase for hit in found if hit.kind == "date"]
    if len(phrases) < 2:
        return None
    return understand_date(" ".join(phrases), today)


def _eligible(tokens: list[str]) -> list[bool]:
    """Which words may be facts: those of positive, unweighted terms that are not paths."""
    out: list[bool] = []
    negative, weighted, term_start = False, False, True
    for token in tokens:
        if token in OPERATORS:
            negative, term_start = token == "-", True
            out.append(False)
            continue
        if term_start:
            weighted, term_start = bool(WEIGHT.match(token)), False
        out.append(not negative and not weighted and is_plain(token))
    return out


def _phrases(tokens: list[str], start: int, end: int) -> Iterable[str]:
    """tokens[start:end] joined, its last word as typed and then without a particle."""
    words = tokens[start:end]
    words[0] = words[0].lstrip(_PUNCTUATION) or words[0]  # (제주, "Tokyo
    head, last = words[:-1], words[-1].rstrip(_PUNCTUATION) or words[-1]
    for variant in variants(last):
        yield " ".join([*head, variant])


def _match_at(
    tokens: list[str], eligible: list[bool], i: int, today: date, vocabulary: Vocabulary
) -> _Found | None:
    run_end = i
    while run_end < len(tokens) and eligible[run_end]:
        run_end += 1
    for end in range(min(run_end, i + MAX_DATE_WORDS), i, -1):
        for phrase in _phrases(tokens, i, end):
            fact = understand_date(phrase, today)
            if fact is not None:
                return _Found("date", i, end, fact, phrase)
    if len(vocabulary.cameras):
        for end in range(min(run_end, i + _cameras.MAX_WORDS), i, -1):
            for phrase in _phrases(tokens, i, end):
                camera = vocabulary.cameras.find(phrase)
                if camera is not None:
                    return _Found("camera", i, end, camera)
    if len(vocabulary.places):
        for end in range(min(run_end, i + _places.MAX_WORDS), i, -1):
            for phrase in _phrases(tokens, i, end):
                paths = vocabulary.places.find(phrase)
                if paths:
                    return _Found("place", i, end, paths)
    return None


def _bare(token: str) -> str:
    return token.strip(_PUNCTUATION).casefold()


def _take_filler(tokens: list[str], eligible: list[bool], taken: list[bool], hit: _Found) -> None:
    """Mark the filler that only joined `hit` to the query: 찍은, 사진, a lone 에서 after it;
    in, from, taken, photos before it."""
    k = hit.end
    while k < len(tokens) and eligible[k] and not taken[k] and _bare(tokens[k]) in AFTER_FACT:
        taken[k] = True
        k += 1
    hit.end = k
    k = hit.start - 1
    while k >= 0 and eligible[k] and not taken[k] and _bare(tokens[k]) in BEFORE_FACT:
        taken[k] = True
        k -= 1
    hit.start = k + 1


def _assemble(
    tokens: list[str], taken: list[bool], found: list[_Found], joined: DateFact | None
) -> Understood:
    after: date | None = None
    before: date | None = None
    place_groups: list[tuple[_places.Path, ...]] = []
    camera_labels: list[str] = []
    camera_set: dict[tuple[str, str], None] = {}
    facts: list[Fact] = []
    for hit in found:
        words = " ".join(tokens[hit.start : hit.end])
        if hit.kind == "date":
            fact: DateFact = hit.value
            if fact.after is not None and (after is None or fact.after > after):
                after = fact.after
            if fact.before is not None and (before is None or fact.before < before):
                before = fact.before
            facts.append(Fact("date", words, fact.label()))
        elif hit.kind == "place":
            place_groups.append(hit.value)
            facts.append(Fact("place", words, ", ".join(_places.label(p) for p in hit.value)))
        else:
            label, cams = hit.value
            if label not in camera_labels:
                camera_labels.append(label)
            camera_set.update(dict.fromkeys(cams))
            facts.append(Fact("camera", words, label))
    if joined is not None:
        after, before = joined.after, joined.before
    elif after is not None and before is not None and after > before:
        said = " / ".join(f.words for f in facts if f.kind == "date")
        raise DateError(
            f"{said}: 겹치는 날이 없습니다 (these dates do not overlap; ask for one period)"
        )
    return Understood(
        text=_rest(tokens, taken),
        after=after,
        before=before,
        places=tuple(_places.label(p) for p in _places.narrow(place_groups)),
        camera=" / ".join(camera_labels) or None,
        cameras=tuple(camera_set),
        facts=tuple(facts),
        query=" ".join(tokens),
    )


def _rest(tokens: list[str], taken: list[bool]) -> str:
    """The words not taken, with the composition intact: a term left empty goes, together
    with its operator."""
    terms: list[tuple[str | None, list[str], bool]] = []  # (operator, words kept, had words)
    operator: str | None = None
    words: list[str] = []
    had = False
    for token, gone in zip(tokens, taken, strict=True):
        if token in OPERATORS:
            terms.append((operator, words, had))
            operator, words, had = token, [], False
            continue
        had = True
        if not gone:
            words.append(token)
    terms.append((operator, words, had))
    kept = [(op, ws) for op, ws, had_words in terms if ws or not had_words]
    out: list[str] = []
    for n, (op, ws) in enumerate(kept):
        if op is not None and not (n == 0 and op == "+"):
            out.append(op)
        out.extend(ws)
    return " ".join(out)
