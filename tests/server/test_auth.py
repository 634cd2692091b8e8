"""Accounts: hashing, the users CLI, when sign-in is required, sessions, CSRF and throttling."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from prunescope.server import auth
from prunescope.server.cli import main as cli_main
from prunescope.server.db import session_scope
from prunescope.server.login_throttle import LoginThrottle
from prunescope.server.main import create_app
from prunescope.server.tables import ApiToken, User, UserSession, utcnow

PASSWORD = "correct horse battery"
ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def secured(settings):
    return settings.model_copy(update={"auth": "on"})


@pytest.fixture
def alice(secured) -> str:
    _, token = auth.add_user("alice", PASSWORD, token=True, settings=secured)
    return token


@pytest.fixture
def client(secured, alice):
    with TestClient(create_app(secured, dashboard=False)) as c:
        yield c


def _login(client, name="alice", password=PASSWORD, headers=ORIGIN, **form):  # noqa: ANN001
    return client.post(
        "/login", data={"name": name, "password": password, **form}, headers=headers,
        follow_redirects=False,
    )


# ---------------------------------------------------------------- hashing


def test_password_hash_is_salted_scrypt_and_verifies():
    first, second = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert first != second  # a fresh salt each time
    _, n, r, p, salt, digest = first.split("$")
    expected = hashlib.scrypt(
        PASSWORD.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    assert digest == expected.hex() and len(salt) == 32
    assert auth.verify_password(PASSWORD, first)
    assert not auth.verify_password(PASSWORD + "!", first)
    assert not auth.verify_password(PASSWORD, None)


def test_tokens_are_stored_as_sha256_only(secured, alice):
    assert len(alice) >= 43  # 32 random bytes in URL-safe base64
    with session_scope(secured) as s:
        stored = s.scalars(select(ApiToken.token_hash)).all()
        user = s.scalar(select(User))
    assert stored == [hashlib.sha256(alice.encode()).hexdigest()]
    assert PASSWORD not in user.password_hash


# ---------------------------------------------------------------- the users CLI


def test_users_cli_add_list_remove(settings, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli_main(["users", "add", "bob", "--password-stdin", "--token"]) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1].split()[-1]
    assert auth.check_password("bob", PASSWORD, settings) is not None
    assert auth.check_password("bob", PASSWORD[:-1], settings) is None
    with session_scope(settings) as s:
        assert s.scalar(select(ApiToken.token_hash)) == hashlib.sha256(token.encode()).hexdigest()
    assert cli_main(["users", "list"]) == 0
    assert "bob\tpassword, 1 token(s)" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli_main(["users", "add", "carol", "--password-stdin"]) == 1
    assert "at least 8" in capsys.readouterr().err
    assert cli_main(["users", "add", "bob", "--token"]) == 1  # taken
    assert cli_main(["users", "remove", "bob"]) == 0
    assert cli_main(["users", "remove", "bob"]) == 1
    assert auth.list_users(settings) == []


# ---------------------------------------------------------------- when sign-in is required


def test_auth_modes(settings):
    local = settings.model_copy(update={"auth": "auto", "host": "127.0.0.1"})
    assert not auth.auth_enabled(local) and auth.startup_problem(local) is None
    network = local.model_copy(update={"host": "0.0.0.0"})
    assert auth.auth_enabled(network)
    assert "users add" in auth.startup_problem(network)  # refuses to serve without a user
    insecure = network.model_copy(update={"insecure": True})
    assert not auth.auth_enabled(insecure) and auth.startup_problem(insecure) is None
    assert "--insecure" in auth.startup_problem(network.model_copy(update={"auth": "off"}))
    assert "needs an account" in auth.startup_problem(local.model_copy(update={"auth": "on"}))
    auth.add_user("alice", PASSWORD, token=False, settings=settings)
    assert auth.auth_enabled(local)  # accounts exist: sign-in everywhere
    assert auth.startup_problem(network) is None
    assert not auth.auth_enabled(local.model_copy(update={"auth": "off"}))


def test_serve_refuses_network_without_accounts(settings, monkeypatch, capsys):
    monkeypatch.setenv("PRUNESCOPE_HOST", "127.0.0.1")  # restored after the flag sets it
    assert cli_main(["serve", "--host", "0.0.0.0", "--workers", "0"]) == 2
    assert "users add" in capsys.readouterr().err


def test_local_mode_needs_no_credentials_but_refuses_foreign_origins(settings):
    with TestClient(create_app(settings, dashboard=False)) as c:
        r = c.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"})
        assert r.status_code == 201
        assert c.get("/api/v1/auth/me").json()["kind"] == "local"
        foreign = c.post("/api/v1/projects", json={"name": "q", "architecture": "mlp"},
                         headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403


def test_no_credentials_401_pages_redirect_to_login(client):
    assert client.get("/api/v1/health").status_code == 200
    r = client.get("/api/v1/projects")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    page = client.get("/projects/1/layers?x=1", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fprojects%2F1%2Flayers%3Fx%3D1"
    assert client.get("/login").status_code == 200
    bad = client.get("/api/v1/projects", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_bearer_token_needs_no_origin(client, alice):
    bearer = {"Authorization": f"Bearer {alice}"}
    assert client.get("/api/v1/auth/me", headers=bearer).json()["name"] == "alice"
    r = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"},
                    headers={**bearer, "Origin": "https://elsewhere.example"})
    assert r.status_code == 201


# ---------------------------------------------------------------- sessions


def test_login_sets_a_safe_cookie_and_logout_ends_the_session(client):
    assert _login(client, password="wrong password").status_code == 401
    r = _login(client, next="/projects/1")
    assert r.status_code == 303 and r.headers["location"] == "/projects/1"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    session_id = r.cookies[auth.SESSION_COOKIE]
    assert client.get("/api/v1/auth/me").json()["name"] == "alice"
    out = client.post("/logout", headers=ORIGIN, follow_redirects=False)
    assert out.status_code == 303
    client.cookies.set(auth.SESSION_COOKIE, session_id)  # replaying the old cookie
    assert client.get("/api/v1/auth/me").status_code == 401


def test_secure_cookie_over_https(secured, alice):
    with TestClient(create_app(secured, dashboard=False), base_url="https://testserver") as c:
        r = _login(c, headers={"Origin": "https://testserver"})
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_login_issues_a_new_session_id_no_fixation(client, secured):
    client.cookies.set(auth.SESSION_COOKIE, "chosen-by-an-attacker")
    first = _login(client).cookies[auth.SESSION_COOKIE]
    assert first != "chosen-by-an-attacker"
    second = _login(client).cookies[auth.SESSION_COOKIE]
    assert second != first
    with session_scope(secured) as s:
        live = set(s.scalars(select(UserSession.id_hash)))
    # The session the browser brought is ended, not carried over; only the new one lives.
    assert live == {auth.token_digest(second)}


def test_expired_session_and_removed_user_are_refused(client, secured, alice):
    _login(client)
    assert client.get("/api/v1/auth/me").status_code == 200
    with session_scope(secured) as s:
        s.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get("/api/v1/auth/me").status_code == 401
    auth.remove_user("alice", secured)
    assert client.get("/api/v1/auth/me",
                      headers={"Authorization": f"Bearer {alice}"}).status_code == 401


def test_login_next_stays_on_this_server(client):
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example"):
        assert _login(client, next=target).headers["location"] == "/"


# ---------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),  # no Origin, no Referer
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://testserver.evil.example"}, 403),
        ({"Referer": "https://evil.example/page"}, 403),
        ({"Origin": "null"}, 403),
        (ORIGIN, 201),
        ({"Referer": "http://testserver/projects"}, 201),
    ],
)
def test_cookie_authenticated_changes_need_this_origin(client, headers, status):
    _login(client)
    r = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"},
                    headers=headers)
    assert r.status_code == status, r.text


def test_csrf_covers_every_state_changing_method_and_dash(client):
    _login(client)
    for method, path in [("PUT", "/api/v1/projects/1/datasets/active"),
                         ("PATCH", "/api/v1/uploads/x"), ("DELETE", "/api/v1/bookmarks/1"),
                         ("POST", "/_dash-update-component"), ("POST", "/logout")]:
        r = client.request(method, path, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403, (method, path)


def test_login_form_from_another_site_is_refused(client):
    assert _login(client, headers={"Origin": "https://evil.example"}).status_code == 403


# ---------------------------------------------------------------- throttling


def test_failed_logins_are_limited_per_name(client):
    for _ in range(5):
        assert _login(client, password="wrong password").status_code == 401
    # Even the right password waits now: guessing cannot continue at full speed.
    assert _login(client).status_code == 429


def test_failed_logins_are_limited_per_client(client):
    for i in range(5):
        assert _login(client, name=f"nobody{i}").status_code == 401
    assert _login(client).status_code == 429


def _fail(throttle, name, client):  # noqa: ANN001
    """An attempt let through and left counted, as a wrong password leaves it."""
    assert throttle.attempt(name, client) is not None, (name, client)


def test_throttle_counts_names_and_clients_apart(settings):
    throttle = LoginThrottle(limit=2, settings=settings)
    _fail(throttle, "alice", "10.0.0.1")
    _fail(throttle, "alice", "10.0.0.2")
    _fail(throttle, "bob", "10.0.0.3")
    assert throttle.attempt("alice", "10.0.0.3") is None  # the name, to a client that failed
    owner = throttle.attempt("alice", "10.0.0.4")  # and open to one that never failed
    assert owner is not None
    throttle.succeeded(owner)
    _fail(throttle, "dave", "10.0.0.1")
    assert throttle.attempt("erin", "10.0.0.1") is None  # the client, under any name
    assert throttle.attempt("bob", "10.0.0.5") is not None


def test_an_ipv6_client_is_its_64_block(settings):
    throttle = LoginThrottle(limit=2, settings=settings)
    _fail(throttle, "alice", "2001:db8::1")
    _fail(throttle, "bob", "2001:db8::2")
    assert throttle.attempt("carol", "2001:db8::ffff:1") is None  # another address, same /64
    assert throttle.attempt("carol", "2001:db8:0:1::1") is not None
    _fail(throttle, "zoe", "::ffff:10.0.0.7")
    _fail(throttle, "zoe", "10.0.0.7")
    assert throttle.attempt("erin", "10.0.0.7") is None  # IPv4, mapped or not, is one client


def test_a_right_password_withdraws_its_attempt(settings):
    throttle = LoginThrottle(limit=2, settings=settings)
    for _ in range(5):
        throttle.succeeded(throttle.attempt("alice", "10.0.0.1"))
    _fail(throttle, "alice", "10.0.0.1")


def test_every_server_process_counts_the_same_failures_and_they_age_out(settings):
    from sqlalchemy import select, update

    from prunescope.server.db import session_scope
    from prunescope.server.tables import LoginFailure, utcnow

    first = LoginThrottle(limit=3, settings=settings)
    second = LoginThrottle(limit=3, settings=settings)  # another process, same database
    for throttle in (first, second, first):
        _fail(throttle, "alice", "10.0.0.9")
    _fail(first, "zoe", "10.0.0.1")
    assert second.attempt("alice", "10.0.0.1") is None and first.attempt("zoe", "10.0.0.9") is None
    with session_scope(settings) as s:
        stored = s.scalars(select(LoginFailure.key_hash)).all()
        # Refused attempts are not stored; no name or address is.
        assert len(stored) == 8 and not any("10.0.0.9" in k or "alice" in k for k in stored)
        s.execute(update(LoginFailure).values(at=utcnow() - timedelta(seconds=61)))
    assert second.attempt("alice", "10.0.0.9") is not None  # a minute later: free again


def test_dashboard_callbacks_run_as_the_signed_in_user(secured, alice):
    body = {
        "output": "signed-in.children",
        "outputs": {"id": "signed-in", "property": "children"},
        "inputs": [{"id": "header-url", "property": "pathname", "value": "/"}],
        "changedPropIds": ["header-url.pathname"],
    }
    with TestClient(create_app(secured)) as c:
        assert c.get("/", follow_redirects=False).status_code == 303
        assert c.post("/_dash-update-component", json=body, headers=ORIGIN).status_code == 401
        _login(c)
        r = c.post("/_dash-update-component", json=body, headers=ORIGIN)
        assert r.status_code == 200 and "signed in as alice" in r.text
        assert c.post("/_dash-update-component", json=body).status_code == 403  # no Origin


def test_dashboard_shows_who_is_signed_in(secured, alice):
    from prunescope.dashboard.app import signed_in_as

    with auth.acting_as(auth.Principal("user", user_id=1, name="alice")):
        assert "signed in as alice" in str(signed_in_as("/"))
    with auth.acting_as(auth.LOCAL):
        assert signed_in_as("/") == []
