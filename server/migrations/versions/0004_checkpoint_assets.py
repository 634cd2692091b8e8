"""checkpoint assets: config and tokenizer files of Hugging Face checkpoints

Revision ID: 0004_checkpoint_assets
Revises: 0003_datasets
Create Date: 2026-11-23 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_checkpoint_assets"
down_revision: str | None = "0003_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("assets_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("assets_digest")
