"""Executors start the processes that run jobs; the local one is a supervised spawn pool."""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# The exit status of a worker that left on the KeyboardInterrupt of a SIGINT (the shell's
# 128 + signal number), so its pool can tell it from a crash.
INTERRUPTED = 128 + signal.SIGINT
# How a worker ends when it was told to stop: by one of these signals, or INTERRUPTED.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOPPED_EXITS = frozenset({INTERRUPTED, *(-s for s in STOP_SIGNALS)})
# The exit status of a worker that refuses to run here (sysexits' EX_CONFIG: an unsafe torch);
# a fresh one would refuse the same way, so its slot is left empty and says so once.
REFUSED = 78


class StopSignal:
    """What a pool's workers ask between jobs: should I stop? The read end of a pipe whose
    write end only the pool's process holds; closing it (`stop`, or that process dying)
    answers yes to every worker at once. Not a multiprocessing Event: a worker killed while
    waiting on one can leave its lock taken, and setting it then blocks the server for ever."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def is_set(self) -> bool:
        return self._reader.poll()

    def wait(self, timeout: float | None = None) -> bool:
        return self._reader.poll(timeout)


class LocalProcessPool:
    """N worker processes (spawn context), restarted when one dies, until shutdown begins.

    `target(worker_name, stop_event, *args)` must be importable (spawn pickles it by name).
    A dead process's job is not touched here: the job table notices the missing heartbeat
    and re-queues it, which is the same path a worker on another machine takes.

    A Ctrl-C or a process supervisor signals the whole process group: the workers die of the
    signal at the same moment their server begins to stop, and may be seen dead before the
    server's own handler has run. So a worker that died of a stop signal is restarted only
    if, `signal_grace` seconds later, no shutdown has begun (`begin_shutdown`); once one has,
    nothing is restarted, and `stop` accounts for every process the pool ever started.
    """

    def __init__(
        self,
        size: int,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        name_prefix: str = "worker",
        restart_delay: float = 1.0,
        signal_grace: float = 3.0,
    ) -> None:
        self.size = size
        self.target = target
        self.args = args
        self.name_prefix = name_prefix
        self.restart_delay = restart_delay
        self.signal_grace = signal_grace
        self._ctx = mp.get_context("spawn")
        reader, self._stop_writer = self._ctx.Pipe(duplex=False)
        self._stop = StopSignal(reader)
        self._procs: dict[int, mp.process.BaseProcess] = {}
        self._supervisor: threading.Thread | None = None
        # Held while starting a process and while shutdown begins: no start slips past it.
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._stopped = threading.Event()

    def _spawn(self, slot: int) -> None:
        name = f"{self.name_prefix}-{slot}"
        proc = self._ctx.Process(
            target=self.target, args=(name, self._stop, *self.args), name=name, daemon=True
        )
        proc.start()
        self._procs[slot] = proc
        log.info("started %s (pid %s)", name, proc.pid)

    def start(self) -> None:
        with self._lock:
            if self._closing.is_set():
                return
            for slot in range(self.size):
                self._spawn(slot)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def begin_shutdown(self) -> None:
        """The server is stopping: from now on no worker is started or restarted."""
        with self._lock:
            self._closing.set()

    def _supervise(self) -> None:
        stopped_since: dict[int, float] = {}  # slot → when its worker was seen dead of a signal
        while not self._closing.wait(self.restart_delay):
            for slot, proc in list(self._procs.items()):
                if proc.is_alive():
                    continue
                if proc.exitcode == REFUSED:
                    log.error("%s refused to run on this machine (see its message above); "
                              "not restarting it", proc.name)
                    del self._procs[slot]
                    continue
                if proc.exitcode in STOPPED_EXITS:
                    since = stopped_since.setdefault(slot, time.monotonic())
                    if time.monotonic() - since < self.signal_grace:
                        continue  # the signal may be the whole group's: see if we stop too
                with self._lock:
                    if self._closing.is_set():
                        break
                    log.warning("%s exited with code %s; restarting", proc.name, proc.exitcode)
                    stopped_since.pop(slot, None)
                    self._spawn(slot)
        # A restarted worker's parent-death signal (PR_SET_PDEATHSIG) follows the thread that
        # started it, this one: it lives until `stop` has seen to every worker.
        self._stopped.wait()

    def stop(self, timeout: float = 10.0) -> None:
        self.begin_shutdown()
        self._stop_writer.close()
        procs = list(self._procs.values())  # complete: nothing starts once closing
        for proc in procs:
            proc.join(timeout)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        self._stopped.set()
