"""Webhook administration (admin role): ``/v1/webhooks`` subscriptions, dead letters and redelivery."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from app.api.deps import SessionDep, require_role
from app.api.validation import Cursor
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    DeliveryNotDeadError,
    DeliveryNotFoundError,
    InvalidCursorError,
    PermissionDeniedError,
    SubscriptionNotFoundError,
    error_responses,
)
from app.security import Role
from app.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPatch,
)
from app.webhooks.service import WebhookService

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(require_role(Role.ADMIN))],
    responses=error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError),
)

_NOT_FOUND = error_responses(SubscriptionNotFoundError)
DeliveryIdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]


_SUBSCRIPTION_LINKS = {
    name: {
        "operationId": f"{operation}_v1_webhooks__subscription_id__{method}",
        "parameters": {"subscription_id": "$response.body#/id"},
        "description": description,
    }
    for name, operation, method, description in (
        ("GetSubscription", "get_subscription", "get", "Read the new subscription."),
        ("UpdateSubscription", "update_subscription", "patch", "Change it (e.g. pause it)."),
        ("DeleteSubscription", "delete_subscription", "delete", "Remove it."),
    )
}
"""OpenAPI links of a created subscription (generated clients and schemathesis' stateful run follow them)."""


@router.post("", status_code=201, responses={201: {"links": _SUBSCRIPTION_LINKS}})
def create_subscription(request: SubscriptionIn, session: SessionDep) -> SubscriptionCreated:
    """Subscribe a URL to events (optionally only some kinds and sites); the secret signs deliveries."""
    return WebhookService(session).create(request)


@router.get("")
def list_subscriptions(session: SessionDep) -> list[SubscriptionOut]:
    """Every subscription with its backlog (pending) and dead letters."""
    return WebhookService(session).list()


@router.get("/dead-letters", responses=error_responses(InvalidCursorError))
def list_dead_letters(
    session: SessionDep,
    subscription_id: Annotated[uuid.UUID | None, Query(description="Only this subscription's.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[Cursor, Query(description="next_cursor of the previous page.")] = None,
) -> DeliveryPage:
    """Deliveries given up on after the last attempt, oldest first."""
    return WebhookService(session).dead_letters(subscription_id=subscription_id, limit=limit, cursor=cursor)


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    responses=error_responses(DeliveryNotFoundError, DeliveryNotDeadError),
)
def redeliver(delivery_id: DeliveryIdPath, session: SessionDep) -> DeliveryOut:
    """Try a dead letter again, from its first attempt."""
    return WebhookService(session).redeliver(delivery_id)


@router.get("/{subscription_id}", responses=_NOT_FOUND)
def get_subscription(subscription_id: uuid.UUID, session: SessionDep) -> SubscriptionOut:
    """One subscription."""
    return WebhookService(session).get(subscription_id)


@router.patch("/{subscription_id}", responses=_NOT_FOUND)
def update_subscription(
    subscription_id: uuid.UUID, patch: SubscriptionPatch, session: SessionDep
) -> SubscriptionOut:
    """Change a subscription (e.g. pause it with ``active: false``; its deliveries wait)."""
    return WebhookService(session).update(subscription_id, patch)


@router.delete("/{subscription_id}", status_code=204, responses=_NOT_FOUND)
def delete_subscription(subscription_id: uuid.UUID, session: SessionDep) -> Response:
    """Remove a subscription and its deliveries."""
    WebhookService(session).delete(subscription_id)
    return Response(status_code=204)
