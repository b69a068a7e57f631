"""Duplicate grouping benchmark (issue 14): candidates and grouping over synthetic libraries.

    .venv/bin/python bench/duplicates.py                  # 100k photos
    .venv/bin/python bench/duplicates.py --n 1000000 --before-sample 20000   # 1M (~4 GB of RAM)

No photos and no model: unit vectors (dim 512) in clusters, perceptual hashes and thumbnails
with planted renditions (1 in 10 photos has a near-identical twin: a few hash bits flipped, a
noisy thumbnail, a close vector). Grouping runs the same code as `koclip-search duplicates`
(search.duplicates: k-NN + hash-band candidates, then scoring and union-find). Prints one row
per stage, wall-clock seconds. The two costly stages are timed both ways in the same run: the
k-NN candidates by a FAISS inverted-file search of every photo (before) and list by list
(`inverted_pairs`, now), with the share of the earlier pairs found; the thumbnail alignment
by one `residual` per pair (before) and every pair at once (`residuals`, now), checking that
both decide the same pairs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import load_line  # noqa: E402
from koclip.images.perceptual import THUMB_SIDE, residual, residuals  # noqa: E402
from search import duplicates as dup  # noqa: E402


def synthetic(n: int, dim: int, rng: np.random.Generator) -> tuple[dup.Table, dict[int, bytes]]:
    """A table of n photos; every 10th is a rendition of the one before it."""
    centres = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
    vecs = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)).astype(
        np.float32
    )
    phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    thumbs = rng.integers(0, 256, (n, THUMB_SIDE * THUMB_SIDE), dtype=np.uint8)
    twins = np.arange(1, n, 10)
    vecs[twins] = vecs[twins - 1] + 0.05 * rng.standard_normal((len(twins), dim))
    flips = np.uint64(1) << rng.integers(0, 63, len(twins)).astype(np.uint64)
    phash[twins] = (phash[twins - 1].view(np.uint64) ^ flips).view(np.int64)
    noise = rng.integers(-3, 4, (len(twins), thumbs.shape[1]))
    thumbs[twins] = np.clip(thumbs[twins - 1] + noise, 0, 255).astype(np.uint8)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    table = dup.Table(
        ids=np.arange(1, n + 1, dtype=np.int64),
        phash=phash,
        has_hash=np.ones(n, bool),
        content=np.array([f"h{i}" for i in range(n)], object),
        vectors=vecs,
        pixels=rng.integers(1, 10**7, n),
        sizes=rng.integers(1, 10**7, n),
        taken=np.full(n, np.datetime64("2024-01-01T00:00:00"), "datetime64[s]"),
        paths=np.array([f"p/{i:07d}.jpg" for i in range(n)], object),
    )
    return table, {int(i) + 1: thumbs[i].tobytes() for i in range(n)}


def ivf_pairs_before(vecs: np.ndarray, floor: float, options: dup.DuplicateOptions) -> np.ndarray:
    """The k-NN candidates as `duplicates` found them before (the baseline): a FAISS
    inverted file, every photo searched with nprobe PROBES."""
    import faiss

    n, dim = vecs.shape
    nlist = int(2 * np.sqrt(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
    index.train(vecs[np.sort(sample)])
    index.nprobe = dup.PROBES
    index.add(vecs)
    out = []
    k = min(options.neighbours + 1, n)
    for start in range(0, n, 4096):
        scores, found = index.search(vecs[start : start + 4096], k)
        qi, col = np.nonzero((scores >= floor) & (found >= 0))
        i, j = qi + start, found[qi, col]
        out.append(np.sort(np.stack([i[i != j], j[i != j]], 1), axis=1))
    return np.concatenate(out).astype(np.int64)


def close_pairs(table: dup.Table, pairs: np.ndarray, options: dup.DuplicateOptions) -> np.ndarray:
    """The candidate pairs whose thumbnails get aligned (hashes within same_bits, not identical)."""
    i, j = pairs[:, 0], pairs[:, 1]
    near = dup.hamming(table.phash[i], table.phash[j]) <= options.same_bits
    return pairs[near & (table.content[i] != table.content[j])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--before-sample",
        type=int,
        default=0,
        help="time the per-pair baseline on this many pairs and scale up (0: all of them)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    t = time.perf_counter()
    table, thumbs = synthetic(args.n, args.dim, rng)
    rows.append(("make synthetic library", time.perf_counter() - t, None))
    options = dup.DuplicateOptions()
    t = time.perf_counter()
    old = ivf_pairs_before(table.vectors, min(options.threshold, options.confirm), options)
    before_knn = time.perf_counter() - t
    rows.append((f"k-NN, FAISS IVF search, before ({len(old):,} pairs)", before_knn, None))
    t = time.perf_counter()
    knn = dup._knn_pairs(
        table, options, dup.neighbour_search(table.vectors) if args.n <= dup.EXACT_MAX else None
    )
    rows.append(
        (f"k-NN, list by list, now ({len(knn):,} pairs)", time.perf_counter() - t, before_knn)
    )
    before_set = {tuple(p) for p in old.tolist()}
    same = len({tuple(p) for p in knn.tolist()} & before_set)
    print(f"k-NN pairs of before also found now: {same / max(1, len(before_set)):.4f}")
    t = time.perf_counter()
    bands = dup.band_pairs(table.phash, table.has_hash)
    close = dup.hamming(table.phash[bands[:, 0]], table.phash[bands[:, 1]]) <= options.same_bits
    bands = bands[close]
    rows.append((f"hash-band candidates ({len(bands):,} pairs)", time.perf_counter() - t, None))
    pairs = np.unique(np.concatenate([knn, bands]), axis=0)

    # Thumbnail alignment alone: the baseline (one `residual` call per pair, PIL crops each
    # time, as `duplicates` did before) against every pair at once (`residuals`).
    scored = close_pairs(table, pairs, options)
    sample = scored if not args.before_sample else scored[: args.before_sample]
    t = time.perf_counter()
    before = np.array(
        [
            residual(thumbs[int(a) + 1], thumbs[int(b) + 1], good_enough=options.same_residual / 2)
            for a, b in sample
        ]
    )
    baseline = (time.perf_counter() - t) * len(scored) / max(1, len(sample))
    scaled = "" if len(sample) == len(scored) else f", scaled from {len(sample):,}"
    rows.append((f"align per pair, before ({len(scored):,} pairs{scaled})", baseline, None))
    t = time.perf_counter()
    a = np.stack([np.frombuffer(thumbs[int(x) + 1], np.uint8) for x in scored[:, 0]])
    b = np.stack([np.frombuffer(thumbs[int(x) + 1], np.uint8) for x in scored[:, 1]])
    now = residuals(a, b, good_enough=options.same_residual / 2)
    rows.append(("align all pairs at once, now", time.perf_counter() - t, baseline))
    half = options.same_residual / 2
    for limit in (half, options.same_residual):  # both thresholds decide the same pairs
        assert ((before <= limit) == (now[: len(before)] <= limit)).all()

    t = time.perf_counter()
    groups = dup.group(table, pairs, options, lambda ids: {int(i): thumbs[int(i)] for i in ids})
    rows.append((f"score + group, now ({len(groups):,} groups)", time.perf_counter() - t, None))
    found = sum(1 for kind, g, _ in groups if kind == "same")
    twins = len(range(1, args.n, 10))
    print(
        f"duplicates, {args.n:,} photos, dim {args.dim}; planted twins {twins:,}, "
        f"same-picture groups found {found:,} ({load_line()})"
    )
    print(f"{'stage':<56} {'seconds':>8} {'speed-up':>9}")
    for name, secs, base in rows:
        ratio = f"{base / secs:8.1f}x" if base else ""
        print(f"{name:<56} {secs:8.1f} {ratio:>9}")


if __name__ == "__main__":
    main()
