"""checkpoint cost statistics; 64-bit counts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 01:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDENED = ("num_params", "num_nonzero", "size_bytes")


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("flops", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("flops_nonzero", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("compression_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("theoretical_speedup", sa.Float(), nullable=True))
        for column in WIDENED:
            batch.alter_column(
                column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
            )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        for column in WIDENED:
            batch.alter_column(
                column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
            )
        for column in ("theoretical_speedup", "compression_ratio", "flops_nonzero", "flops"):
            batch.drop_column(column)
