"""The exports and reports of the current filter: records streamed as JSON lines or CSV in
``workflow-audit export``'s order (:func:`selected`), a stream whose first chunk is made before
the response starts and whose end is always recorded, and ``workflow-audit report``'s report.

Kept apart from the routes: streaming has its own rules (a ledger error must still be an
error page; a client gone mid-stream has still read what was sent).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Generator, Iterable, Iterator
from dataclasses import replace
from typing import Any

import anyio.to_thread
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from audit_core._record import Record
from audit_core._report import render_report, summarize, to_csv, to_jsonl
from audit_core.errors import VerificationError
from audit_core.ledgers import LedgerReader, ledger_path
from audit_core.query import Query, iterate
from audit_core.verify import verify_ledger
from audit_core.web import Viewer
from audit_core.web.params import parse_filter, readable_chains, require_dag, typed
from audit_core.web.site import SECURITY_HEADERS, Site, audit_event


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


def make_report(site: Site, q: Query, fmt: str, v: Viewer) -> tuple[str, int]:
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


def export_response(site: Site, request: Request, v: Viewer, fmt: str, via: str) -> Response:
    """The records of the request's filter as a JSON-lines or CSV download (``fmt``),
    recorded as ``audit.exported`` however the stream ends; HEAD reads and records nothing."""
    flt = parse_filter(request.query_params)
    require_dag(v, flt.dag)
    q = flt.query(v, lambda: site.chains(site.ledger()))
    ledger = site.ledger()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    media = "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8"
    headers = {
        "Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"',
        **SECURITY_HEADERS,
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
                event = audit_event(
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
