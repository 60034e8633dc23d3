"""The per-app state every route shares (:class:`Site`: the read-only ledger, the chains
cache, templates, static files, the recorder) and how pages are rendered: the security
headers, the error pages, and the small formatters the templates use.

Kept apart from the routes so that a route only parses, calls, renders and records.

>>> count_text(10_000, 10_000)
'10,000+'
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException

from audit_core._index import fields_of
from audit_core._record import Record
from audit_core.checkpoint import load_verifiers
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, ConfigError, LedgerError, VerificationError
from audit_core.ledgers import Ledger, LedgerReader, ledger_path, masked_url, open_ledger
from audit_core.query import Query
from audit_core.readlog import Recorder, read_event
from audit_core.trail import Event
from audit_core.web import Viewer

#: How long the filter form's list of chains is reused.
_CHAINS_TTL_S = 30.0
_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
#: No request leaves the page's own origin; scripts and styles are files the app serves.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Audit records stay out of shared and disk caches (static files override this).
    "Cache-Control": "no-store",
}


def _fmt(n: int) -> str:
    return f"{n:,}"


def count_text(n: int, cap: int) -> str:
    """``n`` as a page shows it: "10,000+" when a count stopped at ``cap``."""
    return f"{n:,}+" if n >= cap else f"{n:,}"


def _short(value: object, width: int = 80) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def file_part(text: str) -> str:
    return _FILE_SAFE.sub("_", text)[:80] or "chain"


class Site:
    """What every route shares: the read-only ledger (opened on first use), the templates,
    the recorder and the verifier keys."""

    def __init__(
        self,
        *,
        ledger_url: str,
        recorder: Recorder,
        via: str,
        verifier_keys: Sequence[str],
        config: AuditConfig | None,
    ) -> None:
        self.ledger_url = ledger_url
        self.recorder = recorder
        self.via = via
        self.logout = False  # set by create_app when the host serves POST /logout
        # Key strings or files of them, as `verify --key` takes; ConfigError at start.
        self.verifiers = load_verifiers(verifier_keys) if verifier_keys else []
        self.key_strings = tuple(str(v) for v in self.verifiers)
        self.config = config
        self._ledger: Ledger | None = None
        self._chains: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()
        self.env = Environment(
            loader=PackageLoader("audit_core.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["num"] = _fmt
        self.static = _load_static()

    @property
    def name(self) -> str:
        """The ledger as pages name it (a file path, or the URL without its password)."""
        path = ledger_path(self.ledger_url) if self.ledger_url.startswith("sqlite:") else None
        return str(path) if path is not None else masked_url(self.ledger_url)

    def ledger(self) -> Ledger:
        """The ledger, opened read-only on first use; 503 while it cannot be opened."""
        with self._lock:
            if self._ledger is None:
                try:
                    self._ledger = open_ledger(self.ledger_url, read_only=True, create=False)
                except (AuditError, OSError) as exc:
                    raise HTTPException(
                        503,
                        f"the ledger {self.name} cannot be opened yet ({type(exc).__name__}); "
                        "it appears once the first record is written",
                    ) from exc
            return self._ledger

    def chains(self, view: LedgerReader) -> list[str]:
        """The ledger's chains for the filter form, at most _CHAINS_TTL_S old: listing them
        reads every record's chain on SQLite (tens of ms at a million records), and a new
        chain is rare."""
        now = time.monotonic()
        with self._lock:
            cached = self._chains
        if cached is not None and now - cached[0] < _CHAINS_TTL_S:
            return cached[1]
        found = view.chains()
        with self._lock:
            self._chains = (now, found)
        return found

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    def record(self, event: Event) -> None:
        """Hand ``event`` to the recorder; a failing recorder never fails the page."""
        # A Recorder never raises (audit_core.readlog); one that does still fails no page.
        with contextlib.suppress(Exception):
            self.recorder(event)

    def render(self, request: Request, template: str, code: int = 200, **ctx: Any) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        html = self.env.get_template(template).render(
            base=base, via=self.via, logout=self.logout, **ctx
        )
        return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)

    def error_page(
        self, request: Request, status: int, message: str, headers: Any = None
    ) -> Response:
        resp = self.render(request, "error.html", status, status=status, message=message)
        if headers:
            resp.headers.update(headers)
        return resp


def install_error_pages(app: FastAPI, site: Site) -> None:
    """Turn ``app``'s errors into error pages: a message for the user, never a traceback."""
    error_page = site.error_page

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (301, 302, 303, 307, 308):  # a host's redirect (to a login)
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_page(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_page(request, 400, "malformed request")

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> Response:
        return error_page(request, 400, str(exc))

    @app.exception_handler(LedgerError)
    async def ledger_error(request: Request, exc: LedgerError) -> Response:
        return error_page(request, 503, f"the ledger cannot be read now: {exc}")

    @app.exception_handler(VerificationError)
    async def broken(request: Request, exc: VerificationError) -> Response:
        return error_page(
            request,
            500,
            f"the ledger holds a record or row it cannot read: {exc}; run `workflow-audit verify`",
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged with its traceback by the server (Starlette re-raises after this page);
        # the page names no detail: it may come from anywhere, a driver's message included.
        return error_page(request, 500, "unexpected error; the server's log has the details")


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The static files, read once: name -> (bytes, media type). Only these are served."""
    out: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("audit_core.web") / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return out


def audit_event(
    kind: str, /, viewer: Viewer, via: str, q: Query | None, n: int | None, **facts: Any
) -> Event:
    return read_event(kind, user=viewer.name, via=via, query=q, count=n, **facts)


def tab(base: str, dag: str | None, run: str | None = None, task: str | None = None) -> str:
    """The tab page of a DAG, run or task ("" when a part is missing or cannot be a path
    segment: a "/" would be taken for a separator)."""
    parts = [p for p in (dag, run, task) if p is not None]
    if not dag or any("/" in p for p in parts):
        return ""
    url = f"{base}/dags/{quote(dag, safe='')}"
    if run is not None:
        url += f"/runs/{quote(run, safe='')}"
        if task is not None:
            url += f"/tasks/{quote(task, safe='')}"
    return url


def row(base: str, rec: Record) -> dict[str, Any]:
    f = fields_of(rec.subject, rec.actor)
    return {
        "dag_href": tab(base, f.dag),
        "run_href": tab(base, f.dag, f.run) if f.run else "",
        "task_href": tab(base, f.dag, f.run, f.task) if f.run and f.task else "",
        "ts": rec.ts.replace("T", " ")[:23],
        "event": rec.event,
        "chain": rec.chain,
        "seq": rec.seq,
        "dag": f.dag or "",
        "run": f.run or "",
        "task": f.task or "",
        "actor": f.actor or "",
        "data": _short(rec.data),
        "href": f"{base}/records/{quote(rec.chain, safe='')}/{rec.seq}",
    }
