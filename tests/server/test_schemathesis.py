"""Every API operation, fed generated requests (valid and invalid) by schemathesis from the
app's own /openapi.json, answers without a 5xx and as its response schema says.

The app runs in this process (schemathesis's ASGI transport) on a real SQLite database with
accounts on, called with a real API token of a user who owns a project, so the generated ids
reach real rows as well as missing ones. Bounded: a fixed number of examples per operation.
Only on SQLite (the test makes its own database, so the PostgreSQL pass leaves it out).
"""

from __future__ import annotations

import os
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from prunescope.server import auth  # noqa: E402
from prunescope.server.config import get_settings  # noqa: E402
from prunescope.server.main import create_app  # noqa: E402

# Per operation, valid and invalid requests together: ~50 operations × this stays well within
# a minute on two cores. PRUNESCOPE_FUZZ_EXAMPLES asks for a deeper run.
EXAMPLES_PER_OPERATION = int(os.environ.get("PRUNESCOPE_FUZZ_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def fuzzed_app(tmp_path, monkeypatch):
    """The whole app (API and dashboard) with accounts on, on SQLite in `tmp_path`, and the
    headers of its one user, who owns project 1."""
    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PRUNESCOPE_DATABASE_URL", raising=False)
    # An upload's answer waits for no worker: there is none here.
    monkeypatch.setenv("PRUNESCOPE_INGEST_WAIT_SECONDS", "0.01")
    get_settings.cache_clear()
    secured = get_settings().model_copy(update={"auth": "on"})
    app = create_app(secured)
    _, token = auth.add_user("fuzzer", None, token=True, settings=secured)
    headers = {"Authorization": f"Bearer {token}", "Origin": "http://testserver"}
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        r = client.post("/api/v1/projects", json={"name": "fuzzed", "architecture": "mlp"},
                        headers=headers)
        assert r.status_code == 201, r.text
    yield app, headers
    get_settings.cache_clear()


def _strategy(operation):  # noqa: ANN001, ANN202
    """Valid and invalid requests for `operation` (invalid only where it has input to
    break)."""
    modes = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
    try:
        modes.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    except Exception:  # noqa: BLE001 - nothing to negate
        pass
    return st.one_of(modes)


@pytest.mark.slow
def test_no_operation_answers_5xx_or_off_its_schema(fuzzed_app):
    app, headers = fuzzed_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    sent = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=_strategy(operation))
        @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # noqa: ANN001
            nonlocal sent
            sent += 1
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a group of failures is no Exception
            failures.append(f"{operation.label}: {exc}")
    elapsed = time.monotonic() - started
    print(f"schemathesis: {sent} requests in {elapsed:.0f} s")
    assert not failures, "\n\n".join(failures)
