"""`koclip-search search / similar / info / reindex` through click's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import db
from cli.main import main
from tests.search_fixtures import DUPLICATE, DUPLICATE_OF, PHOTOS, indexed_photos


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return indexed_photos(tmp_path_factory, tiny_checkpoint)


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_search_paths(photo_root: Path) -> None:
    result = run("search", "바다", "+", "노을", "--library", photo_root, "-k", "3", "--paths")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(Path(line).is_absolute() and Path(line).is_file() for line in lines)


def test_search_json_matches_the_python_api(photo_root: Path) -> None:
    from search import Searcher

    result = run(
        "search",
        "바다 + 노을 - 사람",
        "--library",
        photo_root,
        "-k",
        "4",
        "--json",
        "--under",
        "2024",
        "--after",
        "2024-01-01",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    with Searcher(photo_root) as s:
        expected = s.compose("바다 + 노을 - 사람", k=4, under="2024", after="2024-01-01")
    assert out == expected.to_json()
    assert out["query"] == "바다 + 노을 - 사람"
    assert [r["rank"] for r in out["results"]] == [1, 2, 3, 4]


def test_search_k_past_the_library_returns_every_photo(photo_root: Path) -> None:
    for k in ("1000000000000", "9223372036854775807", "99999999999999999999999"):
        result = run("search", "바다", "--library", photo_root, "-k", k, "--json")
        assert result.exit_code == 0, result.output
        paths = [r["path"] for r in json.loads(result.stdout)["results"]]
        assert len(paths) == len(set(paths)) == len(PHOTOS) + 1  # every photo and the copy
    result = run("search", "바다", "--library", photo_root, "--offset", "10000000000000", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["results"] == []


def test_search_table(photo_root: Path) -> None:
    result = run("search", "소파", "위에", "고양이", "--library", photo_root, "-k", "2")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["#", "score", "path", "size", "date"]
    assert len(rows) == 2 and rows[0].split()[0] == "1"
    assert str(photo_root) in rows[0] or "…" in rows[0]


def test_no_results_says_so(photo_root: Path) -> None:
    result = run("search", "바다", "--library", photo_root, "--threshold", "1.5")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no results for 바다"


def test_offset_and_threshold_flags(photo_root: Path) -> None:
    full = run("search", "산", "--library", photo_root, "-k", "6", "--paths").stdout.splitlines()
    page = run("search", "산", "--library", photo_root, "-k", "3", "--offset", "3", "--paths")
    assert page.stdout.splitlines() == full[3:]


def test_library_is_found_from_the_cwd(photo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(photo_root / "2024" / "바다")
    result = run("search", "파도", "--paths", "-k", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(str(photo_root))


def test_similar_leaves_out_the_image_and_its_duplicates(photo_root: Path) -> None:
    result = run(
        "similar", photo_root / DUPLICATE_OF, "--library", photo_root, "-k", "50", "--json"
    )
    assert result.exit_code == 0, result.output
    paths = {r["path"] for r in json.loads(result.stdout)["results"]}
    assert str(photo_root / DUPLICATE_OF) not in paths
    assert str(photo_root / DUPLICATE) not in paths
    assert len(paths) == len(PHOTOS) - 1


def test_info(photo_root: Path) -> None:
    text = run("info", "--library", photo_root)
    assert text.exit_code == 0, text.output
    assert "flat" in text.stdout and "1 failed" in text.stdout
    out = json.loads(run("info", "--library", photo_root, "--json").stdout)
    assert out["photos"] == len(PHOTOS) + 1 and out["failed"] == 1
    assert out["index_type"] == "flat"


def test_reindex_switches_without_reencoding(photo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(photo_root, root)
    before = run("search", "바다", "--library", root, "--json", "-k", "30").stdout
    result = run("reindex", "--library", root, "--index", "hnsw")
    assert result.exit_code == 0, result.output
    assert "flat -> hnsw" in result.stdout
    assert json.loads(run("info", "--library", root, "--json").stdout)["index_type"] == "hnsw"
    after = run("search", "바다", "--library", root, "--json", "-k", "30").stdout
    assert [r["path"] for r in json.loads(after)["results"]] == [
        r["path"] for r in json.loads(before)["results"]
    ]
    assert (db.default_library_dir(root) / "index-hnsw.faiss").is_file()
    assert not (db.default_library_dir(root) / "index-flat.faiss").exists()


def test_reindex_while_an_indexer_holds_the_lock(photo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(photo_root, root)
    with db.LibraryLock(db.default_library_dir(root)):
        result = CliRunner().invoke(main, ["reindex", "--library", str(root)])
    assert result.exit_code == 1
    assert "already writing" in result.stderr


BAD_INPUTS = {
    "empty query": ["search", ""],
    "only an operator": ["search", "+"],
    "dangling operator": ["search", "바다", "-"],
    "k zero": ["search", "바다", "-k", "0"],
    "k not a number": ["search", "바다", "-k", "many"],
    "negative offset": ["search", "바다", "--offset", "-1"],
    "malformed date": ["search", "바다", "--after", "2023-13-01"],
    "not a date": ["search", "바다", "--before", "next week"],
    "empty date range": ["search", "바다", "--after", "2024", "--before", "2023"],
    "json and paths": ["search", "바다", "--json", "--paths"],
    "no query": ["search"],
    "missing image term": ["search", "nowhere/없는.jpg", "+", "바다"],
    "similar missing image": ["similar", "nowhere.jpg"],
    "folder outside": ["search", "바다", "--under", "/"],
    "minus glued to a term": ["search", "바다", "-사람"],
}


@pytest.mark.parametrize("args", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_and_exit_2(photo_root: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--library", str(photo_root)])
    _assert_one_line_usage_error(result)


def test_unreadable_query_image(photo_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    for args in (["similar", broken], ["search", broken, "+", "바다"]):
        result = CliRunner().invoke(main, [*map(str, args), "--library", str(photo_root)])
        _assert_one_line_usage_error(result)
        assert "cannot read the query image" in result.stderr


def test_unknown_library(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (
        ["search", "바다"],
        ["search", "바다", "--library", str(tmp_path / "x")],
        ["similar", "a.jpg"],
        ["info"],
        ["reindex"],
    ):
        result = CliRunner().invoke(main, args)
        _assert_one_line_usage_error(result)
        assert "library" in result.stderr


def test_library_built_with_another_model(
    photo_root: Path, tiny_checkpoint: Path, tiny_checkpoint_other: Path
) -> None:
    ok = run("search", "바다", "--library", photo_root, "--model", tiny_checkpoint, "-k", "1")
    assert ok.exit_code == 0, ok.output
    result = CliRunner().invoke(
        main,
        ["search", "바다", "--library", str(photo_root), "--model", str(tiny_checkpoint_other)],
    )
    _assert_one_line_usage_error(result)
    assert "built with" in result.stderr


def test_another_hub_model_is_refused_without_downloading_it(
    photo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("download attempted")
    )
    result = CliRunner().invoke(
        main, ["search", "바다", "--library", str(photo_root), "--model", "koclip-large"]
    )
    _assert_one_line_usage_error(result)
    assert "built with" in result.stderr


def _assert_one_line_usage_error(result) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""


def _one_shot(*args: str | Path) -> dict:
    """Run the CLI in a fresh process; its JSON output, and whether it imported JAX."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; from cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n    assert not exit.code, exit\n"
        "print('JAX' if 'jax' in sys.modules else 'NO-JAX')\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=repo),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *results, marker = done.stdout.splitlines()
    return {"json": json.loads("\n".join(results)), "jax": marker == "JAX"}


def _same_results(got: dict, expected: dict) -> None:
    assert [r["path"] for r in got["results"]] == [r["path"] for r in expected["results"]]
    for a, b in zip(got["results"], expected["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_one_shot_queries_run_without_jax(photo_root: Path, tmp_path: Path) -> None:
    """The CLI encodes new texts and query images with the numpy towers: JAX is never
    imported, and the answers are the jitted towers' (the Python API's default)."""
    from PIL import Image

    from search import Searcher

    query = "비 오는 거리의 빨간 우산"  # asked nowhere else: the on-disk text cache misses
    outside = tmp_path / "밖의 사진.png"
    Image.open(photo_root / DUPLICATE_OF).rotate(90).save(outside)
    text = _one_shot("search", query, "--library", photo_root, "-k", "5", "--json")
    image = _one_shot("similar", outside, "--library", photo_root, "-k", "5", "--json")
    assert not text["jax"] and not image["jax"]
    with Searcher(photo_root) as s:
        _same_results(text["json"], s.text(query, k=5).to_json())
        _same_results(image["json"], s.image(outside, k=5).to_json())
