"""An ingest lane in the test process: a worker thread serving only upload validation, as the
lane of `serve` does, for tests that upload and wait for the answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prunescope.server.config import Settings
from prunescope.server.worker import INGEST_KINDS, run_worker


@contextmanager
def running_ingest_lane(settings: Settings) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker, name="ingest-lane", daemon=True,
        kwargs={"settings": settings, "worker_id": "ingest-lane", "stop_event": stop,
                "kinds": INGEST_KINDS},
    )
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)
