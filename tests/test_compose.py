"""The deployment files fit together: docker-compose.yml, the Dockerfile and the app's settings.

No Docker engine is needed: the compose file is parsed with PyYAML (merge keys and anchors resolved)
and checked for the wiring that would otherwise only show up as a broken `docker compose up`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

HEALTH_PATH = "/api/v1/health"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, $VAR; $$ escapes.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


# -- helpers -------------------------------------------------------------------------------------


def _interpolate(value: str, unset: list[str]) -> str:
    """Interpolate as compose would with no variable set; record variables without a default."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op = match.group("op")
        if op in (":-", "-"):
            return match.group("arg")
        if op in (":+", "+"):
            return ""
        unset.append(name)
        return ""

    return _INTERPOLATION.sub(replace, value)


def _resolve(node: Any, unset: list[str]) -> Any:
    if isinstance(node, dict):
        return {_resolve(k, unset): _resolve(v, unset) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, unset) for v in node]
    if isinstance(node, str):
        return _interpolate(node, unset)
    return node


def _load_compose() -> tuple[dict[str, Any], list[str]]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    unset: list[str] = []
    resolved = _resolve(raw, unset)
    return resolved, unset


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose()[0]


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target path -> source, for volumes of type `volume` (named) only; bind mounts skipped."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) < 2:
                continue  # anonymous volume
            source, target = parts[0], parts[1]
            if source.startswith((".", "/", "~")):
                continue  # bind mount
            mounts[target] = source
        elif entry.get("type", "volume") == "volume" and entry.get("source"):
            mounts[entry["target"]] = entry["source"]
    return mounts


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(str(entry["target"]).split("/")[0]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _healthcheck_test(service: dict[str, Any]) -> str | None:
    check = service.get("healthcheck")
    if not check or check.get("disable") or check.get("test") in (["NONE"], "NONE"):
        return None
    test = check["test"]
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def _exec_form(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        return [str(a) for a in yaml.safe_load(args)]  # JSON array is valid YAML
    return shlex.split(args)


# -- compose -------------------------------------------------------------------------------------


def test_compose_needs_no_environment_variables():
    _, unset = _load_compose()
    assert not unset, f"variables without a default would be blank under `docker compose`: {unset}"


def test_three_services(services):
    assert {"postgres", "app", "worker"} <= set(services)
    assert str(services["postgres"]["image"]).startswith("postgres:16")


def test_app_and_worker_run_the_same_image(services):
    app, worker = services["app"], services["worker"]
    assert app.get("build"), "app must build the image from the repository"
    assert (app.get("build"), app.get("image")) == (worker.get("build"), worker.get("image"))
    build = app["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE


def test_database_url_is_shared_and_points_at_postgres(services):
    app_url = _env(services["app"]).get("PRUNESCOPE_DATABASE_URL")
    worker_url = _env(services["worker"]).get("PRUNESCOPE_DATABASE_URL")
    assert app_url, "app has no PRUNESCOPE_DATABASE_URL (it would fall back to SQLite)"
    assert app_url == worker_url, "app and worker must use the same database"
    url = make_url(app_url)
    # psycopg (v3) is what the `postgres` extra installs; plain postgresql:// means psycopg2.
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres"
    assert url.port in (None, 5432)


def test_database_credentials_match_postgres_service(services):
    url = make_url(_env(services["app"])["PRUNESCOPE_DATABASE_URL"])
    pg_env = _env(services["postgres"])
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    # Without POSTGRES_DB the image creates a database named after the user.
    assert url.database == pg_env.get("POSTGRES_DB", pg_env["POSTGRES_USER"])


def test_postgres_keeps_its_data_on_a_named_volume(compose, services):
    mounts = _volume_mounts(services["postgres"])
    assert "/var/lib/postgresql/data" in mounts
    assert mounts["/var/lib/postgresql/data"] in (compose.get("volumes") or {})


def test_app_and_worker_share_the_data_volume(compose, services):
    for name in ("app", "worker"):
        assert _env(services[name]).get("PRUNESCOPE_DATA_DIR"), f"{name} has no data dir"
    data_dir = _env(services["app"])["PRUNESCOPE_DATA_DIR"]
    assert _env(services["worker"])["PRUNESCOPE_DATA_DIR"] == data_dir
    app_source = _volume_mounts(services["app"]).get(data_dir)
    worker_source = _volume_mounts(services["worker"]).get(data_dir)
    assert app_source, f"app mounts no named volume at {data_dir}"
    assert app_source == worker_source, "artifacts written by the worker must reach the app"
    assert app_source == "prunescope-data"
    assert app_source in (compose.get("volumes") or {}), "volume must be declared top-level"


def test_app_serves_on_the_published_port(services):
    app = services["app"]
    argv = _command(app.get("command"))
    assert argv[:2] == ["prunescope", "serve"]
    assert _option(argv, "--host") == "0.0.0.0", "must listen beyond the container's loopback"
    port = int(_option(argv, "--port") or 8050)
    assert port in _container_ports(app)
    assert _env(app).get("PRUNESCOPE_WORKERS") == "0", "jobs belong to the worker service"
    test = _healthcheck_test(app)
    assert test and f":{port}{HEALTH_PATH}" in test


def test_worker_runs_the_standalone_worker(services):
    worker = services["worker"]
    assert _command(worker.get("command")) == ["prunescope", "worker"]
    assert worker["deploy"]["replicas"] == 1
    assert not worker.get("ports")
    # The image's HEALTHCHECK asks the HTTP API, which a worker does not serve: override it.
    assert "healthcheck" in worker, "worker would inherit the image's HTTP health check"
    test = _healthcheck_test(worker)
    assert test is None or HEALTH_PATH not in test


def test_depends_on_conditions(services):
    assert _depends_on(services["app"]) == {"postgres": "service_healthy"}
    worker_deps = _depends_on(services["worker"])
    assert worker_deps["postgres"] == "service_healthy"
    assert worker_deps["app"] in ("service_started", "service_healthy")


def test_every_service_is_health_checked(services):
    for name, service in services.items():
        deps = _depends_on(service)
        for dep, condition in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert _healthcheck_test(services[dep]), f"{dep} has no health check to wait for"
        waits_on_healthy = any(c == "service_healthy" for c in deps.values())
        assert _healthcheck_test(service) or waits_on_healthy, f"{name} is never health checked"
    assert "pg_isready" in _healthcheck_test(services["postgres"])


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_installs_torch_before_the_package():
    runs = [args for keyword, args in _dockerfile_instructions() if keyword == "RUN"]
    torch = [i for i, r in enumerate(runs) if "pip install" in r and "torch==2.13.0" in r]
    package = [i for i, r in enumerate(runs) if "pip install" in r and "[postgres]" in r]
    assert torch, "torch==2.13.0 is never installed"
    assert package, "the package is never installed with the postgres extra"
    assert torch[0] < package[0], "torch must be installed before the package"
    assert "download.pytorch.org/whl/cpu" in runs[torch[0]], "use the CPU build of torch"


def test_dockerfile_copies_what_the_build_needs():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {
        pattern.rstrip("*")
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed |= {"pyproject.toml", project["project"]["readme"]}
    copied: set[str] = set()
    for keyword, args in _dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            sources = [a for a in _exec_form(args) if not a.startswith("--")][:-1]
            copied |= {s.rstrip("/") for s in sources}
    assert "." in copied or needed <= copied, f"not copied into the image: {needed - copied}"


def test_dockerfile_runtime():
    instructions = _dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    cmd = _exec_form([a for k, a in instructions if k == "CMD"][-1])
    assert cmd[:2] == ["prunescope", "serve"]
    assert _option(cmd, "--host") == "0.0.0.0"
    port = _option(cmd, "--port") or "8050"
    assert port in [a.split("/")[0] for k, a in instructions if k == "EXPOSE"]
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    healthcheck = [a for k, a in instructions if k == "HEALTHCHECK"]
    assert healthcheck and f":{port}{HEALTH_PATH}" in healthcheck[-1]
    assert "curl" not in healthcheck[-1], "python:*-slim has no curl"


def test_data_volume_is_writable_by_the_image_user(services):
    # An empty named volume takes the owner of the image's directory it is mounted on: without
    # it the volume is root's, and the non-root user cannot write its database or artifacts.
    data_dir = _env(services["app"])["PRUNESCOPE_DATA_DIR"]
    instructions = _dockerfile_instructions()
    user = [a for k, a in instructions if k == "USER"][-1].split(":")[0]
    runs = [a for k, a in instructions if k == "RUN"]
    assert any("mkdir" in r and data_dir in r for r in runs), f"image lacks {data_dir}"
    assert any(
        re.search(rf"chown\s+(-\S+\s+)*{user}\S*\s+{re.escape(data_dir)}\b", r) for r in runs
    )
