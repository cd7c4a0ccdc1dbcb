"""``block_images`` rows; the only place that selects from them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.db.tables import BlockImage, Event


class BlockImageRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add_all(self, images: Sequence[BlockImage]) -> None:
        self._session.add_all(images)
        self._session.flush()

    def get(self, event_id: int, position: int) -> BlockImage | None:
        return self._session.get(BlockImage, (event_id, position))

    def for_event(self, event_id: int) -> list[BlockImage]:
        return list(
            self._session.scalars(
                select(BlockImage).where(BlockImage.event_id == event_id).order_by(BlockImage.position)
            )
        )

    def referenced(self, digests: Collection[str], *, recorded_since: datetime | None = None) -> set[str]:
        """Those of ``digests`` that some row references (only rows of events recorded at or after
        ``recorded_since``, if given: the rows a retention run keeps)."""
        if not digests:
            return set()
        query = select(BlockImage.sha256).where(BlockImage.sha256.in_(list(digests)))
        if recorded_since is not None:
            query = query.join(Event, Event.id == BlockImage.event_id).where(
                Event.recorded_at >= recorded_since
            )
        return set(self._session.scalars(query.distinct()))

    def count_recorded_before(self, cutoff: datetime) -> int:
        """Rows of events recorded before ``cutoff``."""
        return (
            self._session.scalar(
                select(func.count())
                .select_from(BlockImage)
                .join(Event, Event.id == BlockImage.event_id)
                .where(Event.recorded_at < cutoff)
            )
            or 0
        )

    def events_recorded_before(self, cutoff: datetime, *, limit: int) -> list[int]:
        """Up to ``limit`` events recorded before ``cutoff`` that still have images, oldest first."""
        return list(
            self._session.scalars(
                select(BlockImage.event_id)
                .join(Event, Event.id == BlockImage.event_id)
                .where(Event.recorded_at < cutoff)
                .group_by(BlockImage.event_id)
                .order_by(BlockImage.event_id)
                .limit(limit)
            )
        )

    def delete_for_events(self, event_ids: Collection[int]) -> list[str]:
        """Delete the rows of these events; the digests they referenced."""
        if not event_ids:
            return []
        deleted = self._session.scalars(
            delete(BlockImage).where(BlockImage.event_id.in_(list(event_ids))).returning(BlockImage.sha256)
        )
        return list(deleted)

    def latest_of_pallet(self, pallet_id: uuid.UUID) -> list[BlockImage]:
        """The images of the pallet's most recent event that has any, in position order."""
        latest = self._session.scalar(
            select(func.max(BlockImage.event_id))
            .join(Event, Event.id == BlockImage.event_id)
            .where(Event.pallet_id == pallet_id)
        )
        return self.for_event(latest) if latest is not None else []
