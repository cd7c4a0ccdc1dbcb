"""Pallet register queries: one pallet, its history, and filtered listings."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from app.db.tables import Pallet, PalletStatus, QualityClass
from app.errors import InvalidCursorError, PalletNotFoundError
from app.events.repository import EventRepository
from app.events.schemas import EventOut, EventPage
from app.pagination import decode_cursor, decode_id_cursor, encode_cursor
from app.pallets.repository import PalletActivity, PalletRepository
from app.pallets.schemas import PalletOut, PalletPage


class PalletService:
    def __init__(self, session: Session) -> None:
        self._pallets = PalletRepository(session)
        self._events = EventRepository(session)

    def get(self, pallet_id: uuid.UUID) -> PalletOut:
        pallet = self._require(pallet_id)
        return _pallet_out(pallet, self._pallets.activity([pallet.id]).get(pallet.id, PalletActivity()))

    def events(self, pallet_id: uuid.UUID, *, limit: int, cursor: str | None) -> EventPage:
        """The pallet's events, newest first."""
        self._require(pallet_id)
        before_id = decode_id_cursor(cursor)
        rows = self._events.for_pallet(pallet_id, before_id=before_id, limit=limit + 1)
        page = rows[:limit]
        next_cursor = encode_cursor([page[-1].id]) if len(rows) > limit else None
        return EventPage(data=[EventOut.model_validate(event) for event in page], next_cursor=next_cursor)

    def list(
        self,
        *,
        status: PalletStatus | None,
        site: str | None,
        external_ref: str | None,
        seen_since: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> PalletPage:
        """Pallets in registration order (first_seen, then id)."""
        after = None
        if cursor is not None:
            first_seen, pallet_id = decode_cursor(cursor, length=2)
            try:
                after = (datetime.fromisoformat(str(first_seen)), uuid.UUID(str(pallet_id)))
            except ValueError as error:
                raise InvalidCursorError("cursor is not one this API returned") from error
        rows = self._pallets.list(
            status=status.value if status is not None else None,
            site=site,
            external_ref=external_ref,
            seen_since=seen_since,
            after=after,
            limit=limit + 1,
        )
        page = rows[:limit]
        activity = self._pallets.activity([pallet.id for pallet in page])
        next_cursor = (
            encode_cursor([page[-1].first_seen.isoformat(), str(page[-1].id)]) if len(rows) > limit else None
        )
        return PalletPage(
            data=[_pallet_out(pallet, activity.get(pallet.id, PalletActivity())) for pallet in page],
            next_cursor=next_cursor,
        )

    def _require(self, pallet_id: uuid.UUID) -> Pallet:
        pallet = self._pallets.get(pallet_id)
        if pallet is None:
            raise PalletNotFoundError(f"no pallet {pallet_id}")
        return pallet


def _pallet_out(pallet: Pallet, activity: PalletActivity) -> PalletOut:
    return PalletOut(
        pallet_id=pallet.id,
        status=PalletStatus(pallet.status),
        quality_class=QualityClass(pallet.quality_class) if pallet.quality_class is not None else None,
        first_seen=pallet.first_seen,
        last_seen=pallet.last_seen,
        receipts=activity.receipts,
        dispatches=activity.dispatches,
        external_refs=sorted(activity.external_refs),
        merged_into=pallet.merged_into,
    )
