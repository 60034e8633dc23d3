"""The PostgreSQL ledger: many writers on many hosts, one server (psycopg 3).

>>> from audit_core.ledgers.postgres import PostgresLedger
>>> PostgresLedger("postgresql://writer:secret@db.example:5432/audit")
PostgresLedger('postgresql://writer:***@db.example:5432/audit')

Same protocol, same record bytes, same Merkle subtrees as
:class:`~audit_core.ledgers.sqlite.SqliteLedger`, so every verifier and sink works unchanged.
The schema, its append-only triggers and the writer/auditor roles are made by
``workflow-audit postgres init`` (:mod:`audit_core.ledgers.postgres_admin`); a ledger whose
role may create tables creates them on first use.

**No forks, no gaps** (READ COMMITTED is enough). Every append runs in one transaction that
first takes the row lock of its chain's ``chain_heads`` row (``SELECT … FOR UPDATE``; a new
chain's row is made with ``INSERT … ON CONFLICT DO NOTHING``, which waits for a concurrent
inserter, then locked the same way). So the transactions appending to one chain run one at a
time, in lock order. PostgreSQL releases a row lock only when its holder's transaction has
ended, and under READ COMMITTED every *statement* takes a fresh snapshot; the statement that
reads the chain's last record from ``records`` runs after the lock is granted, so it sees
every record committed by earlier holders and none can commit until we do. The transaction
then inserts ``seq = last + 1, …`` with ``prev`` = that record's hash and commits, releasing
the lock. By induction the committed ``seq``\\ s are ``0..n-1`` with each ``prev`` the hash of
its predecessor. The primary key ``(chain, seq)`` is the second line of defence: a client that
skips the lock gets a unique violation, never a fork. Batches that touch several chains lock
them in sorted order, so two batches cannot deadlock.

``chain_heads`` is a lock and a cache, not evidence: the head comes from ``records``
(compared with ``chain_heads``, a mismatch is logged and counted), and verification reads
``records`` alone.

**Retries without duplicates.** Each :meth:`append_many` call gives each record a random
16-byte idempotency key (``records.idem``, UNIQUE) once, before its first attempt. On a lost
connection, a server restart, a serialization failure or a deadlock, the writer reconnects with
exponential back-off for at most ``busy_timeout_s`` seconds; before appending again it looks
its keys up, and when the lost attempt did commit (the COMMIT reached the server but its reply
did not reach us) it returns those records instead of appending them twice. A batch is all or
nothing, so its keys are all found or none is. Past the deadline: :class:`LedgerError`.

**Idempotency keys** (``record_keys``, docs/FORMAT.md): the batch's keys are looked up once
per chain *after* the chain's row lock is granted, so a writer queued behind one that stored a
key sees it and skips its record; two racing writers never both append one key. (``idem``
above is another thing: the writer's own retry key of each record.) A ledger made before keys
whose ``record_keys`` this role cannot use (a writer may not create it: only ``workflow-audit
postgres init``, or a role owning the tables, adds it) appends keyed records *without* dedupe,
fail-open: a duplicate beats a record lost or stuck in a spool. It warns once per process,
counts ``ledger_keys_unavailable`` and looks for the table again every
:attr:`PostgresLedger.keys_recheck_s` seconds and on every reconnect.

**Query index** (``record_index``, ``index_state``; see
:mod:`audit_core.ledgers.postgres_admin`): an append whose chain's unindexed tail reaches
INDEX_BATCH records indexes the whole tail in its transaction, under the chain's lock (the
other appends only start a new chain's state, pipelined), and queries read the short tail;
on a ledger made before it the owner's first connection (or ``postgres init``) adds the
empty tables, a writer role that may not use them appends unindexed
(rechecked as for keys), and queries scan until ``workflow-audit index rebuild``.

**Durability.** ``synchronous="FULL"`` (default) makes sure ``synchronous_commit`` is at least
``on`` (the commit is flushed to the server's WAL before :meth:`append` returns; a stricter
server setting such as ``remote_apply`` is kept); ``"NORMAL"`` sets it ``off`` (a server crash
may lose the last transactions, never corrupt the chain).

**Merkle tree.** As in SQLite: each append stores the complete subtrees its leaves finish;
the frontier is this process's cached one, brought up to date from the hashes other writers
committed since (read inside the locked transaction), or read from the stored subtrees.

**Readers.** :meth:`PostgresLedger.snapshot` is one ``REPEATABLE READ READ ONLY``
transaction on a connection of its own: every statement in it sees the snapshot its first
statement took (PostgreSQL manual, "Transaction Isolation"), so one verification checks
records, subtrees and checkpoints as of one instant while writers go on. ``read_only=True``
creates nothing and makes every transaction of the session read only, for an auditor role
that may only SELECT.

**Fork safety.** A connection never crosses ``os.fork()``: the child opens its own and leaves
the parent's untouched (closing it would end the parent's session).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from audit_core._index import INDEX_BATCH, flushes, index_rows, new_chains
from audit_core._merkle import Frontier, frontier_positions
from audit_core._metrics import COUNTERS
from audit_core._record import PreparedRecord, StoredCheckpoint, StoredRecord
from audit_core.errors import ConfigError, CursorMoved, LedgerError
from audit_core.ledgers import (
    _frontier,
    check_url_password,
    masked_error,
    masked_url,
    synchronous_level,
)
from audit_core.ledgers._reads import IndexSql, Queries, RowReads, RowWrites

if TYPE_CHECKING:
    from typing import TypeAlias

    import psycopg

    _Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]

__all__ = ["PostgresLedger", "PostgresSnapshot"]

logger = logging.getLogger("workflow_audit")

_T = TypeVar("_T")

_LOCK_HEAD = "SELECT seq, hash FROM chain_heads WHERE chain = %s FOR UPDATE"
_NEW_HEAD = "INSERT INTO chain_heads (chain, seq, hash) VALUES (%s, -1, '') ON CONFLICT DO NOTHING"
_SET_HEAD = "UPDATE chain_heads SET seq = %s, hash = %s WHERE chain = %s"
_LAST = "SELECT seq, hash FROM records WHERE chain = %s ORDER BY seq DESC LIMIT 1"
_SINCE = "SELECT seq, hash FROM records WHERE chain = %s AND seq >= %s ORDER BY seq LIMIT %s"
_INSERT = "INSERT INTO records (chain, seq, hash, body, idem) VALUES (%s, %s, %s, %s, %s)"
# ON CONFLICT DO NOTHING: a rebuild may meet subtrees that exist; they are derived data, and a
# wrong one only makes a proof fail to verify (never pass).
_INSERT_SUBTREE = (
    "INSERT INTO merkle_subtrees (chain, last, hashes) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
)
_BY_KEYS = "SELECT idem, chain, seq, hash, body FROM records WHERE idem = ANY(%s)"
_INSERT_KEY = "INSERT INTO record_keys (chain, key, seq) VALUES (%s, %s, %s)"
# NULL (no such table) counts as no: has_table_privilege is strict
_KEYS_USABLE = (
    "SELECT coalesce(has_table_privilege(t, 'SELECT') AND has_table_privilege(t, 'INSERT'), "
    "false) FROM to_regclass('record_keys') t"
)
# What the schema lacks, and whether this role owns the tables (the admin, or the single
# role of a dev ledger): only then may it add record_keys (see _ensure_schema).
_SCHEMA_STATE = (
    "SELECT to_regclass('records') IS NULL, to_regclass('record_keys') IS NULL, "
    "to_regclass('record_index') IS NULL OR to_regclass('index_state') IS NULL, "
    "to_regclass('cosignatures') IS NULL, "
    "(SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass('records'))"
)
# The query index (see postgres_admin): rows written by each append in its transaction.
_INSERT_INDEX = (
    "INSERT INTO record_index (chain, seq, ts, event, dag, run, task, actor) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (chain, seq) DO UPDATE SET "
    "ts = excluded.ts, event = excluded.event, dag = excluded.dag, run = excluded.run, "
    "task = excluded.task, actor = excluded.actor"
)
# A new chain starts its state at 0; a chain's state moves on only from where it was, by
# INDEX_BATCH records at a time (audit_core._index.flush_due).
_START_STATE = "INSERT INTO index_state (chain, size) VALUES (%s, 0) ON CONFLICT (chain) DO NOTHING"
_STATE = "SELECT size FROM index_state WHERE chain = %s"
_MOVE_STATE = "UPDATE index_state SET size = %s WHERE chain = %s AND size = %s"
_SET_STATE = (
    "INSERT INTO index_state (chain, size) VALUES (%s, %s) "
    "ON CONFLICT (chain) DO UPDATE SET size = excluded.size"
)
_INDEX_WRITABLE = (
    "SELECT coalesce(has_table_privilege(i, 'INSERT') AND has_table_privilege(i, 'UPDATE') "
    "AND has_table_privilege(s, 'INSERT') AND has_table_privilege(s, 'UPDATE'), false) "
    "FROM to_regclass('record_index') i, to_regclass('index_state') s"
)
_INDEX_SQL = IndexSql(
    param="%s",
    any_of="{col} = ANY(%s)",
    listed=list,
    usable="SELECT coalesce(has_table_privilege(i, 'SELECT') AND has_table_privilege(s, "
    "'SELECT'), false) FROM to_regclass('record_index') i, to_regclass('index_state') s",
    text_c=' COLLATE "C"',
    records_chain=' COLLATE "default"',
    opaque="",
)
_SUBTREES = "SELECT last, hashes FROM merkle_subtrees WHERE chain = %s AND last = ANY(%s)"
_LEAF = "SELECT hash FROM records WHERE chain = %s AND seq = %s"
_HASHES_FROM = "SELECT hash FROM records WHERE chain = %s ORDER BY seq"
# A source's cursor (a compare-and-set; it may move back: a source's ids are not seqs)
_CAS = "UPDATE cursors SET seq = %s WHERE name = %s AND chain = %s AND seq = %s RETURNING seq"
_CAS_NEW = (
    "INSERT INTO cursors (name, chain, seq) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING "
    "RETURNING seq"
)


def _distinct_chains(*tables: str) -> str:
    """The distinct chains of ``tables`` (ours, never input), sorted: a loose index scan of
    each (a recursive CTE), one index probe per chain instead of reading every row."""
    scans = [
        f"t{i} AS ((SELECT chain FROM {table} ORDER BY chain LIMIT 1) UNION ALL SELECT "  # noqa: S608 - our table names
        f"(SELECT n.chain FROM {table} n WHERE n.chain > t{i}.chain ORDER BY n.chain LIMIT 1) "
        f"FROM t{i} WHERE t{i}.chain IS NOT NULL)"
        for i, table in enumerate(tables)
    ]
    each = [f"SELECT chain FROM t{i} WHERE chain IS NOT NULL" for i in range(len(tables))]  # noqa: S608 - our CTE names
    return f"WITH RECURSIVE {', '.join(scans)} {' UNION '.join(each)} ORDER BY chain"


_QUERIES = Queries(
    head="SELECT chain, seq, hash, body FROM records WHERE chain = %s ORDER BY seq DESC LIMIT 1",
    chains=_distinct_chains("records"),
    merkle_chains=_distinct_chains("merkle_subtrees", "checkpoints"),
    extent="SELECT max(last) FROM merkle_subtrees WHERE chain = %s",  # a primary key seek
    checkpoints="SELECT chain, size, root, note, created FROM checkpoints WHERE chain = %s",
    cursor="SELECT seq FROM cursors WHERE name = %s AND chain = %s",
    add_checkpoint="INSERT INTO checkpoints (chain, size, root, note, created) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    set_cursor="INSERT INTO cursors (name, chain, seq) VALUES (%s, %s, %s) "
    "ON CONFLICT (name, chain) DO UPDATE SET seq = GREATEST(cursors.seq, excluded.seq)",
    keyed="SELECT r.chain, r.seq, r.hash, r.body FROM record_keys k JOIN records r "
    "ON r.chain = k.chain AND r.seq = k.seq WHERE k.chain = %s AND k.key = %s",
    keys="SELECT key FROM record_keys WHERE chain = %s AND key = ANY(%s)",
    has_cosignatures="SELECT to_regclass('cosignatures') IS NOT NULL",
    cosigned_chains="SELECT DISTINCT chain FROM cosignatures ORDER BY chain",
    cosignatures="SELECT chain, size, body, line, created FROM cosignatures WHERE chain = %s "
    "ORDER BY size, created, line",
    add_cosignature="INSERT INTO cosignatures (chain, size, body, line, created) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
)
# Hashing the few leaves others appended since our last commit is cheaper than reading the
# O(log n) subtrees, up to a point.
_CATCH_UP_LIMIT = 256
_KEY_BYTES = 16
# (pid, ledger) pairs warned that keys are unusable: once per process, not per append
_KEYS_WARNED: set[tuple[int, str]] = set()


class _Rows:
    """Rows as psycopg returns them: ``bytea`` becomes ``bytes`` for the record types."""

    @staticmethod
    def _record(row: tuple[Any, ...]) -> StoredRecord:
        return _stored(row)

    @staticmethod
    def _checkpoint(row: tuple[Any, ...]) -> StoredCheckpoint:
        return StoredCheckpoint(row[0], row[1], bytes(row[2]), row[3], row[4])


class PostgresLedger(_Rows, RowWrites):
    """A :class:`~audit_core.ledgers.Ledger` in a PostgreSQL database (``postgresql://…``).

    ``read_only=True``: creates nothing and sets ``default_transaction_read_only`` on its
    session, so an auditor role that may only SELECT can run every reading command."""

    queries = _QUERIES
    index_sql = _INDEX_SQL
    #: An append indexes its chain's tail once it reaches this many records (see
    #: :data:`audit_core._index.INDEX_BATCH`); tests and the bench change it per ledger.
    index_batch: int = INDEX_BATCH
    #: How often (seconds) a ledger that found no usable ``record_keys`` (or query index)
    #: looks again.
    keys_recheck_s: float = 60.0

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
        create: bool = True,
        read_only: bool = False,
        index: bool = True,
    ) -> None:
        self.synchronous = synchronous_level(synchronous)
        if busy_timeout_s <= 0:
            raise ConfigError(f"busy_timeout_s must be positive, not {busy_timeout_s}")
        check_url_password(url)
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self._create = create and not read_only
        self.read_only = read_only
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        self._pid = -1
        # Connections inherited through fork() are kept referenced, never closed, in the child:
        # closing one would send Terminate on the parent's socket.
        self._abandoned: list[_Conn] = []
        # chain -> (frontier, hash of its last leaf) as of this process's last commit or read
        self._frontiers: dict[str, tuple[Frontier, bytes]] = {}
        # (record_keys usable by this role, time.monotonic() of the check); None: not checked
        # on this connection yet
        self._keys: tuple[bool, float] | None = None
        # False: appends write no query index rows (only bench/bench_index.py's A/B: the
        # chains then stay "incomplete" and queries scan)
        self.index = index
        # (the query index tables writable by this role, time of the check), as _keys
        self._index_ok: tuple[bool, float] | None = None

    def __repr__(self) -> str:
        return f"PostgresLedger({masked_url(self.url)!r})"

    def _why(self, exc: Exception) -> str:
        # psycopg's message may quote the URI (libpq echoes one it cannot parse)
        return masked_error(str(exc), self.url)

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> _Conn:
        import psycopg

        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(2, int(min(self.busy_timeout_s, 10)))
        )
        ready = False
        try:  # close the new connection on any way out but success (no BaseException catch)
            if self.read_only:
                # every transaction of the session is read only: a write fails on the server
                conn.execute("SET default_transaction_read_only = on")
            elif self._create:
                self._ensure_schema(conn)
            current = conn.execute("SHOW synchronous_commit").fetchone()
            if self.synchronous == "NORMAL":
                conn.execute("SET synchronous_commit = off")
            elif current is not None and current[0] in ("off", "local"):
                conn.execute("SET synchronous_commit = on")
            ready = True
        finally:
            if not ready:
                conn.close()
        return conn

    def _ensure_schema(self, conn: _Conn) -> None:
        """Create the schema when missing; add ``record_keys`` to a ledger made before
        idempotency keys only when this role owns the tables. A writer never creates it:
        it may not add triggers to tables it does not own, and where it may create tables
        (``public`` on PostgreSQL 14 and older) it would own the table, able to delete its
        rows, with no grant for the auditor. Its keyed appends go on without dedupe."""
        from audit_core.ledgers.postgres_admin import (
            create_cosignature_table,
            create_index_tables,
            create_key_table,
            create_schema,
        )

        row = conn.execute(_SCHEMA_STATE).fetchone()
        if row is None:
            return
        no_records, no_keys, no_index, no_cosign, owner = row
        if no_records:
            create_schema(conn)
            return
        if no_keys and owner:
            create_key_table(conn)
        if no_index and owner:  # cheap DDL of empty tables; never a backfill here
            create_index_tables(conn)
        if no_cosign and owner:
            create_cosignature_table(conn)

    def _connection(self) -> _Conn:
        pid = os.getpid()
        if self._conn is None or self._pid != pid or self._conn.closed:
            if self._conn is not None and self._pid != pid:
                self._abandoned.append(self._conn)
            self._conn = self._connect()
            self._pid = pid  # cached frontiers stay valid: they describe committed records
            self._keys = None  # a new session looks for record_keys again
            self._index_ok = None
        return self._conn

    def _drop(self) -> None:
        """Forget a broken connection (ours: close it; a parent's: leave it alone)."""
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except Exception:  # already broken: closing is best effort
                logger.debug("workflow-audit: closing a broken connection failed", exc_info=True)
        self._conn = None

    def close(self) -> None:
        """Close this process's connection; idempotent."""
        with self._lock:
            self._drop()

    def _retrying(self, what: str, fn: Callable[[_Conn], _T]) -> _T:
        """``fn(connection)`` under the lock, retried on transient errors until the deadline."""
        import psycopg

        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.02
        with self._lock:
            while True:
                try:
                    return fn(self._connection())
                except psycopg.OperationalError as exc:
                    # serialization failures and deadlocks roll back, the connection stays
                    # good; anything else (lost connection, server shutdown) reconnects
                    if not isinstance(exc, psycopg.errors.TransactionRollback):
                        self._drop()
                    if time.monotonic() + delay > deadline:
                        raise LedgerError(
                            f"cannot {what} {self!r} within {self.busy_timeout_s:g} s: "
                            + self._why(exc)
                        ) from exc
                    COUNTERS.incr("ledger_retries")
                    logger.warning("workflow-audit: %s %r failed (%s); retrying", what, self, exc)
                    time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
                    delay = min(delay * 2, 1.0)
                except psycopg.Error as exc:
                    raise LedgerError(f"cannot {what} {self!r}: {self._why(exc)}") from exc

    # -- writing -------------------------------------------------------------------------

    def append(self, record: PreparedRecord) -> StoredRecord:
        """Seal and store ``record`` as the next of its chain; returns after COMMIT. A
        duplicate key: the record stored under it."""
        stored = self.append_many((record,))
        return stored[0] if stored else self._earlier(record)

    def append_many(self, records: Sequence[PreparedRecord]) -> list[StoredRecord]:
        """Seal and store ``records`` in one transaction, in order; returns after COMMIT.
        Retried on transient errors without ever storing a record twice."""
        if not records:
            return []
        return self._append_keyed(records, [os.urandom(_KEY_BYTES) for _ in records])

    def append_advancing(
        self,
        records: Sequence[PreparedRecord],
        *,
        cursor: str,
        chain: str,
        expect: int,
        to: int,
    ) -> list[StoredRecord]:
        """If cursor ``(cursor, chain)`` holds ``expect`` (-1: absent), store ``records``
        and set it to ``to``, in one transaction; else CursorMoved.

        The compare-and-set is one statement that takes the cursor's row lock (``UPDATE …
        WHERE seq = expect``; for -1, ``INSERT … ON CONFLICT DO NOTHING``): a concurrent
        advancer waits for our COMMIT, then re-checks the row (READ COMMITTED re-evaluates
        an UPDATE's WHERE on the row's newest version) and matches nothing. A retry after a
        lost COMMIT reply finds the records by their idempotency keys and returns them; one
        whose records were all duplicates (skipped for their ``key``) finds the cursor at
        ``to`` and every key stored and returns ``[]``; with no records it finds the cursor
        moved and raises CursorMoved."""
        return self._append_keyed(
            records, [os.urandom(_KEY_BYTES) for _ in records], (cursor, chain, expect, to)
        )

    def _append_keyed(
        self,
        records: Sequence[PreparedRecord],
        keys: Sequence[bytes],
        advance: tuple[str, str, int, int] | None = None,
    ) -> list[StoredRecord]:
        """:meth:`append_many` with given idempotency keys (one per record, unique): when
        records with these keys are stored already, they are returned, not appended (those
        of them stored: records skipped for their ``key``, :class:`PreparedRecord`'s, have
        none stored).
        Private: the keys are this ledger's retry mechanism (no other ledger has them), not a
        :class:`~audit_core.ledgers.Ledger` method; tests replay a call through it."""
        if len(keys) != len(records):
            raise ConfigError(f"{len(keys)} idempotency keys for {len(records)} records")
        attempts = [0]
        # a batch with record keys may have stored only some of its records
        subset = any(r.key is not None for r in records)

        def attempt(conn: _Conn) -> list[StoredRecord]:
            attempts[0] += 1
            # Always look first on a retry: the lost attempt may have committed.
            found = _stored_by_keys(conn, keys, subset) if attempts[0] > 1 and keys else None
            if found is not None:
                COUNTERS.incr("ledger_retries_deduplicated")
                return found
            dedupe = subset and self._keys_usable(conn)
            index = self.index and self._index_writable(conn)
            stored, caches = self._append_once(
                conn, records, keys, advance, dedupe=dedupe, index=index
            )
            self._frontiers.update(caches)  # only what is committed
            if subset and not dedupe:
                self._appended_without_keys(records)
            return stored

        def first(conn: _Conn) -> list[StoredRecord]:
            try:
                return attempt(conn)
            except Exception as exc:
                import psycopg

                replayed = isinstance(exc, CursorMoved) and keys
                if replayed or (
                    isinstance(exc, psycopg.errors.UniqueViolation) and "idem" in str(exc)
                ):
                    # the keys were stored by an earlier call: the caller is replaying (an
                    # advancing replay finds the cursor moved by its own first call)
                    found = _stored_by_keys(conn, keys, subset)
                    if found is not None:
                        return found
                if (
                    isinstance(exc, CursorMoved)
                    and advance is not None
                    and exc.found == advance[3]
                    and self._all_keys_stored(conn, records)
                ):
                    # every record was a duplicate (no idem row stored) and the cursor holds
                    # this call's target: the replay of a call that committed
                    return []
                raise

        return self._retrying("append to", first)

    def _append_once(
        self,
        conn: _Conn,
        records: Sequence[PreparedRecord],
        keys: Sequence[bytes],
        advance: tuple[str, str, int, int] | None = None,
        *,
        dedupe: bool = True,
        index: bool = True,
    ) -> tuple[list[StoredRecord], dict[str, tuple[Frontier, bytes]]]:
        # Pipelined: the lock and the head reads are one round trip, the inserts and the
        # COMMIT another.
        with conn.pipeline(), conn.transaction():
            # The cursor's row lock first, the chains' after: every advancer takes them in
            # this order, so two cannot deadlock.
            moved = _compare_and_set(conn, *advance) if advance is not None else None
            states = self._lock_chains(conn, sorted({r.chain for r in records}))
            if advance is not None and moved is not None and moved.fetchone() is None:
                raise _cursor_moved(conn, *advance)
            # Under the chains' locks: a writer racing on a key committed before we read.
            kept = _frontier.new_keys(records, partial(_stored_keys, conn)) if dedupe else None
            if kept is not None:
                records = [records[i] for i in kept]
                keys = [keys[i] for i in kept]
            stored, subtrees = _frontier.seal(records, states)
            with conn.cursor() as cur:
                if stored:
                    cur.executemany(_INSERT, [(*r, k) for r, k in zip(stored, keys, strict=True)])
                if kept is not None and stored:
                    cur.executemany(_INSERT_KEY, _frontier.key_rows(records, stored))
                if subtrees:
                    cur.executemany(_INSERT_SUBTREE, subtrees)
                if states:
                    cur.executemany(
                        _SET_HEAD,
                        [(n - 1, bytes.fromhex(h), c) for c, (n, h, _) in states.items()],
                    )
                if index and stored:
                    _write_index(conn, cur, stored, self.index_batch)
        caches = {
            c: (Frontier(n, tuple(nodes)), bytes.fromhex(h)) for c, (n, h, nodes) in states.items()
        }
        return stored, caches

    def _keys_usable(self, conn: _Conn) -> bool:
        """Whether this role may read and insert ``record_keys``: asked again on a new
        session or when the last answer is ``keys_recheck_s`` old (``postgres init`` run
        while writers go on)."""
        now = time.monotonic()
        if self._keys is None or now - self._keys[1] >= self.keys_recheck_s:
            row = conn.execute(_KEYS_USABLE).fetchone()
            self._keys = (bool(row and row[0]), now)
        return self._keys[0]

    def _index_writable(self, conn: _Conn) -> bool:
        """Whether this role may write the query index (a ledger made before it has no
        tables until its owner adds them): asked again as :meth:`_keys_usable` does. Without
        it appends go on unindexed, and the index stays incomplete until a rebuild."""
        now = time.monotonic()
        if self._index_ok is None or now - self._index_ok[1] >= self.keys_recheck_s:
            row = conn.execute(_INDEX_WRITABLE).fetchone()
            self._index_ok = (bool(row and row[0]), now)
        return self._index_ok[0]

    # -- the query index ----------------------------------------------------------------------

    def rebuild_index(self, chains: Sequence[str] = (), *, batch: int = 5000) -> dict[str, int]:
        """Recompute the query index of ``chains`` (every chain when empty) from the hashed
        record bytes; returns rows written per chain. Safe while writers append: each batch
        of seqs is deleted and rewritten in one transaction (rows are never missing nor
        doubled: (chain, seq) is the key), and the last one, holding the chain's row lock as
        appends do, covers what was appended meanwhile and marks the chain complete."""
        if self.read_only:
            raise LedgerError(f"{self!r} is read-only: an index rebuild writes")
        every = not chains
        chains = list(chains) or self.chains()
        done: dict[str, int] = {}
        for chain in chains:
            size = self.index_sizes([chain])[0][1]
            written = 0
            for lo in range(0, size, batch):
                written += self._retrying(
                    "rebuild the index of", partial(_reindex, chain=chain, lo=lo, hi=lo + batch)
                )
            done[chain] = written + self._retrying(
                "rebuild the index of", partial(_finish_index, chain=chain, lo=size)
            )
        if every:
            self._retrying("rebuild the index of", partial(_drop_index_of_others, chains=chains))
        return done

    def _appended_without_keys(self, records: Sequence[PreparedRecord]) -> None:
        COUNTERS.incr("ledger_keys_unavailable", sum(r.key is not None for r in records))
        warned = (os.getpid(), repr(self))
        if warned not in _KEYS_WARNED:
            _KEYS_WARNED.add(warned)
            logger.warning(
                "workflow-audit: %r has no record_keys table this role may use (a ledger made "
                "before idempotency keys): keyed records are appended without dedupe, so "
                "duplicates are possible; run `workflow-audit postgres init` again as the "
                "ledger's admin (dedupe resumes within %g s, no restart needed)",
                self,
                self.keys_recheck_s,
            )

    def _all_keys_stored(self, conn: _Conn, records: Sequence[PreparedRecord]) -> bool:
        """Whether every record has a key its chain holds (a batch of duplicates only)."""
        wanted: dict[str, list[str]] = {}
        for rec in records:
            if rec.key is None:
                return False
            wanted.setdefault(rec.chain, []).append(rec.key)
        if not wanted or not self._keys_usable(conn):
            return False
        return all(
            set(_stored_keys(conn, chain, keys)) == set(keys) for chain, keys in wanted.items()
        )

    def _lock_chains(self, conn: _Conn, chains: list[str]) -> dict[str, list[Any]]:
        """Lock each chain's head row and read its true head from ``records``; returns
        chain -> [next seq, prev hash hex, frontier nodes]."""
        pending = []
        for chain in chains:  # sorted: a global lock order
            lock = conn.execute(_LOCK_HEAD, (chain,))
            cached = self._frontiers.get(chain)
            if cached is not None:
                since = conn.execute(_SINCE, (chain, cached[0].size - 1, _CATCH_UP_LIMIT + 1))
            else:
                since = conn.execute(_LAST, (chain,))
            pending.append((chain, lock, since, cached))
        states: dict[str, list[Any]] = {}
        for chain, lock, since, cached in pending:
            head = lock.fetchone()
            rows = since.fetchall()
            if head is None:  # a new chain: make its row, wait for a concurrent maker, lock
                conn.execute(_NEW_HEAD, (chain,))
                head = conn.execute(_LOCK_HEAD, (chain,)).fetchone()
                rows = conn.execute(_LAST, (chain,)).fetchall()  # read after the lock
                cached = None
            frontier, last = self._frontier_locked(conn, chain, rows, cached)
            if head is None or (head[0], bytes(head[1])) != (frontier.size - 1, last):
                COUNTERS.incr("ledger_head_mismatches")
                logger.warning(
                    "workflow-audit: chain_heads says chain %r ends at seq %s but its records "
                    "end at seq %d; the records win",
                    chain,
                    None if head is None else head[0],
                    frontier.size - 1,
                )
            states[chain] = _frontier.chain_state(chain, frontier, last)
        return states

    def _frontier_locked(
        self,
        conn: _Conn,
        chain: str,
        rows: list[tuple[Any, ...]],
        cached: tuple[Frontier, bytes] | None,
    ) -> tuple[Frontier, bytes]:
        """The chain's frontier and last hash from what was read under its lock."""
        if cached is not None:
            frontier, last = cached
            seqs = [r[0] for r in rows]
            if (
                rows
                and len(rows) <= _CATCH_UP_LIMIT
                and (seqs[0], bytes(rows[0][1])) == (frontier.size - 1, last)
                and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            ):
                if len(rows) == 1:
                    return cached
                return frontier.extend(bytes(r[1]) for r in rows[1:]), bytes(rows[-1][1])
            rows = conn.execute(_LAST, (chain,)).fetchall()
        if not rows:
            return Frontier.empty(), b""
        size, last = rows[-1][0] + 1, bytes(rows[-1][1])
        return _frontier_at(conn, chain, size, rebuild=True), last

    # -- reading -------------------------------------------------------------------------

    def read(
        self, chain: str, start: int = 0, stop: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        """Stream records ``start <= seq < stop`` of ``chain``, ordered by seq, from one
        snapshot, in constant memory (a server-side cursor on a connection of its own)."""
        import psycopg

        sql, args = _range_query(chain, start, stop)
        try:
            conn = psycopg.connect(self.url, connect_timeout=10)
        except psycopg.Error as exc:
            raise LedgerError(f"cannot read {self!r}: {self._why(exc)}") from exc
        try:
            with conn.cursor(name="workflow_audit_read", binary=True) as cur:
                cur.itersize = 5000
                cur.execute(sql, args)
                yield from map(_stored, cur)
        except psycopg.Error as exc:
            raise LedgerError(f"cannot read {self!r}: {self._why(exc)}") from exc
        finally:
            conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[PostgresSnapshot]:
        """A :class:`PostgresSnapshot`: one REPEATABLE READ READ ONLY transaction on a
        connection of its own, rolled back on exit."""
        import psycopg

        try:
            conn = psycopg.connect(
                self.url, connect_timeout=max(2, int(min(self.busy_timeout_s, 10)))
            )
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        except psycopg.Error as exc:
            raise LedgerError(f"cannot read {self!r}: {self._why(exc)}") from exc
        try:
            try:
                # the first statement of a REPEATABLE READ transaction takes its snapshot
                conn.execute("SELECT 1").fetchone()
            except psycopg.Error as exc:
                raise LedgerError(f"cannot read {self!r}: {self._why(exc)}") from exc
            yield PostgresSnapshot(self, conn)
        finally:
            conn.close()  # rolls the read-only transaction back

    # -- Merkle tree and checkpoints -----------------------------------------------------

    def tree_head(self, chain: str) -> tuple[int, bytes]:
        """``(size, root)`` of the chain's Merkle tree, from its stored subtrees (O(log n)).
        Raises LedgerError when they are missing (the next append rebuilds them)."""

        def run(conn: _Conn) -> tuple[int, bytes]:
            row = conn.execute(_LAST, (chain,)).fetchone()
            if row is None:
                return (0, Frontier.empty().root())
            size, last = row[0] + 1, bytes(row[1])
            cached = self._frontiers.get(chain)
            if cached is not None and cached[0].size == size:
                return (size, cached[0].root())
            frontier = _frontier_at(conn, chain, size, rebuild=False)
            # committed records never change: the frontier of a size read is safe to keep
            self._frontiers[chain] = (frontier, last)
            return (size, frontier.root())

        return self._retrying("read", run)

    def node(self, chain: str, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)``; level 0 is a record's hash."""
        return self._retrying("read", lambda conn: _read_node(conn, chain, level, index))

    # -- one statement on this process's connection ----------------------------------------

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return self._retrying("read", lambda conn: conn.execute(sql, args).fetchall())

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        # Each statement is its own (autocommit) transaction and idempotent, so a retry after
        # an uncertain commit changes nothing (add_checkpoint may then report False).
        return self._retrying("write to", lambda conn: conn.execute(sql, args).rowcount)


class PostgresSnapshot(_Rows, RowReads):
    """A :class:`~audit_core.ledgers.LedgerReader` over one REPEATABLE READ READ ONLY
    transaction (from :meth:`PostgresLedger.snapshot`): every call sees the same committed
    state. Valid until the ``with`` block that made it ends; one thread at a time."""

    queries = _QUERIES
    index_sql = _INDEX_SQL
    _names = itertools.count()  # server-side cursors of one transaction need distinct names

    def __init__(self, ledger: PostgresLedger, conn: _Conn) -> None:
        self.ledger = ledger
        self._conn = conn

    def __repr__(self) -> str:
        return f"snapshot of {self.ledger!r}"

    @contextmanager
    def snapshot(self) -> Iterator[PostgresSnapshot]:
        """This snapshot itself: a check that takes one sees the caller's."""
        yield self

    def _run(self, fn: Callable[[_Conn], _T]) -> _T:
        import psycopg

        try:
            return fn(self._conn)
        except psycopg.Error as exc:  # no retry: a new connection would see a new snapshot
            raise LedgerError(f"cannot read {self.ledger!r}: {self.ledger._why(exc)}") from exc

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(sql, args).fetchall())

    def read(
        self, chain: str, start: int = 0, stop: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        """Stream records ``start <= seq < stop`` of ``chain``, ordered by seq (a server-side
        cursor inside the snapshot's transaction)."""
        import psycopg

        sql, args = _range_query(chain, start, stop)
        name = f"workflow_audit_snapshot_{next(self._names)}"
        try:
            with self._conn.cursor(name=name, binary=True) as cur:
                cur.itersize = 5000
                cur.execute(sql, args)
                yield from map(_stored, cur)
        except psycopg.Error as exc:
            raise LedgerError(f"cannot read {self.ledger!r}: {self.ledger._why(exc)}") from exc

    def tree_head(self, chain: str) -> tuple[int, bytes]:
        """``(size, root)`` from the stored subtrees; LedgerError when they are missing."""
        rows = self._rows(_LAST, (chain,))
        if not rows:
            return (0, Frontier.empty().root())
        size = rows[0][0] + 1
        return (size, self._run(lambda conn: _frontier_at(conn, chain, size, rebuild=False)).root())

    def node(self, chain: str, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)``; level 0 is a record's hash."""
        return self._run(lambda conn: _read_node(conn, chain, level, index))


def _range_query(chain: str, start: int, stop: int | None) -> tuple[str, tuple[object, ...]]:
    sql = "SELECT chain, seq, hash, body FROM records WHERE chain = %s AND seq >= %s"
    if stop is None:
        return sql + " ORDER BY seq", (chain, start)
    return sql + " AND seq < %s ORDER BY seq", (chain, start, stop)


def _stored(row: tuple[Any, ...]) -> StoredRecord:
    return StoredRecord(row[0], row[1], bytes(row[2]), bytes(row[3]))


def _compare_and_set(
    conn: _Conn, name: str, chain: str, expect: int, to: int
) -> psycopg.Cursor[tuple[Any, ...]]:
    """Inside a transaction: move cursor ``(name, chain)`` from ``expect`` (-1: absent) to
    ``to``, holding its row lock until COMMIT; the result has a row only if it moved."""
    if expect == -1:
        return conn.execute(_CAS_NEW, (name, chain, to))
    return conn.execute(_CAS, (to, name, chain, expect))


def _cursor_moved(conn: _Conn, name: str, chain: str, expect: int, _to: int) -> CursorMoved:
    row = conn.execute(_QUERIES.cursor, (name, chain)).fetchone()
    found = -1 if row is None else int(row[0])
    return CursorMoved(
        f"cursor {name!r} of chain {chain!r} is at {found}, not {expect}: another writer "
        "advanced it",
        cursor=name,
        chain=chain,
        expected=expect,
        found=found,
    )


def _stored_by_keys(
    conn: _Conn, keys: Sequence[bytes], subset: bool = False
) -> list[StoredRecord] | None:
    """The records stored under ``keys``, in their order; None when none is stored.
    ``subset``: the batch had record keys, so a committed attempt may have skipped some."""
    found = {bytes(r[0]): _stored(r[1:]) for r in conn.execute(_BY_KEYS, (list(keys),))}
    if not found:
        return None
    if not subset and len(found) != len(set(keys)):  # a batch commits all or nothing
        raise LedgerError(f"only {len(found)} of {len(keys)} records of a batch are stored")
    return [found[k] for k in keys if k in found]


def _stored_keys(conn: _Conn, chain: str, keys: list[str]) -> list[str]:
    """Which of ``keys`` ``chain`` holds already (one statement)."""
    return [k for (k,) in conn.execute(_QUERIES.keys, (chain, keys)).fetchall()]


def _write_index(
    conn: _Conn,
    cur: psycopg.Cursor[tuple[Any, ...]],
    stored: Sequence[StoredRecord],
    batch: int,
) -> None:
    """Inside an append's transaction, under its chains' locks: new chains get their
    ``index_state`` (0, pipelined: no round trip), and the tails
    :func:`~audit_core._index.flushes` names are indexed (the older records read back in this
    transaction), each state moved on from where it was only."""
    for chain in new_chains(stored):
        cur.execute(_START_STATE, (chain,))
    for f in flushes(stored, batch, partial(_index_state, conn)):
        reread = f.done < f.upto  # records of earlier appends in the tail
        older = conn.execute(*_range_query(f.chain, f.done, f.upto)).fetchall() if reread else []
        cur.executemany(_INSERT_INDEX, index_rows([*map(_stored, older), *f.mine]))
        cur.execute(_MOVE_STATE, (f.stop, f.chain, f.done))


def _index_state(conn: _Conn, chain: str) -> object:
    row = conn.execute(_STATE, (chain,)).fetchone()
    return None if row is None else row[0]


def _reindex(conn: _Conn, *, chain: str, lo: int, hi: int | None) -> int:
    """One transaction: rewrite the index rows of seqs ``lo <= seq < hi``."""
    with conn.transaction():
        if hi is None:
            conn.execute("DELETE FROM record_index WHERE chain = %s AND seq >= %s", (chain, lo))
        else:
            conn.execute(
                "DELETE FROM record_index WHERE chain = %s AND seq >= %s AND seq < %s",
                (chain, lo, hi),
            )
        rows = index_rows(map(_stored, conn.execute(*_range_query(chain, lo, hi))))
        with conn.cursor() as cur:
            cur.executemany(_INSERT_INDEX, rows)
    return len(rows)


def _finish_index(conn: _Conn, *, chain: str, lo: int) -> int:
    """One transaction holding the chain's row lock (as appends take it): index what was
    appended since the rebuild began, drop rows past the chain's end, mark it complete."""
    with conn.transaction():
        conn.execute(_LOCK_HEAD, (chain,))
        written = _reindex(conn, chain=chain, lo=lo, hi=None)  # a savepoint inside
        row = conn.execute(_LAST, (chain,)).fetchone()
        conn.execute(_SET_STATE, (chain, 0 if row is None else row[0] + 1))
    return written


def _drop_index_of_others(conn: _Conn, *, chains: list[str]) -> int:
    """Forget index rows and states of chains that hold no record."""
    with conn.transaction():
        conn.execute("DELETE FROM record_index WHERE NOT (chain = ANY(%s))", (chains,))
        conn.execute("DELETE FROM index_state WHERE NOT (chain = ANY(%s))", (chains,))
    return 0


def _read_node(conn: _Conn, chain: str, level: int, index: int) -> bytes:
    if level == 0:
        row = conn.execute(_LEAF, (chain, index)).fetchone()
        return _frontier.checked_node(row and bytes(row[0]), chain, level, index)
    last = _frontier.last_leaf(level, index)
    row = conn.execute(_SUBTREES, (chain, [last])).fetchone()
    return _frontier.subtree_node(row and bytes(row[1]), chain, level, index)


def _frontier_at(conn: _Conn, chain: str, size: int, *, rebuild: bool) -> Frontier:
    """The frontier of ``size`` leaves from the stored subtrees, in one query (plus one for a
    lone leaf); with ``rebuild``, recomputed from every record hash when subtrees are
    missing, else LedgerError."""
    lasts = [_frontier.last_leaf(lv, i) for lv, i in frontier_positions(size) if lv > 0]
    stored = {r[0]: bytes(r[1]) for r in conn.execute(_SUBTREES, (chain, lasts))} if lasts else {}

    def read(level: int, index: int) -> bytes:
        if level == 0:
            return _read_node(conn, chain, 0, index)
        hashes = stored.get(_frontier.last_leaf(level, index))
        return _frontier.subtree_node(hashes, chain, level, index)

    return _frontier.frontier(
        size, read, rebuild=partial(_rebuild, conn, chain, size) if rebuild else None
    )


def _rebuild(conn: _Conn, chain: str, size: int) -> Frontier:
    """Recompute a chain's subtrees from its record hashes and store them."""
    hashes: Iterator[bytes] = (bytes(h) for (h,) in conn.execute(_HASHES_FROM, (chain,)))
    rebuilt, subtrees = _frontier.rebuild(chain, size, hashes)
    # READ COMMITTED: this read is a later snapshot than the caller's (under the chain lock,
    # the same records; a mismatch means something else changed them)
    if rebuilt.size != size:
        raise LedgerError(f"chain {chain!r} has {rebuilt.size} records, expected {size}")
    with conn.cursor() as cur:
        cur.executemany(_INSERT_SUBTREE, subtrees)
    return rebuilt
