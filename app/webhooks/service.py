"""Webhook administration: subscriptions, the dead-letter list and redelivery."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.db.tables import DeliveryStatus, WebhookSubscription
from app.errors import DeliveryNotDeadError, DeliveryNotFoundError, SubscriptionNotFoundError
from app.pagination import decode_id_cursor, encode_cursor
from app.webhooks.repository import WebhookRepository
from app.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPatch,
)


class WebhookService:
    def __init__(self, session: Session) -> None:
        self._webhooks = WebhookRepository(session)

    def create(self, request: SubscriptionIn) -> SubscriptionCreated:
        subscription = self._webhooks.add_subscription(
            WebhookSubscription(
                id=uuid.uuid4(),
                url=request.url,
                secret=request.secret or secrets.token_urlsafe(32),
                event_kinds=[kind.value for kind in request.event_kinds]
                if request.event_kinds is not None
                else None,
                sites=request.sites,
                active=request.active,
                description=request.description,
                created_at=datetime.now(UTC),
            )
        )
        return SubscriptionCreated(**self._out(subscription).model_dump(), secret=subscription.secret)

    def list(self) -> list[SubscriptionOut]:
        subscriptions = self._webhooks.subscriptions()
        counts = self._webhooks.counts([subscription.id for subscription in subscriptions])
        return [
            self._out(subscription, counts.get(subscription.id, (0, 0))) for subscription in subscriptions
        ]

    def get(self, subscription_id: uuid.UUID) -> SubscriptionOut:
        return self._out(self._require(subscription_id))

    def update(self, subscription_id: uuid.UUID, patch: SubscriptionPatch) -> SubscriptionOut:
        subscription = self._require(subscription_id)
        changes = patch.model_dump(exclude_unset=True, mode="json")
        for name in ("url", "secret", "active", "description"):
            if name in changes and changes[name] is not None:
                setattr(subscription, name, changes[name])
        if "event_kinds" in changes:
            subscription.event_kinds = changes["event_kinds"]
        if "sites" in changes:
            subscription.sites = changes["sites"]
        return self._out(subscription)

    def delete(self, subscription_id: uuid.UUID) -> None:
        """Remove a subscription and its deliveries (pending ones are never sent)."""
        self._webhooks.delete_subscription(self._require(subscription_id))

    def dead_letters(
        self, *, subscription_id: uuid.UUID | None, limit: int, cursor: str | None
    ) -> DeliveryPage:
        rows = self._webhooks.dead_letters(
            subscription_id=subscription_id, after_id=decode_id_cursor(cursor), limit=limit + 1
        )
        page = rows[:limit]
        return DeliveryPage(
            data=[DeliveryOut.model_validate(row) for row in page],
            next_cursor=encode_cursor([page[-1].id]) if len(rows) > limit else None,
        )

    def redeliver(self, delivery_id: int) -> DeliveryOut:
        """Put a dead letter back in line: it is tried again (from its first attempt) before later events."""
        delivery = self._webhooks.delivery(delivery_id)
        if delivery is None:
            raise DeliveryNotFoundError(f"no webhook delivery {delivery_id}")
        if delivery.status != DeliveryStatus.DEAD.value:
            raise DeliveryNotDeadError(f"delivery {delivery_id} is {delivery.status}, not dead")
        self._webhooks.record_attempt(
            delivery_id,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=datetime.now(UTC),
            error=delivery.last_error,
            status_code=delivery.last_status_code,
            delivered_at=None,
        )
        return DeliveryOut.model_validate(delivery)

    def _require(self, subscription_id: uuid.UUID) -> WebhookSubscription:
        subscription = self._webhooks.subscription(subscription_id)
        if subscription is None:
            raise SubscriptionNotFoundError(f"no webhook subscription {subscription_id}")
        return subscription

    def _out(
        self, subscription: WebhookSubscription, counts: tuple[int, int] | None = None
    ) -> SubscriptionOut:
        pending, dead = (
            counts
            if counts is not None
            else self._webhooks.counts([subscription.id]).get(subscription.id, (0, 0))
        )
        return SubscriptionOut(
            id=subscription.id,
            url=subscription.url,
            event_kinds=subscription.event_kinds,  # type: ignore[arg-type]  # validated into EventKind
            sites=subscription.sites,
            active=subscription.active,
            description=subscription.description,
            created_at=subscription.created_at,
            pending=pending,
            dead=dead,
        )
