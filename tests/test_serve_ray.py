"""`serve --ray local`: the web app as Ray Serve replicas, through faults.

The real `koclip-search serve --ray local` runs in a subprocess inside its own network and pid
namespace (`tests.process_fixtures.in_namespace`, as `index --ray`'s tests do): Ray and its
HTTP entry point listen on that namespace's loopback only, and everything ends with it. A
scenario script there drives the service and prints what it saw as one JSON line; the
assertions are here. One service runs for the whole scenario (Ray starts in ~10 s): answers
and replicas, a cancelled request, a burst, a killed replica, then a model change, then its
shutdown, in that order.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tests.process_fixtures import in_namespace

pytest.importorskip(
    "ray.serve", reason="Ray Serve is not installed (pip install 'koclip-search[ray]')"
)
pytest.importorskip("httpx", reason="httpx is not installed")

QUERIES = ["바다", "노을 지는 바다", "강아지 사진", "red car"]
K = 5

COMMON = r"""
import asyncio, json, os, resource, signal, subprocess, sys, time
from pathlib import Path
import httpx
from web.replicas import REPLICA_HEADER

work = Path(sys.argv[1])
BASE = "http://127.0.0.1:8000"
out = {}
# The burst opens a thousand connections at once.
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)

def start_serve(*args):
    err = open(work / "serve.err", "w")
    return subprocess.Popen([sys.executable, "-m", "cli", "serve", "--ray", "local", *args],
                            stdout=subprocess.DEVNULL, stderr=err)

def stderr_text():
    return (work / "serve.err").read_text()

def wait_for(check, what, within=120.0):
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert serve.poll() is None, f"serve exited: {stderr_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {stderr_text()[-3000:]}"
        time.sleep(0.2)

def ray_processes(prefix=b"ray::"):
    found = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(prefix):
                found[int(d)] = cmd.split(b"\0")[0].decode()
    return found

def replica_pids():
    return sorted(ray_processes(b"ray::ServeReplica"))

def rss(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

def shut_down():
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(timeout=90)
    except subprocess.TimeoutExpired:
        serve.kill()
        serve.wait()
    deadline = time.monotonic() + 30  # a local Ray ends with the command
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    out["exit"] = serve.returncode
    out["stderr"] = stderr_text().splitlines()
    out["left"] = sorted(ray_processes().values())
"""

SERVICE_SCRIPT = (
    COMMON
    + r"""
root, other, queries, k = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
serve = start_serve("--library", root, "--replicas", "2", "--max-ongoing", "2",
                    "--max-queued", "8")
wait_for(lambda: "2 of 2 replicas ready" in stderr_text(), "two replicas", 240)
client = httpx.Client(base_url=BASE, timeout=60)

def search(q):
    r = client.get("/api/search", params={"q": q, "k": k})
    assert r.status_code == 200, (r.status_code, r.text)
    return [[h["path"], h["score"]] for h in r.json()["results"]], r.headers[REPLICA_HEADER]

# (1) the answers, and both replicas answer
out["answers"] = {q: search(q)[0] for q in queries}
out["model"] = client.get("/api/info").json()["model"]
seen = set()
for _ in range(200):
    seen.add(client.get("/api/info").headers[REPLICA_HEADER])
    if len(seen) == 2:
        break
out["replicas_seen"] = sorted(seen)
out["foreign_host"] = client.get("/api/info", headers={"Host": "evil.example"}).status_code

# (2) requests in flight (every replica frozen), half of them given up by their client
async def cancelled():
    pids = replica_pids()
    async with httpx.AsyncClient(base_url=BASE, timeout=60) as c:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            tasks = [asyncio.create_task(c.get("/api/search", params={"q": queries[i % 2], "k": k}))
                     for i in range(6)]
            await asyncio.sleep(1.0)
            for task in tasks[::2]:
                task.cancel()
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        kept = await asyncio.wait_for(asyncio.gather(*tasks[1::2]), 60)
        return [[r.status_code, [[h["path"], h["score"]] for h in r.json()["results"]]]
                for r in kept]
out["kept"] = asyncio.run(cancelled())
out["after_cancel"] = search(queries[0])[0]

# (3) a burst of 1,000 requests at once
pids = replica_pids()
out["rss_before"] = sum(rss(p) for p in pids)
async def burst():
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=BASE, timeout=120, limits=limits) as c:
        async def one(i):
            try:
                r = await c.get("/api/search", params={"q": queries[i % len(queries)], "k": k})
                return [r.status_code, r.headers.get("retry-after")]
            except httpx.HTTPError as exc:
                return [type(exc).__name__, None]
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 300)
out["burst"] = asyncio.run(burst())
out["after_burst"] = search(queries[0])[0]
out["rss_after"] = sum(rss(p) for p in pids)
out["same_replicas"] = replica_pids() == pids

# (4) a replica killed (-9) under a steady stream of requests
victim = pids[0]
async def under_kill():
    results, stop = [], asyncio.Event()
    async with httpx.AsyncClient(base_url=BASE, timeout=60) as c:
        async def stream():
            while not stop.is_set():
                try:
                    r = await c.get("/api/search", params={"q": queries[1], "k": k})
                    results.append(r.status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)
        streams = [asyncio.create_task(stream()) for _ in range(4)]
        await asyncio.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*streams), 120)
    return results
out["under_kill"] = asyncio.run(under_kill())
out["after_kill"] = search(queries[1])[0]
wait_for(lambda: len(replica_pids()) == 2 and victim not in replica_pids(), "a new replica", 180)
new = set()
def a_new_replica_answers():
    new.add(client.get("/api/info").headers[REPLICA_HEADER])
    return new - seen
out["new_replica"] = sorted(wait_for(a_new_replica_answers, "the new replica to answer", 60))

# (5) the library re-indexed with another model under the running service
done = subprocess.run([sys.executable, "-m", "cli", "index", root, "--rebuild", "--model", other],
                      capture_output=True, text=True, timeout=300)
out["rebuild"] = [done.returncode, done.stderr[-2000:]]
per_replica = {}
for _ in range(200):
    answer, replica = search(queries[0])
    per_replica.setdefault(replica, answer)
    if len(per_replica) == 2:
        break
out["after_change"] = per_replica
out["model_after"] = client.get("/api/info").json()["model"]
client.close()

# (6) SIGTERM: the application and the local Ray go
shut_down()
print(json.dumps(out))
"""
)

BROWSER_SCRIPT = (
    COMMON
    + r"""
from tests.browser_fixtures import Browser
root = sys.argv[2]
serve = start_serve("--library", root)
wait_for(lambda: "replicas ready" in stderr_text(), "the replica", 240)
browser = Browser(work / "profile")
try:
    browser.send("Page.navigate", url=BASE + "/")
    browser.wait_js("document.body && document.body.dataset.ready === '1'", "the page")
    out["library"] = browser.js("document.getElementById('library').textContent")
    browser.click("#q")
    browser.commit("바다")
    browser.press_enter()
    loaded = ("[...document.querySelectorAll('#grid img')]"
              ".filter(i => i.complete && i.naturalWidth > 0).length")
    out["thumbnails"] = browser.wait_js(loaded + " >= 6 && " + loaded, "thumbnails of 바다")
    out["titles"] = browser.js("[...document.querySelectorAll('#grid .photo')].map(b => b.title)")
    browser.click("#grid .card:nth-child(1) .photo")
    browser.wait_js("document.getElementById('detail').open", "the detail view")
    original = browser.js("document.getElementById('detail-original').getAttribute('href')")
    out["original_link"] = original
    browser.send("Page.navigate", url=BASE + original)
    browser.wait_js("document.contentType.startsWith('image/') && document.images.length === 1"
                    " && document.images[0].complete", "the original")
    out["original"] = browser.js("[document.contentType, document.images[0].naturalWidth,"
                                 " document.images[0].naturalHeight]")
    out["errors"] = browser.errors()
finally:
    browser.close()
shut_down()
print(json.dumps(out))
"""
)

# A library whose model went away after indexing: every replica fails to load it.
FAILING_SCRIPT = (
    COMMON
    + r"""
serve = start_serve("--library", sys.argv[2], "--replicas", "1")
try:
    serve.wait(timeout=300)
except subprocess.TimeoutExpired:
    serve.kill()
    serve.wait()
out["exit"] = serve.returncode
out["errors"] = [line for line in stderr_text().splitlines() if line.startswith("Error")]
out["traceback"] = "Traceback" in stderr_text()
deadline = time.monotonic() + 30
while ray_processes() and time.monotonic() < deadline:
    time.sleep(0.2)
out["left"] = sorted(ray_processes().values())
print(json.dumps(out))
"""
)


def _reference(library: Path) -> dict[str, list[list]]:
    """The answers of a plain in-process Searcher, as the API shapes them."""
    from search import Searcher

    with Searcher(library) as searcher:
        return {
            q: [[h.to_json()["path"], h.to_json()["score"]] for h in searcher.text(q, k=K).hits]
            for q in QUERIES
        }


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_checkpoint, tiny_checkpoint_other) -> dict:
    """One `serve --ray local --replicas 2` through the whole scenario; what it saw, and the
    in-process answers of the library before and after its re-index with the other model."""
    from tests.search_fixtures import index_folder, write_photos

    tmp = tmp_path_factory.mktemp("serve-ray")
    root = tmp / "photos"
    write_photos(root)
    library = index_folder(root, tiny_checkpoint)
    before = _reference(library)
    out = in_namespace(
        tmp,
        SERVICE_SCRIPT,
        root,
        tiny_checkpoint_other,
        json.dumps(QUERIES),
        K,
        timeout=900,
    )
    return {**out, "reference": before, "reference_after": _reference(library)}


@pytest.mark.slow
def test_replicas_answer_as_a_searcher_does_and_both_answer(service, tiny_checkpoint):
    assert service["answers"] == service["reference"]
    assert all(len(a) == K for a in service["answers"].values())
    assert service["model"] == str(tiny_checkpoint)
    assert len(service["replicas_seen"]) == 2  # two replicas, each answered
    assert service["foreign_host"] == 400  # HostGuard, as plain serve


@pytest.mark.slow
def test_a_request_cancelled_in_flight_does_not_break_the_others(service):
    # The three requests whose clients stayed got their whole answers; the service goes on.
    expected = service["reference"]
    assert len(service["kept"]) == 3
    for status, answer in service["kept"]:
        assert status == 200 and answer in (expected[QUERIES[0]], expected[QUERIES[1]])
    assert service["after_cancel"] == expected[QUERIES[0]]


@pytest.mark.slow
def test_a_burst_gets_503_with_retry_after_and_the_service_stays_up(service):
    statuses = Counter(status for status, _ in service["burst"])
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] >= 1 and statuses[200] >= 1, statuses
    assert {after for status, after in service["burst"] if status == 503} == {"1"}
    assert service["after_burst"] == service["reference"][QUERIES[0]]
    assert service["same_replicas"]  # no replica crashed under it
    # Bounded memory: the queue is bounded, so a burst leaves no large growth behind.
    assert service["rss_after"] < service["rss_before"] + 512 * 2**20, (
        service["rss_before"],
        service["rss_after"],
    )


@pytest.mark.slow
def test_a_killed_replica_fails_only_its_requests_and_ray_restarts_it(service):
    results = Counter(service["under_kill"])
    assert set(results) <= {200, 500, 502, 503}, results  # an error or an answer, never a hang
    assert results[200] >= 1
    assert service["after_kill"] == service["reference"][QUERIES[1]]
    # A new replica process took the dead one's place and answers.
    assert service["new_replica"] and not set(service["new_replica"]) & set(
        service["replicas_seen"]
    )


@pytest.mark.slow
def test_a_model_change_under_the_service_is_served_with_the_new_model(
    service, tiny_checkpoint_other
):
    code, stderr = service["rebuild"]
    assert code == 0, stderr
    assert service["model_after"] == str(tiny_checkpoint_other)
    after = service["reference_after"]
    assert after[QUERIES[0]] != service["reference"][QUERIES[0]]  # the models do differ
    # Both replicas answer with the new model's vectors, never the old tower's.
    assert len(service["after_change"]) == 2
    assert all(answer == after[QUERIES[0]] for answer in service["after_change"].values())


@pytest.mark.slow
def test_sigterm_stops_the_service_and_its_local_ray(service):
    assert service["exit"] == 0, service["stderr"]
    assert not any("Traceback" in line for line in service["stderr"]), service["stderr"]
    ready = [line for line in service["stderr"] if "replicas ready on Ray" in line]
    assert ready[0].startswith("koclip-search: http://127.0.0.1:8000/  (2 of 2 replicas")
    assert service["left"] == []


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_searches_in_korean_through_ray_replicas(tmp_path, tiny_checkpoint):
    from tests.browser_fixtures import require_chromium
    from tests.search_fixtures import PHOTOS, index_folder, write_photos

    require_chromium()
    root = tmp_path / "photos"
    write_photos(root)
    index_folder(root, tiny_checkpoint)
    out = in_namespace(tmp_path, BROWSER_SCRIPT, root, timeout=600)
    assert "사진" in out["library"]
    assert out["thumbnails"] >= 6
    assert all(title.endswith((".jpg", ".png")) for title in out["titles"])
    assert any(title in {rel for rel, *_ in PHOTOS} for title in out["titles"])
    assert out["original_link"].startswith("/api/photos/")
    content_type, width, height = out["original"]
    assert content_type.startswith("image/") and (width, height) == (64, 48)
    assert out["errors"] == []
    assert out["exit"] == 0 and out["left"] == []


@pytest.mark.slow
def test_replicas_that_cannot_start_end_the_command_with_one_line(tmp_path, tiny_checkpoint):
    from tests.search_fixtures import index_folder, write_photos

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    root = tmp_path / "photos"
    write_photos(root)
    index_folder(root, model)
    shutil.rmtree(model)  # the driver opens the library; only a replica loads the model
    out = in_namespace(tmp_path, FAILING_SCRIPT, root, timeout=600)
    assert out["exit"] == 1, out
    (line,) = out["errors"]
    assert line.startswith("Error: the replicas did not start: ") and str(model) in line, line
    assert not out["traceback"]
    assert out["left"] == []


# -- refused before any cluster work -------------------------------------------------------------


def test_ray_with_watch_is_refused_with_one_line(tmp_path):
    result = CliRunner().invoke(
        main, ["serve", "--library", str(tmp_path), "--ray", "local", "--watch"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --watch runs in one process"), lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "2"], "go with --ray"),
        (["--max-queued", "4"], "go with --ray"),
        (["--ray", "somewhere"], "is not auto, local or HOST:PORT"),
    ],
)
def test_ray_flags_are_checked(tmp_path, args, message):
    result = CliRunner().invoke(main, ["serve", "--library", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_an_address_where_nothing_answers_fails_fast_with_one_line(
    tmp_path_factory, tiny_checkpoint
):
    from tests.search_fixtures import indexed_photos

    root = indexed_photos(tmp_path_factory, tiny_checkpoint)
    with socket.socket() as s:  # a loopback port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(
        main, ["serve", "--library", str(root), "--ray", f"127.0.0.1:{port}"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert (
        f"nothing answers at 127.0.0.1:{port}" in lines[0] and "serve with --ray local" in lines[0]
    )


def test_a_node_without_the_library_is_named(tmp_path):
    from web.replicas import library_problem

    assert library_problem(str(tmp_path / "nowhere")).startswith(
        f"a Ray node on {socket.gethostname()} does not see the library {tmp_path / 'nowhere'}"
    )
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "library.sqlite3").write_bytes(b"")
    assert library_problem(str(tmp_path / "lib")) is None
