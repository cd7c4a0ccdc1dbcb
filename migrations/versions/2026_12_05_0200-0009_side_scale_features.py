"""Block images matched at a side-view block's scale: their features at that scale, and each event's source.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 02:00:00

``fingerprints.side_scale_features``: the local features of a block image shrunk to a side-view block
face's width and enlarged back (``models.runtime.voting.side_scale_features``), matched against blocks cut
out of side views either way round. Null for blocks cut out of side views (their own features are at that
scale) and for block images recorded before this revision: ``palletreid reindex`` fills those from the
stored block images; until then they are matched with their own features, as before.

``events.from_side_views``: whether the event's blocks were cut out of side views, filled here from the
detector its stored result names (set by the service since side views were accepted).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fingerprints", sa.Column("side_scale_features", sa.LargeBinary(), nullable=True))
    op.add_column(
        "events", sa.Column("from_side_views", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.execute("UPDATE events SET from_side_views = true WHERE result ->> 'detector' IS NOT NULL")


def downgrade() -> None:
    op.drop_column("events", "from_side_views")
    op.drop_column("fingerprints", "side_scale_features")
