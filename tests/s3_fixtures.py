"""An S3 API on 127.0.0.1 for the object-store tests: moto's threaded server (the real HTTP
protocol, its state in this process), behind a small fault-injecting proxy of our own (real
HTTP too) that logs every request and can answer 500/503 SlowDown, delay, drop connections or
go down and come back on the same port.

Fixtures (a test module takes them by name: `moto_server, s3 = s3_fixtures.moto_server,
s3_fixtures.s3`): `moto_server` (one per session), `s3` (per test: a fresh bucket, the proxy, and the
environment boto reads: AWS_ENDPOINT_URL pointing at the proxy, test credentials, no config
files, no instance metadata). `S3.put_jpegs` uploads JPEGs made by tests/indexer_fixtures.py's
writer.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.indexer_fixtures import rgb

ACCESS_KEY = "AKIATESTKOCLIP000001"
SECRET_KEY = "koclip-test-secret-3f1b9c"  # tests check it never appears in any output
REGION = "us-east-1"


@dataclass(frozen=True)
class Request:
    """One request the proxy saw."""

    method: str
    path: str  # without the query, URL-decoded not
    query: str
    headers: dict[str, str]

    @property
    def is_object_get(self) -> bool:
        """A GET of an object (a read), not a listing of the bucket."""
        parts = self.path.strip("/").split("/", 1)
        return self.method == "GET" and len(parts) == 2 and bool(parts[1])


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one request instead of (or before) forwarding it."""

    status: int = 0  # answer this status with an S3 error body (`code`), not forwarding
    code: str = ""
    delay: float = 0.0  # seconds to wait before forwarding
    drop: bool = False  # close the connection without an answer
    before: Callable[[], None] | None = None  # run before forwarding (e.g. replace the object)
    transform: Callable[[bytes], bytes] | None = None  # rewrites the answer's body (a listing)


def _error_body(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{code} (injected by the test proxy)</Message></Error>"
    ).encode()


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of `upstream` ("host:port")."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.log: list[Request] = []
        self.fault: Callable[[Request], Fault | None] = lambda request: None
        self.down = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def object_gets(self, key_part: str = "") -> list[Request]:
        """The object reads logged so far (those whose path holds `key_part`)."""
        with self._lock:
            return [r for r in self.log if r.is_object_get and key_part in r.path]

    def start(self) -> None:
        """Listen (again, on the same port after a `stop`)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self.down = False
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Go down: refuse new connections, and drop every request on connections kept open."""
        self.down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        request = Request(handler.command, parts.path, parts.query, dict(handler.headers))
        with self._lock:
            self.log.append(request)
        fault = None if self.down else self.fault(request)
        if self.down or (fault is not None and fault.drop):
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)
            return
        if fault is not None and fault.status:
            data = _error_body(fault.code or "InternalError")
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
            return
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.before is not None:
            fault.before()
        upstream = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            if fault is not None and fault.transform is not None:
                data = fault.transform(data)
            handler.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    handler.send_header(key, value)
            length_out = response.getheader("Content-Length")
            if handler.command == "HEAD" and length_out is not None:
                handler.send_header("Content-Length", length_out)
            else:
                handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            upstream.close()


@dataclass
class S3:
    """One test's bucket behind the proxy; `client` talks to moto directly (set-up only)."""

    bucket: str
    proxy: FaultProxy
    client: object
    moto_endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def put(self, key: str, data: bytes) -> str:
        """Upload `data` at `key`; its ETag (no quotes)."""
        answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return answer["ETag"].strip('"')

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def copy(self, source: str, key: str) -> None:
        self.client.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source}
        )

    def put_jpegs(self, prefix: str, seeds: dict[str, int], size=(96, 64)) -> dict[str, bytes]:
        """Upload one JPEG per name (`rgb(seed)`, as tests/indexer_fixtures.write_jpeg makes
        them) under `prefix`; the bytes by name."""
        out = {}
        for name, seed in seeds.items():
            data = jpeg(seed, size)
            self.put(f"{prefix}/{name}" if prefix else name, data)
            out[name] = data
        return out


def jpeg(seed: int, size=(96, 64)) -> bytes:
    """The JPEG tests/indexer_fixtures.write_jpeg writes for `seed`, as bytes."""
    buffer = io.BytesIO()
    rgb(seed, size).save(buffer, "JPEG", quality=90, exif=b"")
    return buffer.getvalue()


def write_local_copy(folder: Path, files: dict[str, bytes]) -> Path:
    """The same files in a local folder (to compare an object root with a folder)."""
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port); its "host:port"."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


def s3_environment(tmp_path: Path, endpoint: str) -> dict[str, str]:
    """What boto reads, for a test: the proxy as endpoint, test keys, no files, no IMDS."""
    (tmp_path / "aws").mkdir(exist_ok=True)
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws" / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def s3(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A fresh bucket behind a fresh proxy; the environment set for boto (and children)."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    moto_endpoint = f"http://{moto_server}"
    proxy = FaultProxy(moto_server)
    proxy.start()
    env = s3_environment(tmp_path, proxy.endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    bucket = f"photos-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    try:
        yield S3(bucket, proxy, client, moto_endpoint, env)
    finally:
        proxy.stop()
