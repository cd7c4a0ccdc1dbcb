"""Business fields per receipt/dispatch (quality class, damage, SSCC, carrier, GRAI, asset code) and a
pallet's current quality class.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 07:00:00

All columns are nullable: events recorded before this revision carry none of these facts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision (no imports of the ORM).
QUALITY_CLASSES = "quality_class IN ('new', 'A', 'B', 'C', 'unsorted', 'defective')"
SSCC_DIGITS = "sscc ~ '^[0-9]{18}$'"


def upgrade() -> None:
    op.add_column("pallets", sa.Column("quality_class", sa.String(16), nullable=True))
    op.create_check_constraint(op.f("ck_pallets_quality_class"), "pallets", QUALITY_CLASSES)

    op.add_column("events", sa.Column("quality_class", sa.String(16), nullable=True))
    op.add_column("events", sa.Column("damaged", sa.Boolean(), nullable=True))
    op.add_column("events", sa.Column("damage_codes", postgresql.ARRAY(sa.String(32)), nullable=True))
    op.add_column("events", sa.Column("sscc", sa.String(18), nullable=True))
    op.add_column("events", sa.Column("carrier", sa.String(200), nullable=True))
    op.add_column("events", sa.Column("grai", sa.String(30), nullable=True))
    op.add_column("events", sa.Column("asset_code", sa.String(200), nullable=True))
    op.create_check_constraint(op.f("ck_events_quality_class"), "events", QUALITY_CLASSES)
    op.create_check_constraint(op.f("ck_events_sscc"), "events", SSCC_DIGITS)
    op.create_index("ix_events_sscc", "events", ["sscc"])
    op.create_index("ix_events_grai", "events", ["grai"])


def downgrade() -> None:
    op.drop_index("ix_events_grai", table_name="events")
    op.drop_index("ix_events_sscc", table_name="events")
    op.drop_constraint(op.f("ck_events_sscc"), "events", type_="check")
    op.drop_constraint(op.f("ck_events_quality_class"), "events", type_="check")
    for column in ("asset_code", "grai", "carrier", "sscc", "damage_codes", "damaged", "quality_class"):
        op.drop_column("events", column)
    op.drop_constraint(op.f("ck_pallets_quality_class"), "pallets", type_="check")
    op.drop_column("pallets", "quality_class")
