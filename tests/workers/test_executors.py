"""The local pool restarts a worker that crashed, and nothing once its server is stopping:
not even a worker that died of the stop signal before the server's own handler ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from prunescope.workers.executors import REFUSED, LocalProcessPool


def idle_worker(_name: str, stop, *_args) -> None:  # noqa: ANN001
    while not stop.wait(0.05):
        pass


def refusing_worker(_name: str, _stop, *_args) -> None:  # noqa: ANN001
    sys.exit(REFUSED)  # what a worker on a torch older than 2.6 does


def _pool() -> LocalProcessPool:
    pool = LocalProcessPool(1, idle_worker, restart_delay=0.05, signal_grace=1.0)
    pool.start()
    return pool


def _pid_after(pool: LocalProcessPool, seconds: float) -> int:
    time.sleep(seconds)
    return pool._procs[0].pid


def test_a_crashed_worker_is_restarted_and_stop_ends_every_worker():
    pool = _pool()
    try:
        first = pool._procs[0].pid
        os.kill(first, signal.SIGKILL)
        assert _pid_after(pool, 0.5) != first
    finally:
        pool.stop(timeout=5)
    assert not pool._procs[0].is_alive()


def test_a_worker_stopped_by_a_signal_is_restarted_only_if_no_shutdown_follows():
    pool = _pool()
    try:
        first = pool._procs[0].pid
        os.kill(first, signal.SIGTERM)
        assert _pid_after(pool, 0.5) == first  # within the grace: waits to see
        assert _pid_after(pool, 1.0) != first  # no shutdown came: a stray signal
    finally:
        pool.stop(timeout=5)


def test_nothing_is_restarted_once_shutdown_begins():
    pool = _pool()
    try:
        first = pool._procs[0].pid
        os.kill(first, signal.SIGTERM)  # the group's signal reaches the worker first
        time.sleep(0.3)
        pool.begin_shutdown()  # then the server's handler runs
        assert _pid_after(pool, 1.5) == first and not pool._procs[0].is_alive()
    finally:
        pool.stop(timeout=5)


def test_a_worker_whose_server_is_already_gone_leaves_at_once(tmp_path):
    """A worker still starting when its server died has another parent by the time it looks."""
    code = ("from prunescope.server.worker import exit_when_orphaned\n"
            "exit_when_orphaned(1)\n"  # the parent it was started by (never this one's: pid 1)
            "print('still here')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PRUNESCOPE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0 and "still here" not in done.stdout


def test_a_worker_that_refuses_to_run_here_is_not_restarted(caplog):
    pool = LocalProcessPool(1, refusing_worker, restart_delay=0.05)
    pool.start()
    try:
        first = pool._procs[0]
        first.join(5)
        time.sleep(0.5)  # ten supervisor rounds: a restart would have happened by now
        assert first.exitcode == REFUSED and pool._procs == {}
        assert "not restarting" in caplog.text
    finally:
        pool.stop(timeout=5)
