"""Log lines: JSON objects or text, tagged with the job inside `job_context` and only there."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import datetime, timezone

import pytest

from prunescope.server.logs import configure_logging, job_context


@pytest.fixture
def output():
    """configure_logging's stream; the root logger is put back as it was afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    yield stream
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_job_only_inside_its_context(output):
    configure_logging("INFO", "json", stream=output)
    log = logging.getLogger("prunescope.test")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    log.info("polling")
    with job_context(7, "w1@host:12", "prune"):
        log.warning("job %s started", 7)
        with job_context(kind="analyze"):  # a nested block keeps the outer fields
            log.info("inner \"quoted\"\nsecond line")
    log.info("idle")
    log.debug("below the level")
    entries = [json.loads(line) for line in _lines(output)]
    assert [e["message"] for e in entries] == [
        "polling", "job 7 started", "inner \"quoted\"\nsecond line", "idle"]
    assert [e.get("job_id") for e in entries] == [None, 7, 7, None]
    assert entries[1] == {**entries[1], "level": "WARNING", "logger": "prunescope.test",
                          "worker_id": "w1@host:12", "kind": "prune"}
    assert entries[2]["kind"] == "analyze" and entries[2]["worker_id"] == "w1@host:12"
    assert set(entries[0]) == set(entries[3]) == {"time", "level", "logger", "message"}
    stamp = datetime.fromisoformat(entries[0]["time"].replace("Z", "+00:00"))
    assert stamp >= before and entries[0]["time"].endswith("Z")


def test_json_keeps_the_traceback_and_extra_fields(output):
    configure_logging("INFO", "json", stream=output)
    log = logging.getLogger("prunescope.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("job failed")
    log.info("from elsewhere", extra={"job_id": 99})
    failed, tagged = (json.loads(line) for line in _lines(output))
    assert "RuntimeError: boom" in failed["exception"] and "job_id" not in failed
    assert tagged["job_id"] == 99


def test_text_format_appends_the_job(output):
    configure_logging("info", "text", stream=output)
    log = logging.getLogger("prunescope.test")
    log.info("outside")
    with job_context(12, "w2"):
        log.info("inside")
    outside, inside = _lines(output)
    assert outside.endswith("INFO prunescope.test: outside")
    assert inside.endswith("INFO prunescope.test: inside job=12 worker=w2")


def test_a_thread_starts_without_the_job(output):
    """Context variables do not follow new threads: a worker's helper threads set their own."""
    configure_logging("INFO", "json", stream=output)
    log = logging.getLogger("prunescope.test")
    with job_context(3):
        thread = threading.Thread(target=lambda: log.info("from a thread"))
        thread.start()
        thread.join()
    assert "job_id" not in json.loads(_lines(output)[0])


def test_the_format_comes_from_the_environment_and_is_checked(output, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_LOG_FORMAT", "json")
    configure_logging("INFO", stream=output)
    configure_logging("INFO", stream=output)  # replaces its handler, does not add one
    logging.getLogger("prunescope.test").info("once")
    assert [json.loads(line)["message"] for line in _lines(output)] == ["once"]
    monkeypatch.setenv("PRUNESCOPE_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure_logging("INFO")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", "text")
