"""The evidence the service recorded with its decisions: the only place that reads it for calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Event, MatchDecision


@dataclass(frozen=True)
class RecordedEvidence:
    """Summed inliers recorded with the most recent decisions of one model."""

    events: int
    """Events with geometric evidence (the rule checked at least one candidate) that were considered."""
    impostor: np.ndarray
    """Impostor samples: every runner-up, and the strongest candidate of queries decided as new pallets."""
    genuine: np.ndarray
    """The decided pallet's evidence of every match (only what cleared the bar: a censored sample)."""
    reviews: int
    """Events flagged for review: neither sample, until a person says which pallet they are."""


class CalibrationRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def recorded_evidence(self, model_id: str, *, window: int) -> RecordedEvidence:
        """The evidence of the latest ``window`` events of ``model_id`` with a checked candidate (one query).

        Why the best candidate of a query decided *new* counts as an impostor: under the decision the
        query's pallet was never seen, so nothing in the gallery is it. Queries flagged for review are left
        out: they are exactly the uncertain ones.
        """
        rows = self._session.execute(
            select(Event.decision, Event.review, Event.inliers, Event.runner_up_inliers)
            .where(Event.model_id == model_id, Event.inliers.is_not(None))
            .order_by(Event.id.desc())
            .limit(window)
        ).all()
        impostor: list[int] = []
        genuine: list[int] = []
        reviews = 0
        for decision, review, inliers, runner_up in rows:
            if runner_up is not None:
                impostor.append(runner_up)
            if review:
                reviews += 1
            elif inliers is not None:
                (genuine if decision == MatchDecision.MATCHED else impostor).append(inliers)
        return RecordedEvidence(
            events=len(rows),
            impostor=np.asarray(impostor, dtype=np.int64),
            genuine=np.asarray(genuine, dtype=np.int64),
            reviews=reviews,
        )
