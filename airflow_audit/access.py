"""Logins, failed logins, logouts and refused requests of the Airflow API server, recorded on
the events chain (``[workflow_audit] events_chain``): a pure ASGI middleware the plugin
registers through ``fastapi_root_middlewares`` when ``enabled`` and ``record_access`` are on.

>>> async def app(scope, receive, send): ...
>>> AccessMiddleware(app).app is app
True

==========================  ==============================================================
record                       when
==========================  ==============================================================
``access.login``             ``POST /auth/token`` or ``/auth/token/cli`` answered 2xx
                             (SimpleAuthManager and FAB, JSON or form body; the
                             SimpleAuthManager login page posts there too), or FAB's login
                             form ``POST /auth/login/`` redirected away from the login page
``access.login_failed``      the same requests answered otherwise (FAB's form: a redirect
                             back to the login page, or the form again)
``access.logout``            ``GET /api/v2/auth/logout`` (the UI's logout, every auth
                             manager; it revokes the token); with FAB also ``GET
                             /auth/logout`` with a live token (not as the redirect that
                             follows the first one: its token is revoked by then)
``access.denied``            every other 401 or 403 answer, on any path
==========================  ==============================================================

Data fields: ``docs/AIRFLOW.md`` "Access records". Never a password or a token: the body of
a login request is read (teed from ``receive``, at most :data:`MAX_LOGIN_BODY` bytes) only to
take the ``username`` out of it, on the event loop right after the answer, and then dropped.

Cost: an ordinary request pays one wrapped ``send`` and a few comparisons (``bench/
bench_access.py``). Nothing is written on the event loop: after the answer is sent, a record
is queued (bounded) for one worker thread per process, which resolves the user of a 403 (the
auth manager verifies the token) and hands the records to the adapter's fail-open runner
(:meth:`audit_core.hooks.AdapterBase.submit`). A full queue, an unwritable ledger or a
failing auth manager never touch the answer: each kind is logged once and counted.

The client is the ASGI client address. ``X-Forwarded-For`` is not read here: an api-server
started with ``--proxy-headers`` already has uvicorn put the nearest address its trusted
proxies (``FORWARDED_ALLOW_IPS``) vouch for there; a header no proxy vouches for is anybody's.

Other modules watch requests with :func:`on_request_done` (the FAB permission records use it
to re-read users and roles after a request that may have changed them).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from airflow_audit._accessworker import (
    Submit,
    Worker,
    header,
    request_tokens,
    state_user,
    user_before,
)

__all__ = [
    "MAX_LOGIN_BODY",
    "AccessMiddleware",
    "RequestDone",
    "middleware_entry",
    "on_request_done",
    "watched_in_flight",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Most bytes of a login request's body kept to find the username (a login body is tiny).
MAX_LOGIN_BODY = 16 * 1024
#: Longest user agent (and username) kept.
MAX_TEXT = 256

_TOKEN_PATHS = frozenset(("/auth/token", "/auth/token/cli"))
_FORM_LOGIN_PATHS = frozenset(("/auth/login/",))  # FAB's Flask login form
_LOGOUT_PATHS = frozenset(("/api/v2/auth/logout",))
_FAB_LOGOUT_PATHS = frozenset(("/auth/logout", "/auth/logout/"))
_MUTATING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_ANONYMOUS = ("anonymous", "-")


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A request :func:`on_request_done` asked for, once answered."""

    method: str
    path: str  # without the query string and the API's root path (as ``wants`` sees it)
    status: int
    user: str | None  # the verified user of its token, None when unknown


#: Callbacks of :func:`on_request_done`: (wants(method, path), callback).
_WATCHERS: list[tuple[Callable[[str, str], bool], Callable[[RequestDone], None]]] = []


def on_request_done(
    callback: Callable[[RequestDone], None],
    *,
    wants: Callable[[str, str], bool] | None = None,
) -> Callable[[], None]:
    """Call ``callback`` after each answered request that ``wants(method, path)`` accepts
    (default: every POST, PUT, PATCH and DELETE), with the user of its token resolved;
    returns the function that stops it.

    ``path`` is the request's path without the query string and without the API's root
    path. ``wants`` runs on the event loop for every request: keep it to a comparison or
    two. The callback runs later on the access worker thread, never on the event loop, and
    only where the middleware is registered (the API server, with ``record_access`` on); an
    exception in it is logged once and counted (``access_callback_failures``), never raised.
    """
    entry = (wants or _mutating, callback)
    _WATCHERS.append(entry)
    return lambda: _WATCHERS.remove(entry) if entry in _WATCHERS else None


def _mutating(method: str, path: str) -> bool:
    return method in _MUTATING


@dataclass(slots=True)
class _InFlight:
    """Requests some watcher wants that this process is answering."""

    count: int = 0
    since: float = 0.0  # time.monotonic() of the latest begun
    lock: threading.Lock = field(default_factory=threading.Lock)


_IN_FLIGHT = _InFlight()


def watched_in_flight(window_s: float) -> bool:
    """Is this process answering a request some :func:`on_request_done` watcher wants (the
    latest begun less than ``window_s`` ago: a hung request holds nobody back for long)?
    Counted from before the app runs until its answer (or failure); the callback runs a
    moment after that, on the access worker."""
    with _IN_FLIGHT.lock:
        return _IN_FLIGHT.count > 0 and time.monotonic() - _IN_FLIGHT.since < window_s


def middleware_entry() -> dict[str, Any]:
    """The plugin's ``fastapi_root_middlewares`` entry (``api_fastapi/app.py::init_plugins``
    calls ``app.add_middleware(middleware, *args, **kwargs)``)."""
    return {"middleware": AccessMiddleware, "args": [], "kwargs": {}, "name": "workflow_audit"}


class AccessMiddleware:
    """The ASGI middleware: see the module docstring. ``submit`` (tests, benchmarks) replaces
    the process adapter's :meth:`~audit_core.hooks.AdapterBase.submit`; ``chain`` its
    ``events_chain``."""

    def __init__(
        self, app: ASGIApp, *, submit: Submit | None = None, chain: str | None = None
    ) -> None:
        self.app = app
        self._worker = Worker(submit, chain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        root = scope.get("root_path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        watched = self._watched(method, route) if _WATCHERS else None
        if not watched:
            await self._serve(scope, receive, send, route, watched)
            return
        with _IN_FLIGHT.lock:
            _IN_FLIGHT.count += 1
            _IN_FLIGHT.since = time.monotonic()
        try:
            await self._serve(scope, receive, send, route, watched)
        finally:
            # Whatever ended it: an answer, an exception of the app, a client gone away
            # (CancelledError), a full queue. A leaked count would hold polls back forever.
            with _IN_FLIGHT.lock:
                _IN_FLIGHT.count -= 1

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        watched: list[Callable[[RequestDone], None]] | None,
    ) -> None:
        method: str = scope["method"]
        login = method == "POST" and (route in _TOKEN_PATHS or route in _FORM_LOGIN_PATHS)
        logout = method == "GET" and (route in _LOGOUT_PATHS or route in _FAB_LOGOUT_PATHS)
        answer: list[Any] = [0, None]  # status, Location

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer[0] = message["status"]
                if login:
                    answer[1] = header(message.get("headers", ()), b"location")
            await send(message)

        if not (login or logout):
            await self.app(scope, receive, send_status)
            status = answer[0]
            if status == 401 or status == 403 or watched:
                self._safely(self._after, scope, route, status, watched)
            return
        if logout:
            # The logout revokes the token it carries: name its user before the app runs.
            user = await user_before(scope)
            await self.app(scope, receive, send_status)
            if answer[0] and answer[0] < 400:
                self._safely(self._queue_logout, scope, route, user)
            elif answer[0] in (401, 403):
                self._safely(self._after, scope, route, answer[0], watched)
            return
        body: list[bytes] = []

        async def tee() -> Message:
            message = await receive()
            if message["type"] == "http.request" and sum(map(len, body)) < MAX_LOGIN_BODY:
                body.append(message.get("body", b""))
            return message

        await self.app(scope, tee, send_status)
        self._safely(self._queue_login, scope, route, answer[0], answer[1], body)
        body.clear()  # the password goes with it

    def _watched(self, method: str, route: str) -> list[Callable[[RequestDone], None]]:
        try:
            return [callback for wants, callback in _WATCHERS if wants(method, route)]
        except Exception:  # noqa: BLE001 - a watcher's filter must not cost the request
            self._worker.failed("access_callback_failures", "a wants() filter failed", exc=True)
            return []

    def _safely(self, then: Callable[..., None], *args: Any) -> None:
        """Queue a record; whatever goes wrong is counted, never raised (the answer is sent)."""
        try:
            then(*args)
        except Exception:  # noqa: BLE001 - the one containment point on the event loop
            self._worker.failed("access_failures", "an access record could not be queued", exc=True)

    # -- after the answer: build what the worker needs, on the loop, cheaply ----------------

    def _after(self, scope: Scope, route: str, status: int, watched: Any) -> None:
        method, path = scope["method"], scope["path"]
        client, agent, ts = _client(scope), _agent(scope), _now()
        known = state_user(scope)
        tokens = request_tokens(scope) if known is None and status != 401 else ()

        def job(worker: Worker) -> None:
            user = known
            if user is None and tokens:
                user = worker.resolve(tokens)
            if watched:
                _notify(worker, watched, RequestDone(method, route, status, user))
            if status == 401 or status == 403:
                data = {
                    "method": method,
                    "path": path,
                    "status": status,
                    "user": None if status == 401 else user,
                    "client": client,
                    "user_agent": agent,
                    "authenticator": worker.auth_manager(),
                }
                actor = ("user", user) if user and status == 403 else _ANONYMOUS
                worker.record("access.denied", data, actor, ts)

        self._worker.put(job)

    def _queue_login(
        self, scope: Scope, route: str, status: int, location: str | None, body: list[bytes]
    ) -> None:
        content_type = header(scope["headers"], b"content-type")
        username = _username(b"".join(body)[:MAX_LOGIN_BODY], content_type)
        method, path = scope["method"], scope["path"]
        client, agent, ts = _client(scope), _agent(scope), _now()
        if route in _FORM_LOGIN_PATHS:
            # FAB's form answers a good password with a redirect to where the user was going,
            # a bad one with a redirect back to the login page, an invalid form with the form.
            target = urlsplit(location).path if location else "/login/"
            ok = status in (301, 302, 303, 307) and not target.rstrip("/").endswith("/login")
        else:
            ok = 200 <= status < 300

        def job(worker: Worker) -> None:
            if route in _FORM_LOGIN_PATHS and worker.auth_manager() != "fab":
                return  # only FAB has a login form there
            if ok:
                data = {
                    "user": username,
                    "authenticator": worker.auth_manager(),
                    "client": client,
                    "user_agent": agent,
                    "method": method,
                    "path": path,
                    "status": status,
                }
                actor = ("user", username) if username else _ANONYMOUS
                worker.record("access.login", data, actor, ts)
            else:
                data = {
                    "username": username,
                    "status": status,
                    "client": client,
                    "user_agent": agent,
                    "method": method,
                    "path": path,
                    "authenticator": worker.auth_manager(),
                }
                worker.record("access.login_failed", data, _ANONYMOUS, ts)

        self._worker.put(job)

    def _queue_logout(self, scope: Scope, route: str, user: str | None) -> None:
        path, client, agent, ts = scope["path"], _client(scope), _agent(scope), _now()

        def job(worker: Worker) -> None:
            manager = worker.auth_manager()
            if route in _FAB_LOGOUT_PATHS and (manager != "fab" or user is None):
                # SimpleAuthManager's UI app answers any GET with its page; FAB's logout
                # without a live token is the second hop of /api/v2/auth/logout (which
                # revoked it, and was recorded) or a logout of nobody.
                return
            data = {
                "user": user,
                "client": client,
                "user_agent": agent,
                "path": path,
                "authenticator": manager,
            }
            worker.record("access.logout", data, ("user", user) if user else _ANONYMOUS, ts)

        self._worker.put(job)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait (bounded) until every queued record was handed to the adapter; True if so."""
        return self._worker.flush(timeout_s)


def _notify(
    worker: Worker, callbacks: Sequence[Callable[[RequestDone], None]], done: RequestDone
) -> None:
    for callback in callbacks:
        try:
            callback(done)
        except Exception:  # noqa: BLE001 - a watcher's bug must not cost the access record
            worker.failed("access_callback_failures", f"{callback!r} failed", exc=True)


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _agent(scope: Scope) -> str | None:
    agent = header(scope["headers"], b"user-agent")
    return agent[:MAX_TEXT] if agent is not None else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _username(body: bytes, content_type: str | None) -> str | None:
    """The ``username`` of a login body (JSON or form); None when there is none."""
    if not body:
        return None
    value: object = None
    try:
        if content_type and "json" in content_type.lower():
            parsed = json.loads(body)
            value = parsed.get("username") if isinstance(parsed, dict) else None
        else:
            value = parse_qs(body.decode("utf-8", "replace")).get("username", [None])[0]
    except (ValueError, RecursionError):  # not JSON, or nested too deep: no username
        return None
    return value[:MAX_TEXT] if isinstance(value, str) else None
