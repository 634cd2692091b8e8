"""Log output of servers and workers: plain text or JSON lines, each tagged with its job."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Any

LOG_FORMATS = ("text", "json")
JOB_FIELDS = ("job_id", "worker_id", "kind")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The job the current thread or task works on; a new thread starts without one.
_job: ContextVar[dict[str, Any] | None] = ContextVar("prunescope_log_job", default=None)


@contextmanager
def job_context(
    job_id: int | None = None, worker_id: str | None = None, kind: str | None = None
) -> Iterator[None]:
    """Tag every log record made inside the block with the job (and worker, and job kind).

    Nested blocks add to the outer one: `with job_context(worker_id=w)` around a worker's
    loop and `with job_context(job_id, kind=k)` around one job give that job's records all
    three. Fields left as None keep the outer block's value.
    """
    given = {"job_id": job_id, "worker_id": worker_id, "kind": kind}
    reset = _job.set({**(_job.get() or {}), **{k: v for k, v in given.items() if v is not None}})
    try:
        yield
    finally:
        _job.reset(reset)


class JobFields(logging.Filter):
    """Copies the current `job_context` onto each record (fields passed with `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_job.get() or {}).items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the job
    fields that are set, and `exception` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextWithJob(logging.Formatter):
    """`TEXT_FORMAT`, then ` job=<id>` and ` worker=<id>` when the record has them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        for key, label in (("job_id", "job"), ("worker_id", "worker")):
            value = getattr(record, key, None)
            if value is not None:
                line += f" {label}={value}"
        return line


def configure_logging(
    level: str = "INFO", fmt: str | None = None, stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger's records to `stream` (stderr) at `level`, as `fmt`: "text"
    (a line per record, ending in `job=<id>` inside a `job_context`) or "json" (one JSON
    object per line, for a log collector).

    `fmt=None` reads the environment variable PRUNESCOPE_LOG_FORMAT ("text" when unset).
    Use it instead of `logging.basicConfig`; calling it again replaces the handler it
    installed before instead of adding another. Returns the handler.
    """
    fmt = (fmt or os.environ.get("PRUNESCOPE_LOG_FORMAT") or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use 'text' or 'json' "
                         "(PRUNESCOPE_LOG_FORMAT)")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(JobFields())
    handler.setFormatter(JsonLines() if fmt == "json" else TextWithJob())
    handler.set_name("prunescope")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "prunescope"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
