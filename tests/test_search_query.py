"""Query parsing, dates, results' JSON and table formatting: no model, no library."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from pathlib import Path

import pytest

from search.dates import parse_date, parse_range
from search.errors import DateError, QueryError
from search.query import Term, describe, looks_like_image, parse_query
from search.results import SearchHit, SearchResults


def _texts(terms: list[Term]) -> list[tuple[float, str]]:
    return [(t.weight, t.text if t.is_text else str(t.image)) for t in terms]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("바다", [(1.0, "바다")]),
        ("바다 + 노을 - 사람", [(1.0, "바다"), (1.0, "노을"), (-1.0, "사람")]),
        (["바다", "+", "노을", "-", "사람"], [(1.0, "바다"), (1.0, "노을"), (-1.0, "사람")]),
        (["푸른", "바다"], [(1.0, "푸른 바다")]),
        ("바닷가에서 노는 강아지", [(1.0, "바닷가에서 노는 강아지")]),
        ("2:강아지", [(2.0, "강아지")]),
        ("2:강아지 + 0.5:고양이", [(2.0, "강아지"), (0.5, "고양이")]),
        ("바다 - 0.5:사람", [(1.0, "바다"), (-0.5, "사람")]),
        ("- 사람", [(-1.0, "사람")]),
        ("+ 바다", [(1.0, "바다")]),
        (".5:소파 위 고양이", [(0.5, "소파 위 고양이")]),
        ("a dog on the beach", [(1.0, "a dog on the beach")]),
        ("12:30 시계", [(12.0, "30 시계")]),  # documented: W: on the first word is a weight
        ("2: 강아지", [(1.0, "2: 강아지")]),
        ("C-3PO", [(1.0, "C-3PO")]),
        ("사진.jpg + 바다", [(1.0, "사진.jpg"), (1.0, "바다")]),
        ("a.jpg b.PNG", [(1.0, "a.jpg"), (1.0, "b.PNG")]),
        ("바다 2:a.jpg", [(1.0, "바다"), (2.0, "a.jpg")]),
    ],
)
def test_parse_query(query, expected) -> None:
    assert _texts(parse_query(query)) == expected


def test_image_terms_are_paths() -> None:
    terms = parse_query("바다 + ~/사진/a.heic")
    assert terms[1].image == Path("~/사진/a.heic").expanduser()
    assert not terms[1].is_text and terms[0].is_text


def test_an_argument_naming_a_file_with_spaces_is_one_image(tmp_path) -> None:
    photo = tmp_path / "my photos" / "여름 바다.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"x")
    terms = parse_query([str(photo), "-", "사람"])
    assert terms[0].image == photo and terms[1].text == "사람"


def test_a_bare_word_is_text_even_if_such_a_file_exists(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "바다").write_bytes(b"x")
    assert parse_query("바다")[0].is_text
    assert not looks_like_image("바다")
    assert looks_like_image("./바다")


def test_every_suffix_the_indexer_takes_makes_an_image_term() -> None:
    assert looks_like_image("스캔.JFIF", files=False)


def test_without_files_only_the_suffix_counts(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "photo").write_bytes(b"x")
    assert parse_query("dir/photo")[0].image == Path("dir/photo")
    assert parse_query("dir/photo", files=False)[0].text == "dir/photo"
    assert parse_query("a/b.jpg + 바다", files=False)[0].image == Path("a/b.jpg")
    calls = []
    monkeypatch.setattr("os.path.isfile", lambda p: calls.append(p) or False)
    parse_query(["dir/photo", "x.jpg", "secret/dir"], files=False)
    assert calls == []


def test_text_is_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "한국어 사진")
    assert parse_query(nfd)[0].text == "한국어 사진"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ([], "empty"),
        (["", " "], "empty"),
        ("+", "empty"),
        ("바다 +", "ends with an operator"),
        ("바다 + - 사람", "two operators"),
        ("0:바다", "weight 0"),
    ],
)
def test_bad_queries(query, message) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(query)


def test_describe_round_trips() -> None:
    for text in ("바다 + 노을 - 사람", "2:강아지 - 0.5:사람", "- 사람"):
        assert describe(parse_query(text)) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023", datetime(2023, 1, 1)),
        ("2023-05", datetime(2023, 5, 1)),
        ("2023-5-7", datetime(2023, 5, 7)),
        ("2023.05.07", datetime(2023, 5, 7)),
        ("2023.05.07.", datetime(2023, 5, 7)),
        ("2023/05/07", datetime(2023, 5, 7)),
        ("2023-05-07 13:45", datetime(2023, 5, 7, 13, 45)),
        ("2023-05-07T13:45:10", datetime(2023, 5, 7, 13, 45, 10)),
        ("2023년 5월 7일", datetime(2023, 5, 7)),
        ("2023년 5월", datetime(2023, 5, 1)),
        ("2023년", datetime(2023, 1, 1)),
        (" 2024-02-29 ", datetime(2024, 2, 29)),
    ],
)
def test_parse_date(text, expected) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "23-05-01",
        "2023-13",
        "2023-02-30",
        "2023-05-07 25:00",
        "05/07/2023",
        "2023-05-07x",
    ],
)
def test_malformed_dates(text) -> None:
    with pytest.raises(DateError, match="malformed date"):
        parse_date(text)


def test_range_must_not_be_empty() -> None:
    assert parse_range("2023", "2024") == (datetime(2023, 1, 1), datetime(2024, 1, 1))
    assert parse_range(None, None) == (None, None)
    with pytest.raises(DateError, match="not earlier"):
        parse_range("2024", "2024")


def test_results_json() -> None:
    hit = SearchHit(
        rank=1,
        score=0.312345678,
        path=Path("/p/바다.jpg"),
        photo_id=7,
        width=4,
        height=3,
        taken_at=datetime(2023, 5, 1, 10, 0),
        size=99,
        place="제주특별자치도 서귀포시 성산읍",
        lat=33.4589,
        lon=126.9425,
        camera="Apple iPhone 15",
    )
    results = SearchResults(query="바다", hits=(hit,))
    assert results.to_json() == {
        "query": "바다",
        "results": [
            {
                "rank": 1,
                "score": 0.3123,
                "path": "/p/바다.jpg",
                "width": 4,
                "height": 3,
                "taken_at": "2023-05-01T10:00:00",
                "place": "제주특별자치도 서귀포시 성산읍",
                "lat": 33.4589,
                "lon": 126.9425,
                "camera": "Apple iPhone 15",
            }
        ],
    }
    assert results.paths == [Path("/p/바다.jpg")] and len(results) == 1


def test_table_aligns_wide_characters() -> None:
    from cli.search_cmd import _width, format_table

    hits = tuple(
        SearchHit(
            rank=i + 1,
            score=0.3 - i / 100,
            path=Path(p),
            photo_id=i,
            size=2048 * (i + 1),
            taken_at=datetime(2023, 5, i + 1),
        )
        for i, p in enumerate(["/사진/바다.jpg", "/photos/sea.jpg"])
    )
    lines = format_table(SearchResults("바다", hits)).splitlines()
    assert lines[0].split() == ["#", "score", "path", "size", "date"]
    # The size column ends at the same terminal column on every row.
    ends = {_width(line[: line.index("KB") + 2]) for line in lines[1:]}
    assert len(ends) == 1
    assert "2023-05-01" in lines[1] and "2.0 KB" in lines[1]
