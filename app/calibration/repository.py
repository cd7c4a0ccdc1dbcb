"""The evidence the service recorded with its decisions: the only place that reads it for calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, Integer, Uuid, case, cast, column, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from app.db.tables import Event, MatchDecision, Pallet, Review


@dataclass(frozen=True)
class RecordedEvidence:
    """Summed inliers recorded with the most recent decisions of one model."""

    events: int
    """Events with geometric evidence (the rule checked at least one candidate) that were considered."""
    impostor: np.ndarray
    """Impostor samples: every runner-up, the strongest candidate of queries decided as new pallets, and
    the strongest candidate of a decision a person found wrong (a detached match)."""
    genuine: np.ndarray
    """The decided pallet's evidence of every match (only what cleared the bar: a censored sample), plus
    what a person confirmed below the bar (a review resolved by a merge, a duplicate merged)."""
    reviews: int
    """Events flagged for review and not resolved yet: neither sample, until a person says which pallet."""
    corrected: int
    """Events labelled by a person rather than by the decision: resolved reviews and events whose pallet a
    merge or detach changed since."""


class CalibrationRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def recorded_evidence(self, model_id: str, *, window: int) -> RecordedEvidence:
        """The evidence of the latest ``window`` events of ``model_id`` with a checked candidate (one query).

        Why the best candidate of a query decided *new* counts as an impostor: under the decision the
        query's pallet was never seen, so nothing in the gallery is it. Queries flagged for review are left
        out while open: they are exactly the uncertain ones.

        A person's word overrides the decision. An event's pallet *now* (after merges and detaches) is its
        identity; a checked candidate that is (or was merged into) that pallet is genuine, every other one
        an impostor. So a review resolved by a merge gives a genuine sample below the match bar (the part
        of the genuine distribution the decisions alone never record), a duplicate merged into the pallet a
        query was wrongly registered beside does the same, ``keep_new`` confirms impostors, and a detached
        match becomes an impostor that cleared the bar: a false match the estimate must see.
        """
        corrected = _corrected()
        rows = self._session.execute(
            select(
                Event.decision,
                Event.review,
                Review.resolved_at.is_not(None),
                corrected,
                Event.inliers,
                Event.runner_up_inliers,
                case((corrected, _own_pallet_inliers()), else_=None),
            )
            .outerjoin(Review, Review.event_id == Event.id)
            .where(Event.model_id == model_id, Event.inliers.is_not(None))
            .order_by(Event.id.desc())
            .limit(window)
        ).all()
        impostor: list[int] = []
        genuine: list[int] = []
        reviews = corrections = 0
        for decision, review, resolved, by_person, inliers, runner_up, own in rows:
            if review and not resolved:
                reviews += 1
                if runner_up is not None:
                    impostor.append(runner_up)
                continue
            if by_person:
                corrections += 1
                strongest_is_own = own is not None and own == inliers
                runner_up_is_own = own is not None and not strongest_is_own and own == runner_up
            else:
                strongest_is_own = decision == MatchDecision.MATCHED
                runner_up_is_own = False
            (genuine if strongest_is_own else impostor).append(inliers)
            if runner_up is not None:
                (genuine if runner_up_is_own else impostor).append(runner_up)
        return RecordedEvidence(
            events=len(rows),
            impostor=np.asarray(impostor, dtype=np.int64),
            genuine=np.asarray(genuine, dtype=np.int64),
            reviews=reviews,
            corrected=corrections,
        )


def _corrected() -> ColumnElement[bool]:
    """Whether a person labelled the event: its review is resolved, a merge or detach moved it (its pallet
    is not the one it was decided for), or a pallet was merged into its pallet (one of its candidates may
    have been). Cheap per event (no look at the candidates), so the window's other events cost nothing."""
    decided_for = cast(Event.result["pallet_id"].astext, Uuid)
    survivors = select(Pallet.merged_into).where(Pallet.merged_into.is_not(None))
    return or_(
        Review.resolved_at.is_not(None),
        func.coalesce(Event.pallet_id != decided_for, False),
        Event.pallet_id.in_(survivors),
    )


def _own_pallet_inliers() -> ColumnElement[int]:
    """The summed inliers of the event's checked candidate that is (or was merged into) its pallet now;
    null when none of its listed candidates is."""
    candidate = (
        func.jsonb_array_elements(Event.result["candidates"])
        .table_valued(column("value", JSONB))
        .render_derived(name="candidate")
    )
    candidate_pallet = cast(candidate.c.value["pallet_id"].astext, Uuid)
    return (
        select(func.max(cast(candidate.c.value["inliers"].astext, Integer)))
        .select_from(candidate.join(Pallet, Pallet.id == candidate_pallet))
        .where(func.coalesce(Pallet.merged_into, Pallet.id) == Event.pallet_id)
        .scalar_subquery()
    )
