"""Share links: read-only, one project (or one view), revocable, expiring, stored hashed."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from prunescope.server import auth
from prunescope.server.db import session_scope
from prunescope.server.errors import Forbidden
from prunescope.server.main import create_app
from prunescope.server.services import views
from prunescope.server.tables import ShareLink, utcnow

ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def secured(settings):
    return settings.model_copy(update={"auth": "on"})


@pytest.fixture
def setup(secured):
    """alice's two projects, her bearer headers, and an app with accounts on."""
    _, token = auth.add_user("alice", None, token=True, settings=secured)
    alice = {"Authorization": f"Bearer {token}"}
    app = create_app(secured, dashboard=False)
    with TestClient(app) as owner:
        pids = [
            owner.post("/api/v1/projects", json={"name": n, "architecture": "mlp"},
                       headers=alice).json()["id"]
            for n in ("shared", "other")
        ]
    return app, alice, pids


def _link(app, alice, pid: int, **body) -> dict:  # noqa: ANN001
    with TestClient(app) as owner:
        r = owner.post(f"/api/v1/projects/{pid}/share-links", json=body, headers=alice)
    assert r.status_code == 201, r.text
    return r.json()


def _visit(app, url: str) -> TestClient:  # noqa: ANN001
    """A browser without an account that opened the link."""
    visitor = TestClient(app)
    r = visitor.get(url.removeprefix("http://testserver"), follow_redirects=False)
    assert r.status_code == 303, r.text
    return visitor


def test_token_is_long_random_and_stored_hashed(setup, secured):
    app, alice, (pid, _) = setup
    first, second = _link(app, alice, pid), _link(app, alice, pid)
    token = first["url"].rsplit("/s/", 1)[1]
    assert len(token) >= 43 and token != second["url"].rsplit("/s/", 1)[1]
    with session_scope(secured) as s:
        stored = s.scalars(select(ShareLink.token_hash).order_by(ShareLink.id)).all()
    assert stored[0] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in "".join(stored)
    with TestClient(app) as owner:
        listed = owner.get(f"/api/v1/projects/{pid}/share-links", headers=alice).json()
    assert listed["count"] == 2 and "url" not in listed["data"][0]


def test_a_link_opens_its_project_read_only_and_nothing_else(setup):
    app, _alice, (pid, other) = setup
    link = _link(app, _alice, pid)
    visitor = _visit(app, link["url"])
    opened = visitor.get(link["url"].removeprefix("http://testserver"), follow_redirects=False)
    assert opened.headers["location"] == f"/projects/{pid}"
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 200
    assert [p["id"] for p in visitor.get("/api/v1/projects").json()["data"]] == [pid]
    assert visitor.get(f"/api/v1/projects/{other}").status_code == 404
    assert visitor.get("/api/v1/auth/me").json() == {
        "kind": "share", "name": "share link", "project_id": pid}
    refused = [
        visitor.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "analyze"}, headers=ORIGIN),
        visitor.post("/api/v1/projects", json={"name": "x", "architecture": "mlp"},
                     headers=ORIGIN),
        visitor.post(f"/api/v1/projects/{pid}/share-links", json={}, headers=ORIGIN),
        visitor.get(f"/api/v1/projects/{pid}/share-links"),
        visitor.post("/api/v1/uploads", headers={**ORIGIN, "Upload-Length": "1"}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    # Another project's pages send the visitor back to what was shared.
    away = visitor.get(f"/projects/{other}", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == f"/projects/{pid}"


def test_revoking_cuts_access_at_once(setup):
    app, alice, (pid, _) = setup
    link = _link(app, alice, pid)
    visitor = _visit(app, link["url"])
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 200
    with TestClient(app) as owner:
        r = owner.delete(f"/api/v1/projects/{pid}/share-links/{link['id']}", headers=alice)
        assert r.status_code == 204
        listed = owner.get(f"/api/v1/projects/{pid}/share-links", headers=alice).json()
    assert listed["data"][0]["revoked"] is True
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 401
    again = visitor.get(link["url"].removeprefix("http://testserver"), follow_redirects=False)
    assert again.status_code == 404


def test_expired_links_are_refused(setup, secured):
    app, alice, (pid, _) = setup
    link = _link(app, alice, pid, expires_in_hours=1)
    visitor = _visit(app, link["url"])
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 200
    with session_scope(secured) as s:
        s.execute(update(ShareLink).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 401
    with TestClient(app) as owner:
        bad = owner.post(f"/api/v1/projects/{pid}/share-links",
                         json={"expires_in_hours": 0}, headers=alice)
    assert bad.status_code == 422


def test_a_link_to_one_view_opens_only_that_view(setup):
    app, alice, (pid, _) = setup
    view = f"/projects/{pid}/layers?checkpoint=dense"
    link = _link(app, alice, pid, view_path=view)
    assert link["view_path"] == view
    visitor = TestClient(app)
    opened = visitor.get(link["url"].removeprefix("http://testserver"), follow_redirects=False)
    assert opened.headers["location"] == view
    # Its own view (any query) passes the gate; other pages of the project send it back.
    assert visitor.get(f"/projects/{pid}/layers?x=1", follow_redirects=False).status_code != 303
    elsewhere = visitor.get(f"/projects/{pid}/geometry", follow_redirects=False)
    assert elsewhere.status_code == 303 and elsewhere.headers["location"] == view
    # The API would reach the project's other data: a one-view link does not open it.
    assert visitor.get(f"/api/v1/projects/{pid}/results").status_code == 403


@pytest.mark.parametrize(
    "view_path",
    ["https://evil.example/projects/1", "//evil.example/x", "/projects/2/layers",
     "/projects/{pid}/../../etc/passwd", "/login"],
)
def test_a_view_must_be_a_page_of_the_project(setup, view_path):
    app, alice, (pid, _) = setup
    with TestClient(app) as owner:
        r = owner.post(f"/api/v1/projects/{pid}/share-links",
                       json={"view_path": view_path.format(pid=pid)}, headers=alice)
    assert r.status_code == 422, r.text


def test_unknown_tokens_open_nothing(setup):
    app, _, (pid, _) = setup
    visitor = TestClient(app)
    assert visitor.get("/s/not-a-token", follow_redirects=False).status_code == 404
    visitor.cookies.set(auth.SHARE_COOKIE, "forged")
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 401


def test_share_visitors_change_nothing_through_dashboard_callbacks(setup, secured):
    from prunescope.dashboard.app import save_bookmark, signed_in_as

    _, _, (pid, _) = setup
    visitor = auth.Principal("share", project_id=pid, name="share link", share_link_id=1)
    with auth.acting_as(visitor):
        with pytest.raises(Forbidden, match="read-only"):
            views.add_bookmark(pid, "x", f"/projects/{pid}", secured)
        message, _ = save_bookmark({"name": "x", "url": f"/projects/{pid}/layers"})
        assert "read-only" in str(message)
        assert "read-only" in str(signed_in_as("/"))


def _callback(client: TestClient, output: str, inputs: list[dict]) -> int:
    """Run a callback as the browser would; its status code."""
    parts = [o.rpartition(".") for o in output.strip(".").split("...")]
    outputs = [{"id": c, "property": p} for c, _, p in parts]
    body = {"output": output, "outputs": outputs if output.startswith("..") else outputs[0],
            "inputs": inputs, "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"]}
    return client.post("/_dash-update-component", json=body, headers=ORIGIN).status_code


def test_a_one_view_link_runs_only_that_views_callbacks(secured):
    _, token = auth.add_user("alice", None, token=True, settings=secured)
    alice = {"Authorization": f"Bearer {token}"}
    app = create_app(secured)  # with the dashboard
    with TestClient(app) as owner:
        pid = owner.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"},
                         headers=alice).json()["id"]
        view = f"/projects/{pid}/layers?metric=cka"
        one_view = owner.post(f"/api/v1/projects/{pid}/share-links", json={"view_path": view},
                              headers=alice).json()
        whole = owner.post(f"/api/v1/projects/{pid}/share-links", json={},
                           headers=alice).json()
    router = [{"id": "_pages_location", "property": "pathname", "value": f"/projects/{pid}/layers"},
              {"id": "_pages_location", "property": "search", "value": "?metric=cka"}]
    elsewhere = [dict(router[0], value=f"/projects/{pid}/geometry"), router[1]]
    content = ".._pages_content.children..._pages_store.data.."
    attention = ("attention-download.data", [{"id": "attention-csv", "property": "n_clicks",
                                              "value": 1}])
    layers = ("metric-download.data", [{"id": "metric-csv", "property": "n_clicks", "value": 1}])
    header = ("signed-in.children", [{"id": "header-url", "property": "pathname",
                                      "value": f"/projects/{pid}/layers"}])

    visitor = _visit(app, one_view["url"])
    visitor.get(f"/projects/{pid}/layers")  # the page's first request sets up Dash's router
    assert _callback(visitor, content, router) == 200  # its own page
    assert _callback(visitor, content, elsewhere) == 403  # another page of the project
    assert _callback(visitor, *header) == 200
    assert _callback(visitor, *layers) != 403  # its page's (the data may be missing: 204)
    assert _callback(visitor, *attention) == 403

    project_wide = _visit(app, whole["url"])
    assert _callback(project_wide, content, elsewhere) == 200
    assert _callback(project_wide, *attention) != 403
