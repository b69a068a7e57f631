"""Shared measures of the precision tests: query texts, agreement, search overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from koclip.testing import KOREAN_VOCAB, build_tiny_checkpoint


def realistic_checkpoint(factory: pytest.TempPathFactory, kind: str, seed: int, tag: str) -> Path:
    """A tiny checkpoint whose kernels keep activation scale, as trained towers do."""
    directory = factory.mktemp(f"tiny-{kind}-realistic-{tag}")
    return build_tiny_checkpoint(directory, vision=kind, seed=seed, realistic=True)


def queries(n: int, seed: int = 0) -> list[str]:
    """`n` short Korean queries of 1-4 words from the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    words = [w for w in KOREAN_VOCAB if not w.startswith("##") and len(w) > 1]
    return [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(n)]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))  # both are unit rows


def top10_overlap(library_a: np.ndarray, library_b: np.ndarray, q: np.ndarray) -> float:
    """Mean |top-10 of a ∩ top-10 of b| / 10 over the queries `q` (brute-force inner product)."""
    a = np.argsort(-(q @ library_a.T), axis=1)[:, :10]
    b = np.argsort(-(q @ library_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))
