"""Prometheus metrics: request counts and latencies per route, batch sizes per batcher.

Each app has its own registry (several apps can live in one process, as in tests). Routes
are labelled by their template ("/v1/thumbnail/{item_id}"), never by the raw path, so
random URLs cannot blow up the number of series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clipsift_http_requests", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("clipsift_http_request_duration_seconds",
                                 "Time to answer an HTTP request.", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("clipsift_http_requests_in_flight",
                               "Requests being processed.", registry=self.registry)
        self.batch_items = Histogram("clipsift_batch_size", "Items per model/search call.",
                                     ["batcher"], buckets=_BATCH_BUCKETS,
                                     registry=self.registry)
        self.batch_jobs = Histogram("clipsift_batch_requests",
                                    "Requests merged into one model/search call.",
                                    ["batcher"], buckets=_BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("clipsift_batch_duration_seconds",
                                       "Time of one model/search call.", ["batcher"],
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)

    def batch_observer(self, name: str):
        """A callback for `MicroBatcher(on_batch=...)` recording under `name`."""
        items = self.batch_items.labels(name)
        jobs = self.batch_jobs.labels(name)
        seconds = self.batch_seconds.labels(name)

        def observe(n_items: int, n_jobs: int, took: float) -> None:
            items.observe(n_items)
            jobs.observe(n_jobs)
            seconds.observe(took)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every HTTP request (pure ASGI, outermost)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 499  # no response: the client went away first (nginx's code for it)
        start = time.perf_counter()

        async def tracking_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, tracking_send)
        except BaseException:
            status = 500
            raise
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
