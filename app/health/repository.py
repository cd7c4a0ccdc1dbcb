"""Database facts the readiness probe needs."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.db.migrations import current_revisions
from app.db.tables import Fingerprint


class HealthRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def ping(self) -> None:
        self._session.execute(select(1))

    def revisions(self) -> set[str]:
        return current_revisions(self._session.connection())

    def embedding_column_dim(self) -> int | None:
        """Declared dimension of ``fingerprints.embedding`` in the live schema (its type modifier)."""
        return self._session.execute(
            text(
                "SELECT atttypmod FROM pg_attribute "
                "WHERE attrelid = to_regclass(:table) AND attname = :column AND NOT attisdropped"
            ),
            {"table": Fingerprint.__tablename__, "column": Fingerprint.embedding.key},
        ).scalar_one_or_none()
