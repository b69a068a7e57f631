"""The CLI's and the Python API's edges: each bad input is one clear line (exit 2) or a domain
error, never a traceback or a misleading message.

A query image that is a device, a FIFO, a folder or a socket; text that is not valid Unicode;
a batch larger than the data; a hub model neither cached nor downloadable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import db
from cli.main import main
from search import QueryError, QueryImageError, Searcher
from search.encode import combine
from tests.search_fixtures import index_folder, indexed_photos, one_line_error

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return indexed_photos(tmp_path_factory, tiny_checkpoint)


def _invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- query images that are not regular files ------------------------------------------------


def _unblock_later(fifo: Path, seconds: float = 10.0) -> None:
    """Should a regression open the FIFO for reading, give it a writer (so it sees EOF)
    instead of letting the test hang."""

    def writer() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader (ENXIO): nobody is waiting on it, as it should be
                time.sleep(0.2)

    threading.Thread(target=writer, daemon=True).start()


@pytest.fixture
def specials(tmp_path: Path):
    """{kind: path} of files that are not regular files, and the words each must be called."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    _unblock_later(fifo)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    sock_path = tmp_path / "s.jpg"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    out = {
        "fifo": (fifo, "not a regular file"),
        "socket": (sock_path, "not a regular file"),
        "folder": (folder, "a folder, not an image"),
    }
    if Path("/dev/zero").exists():
        out["device"] = (Path("/dev/zero"), "not a regular file")
    yield out
    server.close()


def test_similar_names_what_a_non_regular_file_is(photo_root: Path, specials) -> None:
    for kind, (path, words) in specials.items():
        line = one_line_error(_invoke("similar", path, "--library", photo_root))
        assert words in line and "no such file" not in line, (kind, line)
    fifo, words = specials["fifo"]
    line = one_line_error(_invoke("search", fifo, "+", "바다", "--library", photo_root))
    assert words in line


def test_python_api_refuses_non_regular_query_images(photo_root: Path, specials) -> None:
    with Searcher(photo_root) as searcher:
        for path, words in specials.values():
            with pytest.raises(QueryImageError, match=words):
                searcher.image(path)
        with pytest.raises(QueryImageError, match="no such file"):
            searcher.image(photo_root / "nowhere.jpg")


# -- text that cannot be searched -----------------------------------------------------------


@pytest.mark.parametrize("query", ["\udcff바다", "바다\ud800"])
def test_undecodable_argv_text_is_one_line(photo_root: Path, query: str) -> None:
    # Bytes that are not UTF-8 reach Python's argv as lone surrogates.
    line = one_line_error(_invoke("search", query, "--library", photo_root))
    assert "not valid Unicode" in line


def test_python_api_refuses_nul_and_surrogates(photo_root: Path) -> None:
    with Searcher(photo_root) as searcher:
        for text in ("바다\0", "\ud800"):
            with pytest.raises(QueryError):
                searcher.text(text)
            with pytest.raises(QueryError):
                searcher.compose(f"{text} + 노을")
        for option in ("under", "after", "before"):
            with pytest.raises(QueryError, match=option):
                searcher.text("바다", **{option: "2023\0"})


def test_huge_weights_do_not_overflow_the_composition() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 8)).astype(np.float32)
    with np.errstate(all="raise"):
        huge = combine([1e30, 1e29], vectors)
        plain = combine([1.0, 0.1], vectors)
    np.testing.assert_allclose(huge, plain, atol=1e-6)


# -- train: a batch larger than the data ----------------------------------------------------


def _captions(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (32, 32), (50 * i % 256, 90, 200)).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "captions": ["바다"]}, ensure_ascii=False))
    path = folder / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_refuses_a_batch_larger_than_the_data_before_loading_a_model(tmp_path: Path) -> None:
    captions = _captions(tmp_path / "data", 3)
    # No model of that name exists: the refusal comes before any model is looked at.
    args = ["train", captions, "--images", tmp_path / "data", "--from", "no-such-model"]
    line = one_line_error(_invoke(*args, "--out", tmp_path / "out", "--batch-size", "8"))
    assert "--batch-size 8" in line and "3 training images" in line, line
    assert not (tmp_path / "out").exists()

    line = one_line_error(
        _invoke(*args, "--out", tmp_path / "o2", "--batch-size", "3", "--val-split", "0.5")
    )
    assert "1 training image" in line and "held out" in line, line


def test_train_api_raises_a_train_error_for_a_batch_too_large(tmp_path: Path) -> None:
    from train import TrainDataError, TrainError, TrainOptions, train

    captions = _captions(tmp_path / "data", 2)
    with pytest.raises(TrainDataError, match="larger than the 2 training images") as caught:
        train(captions, tmp_path / "data", "no-such-model", tmp_path / "out", TrainOptions())
    assert isinstance(caught.value, TrainError)


def test_a_run_too_short_to_time_shows_no_zero_rate() -> None:
    from train import TrainSummary

    summary = TrainSummary(Path("out"), "m", 1, 1, 1, 0, 4, 4, 0, 2.0, 0.0)
    assert "img/s" not in summary.to_text()
    assert "(2.5 img/s)" in replace(summary, images_per_sec=2.5).to_text()


# -- the hub out of reach -------------------------------------------------------------------


def _cli_process(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, offline, with an empty Hugging Face cache."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        KOCLIP_CACHE_DIR=str(tmp_path / "koclip-cache"),
    )
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    script = "import sys; from cli.main import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )


def _assert_names_the_flag(done: subprocess.CompletedProcess, flag: str) -> None:
    lines = done.stderr.strip().splitlines()
    # One line: no retries logged, as there is no network attempt at all.
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "HF_HUB_OFFLINE" in lines[0], lines
    assert f"{flag} DIR" in lines[0], lines


@pytest.mark.slow
def test_offline_without_cached_weights_names_the_model_flag(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(photos / "a.jpg")
    _assert_names_the_flag(
        _cli_process(tmp_path, "index", photos, "--model", "koclip-base"), "--model"
    )

    # A library made with koclip-base (its manifest says so) searched with no weights cached.
    built = tmp_path / "built"
    built.mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(built / "a.jpg")
    library = index_folder(built, tiny_checkpoint)
    with db.Library.open(library, readonly=False) as lib, lib.session() as s, s.begin():
        lib.set_manifest(s, replace(lib.manifest(s), model_id="koclip-base"))
    done = _cli_process(tmp_path, "search", "바다", "--library", built, "--model", "koclip-base")
    _assert_names_the_flag(done, "--model")

    captions = _captions(tmp_path / "data", 2)
    done = _cli_process(
        tmp_path, "train", captions, "--images", tmp_path / "data", "--from", "koclip-base",
        "--out", tmp_path / "out", "--batch-size", "2",
    )  # fmt: skip
    _assert_names_the_flag(done, "--from")


def test_unreachable_hub_names_the_model_flag(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    import koclip.checkpoints.hub

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("connection error and nothing cached")

    monkeypatch.setattr(koclip.checkpoints.hub, "_from_hub_cache", lambda *a: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as s:  # a closed loopback port: the hub "cannot be reached"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(photos / "a.jpg")
    line = one_line_error(_invoke("index", photos, "--model", "koclip-base"), 1)
    assert "cannot be reached" in line and "--model DIR" in line, line


def test_help_lists_commands_in_the_order_of_the_work_whole_and_keeps_examples_apart():
    from click.testing import CliRunner

    from cli import main
    from cli.main import COMMANDS

    runner = CliRunner()
    top = runner.invoke(main, ["--help"], terminal_width=80).output
    listed = [line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()]
    assert listed[:4] == ["index", "search", "similar", "serve"]
    assert set(listed) == set(COMMANDS) and "..." not in top.split("Commands:")[1]
    for name in COMMANDS:
        text = runner.invoke(main, [name, "--help"], terminal_width=80).output
        assert "None]" not in text, (name, text)
        # Each example stays on its own line (click re-wraps a paragraph without \b).
        examples = [line.strip() for line in text.splitlines() if "koclip-search " in line]
        assert all(line.count("koclip-search ") == 1 for line in examples), (name, examples)
