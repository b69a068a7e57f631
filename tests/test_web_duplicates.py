"""web/: the Duplicates API in-process (TestClient): list, set aside with another keeper, undo,
a stale group, the writer lock held elsewhere, and serve --watch holding it in this process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import db
from indexer import IndexOptions, WatchOptions, WatchThread
from search import Searcher
from tests.duplicates_fixtures import (
    HILL,
    HILL_SMALL,
    SEA,
    SEA_COPY,
    SEA_PNG,
    SEA_SMALL,
    write_duplicate_album,
)
from tests.indexer_fixtures import assert_consistent, open_lib
from tests.search_fixtures import error_json, index_folder, ok_json
from web import create_app

BASE = "http://127.0.0.1"
SEA_GROUP = {SEA, SEA_SMALL, SEA_PNG, SEA_COPY}


@pytest.fixture
def album(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """A fresh indexed photo folder with two "same" groups (each test moves files)."""
    root = tmp_path / "사진"
    write_duplicate_album(root)
    index_folder(root, tiny_checkpoint)
    return root


@pytest.fixture
def client(album: Path) -> TestClient:
    with TestClient(create_app(db.default_library_dir(album), warm=False), base_url=BASE) as c:
        yield c


def _files(root: Path) -> set[str]:
    found = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return {db.path_key(p.as_posix()) for p in found if db.LIBRARY_DIRNAME not in p.parts}


def _sea(client: TestClient, **params) -> dict:
    groups = ok_json(client.get("/api/duplicates", params={"kind": "same", **params}))["groups"]
    return next(g for g in groups if SEA in {p["relpath"] for p in g["photos"]})


def _searchable(library: Path, client: TestClient) -> set[str]:
    """What a search finds, through the app's own long-lived Searcher and a fresh one."""
    body = ok_json(client.get("/api/search", params={"q": "사진", "k": 100}))
    found = {hit["relpath"] for hit in body["results"]}
    with Searcher(library) as s:
        assert {hit.relpath for hit in s.text("사진", k=100)} == found
    return found


def test_list_groups_largest_first_with_keeper_links_and_filters(client, album):
    body = ok_json(client.get("/api/duplicates", params={"kind": "same"}))
    assert body["total"] == 2 and body["offset"] == 0
    assert body["aside_folder"].endswith(f"{db.LIBRARY_DIRNAME}/set-aside")
    first, second = body["groups"]
    assert {p["relpath"] for p in first["photos"]} == SEA_GROUP  # the larger group first
    assert {p["relpath"] for p in second["photos"]} == {HILL, HILL_SMALL}
    assert first["kind"] == "same"
    assert (
        first["keep"] == first["photos"][0]["path"] and first["keep_id"] == first["photos"][0]["id"]
    )
    assert first["photos"][0]["relpath"] == SEA_PNG and "largest file" in first["reason"]
    for p in first["photos"]:
        assert p["thumbnail"] == f"/api/photos/{p['id']}/thumbnail"
        assert p["width"] > 0 and p["bytes"] > 0 and p["taken_at"]
        assert client.get(p["thumbnail"]).status_code == 200
    nfd = next(p for p in first["photos"] if p["relpath"] == SEA_COPY)
    assert Path(nfd["path"]).exists()  # the NFD file name on disk, its key in NFC

    under = ok_json(client.get("/api/duplicates", params={"kind": "same", "under": "여행"}))
    assert [{p["relpath"] for p in g["photos"]} for g in under["groups"]] == [{SEA, SEA_SMALL}]
    paged = ok_json(client.get("/api/duplicates", params={"kind": "same", "offset": 1, "limit": 1}))
    assert [g["keep_id"] for g in paged["groups"]] == [second["keep_id"]]
    error_json(client.get("/api/duplicates", params={"kind": "copies"}), 422, "bad_request")
    error_json(client.get("/api/duplicates", params={"under": "../밖"}), 400, "bad_query")


def test_set_aside_another_keeper_then_undo(client, album):
    library = db.default_library_dir(album)
    before = _files(album)
    group = _sea(client)
    ids = {p["relpath"]: p["id"] for p in group["photos"]}
    assert _searchable(library, client) >= SEA_GROUP

    body = {"photos": list(ids.values()), "keep": ids[SEA], "kind": "same"}
    report = ok_json(client.post("/api/duplicates/set-aside", json=body))
    assert set(report["moved"]) == SEA_GROUP - {SEA} and report["skipped"] == []
    assert set(report["ids"]) == {ids[p] for p in SEA_GROUP - {SEA}}
    aside = library / "set-aside"
    assert _files(album) == before - (SEA_GROUP - {SEA})
    assert _files(aside) == SEA_GROUP - {SEA}  # relative paths kept (the NFD name too)
    with open_lib(album) as lib:
        assert_consistent(lib)
    assert SEA in _searchable(library, client) and not _searchable(library, client) & (
        SEA_GROUP - {SEA}
    )
    error_json(client.get(f"/api/photos/{ids[SEA_PNG]}"), 404, "not_found")
    assert all(SEA_PNG not in {p["relpath"] for p in g["photos"]} for g in _groups(client))

    undo = ok_json(client.post("/api/duplicates/restore", json={"photos": report["ids"]}))
    assert set(undo["moved"]) == SEA_GROUP - {SEA} and set(undo["ids"]) == set(report["ids"])
    assert _files(album) == before and _files(aside) == set()
    with open_lib(album) as lib:
        assert_consistent(lib)
    assert _searchable(library, client) >= SEA_GROUP
    again = _sea(client)
    assert {p["relpath"]: p["id"] for p in again["photos"]} == ids  # the same ids back


def _groups(client: TestClient) -> list[dict]:
    return ok_json(client.get("/api/duplicates", params={"kind": "all"}))["groups"]


def test_a_stale_or_invented_group_moves_nothing(client, album, tiny_checkpoint):
    before = _files(album)
    group = _sea(client)
    ids = [p["id"] for p in group["photos"]]
    hill = ok_json(client.get("/api/duplicates", params={"kind": "same"}))["groups"][1]
    # a subset, a union with another group, and a group the page no longer matches
    for photos in (ids[:2], ids + [hill["keep_id"]]):
        message = error_json(
            client.post(
                "/api/duplicates/set-aside",
                json={"photos": photos, "keep": photos[0], "kind": "same"},
            ),
            409,
            "stale_group",
        )
        assert "reload" in message
    (album / SEA_SMALL).unlink()  # indexed again: the group shrinks under the page
    index_folder(album, tiny_checkpoint)
    error_json(
        client.post("/api/duplicates/set-aside", json={"photos": ids, "keep": ids[0]}),
        409,
        "stale_group",
    )
    error_json(
        client.post("/api/duplicates/set-aside", json={"photos": ids[1:], "keep": ids[0]}),
        422,
        "bad_request",
    )
    error_json(
        client.post("/api/duplicates/set-aside", json={"photos": [1, 2**63], "keep": 1}),
        422,
        "bad_request",
    )
    assert _files(album) == before - {SEA_SMALL}


def test_another_writer_holding_the_lock_is_named(client, album):
    library = db.default_library_dir(album)
    before = _files(album)
    group = _sea(client)
    ids = [p["id"] for p in group["photos"]]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, db; lock = db.LibraryLock(sys.argv[1], 'indexer'); lock.acquire(); "
            "print('held', flush=True); sys.stdin.read()",
            str(library),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        body = {"photos": ids, "keep": ids[1], "kind": "same"}
        message = error_json(
            client.post("/api/duplicates/set-aside", json=body), 423, "library_busy"
        )
        assert f"an indexer (pid {holder.pid})" in message
        error_json(client.post("/api/duplicates/restore", json={}), 423, "library_busy")
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert _files(album) == before
    assert ok_json(client.post("/api/duplicates/set-aside", json=body))["moved"]


def test_host_guard_covers_the_writes(client, album):
    before = _files(album)
    ids = [p["id"] for p in _sea(client)["photos"]]
    response = client.post(
        "/api/duplicates/set-aside",
        json={"photos": ids, "keep": ids[0]},
        headers={"Host": "evil.example"},
    )
    error_json(response, 400, "bad_host")
    assert _files(album) == before


@pytest.mark.slow
def test_serve_watch_sets_aside_through_its_own_watcher(album, tiny_checkpoint):
    library = db.default_library_dir(album)
    before = _files(album)
    watcher = WatchThread(album, IndexOptions(model=str(tiny_checkpoint)), WatchOptions(quiet=0.2))
    app = create_app(library, warm=False, watcher=watcher)
    with TestClient(app, base_url=BASE) as client:
        deadline = time.monotonic() + 60
        while not watcher.holds_lock() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.holds_lock()
        ids = {p["relpath"]: p["id"] for p in _sea(client)["photos"]}
        body = {"photos": list(ids.values()), "keep": ids[SEA_SMALL], "kind": "same"}
        report = ok_json(client.post("/api/duplicates/set-aside", json=body))
        assert set(report["moved"]) == SEA_GROUP - {SEA_SMALL}
        assert _files(album) == before - set(report["moved"])
        time.sleep(1.0)  # the watcher sees the files go: nothing of it is indexed again
        assert watcher.holds_lock() and watcher.error is None
        assert ok_json(client.post("/api/duplicates/restore", json={}))["ids"] == sorted(
            report["ids"]
        )
        assert _files(album) == before
        time.sleep(1.0)  # and come back: the same rows, nothing re-encoded
        with open_lib(album) as lib:
            assert_consistent(lib)
            assert set(lib.photo_ids().tolist()) >= set(ids.values())
        assert db.lock_holder(library)[0].kind == "watcher"
    assert watcher.error is None
