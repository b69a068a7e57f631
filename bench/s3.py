"""Photo roots in object storage (issue 26): indexing from a bucket vs from a folder, listing,
and a no-change `index`, against moto's S3 server on 127.0.0.1 (its own process).

    .venv/bin/python bench/s3.py --objects 2000 --photos 64     # a quick check, ~2 minutes
    .venv/bin/python bench/s3.py                               # 100k listed, 10k unchanged

Rows:

* indexing: `index_photos` over the same 1024x768 JPEGs (bench._common.write_photo) from a
  local folder and from `s3://bench/photos`, the encoder loaded and compiled once beforehand
  (koclip-base-sized random vision tower; `--model tiny` measures the pipeline alone, where
  reading matters most); photos/s over the run, best of `--repeat`, the runs interleaved.
  Target: the bucket at least 0.9x the folder.
* listing: `storage.ObjectRoot.list` over `--objects` keys (1,000 a page), entries/s, and the
  CPU seconds moto's server process spent meanwhile: when they are close to the wall time,
  moto (one Python process answering XML) is what is measured, not the client.
* no-change index: a second `index` of `min(--objects, --unchanged)` small objects already
  indexed (tiny model), through a counting proxy of this script: seconds, requests, and the
  bytes answered to listings and to object reads (an unchanged object is never read: 0).

moto keeps the bucket in its own memory; nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import (  # noqa: E402
    Table,
    cpu_model,
    load_line,
    photo_folder,
    tiny_checkpoint,
    vision_checkpoint,
)

BUCKET = "bench"
# Test credentials for moto (it accepts any); never a real account's.
ENV = {
    "AWS_ACCESS_KEY_ID": "AKIABENCHKOCLIP00001",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# -- moto, in a process of its own ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """`python -m moto.server` on 127.0.0.1 (its CPU time readable from /proc)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("moto's server did not start") from None
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(max_pool_connections=32),
    )


def upload(s3, items: list[tuple[str, bytes]], threads: int = 16) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), items))


def tiny_jpegs(n: int) -> list[bytes]:
    """n distinct small JPEGs (one 64x48 picture, each with its own trailing bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(buf, "JPEG")
    data = buf.getvalue()
    return [data + str(i).encode() for i in range(n)]


# -- a proxy that counts what the store answers -----------------------------------------------------


class CountingProxy:
    """HTTP on 127.0.0.1 in front of moto: requests and answered bytes by kind (listing or
    object read)."""

    def __init__(self, upstream_port: int) -> None:
        self.counts: Counter[str] = Counter()
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].strip("/")
                kind = "read" if "/" in path else "list"
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request("GET", self.path, headers=headers)
                    answer = conn.getresponse()
                    body = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with lock:
                    proxy.counts[f"{kind} requests"] += 1
                    proxy.counts[f"{kind} bytes"] += len(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the measurements ---------------------------------------------------------------------------


def index_once(root: str, ckpt: Path, encoder, workers: int | None) -> tuple[float, int]:
    """(seconds, photos) of one `index_photos` of `root` into a fresh library."""
    from indexer import IndexOptions, index_photos

    with tempfile.TemporaryDirectory() as lib:
        options = IndexOptions(library=Path(lib), model=str(ckpt), batch_size=32, workers=workers)
        start = time.perf_counter()
        summary = index_photos(root, options, encoder=encoder)
        seconds = time.perf_counter() - start
    assert summary.failed == 0, summary.to_text()
    return seconds, summary.new


def measure_indexing(table: Table, args, moto: Moto) -> None:
    from koclip import load_encoder

    folder = photo_folder(args.cache, args.photos, (1024, 768))
    files = sorted(folder.glob("*.jpg"))
    upload(client(moto.endpoint), [(f"photos/{f.name}", f.read_bytes()) for f in files])
    ckpt = vision_checkpoint(args.cache) if args.model == "base" else tiny_checkpoint(args.cache)
    encoder = load_encoder(str(ckpt), ("vision",), batch_size=32)
    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
    index_once(str(folder), ckpt, encoder, args.workers)  # compiles the tower: not timed
    best = {"folder": float("inf"), "bucket": float("inf")}
    moto_share = 0.0
    for _ in range(args.repeat):
        for name, root in (("folder", str(folder)), ("bucket", f"s3://{BUCKET}/photos")):
            cpu = moto.cpu_seconds()
            seconds, n = index_once(root, ckpt, encoder, args.workers)
            assert n == len(files), (name, n)
            if seconds < best[name]:
                best[name] = seconds
                if name == "bucket":
                    moto_share = (moto.cpu_seconds() - cpu) / seconds
    n = len(files)
    local, remote = n / best["folder"], n / best["bucket"]
    threads = args.workers or "default"
    what = f"{n} 1024x768 JPEGs, {args.model} tower, read threads: {threads}"
    table.add(f"indexing from a folder ({what})", f"{local:.1f} photos/s")
    table.add(
        f"indexing from the bucket (moto on 127.0.0.1: {moto_share:.0%} of a core meanwhile)",
        f"{remote:.1f} photos/s ({remote / local:.2f}x)",
        ">= 0.9x the folder",
        remote / local >= 0.9,
    )


def measure_listing(table: Table, args, moto: Moto) -> None:
    from storage import open_root

    s3 = client(moto.endpoint)
    print(f"uploading {args.objects:,} objects to list ...", file=sys.stderr)
    upload(s3, [(f"many/{i % 100:02d}/{i:07d}.jpg", b"x") for i in range(args.objects)])
    root = open_root(f"s3://{BUCKET}/many", endpoint_url=moto.endpoint)
    cpu = moto.cpu_seconds()
    start = time.perf_counter()
    n = sum(1 for _ in root.list())
    seconds = time.perf_counter() - start
    server = moto.cpu_seconds() - cpu
    assert n == args.objects, n
    table.add(
        f"listing {n:,} objects",
        f"{n / seconds:,.0f} entries/s ({seconds:.2f} s)",
        f"moto's process: {server:.2f} CPU-s of it ({server / seconds:.0%})",
    )


def measure_unchanged(table: Table, args, moto: Moto) -> None:
    from indexer import IndexOptions, index_photos

    n = min(args.objects, args.unchanged)
    s3 = client(moto.endpoint)
    print(f"uploading and indexing {n:,} small JPEGs ...", file=sys.stderr)
    upload(s3, [(f"same/{i % 100:02d}/{i:07d}.jpg", d) for i, d in enumerate(tiny_jpegs(n))])
    ckpt = tiny_checkpoint(args.cache)
    url = f"s3://{BUCKET}/same"
    proxy = CountingProxy(moto.port)
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    try:
        with tempfile.TemporaryDirectory() as lib:
            options = IndexOptions(library=Path(lib), model=str(ckpt), workers=args.workers)
            first = index_photos(url, options)
            assert first.new == n and first.failed == 0, first.to_text()
            proxy.counts.clear()
            start = time.perf_counter()
            again = index_photos(url, options)
            seconds = time.perf_counter() - start
    finally:
        os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
        proxy.close()
    assert again.new == again.updated == again.deleted == 0, again.to_text()
    c = proxy.counts
    table.add(
        f"no-change index of {n:,} objects",
        f"{seconds:.2f} s; {c['list requests']} listings, {c['list bytes'] / 1e6:.2f} MB",
        f"object reads: {c['read requests']} ({c['read bytes']:,} bytes)",
        c["read requests"] == 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="1024x768 JPEGs to index")
    parser.add_argument("--objects", type=int, default=100_000, help="objects to list")
    parser.add_argument("--unchanged", type=int, default=10_000, help="objects re-indexed")
    parser.add_argument("--model", choices=("base", "tiny"), default="base")
    parser.add_argument(
        "--workers", type=int, default=None, help="read threads (default: each root's own)"
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "koclip-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.update(ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)

    import boto3
    import moto
    import s3fs

    moto_server = Moto()
    try:
        client(moto_server.endpoint).create_bucket(Bucket=BUCKET)
        table = Table()
        if args.photos:
            measure_indexing(table, args, moto_server)
        if args.objects:
            measure_listing(table, args, moto_server)
        if args.objects and args.unchanged:
            measure_unchanged(table, args, moto_server)
    finally:
        moto_server.stop()
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpu_model()}, {os.cpu_count()} cores; "
        f"{load_line()}\nPython {platform.python_version()}, moto {moto.__version__}, "
        f"s3fs {s3fs.__version__}, boto3 {boto3.__version__}\n"
    )
    table.print()


if __name__ == "__main__":
    main()
