"""Inputs that once answered 500 answer a clear 4xx: ids past the database's integers, a share
link's expiry past the calendar, a job waiting for another user's (or no) job, and dashboard
callbacks sent values of the wrong type."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from prunescope.server import auth
from prunescope.server.main import create_app

ORIGIN = {"Origin": "http://testserver"}
TOO_BIG = (2**63, 2**64, 10**30)


@pytest.fixture
def secured(settings):
    return settings.model_copy(update={"auth": "on"})


@pytest.fixture
def accounts(secured):
    """alice and bob, each with an API token and a project of their own, and the app (with
    the dashboard) they share."""
    headers = {}
    for name in ("alice", "bob"):
        _, token = auth.add_user(name, None, token=True, settings=secured)
        headers[name] = {"Authorization": f"Bearer {token}", **ORIGIN}
    app = create_app(secured)
    with TestClient(app) as client:
        pids = {name: client.post("/api/v1/projects", json={"name": name, "architecture": "mlp"},
                                  headers=h).json()["id"] for name, h in headers.items()}
    return app, headers, pids


def _id_routes(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """(method, path, its integer path parameters) of every API operation with one."""
    found = []
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            ids = [p["name"] for p in operation.get("parameters", [])
                   if p["in"] == "path" and p["schema"].get("type") == "integer"]
            if ids:
                found.append((method.upper(), path, ids))
    return found


def test_ids_past_the_databases_integers_are_refused_on_every_route(accounts):
    app, headers, pids = accounts
    with TestClient(app) as client:
        routes = _id_routes(client)
        assert len(routes) >= 25, routes  # every project, checkpoint, dataset, job, result route
        for method, path, ids in routes:
            for big in TOO_BIG:
                url = re.sub(r"\{(\w+)\}",
                             lambda m, big=big, ids=ids: str(big) if m[1] in ids else "x", path)
                r = client.request(method, url, headers=headers["alice"], json={})
                assert r.status_code == 422, (method, url, r.status_code, r.text)
                assert "less than or equal to" in r.text
        # Ids in bodies too: the active dataset and a job's dependencies.
        r = client.put(f"/api/v1/projects/{pids['alice']}/datasets/active",
                       json={"dataset_id": 2**63}, headers=headers["alice"])
        assert r.status_code == 422, r.text
        r = client.post(f"/api/v1/projects/{pids['alice']}/jobs",
                        json={"kind": "analyze", "depends_on": [2**70]},
                        headers=headers["alice"])
        assert r.status_code == 422, r.text


def test_a_share_link_expiring_past_the_calendar_is_refused(accounts):
    app, headers, pids = accounts
    with TestClient(app) as client:
        url = f"/api/v1/projects/{pids['alice']}/share-links"
        for hours in (10**8, 1e300):
            r = client.post(url, json={"expires_in_hours": hours}, headers=headers["alice"])
            assert r.status_code == 422, (hours, r.status_code, r.text)
            assert "expires_in_hours" in r.text
        r = client.post(url, json={"expires_in_hours": 24 * 365 * 50}, headers=headers["alice"])
        assert r.status_code == 201, r.text


def test_depends_on_another_users_job_answers_like_a_job_that_does_not_exist(accounts):
    """Else the answer tells which job ids exist in projects one cannot see."""
    app, headers, pids = accounts
    with TestClient(app) as client:
        bobs = client.post(f"/api/v1/projects/{pids['bob']}/jobs", json={"kind": "analyze"},
                           headers=headers["bob"])
        assert bobs.status_code == 201, bobs.text
        bobs_job = bobs.json()["id"]
        unknown = bobs_job + 1000
        jobs = f"/api/v1/projects/{pids['alice']}/jobs"
        answers = [client.post(jobs, json={"kind": "analyze", "depends_on": [dep]},
                               headers=headers["alice"]) for dep in (bobs_job, unknown)]
        assert [r.status_code for r in answers] == [422, 422], [r.text for r in answers]
        details = [r.json()["detail"].replace(f"job {dep},", "job N,")
                   for r, dep in zip(answers, (bobs_job, unknown), strict=True)]
        assert details[0] == details[1], details
        assert client.get(jobs, headers=headers["alice"]).json()["count"] == 0
        # A job of her own project she may wait for.
        first = client.post(jobs, json={"kind": "analyze"}, headers=headers["alice"]).json()
        r = client.post(jobs, json={"kind": "analyze", "depends_on": [first["id"]]},
                        headers=headers["alice"])
        assert r.status_code == 201 and r.json()["depends_on"] == [first["id"]], r.text


def _callback(client: TestClient, headers: dict, output: str, inputs: list,
              state: list) -> int:
    """Run a dashboard callback as a browser would (one output); its status code."""
    component, _, prop = output.rpartition(".")
    body = {"output": output, "outputs": {"id": component, "property": prop},
            "inputs": inputs, "state": state,
            "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"]}
    r = client.post("/_dash-update-component", json=body, headers=headers)
    assert r.status_code < 500, (output, inputs, state, r.status_code, r.text)
    return r.status_code


def test_a_layers_download_sent_no_metric_answers_without_a_server_error(
        accounts, secured, tmp_path):
    from tests.dashboard.test_table_exports import _project_with_evaluation

    app, headers, _ = accounts
    with auth.acting_as(auth.Principal("user", user_id=1, name="alice")):
        pid = _project_with_evaluation(secured, tmp_path)
    clicks = [{"id": "metric-csv", "property": "n_clicks", "value": 1},
              {"id": "metric-parquet", "property": "n_clicks", "value": 0}]
    with TestClient(app) as client:
        for metric in (None, 7, ["cka"], {"a": 1}, "no-such-metric"):
            state = [{"id": "layers-metric", "property": "value", "value": metric},
                     {"id": "layers-project-id", "property": "data", "value": pid}]
            _callback(client, headers["alice"], "metric-download.data", clicks, state)
        for project in ("x", None, 2**70, [pid]):
            state = [{"id": "layers-metric", "property": "value", "value": "cka"},
                     {"id": "layers-project-id", "property": "data", "value": project}]
            _callback(client, headers["alice"], "metric-download.data", clicks, state)
        state = [{"id": "layers-metric", "property": "value", "value": "cka"},
                 {"id": "layers-project-id", "property": "data", "value": pid}]
        assert _callback(client, headers["alice"], "metric-download.data", clicks, state) == 200


def test_a_datasets_page_sent_a_version_that_is_no_dict_answers_without_a_server_error(
        accounts):
    app, headers, pids = accounts
    render = "..datasets-list.children...preview-title.children...dataset-summary.children" \
             "...dataset-examples.children...class-counts.figure.."
    outputs = [{"id": o.rpartition(".")[0], "property": o.rpartition(".")[2]}
               for o in render.strip(".").split("...")]
    with TestClient(app) as client:
        for version in ([1, 2], "v", 3, {"select": "x"}, {"n": "a"}, None):
            body = {"output": render, "outputs": outputs,
                    "inputs": [{"id": "datasets-version", "property": "data",
                                "value": version}],
                    "state": [{"id": "datasets-url", "property": "search", "value": ""},
                              {"id": "datasets-project-id", "property": "data",
                               "value": pids["alice"]}],
                    "changedPropIds": ["datasets-version.data"]}
            r = client.post("/_dash-update-component", json=body, headers=headers["alice"])
            assert r.status_code < 500, (version, r.status_code, r.text)


def test_a_number_json_cannot_hold_is_refused_not_echoed_into_a_500(accounts):
    """Python's JSON reader takes NaN and Infinity; the 422 that names the bad value must not
    fail to encode it."""
    app, headers, pids = accounts
    raw = {**headers["alice"], "Content-Type": "application/json"}
    with TestClient(app) as client:
        for value in ("NaN", "Infinity", "-Infinity", "1e400"):
            r = client.post(f"/api/v1/projects/{pids['alice']}/share-links",
                            content=f'{{"expires_in_hours": {value}}}', headers=raw)
            assert r.status_code == 422, (value, r.status_code, r.text)
            assert "expires_in_hours" in r.text
            r = client.put(f"/api/v1/projects/{pids['alice']}/datasets/active",
                           content=f'{{"dataset_id": {value}}}', headers=raw)
            assert r.status_code == 422, (value, r.status_code, r.text)


def test_text_the_database_cannot_store_is_refused(settings):
    """PostgreSQL stores no NUL character in text or JSON; SQLite does. Either way no 500."""
    secured = settings.model_copy(update={"auth": "on"})
    _, token = auth.add_user("alice", None, token=True, settings=secured)
    alice = {"Authorization": f"Bearer {token}", **ORIGIN}
    with TestClient(create_app(secured, dashboard=False)) as client:
        pid = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"},
                          headers=alice).json()["id"]
        answers = [
            client.post("/api/v1/projects", json={"name": "a\x00b", "architecture": "mlp"},
                        headers=alice),
            client.post(f"/api/v1/projects/{pid}/bookmarks",
                        json={"name": "a\x00", "url": f"/projects/{pid}/layers"}, headers=alice),
            client.post(f"/api/v1/projects/{pid}/jobs",
                        json={"kind": "analyze", "params": {"name": "a\x00"}}, headers=alice),
        ]
    for r in answers:
        assert r.status_code < 500, (r.request.url, r.status_code, r.text)


WRONG_VALUES = (None, "x", 2**70, [1, "a"], {"a": {"b": 1}}, -1.5)


def test_every_callback_sent_values_of_the_wrong_type_answers_without_a_server_error(accounts):
    """Each server callback of the dashboard, every input and state set to one wrong value."""
    app, headers, pids = accounts
    with TestClient(app) as client:
        client.get(f"/projects/{pids['alice']}", headers=headers["alice"])  # the page router
        callbacks = {k: v for k, v in app.state.dash.callback_map.items() if "callback" in v}
        assert len(callbacks) >= 50, sorted(callbacks)
        for output, spec in callbacks.items():
            outputs = [{"id": o.rpartition(".")[0], "property": o.rpartition(".")[2]}
                       for o in output.strip(".").split("...")]
            first = spec["inputs"][0]
            for value in WRONG_VALUES:
                body = {
                    "output": output,
                    "outputs": outputs if output.startswith("..") else outputs[0],
                    "inputs": [dict(i, value=value) for i in spec["inputs"]],
                    "state": [dict(s, value=value) for s in spec.get("state", [])],
                    "changedPropIds": [f"{first['id']}.{first['property']}"],
                }
                r = client.post("/_dash-update-component", json=body, headers=headers["alice"])
                assert r.status_code < 500, (output, value, r.status_code, r.text)


def test_a_malformed_callback_request_is_refused(accounts):
    """A request that is no callback request, or names a callback that runs in the browser."""
    app, headers, _ = accounts
    good = {"output": "metric-download.data",
            "outputs": {"id": "metric-download", "property": "data"},
            "inputs": [{"id": "metric-csv", "property": "n_clicks", "value": 1},
                       {"id": "metric-parquet", "property": "n_clicks", "value": 0}],
            "changedPropIds": ["metric-csv.n_clicks"]}
    bodies = [{}, [], "x", 3, {"output": 5}, {"output": "metric-download.data"},
              {**good, "inputs": 3}, {**good, "inputs": good["inputs"][:1]},
              {**good, "outputs": []}, {**good, "changedPropIds": 5},
              {**good, "output": "copy-link-feedback.children",
               "outputs": {"id": "copy-link-feedback", "property": "children"}}]
    with TestClient(app) as client:
        for body in bodies:
            r = client.post("/_dash-update-component", json=body, headers=headers["alice"])
            assert r.status_code == 422, (body, r.status_code, r.text)
            assert "reload the page" in r.json()["detail"]
