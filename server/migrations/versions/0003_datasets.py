"""uploaded datasets: format, kind, sizes, preview and the project's active dataset

Revision ID: 0003_datasets
Revises: 0002
Create Date: 2026-11-23 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_datasets"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED = (
    "preview",
    "input_shape",
    "num_classes",
    "num_test",
    "num_train",
    "kind",
    "size_bytes",
    "filename",
    "format",
    "active",
)


def upgrade() -> None:
    # Every project had exactly one (builtin) dataset so far: it stays the active one. The
    # metadata of such rows is filled from the builtin loader the first time it is read.
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch.add_column(
            sa.Column("format", sa.String(length=20), server_default="builtin", nullable=False)
        )
        batch.add_column(sa.Column("filename", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("num_train", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("num_test", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("num_classes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("input_shape", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("preview", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Uploaded datasets cannot be described by the older schema; only builtins survive.
    op.execute("DELETE FROM datasets WHERE source != 'builtin'")
    with op.batch_alter_table("datasets") as batch:
        for column in ADDED:
            batch.drop_column(column)
