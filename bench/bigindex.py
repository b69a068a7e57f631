"""Big-library benchmark (issue 13): ivf-pq with exact re-ranking against flat, same run.

    .venv/bin/python bench/bigindex.py --n 1000000          # ~10 min on 2 cores
    .venv/bin/python bench/bigindex.py --n 200000 --r 2,5,10

A synthetic library of `--n` 512-d clustered unit vectors (bench/search.py's CLIP-like
spread) is written into SQLite once, under --work. Each index type is then built from the
library as `reindex` builds it (sample-trained, vectors streamed from SQLite) in a child
process, whose peak RSS is the build's; a second child loads the saved file and answers
single queries through search.engine.top_k, re-rank reads included. Recall@10 is against
the flat index's exact answers from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.search import DIM, Table, clustered  # noqa: E402

CHUNK = 20_000


def make_library(work: Path, n: int) -> Path:
    """A library of `n` clustered vectors (written once, streamed: never all in RAM)."""
    from sqlalchemy import insert

    import db

    library_dir = work / f"big-{n}" / db.LIBRARY_DIRNAME
    if (library_dir / "manifest.json").is_file():
        return library_dir
    start = datetime(2015, 1, 1)
    with db.LibraryLock(library_dir), db.Library.reset(library_dir) as lib:
        with lib.session() as s, s.begin():
            lib.set_manifest(
                s,
                db.Manifest(
                    model_id="synthetic",
                    fingerprint="0",
                    dim=DIM,
                    preprocess_version="bench",
                    index_type="flat",
                    photo_root="..",
                ),
            )
            for lo in range(0, n, CHUNK):
                vecs = clustered(min(CHUNK, n - lo), seed=lo)
                s.execute(
                    insert(db.Photo),
                    [
                        {
                            "path": f"{(lo + i) // 1000:05d}/IMG_{lo + i:08d}.jpg",
                            "size": 3_000_000,
                            "mtime_ns": 0,
                            "content_hash": f"{lo + i:032x}",
                            "width": 4032,
                            "height": 3024,
                            "taken_at": start + timedelta(minutes=7 * (lo + i)),
                            "taken_at_source": "exif",
                            "indexed_at": 0.0,
                            "embedding": db.vector_to_blob(v),
                        }
                        for i, v in enumerate(vecs)
                    ],
                )
        lib.write_manifest_json()
    return library_dir


# -- children ------------------------------------------------------------------------------------


def child_build(library_dir: str, kind: str) -> dict:
    """Build `kind` from the library as `reindex` does, save it: seconds (training apart)
    and peak RSS. Also written beside the library as <kind>-build.json."""
    import db
    from db import vectors
    from search import ann

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
        lib.save_index(index, kind)
    result = {
        "build_s": time.perf_counter() - t,
        "train_s": marks.get("trained", t) - t,
        "add_s": added - marks.get("trained", t),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "file_bytes": lib.index_path(kind).stat().st_size,
    }
    (Path(library_dir).parent / f"{kind}-build.json").write_text(json.dumps(result))
    return result


def child_query(library_dir: str, kind: str, n_queries: int, factor: int) -> dict:
    """Load `kind`'s file cold and answer single queries through search.engine.top_k."""
    import db
    from search import ann
    from search.engine import LoadedIndex, top_k
    from search.filters import Filter

    ann.RERANK_FACTOR, ann.RERANK_MIN = factor, 0  # k x r candidates exactly, for the table
    queries = clustered(n_queries, seed=7, queries=True)
    lib = db.Library.open(Path(library_dir))
    before = _rss_now()
    t = time.perf_counter()
    loaded = LoadedIndex.read(lib.index_path(kind), DIM)
    load_s = time.perf_counter() - t
    resident = _rss_now() - before
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
        "found": found,
    }


def _rss_now() -> int:
    """Current resident bytes of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
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
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "build":
            result = child_build(*rest)
        else:
            result = child_query(rest[0], rest[1], int(rest[2]), int(rest[3]))
        print(json.dumps(result))
        return

    table = Table()
    n = args.n
    t = time.perf_counter()
    library_dir = make_library(args.work, n)
    print(f"library of {n:,} ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    db_bytes = (library_dir / "library.sqlite3").stat().st_size
    table.add(f"library.sqlite3, {n:,} photos", f"{db_bytes / n:,.0f} B/photo on disk")
    truth = None
    for kind in args.kinds.split(","):
        built = run_child("build", str(library_dir), kind)
        table.add(
            f"{kind}: build from SQLite",
            f"{built['build_s']:.0f} s (train {built.get('train_s', 0):.0f} s, add "
            f"{built.get('add_s', 0):.0f} s), peak RSS {built['peak_mb']:,.0f} MB",
            f"file {built['file_bytes'] / n:,.1f} B/photo",
        )
        for factor in [int(r) for r in args.r.split(",")] if kind == "ivf-pq" else [1]:
            got = run_child("query", str(library_dir), kind, str(args.queries), str(factor))
            tag = f"{kind}" + (f", r={factor}" if kind == "ivf-pq" else "")
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
        table.add(
            f"{kind}: resident after load",
            f"{got['resident_bytes'] / n:,.1f} B/photo (RSS growth), "
            f"{got['counted_bytes'] / n:,.1f} counted by info",
            f"cold load {got['load_s']:.2f} s",
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nbench/bigindex.py, {n:,} x {DIM}-d clustered vectors, on {os.cpu_count()} CPUs "
        f"(load average {load}), {datetime.now():%Y-%m-%d}\n"
    )
    table.print()


if __name__ == "__main__":
    main()
