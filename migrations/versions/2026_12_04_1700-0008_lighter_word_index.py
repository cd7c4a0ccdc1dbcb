"""Lighter visual-word indexes: drop those built with the fingerprints' construction parameters.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 17:00:00

Inserting a block's ~480 visual words into an HNSW index built with ``m`` 16 / ``ef_construction`` 64 costs
20-25 ms of sparse inner products, the largest part of a dispatch's storage step. The service now builds the
word indexes with ``m`` 8 / ``ef_construction`` 32 (``app.matching.repository.WORDS_HNSW_M``,
``WORDS_HNSW_EF_CONSTRUCTION``). This revision drops the existing ones (their names start with
``ix_fingerprints_hnsw_words_``); the service rebuilds the index of its model and vocabulary at its next
start (``CREATE INDEX CONCURRENTLY``; `/readyz` is not ready until it exists), as does ``palletreid
reindex``. Downgrading drops them too, and the older service rebuilds them with its own parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORDS_INDEX_PREFIX = "ix_fingerprints_hnsw_words_"
"""A frozen copy of ``app.matching.repository.WORDS_INDEX_PREFIX``."""


def _drop_word_indexes() -> None:
    names = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = to_regclass('fingerprints') AND starts_with(c.relname, :prefix)"
            ),
            {"prefix": WORDS_INDEX_PREFIX},
        )
        .scalars()
        .all()
    )
    for name in names:
        op.drop_index(name, table_name="fingerprints")


def upgrade() -> None:
    _drop_word_indexes()


def downgrade() -> None:
    _drop_word_indexes()
