"""Counts every HTTP request and times it, labelled by the route template (never the raw path)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics.registry import Counter, Histogram

REQUESTS = Counter(
    "palletreid_http_requests_total",
    "HTTP requests by method, route template and status.",
    ("method", "route", "status"),
)
LATENCY = Histogram(
    "palletreid_http_request_duration_seconds",
    "HTTP request latency (until the response is sent) by method and route template.",
    ("method", "route"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUESTS.inc(scope["method"], route, str(status))
            LATENCY.observe(time.perf_counter() - started, scope["method"], route)
