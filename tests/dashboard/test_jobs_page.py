"""The Jobs page: its rows' waits and run times, who sees which jobs, and its export."""

from __future__ import annotations

import csv
import io
import sys
from datetime import timedelta

import dash
import pytest
from fastapi.testclient import TestClient

from prunescope.server import auth
from prunescope.server.db import session_scope
from prunescope.server.main import create_app
from prunescope.server.schemas import ProjectCreate
from prunescope.server.services.projects import create_project
from prunescope.server.tables import Job, utcnow


@pytest.fixture
def app(settings):
    return create_app(settings)  # registers the dashboard's pages


@pytest.fixture
def page(app):
    # The module as Dash registered it (importing it again would register a second page).
    module = next(p["module"] for p in dash.page_registry.values() if p["path"] == "/jobs")
    return sys.modules[module]


def _user(name: str, settings) -> auth.Principal:  # noqa: ANN001
    info, _ = auth.add_user(name, None, token=True, settings=settings)
    return auth.Principal("user", user_id=info.id, name=name)


def _project_of(principal: auth.Principal, name: str, settings) -> int:  # noqa: ANN001
    with auth.acting_as(principal):
        return create_project(ProjectCreate(name=name, architecture="mlp"), settings).id


# (state, created, started, finished) in seconds before `now`, with the hand-computed
# queue wait and duration the row must show (None: blank).
JOBS = [
    ("succeeded", 500, 440, 140, 60.0, 300.0),
    ("failed", 90, 89.5, 80, 0.5, 9.5),
    ("running", 1000, 100, None, 900.0, 100.0),  # run so far
    ("queued", 45, None, None, 45.0, None),  # wait so far
    ("cancelled", 30, None, 20, None, None),  # cancelled before it started
]


def _add_jobs(settings, pid: int, now) -> list[int]:  # noqa: ANN001
    def at(seconds: float | None):  # noqa: ANN202
        return None if seconds is None else now - timedelta(seconds=seconds)

    with session_scope(settings) as s:
        rows = [Job(project_id=pid, kind="analyze", state=state, created_at=at(created),
                    started_at=at(started), finished_at=at(finished), attempts=1,
                    worker_id="w1" if started is not None else None, message=state)
                for state, created, started, finished, _, _ in JOBS]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def test_rows_show_each_jobs_queue_wait_and_duration(settings, page):
    now = utcnow()
    pid = _project_of(auth.LOCAL, "mine", settings)
    ids = _add_jobs(settings, pid, now)
    rows = page.job_rows(now=now)
    assert [r["id"] for r in rows] == sorted(ids, reverse=True)  # newest first
    by_id = {r["id"]: r for r in rows}
    for job_id, (state, created, _, _, wait, duration) in zip(ids, JOBS, strict=True):
        row = by_id[job_id]
        assert (row["state"], row["project"], row["attempts"]) == (state, "mine", "1/3")
        assert row["queue_wait_s"] == (None if wait is None else pytest.approx(wait)), state
        assert row["duration_s"] == (None if duration is None else pytest.approx(duration)), state
        assert row["queued_at"] == (now - timedelta(seconds=created)).strftime(
            "%Y-%m-%d %H:%M:%S")
    assert {r["worker"] for r in rows} == {"w1", ""}
    assert set(rows[0]) == {c["id"] for c in page.COLUMNS}


def test_a_strangers_jobs_are_not_listed(settings, page):
    now = utcnow()
    alice, bob = _user("alice", settings), _user("bob", settings)
    alices = _add_jobs(settings, _project_of(alice, "alices", settings), now)
    bobs = _add_jobs(settings, _project_of(bob, "bobs", settings), now)
    with auth.acting_as(alice):
        assert sorted(r["id"] for r in page.job_rows(now)) == alices
        assert {r["project"] for r in page.job_rows(now)} == {"alices"}
    with auth.acting_as(bob):
        assert sorted(r["id"] for r in page.job_rows(now)) == bobs
    with auth.acting_as(auth.ANONYMOUS):
        assert page.job_rows(now) == []
    assert sorted(r["id"] for r in page.job_rows(now)) == alices + bobs  # the local user


def test_the_export_follows_the_tables_filter_and_sort(settings, app):
    pid = _project_of(auth.LOCAL, "mine", settings)
    ids = _add_jobs(settings, pid, utcnow())
    shown = [{"id": ids[2], "state": "edited in the browser"}, {"id": ids[0]}, {"id": 12345}]
    body = {
        "output": "jobs-download.data",
        "outputs": {"id": "jobs-download", "property": "data"},
        "inputs": [{"id": "jobs-csv", "property": "n_clicks", "value": 1},
                   {"id": "jobs-parquet", "property": "n_clicks", "value": 0}],
        "state": [{"id": "jobs-table", "property": "derived_virtual_data", "value": shown}],
        "changedPropIds": ["jobs-csv.n_clicks"],
    }
    with TestClient(app) as client:
        r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.text
    download = r.json()["response"]["jobs-download"]["data"]
    assert download["filename"] == "prunescope-jobs.csv"
    rows = list(csv.DictReader(io.StringIO(download["content"])))
    # The browser chose which rows and their order; the values come from the server.
    assert [(int(r["id"]), r["state"]) for r in rows] == [(ids[2], "running"),
                                                          (ids[0], "succeeded")]


def test_the_layout_holds_the_table_its_timer_and_its_exports(settings, page):
    import json

    pid = _project_of(auth.LOCAL, "mine", settings)
    ids = _add_jobs(settings, pid, utcnow())
    tree = json.dumps(page.layout().to_plotly_json(), default=lambda o: o.to_plotly_json())
    for id_ in ("jobs-table", "jobs-refresh", "jobs-csv", "jobs-parquet", "jobs-download"):
        assert f'"id": "{id_}"' in tree, id_
    assert [r["id"] for r in page.refresh(1)] == sorted(ids, reverse=True)
