"""Fingerprints of any dimension: a dimensionless ``halfvec`` column and one HNSW index per model.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 09:00:00

A new model may make fingerprints of another size than 512. The column loses its dimension (no rewrite: the
stored values stay as they are) and the one HNSW index over all rows becomes one partial index per model id
over ``embedding::halfvec(<dim>)``, the expression the k-NN statements order by. Upgrading builds the index of
every model that has fingerprints (all 512-dim before this revision); later models get theirs from
``palletreid reindex`` or when the service starts with them. Downgrading needs every fingerprint to be
512-dim again (delete those of other models first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision (no imports of the project).
OLD_DIM = 512
OLD_INDEX = "ix_fingerprints_embedding_hnsw"
INDEX_PREFIX = "ix_fingerprints_hnsw_"
HNSW_WITH = "WITH (m = 16, ef_construction = 64)"


def _index_name(model_id: str) -> str:
    return INDEX_PREFIX + hashlib.sha256(model_id.encode()).hexdigest()[:16]


def upgrade() -> None:
    op.drop_index(OLD_INDEX, table_name="fingerprints")
    op.alter_column(
        "fingerprints", "embedding", type_=HALFVEC(), existing_type=HALFVEC(OLD_DIM), existing_nullable=False
    )
    bind = op.get_bind()
    models = bind.execute(sa.text("SELECT DISTINCT model_id FROM fingerprints ORDER BY model_id")).scalars()
    for model_id in list(models):
        quoted = "'" + model_id.replace("'", "''") + "'"
        # sent as it is: the model id is data, neither text() nor the driver may read ":x" or "%s" in it
        bind.exec_driver_sql(
            f"CREATE INDEX {_index_name(model_id)} ON fingerprints USING hnsw "
            f"((embedding::halfvec({OLD_DIM})) halfvec_cosine_ops) {HNSW_WITH} WHERE model_id = {quoted}",
            execution_options={"no_parameters": True},
        )


def downgrade() -> None:
    bind = op.get_bind()
    other = bind.execute(
        sa.text("SELECT count(*) FROM fingerprints WHERE vector_dims(embedding) <> :dim"), {"dim": OLD_DIM}
    ).scalar_one()
    if other:
        raise RuntimeError(
            f"{other} fingerprints are not {OLD_DIM}-dim; revision 0005 stores only {OLD_DIM}-dim ones. "
            f"Delete them first (DELETE FROM fingerprints WHERE vector_dims(embedding) <> {OLD_DIM})"
        )
    indexes = bind.execute(
        sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'fingerprints' "
            "AND left(indexname, length(:prefix)) = :prefix"
        ),
        {"prefix": INDEX_PREFIX},
    ).scalars()
    for name in list(indexes):
        op.drop_index(name, table_name="fingerprints")
    op.alter_column(
        "fingerprints",
        "embedding",
        type_=HALFVEC(OLD_DIM),
        existing_type=HALFVEC(),
        existing_nullable=False,
        postgresql_using=f"embedding::halfvec({OLD_DIM})",
    )
    op.create_index(
        OLD_INDEX,
        "fingerprints",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "halfvec_cosine_ops"},
    )
