"""Application factory: ``create_app(settings)`` wires routers, error handling and the lifespan resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.db.session import build_engine, build_session_factory
from app.errors import install_error_handlers
from app.events.router import router as events_router
from app.health.router import router as health_router
from app.inference import ModelRunner
from app.matching.router import router as matching_router
from app.pallets.router import router as pallets_router
from app.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """Re-identify wooden Euro pallets from images of their blocks.

Post the block images of a pallet at receipt (`/v1/receipts`) or dispatch (`/v1/dispatches`); the service
identifies the pallet by fingerprint voting or registers a new one, and keeps its status and history.
Errors are JSON `{"type", "detail"}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the engine and load the model once; release both on shutdown."""
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise RuntimeError("no database configured: set DATABASE_URL or start with `palletreid serve`")
    engine = build_engine(settings.database_url, pool_size=settings.db_pool_size)
    app.state.session_factory = build_session_factory(engine)
    runner = ModelRunner.load(
        settings.model_path,
        device=settings.model_device,
        num_threads=settings.model_threads,
        batch_size=settings.embed_batch_size,
    )
    app.state.model_runner = runner
    logger.info(
        "serving with database %s, model %s (%d dims); thresholds: block %.3f, votes %d, score %.3f, "
        "top-k %d",
        engine.url.render_as_string(hide_password=True),
        runner.model_id,
        runner.embedding_dim,
        settings.block_threshold,
        settings.min_votes,
        settings.score_threshold,
        settings.top_k,
    )
    try:
        yield
    finally:
        app.state.model_runner = None
        runner.close()
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="palletreid",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings if settings is not None else Settings()
    app.state.model_runner = None
    install_error_handlers(app)
    for router in (matching_router, pallets_router, events_router, health_router):
        app.include_router(router)
    return app
