"""End to end on real data, offline: train, index, search.

scikit-learn's handwritten digits (real scans, 8x8) are captioned in Korean, a tiny KoCLIP is
trained on them from random weights with `koclip-search train`, the held-out digits are indexed
by the real indexer and searched with `search.Searcher`: every digit's text queries must find
that digit (precision@10 >= 0.8) while the untrained model stays near chance (0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from koclip.testing_digits import TRAIN_PER_DIGIT, Digits, phrasings, write_digits

pytestmark = pytest.mark.slow

K = 10


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """Training images + captions, held-out photos with their labels, an untrained checkpoint."""
    return write_digits(tmp_path_factory.mktemp("digits"))


def precision_at_k(library: Path, labels: dict[str, int]) -> dict[tuple[int, str], float]:
    """Precision@K of every digit's phrasings, searched as a user would (prompt on)."""
    from search import Searcher

    out = {}
    with Searcher(library) as searcher:
        for digit in range(10):
            queries = phrasings(digit)
            for query, results in zip(queries, searcher.texts(queries, k=K), strict=True):
                assert len(results) == K
                hits = [labels[hit.path.name] == digit for hit in results]
                out[digit, query] = float(np.mean(hits))
    return out


def index(photos: Path, library: Path, model: Path) -> Path:
    """The real indexer, into a library of its own (one per model)."""
    from indexer import IndexOptions, index_photos

    summary = index_photos(
        photos, IndexOptions(library=library, model=str(model), workers=2, batch_size=32)
    )
    assert summary.new == len(list(photos.iterdir())) and not summary.failures
    return library


def test_trained_model_finds_every_digit(digits: Digits) -> None:
    from cli import main

    out = digits.root / "trained"
    args = [
        "train", str(digits.captions), "--images", str(digits.train_dir),
        "--from", str(digits.untrained), "--out", str(out),
        "--epochs", "10", "--batch-size", "32", "--lr", "4e-3", "--weight-decay", "0.01",
        "--warmup-steps", "0.1", "--max-length", "16", "--prompt", "--seed", "0",
        "--workers", "2", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["steps"] == summary["total_steps"] == 10 * (10 * TRAIN_PER_DIGIT // 32)
    losses = [e["loss"] for e in summary["history"]]
    assert losses[-1] < 0.6 * losses[0]

    library = index(digits.photos, digits.root / "lib-trained", out)
    precision = precision_at_k(library, digits.labels)
    weak = {q: p for q, p in precision.items() if p < 0.8}
    assert not weak, f"precision@{K} below 0.8: {weak}"


def test_untrained_model_is_near_chance(digits: Digits) -> None:
    library = index(digits.photos, digits.root / "lib-untrained", digits.untrained)
    precision = precision_at_k(library, digits.labels)
    assert np.mean(list(precision.values())) < 0.3  # chance is 0.1
