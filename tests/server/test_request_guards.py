"""Attacks on the wire against a real server: DNS rebinding (a Host the server does not answer
to), framing by other sites, and bodies far beyond what a route takes, whatever their framing."""

from __future__ import annotations

import json
import sys
import tempfile

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from prunescope.server import auth
from prunescope.server.main import create_app
from prunescope.server.request_guards import (
    DASH_CALLBACK_BYTES,
    DASHBOARD_UPLOAD_FILE_BYTES,
    BodyLimit,
    host_name,
)
from tests.server.live_http import LiveServer, MiB, memory_rise, send_chunked, spooled_bytes

# The database only holds what these tests check (files, HTTP framing): SQLite suffices.
pytestmark = pytest.mark.not_about_the_database

ATTACK = 300 * MiB


@pytest.fixture
def local(settings):
    """A local install without accounts, as `prunescope serve` runs it on a laptop."""
    return settings.model_copy(update={"auth": "off"})


def _json(body: bytes) -> dict:
    return json.loads(body or b"{}")


# ------------------------------------------------------------------- 3: DNS rebinding


def test_a_rebound_name_cannot_drive_a_local_install(local):
    with LiveServer(create_app(local, dashboard=False)) as server:
        port = server.port
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
                "Content-Type": "application/json"}
        # The page at evil.example, its name now resolving to 127.0.0.1, reads and writes.
        status, _, body = server.request("GET", "/api/v1/projects", headers=evil)
        assert status == 400, body
        assert "PRUNESCOPE_ALLOWED_HOSTS" in _json(body)["detail"]
        status, _, body = server.request(
            "POST", "/api/v1/projects", json.dumps({"name": "p", "architecture": "mlp"}), evil)
        assert status == 400, body
        status, _, _ = server.request("GET", "/api/v1/health",
                                      headers={"Host": "attacker.example"})
        assert status == 400
        # The browser's own names for this machine still work, the port whatever it is.
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            status, _, body = server.request("GET", "/api/v1/projects", headers={"Host": host})
            assert status == 200, (host, body)
        status, _, body = server.request(
            "POST", "/api/v1/projects", json.dumps({"name": "p", "architecture": "mlp"}),
            {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}",
             "Content-Type": "application/json"})
        assert status == 201, body


def test_named_hosts_and_star(local):
    named = local.model_copy(update={"allowed_hosts": "lab.example, gpu-box"})
    with LiveServer(create_app(named, dashboard=False)) as server:
        for host, expected in (("lab.example:8050", 200), ("GPU-BOX", 200),
                               ("evil.example", 400), ("lab.example.evil.example", 400)):
            assert server.request("GET", "/api/v1/health",
                                  headers={"Host": host})[0] == expected, host
    anyone = local.model_copy(update={"allowed_hosts": "*"})
    with LiveServer(create_app(anyone, dashboard=False)) as server:
        assert server.request("GET", "/api/v1/health",
                              headers={"Host": "evil.example"})[0] == 200


def test_every_answer_forbids_framing_by_other_sites(local):
    with LiveServer(create_app(local)) as server:
        for path, host in (("/", "localhost"), ("/api/v1/projects", "localhost"),
                           ("/api/v1/projects/99", "localhost"), ("/", "evil.example")):
            status, headers, _ = server.request("GET", path, headers={"Host": host})
            assert headers.get("x-frame-options") == "SAMEORIGIN", (path, status)
            assert headers.get("content-security-policy") == "frame-ancestors 'self'"
    launcher = local.model_copy(update={"frame_ancestors": "http://localhost:8888"})
    with LiveServer(create_app(launcher, dashboard=False)) as server:
        _, headers, _ = server.request("GET", "/api/v1/health")
        assert headers["content-security-policy"] == (
            "frame-ancestors 'self' http://localhost:8888")
        # X-Frame-Options cannot name another origin; CSP governs where it is understood.
        assert "x-frame-options" not in headers


# ------------------------------------------------- 4: bodies bounded whatever their framing


def _multipart_prefix(boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"w.safetensors\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()


def test_a_chunked_upload_to_a_missing_project_is_not_spooled(local, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where multipart files spool
    with LiveServer(create_app(local, dashboard=False)) as server:
        boundary = "b0undary"
        with spooled_bytes(spool) as disk, memory_rise() as memory:
            answer = send_chunked(
                server.port, "POST", "/api/v1/projects/424242/checkpoints",
                {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                _multipart_prefix(boundary), ATTACK, f"\r\n--{boundary}--\r\n".encode())
    print(f"missing project: {answer.status}, sent {answer.sent / MiB:.0f} MiB, "
          f"spooled {disk.peak / MiB:.0f} MiB, memory +{memory.peak / MiB:.0f} MiB")
    assert answer.status == 404, answer
    assert answer.sent < 64 * MiB
    assert disk.peak < 8 * MiB


def test_a_chunked_body_meets_the_upload_limit(local):
    small = local.model_copy(update={"max_upload_bytes": 4 * MiB})
    with LiveServer(create_app(small, dashboard=False)) as server:
        status, _, body = server.request("POST", "/api/v1/projects", json.dumps(
            {"name": "p", "architecture": "mlp"}), {"Content-Type": "application/json"})
        pid = _json(body)["id"]
        boundary = "b0undary"
        answer = send_chunked(
            server.port, "POST", f"/api/v1/projects/{pid}/checkpoints",
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            _multipart_prefix(boundary), 64 * MiB, f"\r\n--{boundary}--\r\n".encode())
    assert answer.status == 413, answer
    assert "PRUNESCOPE_MAX_UPLOAD_BYTES" in _json(answer.body)["detail"]
    assert answer.sent < 48 * MiB


def test_chunked_json_to_a_projects_jobs_is_cut_off(local):
    with LiveServer(create_app(local, dashboard=False)) as server:
        status, _, body = server.request("POST", "/api/v1/projects", json.dumps(
            {"name": "p", "architecture": "mlp"}), {"Content-Type": "application/json"})
        pid = _json(body)["id"]
        with memory_rise() as memory:
            answer = send_chunked(server.port, "POST", f"/api/v1/projects/{pid}/jobs",
                                  {"Content-Type": "application/json"},
                                  b'{"kind": "analyze", "params": {"x": "', ATTACK, b'"}}')
    print(f"jobs: {answer.status}, sent {answer.sent / MiB:.0f} MiB, "
          f"memory +{memory.peak / MiB:.0f} MiB")
    assert answer.status == 413, answer
    assert "PRUNESCOPE_MAX_JSON_BYTES" in _json(answer.body)["detail"]
    assert answer.sent < 64 * MiB
    assert memory.peak < 100 * MiB


def test_chunked_json_to_a_callback_from_a_share_link_is_cut_off(settings):
    secured = settings.model_copy(update={"auth": "on"})
    _, token = auth.add_user("alice", None, token=True, settings=secured)
    alice = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with LiveServer(create_app(secured)) as server:
        _, _, body = server.request("POST", "/api/v1/projects", json.dumps(
            {"name": "p", "architecture": "mlp"}), alice)
        pid = _json(body)["id"]
        _, _, body = server.request("POST", f"/api/v1/projects/{pid}/share-links", "{}", alice)
        link = _json(body)["url"].split("/s/", 1)[1]
        status, headers, _ = server.request("GET", f"/s/{link}")
        assert status == 303
        cookie = headers["set-cookie"].split(";", 1)[0]
        with memory_rise() as memory:
            answer = send_chunked(
                server.port, "POST", "/_dash-update-component",
                {"Content-Type": "application/json", "Cookie": cookie,
                 "Origin": f"http://127.0.0.1:{server.port}"},
                b'{"output": "signed-in.children", "outputs": {"id": "signed-in", "property": '
                b'"children"}, "inputs": [{"id": "header-url", "property": "pathname", '
                b'"value": "', ATTACK, b'"}], "changedPropIds": ["header-url.pathname"]}')
    print(f"callback: {answer.status}, sent {answer.sent / MiB:.0f} MiB, "
          f"memory +{memory.peak / MiB:.0f} MiB")
    assert answer.status == 413, answer
    assert answer.sent < 64 * MiB
    assert memory.peak < 100 * MiB


def test_strangers_and_viewers_are_refused_before_their_upload_is_read(settings):
    secured = settings.model_copy(update={"auth": "on"})
    _, alice_token = auth.add_user("alice", None, token=True, settings=secured)
    _, bob_token = auth.add_user("bob", None, token=True, settings=secured)
    alice = {"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"}
    bob = {"Authorization": f"Bearer {bob_token}"}
    boundary = "b0undary"
    with LiveServer(create_app(secured, dashboard=False)) as server:
        _, _, body = server.request("POST", "/api/v1/projects", json.dumps(
            {"name": "p", "architecture": "mlp"}), alice)
        pid = _json(body)["id"]

        def upload() -> object:
            return send_chunked(
                server.port, "POST", f"/api/v1/projects/{pid}/checkpoints",
                {**bob, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                _multipart_prefix(boundary), 64 * MiB, f"\r\n--{boundary}--\r\n".encode())

        stranger = upload()
        server.request("POST", f"/api/v1/projects/{pid}/members", json.dumps({"name": "bob"}),
                       alice)
        viewer = upload()
        huge_id = send_chunked(server.port, "POST", f"/api/v1/projects/{2**70}/jobs",
                               {**bob, "Content-Type": "application/json"}, b"{", 8 * MiB)
    assert (stranger.status, viewer.status, huge_id.status) == (404, 403, 422)
    assert max(stranger.sent, viewer.sent, huge_id.sent) < 32 * MiB
    assert "not found" in _json(stranger.body)["detail"]


def test_signed_in_users_callbacks_carry_the_datasets_pages_file(settings):
    app = create_app(settings)  # no accounts: the local user
    assert DASHBOARD_UPLOAD_FILE_BYTES == sys.modules["pages.datasets"].DASHBOARD_UPLOAD_LIMIT
    body = json.dumps({"output": "signed-in.children", "outputs": {
        "id": "signed-in", "property": "children"}, "inputs": [
        {"id": "header-url", "property": "pathname", "value": "/" + "x" * (3 * MiB)}],
        "changedPropIds": ["header-url.pathname"]})
    with TestClient(app) as client:
        r = client.post("/_dash-update-component", content=body,
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text[:200]
        r = client.post("/api/v1/projects", content=body,
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "PRUNESCOPE_MAX_JSON_BYTES" in r.json()["detail"]


def test_a_share_link_visitors_lasso_fits_and_a_json_route_stays_small(settings):
    """A lasso over 27,000 geometry points sends about 4 MiB of selected points: a share
    link's visitor may send that to a callback, never to a JSON route."""
    limits = BodyLimit(None, settings)
    visitor = auth.Principal(kind="share", project_id=1)
    with auth.acting_as(visitor):
        callback, _ = limits.limit({"method": "POST", "path": "/_dash-update-component"})
        route, setting = limits.limit({"method": "POST", "path": "/api/v1/projects/1/jobs"})
    assert callback == DASH_CALLBACK_BYTES > 27_000 * 150
    assert route == settings.max_json_bytes < callback and setting == "PRUNESCOPE_MAX_JSON_BYTES"


@pytest.mark.parametrize(("host", "name"), [
    ("LocalHost:8050", "localhost"), ("[::1]:8050", "::1"), ("[::1]", "::1"),
    ("example.org.", "example.org"), ("10.0.0.7:80", "10.0.0.7"), ("evil.example:", "evil.example"),
])
def test_host_names_lose_their_port(host, name):
    assert host_name(host) == name


def test_a_websocket_naming_another_host_is_closed(local):
    with TestClient(create_app(local)) as client, pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("/_dash-ws-callback", headers={"host": "evil.example"}):
            pass
    assert closed.value.code == 1008
