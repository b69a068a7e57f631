"""Photo roots in object storage: `s3://bucket/prefix` (and fsspec's other protocols).

An `ObjectRoot` lists the objects under its prefix (`list`: key, size, LastModified, ETag) and
reads one object at a time with the bounds the indexer needs (`read`): a size limit checked
before any byte is downloaded, retries with exponential backoff and jitter on 5xx, throttling
(SlowDown), timeouts and dropped connections, and a check that the object read is the one that
was listed (If-Match on its ETag). `read_many` overlaps reads on a bounded thread pool.

S3 goes through s3fs's client (credentials from boto's standard chain: environment, config
files, instance roles; the endpoint from `endpoint_url`, else $AWS_ENDPOINT_URL_S3 /
$AWS_ENDPOINT_URL as boto reads them). s3fs's and botocore's own retries are turned off, so
the number of tries and the waits are ours (`Retry`). Nothing here stores or prints a secret.
"""

from __future__ import annotations

import calendar
import io
import os
import random
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from storage.errors import (
    NoSuchRootError,
    ObjectChangedError,
    ObjectDeniedError,
    ObjectError,
    ObjectGoneError,
    ObjectTooLargeError,
    StorageCredentialsError,
    StorageError,
    StorageExtraMissingError,
    StorageUnreachableError,
)

T = TypeVar("T")

EXTRA_HINT = "pip install 'koclip-search[s3]'"
CREDENTIALS_HINT = (
    "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (boto's standard chain)"
)
DEFAULT_WORKERS = 8
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_LOCAL_PROTOCOLS = {"file", "local"}
# Error codes (and HTTP statuses) a later try may cure.
_RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
}
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}


def is_url(text: object) -> bool:
    """True for an object-store URL ("s3://…", "gs://…", "az://…", "abfs://…"); a local path
    (a Path, "photos", "C:\\photos", "file://…") is not one."""
    if not isinstance(text, str):
        return False
    match = _URL.match(text)
    return bool(match) and match.group(1).lower() not in _LOCAL_PROTOCOLS


@dataclass(frozen=True)
class ObjectEntry:
    """One listed object: `relpath` is its key relative to the root (POSIX, NFC: the library's
    path key), `key` the relative key as the store spells it when that differs ("" when it is
    `relpath`), `mtime_ns` its LastModified, `etag` its ETag without quotes."""

    relpath: str
    size: int
    mtime_ns: int
    etag: str
    key: str = ""

    @property
    def on_store(self) -> str:
        """The key relative to the root as the store spells it."""
        return self.key or self.relpath


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a request is tried: `tries` in all, waiting
    `base * 2**n` seconds (at most `cap`, times a random factor in [0.5, 1]) between them."""

    tries: int = 6
    base: float = 0.25
    cap: float = 8.0

    def wait(self, attempt: int) -> float:
        return min(self.cap, self.base * 2**attempt) * random.uniform(0.5, 1.0)


def open_root(
    url: str,
    *,
    endpoint_url: str | None = None,
    stored_endpoint: Callable[[], str | None] | None = None,
    retry: Retry | None = None,
    timeout: float = 30.0,
) -> ObjectRoot:
    """The root at `url`. For s3:// the endpoint is `endpoint_url`, else $AWS_ENDPOINT_URL_S3,
    else $AWS_ENDPOINT_URL, else what `stored_endpoint()` says (the one a library was indexed
    through; asked only then), else AWS itself; `timeout` bounds each connection and each read
    of a response (seconds). No request is made here (`ObjectRoot.probe` makes the first)."""
    if not is_url(url):
        raise StorageError(f"not an object-store URL: {url!r}")
    parts = urlsplit(url)
    protocol = parts.scheme.lower()
    bucket = parts.hostname or ""
    if not bucket:
        raise NoSuchRootError(f"{_display_url(url)} names no bucket")
    prefix = parts.path.strip("/")
    if protocol in ("s3", "s3a"):
        return S3Root(
            bucket,
            prefix,
            endpoint=_endpoint(endpoint_url, stored_endpoint),
            retry=retry or Retry(),
            timeout=timeout,
        )
    return FsspecRoot(protocol, bucket, prefix, retry=retry or Retry(), timeout=timeout)


def _endpoint(option: str | None, stored: Callable[[], str | None] | None) -> str | None:
    for value in (
        option,
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    ):
        if value:
            return value
    return (stored() or None) if stored is not None else None


def _display_url(url: str) -> str:
    """`url` without user info, query or fragment (where secrets could hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class ObjectRoot:
    """A prefix of a bucket (base class: see `open_root`)."""

    protocol: str = ""

    def __init__(
        self, protocol: str, bucket: str, prefix: str, *, retry: Retry, timeout: float
    ) -> None:
        self.protocol = protocol
        self.bucket = bucket
        self.prefix = prefix
        self.retry = retry
        self.timeout = timeout
        self.endpoint: str | None = None

    @property
    def url(self) -> str:
        """The canonical URL: "s3://bucket/prefix", no trailing slash."""
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{self.protocol}://{self.bucket}{tail}"

    @property
    def display(self) -> str:
        """The URL as shown to a user (the canonical one holds no secret)."""
        return self.url

    @property
    def endpoint_display(self) -> str | None:
        """The endpoint without user info or query, None for the store's default."""
        return _display_url(self.endpoint) if self.endpoint else None

    def __repr__(self) -> str:
        where = f" at {self.endpoint_display}" if self.endpoint else ""
        return f"<{type(self).__name__} {self.url}{where}>"

    # --- what subclasses provide -------------------------------------------------------
    def _list_page(self, under: str, token: Any) -> tuple[list[tuple[str, int, int, str]], Any]:
        """One page of (key relative to the root, size, mtime_ns, etag) under `under` (a
        relative prefix, "" for all) and the next page's token (None: the last page)."""
        raise NotImplementedError

    def _get(self, key: str, *, max_bytes: int, expect: ObjectEntry | None) -> bytes:
        """One try at reading the object (`key` relative to the root)."""
        raise NotImplementedError

    def _probe(self, read_one: bool) -> None:
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        """(kind, reason) of a failed request: kind is "retry", "credentials", "no-root",
        "gone", "changed", "too-large" or "other"."""
        raise NotImplementedError

    # --- the API -------------------------------------------------------------------------
    def list(self, prefix_rel: str = "") -> Iterator[ObjectEntry]:
        """Every object under the root (or under its relative prefix `prefix_rel`), in the
        store's order (by key). Folder markers and hidden keys (a part starting with ".") are
        left out; the caller filters by suffix. A failing page is retried (`Retry`)."""
        under = prefix_rel.strip("/")
        token: Any = None
        while True:
            page, token = self._tried(
                lambda token=token: self._list_page(under, token), what="list"
            )
            for key, size, mtime_ns, etag in page:
                if not key or key.endswith("/") or any(p.startswith(".") for p in key.split("/")):
                    continue
                rel = unicodedata.normalize("NFC", key)
                yield ObjectEntry(rel, size, mtime_ns, etag, "" if rel == key else key)
            if token is None:
                return

    def read(self, relpath: str, *, max_bytes: int, expect: ObjectEntry | None = None) -> bytes:
        """The object's bytes, in one bounded GET (retried as `Retry` says). An object larger
        than `max_bytes` (by `expect`'s listed size, or the size the store answers) raises
        ObjectTooLargeError before its body is read; one that is not `expect` any more (ETag or
        size) ObjectChangedError; one removed ObjectGoneError. A store that stays unreachable
        raises StorageUnreachableError, refused credentials StorageCredentialsError."""
        if expect is not None and expect.size > max_bytes:
            raise ObjectTooLargeError(_too_large(expect.size, max_bytes))
        key = expect.on_store if expect is not None else relpath
        return self._tried(lambda: self._get(key, max_bytes=max_bytes, expect=expect), what=relpath)

    def open(
        self, relpath: str, *, max_bytes: int, expect: ObjectEntry | None = None
    ) -> io.BytesIO:
        """A seekable binary file of the object's bytes (`read`), for Pillow."""
        return io.BytesIO(self.read(relpath, max_bytes=max_bytes, expect=expect))

    def read_many(
        self,
        entries: Iterable[ObjectEntry],
        *,
        max_bytes: int,
        workers: int = DEFAULT_WORKERS,
    ) -> Iterator[tuple[ObjectEntry, bytes | Exception]]:
        """(entry, its bytes or the exception its `read` raised) for each entry, as the reads
        finish, `workers` at a time (at most 2 * workers entries taken ahead from `entries`).
        Closing the iterator early cancels the reads not started."""
        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="storage-read")
        pending: dict[Future, ObjectEntry] = {}
        source = iter(entries)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < 2 * max(1, workers):
                    entry = next(source, None)
                    if entry is None:
                        exhausted = True
                        break
                    future = pool.submit(
                        self.read, entry.relpath, max_bytes=max_bytes, expect=entry
                    )
                    pending[future] = entry
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    entry = pending.pop(future)
                    exc = future.exception()
                    yield entry, (exc if exc is not None else future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def probe(self, *, read_one: bool = True) -> None:
        """List the root and read one byte of one object (`read_one=False`: list only, so a
        run over an unchanged root reads no object at all): raises StorageCredentialsError,
        NoSuchRootError or StorageUnreachableError (each one line, exit 2) when the root cannot
        be used. A prefix without objects is no error here."""
        self._tried(lambda: self._probe(read_one), what="probe")

    # --- retries and the errors a user reads --------------------------------------------------
    def _tried(self, call: Callable[[], T], *, what: str) -> T:
        for attempt in range(self.retry.tries):
            try:
                return call()
            except ObjectError:
                raise
            except Exception as exc:
                kind, reason = self._classify(exc)
                if kind != "retry":
                    raise self._error(kind, reason, what) from None
                if attempt + 1 >= self.retry.tries:
                    raise StorageUnreachableError(
                        f"cannot reach {self._where()}: {reason} ({self.retry.tries} tries)"
                    ) from None
                time.sleep(self.retry.wait(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _where(self) -> str:
        where = f" at {self.endpoint_display}" if self.endpoint else ""
        return f"{self.display}{where}"

    def _error(self, kind: str, reason: str, what: str) -> StorageError:
        if kind == "credentials" and reason == "AccessDenied" and what not in ("list", "probe"):
            # Keys that may list the root but not read this object: this photo fails (tried
            # again next run); keys refused outright fail the listing first.
            return ObjectDeniedError(f"access denied to the object ({reason})")
        if kind == "credentials":
            return StorageCredentialsError(
                f"cannot read {self._where()}: the credentials were refused ({reason}) — "
                f"{CREDENTIALS_HINT}"
            )
        if kind == "no-root":
            return NoSuchRootError(f"cannot read {self._where()}: no such bucket ({reason})")
        if kind == "gone":
            return ObjectGoneError(f"removed since it was listed ({reason})")
        if kind == "changed":
            return ObjectChangedError(f"changed while it was read ({reason}); read next run")
        if kind == "too-large":
            return ObjectTooLargeError(reason)
        if what in ("list", "probe"):
            return StorageError(f"cannot {what} {self._where()}: {reason}")
        return ObjectError(f"cannot read it: {reason}")


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"too large to read ({size / 1e6:,.0f} MB; at most {max_bytes / 1e6:,.0f} MB), "
        "not downloaded"
    )


def _mtime_ns(value: Any) -> int:
    """LastModified (a datetime, or seconds) as integer nanoseconds since the epoch (UTC)."""
    if hasattr(value, "utctimetuple"):
        return calendar.timegm(value.utctimetuple()) * 10**9 + value.microsecond * 1000
    if isinstance(value, (int, float)):
        return int(value * 10**9)
    return 0


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


class S3Root(ObjectRoot):
    """s3:// through s3fs's aiobotocore client (its credential chain, one connection pool)."""

    def __init__(
        self, bucket: str, prefix: str, *, endpoint: str | None, retry: Retry, timeout: float
    ) -> None:
        super().__init__("s3", bucket, prefix, retry=retry, timeout=timeout)
        self.endpoint = endpoint
        try:
            import s3fs
        except ImportError:
            raise StorageExtraMissingError(f"s3:// photo roots need s3fs: {EXTRA_HINT}") from None
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        self.fs = s3fs.S3FileSystem(
            skip_instance_cache=True,  # each root its own endpoint and credentials
            use_listings_cache=False,
            client_kwargs=client_kwargs,
            config_kwargs={
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                "connect_timeout": timeout,
                "read_timeout": timeout,
            },
        )
        self.fs.retries = 1  # s3fs's own retry loop: one try; our Retry decides
        self._client: Any = None

    def _sync(self, make: Callable[[Any], Any]) -> Any:
        """Run the coroutine `make(client)` on s3fs's event loop and return its result."""
        from fsspec.asyn import sync

        async def run() -> Any:
            client = self._client
            if client is None:
                client = self._client = await self.fs.set_session()
            return await make(client)

        return sync(self.fs.loop, run, timeout=None)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_page(self, under: str, token: Any) -> tuple[list[tuple[str, int, int, str]], Any]:
        start = self._full(under) if under else self.prefix
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{start}/" if start else ""}
        if token:
            kwargs["ContinuationToken"] = token
        page = self._sync(lambda c: c.list_objects_v2(**kwargs))
        cut = len(self.prefix) + 1 if self.prefix else 0
        rows = [
            (
                o["Key"][cut:],
                int(o.get("Size", 0)),
                _mtime_ns(o.get("LastModified")),
                _etag(o.get("ETag")),
            )
            for o in page.get("Contents", ())
        ]
        return rows, (page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def _get(self, key: str, *, max_bytes: int, expect: ObjectEntry | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if expect is not None and expect.etag:
            kwargs["IfMatch"] = f'"{expect.etag}"'

        async def get(client: Any) -> bytes:
            response = await client.get_object(**kwargs)
            body = response["Body"]
            try:
                length = int(response.get("ContentLength", -1))
                etag = _etag(response.get("ETag"))
                if length > max_bytes:
                    raise ObjectTooLargeError(_too_large(length, max_bytes))
                if expect is not None and (
                    (expect.etag and etag and etag != expect.etag)
                    or (length >= 0 and length != expect.size)
                ):
                    raise ObjectChangedError(
                        "changed while it was read (its ETag or size is not the listed one); "
                        "read next run"
                    )
                chunks: list[bytes] = []
                got = 0
                while True:
                    chunk = await body.read(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > max_bytes:
                        raise ObjectTooLargeError(_too_large(got, max_bytes))
                    chunks.append(chunk)
            finally:
                body.close()
            if length >= 0 and got != length:
                raise ConnectionError(f"the response ended early ({got} of {length} bytes)")
            return b"".join(chunks)

        return self._sync(get)

    def _probe(self, read_one: bool) -> None:
        prefix = f"{self.prefix}/" if self.prefix else ""
        page = self._sync(lambda c: c.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1))
        first = next(iter(page.get("Contents", ())), None)
        if first is not None and read_one:
            key = first["Key"]

            async def one_byte(client: Any) -> None:
                response = await client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
                response["Body"].close()

            self._sync(one_byte)

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return "credentials", "no credentials found"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _RETRY_CODES or status >= 500 or status == 429:
                return "retry", code or f"HTTP {status}"
            if code in _CREDENTIAL_CODES or status in (401, 403):
                return "credentials", code or f"HTTP {status}"
            if code == "NoSuchBucket":
                return "no-root", code
            if code in ("NoSuchKey", "404") or status == 404:
                return "gone", code or "HTTP 404"
            if code == "PreconditionFailed" or status == 412:
                return "changed", "its ETag is not the listed one"
            return "other", code or f"HTTP {status}"
        return _classify_transport(exc)


def _classify_transport(exc: BaseException) -> tuple[str, str]:
    """Connection-level failures: refused, reset, timed out, cut short."""
    name = type(exc).__name__
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return "retry", _short(exc)
    try:
        from botocore.exceptions import (
            ConnectionClosedError,
            EndpointConnectionError,
            HTTPClientError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        if isinstance(
            exc,
            (
                ConnectionClosedError,
                EndpointConnectionError,
                HTTPClientError,
                IncompleteReadError,
                ReadTimeoutError,
                ResponseStreamingError,
            ),
        ):
            return "retry", _short(exc)
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        pass
    if "Timeout" in name or "Connection" in name or "Payload" in name:
        return "retry", _short(exc)
    return "other", _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FsspecRoot(ObjectRoot):
    """Any other fsspec protocol (gs://, az://, abfs://, …) through its filesystem: the same
    bounds (size before download, retries), the ETag compared where the store reports one."""

    def __init__(
        self, protocol: str, bucket: str, prefix: str, *, retry: Retry, timeout: float
    ) -> None:
        super().__init__(protocol, bucket, prefix, retry=retry, timeout=timeout)
        try:
            import fsspec

            self.fs = fsspec.filesystem(protocol, skip_instance_cache=True)
        except (ImportError, ValueError) as exc:
            raise StorageExtraMissingError(
                f"{protocol}:// photo roots need fsspec and its {protocol} filesystem "
                f"({EXTRA_HINT}, and gcsfs or adlfs beside it): {_short(exc)}"
            ) from None

    def _root_path(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def _list_page(self, under: str, token: Any) -> tuple[list[tuple[str, int, int, str]], Any]:
        root = self._root_path()
        start = f"{root}/{under}" if under else root
        self.fs.invalidate_cache()
        found = self.fs.find(start, detail=True)
        rows = []
        for path, info in sorted(found.items()):
            if info.get("type") == "directory":
                continue
            rel = path.strip("/")[len(root) + 1 :]
            rows.append((rel, int(info.get("size") or 0), _info_mtime(info), _info_etag(info)))
        return rows, None

    def _get(self, key: str, *, max_bytes: int, expect: ObjectEntry | None) -> bytes:
        path = f"{self._root_path()}/{key}"
        info = self.fs.info(path)
        size = int(info.get("size") or 0)
        if size > max_bytes:
            raise ObjectTooLargeError(_too_large(size, max_bytes))
        if expect is not None and (
            size != expect.size or (expect.etag and _info_etag(info) not in ("", expect.etag))
        ):
            raise ObjectChangedError("changed since it was listed; read next run")
        data = self.fs.cat_file(path, start=0, end=max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectTooLargeError(_too_large(len(data), max_bytes))
        if expect is not None and len(data) != expect.size:
            raise ObjectChangedError("changed while it was read; read next run")
        return data

    def _probe(self, read_one: bool) -> None:
        listed = self.fs.ls(self._root_path(), detail=True)
        files = [i for i in listed if i.get("type") != "directory"]
        if files and read_one:
            self.fs.cat_file(files[0]["name"], start=0, end=1)

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        if isinstance(exc, PermissionError):
            return "credentials", _short(exc)
        if isinstance(exc, FileNotFoundError):
            return "gone", _short(exc)
        return _classify_transport(exc)


def _info_mtime(info: dict) -> int:
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, str):
            from datetime import datetime

            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if value is not None:
            return _mtime_ns(value)
    return 0


def _info_etag(info: dict) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return _etag(info[key])
    return ""
