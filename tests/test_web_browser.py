"""End to end in a real headless Chromium: type Korean through the IME, see thumbnails, click one,
see similar photos; the justified grid, the viewer's keys and URL; the API docs page offline.

Drives Debian's `chromium` over the Chrome DevTools Protocol (a websocket; no webdriver).
Skipped when /usr/bin/chromium is missing. `KOCLIP_SEARCH_SCREENSHOT=docs/screenshot.png`
also saves the page with results there (the README's screenshot).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tests.browser_fixtures import Browser, require_chromium

pytestmark = pytest.mark.browser

SCREENSHOT_ENV = "KOCLIP_SEARCH_SCREENSHOT"

# Track the in-page fetches, so the test sees exactly which searches the page sent.
RECORD_FETCHES = """
window.__requests = [];
const realFetch = window.fetch;
window.fetch = function (url, options) {
  window.__requests.push(String(url));
  return realFetch.apply(this, arguments);
};
window.__compositions = [];
for (const type of ["compositionstart", "compositionend"]) {
  document.addEventListener(type, (e) => window.__compositions.push(`${type}:${e.data}`), true);
}
"""

# Hold the fetches of later result pages (offset > 0) while `window.__gate` is a pending
# promise, so a test can look at the page between the first page and the next.
HOLD_NEXT_PAGES = """
window.__gate = null;
const gatedFetch = window.fetch;
window.fetch = function (url, options) {
  const args = arguments;
  if (window.__gate && /[?&]offset=[1-9]/.test(String(url))) {
    return window.__gate.then(() => gatedFetch.apply(this, args));
  }
  return gatedFetch.apply(this, args);
};
"""


# -- a photo folder that looks like photos ----------------------------------------------------


def _gradient(size: tuple[int, int], top: tuple, bottom: tuple) -> Image.Image:
    w, h = size
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return Image.fromarray(np.broadcast_to(rows, (h, w, 3)).astype(np.uint8))


def _ridge(rng: np.random.Generator, w: int, base: float, amp: float) -> list[tuple[float, float]]:
    xs = np.linspace(0, w, 24)
    phase = rng.uniform(0, 6)
    ys = base - amp * (0.6 * np.sin(xs / w * 5 + phase) + 0.4 * rng.random(24))
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _scene(kind: str, seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A small drawn landscape: sea, sunset, mountain, forest, city at night, flowers, snow."""
    rng = np.random.default_rng(seed)
    w, h = size
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-18, 19), 0, 255)) for v in c)  # noqa: E731
    if kind == "sunset":
        img = _gradient(size, jitter((250, 150, 70)), jitter((120, 60, 130)))
        d = ImageDraw.Draw(img)
        r = rng.integers(30, 50)
        cx = rng.integers(120, 360)
        d.ellipse((cx - r, h * 0.55 - r, cx + r, h * 0.55 + r), fill=(255, 220, 120))
        d.rectangle((0, h * 0.6, w, h), fill=jitter((60, 50, 110)))
        for y in range(int(h * 0.62), h, 9):
            d.line((cx - 60, y, cx + 60, y), fill=(250, 190, 120), width=2)
    elif kind == "sea":
        img = _gradient(size, jitter((120, 190, 240)), jitter((200, 230, 250)))
        d = ImageDraw.Draw(img)
        d.rectangle((0, h * 0.5, w, h), fill=jitter((30, 110, 180)))
        for y in range(int(h * 0.52), h, 12):
            x = int(rng.integers(-40, w))
            d.arc(
                (x, y, x + int(rng.integers(40, 160)), y + 14),
                200,
                340,
                fill=(220, 240, 255),
                width=2,
            )
        d.polygon([(0, h), (w * 0.45, h), (0, h * 0.78)], fill=jitter((230, 210, 160)))
    elif kind == "mountain":
        img = _gradient(size, jitter((140, 190, 235)), jitter((225, 235, 245)))
        d = ImageDraw.Draw(img)
        for i, colour in enumerate([(120, 130, 150), (70, 110, 80), (40, 80, 50)]):
            pts = _ridge(rng, w, h * (0.45 + 0.15 * i), h * 0.3)
            d.polygon([(0, h), *pts, (w, h)], fill=jitter(colour))
    elif kind == "forest":
        img = _gradient(size, jitter((170, 210, 170)), jitter((60, 110, 60)))
        d = ImageDraw.Draw(img)
        for _ in range(26):
            x, y = rng.integers(0, w), rng.integers(int(h * 0.3), h)
            s = rng.integers(20, 46)
            d.polygon([(x, y - 2.4 * s), (x - s, y), (x + s, y)], fill=jitter((30, 90, 45)))
    elif kind == "city":
        img = _gradient(size, jitter((15, 20, 60)), jitter((60, 40, 90)))
        d = ImageDraw.Draw(img)
        x = 0
        while x < w:
            bw, bh = rng.integers(30, 70), rng.integers(80, 260)
            d.rectangle((x, h - bh, x + bw, h), fill=jitter((30, 30, 45)))
            for wy in range(h - bh + 8, h - 8, 14):
                for wx in range(x + 5, x + bw - 8, 11):
                    if rng.random() < 0.45:
                        d.rectangle((wx, wy, wx + 5, wy + 7), fill=(250, 215, 110))
            x += bw + rng.integers(2, 10)
    elif kind == "flowers":
        img = _gradient(size, jitter((150, 200, 120)), jitter((70, 130, 60)))
        d = ImageDraw.Draw(img)
        for _ in range(70):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, 14)
            colour = [(240, 80, 120), (250, 210, 60), (250, 250, 250), (190, 90, 220)][
                rng.integers(0, 4)
            ]
            d.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(250, 190, 40))
    else:  # snow
        img = _gradient(size, jitter((190, 200, 215)), jitter((240, 242, 248)))
        d = ImageDraw.Draw(img)
        pts = _ridge(rng, w, h * 0.6, h * 0.2)
        d.polygon([(0, h), *pts, (w, h)], fill=(250, 250, 255))
        for _ in range(14):
            x, y = rng.integers(0, w), rng.integers(int(h * 0.45), int(h * 0.8))
            d.polygon([(x, y - 40), (x - 14, y), (x + 14, y)], fill=(50, 80, 70))
        for _ in range(160):
            x, y = rng.integers(0, w), rng.integers(0, h)
            d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(255, 255, 255))
    return img.filter(ImageFilter.GaussianBlur(0.6))


ALBUMS = {
    "2023/제주 바다": ["sea", "sunset", "sea", "sunset", "sea"],
    "2023/설악산": ["mountain", "forest", "mountain", "snow"],
    "2024/서울의 밤": ["city", "city", "city"],
    "2024/봄 꽃": ["flowers", "flowers", "forest", "flowers"],
    "2024/겨울": ["snow", "snow", "mountain", "sunset"],
}
NAMES = {
    "sea": "바다",
    "sunset": "노을",
    "mountain": "산",
    "forest": "숲",
    "city": "야경",
    "flowers": "꽃",
    "snow": "눈",
}
PHOTO_COUNT = sum(len(kinds) for kinds in ALBUMS.values())


def write_album_photos(root: Path) -> int:
    """Drawn scenes in Korean-named albums, with EXIF dates; returns how many."""
    start = datetime(2023, 7, 1, 9, 0)
    n = 0
    for album, kinds in ALBUMS.items():
        for i, kind in enumerate(kinds):
            path = root / album / f"{NAMES[kind]}-{i + 1:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            exif = Image.Exif()
            taken = start + timedelta(days=23 * n, hours=n)
            exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
            _scene(kind, seed=n).save(path, "JPEG", quality=88, exif=exif)
            n += 1
    return n


# -- fixtures ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    Browser._wait(lambda: server.started, "uvicorn to start", 30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def album_library(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from tests.search_fixtures import index_folder

    root = tmp_path_factory.mktemp("albums")
    assert write_album_photos(root) == PHOTO_COUNT
    return index_folder(root, tiny_checkpoint)


@pytest.fixture
def browser() -> Iterator[Browser]:
    require_chromium()
    profile = Path(tempfile.mkdtemp(prefix="koclip-chromium-"))
    b = Browser(profile)
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


def _searches(browser: Browser) -> list[dict[str, str]]:
    """The search requests the page sent, as their query parameters."""
    urls = [u for u in browser.js("window.__requests") if u.startswith("/api/search?")]
    return [dict(parse_qsl(urlsplit(u).query)) for u in urls]


def _pick_file(browser: Browser, path: Path) -> None:
    """Choose a file in the page's file picker, as the OS dialog would."""
    root = browser.send("DOM.getDocument")["root"]["nodeId"]
    node = browser.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)


def _loaded_images(selector: str) -> str:
    return (
        f"[...document.querySelectorAll({json.dumps(selector)})]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )


# -- the test ---------------------------------------------------------------------------------


def test_korean_ime_search_thumbnails_and_similar_photos(album_library, browser, tmp_path):
    from web import create_app

    with serve(create_app(album_library)) as url:
        browser.send("Page.addScriptToEvaluateOnNewDocument", source=RECORD_FETCHES)
        browser.send("Page.navigate", url=url + "/")
        browser.wait_js("document.body && document.body.dataset.ready === '1'", "the page")
        assert f"사진 {PHOTO_COUNT}장" in browser.js(
            "document.getElementById('library').textContent"
        )
        browser.click("#q")
        assert browser.js("document.activeElement.id") == "q"

        # 바다 typed on a 2-set Korean keyboard: ㅂ 바 받, then ㅏ moves ㄷ to the next syllable.
        for partial in ("ㅂ", "바", "받"):
            browser.compose(partial)
        browser.commit("바")
        browser.compose("다")
        time.sleep(1.0)  # well past the debounce: nothing may be searched mid-word
        assert _searches(browser) == []
        browser.commit("다")
        assert browser.js("document.getElementById('q').value") == "바다"
        assert browser.js("window.__compositions") == [  # the IME really composed
            "compositionstart:",
            "compositionend:바",
            "compositionstart:",
            "compositionend:다",
        ]
        browser.wait_js(_loaded_images("#grid img") + " >= 12", "thumbnails of 바다")
        assert _searches(browser) == [{"q": "바다", "k": "40", "offset": "0"}]
        scores = browser.js(
            "[...document.querySelectorAll('#grid .score')].map(s => s.textContent)"
        )
        assert len(scores) == PHOTO_COUNT and all(math.isfinite(float(s)) for s in scores)

        # Enter submits at once; the composed syntax of the CLI works in the box.
        browser.commit(" + 노을 - 사람")
        browser.press_enter()
        browser.wait_js(
            "document.getElementById('status').textContent.includes('노을 - 사람')",
            "the composed query's results",
        )
        assert [p["q"] for p in _searches(browser)] == ["바다", "바다 + 노을 - 사람"]
        browser.wait_js(_loaded_images("#grid img") + " >= 12", "thumbnails")
        shot = os.environ.get(SCREENSHOT_ENV)
        browser.screenshot(tmp_path / "results.png")
        if shot:
            browser.screenshot(Path(shot))

        # Click a photo: the detail view with its path, date and similar photos.
        first = browser.js("document.querySelector('#grid .photo').dataset.id")
        browser.click("#grid .card:nth-child(2) .photo")
        browser.wait_js("document.getElementById('detail').open", "the detail view")
        browser.wait_js(_loaded_images("#similar img") + " >= 6", "similar photos")
        browser.wait_js(_loaded_images("#detail-img") + " === 1", "the large preview")
        path = browser.js("document.getElementById('detail-path').textContent")
        assert path.endswith(".jpg") and str(album_library.parent) in path
        assert "(촬영 / taken)" in browser.js("document.getElementById('detail-date').textContent")
        similar_ids = browser.js(
            "[...document.querySelectorAll('#similar .photo')].map(b => b.dataset.id)"
        )
        clicked = browser.js("document.querySelector('#grid .card:nth-child(2) .photo').dataset.id")
        assert clicked not in similar_ids and first != clicked
        browser.screenshot(tmp_path / "detail.png")
        browser.click("#detail-close")
        browser.wait_js("!document.getElementById('detail').open", "the detail view to close")

        # A folder filter narrows the grid to that album.
        browser.js(
            "(() => { const el = document.getElementById('under'); el.value = '2023/설악산';"
            " el.dispatchEvent(new Event('change')); })()"
        )
        browser.wait_js(
            "document.getElementById('status').textContent.includes('4장')", "the filtered results"
        )
        assert _searches(browser)[-1]["under"] == "2023/설악산"
        captions = browser.js("[...document.querySelectorAll('#grid .photo')].map(b => b.title)")
        assert len(captions) == 4 and all(c.startswith("2023/설악산/") for c in captions)
        browser.click("#clear-filters")
        browser.wait_js(
            f"document.querySelectorAll('#grid .card').length === {PHOTO_COUNT}",
            "all results again",
        )

        # Search by a photo picked from the computer (outside the library), then a bad file.
        picked = tmp_path / "여행 사진.jpg"
        _scene("sea", seed=99).save(picked, "JPEG")
        _pick_file(browser, picked)
        browser.wait_js(
            "document.getElementById('status').textContent.includes('📷')", "the photo search"
        )
        browser.wait_js(_loaded_images("#grid img") + " >= 12", "thumbnails of the photo search")
        assert browser.js("document.getElementById('current-label').textContent") == picked.name
        assert any(u.startswith("/api/image?") for u in browser.js("window.__requests"))
        bad = tmp_path / "고장난.jpg"
        bad.write_bytes(b"\xff\xd8 this is not a photo")
        _pick_file(browser, bad)
        browser.wait_js("!document.getElementById('message').hidden", "the bad-upload message")
        message = browser.js("document.getElementById('message').textContent")
        assert "사진으로 읽을 수 없어요" in message and "cannot be read as a photo" in message
        assert browser.errors() == []


def _files_under(root: Path) -> set[str]:
    """Files under `root` by library key (NFC), the library folder left out."""
    import db

    found = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return {db.path_key(p.as_posix()) for p in found if db.LIBRARY_DIRNAME not in p.parts}


def test_duplicates_view_another_keeper_set_aside_and_undo(browser, tmp_path, tiny_checkpoint):
    import db
    from tests.duplicates_fixtures import SEA, SEA_COPY, SEA_PNG, SEA_SMALL, write_duplicate_album
    from tests.search_fixtures import index_folder
    from web import create_app

    root = tmp_path / "사진"
    write_duplicate_album(root)
    library = index_folder(root, tiny_checkpoint)
    before = _files_under(root)
    moved = {SEA_SMALL, SEA_PNG, SEA_COPY}
    first = ".dupe-group:nth-child(1)"
    with serve(create_app(library, warm=False)) as url:
        browser.send("Page.navigate", url=url + "/")
        browser.wait_js("document.body && document.body.dataset.ready === '1'", "the page")
        browser.click("#dupes-open")
        browser.wait_js("document.querySelectorAll('.dupe-group').length >= 2", "the groups")
        browser.js(
            "(() => { const el = document.getElementById('dupes-kind'); el.value = 'same';"
            " el.dispatchEvent(new Event('change')); })()"
        )
        browser.wait_js(
            "(() => { const g = [...document.querySelectorAll('.dupe-group')];"
            " return g.length === 2 && g.every(x => x.dataset.kind === 'same'); })()",
            "the same-picture groups",
        )
        browser.wait_js(_loaded_images(f"{first} img") + " === 4", "the group's thumbnails")
        relpaths = browser.js(
            f"[...document.querySelectorAll('{first} .dupe-photo')].map(li => li.dataset.relpath)"
        )
        assert set(relpaths) == {SEA, SEA_SMALL, SEA_PNG, SEA_COPY} and relpaths[0] == SEA_PNG
        text = browser.js(f"document.querySelector('{first}').textContent")
        assert (
            "같은 사진" in text
            and "추천" in text
            and "largest file" in text
            and "400 × 300" in text
        )
        assert "kind=same" in browser.js("location.search")

        # Keep the JPEG instead of the suggested PNG, then set the other three aside.
        browser.click(f"{first} .dupe-photo:nth-child({relpaths.index(SEA) + 1}) input")
        assert (
            browser.js(f"document.querySelector('{first} .dupe-photo.keep').dataset.relpath") == SEA
        )
        browser.click(f"{first} .dupe-aside")
        browser.wait_js(f"!!document.querySelector('{first} .dupe-undo')", "the undo button")
        assert browser.js(f"document.querySelectorAll('{first} .dupe-photo.aside').length") == 3
        assert "set-aside" in browser.js(f"document.querySelector('{first} .note').textContent")
        assert _files_under(root) == before - moved
        assert _files_under(library / "set-aside") == moved

        browser.click(f"{first} .dupe-undo")
        browser.wait_js(
            f"!document.querySelector('.dupe-undo') &&"
            f" document.querySelectorAll('{first} .dupe-photo').length === 4",
            "the group back after undo",
        )
        assert _files_under(root) == before
        assert _files_under(library / "set-aside") == set()
        with db.Library.open(library) as lib:
            assert len(lib.photo_ids()) == len(before)
        assert browser.errors() == []


def test_duplicates_view_asks_before_copying_to_another_file_system(
    browser, tmp_path, tiny_checkpoint, monkeypatch
):
    import errno

    from tests.duplicates_fixtures import write_duplicate_album
    from tests.search_fixtures import index_folder
    from web import create_app

    root = tmp_path / "사진"
    write_duplicate_album(root)
    library = index_folder(root, tiny_checkpoint)
    aside = library / "set-aside"
    aside.mkdir()
    real_stat, real_link = os.stat, os.link

    def stat(p, *a, **k):  # the set-aside folder on another device than the photos
        st = real_stat(p, *a, **k)
        if not str(p).startswith(str(aside)):
            return st
        return os.stat_result([*st[:2], st.st_dev + 1, *st[3:]])

    def link(src, dst, **kw):
        if str(dst).startswith(str(aside)) and not Path(src).name.startswith("."):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "link", link)
    first = ".dupe-group:nth-child(1)"
    with serve(create_app(library, warm=False)) as url:
        browser.send("Page.navigate", url=url + "/")
        browser.wait_js("document.body && document.body.dataset.ready === '1'", "the page")
        browser.js("window.confirm = (m) => { window.asked = m; return true; }")
        browser.click("#dupes-open")
        browser.wait_js("document.querySelectorAll('.dupe-group').length >= 2", "the groups")
        count = browser.js(f"document.querySelectorAll('{first} .dupe-photo').length")
        browser.click(f"{first} .dupe-aside")
        browser.wait_js(f"!!document.querySelector('{first} .dupe-undo')", "the undo button")
        assert "another file system" in browser.js("window.asked")
        assert "--cross-filesystem" not in browser.js("window.asked")
        assert len(_files_under(aside)) == count - 1
        assert browser.errors() == []


# -- the photo app: justified grid, viewer keys and URL, status time, hints ---------------------

SHAPES = [(480, 360), (360, 480), (640, 280), (400, 400), (480, 320), (300, 450)]
SHAPED_COUNT = 45  # more than a page (40)
ROTATED_SHAPED = "여행/세로-회전.jpg"  # stored 480x360 with EXIF orientation 6: shown 360x480
ROW_HEIGHT = 220  # web/static/app.js's target row height


def write_shaped_photos(root: Path) -> dict[str, tuple[int, int]]:
    """Photos of many shapes (portrait, panorama, square, one turned by EXIF); relpath -> the
    size it is shown at."""
    kinds = list(NAMES)
    shown = {}
    for n in range(SHAPED_COUNT - 1):
        size = SHAPES[n % len(SHAPES)]
        relpath = f"여행/{NAMES[kinds[n % len(kinds)]]}-{n + 1:02d}.jpg"
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        _scene(kinds[n % len(kinds)], seed=100 + n, size=size).save(path, "JPEG", quality=85)
        shown[relpath] = size
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    _scene("mountain", seed=7, size=(480, 360)).save(root / ROTATED_SHAPED, "JPEG", exif=exif)
    shown[ROTATED_SHAPED] = (360, 480)
    return shown


@pytest.fixture(scope="module")
def shaped_library(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    from tests.search_fixtures import index_folder

    root = tmp_path_factory.mktemp("shapes")
    shown = write_shaped_photos(root)
    return index_folder(root, tiny_checkpoint), shown


CARDS = """[...document.querySelectorAll('#grid .card')].map(li => {
  const r = li.getBoundingClientRect();
  return {relpath: li.querySelector('.photo').title, id: li.querySelector('.photo').dataset.id,
          left: r.left, right: r.right, top: r.top, width: r.width, height: r.height};
})"""


def _check_justified(browser: Browser, shown: dict[str, tuple[int, int]]) -> None:
    """Every card has its photo's shape; rows share one height, fill the width, never overlap."""
    grid = browser.js(
        "(() => { const r = document.getElementById('grid').getBoundingClientRect();"
        " return {left: r.left, right: r.right}; })()"
    )
    cards = browser.js(CARDS)
    assert cards
    rows: dict[int, list[dict]] = {}
    for c in cards:
        w, h = shown[c["relpath"]]
        assert c["width"] / c["height"] == pytest.approx(w / h, rel=0.02), c
        rows.setdefault(round(c["top"]), []).append(c)
    assert len(rows) > 2
    tops = sorted(rows)
    for top in tops:
        row = rows[top]
        assert {round(c["height"], 1) for c in row} == {round(row[0]["height"], 1)}
        assert row[0]["height"] <= ROW_HEIGHT + 0.5
        assert row[0]["left"] == pytest.approx(grid["left"], abs=0.5)
        for a, b in zip(row, row[1:], strict=False):
            assert b["left"] >= a["right"] - 0.5  # side by side, in reading order
    for top in tops[:-1]:  # every row but the last ends at the grid's right edge
        assert rows[top][-1]["right"] == pytest.approx(grid["right"], abs=1.0)
    for a, b in zip(tops, tops[1:], strict=False):
        assert b >= a + rows[a][0]["height"] - 0.5  # rows never overlap
    rotated = [c for c in cards if c["relpath"] == ROTATED_SHAPED]
    assert not rotated or rotated[0]["height"] > rotated[0]["width"]


def _status_seconds(browser: Browser) -> str:
    text = browser.js("document.getElementById('status').textContent")
    assert text.endswith(" s"), text
    return text.rsplit("·", 1)[1].strip()


def _open_photo(browser: Browser) -> str | None:
    return browser.js(
        "document.getElementById('detail').open ? document.getElementById('detail').dataset.photo"
        " : null"
    )


def _wait_photo(browser: Browser, photo_id: str, what: str) -> None:
    """Wait until the viewer is open on this photo (in the page now loaded)."""
    browser.wait_js(
        "(d => !!d && d.open && d.dataset.photo === " + json.dumps(photo_id) + ")"
        "(document.getElementById('detail'))",
        what,
    )


def _url_photo(browser: Browser) -> str | None:
    return browser.js("new URLSearchParams(location.search).get('photo')")


def test_photo_app_grid_viewer_keys_url_and_status_time(shaped_library, browser, tmp_path):
    from web import create_app

    library, shown = shaped_library
    with serve(create_app(library)) as url:
        browser.send(
            "Page.addScriptToEvaluateOnNewDocument", source=RECORD_FETCHES + HOLD_NEXT_PAGES
        )
        browser.send("Page.navigate", url=url + "/")
        browser.wait_js("document.body && document.body.dataset.ready === '1'", "the page")

        # The date fields' placeholders read as hints (예: …, lighter and slanted), not values.
        for field in ("after", "before"):
            hint = browser.js(
                f"(() => {{ const el = document.getElementById('{field}');"
                " const ph = getComputedStyle(el, '::placeholder');"
                " return [el.value, el.placeholder, ph.fontStyle, ph.color,"
                " getComputedStyle(el).color]; })()"
            )
            value, placeholder, style, colour, ink = hint
            assert value == "" and placeholder.startswith("예: "), hint
            assert style == "italic" and colour != ink, hint

        # "/" focuses the search box; in another field it is just typed.
        browser.js("document.activeElement.blur()")
        browser.press("/")
        assert browser.js("[document.activeElement.id, document.getElementById('q').value]") == [
            "q",
            "",
        ]
        browser.click("#under")
        browser.press("/")
        assert browser.js(
            "[document.activeElement.id, document.getElementById('under').value]"
        ) == [
            "under",
            "/",
        ]
        browser.js("document.getElementById('under').value = ''")
        browser.click("#q")

        # A search; the next page is held back, so the first page can be looked at alone.
        browser.js("window.__gate = new Promise(resolve => { window.__open = resolve; }); 1")
        browser.commit("바다")
        browser.press_enter()
        browser.wait_js(
            "document.getElementById('status').textContent.includes('40+장')", "the first page"
        )
        took = _status_seconds(browser)
        browser.wait_js(_loaded_images("#grid img") + " >= 10", "thumbnails")
        _check_justified(browser, shown)
        browser.screenshot(tmp_path / "grid.png")
        if os.environ.get(SCREENSHOT_ENV):
            browser.screenshot(Path(os.environ[SCREENSHOT_ENV]).with_name("grid.png"))

        # Open the page's last photo: the URL names it, and one history entry was added.
        cards = browser.js(CARDS)
        assert len(cards) == 40
        length = browser.js("history.length")
        browser.click("#grid .card:nth-child(40) .photo")
        _wait_photo(browser, cards[39]["id"], "the viewer on the 40th photo")
        assert _url_photo(browser) == cards[39]["id"]
        assert browser.js("new URLSearchParams(location.search).get('q')") == "바다"
        assert browser.js("history.length") == length + 1

        # → past the last loaded photo waits for the next page, then shows its first photo.
        browser.press("ArrowRight")
        time.sleep(0.4)  # the page is held: the viewer stays where it is meanwhile
        assert _open_photo(browser) == cards[39]["id"]
        browser.js("window.__gate = null; window.__open(); 1")
        browser.wait_js(
            "document.getElementById('status').textContent.includes('45장')", "the second page"
        )
        cards = browser.js(CARDS)
        assert len(cards) == SHAPED_COUNT
        _wait_photo(browser, cards[40]["id"], "the viewer on the 41st photo")
        assert _url_photo(browser) == cards[40]["id"]
        # The status line kept the search's own time: the wait for page 2 is not in it.
        assert _status_seconds(browser) == took
        _check_justified(browser, shown)

        browser.press("ArrowLeft")
        assert _open_photo(browser) == cards[39]["id"] == _url_photo(browser)
        for _ in range(SHAPED_COUNT - 40 + 1):  # to the last photo, and one more press
            browser.press("ArrowRight")
        assert _open_photo(browser) == cards[-1]["id"] == _url_photo(browser)
        assert browser.js("document.getElementById('detail-next').disabled") is True
        assert browser.js("history.length") == length + 1  # moving replaced the entry

        # Back closes the viewer; Forward opens it again on the same photo; Esc closes.
        browser.js("history.back(); 1")
        browser.wait_js("!document.getElementById('detail').open", "Back to close the viewer")
        assert _url_photo(browser) is None
        assert browser.js("new URLSearchParams(location.search).get('q')") == "바다"
        browser.js("history.forward(); 1")
        _wait_photo(browser, cards[-1]["id"], "Forward to open it again")
        browser.press("Escape")
        browser.wait_js(
            "!document.getElementById('detail').open"
            " && !new URLSearchParams(location.search).has('photo')",
            "Esc to close the viewer",
        )
        # The grid keeps its place: the closed photo's card has the focus.
        assert browser.js("document.activeElement.dataset.id") == cards[-1]["id"]

        # A click opens, ✕ closes; the page is where it was, the history as before.
        browser.js("window.scrollTo(0, 0)")
        browser.click("#grid .card:nth-child(3) .photo")
        _wait_photo(browser, cards[2]["id"], "the viewer")
        browser.click("#detail-close")
        browser.wait_js(
            "!document.getElementById('detail').open"
            " && !new URLSearchParams(location.search).has('photo')",
            "the viewer to close",
        )
        assert browser.js("location.search") == "?q=%EB%B0%94%EB%8B%A4"

        # "All similar" closes the viewer and searches like the photo; the URL says so.
        browser.click("#grid .card:nth-child(2) .photo")
        _wait_photo(browser, cards[1]["id"], "the viewer")
        browser.wait_js(  # the photo's facts are in (the buttons below them stay put)
            "document.getElementById('detail-date').textContent.includes('(')", "the facts"
        )
        browser.click("#detail-more")
        browser.wait_js(
            "document.getElementById('status').textContent.includes('≈')", "the similar photos"
        )
        assert browser.js("document.getElementById('detail').open") is False
        assert browser.js("[...new URLSearchParams(location.search).keys()]") == ["similar"]
        assert browser.js("new URLSearchParams(location.search).get('similar')") == cards[1]["id"]
        assert browser.js("history.length") == length + 1  # one viewer entry, never more

        # A shared URL of a photo beyond the first page opens it too.
        browser.send("Page.navigate", url=f"{url}/?q=바다&photo={cards[-1]['id']}")
        _wait_photo(browser, cards[-1]["id"], "the shared photo of page 2")
        name = browser.js("document.getElementById('detail-name').textContent")
        assert name == cards[-1]["relpath"].split("/")[-1]

        # A shared URL runs its search, then opens the photo; ← / → walk the results.
        browser.send("Page.navigate", url=f"{url}/?q=바다&photo={cards[3]['id']}")
        _wait_photo(browser, cards[3]["id"], "the shared photo")
        name = browser.js("document.getElementById('detail-name').textContent")
        assert name == cards[3]["relpath"].split("/")[-1]
        browser.wait_js(_loaded_images("#detail-img") + " === 1", "the large preview")
        inside = browser.js(
            "(() => { const i = document.getElementById('detail-img').getBoundingClientRect();"
            " const f = document.querySelector('#detail .preview').getBoundingClientRect();"
            " return i.width > 0 && i.left >= f.left - 0.5 && i.right <= f.right + 0.5"
            " && i.top >= f.top - 0.5 && i.bottom <= f.bottom + 0.5; })()"
        )
        assert inside  # the photo is shown whole, inside the viewer's frame
        browser.screenshot(tmp_path / "viewer.png")
        browser.press("ArrowRight")
        assert _open_photo(browser) == cards[4]["id"] == _url_photo(browser)
        browser.press("Escape")
        browser.wait_js("!document.getElementById('detail').open", "Esc")
        # Closed in place: still this page, its search, without the photo.
        assert browser.js("[location.pathname, location.search]") == [
            "/",
            "?q=%EB%B0%94%EB%8B%A4",
        ]
        assert browser.js("document.querySelectorAll('#grid .card').length") >= 40
        assert browser.errors() == []


def test_api_docs_page_works_offline(browser, tmp_path):
    import urllib.request

    from web import create_app

    with serve(create_app(tmp_path / "no-library-here", warm=False)) as url:
        with urllib.request.urlopen(url + "/api/openapi.json") as response:
            spec = json.load(response)
        operations = [
            (method.upper(), path)
            for path, item in spec["paths"].items()
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        ]
        for domain in ("Network", "Log"):
            browser.send(f"{domain}.enable")
        browser.send("Page.navigate", url=url + "/api/docs")
        browser.wait_js("document.body && document.body.dataset.ready === '1'", "the docs")
        requested = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        assert url + "/api/openapi.json" in requested
        outside = [u for u in requested if not u.startswith(url + "/")]
        assert outside == []  # nothing from a CDN or anywhere else

        shown = browser.js(
            "[...document.querySelectorAll('#api-routes .route h3')].map(h => "
            "[h.querySelector('.method').textContent, h.querySelector('.path').textContent])"
        )
        assert sorted(map(tuple, shown)) == sorted(operations)
        search = browser.js("document.getElementById('get-/api/search').innerText")
        for text in (
            "매개변수 / Parameters",
            "필수 / required",
            "응답 / Responses",
            "바다 + 노을",
            "SearchResponse",
            "results per page",
            "≤ 200",
        ):
            assert text in search, text
        # A schema link leads to its fields.
        hit = browser.js("document.getElementById('schema-Hit').innerText")
        assert "relpath" in hit and "path relative to the library's photo folder" in hit
        browser.screenshot(tmp_path / "api-docs.png")
        logged = [
            (e["params"]["entry"]["text"], e["params"]["entry"].get("url"))
            for e in browser.events
            if e.get("method") == "Log.entryAdded"
            and e["params"]["entry"]["level"] == "error"
            and e["params"]["entry"].get("url") != url + "/favicon.ico"  # the browser's own try
        ]
        assert logged == [] and browser.errors() == []


# -- the query, understood: chips, places, sort (issue 21) ---------------------------------------

TRIPS = {  # file -> (EXIF date, (lat, lon) or None)
    "a/001.jpg": ("2024:07:20 10:00:00", (33.4589, 126.9425)),  # 제주 서귀포시 성산읍
    "a/002.jpg": ("2024:08:02 10:00:00", (33.4996, 126.5312)),  # 제주 제주시
    "b/003.jpg": ("2023:04:01 10:00:00", (35.6812, 139.7671)),  # 일본 도쿄
    "b/004.jpg": ("2024:11:11 10:00:00", (35.6812, 139.7671)),  # 일본 도쿄
    "b/005.jpg": ("2023:05:02 10:00:00", (48.8584, 2.2945)),  # 프랑스 파리
    "c/006.jpg": ("2024:07:21 10:00:00", None),
}


def _chips(browser: Browser) -> list[str]:
    return browser.js("[...document.querySelectorAll('#understood .chip')].map(c => c.textContent)")


def _shown(browser: Browser) -> list[str]:
    return browser.js("[...document.querySelectorAll('#grid .photo')].map(b => b.title)")


def test_understood_facts_are_chips_places_are_listed_and_sort_toggles(
    browser, tmp_path, tiny_checkpoint
):
    from indexer.testing_facts import gps_tags, jpeg_bytes, make_exif, photo_pixels
    from tests.search_fixtures import index_folder
    from web import create_app

    root = tmp_path / "trips"
    for seed, (rel, (taken, where)) in enumerate(TRIPS.items()):
        exif = make_exif(taken=taken, gps=gps_tags(*where) if where else None)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg_bytes(exif=exif, image=photo_pixels((120, 90), seed)))
    library = index_folder(root, tiny_checkpoint)

    with serve(create_app(library, warm=False)) as url:
        browser.send("Page.addScriptToEvaluateOnNewDocument", source=RECORD_FETCHES)
        browser.send("Page.navigate", url=url + "/")
        browser.wait_js("document.body && document.body.dataset.ready === '1'", "the page")
        browser.wait_js("!document.getElementById('places-box').hidden", "the list of places")
        places = browser.js(
            "[...document.querySelectorAll('#places button')].map(b => b.textContent)"
        )
        assert places[:3] == [
            "일본 (2)",
            "일본 도쿄 (2)",
            "제주특별자치도 (2)",
        ]  # most photos first
        assert {"프랑스 파리 (1)", "제주특별자치도 서귀포시 (1)"} <= set(places)

        # A query of a date and a place: two chips, only the photo taken there and then.
        browser.click("#q")
        browser.commit("2023년 도쿄")
        browser.press_enter()
        browser.wait_js("document.querySelectorAll('#understood .chip').length === 2", "chips")
        assert _chips(browser) == ["2023-01-01–2023-12-31 ✕", "일본 도쿄 ✕"]
        browser.wait_js("document.querySelectorAll('#grid .photo').length === 1", "one photo")
        assert _shown(browser) == ["b/003.jpg"]
        assert browser.js("document.querySelector('#grid .score').textContent") == ""

        # One click removes the date: the query runs again without it, every photo of Tokyo.
        browser.click("#understood .chip[data-kind='date']")
        browser.wait_js("document.getElementById('q').value === '도쿄'", "the query without it")
        browser.wait_js("document.querySelectorAll('#grid .photo').length === 2", "both photos")
        assert _chips(browser) == ["일본 도쿄 ✕"]
        assert _shown(browser) == ["b/004.jpg", "b/003.jpg"]  # newest first

        # The sort toggle: oldest first, sent as `sort`, kept in the address.
        browser.js(
            "(() => { const s = document.getElementById('sort'); s.value = 'oldest';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        browser.wait_js("location.search.includes('sort=oldest')", "the sort in the address")
        browser.wait_js(
            "[...document.querySelectorAll('#grid .photo')].map(b => b.title).join() ==="
            " 'b/003.jpg,b/004.jpg'",
            "oldest first",
        )
        assert _searches(browser)[-1]["sort"] == "oldest"

        # A place from the list searches there.
        browser.click("#places-box summary")
        browser.click("#places button[data-place='프랑스 파리']")
        browser.wait_js("document.getElementById('q').value === '프랑스 파리'", "the place's query")
        browser.wait_js(
            "[...document.querySelectorAll('#grid .photo')].map(b => b.title).join() === 'b/005.jpg'",
            "the photo taken in Paris",
        )
        assert _chips(browser) == ["프랑스 ✕", "프랑스 파리 ✕"]  # each word a fact

        # Removing the last fact of a query of facts only empties the box and the chips.
        browser.click("#understood .chip")
        browser.wait_js("document.getElementById('q').value === '파리'", "the query without it")
        browser.wait_js("document.querySelectorAll('#understood .chip').length === 1", "a chip")
        browser.click("#understood .chip")
        browser.wait_js("document.getElementById('understood').hidden", "no chips")
        assert browser.js("document.getElementById('q').value") == ""

        # A day that does not exist: the message, no traceback, no page error.
        browser.click("#q")
        browser.commit("2월 30일 바다")
        browser.press_enter()
        browser.wait_js("!document.getElementById('message').hidden", "the error message")
        assert "날짜" in browser.js("document.getElementById('message').textContent")
        assert browser.errors() == []
