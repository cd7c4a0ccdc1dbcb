"""``GET /healthz`` (process up) and ``GET /readyz`` (can serve matching requests).

Both answer while the model is saturated: they are ``async``, never wait for the model, and the readiness
checks run on a thread pool of their own (not the request threadpool that database work of the routes uses),
each on a short session of their own.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ServiceNotReadyError, error_responses
from app.health.schemas import Liveness, Readiness
from app.health.service import check_readiness
from app.images.reindex import CoverageCache
from app.matching.parameters import DecisionParametersInForce
from app.model_runner import ModelRunner

router = APIRouter(tags=["health"])

_probe_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")


@router.get("/healthz")
async def healthz() -> Liveness:
    """Liveness: the process is up."""
    return Liveness(status="ok")


@router.get("/readyz", responses=error_responses(ServiceNotReadyError))
async def readyz(request: Request) -> Readiness:
    """Readiness: database reachable, migrations at head, model loaded with the column's embedding size;
    shows the decision parameters in force and where they came from."""
    state = request.app.state
    return await asyncio.wrap_future(
        _probe_threads.submit(
            _check_with_own_session,
            state.session_factory,
            getattr(state, "model_runner", None),
            getattr(state, "decision_parameters", None),
            getattr(state, "model_coverage", None),
        )
    )


def _check_with_own_session(
    factory: sessionmaker[Session],
    model: ModelRunner | None,
    decision: DecisionParametersInForce | None,
    coverage: CoverageCache | None,
) -> Readiness:
    with factory() as session:
        return check_readiness(session, model, decision, coverage)
