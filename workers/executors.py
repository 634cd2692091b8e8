"""Executors start the processes that run jobs; the local one is a supervised spawn pool."""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class LocalProcessPool:
    """N worker processes (spawn context), restarted when one dies.

    `target(worker_name, stop_event, *args)` must be importable (spawn pickles it by name).
    A dead process's job is not touched here: the job table notices the missing heartbeat
    and re-queues it, which is the same path a worker on another machine takes.
    """

    def __init__(
        self,
        size: int,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        name_prefix: str = "worker",
        restart_delay: float = 1.0,
    ) -> None:
        self.size = size
        self.target = target
        self.args = args
        self.name_prefix = name_prefix
        self.restart_delay = restart_delay
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._procs: dict[int, mp.process.BaseProcess] = {}
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()

    def _spawn(self, slot: int) -> None:
        name = f"{self.name_prefix}-{slot}"
        proc = self._ctx.Process(
            target=self.target, args=(name, self._stop, *self.args), name=name, daemon=True
        )
        proc.start()
        self._procs[slot] = proc
        log.info("started %s (pid %s)", name, proc.pid)

    def start(self) -> None:
        for slot in range(self.size):
            self._spawn(slot)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._closing.wait(self.restart_delay):
            for slot, proc in list(self._procs.items()):
                if not proc.is_alive() and not self._closing.is_set():
                    log.warning("%s exited with code %s; restarting", proc.name, proc.exitcode)
                    self._spawn(slot)

    def stop(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self._stop.set()
        for proc in self._procs.values():
            proc.join(timeout)
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
