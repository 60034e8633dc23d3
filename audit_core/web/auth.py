"""Who is reading, for ``workflow-audit serve``: the ``viewer`` dependency of
:func:`audit_core.web.create_app` and the ``/login`` and ``/logout`` routes.

Three ways, one per server (``serve`` picks it from its options):

- :class:`TokenAuth` (``--token-file``): each person has a named token (``name:token`` lines).
  A request carries ``Authorization: Bearer TOKEN`` (scripts) or the session cookie the
  ``/login`` form sets (browsers); the identity is the token's name. The cookie holds no token:
  it is the name, an expiry and a random session id signed with a key this process made at
  start (HMAC-SHA256), so a restart logs everyone out and a stolen cookie dies at its expiry,
  or at the ``/logout`` of its session (the process remembers the ids logged out until they
  expire). ``/login`` and ``/logout`` are POSTs refused from another site's pages (Origin).
- :class:`HeaderAuth` (``--trusted-header X-Forwarded-User``): a reverse proxy in front
  authenticates and names the user in a header. Only safe when the proxy sets the header on
  every request and strips it from clients' requests, and nothing else can reach the port.
  On a loopback address the Host header must name a loopback address too (as for LocalAuth):
  a web page whose DNS name is rebound to 127.0.0.1 could otherwise set the header itself.
  The header sent twice (a proxy that appends instead of replacing) is refused.
- :class:`LocalAuth` (neither, on a loopback address only): whoever can connect is a local
  user; the identity is ``local:`` and the OS user running the server. The Host header must
  name a loopback address, so a web page elsewhere cannot read the trail through a DNS name
  rebound to 127.0.0.1.

Every identity may read every record (``Viewer.dags`` is None): ``serve`` is for auditors.

>>> auth = TokenAuth({"ann": "s3cret-token-1"})
>>> auth.name_of_token("s3cret-token-1"), auth.name_of_token("guess")
('ann', None)
>>> auth.session_name(auth.session_value("ann"))
'ann'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from audit_core.errors import ConfigError
from audit_core.readlog import os_user
from audit_core.web import Viewer

__all__ = [
    "COOKIE",
    "HeaderAuth",
    "LocalAuth",
    "TokenAuth",
    "is_loopback",
    "load_tokens",
]

#: The session cookie's name.
COOKIE = "workflow_audit_session"
#: A login form's body is a token and a path: anything longer is refused unread.
_MAX_FORM = 4096
#: Names and header identities: printable, no separators that would confuse a log line.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_MAX_IDENTITY = 256
_LOOPBACK_NAMES = ("localhost", "localhost.")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'self'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name, without port) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    """The host part of a Host header value (``[::1]:8421`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def load_tokens(path: str | Path) -> dict[str, str]:
    """The ``name:token`` lines of a token file (blank lines and ``#`` comments skipped).
    Errors name the file and the line number, never a token."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {type(exc).__name__}") from exc
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(
                f"{path}, line {number}: expected NAME:TOKEN with a name of letters, digits "
                "and ._@+- (the token is not shown)"
            )
        if len(token) < 16:
            raise ConfigError(
                f"{path}, line {number}: the token of {name!r} is shorter than 16 characters; "
                "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if name in tokens:
            raise ConfigError(f"{path}, line {number}: {name!r} is named twice")
        tokens[name] = token
    if not tokens:
        raise ConfigError(f"the token file {path} holds no NAME:TOKEN line")
    return tokens


def _unauthorized(request: Request, scheme: str) -> HTTPException:
    """401; the list page asked for by a browser is sent to the login form instead."""
    wants_page = "text/html" in request.headers.get("accept", "")
    if scheme == "Bearer" and wants_page and request.url.path in ("/", ""):
        base = request.scope.get("root_path", "").rstrip("/")
        return HTTPException(303, headers={"Location": f"{base}/login"})
    return HTTPException(
        401,
        "log in first (a token: /login, or Authorization: Bearer TOKEN)"
        if scheme == "Bearer"
        else "not authenticated",
        headers={"WWW-Authenticate": scheme},
    )


class TokenAuth:
    """Named bearer tokens and the login session cookie (module docstring)."""

    def __init__(
        self,
        tokens: Mapping[str, str],
        *,
        session_hours: float = 8.0,
        session_key: bytes | None = None,
    ) -> None:
        if not tokens:
            raise ConfigError("no tokens given")
        self._tokens = {name: token.encode() for name, token in tokens.items()}
        self._key = session_key or secrets.token_bytes(32)
        self._session_s = int(session_hours * 3600)
        #: Session ids logged out, with their expiry (dropped once expired: bounded).
        self._revoked: dict[str, int] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Who may log in (the tokens' names; never the tokens)."""
        return tuple(sorted(self._tokens))

    def name_of_token(self, token: str) -> str | None:
        """The name of ``token``, else None. Every token is compared, in constant time each,
        so the time taken does not say which name came close."""
        given = token.encode("utf-8", "replace")
        found = None
        for name, secret in self._tokens.items():
            if hmac.compare_digest(given, secret):
                found = name
        return found

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def session_value(self, name: str, now: float | None = None) -> str:
        """The cookie value of a session for ``name``: name, expiry, session id, HMAC (no
        token)."""
        expires = int(time.time() if now is None else now) + self._session_s
        who = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        payload = f"{who}.{expires}.{secrets.token_hex(16)}"
        return f"{payload}.{self._mac(payload)}"

    def _session(self, value: str, now: float | None = None) -> tuple[str, str, int] | None:
        """(name, session id, expiry) of a genuine, unexpired, not logged-out cookie value."""
        parts = value.split(".")
        if len(parts) != 4 or len(value) > 1024:
            return None
        who, expires, sid, mac = parts
        if not hmac.compare_digest(mac, self._mac(f"{who}.{expires}.{sid}")):
            return None
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return None
        if sid in self._revoked:
            return None
        try:
            name = base64.urlsafe_b64decode(who + "=" * (-len(who) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return (name, sid, int(expires)) if name in self._tokens else None

    def session_name(self, value: str, now: float | None = None) -> str | None:
        """The name a session cookie value proves, else None (forged, expired, logged out,
        malformed)."""
        found = self._session(value, now)
        return None if found is None else found[0]

    def revoke(self, value: str) -> None:
        """End the session of cookie ``value`` in this process (``/logout``): a copy of the
        cookie kept elsewhere is refused from now on."""
        found = self._session(value)
        now = time.time()
        self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp >= now}
        if found is not None:
            self._revoked[found[1]] = found[2]

    def identify(self, request: Request) -> str | None:
        """The name a request proves by its bearer token or its session cookie."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return self.name_of_token(token.strip())
        cookie = request.cookies.get(COOKIE)
        return self.session_name(cookie) if cookie else None

    async def viewer(self, request: Request) -> Viewer:
        """The ``viewer`` dependency: the token's name, or 401."""
        name = self.identify(request)
        if name is None:
            raise _unauthorized(request, "Bearer")
        return Viewer(name, None)

    def router(self) -> APIRouter:
        """``/login`` (a form, and its POST) and ``/logout`` (a confirmation, and its POST)."""
        r = APIRouter()

        @r.get("/login", response_class=HTMLResponse)
        async def login_form(request: Request) -> Response:
            return _login_page(request, "", 200)

        @r.post("/login", response_class=HTMLResponse)
        async def login(request: Request) -> Response:
            _same_site(request)
            form = await _form(request)
            token = form.get("token", "")
            name = self.name_of_token(token) if token else None
            if name is None:
                return _login_page(request, "That token is not valid.", 401)
            base = request.scope.get("root_path", "").rstrip("/")
            resp = RedirectResponse(_next_path(form.get("next", ""), base), status_code=303)
            resp.set_cookie(
                COOKIE,
                self.session_value(name),
                max_age=self._session_s,
                path=base or "/",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
            return resp

        @r.get("/logout", response_class=HTMLResponse)
        async def logout_form(request: Request) -> Response:
            # A GET must not change state (a link, a prefetch, an <img> elsewhere): it asks.
            return _logout_page(request)

        @r.post("/logout")
        async def logout(request: Request) -> Response:
            _same_site(request)
            cookie = request.cookies.get(COOKIE)
            if cookie:
                self.revoke(cookie)
            base = request.scope.get("root_path", "").rstrip("/")
            resp = RedirectResponse(f"{base}/login", status_code=303)
            resp.delete_cookie(
                COOKIE,
                path=base or "/",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
            return resp

        return r


class HeaderAuth:
    """The identity a trusted reverse proxy puts in a header (module docstring)."""

    def __init__(self, header: str, *, loopback: bool = True) -> None:
        """``loopback``: the server is bound to a loopback address, so a request must name
        one in its Host header (False: ``--allow-remote-header``, the proxy's Host is any)."""
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", header):
            raise ConfigError(f"not a header name: {header[:80]!r}")
        self.header = header
        self.loopback = loopback
        self._raw = header.lower().encode("ascii")

    async def viewer(self, request: Request) -> Viewer:
        """The ``viewer`` dependency: the header's value (UTF-8); 401 when it is missing or
        sent more than once, 400 when it is not UTF-8, 403 for a non-loopback Host on a
        loopback server."""
        if self.loopback:
            _loopback_host(request, "--trusted-header on a loopback address")
        sent = [v for k, v in request.scope.get("headers", ()) if k.lower() == self._raw]
        if len(sent) != 1:
            raise _unauthorized(request, "Proxy")
        try:
            value = bytes(sent[0]).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise HTTPException(400, f"the {self.header} header is not UTF-8") from exc
        if not value or len(value) > _MAX_IDENTITY or not value.isprintable():
            raise _unauthorized(request, "Proxy")
        return Viewer(value, None)


class LocalAuth:
    """A loopback-only server without credentials: every request is the local user's."""

    def __init__(self, user: str | None = None) -> None:
        self.name = f"local:{user or os_user()}"

    async def viewer(self, request: Request) -> Viewer:
        """The ``viewer`` dependency: the local user, for requests to a loopback Host only."""
        _loopback_host(request, "it has no credential configured")
        return Viewer(self.name, None)


def _loopback_host(request: Request, why: str) -> None:
    """403 unless the Host header names a loopback address: a web page elsewhere must not
    reach a loopback server through a DNS name rebound to 127.0.0.1."""
    if not is_loopback(_host_of(request.headers.get("host", ""))):
        raise HTTPException(
            403,
            f"this server answers requests for 127.0.0.1 or localhost only ({why}); use "
            "--token-file, or a proxy that sends Host 127.0.0.1, to serve others",
        )


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _same_site(request: Request) -> None:
    """403 for a POST sent by another site's page (login CSRF: it would log the victim in
    as the attacker): its Origin, else its Referer, when present, must name this server's
    host (the Host header, or a proxy's X-Forwarded-Host: a page elsewhere cannot set that
    header without a CORS preflight) and its port when the Host header names one. Neither
    present: a script or a browser that sends neither, allowed (the session cookie is
    SameSite=Strict). The scheme is not compared: a TLS proxy in front turns https into
    http."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return
    try:
        them = urlsplit(claimed)
        theirs = (them.hostname, them.port or _DEFAULT_PORTS.get(them.scheme))
    except ValueError:
        theirs = (None, None)
    hosts = [request.headers.get("host", "")]
    if "x-forwarded-host" in request.headers:
        hosts.append(request.headers["x-forwarded-host"].split(",")[0].strip())
    for host in hosts:
        try:
            ours = urlsplit(f"//{host}")
            name, port = ours.hostname, ours.port
        except ValueError:
            continue
        if theirs[0] is not None and name == theirs[0].lower() and port in (None, theirs[1]):
            return
    raise HTTPException(403, "this form was sent from another site's page; not accepted")


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form body (python-multipart is not needed for two fields)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise HTTPException(413, "form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "malformed form") from exc
    return {k: v[0] for k, v in fields.items() if v}


def _next_path(target: str, base: str) -> str:
    """Where a login goes next: a path on this server, never another site."""
    if target.startswith("/") and not target.startswith(("//", "/\\")) and target.isprintable():
        return target
    return f"{base}/"


def _logout_page(request: Request) -> Response:
    """The confirmation a GET /logout shows: logging out is a POST (its button)."""
    base = html.escape(request.scope.get("root_path", "").rstrip("/"))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Log out - workflow-audit</title></head>
<body>
<main>
<h1>workflow-audit</h1>
<form method="post" action="{base}/logout">
<p><button type="submit">Log out</button> <a href="{base}/">Back to the audit trail</a></p>
</form>
</main>
</body></html>
"""
    return HTMLResponse(page, headers=_SECURITY_HEADERS)


def _login_page(request: Request, message: str, status: int) -> Response:
    base = html.escape(request.scope.get("root_path", "").rstrip("/"))
    nxt = html.escape(_next_path(request.query_params.get("next", ""), ""))
    note = f'<p role="alert">{html.escape(message)}</p>' if message else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Log in - workflow-audit</title></head>
<body>
<main>
<h1>workflow-audit</h1>
{note}
<form method="post" action="{base}/login">
<input type="hidden" name="next" value="{nxt}">
<p><label for="token">Access token</label><br>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus
 size="40"></p>
<p><button type="submit">Log in</button></p>
</form>
</main>
</body></html>
"""
    return HTMLResponse(page, status_code=status, headers=_SECURITY_HEADERS)
