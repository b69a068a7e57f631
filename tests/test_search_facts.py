"""Searcher with understanding: the dates, places and cameras a query names filter the photos,
the rest is ranked, and the photos' words (names, folders, keywords) are fused with the ranking.

The facts are written into the library by hand here (what the indexer stores from EXIF is
tests/test_search_e2e_facts.py's part), so each rule of the search side is tested on its own.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import db
from db.lock import LibraryLock
from db.photo_writes import update_photo
from db.testing import set_facts
from search import DateError, QueryError, Searcher
from tests.search_fixtures import PHOTOS, error_json, index_folder, ok_json, write_photos

TODAY = date(2025, 3, 1)
# relative path -> (place names top-down, camera make, camera model, keywords)
FACTS = {
    "2023/여행/바다.jpg": (("제주특별자치도", "서귀포시", "성산읍"), "Apple", "iPhone 13 Pro", ()),
    "2023/여행/노을.jpg": (("제주특별자치도", "제주시", "애월읍"), None, None, ()),
    "2023/여행/산.jpg": (("일본", "도쿄"), "Canon", "EOS R5", ()),
    "2024/바다/파도.jpg": (("제주특별자치도", "서귀포시", "성산읍"), "Apple", "iPhone 13 Pro", ()),
    "2024/바다/모래.jpg": (("부산광역시", "해운대구", "우동"), None, None, ()),
    "2024/바다/사람들.jpg": (("프랑스", "파리"), "Canon", "EOS R5", ()),
    "2023/집/고양이.jpg": (("서울특별시", "강남구", "역삼동"), None, None, ()),
    "2023/집/소파.jpg": (None, None, None, ("가족", "거실")),
}
TAKEN = {rel: taken for rel, taken, _ in PHOTOS}
N_PHOTOS = len(PHOTOS) + 1  # and the duplicate (the broken file is not a photo)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The search fixtures' photos, indexed, with places, cameras and keywords set by hand."""
    root = tmp_path_factory.mktemp("facts-photos")
    write_photos(root)
    library = index_folder(root, tiny_checkpoint)
    set_facts(library, lambda rel: FACTS.get(rel, (None, None, None, ())))
    return library


@pytest.fixture(scope="module")
def searcher(library: Path) -> Searcher:
    with Searcher(library) as s:
        yield s


def _paths(results) -> list[str]:
    return [hit.relpath for hit in results]


def test_facts_only_lists_every_matching_photo_newest_first(searcher: Searcher) -> None:
    results = searcher.text("2023년 제주", today=TODAY)
    assert _paths(results) == ["2023/여행/노을.jpg", "2023/여행/바다.jpg"]
    assert all(hit.score is None for hit in results)
    assert results.understood.places == ("제주특별자치도",)
    assert results.understood.text == ""
    assert results[0].place == "제주특별자치도 제주시 애월읍"
    # Paged, and oldest first when asked.
    assert _paths(searcher.text("2023년 제주", today=TODAY, k=1, offset=1)) == [
        "2023/여행/바다.jpg"
    ]
    oldest = searcher.text("2023년 제주", today=TODAY, sort="oldest")
    assert _paths(oldest) == ["2023/여행/바다.jpg", "2023/여행/노을.jpg"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("작년 여름 부산", {"2024/바다/모래.jpg"}),
        ("부산에서 찍은 사진", {"2024/바다/모래.jpg"}),
        ("서울 강남구", {"2023/집/고양이.jpg"}),
        ("파리", {"2024/바다/사람들.jpg"}),
        ("2023년 도쿄", {"2023/여행/산.jpg"}),
        ("Tokyo 2023", {"2023/여행/산.jpg"}),
        ("2024년 도쿄", set()),
        ("제주 파리", {"2023/여행/바다.jpg", "2023/여행/노을.jpg", "2024/바다/파도.jpg",
                     "2024/바다/사람들.jpg"}),  # several places add up
        ("아이폰으로 찍은 사진", {"2023/여행/바다.jpg", "2024/바다/파도.jpg"}),
        ("작년 아이폰", {"2024/바다/파도.jpg"}),
    ],
)  # fmt: skip
def test_places_dates_and_cameras(searcher: Searcher, query: str, expected: set[str]) -> None:
    results = searcher.text(query, today=TODAY, k=50)
    assert set(_paths(results)) == expected
    assert results.understood is not None and results.understood.has_facts


def test_the_rest_is_ranked_among_the_photos_there(searcher: Searcher) -> None:
    jeju = {"2023/여행/바다.jpg", "2023/여행/노을.jpg", "2024/바다/파도.jpg"}
    results = searcher.text("제주 산", today=TODAY, k=50)
    assert set(_paths(results)) == jeju
    assert results.understood.text == "산"
    # Ranked by the rest, scored by its cosine: the same scores as the rest searched alone.
    alone = {h.relpath: h.score for h in searcher.text("산", literal=True, k=50)}
    for hit in results:
        assert hit.score == pytest.approx(alone[hit.relpath], abs=1e-6)
    assert [h.score for h in results] == sorted((h.score for h in results), reverse=True)


def test_composed_query_keeps_its_facts(searcher: Searcher) -> None:
    results = searcher.compose("2024년 제주 바다 - 사람", today=TODAY, k=50)
    assert _paths(results) == ["2024/바다/파도.jpg"]
    assert results.understood.text == "바다 - 사람"
    assert results.query == "2024년 제주 바다 - 사람"


def test_dates_intersect_with_after_and_before(searcher: Searcher) -> None:
    both = searcher.text("제주", today=TODAY, after="2024-01", k=50)
    assert _paths(both) == ["2024/바다/파도.jpg"]
    # An intersection with nothing in it is no results, not an error.
    none = searcher.text("2023년 제주", today=TODAY, after="2024-01-01")
    assert len(none) == 0 and none.understood.places == ("제주특별자치도",)
    assert len(searcher.text("2023년 제주 바다", today=TODAY, before="2022-06")) == 0


def test_under_still_applies(searcher: Searcher, library: Path) -> None:
    root = Path(searcher.photo_root)
    results = searcher.text("제주", today=TODAY, under=str(root / "2024"), k=50)
    assert _paths(results) == ["2024/바다/파도.jpg"]


def test_literal_turns_understanding_and_words_off(searcher: Searcher) -> None:
    results = searcher.text("2023년 제주", literal=True, k=3)
    assert results.understood is None and len(results) == 3
    assert all(hit.score is not None for hit in results)
    # A date that does not exist is an error only when dates are read.
    with pytest.raises(DateError):
        searcher.text("13월 바다", today=TODAY)
    assert len(searcher.text("13월 바다", literal=True, k=2)) == 2


def test_a_keyword_brings_its_photo_up(searcher: Searcher) -> None:
    fused = searcher.text("가족", k=50)
    assert fused[0].relpath == "2023/집/소파.jpg"
    plain = searcher.text("가족", literal=True, k=50)
    cosine = {h.relpath: h.score for h in plain}
    # The order is fused, the scores shown stay the cosine.
    for hit in fused:
        assert hit.score == pytest.approx(cosine[hit.relpath], abs=1e-6)
    assert {h.relpath for h in fused} == {h.relpath for h in plain}


def test_a_file_name_brings_its_photo_up_and_negative_words_do_not(searcher: Searcher) -> None:
    named = searcher.compose("고양이", k=1)
    assert _paths(named) == ["2023/집/고양이.jpg"]
    # The words of a subtracted term are not looked up.
    query = searcher.compose("자동차 - 고양이", k=50, literal=False)
    plain = searcher.compose("자동차 - 고양이", k=50, literal=True)
    assert query[0].relpath == "2024/자동차.jpg"
    assert _paths(query)[1:] == [p for p in _paths(plain) if p != "2024/자동차.jpg"]


def test_words_match_only_photos_passing_the_filters(searcher: Searcher) -> None:
    results = searcher.text("고양이", after="2024-01", k=50)
    assert "2023/집/고양이.jpg" not in _paths(results)


def test_sort_by_date_with_every_photo(searcher: Searcher) -> None:
    results = searcher.text("바다", sort="newest", threshold="none", k=50)
    taken = [hit.taken_at for hit in results]
    assert len(results) == len(searcher.text("바다", literal=True, k=50))
    assert taken == sorted(taken, reverse=True)
    oldest = searcher.text("바다", sort="oldest", threshold="none", k=50)
    assert [h.photo_id for h in oldest] == [
        h.photo_id for h in sorted(results, key=lambda h: (h.taken_at, h.photo_id))
    ]


def test_sort_by_date_keeps_what_the_cutoff_keeps(searcher: Searcher) -> None:
    from search.cutoff import adaptive_cutoff

    every = searcher.text("노을", literal=True, k=50)
    cutoff = adaptive_cutoff(np.asarray([h.score for h in every]))
    results = searcher.text("노을", sort="newest", k=50)  # threshold auto by default
    assert results.cutoff == cutoff
    kept = {h.relpath for h in every if cutoff.keeps(h.score)} | {"2023/여행/노을.jpg"}
    assert {h.relpath for h in results} == kept  # the cutoff's, and the photo named 노을
    taken = [hit.taken_at for hit in results]
    assert taken == sorted(taken, reverse=True)
    # An explicit number cuts by the cosine alone.
    line = sorted(h.score for h in every)[len(every) // 2]
    by_number = searcher.text("노을", sort="oldest", threshold=line, k=50)
    assert {h.relpath for h in by_number} == {h.relpath for h in every if h.score >= line}


def test_relevance_with_a_number_threshold(searcher: Searcher) -> None:
    every = searcher.text("산", k=50)
    line = every[2].score
    cut = searcher.text("산", k=50, threshold=line)
    assert all(h.score >= line for h in cut)
    assert {h.relpath for h in cut} == {h.relpath for h in every if h.score >= line}


def test_several_texts_with_different_facts(searcher: Searcher) -> None:
    a, b, c = searcher.texts(["2023년 제주", "파리", "노을"], today=TODAY, k=50)
    assert _paths(a) == ["2023/여행/노을.jpg", "2023/여행/바다.jpg"]
    assert _paths(b) == ["2024/바다/사람들.jpg"]
    assert len(c) == N_PHOTOS and c.understood.places == ()


def test_bad_options(searcher: Searcher) -> None:
    with pytest.raises(QueryError):
        searcher.text("바다", sort="random")
    with pytest.raises(QueryError):
        searcher.text("바다", threshold="sometimes")
    with pytest.raises(QueryError):
        searcher.text(" ")


def test_places_and_vocabulary(searcher: Searcher) -> None:
    places = dict(searcher.places())
    assert places["제주특별자치도"] == 3
    assert places["제주특별자치도 서귀포시"] == 2
    assert places["일본 도쿄"] == 1


def test_a_commit_by_the_indexer_shows_in_the_next_query(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The places, cameras and folders are cached between queries, yet what another
    connection commits (here facts and a move: the photo count and the newest id stay the
    same) is seen by the very next query, not only once the cache's age runs out."""
    import search.searcher

    monkeypatch.setattr(search.searcher, "FOLDERS_TTL", float("inf"))  # only the stamp tells
    root = tmp_path / "photos"
    shutil.copytree(library.parent, root)
    copy = db.default_library_dir(root)
    with Searcher(copy) as searcher:
        assert "대구광역시" not in dict(searcher.places())
        assert searcher.text("대구 바다", today=TODAY).understood.places == ()
        folders = dict(searcher.folders())
        assert "2025" not in folders and folders["2024/바다"] == 4
        # The photos' words too: none holds 해변가 yet (its lookup is kept while nothing changes).
        assert "2024/바다/모래.jpg" not in _paths(searcher.text("해변가", threshold="auto"))
        facts = (("대구광역시", "중구"), "Sony", "A7", ("해변가",))
        moved = {**FACTS, "2024/바다/모래.jpg": facts}
        set_facts(copy, lambda rel: moved.get(rel, (None, None, None, ())))
        assert _paths(searcher.text("해변가", threshold="auto"))[0] == "2024/바다/모래.jpg"
        results = searcher.text("대구 바다", today=TODAY)
        assert results.understood.places == ("대구광역시",)
        assert [hit.relpath for hit in results] == ["2024/바다/모래.jpg"]
        assert dict(searcher.places())["대구광역시 중구"] == 1
        with (
            LibraryLock(copy),
            db.Library.open(copy, readonly=False) as lib,
            lib.session() as s,
            s.begin(),
        ):
            row = db.photos.photo_by_relpath(s, "2024/바다/모래.jpg")
            update_photo(s, row.id, path="2025/모래.jpg")
        folders = dict(searcher.folders())
        assert folders["2025"] == 1 and folders["2024/바다"] == 3
        assert [hit.relpath for hit in searcher.text("대구 바다", today=TODAY)] == ["2025/모래.jpg"]


def test_json_carries_the_understanding(searcher: Searcher) -> None:
    body = searcher.text("2023년 제주", today=TODAY).to_json()
    assert body["understood"]["places"] == ["제주특별자치도"]
    assert body["understood"]["after"] == "2023-01-01"
    assert body["results"][0]["score"] is None
    assert body["results"][0]["place"] == "제주특별자치도 제주시 애월읍"
    assert body["results"][1]["camera"] == "Apple iPhone 13 Pro"


# -- the command line and the web -----------------------------------------------------------


def _cli(*args: str):
    from cli import main

    return CliRunner().invoke(main, ["search", *args])


def test_cli_json_and_relative_dates(library: Path) -> None:
    result = _cli("2023년", "제주", "--library", str(library), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["understood"]["places"] == ["제주특별자치도"]
    assert [Path(r["path"]).name for r in body["results"]] == ["노을.jpg", "바다.jpg"]
    # Relative to the real today: how many years back 2024 is.
    back = date.today().year - 2024
    word = {0: "올해", 1: "작년", 2: "재작년"}.get(back)
    if word is not None:
        result = _cli(f"{word}", "부산", "--library", str(library), "--json")
        body = json.loads(result.output)
        assert [Path(r["path"]).name for r in body["results"]] == ["모래.jpg"]


def test_cli_sort_threshold_and_literal(library: Path) -> None:
    result = _cli("바다", "--sort", "newest", "--threshold", "none", "-k", "50",
                  "--library", str(library), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    taken = [datetime.fromisoformat(r["taken_at"]) for r in json.loads(result.output)["results"]]
    assert taken == sorted(taken, reverse=True) and len(taken) == N_PHOTOS
    literal = _cli("2023년", "제주", "--literal", "-k", "2", "--library", str(library), "--json")
    body = json.loads(literal.output)
    assert "understood" not in body and len(body["results"]) == 2
    table = _cli("2023년", "제주", "--library", str(library))
    assert table.exit_code == 0 and "노을.jpg" in table.output


@pytest.mark.parametrize(
    "args",
    [["13월", "바다"], ["2월", "30일"], ["바다", "--threshold", "often"], ["바다", "--sort", "x"]],
)
def test_cli_bad_input_is_one_line(library: Path, args: list[str]) -> None:
    from tests.search_fixtures import one_line_error

    line = one_line_error(_cli(*args, "--library", str(library)))
    assert "Traceback" not in line


@pytest.fixture(scope="module")
def client(library: Path) -> TestClient:
    from web import create_app

    with TestClient(create_app(library, warm=False), base_url="http://127.0.0.1") as c:
        yield c


def test_web_search_understood_chips_and_places(client: TestClient) -> None:
    body = ok_json(client.get("/api/search", params={"q": "2023년 제주 바다"}))
    understood = body["understood"]
    assert understood["places"] == ["제주특별자치도"] and understood["text"] == "바다"
    facts = {f["kind"]: f for f in understood["facts"]}
    assert facts["date"]["without"] == "제주 바다"
    assert facts["place"]["without"] == "2023년 바다"
    assert {r["relpath"] for r in body["results"]} == {"2023/여행/바다.jpg", "2023/여행/노을.jpg"}
    # The chip's query, run again, drops only that fact.
    again = ok_json(client.get("/api/search", params={"q": facts["date"]["without"]}))
    assert {r["relpath"] for r in again["results"]} == {
        "2023/여행/바다.jpg", "2023/여행/노을.jpg", "2024/바다/파도.jpg"
    }  # fmt: skip
    places = ok_json(client.get("/api/places"))
    assert {"place": "제주특별자치도", "photos": 3} in places


def test_web_literal_sort_and_bad_date(client: TestClient) -> None:
    literal = ok_json(
        client.get("/api/search", params={"q": "2023년 제주", "literal": "true", "k": 2})
    )
    assert literal["understood"] is None and len(literal["results"]) == 2
    newest = ok_json(
        client.get("/api/search", params={"q": "바다", "sort": "newest", "threshold": "none"})
    )
    taken = [r["taken_at"] for r in newest["results"]]
    assert taken == sorted(taken, reverse=True)
    assert "13월" in error_json(
        client.get("/api/search", params={"q": "13월 바다"}), 400, "bad_date"
    )
    error_json(client.get("/api/search", params={"q": "바다", "sort": "x"}), 422, "bad_request")
    error_json(
        client.get("/api/search", params={"q": "바다", "threshold": "2"}), 422, "bad_request"
    )


def test_terminal_shows_the_understood_line_first(searcher: Searcher, capsys, monkeypatch) -> None:
    import sys

    from cli.search_cmd import _print_results

    results = searcher.text("2023년 제주 바다", today=TODAY)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _print_results(results, as_json=False, as_paths=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "understood: 2023-01-01–2023-12-31 · 제주특별자치도 · 바다"
    assert lines[1].split()[:3] == ["#", "score", "path"]
    _print_results(results, as_json=False, as_paths=True)  # paths only: nothing else
    paths = capsys.readouterr().out.splitlines()
    assert len(paths) == len(results) and all(line.startswith("/") for line in paths)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # piped: the table only
    _print_results(results, as_json=False, as_paths=False)
    assert capsys.readouterr().out.split()[:3] == ["#", "score", "path"]
