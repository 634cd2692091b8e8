"""Who may do what: every API route walked with no credentials, a stranger and a viewer."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from prunescope.server import auth
from prunescope.server.cli import main as cli_main
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, Forbidden, NotFound
from prunescope.server.main import create_app
from prunescope.server.services import members, uploads, views
from prunescope.server.services.projects import get_project, list_projects
from prunescope.server.storage import artifact_store
from prunescope.server.tables import AnalysisResult, Checkpoint, Dataset, Job

MISSING = 99999
UPLOAD_HEADERS = {"Tus-Resumable": "1.0.0", "Upload-Length": "0"}


@pytest.fixture
def secured(settings):
    return settings.model_copy(update={"auth": "on"})


@pytest.fixture
def world(secured, ingest_worker):
    """alice owns a private project holding one row of every kind; carol views it; bob is a
    stranger to it. Returns the client, the bearer headers and the ids."""
    tokens = {}
    for name in ("alice", "bob", "carol"):
        _, tokens[name] = auth.add_user(name, None, token=True, settings=secured)
    headers = {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}
    with TestClient(create_app(secured, dashboard=False)) as client:
        client.params = {"wait": "true"}  # uploads answer once validated (the ingest lane)
        r = client.post("/api/v1/projects", json={"name": "private", "architecture": "mlp"},
                        headers=headers["alice"])
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        r = client.post(f"/api/v1/projects/{pid}/members",
                        json={"name": "carol", "role": "viewer"}, headers=headers["alice"])
        assert r.status_code == 201, r.text
        buf = io.BytesIO()
        np.savez(buf, values=np.arange(3.0))
        staged, digest, size = artifact_store(secured).write_stream(
            [buf.getvalue()], max_bytes=10**6)
        artifact_store(secured).adopt(staged, digest)
        with session_scope(secured) as s:
            ckpt = Checkpoint(project_id=pid, name="dense", role="dense", source="upload",
                              format="safetensors", artifact_digest=digest, size_bytes=size)
            job = Job(project_id=pid, kind="analyze")
            result = AnalysisResult(project_id=pid, kind="evaluation", artifact_digest=digest)
            dataset = Dataset(project_id=pid, name="up", source="upload", format="npz",
                              artifact_digest=digest, active=False)
            s.add_all([ckpt, job, result, dataset])
            s.flush()
            ids = {"project_id": pid, "checkpoint_id": ckpt.id, "job_id": job.id,
                   "result_id": result.id, "dataset_id": dataset.id}
        ids["bookmark_id"] = views.add_bookmark(pid, "b", f"/projects/{pid}", secured).id
        ids["link_id"] = members.create_share_link(pid, settings=secured).id
        ids.update(name="carol", upload_id="no-such-upload", view_id="no-such-view")

        def finished_upload() -> str:
            return uploads.create_upload(secured, length=size, filename="c.safetensors",
                                         sha256=digest).id

        yield client, headers, ids, finished_upload


def _multipart(*names: str) -> dict:
    return {"files": {n: (f"{n}.csv", b"a,b\n1,2\n", "text/csv") for n in names}}


# What each route needs. "public": anyone; "user": any signed-in account (it is not inside
# one project); "read" / "edit" / "own": the project's viewer / editor / owner.
# Requests carry a valid body, so what answers is the access rule, not validation.
ROUTES: dict[str, tuple[str, object]] = {
    "GET /api/v1/health": ("public", None),
    "GET /api/v1/auth/me": ("user", None),
    "GET /api/v1/architectures": ("user", None),
    "GET /api/v1/projects": ("user", None),
    "POST /api/v1/projects": ("user", lambda ids, who: {
        "json": {"name": f"of-{who}-{ids['n']}", "architecture": "mlp"}}),
    "GET /api/v1/jobs": ("user", None),
    "GET /api/v1/metrics": ("user", None),
    "POST /api/v1/uploads": ("user", lambda ids, who: {"headers": UPLOAD_HEADERS}),
    "HEAD /api/v1/uploads/{upload_id}": ("user", None),
    "GET /api/v1/uploads/{upload_id}": ("user", None),
    "PATCH /api/v1/uploads/{upload_id}": ("user", lambda ids, who: {
        "headers": {"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream"}, "content": b"x"}),
    "DELETE /api/v1/uploads/{upload_id}": ("user", lambda ids, who: {
        "headers": {"Tus-Resumable": "1.0.0"}}),
    "GET /api/v1/views/{view_id}": ("user", None),
    "GET /api/v1/projects/{project_id}": ("read", None),
    "GET /api/v1/projects/{project_id}/checkpoints": ("read", None),
    "GET /api/v1/checkpoints/{checkpoint_id}": ("read", None),
    "GET /api/v1/checkpoints/{checkpoint_id}/download": ("read", None),
    "GET /api/v1/projects/{project_id}/datasets": ("read", None),
    "GET /api/v1/datasets/{dataset_id}": ("read", None),
    "GET /api/v1/datasets/{dataset_id}/download": ("read", None),
    "GET /api/v1/projects/{project_id}/jobs": ("read", None),
    "GET /api/v1/jobs/{job_id}": ("read", None),
    "GET /api/v1/projects/{project_id}/results": ("read", None),
    "GET /api/v1/results/{result_id}": ("read", None),
    "GET /api/v1/results/{result_id}/artifact": ("read", None),
    "GET /api/v1/results/{result_id}/arrays": ("read", None),
    "GET /api/v1/results/{result_id}/arrays/{name}": ("read", lambda ids, who: {
        "params": {"format": "npy"}, "path": {"name": "values"}}),
    "GET /api/v1/projects/{project_id}/bookmarks": ("read", None),
    "GET /api/v1/projects/{project_id}/comparison": ("read", lambda ids, who: {
        "params": {"format": "parquet"}}),
    "GET /api/v1/projects/{project_id}/report": ("read", None),
    "GET /api/v1/projects/{project_id}/members": ("read", None),
    "POST /api/v1/projects/{project_id}/checkpoints": ("edit", lambda ids, who: {
        "files": {"file": ("c.safetensors", b"x", "application/octet-stream")}}),
    "POST /api/v1/projects/{project_id}/checkpoints/from-upload": ("edit", lambda ids, who: {
        "json": {"upload_id": ids["finished_upload"]()}}),
    "POST /api/v1/projects/{project_id}/datasets": ("edit", lambda ids, who: {
        "files": {"file": ("d.csv", b"label\n1\n", "text/csv")}}),
    "POST /api/v1/projects/{project_id}/datasets/builtin": ("edit", lambda ids, who: {
        "json": {"builtin": "digits", "name": "again"}}),
    "PUT /api/v1/projects/{project_id}/datasets/active": ("edit", lambda ids, who: {
        "json": {"dataset_id": ids["dataset_id"]}}),
    "POST /api/v1/projects/{project_id}/dynamics": ("edit", lambda ids, who: {
        **_multipart("trajectories", "probes", "test_predictions"),
        "data": {"run": "r", "mode": "dense"}}),
    "POST /api/v1/projects/{project_id}/jobs": ("edit", lambda ids, who: {
        "json": {"kind": "analyze"}}),
    "POST /api/v1/jobs/{job_id}/cancel": ("edit", None),
    "POST /api/v1/projects/{project_id}/bookmarks": ("edit", lambda ids, who: {
        "json": {"name": "mine", "url": f"/projects/{ids['project_id']}"}}),
    "DELETE /api/v1/bookmarks/{bookmark_id}": ("edit", None),
    "POST /api/v1/projects/{project_id}/members": ("own", lambda ids, who: {
        "json": {"name": "bob", "role": "editor"}}),
    "DELETE /api/v1/projects/{project_id}/members/{name}": ("own", None),
    "GET /api/v1/projects/{project_id}/share-links": ("own", None),
    "POST /api/v1/projects/{project_id}/share-links": ("own", lambda ids, who: {"json": {}}),
    "DELETE /api/v1/projects/{project_id}/share-links/{link_id}": ("own", None),
}


def _request(client, route: str, ids: dict, who: str, headers: dict):  # noqa: ANN001, ANN202
    method, template = route.split(" ", 1)
    ids["n"] = ids.get("n", 0) + 1
    make = ROUTES[route][1]
    kwargs = make(ids, who) if make else {}
    named = {**ids, **kwargs.pop("path", {})}
    path = re.sub(r"\{(\w+)\}", lambda m: str(named[m.group(1)]), template)
    extra = kwargs.pop("headers", {})
    return client.request(method, path, headers={**headers, **extra}, **kwargs)


def _walk_routes(app) -> set[str]:  # noqa: ANN001
    return {f"{m.upper()} {p}" for p, ms in app.openapi()["paths"].items() for m in ms}


def test_every_route_has_an_access_rule(world):
    client = world[0]
    assert _walk_routes(client.app) == set(ROUTES)


def test_walk_the_api_without_credentials(world):
    client, _, ids, finished_upload = world
    ids = {**ids, "finished_upload": finished_upload}
    for route, (rule, _) in ROUTES.items():
        r = _request(client, route, ids, "nobody", {})
        expected = 200 if rule == "public" else 401
        assert r.status_code == expected, (route, r.status_code, r.text)


def test_walk_the_api_as_a_stranger(world):
    client, headers, ids, finished_upload = world
    ids = {**ids, "finished_upload": finished_upload}
    missing = {**ids, **{k: MISSING for k in ids if k.endswith("_id") and k != "upload_id"},
               "name": "nobody-at-all"}
    for route, (rule, _) in ROUTES.items():
        r = _request(client, route, ids, "bob", headers["bob"])
        if rule in ("public", "user"):
            assert r.status_code not in (401, 403), (route, r.status_code, r.text)
            continue
        assert r.status_code == 404, (route, r.status_code, r.text)
        # The same answer as for a row that does not exist: the project's existence is secret.
        owner = _request(client, route, missing, "alice", headers["alice"])
        assert owner.status_code == 404, (route, owner.text)
        shown = r.json()["detail"]
        for key, value in ids.items():
            if key.endswith("_id") and isinstance(value, int):
                shown = re.sub(rf"\b{value}\b", str(MISSING), shown)
        assert shown == owner.json()["detail"], route


def test_walk_the_api_as_a_viewer(world):
    client, headers, ids, finished_upload = world
    ids = {**ids, "finished_upload": finished_upload}
    for route, (rule, _) in ROUTES.items():
        r = _request(client, route, ids, "carol", headers["carol"])
        if rule in ("public", "user"):
            assert r.status_code not in (401, 403), (route, r.status_code, r.text)
        elif rule == "read":
            owner = _request(client, route, ids, "alice", headers["alice"])
            assert r.status_code == owner.status_code == 200, (route, r.status_code, r.text)
            assert r.content == owner.content or route.endswith("/members")
        else:
            assert r.status_code == 403, (route, r.status_code, r.text)


def test_lists_show_only_what_the_principal_may_see(world, secured):
    client, headers, ids, _ = world
    mine = client.post("/api/v1/projects", json={"name": "bobs", "architecture": "mlp"},
                       headers=headers["bob"]).json()["id"]
    seen = {who: [p["id"] for p in client.get("/api/v1/projects", headers=h).json()["data"]]
            for who, h in headers.items()}
    assert seen == {"alice": [ids["project_id"]], "bob": [mine], "carol": [ids["project_id"]]}
    jobs = client.get("/api/v1/jobs", headers=headers["bob"]).json()
    assert jobs["count"] == 0
    assert client.get("/api/v1/jobs", headers=headers["carol"]).json()["count"] == 1
    # Without accounts (the CLI, workers): the local user owns everything.
    assert [p.id for p in list_projects(secured)] == [ids["project_id"], mine]


def test_membership_changes_take_effect_at_once(world):
    client, headers, ids, _ = world
    pid = ids["project_id"]
    members = client.get(f"/api/v1/projects/{pid}/members", headers=headers["carol"]).json()
    assert members["data"] == [{"name": "alice", "role": "owner"},
                               {"name": "carol", "role": "viewer"}]
    job = {"json": {"kind": "analyze"}, "headers": headers["carol"]}
    assert client.post(f"/api/v1/projects/{pid}/jobs", **job).status_code == 403
    r = client.post(f"/api/v1/projects/{pid}/members", json={"name": "carol", "role": "editor"},
                    headers=headers["alice"])
    assert r.json() == {"name": "carol", "role": "editor"}
    assert client.post(f"/api/v1/projects/{pid}/jobs", **job).status_code not in (403, 404)
    assert client.delete(f"/api/v1/projects/{pid}/members/carol",
                         headers=headers["alice"]).status_code == 204
    assert client.get(f"/api/v1/projects/{pid}", headers=headers["carol"]).status_code == 404
    owner_out = client.delete(f"/api/v1/projects/{pid}/members/alice", headers=headers["alice"])
    assert owner_out.status_code == 409
    unknown = client.post(f"/api/v1/projects/{pid}/members",
                          json={"name": "mallory", "role": "viewer"}, headers=headers["alice"])
    assert unknown.status_code == 404 and "users add" in unknown.json()["detail"]
    bad_role = client.post(f"/api/v1/projects/{pid}/members",
                           json={"name": "bob", "role": "owner"}, headers=headers["alice"])
    assert bad_role.status_code == 422


def test_dashboard_callbacks_meet_the_same_checks(world, secured):
    """Dash callbacks call the service layer with the request's principal, like routes do."""
    from prunescope.dashboard.app import save_bookmark

    _, _, ids, _ = world
    pid = ids["project_id"]
    carol = auth.Principal("user", user_id=3, name="carol")
    bob = auth.Principal("user", user_id=2, name="bob")
    with auth.acting_as(carol):
        assert get_project(pid, secured).id == pid
        with pytest.raises(Forbidden):
            views.add_bookmark(pid, "x", f"/projects/{pid}", secured)
        message, _ = save_bookmark({"name": "x", "url": f"/projects/{pid}/layers"})
        assert "viewer" in str(message)
    with auth.acting_as(bob), pytest.raises(NotFound):
        get_project(pid, secured)
    with auth.acting_as(auth.ANONYMOUS):
        assert list_projects(secured) == []


def test_cli_gives_an_unowned_project_an_owner(settings, capsys):
    from prunescope.server.schemas import ProjectCreate
    from prunescope.server.services.projects import create_project

    project = create_project(ProjectCreate(name="legacy", architecture="mlp"), settings)
    auth.add_user("dana", None, token=True, settings=settings)
    dana = auth.Principal("user", user_id=auth.find_user_id("dana", settings), name="dana")
    with auth.acting_as(dana), pytest.raises(NotFound):
        get_project(project.id, settings)  # made without accounts: no account sees it
    assert cli_main(["projects", "owner", "legacy", "dana"]) == 0
    with auth.acting_as(dana):
        assert get_project(project.id, settings).name == "legacy"
        assert members.list_members(project.id, settings) == [members.Member("dana", "owner")]
    assert cli_main(["projects", "owner", "legacy", "nobody"]) == 1
    assert "no user named" in capsys.readouterr().err


def test_a_private_projects_name_is_no_secret_to_guess(world, secured):
    client, headers, ids, _ = world
    # bob tries alice's private project's name: created, as if nobody had it
    mine = client.post("/api/v1/projects", json={"name": "private", "architecture": "mlp"},
                       headers=headers["bob"])
    assert mine.status_code == 201 and mine.json()["id"] != ids["project_id"]
    again = client.post("/api/v1/projects", json={"name": "private", "architecture": "mlp"},
                        headers=headers["bob"])
    assert again.status_code == 409 and "you already have" in again.json()["detail"]
    # carol sees alice's "private" (viewer) and owns none: the name finds alice's
    alice, bob = (auth.Principal("user", user_id=auth.find_user_id(n, secured), name=n)
                  for n in ("alice", "bob"))
    from prunescope.server.services.projects import find_project

    with auth.acting_as(alice):
        assert find_project("private", secured).id == ids["project_id"]
    with auth.acting_as(bob):
        assert find_project("private", secured).id == mine.json()["id"]
    # alice now also sees bob's: her own comes first
    r = client.post(f"/api/v1/projects/{mine.json()['id']}/members",
                    json={"name": "alice", "role": "viewer"}, headers=headers["bob"])
    assert r.status_code == 201
    with auth.acting_as(alice):
        assert find_project("private", secured).id == ids["project_id"]
    carol = auth.Principal("user", user_id=auth.find_user_id("carol", secured), name="carol")
    r = client.post(f"/api/v1/projects/{mine.json()['id']}/members",
                    json={"name": "carol", "role": "viewer"}, headers=headers["bob"])
    with auth.acting_as(carol), pytest.raises(Conflict, match="name one by its id"):
        find_project("private", secured)  # two others' projects of that name
    # handing bob's project to alice would give her two of one name
    with auth.acting_as(bob), pytest.raises(Conflict, match="rename one"):
        members.set_owner(mine.json()["id"], "alice", secured)


# ---------------------------------------------------------------- path traversal

SECRET = b"TOPSECRET-outside-the-store"
CLIMBS = [
    "../../../secret.txt",
    "..%2F..%2F..%2Fsecret.txt",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "..%5c..%5c..%5csecret.txt",
    "....//....//secret.txt",
    "%252e%252e%252fsecret.txt",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "prunescope.db",
    "..%2Fprunescope.db",
]
# Every route that answers with a file or a stored text, with its string parameter.
FILE_ROUTES = [
    "/api/v1/results/{result_id}/arrays/{climb}",
    "/api/v1/results/{result_id}/arrays/{climb}?format=npy",
    "/api/v1/views/{climb}",
    "/api/v1/uploads/{climb}",
    "/api/v1/checkpoints/{climb}/download",
    "/api/v1/datasets/{climb}/download",
    "/api/v1/results/{climb}/artifact",
    "/s/{climb}",
    "/assets/{climb}",
    "/_dash-component-suites/{climb}",
    "/_dash-component-suites/dash/{climb}",
]


def test_no_file_route_climbs_out_of_its_folder(settings, tmp_path):
    # The secret sits next to the data directory: a climb out of the store reaches it.
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (settings.artifacts_dir / "secret.txt").parent.mkdir(parents=True, exist_ok=True)
    (settings.resolved_data_dir / "secret.txt").write_bytes(SECRET)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        buf = io.BytesIO()
        np.savez(buf, values=np.arange(3.0))
        staged, digest, _ = artifact_store(settings).write_stream([buf.getvalue()], max_bytes=10**6)
        artifact_store(settings).adopt(staged, digest)
        pid = client.post("/api/v1/projects",
                          json={"name": "p", "architecture": "mlp"}).json()["id"]
        with session_scope(settings) as s:
            result = AnalysisResult(project_id=pid, kind="evaluation", artifact_digest=digest)
            s.add(result)
            s.flush()
            result_id = result.id
        for route in FILE_ROUTES:
            for climb in CLIMBS:
                url = route.format(result_id=result_id, climb=climb)
                for method in ("GET", "HEAD"):
                    r = client.request(method, url, follow_redirects=False)
                    if r.status_code == 200:
                        # A climb the client resolves lands on a dashboard page, not a file.
                        assert r.headers["content-type"].startswith("text/html"), url
                    elif url.startswith("/_dash-component-suites/"):
                        # Dash answers 500 for any file it does not know, climbing or not.
                        assert r.status_code in (404, 405, 500), url
                    else:
                        assert r.status_code in (400, 404, 405, 422), (method, url, r.text)
                    assert SECRET not in r.content and b"SQLite format" not in r.content
                    assert b"root:" not in r.content, url


def test_a_refused_request_uses_up_no_upload_and_stores_no_file(world, secured):
    client, headers, ids, finished_upload = world
    upload_id = finished_upload()
    pid = ids["project_id"]
    for who, status in (("carol", 403), ("bob", 404)):
        r = client.post(f"/api/v1/projects/{pid}/checkpoints/from-upload",
                        json={"upload_id": upload_id}, headers=headers[who])
        assert r.status_code == status, r.text
        assert uploads.upload_status(secured, upload_id).offset >= 0  # still there
    staging = artifact_store(secured).root / "tmp"
    before = sorted(staging.rglob("*")) if staging.exists() else []
    r = client.post(f"/api/v1/projects/{pid}/dynamics", headers=headers["carol"],
                    files={k: (f"{k}.csv", b"example\n0\n") for k in
                           ("trajectories", "probes", "test_predictions")},
                    data={"run": "r", "mode": "dense"})
    assert r.status_code == 403, r.text
    assert (sorted(staging.rglob("*")) if staging.exists() else []) == before
