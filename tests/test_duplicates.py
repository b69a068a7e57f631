"""Duplicate finding: perceptual hashes at index time, the three kinds, the CLI, set-aside."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from search.duplicates import DuplicateOptions, find_duplicates
from tests.duplicates_fixtures import write_set
from tests.indexer_fixtures import index, open_lib

N_SCENES = 40


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """The generated set, indexed once: (root, truth)."""
    root = tmp_path_factory.mktemp("dupes") / "photos"
    truth = write_set(root, N_SCENES)
    copy = root / "copies" / "scene001-copy.jpg"
    copy.parent.mkdir()
    shutil.copy2(root / "scene001" / "original.jpg", copy)
    truth["copies/scene001-copy.jpg"] = "s1"
    index(root, tiny_checkpoint)
    return root, truth


def _pairs(groups, kinds) -> set[tuple[str, str]]:
    out = set()
    for g in groups:
        if g.kind in kinds:
            out |= {
                tuple(sorted(p)) for p in itertools.combinations([x.relpath for x in g.photos], 2)
            }
    return out


def test_same_picture_precision_and_recall(generated) -> None:
    root, truth = generated
    with open_lib(root) as lib:
        groups = find_duplicates(lib, DuplicateOptions())
    found = _pairs(groups, {"identical", "same"})
    true = {
        tuple(sorted(p)) for p in itertools.combinations(truth, 2) if truth[p[0]] == truth[p[1]]
    }
    hits = len(found & true)
    precision, recall = hits / max(1, len(found)), hits / len(true)
    print(f"same picture: precision {precision:.3f}, recall {recall:.3f} over {len(true)} pairs")
    assert precision >= 0.95 and recall >= 0.9, (precision, recall, sorted(found - true)[:5])
