"""Latency and errors of concurrent dashboard users while jobs run, against the bare HTTP floor.

The real server (`python -m prunescope.server.cli serve --workers 1` in a subprocess of its own
process group, temporary data directory) first gets a project on the built-in digits data with a
`train`, two `magnitude_global` prunes (0.5, 0.9) and an `analyze` job, all through the REST
API; once the analysis result exists, a long `train` in a second project keeps the worker
busy, and it is checked to be running when the load starts and still running at the end.

Then `--users` simulated users (asyncio, one `httpx.AsyncClient` with its own keep-alive
connection each) browse for `--seconds`, each looping over a session with a uniform
0–`--think-ms` pause after every request:

- page: the project page HTML, `/_dash-layout`, `/_dash-dependencies`;
- api: the project, its jobs, its checkpoints, its result listing;
- cached result: a result's metadata, its array list, one array as Parquet, and the method
  comparison (artifacts are read once and then served from the server's cache).

`--render-pages` adds the request a browser sends next to fill the page, the Dash pages
router's `POST /_dash-update-component` for `/projects/{id}`, as a class of its own.

Baseline, measured in the same run with the same users, clients and think time: every
request is `GET /api/v1/health` — the HTTP stack, middlewares and loopback with no project
work (see ../shared/BENCH.md). Floor and real phases alternate `--repeats` times after one
warm-up; tables give medians over the repeats. Latency is from sending a request to having
read its whole response, on the client, so it includes the client's own event loop (the
client shares the machine's cores with the server and the worker; its CPU is printed).
Percentiles: `numpy.percentile`, default linear interpolation (Hyndman & Fan type 7). An
error is any non-2xx answer or an exception. Peak RSS is the server process's VmHWM, reset
through /proc/<pid>/clear_refs before every phase; CPU is from /proc/<pid>/stat.

    .venv/bin/python bench/load.py [--users 50] [--seconds 30] [--think-ms 200] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
API = "/api/v1"
TARGET_P95_MS = 300.0
CLASSES = ("page", "page content", "api", "cached result")


class Call(NamedTuple):
    """One request of a browsing session."""

    klass: str
    endpoint: str
    method: str
    path: str
    body: dict[str, Any] | None = None


class Record(NamedTuple):
    klass: str
    endpoint: str
    latency_ms: float
    status: int  # 0 for an exception
    error: str | None


# ------------------------------------------------------------------ server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`prunescope serve` in its own process group, so stopping it also ends its workers."""

    def __init__(self, data_dir: Path, log_path: Path, processes: int = 1) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prunescope.server.cli", "serve", "--port", str(self.port),
             "--workers", "1", "--processes", str(processes), "--log-level", "warning"],
            cwd=ROOT,
            env={**os.environ, "PRUNESCOPE_DATA_DIR": str(data_dir)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base + API + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server did not answer /health within {timeout:.0f} s:\n"
                         f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after 20 s."""
        try:
            for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and _group_alive(self.proc):
                    time.sleep(0.1)
                if not _group_alive(self.proc):
                    break
        finally:
            self._log.close()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reaps the leader once it exits
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _children(pid: int) -> list[int]:
    """Direct child processes (the worker pool's processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")


class Usage:
    """Server CPU, worker CPU, client CPU and the server's peak RSS over one phase."""

    def __init__(self, server_pid: int, job_worker_pid: int | None = None) -> None:
        # The job worker is the busy job's (its id names its pid); every other process of the
        # server's group serves HTTP (the server itself, or its --processes children).
        children = _children(server_pid)
        self.workers = [p for p in children if p == job_worker_pid] or (
            children if job_worker_pid is None else [])
        self.servers = [server_pid, *[p for p in children if p not in self.workers]]
        self.hwm_reset = True
        for pid in self.servers:
            try:  # "5" resets the kernel's peak-RSS high-water mark (Linux 4.0+)
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                self.hwm_reset = False
        self.wall = time.perf_counter()
        self.server_cpu = sum(_cpu_seconds(p) for p in self.servers)
        self.worker_cpu = sum(_cpu_seconds(p) for p in self.workers)
        self.client_cpu = time.process_time()

    def finish(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        return {
            "server_cpu": (sum(_cpu_seconds(p) for p in self.servers) - self.server_cpu) / wall,
            "worker_cpu": (sum(_cpu_seconds(p) for p in self.workers) - self.worker_cpu) / wall,
            "client_cpu": (time.process_time() - self.client_cpu) / wall,
            "peak_rss_mib": sum(_status_kib(p, "VmHWM") for p in self.servers) / 1024,
        }


# ------------------------------------------------------------------ setup through the API


def _ok(response: httpx.Response, expected: int = 200) -> Any:
    if response.status_code != expected:
        raise SystemExit(f"{response.request.method} {response.request.url.path}: "
                         f"{response.status_code} {response.text[:500]}")
    return response.json()


def _submit(client: httpx.Client, project_id: int, kind: str, params: dict[str, Any],
            depends_on: list[int] | None = None) -> int:
    body = {"kind": kind, "params": params, "depends_on": depends_on or []}
    return _ok(client.post(f"{API}/projects/{project_id}/jobs", json=body), 201)["id"]


def _job(client: httpx.Client, job_id: int) -> dict[str, Any]:
    return _ok(client.get(f"{API}/jobs/{job_id}"))


def prepare(client: httpx.Client, busy_epochs: int, timeout: float) -> dict[str, Any]:
    """The analysed project to browse, its result and array, and the busy job's id."""
    project = _ok(client.post(f"{API}/projects", json={
        "name": "bench-load", "architecture": "cnn_small", "dataset": {"builtin": "digits"}}), 201)
    pid = project["id"]
    train = _submit(client, pid, "train", {"epochs": 8})
    prunes = [_submit(client, pid, "prune", {"method": "magnitude_global", "sparsity": s}, [train])
              for s in (0.5, 0.9)]
    analyze = _submit(client, pid, "analyze", {}, prunes)
    deadline = time.monotonic() + timeout
    while True:
        jobs = _ok(client.get(f"{API}/projects/{pid}/jobs"))["data"]
        failed = [j for j in jobs if j["state"] in ("failed", "cancelled")]
        if failed:
            raise SystemExit(f"setup job {failed[0]['id']} ({failed[0]['kind']}) "
                             f"{failed[0]['state']}: {failed[0]['error']}")
        results = _ok(client.get(f"{API}/projects/{pid}/results"))["data"]
        evaluation = [r for r in results if r["kind"] == "evaluation" and r["job_id"] == analyze]
        if evaluation:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"no analysis result after {timeout:.0f} s; jobs: "
                             f"{[(j['id'], j['kind'], j['state']) for j in jobs]}")
        time.sleep(0.5)
    result_id = evaluation[0]["id"]
    arrays = _ok(client.get(f"{API}/results/{result_id}/arrays"))["data"]
    array = _table_array(arrays)

    busy_project = _ok(client.post(f"{API}/projects", json={
        "name": "bench-load-busy", "architecture": "mlp", "dataset": {"builtin": "digits"}}), 201)
    busy = _submit(client, busy_project["id"], "train", {"epochs": busy_epochs})
    deadline = time.monotonic() + 120
    while (state := _job(client, busy)["state"]) != "running":
        if state != "queued" or time.monotonic() > deadline:
            raise SystemExit(f"the long train job {busy} is {state}, not running")
        time.sleep(0.3)
    worker_id = _job(client, busy).get("worker_id") or ""
    busy_worker_pid = int(worker_id.rsplit(":", 1)[1]) if ":" in worker_id else None
    return {"project_id": pid, "result_id": result_id, "array": array, "busy_job": busy,
            "busy_worker_pid": busy_worker_pid,
            "num_results": len(results)}


def _table_array(arrays: list[dict[str, Any]]) -> str:
    """An array with a Parquet form: "cka" or "accuracy" where present, else the first 1-D or
    2-D numeric one."""
    by_name = {a["name"]: a for a in arrays}
    for name in ("cka", "accuracy"):
        if name in by_name:
            return name
    for a in arrays:
        if 1 <= len(a["shape"]) <= 2 and a["dtype"].lstrip("<>|=")[:1] in "fiub":
            return a["name"]
    raise SystemExit(f"no array of the result has a table form: {arrays}")


def browsing_session(info: dict[str, Any], render_pages: bool) -> list[Call]:
    ids = {"id": info["project_id"], "rid": info["result_id"], "array": info["array"]}

    def get(klass: str, template: str, note: str = "") -> Call:
        return Call(klass, f"GET {template}{note}".replace("{array}", ids["array"]), "GET",
                    template.format(**ids))

    session = [
        get("page", "/projects/{id}", " (HTML)"),
        get("page", "/_dash-layout"),
        get("page", "/_dash-dependencies"),
    ]
    if render_pages:
        session.append(Call("page content", "POST /_dash-update-component (page router)",
                            "POST", "/_dash-update-component",
                            _router_body(f"/projects/{ids['id']}")))
    return session + [
        get("api", API + "/projects/{id}"),
        get("api", API + "/projects/{id}/jobs"),
        get("api", API + "/projects/{id}/checkpoints"),
        get("api", API + "/projects/{id}/results"),
        get("cached result", API + "/results/{rid}"),
        get("cached result", API + "/results/{rid}/arrays"),
        get("cached result", API + "/results/{rid}/arrays/{array}?format=parquet"),
        get("cached result", API + "/projects/{id}/comparison"),
    ]


def _router_body(pathname: str) -> dict[str, Any]:
    """What the browser posts when dash.page_container's location changes to `pathname`."""
    return {
        "output": ".._pages_content.children..._pages_store.data..",
        "outputs": [{"id": "_pages_content", "property": "children"},
                    {"id": "_pages_store", "property": "data"}],
        "inputs": [{"id": "_pages_location", "property": "pathname", "value": pathname},
                   {"id": "_pages_location", "property": "search", "value": ""}],
        "changedPropIds": ["_pages_location.pathname"],
        "state": [],
    }


FLOOR = [Call("floor", "GET /api/v1/health", "GET", f"{API}/health")]


# ------------------------------------------------------------------ simulated users


async def _user(client: httpx.AsyncClient, session: list[Call], start: int, deadline: float,
                think_s: float, rng: random.Random, records: list[Record]) -> None:
    i = start
    while time.perf_counter() < deadline:
        call = session[i % len(session)]
        i += 1
        error = None
        t0 = time.perf_counter()
        try:
            response = await client.request(call.method, call.path, json=call.body)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"{status} {response.text[:120]!r}"
        except httpx.HTTPError as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}"
        records.append(Record(call.klass, call.endpoint, (time.perf_counter() - t0) * 1000,
                              status, error))
        await asyncio.sleep(rng.uniform(0.0, think_s))


async def run_phase(clients: list[httpx.AsyncClient], session: list[Call], seconds: float,
                    think_ms: float, seed: int) -> tuple[list[Record], float]:
    """Every user browses `session` for `seconds`; (records, wall seconds until the last
    request in flight at the deadline was answered)."""
    records: list[Record] = []
    rng = random.Random(seed)
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(
        # Users start at random places in the session, so they do not move in step.
        _user(c, session, rng.randrange(len(session)), deadline, think_ms / 1000,
              random.Random(rng.random()), records)
        for c in clients
    ))
    return records, time.perf_counter() - start


def summarize(records: list[Record], wall: float, key: str) -> dict[str, dict[str, float]]:
    """Per class (key="klass") or per endpoint: requests, req/s, p50/p95/p99 ms, errors."""
    groups: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        groups[getattr(r, key)].append(r)
        if key == "klass":
            groups["all"].append(r)
    out = {}
    for name, rows in groups.items():
        latency = np.array([r.latency_ms for r in rows])
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        out[name] = {"requests": len(rows), "rps": len(rows) / wall, "p50": p50, "p95": p95,
                     "p99": p99, "errors": sum(r.error is not None for r in rows)}
    return out


# ------------------------------------------------------------------ main


def _job_state(client: httpx.Client, job_id: int) -> str:
    job = _job(client, job_id)
    return f"{job['state']} ({100 * job['progress']:.1f} %, {job['message']!r})"


async def measure(server: Server, info: dict[str, Any], args: argparse.Namespace,
                  control: httpx.Client) -> dict[str, Any]:
    session = browsing_session(info, args.render_pages)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60.0)
               for _ in range(args.users)]
    phases: dict[str, list[dict[str, Any]]] = {"floor": [], "real": []}
    states = []
    try:
        # Warm-up: connections opened, artifacts read into the server's cache, code paths hit.
        await run_phase(clients, session, args.warmup, args.think_ms, seed=-1)
        states.append(("load starts", _job_state(control, info["busy_job"])))
        for repeat in range(args.repeats):
            for name, calls in (("floor", FLOOR), ("real", session)):
                usage = Usage(server.proc.pid, info.get("busy_worker_pid"))
                records, wall = await run_phase(clients, calls, args.seconds, args.think_ms,
                                                seed=repeat)
                phases[name].append({
                    "records": records, "wall": wall, **usage.finish(),
                    "classes": summarize(records, wall, "klass"),
                    "endpoints": summarize(records, wall, "endpoint"),
                    "hwm_reset": usage.hwm_reset,
                })
                print(f"  run {repeat + 1} {name:5}: {len(records):6d} requests in {wall:.1f} s",
                      file=sys.stderr, flush=True)
        states.append(("load ends", _job_state(control, info["busy_job"])))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    return {"phases": phases, "states": states, "session": session}


def _median(runs: list[dict[str, Any]], table: str, name: str, field: str) -> float:
    values = [run[table][name][field] for run in runs if name in run[table]]
    return statistics.median(values) if values else float("nan")


def report(args: argparse.Namespace, info: dict[str, Any], measured: dict[str, Any]) -> None:
    floor, real = measured["phases"]["floor"], measured["phases"]["real"]
    session = measured["session"]
    print(f"PruneScope under load on loopback: {args.users} users, {args.seconds:g} s per phase, "
          f"think time uniform 0–{args.think_ms:g} ms, {args.repeats} alternating floor/real "
          f"runs after {args.warmup:g} s warm-up (medians over runs)")
    print("server: python -m prunescope.server.cli serve --workers 1; percentiles: "
          "numpy.percentile (linear interpolation); error = non-2xx or exception")
    print(f"browsed: project {info['project_id']} (cnn_small on digits: dense + "
          f"magnitude_global 0.5/0.9, {info['num_results']} results), result "
          f"{info['result_id']}, array {info['array']!r}")
    for when, state in measured["states"]:
        print(f"busy job {info['busy_job']} (train, {args.busy_epochs} epochs, 2nd project) "
              f"when {when}: {state}")
    print()
    header = (f"{'class':16} {'endpoints':>9} {'requests':>9} {'req/s':>8} {'p50 ms':>8} "
              f"{'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    print(header)
    counts = collections.Counter(c.klass for c in session)
    rows = [("floor: health", floor, "all", 1)]
    rows += [(k, real, k, counts[k]) for k in CLASSES if counts[k]]
    rows += [("all", real, "all", len(session))]
    for label, runs, name, n_endpoints in rows:
        errors = sum(run["classes"][name]["errors"] for run in runs if name in run["classes"])
        print(f"{label:16} {n_endpoints:9d} {_median(runs, 'classes', name, 'requests'):9.0f} "
              f"{_median(runs, 'classes', name, 'rps'):8.1f} "
              f"{_median(runs, 'classes', name, 'p50'):8.1f} "
              f"{_median(runs, 'classes', name, 'p95'):8.1f} "
              f"{_median(runs, 'classes', name, 'p99'):8.1f} {errors:7d}")
    print("(errors: summed over all runs)")
    print()
    print(f"{'endpoint (real runs)':58} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
    for call in session:
        name = call.endpoint
        errors = sum(run["endpoints"][name]["errors"] for run in real if name in run["endpoints"])
        print(f"{name:58} {_median(real, 'endpoints', name, 'requests'):9.0f} "
              f"{_median(real, 'endpoints', name, 'p50'):8.1f} "
              f"{_median(real, 'endpoints', name, 'p95'):8.1f} {errors:7d}")
    problems = collections.Counter(r.error for run in real + floor for r in run["records"]
                                   if r.error is not None)
    for error, n in problems.most_common(5):
        print(f"  error x{n}: {error}")
    print()
    hwm = "" if all(run["hwm_reset"] for run in floor + real) else " (since start: no reset)"
    for label, runs in (("floor", floor), ("real", real)):
        print(f"{label:5}: server peak RSS {statistics.median(r['peak_rss_mib'] for r in runs):.0f}"
              f" MiB{hwm}, server CPU {statistics.median(r['server_cpu'] for r in runs):.2f} "
              f"cores, worker CPU {statistics.median(r['worker_cpu'] for r in runs):.2f} cores, "
              f"client CPU {statistics.median(r['client_cpu'] for r in runs):.2f} cores "
              f"(machine: {os.cpu_count()} cores)")
    ratios = [r["classes"]["cached result"]["p95"] / f["classes"]["all"]["p95"]
              for r, f in zip(real, floor, strict=True)]
    print("per-run cached result p95 / floor p95: "
          + ", ".join(f"{r['classes']['cached result']['p95']:.0f}/"
                      f"{f['classes']['all']['p95']:.0f} ms = {q:.1f}x"
                      for r, f, q in zip(real, floor, ratios, strict=True)))
    p95 = _median(real, "classes", "cached result", "p95")
    errors = sum(run["classes"]["all"]["errors"] for run in real)
    met = "met" if p95 < TARGET_P95_MS and errors == 0 else "NOT met"
    print(f"cached result p95 = {p95:.0f} ms (target < {TARGET_P95_MS:.0f} ms: {met}), "
          f"errors = {errors}; p95 / floor p95 = {statistics.median(ratios):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="concurrent simulated users")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--think-ms", type=float, default=200.0,
                        help="pause after each request, uniform from 0 to this")
    parser.add_argument("--repeats", type=int, default=2, help="alternating floor/real pairs")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load")
    parser.add_argument("--busy-epochs", type=int, default=100_000,
                        help="epochs of the train job kept running during the load")
    parser.add_argument("--server-processes", type=int, default=1,
                        help="HTTP server processes (prunescope serve --processes)")
    parser.add_argument("--render-pages", action="store_true",
                        help="also post the Dash pages router callback that fills the page")
    parser.add_argument("--setup-timeout", type=float, default=900.0,
                        help="seconds to wait for the analysis result")
    args = parser.parse_args()
    if args.users < 1 or args.seconds <= 0 or args.repeats < 1 or args.think_ms < 0:
        parser.error("--users, --seconds and --repeats must be positive, --think-ms >= 0")

    # SIGTERM ends the run like Ctrl-C: through the `finally` that stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="prunescope-load-") as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", args.server_processes)
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.base, timeout=60.0) as control:
                t0 = time.perf_counter()
                info = prepare(control, args.busy_epochs, args.setup_timeout)
                print(f"setup (train, 2 prunes, analyze, busy job running) took "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                measured = asyncio.run(measure(server, info, args, control))
                if server.proc.poll() is not None:
                    raise SystemExit(f"the server died during the load:\n{server.log_tail()}")
            report(args, info, measured)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
