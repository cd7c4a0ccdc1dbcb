"""``GET /healthz`` (process up) and ``GET /readyz`` (can serve matching requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import SessionDep
from app.errors import ServiceNotReadyError, error_responses
from app.health.schemas import Liveness, Readiness
from app.health.service import check_readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Liveness:
    """Liveness: the process is up."""
    return Liveness(status="ok")


@router.get("/readyz", responses=error_responses(ServiceNotReadyError))
def readyz(request: Request, session: SessionDep) -> Readiness:
    """Readiness: database reachable, migrations at head, model loaded with the column's embedding size;
    shows the decision parameters in force and where they came from."""
    state = request.app.state
    return check_readiness(
        session, getattr(state, "model_runner", None), getattr(state, "decision_parameters", None)
    )
