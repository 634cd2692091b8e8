"""The deployment files fit together: docker-compose.yml, the Dockerfile and the app's settings.

No Docker engine is needed: the compose file is parsed with PyYAML (merge keys and anchors resolved,
variables interpolated as compose does) and checked for the wiring that would otherwise only show
up as a broken `docker compose up`. The structural checks return their findings, so a second set
of tests can break a copy of the file and see each check object.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from sqlalchemy.engine import make_url

from prunescope.server.cli import build_parser
from prunescope.server.config import Settings
from prunescope.workers.jobs import JOB_KINDS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"

HEALTH_PATH = "/api/v1/health"
IMAGE_NAME = "prunescope"
# The documented way to run the cpu profile: no job kind may ask for a GPU there.
CPU_OVERRIDE = {"GPU_SHARES": '"default": 0'}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, $VAR; $$ escapes.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


# -- helpers -------------------------------------------------------------------------------------


def _interpolate(value: str, unset: list[str], env: Mapping[str, str]) -> str:
    """Interpolate as compose would with `env` set; record variables without a value."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":-", "-"):
            use_default = value is None or (op == ":-" and value == "")
            return arg if use_default else value
        if op in (":+", "+"):
            present = value is not None and (op == "+" or value != "")
            return arg if present else ""
        if value is None:
            unset.append(name)
            return ""
        return value

    return _INTERPOLATION.sub(replace, value)


def _resolve(node: Any, unset: list[str], env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {_resolve(k, unset, env): _resolve(v, unset, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, unset, env) for v in node]
    if isinstance(node, str):
        return _interpolate(node, unset, env)
    return node


def _load_compose(env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    unset: list[str] = []
    return _resolve(raw, unset, env or {}), unset


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


def _published_ports(service: dict[str, Any]) -> list[tuple[str, int | None, int]]:
    """(host ip, host port or None for a random one, container port) per published port."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            ports.append((entry.get("host_ip", ""), int(published) if published else None,
                          int(str(entry["target"]).split("/")[0])))
            continue
        parts = str(entry).split("/")[0].split(":")
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        ports.append((parts[-3] if len(parts) == 3 else "", host, container))
    return ports


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {container for _, _, container in _published_ports(service)}


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


def _is_prunescope(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0] == IMAGE_NAME


def _prunescope_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if _is_prunescope(s)}


def _one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Jobs that run once: never restarted, and something waits for them to complete."""
    awaited = {dep for s in services.values() for dep, condition in _depends_on(s).items()
               if condition == "service_completed_successfully"}
    return {name for name in awaited
            if name in services and str(services[name].get("restart", "no")) == "no"}


def _serves_http(service: dict[str, Any]) -> bool:
    return _command(service.get("command"))[:2] == ["prunescope", "serve"]


def _ray_start(service: dict[str, Any]) -> list[str] | None:
    argv = _command(service.get("command"))
    return argv if argv[:2] == ["ray", "start"] else None


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []


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


def _dockerfile_args() -> dict[str, str]:
    args = {}
    for keyword, value in _dockerfile_instructions():
        if keyword == "ARG":
            name, _, default = value.partition("=")
            args[name] = default.strip("\"'")
    return args


def _dockerfile_runs(build_args: Mapping[str, str] | None = None) -> list[str]:
    """RUN lines with ${ARG} references replaced by the build's values (defaults otherwise)."""
    values = {**_dockerfile_args(), **(build_args or {})}
    runs = [a for k, a in _dockerfile_instructions() if k == "RUN"]
    return [re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), r)
            for r in runs]


def _exec_form(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        return [str(a) for a in yaml.safe_load(args)]  # JSON array is valid YAML
    return shlex.split(args)


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- structural checks: each returns what is wrong, so a broken copy can show it objects ---------


def health_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    one_shots = _one_shots(services)
    for name, service in services.items():
        test = _healthcheck_test(service)
        if name in one_shots:
            continue
        if not test:
            problems.append(f"{name} has no health check")
        elif _is_prunescope(service) and not _serves_http(service) and HEALTH_PATH in test:
            problems.append(f"{name} serves no HTTP but its health check asks {HEALTH_PATH}")
    return problems


def dependency_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    one_shots = _one_shots(services)
    for name, service in services.items():
        raw = service.get("depends_on") or {}
        if isinstance(raw, list):
            problems.append(f"{name}: depends_on as a list waits for no condition")
            raw = {dep: {} for dep in raw}
        for dep, spec in raw.items():
            condition = (spec or {}).get("condition")
            if dep not in services:
                problems.append(f"{name} depends on unknown service {dep}")
                continue
            if condition is None:
                problems.append(f"{name} -> {dep}: no condition")
            elif condition == "service_healthy" and not _healthcheck_test(services[dep]):
                problems.append(f"{name} -> {dep}: waits for health, but {dep} has no check")
            elif condition == "service_completed_successfully" and dep not in one_shots:
                problems.append(f"{name} -> {dep}: waits for completion of a service that "
                                "is restarted")
            # A service outside a profile cannot start one that only a profile enables.
            dep_profiles = set(services[dep].get("profiles") or [])
            own_profiles = set(service.get("profiles") or [])
            if dep_profiles and not (own_profiles and own_profiles <= dep_profiles):
                problems.append(f"{name} -> {dep}: {dep} only runs in profiles "
                                f"{sorted(dep_profiles)}")
    # Cycles would leave compose unable to start anything.
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in _depends_on(services[node]):
            if dep not in services:
                continue
            if state.get(dep) == "open":
                problems.append(f"dependency cycle: {' -> '.join([*path, dep])}")
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for name in services:
        if name not in state:
            visit(name, [name])
    return problems


def gpu_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    gpu, cpu = services.get("ray-gpu-worker"), services.get("ray-cpu-worker")
    if gpu is None or cpu is None:
        return ["ray-gpu-worker and ray-cpu-worker must both exist"]
    if gpu.get("profiles") != ["gpu"]:
        problems.append("ray-gpu-worker must run in (only) the gpu profile")
    if cpu.get("profiles") != ["cpu"]:
        problems.append("ray-cpu-worker must run in (only) the cpu profile")
    gpu_argv, cpu_argv = _ray_start(gpu) or [], _ray_start(cpu) or []
    num_gpus = float(_option(gpu_argv, "--num-gpus") or 0)
    if num_gpus < 1:
        problems.append("ray-gpu-worker must tell Ray its GPUs (--num-gpus >= 1)")
    devices = [d for d in _gpu_devices(gpu)
               if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    if not devices:
        problems.append("ray-gpu-worker has no NVIDIA GPU reservation")
    for device in devices:
        count = device.get("count", "all")
        if count != "all" and int(count) < num_gpus:
            problems.append(f"ray-gpu-worker reserves {count} GPUs but tells Ray {num_gpus:g}")
    if _option(cpu_argv, "--num-gpus") != "0":
        problems.append("ray-cpu-worker must say --num-gpus=0")
    for name, service in services.items():
        if name != "ray-gpu-worker" and _gpu_devices(service):
            problems.append(f"{name} reserves GPUs")
    return problems


def volume_problems(compose: dict[str, Any]) -> list[str]:
    declared = set(compose.get("volumes") or {})
    used = set()
    problems = []
    for name, service in compose["services"].items():
        for target, source in _volume_mounts(service).items():
            used.add(source)
            if source not in declared:
                problems.append(f"{name} mounts {source} at {target}, a volume never declared")
    problems += [f"volume {v} is declared but never mounted" for v in sorted(declared - used)]
    return problems


def port_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    owner: dict[int, str] = {}
    for name, service in services.items():
        ports = _published_ports(service)
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        if ports and replicas > 1:
            problems.append(f"{name}: {replicas} replicas cannot share its host ports")
        for _, host, _ in ports:
            if host is None:
                continue
            if host in owner:
                problems.append(f"host port {host} published by both {owner[host]} and {name}")
            owner[host] = name
    return problems


# -- compose -------------------------------------------------------------------------------------


def test_compose_needs_no_environment_variables():
    _, unset = _load_compose()
    assert not unset, f"variables without a default would be blank under `docker compose`: {unset}"


def test_services_and_images(services):
    assert {"postgres", "minio", "minio-setup", "prunescope-setup", "app", "ray-head",
            "ray-gpu-worker", "ray-cpu-worker", "worker"} <= set(services)
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert str(services["minio"]["image"]).startswith("minio/minio")
    assert str(services["minio-setup"]["image"]).startswith("minio/mc")
    assert set(_prunescope_services(services)) == {
        "prunescope-setup", "app", "ray-head", "ray-gpu-worker", "ray-cpu-worker", "worker"}


def test_every_service_is_health_checked(services):
    assert health_problems(services) == []
    assert _one_shots(services) == {"minio-setup", "prunescope-setup"}
    assert "pg_isready" in _healthcheck_test(services["postgres"])


def test_dependencies_exist_and_wait_for_a_condition(services):
    assert dependency_problems(services) == []
    assert _depends_on(services["app"]) == {
        "postgres": "service_healthy", "minio-setup": "service_completed_successfully",
        "prunescope-setup": "service_completed_successfully", "ray-head": "service_healthy"}
    # The schema is migrated once, before any process that uses the database starts.
    for name in ("app", "worker"):
        assert _depends_on(services[name])["prunescope-setup"] == "service_completed_successfully"
    for name in ("ray-gpu-worker", "ray-cpu-worker"):
        assert _depends_on(services[name]) == {"ray-head": "service_healthy"}


def test_gpu_and_cpu_workers(services):
    assert gpu_problems(services) == []
    assert not (services["ray-cpu-worker"].get("deploy") or {}).get("resources")


def test_named_volumes(compose, services):
    assert volume_problems(compose) == []
    mounts = _volume_mounts(services["postgres"])
    assert "/var/lib/postgresql/data" in mounts
    assert "/data" in _volume_mounts(services["minio"])
    assert _volume_mounts(services["app"]).get(_env(services["app"])["PRUNESCOPE_DATA_DIR"])


def test_ports_do_not_collide(services):
    assert port_problems(services) == []
    # Nothing that runs code unasked (Ray dashboard) or holds default root credentials
    # (MinIO console) listens beyond this machine.
    for name in ("minio", "ray-head"):
        for ip, _, _ in _published_ports(services[name]):
            assert ip == "127.0.0.1", f"{name} publishes a port on all interfaces"


def test_prunescope_services_build_one_dockerfile(services):
    args = _dockerfile_args()
    for name, service in _prunescope_services(services).items():
        build = service.get("build")
        assert build, f"{name} must build the image from the repository"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                          "Dockerfile")
        assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE
        overrides = {} if isinstance(build, str) else (build.get("args") or {})
        assert set(overrides) <= set(args), f"{name} sets build args the Dockerfile lacks"
        # Nodes of one Ray cluster must run one Ray (and one torch) version.
        assert set(overrides) <= {"TORCH_INDEX_URL"}, f"{name} changes a pinned version"
    # One image name per build: the GPU image differs only in its torch build.
    images = {(str(s["image"]), json.dumps(s["build"], sort_keys=True))
              for s in _prunescope_services(services).values()}
    assert len({image for image, _ in images}) == len(images)


def test_shared_environment_comes_from_the_anchor(compose, services):
    shared = {k: str(v) for k, v in compose["x-prunescope-env"].items()}
    for key in ("PRUNESCOPE_DATABASE_URL", "PRUNESCOPE_STORAGE_URL", "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PRUNESCOPE_DATA_DIR"):
        assert shared.get(key), f"the shared environment lacks {key}"
    for name, service in _prunescope_services(services).items():
        env = _env(service)
        differing = {k for k, v in shared.items() if env.get(k) != v}
        assert not differing, f"{name} does not get {sorted(differing)} from the shared anchor"


def test_environment_names_are_settings(services, monkeypatch):
    prefix = Settings.model_config["env_prefix"]
    fields = set(Settings.model_fields)
    for name, service in services.items():
        for key in _env(service):
            if key.startswith(prefix):
                assert key[len(prefix):].lower() in fields, f"{name}: {key} is no setting"
    # Every PruneScope container's environment is accepted as it stands.
    for service in _prunescope_services(services).values():
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith(prefix)]:
                m.delenv(key)
            for key, value in _env(service).items():
                m.setenv(key, value)
            Settings()


def test_database_url_points_at_postgres(services):
    url = make_url(_env(services["app"])["PRUNESCOPE_DATABASE_URL"])
    # psycopg (v3) is what the `postgres` extra installs; plain postgresql:// means psycopg2.
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres"
    assert url.port in (None, 5432)
    pg_env = _env(services["postgres"])
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    # Without POSTGRES_DB the image creates a database named after the user.
    assert url.database == pg_env.get("POSTGRES_DB", pg_env["POSTGRES_USER"])
    # A changed password reaches both sides.
    changed = _load_compose({"POSTGRES_PASSWORD": "changed-1"})[0]["services"]
    assert make_url(_env(changed["app"])["PRUNESCOPE_DATABASE_URL"]).password == "changed-1"
    assert _env(changed["postgres"])["POSTGRES_PASSWORD"] == "changed-1"


def test_artifacts_go_to_the_bucket_minio_setup_creates(services):
    env = _env(services["app"])
    storage = urlparse(env["PRUNESCOPE_STORAGE_URL"])
    assert storage.scheme == "s3"
    mb = _command(services["minio-setup"]["command"])
    assert mb[0] == "mb"
    created = [a for a in mb[1:] if not a.startswith("-")]
    assert created == [f"local/{storage.netloc}"], "the bucket created is not the one used"
    endpoint = urlparse(env["AWS_ENDPOINT_URL"])
    minio = services["minio"]
    minio_argv = _command(minio["command"])
    api_port = _host_port(_option(minio_argv, "--address") or ":9000")[1]
    assert (endpoint.hostname, endpoint.port) == ("minio", api_port)
    minio_env = _env(minio)
    assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert len(minio_env["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses shorter root passwords"
    mc_host = urlparse(_env(services["minio-setup"])["MC_HOST_local"])
    assert (mc_host.hostname, mc_host.port) == ("minio", api_port)
    assert (mc_host.username, mc_host.password) == (minio_env["MINIO_ROOT_USER"],
                                                    minio_env["MINIO_ROOT_PASSWORD"])
    console = _option(minio_argv, "--console-address")
    assert console and _host_port(console)[1] in _container_ports(minio)


def test_app_serves_on_the_published_port(services):
    app = services["app"]
    argv = _command(app.get("command"))
    assert argv[:2] == ["prunescope", "serve"]
    assert _option(argv, "--host") == "0.0.0.0", "must listen beyond the container's loopback"
    assert "--insecure" not in argv, "beyond loopback, sign-in stays on"
    port = int(_option(argv, "--port") or 8050)
    assert port in _container_ports(app)
    assert _env(app).get("PRUNESCOPE_WORKERS") == "0", "jobs belong to Ray nodes or workers"
    test = _healthcheck_test(app)
    assert test and f":{port}{HEALTH_PATH}" in test


def test_app_reaches_the_ray_head(services):
    env = _env(services["app"])
    assert env["PRUNESCOPE_EXECUTOR"] == "ray"
    # The server runs no raylet, so it must come in as a Ray client, on the client server port.
    address = urlparse(env["RAY_ADDRESS"])
    assert address.scheme == "ray"
    assert address.hostname in services
    head = _ray_start(services[address.hostname])
    assert head and "--head" in head and "--block" in head
    assert int(_option(head, "--ray-client-server-port")) == address.port
    assert _option(head, "--num-gpus") == "0"
    gcs = f"{address.hostname}:{_option(head, '--port')}"
    for name in ("ray-gpu-worker", "ray-cpu-worker"):
        argv = _ray_start(services[name])
        assert argv and "--block" in argv, f"{name} must keep its container running"
        assert _option(argv, "--address") == gcs, f"{name} does not join the head at {gcs}"
    dashboard_port = int(_option(head, "--dashboard-port") or 8265)
    assert _option(head, "--dashboard-host") == "0.0.0.0"
    assert dashboard_port in _container_ports(services[address.hostname])
    # RAY_ADDRESS belongs to the client only: `ray status` on a node would read it too.
    for name, service in services.items():
        if _ray_start(service):
            assert "RAY_ADDRESS" not in _env(service), name
            assert gcs in _healthcheck_test(service), f"{name} checks another cluster"


def test_tasks_without_a_gpu_share_see_no_gpu(services):
    # Without it, Ray leaves every GPU visible to a task that asked for none, and the analyses
    # would use a GPU that Ray promised to other tasks.
    accelerators = pytest.importorskip("ray._private.accelerators")
    name = accelerators.RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR
    for service_name, service in services.items():
        if _ray_start(service):
            assert _env(service).get(name) == "1", f"{service_name} lacks {name}=1"


def test_gpu_shares(services):
    shares = json.loads(_env(services["app"])["PRUNESCOPE_RAY_NUM_GPUS"])
    assert set(shares) <= {*JOB_KINDS, "default"}, "a share names no job kind"
    assert shares.get("default") == 0, "kinds without a share must not wait for a GPU"
    assert any(v > 0 for v in shares.values()), "the gpu profile's default asks for no GPU"
    num_gpus = float(_option(_ray_start(services["ray-gpu-worker"]), "--num-gpus"))
    assert max(shares.values()) <= num_gpus, "a task would ask for more GPUs than a node has"
    settings = Settings(ray_num_gpus=shares)
    assert settings.gpus_for("analyze") == shares["analyze"]


def test_cpu_profile_override_asks_for_no_gpu():
    changed, unset = _load_compose(CPU_OVERRIDE)
    assert not unset
    raw = _env(changed["services"]["app"])["PRUNESCOPE_RAY_NUM_GPUS"]
    settings = Settings(ray_num_gpus=json.loads(raw))
    assert all(settings.gpus_for(kind) == 0 for kind in JOB_KINDS)
    # The override the tests trust is the one the files tell people to use.
    documented = " ".join(f"{k}={shlex.quote(v)}" for k, v in CPU_OVERRIDE.items())
    assert f"{documented} docker compose --profile cpu up" in COMPOSE_FILE.read_text()
    assert f"{documented} docker compose --profile cpu up" in CLUSTER_DOC.read_text()


def _argv_problem(argv: list[str]) -> str | None:
    """Why argv is no valid `prunescope` or `ray` command line, or None."""
    if argv[:1] == ["prunescope"]:
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            return f"prunescope rejects {shlex.join(argv)}"
    elif argv[:1] == ["ray"]:
        scripts = pytest.importorskip("ray.scripts.scripts")
        import click

        try:
            command = scripts.cli.commands[argv[1]]
            command.make_context(argv[1], argv[2:])
        except (KeyError, IndexError, click.ClickException) as exc:
            return f"ray rejects {shlex.join(argv)}: {exc}"
    return None


def _command_lines(service: dict[str, Any]) -> list[list[str]]:
    """The command and health check of a service, with `prunescope` calls inside `sh -c`."""
    lines = []
    for argv in (_command(service.get("command")),
                 _command((service.get("healthcheck") or {}).get("test"))):
        if argv[:1] == ["CMD"]:
            argv = argv[1:]
        if argv[:2] in (["sh", "-c"], ["bash", "-c"]):
            for match in re.finditer(r"\bprunescope\s+([^|;&)\n]*)", argv[2]):
                lines.append(["prunescope", *shlex.split(match.group(1))])
        elif argv:
            lines.append(argv)
    return lines


def test_commands_are_real_cli_commands(services):
    problems = []
    seen = set()
    for service in services.values():
        for argv in _command_lines(service):
            seen.add(tuple(argv[:2]))
            problems.append(_argv_problem(argv))
    cmd = [a for k, a in _dockerfile_instructions() if k == "CMD"][-1]
    problems.append(_argv_problem(_exec_form(cmd)))
    assert [p for p in problems if p] == []
    assert {("prunescope", "serve"), ("prunescope", "worker"), ("prunescope", "db"),
            ("prunescope", "users"), ("ray", "start"), ("ray", "status")} <= seen
    # The check can fail.
    assert _argv_problem(["prunescope", "serve", "--no-such-flag"])
    assert _argv_problem(["prunescope", "migrate"])


def test_setup_creates_the_first_account_once(services, tmp_path):
    from prunescope.server import auth
    from prunescope.server.db import get_engine

    setup = services["prunescope-setup"]
    script = _command(setup["command"])
    assert script[:2] == ["sh", "-c"]
    data_dir = tmp_path / "data"
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(tmp_path), "PRUNESCOPE_DATA_DIR": str(data_dir),
           "ADMIN_USER": _env(setup)["ADMIN_USER"], "ADMIN_PASSWORD": _env(setup)["ADMIN_PASSWORD"]}
    assert env["ADMIN_PASSWORD"] == "", "no fixed default password"

    def run() -> subprocess.CompletedProcess:
        done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    first = run()
    printed = re.findall(r"password: (\S+)", first.stdout)
    assert len(printed) == 1, first.stdout
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir}/prunescope.db")
    try:
        assert auth.check_password(env["ADMIN_USER"], printed[0], settings) is not None
        second = run()
        assert "password" not in second.stdout, "the account is made once"
        assert [u.name for u in auth.list_users(settings)] == [env["ADMIN_USER"]]
    finally:
        get_engine(settings).dispose()


def test_worker_runs_the_standalone_worker(services):
    worker = services["worker"]
    assert _command(worker.get("command")) == ["prunescope", "worker"]
    assert worker.get("profiles") == ["local-workers"]
    assert worker["deploy"]["replicas"] == 1
    assert not worker.get("ports")
    # The image's HEALTHCHECK asks the HTTP API, which a worker does not serve: override it.
    test = _healthcheck_test(worker)
    assert test and HEALTH_PATH not in test


# -- the checks object to broken files -----------------------------------------------------------


def _drop(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(compose: dict[str, Any]) -> None:
        node = compose
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(compose: dict[str, Any]) -> None:
        node = compose
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(compose: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(compose)

    return mutate


def _problems(compose: dict[str, Any]) -> list[str]:
    services = compose["services"]
    return (health_problems(services) + dependency_problems(services) + gpu_problems(services)
            + volume_problems(compose) + port_problems(services))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop(("services", "app", "healthcheck")), "app has no health check"),
        (_set(("services", "minio", "healthcheck"), {"disable": True}),
         "minio has no health check"),
        (_set(("services", "ray-head", "healthcheck", "test"),
              ["CMD", "python", "-c", f"urlopen('http://127.0.0.1:8050{HEALTH_PATH}')"]),
         "ray-head serves no HTTP"),
        (_set(("services", "app", "depends_on", "redis"), {"condition": "service_healthy"}),
         "unknown service redis"),
        (_set(("services", "app", "depends_on"), ["postgres"]), "waits for no condition"),
        (_set(("services", "app", "depends_on", "ray-head"), {}), "app -> ray-head: no condition"),
        (_set(("services", "app", "depends_on", "worker"), {"condition": "service_started"}),
         "only runs in profiles"),
        (_set(("services", "prunescope-setup", "restart"), "unless-stopped"),
         "completion of a service that is restarted"),
        (_set(("services", "ray-head", "depends_on"),
              {"app": {"condition": "service_started"}}), "dependency cycle"),
        (_drop(("services", "ray-gpu-worker", "deploy")), "no NVIDIA GPU reservation"),
        (_set(("services", "ray-gpu-worker", "deploy", "resources", "reservations", "devices"),
              [{"driver": "nvidia", "count": 1, "capabilities": ["compute"]}]),
         "no NVIDIA GPU reservation"),
        (_set(("services", "ray-gpu-worker", "profiles"), ["cpu"]), "gpu profile"),
        (_drop(("services", "ray-cpu-worker", "profiles")), "cpu profile"),
        (_both(_set(("services", "ray-gpu-worker", "command"),
                    ["ray", "start", "--address=ray-head:6379", "--num-gpus=2", "--block"]),
               _set(("services", "ray-gpu-worker", "deploy", "resources", "reservations",
                     "devices"), [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}])),
         "reserves 1 GPUs but tells Ray 2"),
        (_set(("services", "ray-cpu-worker", "command"),
              ["ray", "start", "--address=ray-head:6379", "--block"]), "--num-gpus=0"),
        (_drop(("volumes", "postgres-data")), "never declared"),
        (_set(("volumes", "spare"), None), "never mounted"),
        (_set(("services", "minio", "ports"), ["127.0.0.1:8050:9001"]), "host port 8050"),
        (_set(("services", "app", "deploy"), {"replicas": 2}), "cannot share its host ports"),
    ],
)
def test_checks_catch_a_broken_file(compose, mutate, expected):
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = _problems(broken)
    assert any(expected in p for p in problems), problems
    assert _problems(compose) == [], "the real file must pass the same checks"


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_installs_torch_before_the_package():
    runs = _dockerfile_runs()
    makefile_pin = re.search(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text())
    assert makefile_pin, "the Makefile pins torch"
    torch_pin = f"torch=={makefile_pin.group(1)}"
    torch = [i for i, r in enumerate(runs) if "pip install" in r and torch_pin in r]
    package = [i for i, r in enumerate(runs) if "pip install" in r and "/src[" in r]
    assert torch, f"the image does not install {torch_pin} like the Makefile"
    assert package, "the package is never installed"
    assert torch[0] < package[0], "torch must be installed before the package"
    assert "download.pytorch.org/whl/cpu" in runs[torch[0]], "the default build is CPU-only"


def test_gpu_image_takes_torch_from_a_cuda_index(services):
    build = services["ray-gpu-worker"]["build"]
    runs = _dockerfile_runs(build.get("args"))
    torch = next(r for r in runs if "pip install" in r and "torch==" in r)
    assert "whl/cpu" not in torch, "the GPU worker would get the CPU build of torch"


def test_dockerfile_installs_the_extras_that_exist():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    runs = _dockerfile_runs()
    installed = {e.strip() for r in runs for m in re.finditer(r"/src\[([^\]]+)\]", r)
                 for e in m.group(1).split(",")}
    assert {"postgres", "cluster"} <= installed
    assert installed <= extras, f"extras missing from pyproject.toml: {installed - extras}"


def test_ray_in_the_image_serves_clients_and_the_dashboard(services):
    # ray:// (the server's RAY_ADDRESS) needs grpcio on both ends and --dashboard-host needs
    # the dashboard: ray[client] / ray[default], from the cluster extra or the Dockerfile.
    cluster = " ".join(_pyproject()["project"]["optional-dependencies"]["cluster"])
    install = " ".join(r for r in _dockerfile_runs() if "pip install" in r)
    assert re.search(r"ray\[[^\]]*default", cluster + " " + install)
    pin = re.search(r"ray\[[^\]]*\]==([\w.]+)", install)
    assert pin, "every node and the client must run the same Ray: pin it"


def test_dockerfile_copies_what_the_build_needs():
    project = _pyproject()
    # Every folder pyproject maps into the `prunescope` namespace (package-dir).
    needed = set(project["tool"]["setuptools"]["package-dir"].values())
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
    # it the volume is root's, and the non-root user cannot write its cache or uploads.
    data_dir = _env(services["app"])["PRUNESCOPE_DATA_DIR"]
    instructions = _dockerfile_instructions()
    user = [a for k, a in instructions if k == "USER"][-1].split(":")[0]
    runs = [a for k, a in instructions if k == "RUN"]
    assert any("mkdir" in r and data_dir in r for r in runs), f"image lacks {data_dir}"
    assert any(
        re.search(rf"chown\s+(-\S+\s+)*{user}\S*\s+{re.escape(data_dir)}\b", r) for r in runs
    )
