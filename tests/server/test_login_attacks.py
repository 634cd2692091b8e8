"""Guessing passwords against a real server: many guesses at once get no further than the
limit, across server processes, and a stranger's guesses do not lock the owner out."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from prunescope.server import auth
from tests.postgres import stop_process

PASSWORD = "correct horse battery"
LIMIT = 5  # PRUNESCOPE_LOGIN_FAILURES_PER_MINUTE's default
STRANGER, OWNER = "127.0.0.1", "127.0.0.2"  # Linux routes all of 127/8 to the loopback device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _login(port: int, password: str, *, source: str = STRANGER, name: str = "alice") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                      source_address=(source, 0))
    try:
        conn.request("POST", "/login",
                     body=urllib.parse.urlencode({"name": name, "password": password}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def server(settings):
    """`prunescope serve --processes 2` with sign-in on and one account, alice."""
    auth.add_user("alice", PASSWORD, token=False, settings=settings)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunescope.server.cli", "serve", "--port", str(port),
         "--workers", "0", "--processes", "2"],
        env={**os.environ, "PRUNESCOPE_AUTH": "on"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        yield port
    finally:
        stop_process(proc)


def test_parallel_guesses_get_no_further_than_the_limit(server):
    guesses = 200
    start = threading.Barrier(guesses)

    def guess(i: int) -> int:
        start.wait()
        return _login(server, f"wrong password {i}")

    with ThreadPoolExecutor(guesses) as pool:
        statuses = Counter(pool.map(guess, range(guesses)))
    # Two server processes, one count: only `limit` guesses reach the password check.
    assert statuses == {401: LIMIT, 429: guesses - LIMIT}, statuses


def test_a_strangers_guesses_do_not_lock_the_owner_out(server):
    for i in range(50):
        assert _login(server, f"guess {i}") in (401, 429)
    assert _login(server, PASSWORD) == 429  # the guesser's own address waits, right or wrong
    assert _login(server, PASSWORD, name="bob") == 429  # under any name
    # The owner, from an address that never failed, signs in (303: on to the page).
    assert _login(server, PASSWORD, source=OWNER) == 303
    # A guesser at another address gets one guess at the name under attack, then waits.
    assert _login(server, "guess from elsewhere", source="127.0.0.3") == 401
    assert _login(server, PASSWORD, source="127.0.0.3") == 429
