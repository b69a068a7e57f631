"""`koclip-search serve` under load: text-search requests/s and p50/p99 latency at 100k photos,
beside the encoder's own latency and the in-process Searcher, measured in the same run.

    .venv/bin/python bench/serve.py                        # 100k photos, a few minutes on 2 cores
    .venv/bin/python bench/serve.py --photos 20000 --requests 40 --concurrency 1,2,8

Inputs (built once, cached under --cache, default /tmp/koclip-bench/serve):
* a checkpoint with koclip-base-sized random weights (klue/roberta-large text tower, ViT-B/32,
  512-d); its vocabulary is every Hangul syllable plus the query words, so queries tokenize to
  realistic lengths (see the "tokens" line; the real klue tokenizer is not available offline);
* a library of N photos written through db/ (rows + random unit vectors, FAISS index of the
  type `index` would pick: flat up to 200k); no image files, as only text search is measured.

The server is the real command (`koclip-search serve`) in its own process on 127.0.0.1; the
load is a fixed number of requests from C concurrent httpx clients in this process (loopback
only). "distinct" requests each carry a new query (the server encodes every one); "repeated"
requests repeat one query (the Searcher's text cache answers: HTTP + FAISS + SQLite + JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import DIM, cli_argv, random_unit_chunks, write_library  # noqa: E402

ADJECTIVES = [
    "푸른",
    "조용한",
    "붉은",
    "따뜻한",
    "오래된",
    "작은",
    "커다란",
    "하얀",
    "어두운",
    "밝은",
    "비 오는",
    "눈 덮인",
    "행복한",
    "낡은",
    "새로운",
    "높은",
]
SUBJECTS = [
    "강아지",
    "고양이",
    "바다",
    "노을",
    "산",
    "자동차",
    "아이들",
    "꽃",
    "나무",
    "거리",
    "건물",
    "호수",
    "기차",
    "자전거",
    "하늘",
    "숲",
    "카페",
    "시장",
    "다리",
    "해변",
]
PLACES = [
    "서울에서",
    "부산의",
    "제주도의",
    "공원에서",
    "바닷가의",
    "시골의",
    "도시의",
    "밤의",
    "겨울의",
    "여름의",
]
REPEATED = "바닷가에서 노는 강아지"


def queries() -> itertools.chain:
    """Distinct Korean queries (3200), never repeated within a run."""
    combos = itertools.product(PLACES, ADJECTIVES, SUBJECTS)
    return (f"{place} {adj} {subject}" for place, adj, subject in combos)


# -- inputs -----------------------------------------------------------------------------------


def vocabulary() -> list[str]:
    """Special tokens, whole query words, then every Hangul syllable alone and as a suffix."""
    from koclip.testing import tiny_vocab

    words = {w for text in (*ADJECTIVES, *SUBJECTS, *PLACES, REPEATED) for w in text.split()}
    syllables = [chr(c) for c in range(0xAC00, 0xD7A4)]
    vocab = list(
        dict.fromkeys([*tiny_vocab(), *sorted(words), *syllables, *("##" + s for s in syllables)])
    )
    return vocab


def checkpoint(cache: Path) -> Path:
    """koclip-base-sized random weights (msgpack), written once."""
    from koclip.config import KoCLIPConfig
    from koclip.testing import random_params, write_checkpoint

    path = cache / "ckpt-base"
    if (path / "config.json").is_file():
        return path
    started = time.perf_counter()
    config = KoCLIPConfig.base()
    write_checkpoint(
        path.with_suffix(".tmp"), config, random_params(config, seed=0), vocab=vocabulary()
    )
    path.with_suffix(".tmp").rename(path)
    print(f"  wrote {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def library(cache: Path, ckpt: Path, n: int, index_type: str | None) -> Path:
    """A library of `n` photos with random unit vectors, through db/ (written once per n)."""
    import db
    from db import vectors
    from db.testing import synthetic_manifest
    from koclip import checkpoint_fingerprint
    from koclip.images.preprocess import PREPROCESS_VERSION

    index_type = index_type or vectors.auto_index_type(n)
    directory = cache / f"library-{n}-{index_type}"
    if (directory / "manifest.json").is_file():
        return directory
    started = time.perf_counter()
    photo_root = cache / "photos"  # empty: thumbnails and originals are not measured
    photo_root.mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(
        DIM,
        model_id=str(ckpt.resolve()),
        fingerprint=checkpoint_fingerprint(str(ckpt)),
        preprocess_version=PREPROCESS_VERSION,
        index_type=index_type,
        photo_root=db.relative_photo_root(directory, photo_root),
    )
    write_library(directory, manifest, random_unit_chunks(n, chunk=5000))
    print(
        f"  wrote {n:,} photos ({index_type}) in {time.perf_counter() - started:.0f} s", flush=True
    )
    return directory


# -- measuring --------------------------------------------------------------------------------


def stats(label: str, latencies: list[float], wall: float, concurrency: int) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {
        "label": label,
        "n": len(latencies),
        "c": concurrency,
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


def timed_loop(label: str, fn, inputs: list) -> dict:
    latencies = []
    started = time.perf_counter()
    for item in inputs:
        t = time.perf_counter()
        fn(item)
        latencies.append(time.perf_counter() - t)
    return stats(label, latencies, time.perf_counter() - started, 1)


def in_process(lib_dir: Path, distinct, n: int, n_repeat: int) -> tuple[list[dict], str]:
    """The encoder alone, then the Searcher without HTTP; the model is freed afterwards."""
    from search import Searcher

    rows = []
    with Searcher(lib_dir) as searcher:
        started = time.perf_counter()
        searcher.text(REPEATED, k=40)  # load the text tower, compile
        load = time.perf_counter() - started
        enc = searcher.encoder.encoder("text")
        from koclip import DEFAULT_PROMPT

        prompt = DEFAULT_PROMPT.format(REPEATED)
        tokens = len(enc.tokenizer.batch_ids([prompt], 512)[0])
        enc.encode_texts(["준비 운동"])
        rows.append(
            timed_loop(
                "encoder alone: encode_texts, batch 1",
                lambda q: enc.encode_texts([q]),
                take(distinct, n),
            )
        )
        rows.append(
            timed_loop(
                "Searcher.text in-process, distinct queries",
                lambda q: searcher.text(q, k=40),
                take(distinct, n),
            )
        )
        rows.append(
            timed_loop(
                "Searcher.text in-process, repeated (text cache)",
                lambda q: searcher.text(q, k=40),
                [REPEATED] * n_repeat,
            )
        )
    gc.collect()
    return rows, f"text tower load + first query {load:.1f} s; prompt '{prompt}' = {tokens} tokens"


def take(it, n: int) -> list:
    return list(itertools.islice(it, n))


async def http_load(base: str, label: str, qs: list[str], concurrency: int) -> dict:
    """`len(qs)` GET /api/search from `concurrency` clients sharing one queue."""
    import httpx

    queue: asyncio.Queue[str] = asyncio.Queue()
    for q in qs:
        queue.put_nowait(q)
    latencies: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            while not queue.empty():
                q = queue.get_nowait()
                t = time.perf_counter()
                r = await http.get("/api/search", params={"q": q, "k": 40})
                latencies.append(time.perf_counter() - t)
                r.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return stats(label, latencies, time.perf_counter() - started, concurrency)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(lib_dir: Path, port: int, env: dict) -> tuple[subprocess.Popen, float]:
    """`koclip-search serve` in its own process; returns it once a first search has answered."""
    import httpx

    cmd = cli_argv("serve", "--library", str(lib_dir), "--host", "127.0.0.1", "--port", str(port))
    cmd += ["--log-level", "warning"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(
                base + "/api/search", params={"q": "준비", "k": 1}, timeout=300
            ).is_success:
                return proc, time.perf_counter() - started
        except httpx.TransportError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the server did not answer in 10 minutes")


def print_table(rows: list[dict]) -> None:
    header = f"{'measurement':<52} {'reqs':>5} {'conc':>4} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['label']:<52} {r['n']:>5} {r['c']:>4} {r['rps']:>7.1f} {r['p50']:>8.1f} "
            f"{r['p99']:>8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument(
        "--index",
        choices=["flat", "hnsw", "ivf-sq8"],
        default=None,
        help="index type (default: what `index` would pick for --photos)",
    )
    parser.add_argument(
        "--requests", type=int, default=48, help="distinct-query requests per measurement"
    )
    parser.add_argument(
        "--repeated", type=int, default=300, help="repeated-query requests per measurement"
    )
    parser.add_argument("--concurrency", default="1,4", help="comma-separated client counts")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/koclip-bench/serve"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    args.cache.mkdir(parents=True, exist_ok=True)
    # A private koclip cache (converted weights, compiled programs, text embeddings), shared
    # with the server process; its text-embedding store is emptied so "distinct" stays distinct.
    os.environ["KOCLIP_CACHE_DIR"] = str(args.cache / "koclip-cache")
    from koclip.checkpoints.cache import default_cache_root

    for suffix in ("", "-wal", "-shm"):
        (default_cache_root() / f"text-embeddings.sqlite3{suffix}").unlink(missing_ok=True)
    print(f"setup (cached in {args.cache}):", flush=True)
    ckpt = checkpoint(args.cache)
    lib_dir = library(args.cache, ckpt, args.photos, args.index)

    distinct = iter(queries())
    rows, note = in_process(lib_dir, distinct, args.requests, args.repeated)

    env = dict(os.environ)
    port = free_port()
    proc, ready = start_server(lib_dir, port, env)
    base = f"http://127.0.0.1:{port}"
    try:
        for c in levels:
            rows.append(
                asyncio.run(
                    http_load(
                        base, "HTTP /api/search, distinct queries", take(distinct, args.requests), c
                    )
                )
            )
        for c in levels:
            rows.append(
                asyncio.run(
                    http_load(
                        base,
                        "HTTP /api/search, repeated (text cache)",
                        [REPEATED] * args.repeated,
                        c,
                    )
                )
            )
    finally:
        proc.terminate()
        proc.wait(30)

    import faiss

    print()
    print(
        f"{args.photos:,} photos, index {lib_dir.name.rsplit('-', 1)[-1]}, k=40, "
        f"{os.cpu_count()} cores (shared with the load generator), faiss {faiss.__version__}"
    )
    print(f"{note}; server start to first answer {ready:.1f} s")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
