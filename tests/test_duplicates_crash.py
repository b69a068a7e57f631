"""Setting duplicates aside survives kill -9 at any step: no file lost, none doubled, and the
next run finishes or undoes the half-done move so the library matches the files."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

import db
from db.schema import SetAside
from indexer.aside import restore, set_aside
from search.duplicates import DuplicateOptions, find_duplicates
from tests.duplicates_fixtures import frame, scene, write_rendition
from tests.indexer_fixtures import assert_consistent, index, open_lib
from tests.process_fixtures import kill_at_marker

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Runs set_aside (or restore) and stops for good at the `stop_at`-th step: each move has three
# (after the link, after the unlink, before the row moves to the journal's "aside" state).
SCRIPT = """
import os, sys, time
from pathlib import Path
import indexer.aside as aside
mode, library, dest, stop_at, marker, *ids = sys.argv[1:]
steps = [0]

def pause():
    steps[0] += 1
    if steps[0] == int(stop_at):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)

real_fsync, real_settle, real_back = aside._fsync_dir, aside._settle_moving, aside._settle_restoring
aside._fsync_dir = lambda p: (real_fsync(p), pause())
aside._settle_moving = lambda lib, pid: (pause(), real_settle(lib, pid))
aside._settle_restoring = lambda lib, pid: (pause(), real_back(lib, pid))
if mode == "aside":
    aside.set_aside(Path(library), [int(i) for i in ids], Path(dest))
else:
    aside.restore(Path(library))
"""
KILL_SEED = int(os.environ.get("KILL_SEED", "1414"))
N_SCENES = 4


def _library(tmp_path: Path, ckpt: Path) -> tuple[Path, Path, dict[str, bytes]]:
    root = tmp_path / "photos"
    for k in range(N_SCENES):
        original = frame(scene(40 + k))
        path = root / f"d{k}" / "big.jpg"
        path.parent.mkdir(parents=True)
        original.save(path, "JPEG", quality=92)
        write_rendition(original, "resized", root / f"d{k}" / "small.jpg")
    index(root, ckpt)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.jpg")}
    return root, db.default_library_dir(root), files


def _run_and_kill(args: list[str], marker: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args, *[]],
        cwd=REPO,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    kill_at_marker(proc, marker, within=60, never="never reached the stop point")


def _check(root: Path, review: Path, lib_dir: Path, files: dict[str, bytes]) -> None:
    """Each file at exactly one place with its bytes; the library agrees with the files."""
    for rel, data in files.items():
        here, there = root / rel, review / rel
        assert here.exists() != there.exists(), rel
        assert (here if here.exists() else there).read_bytes() == data
    with open_lib(root, lib_dir) as lib:
        with lib.session() as s, s.begin():
            journal = {r.path: r.state for r in s.scalars(select(SetAside))}
            photos = set(s.scalars(select(db.Photo.path)))
        for rel in files:
            if (root / rel).exists():
                assert rel in photos and rel not in journal, rel
            else:
                assert journal.get(rel) == "aside" and rel not in photos, rel


def _extras(lib_dir: Path) -> list[str]:
    with db.Library.open(lib_dir) as lib:
        groups = find_duplicates(lib, DuplicateOptions(kind="same"))
    return [str(p.id) for g in groups for p in g.extras]


@pytest.mark.parametrize("round_", range(3))
def test_kill_during_set_aside_and_restore(tmp_path: Path, tiny_checkpoint: Path, round_) -> None:
    root, lib_dir, files = _library(tmp_path, tiny_checkpoint)
    review = tmp_path / "review"
    extras = _extras(lib_dir)
    assert len(extras) == N_SCENES
    rng = random.Random(KILL_SEED + round_)
    stop = rng.randint(1, 3 * len(extras))
    _run_and_kill(
        ["aside", str(lib_dir), str(review), str(stop), str(tmp_path / "m1"), *extras],
        tmp_path / "m1",
    )
    with open_lib(root, lib_dir) as lib:  # readers work on the half-done state
        find_duplicates(lib, DuplicateOptions())
    set_aside(lib_dir, [int(i) for i in extras], review)  # finishes what was started
    _check(root, review, lib_dir, files)
    assert not any((root / r).exists() for r in files if r.endswith("small.jpg"))
    with open_lib(root, lib_dir) as lib:
        assert_consistent(lib)
    stop = rng.randint(1, 3 * len(extras))
    _run_and_kill(
        ["restore", str(lib_dir), str(review), str(stop), str(tmp_path / "m2")], tmp_path / "m2"
    )
    restore(lib_dir)
    _check(root, review, lib_dir, files)
    assert all((root / r).exists() for r in files)
    with open_lib(root, lib_dir) as lib:
        assert_consistent(lib)
    assert index(root, tiny_checkpoint).new == 0  # nothing to encode again
