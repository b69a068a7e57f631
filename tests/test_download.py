"""`koclip-search download`: a named model from the Hugging Face cache into a folder to carry,
used offline with --model DIR. Never touches the network: the cache is laid out here, in the
hub's own layout (refs/main naming a snapshot), and the hub is off."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.indexer_fixtures import write_jpeg


def _cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """`files` as the hub cache holds `repo`'s snapshot of them."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs/main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)


def _cli(env_cache: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(env_cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_download_to_a_folder_that_runs_offline(tmp_path, tiny_checkpoint):
    cache = tmp_path / "cache"
    # Nothing cached and the hub off: one line, no folder made.
    out = _cli(cache, "download", "koclip-base", "--to", tmp_path / "carry")
    assert out.returncode != 0
    assert [line for line in out.stderr.splitlines() if line.strip()] == [
        line for line in out.stderr.splitlines() if line.startswith("Error: ")
    ], out.stderr
    assert "HF_HUB_OFFLINE" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "carry").exists()

    _cache(
        cache,
        "koclip/koclip-base",
        {n: tiny_checkpoint / n for n in ("config.json", "flax_model.msgpack")},
    )
    _cache(cache, "klue/roberta-large", {"vocab.txt": tiny_checkpoint / "vocab.txt"})
    out = _cli(cache, "download", "koclip-base", "--to", tmp_path / "carry", "--json")
    assert out.returncode == 0, out.stderr
    assert "already in the Hugging Face cache" in out.stderr
    folder = Path(json.loads(out.stdout)["folder"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "flax_model.msgpack",
        "vocab.txt",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".carry.")]  # no scratch
    # Again: the same folder, nothing to do.
    assert _cli(cache, "download", "koclip-base", "--to", folder).returncode == 0

    # On the "offline machine": an empty cache, the folder alone.
    write_jpeg(tmp_path / "photos/a.jpg", 1)
    out = _cli(tmp_path / "empty", "index", tmp_path / "photos", "--model", folder, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["new"] == 1


def test_download_names_the_models_it_knows(tmp_path):
    out = _cli(tmp_path, "download", "koclip-huge")
    assert out.returncode == 2 or out.returncode == 1
    assert "koclip-base" in out.stderr and "Traceback" not in out.stderr
