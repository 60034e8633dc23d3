"""The one-statement reads and writes both ledgers make, written once over each one's SQL.

A ledger, and each snapshot of it, supplies ``_rows`` (one statement on its connection: the
ledger's under its lock, with its retries; the snapshot's in its one read transaction), a
ledger also ``_write``, and its dialect's :class:`Queries`; :class:`RowReads` and
:class:`RowWrites` turn the rows into the :class:`~audit_core.ledgers.LedgerReader` and
:class:`~audit_core.ledgers.Ledger` results.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from audit_core._index import MAX_TAIL, NO_DAG, expand_events, is_exact, literal_prefix, next_prefix
from audit_core._record import (
    PreparedRecord,
    StoredCheckpoint,
    StoredCosignature,
    StoredRecord,
)
from audit_core.errors import LedgerError

if TYPE_CHECKING:
    from audit_core.query import Position, Query

__all__ = ["IndexSql", "Queries", "RowReads", "RowWrites"]

#: Distinct event types read to turn a pattern into exact index seeks; a ledger with more
#: filters event patterns by their literal prefix instead.
MAX_EVENT_TYPES = 512
#: At most this many index seeks (one per value of the driving column(s)) make one page.
MAX_SEEDS = 64
#: Rows an export reads from the index per statement.
SELECT_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Queries:
    """One SQL dialect's text of the statements below, each taking the arguments named."""

    head: str  # (chain) -> chain, seq, hash, body of its last record
    chains: str  # () -> the distinct chain of records, sorted
    merkle_chains: str  # () -> the distinct chain of merkle_subtrees and checkpoints, sorted
    extent: str  # (chain) -> max(last) of its merkle_subtrees
    checkpoints: str  # (chain) -> chain, size, root, note, created; ORDER BY is appended
    cursor: str  # (name, chain) -> seq
    add_checkpoint: str  # (chain, size, root, note, created); does nothing when one exists
    set_cursor: str  # (name, chain, seq); moves an existing cursor forward only
    keyed: str  # (chain, key) -> chain, seq, hash, body of the record stored under the key
    keys: str  # (chain, keys) -> key: those of the keys stored on the chain
    has_cosignatures: str  # () -> one row: true when the cosignatures table exists
    cosignatures: str  # (chain) -> chain, size, body, line, created, ORDER BY size, rowid
    cosigned_chains: str  # () -> the distinct chain of cosignatures, sorted
    add_cosignature: str  # (chain, size, body, line, created); nothing when the line exists


@dataclass(frozen=True, slots=True)
class IndexSql:
    """One SQL dialect's pieces of the query index's statements (``record_index``)."""

    param: str  # the placeholder: "?" or "%s"
    any_of: str  # "{col} is one of a list argument", with {col} to format
    listed: Callable[[list[str]], object]  # a Python list as that argument
    usable: str  # () -> one row whose first value is true when both index tables are readable
    text_c: str  # appended to a text expression to compare it byte-wise ("" or ' COLLATE "C"')
    records_chain: str  # appended to an index chain compared with records.chain
    opaque: str  # prefixed to a column so that SQLite uses no index for a term ("+" or "")


_ORDER_DESC = "ts DESC, chain DESC, seq DESC"
Seed = tuple[tuple[str, str], ...]  # equalities on record_index columns


def seeds(q: Query, events: list[str] | None, types: list[str] | None = None) -> list[Seed]:
    """The index seeks that together find every record of ``q``: each fixes the first
    columns of an index whose next columns are ``(ts, chain, seq)``, so each returns its rows
    newest first and a page reads at most ``limit`` rows from each. ``events``: the event
    types ``q`` asks for; ``types``: every event type (for a DAG's rows in ts order, one seek
    of ``(dag, event)`` per type). The most selective criterion drives: a run (with its DAG),
    a DAG, an actor, event types, the DAGs a viewer may read; without any, one walk of the
    ``ts`` index filtering as it goes. Few indexes on purpose: each one costs every append."""
    if q.run is not None:  # run ids repeat across DAGs (Airflow's scheduled__<date>)
        return [(("run", q.run), ("dag", q.dag))] if q.dag is not None else [(("run", q.run),)]
    kinds = events if events is not None else types
    if q.dag is not None:
        if kinds is not None and len(kinds) <= MAX_SEEDS:
            return [(("dag", q.dag), ("event", e)) for e in kinds]
        return [(("dag", q.dag),)]  # the (dag, event, ...) index's prefix, sorted
    if q.actor is not None:
        return [(("actor", q.actor),)]
    dags = None if q.dags is None else [NO_DAG, *sorted(q.dags)]
    if dags is not None and kinds is not None and len(dags) * len(kinds) <= MAX_SEEDS:
        return [(("dag", d), ("event", e)) for d in dags for e in kinds]
    if events is not None and len(events) <= MAX_SEEDS:
        return [(("event", e),) for e in events]
    return [()]


def _size(last: object) -> int:
    """A chain's size from its last seq; -1 (never "complete": queries then scan, and the
    scan shows what it can) for a seq edited into another type."""
    return last + 1 if type(last) is int else -1


def _indexed(size: object) -> int:
    return size if type(size) is int else 0


class RowReads:
    """The reads that are one query each (:class:`~audit_core.ledgers.LedgerReader`), and
    the query index's (:class:`~audit_core.query.IndexedReader`)."""

    queries: ClassVar[Queries]
    index_sql: ClassVar[IndexSql]

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    @staticmethod
    def _record(row: tuple[Any, ...]) -> StoredRecord:
        """A ``(chain, seq, hash, body)`` row as read (a tampered row may hold any type: the
        verifier names it). A driver that returns buffers converts them."""
        return StoredRecord._make(row)

    @staticmethod
    def _checkpoint(row: tuple[Any, ...]) -> StoredCheckpoint:
        """A ``(chain, size, root, note, created)`` row, as :meth:`_record`."""
        return StoredCheckpoint(*row)

    def head(self, chain: str) -> StoredRecord | None:
        """The last record of ``chain`` (None if it has none)."""
        rows = self._rows(self.queries.head, (chain,))
        return self._record(rows[0]) if rows else None

    def chains(self) -> list[str]:
        """Every chain id with at least one record, sorted."""
        return [r[0] for r in self._rows(self.queries.chains)]

    def merkle_chains(self) -> list[str]:
        """Every chain id with stored Merkle subtrees or checkpoints, sorted."""
        return [r[0] for r in self._rows(self.queries.merkle_chains)]

    def merkle_extent(self, chain: str) -> int:
        """One more than the last leaf that completed a stored subtree; 0 when none."""
        rows = self._rows(self.queries.extent, (chain,))
        last = rows[0][0] if rows else None
        # a tampered row may hold anything; only an integer says how far the tree reached
        return last + 1 if isinstance(last, int) else 0

    def latest_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        """The chain's checkpoint of the largest tree."""
        rows = self._rows(self.queries.checkpoints + " ORDER BY size DESC LIMIT 1", (chain,))
        return self._checkpoint(rows[0]) if rows else None

    def checkpoints(self, chain: str) -> list[StoredCheckpoint]:
        """The chain's stored checkpoints, smallest tree first."""
        rows = self._rows(self.queries.checkpoints + " ORDER BY size", (chain,))
        return [self._checkpoint(r) for r in rows]

    def cosignatures(self, chain: str) -> list[StoredCosignature]:
        """The witnesses' cosignatures of the chain's checkpoints, smallest size first; []
        for a ledger made before them (a read-only copy of an older ledger)."""
        if not self._rows(self.queries.has_cosignatures)[0][0]:
            return []
        rows = self._rows(self.queries.cosignatures, (chain,))
        return [StoredCosignature(*row) for row in rows]

    def cosigned_chains(self) -> list[str]:
        """Every chain id with stored cosignatures, sorted; [] for a ledger made before them."""
        if not self._rows(self.queries.has_cosignatures)[0][0]:
            return []
        return [r[0] for r in self._rows(self.queries.cosigned_chains)]

    def get_cursor(self, name: str, chain: str) -> int:
        """The last seq consumer ``name`` marked done in ``chain``; -1 if none."""
        rows = self._rows(self.queries.cursor, (name, chain))
        if not rows:
            return -1
        if type(rows[0][0]) is not int:  # a row edited outside workflow-audit
            raise LedgerError(f"the cursor of {name!r} in chain {chain!r} is not an integer")
        return int(rows[0][0])

    def cursor_names(self) -> list[str]:
        """The names of every consumer with a cursor in some chain, sorted."""
        return [r[0] for r in self._rows("SELECT DISTINCT name FROM cursors ORDER BY name")]

    # -- the query index (record_index, index_state): never evidence ------------------------

    def index_usable(self) -> bool:
        """Whether this ledger has the query index tables and this role may read them (a
        ledger made before them has none until a writer opens it)."""
        rows = self._rows(self.index_sql.usable)
        return bool(rows and rows[0][0])

    def _index_states(self, chains: Sequence[str] = ()) -> list[tuple[str, int, object]]:
        """``(chain, records, index_state size as stored or None)`` of ``chains`` (every
        chain with records when empty). O(chains) index probes, never a count."""
        c = self.index_sql.text_c
        p = self.index_sql.param
        if chains:
            out: list[tuple[str, int, object]] = []
            for chain in chains:
                rows = self._rows(
                    f"SELECT (SELECT max(seq) FROM records WHERE chain = {p}), "  # noqa: S608 - ours
                    f"(SELECT size FROM index_state WHERE chain = {p})",
                    (chain, chain),
                )
                last, size = rows[0] if rows else (None, None)
                out.append((chain, 0 if last is None else _size(last), size))
            return out
        rows = self._rows(
            "WITH RECURSIVE c(chain) AS (SELECT min(chain) FROM records UNION ALL "  # noqa: S608 - ours
            "SELECT (SELECT min(n.chain) FROM records n WHERE n.chain > c.chain) FROM c "
            "WHERE c.chain IS NOT NULL) "
            "SELECT c.chain, (SELECT max(r.seq) FROM records r WHERE r.chain = c.chain), "
            f"(SELECT s.size FROM index_state s WHERE s.chain = c.chain{c}) "
            "FROM c WHERE c.chain IS NOT NULL ORDER BY c.chain"
        )
        return [
            (r[0], _size(r[1]), r[2]) if isinstance(r[0], str) else (repr(r[0]), -1, None)
            for r in rows
        ]

    def index_sizes(self, chains: Sequence[str] = ()) -> list[tuple[str, int, int]]:
        """``(chain, records, indexed)`` of ``chains`` (every chain with records when empty):
        ``indexed`` is the ``index_state`` size, how many of the first records the index
        surely holds (0 when unknown); queries read the rest (the tail) by seq."""
        return [(chain, n, _indexed(done)) for chain, n, done in self._index_states(chains)]

    def index_tails(self, chains: Sequence[str]) -> dict[str, tuple[int, int]] | None:
        """chain -> ``(indexed, records)`` for every chain of ``chains`` (all when empty)
        that holds records, when the index can answer for all of them: each has an
        ``index_state`` and an unindexed tail of at most MAX_TAIL records (a query reads that
        tail by seq); None otherwise (no index tables, a chain made before the index or by a
        writer that indexes nothing, a long tail, an edited seq or state)."""
        if not self.index_usable():
            return None
        out: dict[str, tuple[int, int]] = {}
        for chain, n, done in self._index_states(chains):
            if n == 0:
                continue
            if n < 0 or type(done) is not int or not 0 <= done <= n or n - done > MAX_TAIL:
                return None
            out[chain] = (done, n)
        return out

    def index_tail(self, chain: str, start: int) -> list[StoredRecord]:
        """The records of ``chain`` from seq ``start`` on (its unindexed tail: fewer than
        MAX_TAIL but what was appended since the caller looked), in one statement on this
        reader's connection, so in its snapshot when it is one."""
        p = self.index_sql.param
        rows = self._rows(
            f"SELECT chain, seq, hash, body FROM records WHERE chain = {p} AND seq >= {p} "  # noqa: S608 - ours
            "ORDER BY seq",
            (chain, start),
        )
        return [self._record(r) for r in rows]

    def index_complete(self, chains: Sequence[str]) -> bool:
        """Whether the index (with each chain's short unindexed tail, read by seq) answers
        for ``chains`` (all chains when empty): :meth:`index_tails` is not None."""
        return self.index_tails(chains) is not None

    def _event_types(self) -> list[str] | None:
        """Every distinct event type in the index (a loose index scan: one seek per type);
        None when there are more than MAX_EVENT_TYPES."""
        rows = self._rows(
            "WITH RECURSIVE e(event, n) AS (SELECT min(event), 0 FROM record_index UNION ALL "  # noqa: S608 - ours
            "SELECT (SELECT min(x.event) FROM record_index x WHERE x.event > e.event), n + 1 "
            f"FROM e WHERE e.event IS NOT NULL AND n <= {MAX_EVENT_TYPES}) "
            "SELECT event FROM e WHERE event IS NOT NULL"
        )
        if len(rows) > MAX_EVENT_TYPES:
            return None
        return [r[0] for r in rows if isinstance(r[0], str)]  # the index is editable

    def _events(self, q: Query) -> list[str] | None:
        """The exact event types ``q``'s patterns stand for (None: no event criterion, or
        too many types to list; the patterns are then matched by prefix)."""
        if not q.events:
            return None
        if all(is_exact(p) for p in q.events):
            return sorted(set(q.events))
        types = self._event_types()
        return None if types is None else expand_events(q.events, types)

    def _seeds(self, q: Query, events: list[str] | None) -> list[Seed]:
        """:func:`seeds`, with every event type read when a DAG criterion needs them."""
        need = events is None and q.run is None and (q.dag is not None or q.dags is not None)
        return seeds(q, events, self._event_types() if need else None)

    def _where(
        self, q: Query, events: list[str] | None, seed: Seed, before: Position | None
    ) -> tuple[str, list[object]]:
        """The WHERE clause of one seek: every criterion of ``q``, as exact as SQL allows
        (an event pattern not expanded is matched by its prefix: a superset)."""
        sql = self.index_sql
        p = sql.param
        where: list[str] = []
        args: list[object] = []
        for col, value in seed:
            where.append(f"i.{col} = {p}")
            args.append(value)
        if q.chains:
            where.append(sql.any_of.format(col="i.chain"))
            args.append(sql.listed(list(q.chains)))
        if q.since is not None:
            where.append(f"i.ts >= {p}")
            args.append(q.since)
        if q.until is not None:
            where.append(f"i.ts < {p}")
            args.append(q.until)
        for col, wanted in (("dag", q.dag), ("run", q.run), ("task", q.task), ("actor", q.actor)):
            if wanted is not None and (col, wanted) not in seed:
                where.append(f"i.{col} = {p}")
                args.append(wanted)
        if q.dags is not None:  # also when a seed fixes the DAG: the user's may be forbidden
            # opaque (SQLite): without a DAG seed, walk the ts index newest first rather than
            # gather and sort every permitted row (SQLite has no statistics to choose by)
            where.append(sql.any_of.format(col=f"{sql.opaque}i.dag"))
            args.append(sql.listed([NO_DAG, *sorted(q.dags)]))
        if q.events and not any(col == "event" for col, _ in seed):
            if events is not None:
                where.append(sql.any_of.format(col="i.event"))
                args.append(sql.listed(events))
            else:
                prefixes = [literal_prefix(pattern) for pattern in q.events]
                if all(prefixes):  # one pattern without a literal start: no narrowing
                    ranges = []
                    for prefix in prefixes:
                        upper = next_prefix(prefix)
                        ranges.append(f"i.event >= {p}" + (f" AND i.event < {p}" if upper else ""))
                        args.extend([prefix, upper] if upper else [prefix])
                    where.append("((" + ") OR (".join(ranges) + "))")
        if before is not None:
            where.append(f"(i.ts, i.chain, i.seq) < ({p}, {p}, {p})")
            args.extend([before.ts, before.chain, before.seq])
        return (" AND ".join(where) or "1 = 1"), args

    def index_page(self, q: Query, *, limit: int, before: Position | None) -> list[StoredRecord]:
        """Up to ``limit`` stored records the index finds for ``q``, newest first by
        ``(ts, chain, seq)``, strictly before ``before`` (keyset pagination)."""
        events = self._events(q)
        if events == []:
            return []
        p = self.index_sql.param
        parts: list[str] = []
        args: list[object] = []
        plan = self._seeds(q, events)
        if not plan:  # a DAG criterion on an index with no event type yet: no row
            return []
        for n, seed in enumerate(plan):
            where, more = self._where(q, events, seed, before)
            parts.append(
                f"SELECT * FROM (SELECT i.ts, i.chain, i.seq FROM record_index i WHERE {where} "  # noqa: S608 - ours
                f"ORDER BY i.ts DESC, i.chain DESC, i.seq DESC LIMIT {p}) AS s{n}"
            )
            args.extend([*more, limit])
        keys = " UNION ALL ".join(parts)
        if len(parts) > 1:
            keys += f" ORDER BY {_ORDER_DESC} LIMIT {p}"
            args.append(limit)
        rows = self._rows(
            f"SELECT r.chain, r.seq, r.hash, r.body FROM ({keys}) AS k JOIN records r "  # noqa: S608 - ours
            f"ON r.chain = k.chain{self.index_sql.records_chain} AND r.seq = k.seq "
            "ORDER BY k.ts DESC, k.chain DESC, k.seq DESC",
            tuple(args),
        )
        return [self._record(r) for r in rows]

    def index_count(self, q: Query, *, cap: int) -> int:
        """How many records the index finds for ``q``, counting at most ``cap`` (exact: an
        event pattern not expanded to event types is matched here, in Python)."""
        events = self._events(q)
        if events == [] or cap < 1:
            return 0
        p = self.index_sql.param
        exact = events is not None or not q.events
        parts: list[str] = []
        args: list[object] = []
        plan = self._seeds(q, events)
        if not plan:  # a DAG criterion on an index with no event type yet: no row
            return 0
        for n, seed in enumerate(plan):
            where, more = self._where(q, events, seed, None)
            sub = f"SELECT i.event FROM record_index i WHERE {where}"  # noqa: S608 - ours
            parts.append(f"SELECT * FROM ({sub}) AS s{n}")  # noqa: S608 - ours
            args.extend(more)
        union = " UNION ALL ".join(parts)
        if exact:  # the LIMIT stops the seeks (read lazily, one after the other) at cap rows
            sql = f"SELECT count(*) FROM (SELECT 1 AS one FROM ({union}) AS u LIMIT {p}) AS c"  # noqa: S608
            rows = self._rows(sql, (*args, cap))
            return int(rows[0][0])
        found = 0
        for (event,) in self._rows(union, tuple(args)):
            if any(fnmatch.fnmatchcase(event, pattern) for pattern in q.events):
                found += 1
                if found >= cap:
                    break
        return found

    def index_select(self, q: Query) -> Iterator[StoredRecord]:
        """Every stored record the index finds for ``q``, by chain then seq, read in batches
        of SELECT_BATCH (keyset on ``(chain, seq)``; constant memory)."""
        events = self._events(q)
        if events == []:
            return
        p = self.index_sql.param
        chains = sorted({c for c, size, _ in self.index_sizes(q.chains) if size})
        for chain in chains:
            where, args = self._where(q, events, (("chain", chain),), None)
            sql = (
                "SELECT r.chain, r.seq, r.hash, r.body FROM record_index i JOIN records r "  # noqa: S608 - ours
                f"ON r.chain = i.chain{self.index_sql.records_chain} AND r.seq = i.seq "
                f"WHERE {where} AND i.seq > {p} ORDER BY i.seq LIMIT {p}"
            )
            after = -1
            while True:
                rows = self._rows(sql, (*args, after, SELECT_BATCH))
                for row in rows:
                    yield self._record(row)
                if len(rows) < SELECT_BATCH:
                    break
                after = int(rows[-1][1])


class RowWrites(RowReads):
    """The writes that are one statement each, for a ledger (not its snapshots)."""

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        raise NotImplementedError

    def keyed(self, chain: str, key: str) -> StoredRecord | None:
        """The record of ``chain`` stored under idempotency key ``key`` (None: no record)."""
        rows = self._rows(self.queries.keyed, (chain, key))
        return self._record(rows[0]) if rows else None

    def _earlier(self, record: PreparedRecord) -> StoredRecord:
        """The record stored under ``record``'s key, which an append just skipped."""
        found = None if record.key is None else self.keyed(record.chain, record.key)
        if found is None:  # key rows are append-only: only a tampered ledger lost it
            raise LedgerError(
                f"an append of chain {record.chain!r} stored nothing, yet no record holds "
                f"key {record.key!r}"
            )
        return found

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Store a signed checkpoint; False when one of that size is already stored."""
        c = checkpoint
        return 1 == self._write(
            self.queries.add_checkpoint, (c.chain, c.size, c.root, c.note, c.created)
        )

    def add_cosignature(self, cosignature: StoredCosignature) -> bool:
        """Store a witness's cosignature line; False when that line is stored already."""
        c = cosignature
        return 1 == self._write(
            self.queries.add_cosignature, (c.chain, c.size, c.body, c.line, c.created)
        )

    def set_cursor(self, name: str, chain: str, seq: int) -> None:
        """Move consumer ``name``'s cursor in ``chain`` forward to ``seq`` (never back)."""
        self._write(self.queries.set_cursor, (name, chain, seq))
