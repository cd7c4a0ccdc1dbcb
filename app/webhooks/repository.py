"""Webhook queries; the only place that touches ``webhook_subscriptions`` and ``webhook_deliveries``."""

from __future__ import annotations

import uuid
import zlib
from datetime import datetime

from sqlalchemy import Connection, String, any_, func, insert, literal, or_, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from app.db.tables import DeliveryStatus, Event, WebhookDelivery, WebhookSubscription

DISPATCH_LOCK_KEY = zlib.crc32(b"palletreid:webhook-dispatch")
"""Session-level advisory lock held while one process sends deliveries (others skip that round)."""


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def enqueue(self, event: Event) -> None:
        """Outbox rows for ``event``, one per active subscription that wants its kind and site, in the
        caller's transaction: the event and its deliveries commit (or vanish) together."""
        subscription = WebhookSubscription
        wanted = select(
            subscription.id, literal(event.id), literal(DeliveryStatus.PENDING.value), func.now()
        ).where(
            subscription.active,
            or_(
                subscription.event_kinds.is_(None),
                literal(event.kind, String) == any_(subscription.event_kinds),
            ),
            (
                subscription.sites.is_(None)
                if event.site is None
                else or_(
                    subscription.sites.is_(None), literal(event.site, String) == any_(subscription.sites)
                )
            ),
        )
        self._session.execute(
            insert(WebhookDelivery).from_select(
                ["subscription_id", "event_id", "status", "next_attempt_at"], wanted
            )
        )

    def add_subscription(self, subscription: WebhookSubscription) -> WebhookSubscription:
        self._session.add(subscription)
        self._session.flush()
        return subscription

    def subscription(self, subscription_id: uuid.UUID) -> WebhookSubscription | None:
        return self._session.get(WebhookSubscription, subscription_id)

    def subscriptions(self) -> list[WebhookSubscription]:
        return list(
            self._session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.created_at))
        )

    def delete_subscription(self, subscription: WebhookSubscription) -> None:
        self._session.delete(subscription)
        self._session.flush()

    def counts(self, subscription_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
        """Pending and dead deliveries per subscription."""
        rows = self._session.execute(
            select(
                WebhookDelivery.subscription_id,
                func.count().filter(WebhookDelivery.status == DeliveryStatus.PENDING.value),
                func.count().filter(WebhookDelivery.status == DeliveryStatus.DEAD.value),
            )
            .where(WebhookDelivery.subscription_id.in_(subscription_ids))
            .group_by(WebhookDelivery.subscription_id)
        ).all()
        return {subscription_id: (pending, dead) for subscription_id, pending, dead in rows}

    def delivery(self, delivery_id: int) -> WebhookDelivery | None:
        return self._session.get(WebhookDelivery, delivery_id)

    def dead_letters(
        self, *, subscription_id: uuid.UUID | None, after_id: int | None, limit: int
    ) -> list[WebhookDelivery]:
        query = select(WebhookDelivery).where(WebhookDelivery.status == DeliveryStatus.DEAD.value)
        if subscription_id is not None:
            query = query.where(WebhookDelivery.subscription_id == subscription_id)
        if after_id is not None:
            query = query.where(WebhookDelivery.id > after_id)
        return list(self._session.scalars(query.order_by(WebhookDelivery.id).limit(limit)))

    def heads(self) -> list[WebhookDelivery]:
        """The oldest pending delivery of each active subscription: deliveries go out one at a time per
        subscription, in event order, so a receiver sees a pallet's events in the order they happened."""
        return list(
            self._session.scalars(
                select(WebhookDelivery)
                .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
                .where(WebhookDelivery.status == DeliveryStatus.PENDING.value, WebhookSubscription.active)
                .ext(distinct_on(WebhookDelivery.subscription_id))
                .order_by(WebhookDelivery.subscription_id, WebhookDelivery.id)
            )
        )

    def record_attempt(
        self,
        delivery_id: int,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        error: str | None,
        status_code: int | None,
        delivered_at: datetime | None,
    ) -> None:
        """Record the outcome of one attempt."""
        delivery = self._session.get(WebhookDelivery, delivery_id)
        if delivery is None:  # its subscription was deleted meanwhile
            return
        delivery.status = status.value
        delivery.attempts = attempts
        delivery.next_attempt_at = next_attempt_at
        delivery.last_error = error[:500] if error is not None else None
        delivery.last_status_code = status_code
        delivery.delivered_at = delivered_at
        self._session.flush()

    def event(self, event_id: int) -> Event | None:
        return self._session.get(Event, event_id)


def try_dispatch_lock(connection: Connection) -> bool:
    """Take the dispatch lock on ``connection`` if no other process holds it."""
    return bool(connection.execute(select(func.pg_try_advisory_lock(DISPATCH_LOCK_KEY))).scalar())


def release_dispatch_lock(connection: Connection) -> None:
    connection.execute(select(func.pg_advisory_unlock(DISPATCH_LOCK_KEY)))
