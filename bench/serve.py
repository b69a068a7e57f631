"""`koclip-search serve` under load (issue 25): the text tower's batched ceiling, then req/s,
p50 and p99 at 1, 4, 16 and 64 concurrent clients for each way of serving, same run.

    python bench/serve.py                                    # 100k photos, ~10-15 min on 2 cores
    python bench/serve.py --photos 20000 --requests 40 --clients 1,4     # a small try
    python bench/serve.py --base d2dfebe                     # plus that commit's own server

What it measures, in this order:

1. The machine: GFLOP/s of a big fp32 matmul in numpy, and of bf16 products in OpenVINO where
   `--precision auto` would pick bf16 (`koclip.fast.precision`).
2. The tower ceiling: the text tower alone (koclip-base size: RoBERTa-large) encoding distinct
   queries at batch 1, 2, 4, ..., 64, in fp32 and in the precision `serve` uses; ms per batch
   and queries/s. The best queries/s of serve's precision is the ceiling `serve` is held to,
   and its FLOPs per query (at the queries' own token count) over the matmul's GFLOP/s say how
   close the tower itself comes to the machine. Beside it, `Searcher.text` in this process (one
   caller, no HTTP): the search's own cost.
3. The servers, each the real command in its own process on 127.0.0.1, in turn:
   (a) batching off (`--max-batch 1`; the plain server where `serve` has no such option);
   (b) batching on (serve's defaults);
   (c) `--ray local --replicas 2` (Ray Serve), run with its load generator inside
       `unshare -n -p -f --mount-proc` + `ip link set lo up`, so Ray never leaves loopback;
       skipped with the reason where that is not permitted or ray[serve] is missing;
   (base) with `--base REF`, the plain server of that commit's own code (`git archive` into the
       cache), a true "before" row.
   Each point: C clients (asyncio + httpx, one connection each) share a fixed number of
   requests, after a warm-up of C requests on the same connections; every request carries a new
   Korean query (the server encodes each one: no cache answers); 503s and other failures are
   counted and shown, and left out of the latencies. Then one point of a single repeated query
   at 16 clients (`--cached-requests`): answered from the text cache, it shows what serving
   allows without the tower (HTTP, FAISS, SQLite, JSON).

It ends with the issue's target lines ("(b) at 16 clients = X% of the tower ceiling; p99 = Y×
p50", "(c) at 1 client = Z% overhead vs (b)") and a scaling model from the run's numbers.

Inputs, built once and cached under --cache (default /tmp/koclip-bench/serve): a checkpoint with
koclip-base-sized random weights whose vocabulary is every Hangul syllable plus the query words
(the real klue tokenizer is not available offline; the "tokens" line gives a query's length),
and a library of N photos written through db/ (random unit vectors, the index `index` would
pick: flat up to 200k; no image files, as only text search is measured).

The load generator shares the machine's cores with the server (loopback): at 2 cores its own
cost shows in every HTTP row alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import (  # noqa: E402
    DIM,
    cli_argv,
    in_namespace_argv,
    load_line,
    machine_line,
    namespace_problem,
    random_unit_chunks,
    write_library,
)

BATCHES = (1, 2, 4, 8, 16, 32, 64)
CLIENTS = (1, 4, 16, 64)
CACHED = "바닷가에서 노는 강아지"  # the cached point's one query: no encoding after its first
# A point of a plan: (clients, warm-up queries, measured queries, "distinct" or "cached").
Step = tuple[int, list[str], list[str], str]
VERSIONS = ("jax", "openvino", "faiss-cpu", "ray", "numpy")
TARGET_SHARE = 0.85  # (b) at 16 clients against the tower's ceiling (issue 25)
TARGET_OVERHEAD = 0.15  # (c) at 1 client against (b)
# Resident bytes a photo costs in the index (docs/large-libraries.md, measured at 1M and 2M):
FLAT_B_PER_PHOTO = 2_105
IVF_PQ_B_PER_PHOTO = 88
IVF_PQ_NLIST_100M = 16_384

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
ENDINGS = ["", "사진", "풍경", "모습", "장면", "가족 사진", "여행 사진", "오후"]


def queries() -> Iterator[str]:
    """Distinct Korean queries (25,600), each given once per iterator."""
    for ending, place, adj, subject in itertools.product(ENDINGS, PLACES, ADJECTIVES, SUBJECTS):
        yield f"{place} {adj} {subject} {ending}".strip()


def take(it: Iterator[str], n: int) -> list[str]:
    out = list(itertools.islice(it, n))
    if len(out) < n:
        raise SystemExit("out of distinct queries: ask for fewer requests")
    return out


# -- inputs -----------------------------------------------------------------------------------


def vocabulary() -> list[str]:
    """Special tokens, whole query words, then every Hangul syllable alone and as a suffix."""
    from koclip.testing import tiny_vocab

    texts = (*ADJECTIVES, *SUBJECTS, *PLACES, *ENDINGS)
    words = {w for text in texts for w in text.split()}
    syllables = [chr(c) for c in range(0xAC00, 0xD7A4)]
    return list(
        dict.fromkeys([*tiny_vocab(), *sorted(words), *syllables, *("##" + s for s in syllables)])
    )


def checkpoint(cache: Path) -> Path:
    """koclip-base-sized random weights (msgpack), written once."""
    from koclip.config import KoCLIPConfig
    from koclip.testing import random_params, write_checkpoint

    path = cache / "ckpt-base-v2"  # v2: the vocabulary holds ENDINGS' words
    if (path / "config.json").is_file():
        return path
    started = time.perf_counter()
    config = KoCLIPConfig.base()
    tmp = path.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_checkpoint(tmp, config, random_params(config, seed=0), vocab=vocabulary())
    tmp.rename(path)
    say(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    return path


def library(cache: Path, ckpt: Path, n: int, index_type: str | None) -> tuple[Path, str]:
    """A library of `n` photos with random unit vectors, through db/ (written once per n), and
    its index type."""
    import db
    from db import vectors
    from db.testing import synthetic_manifest
    from koclip import checkpoint_fingerprint
    from koclip.images.preprocess import PREPROCESS_VERSION

    index_type = index_type or vectors.auto_index_type(n)
    directory = cache / f"library-{ckpt.name}-{n}-{index_type}"
    if (directory / "manifest.json").is_file():
        return directory, index_type
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
    say(f"wrote {n:,} photos ({index_type}) in {time.perf_counter() - started:.0f} s")
    return directory, index_type


def base_checkout(cache: Path, ref: str) -> Path:
    """The tree of commit `ref` (`git archive`, so the repository itself is left untouched)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = cache / f"base-{sha[:12]}"
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", sha], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {ref} failed")
    (target / ".complete").write_text(sha)
    return target


def base_library(src: Path, cache: Path, ckpt: Path, n: int, index_type: str, env: dict) -> Path:
    """The library the base commit's server reads: written by that commit's own code (its
    bench/serve.py's `library`), since an older koclip-search refuses a newer schema."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "import bench.serve as b; "
        "made = b.library(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]); "
        "print(made[0] if isinstance(made, tuple) else made)"
    )
    where = cache / f"{src.name}-libraries"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", code, str(src), str(where), str(ckpt), str(n), index_type],
        cwd=src,
        env=env | {"PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the base's own library could not be written:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


# -- the machine and the tower ------------------------------------------------------------------


def numpy_matmul_gflops(n: int = 2048, repeats: int = 9) -> float:
    """GFLOP/s of an n×n×n float32 matmul in numpy (BLAS, every core), median of `repeats`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm: threads, pages
    median = float(np.median([timed(lambda: a @ b) for _ in range(repeats)]))
    return 2 * n**3 / median / 1e9


def bf16_matmul_gflops() -> float | None:
    """OpenVINO bf16 GFLOP/s of a chain of big products (`bench/precision.py`'s measure,
    median of 9)."""
    try:
        from bench.precision import ov_bf16_matmul_gflops

        return ov_bf16_matmul_gflops(3)
    except Exception as e:  # noqa: BLE001 - a missing runtime is a line in the report
        say(f"OpenVINO bf16 matmul not measured: {e}")
        return None


def text_flops(text_config, tokens: float) -> float:
    """Multiply-adds × 2 of one query of `tokens` tokens through the text encoder's layers
    (embeddings, pooling and projection are small beside them)."""
    d, ff, layers = text_config.hidden_size, text_config.intermediate_size, text_config.num_layers
    per_layer = tokens * (4 * d * d + 2 * d * ff) + 2 * tokens * tokens * d
    return 2.0 * layers * per_layer


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@dataclass
class TowerRow:
    precision: str
    batch: int
    batches: int
    ms_per_batch: float  # median
    qps: float  # batch / median
    best_ms: float  # the fastest batch: on a shared machine, the uncontended cost


def tower_rows(
    ckpt: Path, precision: str, batches: Sequence[int], per_batch: int, texts: Iterator[str]
) -> tuple[list[TowerRow], float, object]:
    """The text tower alone at each batch size: `max(3, per_batch / b)` batches of `b` distinct
    queries each after one warm batch; returns the rows, the queries' mean token count (prompt
    included) and the text config."""
    from koclip import DEFAULT_PROMPT, load_encoder

    enc = load_encoder(str(ckpt), towers=("text",), precision=precision, batch_size=max(batches))
    if enc.precision != precision:
        raise SystemExit(f"asked for a {precision} tower, got {enc.precision}")
    rows = []
    sample = take(texts, 32)
    prompts = [DEFAULT_PROMPT.format(q) for q in sample]
    tokens = float(np.mean([len(ids) for ids in enc.tokenizer.batch_ids(prompts, 512)]))
    for b in batches:
        n = max(3, math.ceil(per_batch / b))
        work = [take(texts, b) for _ in range(n + 1)]
        enc.encode_texts(work[0])  # warm: this shape's first run
        times = []
        for batch in work[1:]:
            t = time.perf_counter()
            enc.encode_texts(batch)
            times.append(time.perf_counter() - t)
        median = float(np.median(times))
        rows.append(TowerRow(precision, b, n, 1e3 * median, b / median, 1e3 * min(times)))
        say(f"tower {precision} batch {b}: {1e3 * median:.1f} ms, {b / median:.1f} queries/s")
    config = enc.config.text
    del enc
    gc.collect()
    return rows, tokens, config


def ceiling_lines(
    tower: list[TowerRow],
    matmuls: dict[str, float | None],
    text_config,
    tokens: float,
    serve_precision: str,
) -> tuple[list[str], float]:
    """What the tower reaches of the machine, per precision, and the ceiling `serve` is held to:
    the best median queries/s of serve's precision over the batch sizes."""
    flops = text_flops(text_config, tokens)
    lines = [f"A query is {tokens:.1f} tokens (prompt included): {flops / 1e9:.2f} GFLOP."]
    ceiling = 0.0
    for precision, matmul in matmuls.items():
        rows = [r for r in tower if r.precision == precision]
        best = max(rows, key=lambda r: r.qps)
        what = "OpenVINO bf16 products" if precision == "bf16" else "a 2048³ numpy fp32 matmul"
        reach = best.qps * flops / 1e9
        of = f" = {100 * reach / matmul:.0f}% of {what}, {matmul:,.0f} GFLOP/s" if matmul else ""
        mark = " — serve's precision: the ceiling" if precision == serve_precision else ""
        one = next((f"; batch 1: {r.qps:.1f}" for r in rows if r.batch == 1 != best.batch), "")
        lines.append(
            f"{precision} tower: {best.qps:.1f} queries/s at batch {best.batch}{one} = "
            f"{reach:,.0f} GFLOP/s{of} (medians; the matmul measured just before){mark}"
        )
        if precision == serve_precision:
            ceiling = best.qps
    return lines, ceiling


def searcher_latency_ms(lib_dir: Path, texts: list[str]) -> tuple[float, float]:
    """p50 and p99 ms of `Searcher.text` in this process, one caller, no HTTP: the search's own
    cost (query understanding, the tower at batch 1, FAISS, SQLite) beside the HTTP rows'."""
    from search import Searcher

    with Searcher(lib_dir) as searcher:
        searcher.text("준비 운동", k=40)  # load and warm the tower
        times = []
        for q in texts:
            t = time.perf_counter()
            searcher.text(q, k=40)
            times.append(time.perf_counter() - t)
    gc.collect()
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Point:
    mode: str
    clients: int
    requests: int
    ok: int = 0
    busy: int = 0  # 503: the server said it is full or not ready
    failed: int = 0  # any other status, or no answer
    wall_s: float = 0.0
    rps: float = 0.0  # answered (200) requests per second
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    first_failure: str = ""
    queries: str = "distinct"  # or "cached": one query repeated, answered from the text cache


async def load_point(
    base: str,
    mode: str,
    clients: int,
    warm: list[str],
    measured: list[str],
    timeout: float,
    kind: str = "distinct",
) -> Point:
    """`clients` connections: `warm` requests shared among them first (not counted), then the
    `measured` ones, each client taking the next query as soon as its answer is in."""
    import httpx

    point = Point(mode, clients, len(measured), queries=kind)
    latencies: list[float] = []
    conns = [
        httpx.AsyncClient(base_url=base, timeout=timeout, limits=httpx.Limits(max_connections=1))
        for _ in range(clients)
    ]

    async def one(http: httpx.AsyncClient, q: str, record: bool) -> None:
        t = time.perf_counter()
        try:
            r = await http.get("/api/search", params={"q": q, "k": 40})
            status, text = r.status_code, r.text[:200]
        except httpx.HTTPError as e:  # a timeout or a dropped connection: counted, not hidden
            status, text = 0, f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - t
        if not record:
            return
        if status == 200:
            point.ok += 1
            latencies.append(elapsed)
        else:
            if status == 503:
                point.busy += 1
            else:
                point.failed += 1
            point.first_failure = point.first_failure or f"{status} {text}"

    async def phase(qs: list[str], record: bool) -> float:
        queue = iter(qs)

        async def client(http: httpx.AsyncClient) -> None:
            for q in queue:  # one shared iterator: no await between next() and the request
                await one(http, q, record)

        started = time.perf_counter()
        await asyncio.gather(*(client(h) for h in conns))
        return time.perf_counter() - started

    try:
        await phase(warm, record=False)
        point.wall_s = await phase(measured, record=True)
    finally:
        await asyncio.gather(*(h.aclose() for h in conns))
    point.rps = point.ok / point.wall_s if point.wall_s else 0.0
    if latencies:
        ms = np.asarray(latencies) * 1e3
        point.p50_ms = float(np.percentile(ms, 50))
        point.p99_ms = float(np.percentile(ms, 99))
    return point


# -- the servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_help(src: Path, env: dict[str, str]) -> str:
    """`serve --help` of the code in `src`: which options this server has."""
    done = subprocess.run(
        cli_argv("serve", "--help"), cwd=src, env=env, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def clear_text_cache() -> None:
    """Empties the private on-disk text-embedding cache, so every query is encoded."""
    from koclip.checkpoints.cache import default_cache_root

    for suffix in ("", "-wal", "-shm"):
        (default_cache_root() / f"text-embeddings.sqlite3{suffix}").unlink(missing_ok=True)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def replica_rss_mb() -> list[float]:
    """Resident MB of each Ray Serve replica process visible here (the namespace's own /proc)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ServeReplica" in cmdline:
            out.append(rss_mb(int(proc.name)))
    return sorted(out)


class Server:
    """One `koclip-search serve` process on 127.0.0.1, from the code in `src`; ready once a
    search has answered 200 (so the text tower is loaded and warm), from each of `replicas`
    replicas when there are several (told apart by web.replicas.REPLICA_HEADER)."""

    def __init__(
        self,
        src: Path,
        lib_dir: Path,
        extra: Sequence[str],
        env: dict[str, str],
        replicas: int = 1,
    ):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = cli_argv("serve", "--library", str(lib_dir), "--host", "127.0.0.1")
        cmd += ["--port", str(self.port), "--log-level", "warning", "--access-log", "off"]
        self.cmd = [*cmd, *extra]
        self.src, self.env = src, env
        self.proc: subprocess.Popen | None = None
        self.ready_s = 0.0
        self.replicas = replicas

    def __enter__(self) -> Server:
        import httpx

        clear_text_cache()
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.src, env=self.env, stdout=sys.stderr, start_new_session=True
        )
        header = "x-koclip-replica"
        if self.replicas > 1:
            from web.replicas import REPLICA_HEADER as header
        answered_by: set[str] = set()
        deadline = time.monotonic() + 600
        for i in itertools.count():
            if time.monotonic() > deadline:
                break
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited with {self.proc.returncode}")
            try:
                q = {"q": f"준비 {i}", "k": 1}  # a new query each time: every replica encodes
                r = httpx.get(self.base + "/api/search", params=q, timeout=300)
                if r.status_code == 200:
                    answered_by.add(r.headers.get(header, "the server"))
                    if len(answered_by) >= self.replicas:
                        self.ready_s = time.perf_counter() - started
                        return self
                    continue
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise ServerFailed(
            f"{len(answered_by)} of {self.replicas} replicas answered a search in 10 minutes"
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: Ray's children too
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid) if self.proc else float("nan")


class ServerFailed(Exception):
    pass


@dataclass
class ModeRun:
    mode: str
    label: str
    options: list[str]
    points: list[Point] = field(default_factory=list)
    ready_s: float = 0.0
    server_rss_mb: float = float("nan")
    replica_rss_mb: list[float] = field(default_factory=list)
    skipped: str = ""


def run_mode(
    run: ModeRun,
    src: Path,
    lib_dir: Path,
    env: dict[str, str],
    plan: list[Step],
    timeout: float,
    in_namespace: bool = False,
) -> ModeRun:
    """One server, then each (clients, warm, measured) point of `plan` against it."""
    say(f"mode {run.mode}: serve {' '.join(run.options)}".rstrip())
    try:
        replicas = (
            int(run.options[run.options.index("--replicas") + 1])
            if "--replicas" in run.options
            else 1
        )
        with Server(src, lib_dir, run.options, env, replicas) as server:
            run.ready_s = server.ready_s
            say(f"  ready in {server.ready_s:.1f} s")
            for clients, warm, measured, kind in plan:
                point = asyncio.run(
                    load_point(server.base, run.mode, clients, warm, measured, timeout, kind)
                )
                run.points.append(point)
                say(
                    f"  {clients:>3} clients, {kind}: {point.rps:6.1f} req/s, "
                    f"p50 {point.p50_ms:7.1f} ms, "
                    f"p99 {point.p99_ms:7.1f} ms, 503 {point.busy}, failed {point.failed}"
                )
            run.server_rss_mb = server.rss_mb()
            if in_namespace:  # this /proc shows only the namespace's processes
                run.replica_rss_mb = replica_rss_mb()
    except ServerFailed as e:
        run.skipped = str(e)
        say(f"  skipped: {e}")
    return run


# -- mode (c): Ray Serve inside a network namespace ---------------------------------------------


def ray_mode(
    run: ModeRun,
    lib_dir: Path,
    env: dict[str, str],
    plan: list[Step],
    timeout: float,
) -> ModeRun:
    """Mode (c): this script again, inside the namespace, serving and loading there."""
    # Asked of a fresh interpreter in the repository: in this script's folder `ray` is
    # bench/ray.py.
    probe = subprocess.run(
        [sys.executable, "-c", "import ray.serve"], cwd=REPO, env=env, capture_output=True
    )
    if probe.returncode != 0:
        run.skipped = "ray[serve] is not installed (`pip install 'koclip-search[ray]'`)"
    else:
        run.skipped = namespace_problem() or ""
    if run.skipped:
        say(f"mode {run.mode}: skipped: {run.skipped}")
        return run
    # Ray's unix sockets live under its temp dir, and a socket path may not exceed 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="kr-", dir="/tmp")
    spec = Path(ray_tmp) / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "run": asdict(run),
                "library": str(lib_dir),
                "plan": plan,
                "timeout": timeout,
            },
            ensure_ascii=False,
        )
    )
    (Path(ray_tmp) / "home").mkdir()
    child_env = env | {
        "HOME": str(Path(ray_tmp) / "home"),  # whatever Ray keeps under ~/.ray stays private
        "RAY_TMPDIR": ray_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    }
    argv = in_namespace_argv([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)])
    budget = 900 + sum(len(w) + len(m) for _, w, m, _ in plan) * 2
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=child_env, stdout=subprocess.PIPE, text=True, timeout=budget
        )
    except subprocess.TimeoutExpired:
        run.skipped = f"the namespace's run did not finish in {budget} s"
        return run
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        run.skipped = f"the namespace's run exited with {done.returncode}"
        return run
    got = json.loads(lines[-1])
    got["points"] = [Point(**p) for p in got["points"]]
    return ModeRun(**got)


def child(spec_path: Path) -> None:
    """Inside the namespace: mode (c)'s server and load; the result as JSON on the last line."""
    spec = json.loads(spec_path.read_text())
    run = ModeRun(**spec["run"])
    plan = [(c, w, m, k) for c, w, m, k in spec["plan"]]
    run_mode(run, REPO, Path(spec["library"]), dict(os.environ), plan, spec["timeout"], True)
    print(json.dumps(asdict(run), ensure_ascii=False), flush=True)


# -- the report ---------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def n_clients(n: int) -> str:
    return f"{n} client" if n == 1 else f"{n} clients"


def fmt(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def distinct(run: ModeRun) -> list[Point]:
    """The points of distinct queries (every request encoded), answered at least once."""
    return [p for p in run.points if p.queries == "distinct" and p.ok]


def batch1_ms(tower: list[TowerRow], precision: str) -> str:
    one = next((r for r in tower if r.precision == precision and r.batch == 1), None)
    return (
        "the tower at batch 1: not measured"
        if one is None
        else (f"the tower alone at batch 1: {one.ms_per_batch:,.1f} ms")
    )


def point_at(run: ModeRun | None, clients: int) -> Point | None:
    if run is None:
        return None
    return next((p for p in distinct(run) if p.clients == clients), None)


def verdicts(runs: dict[str, ModeRun], ceiling: float, batch1_ms: float = 0.0) -> list[str]:
    """The issue's two targets, one line each, from the same run's rows; then what a lone
    request costs beyond the tower's batch of one (`batch1_ms`), per mode."""
    lines = []
    b16 = point_at(runs.get("b"), 16)
    if b16 is not None and ceiling:
        share = b16.rps / ceiling
        lines.append(
            f"(b) at 16 clients = {100 * share:.0f}% of the tower ceiling ({fmt(b16.rps)} of "
            f"{fmt(ceiling)} queries/s; target ≥ {100 * TARGET_SHARE:.0f}%: "
            f"{'ok' if share >= TARGET_SHARE else 'MISS'}); p99 = {b16.p99_ms / b16.p50_ms:.1f}× "
            f"p50 ({fmt(b16.p99_ms, 0)} ms against {fmt(b16.p50_ms, 0)} ms)"
        )
    else:
        lines.append("(b) at 16 clients: not measured")
    b1, c1 = point_at(runs.get("b"), 1), point_at(runs.get("c"), 1)
    if b1 is not None and c1 is not None:
        overhead = c1.p50_ms / b1.p50_ms - 1
        lines.append(
            f"(c) at 1 client = {100 * overhead:+.0f}% overhead vs (b) (p50 {fmt(c1.p50_ms)} "
            f"against {fmt(b1.p50_ms)} ms; req/s {fmt(c1.rps)} against {fmt(b1.rps)}; target "
            f"≤ {100 * TARGET_OVERHEAD:.0f}%: {'ok' if overhead <= TARGET_OVERHEAD else 'MISS'})"
        )
    else:
        lines.append("(c) at 1 client vs (b): not measured")
    for run in runs.values():
        for p in run.points:
            if p.queries == "cached" and p.ok:
                lines.append(
                    f"{run.label}, one cached query at {n_clients(p.clients)} (no encoding): "
                    f"{fmt(p.rps)} req/s, p50 {fmt(p.p50_ms)} ms — what serving itself allows"
                )
    for run in runs.values():
        one = point_at(run, 1)
        if one is not None and batch1_ms:
            lines.append(
                f"{run.label} at 1 client: p50 {fmt(one.p50_ms)} ms against the tower's "
                f"{fmt(batch1_ms)} ms at batch 1: {one.p50_ms - batch1_ms:+,.1f} ms of HTTP, "
                "search, JSON and the load generator (the tower measured earlier in the run)"
            )
    return lines


def scaling_model(
    runs: dict[str, ModeRun], ceiling: float, cores: int, photos: int, index_type: str
) -> list[str]:
    """Replicas per core, queries/s per replica and RAM per replica at 100M photos (ivf-pq),
    from this run's figures; every extrapolated number says what it assumes."""
    lines = [
        f"- The tower's ceiling here is {fmt(ceiling)} queries/s on {cores} cores = "
        f"{fmt(ceiling / cores)} queries/s per core: what every replica on this machine shares."
    ]
    c = runs.get("c")
    if c is not None and distinct(c) and not c.skipped:
        best = max(distinct(c), key=lambda p: p.rps)
        n = len(c.replica_rss_mb) or None
        replicas = n or int(c.options[c.options.index("--replicas") + 1])
        lines.append(
            f"- (c) with {replicas} replicas on {cores} cores peaked at {fmt(best.rps)} req/s "
            f"({n_clients(best.clients)}) = {fmt(best.rps / replicas)} queries/s per replica, "
            f"{fmt(best.rps / cores)} per core."
        )
        b = runs.get("b")
        if b is not None and distinct(b):
            bbest = max(distinct(b), key=lambda p: p.rps)
            lines.append(
                f"  One process batching (b) peaked at {fmt(bbest.rps)} req/s "
                f"({n_clients(bbest.clients)}): {replicas} replicas on the same {cores} cores reach "
                f"{best.rps / bbest.rps:.2f}× it. Below ~1.1×, replicas on one machine add "
                "memory, not throughput: one replica per machine, batching, and replicas across "
                "machines."
            )
        if c.replica_rss_mb:
            rss = float(np.median(c.replica_rss_mb))
            per_photo = FLAT_B_PER_PHOTO if index_type == "flat" else None
            if per_photo is not None:
                index_mb = per_photo * photos / 2**20
                fixed = rss - index_mb
                at_100m = fixed + (IVF_PQ_B_PER_PHOTO * 1e8 + IVF_PQ_NLIST_100M * DIM * 4) / 2**20
                lines.append(
                    f"- A replica held {fmt(rss, 0)} MB resident at {photos:,} photos ({index_type}: "
                    f"~{fmt(index_mb, 0)} MB of it the index at {FLAT_B_PER_PHOTO:,} B/photo, "
                    f"docs/large-libraries.md), so ~{fmt(fixed, 0)} MB is the tower, runtime and "
                    f"Ray. At 100M photos with ivf-pq ({IVF_PQ_B_PER_PHOTO} B/photo + "
                    f"{IVF_PQ_NLIST_100M:,} centroids, measured at 1M-2M and projected) a replica "
                    f"(each holds its own index: web.replicas) needs ~{fmt(at_100m / 1024, 1)} GB; the 423 GB "
                    "SQLite file is read, not held (re-ranking reads ~200 rows a query)."
                )
            else:
                lines.append(
                    f"- A replica held {fmt(rss, 0)} MB resident at {photos:,} photos "
                    f"({index_type}); see docs/large-libraries.md for the index's share."
                )
    else:
        lines.append(
            f"- (c) was not measured{': ' + c.skipped if c is not None and c.skipped else ''}; "
            "no per-replica figures."
        )
    return lines


def print_report(
    header: str,
    setup: list[str],
    tower: list[TowerRow],
    ceilings: list[str],
    runs: dict[str, ModeRun],
    ceiling: float,
    model_lines: list[str],
) -> None:
    print()
    print(header)
    for line in setup:
        print(line)
    print()
    print("Text tower alone (distinct queries; queries/s from the median batch):")
    print()
    print("| precision | batch | batches | ms / batch p50 (best) | ms / query | queries/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in tower:
        print(
            f"| {r.precision} | {r.batch} | {r.batches} | {fmt(r.ms_per_batch)} "
            f"({fmt(r.best_ms)}) | {fmt(r.ms_per_batch / r.batch)} | {fmt(r.qps)} |"
        )
    print()
    for line in ceilings:
        print(line)
    print()
    print("Through `serve` (distinct queries, k=40; 503s and failures left out of the latencies):")
    print()
    print("| mode | clients | requests | req/s | % of ceiling | p50 ms | p99 ms | 503 | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs.values():
        if run.skipped and not run.points:
            print(f"| {run.label} | | | skipped: {run.skipped} | | | | | |")
            continue
        for p in run.points:
            share = f"{100 * p.rps / ceiling:.0f}%" if ceiling else "–"
            if p.queries != "distinct":
                share = "(no encoding)"
            print(
                f"| {run.label} | {p.clients}{'' if p.queries == 'distinct' else ' ' + p.queries} "
                f"| {p.requests} | {fmt(p.rps)} | {share} | "
                f"{fmt(p.p50_ms)} | {fmt(p.p99_ms)} | {p.busy} | {p.failed} |"
            )
    print()
    for run in runs.values():
        extra = ""
        if run.replica_rss_mb:
            extra = f"; replicas' RSS {', '.join(fmt(x, 0) for x in run.replica_rss_mb)} MB"
        if run.points:
            print(
                f"{run.label}: ready (first search answered) in {fmt(run.ready_s)} s; server "
                f"RSS {fmt(run.server_rss_mb, 0)} MB{extra}"
            )
        for p in run.points:
            if p.first_failure:
                print(f"  {run.mode} at {p.clients} clients, first failure: {p.first_failure}")
    print()
    serving = [r for r in tower if r.precision == tower[-1].precision and r.batch == 1]  # serve's
    for line in verdicts(runs, ceiling, serving[0].ms_per_batch if serving else 0.0):
        print(line)
    print()
    print("Scaling model (from this run):")
    print()
    for line in model_lines:
        print(line)
    print()
    print(load_line())


# -- main ---------------------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument(
        "--index",
        choices=["flat", "hnsw", "ivf-sq8", "ivf-pq"],
        default=None,
        help="index type (default: what `index` would pick for --photos)",
    )
    parser.add_argument("--requests", type=int, default=256, help="measured requests per point")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="client counts")
    parser.add_argument(
        "--cached-requests",
        type=int,
        default=256,
        help="requests of one repeated query (text cache: no encoding) at 16 clients; 0: none",
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="tower batches")
    parser.add_argument(
        "--tower-queries", type=int, default=64, help="queries per tower batch size (>= 3 batches)"
    )
    parser.add_argument(
        "--tower-precisions",
        default="fp32,serve",
        help="the tower's precisions to measure; serve's own (`serve`) is always measured",
    )
    parser.add_argument(
        "--modes", default="a,b,c", help="which servers: a (batching off), b (on), c (Ray Serve)"
    )
    parser.add_argument("--replicas", type=int, default=2, help="mode (c)'s replicas")
    parser.add_argument("--base", metavar="REF", help="also serve commit REF's own code")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a request may take")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/koclip-bench/serve"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    clients, batches = ints(args.clients), ints(args.batches)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    # A private koclip cache (converted weights, fast towers, compiled programs, text
    # embeddings), shared with the servers; its text-embedding store is emptied before each.
    os.environ["KOCLIP_CACHE_DIR"] = str(args.cache / "koclip-cache")
    env = dict(os.environ) | {"PYTHONPATH": str(REPO)}
    header = f"bench/serve.py, {machine_line(*VERSIONS)}"
    cores = os.cpu_count() or 1
    if os.getloadavg()[0] > cores / 2:
        header += (
            f"\nWARNING: the machine is busy (load {os.getloadavg()[0]:.1f} on {cores} cores): "
            "other work slows every row, unevenly; compare rows only within a quiet run"
        )
    say(header)
    say(f"setup (cached in {args.cache}):")
    ckpt = checkpoint(args.cache)
    lib_dir, index_type = library(args.cache, ckpt, args.photos, args.index)

    # 1-2: the machine's matmul and the tower's ceiling, before any server runs.
    from koclip.fast.precision import chosen_precision

    serve_precision = chosen_precision(None)  # as serve's loader chooses ($KOCLIP_PRECISION, auto)
    asked = [serve_precision if p == "serve" else p for p in args.tower_precisions.split(",")]
    precisions = list(dict.fromkeys([*asked, serve_precision]))  # serve's always, and last
    tower: list[TowerRow] = []
    matmuls: dict[str, float | None] = {}
    tower_texts = queries()  # the tower has no cache: its queries need not differ from HTTP's
    tokens, text_config = 0.0, None
    for precision in precisions:
        # the matmul right before the tower it is the ceiling of: the same moment's machine
        matmuls[precision] = bf16_matmul_gflops() if precision == "bf16" else numpy_matmul_gflops()
        rows, tokens, text_config = tower_rows(
            ckpt, precision, batches, args.tower_queries, tower_texts
        )
        tower += rows
    ceilings, ceiling = ceiling_lines(tower, matmuls, text_config, tokens, serve_precision)
    n_alone = min(args.requests, 32)
    alone = searcher_latency_ms(lib_dir, take(tower_texts, n_alone))
    ceilings.append(
        f"Searcher.text in this process, one caller, no HTTP ({n_alone} distinct queries): p50 "
        f"{alone[0]:,.1f} ms, p99 {alone[1]:,.1f} ms ({batch1_ms(tower, serve_precision)})"
    )

    # 3: the servers, each on its own share of distinct queries.
    texts = queries()

    def plan() -> list[Step]:
        steps: list[Step] = [
            (c, take(texts, c), take(texts, args.requests), "distinct") for c in clients
        ]
        if args.cached_requests:  # what serving costs without the tower: one cached query
            c = 16 if 16 in clients else max(clients)
            steps.append((c, [CACHED] * c, [CACHED] * args.cached_requests, "cached"))
        return steps

    options = serve_help(REPO, env)
    runs: dict[str, ModeRun] = {}
    if args.base:
        src = base_checkout(args.cache, args.base)
        run = ModeRun("base", f"base {args.base} (plain serve)", [])
        base_lib = base_library(src, args.cache, ckpt, args.photos, index_type, env)
        runs["base"] = run_mode(
            run, src, base_lib, env | {"PYTHONPATH": str(src)}, plan(), args.timeout
        )
    if "a" in modes:
        if "--max-batch" in options:
            run = ModeRun("a", "(a) batching off", ["--max-batch", "1"])
        else:
            run = ModeRun(
                "a", "(a) serve's defaults (it has no --max-batch to turn batching off)", []
            )
        runs["a"] = run_mode(run, REPO, lib_dir, env, plan(), args.timeout)
    if "b" in modes:
        run = ModeRun("b", "(b) batching on", [])
        if "--max-batch" not in options:
            run.skipped = "this serve has no batching (--max-batch)"
            say(f"mode b: skipped: {run.skipped}")
            runs["b"] = run
        else:
            runs["b"] = run_mode(run, REPO, lib_dir, env, plan(), args.timeout)
    if "c" in modes:
        ray_options = ["--ray", "local", "--replicas", str(args.replicas)]
        run = ModeRun("c", f"(c) Ray Serve, {args.replicas} replicas", ray_options)
        if "--ray" not in options or "--replicas" not in options:
            run.skipped = "this serve has no --ray/--replicas"
            say(f"mode c: skipped: {run.skipped}")
            runs["c"] = run
        else:
            runs["c"] = ray_mode(run, lib_dir, env, plan(), args.timeout)

    setup = [
        f"{args.photos:,} photos, index {index_type}, k=40; serve's precision {serve_precision}; "
        f"{args.requests} measured requests per point after a warm-up of one per client; "
        f"the load generator shares the {os.cpu_count()} cores (loopback)."
    ]
    model_lines = scaling_model(runs, ceiling, os.cpu_count() or 1, args.photos, index_type)
    print_report(header, setup, tower, ceilings, runs, ceiling, model_lines)


if __name__ == "__main__":
    main()
