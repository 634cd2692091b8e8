"""Prometheus metrics: jobs read from the shared job table, requests timed in this process."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import get_args

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.schemas import JobKind
from prunescope.server.tables import JOB_STATES, Job, utcnow

# Which finished jobs the duration and queue-wait histograms describe: those of the last day,
# at most the newest 10,000, so a scrape costs the same however long the table has grown.
JOB_WINDOW = timedelta(hours=24)
JOB_LIMIT = 10_000
# Seconds: from a quick analysis to a day-long training run.
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
QUEUE_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 14400, 86400)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# ---------------------------------------------------------------- jobs, from the table


def cumulative_buckets(values: np.ndarray, bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets of `values`: for each upper bound `le`, how many values are
    ≤ le, then "+Inf" with all of them."""
    below = np.searchsorted(np.sort(values), np.asarray(bounds, dtype=float), side="right")
    return [*((floatToGoString(b), float(n)) for b, n in zip(bounds, below, strict=True)),
            ("+Inf", float(values.size))]


def _seconds_between(later: Sequence[datetime], earlier: Sequence[datetime]) -> np.ndarray:
    """later − earlier in seconds, element by element. Clipped at 0: the stamps come from the
    clocks of different machines (server and workers), which may disagree a little."""
    if not later:
        return np.zeros(0)
    delta = np.array(later, dtype="datetime64[us]") - np.array(earlier, dtype="datetime64[us]")
    return np.clip(delta / np.timedelta64(1, "s"), 0.0, None)


def _grouped_histogram(
    family: GaugeHistogramMetricFamily,
    labels: Sequence[tuple[str, ...]],
    seconds: np.ndarray,
    bounds: Sequence[float],
) -> GaugeHistogramMetricFamily:
    if not labels:
        return family
    groups, which = np.unique(np.array(labels, dtype=str), axis=0, return_inverse=True)
    which = which.reshape(-1)
    for index, group in enumerate(groups):
        values = seconds[which == index]
        family.add_metric(list(group), cumulative_buckets(values, bounds), float(values.sum()))
    return family


class JobCollector:
    """Job metrics computed from the `jobs` table at each scrape.

    Many server and worker processes share the table, so counters kept in one process would
    see only that process's jobs; the table itself is the one truth. Each scrape runs three
    small queries:

    - `prunescope_jobs{state, kind}`: jobs by state and kind (a GROUP BY over the table; zero
      for every state of every known kind, so alerts need not handle a missing series);
    - `prunescope_job_duration_seconds{kind, state}`: finished_at − started_at of the jobs that
      finished within `window` (newest `limit` of them), by kind and final state;
    - `prunescope_job_queue_wait_seconds{kind}`: started_at − created_at of the jobs that
      started within `window` (newest `limit`), finished or still running. A retried job's
      start is that of its latest attempt, so earlier attempts count as waiting.

    The two histograms describe a sliding window, so their counts fall as old jobs leave it:
    they are gauge histograms (read `histogram_quantile(0.9, …_bucket)` directly, not over
    `rate()`); the text format gives their sum and count as `…_gsum` and `…_gcount`.
    """

    def __init__(self, settings: Settings, window: timedelta = JOB_WINDOW,
                 limit: int = JOB_LIMIT) -> None:
        self.settings, self.window, self.limit = settings, window, limit

    def describe(self) -> Iterable[Metric]:
        # Names only: lets the registry check for clashes without querying the database.
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeHistogramMetricFamily,
                                 GaugeHistogramMetricFamily]:
        return (
            GaugeMetricFamily("prunescope_jobs", "Jobs in the job table by state and kind.",
                              labels=["state", "kind"]),
            GaugeHistogramMetricFamily(
                "prunescope_job_duration_seconds",
                f"finished_at - started_at of the jobs finished in the last "
                f"{self.window.total_seconds() / 3600:g} h (newest {self.limit}), by kind "
                "and final state.",
                labels=["kind", "state"]),
            GaugeHistogramMetricFamily(
                "prunescope_job_queue_wait_seconds",
                f"started_at - created_at of the jobs started in the last "
                f"{self.window.total_seconds() / 3600:g} h (newest {self.limit}), by kind.",
                labels=["kind"]),
        )

    def collect(self) -> Iterator[Metric]:
        jobs, durations, waits = self._families()
        cutoff = utcnow() - self.window
        with session_scope(self.settings) as s:
            counts = s.execute(
                select(Job.state, Job.kind, func.count()).group_by(Job.state, Job.kind)
            ).all()
            finished = s.execute(
                select(Job.kind, Job.state, Job.started_at, Job.finished_at)
                .where(Job.finished_at >= cutoff, Job.started_at.is_not(None))
                .order_by(Job.finished_at.desc()).limit(self.limit)
            ).all()
            started = s.execute(
                select(Job.kind, Job.created_at, Job.started_at)
                .where(Job.started_at >= cutoff)
                .order_by(Job.started_at.desc()).limit(self.limit)
            ).all()
        found = {(state, kind): n for state, kind, n in counts}
        kinds = sorted(set(get_args(JobKind)) | {kind for _, kind in found})
        for kind in kinds:
            for state in JOB_STATES:
                jobs.add_metric([state, kind], float(found.pop((state, kind), 0)))
        for (state, kind), n in sorted(found.items()):  # a state this code does not know
            jobs.add_metric([state, kind], float(n))
        yield jobs
        yield _grouped_histogram(
            durations, [(r.kind, r.state) for r in finished],
            _seconds_between([r.finished_at for r in finished], [r.started_at for r in finished]),
            JOB_DURATION_BUCKETS)
        yield _grouped_histogram(
            waits, [(r.kind,) for r in started],
            _seconds_between([r.started_at for r in started], [r.created_at for r in started]),
            QUEUE_WAIT_BUCKETS)


# ---------------------------------------------------------------- requests, in this process


def route_template(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The path template of the route that answered a request (`/api/v1/projects/{project_id}`),
    so that ids do not make a label value each; "unmatched" for a request answered before
    routing (refused sign-in, a body over the upload limit) or by no route.

    Read from the scope the router filled in. FastAPI keeps an included router's routes under
    their own paths and puts the full one in its route context; plain Starlette routes
    (/docs, mounted static files) leave no route in the scope and are matched against the
    app's `routes` again.
    """
    route = scope.get("route")
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    if route is not None and getattr(context, "original_route", None) is route:
        route = context
    template = getattr(route, "path_format", None)
    if template is None and "endpoint" in scope:
        probe = {"type": scope["type"], "path": scope["path"], "method": scope.get("method"),
                 "root_path": ""}
        for candidate in routes:
            if candidate.matches(probe)[0] is Match.FULL:
                template = getattr(candidate, "path_format", None)
                break
    if not template:
        return "unmatched"
    return template if template.startswith("/") else "/" + template


class RequestMetrics:
    """ASGI middleware: times every HTTP request into `histogram` (labels method, route
    template, status class), from its arrival to the last byte of the response."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # The routers rewrite path and root_path of a mounted app; keep what arrived.
        arrived = {"path": scope["path"], "root_path": scope.get("root_path", "")}
        status = [500]  # what an exception without a response amounts to

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            app = scope.get("app")
            routes = getattr(getattr(app, "router", None), "routes", ())
            route = route_template({**scope, **arrived}, routes)
            self.histogram.labels(method, route, f"{status[0] // 100}xx").observe(
                time.perf_counter() - start)


# ---------------------------------------------------------------- one registry per app


@dataclass(frozen=True)
class AppMetrics:
    """The metrics of one app: its own registry (apps made in one process, as tests make
    them, do not share series) and the request histogram its middleware records into."""

    registry: CollectorRegistry
    http_request_duration: Histogram


def create_metrics(settings: Settings) -> AppMetrics:
    registry = CollectorRegistry()
    registry.register(JobCollector(settings))
    http = Histogram(
        "prunescope_http_request_duration_seconds",
        "Time from a request's arrival to the end of its response, in this server process.",
        ["method", "route", "status"],
        registry=registry,
    )
    return AppMetrics(registry, http)


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """(body, content type) of the registry's metrics: OpenMetrics when the scraper asks for
    it in `accept`, else Prometheus's text format 0.0.4."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type

