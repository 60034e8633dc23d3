"""Finding records: the filters of the browser view, ``show`` and ``export``.

A query is answered from the ledger's derived query index when the ledger has one and it
answers for the chains asked about, else by scanning every record (always right, slow on big
ledgers). Writers index a chain INDEX_BATCH records at a time (audit_core._index), so the index
lags each chain by a short tail: a query merges the index's answer with every chain's tail,
read by seq and filtered here. Read both in one snapshot (``ledger.snapshot()``, as the web app
and the CLI do) for an exact answer; on a ledger read outside one, an index row at or past the
tail's start is ignored, so a concurrent append never shows a record twice.

The index only says *where* to look: the records returned are always read, parsed and
filtered again from the hashed bytes, so an edited index can hide a record from a page but
never show one that is not on the chain (``verify`` never reads the index).

Order: a page is newest first by ``(ts, chain, seq)`` descending; ``iterate`` (exports) is by
chain, then seq, as ``workflow-audit export`` always wrote.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson

from audit_core._index import INDEX_BATCH, fields_of
from audit_core._record import Record, StoredRecord
from audit_core.errors import ConfigError, VerificationError
from audit_core.ledgers import LedgerReader

__all__ = [
    "INDEX_BATCH",
    "IndexMaintainer",
    "IndexedReader",
    "Page",
    "Position",
    "Query",
    "count",
    "iterate",
    "search",
]


@dataclass(frozen=True, slots=True)
class Query:
    """Which records to find; every given criterion must hold.

    ``dags`` is a permission, not a filter the user typed: records about a DAG (or flow) in
    the set, plus records about none; ``None`` means every record.
    """

    since: str | None = None  # inclusive, as audit_core._report.parse_time returns
    until: str | None = None  # exclusive
    events: tuple[str, ...] = ()  # shell-style patterns, case-sensitive: "task.*"
    chains: tuple[str, ...] = ()  # () = every chain
    dag: str | None = None  # the DAG / flow the subject names
    run: str | None = None  # run_id / flow_run_id
    task: str | None = None  # task_id / task_name
    actor: str | None = None  # actor["id"]
    dags: frozenset[str] | None = None

    def matches(self, rec: Record) -> bool:
        """Whether ``rec`` is one of the records this query finds."""
        if self.chains and rec.chain not in self.chains:
            return False
        if self.since is not None and rec.ts < self.since:
            return False
        if self.until is not None and rec.ts >= self.until:
            return False
        if self.events and not any(fnmatch.fnmatchcase(rec.event, p) for p in self.events):
            return False
        f = fields_of(rec.subject, rec.actor)
        if self.dags is not None and f.dag is not None and f.dag not in self.dags:
            return False
        return (
            (self.dag is None or f.dag == self.dag)
            and (self.run is None or f.run == self.run)
            and (self.task is None or f.task == self.task)
            and (self.actor is None or f.actor == self.actor)
        )


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a newest-first page ended: the next page holds records strictly before it."""

    ts: str
    chain: str
    seq: int

    def encode(self) -> str:
        """An opaque, URL-safe token for this position."""
        raw = orjson.dumps([self.ts, self.chain, self.seq])
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Position:
        """The position ``encode`` made; ConfigError for anything else."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            ts, chain, seq = orjson.loads(raw)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"not a page position: {token[:40]!r}") from exc
        if not (isinstance(ts, str) and isinstance(chain, str) and type(seq) is int):
            raise ConfigError(f"not a page position: {token[:40]!r}")
        return cls(ts, chain, seq)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of records, newest first, and where the next one starts (None: no more)."""

    records: tuple[Record, ...]
    next: Position | None
    indexed: bool  # answered from the query index (False: by scanning every record)


@runtime_checkable
class IndexedReader(Protocol):
    """A ledger reader with a query index (both ledgers; see their ``record_index`` table)."""

    def index_complete(self, chains: Sequence[str]) -> bool:
        """Whether the index (with each chain's short unindexed tail) answers for ``chains``
        (all chains when empty)."""
        ...

    def index_tails(self, chains: Sequence[str]) -> dict[str, tuple[int, int]] | None:
        """chain -> ``(indexed, records)`` of every chain of ``chains`` (all when empty) that
        holds records: the index holds seqs ``< indexed``, a query reads the rest by seq;
        None when the index cannot answer for them (a query then scans)."""
        ...

    def index_tail(self, chain: str, start: int) -> list[StoredRecord]:
        """The stored records of ``chain`` from seq ``start`` on (its unindexed tail), read
        in this reader's snapshot when it is one."""
        ...

    def index_page(self, q: Query, *, limit: int, before: Position | None) -> list[StoredRecord]:
        """Up to ``limit`` stored records the index finds for ``q``, newest first, strictly
        before ``before``; a superset is allowed (the caller filters the parsed records)."""
        ...

    def index_count(self, q: Query, *, cap: int) -> int:
        """How many records the index finds for ``q``, counting at most ``cap``."""
        ...

    def index_select(self, q: Query) -> Iterator[StoredRecord]:
        """Every stored record the index finds for ``q``, by chain then seq."""
        ...


@runtime_checkable
class IndexMaintainer(Protocol):
    """A ledger that keeps a query index (both ledgers): ``workflow-audit index``."""

    def index_usable(self) -> bool:
        """Whether the ledger has the index tables and this role may read them."""
        ...

    def index_sizes(self, chains: Sequence[str] = ()) -> list[tuple[str, int, int]]:
        """``(chain, records, indexed)`` of ``chains`` (every chain when empty)."""
        ...

    def index_complete(self, chains: Sequence[str]) -> bool:
        """Whether queries about ``chains`` (all when empty) are answered from the index
        (with each chain's short unindexed tail, read by seq)."""
        ...

    def rebuild_index(self, chains: Sequence[str] = (), *, batch: int = 5000) -> dict[str, int]:
        """Recompute the index of ``chains`` (all when empty) from the records; rows per chain."""
        ...


def _parsed(stored: StoredRecord) -> Record | None:
    try:
        return Record.from_stored(stored)
    except VerificationError:
        return None  # unreadable bytes: verify reports them; a query shows what it can read


def _chains(reader: LedgerReader, q: Query) -> list[str]:
    have = reader.chains()
    return [c for c in have if c in q.chains] if q.chains else have


Tails = dict[str, tuple[int, int]]


def _indexed(reader: LedgerReader, q: Query) -> tuple[IndexedReader, Tails] | None:
    if isinstance(reader, IndexedReader):
        tails = reader.index_tails(q.chains)
        if tails is not None:
            return reader, tails
    return None


def _in_index(stored: StoredRecord, tails: Tails) -> bool:
    """Whether ``stored`` (an index hit) lies before its chain's tail: a hit at or past it
    (an append between two reads outside a snapshot) is the tail's to show."""
    start = tails.get(stored.chain) if isinstance(stored.chain, str) else None
    return start is not None and type(stored.seq) is int and stored.seq < start[0]


def _tail(index: IndexedReader, tails: Tails) -> Iterator[StoredRecord]:
    """Every chain's records past the index, by chain then seq (unfiltered)."""
    for chain in sorted(tails):
        indexed, size = tails[chain]
        if indexed < size:
            yield from index.index_tail(chain, indexed)


def _matching(stored: Iterable[StoredRecord], q: Query) -> Iterator[Record]:
    for s in stored:
        rec = _parsed(s)
        if rec is not None and q.matches(rec):
            yield rec


def search(
    reader: LedgerReader, q: Query, *, limit: int = 50, before: Position | None = None
) -> Page:
    """The newest ``limit`` records ``q`` finds strictly before ``before``."""
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    got = _indexed(reader, q)
    if got is not None:
        index, tails = got
        edge = None if before is None else (before.ts, before.chain, before.seq)
        found = [
            rec
            for rec in _matching(_tail(index, tails), q)
            if edge is None or (rec.ts, rec.chain, rec.seq) < edge
        ]
        # the index's newest limit + 1 matches (or all it has): with every tail match, the
        # newest limit + 1 of both are among them
        hits = 0
        cursor = before
        while hits <= limit:
            batch = index.index_page(q, limit=limit + 1, before=cursor)
            for stored in batch:
                rec = _parsed(stored) if _in_index(stored, tails) else None
                if rec is not None and q.matches(rec):
                    found.append(rec)
                    hits += 1
            if len(batch) < limit + 1:
                break
            last = _parsed(batch[-1])
            if last is None:
                break
            cursor = Position(last.ts, last.chain, last.seq)
        return _page(found, limit, indexed=True)
    return _page(_scan_newest(reader, q, limit + 1, before), limit, indexed=False)


def _page(found: list[Record], limit: int, *, indexed: bool) -> Page:
    found.sort(key=lambda r: (r.ts, r.chain, r.seq), reverse=True)
    more = len(found) > limit
    shown = tuple(found[:limit])
    last = shown[-1] if more and shown else None
    nxt = Position(last.ts, last.chain, last.seq) if last is not None else None
    return Page(shown, nxt, indexed)


def _scan_newest(reader: LedgerReader, q: Query, n: int, before: Position | None) -> list[Record]:
    """The ``n`` newest matching records, by reading every record once (bounded memory)."""
    heap: list[tuple[tuple[str, str, int], int, Record]] = []
    tie = 0
    for chain in _chains(reader, q):
        for stored in reader.read(chain):
            rec = _parsed(stored)
            if rec is None or not q.matches(rec):
                continue
            key = (rec.ts, rec.chain, rec.seq)
            if before is not None and key >= (before.ts, before.chain, before.seq):
                continue
            tie += 1
            if len(heap) < n:
                heapq.heappush(heap, (key, tie, rec))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, tie, rec))
    return [rec for _, _, rec in heap]


def count(reader: LedgerReader, q: Query, *, cap: int = 10_000) -> int:
    """How many records ``q`` finds, counting at most ``cap`` (a page shows "10,000+")."""
    got = _indexed(reader, q)
    if got is not None:
        index, tails = got
        n = index.index_count(q, cap=cap)
        for _ in _matching(_tail(index, tails), q):
            if n >= cap:
                break
            n += 1
        return min(n, cap)
    n = 0
    for chain in _chains(reader, q):
        for stored in reader.read(chain):
            rec = _parsed(stored)
            if rec is not None and q.matches(rec):
                n += 1
                if n >= cap:
                    return n
    return n


def iterate(reader: LedgerReader, q: Query) -> Iterator[Record]:
    """Every record ``q`` finds, by chain then seq (the order of ``workflow-audit export``).

    Raises :class:`~audit_core.errors.FormatError` on a record whose bytes cannot be parsed:
    an export must not silently leave one out."""
    got = _indexed(reader, q)
    stored_records = _indexed_all(q, *got) if got is not None else _all(reader, q)
    for stored in stored_records:
        rec = Record.from_stored(stored)
        if q.matches(rec):
            yield rec


def _indexed_all(q: Query, index: IndexedReader, tails: Tails) -> Iterator[StoredRecord]:
    """Each chain's records the index finds, then its tail, chain after chain."""
    for chain in sorted(tails):
        indexed, size = tails[chain]
        if indexed:
            one = dataclasses.replace(q, chains=(chain,))
            yield from (s for s in index.index_select(one) if _in_index(s, tails))
        if indexed < size:
            yield from index.index_tail(chain, indexed)


def _all(reader: LedgerReader, q: Query) -> Iterator[StoredRecord]:
    for chain in _chains(reader, q):
        yield from reader.read(chain)
