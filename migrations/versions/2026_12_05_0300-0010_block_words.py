"""Visual words in a table of their own, written after the recording: ``block_words``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 03:00:00

Inserting a block's ~480 visual words into the words' HNSW index was most of a dispatch's storage step
(tens of milliseconds per block). The service now records a capture without its words and a background
word indexer adds them right after the commit (``app.matching.word_indexer``), so the answer no longer
waits for that index. They move out of ``fingerprints`` into ``block_words`` (one row per block, keyed by
its fingerprint, holding the words of the vocabulary last used): setting them later on ``fingerprints``
itself would be an update, and every update of a row gives its fingerprint a second entry in the
fingerprints' HNSW index until vacuum. Existing words are copied; the old word indexes go with the columns,
and the service builds the new ones (``ix_block_words_hnsw_<digest>``) at its next start, like
``palletreid reindex``. Downgrading copies the words back and drops the table (the older service rebuilds
its indexes).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import SPARSEVEC

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "block_words",
        sa.Column(
            "fingerprint_id",
            sa.BigInteger(),
            sa.ForeignKey("fingerprints.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("vocabulary_id", sa.String(64), nullable=False),
        sa.Column("words", SPARSEVEC(), nullable=False),
    )
    op.execute(
        "INSERT INTO block_words (fingerprint_id, model_id, vocabulary_id, words) "
        "SELECT id, model_id, vocabulary_id, visual_words FROM fingerprints "
        "WHERE visual_words IS NOT NULL AND vocabulary_id IS NOT NULL"
    )
    # PostgreSQL drops the indexes over a dropped column (the old word indexes) with it.
    op.drop_column("fingerprints", "vocabulary_id")
    op.drop_column("fingerprints", "visual_words")


def downgrade() -> None:
    op.add_column("fingerprints", sa.Column("visual_words", SPARSEVEC(), nullable=True))
    op.add_column("fingerprints", sa.Column("vocabulary_id", sa.String(64), nullable=True))
    op.execute(
        "UPDATE fingerprints SET visual_words = w.words, vocabulary_id = w.vocabulary_id "
        "FROM block_words w WHERE w.fingerprint_id = fingerprints.id"
    )
    op.drop_table("block_words")
