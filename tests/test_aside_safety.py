"""Set-aside and restore check what they move (issue 23): the file moved is still the file
that was indexed, reached through no symbolic link from the real photo folder, and never a
kept photo's; keepers stay kept across runs; the journal follows the library (moved, copied,
rebuilt); a file that cannot be removed, or a kill during a copy, leaves nothing stuck; the
web can allow a copy to another file system and bounds the threshold as the CLI does."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

import db
from cli.main import main
from db.schema import SetAside
from indexer.aside import AsideGroup, restore, set_aside, set_aside_groups
from search.duplicates import (
    DuplicateGroup,
    DuplicateOptions,
    DuplicatePhoto,
    keeper_reason,
)
from tests.duplicates_fixtures import (
    SEA,
    SEA_COPY,
    SEA_PNG,
    SEA_SMALL,
    frame,
    scene,
    write_duplicate_album,
    write_rendition,
)
from tests.indexer_fixtures import assert_consistent, index, open_lib, rows, write_jpeg
from tests.process_fixtures import kill_at_marker
from tests.search_fixtures import error_json, index_folder, ok_json
from web import create_app

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (outside the library folder) with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and db.LIBRARY_DIRNAME not in p.parts
    }


def _cli(root: Path, *args: str):
    return CliRunner().invoke(main, ["duplicates", "--library", str(root), *args])


def _journal(lib_dir: Path) -> dict[str, str]:
    with db.Library.open(lib_dir) as lib, lib.session() as s, s.begin():
        return {r.path: r.state for r in s.scalars(select(SetAside))}


def _lib(root: Path) -> Path:
    return db.default_library_dir(root)


@pytest.fixture
def pair(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """a/x.jpg and b/x.jpg: the same bytes (an "identical" pair, a/x.jpg the keeper by path),
    and c/y.jpg alone."""
    root = tmp_path / "photos"
    write_jpeg(root / "a/x.jpg", 1)
    (root / "b").mkdir()
    shutil.copy2(root / "a/x.jpg", root / "b/x.jpg")
    write_jpeg(root / "c/y.jpg", 2)
    index(root, tiny_checkpoint)
    return root


# -- the file moved is the file indexed, and never the keeper's ---------------------------------


def test_a_folder_swapped_for_a_link_to_the_keepers_folder_moves_nothing(pair: Path) -> None:
    shutil.rmtree(pair / "b")
    os.symlink("a", pair / "b")  # b/x.jpg is now the keeper's only copy
    before = _files(pair)
    result = _cli(pair, "--kind", "identical", "--set-aside", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["moved"] == [] and [s["path"] for s in report["skipped"]] == ["b/x.jpg"]
    assert "symbolic link" in report["skipped"][0]["reason"]
    assert _files(pair) == before and (pair / "a/x.jpg").is_file()
    assert not (_lib(pair) / "set-aside").exists() or not _files(_lib(pair) / "set-aside")
    assert _journal(_lib(pair)) == {}


def test_rows_under_a_second_path_through_a_link_never_empty_the_real_folder(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    root = tmp_path / "photos"
    for k in range(3):
        write_jpeg(root / f"real/p{k}.jpg", 10 + k)
    index(root, tiny_checkpoint)
    os.symlink("real", root / "alink")
    # What a watcher that followed the new link left: the same files under a second path
    # ("alink/..." sorts first, so it is the keeper of each identical pair).
    con = sqlite3.connect(_lib(root) / "library.sqlite3")
    with con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(photos)") if r[1] != "id"]
        names = ", ".join(cols)
        picked = ", ".join("'alink/' || substr(path, 6)" if c == "path" else c for c in cols)
        con.execute(f"INSERT INTO photos ({names}) SELECT {picked} FROM photos")
    con.close()
    before = _files(root)
    result = _cli(root, "--kind", "identical", "--set-aside", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["moved"] == []
    assert {s["path"] for s in report["skipped"]} == {f"real/p{k}.jpg" for k in range(3)}
    assert _files(root) == before


@pytest.mark.parametrize("same_size_and_mtime", [False, True])
def test_a_file_overwritten_after_indexing_is_not_set_aside(
    pair: Path, tiny_checkpoint: Path, same_size_and_mtime: bool
) -> None:
    extra = pair / "b/x.jpg"
    old = os.stat(extra)
    if same_size_and_mtime:  # another picture, same length, the old mtime put back
        data = bytearray(extra.read_bytes())
        data[-10:-2] = bytes(8)  # still a JPEG that opens, other bytes
        extra.write_bytes(bytes(data))
        os.utime(extra, ns=(old.st_atime_ns, old.st_mtime_ns))
        assert os.stat(extra).st_size == old.st_size
    else:
        write_jpeg(extra, 99)
    before = _files(pair)
    report = set_aside(_lib(pair), [_id(pair, "b/x.jpg")])
    assert report.moved == [] and "changed" in report.skipped[0].reason
    assert _files(pair) == before and _journal(_lib(pair)) == {}


def test_a_keeper_that_links_to_the_extra_keeps_its_file(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    root = tmp_path / "photos"
    write_jpeg(root / "b/zzz.jpg", 3)
    (root / "a").mkdir()
    os.symlink("../b/zzz.jpg", root / "a/aaa.jpg")  # the keeper (first by path) is a link
    index(root, tiny_checkpoint)
    with open_lib(root) as lib:
        assert set(rows(lib)) == {"a/aaa.jpg", "b/zzz.jpg"}
    result = _cli(root, "--kind", "identical", "--set-aside", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["moved"] == []
    assert (root / "a/aaa.jpg").read_bytes() == (root / "b/zzz.jpg").read_bytes()


def test_an_extra_folder_leading_outside_the_root_is_not_set_aside_by_the_web(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    root = tmp_path / "사진"
    write_duplicate_album(root)
    index_folder(root, tiny_checkpoint)
    outside = tmp_path / "outside"
    shutil.copytree(root / "여행", outside)  # the same bytes and times: only the link differs
    shutil.rmtree(root / "여행")
    os.symlink(outside, root / "여행")
    kept_outside = _files(outside)
    with TestClient(create_app(_lib(root), warm=False), base_url="http://127.0.0.1") as client:
        groups = ok_json(client.get("/api/duplicates", params={"kind": "same"}))["groups"]
        sea = next(g for g in groups if SEA_PNG in {p["relpath"] for p in g["photos"]})
        ids = {p["relpath"]: p["id"] for p in sea["photos"]}
        body = {"photos": list(ids.values()), "keep": ids[SEA_PNG], "kind": "same"}
        report = ok_json(client.post("/api/duplicates/set-aside", json=body))
    assert report["moved"] == [SEA_COPY]
    assert {s["path"] for s in report["skipped"]} == {SEA, SEA_SMALL}
    assert all("outside" in s["reason"] for s in report["skipped"])
    assert _files(outside) == kept_outside


# -- keepers stay kept --------------------------------------------------------------------------


def test_a_keeper_is_never_set_aside_later_as_another_groups_extra(pair: Path) -> None:
    a, b, c = (_id(pair, k) for k in ("a/x.jpg", "b/x.jpg", "c/y.jpg"))
    first = AsideGroup((a, b), keep=a)
    report = set_aside_groups(_lib(pair), [first], lambda: [(a, b)])
    assert report.moved == ["b/x.jpg"]
    later = AsideGroup((c, a), keep=c)  # a "similar" group in which the keeper is an extra
    report = set_aside_groups(_lib(pair), [later], lambda: [(c, a)])
    assert report.moved == [] and [s.path for s in report.skipped] == ["a/x.jpg"]
    assert "kept" in report.skipped[0].reason
    assert (pair / "a/x.jpg").is_file()
    assert set_aside(_lib(pair), [a]).moved == []  # by id too
    assert restore(_lib(pair), [b]).moved == ["b/x.jpg"]  # its extra is back: a is free again
    assert set_aside_groups(_lib(pair), [later], lambda: [(c, a)]).moved == ["a/x.jpg"]


def test_the_cli_keeps_a_keeper_across_two_runs(tmp_path: Path, tiny_checkpoint: Path) -> None:
    root = tmp_path / "photos"
    big = frame(scene(5))
    (root / "a").mkdir(parents=True)
    big.save(root / "a/big.jpg", "JPEG", quality=92)
    shutil.copy2(root / "a/big.jpg", root / "a/copy.jpg")
    write_rendition(big, "resized", root / "a/small.jpg")
    index(root, tiny_checkpoint)
    first = _cli(root, "--kind", "identical", "--set-aside")
    assert first.exit_code == 0 and "set aside: 1 photos" in first.output, first.output
    # the "same" group is now {big, small}; keeping small would move big, kept by run 1
    second = _cli(root, "--kind", "same", "--keep", "a/small.jpg", "--set-aside", "--json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert report["moved"] == [] and [s["path"] for s in report["skipped"]] == ["a/big.jpg"]
    assert (root / "a/big.jpg").is_file() and (root / "a/small.jpg").is_file()


# -- the journal follows the library --------------------------------------------------------------


def test_a_copied_library_restores_its_own_files(pair: Path, tmp_path: Path) -> None:
    assert _cli(pair, "--kind", "identical", "--set-aside").exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(pair, copy, symlinks=True)
    result = _cli(copy, "--restore")
    assert result.exit_code == 0, result.output
    assert (copy / "b/x.jpg").is_file() and not (pair / "b/x.jpg").exists()
    assert (_lib(pair) / "set-aside/b/x.jpg").is_file()  # the original's stays aside
    assert not (_lib(copy) / "set-aside/b/x.jpg").exists()


def test_a_moved_library_restores_and_nothing_to_restore_is_exit_1(
    pair: Path, tmp_path: Path
) -> None:
    assert _cli(pair, "--kind", "identical", "--set-aside").exit_code == 0
    moved = tmp_path / "moved"
    pair.rename(moved)
    result = _cli(moved, "--restore")
    assert result.exit_code == 0, result.output
    assert (moved / "b/x.jpg").is_file()
    assert _cli(moved, "--kind", "identical", "--set-aside").exit_code == 0
    shutil.rmtree(_lib(moved) / "set-aside")  # the journaled files are gone
    result = _cli(moved, "--restore")
    assert result.exit_code == 1, result.output
    assert "gone" in result.output


def test_a_rebuild_with_another_model_keeps_the_journal_and_restores_re_encode(
    pair: Path, tiny_checkpoint_other: Path
) -> None:
    assert _cli(pair, "--kind", "identical", "--set-aside").exit_code == 0
    summary = index(pair, tiny_checkpoint_other, rebuild=True)
    assert summary.new == 2
    assert _journal(_lib(pair)) == {"b/x.jpg": "aside"}
    result = _cli(pair, "--restore")
    assert result.exit_code == 0 and (pair / "b/x.jpg").is_file(), result.output
    assert index(pair, tiny_checkpoint_other).new == 1  # encoded with the library's model
    with open_lib(pair) as lib:
        assert_consistent(lib)
        got = rows(lib)
        np.testing.assert_allclose(got["a/x.jpg"].vector(), got["b/x.jpg"].vector(), atol=1e-5)


def _newer_schema(db_file: Path) -> None:
    con = sqlite3.connect(db_file)
    with con:
        con.execute("UPDATE manifest SET schema_version = 99")
    con.close()


def _overwrite(db_file: Path, start: int, length: int) -> None:
    con = sqlite3.connect(db_file)  # the WAL folded in: damage to the file is all there is
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()
    data = bytearray(db_file.read_bytes())
    data[start : start + length] = bytes(range(256))[:length] * (length // 256 or 1)
    db_file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    {
        "newer schema": _newer_schema,
        "not a database": lambda f: _overwrite(f, 0, 100),
    }.items(),
    ids=lambda d: d[0],
)
def test_a_rebuild_of_a_replaced_database_keeps_the_set_aside_photos(
    pair: Path, tiny_checkpoint: Path, damage
) -> None:
    assert _cli(pair, "--kind", "identical", "--set-aside").exit_code == 0
    damage[1](_lib(pair) / "library.sqlite3")
    index(pair, tiny_checkpoint, rebuild=True)
    assert set(_journal(_lib(pair))) == {"b/x.jpg"}
    # new photos' ids never meet a journaled one
    assert set_aside(_lib(pair), [_id(pair, "c/y.jpg")]).moved == ["c/y.jpg"]
    result = _cli(pair, "--restore")
    assert result.exit_code == 0 and (pair / "b/x.jpg").is_file(), result.output
    assert index(pair, tiny_checkpoint).new == 1  # b, encoded again; c came back with its row
    with open_lib(pair) as lib:
        assert_consistent(lib)
        assert set(rows(lib)) == {"a/x.jpg", "b/x.jpg", "c/y.jpg"}


# -- a file that cannot be removed, a kill during a copy --------------------------------------------


@contextlib.contextmanager
def _immutable(path: Path):
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_source_that_cannot_be_removed_is_skipped_and_blocks_nothing(
    pair: Path, what: str
) -> None:
    lib_dir = _lib(pair)
    b = _id(pair, "b/x.jpg")
    with _immutable(pair / "b/x.jpg" if what == "file" else pair / "b"):
        report = set_aside(lib_dir, [b])
        assert report.moved == [] and "not permitted" in report.skipped[0].reason
        assert _journal(lib_dir) == {}
        assert not (lib_dir / "set-aside/b/x.jpg").exists()
        assert set_aside(lib_dir, [_id(pair, "c/y.jpg")]).moved == ["c/y.jpg"]
        assert restore(lib_dir).moved == ["c/y.jpg"]
    with open_lib(pair) as lib:
        assert_consistent(lib)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_recovery_settles_a_move_stuck_on_a_file_that_cannot_be_removed(
    pair: Path, what: str
) -> None:
    from db.journal import mark_moving, photo_to_move

    lib_dir = _lib(pair)
    b = _id(pair, "b/x.jpg")
    dest = lib_dir / "set-aside/b/x.jpg"
    with db.Library.create(lib_dir) as lib:  # what an older run left: step 2 half done
        mark_moving(lib, photo_to_move(lib, b), dest)
    dest.parent.mkdir(parents=True)
    os.link(pair / "b/x.jpg", dest)
    with _immutable(pair / "b/x.jpg" if what == "file" else pair / "b"):
        report = set_aside(lib_dir, [_id(pair, "c/y.jpg")])
        assert report.moved == ["c/y.jpg"] and report.recovered == 1
        assert [s.path for s in report.skipped] == ["b/x.jpg"]
        assert "cannot remove" in report.skipped[0].reason
        assert _journal(lib_dir) == {"c/y.jpg": "aside"}
        assert (pair / "b/x.jpg").is_file()
        assert dest.exists() == (what == "file")  # an immutable file keeps both names
        result = _cli(pair, "--restore")
        assert result.exit_code == 0, result.output
    with open_lib(pair) as lib:
        assert_consistent(lib)
        assert set(rows(lib)) == {"a/x.jpg", "b/x.jpg", "c/y.jpg"}


def test_recovery_never_unlinks_through_a_folder_swapped_for_a_link(pair: Path) -> None:
    from db.journal import mark_moving, photo_to_move

    lib_dir = _lib(pair)
    dest = lib_dir / "set-aside/b/x.jpg"
    with db.Library.create(lib_dir) as lib:  # a copy across file systems, killed before unlink
        mark_moving(lib, photo_to_move(lib, _id(pair, "b/x.jpg")), dest)
    dest.parent.mkdir(parents=True)
    shutil.copy2(pair / "b/x.jpg", dest)
    shutil.rmtree(pair / "b")
    os.symlink("a", pair / "b")  # b/x.jpg now names the keeper, with the same bytes
    report = set_aside(lib_dir, [_id(pair, "c/y.jpg")])
    assert report.moved == ["c/y.jpg"]
    assert [s.path for s in report.skipped] == ["b/x.jpg"]
    assert "symbolic link" in report.skipped[0].reason
    assert (pair / "a/x.jpg").is_file()


KILL_IN_COPY = """
import errno, os, shutil, sys, time
from pathlib import Path
import indexer.aside as aside
library, dest, marker, *ids = sys.argv[1:]
real_link, real_copy = os.link, shutil.copy2

def link(src, dst, **kw):  # the review folder on another device
    if str(dst).startswith(dest) and not Path(src).name.startswith("."):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    return real_link(src, dst, **kw)

def copy(src, dst, **kw):
    real_copy(src, dst, **kw)
    Path(marker).write_text("copied")
    time.sleep(3600)

os.link, shutil.copy2 = link, copy
aside.set_aside(Path(library), [int(i) for i in ids], Path(dest), cross_filesystem=True)
"""


@pytest.mark.slow
def test_a_kill_during_a_copy_leaves_no_temporary_copy(pair: Path, tmp_path: Path) -> None:
    review, marker = tmp_path / "review", tmp_path / "copied"
    before = _files(pair)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_IN_COPY, str(_lib(pair)), str(review), str(marker)]
        + [str(_id(pair, "b/x.jpg"))],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
        stderr=subprocess.PIPE,
    )
    kill_at_marker(proc, marker, within=60, never="never copied")
    assert list(review.rglob(".*"))  # the temporary copy a kill leaves
    report = restore(_lib(pair))
    assert report.recovered == 1
    assert not [p for p in review.rglob("*") if p.is_file()]
    assert _files(pair) == before and _journal(_lib(pair)) == {}


# -- the web and the CLI: another file system, the threshold's bound, the report -----------------


def test_the_web_can_allow_copying_to_another_file_system(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch
) -> None:
    root = tmp_path / "사진"
    write_duplicate_album(root)
    index_folder(root, tiny_checkpoint)
    aside_dir = str(_lib(root) / "set-aside")
    real_stat, real_link = os.stat, os.link

    def stat(p, *a, **k):  # the library's set-aside folder on another device
        st = real_stat(p, *a, **k)
        if not str(p).startswith(aside_dir):
            return st
        fields = list(st)
        fields[2] = st.st_dev + 1
        return os.stat_result(fields)

    def link(src, dst, **kw):
        if str(dst).startswith(aside_dir) and not Path(src).name.startswith("."):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kw)

    (_lib(root) / "set-aside").mkdir()
    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "link", link)
    with TestClient(create_app(_lib(root), warm=False), base_url="http://127.0.0.1") as client:
        groups = ok_json(client.get("/api/duplicates", params={"kind": "same"}))["groups"]
        ids = [p["id"] for p in groups[0]["photos"]]
        body = {"photos": ids, "keep": ids[0], "kind": "same"}
        message = error_json(
            client.post("/api/duplicates/set-aside", json=body), 409, "cross_filesystem"
        )
        assert "--cross-filesystem" not in message and "confirm" in message
        report = ok_json(
            client.post("/api/duplicates/set-aside", json=body | {"cross_filesystem": True})
        )
        assert len(report["moved"]) == len(ids) - 1 and report["skipped"] == []


def test_the_threshold_is_bounded_by_one_rule(tmp_path: Path, tiny_checkpoint: Path) -> None:
    root = tmp_path / "사진"
    write_duplicate_album(root)
    index_folder(root, tiny_checkpoint)
    before = _files(root)
    for low in ("-1", "0", "0.3"):
        result = _cli(root, "--kind", "similar", "--threshold", low, "--set-aside")
        assert result.exit_code == 2 and "threshold" in result.output, result.output
        with pytest.raises(ValueError, match="threshold"):
            DuplicateOptions(kind="similar", threshold=float(low))
    with TestClient(create_app(_lib(root), warm=False), base_url="http://127.0.0.1") as client:
        error_json(client.get("/api/duplicates", params={"threshold": -1}), 422, "bad_request")
        ids = [p["id"] for p in ok_json(client.get("/api/duplicates"))["groups"][0]["photos"]]
        body = {"photos": ids, "keep": ids[0], "kind": "similar", "threshold": -1}
        error_json(client.post("/api/duplicates/set-aside", json=body), 422, "bad_request")
    assert _files(root) == before


def test_an_unknown_id_is_reported_by_id_not_as_a_path(pair: Path) -> None:
    report = set_aside(_lib(pair), [424242])
    (skipped,) = report.to_json()["skipped"]
    assert skipped["path"] is None and skipped["id"] == 424242


def test_the_keeper_reason_names_what_decided() -> None:
    def photo(pid: int, taken: datetime) -> DuplicatePhoto:
        return DuplicatePhoto(pid, f"/p/{pid}", f"{pid}.jpg", 10, 10, 5, taken, 1.0)

    # the order compares whole seconds: these two tie, so the path decided
    first = photo(1, datetime(2024, 1, 1, 10, 0, 0, 900_000))
    second = photo(2, datetime(2024, 1, 1, 10, 0, 0, 100_000))
    assert keeper_reason([first, second]) == "first by path"
    earlier = photo(3, datetime(2024, 1, 1, 9, 0, 0))
    assert keeper_reason([earlier, first]) == "taken first"
    group = DuplicateGroup("identical", (first, second), keeper_reason([first, second]))
    assert group.to_json()["reason"] == "first by path"


def _id(root: Path, key: str) -> int:
    with open_lib(root) as lib:
        return rows(lib)[key].id
