"""Alembic migrations produce exactly the schema the table classes declare, keeping old rows."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from server.db import MIGRATIONS_DIR
from server.tables import Base


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def test_head_matches_the_table_classes(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    command.upgrade(_config(url), "head")
    with create_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_from_the_first_schema_keeps_checkpoints(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    command.upgrade(_config(url), "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (name, description, architecture, architecture_config,"
                " created_at) VALUES ('p', '', 'mlp', '{}', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO checkpoints (project_id, name, role, source, measured_sparsity,"
                " num_params, num_nonzero, layer_stats, format, artifact_digest, size_bytes,"
                " created_at) VALUES (1, 'dense', 'dense', 'upload', 0.0, 100, 100, '{}',"
                " 'safetensors', :d, 10, '2026-01-01')"
            ),
            {"d": "a" * 64},
        )
    command.upgrade(_config(url), "head")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT name, num_params, flops FROM checkpoints")).one()
    assert tuple(row) == ("dense", 100, None)
    command.downgrade(_config(url), "0001")  # and back, for a rollback
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM checkpoints")).scalar() == 1
