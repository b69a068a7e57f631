"""The photos' words fused with the embedding ranking, measured on real data (sklearn's digits,
koclip.testing_digits) with the untrained tiny model, whose ranking is near chance: names that
carry the answer must lift precision@10 of the queries naming it, and names that say nothing
must change nothing (bench/fusion.py prints the full table, trained model included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from koclip.testing_digit_names import QUERIES, WORDY, K, name_digits, precision_at_k
from koclip.testing_digits import Digits, write_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return write_digits(tmp_path_factory.mktemp("digits"))


def _library(digits: Digits, scheme: str) -> tuple[Path, dict[str, int]]:
    from indexer import IndexOptions, index_photos

    photos = digits.root / scheme
    labels = name_digits(digits.photos, digits.labels, photos, scheme)
    library = digits.root / f"lib-{scheme}"
    index_photos(
        photos, IndexOptions(library=library, model=str(digits.untrained), workers=2, batch_size=32)
    )
    return library, labels


def _precision(library: Path, labels: dict[str, int], literal: bool) -> dict[str, float]:
    from search import Searcher

    with Searcher(library) as searcher:
        return precision_at_k(searcher, labels, literal=literal)


def test_names_that_carry_the_answer_lift_precision(digits: Digits) -> None:
    library, labels = _library(digits, "named")
    plain = _precision(library, labels, literal=True)
    fused = _precision(library, labels, literal=False)
    for q in WORDY:
        assert fused[q] >= 0.8 > plain[q], (q, fused[q], plain[q])
    assert np.mean(list(fused.values())) > np.mean(list(plain.values()))


def test_names_that_say_nothing_change_nothing(digits: Digits) -> None:
    from search import Searcher

    library, _ = _library(digits, "random")
    queries = [q for _, q in QUERIES]
    with Searcher(library) as searcher:
        plain = searcher.texts(queries, k=K, literal=True)
        fused = searcher.texts(queries, k=K)
    for a, b in zip(plain, fused, strict=True):
        assert [h.photo_id for h in a] == [h.photo_id for h in b]
        assert [h.score for h in a] == [h.score for h in b]
