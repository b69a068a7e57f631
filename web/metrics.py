"""The server's Prometheus metrics (`GET /metrics`), in a registry of each app's own.

Requests by route template (never the raw path: an id in a URL would make a series per photo)
and status, latency by route, the search queue's depth, the batch sizes per lane, the
requests refused because the queue was full, and those dropped because their client left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a cached query on a small library is a few ms, a cold image search seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OTHER = "other"  # the route label of a request no route matched


class Metrics:
    """One app's metrics; also the search thread's `BatchObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "koclip_http_requests",
            "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "koclip_http_request_duration_seconds",
            "Time to answer a request (until its response starts), by route template",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "koclip_search_queue_depth",
            "Searches waiting for the search thread",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "koclip_search_batch_size",
            "Searches answered together in one batch, by lane (text, image)",
            ("lane",),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "koclip_search_rejected",
            "Searches refused with 503 busy because the queue was full, by lane",
            ("lane",),
            registry=self.registry,
        )
        self.skips = Counter(
            "koclip_search_skipped",
            "Searches dropped before their batch ran because their client went away, by lane",
            ("lane",),
            registry=self.registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue's depth from `depth()` at each scrape."""
        self.queue_depth.set_function(depth)

    # -- BatchObserver -------------------------------------------------------------------

    def batch(self, lane: str, size: int) -> None:
        self.batch_size.labels(lane).observe(size)

    def rejected(self, lane: str) -> None:
        self.rejections.labels(lane).inc()

    def skipped(self, lane: str, count: int) -> None:
        self.skips.labels(lane).inc(count)

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: streamed bodies and disconnects pass
    through untouched). The route label is the matched route's template, `/static` for the
    page's assets, `other` for anything no route matched."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                self.metrics.latency.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(
                _route(scope), scope.get("method", ""), str(status["code"])
            ).inc()


def _route(scope: dict) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return OTHER
