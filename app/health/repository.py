"""Database facts the readiness probe needs."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.migrations import current_revisions


class HealthRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def ping(self) -> None:
        self._session.execute(select(1))

    def revisions(self) -> set[str]:
        return current_revisions(self._session.connection())
