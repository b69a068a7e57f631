"""`index s3://bucket/prefix` against moto's S3 server (real HTTP), behind the fault proxy of
tests/s3_fixtures.py: discovery from the listing, no read of an unchanged object, moves by
content hash, faults (5xx, SlowDown, delays, the store going down, an object replaced while
read, a 2 GB listing), credentials and empty prefixes through the command line."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import db
from indexer import IndexOptions, PhotosGoneError, UrlRootError, index_photos
from search import Searcher
from storage import Retry, StorageCredentialsError, StorageUnreachableError
from tests import s3_fixtures
from tests.indexer_fixtures import assert_consistent, rows
from tests.s3_fixtures import SECRET_KEY, Fault, jpeg, write_local_copy

moto_server, s3 = s3_fixtures.moto_server, s3_fixtures.s3  # the fixtures, used by name

FAST = Retry(tries=3, base=0.01, cap=0.05)
PHOTOS = {"a.jpg": 1, "2024/바다.jpg": 2, "2024/b.png": 3, "c/d/e.jpeg": 4, "f.jpg": 5}


def _options(library: Path, ckpt: Path, **kw) -> IndexOptions:
    kw.setdefault("batch_size", 2)
    kw.setdefault("workers", 3)
    kw.setdefault("storage_retry", FAST)
    return IndexOptions(library=library, model=str(ckpt), **kw)


def _upload(s3, prefix: str = "trip") -> dict[str, bytes]:
    files = {}
    for name, seed in PHOTOS.items():
        data = jpeg(seed) if not name.endswith(".png") else _png(seed)
        s3.put(f"{prefix}/{name}", data)
        files[name] = data
    s3.put(f"{prefix}/notes.txt", b"not a photo")
    return files


def _png(seed: int) -> bytes:
    import io

    from tests.indexer_fixtures import rgb

    buffer = io.BytesIO()
    rgb(seed).save(buffer, "PNG")
    return buffer.getvalue()


def _hits(library: Path, ckpt: Path) -> list[tuple[str, float]]:
    with Searcher(library, model=str(ckpt)) as searcher:
        results = searcher.text("바다 사진", k=10)
        return [(h.relpath, round(h.score, 5)) for h in results]


@pytest.mark.slow
def test_a_bucket_is_indexed_and_searched_like_a_folder(s3, tmp_path, tiny_checkpoint):
    files = _upload(s3)
    library = tmp_path / "lib"
    summary = index_photos(s3.url("trip"), _options(library, tiny_checkpoint))
    assert (summary.new, summary.failed) == (5, 0), summary.failures
    assert len(s3.proxy.object_gets()) == 5  # each object read once
    lib = db.Library.open(library)
    with lib:
        assert lib.root_url() == s3.url("trip") and lib.root_endpoint() == s3.endpoint
        stored = rows(lib)
        assert sorted(stored) == sorted(PHOTOS)
        assert all(p.etag and len(p.etag) == 32 for p in stored.values())
        assert stored["a.jpg"].content_hash == db.hash_bytes(files["a.jpg"])
        assert_consistent(lib)

    # The same photos in a folder: the same vectors, the same results.
    folder = write_local_copy(tmp_path / "folder", files)
    index_photos(folder, IndexOptions(model=str(tiny_checkpoint), batch_size=2, workers=2))
    local_lib = db.default_library_dir(folder)
    with db.Library.open(local_lib) as other:
        local_rows = rows(other)
    for name in PHOTOS:
        np.testing.assert_allclose(
            np.frombuffer(stored[name].embedding, "<f4"),
            np.frombuffer(local_rows[name].embedding, "<f4"),
            atol=1e-6,
        )
    assert _hits(library, tiny_checkpoint) == _hits(local_lib, tiny_checkpoint)
    with Searcher(library, model=str(tiny_checkpoint)) as searcher:
        hit = searcher.text("바다", k=10).hits[0]
        assert str(hit.path) == f"{s3.url('trip')}/{hit.relpath}"
        assert searcher.photo_at("2024/바다.jpg").path == f"{s3.url('trip')}/2024/바다.jpg"
        assert searcher.photo_at(f"{s3.url('trip')}/a.jpg").relpath == "a.jpg"
        for elsewhere in ("../trip/a.jpg", "s3://other/a.jpg", "없는.jpg", "/a.jpg"):
            assert searcher.photo_at(elsewhere) is None, elsewhere
        assert {h.relpath for h in searcher.text("사진", under="2024")} == {
            "2024/바다.jpg",
            "2024/b.png",
        }


def test_changes_from_the_listing_alone(s3, tmp_path, tiny_checkpoint, monkeypatch):
    from koclip import load_encoder

    _upload(s3)
    library = tmp_path / "lib"
    encoder = load_encoder(str(tiny_checkpoint), ("vision",), batch_size=2)
    encoded: list[int] = []
    real = encoder.encode_pixels

    def counting(pixels):
        encoded.append(len(pixels))
        return real(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", counting)
    opts = _options(library, tiny_checkpoint)
    assert index_photos(s3.url("trip"), opts, encoder=encoder).new == 5
    assert sum(encoded) == 5

    # Unchanged: the listing says so; no object is read, nothing encoded.
    s3.proxy.log.clear()
    encoded.clear()
    again = index_photos(s3.url("trip"), opts, encoder=encoder)
    assert (again.unchanged, again.new, again.updated) == (5, 0, 0)
    assert s3.proxy.object_gets() == [] and encoded == []

    with db.Library.open(library) as lib:
        before = rows(lib)
    # Changed (new bytes), moved (same bytes, new key), removed.
    s3.put("trip/a.jpg", jpeg(11))
    s3.copy("trip/f.jpg", "trip/moved/f.jpg")
    s3.delete("trip/f.jpg")
    s3.delete("trip/c/d/e.jpeg")
    s3.proxy.log.clear()
    summary = index_photos(s3.url("trip"), opts, encoder=encoder)
    assert (summary.updated, summary.moved, summary.deleted, summary.unchanged) == (1, 1, 1, 2)
    assert sum(encoded) == 1  # only the changed photo: the moved one kept its vector
    gets = sorted(r.path.split("/trip/", 1)[1] for r in s3.proxy.object_gets())
    assert gets == ["a.jpg", "moved/f.jpg"]  # the moved object read once, for its hash
    with db.Library.open(library) as lib:
        after = rows(lib)
        assert_consistent(lib)
    assert sorted(after) == ["2024/b.png", "2024/바다.jpg", "a.jpg", "moved/f.jpg"]
    assert after["moved/f.jpg"].id == before["f.jpg"].id
    assert after["a.jpg"].content_hash == db.hash_bytes(jpeg(11))
    assert after["a.jpg"].etag != before["a.jpg"].etag

    # Every object gone: refused (a wrong prefix looks just like that) unless asked for.
    for name in after:
        s3.delete(f"trip/{name}")
    with pytest.raises(PhotosGoneError, match=r"no photos at .*the library's 4 would be"):
        index_photos(s3.url("trip"), opts, encoder=encoder)
    emptied = dataclasses.replace(opts, allow_empty_root=True)
    assert index_photos(s3.url("trip"), emptied, encoder=encoder).deleted == 4


def test_facts_are_read_from_the_bytes_in_memory(s3, tmp_path, tiny_checkpoint):
    from indexer.testing_facts import gps_tags, jpeg_bytes, make_exif, photo_pixels, xmp_packet

    exif = make_exif(
        taken="2024:07:15 06:10:00", gps=gps_tags(33.4589, 126.9425), make="Apple",
        model="iPhone 15",
    )  # fmt: skip
    packet = xmp_packet(["바다", "해돋이"], "성산일출봉 해돋이")
    s3.put("f/jeju.jpg", jpeg_bytes(exif=exif, xmp=packet, image=photo_pixels((96, 64), 1)))
    library = tmp_path / "lib"
    assert index_photos(s3.url("f"), _options(library, tiny_checkpoint)).new == 1
    with db.Library.open(library) as lib:
        row = rows(lib)["jeju.jpg"]
    assert (row.taken_at_source, str(row.taken_at)) == ("exif", "2024-07-15 06:10:00")
    assert row.place.startswith("제주특별자치도") and row.camera_make == "Apple"
    assert "해돋이" in row.keywords and (row.width, row.height) == (96, 64)


def test_faults_are_retried_and_the_run_completes(s3, tmp_path, tiny_checkpoint):
    _upload(s3)
    seen: dict[str, int] = {}

    def fault(request):
        key = request.method + request.path + request.query
        n = seen[key] = seen.get(key, 0) + 1
        if "list-type" in request.query and n == 1:
            return Fault(status=503, code="SlowDown")
        if request.is_object_get:
            if n == 1:
                return Fault(status=500, code="InternalError")
            if n == 2 and "2024" in request.path:
                return Fault(status=503, code="SlowDown")
            if n == 2:
                return Fault(delay=0.3)
        return None

    s3.proxy.fault = fault
    summary = index_photos(s3.url("trip"), _options(tmp_path / "lib", tiny_checkpoint))
    assert (summary.new, summary.failed) == (5, 0), summary.failures
    assert len(s3.proxy.object_gets()) == 5 + 5 + 2  # a 500 each, then SlowDown for two


def test_the_store_going_down_keeps_committed_batches(s3, tmp_path, tiny_checkpoint):
    for i in range(8):
        s3.put(f"many/{i:02d}.jpg", jpeg(20 + i))
    library = tmp_path / "lib"
    stopped = []

    def down_after_first(batches: int) -> None:
        if not stopped:
            stopped.append(batches)
            s3.proxy.stop()

    opts = _options(library, tiny_checkpoint, workers=1, on_batch_committed=down_after_first)
    with pytest.raises(StorageUnreachableError, match=f"cannot reach {s3.url('many')}"):
        index_photos(s3.url("many"), opts)
    with db.Library.open(library) as lib:
        kept = len(rows(lib))  # the index file catches up when the library is next written
    assert 2 <= kept < 8
    s3.proxy.start()  # back on the same port
    rerun = index_photos(s3.url("many"), _options(library, tiny_checkpoint))
    assert (rerun.new, rerun.unchanged, rerun.failed) == (8 - kept, kept, 0)
    with db.Library.open(library) as lib:
        assert len(rows(lib)) == 8
        assert_consistent(lib)


def test_an_object_replaced_while_read_is_read_next_run(s3, tmp_path, tiny_checkpoint):
    _upload(s3)
    replaced = []

    def fault(request):
        if request.is_object_get and request.path.endswith("/trip/a.jpg") and not replaced:
            replaced.append(1)
            return Fault(before=lambda: s3.put("trip/a.jpg", jpeg(99)))
        return None

    s3.proxy.fault = fault
    library = tmp_path / "lib"
    first = index_photos(s3.url("trip"), _options(library, tiny_checkpoint))
    assert first.new == 4 and [f[0] for f in first.failures] == ["a.jpg"]
    assert "changed while it was read" in first.failures[0][1]
    with db.Library.open(library) as lib:
        assert "a.jpg" not in rows(lib)
    second = index_photos(s3.url("trip"), _options(library, tiny_checkpoint))
    # Its failure is replaced by the photo as it is now (a known path: "updated").
    assert (second.updated, second.unchanged, second.failed) == (1, 4, 0)
    with db.Library.open(library) as lib:
        assert rows(lib)["a.jpg"].content_hash == db.hash_bytes(jpeg(99))


def test_a_2_gb_object_is_refused_before_download_and_a_denied_one_retried(
    s3, tmp_path, tiny_checkpoint
):
    _upload(s3)

    def huge(body: bytes) -> bytes:  # the listing says f.jpg holds 2 GB
        pattern = rb"(<Key>trip/f\.jpg</Key>.*?<Size>)\d+(</Size>)"
        return re.sub(pattern, rb"\g<1>2147483648\g<2>", body, flags=re.S)

    def fault(request):
        if "list-type" in request.query:
            return Fault(transform=huge)
        if request.path.endswith("/trip/a.jpg"):  # this one object is not ours to read
            return Fault(status=403, code="AccessDenied")
        return None

    s3.proxy.fault = fault
    library = tmp_path / "lib"
    summary = index_photos(s3.url("trip"), _options(library, tiny_checkpoint))
    assert summary.new == 3 and [f[0] for f in summary.failures] == ["a.jpg", "f.jpg"]
    assert "access denied to the object (AccessDenied)" in summary.failures[0][1]
    assert "too large to read (2,147 MB; at most 268 MB), not downloaded" in summary.failures[1][1]
    assert s3.proxy.object_gets("f.jpg") == []
    # Next run: the refused object is tried again, the too-large one is not (unchanged).
    s3.proxy.fault = lambda r: Fault(transform=huge) if "list-type" in r.query else None
    s3.proxy.log.clear()
    again = index_photos(s3.url("trip"), _options(library, tiny_checkpoint))
    assert (again.updated, again.unchanged, [f[0] for f in again.failures]) == (1, 3, ["f.jpg"])
    assert [r.path.rsplit("/", 1)[1] for r in s3.proxy.object_gets()] == ["a.jpg"]


def test_watch_polls_the_listing_and_outlives_an_outage(s3, tmp_path, tiny_checkpoint):
    import threading

    from indexer import WatchOptions, watch

    _upload(s3)
    stop = threading.Event()
    passes, states, errors = [], [], []

    def on_pass(summary, full: bool) -> None:
        passes.append(summary)
        if len(passes) == 1:
            s3.proxy.stop()  # the next poll finds the store down
        if summary.new == 1:
            stop.set()

    def on_state(line: str) -> None:
        states.append(line)
        if line.startswith("cannot reach") and s3.proxy.down:
            s3.put("trip/new.jpg", jpeg(42))
            s3.proxy.start()

    def run() -> None:
        try:
            watch(
                s3.url("trip"),
                _options(tmp_path / "lib", tiny_checkpoint),
                WatchOptions(poll=True, poll_interval=0.2),
                on_pass=on_pass,
                on_state=on_state,
                stop=stop,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors == []
    assert passes[0].new == 5 and passes[-1].new == 1
    assert states[0] == f"watching {s3.url('trip')} (polling every 0.2 s)"
    assert any(s.startswith(f"cannot reach {s3.url('trip')}") for s in states)


def test_a_url_root_needs_a_library_folder(s3, tiny_checkpoint):
    with pytest.raises(UrlRootError, match="--library DIR"):
        index_photos(s3.url("trip"), IndexOptions(model=str(tiny_checkpoint)))


# -- the command line ---------------------------------------------------------------------


def _index(*args: str | Path):
    from cli import main

    return CliRunner().invoke(main, ["index", *map(str, args)])


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_empty_prefix_and_wrong_credentials(s3, tmp_path, tiny_checkpoint, monkeypatch):
    import moto.settings

    library = tmp_path / "lib"
    common = ["--library", library, "--model", tiny_checkpoint, "--batch-size", "2"]
    result = _index(s3.url("nothing"), *common)
    assert result.exit_code == 2 and f"no photos at {s3.url('nothing')}" in _one_line(result)
    assert not library.exists()  # no half-made library left behind
    result = _index(s3.url("nothing"), *common, "--allow-empty-root", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 0

    _upload(s3)
    other = tmp_path / "other"
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # keys are checked
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    result = _index(s3.url("trip"), "--library", other, "--model", tiny_checkpoint)
    line = _one_line(result)
    assert result.exit_code == 2 and "credentials were refused (InvalidAccessKeyId)" in line
    assert SECRET_KEY not in result.output and "AKIAWRONG" not in result.output
    assert not other.exists()


def test_cli_index_then_info(s3, tmp_path, tiny_checkpoint, monkeypatch):
    from cli import main

    _upload(s3)
    library = tmp_path / "lib"
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the option instead
    result = _index(
        s3.url("trip"), "--library", library, "--model", tiny_checkpoint,
        "--endpoint-url", s3.endpoint, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 5
    # No endpoint given now: the library's own is used.
    again = _index(s3.url("trip"), "--library", library, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["unchanged"] == 5
    info = CliRunner().invoke(main, ["info", "--library", str(library)])
    assert info.exit_code == 0, info.output
    assert f"photo root:   {s3.url('trip')}" in info.output
    assert f"endpoint:     {s3.endpoint}" in info.output
    assert SECRET_KEY not in info.output
    needs = _index(s3.url("trip"), "--model", tiny_checkpoint)
    assert needs.exit_code == 2 and "--library DIR" in _one_line(needs)


def test_probe_errors_reach_the_caller_unchanged(s3, tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageCredentialsError):
        index_photos(s3.url("trip"), _options(tmp_path / "lib", tiny_checkpoint))
    assert not (tmp_path / "lib").exists()
