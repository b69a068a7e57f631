"""Big-library benchmark (issue 13): ivf-pq with exact re-ranking against flat, same run.

    .venv/bin/python bench/bigindex.py --n 1000000          # ~10 min on 2 cores
    .venv/bin/python bench/bigindex.py --n 200000 --r 2,5,10
    .venv/bin/python bench/bigindex.py --n 2000000 --r 10 --nprobe 64,128,256 --nlist 4096
    .venv/bin/python bench/bigindex.py --n 1000000 --r 10 --spread cone

A synthetic library of `--n` 512-d clustered unit vectors (bench._common.clustered, CLIP-like
spread) is written into SQLite once, under --work. Each index type is then built from the
library as `reindex` builds it (sample-trained, vectors streamed from SQLite) in a child
process, whose peak RSS is the build's; a second child loads the saved file and answers
single queries through search.engine.top_k, re-rank reads included. Recall@10 is against
the flat index's exact answers from the same run.

`--nprobe` adds rows at fixed probe counts (the rule's own is always measured); `--nlist`
builds further ivf-pq indexes with that many lists, to see a bigger library's lists on this
one (n / nlist vectors a list, as the rule gives nlist**2 / 8 photos). `--spread cone` swaps
the clustered vectors for `cone`'s anisotropic ones (a real model's shape).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    DIM,
    Table,
    clustered,
    load_average,
    load_line,
    peak_rss_mb,
    repo_env,
    rss_bytes,
    unit_rows,
    write_library,
)

CHUNK = 20_000

# `cone`: what CLIP-like image embeddings look like, as opposed to `clustered`'s even clusters
# in a 64-d subspace. Real ones share a strong mean direction (the "cone": two random photos'
# cosine is ~0.5, not ~0), their variance decays smoothly over the dimensions (a low
# effective rank, no hard subspace), and a photo collection's topics are very uneven in size
# (a few hold most photos: children, pets, food), which makes some IVF lists crowded.
CONE_TOPICS = 2048  # topic centres, drawn with Zipf popularity (exponent CONE_ZIPF)
CONE_ZIPF = 1.0
CONE_DECAY = 1.0  # variance of the i-th principal direction ~ i ** -CONE_DECAY
CONE_MEAN = 1.0  # weight of the shared direction against a residual of unit norm
CONE_SPREAD = 0.6  # a photo's offset from its topic centre, relative to the centres' spread


def cone(n: int, seed: int, queries: bool = False) -> np.ndarray:
    """Anisotropic unit vectors (see CONE_*): normalise(CONE_MEAN * mean + L (topic + noise)),
    L a random rotation scaled by the decaying spectrum so the residual has unit norm.

    Queries come from the same topics, popularity-weighted, but sit in their own cone (a mean
    direction orthogonal to the photos', as CLIP's text embeddings sit across the modality
    gap), so a query's cosine with its best photos is ~0.3, as with CLIP text queries.
    """
    fixed = np.random.default_rng(4321)
    spectrum = np.arange(1, DIM + 1, dtype=np.float64) ** -CONE_DECAY
    rotation = np.linalg.qr(fixed.standard_normal((DIM, DIM)))[0]
    scale = (rotation * np.sqrt(spectrum / spectrum.sum())).T.astype(np.float32)
    centres = fixed.standard_normal((CONE_TOPICS, DIM)).astype(np.float32)
    means = np.linalg.qr(fixed.standard_normal((DIM, 2)))[0].T.astype(np.float32)
    popularity = np.arange(1, CONE_TOPICS + 1, dtype=np.float64) ** -CONE_ZIPF
    popularity /= popularity.sum()
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        z = centres[rng.choice(CONE_TOPICS, m, p=popularity)]
        z = (z + CONE_SPREAD * rng.standard_normal((m, DIM), dtype=np.float32)) / np.sqrt(
            1 + CONE_SPREAD**2
        )
        out[lo : lo + m] = unit_rows(CONE_MEAN * means[1 if queries else 0] + z @ scale)
    return out


SPREADS = {"clustered": clustered, "cone": cone}


def spread_stats(make, n: int = 20_000) -> str:
    """Mean cosine of two random photos, their effective rank (participation ratio of the
    covariance's eigenvalues) and a query's cosine with its nearest photo."""
    x = make(n, seed=99)
    q = make(200, seed=98, queries=True)
    pairs = float(np.mean(np.sum(x[: n // 2] * x[n // 2 :], axis=1)))
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    rank = float(eig.sum() ** 2 / (eig**2).sum())
    best = float(np.mean(np.max(q @ x.T, axis=1)))
    return f"pair cosine {pairs:.2f}, effective rank {rank:.0f}, query's best cosine {best:.2f}"


def make_library(work: Path, n: int, spread: str = "clustered") -> Path:
    """A library of `n` vectors of `spread` (written once, streamed: never all in RAM)."""
    import db
    from db.testing import synthetic_manifest

    name = f"big-{n}" if spread == "clustered" else f"big-{n}-{spread}"
    library_dir = work / name / db.LIBRARY_DIRNAME
    if not (library_dir / "manifest.json").is_file():
        chunks = (SPREADS[spread](min(CHUNK, n - lo), seed=lo) for lo in range(0, n, CHUNK))
        write_library(library_dir, synthetic_manifest(DIM), chunks, build_index=False)
    return library_dir


# -- children ------------------------------------------------------------------------------------


def child_build(library_dir: str, kind: str, nlist: int = 0) -> dict:
    """Build `kind` from the library as `reindex` does, save it: seconds (training apart)
    and peak RSS. Also written beside the library as <kind>-build.json. `nlist` > 0 forces
    the list count (the file is then index-<kind>-<nlist>.faiss)."""
    import db
    from db import vectors
    from search import ann

    if nlist:
        vectors.ivf_nlist = lambda n: nlist
    build = vectors.build_index
    marks: dict[str, float] = {}

    def timed_build(kind, dim, chunks, *args, **kwargs):  # the training ends at the 1st chunk
        def marked():
            marks["trained"] = time.perf_counter()
            yield from chunks

        return build(kind, dim, marked(), *args, **kwargs)

    vectors.build_index = timed_build
    t = time.perf_counter()
    with db.LibraryLock(Path(library_dir)), db.Library.create(Path(library_dir)) as lib:
        index = lib.build_index(kind)
        ann.tune(index)
        added = time.perf_counter()
        path = _index_file(lib, kind, nlist)
        vectors.write_index(index, path)
    result = {
        "build_s": time.perf_counter() - t,
        "train_s": marks.get("trained", t) - t,
        "add_s": added - marks.get("trained", t),
        "peak_mb": peak_rss_mb(),
        "file_bytes": path.stat().st_size,
    }
    (path.parent.parent / f"{path.stem}-build.json").write_text(json.dumps(result))
    return result


def _index_file(lib, kind: str, nlist: int) -> Path:
    path = lib.index_path(kind)
    return path.with_name(f"{path.stem}-{nlist}.faiss") if nlist else path


def child_query(
    library_dir: str, kind: str, n_queries: int, factor: int, spread: str, nlist: int, nprobe: int
) -> dict:
    """Load `kind`'s file cold and answer single queries through search.engine.top_k
    (`nprobe` > 0: that many lists probed instead of the rule's)."""
    import db
    from db import vectors
    from search import ann
    from search.engine import LoadedIndex, top_k
    from search.filters import Filter

    ann.RERANK_FACTOR, ann.RERANK_MIN = factor, 0  # k x r candidates exactly, for the table
    queries = SPREADS[spread](n_queries, seed=7, queries=True)
    lib = db.Library.open(Path(library_dir))
    before = rss_bytes()
    t = time.perf_counter()
    loaded = LoadedIndex.read(_index_file(lib, kind, nlist), DIM)
    load_s = time.perf_counter() - t
    inner = vectors.inner_index(loaded.index)
    if nprobe and hasattr(inner, "nprobe"):
        inner.nprobe = nprobe
    resident = rss_bytes() - before
    loaded = loaded.caught_up(lib)  # nothing to add: the file is whole
    found, lat = [], []
    with lib.session() as s, s.begin():
        top_k(loaded, s, Filter(), queries[:1], 10)  # first touch of SQLite's pages
        for i in range(n_queries):
            t = time.perf_counter()
            _, ids = top_k(loaded, s, Filter(), queries[i : i + 1], 10)
            lat.append(time.perf_counter() - t)
            found.append(ids[0].tolist())
    return {
        "load_s": load_s,
        "resident_bytes": resident,
        "counted_bytes": loaded.resident_bytes(),
        "p50_ms": 1000 * statistics.median(lat),
        "best_ms": 1000 * min(lat),
        "nlist": getattr(inner, "nlist", 0),
        "nprobe": getattr(inner, "nprobe", 0),
        "found": found,
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env=repo_env(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/koclip-bigindex-bench"))
    parser.add_argument("--n", type=int, default=1_000_000, help="photos in the library")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--r", default="5,10,20", help="re-rank factors to measure")
    parser.add_argument("--kinds", default="flat,ivf-pq", help="flat first: it is the truth")
    parser.add_argument("--spread", choices=sorted(SPREADS), default="clustered")
    parser.add_argument(
        "--nprobe", default="", help="fixed probe counts to measure ivf-pq at (first --r)"
    )
    parser.add_argument("--nlist", default="", help="further ivf-pq builds with these list counts")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "build":
            result = child_build(rest[0], rest[1], int(rest[2]))
        else:
            result = child_query(
                rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4], int(rest[5]), int(rest[6])
            )
        print(json.dumps(result))
        return

    table = Table()
    n = args.n
    t = time.perf_counter()
    library_dir = make_library(args.work, n, args.spread)
    print(f"library of {n:,} ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    db_bytes = (library_dir / "library.sqlite3").stat().st_size
    table.add(f"library.sqlite3, {n:,} photos", f"{db_bytes / n:,.0f} B/photo on disk")
    table.add(f"{args.spread} vectors", spread_stats(SPREADS[args.spread]))
    factors = [int(r) for r in args.r.split(",")]
    probes = [int(p) for p in args.nprobe.split(",") if p]
    builds = [(kind, 0) for kind in args.kinds.split(",")]
    builds += [("ivf-pq", int(nl)) for nl in args.nlist.split(",") if nl]
    truth = None
    for kind, nlist in builds:
        name = kind + (f" (nlist {nlist})" if nlist else "")
        built = run_child("build", str(library_dir), kind, str(nlist))
        table.add(
            f"{name}: build from SQLite",
            f"{built['build_s']:.0f} s (train {built.get('train_s', 0):.0f} s, add "
            f"{built.get('add_s', 0):.0f} s), peak RSS {built['peak_mb']:,.0f} MB",
            f"file {built['file_bytes'] / n:,.1f} B/photo",
        )
        runs = [(1, 0)]
        if kind == "ivf-pq":
            runs = [(f, 0) for f in (factors[:1] if nlist else factors)]
            runs += [(factors[0], p) for p in probes]
        for factor, nprobe in runs:
            got = run_child(
                "query", str(library_dir), kind, str(args.queries), str(factor), args.spread,
                str(nlist), str(nprobe),
            )  # fmt: skip
            tag = name
            if kind == "ivf-pq":
                tag += f", r={factor}, nprobe {got['nprobe']}/{got['nlist']}"
            if truth is None:
                truth = got["found"]
            recall = float(
                np.mean(
                    [len(set(f) & set(e)) / 10 for f, e in zip(got["found"], truth, strict=True)]
                )
            )
            table.add(f"{tag}: recall@10 vs exact", f"{recall:.3f}", ">= 0.95", recall >= 0.95)
            table.add(
                f"{tag}: single query p50 (re-rank reads included)",
                f"{got['p50_ms']:.2f} ms (best {got['best_ms']:.2f})",
                "<= 20 ms",
                got["p50_ms"] <= 20,
            )
            print(
                f"{tag}: recall {recall:.3f}, p50 {got['p50_ms']:.2f} ms, load "
                f"{load_average():.1f}",
                file=sys.stderr,
            )
        table.add(
            f"{name}: resident after load",
            f"{got['resident_bytes'] / n:,.1f} B/photo (RSS growth), "
            f"{got['counted_bytes'] / n:,.1f} counted by info",
            f"cold load {got['load_s']:.2f} s",
        )
    print(
        f"\nbench/bigindex.py, {n:,} x {DIM}-d {args.spread} vectors ({load_line()}), "
        f"{datetime.now():%Y-%m-%d}\n"
    )
    table.print()


if __name__ == "__main__":
    main()
