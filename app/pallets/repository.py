"""Pallet queries; the only place that selects from ``pallets``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, select, tuple_
from sqlalchemy.orm import Session

from app.db.tables import Event, EventKind, Pallet


@dataclass(frozen=True)
class PalletActivity:
    """Counts and references aggregated from a pallet's events."""

    receipts: int = 0
    dispatches: int = 0
    external_refs: tuple[str, ...] = ()


class PalletRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, pallet_id: uuid.UUID) -> Pallet | None:
        return self._session.get(Pallet, pallet_id)

    def get_for_update(self, pallet_id: uuid.UUID) -> Pallet | None:
        """Load and row-lock a pallet (``SELECT ... FOR UPDATE``) before changing its status."""
        return self._session.scalars(
            select(Pallet)
            .where(Pallet.id == pallet_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()

    def add(self, pallet: Pallet) -> Pallet:
        self._session.add(pallet)
        self._session.flush()
        return pallet

    def activity(self, pallet_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, PalletActivity]:
        """Receipt/dispatch counts and distinct external references per pallet, in one query."""
        if not pallet_ids:
            return {}
        rows = self._session.execute(
            select(
                Event.pallet_id,
                func.count().filter(Event.kind == EventKind.RECEIPT.value),
                func.count().filter(Event.kind == EventKind.DISPATCH.value),
                func.array_remove(func.array_agg(Event.external_ref.distinct()), None),
            )
            .where(Event.pallet_id.in_(pallet_ids))
            .group_by(Event.pallet_id)
        ).all()
        return {
            pallet_id: PalletActivity(receipts=receipts, dispatches=dispatches, external_refs=tuple(refs))
            for pallet_id, receipts, dispatches, refs in rows
        }

    def list(
        self,
        *,
        status: str | None,
        site: str | None,
        external_ref: str | None,
        seen_since: datetime | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Pallet]:
        """Pallets in (first_seen, id) order, after the keyset ``after``."""
        query = select(Pallet)
        if status is not None:
            query = query.where(Pallet.status == status)
        if seen_since is not None:
            query = query.where(Pallet.last_seen >= seen_since)
        event_filters = []
        if site is not None:
            event_filters.append(Event.site == site)
        if external_ref is not None:
            event_filters.append(Event.external_ref == external_ref)
        for event_filter in event_filters:
            query = query.where(exists().where(and_(Event.pallet_id == Pallet.id, event_filter)))
        if after is not None:
            after_seen, after_id = after
            query = query.where(tuple_(Pallet.first_seen, Pallet.id) > tuple_(after_seen, after_id))
        return list(self._session.scalars(query.order_by(Pallet.first_seen, Pallet.id).limit(limit)))
