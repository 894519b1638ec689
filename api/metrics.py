"""Prometheus metrics: request latency per route, pipeline stage latency, feedback by kind, active models."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from api.asgi import HttpMiddleware
from citeloop.config import Settings

REGISTRY = CollectorRegistry()
REQUEST_SECONDS = Histogram(
    "citeloop_request_seconds", "HTTP request latency by route", ["method", "route", "status"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STAGE_SECONDS = Histogram(
    "citeloop_stage_seconds", "Answer pipeline stage latency", ["stage"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ANSWERS = Counter("citeloop_answers_total", "Answers by outcome", ["outcome"], registry=REGISTRY)
FEEDBACK = Counter("citeloop_feedback_events_total", "Feedback events committed, by kind", ["kind"], registry=REGISTRY)
ACTIVE_MODEL = Gauge(
    "citeloop_active_model_info", "1 for each active model version", ["collection", "kind", "version"], registry=REGISTRY
)


class RequestTimer(HttpMiddleware):
    """Latency by method, route template, status."""

    async def handle(self, scope, receive, send) -> None:
        started = time.perf_counter()
        status = {"code": 500}

        async def record_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_SECONDS.labels(scope["method"], route, str(status["code"])).observe(time.perf_counter() - started)


def observe_answer(answer) -> None:
    for stage, ms in answer.timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000)
    ANSWERS.labels(answer.abstain_reason or "answered").inc()


def render(settings: Settings) -> tuple[bytes, str]:
    from citeloop.registry import list_versions

    ACTIVE_MODEL.clear()
    for version in list_versions(settings=settings):
        if version.status == "active":
            ACTIVE_MODEL.labels(version.collection, version.kind, version.id).set(1)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
