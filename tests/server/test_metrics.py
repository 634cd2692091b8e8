"""GET /api/v1/metrics: job gauges and histograms read from the table, request timings by route."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from prunescope.server import auth
from prunescope.server.db import session_scope
from prunescope.server.main import create_app
from prunescope.server.metrics import (
    JOB_DURATION_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    JobCollector,
    cumulative_buckets,
    route_template,
)
from prunescope.server.tables import JOB_STATES, Job, Project, utcnow

HOUR = 3600.0


def _project(settings, name: str = "p") -> int:
    with session_scope(settings) as s:
        project = Project(name=name, architecture="mlp", architecture_config={})
        s.add(project)
        s.flush()
        return project.id


def _add_jobs(settings, pid: int, jobs: list[dict]) -> None:
    """Jobs with timestamps given as seconds before now (None: not set)."""
    now = utcnow()
    with session_scope(settings) as s:
        for job in jobs:
            stamps = {key: (now - timedelta(seconds=job[key]) if job.get(key) is not None
                            else None) for key in ("created_at", "started_at", "finished_at")}
            s.add(Job(project_id=pid, kind=job["kind"], state=job["state"],
                      **{**stamps, "created_at": stamps["created_at"] or now}))


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _scrape(client: TestClient, **kwargs) -> dict:  # noqa: ANN003
    r = client.get("/api/v1/metrics", **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _families(r.text)


def _samples(family, suffix: str = "") -> dict:  # noqa: ANN001
    """{frozenset of labels (le included): value} of the family's samples named name+suffix."""
    return {frozenset(s.labels.items()): s.value for s in family.samples
            if s.name == family.name + suffix}


def _expected_buckets(seconds: list[float], bounds) -> dict[str, float]:  # noqa: ANN001
    """Cumulative bucket counts by a plain loop, keyed like the exposition ("1.0", "+Inf")."""
    counts = {}
    for bound in bounds:
        counts[prometheus_client.utils.floatToGoString(bound)] = float(
            sum(1 for v in seconds if v <= bound))
    counts["+Inf"] = float(len(seconds))
    return counts


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, dashboard=False)) as c:
        yield c


# ---------------------------------------------------------------- jobs


def test_the_jobs_gauge_counts_the_table_by_state_and_kind(settings, client):
    pid = _project(settings)
    made = [("analyze", "queued")] * 3 + [("analyze", "running"), ("prune", "succeeded"),
                                           ("prune", "succeeded"), ("prune", "failed"),
                                           ("train", "cancelled"), ("geometry", "queued")]
    _add_jobs(settings, pid, [{"kind": k, "state": s} for k, s in made])
    gauge = _scrape(client)["prunescope_jobs"]
    assert gauge.type == "gauge"
    seen = {(s.labels["state"], s.labels["kind"]): s.value for s in gauge.samples}
    expected = Counter((state, kind) for kind, state in made)
    for state in JOB_STATES:  # zero, not absent, for states without jobs
        for kind in ("analyze", "prune", "train", "geometry", "probe"):
            assert seen[(state, kind)] == expected.get((state, kind), 0), (state, kind)
    assert sum(seen.values()) == len(made)


# (kind, state, created, started, finished) in seconds before now, with the hand-computed
# queue wait (started − created) and duration (finished − started).
TIMELINE = [
    ("analyze", "succeeded", 2 * HOUR, 2 * HOUR - 30, 2 * HOUR - 120),  # wait 30, ran 90
    ("analyze", "succeeded", 5 * HOUR, 5 * HOUR - 2, 5 * HOUR - 702),  # wait 2, ran 700
    ("analyze", "failed", 600, 590, 585),  # wait 10, ran 5
    ("prune", "succeeded", 400, 100, 40),  # wait 300, ran 60
    ("train", "running", 100, 20, None),  # wait 80, still running: no duration
    ("analyze", "succeeded", 30 * HOUR, 30 * HOUR - 5, 30 * HOUR - 50),  # over a day ago
    ("prune", "cancelled", 50, None, 10),  # cancelled while queued: neither
    ("analyze", "queued", 5, None, None),  # waiting: neither
]
DURATIONS = {("analyze", "succeeded"): [90.0, 700.0], ("analyze", "failed"): [5.0],
             ("prune", "succeeded"): [60.0]}
WAITS = {"analyze": [30.0, 2.0, 10.0], "prune": [300.0], "train": [80.0]}


def _timeline(settings) -> None:
    _add_jobs(settings, _project(settings), [
        {"kind": k, "state": s, "created_at": c, "started_at": st, "finished_at": f}
        for k, s, c, st, f in TIMELINE])


def _check_histogram(families: dict, name: str, expected: dict, labels: tuple[str, ...],
                     bounds) -> None:  # noqa: ANN001
    histogram = families[name]
    assert histogram.type == "histogram"
    buckets = _samples(histogram, "_bucket")
    sums = _samples(families[name + "_gsum"])
    counts = _samples(families[name + "_gcount"])
    assert len(sums) == len(counts) == len(expected)
    for key, seconds in expected.items():
        group = frozenset(zip(labels, key if isinstance(key, tuple) else (key,), strict=True))
        assert sums[group] == pytest.approx(sum(seconds), abs=1e-3), key
        assert counts[group] == len(seconds), key
        for le, count in _expected_buckets(seconds, bounds).items():
            assert buckets[group | {("le", le)}] == count, (key, le)


def test_durations_and_queue_waits_match_the_timestamps(settings, client):
    _timeline(settings)
    families = _scrape(client)
    _check_histogram(families, "prunescope_job_duration_seconds", DURATIONS,
                     ("kind", "state"), JOB_DURATION_BUCKETS)
    _check_histogram(families, "prunescope_job_queue_wait_seconds", WAITS, ("kind",),
                     QUEUE_WAIT_BUCKETS)


def test_the_window_and_the_limit_bound_the_histograms(settings):
    _timeline(settings)

    def durations(collector: JobCollector) -> dict:
        family = next(f for f in collector.collect() if f.name.endswith("duration_seconds"))
        return {s.labels["kind"] + "/" + s.labels["state"]: s.value
                for s in family.samples if s.name.endswith("_gcount")}

    everything = durations(JobCollector(settings, window=timedelta(hours=48)))
    assert everything == {"analyze/succeeded": 3, "analyze/failed": 1, "prune/succeeded": 1}
    # The newest two to finish: the prune (40 s ago) and the failed analysis (585 s ago).
    assert durations(JobCollector(settings, limit=2)) == {"analyze/failed": 1,
                                                          "prune/succeeded": 1}


def test_cumulative_buckets_edge_cases():
    import numpy as np

    assert cumulative_buckets(np.array([]), (1, 2)) == [("1.0", 0.0), ("2.0", 0.0),
                                                       ("+Inf", 0.0)]
    # A value on a bound falls in that bucket (le: less than or equal).
    assert cumulative_buckets(np.array([2.0, 1.0, 1.0, 7.0]), (1, 2, 5)) == [
        ("1.0", 2.0), ("2.0", 3.0), ("5.0", 3.0), ("+Inf", 4.0)]


def test_no_jobs_gives_empty_histograms_and_zero_gauges(client):
    families = _scrape(client)
    assert {s.value for s in families["prunescope_jobs"].samples} == {0.0}
    assert families["prunescope_job_duration_seconds"].samples == []
    assert families["prunescope_job_queue_wait_seconds"].samples == []


# ---------------------------------------------------------------- requests


def test_requests_are_counted_by_route_template_not_raw_path(settings, client):
    pid = _project(settings)
    for path in (f"/api/v1/projects/{pid}", f"/api/v1/projects/{pid}", "/api/v1/projects/9876",
                 "/api/v1/projects", "/api/v1/no/such/route", "/docs", "/openapi.json"):
        client.get(path)
    client.post("/api/v1/jobs/9876/cancel")
    counts = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
              for s in _scrape(client)["prunescope_http_request_duration_seconds"].samples
              if s.name.endswith("_count")}
    assert counts == {
        ("GET", "/api/v1/projects/{project_id}", "2xx"): 2,
        ("GET", "/api/v1/projects/{project_id}", "4xx"): 1,
        ("GET", "/api/v1/projects", "2xx"): 1,
        ("GET", "/api/v1/{path}", "4xx"): 1,
        ("GET", "/docs", "2xx"): 1,
        ("GET", "/openapi.json", "2xx"): 1,
        ("POST", "/api/v1/jobs/{job_id}/cancel", "4xx"): 1,
    }
    text = client.get("/api/v1/metrics").text
    assert "9876" not in text and f"/projects/{pid}\"" not in text


def test_each_app_has_its_own_registry(settings):
    with TestClient(create_app(settings, dashboard=False)) as first, \
            TestClient(create_app(settings, dashboard=False)) as second:
        first.get("/api/v1/projects")
        first.get("/api/v1/projects")
        second.get("/api/v1/projects")

        def listed(client: TestClient) -> float:
            family = _scrape(client)["prunescope_http_request_duration_seconds"]
            return sum(s.value for s in family.samples if s.name.endswith("_count")
                       and s.labels["route"] == "/api/v1/projects")

        assert (listed(first), listed(second)) == (2, 1)
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("prunescope_") for name in names)


def test_route_template_without_a_route_is_unmatched():
    assert route_template({"type": "http", "path": "/x/1", "method": "GET"}) == "unmatched"


def test_openmetrics_when_the_scraper_asks_for_it(settings, client):
    _timeline(settings)
    r = client.get("/api/v1/metrics",
                   headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(r.text)}
    duration = families["prunescope_job_duration_seconds"]
    assert duration.type == "gaugehistogram"
    gsum = {frozenset(s.labels.items()): s.value for s in duration.samples
            if s.name.endswith("_gsum")}
    assert gsum[frozenset({("kind", "analyze"), ("state", "succeeded")})] == pytest.approx(
        790.0, abs=1e-3)


# ---------------------------------------------------------------- access


@pytest.fixture
def secured(settings):
    return settings.model_copy(update={"auth": "on"})


def test_metrics_need_a_signed_in_user_when_accounts_are_on(secured):
    _, token = auth.add_user("prometheus", None, token=True, settings=secured)
    bearer = {"Authorization": f"Bearer {token}"}
    app = create_app(secured, dashboard=False)
    with TestClient(app) as client:
        refused = client.get("/api/v1/metrics")
        assert refused.status_code == 401
        families = _scrape(client, headers=bearer)
        counts = {(s.labels["route"], s.labels["status"]): s.value
                  for s in families["prunescope_http_request_duration_seconds"].samples
                  if s.name.endswith("_count")}
        # Refused before routing: timed, under no route.
        assert counts == {("unmatched", "4xx"): 1}
        pid = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"},
                          headers=bearer).json()["id"]
        link = client.post(f"/api/v1/projects/{pid}/share-links", json={},
                           headers=bearer).json()["url"]
    with TestClient(app) as visitor:
        visitor.get(link.removeprefix("http://testserver"), follow_redirects=False)
        assert visitor.get(f"/api/v1/projects/{pid}").status_code == 200
        # The metrics cover every project; a share link opens one.
        assert visitor.get("/api/v1/metrics").status_code == 403


def test_metrics_are_open_without_accounts(client):
    assert client.get("/api/v1/metrics").status_code == 200
