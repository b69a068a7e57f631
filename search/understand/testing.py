"""The query-understanding accuracy set (search/understand/data/queries.tsv) and its library
(search/understand/data/vocabulary.json), shared by tests/test_understand.py and
bench/understand.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from search.errors import DateError
from search.understand import Vocabulary, understand

DATA = Path(__file__).resolve().parent / "data"

# Phrasings judged out of scope, with the reason; the test checks they still miss.
KNOWN_MISSES: dict[str, str] = {
    "작년 말": "a year's 말 / 초 has no agreed span (December? November–December?): "
    "작년 is read, 말 stays text",
    "올해 초 눈": "a year's 초 has no agreed span (January? January–February?)",
    "작년 이맘때": "'about this time last year' is fuzzy (how many weeks either side?)",
    "소니 a7으로 찍은 강릉": "a model word the library spells otherwise (a7 for ILCE-7M3) stays "
    "text, with its particle and the 찍은 after it",
}


@dataclass(frozen=True)
class Case:
    query: str
    after: str | None
    before: str | None
    places: tuple[str, ...]
    camera: str | None
    text: str
    error: bool


def _field(value: str) -> str | None:
    return None if value == "-" else value


def load_cases() -> list[Case]:
    """Every phrasing of the set, in file order."""
    cases = []
    for line in (DATA / "queries.tsv").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        query, after, before, places, camera, text = line.split("\t")
        cases.append(
            Case(
                query=query,
                after=None if after == "ERROR" else _field(after),
                before=_field(before),
                places=tuple(places.split(" | ")) if places != "-" else (),
                camera=_field(camera),
                text=_field(text) or "",
                error=after == "ERROR",
            )
        )
    return cases


def load_vocabulary() -> tuple[date, Vocabulary]:
    """The set's `today` and its library's vocabulary."""
    raw = json.loads((DATA / "vocabulary.json").read_text(encoding="utf-8"))
    vocabulary = Vocabulary.build(
        places=[(tuple(names), count) for names, count in raw["places"]],
        cameras=[tuple(row) for row in raw["cameras"]],
    )
    return date.fromisoformat(raw["today"]), vocabulary


def miss(case: Case, today: date, vocabulary: Vocabulary) -> str | None:
    """None when the engine reads `case` as expected, else what it got instead."""
    try:
        got = understand(case.query, today=today, vocabulary=vocabulary)
    except DateError as exc:
        return None if case.error else f"DateError: {exc}"
    if case.error:
        return f"no DateError: {got.describe()}"
    expected = (case.after, case.before, case.places, case.camera, case.text)
    actual = (
        got.after.isoformat() if got.after else None,
        got.before.isoformat() if got.before else None,
        got.places,
        got.camera,
        got.text,
    )
    return None if actual == expected else f"got {actual}, expected {expected}"
