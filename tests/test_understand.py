"""Query understanding (search.understand): dates, places, cameras and the rest, without a
library or a model. The accuracy set lives in search/understand/data/queries.tsv."""

from __future__ import annotations

import ast
import json
import sys
from datetime import date
from pathlib import Path

import pytest

from search.errors import DateError, QueryError, SearchError
from search.understand import Understood, Vocabulary, lunar, understand
from search.understand.dates import understand_date
from search.understand.places import short_form
from search.understand.testing import KNOWN_MISSES, load_cases, load_vocabulary, miss

TODAY = date(2026, 12, 7)  # a Monday
VOCAB = Vocabulary.build(
    places=[
        (("제주특별자치도", "서귀포시", "성산읍"), 12),
        (("제주특별자치도", "제주시", "애월읍"), 5),
        (("서울특별시", "강남구", "역삼동"), 7),
        (("서울특별시", "중구", "명동"), 2),
        (("부산광역시", "중구", "남포동"), 2),
        (("경기도", "광주시", "오포읍"), 1),
        (("광주광역시", "동구", "충장동"), 1),
        (("일본", "도쿄"), 3),
        (("프랑스", "파리"), 4),
        (("미국", "New York"), 2),
        (("독일", "베를린"), 0),
    ],
    cameras=[("Apple", "iPhone 13 Pro", 40), ("SONY", "ILCE-7M3", 10), ("Canon", "EOS R6", 0)],
)


def u(query: str, vocabulary: Vocabulary = VOCAB, today: date = TODAY) -> Understood:
    return understand(query, today=today, vocabulary=vocabulary)


def span(query: str, today: date = TODAY) -> tuple[str | None, str | None]:
    got = u(query, today=today)
    return (
        got.after.isoformat() if got.after else None,
        got.before.isoformat() if got.before else None,
    )


# --- the accuracy set -----------------------------------------------------------------------


def test_accuracy_set_is_read_exactly():
    today, vocabulary = load_vocabulary()
    cases = load_cases()
    assert len(cases) >= 100
    misses = {c.query: miss(c, today, vocabulary) for c in cases}
    unexpected = {q: m for q, m in misses.items() if m and q not in KNOWN_MISSES}
    assert unexpected == {}
    # A known miss that is now read right leaves the list.
    assert [q for q in KNOWN_MISSES if not misses.get(q)] == []


# --- when -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("작년", ("2025-01-01", "2025-12-31")),
        ("지난해", ("2025-01-01", "2025-12-31")),
        ("올해", ("2026-01-01", "2026-12-31")),
        ("재작년", ("2024-01-01", "2024-12-31")),
        ("재재작년", ("2023-01-01", "2023-12-31")),
        ("지난달", ("2026-11-01", "2026-11-30")),
        ("저번 달", ("2026-11-01", "2026-11-30")),
        ("이번 달", ("2026-12-01", "2026-12-31")),
        ("지난 주말", ("2026-12-05", "2026-12-06")),
        ("이번 주말", ("2026-12-12", "2026-12-13")),
        ("지난주", ("2026-11-30", "2026-12-06")),
        ("어제", ("2026-12-06", "2026-12-06")),
        ("그저께", ("2026-12-05", "2026-12-05")),
        ("이틀 전", ("2026-12-05", "2026-12-05")),
        ("3년 전", ("2023-01-01", "2023-12-31")),
        ("10일 전", ("2026-11-27", "2026-11-27")),
        ("3개월 전", ("2026-09-01", "2026-09-30")),
        ("2024년", ("2024-01-01", "2024-12-31")),
        ("2024년도", ("2024-01-01", "2024-12-31")),
        ("2024년 3월", ("2024-03-01", "2024-03-31")),
        ("2024년 2월", ("2024-02-01", "2024-02-29")),
        ("2024년 3월 5일", ("2024-03-05", "2024-03-05")),
        ("24년 여름", ("2024-06-01", "2024-08-31")),
        ("99년", ("1999-01-01", "1999-12-31")),
        ("2023년 추석", ("2023-09-28", "2023-09-30")),
        ("2023년 설날", ("2023-01-21", "2023-01-23")),
        ("2025년 한가위", ("2025-10-05", "2025-10-07")),
        ("크리스마스", ("2025-12-25", "2025-12-25")),
        ("성탄절", ("2025-12-25", "2025-12-25")),
        ("어린이날", ("2026-05-05", "2026-05-05")),
        ("5월 초", ("2026-05-01", "2026-05-10")),
        ("5월 중순", ("2026-05-11", "2026-05-20")),
        ("5월 말", ("2026-05-21", "2026-05-31")),
        ("2월 말", ("2026-02-21", "2026-02-28")),
        ("late February 2024", ("2024-02-21", "2024-02-29")),
        ("작년 여름", ("2025-06-01", "2025-08-31")),
        ("작년 겨울", ("2025-12-01", "2026-02-28")),
        ("2023년 겨울", ("2023-12-01", "2024-02-29")),
        ("봄", ("2026-03-01", "2026-05-31")),
        ("last summer", ("2026-06-01", "2026-08-31")),
        ("2023", ("2023-01-01", "2023-12-31")),
        ("March 2024", ("2024-03-01", "2024-03-31")),
        ("christmas 2022", ("2022-12-25", "2022-12-25")),
        ("yesterday", ("2026-12-06", "2026-12-06")),
        ("3 years ago", ("2023-01-01", "2023-12-31")),
        ("two weeks ago", ("2026-11-23", "2026-11-29")),
        ("2024-03-05", ("2024-03-05", "2024-03-05")),
        ("2024.03", ("2024-03-01", "2024-03-31")),
    ],
)
def test_dates(query, expected):
    assert span(query) == expected
    assert u(query).text == ""


def test_bare_months_and_days_are_never_in_the_future():
    # The most recent May: this year's once begun, else last year's.
    assert span("5월", today=date(2026, 5, 1)) == ("2026-05-01", "2026-05-31")
    assert span("5월", today=date(2026, 4, 30)) == ("2025-05-01", "2025-05-31")
    assert span("12월 25일", today=date(2026, 12, 7)) == ("2025-12-25", "2025-12-25")
    assert span("추석", today=date(2026, 9, 1)) == ("2025-10-05", "2025-10-07")
    assert span("여름", today=date(2026, 3, 1)) == ("2025-06-01", "2025-08-31")
    # 2월 29일 without a year: the most recent leap day.
    assert span("2월 29일") == ("2024-02-29", "2024-02-29")


def test_last_and_this_mean_ended_and_this_years():
    # 지난/last: the most recent one that has ended; today is in a winter that began 12-01.
    assert span("지난 겨울") == ("2025-12-01", "2026-02-28")
    assert span("겨울") == ("2026-12-01", "2027-02-28")
    assert span("지난 12월") == ("2025-12-01", "2025-12-31")
    assert span("이번 여름", today=date(2026, 3, 1)) == ("2026-06-01", "2026-08-31")
    assert span("지난 여름", today=date(2026, 7, 1)) == ("2025-06-01", "2025-08-31")


def test_weekends_and_weeks_follow_the_calendar():
    sunday = date(2026, 12, 6)
    assert span("지난 주말", today=sunday) == ("2026-11-28", "2026-11-29")
    assert span("지난 주말", today=date(2026, 12, 5)) == ("2026-11-28", "2026-11-29")
    assert span("지난주", today=sunday) == ("2026-11-23", "2026-11-29")


def test_ranges_with_bounds():
    assert span("2023년부터 2024년까지") == ("2023-01-01", "2024-12-31")
    assert span("2023년부터") == ("2023-01-01", None)
    assert span("2024년 이전") == (None, "2024-12-31")
    assert span("since March 2024") == ("2024-03-01", None)
    assert span("before 2020") == (None, "2019-12-31")
    assert span("after 2020") == ("2021-01-01", None)
    assert span("from 2022 to 2023") == ("2022-01-01", "2023-12-31")
    assert span("photos from 2023") == ("2023-01-01", "2023-12-31")  # a lone "from" is "in"


def test_two_dates_intersect_and_disjoint_ones_are_an_error():
    got = u("2023년부터 여름")
    assert (got.after, got.before) == (date(2026, 6, 1), date(2026, 8, 31))
    with pytest.raises(DateError, match="겹치는"):
        u("작년 여름 올해 겨울")


@pytest.mark.parametrize(
    "query", ["13월", "0월", "작년 32일", "2월 30일", "2025년 2월 29일", "4월 31일", "작년 5일"]
)
def test_bad_dates_are_one_clear_date_error(query):
    with pytest.raises(DateError) as info:
        u(query)
    error = info.value
    assert isinstance(error, QueryError) and isinstance(error, SearchError)
    assert (error.exit_code, error.http_status, error.code) == (2, 400, "bad_date")
    message = str(error)
    assert "\n" not in message and any("가" <= ch <= "힣" for ch in message)
    assert any(ch.isascii() and ch.isalpha() for ch in message)


def test_lunar_holidays_outside_the_table_are_a_date_error():
    with pytest.raises(DateError, match="1900–2050"):
        u("2080년 추석")


@pytest.mark.parametrize(
    "word",
    ["봄꽃", "여름방학", "가을하늘", "설악산", "말", "초", "5일", "100일", "말하다", "mayor"],
)
def test_a_date_word_inside_a_longer_word_is_not_a_date(word):
    got = u(word)
    assert (got.after, got.before, got.text) == (None, None, word)


def test_particles_and_filler_after_dates():
    assert u("5월에 찍은").text == ""
    assert u("5월에 찍은 바다").text == "바다"
    assert u("작년 여름에는 바다").text == "바다"
    assert u("작년의 사진").text == ""
    assert u("작년 사진 바다").text == "바다"
    # Filler only goes when it follows a fact.
    assert u("바다 사진").text == "바다 사진"


def test_lunar_table_matches_the_package():
    calendar = pytest.importorskip("korean_lunar_calendar").KoreanLunarCalendar()
    for year in range(lunar.FIRST_YEAR, lunar.LAST_YEAR + 1):
        for found, (month, day) in ((lunar.seollal(year), (1, 1)), (lunar.chuseok(year), (8, 15))):
            assert calendar.setLunarDate(year, month, day, False)
            assert found is not None and found.isoformat() == calendar.SolarIsoFormat()
    assert lunar.seollal(1899) is None and lunar.chuseok(2051) is None


def test_date_words_alone_are_read_by_the_date_module():
    assert understand_date("봄꽃", TODAY) is None
    fact = understand_date("작년 여름", TODAY)
    assert fact is not None and fact.label() == "2025-06-01–2025-08-31"


# --- where ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "places", "text"),
    [
        ("제주", ("제주특별자치도",), ""),
        ("제주도", ("제주특별자치도",), ""),
        ("제주특별자치도", ("제주특별자치도",), ""),
        ("제주의 바다", ("제주특별자치도",), "바다"),
        ("서귀포시", ("제주특별자치도 서귀포시",), ""),
        ("서귀포 성산", ("제주특별자치도 서귀포시 성산읍",), ""),
        ("강남", ("서울특별시 강남구",), ""),
        ("강남구에서", ("서울특별시 강남구",), ""),
        ("서울", ("서울특별시",), ""),
        ("서울특별시", ("서울특별시",), ""),
        ("서울 중구", ("서울특별시 중구",), ""),
        ("부산에서 찍은 사진", ("부산광역시",), ""),
        ("부산, 제주", ("부산광역시", "제주특별자치도"), ""),
        ("일본으로", ("일본",), ""),
        ("도쿄에서", ("일본 도쿄",), ""),
        ("동경", ("일본 도쿄",), ""),
        ("Japan", ("일본",), ""),
        ("JAPAN", ("일본",), ""),
        ("Tokyo's skyline", ("일본 도쿄",), "skyline"),
        ("파리", ("프랑스 파리",), ""),
        ("Paris", ("프랑스 파리",), ""),
        ("뉴욕", ("미국 New York",), ""),
        ("new york", ("미국 New York",), ""),
        ("photos taken in New York", ("미국 New York",), ""),
    ],
)
def test_places(query, places, text):
    got = u(query)
    assert (got.places, got.text) == (places, text)


def test_ambiguous_short_forms_stay_text_and_shared_full_names_name_all():
    # 광주 is 광주광역시 and 경기도 광주시: neither holds the other.
    assert (u("광주").places, u("광주").text) == ((), "광주")
    assert u("광주광역시").places == ("광주광역시",)
    assert u("광주시").places == ("경기도 광주시",)
    assert set(u("중구").places) == {"서울특별시 중구", "부산광역시 중구"}


def test_a_place_without_photos_stays_text():
    assert (u("베를린").places, u("베를린").text) == ((), "베를린")
    assert (u("런던").places, u("런던").text) == ((), "런던")
    empty = Vocabulary.empty()
    assert u("제주 바다", vocabulary=empty).text == "제주 바다"


def test_short_forms_by_rule():
    assert short_form("제주특별자치도") == "제주"
    assert short_form("서귀포시") == "서귀포"
    assert short_form("강남구") == "강남"
    assert short_form("성산읍") == "성산"
    assert short_form("세종특별자치시") == "세종"
    assert short_form("중구") is None  # one syllable would be left
    assert short_form("Bangkok") is None


def test_english_names_in_the_library_are_found_by_korean_aliases():
    vocabulary = Vocabulary.build(places=[(("Japan", "Tokyo"), 1)])
    assert u("도쿄", vocabulary=vocabulary).places == ("Japan Tokyo",)
    assert u("일본", vocabulary=vocabulary).places == ("Japan",)


def test_vocabulary_counts_add_up_by_level():
    counts = dict(VOCAB.place_counts())
    assert counts["제주특별자치도"] == 17
    assert counts["제주특별자치도 서귀포시 성산읍"] == 12
    assert "독일" not in counts  # no photos
    assert VOCAB.place_counts()[0] == ("제주특별자치도", 17)
    assert VOCAB.camera_counts()[0] == ("Apple", "iPhone 13 Pro", 40)


def test_place_rows_are_nfc():
    import unicodedata

    nfd = unicodedata.normalize("NFD", "제주특별자치도")
    vocabulary = Vocabulary.build(places=[((nfd, "서귀포시"), 1)])
    assert u(unicodedata.normalize("NFD", "제주 바다"), vocabulary=vocabulary).places == (
        "제주특별자치도",
    )


# --- with what ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "camera", "cameras", "text"),
    [
        ("아이폰으로 찍은 바다", "iPhone", (("Apple", "iPhone 13 Pro"),), "바다"),
        ("iPhone", "iPhone", (("Apple", "iPhone 13 Pro"),), ""),
        ("iphone 13 pro", "iPhone 13 Pro", (("Apple", "iPhone 13 Pro"),), ""),
        ("Sony", "Sony", (("SONY", "ILCE-7M3"),), ""),
        ("소니로", "Sony", (("SONY", "ILCE-7M3"),), ""),
        ("shot on iPhone", "iPhone", (("Apple", "iPhone 13 Pro"),), ""),
    ],
)
def test_cameras(query, camera, cameras, text):
    got = u(query)
    assert (got.camera, got.cameras, got.text) == (camera, cameras, text)


def test_a_camera_the_library_lacks_stays_text():
    for word in ("캐논", "갤럭시", "Canon"):  # Canon's row has no photos
        got = u(word)
        assert (got.camera, got.text) == (None, word)


# --- the rest -------------------------------------------------------------------------------


def test_composition_stays_intact():
    assert u("제주 바다 + 노을 - 사람").text == "바다 + 노을 - 사람"
    assert u("작년 + 바다").text == "바다"
    assert u("바다 + 작년").text == "바다"
    assert u("작년 - 사람").text == "- 사람"
    # Negated and weighted terms are the text tower's, word for word.
    got = u("바다 - 제주")
    assert (got.places, got.text) == ((), "바다 - 제주")
    got = u("2:제주 바다")
    assert (got.places, got.text) == ((), "2:제주 바다")
    assert u("제주 0.5:노을").text == "0.5:노을"
    assert u("제주 /photos/2024.jpg").text == "/photos/2024.jpg"


def test_only_facts_leave_no_text():
    got = u("작년 여름 제주에서 아이폰으로 찍은 사진")
    assert got.text == ""
    assert got.describe() == "understood: 2025-06-01–2025-08-31 · 제주특별자치도 · iPhone"


@pytest.mark.parametrize("query", ["", "   ", "에서", "의 에서 으로", "사진", "+", "- -", "찍은"])
def test_queries_without_facts_do_not_crash(query):
    got = u(query)
    assert not got.has_facts
    assert got.text == " ".join(query.split())
    assert got.describe().startswith("understood: ")


def test_odd_input():
    got = u("🌊 제주 🌅")
    assert (got.places, got.text) == (("제주특별자치도",), "🌊 🌅")
    assert u("Jeju바다").text == "Jeju바다"  # mixed scripts in one word: not a place
    assert u("제주\u200b").text == "제주\u200b"
    long = "바다 " * 50_000 + "제주"
    got = u(long)
    assert got.places == () and got.text.count("바다") == 50_000  # past the scanned words
    assert u("작년" + "가" * 5000).text == "작년" + "가" * 5000


def test_describe_and_json():
    got = u("작년 여름 제주 바다")
    assert got.describe() == "understood: 2025-06-01–2025-08-31 · 제주특별자치도 · 바다"
    data = got.to_json()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert data["text"] == "바다" and data["places"] == ["제주특별자치도"]
    assert (data["after"], data["before"]) == ("2025-06-01", "2025-08-31")
    assert [f["kind"] for f in data["facts"]] == ["date", "place"]
    assert data["facts"][1] == {"kind": "place", "words": "제주", "value": "제주특별자치도"}
    assert u("2023년부터").describe() == "understood: 2023-01-01–"
    assert u("크리스마스").describe() == "understood: 2025-12-25"


def test_without_removes_one_fact():
    got = u("작년 여름 제주에서 찍은 바다")
    assert got.facts[1].words == "제주에서 찍은"
    again = u(got.without(1))
    assert (again.places, again.text, again.after) == ((), "바다", got.after)
    assert u(got.without(0)).after is None


def test_the_module_imports_nothing_heavy():
    """Only the standard library and search.errors: no numpy, JAX, database or model."""
    package = Path(__file__).resolve().parents[1] / "search" / "understand"
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module or "")
    ours = {m for m in imported if m.split(".")[0] == "search"}
    assert ours and all(m == "search.errors" or m.startswith("search.understand") for m in ours)
    others = {m.split(".")[0] for m in imported - ours}
    assert others <= set(sys.stdlib_module_names)


def test_particles_that_end_ordinary_words_need_a_longer_word():
    assert u("설경").text == "설경"  # a snowy landscape, not 설 + 경
    assert span("5월경") == ("2026-05-01", "2026-05-31")


def test_common_nouns_are_not_short_forms():
    vocabulary = Vocabulary.build(places=[(("서울특별시", "강서구", "공항동"), 3)])
    assert u("공항", vocabulary=vocabulary).places == ()
    assert u("공항동", vocabulary=vocabulary).places == ("서울특별시 강서구 공항동",)
    assert u("강서", vocabulary=vocabulary).places == ("서울특별시 강서구",)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("최근 일주일", ("2026-12-01", "2026-12-07")),
        ("최근 3일", ("2026-12-05", "2026-12-07")),
        ("지난 3일간", ("2026-12-05", "2026-12-07")),
        ("지난 2주 동안", ("2026-11-24", "2026-12-07")),
        ("최근 한 달", ("2026-11-08", "2026-12-07")),
        ("past 3 days", ("2026-12-05", "2026-12-07")),
        ("지난 주", ("2026-11-30", "2026-12-06")),  # a calendar week, not the last 7 days
    ],
)
def test_the_last_days_up_to_today(query, expected):
    assert span(query) == expected


def test_a_place_row_must_be_a_path():
    with pytest.raises(TypeError):
        Vocabulary.build(places=[("제주특별자치도 서귀포시", 1)])


def test_date_words_apart_read_as_one_phrase():
    got = u("2023년 제주 여름 바다")
    assert (got.after, got.before) == (date(2023, 6, 1), date(2023, 8, 31))
    assert (got.places, got.text) == (("제주특별자치도",), "바다")
    assert span("작년 제주 크리스마스") == ("2025-12-25", "2025-12-25")


def test_punctuation_around_fact_words():
    got = u("(제주) 바다, 작년!")
    assert (got.places, got.after, got.text) == (("제주특별자치도",), date(2025, 1, 1), "바다,")


def test_datetime_range_matches_the_search_filters():
    from datetime import datetime

    got = u("작년 여름")
    assert got.datetime_range() == (datetime(2025, 6, 1), datetime(2025, 9, 1))
    assert u("2023년부터").datetime_range() == (datetime(2023, 1, 1), None)
    assert u("바다").datetime_range() == (None, None)
    # today may be a datetime
    assert understand("어제", today=datetime(2026, 12, 7, 9, 30), vocabulary=VOCAB).after == date(
        2026, 12, 6
    )
