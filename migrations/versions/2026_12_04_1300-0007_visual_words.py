"""Visual words: a sparse word vector per stored block and the vocabulary it was computed with.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 13:00:00

A checkpoint may carry a visual-word vocabulary (bag of ORB words, ``models.runtime.visual_words``). The
service stores each block's tf-idf word vector (``sparsevec``, no fixed dimension: every vocabulary has its
own size) and the id of the vocabulary beside it, and searches them as a second source of candidates. The
HNSW index over them is partial, one per model and vocabulary, on ``visual_words::sparsevec(<size>)``; like
the fingerprints' per-model index it follows the data and is built by the service at start and by
``palletreid reindex``, which also fills the words of rows stored before this revision (from their local
features). Downgrading drops the columns and, with them, those indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import SPARSEVEC

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fingerprints", sa.Column("visual_words", SPARSEVEC(), nullable=True))
    op.add_column("fingerprints", sa.Column("vocabulary_id", sa.String(64), nullable=True))


def downgrade() -> None:
    # PostgreSQL drops the indexes over a dropped column (the word indexes) with it.
    op.drop_column("fingerprints", "vocabulary_id")
    op.drop_column("fingerprints", "visual_words")
