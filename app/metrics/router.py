"""``GET /metrics``: Prometheus text. Open to loopback clients (a local agent); others need a reader key."""

from __future__ import annotations

import threading
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, get_principal
from app.calibration.service import CalibrationService
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    PermissionDeniedError,
    error_responses,
)
from app.matching.word_indexer import WORDS_LAG_SECONDS, WordIndexer
from app.metrics.middleware import LATENCY, REQUESTS
from app.metrics.registry import Sample, family
from app.metrics.repository import MetricsRepository
from app.metrics.stages import STAGE_SECONDS
from app.security import Role, is_loopback
from app.settings import Settings

PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DATABASE_METRICS_TTL_SECONDS = 30.0
"""Database-derived metrics are recomputed at most this often; scrapes in between get the cached text."""


class PrometheusResponse(PlainTextResponse):
    media_type = PROMETHEUS_MEDIA_TYPE


async def require_scraper(request: Request) -> None:
    """Loopback clients need no key; others a reader (or admin) key, as for every read."""
    if request.client is not None and is_loopback(request.client.host):
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = (
        HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme.lower() == "bearer" else None
    )
    principal = await get_principal(request, request.headers.get("X-API-Key"), bearer)
    if not principal.may_act_as(Role.READER):
        raise PermissionDeniedError(
            f"API key {principal.name!r} has role {principal.role.value}; this needs reader"
        )


router = APIRouter(
    tags=["metrics"],
    dependencies=[Depends(require_scraper)],
    responses=error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError),
)


class _DatabaseMetricsCache:
    def __init__(self) -> None:
        self.text = ""
        self.computed_at = -float("inf")
        self.lock = threading.Lock()


@router.get(
    "/metrics",
    response_class=PrometheusResponse,
    responses={200: {"content": {PROMETHEUS_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request, session: SessionDep, settings: SettingsDep) -> PrometheusResponse:
    """Prometheus metrics of this process (requests, latency, latency per stage of receipts and dispatches,
    the word indexer's backlog and lag) and of the database (decisions, reviews, impostor tail, webhook
    backlog)."""
    cache: _DatabaseMetricsCache = (
        getattr(request.app.state, "metrics_cache", None) or _DatabaseMetricsCache()
    )
    request.app.state.metrics_cache = cache
    with cache.lock:
        if time.monotonic() - cache.computed_at > DATABASE_METRICS_TTL_SECONDS:
            cache.text = _database_metrics(session, request, settings)
            cache.computed_at = time.monotonic()
        database = cache.text
    process = REQUESTS.render() + LATENCY.render() + STAGE_SECONDS.render() + _word_indexer_metrics(request)
    return PrometheusResponse(process + database)


def _word_indexer_metrics(request: Request) -> str:
    """The word indexer's backlog and lag in this process (nothing when the model has no vocabulary)."""
    indexer: WordIndexer | None = getattr(request.app.state, "word_indexer", None)
    if indexer is None:
        return ""
    pending = family(
        "palletreid_word_index_pending_blocks",
        "gauge",
        "Blocks this process recorded whose visual words are not written yet.",
        [Sample({}, indexer.pending_blocks)],
    )
    return pending + WORDS_LAG_SECONDS.render()


def _database_metrics(session: Session, request: Request, settings: Settings) -> str:
    repository = MetricsRepository(session)
    decisions = repository.decisions()
    text = family(
        "palletreid_decisions_total",
        "counter",
        "Receipts and dispatches recorded, by kind, decision, review flag, site and gate.",
        [
            Sample(
                {
                    "kind": row.kind,
                    "decision": row.decision or "",
                    "review": str(row.review).lower(),
                    "site": row.site or "",
                    "gate": row.gate or "",
                },
                row.count,
            )
            for row in decisions
        ],
    )
    text += family(
        "palletreid_reviews_total",
        "counter",
        "Recordings flagged for review by the decision rule.",
        [Sample({}, sum(row.count for row in decisions if row.review))],
    )
    backlog = repository.webhook_backlog()
    text += family(
        "palletreid_webhook_deliveries",
        "gauge",
        "Webhook deliveries waiting to be sent (pending) or given up on (dead).",
        [Sample({"status": status}, count) for status, count in backlog.items()],
    )
    runner = getattr(request.app.state, "model_runner", None)
    config = getattr(request.app.state, "matching_config", None)
    if runner is not None and config is not None:
        report = CalibrationService(session).report(
            runner.model_id,
            config.geometry,
            target_rate=settings.calibration_target_rate,
            review_rate=settings.calibration_review_rate,
            window=settings.calibration_window,
        )
        model = {"model": runner.model_id}
        estimates = {
            "observed": report.false_match.observed,
            "upper_bound_95": report.false_match.upper_bound_95,
            "tail_model": report.false_match.tail_model,
        }
        text += family(
            "palletreid_false_match_rate_estimate",
            "gauge",
            "Live false-match rate at match_inliers from the impostor evidence (see GET /v1/calibration).",
            [
                Sample({**model, "method": name}, value)
                for name, value in estimates.items()
                if value is not None
            ],
        )
        text += family(
            "palletreid_impostor_samples",
            "gauge",
            "Impostor samples behind the estimate (the latest PALLETREID_CALIBRATION_WINDOW events).",
            [Sample(model, report.impostor.count)],
        )
    return text
