"""serve / search / similar / duplicates over a library of photos in object storage: moto's
S3 server on 127.0.0.1 (real HTTP, behind tests/s3_fixtures.py's proxy, which logs every
request), the real indexer and the real app (TestClient), tiny model.

One bucket and library for the module: a test that changes an object uses its own (GONE,
SWAPPED, THUMBED); the library is never re-indexed here, so its rows stay as indexed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli import main
from search import Searcher
from tests import s3_fixtures
from tests.s3_fixtures import ACCESS_KEY, REGION, S3, SECRET_KEY, FaultProxy, jpeg, s3_environment
from web import create_app

moto_server, s3 = s3_fixtures.moto_server, s3_fixtures.s3  # the fixtures, used by name

BASE = "http://127.0.0.1"
GONE, SWAPPED, THUMBED = "sub/b.jpg", "c.jpg", "d.jpg"
PHOTOS = {"a.jpg": 1, GONE: 2, SWAPPED: 3, "여행/바다.jpg": 4, THUMBED: 5}
COPY = "dup/a-copy.jpg"  # the same bytes as a.jpg: an identical duplicate


@dataclass
class Served:
    s3: S3
    library: Path
    url: str
    client: TestClient

    def ids(self) -> dict[str, int]:
        """Photo ids by key (looked up by key, and by URL)."""
        with Searcher(self.library) as searcher:
            ids = {key: searcher.photo_at(key).id for key in (*PHOTOS, COPY)}
            assert searcher.photo_at(f"{self.url}/sub/b.jpg").id == ids["sub/b.jpg"]
            assert searcher.photo_at("../p/a.jpg") is None
            return ids


def _index(url: str, library: Path, ckpt: Path) -> None:
    done = CliRunner().invoke(main, ["index", url, "--library", str(library), "--model", str(ckpt)])
    assert done.exit_code == 0, done.output


@pytest.fixture(scope="module")
def served(moto_server: str, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """tests/s3_fixtures.py's `s3` for the whole module: a bucket behind a proxy, boto's
    environment set; the photos uploaded and indexed, the app open on the library."""
    import boto3

    tmp = tmp_path_factory.mktemp("s3-serve")
    proxy = FaultProxy(moto_server)
    proxy.start()
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        values = s3_environment(tmp, proxy.endpoint)
        for key, value in values.items():
            env.setenv(key, value)
        moto = f"http://{moto_server}"
        client = boto3.client(
            "s3",
            endpoint_url=moto,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        s3 = S3(f"serve-{uuid.uuid4().hex[:12]}", proxy, client, moto, values)
        client.create_bucket(Bucket=s3.bucket)
        s3.put_jpegs("p", PHOTOS)
        s3.copy("p/a.jpg", f"p/{COPY}")
        library = tmp / "library"
        _index(s3.url("p"), library, tiny_checkpoint)
        with TestClient(create_app(library, warm=False), base_url=BASE) as app:
            yield Served(s3, library, s3.url("p"), app)
    proxy.stop()


def test_info_search_and_similar_carry_the_objects_urls(served: Served):
    info = served.client.get("/api/info").json()
    assert info["photo_root"] == served.url and info["photos"] == len(PHOTOS) + 1
    assert info["endpoint"] == served.s3.endpoint  # as the library was indexed through
    ids = served.ids()
    assert set(ids) == {*PHOTOS, COPY}

    found = served.client.get("/api/search", params={"q": "사진", "k": 10}).json()["results"]
    assert {r["relpath"] for r in found} == set(ids)
    assert all(r["path"] == f"{served.url}/{r['relpath']}" for r in found)
    under = served.client.get("/api/search", params={"q": "사진", "under": "sub"}).json()
    assert [r["relpath"] for r in under["results"]] == ["sub/b.jpg"]
    outside = served.client.get("/api/search", params={"q": "사진", "under": "../x"})
    assert outside.status_code == 400 and outside.json()["code"] == "bad_query"

    reads = len(served.s3.proxy.object_gets())
    # By id: the stored vector; by the photo's key or URL in a query: the stored vector too.
    similar = served.client.get(f"/api/photos/{ids['a.jpg']}/similar").json()["results"]
    assert {r["relpath"] for r in similar} == set(ids) - {"a.jpg", COPY}
    by_key = served.client.get("/api/search", params={"q": "sub/b.jpg"}).json()["results"]
    assert "sub/b.jpg" not in {r["relpath"] for r in by_key} and by_key
    assert len(served.s3.proxy.object_gets()) == reads  # no object was read for any of it


@pytest.mark.slow
def test_the_command_line_prints_the_objects_urls(served: Served, tmp_path: Path):
    reads = len(served.s3.proxy.object_gets())
    # A file on this machine with a.jpg's bytes: its stored vector, a.jpg and its copy left out.
    (tmp_path / "mine.jpg").write_bytes(jpeg(PHOTOS["a.jpg"]))
    local = CliRunner().invoke(
        main, ["similar", str(tmp_path / "mine.jpg"), "--library", str(served.library), "--json"]
    )
    assert local.exit_code == 0, local.output
    keys = {r["path"].removeprefix(f"{served.url}/") for r in json.loads(local.output)["results"]}
    assert keys == set(PHOTOS) - {"a.jpg"}
    cli = CliRunner().invoke(
        main, ["similar", f"{served.url}/여행/바다.jpg", "--library", str(served.library), "--json"]
    )
    assert cli.exit_code == 0, cli.output
    paths = [r["path"] for r in json.loads(cli.output)["results"]]
    assert paths and all(p.startswith(f"{served.url}/") for p in paths)
    assert f"{served.url}/여행/바다.jpg" not in paths
    info_cli = CliRunner().invoke(main, ["info", "--library", str(served.library), "--json"])
    assert json.loads(info_cli.output)["photo_root"] == served.url
    table = CliRunner().invoke(main, ["search", "사진", "--library", str(served.library)])
    assert table.exit_code == 0 and f"{served.url}/" in table.output
    outside = CliRunner().invoke(
        main, ["similar", "s3://other-bucket/a.jpg", "--library", str(served.library)]
    )
    assert outside.exit_code == 2 and "not a photo in the library" in outside.output
    assert len(served.s3.proxy.object_gets()) == reads


def test_originals_and_thumbnails_come_from_the_bucket(served: Served):
    ids = served.ids()
    original = served.client.get(f"/api/photos/{ids['여행/바다.jpg']}/original")
    assert original.status_code == 200
    assert original.content == jpeg(PHOTOS["여행/바다.jpg"])
    assert original.headers["content-type"] == "image/jpeg"
    assert "filename*=utf-8''%EB%B0%94%EB%8B%A4.jpg" in original.headers["content-disposition"]

    before = len(served.s3.proxy.object_gets(THUMBED))
    thumb = served.client.get(f"/api/photos/{ids[THUMBED]}/thumbnail")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert len(served.s3.proxy.object_gets(THUMBED)) == before + 1
    cached = list((served.library / "thumbs" / "small").glob(f"{ids[THUMBED]}-*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == thumb.content
    again = served.client.get(f"/api/photos/{ids[THUMBED]}/thumbnail")
    assert again.content == thumb.content
    assert len(served.s3.proxy.object_gets(THUMBED)) == before + 1  # from the local cache


def test_an_object_gone_since_it_was_indexed_is_404(served: Served):
    ids = served.ids()
    served.s3.delete(f"p/{GONE}")
    for route in ("original", "thumbnail"):
        gone = served.client.get(f"/api/photos/{ids[GONE]}/{route}")
        assert gone.status_code == 404 and gone.json()["code"] == "unreadable", gone.text


def test_an_object_replaced_by_a_non_image_is_not_sent(served: Served):
    ids = served.ids()
    served.s3.put(f"p/{SWAPPED}", b"<html>not a photo</html>")
    answer = served.client.get(f"/api/photos/{ids[SWAPPED]}/original")
    assert answer.status_code == 404 and answer.json()["code"] == "unreadable"


def test_duplicates_list_and_set_aside_is_refused(served: Served):
    groups = served.client.get("/api/duplicates", params={"kind": "identical"}).json()
    assert groups["total"] == 1
    group = groups["groups"][0]
    assert {p["relpath"] for p in group["photos"]} == {"a.jpg", COPY}
    assert {p["path"] for p in group["photos"]} == {f"{served.url}/a.jpg", f"{served.url}/{COPY}"}

    ids = [p["id"] for p in group["photos"]]
    body = {"photos": ids, "keep": group["keep_id"]}
    refused = served.client.post("/api/duplicates/set-aside", json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "set_aside_object_storage"
    restore = served.client.post("/api/duplicates/restore", json={})
    assert restore.status_code == 400 and restore.json()["code"] == "set_aside_object_storage"

    listed = CliRunner().invoke(
        main, ["duplicates", "--library", str(served.library), "--kind", "identical", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    keep = json.loads(listed.output)["groups"][0]["keep"]
    assert keep in (f"{served.url}/a.jpg", f"{served.url}/{COPY}")
    for extra in (["--set-aside"], ["--set-aside", "--dry-run"], ["--restore"]):
        # (the listing above found the groups from the database alone: no object was read)
        cli = CliRunner().invoke(main, ["duplicates", "--library", str(served.library), *extra])
        assert cli.exit_code == 2, cli.output
        assert len(cli.output.strip().splitlines()) == 1
        assert "object storage" in cli.output and served.url in cli.output
    # Nothing was moved in the bucket.
    listed = served.s3.client.list_objects_v2(Bucket=served.s3.bucket, Prefix="p/a")["Contents"]
    assert [o["Key"] for o in listed] == ["p/a.jpg"]
    copies = served.s3.client.list_objects_v2(Bucket=served.s3.bucket, Prefix="p/dup/")
    assert [o["Key"] for o in copies["Contents"]] == [f"p/{COPY}"]


def _until(check, what: str, seconds: float = 60.0) -> None:
    """Wait for `check()` to hold (bounded: fails after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_serve_watch_polls_the_listing_and_a_failing_listing_removes_nothing(
    s3: S3, tmp_path: Path, tiny_checkpoint: Path
):
    from cli.serve_cmd import _watcher
    from storage import ObjectPath

    s3.put_jpegs("w", {"a.jpg": 1, "b.jpg": 2})
    library = tmp_path / "library"
    _index(s3.url("w"), library, tiny_checkpoint)
    # What `serve --watch --poll 0.3` runs beside the app.
    watcher = _watcher(ObjectPath(s3.url("w")), library, str(tiny_checkpoint), 0.3)
    with TestClient(create_app(library, warm=False, watcher=watcher), base_url=BASE) as client:

        def photos() -> int:
            return client.get("/api/info").json()["photos"]

        s3.put("w/new/c.jpg", jpeg(3))
        _until(lambda: photos() == 3, "the new object indexed")
        found = client.get("/api/search", params={"q": "사진", "under": "new"}).json()
        assert [r["path"] for r in found["results"]] == [f"{s3.url('w')}/new/c.jpg"]

        # Listings refused (credentials revoked meanwhile): the watcher logs, keeps every photo.
        def refused(request):
            listing = request.method == "GET" and "list-type" in request.query
            return s3_fixtures.Fault(status=403, code="AccessDenied") if listing else None

        s3.proxy.fault = refused
        s3.delete("w/a.jpg")
        seen = len(s3.proxy.log)
        _until(
            lambda: sum("list-type" in r.query for r in s3.proxy.log[seen:]) >= 3,
            "three refused listings",
        )
        assert photos() == 3 and watcher.error is None
        s3.proxy.fault = lambda request: None
        _until(lambda: photos() == 2, "the deleted object removed once the listing works")
    assert watcher.error is None
