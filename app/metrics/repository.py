"""Counts the metrics read from the database at scrape time (exact across processes and restarts)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import RECORDING_KINDS, DeliveryStatus, Event, WebhookDelivery


@dataclass(frozen=True)
class DecisionCount:
    kind: str
    decision: str | None
    review: bool
    site: str | None
    gate: str | None
    count: int


class MetricsRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def decisions(self) -> list[DecisionCount]:
        """Receipts and dispatches by kind, decision, review flag, site and gate."""
        columns = (Event.kind, Event.decision, Event.review, Event.site, Event.gate)
        rows = self._session.execute(
            select(*columns, func.count())
            .where(Event.kind.in_([kind.value for kind in RECORDING_KINDS]))
            .group_by(*columns)
        ).all()
        return [DecisionCount(*row) for row in rows]

    def webhook_backlog(self) -> dict[str, int]:
        """Pending and dead webhook deliveries (both read through partial indexes)."""
        counts = {}
        for status in (DeliveryStatus.PENDING, DeliveryStatus.DEAD):
            counts[status.value] = (
                self._session.scalar(
                    select(func.count())
                    .select_from(WebhookDelivery)
                    .where(WebhookDelivery.status == status.value)
                )
                or 0
            )
        return counts
