"""Shared fixtures: every test gets its own data directory, database and artifact store."""

from __future__ import annotations

import pytest

from server.config import Settings, get_settings
from server.db import upgrade_database


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PRUNESCOPE_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("PRUNESCOPE_POLL_SECONDS", "0.1")
    get_settings.cache_clear()
    s = get_settings()
    upgrade_database(s)
    yield s
    get_settings.cache_clear()
