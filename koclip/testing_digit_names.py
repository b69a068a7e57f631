"""File names for the held-out digits (koclip.testing_digits), to measure how the words of a
photo's name help a search (search's fusion of the embedding ranking with the photos' words).

Three ways of naming the same scans:

- "named": the name says the digit in the words a query uses (손글씨_일곱_0007.png): the
  names carry the answer (for the digits whose Korean name has two syllables or more:
  the words looked up have at least two characters);
- "random": camera-style names (IMG_4821.png): the names say nothing;
- "misleading": named for another digit, chosen at random: the names lie.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from koclip.testing_digits import NATIVE, phrasings

SCHEMES = ("named", "random", "misleading")
K = 10  # precision@K
QUERIES = [(d, q) for d in range(10) for q in phrasings(d)]  # (digit, query)
# The queries whose words a name can hold: the Korean digit names of two syllables or more.
WORDY = [q for d, q in QUERIES if len(NATIVE[d]) >= 2 and q.endswith(NATIVE[d])]


def precision_at_k(searcher: Any, labels: dict[str, int], *, literal: bool) -> dict[str, float]:
    """query -> precision@K of each of QUERIES in `searcher` (a search.Searcher over scans
    named by `name_digits`, whose file name -> digit is `labels`); `literal` leaves the words
    out (the embedding ranking alone)."""
    found = searcher.texts([q for _, q in QUERIES], k=K, literal=literal)
    return {
        q: float(np.mean([labels[hit.path.name] == d for hit in results]))
        for (d, q), results in zip(QUERIES, found, strict=True)
    }


def name_digits(
    photos: str | Path, labels: dict[str, int], out: str | Path, scheme: str, *, seed: int = 0
) -> dict[str, int]:
    """Copy the held-out scans in `photos` (file name -> digit in `labels`) into `out`, named
    by `scheme`; returns the new file name -> digit."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = rng.permutation(9000)[: len(labels)] + 1000  # distinct 4-digit camera counters
    named: dict[str, int] = {}
    for n, (name, digit) in enumerate(sorted(labels.items())):
        if scheme == "random":
            new = f"IMG_{numbers[n]}.png"
        else:
            said = digit if scheme == "named" else (digit + int(rng.integers(1, 10))) % 10
            new = f"손글씨_{NATIVE[said]}_{n:04d}.png"
        shutil.copyfile(Path(photos) / name, out / new)
        named[new] = digit
    return named
