"""Alembic migrations produce exactly the schema the table classes declare, keeping old rows."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from prunescope.server.db import MIGRATIONS_DIR
from prunescope.server.tables import Base


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


def _owned_names_schema(url: str) -> None:
    """At 0008 two users each own a project and a third is ownerless; 0009 keys names by
    owner, so another user may reuse a name and the same owner may not."""
    import pytest
    from sqlalchemy.exc import IntegrityError

    command.upgrade(_config(url), "0008_share_links")
    engine = create_engine(url)
    with engine.begin() as conn:
        for name in ("alice", "bob"):
            conn.execute(text("INSERT INTO users (name, created_at) VALUES (:n, '2026-01-01')"),
                         {"n": name})
        for name in ("a", "b", "local"):
            conn.execute(text(
                "INSERT INTO projects (name, description, architecture, architecture_config,"
                " created_at) VALUES (:n, '', 'mlp', '{}', '2026-01-01')"), {"n": name})
        conn.execute(text(
            "INSERT INTO project_members (project_id, user_id, role, created_at) VALUES"
            " (1, 1, 'owner', '2026-01-01'), (2, 2, 'owner', '2026-01-01'),"
            " (2, 1, 'viewer', '2026-01-01')"))
    command.upgrade(_config(url), "head")
    with engine.connect() as conn:
        keys = dict(conn.execute(text("SELECT name, owner_key FROM projects")).all())
    assert keys == {"a": "u1", "b": "u2", "local": ""}
    with engine.begin() as conn:  # bob may call a project "a": alice's is not his business
        conn.execute(text(
            "INSERT INTO projects (name, owner_key, description, architecture,"
            " architecture_config, created_at) VALUES ('a', 'u2', '', 'mlp', '{}', '2026-01-01')"))
    with pytest.raises(IntegrityError), engine.begin() as conn:  # alice may not, twice
        conn.execute(text(
            "INSERT INTO projects (name, owner_key, description, architecture,"
            " architecture_config, created_at) VALUES ('a', 'u1', '', 'mlp', '{}', '2026-01-01')"))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM projects WHERE owner_key = 'u2' AND name = 'a'"))
    command.downgrade(_config(url), "0008_share_links")  # names unique across the server again
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM projects")).scalar() == 3
    engine.dispose()


def test_names_become_unique_per_owner_on_sqlite(tmp_path):
    _owned_names_schema(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_names_become_unique_per_owner_on_postgresql(postgres_server):
    database = postgres_server.create_database()
    try:
        _owned_names_schema(postgres_server.url(database))
    finally:
        postgres_server.drop_database(database)
