"""`prunescope serve` and `demo`: the web server with its local worker pools, which stop with
it whatever stops it (a Ctrl-C or a supervisor's SIGTERM to the whole process group)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from prunescope.server.config import Settings


class _Terminated(Exception):
    """SIGTERM, raised where the process is, so the pools are stopped on the way out."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM's default action ends the process on the spot, and uvicorn re-raises the SIGTERM
    it shut down for: no `finally` would run and workers would be left behind. Here it unwinds
    instead; the process then ends by SIGTERM as before, its pools stopped."""

    def terminated(_sig: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_uvicorn(settings: Settings, app: Any, host: str, port: int, log_level: str,
                 pools: list[Any]) -> None:
    import uvicorn

    if settings.server_processes > 1:  # each process builds its own app from the env
        # uvicorn's process manager handles the signals; the pools stop once it returns (a
        # worker dying of the group's signal meanwhile waits out the pool's grace).
        uvicorn.run("prunescope.server.main:app_from_environment", factory=True, host=host,
                    port=port, log_level=log_level, workers=settings.server_processes)
        return

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Shutdown begins now, not when the last connection has closed: no restarts.
            for pool in pools:
                getattr(pool, "begin_shutdown", lambda: None)()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    server.run()
    if not server.started:  # e.g. the port is taken; uvicorn has said why
        sys.exit(3)


def serve(host: str, port: int, log_level: str, demo: bool) -> int:
    """Serve until stopped; the exit status."""
    with _sigterm_unwinds():
        return _serve(host, port, log_level, demo)
    return 128 + signal.SIGTERM  # SIGTERM's default is ignored by a container's pid 1


def _serve(host: str, port: int, log_level: str, demo: bool) -> int:
    from prunescope.server.auth import auth_enabled, startup_problem
    from prunescope.server.config import get_settings
    from prunescope.server.db import upgrade_database
    from prunescope.server.main import create_app
    from prunescope.server.worker import INGEST_KINDS, worker_process_main
    from prunescope.workers.executors import LocalProcessPool

    settings = get_settings()
    upgrade_database(settings)
    if problem := startup_problem(settings):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if settings.insecure and not auth_enabled(settings):
        print(f"warning: serving on {host} without sign-in (--insecure): anyone who "
              "reaches this port can read and change every project", file=sys.stderr)
    url = f"http://{host}:{port}/"
    printer = None
    if demo:
        from prunescope.server.demo import TerminalProgress, ensure_demo_projects

        project_ids = ensure_demo_projects(settings)
        url = f"http://{host}:{port}/projects/{project_ids[0]}"
        printer = TerminalProgress(project_ids, settings, url)
    app = create_app(settings) if settings.server_processes == 1 else None
    pools: list[Any] = []
    try:
        if settings.executor == "ray":
            from prunescope.server.ray_executor import RayExecutor

            pools.append(RayExecutor(settings))
            pools[0].start()
            where = f"jobs run as Ray tasks on {pools[0].address or 'a local Ray instance'}"
        else:
            # Uploads are validated by a worker (torch stays out of this process); a lane of
            # its own keeps that quick while the pool runs long jobs.
            lanes = settings.ingest_workers if settings.workers else 0
            pools += [LocalProcessPool(settings.workers, worker_process_main),
                      LocalProcessPool(lanes, worker_process_main, (INGEST_KINDS,),
                                       name_prefix="ingest")]
            if settings.workers:
                for pool in pools:
                    pool.start()
            where = f"{settings.workers} local worker{'s' if settings.workers != 1 else ''}"
            if lanes:
                where += f" and {lanes} for uploads"
        print(f"PruneScope on {url} (data in {settings.resolved_data_dir}, {where})", flush=True)
        if printer:
            printer.start()
        _run_uvicorn(settings, app, host, port, log_level, pools)
    finally:
        if printer:
            printer.stop.set()
        for pool in pools:
            pool.stop()
    return 0
