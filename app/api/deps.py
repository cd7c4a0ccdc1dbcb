"""Request dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``EmbedderDep`` and the
role checks ``StationDep`` / ``ReaderDep``.

Dependencies that only read ``app.state`` are ``async`` so they never wait for a threadpool slot; only the
session (sync SQLAlchemy: its commit blocks) is resolved in the threadpool."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.session import unit_of_work
from app.errors import AuthenticationError, PermissionDeniedError, ServiceNotReadyError
from app.matching.service import MatchingConfig
from app.model_runner import ModelRunner
from app.security import ANONYMOUS, KeyRing, Principal, Role
from app.settings import Settings

logger = logging.getLogger(__name__)

# Both schemes appear in the OpenAPI document, so /docs offers an "Authorize" button for either.
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (role station, reader or admin).",
)
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerApiKey",
    description="The same API key as `Authorization: Bearer <key>`.",
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_matching_config(request: Request) -> MatchingConfig:
    config: MatchingConfig = request.app.state.matching_config
    return config


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: committed once after the route returns, rolled back if it raised.

    Declared with ``scope="function"`` so the commit happens before the response is sent: a client never
    sees a 201 for work that then failed to commit.
    """
    with unit_of_work(request.app.state.session_factory) as session:
        yield session


async def get_embedder(request: Request) -> ModelRunner:
    runner: ModelRunner | None = getattr(request.app.state, "model_runner", None)
    if runner is None:
        raise ServiceNotReadyError("the fingerprint model is not loaded")
    return runner


async def get_principal(
    request: Request,
    header_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """The caller's key name and role: 401 without a known key (everyone is admin when auth is off)."""
    key_ring: KeyRing = request.app.state.key_ring
    if not key_ring.enabled:
        return ANONYMOUS
    presented = header_key or (bearer.credentials if bearer is not None else None)
    if not presented:
        raise AuthenticationError("send an API key as X-API-Key or Authorization: Bearer")
    principal = key_ring.authenticate(presented)
    if principal is None:
        client = request.client.host if request.client is not None else "unknown"
        logger.warning("unknown API key on %s %s from %s", request.method, request.url.path, client)
        raise AuthenticationError("unknown API key")
    return principal


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """Dependency that lets ``role`` (and admin) through and answers 403 to the other roles."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.may_act_as(role):
            raise PermissionDeniedError(
                f"API key {principal.name!r} has role {principal.role.value}; "
                f"this needs {role.value} or admin"
            )
        return principal

    return check


SettingsDep = Annotated[Settings, Depends(get_settings)]
MatchingConfigDep = Annotated[MatchingConfig, Depends(get_matching_config)]
StationDep = Annotated[Principal, Depends(require_role(Role.STATION))]
"""A camera station (or admin) is calling; the principal is logged with every write."""
ReaderDep = Annotated[Principal, Depends(require_role(Role.READER))]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
EmbedderDep = Annotated[ModelRunner, Depends(get_embedder)]
