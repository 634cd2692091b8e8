"""The `prunescope` command: serve, demo, worker and database administration.

Each command imports what it uses inside itself, so `prunescope --help` or a worker starts
without loading the web app, the database layer or torch it does not need.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _apply_environment(args: argparse.Namespace) -> None:
    # Flags become environment variables so spawned worker processes see the same settings.
    if getattr(args, "data_dir", None):
        os.environ["PRUNESCOPE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if getattr(args, "workers", None) is not None:
        os.environ["PRUNESCOPE_WORKERS"] = str(args.workers)
    if getattr(args, "processes", None) is not None:
        os.environ["PRUNESCOPE_SERVER_PROCESSES"] = str(args.processes)
    if getattr(args, "host", None) is not None:
        os.environ["PRUNESCOPE_HOST"] = args.host
    if getattr(args, "insecure", False):
        os.environ["PRUNESCOPE_INSECURE"] = "1"
    from prunescope.server.config import get_settings

    get_settings.cache_clear()


def _serve(args: argparse.Namespace, demo: bool) -> int:
    from prunescope.server.serving import serve

    return serve(args.host, args.port, args.log_level, demo)


def _worker(_args: argparse.Namespace) -> int:
    from prunescope.server.logs import configure_logging
    from prunescope.server.worker import standalone_worker

    configure_logging("INFO")
    standalone_worker()
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    from prunescope.server.config import get_settings
    from prunescope.server.db import upgrade_database

    settings = get_settings()
    upgrade_database(settings)
    print(f"database at {settings.sqlalchemy_url.split('@')[-1]} is up to date")
    return 0


def _project(args: argparse.Namespace):  # noqa: ANN202
    """(settings, project) named by args.project (an id or a name) on an upgraded database,
    or an exit code after saying there is no such project."""
    from prunescope.server.config import get_settings
    from prunescope.server.db import upgrade_database
    from prunescope.server.services import projects

    settings = get_settings()
    upgrade_database(settings)
    project = (
        projects.get_project(int(args.project), settings)
        if args.project.isdigit()
        else projects.find_project(args.project, settings)
    )
    if project is None:
        print(f"error: no project named {args.project!r}", file=sys.stderr)
        return 2
    return settings, project


def _project_and_file(args: argparse.Namespace):  # noqa: ANN202
    """(settings, project, path) for the `add` commands, or an exit code on bad input."""
    found = _project(args)
    if isinstance(found, int):
        return found
    settings, project = found
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    return settings, project, path


def _chunks(f):  # noqa: ANN001, ANN202
    from prunescope.server.storage import CHUNK_BYTES

    return iter(lambda: f.read(CHUNK_BYTES), b"")


def _validated(settings, job, ingested):  # noqa: ANN001, ANN202
    """What an upload's ingest job stored: run here (this process is no web server, so it
    may load torch) unless a worker took the job first, then wait for it."""
    from prunescope.server.worker import run_here

    print(f"validating (job {job.id})…", file=sys.stderr, flush=True)
    run_here(settings, job.id)
    return ingested(job, settings, timeout=24 * 3600.0)


def _checkpoint_add(args: argparse.Namespace) -> int:
    from prunescope.server.services import checkpoints

    found = _project_and_file(args)
    if isinstance(found, int):
        return found
    settings, project, path = found
    with open(path, "rb") as f:
        job = checkpoints.add_checkpoint(
            project.id,
            _chunks(f),
            filename=path.name,
            name=args.name,
            role=args.role,
            method=args.method,
            target_sparsity=args.target_sparsity,
            settings=settings,
        )
    ckpt = _validated(settings, job, checkpoints.ingested)
    print(
        f"stored checkpoint {ckpt.id} {ckpt.name!r} ({ckpt.format}): {ckpt.num_nonzero:,} of "
        f"{ckpt.num_params:,} prunable weights non-zero, {100 * ckpt.measured_sparsity:.2f}% sparse"
    )
    return 0


def _dataset_add(args: argparse.Namespace) -> int:
    from prunescope.server.services import datasets

    found = _project_and_file(args)
    if isinstance(found, int):
        return found
    settings, project, path = found
    with open(path, "rb") as f:
        job = datasets.add_dataset(
            project.id,
            _chunks(f),
            filename=path.name,
            name=args.name,
            active=args.activate,
            columns={"label": args.label_column, "text": args.text_column},
            settings=settings,
        )
    dataset = _validated(settings, job, datasets.ingested)
    print(
        f"stored dataset {dataset.id} {dataset.name!r} ({dataset.format}, {dataset.kind}): "
        f"{dataset.num_train:,} train + {dataset.num_test:,} test examples, "
        f"{dataset.num_classes} classes{' — active' if dataset.active else ''}"
    )
    return 0


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if args.token:
        return None
    import getpass

    password = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != password:
        raise ValueError("the two passwords differ")
    return password


def _users(args: argparse.Namespace) -> int:
    from prunescope.server import auth
    from prunescope.server.config import get_settings
    from prunescope.server.db import upgrade_database

    settings = get_settings()
    upgrade_database(settings)
    try:
        if args.action == "add":
            user, token = auth.add_user(
                args.name, _read_password(args), token=args.token, settings=settings
            )
            print(f"added user {user.name!r}")
            if token:
                print(f"API token (shown once; send as 'Authorization: Bearer <token>'): {token}")
        elif args.action == "remove":
            auth.remove_user(args.name, settings)
            print(f"removed user {args.name!r}; their sessions and tokens no longer work")
        else:
            for user in auth.list_users(settings):
                how = [w for w, has in (("password", user.has_password),
                                        (f"{user.tokens} token(s)", user.tokens)) if has]
                print(f"{user.name}\t{', '.join(how)}")
    except ValueError as exc:  # auth.AccountError, or differing passwords
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _projects_owner(args: argparse.Namespace) -> int:
    from prunescope.server.services import members

    found = _project(args)
    if isinstance(found, int):
        return found
    settings, project = found
    members.set_owner(project.id, args.user, settings)
    print(f"{args.user} now owns project {project.id} {project.name!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunescope", description="See what pruning changes inside a neural network."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "serve the API and dashboard on one port and start local workers"),
        ("demo", "create the demo projects, queue their jobs, and serve"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8050)
        p.add_argument("--data-dir", help="state directory (default: $PRUNESCOPE_DATA_DIR)")
        p.add_argument("--workers", type=int, help="local worker processes (default 1)")
        p.add_argument("--processes", type=int,
                       help="HTTP server processes (default 1; more serve more users at once)")
        p.add_argument("--log-level", default="warning")
        p.add_argument(
            "--insecure",
            action="store_true",
            help="serve beyond loopback without accounts (anyone on the network gets in)",
        )
    w = sub.add_parser("worker", help="run one worker against the configured database")
    w.add_argument("--data-dir")
    ck = sub.add_parser("checkpoint", help="checkpoints of a project")
    ck_sub = ck.add_subparsers(dest="action", required=True)
    add = ck_sub.add_parser("add", help="validate and store a checkpoint file")
    add.add_argument("project", help="project id or name")
    add.add_argument("file", help="safetensors or torch state_dict file")
    add.add_argument("--name", help="default: the file name without extension")
    add.add_argument("--role", choices=["dense", "pruned"])
    add.add_argument("--method", help="how it was pruned, e.g. wanda")
    add.add_argument("--target-sparsity", type=float)
    add.add_argument("--data-dir")
    ds = sub.add_parser("dataset", help="evaluation datasets of a project")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    ds_add = ds_sub.add_parser("add", help="validate and store a dataset file")
    ds_add.add_argument("project", help="project id or name")
    ds_add.add_argument("file", help=".npz, .zip of image folders, .csv, .jsonl or .parquet")
    ds_add.add_argument("--name", help="default: the file name without extension")
    ds_add.add_argument("--activate", action="store_true", help="make the project's jobs use it")
    ds_add.add_argument("--label-column", default="label", help="tables: the class column")
    ds_add.add_argument("--text-column", default="text", help="tables: the text column")
    ds_add.add_argument("--data-dir")
    us = sub.add_parser("users", help="accounts that may sign in")
    us_sub = us.add_subparsers(dest="action", required=True)
    us_add = us_sub.add_parser("add", help="add a user (prompts for a password)")
    us_add.add_argument("name")
    us_add.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    us_add.add_argument("--token", action="store_true", help="also print an API token")
    us_add.add_argument("--data-dir")
    us_rm = us_sub.add_parser("remove", help="remove a user, ending their sessions")
    us_rm.add_argument("name")
    us_rm.add_argument("--data-dir")
    us_ls = us_sub.add_parser("list", help="list users")
    us_ls.add_argument("--data-dir")
    pr = sub.add_parser("projects", help="project administration")
    pr_sub = pr.add_subparsers(dest="action", required=True)
    pr_own = pr_sub.add_parser("owner", help="give a project an owner (e.g. one made "
                               "before accounts existed, which no account sees)")
    pr_own.add_argument("project", help="project id or name")
    pr_own.add_argument("user")
    pr_own.add_argument("--data-dir")
    db = sub.add_parser("db", help="database administration")
    db.add_argument("action", choices=["upgrade"])
    db.add_argument("--data-dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _apply_environment(args)
    from prunescope.server.logs import configure_logging

    configure_logging("WARNING")
    if args.command == "serve":
        return _serve(args, demo=False)
    if args.command == "demo":
        return _serve(args, demo=True)
    if args.command == "worker":
        return _worker(args)
    if args.command == "db":
        return _db_upgrade(args)
    if args.command == "users":
        return _users(args)
    # Commands on one project's stored data: a refusal by the service layer is a message.
    handlers = {"projects": _projects_owner, "dataset": _dataset_add,
                "checkpoint": _checkpoint_add}
    if args.command in handlers:
        from prunescope.server.errors import ServiceError

        try:
            return handlers[args.command](args)
        except ServiceError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
