"""A throwaway PostgreSQL server for the tests: Debian's binaries, a cluster in a temporary
folder, loopback only, stopped and restarted at will (for the outage tests)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]))
    return candidates[-1] if candidates else None


def binaries_present() -> bool:
    return _binary("initdb") is not None and _binary("postgres") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`initdb` + `postgres` in `base`; as root they run as the `postgres` account (PostgreSQL
    refuses to run as root). Durability is off (fsync, full-page writes): tests want speed."""

    def __init__(self, base: Path | None = None) -> None:
        if not binaries_present():
            raise PostgresUnavailable(
                "PostgreSQL's initdb and postgres were not found; install Debian's "
                "`postgresql` package (make system-deps does)")
        # Not under pytest's own temporary folders: those are private to root, and the server
        # may run as another account.
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="prunescope-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable("running as root needs the `postgres` account "
                                          "(Debian's postgresql package makes it)") from exc
            self._user = "postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(list(args), check=True, user=self._user, capture_output=True,
                       cwd=self.base)

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self._user:
            for path in (self.base, self.sockets):
                shutil.chown(path, self._user, self._user)
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.base / "postgres.log", "ab")  # noqa: SIM115 - the server's lifetime
        self.process = subprocess.Popen(
            [_binary("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            user=self._user, stdout=log, stderr=subprocess.STDOUT, cwd=self.base)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception:  # noqa: BLE001 - starting up
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.base / "postgres.log").read_text(errors="replace")[-2000:]
                    raise PostgresUnavailable(f"PostgreSQL did not start:\n{tail}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open connections are cut, as when a server goes away."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def remove(self) -> None:
        """Stop the server and delete its cluster."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname=database, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql)

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        suffix = f" TEMPLATE {template}" if template else ""
        self.execute(f"CREATE DATABASE {name}{suffix}")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh cluster, started; stopped and deleted afterwards."""
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGINT (a clean shutdown), then SIGKILL if it does not end within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
