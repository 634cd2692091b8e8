"""What a share link's visitor must not learn or run: the project's members, and (a link to one
view) the callbacks of the dashboard's other pages."""

from __future__ import annotations

import inspect

from fastapi.testclient import TestClient

from prunescope.server import auth
from prunescope.server.main import create_app

ORIGIN = {"Origin": "http://testserver"}


def _owner_project_and_links(secured, app):  # noqa: ANN001, ANN202
    _, token = auth.add_user("alice", None, token=True, settings=secured)
    auth.add_user("bob", "bob-password-1", token=False, settings=secured)
    alice = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as owner:
        pid = owner.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"},
                         headers=alice).json()["id"]
        owner.post(f"/api/v1/projects/{pid}/members", json={"name": "bob"}, headers=alice)
        whole = owner.post(f"/api/v1/projects/{pid}/share-links", json={},
                           headers=alice).json()
        one_view = owner.post(f"/api/v1/projects/{pid}/share-links",
                              json={"view_path": f"/projects/{pid}/layers"},
                              headers=alice).json()
    return alice, pid, whole, one_view


def _visit(app, url: str) -> TestClient:  # noqa: ANN001
    visitor = TestClient(app)
    assert visitor.get(url.removeprefix("http://testserver"),
                       follow_redirects=False).status_code == 303
    return visitor


def test_a_project_link_does_not_show_who_the_members_are(settings):
    secured = settings.model_copy(update={"auth": "on"})
    app = create_app(secured, dashboard=False)
    alice, pid, whole, _ = _owner_project_and_links(secured, app)
    visitor = _visit(app, whole["url"])
    r = visitor.get(f"/api/v1/projects/{pid}/members")
    assert r.status_code == 403, r.text
    assert "bob" not in r.text and "alice" not in r.text
    assert "sign in" in r.json()["detail"]
    assert visitor.get(f"/api/v1/projects/{pid}").status_code == 200  # the project still opens
    with TestClient(app) as owner:
        names = [m["name"] for m in owner.get(f"/api/v1/projects/{pid}/members",
                                              headers=alice).json()["data"]]
    assert names == ["alice", "bob"]


def test_a_one_view_link_runs_no_callback_of_another_page(settings):
    secured = settings.model_copy(update={"auth": "on"})
    app = create_app(secured)
    _, pid, _, one_view = _owner_project_and_links(secured, app)
    visitor = _visit(app, one_view["url"])
    visitor.get(f"/projects/{pid}/layers")
    dash_app = app.state.dash
    ran = set()
    for output, spec in list(dash_app.callback_map.items()):
        if "callback" not in spec:
            continue  # runs in the browser
        inputs = [{"id": i["id"], "property": i["property"], "value": None}
                  for i in spec["inputs"]]
        body = {"output": output, "outputs": [], "inputs": inputs, "state": [],
                "changedPropIds": []}
        status = visitor.post("/_dash-update-component", json=body, headers=ORIGIN).status_code
        if status != 403:
            ran.add(inspect.unwrap(spec["callback"]).__module__)
    assert ran <= {"pages.layers", "prunescope.dashboard.app"}, ran
