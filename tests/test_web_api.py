"""web/: the JSON API in-process (TestClient) over a library made by the real indexer, tiny model."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

import db
from search import Searcher
from tests.search_fixtures import (
    DUPLICATE,
    DUPLICATE_OF,
    error_json,
    index_folder,
    ok_json,
    write_photos,
)
from tests.web_fixtures import served
from web import create_app
from web.uploads import MAX_UPLOAD_BYTES

BASE = "http://127.0.0.1"
ROTATED = "2024/세로.jpg"  # stored 80x40 landscape, EXIF orientation 6: a 40x80 portrait


def _write_rotated(path: Path) -> None:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((80, 40), Image.Resampling.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=92, exif=exif)


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if db.LIBRARY_DIRNAME not in p.parts
    )


def _jpeg(size=(64, 48), colour=(30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A photo folder (Korean names, EXIF dates, a duplicate, a broken file, a rotated photo), indexed."""
    root = tmp_path_factory.mktemp("web-photos")
    write_photos(root)
    _write_rotated(root / ROTATED)
    index_folder(root, tiny_checkpoint)
    return root


@pytest.fixture(scope="module")
def library(photos: Path) -> Path:
    return db.default_library_dir(photos)


@pytest.fixture(scope="module")
def client(library: Path) -> TestClient:
    with TestClient(create_app(library, warm=False), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def searcher(library: Path) -> Searcher:
    with Searcher(library) as s:
        yield s


@pytest.fixture(scope="module")
def ids(library: Path) -> dict[str, int]:
    with db.Library.open(library) as lib, lib.session() as s, s.begin():
        return {row.path: row.id for row in s.query(db.Photo)}


def _cli_shape(results: list[dict]) -> list[dict]:
    keys = ("rank", "score", "path", "width", "height", "taken_at", "place", "lat", "lon", "camera")
    return [{k: r[k] for k in keys} for r in results]


# -- search ---------------------------------------------------------------------------------


def test_text_search_is_the_cli_json_plus_links(client, searcher, ids):
    body = ok_json(client.get("/api/search", params={"q": "바닷가의 강아지", "k": 5}))
    expected = searcher.compose("바닷가의 강아지", k=5).to_json()
    assert body["query"] == expected["query"]
    assert _cli_shape(body["results"]) == expected["results"]
    for hit in body["results"]:
        assert ids[hit["relpath"]] == hit["id"]
        assert hit["thumbnail"] == f"/api/photos/{hit['id']}/thumbnail"
        assert hit["original"] == f"/api/photos/{hit['id']}/original"
    assert body["offset"] == 0 and body["k"] == 5 and body["next_offset"] == 5


def test_composed_query_syntax_and_nfd_input(client, searcher):
    query = "바다 + 노을 - 0.5:사람"
    body = ok_json(client.get("/api/search", params={"q": query, "k": 6}))
    assert _cli_shape(body["results"]) == searcher.compose(query, k=6).to_json()["results"]
    import unicodedata

    nfd = ok_json(
        client.get("/api/search", params={"q": unicodedata.normalize("NFD", query), "k": 6})
    )
    assert nfd["results"] == body["results"]


def test_image_terms_in_the_box_are_library_photos(client, searcher, photos):
    body = ok_json(client.get("/api/search", params={"q": f"{DUPLICATE_OF} + 노을", "k": 20}))
    expected = searcher.compose([f"{photos / DUPLICATE_OF}", "+", "노을"], k=20)
    assert _cli_shape(body["results"]) == expected.to_json()["results"]
    # The photo itself and its exact duplicate are not results of a query made from it.
    assert {DUPLICATE_OF, DUPLICATE}.isdisjoint(h["relpath"] for h in body["results"])


@pytest.mark.parametrize("query", ["/etc/hosts.jpg + 바다", "../../x.jpg", "없는/사진.jpg"])
def test_image_terms_outside_the_library_are_refused(client, query):
    error_json(client.get("/api/search", params={"q": query}), 400, "bad_image")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": "바다 + "}, "bad_query"),
        ({"q": "+ -"}, "bad_query"),
        ({"q": "바다", "after": "어제쯤"}, "bad_date"),
        ({"q": "바다", "under": "../.."}, "bad_query"),
    ],
)
def test_bad_queries_are_400_json(client, params, code):
    error_json(client.get("/api/search", params=params), 400, code)


@pytest.mark.parametrize(
    "params",
    [{"q": ""}, {"q": "바다", "k": 0}, {"q": "바다", "k": 100000}, {"q": "바다", "offset": -1}, {}],
)
def test_invalid_parameters_are_422_json(client, params):
    error_json(client.get("/api/search", params=params), 422, "bad_request")


def _walk(client, q: str, k: int) -> list[dict]:
    seen, offset = [], 0
    while offset is not None:
        page = ok_json(client.get("/api/search", params={"q": q, "k": k, "offset": offset}))
        assert page["offset"] == offset and len(page["results"]) <= k
        seen += page["results"]
        offset = page["next_offset"]
    return seen


def test_paging_pages_are_the_searchers_pages(client, searcher, ids):
    seen = _walk(client, "사진", 4)
    expected = [
        h
        for o in range(0, len(ids), 4)
        for h in searcher.compose("사진", k=4, offset=o).to_json()["results"]
    ]
    assert _cli_shape(seen) == expected
    assert [h["rank"] for h in seen] == list(range(1, len(ids) + 1))
    full = searcher.compose("사진", k=50).to_json()["results"]
    assert [h["score"] for h in seen] == [h["score"] for h in full]


def test_paging_walks_the_whole_ranking_once(client, searcher, ids):
    seen = _walk(client, "사진", 4)
    full = searcher.compose("사진", k=50).to_json()["results"]
    assert sorted(h["path"] for h in seen) == sorted(h["path"] for h in full)


def test_folder_and_date_filters(client):
    body = ok_json(client.get("/api/search", params={"q": "바다", "k": 50, "under": "2023/여행"}))
    assert body["results"]
    assert all(h["relpath"].startswith("2023/여행/") for h in body["results"])  # not 여행ab/
    body = ok_json(
        client.get(
            "/api/search", params={"q": "바다", "k": 50, "after": "2024-07", "before": "2024-08"}
        )
    )
    assert {h["relpath"] for h in body["results"]} == {
        "2024/바다/파도.jpg",
        "2024/바다/모래.jpg",
        "2024/바다/사람들.jpg",
    }
    body = ok_json(client.get("/api/search", params={"q": "바다", "under": "없는폴더"}))
    assert body["results"] == [] and body["next_offset"] is None


def test_folders(client):
    folders = {f["folder"]: f["photos"] for f in ok_json(client.get("/api/folders"))}
    assert folders["2023/여행"] == 4 and folders["2023/여행ab"] == 1
    assert folders["2024/바다"] == 4 and "." not in folders


def test_compose_endpoint_with_photo_ids(client, searcher, photos, ids):
    body = ok_json(
        client.post(
            "/api/compose",
            json={
                "terms": [
                    {"text": "바다"},
                    {"photo_id": ids["2023/여행/노을.jpg"], "weight": 2},
                    {"text": "사람", "weight": -0.5},
                ],
                "k": 5,
            },
        )
    )
    expected = searcher.compose(
        ["바다", "+", f"2:{photos / '2023/여행/노을.jpg'}", "-", "0.5:사람"], k=5
    )
    assert _cli_shape(body["results"]) == expected.to_json()["results"]
    error_json(
        client.post("/api/compose", json={"terms": [{"text": "a", "photo_id": 1}]}),
        422,
        "bad_request",
    )
    error_json(client.post("/api/compose", json={"terms": []}), 422, "bad_request")
    error_json(client.post("/api/compose", json={"terms": [{"photo_id": 99999}]}), 404, "not_found")
    error_json(
        client.post(
            "/api/compose",
            json={"terms": [{"text": "바다", "weight": 1}, {"text": "바다", "weight": -1}]},
        ),
        400,
        "bad_query",
    )


def test_similar_leaves_out_the_photo_and_its_duplicates(client, searcher, photos, ids):
    pid = ids[DUPLICATE_OF]
    body = ok_json(client.get(f"/api/photos/{pid}/similar", params={"k": 50}))
    expected = searcher.image(photos / DUPLICATE_OF, k=50).to_json()
    assert _cli_shape(body["results"]) == expected["results"]
    assert {DUPLICATE_OF, DUPLICATE}.isdisjoint(h["relpath"] for h in body["results"])
    assert len(body["results"]) == len(ids) - 2
    error_json(client.get("/api/photos/99999/similar"), 404, "not_found")


def test_similar_uses_the_stored_vector_even_when_the_file_is_gone(photos, tmp_path, ids):
    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    (root / DUPLICATE_OF).unlink()
    with TestClient(create_app(root, warm=False), base_url=BASE) as c:
        body = ok_json(c.get(f"/api/photos/{ids[DUPLICATE_OF]}/similar", params={"k": 50}))
        assert not c.app.state.backend.searcher().encoder._encoders  # no decode, no tower
    assert len(body["results"]) == len(ids) - 2
    assert {DUPLICATE_OF, DUPLICATE}.isdisjoint(h["relpath"] for h in body["results"])


# -- photos, thumbnails, originals ------------------------------------------------------------


def test_photo_metadata(client, photos, ids):
    pid = ids["2023/여행/노을.jpg"]
    body = ok_json(client.get(f"/api/photos/{pid}"))
    assert body["path"] == str(photos.resolve() / "2023/여행/노을.jpg")
    assert body["relpath"] == "2023/여행/노을.jpg"
    assert body["taken_at"] == "2023-05-02T19:30:00" and body["taken_at_source"] == "exif"
    assert (body["width"], body["height"]) == (64, 48)
    assert (body["place"], body["lat"], body["lon"], body["camera"]) == (
        None,
    ) * 4  # no GPS, camera
    assert body["similar"] == f"/api/photos/{pid}/similar"
    error_json(client.get("/api/photos/424242"), 404, "not_found")
    error_json(client.get("/api/photos/abc"), 422, "bad_request")


def test_thumbnails_are_oriented_cached_and_keyed_by_content(client, library, ids):
    pid = ids[ROTATED]
    response = client.get(f"/api/photos/{pid}/thumbnail")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG" and thumb.size == (40, 80)  # EXIF orientation applied
    with db.Library.open(library) as lib, lib.session() as s, s.begin():
        digest = s.get(db.Photo, pid).content_hash
    cached = library / "thumbs" / "small" / f"{pid}-{digest[:16]}.jpg"
    assert cached.is_file() and cached.read_bytes() == response.content
    stamp = cached.stat().st_mtime_ns
    again = client.get(f"/api/photos/{pid}/thumbnail")
    assert again.content == response.content and cached.stat().st_mtime_ns == stamp
    etag = response.headers["etag"]
    assert (
        client.get(f"/api/photos/{pid}/thumbnail", headers={"If-None-Match": etag}).status_code
        == 304
    )
    assert not list(cached.parent.glob(".*.tmp"))


def test_large_thumbnail_is_never_enlarged_and_big_photos_shrink(client, photos, library):
    small = client.get("/api/photos/1/thumbnail?size=large")
    assert Image.open(io.BytesIO(small.content)).size == (64, 48)
    error_json(client.get("/api/photos/1/thumbnail?size=huge"), 422, "bad_request")
    from web.thumbnails import make_thumbnail

    big = photos.parent / "big.jpg"
    Image.new("RGB", (3000, 2000), (200, 10, 10)).save(big, "JPEG")
    assert make_thumbnail(big, 384).size == (384, 256)


def test_broken_photo_file_is_a_json_404(client, photos, library, ids, tmp_path):
    # A photo whose file was replaced by garbage after indexing.
    pid = ids["2024/밤.jpg"]
    path = photos / "2024/밤.jpg"
    saved = path.read_bytes()
    try:
        path.write_bytes(b"\xff\xd8garbage")
        msg = error_json(client.get(f"/api/photos/{pid}/thumbnail?size=large"), 404, "unreadable")
        assert "cannot be read" in msg
    finally:
        path.write_bytes(saved)


def test_originals_by_id_only(client, photos, ids):
    pid = ids["2023/집/고양이.jpg"]
    response = client.get(f"/api/photos/{pid}/original")
    assert response.status_code == 200
    assert response.content == (photos / "2023/집/고양이.jpg").read_bytes()
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-disposition"].startswith("inline")
    for url in (
        "/api/photos/..%2F..%2Fetc%2Fpasswd/original",
        "/api/photos/-1/original",
        "/api/photos/1/original/../../../etc/passwd",
        "/static/../../setup.cfg",
        "/static/%2e%2e/%2e%2e/setup.cfg",
    ):
        response = client.get(url)
        assert response.status_code in (404, 422), url
        assert "Traceback" not in response.text and "[metadata]" not in response.text


# -- uploads --------------------------------------------------------------------------------


def test_upload_raw_and_multipart_search_like_the_searcher(client, searcher, photos):
    before = _listing(photos)
    data = (photos / "2023/여행/산.jpg").read_bytes()
    raw = ok_json(
        client.post(
            "/api/image", content=data, params={"k": 5}, headers={"Content-Type": "image/jpeg"}
        )
    )
    form = ok_json(
        client.post("/api/image", params={"k": 5}, files={"image": ("산.jpg", data, "image/jpeg")})
    )
    expected = searcher.image(Image.open(io.BytesIO(data)).convert("RGB"), k=5).to_json()
    assert _cli_shape(raw["results"]) == _cli_shape(form["results"]) == expected["results"]
    assert "2023/여행/산.jpg" not in {h["relpath"] for h in raw["results"]}  # itself: left out
    # Paging by token, without sending the photo again.
    page2 = ok_json(client.get(f"/api/image/{raw['upload']}", params={"k": 5, "offset": 5}))
    assert [h["rank"] for h in page2["results"]] == list(range(6, 6 + len(page2["results"])))
    error_json(client.get("/api/image/not-a-token"), 404, "upload_expired")
    assert _listing(photos) == before  # nothing written into the photo folder


def test_upload_composed_with_text(client, searcher):
    data = _jpeg()
    body = ok_json(
        client.post(
            "/api/image",
            content=data,
            params={"k": 5, "q": "노을 - 사람"},
            headers={"Content-Type": "image/jpeg"},
        )
    )
    from search import Term

    image = Image.open(io.BytesIO(data)).convert("RGB")
    expected = searcher.compose(
        [Term(image=image), Term(text="노을"), Term(weight=-1, text="사람")], k=5
    )
    assert _cli_shape(body["results"]) == expected.to_json()["results"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "no_image"),
        (b"GIF89a not really", "bad_image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, "bad_image"),
        (b"%PDF-1.4 hello", "bad_image"),
    ],
)
def test_bad_uploads_are_400(client, content, code):
    response = client.post("/api/image", content=content, headers={"Content-Type": "image/jpeg"})
    error_json(response, 400, code)


def test_upload_without_the_image_field(client):
    error_json(
        client.post("/api/image", files={"other": ("a.jpg", _jpeg(), "image/jpeg")}),
        400,
        "no_image",
    )


def test_oversized_uploads_are_413_declared_or_streamed(client):
    big = b"\xff" * (MAX_UPLOAD_BYTES + 1)
    error_json(
        client.post("/api/image", content=big, headers={"Content-Type": "image/jpeg"}),
        413,
        "too_large",
    )

    def chunks():  # no Content-Length: the limit is checked as the body streams in
        for _ in range(21):
            yield b"\xff" * (1024 * 1024)

    error_json(
        client.post("/api/image", content=chunks(), headers={"Content-Type": "image/jpeg"}),
        413,
        "too_large",
    )
    error_json(
        client.post("/api/image", files={"image": ("big.jpg", big, "image/jpeg")}), 413, "too_large"
    )


def test_decompression_bombs_are_refused(client, monkeypatch):
    import web.uploads

    monkeypatch.setattr(web.uploads, "MAX_PIXELS", 64 * 48 - 1)
    msg = error_json(
        client.post("/api/image", content=_jpeg(), headers={"Content-Type": "image/jpeg"}),
        400,
        "bad_image",
    )
    assert "megapixels" in msg


# -- the page, errors, safety ---------------------------------------------------------------


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    for name in ("app.js", "base.css", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for sheet in ("style.css", "api.css"):  # both pages' palette and fonts: base.css
        assert '@import "base.css";' in client.get(f"/static/{sheet}").text
    script = client.get("/static/app.js").text
    assert "compositionstart" in script and "compositionend" in script


def test_openapi_describes_the_api(client):
    spec = ok_json(client.get("/api/openapi.json"))
    paths = spec["paths"]
    for path in (
        "/api/search",
        "/api/compose",
        "/api/image",
        "/api/photos/{photo_id}",
        "/api/photos/{photo_id}/similar",
        "/api/photos/{photo_id}/thumbnail",
        "/api/photos/{photo_id}/original",
        "/api/info",
        "/api/folders",
    ):
        assert path in paths, path
    assert "image/*" in paths["/api/image"]["post"]["requestBody"]["content"]


def test_api_docs_page_is_ours_and_loads_nothing_from_elsewhere(client):
    import re

    page = client.get("/api/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/api/docs" not in ok_json(client.get("/api/openapi.json"))["paths"]
    # Every script and stylesheet it names is one of ours, served here.
    assets = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "<script>" not in page.text  # the CSP would block an inline script
    script = client.get("/static/api.js").text
    assert 'fetch("/api/openapi.json")' in script and "http" not in script


def test_info(client, ids):
    body = ok_json(client.get("/api/info"))
    assert body["photos"] == len(ids) and body["failed"] == 1
    assert body["index_type"] == "flat"
    assert body["precision"] == "fp32"  # the fixtures index in fp32 (tests/conftest.py)


def test_unknown_route_and_method_are_json(client):
    error_json(client.get("/api/nothing"), 404, "not_found")
    error_json(client.delete("/api/search?q=a"), 405, "method_not_allowed")


def test_foreign_host_header_is_refused(client):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the API.
    response = client.get("/api/info", headers={"Host": "evil.example"})
    assert response.status_code == 400


def test_internal_errors_are_json_without_traceback(library, monkeypatch):
    app = create_app(library, warm=False)

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals /home/user/.ssh")

    monkeypatch.setattr(app.state.backend, "submit_search", boom)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        response = c.get("/api/search", params={"q": "바다"})
    msg = error_json(response, 500, "internal")
    assert "secret" not in msg


def test_no_library_and_empty_library_messages(tmp_path, tiny_checkpoint):
    with TestClient(create_app(tmp_path / "nowhere", warm=False), base_url=BASE) as c:
        error_json(c.get("/api/info"), 503, "no_library")
        error_json(c.get("/api/search", params={"q": "바다"}), 503, "no_library")
        assert c.get("/").status_code == 200  # the page still loads and explains
    empty = tmp_path / "empty"
    empty.mkdir()
    library = index_folder(empty, tiny_checkpoint)
    with TestClient(create_app(library, warm=False), base_url=BASE) as c:
        assert ok_json(c.get("/api/info"))["photos"] == 0
        body = ok_json(c.get("/api/search", params={"q": "바다"}))
        assert body["results"] == [] and body["next_offset"] is None


def test_library_indexed_after_start_is_picked_up(tmp_path, tiny_checkpoint):
    root = tmp_path / "later"
    root.mkdir()
    with TestClient(create_app(root, warm=False), base_url=BASE) as c:
        error_json(c.get("/api/info"), 503, "no_library")
        Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "a.jpg")
        index_folder(root, tiny_checkpoint)
        assert ok_json(c.get("/api/info"))["photos"] == 1


def test_model_loaded_once_and_work_runs_off_the_event_loop(library, monkeypatch):
    import koclip

    loads = []
    real = koclip.load_encoder
    monkeypatch.setattr(koclip, "load_encoder", lambda *a, **k: loads.append(k) or real(*a, **k))
    app = create_app(library, warm=True)
    threads = []
    real_text, real_many = Searcher.text, Searcher.search_many

    def spy(real):
        def run(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(Searcher, "text", spy(real_text))  # the warm-up
    monkeypatch.setattr(Searcher, "search_many", spy(real_many))  # the page's queries
    with TestClient(app, base_url=BASE) as c:
        # Queries no other test asks: the session's text-embedding cache must not answer them.
        fresh = [f"웹 처음 묻는 말 {i}" for i in range(3)]
        for q in (*fresh, fresh[0]):
            ok_json(c.get("/api/search", params={"q": q}))
    assert [k.get("towers") for k in loads] == [("text",)]
    # Model work ran on the one search thread, never on the event loop's thread.
    assert len(threads) >= 4  # the four searches, and the warm-up if it ran before them
    assert set(threads) == {"koclip-search_0"}


# -- the command ------------------------------------------------------------------------------


def test_serve_command_defaults_to_loopback(library, monkeypatch):
    from cli import main

    calls = served(monkeypatch)
    result = CliRunner().invoke(main, ["serve", "--library", str(library), "--port", "0"])
    assert result.exit_code == 0, result.output
    config, sockets = calls[0]
    assert "http://127.0.0.1:" in result.output
    assert config.access_log
    with TestClient(config.app, base_url=BASE) as c:
        assert ok_json(c.get("/api/info"))["photos"] > 0


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(library, monkeypatch):
    import socket

    from cli import main

    calls = served(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--library", str(library), "--port", str(port)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"Error: port {port} on 127.0.0.1 is already in use (another serve?); pick one with --port"
    ], result.output
    assert not calls and "http://" not in result.output  # no URL printed for nothing


def test_serve_command_refuses_another_model(library, tiny_checkpoint_other, monkeypatch):
    from cli import main

    calls = served(monkeypatch)
    result = CliRunner().invoke(
        main, ["serve", "--library", str(library), "--model", str(tiny_checkpoint_other)]
    )
    assert result.exit_code == 2
    assert "built with" in result.output and not calls


def test_serve_command_warns_off_loopback(library, monkeypatch):
    import socket

    from cli import main, serve_cmd

    # Tests listen on loopback only: the socket for 0.0.0.0 is made on 127.0.0.1 here.
    asked = []

    def bind(host, port):
        asked.append(host)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    monkeypatch.setattr(serve_cmd, "_bind", bind)
    calls = served(monkeypatch)
    result = CliRunner().invoke(main, ["serve", "--library", str(library), "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "anyone who can reach it" in result.output
    assert asked == ["0.0.0.0"] and calls


def test_library_engine_is_reached_from_few_threads(library, ids):
    # db's engine keeps one SQLite connection per thread for at most five threads and closes
    # the rest under their users' feet (a segfault), so many concurrent requests must funnel
    # into the search thread and the database threads.
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(library, warm=False)
    backend = app.state.backend
    users = set()
    with TestClient(app, base_url=BASE) as c:
        ok_json(c.get("/api/info"))
        lib = backend.searcher().library
        real_session = lib.session

        def session():
            users.add(threading.current_thread().name)
            return real_session()

        lib.session = session
        urls = [
            f"/api/photos/{i}{tail}"
            for i in ids.values()
            for tail in ("", "/thumbnail", "/thumbnail?size=large")
        ]
        urls += ["/api/folders", "/api/info", "/api/search?q=2024/밤.jpg", "/api/photos/1/similar"]
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda u: c.get(u).status_code, urls * 2))
    assert set(codes) == {200}
    assert users <= {"koclip-search_0", "koclip-db_0", "koclip-db_1"}, users


def test_the_access_log_leaves_out_thumbnails_by_default():
    import logging

    from cli.serve_cmd import _NotThumbnails

    def record(path: str) -> logging.LogRecord:
        # uvicorn's access record: client, method, path, HTTP version, status
        args = ("127.0.0.1:5000", "GET", path, "1.1", 200)
        return logging.LogRecord(
            "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None
        )

    keep = _NotThumbnails()
    assert not keep.filter(record("/api/photos/3/thumbnail?size=large"))
    assert keep.filter(record("/api/search?q=%EB%B0%94%EB%8B%A4"))
