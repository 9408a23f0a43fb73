"""Prometheus metrics: request latency per route, time per pipeline stage, queue depth, served models."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, Info, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry()
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 180)
REQUESTS = Histogram("branet_request_seconds", "HTTP request latency", ["method", "route", "status"],
                     buckets=BUCKETS, registry=REGISTRY)
STAGES = Histogram("branet_stage_seconds", "time per pipeline stage", ["stage"], buckets=BUCKETS, registry=REGISTRY)
QUEUE = Gauge("branet_queue_depth", "inference jobs running or waiting", registry=REGISTRY)
CACHE_BYTES = Gauge("branet_embedding_cache_bytes", "bytes held by the SAM embedding cache", registry=REGISTRY)
MODEL = Info("branet_model", "served models", registry=REGISTRY)


def observe_stages(ms: dict[str, float]) -> None:
    for stage, value in ms.items():
        STAGES.labels(stage).observe(value / 1000)


def exposition(engine) -> tuple[bytes, str]:
    QUEUE.set(engine.pending)
    CACHE_BYTES.set(engine.cache.nbytes)
    served = {f"{m}_classifier": f"{e.name}@{e.sha256[:12]}" for m, (_, e) in engine.classifiers.items()}
    served |= {f"sam_{name}": s.sam.sha256[:12] for name, s in engine.segmenters.items()}
    served |= {f"{m}_localiser": f"{e.name}@{e.sha256[:12]}" for m, (_, e) in engine.served.localisers.items()}
    MODEL.info(served)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: latency per route template (never per raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status["code"])).observe(time.perf_counter() - start)
