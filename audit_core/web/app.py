"""The browser view's routes: the record list and its DAG/run/task tabs, a record's detail and
inclusion proof, the trail's status, and exports of the current filter.

Every route takes the host's ``viewer`` dependency (static files too), so nothing is served to
someone the host did not let in, and every query carries ``dags=viewer.dags``: records about
DAGs the viewer may not read never reach a page, an export or a count. The ledger is opened
read-only, once, on first use; each request reads one snapshot of it. After a page is built,
the ``recorder`` gets an ``audit.*`` event (the audit of the audit, :mod:`audit_core.readlog`).

URLs are built from the ASGI ``root_path``, so the app works mounted at ``/workflow-audit``
inside Airflow and at ``/`` under ``workflow-audit serve``.

This module holds only :func:`create_app` and its routes, each thin: parse the request
(:mod:`audit_core.web.params`), call a service, render (:mod:`audit_core.web.site`), record.
Exports and reports are built in :mod:`audit_core.web.exports`, the status page's data in
:mod:`audit_core.web.status`.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from audit_core._index import fields_of
from audit_core._record import Record
from audit_core.config import AuditConfig
from audit_core.errors import ProofError, VerificationError
from audit_core.proofs import make_inclusion_bundle
from audit_core.query import Query, count, search
from audit_core.readlog import Recorder
from audit_core.trail import Event
from audit_core.web import Viewer
from audit_core.web.exports import export_response, make_report
from audit_core.web.params import (
    COUNT_CAP,
    MAX_LIMIT,
    locate,
    parse_filter,
    parse_page,
    query_string,
    readable_chains,
    require_chain,
    require_dag,
    require_record_dag,
    typed,
)
from audit_core.web.site import (
    SECURITY_HEADERS,
    Site,
    audit_event,
    count_text,
    file_part,
    install_error_pages,
    row,
    tab,
)
from audit_core.web.status import status_of

__all__ = ["MAX_LIMIT", "create_app"]

#: Every page answers HEAD too (uptime checks), recording no read.
_GET = ["GET", "HEAD"]

ViewerDep = Callable[..., Viewer | Awaitable[Viewer]]


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
    site = Site(
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

    install_error_pages(app, site)

    def list_page(
        request: Request, v: Viewer, title: str, tabs: list[tuple[str, str]], **fixed: str
    ) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        flt = parse_filter(request.query_params, **fixed)
        require_dag(v, flt.dag)
        limit, before = parse_page(request.query_params)
        with site.ledger().snapshot() as view:
            q = flt.query(v, lambda: site.chains(view))
            page = search(view, q, limit=limit, before=before)
            n = count(view, q, cap=COUNT_CAP)
            chains = readable_chains(view, v, site.chains(view))
        again = flt.params()
        keep_limit = [("limit", str(limit))] if limit != 50 else []
        nxt = (
            request.url.path + query_string([*again, *keep_limit, ("before", page.next.encode())])
            if page.next is not None
            else None
        )
        first = request.url.path + query_string([*again, *keep_limit]) if before else None
        qs = query_string(again)
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
            rows=[row(base, r) for r in page.records],
            count=count_text(n, COUNT_CAP),
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
        note(
            request,
            audit_event("audit.viewed", v, via, typed(q, flt), len(page.records), page=title),
        )
        return resp

    def dag_tabs(base: str, dag: str, run: str | None = None) -> list[tuple[str, str]]:
        tabs = [("All records", f"{base}/"), (f"DAG {dag}", tab(base, dag))]
        if run is not None:
            tabs.append((f"Run {run}", tab(base, dag, run)))
        return tabs

    @app.api_route("/", methods=_GET, response_class=HTMLResponse)
    def records(request: Request, v: Viewer = who) -> Response:
        return list_page(request, v, "Audit trail", [])

    @app.api_route("/dags/{dag_id}", methods=_GET, response_class=HTMLResponse)
    def dag_records(request: Request, dag_id: str, v: Viewer = who) -> Response:
        require_dag(v, dag_id)
        base = request.scope.get("root_path", "").rstrip("/")
        return list_page(request, v, f"DAG {dag_id}", dag_tabs(base, dag_id), dag=dag_id)

    @app.api_route("/dags/{dag_id}/runs/{run_id}", methods=_GET, response_class=HTMLResponse)
    def run_records(request: Request, dag_id: str, run_id: str, v: Viewer = who) -> Response:
        require_dag(v, dag_id)
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
        require_dag(v, dag_id)
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

    # Registered before the detail: its path would otherwise take "…/5/proof" for the record
    # "proof" of chain "…/5". Chain names may hold "/" (the {chain:path} converter).
    @app.api_route("/records/{chain:path}/{seq}/proof", methods=_GET)
    def record_proof(request: Request, chain: str, seq: str, v: Viewer = who) -> Response:
        require_chain(v, (chain,))
        with site.ledger().snapshot() as view:
            n, _ = locate(view, v, chain, seq)
            with closing(view.read(chain, n, n + 1)) as rows:
                stored = next(rows)
            try:
                rec = Record.from_stored(stored)
            except VerificationError:
                rec = None
            require_record_dag(v, fields_of(rec.subject, rec.actor).dag if rec else None)
            if rec is None and v.dags is not None:
                raise HTTPException(403, "this record cannot be read")
            latest = view.latest_checkpoint(chain)
            try:
                bundle = make_inclusion_bundle(view, chain, n)
            except ProofError as exc:
                uncovered = latest is None or type(latest.size) is not int or latest.size <= n
                return site.error_page(
                    request,
                    409,
                    f"No signed checkpoint covers chain {chain!r} seq {n} yet, so there is "
                    "nothing to prove it against. Sign one with `workflow-audit checkpoint` "
                    "(with the ledger's signing key), then download the proof again."
                    if uncovered
                    else f"No proof of chain {chain!r} seq {n} can be made: {exc}",
                )
        body = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
        filename = f"proof-{file_part(chain)}-{n}.json"
        resp = Response(
            body,
            media_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                **SECURITY_HEADERS,
            },
        )
        q = Query(chains=(chain,), dags=v.dags)
        note(
            request,
            audit_event(
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
        require_chain(v, (chain,))
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
            require_record_dag(v, f.dag)
            pretty = orjson.dumps(
                rec.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
            ).decode()
        elif v.dags is not None:  # cannot tell which DAG it is about: only for every-DAG readers
            raise HTTPException(403, "this record cannot be read; ask one who may read every DAG")
        else:
            f = fields_of(None, None)
            pretty = stored.body.decode("utf-8", "replace")
        covered = latest is not None and type(latest.size) is int and latest.size > n
        filename = f"proof-{file_part(chain)}-{n}.json"
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
            dag_href=tab(base, f.dag),
            run_href=tab(base, f.dag, f.run) if f.run else "",
            keys=bool(site.key_strings),
            nav="",
        )
        note(request, audit_event("audit.opened", v, via, q, 1, chain=chain, seq=n))
        return resp

    @app.api_route("/status", methods=_GET, response_class=HTMLResponse)
    def status(request: Request, v: Viewer = who) -> Response:
        rows, health, problems, verified, gaps = status_of(site, v)
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
        note(request, audit_event("audit.viewed", v, via, None, None, page="status"))
        return resp

    def export(request: Request, v: Viewer, fmt: str) -> Response:
        return export_response(site, request, v, fmt, via)

    @app.api_route("/export.jsonl", methods=_GET)
    def export_jsonl(request: Request, v: Viewer = who) -> Response:
        return export(request, v, "jsonl")

    @app.api_route("/export.csv", methods=_GET)
    def export_csv(request: Request, v: Viewer = who) -> Response:
        return export(request, v, "csv")

    def report(request: Request, v: Viewer, fmt: str) -> Response:
        flt = parse_filter(request.query_params)
        require_dag(v, flt.dag)
        q = flt.query(v, lambda: site.chains(site.ledger()))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        media = "text/markdown; charset=utf-8" if fmt == "md" else "application/json"
        headers = {
            "Content-Disposition": f'attachment; filename="audit-report-{stamp}.{fmt}"',
            **SECURITY_HEADERS,
        }
        if request.method == "HEAD":  # an uptime check: no records read, none recorded
            return Response(media_type=media, headers=headers)
        text, n = make_report(site, q, fmt, v)
        resp = Response(text.encode("utf-8"), media_type=media, headers=headers)
        note(
            request,
            audit_event("audit.exported", v, via, typed(q, flt), n, kind="report", format=fmt),
        )
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
            headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"},
        )

    return app
