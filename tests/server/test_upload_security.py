"""Uploads as an attacker with an account or a share link meets them, over a real server: no
weights by hash from another's project, no use of another's upload, nothing consumed before
access is checked."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
import torch
import uvicorn
from safetensors.torch import save as safetensors_bytes

from prunescope.models.registry import create_model, default_config
from prunescope.server import auth
from prunescope.server.main import create_app

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}
# Parts of an upload's answer that differ between any two uploads, whoever asks.
PER_UPLOAD_FIELDS = ("id", "expires_at")
PER_UPLOAD_HEADERS = ("location", "upload-expires", "date")


@pytest.fixture
def secured(settings):
    return settings.model_copy(update={"auth": "on"})


@pytest.fixture
def server(secured, ingest_worker):
    """The app with accounts on, served by uvicorn on loopback; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(secured), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    live = uvicorn.Server(config)
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not live.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        live.should_exit = True
        thread.join(10)


@pytest.fixture
def people(secured, server):
    """Clients for alice (owns a private project), carol (a viewer of it) and bob (a
    stranger with a project of his own), and the project ids."""
    clients = {}
    for name in ("alice", "bob", "carol"):
        _, token = auth.add_user(name, None, token=True, settings=secured)
        clients[name] = httpx.Client(base_url=server, timeout=60,
                                     headers={"Authorization": f"Bearer {token}"},
                                     params={"wait": "true"})
    alice, bob = clients["alice"], clients["bob"]
    ids = {
        "alice": _project(alice, "private"),
        "alice2": _project(alice, "second"),
        "bob": _project(bob, "bobs"),
    }
    r = alice.post(f"/api/v1/projects/{ids['alice']}/members",
                   json={"name": "carol", "role": "viewer"})
    assert r.status_code == 201, r.text
    yield clients, ids
    for client in clients.values():
        client.close()


def _project(client: httpx.Client, name: str) -> int:
    r = client.post("/api/v1/projects", json={"name": name, "architecture": "mlp"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _weights() -> bytes:
    torch.manual_seed(0)
    model = create_model("mlp", **default_config("mlp"))
    return safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()})


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _create(client: httpx.Client, length: int, **metadata: str) -> httpx.Response:
    return client.post("/api/v1/uploads", headers={
        **TUS, "Upload-Length": str(length),
        "Upload-Metadata": _metadata(filename="weights.safetensors", **metadata)})


def _send(client: httpx.Client, location: str, data: bytes, offset: int = 0) -> httpx.Response:
    return client.patch(location, content=data[offset:],
                        headers={**CHUNK, "Upload-Offset": str(offset)})


def _adopt(client: httpx.Client, project_id: int, upload_id: str, name: str) -> httpx.Response:
    return client.post(f"/api/v1/projects/{project_id}/checkpoints/from-upload",
                       json={"upload_id": upload_id, "name": name})


def _checkpoints(client: httpx.Client, project_id: int) -> list[dict]:
    r = client.get(f"/api/v1/projects/{project_id}/checkpoints")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _without(response: httpx.Response) -> tuple[int, dict, dict]:
    """An upload's answer less what any two uploads differ in (their id and expiry)."""
    body = {k: v for k, v in response.json().items() if k not in PER_UPLOAD_FIELDS}
    headers = {k: v for k, v in response.headers.items() if k not in PER_UPLOAD_HEADERS}
    return response.status_code, body, headers


@pytest.fixture
def stored(people):
    """alice's weights uploaded (resumable) into her private project: (bytes, digest)."""
    clients, ids = people
    alice = clients["alice"]
    data = _weights()
    r = _create(alice, len(data))
    assert r.status_code == 201, r.text
    assert _send(alice, r.headers["location"], data).status_code == 204
    r = _adopt(alice, ids["alice"], r.json()["id"], "dense")
    assert r.status_code == 201, r.text
    digest = hashlib.sha256(data).hexdigest()
    assert r.json()["artifact_digest"] == digest
    return data, digest


# ---------------------------------------------------------- 1. private weights by hash


def test_a_stranger_gets_no_weights_by_declaring_their_hash(people, stored):
    clients, ids = people
    bob = clients["bob"]
    data, digest = stored
    # bob saw the digest somewhere (a share link, a screenshot) and declares it with the size.
    attack = _create(bob, len(data), sha256=digest)
    assert attack.status_code == 201, attack.text
    assert attack.json()["complete"] is False and attack.json()["offset"] == 0
    assert attack.headers["upload-offset"] == "0"
    # Nothing to adopt: the upload waits for bytes bob does not have.
    adopt = _adopt(bob, ids["bob"], attack.json()["id"], "stolen")
    assert adopt.status_code == 409, adopt.text
    assert _checkpoints(bob, ids["bob"]) == []
    # And the answer says nothing of what the store holds: alike for a hash nobody stored.
    unknown = _create(bob, len(data), sha256=hashlib.sha256(b"never stored").hexdigest())
    assert _without(attack)[0] == _without(unknown)[0]
    assert {**_without(attack)[1], "sha256": None} == _without(unknown)[1]
    assert _without(attack)[2] == _without(unknown)[2]
    head = [bob.head(r.headers["location"], headers=TUS) for r in (attack, unknown)]
    assert [h.headers["upload-offset"] for h in head] == ["0", "0"]


def test_a_removed_member_loses_the_instant_copy(people, stored):
    clients, ids = people
    alice, carol = clients["alice"], clients["carol"]
    data, digest = stored
    # A viewer may download these weights anyway: declaring their hash saves the transfer.
    member = _create(carol, len(data), sha256=digest)
    assert member.status_code == 201 and member.json()["complete"] is True
    assert member.headers["upload-offset"] == str(len(data))
    r = alice.delete(f"/api/v1/projects/{ids['alice']}/members/carol")
    assert r.status_code == 204, r.text
    removed = _create(carol, len(data), sha256=digest)
    assert removed.status_code == 201 and removed.json()["complete"] is False
    assert removed.json()["offset"] == 0


def test_members_keep_the_instant_copy_and_holders_store_one(people, stored, secured):
    clients, ids = people
    alice, bob = clients["alice"], clients["bob"]
    data, digest = stored
    again = _create(alice, len(data), sha256=digest)
    assert again.status_code == 201 and again.json()["complete"] is True
    r = _adopt(alice, ids["alice2"], again.json()["id"], "copy")
    assert r.status_code == 201 and r.json()["artifact_digest"] == digest
    # bob holds the same bytes: he sends them and gets his checkpoint, stored once.
    held = _create(bob, len(data), sha256=digest)
    assert held.json()["complete"] is False
    assert _send(bob, held.headers["location"], data).status_code == 204
    r = _adopt(bob, ids["bob"], held.json()["id"], "mine")
    assert r.status_code == 201 and r.json()["artifact_digest"] == digest
    stored_files = [p.name for p in (secured.artifacts_dir / "sha256").rglob("*") if p.is_file()]
    assert stored_files.count(digest) == 1


# ---------------------------------------------------------- 2. uploads belong to their creator


def _half_upload(client: httpx.Client, data: bytes) -> tuple[str, str]:
    r = _create(client, len(data))
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    assert _send(client, location, data[: len(data) // 2]).status_code == 204
    return location, r.json()["id"]


def _answers(client: httpx.Client, location: str, upload_id: str, project_id: int,
             data: bytes) -> dict[str, tuple[int, str]]:
    """Every route that takes an upload id, as `client`: (status, detail without the id)."""
    offset = len(data) // 2
    answers = {
        "HEAD": client.head(location, headers=TUS),
        "GET": client.get(location),
        "PATCH": _send(client, location, data, offset),
        "from-upload": _adopt(client, project_id, upload_id, "taken"),
        "DELETE": client.delete(location, headers=TUS),
    }
    return {route: (r.status_code, _detail(r).replace(upload_id, "<id>"))
            for route, r in answers.items()}


def _detail(response: httpx.Response) -> str:
    if not response.content:  # HEAD, and a 204
        return ""
    return str(response.json().get("detail", response.json()))


def test_another_users_upload_answers_like_an_unknown_one(people):
    clients, ids = people
    alice, bob = clients["alice"], clients["bob"]
    data = _weights()
    location, upload_id = _half_upload(alice, data)
    taken = _answers(bob, location, upload_id, ids["bob"], data)
    unknown_id = "0" * 32
    unknown = _answers(bob, location.replace(upload_id, unknown_id), unknown_id, ids["bob"],
                       data)
    assert taken == unknown
    assert {status for status, _ in taken.values()} == {404}
    # alice's upload is untouched: same offset, and she finishes and adopts it.
    head = alice.head(location, headers=TUS)
    assert head.status_code == 200 and head.headers["upload-offset"] == str(len(data) // 2)
    assert _send(alice, location, data, len(data) // 2).status_code == 204
    assert _adopt(alice, ids["alice"], upload_id, "dense").status_code == 201
    assert _checkpoints(bob, ids["bob"]) == []


def _finish_upload(client: httpx.Client, upload_id: str, project_id: int) -> str:
    """The project page's upload callback, run as the browser runs it; what it shows."""
    body = {
        "output": "..upload-message.children...upload-job.data...upload-poll.disabled..",
        "outputs": [{"id": "upload-message", "property": "children"},
                    {"id": "upload-job", "property": "data"},
                    {"id": "upload-poll", "property": "disabled"}],
        "inputs": [{"id": "upload-event", "property": "data",
                    "value": {"upload_id": upload_id, "filename": "weights.safetensors"}}],
        "state": [{"id": "upload-name", "property": "value", "value": "taken"},
                  {"id": "upload-role", "property": "value", "value": None},
                  {"id": "project-id", "property": "data", "value": project_id}],
        "changedPropIds": ["upload-event.data"],
    }
    r = client.post("/_dash-update-component", json=body,
                    headers={"Origin": str(client.base_url).rstrip("/")})
    assert r.status_code == 200, r.text
    return str(r.json()["response"]["upload-message"]["children"])


def _share_visitor(alice: httpx.Client, project_id: int) -> httpx.Client:
    r = alice.post(f"/api/v1/projects/{project_id}/share-links", json={})
    assert r.status_code == 201, r.text
    visitor = httpx.Client(base_url=alice.base_url, timeout=60)
    opened = visitor.get(urlsplit(r.json()["url"]).path, follow_redirects=False)
    assert opened.status_code == 303, opened.text
    assert auth.SHARE_COOKIE in visitor.cookies
    return visitor


def test_the_upload_callback_checks_access_and_owner_before_consuming(people):
    clients, ids = people
    alice, bob = clients["alice"], clients["bob"]
    data = _weights()
    r = _create(alice, len(data))
    location, upload_id = r.headers["location"], r.json()["id"]
    assert _send(alice, location, data).status_code == 204

    # bob, into alice's project (he is a stranger to it): refused as for a missing project.
    shown = _finish_upload(bob, upload_id, ids["alice"])
    assert f"project {ids['alice']} not found" in shown
    # bob, into his own project: alice's upload is unknown to him.
    shown = _finish_upload(bob, upload_id, ids["bob"])
    assert shown == _finish_upload(bob, "0" * 32, ids["bob"]).replace("0" * 32, upload_id)
    assert "not found" in shown
    # a visitor of alice's share link: read-only, nothing consumed.
    visitor = _share_visitor(alice, ids["alice"])
    try:
        assert "read-only" in _finish_upload(visitor, upload_id, ids["alice"])
        origin = {"Origin": str(visitor.base_url).rstrip("/")}
        assert visitor.post("/api/v1/uploads", headers={**TUS, **origin, "Upload-Length": "1"},
                            ).status_code == 403
        assert visitor.get(location).status_code == 403
    finally:
        visitor.close()
    assert _checkpoints(bob, ids["bob"]) == []
    # After all that, alice's upload is whole and hers.
    state = alice.get(location)
    assert state.status_code == 200 and state.json()["complete"] is True
    shown = _finish_upload(alice, upload_id, ids["alice"])
    assert "not found" not in shown and "read-only" not in shown


def test_the_share_link_visitor_cannot_use_uploads_through_the_service(people, secured):
    """The service layer refuses a share-link visitor by itself, whatever route reaches it."""
    from prunescope.server.errors import Forbidden
    from prunescope.server.services import uploads

    clients, ids = people
    alice = clients["alice"]
    data = _weights()
    location, upload_id = _half_upload(alice, data)
    visitor = auth.Principal("share", project_id=ids["alice"], name="share link",
                             share_link_id=1)
    with auth.acting_as(visitor):
        with pytest.raises(Forbidden, match="share link"):
            uploads.create_upload(secured, length=1)
        for call in (uploads.upload_status, uploads.abort_upload):
            with pytest.raises(Forbidden, match="share link"):
                call(secured, upload_id)
    assert alice.head(location, headers=TUS).status_code == 200


def test_an_upload_from_before_owners_were_kept_is_the_local_users_only(settings):
    """A sidecar written before uploads recorded their creator names nobody: a signed-in user
    starts again (tus clients do so on the 404), the local user may still finish it."""
    import json

    from prunescope.server.errors import NotFound
    from prunescope.server.services import uploads

    created = uploads.create_upload(settings, length=4)
    sidecar = settings.uploads_dir / f"{created.id}.json"
    record = json.loads(sidecar.read_text())
    assert record["owner"] == "local"
    del record["owner"]
    sidecar.write_text(json.dumps(record))
    with auth.acting_as(auth.Principal("user", user_id=1, name="alice")), \
            pytest.raises(NotFound):
        uploads.upload_status(settings, created.id)
    assert uploads.upload_status(settings, created.id).offset == 0
