"""Application factory: ``create_app(settings)`` wires routers, error handling and the lifespan resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from app.api.limits import BodySizeLimitMiddleware
from app.calibration.router import router as calibration_router
from app.db.session import build_engine, build_session_factory
from app.epcis.router import router as epcis_router
from app.errors import ConfigurationError, install_error_handlers, install_error_schema
from app.events.router import router as events_router
from app.health.router import router as health_router
from app.images.reindex import (
    CoverageCache,
    check_model_coverage,
    ensure_serving_index,
    log_side_scale_to_fill,
)
from app.images.router import router as images_router
from app.images.store import ImageStore
from app.logging_setup import RequestLogMiddleware
from app.matching.parameters import decision_parameters_in_force
from app.matching.router import router as matching_router
from app.matching.service import MatchingConfig
from app.matching.word_indexer import WordIndexer
from app.metrics.middleware import MetricsMiddleware
from app.metrics.router import router as metrics_router
from app.metrics.stages import install_commit_timing
from app.model_runner import ModelRunner
from app.pallets.router import router as pallets_router
from app.reviews.page import router as review_page_router
from app.reviews.router import event_corrections_router, pallet_corrections_router, reviews_router
from app.reviews.session import SessionSigner
from app.security import KeyRing, warn_auth_disabled
from app.settings import MAX_FORM_FIELDS, Settings
from app.webhooks.dispatcher import start_worker as start_webhook_worker
from app.webhooks.router import router as webhooks_router

logger = logging.getLogger(__name__)

DESCRIPTION = """Re-identify wooden Euro pallets from images of their blocks.

Post the block images of a pallet at receipt (`/v1/receipts`) or dispatch (`/v1/dispatches`); the service
identifies the pallet by fingerprint voting or registers a new one, and keeps its status and history.
Errors are JSON `{"type", "detail"}`.

Authenticate with an API key in `X-API-Key` (or `Authorization: Bearer <key>`): role `station` posts
receipts and dispatches, `reader` reads pallets and events, `admin` may do both. `/healthz` and
`/readyz` are open.
"""


def model_path(settings: Settings) -> Path:
    """The checkpoint the service loads: ``PALLETREID_MODEL_PATH`` or the shipped one."""
    from models.runtime.checkpoint import DEFAULT_CHECKPOINT

    return settings.model_path if settings.model_path is not None else DEFAULT_CHECKPOINT


def detector_path(settings: Settings) -> Path:
    """The block detector for side views: ``PALLETREID_DETECTOR_PATH`` or the shipped one."""
    from models.runtime.detector import DEFAULT_DETECTOR

    return settings.detector_path if settings.detector_path is not None else DEFAULT_DETECTOR


def load_model(settings: Settings) -> ModelRunner:
    """Load the fingerprint model and the block detector, or raise ``ConfigurationError`` saying how to fix
    the configuration."""
    from models.runtime.checkpoint import CheckpointError
    from models.runtime.detector import DetectorError

    try:
        runner = ModelRunner.load(
            model_path(settings),
            device=settings.model_device,
            num_threads=settings.model_threads,
            batch_size=settings.embed_batch_size,
            max_queued=settings.max_queued_requests,
            precision=settings.model_precision,
            detector=detector_path(settings),
        )
    except CheckpointError as error:
        raise ConfigurationError(
            f"cannot load the fingerprint model: {error}. Set PALLETREID_MODEL_PATH to a checkpoint made by "
            "`palletreid train`."
        ) from error
    except DetectorError as error:
        raise ConfigurationError(
            f"cannot load the block detector: {error}. Set PALLETREID_DETECTOR_PATH to a detector made by "
            "`palletreid train-detector` (or unset it for the shipped one)."
        ) from error
    return runner


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the engine and load the model once; release both on shutdown."""
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise ConfigurationError("no database configured: set DATABASE_URL or start with `palletreid serve`")
    try:
        runner = load_model(settings)
    except ConfigurationError as error:
        logger.error("not starting: %s", error)
        raise
    try:
        decision = decision_parameters_in_force(settings, runner.metadata, model_path(settings))
    except ConfigurationError as error:
        runner.close()
        logger.error("not starting: %s", error)
        raise
    matching_config = MatchingConfig.from_settings(settings, decision.parameters)
    engine = build_engine(settings.database_url, pool_size=settings.db_pool_size)
    app.state.session_factory = build_session_factory(engine)
    try:
        check_model_coverage(
            app.state.session_factory, runner.model_id, allow_partial=settings.allow_partial_coverage
        )
        ensure_serving_index(engine, runner.model_id, runner.embedding_dim, vocabulary=runner.vocabulary)
        if matching_config.geometry.side_scale_width:
            log_side_scale_to_fill(app.state.session_factory, runner.model_id)
    except ConfigurationError as error:
        runner.close()
        engine.dispose()
        logger.error("not starting: %s", error)
        raise
    app.state.model_runner = runner
    app.state.matching_config = matching_config
    app.state.decision_parameters = decision
    webhook_worker = start_webhook_worker(settings, engine)
    word_indexer = (
        WordIndexer(engine, runner.model_id, runner.vocabulary, poll_seconds=settings.word_index_poll_seconds)
        if runner.vocabulary is not None
        else None
    )
    if word_indexer is not None:
        word_indexer.start(watched=app.state.session_factory)
    app.state.word_indexer = word_indexer
    if not app.state.key_ring.enabled:
        warn_auth_disabled()
    logger.info(
        "serving model %s (%d dims, %s, up to %d requests queued), visual words %s, block detector %s, "
        "on database %s",
        runner.model_id,
        runner.embedding_dim,
        runner.precision,
        runner.max_queued,
        runner.vocabulary_id,
        runner.detector_id,
        engine.url.render_as_string(hide_password=True),
    )
    logger.info(
        "decision parameters from %s%s: %s",
        decision.source,
        f" (overridden: {', '.join(decision.overridden)})" if decision.overridden else "",
        decision.parameters.describe(),
    )
    try:
        yield
    finally:
        if webhook_worker is not None:
            webhook_worker.stop()
        if word_indexer is not None:
            word_indexer.stop()
        app.state.model_runner = None
        runner.close()
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API; raises ``ConfigurationError`` for unusable API key settings."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="palletreid",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        form_limits={
            # Room for a few blocks too many (answered with a precise 422), not for thousands of tiny parts.
            "max_files": 4 * settings.max_blocks,
            "max_fields": MAX_FORM_FIELDS,
            "max_part_size": settings.max_form_field_bytes,
        },
    )
    app.state.settings = settings
    app.state.key_ring = KeyRing.from_settings(settings)
    app.state.model_runner = None
    app.state.decision_parameters = None
    app.state.image_store = ImageStore(settings.image_store_path)
    app.state.model_coverage = CoverageCache()
    secret = settings.review_session_secret
    app.state.review_sessions = SessionSigner(
        secret.get_secret_value().encode() if secret is not None else None
    )
    install_error_handlers(app)
    install_error_schema(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware)  # counts refusals of the body limit too
    app.add_middleware(RequestLogMiddleware)  # outermost: the request id holds for everything below
    install_commit_timing()
    for router in (
        matching_router,
        pallets_router,
        events_router,
        epcis_router,
        webhooks_router,
        metrics_router,
        images_router,
        reviews_router,
        pallet_corrections_router,
        event_corrections_router,
        review_page_router,
        calibration_router,
        health_router,
    ):
        app.include_router(router)
    return app
