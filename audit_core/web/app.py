"""The browser view's routes: the record list and its DAG/run/task tabs, a record's detail and
inclusion proof, the trail's status, and exports of the current filter.

Every route takes the host's ``viewer`` dependency (static files too), so nothing is served to
someone the host did not let in, and every query carries ``dags=viewer.dags``: records about
DAGs the viewer may not read never reach a page, an export or a count. The ledger is opened
read-only, once, on first use; each request reads one snapshot of it. After a page is built,
the ``recorder`` gets an ``audit.*`` event (the audit of the audit, :mod:`audit_core.readlog`).

URLs are built from the ASGI ``root_path``, so the app works mounted at ``/workflow-audit``
inside Airflow and at ``/`` under ``workflow-audit serve``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shlex
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException

from audit_core._chain import stored_size
from audit_core._index import fields_of
from audit_core._record import Record
from audit_core._report import parse_time, render_report, summarize, to_csv, to_jsonl
from audit_core.checkpoint import load_verifiers, open_checkpoint
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, ConfigError, LedgerError, ProofError, VerificationError
from audit_core.health import check
from audit_core.ledgers import Ledger, LedgerReader, ledger_path, masked_url, open_ledger
from audit_core.proofs import make_inclusion_bundle
from audit_core.query import IndexedReader, Position, Query, count, iterate, search
from audit_core.readlog import AUDIT_CHAIN, Recorder, read_event
from audit_core.trail import Event
from audit_core.verify import verify_ledger
from audit_core.web import Viewer

__all__ = ["MAX_LIMIT", "create_app"]

#: The most records one page shows (``limit``); the default is 50.
MAX_LIMIT = 200
#: Every page answers HEAD too (uptime checks), recording no read.
_GET = ["GET", "HEAD"]
#: A count stops here; the page then says "10,000+".
COUNT_CAP = 10_000
#: Query parameters longer than this are refused (400): no filter needs more.
_MAX_PARAM = 1000
#: Without a complete query index, the status page counts gaps only on ledgers this small.
_SCAN_LIMIT = 100_000
#: How long the filter form's list of chains is reused.
_CHAINS_TTL_S = 30.0
_SEQ = re.compile(r"[0-9]{1,19}")
_LIMIT = re.compile(r"[0-9]{1,6}")
_SEPARATORS = re.compile(r"[\s,]+")
_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
#: No request leaves the page's own origin; scripts and styles are files the app serves.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Audit records stay out of shared and disk caches (static files override this).
    "Cache-Control": "no-store",
}

ViewerDep = Callable[..., Viewer | Awaitable[Viewer]]


def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


@dataclass(frozen=True, slots=True)
class Filter:
    """The user-typed criteria of a list page (the permission is added by :meth:`query`)."""

    since: str | None = None
    until: str | None = None
    events: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()
    dag: str | None = None
    run: str | None = None
    task: str | None = None
    actor: str | None = None

    def query(self, viewer: Viewer, every_chain: Callable[[], Sequence[str]]) -> Query:
        """The query this filter asks, limited to what ``viewer`` may read (``every_chain``
        lists the ledger's chains, asked only for a viewer limited to some DAGs)."""
        return Query(
            since=self.since,
            until=self.until,
            events=self.events,
            chains=_visible_chains(viewer, self.chains, every_chain),
            dag=self.dag,
            run=self.run,
            task=self.task,
            actor=self.actor,
            dags=viewer.dags,
        )

    def params(self) -> list[tuple[str, str]]:
        """The query string that asks for this filter again (as the form submits it)."""
        out: list[tuple[str, str]] = []
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                out.append((key, value))
        out += [("event", e) for e in self.events]
        out += [("chain", c) for c in self.chains]
        for key in ("dag", "run", "task", "actor"):
            value = getattr(self, key)
            if value is not None:
                out.append((key, value))
        return out


def _checked(key: str, value: str) -> str:
    """``value`` if a ledger can be asked for it: at most _MAX_PARAM characters, no NUL (a
    PostgreSQL text parameter cannot hold one); 400 otherwise."""
    if len(value) > _MAX_PARAM:
        raise _bad(f"{key} is longer than {_MAX_PARAM} characters")
    if "\x00" in value:
        raise _bad(f"{key} holds a NUL character")
    return value


def _one(params: Any, key: str) -> str | None:
    values = [v for v in params.getlist(key) if v.strip()]
    if len(values) > 1:
        raise _bad(f"{key} given {len(values)} times; give it once")
    if not values:
        return None
    return _checked(key, str(values[0]).strip())


def _many(params: Any, key: str) -> tuple[str, ...]:
    values = tuple(_checked(key, v.strip()) for v in params.getlist(key) if v.strip())
    if len(values) > 50:
        raise _bad(f"{key} given {len(values)} times; at most 50")
    return values


def _time(params: Any, key: str) -> str | None:
    text = _one(params, key)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ConfigError as exc:
        raise _bad(f"{key}: {exc}") from exc


def parse_filter(params: Any, **fixed: str) -> Filter:
    """The filter a request's query string asks for; ``fixed``: criteria the path sets (a
    tab's DAG, run, task), which beat the query string. 400 on malformed values."""
    values = {key: _one(params, key) for key in ("dag", "run", "task", "actor")}
    values.update({key: _checked(key, value) for key, value in fixed.items()})
    # The form's one field may hold several patterns: event types have no space or comma.
    events = tuple(p for e in _many(params, "event") for p in _SEPARATORS.split(e) if p)
    if len(events) > 50:
        raise _bad(f"{len(events)} event patterns; at most 50")
    return Filter(
        since=_time(params, "since"),
        until=_time(params, "until"),
        events=events,
        chains=_many(params, "chain"),
        **values,
    )


def parse_page(params: Any) -> tuple[int, Position | None]:
    """``limit`` (1..MAX_LIMIT, default 50) and ``before`` (a page token); 400 otherwise."""
    text = _one(params, "limit")
    limit = 50
    if text is not None:
        if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
            raise _bad(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(text)
    token = _one(params, "before")
    try:
        before = Position.decode(token) if token is not None else None
    except ConfigError as exc:
        raise _bad(f"before: {exc}") from exc
    return limit, before


def _fmt(n: int) -> str:
    return f"{n:,}"


def _count_text(n: int) -> str:
    return f"{n:,}+" if n >= COUNT_CAP else f"{n:,}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172_800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _short(value: object, width: int = 80) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _file_part(text: str) -> str:
    return _FILE_SAFE.sub("_", text)[:80] or "chain"


class _Stream(StreamingResponse):
    """A streamed body whose generator is closed as soon as the response ends, however it
    ends (a client gone, a server stopping), not whenever it is garbage-collected: its
    ``finally`` records the read."""

    def __init__(self, content: Generator[bytes, None, None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._source = content

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._source.close)


class _Site:
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
        return HTMLResponse(html, status_code=code, headers=_SECURITY_HEADERS)


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The static files, read once: name -> (bytes, media type). Only these are served."""
    out: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("audit_core.web") / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return out


def typed(q: Query, flt: Filter) -> Query:
    """``q`` with the chains the user typed: what a read record keeps as its filter (not the
    chains a DAG-limited viewer was narrowed to)."""
    return replace(q, chains=flt.chains)


def _event(
    kind: str, /, viewer: Viewer, via: str, q: Query | None, n: int | None, **facts: Any
) -> Event:
    return read_event(kind, user=viewer.name, via=via, query=q, count=n, **facts)


def _tab(base: str, dag: str | None, run: str | None = None, task: str | None = None) -> str:
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


def _row(base: str, rec: Record) -> dict[str, Any]:
    f = fields_of(rec.subject, rec.actor)
    return {
        "dag_href": _tab(base, f.dag),
        "run_href": _tab(base, f.dag, f.run) if f.run else "",
        "task_href": _tab(base, f.dag, f.run, f.task) if f.run and f.task else "",
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


#: Matches no chain (chain names are never empty): a DAG-limited viewer's "every chain" when the
#: ledger holds only the audit chain.
_NO_CHAIN = ""


def _visible_chains(
    viewer: Viewer, chains: tuple[str, ...], every_chain: Callable[[], Sequence[str]]
) -> tuple[str, ...]:
    """The chains ``viewer`` may list. The audit of the audit (who read which records, with the
    filters they typed) is for viewers who may read every DAG: someone else's filter could name
    a DAG a limited viewer may not read."""
    if viewer.dags is None:
        return chains
    _require_chain(viewer, chains)
    if chains:
        return chains
    return tuple(c for c in every_chain() if c != AUDIT_CHAIN) or (_NO_CHAIN,)


def _require_chain(viewer: Viewer, chains: Iterable[str]) -> None:
    if viewer.dags is not None and AUDIT_CHAIN in chains:
        raise HTTPException(
            403, f"the {AUDIT_CHAIN!r} chain is shown only to those who may read every DAG"
        )


def _permitted(viewer: Viewer, dag: str | None) -> bool:
    return viewer.dags is None or dag is None or dag in viewer.dags


def _require_dag(viewer: Viewer, dag: str | None) -> None:
    """403 unless ``viewer`` may read ``dag``: for a DAG the user typed (a tab, a filter), so
    the message may name it."""
    if not _permitted(viewer, dag):
        raise HTTPException(403, f"you may not read the records of DAG {dag!r}")


def _require_record_dag(viewer: Viewer, dag: str | None) -> None:
    """403 unless ``viewer`` may read a stored record about ``dag``; the message names no DAG:
    the viewer did not type it, and the name of a DAG they may not read is not theirs to learn."""
    if not _permitted(viewer, dag):
        raise HTTPException(403, "this record is about a DAG you may not read")


def readable_chains(view: LedgerReader, viewer: Viewer, chains: Iterable[str]) -> list[str]:
    """Those of ``chains`` that ``viewer`` may learn of: every one for an every-DAG viewer;
    for a DAG-limited one, those holding at least one record they may read (one indexed
    probe per chain), never the audit chain. Other chains' names, sizes and heads would tell
    them about DAGs they may not read."""
    if viewer.dags is None:
        return list(chains)
    return [
        c
        for c in chains
        if c != AUDIT_CHAIN
        and c != _NO_CHAIN
        and count(view, Query(chains=(c,), dags=viewer.dags), cap=1) > 0
    ]


def _query_string(pairs: Iterable[tuple[str, str]]) -> str:
    pairs = list(pairs)
    return "?" + urlencode(pairs) if pairs else ""


def create_app(
    *,
    ledger_url: str,
    viewer: ViewerDep,
    recorder: Recorder,
    via: str,
    verifier_keys: Sequence[str] = (),
    config: AuditConfig | None = None,
    extra_routes: Sequence[APIRouter] = (),
) -> FastAPI:
    """The browser view of the ledger at ``ledger_url``.

    ``viewer``: a FastAPI dependency returning the :class:`Viewer` (or raising 401/403), used
    on every route. ``recorder`` gets an ``audit.*`` event per page, proof and export.
    ``via``: where the app runs ("airflow", "serve"), as the audit events say. ``verifier_keys``:
    C2SP verifier key strings; the status page says whether each chain's last checkpoint
    verifies under them, and the detail page puts them in the offline command.
    ``extra_routes``: the host's own routes (``serve``'s login), added first."""
    site = _Site(
        ledger_url=ledger_url,
        recorder=recorder,
        via=via,
        verifier_keys=verifier_keys,
        config=config,
    )
    app = FastAPI(
        title="workflow-audit",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        on_shutdown=[site.close],
    )
    app.state.site = site
    for router in extra_routes:
        app.include_router(router)
    # A host whose routes include POST /logout (serve's token sessions) gets a "Sign out"
    # button on every page; inside Airflow, Airflow's own menu signs out.
    site.logout = any(
        getattr(r, "path", None) == "/logout" and "POST" in getattr(r, "methods", ())
        for router in extra_routes
        for r in router.routes
    )
    who = Depends(viewer)

    def note(request: Request, event: Event) -> None:
        """Record a read; a HEAD request (an uptime check) reads nothing worth recording."""
        if request.method != "HEAD":
            site.record(event)

    def error_page(request: Request, status: int, message: str, headers: Any = None) -> Response:
        resp = site.render(request, "error.html", status, status=status, message=message)
        if headers:
            resp.headers.update(headers)
        return resp

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

    def list_page(
        request: Request, v: Viewer, title: str, tabs: list[tuple[str, str]], **fixed: str
    ) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        flt = parse_filter(request.query_params, **fixed)
        _require_dag(v, flt.dag)
        limit, before = parse_page(request.query_params)
        with site.ledger().snapshot() as view:
            q = flt.query(v, lambda: site.chains(view))
            page = search(view, q, limit=limit, before=before)
            n = count(view, q, cap=COUNT_CAP)
            chains = readable_chains(view, v, site.chains(view))
        again = flt.params()
        keep_limit = [("limit", str(limit))] if limit != 50 else []
        nxt = (
            request.url.path + _query_string([*again, *keep_limit, ("before", page.next.encode())])
            if page.next is not None
            else None
        )
        first = request.url.path + _query_string([*again, *keep_limit]) if before else None
        qs = _query_string(again)
        resp = site.render(
            request,
            "list.html",
            title=title,
            nav="list",
            tabs=tabs,
            viewer=v,
            flt=flt,
            fixed=fixed,
            limit=limit,
            rows=[_row(base, r) for r in page.records],
            count=_count_text(n),
            capped=n >= COUNT_CAP,
            indexed=page.indexed,
            next_href=nxt,
            first_href=first,
            chains=chains,
            exports={
                "JSON lines": f"{base}/export.jsonl{qs}",
                "CSV": f"{base}/export.csv{qs}",
                "Report (Markdown)": f"{base}/report.md{qs}",
                "Report (JSON)": f"{base}/report.json{qs}",
            },
        )
        note(request, _event("audit.viewed", v, via, typed(q, flt), len(page.records), page=title))
        return resp

    def dag_tabs(base: str, dag: str, run: str | None = None) -> list[tuple[str, str]]:
        tabs = [("All records", f"{base}/"), (f"DAG {dag}", _tab(base, dag))]
        if run is not None:
            tabs.append((f"Run {run}", _tab(base, dag, run)))
        return tabs

    @app.api_route("/", methods=_GET, response_class=HTMLResponse)
    def records(request: Request, v: Viewer = who) -> Response:
        return list_page(request, v, "Audit trail", [])

    @app.api_route("/dags/{dag_id}", methods=_GET, response_class=HTMLResponse)
    def dag_records(request: Request, dag_id: str, v: Viewer = who) -> Response:
        _require_dag(v, dag_id)
        base = request.scope.get("root_path", "").rstrip("/")
        return list_page(request, v, f"DAG {dag_id}", dag_tabs(base, dag_id), dag=dag_id)

    @app.api_route("/dags/{dag_id}/runs/{run_id}", methods=_GET, response_class=HTMLResponse)
    def run_records(request: Request, dag_id: str, run_id: str, v: Viewer = who) -> Response:
        _require_dag(v, dag_id)
        base = request.scope.get("root_path", "").rstrip("/")
        return list_page(
            request,
            v,
            f"Run {run_id}",
            dag_tabs(base, dag_id, run_id),
            dag=dag_id,
            run=run_id,
        )

    @app.api_route(
        "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", methods=_GET, response_class=HTMLResponse
    )
    def task_records(
        request: Request, dag_id: str, run_id: str, task_id: str, v: Viewer = who
    ) -> Response:
        _require_dag(v, dag_id)
        base = request.scope.get("root_path", "").rstrip("/")
        return list_page(
            request,
            v,
            f"Task {task_id}",
            dag_tabs(base, dag_id, run_id),
            dag=dag_id,
            run=run_id,
            task=task_id,
        )

    def locate(view: LedgerReader, v: Viewer, chain: str, seq_text: str) -> tuple[int, int]:
        """(seq, chain size) of an existing record; 400 on a malformed seq, 404 if absent.
        A DAG-limited viewer's 404 says neither whether the chain exists nor its size: that
        runs before the record's DAG is known, and would tell them of chains they may not
        read."""
        if not _SEQ.fullmatch(seq_text):
            raise _bad(f"seq must be a whole number, not {seq_text[:40]!r}")
        seq = int(seq_text)
        head = None if len(chain) > _MAX_PARAM or "\x00" in chain else view.head(chain)
        size = stored_size(chain, head) if head is not None else 0
        if seq < size:
            return seq, size
        if v.dags is not None:
            raise HTTPException(404, f"no record {chain[:80]!r} #{seq:,} you may read")
        if head is None:  # (not view.chains(): a scan of every record on SQLite)
            raise HTTPException(404, f"no chain {chain[:80]!r} in this ledger")
        raise HTTPException(404, f"chain {chain!r} has {size:,} records; no seq {seq:,}")

    # Registered before the detail: its path would otherwise take "…/5/proof" for the record
    # "proof" of chain "…/5". Chain names may hold "/" (the {chain:path} converter).
    @app.api_route("/records/{chain:path}/{seq}/proof", methods=_GET)
    def record_proof(request: Request, chain: str, seq: str, v: Viewer = who) -> Response:
        _require_chain(v, (chain,))
        with site.ledger().snapshot() as view:
            n, _ = locate(view, v, chain, seq)
            with closing(view.read(chain, n, n + 1)) as rows:
                stored = next(rows)
            try:
                rec = Record.from_stored(stored)
            except VerificationError:
                rec = None
            _require_record_dag(v, fields_of(rec.subject, rec.actor).dag if rec else None)
            if rec is None and v.dags is not None:
                raise HTTPException(403, "this record cannot be read")
            latest = view.latest_checkpoint(chain)
            try:
                bundle = make_inclusion_bundle(view, chain, n)
            except ProofError as exc:
                uncovered = latest is None or type(latest.size) is not int or latest.size <= n
                return error_page(
                    request,
                    409,
                    f"No signed checkpoint covers chain {chain!r} seq {n} yet, so there is "
                    "nothing to prove it against. Sign one with `workflow-audit checkpoint` "
                    "(with the ledger's signing key), then download the proof again."
                    if uncovered
                    else f"No proof of chain {chain!r} seq {n} can be made: {exc}",
                )
        body = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
        filename = f"proof-{_file_part(chain)}-{n}.json"
        resp = Response(
            body,
            media_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                **_SECURITY_HEADERS,
            },
        )
        q = Query(chains=(chain,), dags=v.dags)
        note(
            request,
            _event(
                "audit.proof_downloaded",
                v,
                via,
                q,
                1,
                chain=chain,
                seq=n,
                tree_size=bundle["tree_size"],
            ),
        )
        return resp

    @app.api_route("/records/{chain:path}/{seq}", methods=_GET, response_class=HTMLResponse)
    def record_detail(request: Request, chain: str, seq: str, v: Viewer = who) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        _require_chain(v, (chain,))
        with site.ledger().snapshot() as view:
            n, size = locate(view, v, chain, seq)
            with closing(view.read(chain, n, n + 1)) as rows:
                stored = next(rows)
            latest = view.latest_checkpoint(chain)
        try:
            rec: Record | None = Record.from_stored(stored)
        except VerificationError:
            rec = None
        if rec is not None:
            f = fields_of(rec.subject, rec.actor)
            _require_record_dag(v, f.dag)
            pretty = orjson.dumps(
                rec.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
            ).decode()
        elif v.dags is not None:  # cannot tell which DAG it is about: only for every-DAG readers
            raise HTTPException(403, "this record cannot be read; ask one who may read every DAG")
        else:
            f = fields_of(None, None)
            pretty = stored.body.decode("utf-8", "replace")
        covered = latest is not None and type(latest.size) is int and latest.size > n
        filename = f"proof-{_file_part(chain)}-{n}.json"
        keys = [shlex.quote(k) for k in site.key_strings] or ["<verifier key>"]
        command = f"workflow-audit verify-proof {shlex.quote(filename)}" + "".join(
            f" --key {k}" for k in keys
        )
        q = Query(chains=(chain,), dags=v.dags)
        resp = site.render(
            request,
            "detail.html",
            title=f"{chain} #{n}",
            viewer=v,
            rec=rec,
            stored_hash=stored.hash.hex(),
            fields=f,
            chain=chain,
            seq=n,
            size=size,
            pretty=pretty,
            covered=covered,
            checkpoint_size=latest.size if latest is not None else None,
            proof_href=f"{base}/records/{quote(chain, safe='')}/{n}/proof",
            chain_href=f"{base}/records/{quote(chain, safe='')}",
            filename=filename,
            command=command,
            prove_command=f"workflow-audit prove --chain {shlex.quote(chain)} --seq {n} "
            f"-o {shlex.quote(filename)}",
            dag_href=_tab(base, f.dag),
            run_href=_tab(base, f.dag, f.run) if f.run else "",
            keys=bool(site.key_strings),
            nav="",
        )
        note(request, _event("audit.opened", v, via, q, 1, chain=chain, seq=n))
        return resp

    @app.api_route("/status", methods=_GET, response_class=HTMLResponse)
    def status(request: Request, v: Viewer = who) -> Response:
        rows, health, problems, verified, gaps = _status(site, v)
        resp = site.render(
            request,
            "status.html",
            title="Status",
            nav="status",
            viewer=v,
            rows=rows,
            health=health,
            problems=problems,
            verified=verified,
            gaps=gaps,
            ledger=site.name,
            keys=bool(site.verifiers),
        )
        note(request, _event("audit.viewed", v, via, None, None, page="status"))
        return resp

    def export(request: Request, v: Viewer, fmt: str) -> Response:
        flt = parse_filter(request.query_params)
        _require_dag(v, flt.dag)
        q = flt.query(v, lambda: site.chains(site.ledger()))
        ledger = site.ledger()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        media = "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8"
        headers = {
            "Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"',
            **_SECURITY_HEADERS,
        }
        if request.method == "HEAD":  # an uptime check: no records read, none recorded
            return Response(media_type=media, headers=headers)

        def body() -> Generator[bytes, None, None]:
            n = 0
            complete = False

            def counted(records: Iterable[Record]) -> Iterator[Record]:
                nonlocal n
                for rec in records:
                    n += 1
                    yield rec

            with ledger.snapshot() as view:
                # Recorded however the stream ends: a client that goes away (or a server
                # stopped) mid-stream has still read the records sent so far.
                try:
                    found = counted(selected(view, q))
                    chunks: Iterable[bytes] = (
                        to_jsonl(found)
                        if fmt == "jsonl"
                        else (s.encode("utf-8") for s in to_csv(found))
                    )
                    yield from _batched(chunks)
                    complete = True
                finally:
                    event = _event(
                        "audit.exported",
                        v,
                        via,
                        typed(q, flt),
                        n,
                        kind="records",
                        format=fmt,
                        complete=complete,
                    )
                    site.record(event)

        # The first chunk is made before the headers go out: a ledger that cannot be read is
        # then a 503 page, not a 200 with an empty body.
        return _Stream(_started(body()), media_type=media, headers=headers)

    @app.api_route("/export.jsonl", methods=_GET)
    def export_jsonl(request: Request, v: Viewer = who) -> Response:
        return export(request, v, "jsonl")

    @app.api_route("/export.csv", methods=_GET)
    def export_csv(request: Request, v: Viewer = who) -> Response:
        return export(request, v, "csv")

    def report(request: Request, v: Viewer, fmt: str) -> Response:
        flt = parse_filter(request.query_params)
        _require_dag(v, flt.dag)
        q = flt.query(v, lambda: site.chains(site.ledger()))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        media = "text/markdown; charset=utf-8" if fmt == "md" else "application/json"
        headers = {
            "Content-Disposition": f'attachment; filename="audit-report-{stamp}.{fmt}"',
            **_SECURITY_HEADERS,
        }
        if request.method == "HEAD":  # an uptime check: no records read, none recorded
            return Response(media_type=media, headers=headers)
        text, n = _report(site, q, fmt, v)
        resp = Response(text.encode("utf-8"), media_type=media, headers=headers)
        note(request, _event("audit.exported", v, via, typed(q, flt), n, kind="report", format=fmt))
        return resp

    @app.api_route("/report.md", methods=_GET)
    def report_md(request: Request, v: Viewer = who) -> Response:
        return report(request, v, "md")

    @app.api_route("/report.json", methods=_GET)
    def report_json(request: Request, v: Viewer = who) -> Response:
        return report(request, v, "json")

    @app.api_route("/static/{name}", methods=_GET)
    def static(name: str, v: Viewer = who) -> Response:
        found = site.static.get(name)
        if found is None:
            raise HTTPException(404, "no such file")
        data, media = found
        return Response(
            data,
            media_type=media,
            headers={**_SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"},
        )

    return app


def selected(view: LedgerReader, q: Query) -> Iterator[Record]:
    """The records ``q`` finds by chain then seq, the chains in the order ``q`` names them:
    the order (and so the bytes) of ``workflow-audit export`` with the same filter."""
    parts = [replace(q, chains=(c,)) for c in q.chains] if q.chains else [q]
    for part in parts:
        yield from iterate(view, part)


def _readable(
    view: LedgerReader, q: Query, unreadable: list[VerificationError]
) -> Iterator[Record]:
    """Every readable record ``q`` finds, by scanning; the unreadable ones are collected."""
    for chain in q.chains or view.chains():
        for stored in view.read(chain):
            try:
                rec = Record.from_stored(stored)
            except VerificationError as exc:
                unreadable.append(exc)
                continue
            if q.matches(rec):
                yield rec


def _started(stream: Generator[bytes, None, None]) -> Generator[bytes, None, None]:
    """``stream`` with its first chunk already made (so its errors raise here, before a
    response starts); closing the result closes ``stream``."""
    try:
        first = next(stream)
    except StopIteration:
        first = b""
    except Exception:  # the caller turns it into an error page; the stream is done
        stream.close()
        raise

    def rest() -> Generator[bytes, None, None]:
        try:
            yield first
            yield from stream
        finally:
            stream.close()

    return rest()


def _batched(chunks: Iterable[bytes], size: int = 65536) -> Iterator[bytes]:
    """Chunks joined into pieces of about ``size`` bytes (one ASGI message per piece)."""
    buf: list[bytes] = []
    have = 0
    for chunk in chunks:
        buf.append(chunk)
        have += len(chunk)
        if have >= size:
            yield b"".join(buf)
            buf, have = [], 0
    if buf:
        yield b"".join(buf)


def _report(site: _Site, q: Query, fmt: str, v: Viewer) -> tuple[str, int]:
    """The report ``workflow-audit report`` renders for the same filter, and its record count.
    A DAG-limited viewer's verification section names only the chains holding records they
    may read (:func:`readable_chains`): the others' sizes and heads are not theirs to learn."""
    unreadable: list[VerificationError] = []
    with site.ledger().snapshot() as view:
        try:
            summary = summarize(selected(view, q))
        except VerificationError:  # an unreadable record: count what can be read, name it
            summary = summarize(_readable(view, q, unreadable))
        summary.signatures_checked = bool(site.verifiers)
        chains: list[str] | None = list(q.chains) if q.chains else None
        if v.dags is not None:
            chains = readable_chains(view, v, chains if chains is not None else view.chains())
        try:
            summary.heads = verify_ledger(view, chains, keys=site.verifiers) if chains != [] else []
        except VerificationError as exc:
            summary.error = exc
    if summary.error is None and unreadable:
        summary.error = unreadable[0]
    period = f"{q.since or 'beginning'} … {q.until or 'now'}"
    # Named as `workflow-audit report` names it: the file, else the ledger's masked repr.
    path = ledger_path(site.ledger_url) if site.ledger_url.startswith("sqlite:") else None
    where = str(path) if path is not None else repr(site.ledger())
    return render_report(summary, fmt, ledger=where, period=period), summary.records


@dataclass(frozen=True, slots=True)
class _ChainStatus:
    chain: str
    records: int
    head: str
    last_record: str
    last_record_age: str
    checkpoint: str
    checkpoint_age: str
    signature: str
    unsigned: int
    sinks: dict[str, int]
    verified: str


def _signature(site: _Site, note: str | None) -> str:
    if note is None:
        return "-"
    if not site.verifiers:
        return "not checked (no verifier key configured)"
    for key in site.verifiers:
        try:
            open_checkpoint(note, [key])
        except AuditError:
            continue
        return f"verifies under {key.name}"
    return "DOES NOT VERIFY under the configured keys"


def _latest_verified(view: LedgerReader, chains: Sequence[str], *, by: bool) -> dict[str, str]:
    """Per chain, the verdict and time of the latest ``audit.verified`` record naming it, and
    who verified it when ``by`` (the actor is of the audit chain: every-DAG viewers only)."""
    out: dict[str, str] = {}
    if view.head(AUDIT_CHAIN) is None:
        return out
    q = Query(events=("audit.verified",), chains=(AUDIT_CHAIN,))
    before = None
    for _ in range(10):  # at most 500 verifications back
        page = search(view, q, limit=50, before=before)
        for rec in page.records:
            named = rec.data.get("chains")
            if not isinstance(named, dict):
                continue
            for chain in named:
                if chain in chains and chain not in out:
                    verdict = rec.data.get("verdict", "?")
                    actor = rec.actor.get("id", "?")
                    out[chain] = f"{verdict} at {rec.ts[:19]}" + (f" by {actor}" if by else "")
        if page.next is None or len(out) == len(chains):
            break
        before = page.next
    return out


def _status(
    site: _Site, v: Viewer
) -> tuple[list[_ChainStatus], Any, list[str], dict[str, str], str]:
    """The status page's chains, health, problems, verifications and gap count; a DAG-limited
    viewer sees only the chains holding records they may read (:func:`readable_chains`)."""
    with site.ledger().snapshot() as view:
        # The spool of this app's ledger (beside a SQLite file unless configured elsewhere).
        config = (site.config or AuditConfig.from_env()).evolve(ledger_url=site.ledger_url)
        health = check(view, name=site.name, config=config)
        every = [c.chain for c in health.chains]
        names = readable_chains(view, v, every)
        hidden = [f"chain {c!r}" for c in every if c not in names]
        problems = [p for p in health.problems if not any(h in p for h in hidden)]
        verified = _latest_verified(view, names, by=v.dags is None)
        rows = []
        total = 0
        for c in health.chains:
            total += c.records
            if c.chain not in names:
                continue
            head = view.head(c.chain)
            latest = view.latest_checkpoint(c.chain)
            rows.append(
                _ChainStatus(
                    chain=c.chain,
                    records=c.records,
                    head=head.hash.hex() if head is not None else "-",
                    last_record=(c.last_record_ts or "-")[:19],
                    last_record_age=_age(c.last_record_age_s),
                    checkpoint=f"{c.checkpoint_size:,} records" if c.checkpoint_size else "none",
                    checkpoint_age=_age(c.checkpoint_age_s),
                    signature=_signature(site, latest.note if latest is not None else None),
                    unsigned=c.unsigned,
                    sinks=c.sinks,
                    verified=verified.get(c.chain, "never"),
                )
            )
        gap_q = Query(events=("*.unrecorded",), dags=v.dags)
        indexed = isinstance(view, IndexedReader) and view.index_complete(())
        if indexed or total <= _SCAN_LIMIT:
            gaps = _count_text(count(view, gap_q, cap=COUNT_CAP))
        else:
            gaps = "not counted (the query index is not complete; see `workflow-audit index`)"
    return rows, health, problems, verified, gaps
