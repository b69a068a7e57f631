"""One error policy: every command and the web report a domain error by its class's row."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from cli.main import main
from tests.search_fixtures import index_folder, one_line_error

DAMAGE = {
    # What a half-finished download or a stray edit leaves behind; neither is a model mismatch.
    "truncated weights": ("flax_model.msgpack", "corrupt or truncated"),
    "no tokenizer": ("vocab.txt", "tokenizer"),
}


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (40 * i, 200, 90)).save(folder / f"{i}.jpg")
    return folder


def _damage(checkpoint: Path, kind: str) -> None:
    name, _ = DAMAGE[kind]
    path = checkpoint / name
    if name == "vocab.txt":
        path.unlink()
        (checkpoint / "tokenizer_config.json").unlink()
    else:
        path.write_bytes(path.read_bytes()[:64])


@pytest.fixture(scope="module", params=list(DAMAGE))
def damaged(request, tmp_path_factory, tiny_checkpoint: Path) -> tuple[Path, Path, str]:
    """(photo folder, its library's checkpoint, kind): indexed, then the checkpoint damaged."""
    base = tmp_path_factory.mktemp("damaged")
    checkpoint = base / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    photos = _photos(base / "photos")
    index_folder(photos, checkpoint)
    _damage(checkpoint, request.param)
    return photos, checkpoint, request.param


def _invoke(args: list) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_damaged_checkpoint_is_a_model_failure_in_every_command(damaged, tmp_path) -> None:
    photos, checkpoint, kind = damaged
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "".join(
            json.dumps({"image": f"{i}.jpg", "captions": ["초록 사진"]}) + "\n" for i in range(2)
        ),
        encoding="utf-8",
    )
    commands = {
        "search": ["search", "손상된 모델 시험", "--library", photos],
        "index": ["index", _photos(tmp_path / "new"), "--model", checkpoint],
        "eval": ["eval", captions, "--images", photos, "--model", checkpoint],
        "train": [
            "train",
            captions,
            "--images",
            photos,
            "--from",
            checkpoint,
            "--out",
            tmp_path / "o",
            "--batch-size",  # the two images fill one batch: a larger one is refused first
            "2",
        ],
    }
    if kind == "no tokenizer":
        del commands["index"]  # indexing photos needs no tokenizer, and succeeds
    for name, args in commands.items():
        line = one_line_error(_invoke(args), 1)
        assert DAMAGE[kind][1] in line, (name, line)
        assert "built with" not in line and "mismatch" not in line, (name, line)


def test_the_web_reports_a_damaged_checkpoint_as_a_model_error(damaged) -> None:
    from web import create_app

    photos, _, kind = damaged
    app = create_app(photos, warm=False)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        response = c.get("/api/search", params={"q": "손상된 모델 웹 시험"})
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"error", "code"} and body["code"] == "model_error", body
    assert DAMAGE[kind][1] in body["error"]


@pytest.fixture(scope="module")
def photo_library(tmp_path_factory, tiny_checkpoint: Path) -> Path:
    return index_folder(_photos(tmp_path_factory.mktemp("library") / "photos"), tiny_checkpoint)


def test_another_model_is_bad_input_in_every_command(
    photo_library: Path, tiny_checkpoint_other: Path, monkeypatch
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **kw: pytest.fail("must not start"))
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda config: None)
    photos = photo_library.parent
    other = tiny_checkpoint_other
    commands = {
        "search": ["search", "바다", "--library", photos, "--model", other],
        "serve": ["serve", "--library", photos, "--model", other, "--port", "0"],
        "index": ["index", photos, "--model", other],
    }
    for name, args in commands.items():
        line = one_line_error(_invoke(args), 2)
        assert re.search("built with|made with|--rebuild", line), (name, line)


def test_no_library_is_bad_input_in_every_command(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    for args in (["search", "바다"], ["similar", "a.jpg"], ["info"], ["reindex"]):
        line = one_line_error(_invoke([*args, "--library", nowhere]), 2)
        assert "no library" in line, (args, line)


def test_every_error_the_web_can_send_has_text_in_the_page() -> None:
    import db
    import koclip
    import search
    import web
    from koclip.errors import KoclipSearchError

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for c in cls.__subclasses__() for s in subclasses(c))]

    served = {f"{m.__name__}.errors" for m in (db, koclip, search, web)}
    codes = {c.code for c in subclasses(KoclipSearchError) if c.__module__ in served}
    page = (Path(web.__file__).parent / "static" / "app.js").read_text(encoding="utf-8")
    known = set(re.findall(r"^\s+(\w+): \[", page, re.MULTILINE))
    assert codes <= known, codes - known
