"""Geometric verification: local features per stored block, evidence and review flag per event.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 05:00:00

Fingerprints recorded before this revision have no local features: the decision rule cannot verify them
geometrically and flags a network match against them for review instead of merging silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fingerprints", sa.Column("local_features", sa.LargeBinary(), nullable=True))
    op.add_column("events", sa.Column("review", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("events", sa.Column("inliers", sa.Integer(), nullable=True))
    op.add_column("events", sa.Column("runner_up_inliers", sa.Integer(), nullable=True))
    op.create_index("ix_events_review", "events", ["id"], postgresql_where=sa.text("review"))


def downgrade() -> None:
    op.drop_index("ix_events_review", table_name="events")
    op.drop_column("events", "runner_up_inliers")
    op.drop_column("events", "inliers")
    op.drop_column("events", "review")
    op.drop_column("fingerprints", "local_features")
