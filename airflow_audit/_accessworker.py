"""The worker thread of the access middleware (:mod:`airflow_audit.access`), and how it
learns who made a request: the user Airflow's own middleware already verified, else the
tokens of the request, verified by the auth manager. Nothing here runs on the event loop
except :func:`user_before`, which hands the auth manager's work to a thread."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from audit_core import Event
from audit_core.hooks import COUNTERS

__all__ = [
    "QUEUE_SIZE",
    "RESOLVE_TIMEOUT_S",
    "Submit",
    "Worker",
    "header",
    "request_tokens",
    "resolve_user",
    "state_user",
    "user_before",
]

logger = logging.getLogger("workflow_audit.airflow")

Scope = MutableMapping[str, Any]
#: ``submit(what, build)`` of :class:`audit_core.hooks.AdapterBase`.
Submit = Callable[[str, Callable[[], Sequence[Event]]], bool]

#: Records waiting for the worker; past this they are counted (``access_dropped``), logged.
QUEUE_SIZE = 10_000
#: Longest wait for the auth manager to name the user of a token.
RESOLVE_TIMEOUT_S = 5.0
#: Longest wait at interpreter exit for queued access records.
EXIT_FLUSH_S = 5.0
_TOKEN_COOKIE = "_token"  # noqa: S105 - a cookie name (base_auth_manager.COOKIE_NAME_JWT_TOKEN)


class Worker:
    """One thread per process that turns queued jobs into records, off the event loop."""

    def __init__(self, submit: Submit | None, chain: str | None) -> None:
        self._submit = submit
        self._chain = chain
        self._manager: str | None = None
        self._pid = -1
        self._queue: queue.Queue[Callable[[Worker], None]] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def put(self, job: Callable[[Worker], None]) -> None:
        if self._pid != os.getpid():  # first use, or a forked worker: its own thread
            self._start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.failed("access_dropped", "the access record queue is full; records dropped")

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.Queue(QUEUE_SIZE)
            thread = threading.Thread(target=self._run, name="workflow-audit-access", daemon=True)
            thread.start()
            if self._pid == -1:  # once: a forked child inherits the registration
                # A daemon thread dies with the interpreter: give the queue a bounded last
                # chance to reach the ledger (or the spool) on a clean exit.
                atexit.register(self.flush, EXIT_FLUSH_S)
            self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job(self)
            except Exception:  # noqa: BLE001 - the worker's one containment point: it keeps running
                self.failed("access_failures", "an access record could not be built", exc=True)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def failed(self, kind: str, message: str, *, exc: bool = False) -> None:
        """Count ``kind``; log it the first time only (a broken ledger fails every request)."""
        COUNTERS.incr(kind)
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("workflow-audit: %s (counted as %s)", message, kind, exc_info=exc)

    def record(self, event: str, data: dict[str, Any], actor: tuple[str, str], ts: Any) -> None:
        submit, chain = self._submit, self._chain
        if submit is None or chain is None:
            from airflow_audit.adapter import get_adapter

            adapter = get_adapter()
            submit = submit or adapter.submit
            chain = chain or adapter.settings.events_chain

        def build() -> list[Event]:
            return [Event(type=event, data=data, actor=actor, ts=ts, chain=chain)]

        if not submit(event, build):
            # Spooled (it reaches the ledger later), late or lost: the runner logged which.
            self.failed("access_not_in_ledger", f"{event} did not reach the ledger in time")

    def auth_manager(self) -> str | None:
        """``simple``, ``fab``, or the auth manager's class name (None if there is none)."""
        if self._manager is None:
            try:
                name = type(_auth_manager()).__name__
            except Exception:  # noqa: BLE001 - none initialized (an app without the core API)
                return None
            self._manager = {"SimpleAuthManager": "simple", "FabAuthManager": "fab"}.get(name, name)
        return self._manager

    def resolve(self, tokens: Sequence[str]) -> str | None:
        """The user of the first token the auth manager accepts (it verifies it), or None."""
        try:
            return resolve_user(tokens)
        except Exception:  # noqa: BLE001 - the record goes on without the user
            self.failed(
                "access_user_unresolved", "could not ask the auth manager for a user", exc=True
            )
            return None


def _auth_manager() -> Any:
    """The API server's auth manager. Its module is loaded wherever the middleware runs in
    Airflow (it built the app); it is not imported here, where it would start Airflow."""
    app = sys.modules.get("airflow.api_fastapi.app")
    if app is None:
        raise LookupError("no Airflow API app in this process")
    return app.get_auth_manager()


def resolve_user(tokens: Sequence[str]) -> str | None:
    manager = _auth_manager()

    async def first() -> str | None:
        for token in tokens:
            try:
                user = await asyncio.wait_for(manager.get_user_from_token(token), RESOLVE_TIMEOUT_S)
            except Exception:  # noqa: BLE001, S112 - expired, revoked or forged: no user
                continue
            return str(user.get_name())
        return None

    return asyncio.run(first())


async def user_before(scope: Scope) -> str | None:
    """The user of a request, resolved before the app answers it (off the event loop)."""
    user = state_user(scope)
    tokens = request_tokens(scope)
    if user is not None or not tokens:
        return user
    import anyio.to_thread

    try:
        with anyio.fail_after(RESOLVE_TIMEOUT_S):
            return await anyio.to_thread.run_sync(resolve_user, tokens, abandon_on_cancel=True)
    except Exception:
        COUNTERS.incr("access_user_unresolved")
        logger.debug("workflow-audit: could not name the user of a logout", exc_info=True)
        return None


def state_user(scope: Scope) -> str | None:
    """The user Airflow's JWTRefreshMiddleware verified from the token cookie, if any."""
    state = scope.get("state")
    user = state.get("user") if isinstance(state, dict) else None
    if user is None:
        return None
    try:
        return str(user.get_name())
    except Exception:  # noqa: BLE001 - a stray object in request.state: no user
        return None


def request_tokens(scope: Scope) -> tuple[str, ...]:
    """The bearer token and the token cookie of a request (in memory only, never recorded)."""
    out: list[str] = []
    auth = header(scope["headers"], b"authorization")
    if auth and auth[:7].lower() == "bearer " and auth[7:].strip():
        out.append(auth[7:].strip())
    cookie = header(scope["headers"], b"cookie")
    if cookie and _TOKEN_COOKIE in cookie:
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == _TOKEN_COOKIE and value and value not in out:
                out.append(value)
    return tuple(out)


def header(headers: Any, name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
