"""web/: what the server refuses and what it bounds (issue 23).

Cross-site writes (Origin, Sec-Fetch-Site), one cap on every text and on every body, the
process's decode budget (503 with Retry-After, memory back near the start after a burst),
originals of every format the indexer reads, reads that never leave the real photo root, and
a server that follows its library to another model after `index --rebuild --model other`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, features

import db
from koclip.images.preprocess import IMAGE_SIZE
from search import ModelMismatchError, Searcher
from tests.search_fixtures import error_json, index_folder, ok_json, write_photos
from tests.test_web_api import BASE, client, ids, library, photos  # noqa: F401 (fixtures)
from web import create_app
from web.budget import DECODES
from web.params import MAX_TEXT

FOREIGN_ORIGINS = [
    "http://evil.example",
    "http://127.0.0.1.evil.example",
    "http://127.0.0.1:8080",  # another port of the same host
    "https://127.0.0.1",  # another scheme
    "null",  # a sandboxed frame, a file:// page
    "http://localhost",  # another name for the same address is another origin
    "garbage",
]


def _jpeg(size=(40, 30), colour=(30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _compose_body(text: str = "바다") -> dict:
    return {"terms": [{"text": text}], "k": 3}


# -- cross-site writes ------------------------------------------------------------------------


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_a_foreign_origin_cannot_post(client, origin):  # noqa: F811
    headers = {"Origin": origin}
    error_json(
        client.post("/api/compose", json=_compose_body(), headers=headers), 403, "cross_origin"
    )
    # A cross-site HTML form: multipart, and a raw body as a fetch with no-cors would send.
    files = {"image": ("a.jpg", _jpeg(), "image/jpeg")}
    error_json(client.post("/api/image", files=files, headers=headers), 403, "cross_origin")
    raw = {**headers, "Content-Type": "image/jpeg"}
    error_json(client.post("/api/image", content=_jpeg(), headers=raw), 403, "cross_origin")
    for url, body in (
        ("/api/duplicates/restore", {}),
        ("/api/duplicates/set-aside", {"photos": [1, 2], "keep": 1}),
    ):
        error_json(client.post(url, json=body, headers=headers), 403, "cross_origin")


def test_a_refused_restore_moves_nothing(client, photos):  # noqa: F811
    before = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    error_json(
        client.post("/api/duplicates/restore", json={}, headers={"Origin": "http://evil.example"}),
        403,
        "cross_origin",
    )
    after = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    assert after == before


@pytest.mark.parametrize("site", ["cross-site", "same-site", "CROSS-SITE"])
def test_a_browser_marked_cross_site_request_without_origin_is_refused(client, site):  # noqa: F811
    headers = {"Sec-Fetch-Site": site}
    error_json(
        client.post("/api/compose", json=_compose_body(), headers=headers), 403, "cross_origin"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, the CLI: no Origin at all
        {"Origin": BASE},
        {"Origin": "http://127.0.0.1:80"},  # the default port, written out
        {"Origin": "HTTP://127.0.0.1/"},
        {"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed by the user
    ],
)
def test_same_origin_and_non_browser_posts_are_answered(client, headers):  # noqa: F811
    ok_json(client.post("/api/compose", json=_compose_body(), headers=headers))
    raw = {**headers, "Content-Type": "image/jpeg"}
    ok_json(client.post("/api/image", content=_jpeg(), headers=raw))


def test_the_origin_must_match_the_host_and_port_served(library):  # noqa: F811
    app = create_app(library, warm=False, allowed_hosts=["localhost", "::1"])
    with TestClient(app, base_url="http://localhost:8765") as c:
        ok_json(
            c.post(
                "/api/compose", json=_compose_body(), headers={"Origin": "http://localhost:8765"}
            )
        )
        for origin in ("http://localhost", "http://localhost:8766", "https://localhost:8765"):
            error_json(
                c.post("/api/compose", json=_compose_body(), headers={"Origin": origin}),
                403,
                "cross_origin",
            )
    with TestClient(app, base_url="http://[::1]:8000") as c:
        ok_json(
            c.post("/api/compose", json=_compose_body(), headers={"Origin": "http://[::1]:8000"})
        )
        error_json(
            c.post("/api/compose", json=_compose_body(), headers={"Origin": "http://[::2]:8000"}),
            403,
            "cross_origin",
        )


def test_reads_from_another_origin_are_still_answered(client):  # noqa: F811
    # GETs change nothing (and the browser keeps their answers from the other site).
    headers = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    ok_json(client.get("/api/search", params={"q": "바다"}, headers=headers))


def test_a_query_never_asks_the_servers_file_system(client):  # noqa: F811
    # The CLI reads `a/b` as an image term when such a file exists; the web must not, or its
    # answer would tell a visitor which paths exist on the server.
    here = os.path.abspath(__file__)
    missing = os.path.join(os.path.dirname(here), "no-such-file-here")
    answers = [client.get("/api/search", params={"q": q}) for q in (here, missing)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["query"] != here or answers[0].json()["results"] is not None
    raw = {"Content-Type": "image/jpeg"}
    uploads = [
        client.post("/api/image", params={"q": q}, content=_jpeg(), headers=raw)
        for q in (here, missing)
    ]
    assert [u.status_code for u in uploads] == [200, 200]


# -- one cap on texts, one on bodies ----------------------------------------------------------


def test_every_text_has_the_same_cap(client):  # noqa: F811
    long = "바" * (MAX_TEXT + 1)
    ok_json(client.post("/api/compose", json=_compose_body("바" * MAX_TEXT)))
    error_json(client.post("/api/compose", json=_compose_body(long)), 422, "bad_request")
    for field in ("under", "after", "before"):
        body = {**_compose_body(), field: long}
        error_json(client.post("/api/compose", json=body), 422, "bad_request")
    error_json(client.get("/api/search", params={"q": long}), 422, "bad_request")
    error_json(client.get("/api/search", params={"q": "바다", "under": long}), 422, "bad_request")
    raw = {"Content-Type": "image/jpeg"}
    error_json(
        client.post("/api/image", params={"q": long}, content=_jpeg(), headers=raw),
        422,
        "bad_request",
    )
    error_json(client.get(f"/api/image/{'x' * (MAX_TEXT + 1)}"), 422, "bad_request")


def test_a_huge_compose_body_is_refused_and_not_echoed(client):  # noqa: F811
    text = "바다" * 1_000_000  # ~6 MB of JSON
    body = json.dumps(_compose_body(text), ensure_ascii=False).encode()
    response = client.post(
        "/api/compose", content=body, headers={"Content-Type": "application/json"}
    )
    error_json(response, 413, "too_large")
    assert len(response.content) < 1000

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    response = client.post(
        "/api/compose", content=chunks(), headers={"Content-Type": "application/json"}
    )
    error_json(response, 413, "too_large")
    assert len(response.content) < 1000


def test_a_long_but_legal_restore_fits_its_body_limit(client):  # noqa: F811
    # 100,000 ids (the model's limit) of 19 digits: larger than other bodies may be.
    ids_ = [2**62 + i for i in range(100_000)]
    response = client.post("/api/duplicates/restore", json={"photos": ids_})
    assert response.status_code != 413, response.text


# -- decoding memory, per server --------------------------------------------------------------


def test_a_busy_decode_budget_answers_503_with_retry_after(client):  # noqa: F811
    raw = {"Content-Type": "image/jpeg"}
    with DECODES.reserve(DECODES.total, wait=0):
        response = client.post("/api/image", content=_jpeg(), headers=raw)
        error_json(response, 503, "busy")
        assert int(response.headers["retry-after"]) >= 1
    ok_json(client.post("/api/image", content=_jpeg(), headers=raw))
    assert DECODES.used == 0


@pytest.mark.parametrize("size", [(300, 30000), (30000, 300), (6000, 4000), (20, 5000)])
def test_an_upload_is_kept_only_as_large_as_the_model_can_use(client, size):  # noqa: F811
    # A thin strip under the pixel limit would otherwise be kept whole for paging.
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    raw = {"Content-Type": "image/png"}
    body = ok_json(client.post("/api/image", content=buf.getvalue(), headers=raw))
    kept = client.app.state.backend.uploads.get(body["upload"]).image
    short, long_ = sorted(kept.size)
    assert short <= 2 * IMAGE_SIZE and long_ <= 2 * short, kept.size
    assert short == min(min(size), 2 * IMAGE_SIZE)
    ok_json(client.get(f"/api/image/{body['upload']}"))  # and it still pages


# Run in a fresh process, so that its memory is the server's alone (in the test process,
# whatever earlier tests left allocated moves the numbers).
_BURST = r"""
import io, json, sys, threading, time
from fastapi.testclient import TestClient
from PIL import Image
from web import create_app
from web.budget import DECODES

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

library, base, side = sys.argv[1], sys.argv[2], 5000  # 25 MP: 75 MB as RGB
DECODES.total = side * side  # the budget holds one such decode at a time
buf = io.BytesIO()
Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "PNG")
data = buf.getvalue()
small = io.BytesIO()
Image.new("RGB", (64, 48), (1, 2, 3)).save(small, "JPEG")
raw = {"Content-Type": "image/png"}
with TestClient(create_app(library, warm=False), base_url=base) as client:
    assert client.post("/api/image", content=small.getvalue(),
                       headers={"Content-Type": "image/jpeg"}).status_code == 200
    start = rss_mb()
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    statuses = []

    def upload():
        r = client.post("/api/image", content=data, headers=raw)
        statuses.append([r.status_code, "retry-after" in r.headers])

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=upload) for _ in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    done.set()
    sampler.join()
    print(json.dumps({"start": start, "peak": peak[0], "after": rss_mb(),
                      "statuses": statuses, "used": DECODES.used}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_concurrent_huge_uploads_stay_within_the_budget_and_memory_returns(library):  # noqa: F811
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BURST, str(library), BASE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    codes = {code for code, _ in got["statuses"]}
    assert codes <= {200, 503} and 200 in codes, got
    assert all(retry for code, retry in got["statuses"] if code == 503), got
    # Four decodes at once would hold ~4 x 150 MB; one at a time stays near one.
    assert got["peak"] - got["start"] < 330, got
    assert got["after"] - got["start"] < 60, got
    assert got["used"] == 0


# -- originals of every format the indexer reads ----------------------------------------------

FORMATS = [
    ("JPEG", "a.jpg"),
    ("PNG", "b.png"),
    ("GIF", "c.gif"),
    ("TIFF", "d.tiff"),
    ("WEBP", "e.webp"),
    ("BMP", "f.bmp"),
]
try:
    import pillow_heif  # noqa: F401

    FORMATS.append(("HEIF", "g.heic"))
except ImportError:
    pass
if features.check("avif"):
    FORMATS.append(("AVIF", "h.avif"))


@pytest.fixture(scope="module")
def formats(tmp_path_factory, tiny_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("web-formats")
    rng = np.random.default_rng(3)
    for fmt, name in FORMATS:
        if fmt == "HEIF":
            import pillow_heif

            pillow_heif.register_heif_opener()
        pixels = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((64, 48), Image.Resampling.NEAREST)
        image.save(root / name, fmt)
    index_folder(root, tiny_checkpoint)
    return root


@pytest.mark.parametrize(("fmt", "name"), FORMATS, ids=[f for f, _ in FORMATS])
def test_originals_and_thumbnails_of_every_format(formats, fmt, name):
    library_dir = db.default_library_dir(formats)
    with db.Library.open(library_dir) as lib, lib.session() as s, s.begin():
        pid = {row.path: row.id for row in s.query(db.Photo)}[name]
    with TestClient(create_app(library_dir, warm=False), base_url=BASE) as c:
        response = c.get(f"/api/photos/{pid}/original")
        assert response.status_code == 200, response.text
        assert response.content == (formats / name).read_bytes()
        assert response.headers["content-type"].startswith("image/")
        assert int(response.headers["content-length"]) == len(response.content)
        thumb = c.get(f"/api/photos/{pid}/thumbnail")
        assert thumb.status_code == 200, thumb.text
        assert Image.open(io.BytesIO(thumb.content)).size == (64, 48)


# -- reads stay inside the real photo root ----------------------------------------------------


def test_a_folder_swapped_for_a_link_out_of_the_root_is_404(tmp_path, tiny_checkpoint):
    root = tmp_path / "photos"
    outside = tmp_path / "elsewhere"
    (root / "앨범").mkdir(parents=True)
    outside.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a.jpg", "b.png"):
        pixels = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((64, 48)).save(root / "앨범" / name)
        # Outside: other pictures under the same names (the secrets a swap would expose).
        Image.new("RGB", (64, 48), (255, 0, 0)).save(outside / name)
    library_dir = index_folder(root, tiny_checkpoint)
    with db.Library.open(library_dir) as lib, lib.session() as s, s.begin():
        pids = {row.path: row.id for row in s.query(db.Photo)}
    with TestClient(create_app(library_dir, warm=False), base_url=BASE) as c:
        a, b = pids["앨범/a.jpg"], pids["앨범/b.png"]
        assert c.get(f"/api/photos/{a}/original").status_code == 200
        assert c.get(f"/api/photos/{a}/thumbnail").status_code == 200  # cached now
        shutil.move(root / "앨범", tmp_path / "moved")
        os.symlink(outside, root / "앨범")
        for pid in (a, b):
            for url in (
                f"/api/photos/{pid}/original",
                f"/api/photos/{pid}/thumbnail",
                f"/api/photos/{pid}/thumbnail?size=large",
            ):
                error_json(c.get(url), 404, "unreadable")
        # Swapped back: served again.
        (root / "앨범").unlink()
        shutil.move(tmp_path / "moved", root / "앨범")
        assert c.get(f"/api/photos/{b}/original").status_code == 200


def test_a_photo_root_swapped_for_a_link_elsewhere_is_404(tmp_path, tiny_checkpoint):
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(real / "a.jpg")
    link = tmp_path / "photos"
    os.symlink(real, link)
    library_dir = index_folder(link, tiny_checkpoint)
    with db.Library.open(library_dir) as lib, lib.session() as s, s.begin():
        pid = s.query(db.Photo).one().id
    with TestClient(create_app(library_dir, warm=False), base_url=BASE) as c:
        assert c.get(f"/api/photos/{pid}/original").status_code == 200
        # The library folder stays; only the photo a link leads to changes.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        Image.new("RGB", (64, 48), (255, 0, 0)).save(elsewhere / "a.jpg")
        os.replace(real / "a.jpg", tmp_path / "a-moved.jpg")
        os.symlink(elsewhere / "a.jpg", real / "a.jpg")
        error_json(c.get(f"/api/photos/{pid}/original"), 404, "unreadable")
        error_json(c.get(f"/api/photos/{pid}/thumbnail?size=large"), 404, "unreadable")


# -- a library re-indexed with another model --------------------------------------------------


@pytest.fixture
def rebuilt(tmp_path, tiny_checkpoint, tiny_checkpoint_other):
    """A library indexed with one model, and a function re-indexing it with the other."""
    root = tmp_path / "photos"
    root.mkdir()
    write_photos(root)

    def rebuild() -> None:
        from indexer import IndexOptions, index_photos

        options = IndexOptions(
            model=str(tiny_checkpoint_other), rebuild=True, workers=2, batch_size=8
        )
        index_photos(root, options)

    return index_folder(root, tiny_checkpoint), rebuild


def test_serve_follows_a_rebuild_with_another_model(rebuilt, tiny_checkpoint_other):
    library_dir, rebuild = rebuilt
    query = {"q": "바닷가의 강아지", "k": 5}
    with TestClient(create_app(library_dir, warm=False), base_url=BASE) as c:
        before = ok_json(c.get("/api/search", params=query))
        rebuild()
        info = ok_json(c.get("/api/info"))
        assert info["model"] == db.Library.open(library_dir).manifest().model_id
        after = ok_json(c.get("/api/search", params=query))
        composed = ok_json(c.post("/api/compose", json={"terms": [{"text": query["q"]}], "k": 5}))
    with Searcher(library_dir) as fresh:
        expected = fresh.compose(query["q"], k=5).to_json()["results"]
    keys = ("path", "score")
    assert [{k: h[k] for k in keys} for h in after["results"]] == [
        {k: h[k] for k in keys} for h in expected
    ]
    assert [h["score"] for h in composed["results"]] == [h["score"] for h in expected]
    assert [h["score"] for h in before["results"]] != [h["score"] for h in after["results"]]


def test_a_searcher_opened_for_a_named_model_refuses_after_a_rebuild(rebuilt, tiny_checkpoint):
    library_dir, rebuild = rebuilt
    app = create_app(library_dir, model=str(tiny_checkpoint), warm=False)
    with (
        Searcher(library_dir, model=str(tiny_checkpoint)) as searcher,
        TestClient(app, base_url=BASE) as c,
    ):
        searcher.text("바다", k=2)
        ok_json(c.get("/api/search", params={"q": "바다"}))
        rebuild()
        with pytest.raises(ModelMismatchError):
            searcher.text("바다", k=2)
        error_json(c.get("/api/search", params={"q": "바다"}), 409, "model_mismatch")
    with Searcher(library_dir) as searcher:  # one that follows the library
        old_encoder = searcher.encoder
        rebuild()
        assert searcher.follow_library() is False  # the same model again: nothing to take up
        assert searcher.encoder is old_encoder


def test_serve_follows_a_rebuild_that_replaced_the_database_file(rebuilt, tiny_checkpoint_other):
    # `index --rebuild` of a damaged or old-schema database deletes the file and starts anew.
    from indexer import IndexOptions, index_photos

    library_dir, _ = rebuilt
    query = {"q": "바닷가의 강아지", "k": 5}
    with TestClient(create_app(library_dir, warm=False), base_url=BASE) as c:
        before = ok_json(c.get("/api/search", params=query))
        with db.LibraryLock(library_dir), db.Library.reset(library_dir):
            pass
        root = library_dir.parent
        index_photos(root, IndexOptions(model=str(tiny_checkpoint_other), workers=2, batch_size=8))
        after = ok_json(c.get("/api/search", params=query))
        info = ok_json(c.get("/api/info"))
    with Searcher(library_dir) as fresh:
        expected = fresh.compose(query["q"], k=5).to_json()["results"]
        assert info["model"] == fresh.manifest.model_id
    assert [(h["path"], h["score"]) for h in after["results"]] == [
        (h["path"], h["score"]) for h in expected
    ]
    assert [h["score"] for h in before["results"]] != [h["score"] for h in after["results"]]
