"""project names unique per owner, not across the server

A name taken by someone else's private project must not be refused (a 409 would tell a
stranger that the project exists). `owner_key` is "u<user id>" for an owned project and ""
for one made without accounts; (owner_key, name) is unique.

Revision ID: 0009_project_names_per_owner
Revises: 0008_share_links
Create Date: 2026-12-01 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_project_names_per_owner"
down_revision: str | None = "0008_share_links"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Names for constraints the first migration left unnamed (SQLite reflects them so).
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _name_constraint(bind: sa.engine.Connection) -> str:
    """The unique constraint on projects.name as the database calls it."""
    for uc in sa.inspect(bind).get_unique_constraints("projects"):
        if uc["column_names"] == ["name"]:
            return uc["name"] or "uq_projects_name"
    raise RuntimeError("projects.name has no unique constraint to replace")


def upgrade() -> None:
    bind = op.get_bind()
    old = _name_constraint(bind)
    with op.batch_alter_table("projects", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("owner_key", sa.String(length=40), nullable=False,
                                   server_default=""))
    op.execute(
        "UPDATE projects SET owner_key = (SELECT 'u' || CAST(m.user_id AS VARCHAR(20)) "
        "FROM project_members m WHERE m.project_id = projects.id AND m.role = 'owner') "
        "WHERE EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = projects.id "
        "AND m.role = 'owner')"
    )
    with op.batch_alter_table("projects", naming_convention=NAMING) as batch:
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint("uq_projects_owner_key_name", ["owner_key", "name"])


def downgrade() -> None:
    with op.batch_alter_table("projects", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_projects_owner_key_name", type_="unique")
        batch.create_unique_constraint("uq_projects_name", ["name"])
        batch.drop_column("owner_key")
