"""Throughput and server memory of resumable uploads against a bare HTTP sink on loopback.

The real server (`uvicorn prunescope.server.main:create_app` in a subprocess, temporary data
directory)
receives a file through the tus chunk protocol: POST /api/v1/uploads, then PATCH requests of
`--chunk-mb` (the browser's chunk size) written to disk and hashed as they arrive. Baseline,
measured in the same run with the same client, chunking and keep-alive connection: a second
uvicorn process whose app reads every body and drops it — the HTTP stack and loopback with
nothing done to the bytes (see ../shared/BENCH.md). Runs alternate sink/upload and report
medians; peak RSS is each server process's high-water mark (reset before every run through
/proc/<pid>/clear_refs, else sampled) above its RSS when the run began; server CPU is the
process's user + system time per GiB received, which other load on a shared machine moves
far less than wall-clock throughput. The multipart
endpoint, which streams to a spooled temporary file and then stages it, is timed once for
context: it answers once everything was read, hashed and staged (202: the check is a
worker's job).

The upload phase only: finalizing (POST .../checkpoints/from-upload) loads and validates the
file as a checkpoint, a cost set by the model, not by the transfer.

Creating an upload is timed too: a plain POST (baseline) against a POST that declares the
sha256 of content already stored in one of the caller's projects, which completes at once
(deduplication: the access check on the declared digest is part of its cost). With `--auth`
the server runs with accounts and every request carries a user's bearer token, so the per
request sign-in and the upload's owner checks are measured as a signed-in user meets them.

With `--compare-with TREE` a second app server runs the code of another checkout (e.g. the
commit before a change) beside this one, with its own data directory; the two take turns in
every run and every creation, and the last lines give this/baseline ratios.

    .venv/bin/python bench/upload_throughput.py [--size-mb 1024] [--chunk-mb 16] [--repeats 3]
                                 [--creates 60] [--auth] [--compare-with ../prunescope-before]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from upload_clients import Creator, multipart_upload, request, send_in_chunks, tus_upload

MiB = 1024 * 1024
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


async def sink_app(scope, receive, send) -> None:  # noqa: ANN001
    """ASGI app that reads a request body to the end and answers like a tus PATCH."""
    if scope["type"] != "http":
        return
    received = int(dict(scope["headers"]).get(b"upload-offset", b"0"))
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"upload-offset", str(received).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b""})


# ------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_uvicorn(app: str, env: dict[str, str], *extra: str,
                   cwd: Path = ROOT) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=cwd,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{app} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{app} did not start")


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")


class PeakRss:
    """Peak resident memory of a process during a `with` block, above its level at the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        try:  # "5" resets the kernel's peak-RSS high-water mark (Linux 4.0+)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.start_kib = _rss_kib(self.pid, "VmRSS")
        self.peak_kib = self.start_kib
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kib = max(self.peak_kib, _rss_kib(self.pid, "VmRSS"))

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.exact:
            self.peak_kib = max(self.peak_kib, _rss_kib(self.pid, "VmHWM"))

    @property
    def increase_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


def _user_token(data_dir: Path) -> str:
    """A user with an API token in a fresh data directory (the server is not running yet)."""
    from prunescope.server.auth import add_user
    from prunescope.server.config import Settings
    from prunescope.server.db import upgrade_database

    settings = Settings(data_dir=data_dir)
    upgrade_database(settings)
    return add_user("bench", None, token=True, settings=settings)[1]


def _store_in_project(data_dir: Path, project_id: int, size: int) -> tuple[str, int]:
    """Random bytes stored as a checkpoint's weights in the project: what a deduplicated
    create points to (a row, as `from-upload` leaves, without validating random bytes)."""
    from prunescope.server.config import Settings
    from prunescope.server.db import session_scope
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import Checkpoint

    settings = Settings(data_dir=data_dir)
    store = artifact_store(settings)
    staged, digest, size = store.write_stream([os.urandom(size)])
    store.adopt(staged, digest)
    with session_scope(settings) as s:
        s.add(Checkpoint(project_id=project_id, name="stored", role="dense", source="upload",
                         format="safetensors", artifact_digest=digest, size_bytes=size))
    return digest, size


# ------------------------------------------------------------------ main


def _write_random_file(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(16 * MiB, left))
            sha.update(block)
            f.write(block)
            left -= len(block)
    return sha.hexdigest()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(pid: int, size: int, run, after=None) -> tuple[float, float, float]:  # noqa: ANN001
    """(MiB/s, peak RSS increase in MiB, server CPU seconds per GiB) of one run."""
    with PeakRss(pid) as rss:
        cpu = _cpu_seconds(pid)
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds(pid) - cpu
    if after is not None:
        after(result)
    return size / MiB / seconds, rss.increase_mib, cpu / (size / MiB / 1024)


def _app_server(tree: Path, data_dir: Path, tmp_path: Path, size: int,
                auth_on: bool) -> tuple[subprocess.Popen, int, dict[str, str]]:
    """The app of the source tree `tree`, serving its own data directory; its bearer header."""
    env = {
        "PRUNESCOPE_DATA_DIR": str(data_dir),
        "PRUNESCOPE_MAX_UPLOAD_BYTES": str(size + 64 * MiB),
        "PRUNESCOPE_AUTH": "on" if auth_on else "off",
        "TMPDIR": str(tmp_path),  # the multipart spool file
        "PYTHONPATH": str(tree),
    }
    auth = {"Authorization": f"Bearer {_user_token(data_dir)}"} if auth_on else {}
    proc, port = _start_uvicorn("prunescope.server.main:create_app", env, "--factory", cwd=tree)
    return proc, port, auth


def _project(port: int, auth: dict[str, str], name: str) -> int:
    status, _, body = request(port, "POST", "/api/v1/projects",
                               {"Content-Type": "application/json", **auth},
                               json.dumps({"name": name, "architecture": "mlp"}))
    assert status == 201, body
    return json.loads(body)["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--chunk-mb", type=int, default=16, help="PATCH body size in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="alternating sink/upload pairs")
    parser.add_argument("--skip-multipart", action="store_true")
    parser.add_argument("--creates", type=int, default=60,
                        help="upload creations timed, of each kind")
    parser.add_argument("--auth", action="store_true",
                        help="serve with accounts; requests carry a user's bearer token")
    parser.add_argument("--compare-with", type=Path, metavar="TREE",
                        help="another checkout of PruneScope served beside this one, in turns "
                             "with it, as the named baseline (e.g. the code before a change)")
    args = parser.parse_args()
    size, chunk = args.size_mb * MiB, args.chunk_mb * MiB
    trees = {"this": ROOT}
    if args.compare_with:
        trees["baseline"] = args.compare_with.resolve()

    with tempfile.TemporaryDirectory(prefix="prunescope-bench-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "upload.bin"
        digest = _write_random_file(source, size)
        servers = {name: _app_server(tree, tmp_path / name, tmp_path, size, args.auth)
                   for name, tree in trees.items()}
        sink, sink_port = _start_uvicorn("upload_throughput:sink_app", {}, "--app-dir", str(HERE))
        rows: dict[str, list[tuple[float, float]]] = {"sink": [], **{n: [] for n in servers}}
        creates: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in servers}
        try:
            for run in range(args.repeats):
                rows["sink"].append(
                    _timed(sink.pid, size, lambda: send_in_chunks(sink_port, "/", source, chunk))
                )
                for name in list(servers)[:: 1 if run % 2 == 0 else -1]:
                    proc, port, auth = servers[name]
                    rows[name].append(_timed(
                        proc.pid, size,
                        lambda port=port, auth=auth: tus_upload(port, source, chunk, digest,
                                                                auth),
                        # Untimed: aborting the finished upload frees its disk for the next run.
                        lambda url, port=port, auth=auth: request(port, "DELETE", url,
                                             {"Tus-Resumable": "1.0.0", **auth}),
                    ))
            creators = {}
            for name, (_, port, auth) in servers.items():
                pid = _project(port, auth, "bench")
                stored = _store_in_project(tmp_path / name, pid, MiB)
                creators[name] = (Creator(port, auth), stored)
            for _ in range(args.creates):  # in turns, so both meet the same load
                for name, (creator, (stored_digest, length)) in creators.items():
                    creates[name][0].append(creator.create(length, None))
                    creates[name][1].append(creator.create(length, stored_digest))
            multipart = None
            if not args.skip_multipart:
                proc, port, auth = servers["this"]
                pid = _project(port, auth, "multipart")
                multipart = _timed(proc.pid, size,
                                   lambda: multipart_upload(port, source, pid, auth))
        finally:
            for proc in [s[0] for s in servers.values()] + [sink]:
                proc.terminate()
                proc.wait(30)
    _report(args, rows, creates, multipart)


def _report(args: argparse.Namespace, rows: dict, creates: dict, multipart) -> None:  # noqa: ANN001
    def median(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    def ms(values: list[float]) -> float:
        return 1000 * statistics.median(values)

    print(
        f"upload of {args.size_mb} MiB over loopback in {args.chunk_mb} MiB requests, "
        f"{args.repeats} alternating runs (medians)"
        + (", as a signed-in user (bearer token)" if args.auth else ", without accounts")
    )
    print(f"{'path':52} {'MiB/s':>8} {'peak RSS +MiB':>14} {'CPU s/GiB':>10}")
    print(
        f"{'baseline: uvicorn sink, body read and dropped':52} "
        f"{median('sink', 0):8.0f} {median('sink', 1):14.1f} {median('sink', 2):10.2f}"
    )
    for name in creates:
        label = "tus PATCH: streamed to disk + sha256" + (f" ({name})" if len(creates) > 1 else "")
        print(f"{label:52} {median(name, 0):8.0f} {median(name, 1):14.1f} "
              f"{median(name, 2):10.2f}")
    if multipart is not None:
        print(
            f"{'context: multipart POST (spool, copy, hash, stage)':52} "
            f"{multipart[0]:8.0f} {multipart[1]:14.1f} {multipart[2]:10.2f}"
        )
    for name, (plain, dedup) in creates.items():
        print(
            f"create ({name}): plain {ms(plain):.2f} ms, deduplicated (digest in the caller's "
            f"project) {ms(dedup):.2f} ms; median of {args.creates}, dedup/plain "
            f"{ms(dedup) / ms(plain):.2f}"
        )
    runs = ", ".join(
        f"{t[0]:.0f}/{s[0]:.0f}" for t, s in zip(rows["this"], rows["sink"], strict=True)
    )
    print(f"per-run tus/sink MiB/s: {runs}")
    if "baseline" in creates:
        pairs = list(zip(rows["this"], rows["baseline"], strict=True))
        speed = [t[0] / b[0] for t, b in pairs]
        # Server CPU per byte: what the code costs, little moved by other load on the machine.
        cpu = [t[2] / b[2] for t, b in pairs]
        plain = ms(creates["this"][0]) / ms(creates["baseline"][0])
        dedup = ms(creates["this"][1]) / ms(creates["baseline"][1])
        print(f"this / baseline: tus throughput {statistics.median(speed):.3f} (per run: "
              + ", ".join(f"{r:.2f}" for r in speed) + f"), server CPU per GiB "
              f"{statistics.median(cpu):.3f} (per run: " + ", ".join(f"{r:.2f}" for r in cpu)
              + f"); create time plain {plain:.3f}, deduplicated {dedup:.3f}")
    ratios = [t[0] / s[0] for t, s in zip(rows["this"], rows["sink"], strict=True)]
    print(
        f"tus upload / sink throughput: {statistics.median(ratios):.2f} "
        f"({median('this', 0):.0f} MiB/s, target >= 150; +{median('this', 1):.0f} MiB RSS, "
        "target < 100)"
    )


if __name__ == "__main__":
    main()
