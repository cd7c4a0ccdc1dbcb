"""Corrections of wrong decisions: merge two identities of one pallet, detach an event, the review queue.

Every correction takes the identification lock first (``FingerprintRepository.lock_identification``), the
one every recording holds while it identifies and registers: a merge or detach can therefore never
interleave with a recording (which would otherwise match a pallet that is being merged away, or add a
fingerprint to the wrong side of a detach), and the events it appends get ids in commit order like every
other event of the feed. All writes of one correction share the request's transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.db.tables import (
    RECORDING_KINDS,
    Event,
    EventKind,
    IdempotencyKey,
    Pallet,
    PalletStatus,
    Review,
    ReviewAction,
)
from app.errors import (
    DetachConflictError,
    EventNotFoundError,
    IdempotencyConflictError,
    MergeCycleError,
    PalletMergedError,
    PalletNotFoundError,
    ReviewConflictError,
)
from app.events.repository import EventRepository
from app.matching.repository import FingerprintRepository
from app.matching.schemas import MatchResult
from app.matching.service import STATUS_AFTER
from app.pagination import decode_id_cursor, encode_cursor
from app.pallets.repository import PalletRepository
from app.reviews.repository import CorrectionRepository
from app.reviews.schemas import DetachResult, MergeResult, Resolution, ReviewOut, ReviewPage


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class CorrectionService:
    def __init__(self, session: Session) -> None:
        self._lock = FingerprintRepository(session)
        self._pallets = PalletRepository(session)
        self._events = EventRepository(session)
        self._corrections = CorrectionRepository(session)

    def merge(
        self, pallet_id: uuid.UUID, into: uuid.UUID, *, actor: str, idempotency_key: str | None = None
    ) -> MergeResult:
        """Merge ``pallet_id`` into ``into``: its events and fingerprints move, it stays as status merged."""
        self._lock.lock_identification()
        digest = _digest(EventKind.MERGE.value, str(pallet_id), str(into))
        if idempotency_key is not None:
            replay = self._replay(EventKind.MERGE, idempotency_key, digest)
            if replay is not None:
                return MergeResult.model_validate(replay.result)
        result = self.merge_holding_lock(pallet_id, into, actor=actor)
        if idempotency_key is not None:
            self._remember(EventKind.MERGE, idempotency_key, digest, result.event_id)
        return result

    def merge_holding_lock(self, pallet_id: uuid.UUID, into: uuid.UUID, *, actor: str) -> MergeResult:
        """The merge itself, for callers that already hold the identification lock."""
        if pallet_id == into:
            raise MergeCycleError(f"cannot merge pallet {pallet_id} into itself")
        # Row locks in a fixed order, so two corrections can never wait for each other.
        locked = {pid: self._pallets.get_for_update(pid) for pid in sorted((pallet_id, into), key=str)}
        source, target = locked[pallet_id], locked[into]
        if source is None:
            raise PalletNotFoundError(f"no pallet {pallet_id}")
        if target is None:
            raise PalletNotFoundError(f"no pallet {into}")
        if source.merged_into is not None:
            if source.merged_into == into:
                earlier = self._corrections.merge_event(pallet_id, into)
                if earlier is not None:
                    return MergeResult.model_validate(earlier.result)
            raise PalletMergedError(
                f"pallet {pallet_id} was already merged into {source.merged_into}; merge that pallet instead"
            )
        if target.merged_into is not None:
            if target.merged_into == pallet_id:
                raise MergeCycleError(
                    f"pallet {into} was merged into {pallet_id}: merging back makes a cycle"
                )
            raise PalletMergedError(
                f"pallet {into} was merged into {target.merged_into}; merge into {target.merged_into} instead"
            )

        events_moved, fingerprints_moved = self._corrections.move_history(pallet_id, into)
        source = self._pallets.get_for_update(pallet_id)
        target = self._pallets.get_for_update(into)
        assert source is not None and target is not None, "locked above"
        source.status = PalletStatus.MERGED.value
        source.merged_into = into
        self._refresh_from_history(target)
        now = datetime.now(UTC)
        event = self._events.add(_correction_event(EventKind.MERGE, into, pallet_id, actor=actor, now=now))
        result = MergeResult(
            event_id=event.id,
            pallet_id=pallet_id,
            into=into,
            events_moved=events_moved,
            fingerprints_moved=fingerprints_moved,
            merged_at=now,
        )
        event.result = result.model_dump(mode="json")
        return result

    def detach(self, event_id: int, *, actor: str, idempotency_key: str | None = None) -> DetachResult:
        """Move one receipt or dispatch and its fingerprints from its pallet to a new pallet."""
        self._lock.lock_identification()
        digest = _digest(EventKind.DETACH.value, str(event_id))
        if idempotency_key is not None:
            replay = self._replay(EventKind.DETACH, idempotency_key, digest)
            if replay is not None:
                return DetachResult.model_validate(replay.result)
        event = self._corrections.event_for_update(event_id)
        if event is None:
            raise EventNotFoundError(f"no event {event_id}")
        if EventKind(event.kind) not in RECORDING_KINDS:
            raise DetachConflictError(
                f"event {event_id} is a {event.kind}; only receipts and dispatches move"
            )
        old = self._pallets.get_for_update(event.pallet_id)
        assert old is not None, "events reference their pallet"
        span = self._corrections.recording_span(old.id)
        if span is None or span.count < 2:
            raise DetachConflictError(
                f"event {event_id} is the only receipt or dispatch of pallet {old.id}: nothing to split"
            )
        new = self._pallets.add(
            Pallet(
                id=uuid.uuid4(),
                status=STATUS_AFTER[EventKind(event.kind)].value,
                first_seen=event.recorded_at,
                last_seen=event.recorded_at,
            )
        )
        old_id = old.id
        moved = self._corrections.move_recording(event_id, new.id)
        old = self._pallets.get_for_update(old_id)
        assert old is not None
        self._refresh_from_history(old)
        now = datetime.now(UTC)
        on_old = self._events.add(
            _correction_event(EventKind.DETACH, old_id, new.id, actor=actor, now=now, related_event=event_id)
        )
        on_new = self._events.add(
            _correction_event(EventKind.DETACH, new.id, old_id, actor=actor, now=now, related_event=event_id)
        )
        result = DetachResult(
            event_id=event_id,
            from_pallet_id=old_id,
            pallet_id=new.id,
            fingerprints_moved=moved,
            detach_event_ids=[on_old.id, on_new.id],
        )
        on_old.result = on_new.result = result.model_dump(mode="json")
        if idempotency_key is not None:
            self._remember(EventKind.DETACH, idempotency_key, digest, on_old.id)
        return result

    def _refresh_from_history(self, pallet: Pallet) -> None:
        """Status, first and last seen of a pallet from its receipts and dispatches (the latest decides)."""
        span = self._corrections.recording_span(pallet.id)
        if span is None:
            return
        pallet.status = STATUS_AFTER[EventKind(span.latest_kind)].value
        pallet.first_seen = span.first_recorded
        pallet.last_seen = span.last_recorded

    def _replay(self, kind: EventKind, key: str, digest: str) -> Event | None:
        record = self._events.idempotency_key(kind.value, key)
        if record is None:
            return None
        if record.request_digest != digest:
            raise IdempotencyConflictError(f"Idempotency-Key {key!r} was already used for a different {kind}")
        event = self._events.event(record.event_id)
        assert event is not None, "idempotency keys reference their event (foreign key)"
        return event

    def _remember(self, kind: EventKind, key: str, digest: str, event_id: int) -> None:
        self._events.add_idempotency_key(
            IdempotencyKey(kind=kind.value, key=key, request_digest=digest, event_id=event_id)
        )


def _correction_event(
    kind: EventKind,
    pallet_id: uuid.UUID,
    related_pallet_id: uuid.UUID,
    *,
    actor: str,
    now: datetime,
    related_event: int | None = None,
) -> Event:
    return Event(
        pallet_id=pallet_id,
        kind=kind.value,
        decision=None,
        score=None,
        votes=0,
        blocks_compared=0,
        model_id=None,
        recorded_at=now,
        result={},
        related_pallet_id=related_pallet_id,
        related_event_id=related_event,
        actor=actor,
    )


class ReviewService:
    def __init__(self, session: Session) -> None:
        self._lock = FingerprintRepository(session)
        self._events = EventRepository(session)
        self._corrections = CorrectionRepository(session)
        self._correct = CorrectionService(session)

    def list(self, *, resolved: bool, limit: int, cursor: str | None) -> ReviewPage:
        rows = self._corrections.reviews(
            resolved=resolved, after_id=decode_id_cursor(cursor), limit=limit + 1
        )
        page = rows[:limit]
        next_cursor = encode_cursor([page[-1][0].id]) if len(rows) > limit else None
        return ReviewPage(
            data=[_review_out(event, review) for event, review in page], next_cursor=next_cursor
        )

    def flag(self, event_id: int, *, actor: str, reason: str | None) -> ReviewOut:
        """Put a receipt or dispatch (back) into the open review queue."""
        self._lock.lock_identification()
        event = self._corrections.event_for_update(event_id)
        if event is None:
            raise EventNotFoundError(f"no event {event_id}")
        if EventKind(event.kind) not in RECORDING_KINDS:
            raise ReviewConflictError(f"event {event_id} is a {event.kind}; only receipts and dispatches")
        event.review = True
        review = self._corrections.review(event_id) or self._corrections.add_review(Review(event_id=event_id))
        review.flagged_by = actor
        review.flagged_at = datetime.now(UTC)
        review.reason = reason
        review.action = review.merged_into = review.resolved_by = None
        review.resolved_at = review.resolution_event_id = None
        return _review_out(event, review)

    def resolve(
        self, event_id: int, action: ReviewAction, pallet_id: uuid.UUID | None, *, actor: str
    ) -> ReviewOut:
        """Close an open review: merge the event's pallet into ``pallet_id``, or keep it as a new pallet.

        Repeating the same resolution returns it unchanged; a different one for a resolved review is a 409.
        """
        self._lock.lock_identification()
        event = self._corrections.event_for_update(event_id)
        if event is None:
            raise EventNotFoundError(f"no event {event_id}")
        review = self._corrections.review(event_id)
        if review is not None and review.resolved_at is not None:
            if review.action == action.value and review.merged_into == pallet_id:
                return _review_out(event, review)
            raise ReviewConflictError(
                f"the review of event {event_id} was already resolved ({review.action}) "
                f"by {review.resolved_by}"
            )
        if not event.review:
            raise ReviewConflictError(f"event {event_id} is not flagged for review; flag it first")
        merge_event_id = None
        if action is ReviewAction.MERGE:
            assert pallet_id is not None, "checked by ResolveRequest"
            if event.pallet_id != pallet_id:
                merge_event_id = self._correct.merge_holding_lock(
                    event.pallet_id, pallet_id, actor=actor
                ).event_id
                event = self._corrections.event_for_update(event_id)
                assert event is not None
        if review is None:
            review = self._corrections.add_review(Review(event_id=event_id))
        review.action = action.value
        review.merged_into = pallet_id
        review.resolved_by = actor
        review.resolved_at = datetime.now(UTC)
        review.resolution_event_id = merge_event_id
        return _review_out(event, review)


def _review_out(event: Event, review: Review | None) -> ReviewOut:
    recorded = MatchResult.model_validate(event.result) if event.result else None
    resolved = review is not None and review.resolved_at is not None
    return ReviewOut(
        event_id=event.id,
        status="resolved" if resolved else "open",
        kind=EventKind(event.kind),
        pallet_id=event.pallet_id,
        recorded_at=event.recorded_at,
        flagged_by=review.flagged_by if review is not None else None,
        flagged_at=review.flagged_at if review is not None else None,
        reason=review.reason if review is not None else None,
        score=event.score,
        verification=recorded.verification if recorded is not None else None,
        candidates=recorded.candidates if recorded is not None else [],
        resolution=(
            Resolution(
                action=ReviewAction(review.action),
                pallet_id=review.merged_into,
                resolved_by=review.resolved_by or "",
                resolved_at=review.resolved_at,
                merge_event_id=review.resolution_event_id,
            )
            if review is not None and review.resolved_at is not None and review.action is not None
            else None
        ),
    )
