"""storage/: object-store roots against moto's S3 server (real HTTP) behind the fault proxy."""

from __future__ import annotations

import os

import pytest

import storage
from storage import (
    NoSuchRootError,
    ObjectChangedError,
    ObjectGoneError,
    ObjectTooLargeError,
    Retry,
    StorageCredentialsError,
    StorageUnreachableError,
    is_url,
    open_root,
)
from tests import s3_fixtures
from tests.s3_fixtures import SECRET_KEY, Fault, jpeg

moto_server, s3 = s3_fixtures.moto_server, s3_fixtures.s3  # the fixtures, used by name

FAST = Retry(tries=4, base=0.01, cap=0.05)


def test_is_url():
    assert is_url("s3://bucket/prefix") and is_url("gs://b") and is_url("az://c/p")
    assert is_url("abfs://c/p")
    for local in ("photos", "/home/me/사진", "C:\\photos", "file:///tmp/x", "./s3:/x"):
        assert not is_url(local)
    from pathlib import Path

    assert not is_url(Path("s3:/x"))


def test_url_display_and_endpoint(s3):
    root = open_root(f"s3://{s3.bucket}/a/b/", retry=FAST)
    assert root.url == f"s3://{s3.bucket}/a/b" == root.display
    assert root.endpoint == s3.endpoint  # from $AWS_ENDPOINT_URL, as boto reads it
    other = open_root(f"s3://{s3.bucket}", endpoint_url="http://user:pw@127.0.0.1:9/?x=1")
    assert other.url == f"s3://{s3.bucket}"
    assert other.endpoint_display == "http://127.0.0.1:9/"
    assert "pw" not in repr(other) and SECRET_KEY not in repr(root)


def test_list_read_and_bounds(s3):
    one, two = jpeg(1), jpeg(2)
    s3.put("p/a.jpg", one)
    s3.put("p/sub/한글.jpg", two)
    s3.put("p/.hidden/x.jpg", one)
    s3.put("p/sub/", b"")  # a folder marker
    s3.put("p2/not-under.jpg", one)
    root = open_root(s3.url("p"), retry=FAST)
    root.probe()
    entries = {e.relpath: e for e in root.list()}
    assert sorted(entries) == ["a.jpg", "sub/한글.jpg"]
    a = entries["a.jpg"]
    assert a.size == len(one) and a.etag and a.mtime_ns > 0
    assert [e.relpath for e in root.list("sub")] == ["sub/한글.jpg"]
    assert root.read("a.jpg", max_bytes=10**6, expect=a) == one
    assert root.open("sub/한글.jpg", max_bytes=10**6).read() == two
    # Too large by the listed size: refused with no request at all.
    before = len(s3.proxy.object_gets())
    with pytest.raises(ObjectTooLargeError):
        root.read("a.jpg", max_bytes=len(one) - 1, expect=a)
    assert len(s3.proxy.object_gets()) == before
    # Without a listing, by the size the store answers (the body is not read).
    with pytest.raises(ObjectTooLargeError):
        root.read("a.jpg", max_bytes=len(one) - 1)
    # Changed since listed: If-Match fails.
    s3.put("p/a.jpg", two)
    with pytest.raises(ObjectChangedError):
        root.read("a.jpg", max_bytes=10**6, expect=a)
    s3.delete("p/a.jpg")
    with pytest.raises(ObjectGoneError):
        root.read("a.jpg", max_bytes=10**6)


def test_a_listed_size_over_the_bound_is_refused_before_download(s3):
    s3.put("big.jpg", jpeg(3))
    root = open_root(s3.url(), retry=FAST)
    (entry,) = root.list()
    huge = storage.ObjectEntry(entry.relpath, 2 * 1024**3, entry.mtime_ns, entry.etag)
    with pytest.raises(ObjectTooLargeError, match="not downloaded"):
        root.read(entry.relpath, max_bytes=256 * 1024**2, expect=huge)
    assert s3.proxy.object_gets() == []


def test_retries_5xx_slowdown_drops_and_delays(s3):
    for i in range(6):
        s3.put(f"r/{i}.jpg", jpeg(i))
    seen: dict[str, int] = {}

    def fault(request):
        n = seen[request.path + request.query] = seen.get(request.path + request.query, 0) + 1
        if n == 1 and "list-type" in request.query:
            return Fault(status=500, code="InternalError")
        if request.is_object_get and n == 1:
            kind = int(request.path[-5]) % 3
            return [
                Fault(status=503, code="SlowDown"),
                Fault(status=500, code="InternalError"),
                Fault(drop=True),
            ][kind]
        if request.is_object_get and n == 2:
            return Fault(delay=0.2)
        return None

    s3.proxy.fault = fault
    root = open_root(s3.url("r"), retry=FAST)
    entries = list(root.list())
    assert len(entries) == 6
    got = dict(root.read_many(entries, max_bytes=10**6, workers=3))
    assert {e.relpath: v for e, v in got.items()} == {f"{i}.jpg": jpeg(i) for i in range(6)}
    assert len(s3.proxy.object_gets()) == 12  # each read failed once, then succeeded


def test_timeouts_are_retried(s3):
    s3.put("t.jpg", jpeg(1))
    calls = []

    def fault(request):
        if request.is_object_get:
            calls.append(1)
            if len(calls) == 1:
                return Fault(delay=1.5)
        return None

    s3.proxy.fault = fault
    root = open_root(s3.url(), retry=FAST, timeout=0.5)
    assert root.read("t.jpg", max_bytes=10**6) == jpeg(1)
    assert len(calls) == 2


def test_a_store_that_stays_down_is_unreachable(s3):
    s3.put("x.jpg", jpeg(1))
    root = open_root(s3.url(), retry=FAST)
    (entry,) = root.list()
    s3.proxy.fault = lambda request: Fault(status=503, code="SlowDown")
    with pytest.raises(StorageUnreachableError, match=r"SlowDown \(4 tries\)"):
        root.read("x.jpg", max_bytes=10**6, expect=entry)
    s3.proxy.stop()
    with pytest.raises(StorageUnreachableError) as caught:
        root.probe()
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_probe_errors(s3, monkeypatch):
    import moto.settings

    missing = open_root("s3://no-such-bucket-koclip/x", retry=FAST)
    with pytest.raises(NoSuchRootError):
        missing.probe()
    empty = open_root(s3.url("nothing-here"), retry=FAST)
    empty.probe()  # an empty prefix is the caller's to judge
    assert list(empty.list()) == []
    s3.put("k/a.jpg", jpeg(1))
    # moto checks keys once its no-auth allowance is spent: an unknown key is refused.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    wrong = open_root(s3.url("k"), retry=FAST)
    with pytest.raises(StorageCredentialsError) as caught:
        wrong.probe()
    text = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in text
    assert "InvalidAccessKeyId" in text and "AWS_ACCESS_KEY_ID" in text
    assert SECRET_KEY not in text and "AKIAWRONG" not in text


def test_no_credentials_at_all(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageCredentialsError, match="no credentials found"):
        open_root(s3.url(), retry=FAST).probe()


def test_errors_have_rows():
    for cls in (
        storage.StorageCredentialsError,
        storage.NoSuchRootError,
        storage.StorageUnreachableError,
        storage.StorageExtraMissingError,
    ):
        assert cls.exit_code == 2 and issubclass(cls, storage.StorageSetupError)
    assert issubclass(storage.ObjectTooLargeError, storage.ObjectError)


def test_object_paths_join_like_paths():
    root = storage.ObjectPath("s3://bucket/사진/")
    photo = root / "2024/바다.jpg"
    assert photo == "s3://bucket/사진/2024/바다.jpg" and isinstance(photo, storage.ObjectPath)
    assert (photo.name, photo.suffix, photo.as_posix()) == ("바다.jpg", ".jpg", photo)
    assert root / "s3://other/x.jpg" == "s3://other/x.jpg" and root / "/x.jpg" == "/x.jpg"
    assert not isinstance(photo, os.PathLike)


def test_other_fsspec_protocols_keep_the_same_bounds():
    """gs://, az:// ... go through their fsspec filesystem; fsspec's in-memory one stands in."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/koclip-bucket/p/a.jpg", jpeg(1))
    memory.pipe("/koclip-bucket/p/sub/b.jpg", jpeg(2))
    memory.pipe("/koclip-bucket/p/.hidden.jpg", jpeg(3))
    try:
        root = open_root("memory://koclip-bucket/p/", retry=FAST)
        assert root.url == "memory://koclip-bucket/p"
        root.probe()
        entries = {e.relpath: e for e in root.list()}
        assert sorted(entries) == ["a.jpg", "sub/b.jpg"]
        a = entries["a.jpg"]
        assert root.read("a.jpg", max_bytes=10**6, expect=a) == jpeg(1)
        with pytest.raises(ObjectTooLargeError):
            root.read("a.jpg", max_bytes=10)
        memory.pipe("/koclip-bucket/p/a.jpg", jpeg(1) + b"more")
        with pytest.raises(ObjectChangedError):
            root.read("a.jpg", max_bytes=10**6, expect=a)
        with pytest.raises(ObjectGoneError):
            root.read("gone.jpg", max_bytes=10**6)
    finally:
        memory.rm("/koclip-bucket", recursive=True)


def test_a_refused_object_is_its_own_failure(s3):
    s3.put("d/a.jpg", jpeg(1))
    root = open_root(s3.url("d"), retry=FAST)
    s3.proxy.fault = lambda r: Fault(status=403, code="AccessDenied") if r.is_object_get else None
    root.probe(read_one=False)  # listing is allowed
    with pytest.raises(storage.ObjectDeniedError, match="AccessDenied"):
        root.read("a.jpg", max_bytes=10**6)
    with pytest.raises(StorageCredentialsError):
        root.probe()  # the probe's read: the root is not usable as a whole


def test_without_the_extra_one_line_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed: import fails
    with pytest.raises(storage.StorageExtraMissingError) as caught:
        open_root("s3://bucket/p")
    assert caught.value.exit_code == 2
    assert str(caught.value) == "s3:// photo roots need s3fs: pip install 'koclip-search[s3]'"
