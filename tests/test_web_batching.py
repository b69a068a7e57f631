"""Many people searching one `serve` at once: batched answers, backpressure, health, metrics.

Batched answers are checked against a lone Searcher call on the same library; the model is
the real tiny one, its tower's calls counted by a wrapper that delegates to it. Waits are
bounded (tries, timeouts) and every ordering is proved by events, never by elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import db
from db.testing import set_facts
from search import DateError, QueryError, Searcher, SearchOptions, SearchResults, TextRequest
from tests.search_fixtures import error_json, index_folder, ok_json, write_photos
from tests.web_fixtures import served
from web import create_app

BASE = "http://127.0.0.1"
TODAY = date(2025, 3, 1)
FACTS = {
    "2023/여행/바다.jpg": (("제주특별자치도", "서귀포시"), "Apple", "iPhone 13 Pro", ()),
    "2024/바다/파도.jpg": (("제주특별자치도", "제주시"), None, None, ("파도",)),
    "2023/집/고양이.jpg": (("서울특별시", "강남구"), None, None, ()),
}
TRIES = 3000  # of a 10 ms pause: what any wait below may take at most


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("batch-photos")
    write_photos(root)
    library = index_folder(root, tiny_checkpoint)
    set_facts(library, lambda rel: FACTS.get(rel, (None, None, None, ())))
    return library


@pytest.fixture(scope="module")
def lone(library: Path) -> Iterator[Searcher]:
    """The reference: each query asked alone."""
    with Searcher(library) as s:
        yield s


# -- helpers ------------------------------------------------------------------------------


def count_calls(searcher: Searcher, tower: str, method: str, monkeypatch) -> list[list]:
    """Every batch the real `tower` of `searcher` is given, recorded by a delegating wrapper."""
    encoder = searcher.encoder.encoder(tower)
    real = getattr(encoder, method)
    calls: list[list] = []

    def counted(items, *args, **kwargs):
        calls.append(list(items))
        return real(items, *args, **kwargs)

    monkeypatch.setattr(encoder, method, counted)
    return calls


def wait_until(ready: Callable[[], bool], what: str) -> None:
    for _ in range(TRIES):
        if ready():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def until(ready: Callable[[], bool], what: str) -> None:
    for _ in range(TRIES):
        if ready():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@contextlib.contextmanager
def holding(backend: Any) -> Iterator[None]:
    """The search thread kept busy (by a call that waits) until the block ends: requests
    sent meanwhile queue up, and go as one batch when it is let go."""
    started, release = threading.Event(), threading.Event()

    def hold(_searcher: Searcher) -> None:
        started.set()
        release.wait(60)

    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(backend.call, hold)
        assert started.wait(60), "the search thread never took the holding call"
        try:
            yield
        finally:
            release.set()
            blocker.result(timeout=60)


def same_results(batched: SearchResults | Exception, alone: SearchResults) -> None:
    assert isinstance(batched, SearchResults), batched
    assert batched.query == alone.query
    assert [h.photo_id for h in batched] == [h.photo_id for h in alone]
    assert [h.rank for h in batched] == [h.rank for h in alone]
    for a, b in zip(batched, alone, strict=True):
        assert (a.score is None) == (b.score is None)
        if a.score is not None:
            assert abs(a.score - b.score) <= 1e-6
    assert batched.understood == alone.understood
    assert (batched.cutoff is None) == (alone.cutoff is None)
    if alone.cutoff is not None:
        assert batched.cutoff.kept == alone.cutoff.kept


def same_json(body: dict, alone: SearchResults) -> None:
    expected = alone.to_json()
    assert body["query"] == expected["query"]
    assert [r["path"] for r in body["results"]] == [r["path"] for r in expected["results"]]
    for got, want in zip(body["results"], expected["results"], strict=True):
        assert abs(got["score"] - want["score"]) <= 1e-4


def scrape(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def asgi_call(
    app: Any,
    path: str,
    params: dict | None = None,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: list[bytes | asyncio.Event] | None = None,
    leave: asyncio.Event | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request straight to the ASGI app, as a server makes it: the body in chunks (an
    Event in the list: the client pauses there until it is set), then, when `leave` is set,
    the client's disconnect. (status, headers, body) of the answer."""
    chunks = list(body or [b""])
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(params or {}).encode(),
        "headers": [(b"host", b"127.0.0.1"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict:
        while chunks and isinstance(chunks[0], asyncio.Event):
            await chunks.pop(0).wait()
        if chunks:
            chunk = chunks.pop(0)
            more = any(isinstance(c, bytes) for c in chunks)
            return {"type": "http.request", "body": chunk, "more_body": more}
        await (leave or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    answer: dict[str, Any] = {"body": b""}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["headers"], answer["body"]


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


# -- Searcher.search_many -----------------------------------------------------------------


def _cases(root: Path) -> list[tuple[str, dict, bool]]:
    """(query, options, prompt): mixed options, a repeat, two that fail on their own."""
    return [
        ("바다", {}, True),
        ("바다", {"k": 3, "offset": 2}, True),
        ("강아지", {"under": str(root / "2023")}, True),
        ("노을", {"after": "2023-05-02", "before": "2024"}, True),
        ("작년 제주 바다", {"today": TODAY}, True),  # a date and a place understood
        ("제주", {"today": TODAY}, True),  # facts only: a listing, nothing encoded
        ("서울 고양이", {"literal": True}, True),
        ("바다", {"sort": "newest"}, True),
        ("산", {"threshold": "auto"}, True),
        ("바다", {}, False),  # no prompt: another text for the tower
        ("바다", {"k": 5}, True),  # asked again: the cache answers
        ("2023년 2월 30일 바다", {"today": TODAY}, True),  # no such day
        ("노을", {"after": "2023-13"}, True),  # a bad option
        ("   ", {}, True),  # empty
    ]


@pytest.mark.slow  # compiles the tiny text tower for several batch shapes
def test_batched_answers_equal_lone_answers(library, lone, monkeypatch):
    with Searcher(library) as batched:
        calls = count_calls(batched, "text", "encode_texts", monkeypatch)
        cases = _cases(batched.photo_root)
        requests = [TextRequest(q, SearchOptions(**o), prompt=p) for q, o, p in cases]
        answers = batched.search_many(requests)
        # Every text the tower had not seen, once, in one call per prompt setting.
        assert sorted(sorted(c) for c in calls) == [
            ["강아지", "노을", "바다", "산", "서울 고양이"],
            ["바다"],
        ]
        for (query, options, prompt), answer in zip(cases, answers, strict=True):
            try:
                alone = lone.text(query, prompt=prompt, **options)
            except (DateError, QueryError) as exc:
                assert type(answer) is type(exc) and str(answer) == str(exc)
                continue
            same_results(answer, alone)
        assert isinstance(answers[11], DateError) and isinstance(answers[13], QueryError)
        assert answers[4].understood.places == ("제주특별자치도",)
        # Asked again, the text cache answers them all: the tower is not called.
        again = batched.search_many(requests)
        assert len(calls) == 2
        for first, second in zip(answers, again, strict=True):
            if isinstance(first, SearchResults):
                same_results(second, first)


def test_composed_requests_equal_compose(library, lone):
    root = lone.photo_root
    cases = [
        ("바다 + 노을 - 0.5:사람", {"k": 6}),
        (f"{root}/2023/여행/산.jpg + 노을", {"k": 4}),  # an image term: its stored vector
        ("2:강아지 - 바다", {"under": str(root / "2024")}),
        ("바다 + ", {}),  # ends with an operator
    ]
    with Searcher(library) as batched:
        requests = [TextRequest(q, SearchOptions(**o), composed=True) for q, o in cases]
        answers = batched.search_many(requests)
    for (query, options), answer in zip(cases, answers, strict=True):
        try:
            alone = lone.compose(query, **options)
        except QueryError as exc:
            assert type(answer) is type(exc) and str(answer) == str(exc)
            continue
        same_results(answer, alone)
    assert isinstance(answers[3], QueryError)


# -- the batcher on its own ---------------------------------------------------------------


class Heard:
    """A BatchObserver that writes down what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def batch(self, lane: str, size: int) -> None:
        self.events.append(("batch", lane, size))

    def rejected(self, lane: str) -> None:
        self.events.append(("rejected", lane))

    def skipped(self, lane: str, count: int) -> None:
        self.events.append(("skipped", lane, count))


def test_the_batcher_skips_the_cancelled_and_answers_the_rest():
    from web.batcher import QueueFull, SearchThread

    seen: list[list[str]] = []
    running = {"hold": threading.Event(), "a": threading.Event()}
    release = {"hold": threading.Event(), "a": threading.Event()}

    def handler(items: list[str]) -> list:
        seen.append(list(items))
        for key in running:
            if key in items:
                running[key].set()
                release[key].wait(60)
        return [ValueError(item) if item == "bad" else f"answer {item}" for item in items]

    heard = Heard()
    thread = SearchThread({"text": handler}, window=0, max_batch=8, queue_size=4, observer=heard)
    try:
        first = thread.submit("text", "hold")
        assert running["hold"].wait(60)
        queued = {name: thread.submit("text", name) for name in ("a", "gone", "bad", "mid")}
        with pytest.raises(QueueFull):
            thread.submit("text", "one too many")
        with pytest.raises(QueueFull):
            thread.call(str, bounded=True)  # a search run alone counts too
        own = thread.call(str, "server's own work")  # never refused
        assert queued["gone"].cancel() and thread.depth() == 3  # left the queue at once
        release["hold"].set()
        assert first.result(60) == "answer hold"
        assert running["a"].wait(60)
        assert not queued["mid"].cancel()  # its batch runs: too late to cancel, and harmless
        release["a"].set()
        assert queued["a"].result(60) == "answer a" and queued["mid"].result(60) == "answer mid"
        with pytest.raises(ValueError, match="bad"):
            queued["bad"].result(60)  # one request's error is its own
        assert own.result(60) == "server's own work"
    finally:
        for event in release.values():
            event.set()
        thread.close()
    assert seen == [["hold"], ["a", "bad", "mid"]]  # "gone" never reached the handler
    assert ("skipped", "text", 1) in heard.events
    assert heard.events.count(("rejected", "text")) == 1 and ("rejected", "call") in heard.events
    assert [e for e in heard.events if e[0] == "batch"] == [
        ("batch", "text", 1),
        ("batch", "text", 3),
    ]


# -- the app: batches, backpressure, disconnects --------------------------------------------


def test_concurrent_searches_are_encoded_together(library, lone, monkeypatch):
    app = create_app(library, warm=False, batch_window=0.005, max_batch=32)
    backend = app.state.backend
    queries = [f"동시에 묻는 말 {i}" for i in range(6)]
    with TestClient(app, base_url=BASE) as c, ThreadPoolExecutor(len(queries)) as pool:
        calls = count_calls(backend.searcher(), "text", "encode_texts", monkeypatch)
        with holding(backend):
            sent = [pool.submit(c.get, "/api/search", params={"q": q, "k": 5}) for q in queries]
            wait_until(lambda: backend.queue_depth() == len(queries), "all queued")
        bodies = [ok_json(f.result(timeout=60)) for f in sent]
        metrics = scrape(c)
    assert len(calls) == 1 < len(queries) and sorted(calls[0]) == sorted(queries)
    for query, body in zip(queries, bodies, strict=True):
        same_json(body, lone.compose(query, k=5))
    assert sample(metrics, "koclip_search_batch_size_count", lane="text") == 1
    assert sample(metrics, "koclip_search_batch_size_sum", lane="text") == len(queries)


@pytest.mark.slow  # loads and compiles the vision tower
def test_concurrent_image_searches_are_encoded_together(library, lone, monkeypatch):
    from web.uploads import decode_upload

    app = create_app(library, warm=False)
    backend = app.state.backend
    photos = [_jpeg((200, 40, 40)), _jpeg((30, 90, 200))]
    with TestClient(app, base_url=BASE) as c, ThreadPoolExecutor(2) as pool:
        calls = count_calls(backend.searcher(), "vision", "encode_images", monkeypatch)
        texts = count_calls(backend.searcher(), "text", "encode_texts", monkeypatch)
        with holding(backend):
            sent = [
                pool.submit(
                    c.post,
                    "/api/image",
                    params={"k": 4},
                    files={"image": (f"{i}.jpg", data, "image/jpeg")},
                )
                for i, data in enumerate(photos)
            ]
            wait_until(lambda: backend.queue_depth() == 2, "both uploads queued")
        bodies = [ok_json(f.result(timeout=60)) for f in sent]
    assert len(calls) == 1 and len(calls[0]) == 2 and not texts  # images batch apart
    for i, (data, body) in enumerate(zip(photos, bodies, strict=True)):
        same_json(body, lone.image(decode_upload(data), label=f"{i}.jpg", k=4))


def test_a_full_queue_answers_busy_then_recovers(library):
    app = create_app(library, warm=False, queue_size=2)
    backend = app.state.backend
    with TestClient(app, base_url=BASE) as c, ThreadPoolExecutor(2) as pool:
        backend.searcher()
        with holding(backend):
            sent = [pool.submit(c.get, "/api/search", params={"q": f"줄 {i}"}) for i in range(2)]
            wait_until(lambda: backend.queue_depth() == 2, "the queue full")
            refused = c.get("/api/search", params={"q": "넘친 요청"})
            assert "searches waiting" in error_json(refused, 503, "busy")
            assert refused.headers["Retry-After"] == "1"
            # Searches that run alone (similar photos, compositions) count in the same queue.
            error_json(c.get("/api/photos/1/similar"), 503, "busy")
        assert all(ok_json(f.result(timeout=60))["results"] for f in sent)
        assert ok_json(c.get("/api/search", params={"q": "넘친 요청"}))["results"]
        metrics = scrape(c)
    assert sample(metrics, "koclip_search_rejected_total", lane="text") == 1
    assert sample(metrics, "koclip_search_rejected_total", lane="call") == 1
    assert (
        sample(
            metrics, "koclip_http_requests_total", route="/api/search", method="GET", status="503"
        )
        == 1
    )


def test_a_client_that_leaves_is_never_encoded(library, lone, monkeypatch):
    app = create_app(library, warm=False)
    backend = app.state.backend
    calls = count_calls(backend.searcher(), "text", "encode_texts", monkeypatch)

    async def scenario() -> tuple[int, int, dict]:
        leave = asyncio.Event()
        with holding(backend):
            stay = asyncio.create_task(asgi_call(app, "/api/search", {"q": "남은 손님", "k": 3}))
            await until(lambda: backend.queue_depth() == 1, "the first queued")
            gone = asyncio.create_task(
                asgi_call(app, "/api/search", {"q": "떠난 손님"}, leave=leave)
            )
            await until(lambda: backend.queue_depth() == 2, "the second queued")
            leave.set()
            gone_status, _, _ = await asyncio.wait_for(gone, 60)
            depth = backend.queue_depth()  # the leaver is out of the queue at once
        status, _, body = await asyncio.wait_for(stay, 60)
        return gone_status, depth, {"status": status, "body": json.loads(body)}

    try:
        gone_status, depth, stayed = asyncio.run(scenario())
    finally:
        backend.close()
    assert gone_status == 499 and depth == 1
    assert stayed["status"] == 200
    same_json(stayed["body"], lone.compose("남은 손님", k=3))
    encoded = [text for call in calls for text in call]
    assert "남은 손님" in encoded and "떠난 손님" not in encoded


def test_a_slow_upload_does_not_hold_a_text_search(library):
    app = create_app(library, warm=False)
    backend = app.state.backend
    data = _jpeg((20, 160, 90))

    async def scenario() -> list[str]:
        events: list[str] = []
        rest = asyncio.Event()
        upload = asyncio.create_task(
            asgi_call(
                app,
                "/api/image",
                {"k": 3},
                method="POST",
                headers=[(b"content-type", b"image/jpeg")],
                body=[data[:200], rest, data[200:]],
            )
        )
        status, _, _ = await asyncio.wait_for(asgi_call(app, "/api/search", {"q": "바다"}), 60)
        events.append(f"text {status}")
        if not upload.done():
            events.append("upload still sending")
        rest.set()
        status, _, _ = await asyncio.wait_for(upload, 60)
        events.append(f"upload {status}")
        return events

    try:
        backend.searcher()
        events = asyncio.run(scenario())
    finally:
        backend.close()
    assert events == ["text 200", "upload still sending", "upload 200"]


# -- health, metrics, the command -----------------------------------------------------------


def test_health_says_ready_once_warm(library):
    app = create_app(library, warm=False)
    with TestClient(app, base_url=BASE) as c:
        before = c.get("/api/health")
        assert before.status_code == 503 and before.json() == {"status": "starting"}
        app.state.backend.warm()
        body = ok_json(c.get("/api/health"))
        assert body["status"] == "ready" and body["queue"] == 0
        assert body["library"] == str(library) and body["model"]
        # Behind the Host guard, as every route.
        for path in ("/api/health", "/metrics"):
            assert c.get(path, headers={"Host": "evil.example"}).status_code == 400


def test_health_without_a_library(tmp_path):
    app = create_app(tmp_path / "nowhere", warm=False)
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/health").json()["status"] == "starting"
        with pytest.raises(db.LibraryNotFoundError):
            app.state.backend.warm()
        after = c.get("/api/health")
        assert after.status_code == 503 and after.json()["status"] == "no_library"
        assert after.json()["detail"]
        assert "koclip_search_queue_depth" in c.get("/metrics").text  # no library needed


def test_metrics_count_requests_by_route(library):
    with TestClient(create_app(library, warm=False), base_url=BASE) as c:
        before = scrape(c)
        ok_json(c.get("/api/search", params={"q": "바다"}))
        error_json(c.get("/api/photos/999999"), 404, "not_found")
        c.get("/no/such/page")
        after = scrape(c)
    search = {"route": "/api/search", "method": "GET", "status": "200"}
    photo = {"route": "/api/photos/{photo_id}", "method": "GET", "status": "404"}
    other = {"route": "other", "method": "GET", "status": "404"}
    for labels in (search, photo, other):
        name = "koclip_http_requests_total"
        assert sample(after, name, **labels) == sample(before, name, **labels) + 1, labels
    count = "koclip_http_request_duration_seconds_count"
    assert (
        sample(after, count, route="/api/search") == sample(before, count, route="/api/search") + 1
    )
    assert ("koclip_search_queue_depth", frozenset()) in after
    # One registry per app: a second app in this process starts from nothing.
    with TestClient(create_app(library, warm=False), base_url=BASE) as c:
        fresh = scrape(c)
    assert sample(fresh, "koclip_http_requests_total", **search) == 0


def test_serve_passes_the_batching_options(library, monkeypatch):
    from cli import main, serve_cmd
    from web import batcher

    calls = served(monkeypatch)
    argv = ["serve", "--library", str(library), "--batch-window-ms", "7", "--max-batch", "4"]
    result = CliRunner().invoke(main, [*argv, "--queue-size", "9"])
    assert result.exit_code == 0, result.output
    thread = calls[0][0].app.state.backend.search_thread
    assert (thread.window, thread.max_batch, thread.queue_size) == (0.007, 4, 9)
    # The command's defaults are the batcher's (repeated there so --help loads no web code).
    assert serve_cmd.BATCH_WINDOW_MS == batcher.BATCH_WINDOW * 1000
    assert (serve_cmd.MAX_BATCH, serve_cmd.QUEUE_SIZE) == (batcher.MAX_BATCH, batcher.QUEUE_SIZE)
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "--batch-window-ms" in help_text and "--queue-size" in help_text
