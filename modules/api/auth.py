"""--api-auth (HTTP Basic on every API route, /docs and /openapi.json included), --api-log and CORS.

Auth is one ASGI middleware rather than a per-route dependency, so no route can be added without it:
with --nowebui every path is covered; beside the UI, every API path (see `is_api_path`).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import time
from typing import Callable, Optional

log = logging.getLogger("atelier.api")

API_PREFIXES = ("/sdapi/", "/atelier/")
API_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


def is_api_path(path: str) -> bool:
    return path in API_PATHS or path.startswith(API_PREFIXES) or path.rstrip("/") in API_PATHS


def parse_credentials(value: Optional[str]) -> dict[str, str]:
    """`user:pass[,user2:pass2]` -> {user: pass}. The password may contain ':'."""
    credentials: dict[str, str] = {}
    for pair in (value or "").split(","):
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError("--api-auth: expected user:password[,user2:password2]")
        credentials[user] = password
    return credentials


def check_basic(header: Optional[str], credentials: dict[str, str]) -> bool:
    """True when the Authorization header carries one of the credentials. Compares in constant time, and
    against every entry, so neither a wrong user nor a wrong password answers faster."""
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(":")
    if not sep:
        return False
    ok = False
    for known_user, known_password in credentials.items():
        user_ok = secrets.compare_digest(user.encode(), known_user.encode())
        password_ok = secrets.compare_digest(password.encode(), known_password.encode())
        ok |= user_ok & password_ok
    return ok


def basic_user(header: str) -> str:
    """The user name of a Basic header that check_basic has accepted."""
    return base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")[0]


class ApiMiddleware:
    """Pure ASGI: Basic auth for protected paths, and one log line per API request with --api-log."""

    def __init__(self, app, credentials: dict[str, str], protected: Callable[[str], bool], api_log: bool = False):
        self.app, self.credentials, self.protected, self.api_log = app, credentials, protected, api_log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.credentials and self.protected(path) and not self._authorized(scope):
            await self._refuse(scope, send)
            if self.api_log:
                log.info("API %s %s 401 %s", scope.get("method", "WS"), path, _client(scope))
            return
        if not (self.api_log and scope["type"] == "http" and is_api_path(path)):
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [0]

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.info("API %s %s %d %s %.3fs", scope.get("method"), path, status[0], _client(scope),
                     time.monotonic() - started)

    def _authorized(self, scope) -> bool:
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if not check_basic(header, self.credentials):
            return False
        # The verified name, for per-client limits (client_limits.py): only ever set after the check.
        scope.setdefault("state", {})["auth_user"] = basic_user(header)
        return True

    async def _refuse(self, scope, send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        payload = json.dumps({"error": "Unauthorized", "detail": "Incorrect username or password"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"www-authenticate", b'Basic realm="atelier"')]})
        await send({"type": "http.response.body", "body": payload})


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


def file_credentials(args) -> dict[str, str]:
    """--auth-file: one user:password a line (blank lines and # comments skipped), for the UI and the API."""
    path = getattr(args, "auth_file", None)
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return parse_credentials(",".join(lines)) if lines else {}


def install(app, args) -> None:
    shared = file_credentials(args)
    credentials = {**(parse_credentials(args.api_auth) if getattr(args, "api_auth", None) else {}), **shared}
    protected: Callable[[str], bool] = (lambda path: True) if getattr(args, "nowebui", False) else is_api_path
    if credentials or getattr(args, "api_log", False):
        app.add_middleware(ApiMiddleware, credentials=credentials, protected=protected,
                           api_log=bool(getattr(args, "api_log", False)))


def install_ui_auth(app, args) -> None:
    """--gradio-auth (and --auth-file): the same Basic auth on every path that isn't the API's: the page,
    Gradio's queue, file, upload and internal routes."""
    credentials = {**(parse_credentials(args.gradio_auth) if getattr(args, "gradio_auth", None) else {}),
                   **file_credentials(args)}
    if credentials and not getattr(args, "nowebui", False):
        app.add_middleware(ApiMiddleware, credentials=credentials, protected=lambda path: not is_api_path(path))


def install_cors(app, args) -> None:
    """CORS only when asked for. Added after auth, so it sits outside it and answers preflights itself."""
    origins = [o.strip() for o in (getattr(args, "cors_allow_origins", None) or "").split(",") if o.strip()]
    regex = getattr(args, "cors_allow_origins_regex", None)
    if not origins and not regex:
        return
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=regex, allow_methods=["*"],
                       allow_headers=["*"], allow_credentials=True)


def listen_warning(args) -> Optional[str]:
    """The loud warning for --listen without credentials, or None."""
    if not getattr(args, "listen", False):
        return None
    open_parts = []
    if (getattr(args, "api", False) or getattr(args, "nowebui", False)) and not (
            getattr(args, "api_auth", None) or getattr(args, "auth_file", None)):
        open_parts.append("the HTTP API (add --api-auth user:password)")
    if not getattr(args, "nowebui", False) and not (getattr(args, "gradio_auth", None) or getattr(args, "auth_file", None)):
        open_parts.append("the web UI")
    if not open_parts:
        return None
    return ("WARNING: --listen serves " + " and ".join(open_parts) + " to every machine on the network "
            "WITHOUT A PASSWORD. Anyone who can reach this port can generate, change settings and read outputs.")


class OriginCheckMiddleware:
    """CSRF guard: a state-changing request that a browser sends from another site is refused.

    Browsers always send `Origin` on cross-site POSTs; scripts and curl usually send none, and are let through
    (they are covered by auth). Same-origin pages and origins allowed by --cors-allow-origins pass."""

    UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

    def __init__(self, app, allowed: list[str], allowed_regex: Optional[str] = None):
        import re

        self.app, self.allowed = app, {o.rstrip("/") for o in allowed}
        self.allowed_regex = re.compile(allowed_regex) if allowed_regex else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("method") in self.UNSAFE:
            headers = dict(scope.get("headers", ()))
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and origin != "null" and not self._allowed(origin, host):
                payload = json.dumps({"error": "Forbidden", "detail": f"cross-site request from {origin} refused"})
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": payload.encode()})
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if origin.split("://", 1)[-1] == host:
            return True
        return origin in self.allowed or bool(self.allowed_regex and self.allowed_regex.fullmatch(origin))


def install_origin_check(app, args) -> None:
    origins = [o.strip() for o in (getattr(args, "cors_allow_origins", None) or "").split(",") if o.strip()]
    app.add_middleware(OriginCheckMiddleware, allowed=origins,
                       allowed_regex=getattr(args, "cors_allow_origins_regex", None))
