"""End to end, issue 21: JPEGs whose EXIF says where and when they were taken (in Korea and
abroad; their folders and names say nothing of it) are indexed by the real indexer with the
tiny model, then Korean (and English) queries naming places and dates must return exactly the
photos taken there and then, through the Python API (today pinned) and the CLI's --json
(dates relative to the real today).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.testing_facts import gps_tags, jpeg_bytes, make_exif, photo_pixels
from search import Searcher
from tests.search_fixtures import index_folder

Y = date.today().year  # the photos' years count back from the real today

SEONGSAN = (33.4589, 126.9425)  # 제주특별자치도 서귀포시 성산읍
JEJU_CITY = (33.4996, 126.5312)  # 제주특별자치도 제주시
HAEUNDAE = (35.1587, 129.1604)  # 부산광역시 해운대구
SAMSEONG = (37.5116, 127.0594)  # 서울특별시 강남구 삼성동
JONGNO = (37.5796, 126.9770)  # 서울특별시 종로구
TOKYO = (35.6812, 139.7671)  # 일본 도쿄
OSAKA = (34.6937, 135.5023)  # 일본 오사카
PARIS = (48.8584, 2.2945)  # 프랑스 파리

# name -> (position or None, taken as (years back from Y, month, day))
PHOTOS = {
    "a": (SEONGSAN, (1, 7, 20)),
    "b": (JEJU_CITY, (1, 8, 10)),
    "c": (SEONGSAN, (2, 7, 15)),
    "d": (JEJU_CITY, (1, 12, 25)),
    "e": (HAEUNDAE, (1, 5, 5)),
    "f": (SAMSEONG, (2, 3, 1)),
    "g": (JONGNO, (1, 10, 1)),
    "h": (TOKYO, (3, 4, 1)),
    "i": (TOKYO, (2, 11, 11)),
    "j": (OSAKA, (3, 6, 1)),
    "k": (PARIS, (3, 5, 2)),
    "l": (None, (1, 7, 21)),
}
# The folders and names carry no place and no date.
FOLDERS = ("camera", "phone/backup", "misc")


def _relpath(name: str) -> str:
    return f"{FOLDERS[ord(name) % len(FOLDERS)]}/IMG_{ord(name):04d}.jpg"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("trips")
    for seed, (name, (where, (back, month, day))) in enumerate(sorted(PHOTOS.items())):
        exif = make_exif(
            taken=f"{Y - back:04d}:{month:02d}:{day:02d} 12:00:00",
            gps=gps_tags(*where) if where else None,
        )
        path = root / _relpath(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(exif=exif, image=photo_pixels((48, 32), seed)))
    return index_folder(root, tiny_checkpoint)


def _names(paths) -> set[str]:
    by_path = {_relpath(n): n for n in PHOTOS}
    return {by_path[p] for p in paths}


QUERIES = [
    ("작년 여름 제주", {"a", "b"}),
    (f"{Y - 3}년 도쿄", {"h"}),
    ("부산에서 찍은 사진", {"e"}),
    ("서울 강남구", {"f"}),
    ("서울", {"f", "g"}),
    ("파리", {"k"}),
    (f"Tokyo {Y - 3}", {"h"}),
    ("일본", {"h", "i", "j"}),
    (f"{Y - 2}년 여름 제주", {"c"}),
    ("작년 제주 바다", {"a", "b", "d"}),  # the rest ranks the photos there
    (f"{Y - 1}년 7월", {"a", "l"}),
    ("재작년 도쿄", {"i"}),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_python_api(library: Path, query: str, expected: set[str]) -> None:
    with Searcher(library) as searcher:
        results = searcher.text(query, today=date.today(), k=50)
    assert _names(h.relpath for h in results) == expected, results.understood
    assert results.understood.has_facts


def test_python_api_with_another_today(library: Path) -> None:
    """`today` pinned a year on: 재작년 is then last year's photos."""
    with Searcher(library) as searcher:
        results = searcher.text("재작년 여름 제주", today=date(Y + 1, 3, 1), k=50)
        assert _names(h.relpath for h in results) == {"a", "b"}
        composed = searcher.compose("작년 여름 제주 - 사람", today=date(Y, 3, 1), k=50)
        assert _names(h.relpath for h in composed) == {"a", "b"}


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_cli_json(library: Path, query: str, expected: set[str]) -> None:
    from cli import main

    args = ["search", *query.split(), "--library", str(library), "--json", "-k", "50"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    root = library.parent
    found = {Path(r["path"]).relative_to(root).as_posix() for r in body["results"]}
    assert _names(found) == expected, body["understood"]
    assert body["understood"]["facts"]


def test_places_abroad_and_at_home_are_listed(library: Path) -> None:
    with Searcher(library) as searcher:
        places = dict(searcher.places())
    assert places["제주특별자치도"] == 4
    assert places["일본"] == 3 and places["일본 도쿄"] == 2
    assert places["서울특별시 강남구"] == 1
