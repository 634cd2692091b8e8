"""What every request meets before a route: the Host it names must be one this server answers
to (DNS rebinding), no other site may frame its pages, and its body may not grow past what its
route takes, however it is framed (Content-Length or chunked)."""

from __future__ import annotations

import ipaddress
import re
import socket

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prunescope.server.auth import current_principal
from prunescope.server.config import Settings

MiB = 1024 * 1024
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
# Multipart framing and form fields come on top of an upload's file.
UPLOAD_FRAMING = MiB
# The Datasets page sends its file through a callback (dcc.Upload, base64 in JSON), up to
# DASHBOARD_UPLOAD_LIMIT of dashboard/pages/datasets.py.
DASHBOARD_UPLOAD_FILE_BYTES = 200 * MiB
DASH_CALLBACK = "/_dash-update-component"
# Any principal's callbacks: a lasso sends every selected point (about 150 bytes each), and a
# share link's visitor may lasso tens of thousands of them on the geometry page.
DASH_CALLBACK_BYTES = 16 * MiB
# Routes whose body is a file: multipart uploads into a project, chunks of resumable uploads.
_UPLOAD_POST = re.compile(r"/api/v1/projects/\d+/(checkpoints|datasets|dynamics)/?")
_UPLOAD_PATCH = re.compile(r"/api/v1/uploads/[^/]+/?")


def host_name(host: str) -> str:
    """The name in a Host header, without its port, lower case: `[::1]:8050` → `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    if sep and (port.isdigit() or not port) and ":" not in name:
        host = name
    return host.rstrip(".")


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_host_names(settings: Settings) -> frozenset[str] | None:
    """The host names this server answers to (None: any): loopback's, the address it binds
    (with a wildcard address, the machine's own name) and PRUNESCOPE_ALLOWED_HOSTS."""
    named = {host_name(n) for n in settings.allowed_hosts.split(",") if n.strip()}
    if "*" in named:
        return None
    bind = host_name(settings.host)
    names = LOOPBACK_NAMES | named
    if bind in WILDCARD_ADDRESSES:
        names |= {socket.gethostname().lower()}
    else:
        names |= {bind}
    return frozenset(names)


def frame_ancestors(settings: Settings) -> list[str]:
    """The origins besides this server's own that may show its pages in a frame."""
    return [o.rstrip("/") for o in re.split(r"[\s,]+", settings.frame_ancestors) if o]


class HostAndFraming:
    """Refuses (400) a request whose Host this server does not answer to: a page of another
    site whose name was made to resolve to this machine (DNS rebinding) names its own. An IP
    address passes, as rebinding always names a domain. Every answer forbids framing by
    other sites (clickjacking): CSP `frame-ancestors`, and X-Frame-Options for old browsers
    where no other origin is allowed (it cannot name one)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.names = allowed_host_names(settings)
        ancestors = frame_ancestors(settings)
        self.headers = [(b"content-security-policy",
                         " ".join(["frame-ancestors 'self'", *ancestors]).encode("latin-1"))]
        if not ancestors:
            self.headers.append((b"x-frame-options", b"SAMEORIGIN"))

    def permits(self, host: str) -> bool:
        # No Host at all (HTTP/1.0 probes) cannot come from a browser, so not from rebinding.
        name = host_name(host)
        return self.names is None or name in self.names or not name or _is_ip_address(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        if scope["type"] == "websocket":
            if not self.permits(host):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in self.headers if h[0] not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if not self.permits(host):
            detail = (f"this server does not answer to the host name {host_name(host)!r} "
                      "(a page of another site may have made it point here); open it by a "
                      "name it answers to, or add the name to PRUNESCOPE_ALLOWED_HOSTS "
                      "(comma-separated; '*' for any)")
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, framed)
            return
        await self.app(scope, receive, framed)


def is_upload(method: str, path: str) -> bool:
    """Whether a request carries a file (the upload limit) rather than a small JSON body."""
    return ((method == "POST" and _UPLOAD_POST.fullmatch(path) is not None)
            or (method == "PATCH" and _UPLOAD_PATCH.fullmatch(path) is not None))


class BodyLimit:
    """Answers 413 once a request's body exceeds what its route takes: a declared length at
    once, bytes as they arrive otherwise (chunked bodies declare none). Uploads may reach
    PRUNESCOPE_MAX_UPLOAD_BYTES; every other body PRUNESCOPE_MAX_JSON_BYTES, except dashboard
    callbacks: 16 MiB (a lasso's points), and for signed-in users room for the Datasets
    page's file, which it sends through one.
    Runs inside the sign-in check, whose principal it reads."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.upload = settings.max_upload_bytes + UPLOAD_FRAMING
        self.json = settings.max_json_bytes
        file = min(settings.max_upload_bytes, DASHBOARD_UPLOAD_FILE_BYTES)
        self.callback_upload = max(self.json, 4 * -(-file // 3) + MiB)  # base64, and the rest

    def limit(self, scope: Scope) -> tuple[int, str]:
        """The most body bytes this request may send, and the setting that says so."""
        method, path = scope["method"], scope["path"]
        if is_upload(method, path):
            return self.upload, "PRUNESCOPE_MAX_UPLOAD_BYTES"
        if path == DASH_CALLBACK:
            if current_principal().kind in ("user", "local"):
                return self.callback_upload, "PRUNESCOPE_MAX_UPLOAD_BYTES"
            return max(self.json, DASH_CALLBACK_BYTES), "PRUNESCOPE_MAX_JSON_BYTES"
        return self.json, "PRUNESCOPE_MAX_JSON_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit(scope)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _too_large(send, f"{int(length)} bytes", limit, setting)
            return
        received = 0
        answered = False  # the 413 went out: the rest of the exchange is the app's alone
        started = False

        async def counted() -> Message:
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    answered = True
                    if not started:
                        await _too_large(send, f"more than {limit} bytes", limit, setting)
                    # The app stops reading as if the client had gone; had it already begun
                    # its answer, that answer stays unfinished and the server drops the
                    # connection.
                    return {"type": "http.disconnect"}
            return message

        async def answering(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, answering)
        except Exception:
            if not answered:
                raise  # an error of the app's own; what a refused body makes it raise is not


async def _too_large(send: Send, size: str, limit: int, setting: str) -> None:
    """413, closing the connection: the rest of the body is not worth reading."""
    body = JSONResponse({"detail": (
        f"request body of {size} exceeds the limit of {limit} bytes for this route; raise "
        f"{setting} if such a body is expected")}, status_code=413)
    await send({"type": "http.response.start", "status": 413,
                "headers": [*body.raw_headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body.body})
