"""Facts stored at index time (issue 21 §1): real JPEGs with EXIF GPS, date, camera and XMP or
IPTC keywords are indexed into the facts columns, place names and words; bad metadata costs
only its fact; moves and copies keep facts; a schema-3 library gains them without
re-encoding (tiny real model)."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL.TiffImagePlugin import IFDRational
from sqlalchemy import text

import db
from db import lexical, photos
from db.engine import DB_NAME
from indexer.stored_facts import FACTS_VERSION
from indexer.testing_facts import (
    FACT_COLUMNS,
    gps_tags,
    iptc_segment,
    jpeg_bytes,
    make_exif,
    make_schema_three,
    photo_pixels,
    xmp_packet,
)
from search import Searcher
from search.library import describe_library
from search.understand import Vocabulary, understand
from tests.indexer_fixtures import assert_consistent, index, open_lib, rows, write_jpeg

JEJU = (33.4589, 126.9425)  # 성산일출봉
PARIS = (48.8584, 2.2945)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def jeju_jpeg(seed: int = 1) -> bytes:
    exif = make_exif(
        taken="2024:07:15 06:10:00",
        offset="+09:00",
        gps=gps_tags(*JEJU, 12.5),
        make="Apple",
        model="iPhone 15",
        lens="iPhone 15 back camera 6mm f/1.6",
    )
    packet = xmp_packet(["바다", "해돋이"], "성산일출봉 해돋이")
    return jpeg_bytes(exif=exif, xmp=packet, image=photo_pixels((96, 64), seed))


def paris_jpeg(seed: int = 2) -> bytes:
    exif = make_exif(
        taken="2023:05:02 18:00:00", gps=gps_tags(*PARIS), make="Canon", model="Canon EOS R5"
    )
    segment = iptc_segment(["에펠탑", "여행"], "파리의 저녁")
    return jpeg_bytes(exif=exif, segments=[segment], image=photo_pixels((96, 64), seed))


def make_photos(root: Path) -> None:
    write(root / "여행/제주/dawn_walk.jpg", jeju_jpeg())
    write(root / "여행/유럽/eiffel.jpg", paris_jpeg())
    write_jpeg(root / "plain_snapshot.jpg", 3)  # no metadata at all


def by_name(lib: db.Library) -> dict[str, db.Photo]:
    return {Path(path).name: row for path, row in rows(lib).items()}


def ids_for(lib: db.Library, *words: str) -> list[int]:
    with lib.session() as s, s.begin():
        return sorted(pid for pid, _ in lexical.ranking(s, list(words)))


@pytest.fixture
def indexed(tmp_path, tiny_checkpoint) -> Path:
    root = tmp_path / "photos"
    make_photos(root)
    summary = index(root, tiny_checkpoint)
    assert summary.new == 3 and not summary.failures
    return root


def test_index_stores_facts_places_and_words(indexed, tiny_checkpoint) -> None:
    with open_lib(indexed) as lib:
        got = by_name(lib)
        jeju, paris, plain = got["dawn_walk.jpg"], got["eiffel.jpg"], got["plain_snapshot.jpg"]

        assert jeju.place == "제주특별자치도 서귀포시 성산읍"
        assert json.loads(jeju.place_path) == ["제주특별자치도", "서귀포시", "성산읍"]
        assert (jeju.lat, jeju.lon) == pytest.approx(JEJU, abs=1e-5)
        assert (jeju.camera_make, jeju.camera_model, jeju.camera) == (
            "Apple",
            "iPhone 15",
            "Apple iPhone 15",
        )
        assert jeju.lens == "iPhone 15 back camera 6mm f/1.6"
        assert (jeju.keywords, jeju.caption) == ("바다\n해돋이", "성산일출봉 해돋이")
        # The wall-clock time the camera showed, stored naive as before facts.
        assert (jeju.taken_at, jeju.taken_at_source) == (datetime(2024, 7, 15, 6, 10), "exif")
        assert (jeju.facts, jeju.facts_problems) == (FACTS_VERSION, None)

        assert paris.place == "프랑스 파리" and json.loads(paris.place_path) == ["프랑스", "파리"]
        assert paris.camera == "Canon EOS R5"  # not "Canon Canon EOS R5"
        assert (paris.keywords, paris.caption) == ("에펠탑\n여행", "파리의 저녁")

        assert (plain.facts, plain.facts_problems, plain.place, plain.camera) == (
            FACTS_VERSION,
            None,
            None,
            None,
        )
        assert plain.taken_at_source == "mtime"

        with lib.session() as s, s.begin():
            places = photos.place_counts(s)
            cameras = photos.camera_counts(s)
            counts = photos.facts_counts(s)
        assert sorted(places) == [
            (("제주특별자치도", "서귀포시", "성산읍"), 1),
            (("프랑스", "파리"), 1),
        ]
        assert sorted(cameras) == [("Apple", "iPhone 15", 1), ("Canon", "Canon EOS R5", 1)]
        assert counts == {"place": 2, "camera": 2, "keywords": 2, "unreadable": 0, "unread": 0}

        # The words: name and folders for every photo, keywords, caption and place.
        assert ids_for(lib, "일출봉") == [jeju.id]  # caption
        assert ids_for(lib, "해돋이") == [jeju.id]  # keyword (and caption)
        assert ids_for(lib, "에펠탑") == [paris.id]  # IPTC keyword
        assert ids_for(lib, "성산읍") == [jeju.id]  # place
        assert ids_for(lib, "paris") == [paris.id]  # the place's other spelling
        assert ids_for(lib, "snapshot") == [plain.id]  # a photo without facts: its name
        assert ids_for(lib, "유럽") == [paris.id]  # folders

    # What the query side builds from the stored counts names the stored place.
    vocabulary = Vocabulary.build(places=places, cameras=cameras)
    understood = understand("성산읍 아이폰 사진", today=date(2025, 1, 1), vocabulary=vocabulary)
    assert understood.places and jeju.place.startswith(understood.places[0])
    assert ("Apple", "iPhone 15") in understood.cameras

    # Results carry them, and so does their JSON.
    with Searcher(indexed) as searcher:
        info = searcher.photo(jeju.id)
        assert (info.place, info.camera) == ("제주특별자치도 서귀포시 성산읍", "Apple iPhone 15")
        assert (info.lat, info.lon) == pytest.approx(JEJU, abs=1e-5)
        hits = {h.photo_id: h for h in searcher.similar(plain.id, k=5)}
        assert hits[jeju.id].place == jeju.place and hits[paris.id].camera == "Canon EOS R5"
        item = next(r for r in searcher.similar(plain.id, k=5).to_json()["results"] if r["place"])
        assert set(item) >= {"taken_at", "place", "lat", "lon", "camera"}

    # The web API's search and photo JSON carry them too.
    from fastapi.testclient import TestClient

    from web import create_app

    app = create_app(indexed / db.LIBRARY_DIRNAME, warm=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        found = client.get("/api/search", params={"q": "바다", "k": 5}).json()["results"]
        hit = next(h for h in found if h["id"] == paris.id)
        assert (hit["place"], hit["camera"]) == ("프랑스 파리", "Canon EOS R5")
        assert (hit["lat"], hit["lon"]) == pytest.approx(PARIS, abs=1e-5)
        assert hit["taken_at"] == "2023-05-02T18:00:00"
        body = client.get(f"/api/photos/{jeju.id}").json()
        assert (body["place"], body["camera"]) == (jeju.place, "Apple iPhone 15")


def test_moves_copies_changes_and_removals_keep_facts_and_words_in_step(indexed, tiny_checkpoint):
    with open_lib(indexed) as lib:
        before = by_name(lib)
    # A move keeps the row (same id), its facts, and its words follow the new name.
    (indexed / "제주도").mkdir()
    shutil.move(indexed / "여행/제주/dawn_walk.jpg", indexed / "제주도/sunrise.jpg")
    # An exact copy gets its twin's facts; a changed file its own; a removed one loses all.
    shutil.copy(indexed / "여행/유럽/eiffel.jpg", indexed / "tour_copy.jpg")
    write(indexed / "plain_snapshot.jpg", jeju_jpeg(seed=9))
    summary = index(indexed, tiny_checkpoint)
    assert (summary.moved, summary.new, summary.updated) == (1, 1, 1)

    with open_lib(indexed) as lib:
        got = by_name(lib)
        moved, copy, changed = got["sunrise.jpg"], got["tour_copy.jpg"], got["plain_snapshot.jpg"]
        assert moved.id == before["dawn_walk.jpg"].id
        assert [getattr(moved, c) for c in FACT_COLUMNS] == [
            getattr(before["dawn_walk.jpg"], c) for c in FACT_COLUMNS
        ]
        assert [getattr(copy, c) for c in FACT_COLUMNS] == [
            getattr(before["eiffel.jpg"], c) for c in FACT_COLUMNS
        ]
        assert changed.id != before["plain_snapshot.jpg"].id
        assert changed.place == "제주특별자치도 서귀포시 성산읍"

        assert ids_for(lib, "sunrise") == [moved.id]
        assert ids_for(lib, "dawn") == []  # the old name went with the move
        assert ids_for(lib, "에펠탑") == sorted([before["eiffel.jpg"].id, copy.id])
        assert ids_for(lib, "tour") == [copy.id]
        assert ids_for(lib, "snapshot") == [changed.id]  # the old row's words are gone
        assert ids_for(lib, "일출봉") == sorted([moved.id, changed.id])
        with lib.session() as s, s.begin():
            stored = lexical.stored(s, [before["plain_snapshot.jpg"].id])
        assert stored == {}

    (indexed / "tour_copy.jpg").unlink()
    assert index(indexed, tiny_checkpoint).deleted == 1
    with open_lib(indexed) as lib, lib.session() as s, s.begin():
        assert lexical.stored(s, [copy.id]) == {}
        word_rows = s.execute(text("SELECT count(*) FROM photo_words")).scalar()
        assert word_rows == photos.photo_count(s) == 3


def test_a_photo_set_aside_and_restored_keeps_its_facts_and_words(indexed, tiny_checkpoint):
    from indexer.aside import restore, set_aside

    library_dir = indexed / db.LIBRARY_DIRNAME
    with open_lib(indexed) as lib:
        jeju = by_name(lib)["dawn_walk.jpg"]
        before = [getattr(jeju, c) for c in FACT_COLUMNS]
    assert set_aside(library_dir, [jeju.id], indexed.parent / "aside").moved
    with open_lib(indexed) as lib:
        assert ids_for(lib, "일출봉") == []  # aside: not found
    assert restore(library_dir).moved
    with open_lib(indexed) as lib:
        back = by_name(lib)["dawn_walk.jpg"]
        assert back.id == jeju.id and [getattr(back, c) for c in FACT_COLUMNS] == before
        assert ids_for(lib, "일출봉") == ids_for(lib, "dawn") == ids_for(lib, "성산읍") == [jeju.id]


def garbage_gps_jpeg() -> bytes:
    gps = {**gps_tags(37.5, 127.0), 2: (IFDRational(37, 0), IFDRational(0, 1), IFDRational(0, 1))}
    exif = make_exif(gps=gps, make="Sony", model="ILCE-7M4")
    return jpeg_bytes(exif=exif, image=photo_pixels((96, 64), 4))


def huge_xmp_png() -> bytes:
    import io

    from PIL import PngImagePlugin

    big = xmp_packet(["바다"]).replace(b"</x:xmpmeta>", b" " * (10 << 20) + b"</x:xmpmeta>")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", big.decode("utf-8"), zip=False)
    buffer = io.BytesIO()
    exif = make_exif(make="Sony").tobytes()
    photo_pixels((96, 64), 5).save(buffer, "PNG", pnginfo=info, exif=exif)
    return buffer.getvalue()


def bomb_jpeg() -> bytes:
    """An XMP packet whose entities would expand to a billion "lol"s."""
    names = ["lol", *(f"lol{i}" for i in range(1, 10))]
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY {name} "{("&" + below + ";") * 10}">'
        for below, name in zip(names, names[1:], strict=False)
    ]
    packet = (
        '<?xml version="1.0"?><!DOCTYPE lolz [' + "".join(entities) + "]>"
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>&lol9;'
        "</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()
    exif = make_exif(make="Nikon", model="Z 6")
    return jpeg_bytes(exif=exif, xmp=packet, image=photo_pixels((96, 64), 6))


def test_bad_metadata_is_indexed_without_its_fact_and_counted(tmp_path, tiny_checkpoint) -> None:
    root = tmp_path / "photos"
    write(root / "bad_gps.jpg", garbage_gps_jpeg())
    write(root / "huge_xmp.png", huge_xmp_png())
    write(root / "xml_bomb.jpg", bomb_jpeg())
    write(root / "fine.jpg", jeju_jpeg())
    summary = index(root, tiny_checkpoint)
    assert summary.new == 4 and not summary.failures

    with open_lib(root) as lib:
        got = by_name(lib)
        assert_consistent(lib)
        bad_gps = got["bad_gps.jpg"]
        assert (bad_gps.lat, bad_gps.place, bad_gps.facts_problems) == (None, None, "gps")
        assert bad_gps.camera == "Sony ILCE-7M4"  # the rest of its facts stand
        assert bad_gps.taken_at == datetime(2024, 7, 15, 10, 30)
        assert got["huge_xmp.png"].facts_problems == "xmp"
        assert got["huge_xmp.png"].camera_make == "Sony" and got["huge_xmp.png"].keywords is None
        assert got["xml_bomb.jpg"].facts_problems == "xmp"
        assert got["xml_bomb.jpg"].camera == "Nikon Z 6"
        assert got["fine.jpg"].facts_problems is None
        assert all(row.facts == FACTS_VERSION for row in got.values())

        info = describe_library(lib, disk=False)
    assert info.facts == {"place": 1, "camera": 4, "keywords": 1, "unreadable": 3, "unread": 0}
    assert info.to_json()["facts"]["unreadable"] == 3
    from cli.search_cmd import format_info

    text = format_info(info)
    assert "1 with a place, 4 with a camera, 1 with keywords; 3 with unreadable metadata" in text


def test_a_schema_three_library_is_upgraded_and_backfilled_without_encoding(
    indexed, tiny_checkpoint
) -> None:
    library_dir = indexed / db.LIBRARY_DIRNAME
    assert (library_dir / DB_NAME).is_file()
    with open_lib(indexed) as lib:
        facts_before = {p: [getattr(r, c) for c in FACT_COLUMNS] for p, r in rows(lib).items()}
    make_schema_three(library_dir)
    with open_lib(indexed) as lib:
        embeddings = {p: (r.id, r.embedding) for p, r in rows(lib).items()}
        # A reader of the old library reads it as it is: nothing known yet, nothing found.
        info = describe_library(lib, disk=False)
        assert info.facts["unread"] == 3 and info.facts["place"] == 0
        assert ids_for(lib, "일출봉") == []
    with Searcher(indexed) as searcher:
        assert searcher.photo(embeddings["여행/제주/dawn_walk.jpg"][0]).place is None

    seen: list[tuple[int, int]] = []
    summary = index(indexed, tiny_checkpoint, on_facts_backfill=lambda *p: seen.append(p))
    assert (summary.new, summary.updated, summary.moved, summary.unchanged) == (0, 0, 0, 3)
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)

    with open_lib(indexed) as lib:
        assert lib.manifest().schema_version == db.SCHEMA_VERSION
        after = rows(lib)
        assert {p: (r.id, r.embedding) for p, r in after.items()} == embeddings  # not re-encoded
        assert {p: [getattr(r, c) for c in FACT_COLUMNS] for p, r in after.items()} == facts_before
        assert ids_for(lib, "일출봉") == [after["여행/제주/dawn_walk.jpg"].id]
        assert ids_for(lib, "snapshot") == [after["plain_snapshot.jpg"].id]
        assert describe_library(lib, disk=False).facts["unread"] == 0
        assert_consistent(lib)
    assert index(indexed, tiny_checkpoint).unchanged == 3  # nothing left to read


def test_facts_off_stores_them_as_unread_and_the_next_run_reads_them(
    tmp_path, tiny_checkpoint
) -> None:
    root = tmp_path / "photos"
    make_photos(root)
    assert index(root, tiny_checkpoint, facts=False).new == 3
    with open_lib(root) as lib:
        got = by_name(lib)
        assert all(r.facts is None and r.place is None for r in got.values())
        assert got["dawn_walk.jpg"].taken_at == datetime(2024, 7, 15, 6, 10)  # the date is read
        assert ids_for(lib, "snapshot") == [got["plain_snapshot.jpg"].id]  # words: its name
        vectors = {p: np.frombuffer(r.embedding, "<f4").copy() for p, r in rows(lib).items()}
    assert index(root, tiny_checkpoint).new == 0
    with open_lib(root) as lib:
        got = by_name(lib)
        assert got["dawn_walk.jpg"].place == "제주특별자치도 서귀포시 성산읍"
        assert ids_for(lib, "일출봉") == [got["dawn_walk.jpg"].id]
        for path, row in rows(lib).items():
            np.testing.assert_array_equal(np.frombuffer(row.embedding, "<f4"), vectors[path])
