"""The dashboard as served: a first visit to any page gets the stylesheet and scripts."""

from __future__ import annotations

from fastapi.testclient import TestClient

from prunescope.server.main import create_app


def test_a_first_visit_straight_to_a_project_page_loads_the_assets(settings) -> None:
    with TestClient(create_app(settings)) as client:
        html = client.get("/projects/1").text  # no request to "/" before this one
    assert "assets/style.css" in html
    assert "assets/checkpoint_upload.js" in html and "assets/tus.min.js" in html


def test_a_slow_callback_does_not_hold_up_other_requests(settings, monkeypatch) -> None:
    """Callbacks run in worker threads: while one waits, the API still answers."""
    import socket
    import threading

    import httpx
    import uvicorn

    from prunescope.server.services import projects as project_service

    entered, release = threading.Event(), threading.Event()
    real_list_projects = project_service.list_projects

    def blocking_list_projects(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        entered.set()
        assert release.wait(30), "never released"
        return real_list_projects(*args, **kwargs)

    monkeypatch.setattr(project_service, "list_projects", blocking_list_projects)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    body = {"output": "jobs-table.data", "outputs": {"id": "jobs-table", "property": "data"},
            "inputs": [{"id": "jobs-refresh", "property": "n_intervals", "value": 1}],
            "changedPropIds": ["jobs-refresh.n_intervals"]}
    answers: dict[str, httpx.Response] = {}
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/api/v1/health", timeout=1)
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        slow = threading.Thread(target=lambda: answers.setdefault(
            "callback", httpx.post(f"{base}/_dash-update-component", json=body, timeout=60)))
        slow.start()
        assert entered.wait(30), "the callback never ran"
        # The callback is parked inside the service layer; the server must still answer.
        health = httpx.get(f"{base}/api/v1/health", timeout=10)
        assert health.status_code == 200 and not release.is_set()
        release.set()
        slow.join(30)
        assert answers["callback"].status_code == 200
        assert answers["callback"].json()["response"]["jobs-table"]["data"] == []
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


def test_every_callback_takes_as_many_arguments_as_it_has_inputs_and_states(settings) -> None:
    """A callback whose signature and inputs disagree fails only when it fires in a browser;
    check every one up front."""
    import inspect

    dash_app = create_app(settings).state.dash
    checked, wrong = 0, []
    for output, spec in dash_app.callback_map.items():
        if "callback" not in spec or not isinstance(spec.get("inputs_state_indices"), list):
            continue  # clientside, or inputs given by name
        func = inspect.unwrap(spec["callback"])
        params = inspect.signature(func).parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            continue  # takes *values
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                       p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in positional if p.default is p.empty]
        given = len(spec["inputs"]) + len(spec["state"])
        checked += 1
        if not len(required) <= given <= len(positional):
            wrong.append(f"{func.__module__}.{func.__name__}: {len(positional)} parameters, "
                         f"{given} inputs and states ({output})")
    assert checked > 60 and wrong == []


def test_every_server_function_the_dashboard_calls_exists():
    """`module.function` on a server module the dashboard imports, checked without running
    the callback that makes the call (a moved function otherwise fails only when clicked)."""
    import ast
    import importlib
    from pathlib import Path

    missing = []
    for path in sorted(Path(__file__).resolve().parents[2].joinpath("dashboard").rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "prunescope.server"):
                for name in node.names:
                    try:
                        modules[name.asname or name.name] = importlib.import_module(
                            f"{node.module}.{name.name}")
                    except ImportError:  # a class or function, not a module
                        pass
        missing += [f"{path.name}:{node.lineno} {node.value.id}.{node.attr}"
                    for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules
                    and not hasattr(modules[node.value.id], node.attr)]
    assert not missing, missing
