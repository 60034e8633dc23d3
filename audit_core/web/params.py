"""What a request asks for, and what its viewer may be told: the user's filter and page
parameters (:class:`Filter`, ``limit``, ``before`` tokens, a record's chain and seq), checked
into 400s, and the permission checks (visible and readable chains, a DAG's 403).

Kept apart from the routes so that every page, export and report reads its query string and
applies the viewer's permission the same way.

>>> Filter(dag="etl").params()
[('dag', 'etl')]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException

from audit_core._chain import stored_size
from audit_core._report import parse_time
from audit_core.errors import ConfigError
from audit_core.ledgers import LedgerReader
from audit_core.query import Position, Query, count
from audit_core.readlog import AUDIT_CHAIN
from audit_core.web import Viewer

#: The most records one page shows (``limit``); the default is 50.
MAX_LIMIT = 200
#: A count stops here; the page then says "10,000+".
COUNT_CAP = 10_000
#: Query parameters longer than this are refused (400): no filter needs more.
_MAX_PARAM = 1000
_SEQ = re.compile(r"[0-9]{1,19}")
_LIMIT = re.compile(r"[0-9]{1,6}")
_SEPARATORS = re.compile(r"[\s,]+")


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


def typed(q: Query, flt: Filter) -> Query:
    """``q`` with the chains the user typed: what a read record keeps as its filter (not the
    chains a DAG-limited viewer was narrowed to)."""
    return replace(q, chains=flt.chains)


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
    require_chain(viewer, chains)
    if chains:
        return chains
    return tuple(c for c in every_chain() if c != AUDIT_CHAIN) or (_NO_CHAIN,)


def require_chain(viewer: Viewer, chains: Iterable[str]) -> None:
    if viewer.dags is not None and AUDIT_CHAIN in chains:
        raise HTTPException(
            403, f"the {AUDIT_CHAIN!r} chain is shown only to those who may read every DAG"
        )


def _permitted(viewer: Viewer, dag: str | None) -> bool:
    return viewer.dags is None or dag is None or dag in viewer.dags


def require_dag(viewer: Viewer, dag: str | None) -> None:
    """403 unless ``viewer`` may read ``dag``: for a DAG the user typed (a tab, a filter), so
    the message may name it."""
    if not _permitted(viewer, dag):
        raise HTTPException(403, f"you may not read the records of DAG {dag!r}")


def require_record_dag(viewer: Viewer, dag: str | None) -> None:
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


def query_string(pairs: Iterable[tuple[str, str]]) -> str:
    pairs = list(pairs)
    return "?" + urlencode(pairs) if pairs else ""


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
