"""bench/serve.py's own arithmetic: what it counts under load, the issue's target lines and the
scaling model, and that its private network holds only a loopback (the measurement itself is
the bench's run, not a test)."""

from __future__ import annotations

import asyncio
import subprocess
import unicodedata
from urllib.parse import parse_qs, urlsplit

import pytest

from bench import serve
from bench._common import in_namespace_argv, namespace_problem


def test_queries_are_distinct_nfc_korean_phrases():
    qs = list(serve.queries())
    assert len(qs) == len(set(qs)) == 25_600
    assert all(q == unicodedata.normalize("NFC", q) and "  " not in q for q in qs)
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in q) for q in qs)
    # every word of every query is one token of the bench's vocabulary
    vocab = set(serve.vocabulary())
    assert {w for q in qs[::97] for w in q.split()} <= vocab


async def _answering_server(seen: list[str]) -> asyncio.Server:
    """HTTP/1.1 on 127.0.0.1 that answers /api/search by its query: "busy…" 503, "boom…" 500,
    "drop…" closes the connection unanswered, anything else 200."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                q = parse_qs(urlsplit(target).query)["q"][0]
                seen.append(q)
                if q.startswith("drop"):
                    return
                status = {"busy": "503 Service Unavailable", "boom": "500 Internal Server Error"}
                line = status.get(q[:4], "200 OK")
                await asyncio.sleep(0.001)
                writer.write(
                    f"HTTP/1.1 {line}\r\nContent-Type: application/json\r\n"
                    "Content-Length: 2\r\n\r\n{}".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_a_point_counts_503s_and_failures_apart_and_leaves_the_warm_up_out():
    warm = ["busy 준비", "준비 1", "준비 2"]
    measured = [f"질문 {i}" for i in range(9)] + ["busy 1", "busy 2", "boom 1", "drop 1"]

    async def scenario() -> tuple[serve.Point, list[str]]:
        seen: list[str] = []
        server = await _answering_server(seen)
        port = server.sockets[0].getsockname()[1]
        async with server:
            point = await serve.load_point(
                f"http://127.0.0.1:{port}", "b", 3, warm, measured, timeout=10
            )
        return point, seen

    point, seen = asyncio.run(scenario())
    assert sorted(seen) == sorted(warm + measured)  # each query sent once
    assert (point.requests, point.ok, point.busy, point.failed) == (13, 9, 2, 2)
    assert point.first_failure  # what went wrong is kept for the report
    assert point.p50_ms <= point.p99_ms and point.rps == pytest.approx(9 / point.wall_s)


def _run(mode: str, points: list[tuple[int, float, float]], **kw) -> serve.ModeRun:
    run = serve.ModeRun(mode, f"({mode})", kw.pop("options", []), **kw)
    run.points = [
        serve.Point(mode, c, 100, ok=100, rps=rps, p50_ms=p50, p99_ms=3 * p50)
        for c, rps, p50 in points
    ]
    return run


def test_the_target_lines_compare_the_same_runs_rows():
    runs = {
        "b": _run("b", [(1, 20.0, 50.0), (16, 35.0, 400.0)]),
        "c": _run("c", [(1, 18.0, 56.0)], options=["--ray", "local", "--replicas", "2"]),
    }
    cached = serve.Point("b", 16, 100, ok=100, rps=90.0, p50_ms=5.0, p99_ms=9.0, queries="cached")
    runs["b"].points.append(cached)  # no encoding: never a target's row
    b_line, c_line, cached_line = serve.verdicts(runs, ceiling=40.0)
    assert cached_line.startswith("(b), one cached query at 16 clients (no encoding): 90.0 req/s")
    assert b_line.startswith("(b) at 16 clients = 88% of the tower ceiling") and ": ok)" in b_line
    assert "p99 = 3.0× p50" in b_line
    assert c_line.startswith("(c) at 1 client = +12% overhead vs (b)") and ": ok)" in c_line
    runs["c"] = _run("c", [(1, 15.0, 60.0)])
    assert (
        "+20% overhead" in serve.verdicts(runs, 40.0)[1]
        and ": MISS)" in serve.verdicts(runs, 40.0)[1]
    )
    assert ": MISS)" in serve.verdicts(runs, 42.0)[0]  # 35 / 42 = 83%
    assert serve.verdicts({}, 40.0) == [
        "(b) at 16 clients: not measured",
        "(c) at 1 client vs (b): not measured",
    ]


def test_the_scaling_model_takes_the_index_out_of_a_replica_and_puts_100m_ivf_pq_in():
    runs = {
        "c": _run(
            "c",
            [(1, 10.0, 90.0), (16, 30.0, 500.0)],
            options=["--ray", "local", "--replicas", "2"],
            replica_rss_mb=[1000.0, 1200.0],
        )
    }
    lines = serve.scaling_model(runs, ceiling=40.0, cores=2, photos=100_000, index_type="flat")
    assert "20.0 queries/s per core" in lines[0]
    assert "peaked at 30.0 req/s (16 clients) = 15.0 queries/s per replica" in lines[1]
    index_mb = serve.FLAT_B_PER_PHOTO * 100_000 / 2**20  # 201 MB of the median replica's 1,100
    at_100m_gb = (
        1100.0 - index_mb + (88 * 1e8 + 16_384 * 512 * 4) / 2**20
    ) / 1024  # 8.2 GB of codes and centroids + the rest
    assert f"~{at_100m_gb:.1f} GB" in lines[-1] and "1,100 MB resident" in lines[-1]
    skipped = {"c": serve.ModeRun("c", "(c)", [], skipped="ray[serve] is not installed")}
    assert serve.scaling_model(skipped, 40.0, 2, 1000, "flat")[-1].startswith(
        "- (c) was not measured: ray[serve] is not installed"
    )


def test_the_private_network_has_only_a_loopback_and_it_is_up():
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    done = subprocess.run(
        in_namespace_argv(["ip", "-o", "link"]), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    links = [line.split(":")[1].strip() for line in done.stdout.splitlines()]
    assert links == ["lo"] and "UP" in done.stdout.split(">")[0]


def test_the_ceiling_is_serves_precision_best_median_and_its_share_of_the_matmul():
    from koclip.config import KoCLIPConfig

    text = KoCLIPConfig.base().text
    tower = [
        serve.TowerRow("fp32", 1, 10, 100.0, 10.0, 90.0),
        serve.TowerRow("fp32", 8, 3, 400.0, 20.0, 380.0),
        serve.TowerRow("bf16", 1, 10, 40.0, 25.0, 30.0),
        serve.TowerRow("bf16", 8, 3, 200.0, 40.0, 160.0),
        serve.TowerRow("bf16", 16, 3, 320.0, 50.0, 300.0),  # the best median: 50 queries/s
    ]
    flops = serve.text_flops(text, 10.0)
    lines, ceiling = serve.ceiling_lines(tower, {"fp32": 100.0, "bf16": 1000.0}, text, 10.0, "bf16")
    assert ceiling == 50.0
    assert lines[0] == f"A query is 10.0 tokens (prompt included): {flops / 1e9:.2f} GFLOP."
    assert lines[1].startswith("fp32 tower: 20.0 queries/s at batch 8; batch 1: 10.0 = ")
    reach = 50.0 * flops / 1e9
    assert (
        f"at batch 16; batch 1: 25.0 = {reach:,.0f} GFLOP/s = {100 * reach / 1000:.0f}% of "
        in (lines[2])
    )
    assert lines[2].endswith("serve's precision: the ceiling") and "serve's" not in lines[1]


def test_the_scaling_model_sets_replicas_against_one_batching_process():
    runs = {
        "b": _run("b", [(1, 20.0, 50.0), (16, 40.0, 400.0)]),
        "c": _run("c", [(16, 42.0, 380.0)], options=["--ray", "local", "--replicas", "2"]),
    }
    lines = serve.scaling_model(runs, ceiling=45.0, cores=2, photos=1000, index_type="flat")
    assert (
        "peaked at 40.0 req/s (16 clients): 2 replicas on the same 2 cores reach 1.05× it"
        in (lines[2])
    )
