"""Operator corrections: stored block images, review resolutions, merged pallets, merge/detach events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 06:00:00

- ``block_images``: per event and block position the SHA-256 of the image as received (the bytes live in the
  content-addressed image store beside the database), its media type and size.
- ``reviews``: who flagged an event for review, and who resolved it how (merge into a pallet or keep new).
- ``pallets.merged_into`` and status ``merged``: a pallet merged into another stays readable.
- events of kind ``merge`` and ``detach``: operator corrections in the histories and the feed; they carry no
  decision and no model, and name the other pallet (``related_pallet_id``) and, for a detach, the moved event.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision (no imports of the ORM): the values the CHECK constraints allow.
PALLET_STATUSES_BEFORE = "status IN ('in_stock', 'dispatched')"
PALLET_STATUSES = "status IN ('in_stock', 'dispatched', 'merged')"
EVENT_KINDS_BEFORE = "kind IN ('receipt', 'dispatch')"
EVENT_KINDS = "kind IN ('receipt', 'dispatch', 'merge', 'detach')"
MERGED_HAS_TARGET = "(status = 'merged') = (merged_into IS NOT NULL)"
DECISION_FOR_RECORDINGS = (
    "(kind IN ('receipt', 'dispatch')) = (decision IS NOT NULL AND model_id IS NOT NULL)"
)
REVIEW_ACTIONS = "action IS NULL OR action IN ('merge', 'keep_new')"


def upgrade() -> None:
    op.create_table(
        "block_images",
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name=op.f("fk_block_images_event_id_events"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("event_id", "position", name=op.f("pk_block_images")),
    )
    op.create_index("ix_block_images_sha256", "block_images", ["sha256"])

    op.add_column("pallets", sa.Column("merged_into", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_pallets_merged_into_pallets"),
        "pallets",
        "pallets",
        ["merged_into"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_index(op.f("ix_pallets_merged_into"), "pallets", ["merged_into"])
    op.drop_constraint(op.f("ck_pallets_status"), "pallets", type_="check")
    op.create_check_constraint(op.f("ck_pallets_status"), "pallets", PALLET_STATUSES)
    op.create_check_constraint(op.f("ck_pallets_merged_into"), "pallets", MERGED_HAS_TARGET)

    op.alter_column("events", "decision", existing_type=sa.String(16), nullable=True)
    op.alter_column("events", "model_id", existing_type=sa.String(128), nullable=True)
    op.add_column("events", sa.Column("related_pallet_id", sa.Uuid(), nullable=True))
    op.add_column("events", sa.Column("related_event_id", sa.BigInteger(), nullable=True))
    op.add_column("events", sa.Column("actor", sa.String(64), nullable=True))
    op.create_foreign_key(
        op.f("fk_events_related_pallet_id_pallets"),
        "events",
        "pallets",
        ["related_pallet_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_foreign_key(
        op.f("fk_events_related_event_id_events"),
        "events",
        "events",
        ["related_event_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.drop_constraint(op.f("ck_events_kind"), "events", type_="check")
    op.create_check_constraint(op.f("ck_events_kind"), "events", EVENT_KINDS)
    op.create_check_constraint(op.f("ck_events_recording_decision"), "events", DECISION_FOR_RECORDINGS)

    op.create_table(
        "reviews",
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("flagged_by", sa.String(64), nullable=True),
        sa.Column("flagged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("action", sa.String(16), nullable=True),
        sa.Column("merged_into", sa.Uuid(), nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution_event_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(REVIEW_ACTIONS, name=op.f("ck_reviews_action")),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name=op.f("fk_reviews_event_id_events"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["merged_into"], ["pallets.id"], name=op.f("fk_reviews_merged_into_pallets"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["resolution_event_id"],
            ["events.id"],
            name=op.f("fk_reviews_resolution_event_id_events"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_reviews")),
    )


def downgrade() -> None:
    op.drop_table("reviews")
    # Operator events and merged pallets cannot be expressed in the older schema.
    op.execute("DELETE FROM events WHERE kind NOT IN ('receipt', 'dispatch')")
    op.drop_constraint(op.f("ck_events_recording_decision"), "events", type_="check")
    op.drop_constraint(op.f("ck_events_kind"), "events", type_="check")
    op.create_check_constraint(op.f("ck_events_kind"), "events", EVENT_KINDS_BEFORE)
    op.drop_constraint(op.f("fk_events_related_event_id_events"), "events", type_="foreignkey")
    op.drop_constraint(op.f("fk_events_related_pallet_id_pallets"), "events", type_="foreignkey")
    op.drop_column("events", "actor")
    op.drop_column("events", "related_event_id")
    op.drop_column("events", "related_pallet_id")
    op.alter_column("events", "model_id", existing_type=sa.String(128), nullable=False)
    op.alter_column("events", "decision", existing_type=sa.String(16), nullable=False)

    op.drop_constraint(op.f("ck_pallets_merged_into"), "pallets", type_="check")
    op.drop_constraint(op.f("ck_pallets_status"), "pallets", type_="check")
    op.execute("UPDATE pallets SET status = 'in_stock', merged_into = NULL WHERE status = 'merged'")
    op.create_check_constraint(op.f("ck_pallets_status"), "pallets", PALLET_STATUSES_BEFORE)
    op.drop_index(op.f("ix_pallets_merged_into"), table_name="pallets")
    op.drop_constraint(op.f("fk_pallets_merged_into_pallets"), "pallets", type_="foreignkey")
    op.drop_column("pallets", "merged_into")

    op.drop_index("ix_block_images_sha256", table_name="block_images")
    op.drop_table("block_images")
