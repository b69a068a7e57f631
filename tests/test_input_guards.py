"""Numbers that are not numbers: nan, inf and overflowing literals are refused with a message.

Every way in (CLI options, query weights, the Python API, the web's JSON) says which value is
wrong and why: CLI exit 2 with one line, the web a 4xx JSON error, the Python API an exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import db
from cli.main import main
from indexer import IndexOptions
from search import QueryError, Searcher, Term
from tests.search_fixtures import indexed_photos
from web import create_app

NOT_FINITE = ["nan", "inf", "-inf", "1e309"]


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return indexed_photos(tmp_path_factory, tiny_checkpoint)


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, option: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "finite" in result.output and option in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "1e309"])
def test_index_refuses_non_finite_max_megapixels(tmp_path: Path, value: str) -> None:
    assert_refused(run("index", tmp_path, "--max-megapixels", value), "--max-megapixels")
    assert not (tmp_path / db.LIBRARY_DIRNAME).exists()  # refused before anything is made


@pytest.mark.parametrize("value", ["1e308", "100001"])
def test_index_refuses_a_max_megapixels_beyond_any_photo(tmp_path: Path, value: str) -> None:
    result = run("index", tmp_path, "--max-megapixels", value)
    assert result.exit_code == 2, result.output
    assert "--max-megapixels" in result.output and "Traceback" not in result.output
    assert not (tmp_path / db.LIBRARY_DIRNAME).exists()


@pytest.mark.parametrize("value", NOT_FINITE)
def test_search_refuses_non_finite_threshold(photo_root: Path, value: str) -> None:
    result = run("search", "바다", "--library", photo_root, "--threshold", value)
    assert_refused(result, "--threshold")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--lr", "nan"), ("--warmup-steps", "inf"), ("--weight-decay", "inf"), ("--val-split", "nan")],
)
def test_train_refuses_non_finite_numbers(tmp_path: Path, option: str, value: str) -> None:
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image": "a.jpg", "caption": "바다"}\n', encoding="utf-8")
    result = run("train", captions, "--images", tmp_path, "--out", tmp_path / "out", option, value)
    assert_refused(result, option)


def test_python_api_refuses_non_finite_numbers(photo_root: Path) -> None:
    with Searcher(photo_root) as searcher:
        with pytest.raises(QueryError, match="finite"):
            searcher.text("바다", threshold=float("nan"))
        for weight in (float("nan"), float("inf")):
            with pytest.raises(QueryError, match="finite"):
                searcher.compose([Term(weight=weight, text="바다"), Term(text="노을")])
        # A weight too long to be a float is infinite once parsed.
        with pytest.raises(QueryError, match="finite"):
            searcher.compose(f"{'9' * 400}:바다 + 노을")
    for value in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="max_megapixels"):
            IndexOptions(max_megapixels=value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e309"])
def test_web_refuses_non_finite_weights(photo_root: Path, literal: str) -> None:
    body = '{"terms": [{"text": "바다", "weight": WEIGHT}, {"text": "노을"}]}'.replace(
        "WEIGHT", literal
    )
    app = create_app(db.default_library_dir(photo_root), warm=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.post(
            "/api/compose", content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error", "code"}
        response = client.get("/api/search", params={"q": "바다", "threshold": "nan"})
        assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "command",
    [
        ["index", "{root}"],
        ["search", "바다", "--library", "{root}"],
        ["similar", "{root}/a.jpg", "--library", "{root}"],
        ["duplicates", "--library", "{root}"],
        ["info", "--library", "{root}"],
        ["serve", "--library", "{root}", "--port", "0"],
    ],
    ids=lambda c: c[0],
)
def test_a_precision_setting_that_is_none_is_one_line_everywhere(tmp_path, monkeypatch, command):
    """KOCLIP_PRECISION=bogus: every command says so in one line and exits 2 before any work
    (serve never starts to answer each search with a 500)."""
    import uvicorn

    monkeypatch.setenv("KOCLIP_PRECISION", "bogus")
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("must not start"))
    root = tmp_path / "p"
    root.mkdir()
    result = run(*[part.format(root=root) for part in command])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "$KOCLIP_PRECISION is 'bogus'" in lines[0], result.output
    assert not (root / db.LIBRARY_DIRNAME).exists()


def test_a_precision_setting_that_is_none_is_refused_by_the_python_api(monkeypatch):
    from koclip.errors import PrecisionError
    from koclip.names import check_precision

    monkeypatch.setenv("KOCLIP_PRECISION", "bogus")
    with pytest.raises(PrecisionError, match="KOCLIP_PRECISION"):
        check_precision()
    assert check_precision("fp32") == "fp32"  # asked for outright: the setting is not read
    with pytest.raises(PrecisionError, match="the precision asked for is 'fp16'"):
        check_precision("fp16")
