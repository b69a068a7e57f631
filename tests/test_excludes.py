"""The library keeps its excludes: `index --exclude` adds, `--include` removes, every later run
(and a watcher's session) applies them, `info` shows them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import db
from cli.main import main
from db.settings import library_excludes, merge_excludes
from indexer import IndexOptions, IndexSession, UnknownExcludeError
from tests.indexer_fixtures import index, open_lib, rows, write_jpeg


def _excludes(root) -> tuple[str, ...]:
    with open_lib(root) as lib, lib.session() as s, s.begin():
        return library_excludes(s)


def test_merge_excludes_keeps_order_and_reports_unknown_removals():
    assert merge_excludes(("a", "b"), ("c", "a"), ()) == (("a", "b", "c"), ())
    assert merge_excludes(("a", "b"), (), ("a", "x")) == (("b",), ("x",))
    assert merge_excludes((), (), ()) == ((), ())


def test_an_exclude_is_remembered_by_the_next_run_until_included(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    write_jpeg(root / "screens/s1.jpg", 2)
    write_jpeg(root / "screens/s2.jpg", 3)
    assert index(root, tiny_checkpoint).new == 3

    first = index(root, tiny_checkpoint, exclude=("screens",))
    assert first.removed == 2 and first.to_json()["removed"] == 2
    assert _excludes(root) == ("screens",)

    again = index(root, tiny_checkpoint)  # a plain run: the photos stay out
    assert (again.new, again.removed, again.unchanged) == (0, 0, 1)
    with open_lib(root) as lib:
        assert sorted(rows(lib)) == ["a.jpg"]

    back = index(root, tiny_checkpoint, include=("screens",))
    assert back.new == 2 and _excludes(root) == ()
    with open_lib(root) as lib:
        assert sorted(rows(lib)) == ["a.jpg", "screens/s1.jpg", "screens/s2.jpg"]


def test_including_what_is_not_excluded_is_refused_and_changes_nothing(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    write_jpeg(root / "raw/b.jpg", 2)
    index(root, tiny_checkpoint, exclude=("raw",))
    with pytest.raises(UnknownExcludeError, match="raw/\\*: not among the library's excludes"):
        index(root, tiny_checkpoint, exclude=("x",), include=("raw/*",))
    assert _excludes(root) == ("raw",)


def test_a_watchers_session_applies_the_stored_excludes(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    index(root, tiny_checkpoint, exclude=("*/screens/*",))
    # serve --watch and index --watch open a session with no --exclude of their own
    with IndexSession(root, IndexOptions(model=str(tiny_checkpoint))) as session:
        assert session.options.exclude == ("*/screens/*",)
        write_jpeg(root / "x/screens/s.jpg", 2)
        write_jpeg(root / "x/ok.jpg", 3)
        assert session.run(["x"]).new == 1
        assert session.run().new == 0
    with open_lib(root) as lib:
        assert sorted(rows(lib)) == ["a.jpg", "x/ok.jpg"]


def test_excludes_outlive_a_rebuild(tmp_path, tiny_checkpoint):
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    write_jpeg(root / "raw/b.jpg", 2)
    index(root, tiny_checkpoint, exclude=("raw",))
    rebuilt = index(root, tiny_checkpoint, rebuild=True)
    assert rebuilt.new == 1 and _excludes(root) == ("raw",)
    with open_lib(root) as lib:
        assert sorted(rows(lib)) == ["a.jpg"]


def test_cli_exclude_include_and_info(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    write_jpeg(root / "스크린샷/b.jpg", 2)
    base = ["index", str(root), "--model", str(tiny_checkpoint), "--batch-size", "2"]
    assert runner.invoke(main, base).exit_code == 0

    out = runner.invoke(main, [*base, "--exclude", "스크린샷"])
    assert out.exit_code == 0, out.output
    assert "1 removed from the library" in out.stdout and "deleted" not in out.stdout

    library = ["--library", str(root / db.LIBRARY_DIRNAME)]
    info = runner.invoke(main, ["info", *library])
    assert info.exit_code == 0, info.output
    assert "excludes:     스크린샷" in info.stdout
    as_json = json.loads(runner.invoke(main, ["info", *library, "--json"]).stdout)
    assert as_json["exclude"] == ["스크린샷"]

    plain = runner.invoke(main, [*base, "--json"])
    assert json.loads(plain.stdout)["new"] == 0

    both = runner.invoke(main, [*base, "--exclude", "x", "--include", "x"])
    assert both.exit_code == 2 and "both --exclude and --include" in both.output
    typo = runner.invoke(main, [*base, "--include", "스크린"])
    assert typo.exit_code == 2 and "not among the library's excludes" in typo.output

    back = runner.invoke(main, [*base, "--include", "스크린샷", "--json"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["new"] == 1
    info = runner.invoke(main, ["info", *library])
    assert "excludes:     none" in info.stdout


def test_excludes_outlive_a_rebuild_that_replaces_the_database(tmp_path, tiny_checkpoint):
    import sqlite3

    from db.engine import DB_NAME

    root = tmp_path / "p"
    write_jpeg(root / "a.jpg", 1)
    write_jpeg(root / "raw/b.jpg", 2)
    index(root, tiny_checkpoint, exclude=("raw",))
    path = root / db.LIBRARY_DIRNAME / DB_NAME
    with sqlite3.connect(path) as conn:  # a schema this program cannot upgrade
        conn.execute("UPDATE manifest SET schema_version = 0")
    conn.close()
    with pytest.raises(db.SchemaVersionError):
        index(root, tiny_checkpoint)
    rebuilt = index(root, tiny_checkpoint, rebuild=True)
    assert rebuilt.new == 1 and _excludes(root) == ("raw",)
