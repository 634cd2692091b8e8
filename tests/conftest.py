"""Shared fixtures: every test gets its own data directory, database and artifact store.

The database is SQLite in the test's data directory, or, with
`PRUNESCOPE_TEST_DATABASE=postgres`, a fresh database on a PostgreSQL server that the session
starts from Debian's binaries (a copy of one migrated template per test). In that mode only the
tests that use the database (the `settings` fixture) are collected: the rest never touch it.
"""

from __future__ import annotations

import os

import pytest

from prunescope.server.config import Settings, get_settings
from prunescope.server.db import _engine_for, _sessionmaker_for, get_engine, upgrade_database
from tests.postgres import running_postgres

# TestClient sends `Host: testserver`; the server answers only the host names it is told of
# (loopback by default), so the tests name it. Real servers in tests are reached on loopback.
os.environ.setdefault("PRUNESCOPE_ALLOWED_HOSTS", "testserver")

TEST_DATABASE = os.environ.get("PRUNESCOPE_TEST_DATABASE", "sqlite")
if TEST_DATABASE not in ("sqlite", "postgres"):
    raise pytest.UsageError(
        f"PRUNESCOPE_TEST_DATABASE={TEST_DATABASE!r}; use 'sqlite' or 'postgres'")


def pytest_report_header(config) -> str:  # noqa: ANN001
    return f"database: {TEST_DATABASE}"


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    if TEST_DATABASE != "postgres":
        return
    keep = [i for i in items if "settings" in getattr(i, "fixturenames", ())
            and i.get_closest_marker("not_about_the_database") is None]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (tests that stop it start their own)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_template(postgres_server, tmp_path_factory) -> str:
    """A database migrated to the newest schema, copied for each test."""
    name = postgres_server.create_database()
    template = Settings(data_dir=tmp_path_factory.mktemp("template"),
                        database_url=postgres_server.url(name))
    upgrade_database(template)
    get_engine(template).dispose()
    return name


@pytest.fixture
def settings(tmp_path, monkeypatch, request) -> Settings:
    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PRUNESCOPE_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("PRUNESCOPE_POLL_SECONDS", "0.1")
    database = None
    if TEST_DATABASE == "postgres":
        server = request.getfixturevalue("postgres_server")
        database = server.create_database(template=request.getfixturevalue("postgres_template"))
        monkeypatch.setenv("PRUNESCOPE_DATABASE_URL", server.url(database))
    get_settings.cache_clear()
    s = get_settings()
    upgrade_database(s)
    yield s
    get_settings.cache_clear()
    if database is not None:
        get_engine(s).dispose()
        _sessionmaker_for.cache_clear()
        _engine_for.cache_clear()
        server.drop_database(database)


@pytest.fixture
def ingest_worker(settings):
    """A worker in this process serving only upload validation (ingest jobs), as the ingest
    lane of `serve` does; tests that upload and wait for the answer use it."""
    from tests.ingest_lane import running_ingest_lane

    with running_ingest_lane(settings) as thread:
        yield thread
