"""Initial schema: pgvector, pallets, events, fingerprints (halfvec + HNSW), idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision: a later change of the ORM's constants must not rewrite this migration's history.
EMBEDDING_DIM = 512
HNSW_INDEX_NAME = "ix_fingerprints_embedding_hnsw"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "pallets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('in_stock', 'dispatched')", name="status"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_pallets_first_seen_id", "pallets", ["first_seen", "id"])
    op.create_index("ix_pallets_last_seen", "pallets", ["last_seen"])

    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("pallet_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("blocks_compared", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("site", sa.String(200), nullable=True),
        sa.Column("gate", sa.String(200), nullable=True),
        sa.Column("external_ref", sa.String(200), nullable=True),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("result", postgresql.JSONB(), nullable=False),
        sa.CheckConstraint("kind IN ('receipt', 'dispatch')", name="kind"),
        sa.CheckConstraint("decision IN ('matched', 'registered')", name="decision"),
        sa.ForeignKeyConstraint(["pallet_id"], ["pallets.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_pallet_id_id", "events", ["pallet_id", "id"])
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])
    op.create_index("ix_events_external_ref", "events", ["external_ref"])
    op.create_index("ix_events_site", "events", ["site"])

    op.create_table(
        "fingerprints",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("pallet_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("embedding", HALFVEC(EMBEDDING_DIM), nullable=False),
        sa.ForeignKeyConstraint(["pallet_id"], ["pallets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fingerprints_pallet_id", "fingerprints", ["pallet_id"])
    op.create_index("ix_fingerprints_event_id", "fingerprints", ["event_id"])
    op.create_index(
        HNSW_INDEX_NAME,
        "fingerprints",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "halfvec_cosine_ops"},
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("kind", "key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("fingerprints")
    op.drop_table("events")
    op.drop_table("pallets")
    op.execute("DROP EXTENSION IF EXISTS vector")
