"""Real file names (NFD Hangul, bytes that are not UTF-8) and symlinks: what is indexed, what
search returns, what the web serves, and how an older library is migrated."""

from __future__ import annotations

import json
import os
import sqlite3
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

import db
from cli.main import main
from search import Searcher
from tests.indexer_fixtures import index, open_lib, rows, write_jpeg
from web import create_app

BASE = "http://127.0.0.1"


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def disk(root: Path, name: bytes) -> Path:
    """`root / name` with `name` given as the exact bytes it has on disk."""
    return root / os.fsdecode(name)


# Key (what the library matches and shows) -> the bytes of the relative path on disk.
NAMES = {
    "여행/바다.jpg": os.fsencode(nfd("여행/바다.jpg")),
    "노을.jpg": os.fsencode(nfd("노을.jpg")),
    "caf\\xe9.jpg": b"caf\xe9.jpg",  # not UTF-8: indexed, its bytes kept
    "plain.jpg": b"plain.jpg",
}


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("names")
    for seed, name in enumerate(NAMES.values()):
        write_jpeg(disk(root, name), seed + 1)
    assert index(root, tiny_checkpoint).new == len(NAMES)
    return root


def _on_disk(path: Path | str) -> bytes:
    return os.fsencode(path)


# -- the real file names -----------------------------------------------------------------------


def test_names_are_kept_as_on_disk_and_matched_by_nfc(named: Path) -> None:
    with open_lib(named) as lib:
        stored = rows(lib)
    assert set(stored) == set(NAMES)  # keys: NFC, odd bytes escaped
    for key, name in NAMES.items():
        assert _on_disk(stored[key].disk_relpath()) == name
    with Searcher(named) as s:
        hits = s.text("바다", k=10)
        assert {_on_disk(h.path) for h in hits} == {
            _on_disk(named) + b"/" + n for n in NAMES.values()
        }
        assert all(h.path.is_file() for h in hits)
        assert {h.relpath for h in hits} == set(NAMES)
        (sea,) = s.text("바다", k=10, under="여행")  # NFC --under, NFD folder
        assert sea.path.is_file() and sea.relpath == "여행/바다.jpg"
        (sea2,) = s.text("바다", k=10, under=named / "여행")  # absolute, NFC
        assert sea2.photo_id == sea.photo_id
        # A query image named in NFC finds the NFD file: it is the image itself, so left out.
        similar = s.image(named / "노을.jpg", k=10)
        assert len(similar) == len(NAMES) - 1
        assert "노을.jpg" not in {h.relpath for h in similar}
        assert s.photo_at("노을.jpg").path.is_file()


def test_cli_paths_and_json_are_the_files_on_disk(named: Path) -> None:
    result = run("search", "바다", "--library", named, "-k", "10", "--paths")
    assert result.exit_code == 0, result.output
    lines = result.stdout_bytes.splitlines()
    assert len(lines) == len(NAMES) and all(os.path.isfile(line) for line in lines)
    assert set(lines) == {_on_disk(named) + b"/" + n for n in NAMES.values()}
    result = run("search", "바다", "--library", named, "-k", "10", "--json", "--under", "여행")
    assert result.exit_code == 0, result.output
    (hit,) = json.loads(result.stdout)["results"]
    assert hit["path"] == str(named / nfd("여행/바다.jpg")) and Path(hit["path"]).is_file()
    result = run("similar", named / "노을.jpg", "--library", named, "-k", "10", "--paths")
    assert result.exit_code == 0, result.output
    assert len(result.stdout_bytes.splitlines()) == len(NAMES) - 1
    table = run("search", "바다", "--library", named, "-k", "10")
    assert table.exit_code == 0 and "caf\\xe9.jpg" in table.stdout


def test_web_serves_nfd_and_non_utf8_names(named: Path) -> None:
    library = db.default_library_dir(named)
    with open_lib(named) as lib:
        ids = {key: row.id for key, row in rows(lib).items()}
    with TestClient(create_app(library, warm=False), base_url=BASE) as client:
        for key, name in NAMES.items():
            pid = ids[key]
            original = client.get(f"/api/photos/{pid}/original")
            assert original.status_code == 200, (key, original.text)
            assert original.content == disk(named, name).read_bytes()
            assert original.headers["content-type"] == "image/jpeg"
            assert client.get(f"/api/photos/{pid}/thumbnail").status_code == 200, key
            similar = client.get(f"/api/photos/{pid}/similar", params={"k": 10})
            assert similar.status_code == 200, similar.text
            composed = client.post(
                "/api/compose", json={"terms": [{"photo_id": pid, "weight": 1.0}], "k": 10}
            )
            assert composed.status_code == 200, composed.text
            body = client.get(f"/api/photos/{pid}").json()
            assert body["relpath"] == key
            # JSON holds the exact name; bytes that are not UTF-8 as \xNN escapes.
            exact = os.fsencode(disk(named, name)).decode("utf-8", "backslashreplace")
            assert body["path"] == exact
        found = client.get("/api/search", params={"q": "바다", "under": "여행"}).json()
        assert [h["relpath"] for h in found["results"]] == ["여행/바다.jpg"]


def test_names_equal_once_normalised_are_not_lost_silently(tmp_path, tiny_checkpoint) -> None:
    root = tmp_path / "p"
    write_jpeg(root / "사진.jpg", 1)
    write_jpeg(root / nfd("사진.jpg"), 2)
    summary = index(root, tiny_checkpoint)
    # The NFD spelling sorts first (jamo before syllables) and is indexed; the other is a
    # recorded failure with its reason, shown in the summary and kept in the library.
    assert summary.new == 1
    assert dict(summary.failures) == {
        "사진.jpg": "another file has the same name once Unicode-normalised"
    }
    with open_lib(root) as lib:
        (row,) = rows(lib).values()
        assert row.disk_relpath() == nfd("사진.jpg")


def test_an_older_library_is_migrated_by_index_without_reencoding(
    tmp_path, tiny_checkpoint, monkeypatch
) -> None:
    from koclip.encoder import Encoder

    root = tmp_path / "p"
    for seed, name in enumerate(NAMES.values()):
        write_jpeg(disk(root, name), seed + 1)
    index(root, tiny_checkpoint)
    # What schema 1 looked like: no disk_path column, version 1, NFC paths only.
    conn = sqlite3.connect(db.default_library_dir(root) / "library.sqlite3")
    conn.execute("ALTER TABLE photos DROP COLUMN disk_path")
    conn.execute("UPDATE manifest SET schema_version = 1")
    conn.commit()
    conn.close()
    with Searcher(root) as s:  # a reader of the old library keeps working, as it did
        assert len(s.text("바다", k=10)) == len(NAMES)
    encoded = []
    real_encode = Encoder.encode_pixels
    monkeypatch.setattr(
        Encoder, "encode_pixels", lambda e, p: encoded.append(len(p)) or real_encode(e, p)
    )
    summary = index(root, tiny_checkpoint)
    assert (summary.unchanged, summary.new, summary.updated, encoded) == (len(NAMES), 0, 0, [])
    with open_lib(root) as lib:
        assert lib.manifest().schema_version == db.SCHEMA_VERSION
    with Searcher(root) as s:
        hits = s.text("바다", k=10)
        assert len(hits) == len(NAMES) and all(h.path.is_file() for h in hits)
    assert index(root, tiny_checkpoint).unchanged == len(NAMES)


# -- files outside the photo root are never served -------------------------------------------


def _refused(response, secret: bytes) -> None:
    assert 400 <= response.status_code < 500, response.status_code
    assert set(response.json()) == {"error", "code"}
    assert secret not in response.content


def test_links_out_of_the_root_and_non_images_are_never_served(tmp_path, tiny_checkpoint):
    root, outside = tmp_path / "photos", tmp_path / "outside"
    for i, name in enumerate(("keep.jpg", "leak.jpg", "leak2.jpg", "text.jpg", "sub/d.jpg")):
        write_jpeg(root / name, i + 1)
    (root / "alias.jpg").symlink_to(root / "keep.jpg")  # inside -> inside: served
    index(root, tiny_checkpoint)
    with open_lib(root) as lib:
        ids = {key: row.id for key, row in rows(lib).items()}
    secret = b"root:x:0:0:TOPSECRET\n"
    outside.mkdir()
    (outside / "passwd").write_bytes(secret)
    write_jpeg(outside / "photo.jpg", 9)  # even a real image outside is not served
    write_jpeg(outside / "sub/d.jpg", 10)
    (root / "leak.jpg").unlink()
    (root / "leak.jpg").symlink_to(outside / "passwd")
    (root / "leak2.jpg").unlink()
    (root / "leak2.jpg").symlink_to(outside / "photo.jpg")
    (root / "sub/d.jpg").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside / "sub")  # a linked parent folder leading out
    (root / "text.jpg").write_bytes(secret)  # inside, but not an image
    with TestClient(create_app(db.default_library_dir(root), warm=False), base_url=BASE) as c:
        for key in ("leak.jpg", "leak2.jpg", "sub/d.jpg", "text.jpg"):
            for route in ("original", "thumbnail", "thumbnail?size=large"):
                _refused(c.get(f"/api/photos/{ids[key]}/{route}"), secret)
        outside_jpeg = (outside / "photo.jpg").read_bytes()
        assert c.get(f"/api/photos/{ids['leak2.jpg']}/original").content != outside_jpeg
        for key in ("keep.jpg", "alias.jpg"):
            original = c.get(f"/api/photos/{ids[key]}/original")
            assert original.status_code == 200
            assert original.content == (root / "keep.jpg").read_bytes()
            assert c.get(f"/api/photos/{ids[key]}/thumbnail").status_code == 200


def test_a_fifo_named_like_a_photo_does_not_hang_the_server(tmp_path, tiny_checkpoint):
    root = tmp_path / "photos"
    write_jpeg(root / "pipe.jpg", 1)
    index(root, tiny_checkpoint)
    (root / "pipe.jpg").unlink()
    os.mkfifo(root / "pipe.jpg")
    with TestClient(create_app(db.default_library_dir(root), warm=False), base_url=BASE) as c:
        _refused(c.get("/api/photos/1/original"), b"\xff\xd8")
        _refused(c.get("/api/photos/1/thumbnail"), b"\xff\xd8")


# -- symlinks while indexing -------------------------------------------------------------------


def _linked_tree(tmp_path: Path) -> Path:
    root, outside = tmp_path / "p", tmp_path / "outside"
    write_jpeg(root / "in.jpg", 1)
    write_jpeg(root / "real/z.jpg", 2)
    write_jpeg(outside / "x.jpg", 3)
    write_jpeg(outside / "dir/y.jpg", 4)
    (root / "outfile.jpg").symlink_to(outside / "x.jpg")
    (root / "outdir").symlink_to(outside / "dir")
    (root / "real/loop").symlink_to(root)  # a loop: ends
    (root / "zz-alias").symlink_to(root / "real")  # inside -> inside: entered once
    return root


def test_links_out_of_the_root_are_recorded_not_followed(tmp_path, tiny_checkpoint):
    root = _linked_tree(tmp_path)
    summary = index(root, tiny_checkpoint)
    with open_lib(root) as lib:
        assert set(rows(lib)) == {"in.jpg", "real/z.jpg"}
        with lib.session() as s, s.begin():
            links = {f.path: f.reason for f in s.scalars(select(db.Failure))}
    assert set(links) == {"outfile.jpg", "outdir"}
    assert all("--follow-links" in reason for reason in links.values())
    assert {path for path, _ in summary.failures} == {"outfile.jpg", "outdir/"}
    assert index(root, tiny_checkpoint).unchanged == 2  # recorded again, nothing else changes


def test_follow_links_indexes_them_through_the_cli(tmp_path, tiny_checkpoint):
    root = _linked_tree(tmp_path)
    index(root, tiny_checkpoint)
    args = ["index", root, "--model", tiny_checkpoint, "--follow-links", "--json"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["new"], out["failed"]) == (2, 0), out
    with open_lib(root) as lib:
        assert set(rows(lib)) == {"in.jpg", "real/z.jpg", "outfile.jpg", "outdir/y.jpg"}
        with lib.session() as s, s.begin():
            assert not s.scalars(select(db.Failure)).all()
    assert index(root, tiny_checkpoint).deleted == 2  # without the flag they go again


def test_scoped_passes_judge_links_and_names_like_a_full_pass(tmp_path, tiny_checkpoint):
    """A watcher's pass over changed paths records the same links and keys as a full pass."""
    from indexer import IndexOptions, IndexSession

    root = tmp_path / "p"
    write_jpeg(root / "keep.jpg", 1)
    with IndexSession(root, IndexOptions(model=str(tiny_checkpoint))) as s:
        s.run()
        linked = _linked_tree(tmp_path / "t")  # in.jpg, real/z.jpg and the links, made anew
        os.rename(linked, root / "new")
        (root / "new/inside-link.jpg").symlink_to(root / "keep.jpg")  # inside: followed
        write_jpeg(disk(root, b"new/caf\xe9.jpg"), 5)
        scoped = s.run(["new"])
    with open_lib(root) as lib:
        keys = set(rows(lib))
        with lib.session() as sess, sess.begin():
            links = {f.path for f in sess.scalars(select(db.Failure))}
    assert keys == {
        "keep.jpg",
        "new/in.jpg",
        "new/real/z.jpg",
        "new/inside-link.jpg",
        "new/caf\\xe9.jpg",
    }
    assert links == {"new/outfile.jpg", "new/outdir"}
    assert {path for path, _ in scoped.failures} == {"new/outfile.jpg", "new/outdir/"}
    # A link given by itself (a watcher sees the link's own path change) is judged the same.
    (root / "solo.jpg").symlink_to(tmp_path / "t/outside/x.jpg")
    with IndexSession(root, IndexOptions(model=str(tiny_checkpoint))) as s:
        assert [p for p, _ in s.run(["solo.jpg"]).failures] == ["solo.jpg"]
        full = s.run()
    assert full.new == 0 and full.deleted == 0


def test_links_to_folders_inside_the_root_give_no_photo_a_second_path(tmp_path, tiny_checkpoint):
    """A watcher's pass over a new link to a folder inside the root (or a loop) adds nothing
    that a full pass would remove again: the folder is indexed once, at its own path."""
    from indexer import IndexOptions, IndexSession

    root = tmp_path / "p"
    write_jpeg(root / "a/x.jpg", 1)
    write_jpeg(root / "b/y.jpg", 2)
    with IndexSession(root, IndexOptions(model=str(tiny_checkpoint))) as s:
        s.run()
        (root / "a/loop").symlink_to("..")  # a loop made while watching
        (root / "c").symlink_to("b")  # a second path to b's photos
        (root / "0-first").symlink_to("b")  # sorts before b: still not its path
        scoped = s.run(["a/loop", "c", "0-first", "c/y.jpg", "a/loop/b/y.jpg"])
        assert (scoped.new, scoped.deleted, scoped.failed) == (0, 0, 0)
        with open_lib(root) as lib:
            assert set(rows(lib)) == {"a/x.jpg", "b/y.jpg"}
        full = s.run()
    assert (full.new, full.deleted, full.unchanged) == (0, 0, 2)
