"""Long selections in the URL: the dashboard writes a short id for them, links still reopen the
same selection, and nothing outside the dashboard opens a database."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from prunescope.dashboard.state import (
    SELECTION_URL_LIMIT,
    decode_selection,
    encode_selection,
    storing_long_selections,
)
from prunescope.server.config import get_settings
from prunescope.server.services import views


def _scattered(n: int, fraction: float, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.flatnonzero(rng.random(n) < fraction).tolist()


def test_long_selections_round_trip_through_a_short_id(settings) -> None:
    chosen = _scattered(27_000, 0.33)
    code = encode_selection(chosen, 27_000)  # outside the dashboard: the self-contained code
    assert len(code) > SELECTION_URL_LIMIT
    with storing_long_selections():
        short = encode_selection(chosen, 27_000)
        assert encode_selection(chosen, 27_000) == short  # the same selection, the same link
    assert short.startswith("v") and len(short) <= 33
    assert all(ch.isalnum() or ch in "-_" for ch in short)
    assert views.load_view_state(short[1:]) == code
    assert decode_selection(short, 27_000) == chosen == decode_selection(code, 27_000)
    with storing_long_selections():
        other = encode_selection(chosen[1:], 27_000)
    assert other != short and decode_selection(other, 27_000) == chosen[1:]


def test_only_codes_over_the_limit_are_stored() -> None:
    stored: dict[str, str] = {}

    def store(text: str) -> str:
        stored[f"id{len(stored)}"] = text
        return f"id{len(stored) - 1}"

    rng = np.random.default_rng(3)
    lengths = []
    for _ in range(60):
        n = int(rng.integers(500, 20_000))
        chosen = _scattered(n, float(rng.uniform(0.0005, 0.05)), seed=int(rng.integers(1 << 30)))
        plain = encode_selection(chosen, n)
        with storing_long_selections(store):
            written = encode_selection(chosen, n)
        lengths.append(len(plain))
        if len(plain) <= SELECTION_URL_LIMIT:
            assert written == plain
        else:
            assert written.startswith("v") and stored[written[1:]] == plain
    # Both sides of the limit were reached.
    assert min(lengths) <= SELECTION_URL_LIMIT < max(lengths)


def test_unknown_ids_read_as_no_selection(settings) -> None:
    for text in ("vAAAAAAAAAAAAAAAA", "v", "v../../etc/passwd", "v" + "x" * 200, "v!!"):
        assert decode_selection(text, 100) == []
    # A stored text is a code, never another id: no loops.
    looping = views.store_view_state("v" + views.store_view_state("z" * 600))
    assert decode_selection("v" + looping, 100) == []


def test_without_a_database_nothing_is_written_and_nothing_fails(tmp_path, monkeypatch) -> None:
    data_dir = tmp_path / "never-created"
    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        chosen = _scattered(27_000, 0.2, seed=5)
        code = encode_selection(chosen, 27_000)
        assert code.startswith("z") and decode_selection(code, 27_000) == chosen
        assert decode_selection("vAAAAAAAAAAAAAAAA", 27_000) == []
        assert not data_dir.exists()
    finally:
        get_settings.cache_clear()


def test_a_failing_store_keeps_the_long_code() -> None:
    def broken(_text: str) -> str:
        raise RuntimeError("database is locked")

    chosen = _scattered(10_000, 0.3, seed=2)
    with storing_long_selections(broken):
        code = encode_selection(chosen, 10_000)
    assert code.startswith("z") and decode_selection(code, 10_000) == chosen


def test_pages_served_by_the_dashboard_write_short_ids(settings) -> None:
    from prunescope.dashboard.app import create_dash
    from prunescope.dashboard.state import parse_query
    from prunescope.dashboard.views.geometry import view_query

    chosen = _scattered(27_000, 0.4, seed=7)
    server = FastAPI()

    @server.get("/probe")
    def probe() -> dict[str, str]:  # what a page callback writes into its URL
        return {"query": view_query({"checkpoint": "dense"}, chosen, 27_000)}

    create_dash(server)
    query = parse_query(TestClient(server).get("/probe").json()["query"])
    assert query["checkpoint"] == "dense" and query["sel"].startswith("v")
    assert len(query["sel"]) < 40 and decode_selection(query["sel"], 27_000) == chosen
    # The same function outside a request keeps the self-contained code.
    assert parse_query(view_query({}, chosen, 27_000))["sel"].startswith("z")


@pytest.mark.parametrize("n", [1, 7, 64])
def test_small_selections_never_touch_the_store(n: int) -> None:
    def store(_text: str) -> str:
        raise AssertionError("a short selection was stored")

    with storing_long_selections(store):
        assert decode_selection(encode_selection(list(range(0, n, 2)), n), n) == list(
            range(0, n, 2)
        )
