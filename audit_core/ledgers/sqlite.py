"""The embedded default ledger: one SQLite file in WAL mode.

>>> from audit_core.ledgers.sqlite import SqliteLedger
>>> ledger = SqliteLedger(None)  # None: in memory, for tests and examples
>>> ledger.head("default") is None
True

Durability: ``synchronous=FULL`` by default, so a record is on disk (WAL fsynced) when
``append`` returns — SQLite's documented guarantee for WAL mode ("FULL: a transaction is
durable across power loss"). ``NORMAL`` trades the last transactions on power loss (never on
a process crash) for speed and is configurable.

Concurrency: ``seq`` and ``prev`` are read and written inside one ``BEGIN IMMEDIATE``
transaction, which takes SQLite's single RESERVED write lock up front; concurrent writers, in
any number of processes on one host, wait for it (``busy_timeout``) instead of forking or
gapping the chain. A ``UNIQUE (chain, seq)`` index is the second line of defence.

Idempotency keys (``record_keys``, docs/FORMAT.md) are looked up and stored inside the same
``BEGIN IMMEDIATE`` transaction, so of two writers racing on one key only the first appends.

Triggers refuse UPDATE and DELETE on records (and on record_keys), so mistakes cannot rewrite
history; someone who drops the triggers is caught by ``workflow-audit verify``.

Query index (``record_index``, ``index_state``; :mod:`audit_core.query`): an append whose
chain's unindexed tail reaches INDEX_BATCH records indexes the whole tail in its own
transaction (one executemany; the other appends write nothing to it, so the index costs the
durable append nothing measurable at p50), and queries read each chain's short tail by seq;
a ledger made before the index gets the empty tables from its first writer and is scanned
until ``workflow-audit index rebuild``. Derived data, not evidence: no triggers (a rebuild rewrites
it), never read by ``verify``, and every record a query returns is re-read and re-filtered.

Readers: :meth:`SqliteLedger.snapshot` is one read transaction (sqlite.org/isolation.html: in
WAL mode a read transaction sees the database as of its first read, whatever is committed
meanwhile), so every check of one verification sees the same records, subtrees and
checkpoints. ``read_only=True`` (and every snapshot) opens the file read-only and creates
nothing, so an auditor without write access, or a copy on read-only media, can verify it; see
:func:`connect_read_only` for the write-ahead log cases.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from audit_core._forklock import renew_after_fork
from audit_core._index import INDEX_BATCH, flushes, index_rows, new_chains
from audit_core._merkle import Frontier
from audit_core._record import PreparedRecord, StoredRecord
from audit_core.errors import ConfigError, CursorMoved, LedgerError
from audit_core.ledgers import _frontier, synchronous_level
from audit_core.ledgers._reads import IndexSql, Queries, RowReads, RowWrites

_C = TypeVar("_C", bound=sqlite3.Connection)

__all__ = [
    "SCHEMA_VERSION",
    "LockFreeConnection",
    "SqliteLedger",
    "SqliteSnapshot",
    "check_unchanged",
    "connect_read_only",
]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    chain TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL,    -- SHA-256(0x00 || body), RFC 9162 leaf hash
    body  BLOB NOT NULL     -- the RFC 8785 canonical bytes that were hashed, exactly
);
CREATE UNIQUE INDEX IF NOT EXISTS records_chain_seq ON records (chain, seq);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'workflow-audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'workflow-audit records are append-only'); END;
CREATE TABLE IF NOT EXISTS cursors (
    name  TEXT NOT NULL,
    chain TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (name, chain)
);
-- RFC 9162 Merkle tree of each chain: the complete subtrees (level >= 1) that each leaf
-- completes, stored by its append as one row: the hashes of levels 1..k concatenated, k the
-- number of trailing 1 bits of the leaf's seq (even seqs complete none and have no row).
-- n/2 rows, n - popcount(n) hashes for n records; appends write to the right edge only.
-- The compact frontier is the subtrees at the set bits of the size: O(log n) reads, cached.
CREATE TABLE IF NOT EXISTS merkle_subtrees (
    chain  TEXT NOT NULL,
    last   INTEGER NOT NULL,  -- seq of the leaf completing them: (index + 1) * 2^level - 1
    hashes BLOB NOT NULL,     -- 32 bytes per level, level 1 first
    PRIMARY KEY (chain, last)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS merkle_subtrees_no_update BEFORE UPDATE ON merkle_subtrees
BEGIN SELECT RAISE(ABORT, 'workflow-audit Merkle subtrees are append-only'); END;
-- Signed checkpoints (c2sp.org/tlog-checkpoint in a c2sp.org/signed-note).
CREATE TABLE IF NOT EXISTS checkpoints (
    chain   TEXT NOT NULL,
    size    INTEGER NOT NULL,
    root    BLOB NOT NULL,
    note    TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (chain, size)
);
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'workflow-audit checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'workflow-audit checkpoints are append-only'); END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"""
# Idempotency keys (docs/FORMAT.md): at most one record per (chain, key). Not evidence (verify
# never reads it), so readers never need it; writers add it to a ledger made before it.
_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS record_keys (
    chain TEXT NOT NULL,
    key   TEXT NOT NULL,
    seq   INTEGER NOT NULL,  -- the record stored under the key
    PRIMARY KEY (chain, key)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS record_keys_no_update BEFORE UPDATE ON record_keys
BEGIN SELECT RAISE(ABORT, 'workflow-audit record keys are append-only'); END;
CREATE TRIGGER IF NOT EXISTS record_keys_no_delete BEFORE DELETE ON record_keys
BEGIN SELECT RAISE(ABORT, 'workflow-audit record keys are append-only'); END;
"""
# Witness cosignatures of checkpoints (c2sp.org/tlog-cosignature): evidence, append-only;
# writers add the table to a ledger made before it, as record_keys.
_COSIGN_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosignatures (
    chain   TEXT NOT NULL,
    size    INTEGER NOT NULL,
    body    TEXT NOT NULL,  -- the checkpoint text cosigned (c2sp.org/tlog-checkpoint)
    line    TEXT NOT NULL,  -- the witness's note signature line
    created TEXT NOT NULL,
    PRIMARY KEY (chain, size, line)
);
CREATE TRIGGER IF NOT EXISTS cosignatures_no_update BEFORE UPDATE ON cosignatures
BEGIN SELECT RAISE(ABORT, 'workflow-audit cosignatures are append-only'); END;
CREATE TRIGGER IF NOT EXISTS cosignatures_no_delete BEFORE DELETE ON cosignatures
BEGIN SELECT RAISE(ABORT, 'workflow-audit cosignatures are append-only'); END;
"""
# The query index (audit_core.query): derived, rebuildable, never evidence (verify never
# reads it), so no append-only triggers: `workflow-audit index rebuild` deletes and rewrites
# its rows. An append indexes its chain's tail in its own transaction once it reaches
# INDEX_BATCH records; index_state says up to where a chain is surely indexed (moved only
# from where it was; a chain without a state row, from before the index, stays
# "incomplete" until a rebuild). Each secondary index ends
# with (ts, chain, seq): a seek on its first columns returns rows newest first.
_INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS record_index (
    chain TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    ts    TEXT NOT NULL,
    event TEXT NOT NULL,
    dag   TEXT NOT NULL,  -- "" for a record about no DAG
    run   TEXT,
    task  TEXT,
    actor TEXT,
    PRIMARY KEY (chain, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS record_index_ts ON record_index (ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_event ON record_index (event, ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_dag_event ON record_index (dag, event, ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_run ON record_index (run, dag, ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_actor ON record_index (actor, ts, chain, seq);
CREATE TABLE IF NOT EXISTS index_state (
    chain TEXT PRIMARY KEY,
    size  INTEGER NOT NULL  -- records 0..size-1 of the chain are indexed
) WITHOUT ROWID;
"""
_HAS_TABLES = (
    "SELECT sum(name = 'records'), sum(name = 'record_keys'), sum(name = 'record_index') "
    "+ sum(name = 'index_state'), sum(name = 'cosignatures') "
    "FROM sqlite_master WHERE type = 'table'"
)
_INSERT_INDEX = (
    "INSERT OR REPLACE INTO record_index (chain, seq, ts, event, dag, run, task, actor) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# A new chain starts its state at 0; a chain's state moves on only from where it was, by
# INDEX_BATCH records at a time (audit_core._index.flush_due).
_MOVE_STATE = "UPDATE index_state SET size = ? WHERE chain = ? AND size = ?"
_START_STATE = "INSERT INTO index_state (chain, size) VALUES (?, 0) ON CONFLICT (chain) DO NOTHING"
_STATE = "SELECT size FROM index_state WHERE chain = ?"
_SET_STATE = (
    "INSERT INTO index_state (chain, size) VALUES (?, ?) "
    "ON CONFLICT (chain) DO UPDATE SET size = excluded.size"
)
_INDEX_SQL = IndexSql(
    param="?",
    any_of="{col} IN (SELECT value FROM json_each(?))",
    listed=lambda values: orjson.dumps(values).decode(),
    usable="SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' "
    "AND name IN ('record_index', 'index_state')",
    text_c="",
    records_chain="",
    opaque="+",
)
_INSERT_KEY = "INSERT INTO record_keys (chain, key, seq) VALUES (?, ?, ?)"
_KEY_STORED = "SELECT key FROM record_keys WHERE chain = ? AND key = ?"

_LAST = "SELECT seq, hash FROM records WHERE chain = ? ORDER BY seq DESC LIMIT 1"
_INSERT = "INSERT INTO records (chain, seq, hash, body) VALUES (?, ?, ?, ?)"
# OR IGNORE: a rebuild may meet subtrees that exist; they are derived data, and a wrong one
# only makes a proof fail to verify (never pass).
_INSERT_SUBTREE = "INSERT OR IGNORE INTO merkle_subtrees (chain, last, hashes) VALUES (?, ?, ?)"
_HASHES_FROM = "SELECT hash FROM records WHERE chain = ? AND seq >= ? ORDER BY seq"
_HASHES_BETWEEN = "SELECT hash FROM records WHERE chain = ? AND seq >= ? AND seq < ? ORDER BY seq"
_CATCH_UP_LIMIT = 64
# A compare-and-set cursor may move back (a source's ids are not the chain's seqs).
_SET_CURSOR = (
    "INSERT INTO cursors (name, chain, seq) VALUES (?, ?, ?) "
    "ON CONFLICT (name, chain) DO UPDATE SET seq = excluded.seq"
)
_NODE_LEAF = "SELECT hash FROM records WHERE chain = ? AND seq = ?"
_NODE = "SELECT hashes FROM merkle_subtrees WHERE chain = ? AND last = ?"


def _distinct_chains(*tables: str) -> str:
    """The distinct chains of ``tables`` (ours, never input), sorted: a skip-scan of each
    table's (chain, ...) primary key, one seek per chain (``SELECT DISTINCT`` read every row:
    ~100 ms at 1M records)."""
    scans = [
        f"t{i}(chain) AS (SELECT min(chain) FROM {table} UNION ALL "  # noqa: S608 - our tables
        f"SELECT (SELECT min(n.chain) FROM {table} n WHERE n.chain > t{i}.chain) FROM t{i} "
        f"WHERE t{i}.chain IS NOT NULL)"
        for i, table in enumerate(tables)
    ]
    each = [f"SELECT chain FROM t{i} WHERE chain IS NOT NULL" for i in range(len(tables))]  # noqa: S608 - our CTE names
    return f"WITH RECURSIVE {', '.join(scans)} {' UNION '.join(each)} ORDER BY chain"


_QUERIES = Queries(
    head="SELECT chain, seq, hash, body FROM records WHERE chain = ? ORDER BY seq DESC LIMIT 1",
    chains=_distinct_chains("records"),
    merkle_chains=_distinct_chains("merkle_subtrees", "checkpoints"),
    extent="SELECT max(last) FROM merkle_subtrees WHERE chain = ?",  # a seek on the primary key
    checkpoints="SELECT chain, size, root, note, created FROM checkpoints WHERE chain = ?",
    cursor="SELECT seq FROM cursors WHERE name = ? AND chain = ?",
    add_checkpoint="INSERT OR IGNORE INTO checkpoints (chain, size, root, note, created) "
    "VALUES (?, ?, ?, ?, ?)",
    set_cursor="INSERT INTO cursors (name, chain, seq) VALUES (?, ?, ?) "
    "ON CONFLICT (name, chain) DO UPDATE SET seq = max(seq, excluded.seq)",
    keyed="SELECT r.chain, r.seq, r.hash, r.body FROM record_keys k JOIN records r "
    "ON r.chain = k.chain AND r.seq = k.seq WHERE k.chain = ? AND k.key = ?",
    # one statement for a batch's keys however many (no bound-variable limit): a JSON array
    keys="SELECT key FROM record_keys WHERE chain = ? AND key IN (SELECT value FROM json_each(?))",
    has_cosignatures="SELECT count(*) FROM sqlite_master WHERE type = 'table' "
    "AND name = 'cosignatures'",
    cosigned_chains="SELECT DISTINCT chain FROM cosignatures ORDER BY chain",
    cosignatures="SELECT chain, size, body, line, created FROM cosignatures WHERE chain = ? "
    "ORDER BY size, rowid",
    add_cosignature="INSERT OR IGNORE INTO cosignatures (chain, size, body, line, created) "
    "VALUES (?, ?, ?, ?, ?)",
)
# SQLite result codes (sqlite.org/rescode.html), low byte: the ones a read-only open of a
# WAL database gives when the -shm file can be neither opened for writing nor created.
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


class SqliteLedger(RowWrites):
    """A :class:`~audit_core.ledgers.Ledger` in one SQLite file (``path=None``: in memory).

    ``read_only=True``: an existing file, opened by :func:`connect_read_only`; nothing is
    created, and writes raise LedgerError."""

    queries = _QUERIES
    index_sql = _INDEX_SQL
    #: An append indexes its chain's tail once it reaches this many records (see
    #: :data:`audit_core._index.INDEX_BATCH`); tests and the bench change it per ledger.
    index_batch: int = INDEX_BATCH

    def __init__(
        self,
        path: str | Path | None,
        *,
        synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
        create: bool = True,
        read_only: bool = False,
        index: bool = True,
    ) -> None:
        level = synchronous_level(synchronous)
        if read_only and path is None:
            raise ConfigError("a read-only SQLite ledger needs a file, not :memory:")
        self.path = Path(path) if path is not None else None
        self.read_only = read_only
        self.synchronous = level
        self.busy_timeout_s = busy_timeout_s
        self._create = create and not read_only
        # False: appends write no query index rows (only bench/bench_index.py's A/B: the
        # chains then stay "incomplete" and queries scan)
        self.index = index
        self._lock = threading.Lock()
        # A forked child gets a free lock (its connection is replaced by _connection, which
        # checks the pid).
        renew_after_fork(self)
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        # A connection must not cross fork() (sqlite.org/howtocorrupt.html §2.6); connections
        # abandoned in a child are kept referenced, not closed, so the parent's stay intact.
        self._abandoned: list[sqlite3.Connection] = []
        # chain -> Merkle frontier as of this process's last commit (checked against the
        # chain's size inside every transaction, so other writers only make it catch up)
        self._frontiers: dict[str, Frontier] = {}

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path) if self.path else ':memory:'!r})"

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            assert self.path is not None
            return connect_read_only(self.path, timeout_s=self.busy_timeout_s)
        target = ":memory:" if self.path is None else str(self.path)
        try:
            if self.path is not None:
                if not self._create and not self.path.exists():
                    raise LedgerError(f"no ledger at {self.path}")
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
            if self.path is not None:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            # A ledger made before idempotency keys or the query index gets their tables from
            # its first writer (the index empty: a rebuild fills it); a file that holds no
            # records table is no ledger: left alone.
            has = conn.execute(_HAS_TABLES).fetchone()
            if self._create:
                schema = _SCHEMA + _KEYS_SCHEMA + _INDEX_SCHEMA + _COSIGN_SCHEMA
            elif has is None or not has[0]:
                schema = ""
            else:
                schema = (
                    (_KEYS_SCHEMA if not has[1] else "")
                    + (_INDEX_SCHEMA if has[2] != 2 else "")
                    + (_COSIGN_SCHEMA if not has[3] else "")
                )
            if schema:
                # One transaction, so concurrent first writers do not race on the schema.
                try:
                    conn.executescript(f"BEGIN IMMEDIATE;{schema}COMMIT;")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open ledger {target}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn is None or self._pid != pid:
            if self._conn is not None:
                self._abandoned.append(self._conn)
            self._conn = self._connect()
            self._pid = pid
            self._frontiers.clear()
        return self._conn

    def close(self) -> None:
        """Close this process's connection; idempotent."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- writing -------------------------------------------------------------------------

    def append(self, record: PreparedRecord) -> StoredRecord:
        """Seal and store ``record`` as the next of its chain; returns after COMMIT. A
        duplicate key: the record stored under it."""
        stored = self.append_many((record,))
        return stored[0] if stored else self._earlier(record)

    def append_many(self, records: Sequence[PreparedRecord]) -> list[StoredRecord]:
        """Seal and store ``records`` in one transaction, in order; returns after COMMIT."""
        if not records:
            return []
        return self._append(records, None)

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
        and set it to ``to``, in one ``BEGIN IMMEDIATE`` transaction; else CursorMoved.
        The write lock is taken before the cursor is read, so no writer can move it between
        the check and the COMMIT."""
        return self._append(records, (cursor, chain, expect, to))

    def _append(
        self,
        records: Sequence[PreparedRecord],
        advance: tuple[str, str, int, int] | None,
    ) -> list[StoredRecord]:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                committed = False
                try:
                    if advance is not None:
                        _compare_and_set(conn, *advance)
                    stored, frontiers = self._seal_all(conn, records)
                    conn.execute("COMMIT")
                    committed = True
                    self._frontiers.update(frontiers)  # only what is committed
                finally:
                    if not committed and conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot append to {self!r}: {exc}") from exc
        return stored

    def _seal_all(
        self, conn: sqlite3.Connection, records: Sequence[PreparedRecord]
    ) -> tuple[list[StoredRecord], dict[str, Frontier]]:
        states: dict[str, list[Any]] = {}
        for rec in records:
            chain = rec.chain
            if chain not in states:
                row = conn.execute(_LAST, (chain,)).fetchone()
                size = 0 if row is None else row[0] + 1
                last = b"" if row is None else row[1]
                states[chain] = _frontier.chain_state(
                    chain, self._frontier(conn, chain, size), last
                )
        keyed = _frontier.new_keys(records, partial(_stored_keys, conn))
        if keyed is not None:
            records = [records[i] for i in keyed]
        stored, subtrees = _frontier.seal(records, states)
        conn.executemany(_INSERT, stored)  # a StoredRecord is the row: (chain, seq, hash, body)
        conn.executemany(_INSERT_SUBTREE, subtrees)
        if keyed is not None:
            conn.executemany(_INSERT_KEY, _frontier.key_rows(records, stored))
        if self.index and stored:
            _write_index(conn, stored, self.index_batch)
        return stored, {c: Frontier(n, tuple(nodes)) for c, (n, _, nodes) in states.items()}

    def _frontier(
        self, conn: sqlite3.Connection, chain: str, size: int, *, rebuild: bool = True
    ) -> Frontier:
        """The chain's frontier at ``size`` leaves: this process's cached one, brought up to
        date with the hashes other processes appended since, or read from the stored
        subtrees; with ``rebuild`` (write paths only), recomputed from every record hash when
        subtrees are missing, else LedgerError."""
        cached = self._frontiers.get(chain)
        if cached is not None and cached.size == size:
            return cached  # the append path: one writer, nothing to catch up
        # Others appended since: their subtrees exist. Hashing the few new leaves is cheaper
        # than reading the O(log n) subtrees (measured: break-even near 100 records).
        return _frontier.frontier(
            size,
            partial(_read_node, conn, chain),
            cached=cached,
            since=lambda start: (h for (h,) in conn.execute(_HASHES_BETWEEN, (chain, start, size))),
            limit=_CATCH_UP_LIMIT,
            rebuild=partial(_rebuild, conn, chain, size) if rebuild else None,
        )

    # -- reading -------------------------------------------------------------------------

    def read(
        self, chain: str, start: int = 0, stop: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        """Stream records ``start <= seq < stop`` of ``chain``, ordered by seq, from one
        consistent snapshot, in constant memory (a connection of its own)."""
        make = partial(tuple.__new__, StoredRecord)  # C-level, unlike _make: one call a row
        if self.path is None:  # an in-memory database exists only on its one connection
            with self._lock:
                rows = self._connection().execute(*_range_query(chain, start, stop)).fetchall()
            yield from map(make, rows)
            return
        conn = self._reader()
        try:
            yield from map(make, conn.execute(*_range_query(chain, start, stop)))
            check_unchanged(conn)
        except sqlite3.Error as exc:
            check_unchanged(conn, exc)
            raise LedgerError(f"cannot read {self!r}: {exc}") from exc
        finally:
            conn.close()

    def _reader(self) -> sqlite3.Connection:
        assert self.path is not None
        return connect_read_only(self.path, timeout_s=self.busy_timeout_s)

    @contextmanager
    def snapshot(self) -> Iterator[SqliteSnapshot]:
        """A :class:`SqliteSnapshot`: one read transaction on a read-only connection of its
        own; every read through it sees the ledger as of its start. In memory, the ledger's
        one connection, and other threads' calls wait until the snapshot is released."""
        if self.path is None:
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN")
                try:
                    yield SqliteSnapshot(self, conn)
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            return
        if not self.read_only:
            with self._lock:
                self._connection()  # creates the file and schema, as every other call does
        conn = self._reader()
        try:
            try:
                # BEGIN (deferred) takes no lock; the first SELECT starts the read transaction
                # and pins its snapshot of the WAL until ROLLBACK (sqlite.org/isolation.html).
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read {self!r}: {exc}") from exc
            try:
                yield SqliteSnapshot(self, conn)
            except Exception as exc:  # a verdict read from a torn file is no verdict
                check_unchanged(conn, exc)
                raise
            check_unchanged(conn)
        finally:
            conn.close()  # ends the read transaction

    # -- Merkle tree and checkpoints -----------------------------------------------------

    def tree_head(self, chain: str) -> tuple[int, bytes]:
        """``(size, root)`` of the chain's Merkle tree, from its stored subtrees (O(log n)).
        Raises LedgerError when they are missing (the next append rebuilds them)."""
        with self._lock:
            try:
                conn = self._connection()
                row = conn.execute(_LAST, (chain,)).fetchone()
                size = 0 if row is None else row[0] + 1
                frontier = self._frontier(conn, chain, size, rebuild=False)
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read {self!r}: {exc}") from exc
            # committed records never change: the frontier of a size read is safe to keep
            self._frontiers[chain] = frontier
            return (size, frontier.root())

    def node(self, chain: str, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)``; level 0 is a record's hash."""
        with self._lock:
            try:
                return _read_node(self._connection(), chain, level, index)
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read {self!r}: {exc}") from exc

    # -- one statement on this process's connection ----------------------------------------

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read {self!r}: {exc}") from exc

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        with self._lock:
            try:
                return self._connection().execute(sql, args).rowcount
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot write to {self!r}: {exc}") from exc

    # -- the query index ----------------------------------------------------------------------

    def rebuild_index(self, chains: Sequence[str] = (), *, batch: int = 5000) -> dict[str, int]:
        """Recompute the query index of ``chains`` (every chain when empty) from the hashed
        record bytes; returns rows written per chain. Safe while writers append: each batch
        of seqs is deleted and rewritten in one write transaction (rows are never missing
        nor doubled: (chain, seq) is the key), and the last one, under the write lock, covers
        what was appended meanwhile and marks the chain complete."""
        if self.read_only:
            raise LedgerError(f"{self!r} is read-only: an index rebuild writes")
        every = not chains
        chains = list(chains) or self.chains()
        done: dict[str, int] = {}
        for chain in chains:
            size = self.index_sizes([chain])[0][1]
            written = 0
            for lo in range(0, size, batch):
                written += self._locked(partial(_reindex, chain=chain, lo=lo, hi=lo + batch))
            done[chain] = written + self._locked(partial(_finish_index, chain=chain, lo=size))
        if every:
            self._locked(partial(_drop_index_of_others, chains=chains))
        return done

    def _locked(self, fn: Callable[[sqlite3.Connection], int]) -> int:
        """``fn(connection)`` in one BEGIN IMMEDIATE transaction (the write lock)."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                committed = False
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    committed = True
                finally:
                    if not committed and conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot write to {self!r}: {exc}") from exc
        return result


class SqliteSnapshot(RowReads):
    """A :class:`~audit_core.ledgers.LedgerReader` over one read transaction of a
    :class:`SqliteLedger` (from :meth:`SqliteLedger.snapshot`): every call sees the same
    committed state. Valid until the ``with`` block that made it ends; one thread at a time."""

    queries = _QUERIES
    index_sql = _INDEX_SQL

    def __init__(self, ledger: SqliteLedger, conn: sqlite3.Connection) -> None:
        self.ledger = ledger
        self._conn = conn

    def __repr__(self) -> str:
        return f"snapshot of {self.ledger!r}"

    @property
    def path(self) -> Path | None:
        """The ledger's file (None in memory)."""
        return self.ledger.path

    @contextmanager
    def snapshot(self) -> Iterator[SqliteSnapshot]:
        """This snapshot itself: a check that takes one sees the caller's."""
        yield self

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read {self.ledger!r}: {exc}") from exc

    def read(
        self, chain: str, start: int = 0, stop: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        """Stream records ``start <= seq < stop`` of ``chain``, ordered by seq."""
        make = partial(tuple.__new__, StoredRecord)
        try:
            yield from map(make, self._conn.execute(*_range_query(chain, start, stop)))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read {self.ledger!r}: {exc}") from exc

    def tree_head(self, chain: str) -> tuple[int, bytes]:
        """``(size, root)`` from the stored subtrees; LedgerError when they are missing."""
        rows = self._rows(_LAST, (chain,))
        size = 0 if not rows else rows[0][0] + 1
        try:
            return (size, Frontier.at(partial(_read_node, self._conn, chain), size).root())
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read {self.ledger!r}: {exc}") from exc

    def node(self, chain: str, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)``; level 0 is a record's hash."""
        try:
            return _read_node(self._conn, chain, level, index)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read {self.ledger!r}: {exc}") from exc


def connect_read_only(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to the ledger file ``path`` that needs no write access to it
    or its directory, and never reads a stale state.

    With write access to file and directory: an ordinary connection with ``query_only``.
    Without: ``mode=ro`` first (sqlite.org/uri.html): it sees everything committed, the write-ahead
    log included, and works when the ``-shm`` file can be opened for writing or created, or
    (SQLite >= 3.22, sqlite.org/wal.html "Read-Only Databases") when ``-wal`` and ``-shm``
    both exist and are readable. When it fails for want of the ``-shm`` and there is no
    write-ahead log (or an empty one), the main file holds every committed record and
    ``immutable=1`` reads it without the ``-shm``. A non-empty ``-wal`` that cannot be used
    is a LedgerError saying what to do: reading without it would silently miss records."""
    if not path.exists():
        raise LedgerError(f"no ledger at {path}")
    base = "file:" + quote(str(path.absolute()))
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        # Who may write opens as writers do (query_only keeps it read-only): the last
        # connection to close then checkpoints and removes the -wal and -shm, as before; a
        # mode=ro connection would leave them behind, owned by this user.
        try:
            return _open_uri(base + "?mode=rw", timeout_s)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    uri = base + "?mode=ro"
    shm = Path(f"{path}-shm")
    first: Exception
    if os.access(path.parent, os.W_OK) and not shm.exists():
        # mode=ro would create the -wal and -shm, owned by this user, and the ledger's own
        # writers could then no longer open it: read lock-free instead (guarded below).
        first = LedgerError(f"no {shm.name}, and creating one would lock out the writers")
    else:
        try:
            return _open_uri(uri, timeout_s)
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
                raise LedgerError(f"cannot open ledger {path} read-only: {exc}") from exc
            first = exc
    wal = Path(f"{path}-wal")
    try:
        wal_size = wal.stat().st_size
    except FileNotFoundError:
        wal_size = 0
    except OSError as exc:
        raise LedgerError(f"cannot open ledger {path} read-only: {wal}: {exc}") from exc
    if wal_size:
        raise LedgerError(
            f"cannot open ledger {path} read-only: {first}. Its write-ahead log {wal.name} "
            f"holds commits not yet in the main file, and SQLite can read it only with a "
            f"{path.name}-shm file it can open or create (none here, and "
            f"{path.parent} is not writable). Reading the main file alone would miss them. "
            f"What to do: copy {path.name} and {wal.name} together into a writable "
            "directory and verify the copy, or have a writer run "
            "'PRAGMA wal_checkpoint(TRUNCATE)' first."
        )
    try:
        # immutable=1: no -shm and no locks, so nothing stops a writer from appending (to a
        # new -wal) and checkpointing into the main file while we read it. The connection
        # remembers the file as it was; check_unchanged() turns a read that overlapped a
        # write into a LedgerError instead of a verdict on torn pages.
        signature = _signature(path)
        conn = _open_uri(uri + "&immutable=1", timeout_s, factory=LockFreeConnection)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(f"cannot open ledger {path} read-only: {first}; {exc}") from exc
    conn.path, conn.signature = path, signature
    return conn


class LockFreeConnection(sqlite3.Connection):
    """A read of a ledger that takes no locks (``immutable=1``): valid only if the file did
    not change while it was read (see :func:`check_unchanged`)."""

    path: Path
    signature: tuple[int, int, int, bool]


def _signature(path: Path) -> tuple[int, int, int, bool]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, Path(f"{path}-wal").exists())


def check_unchanged(conn: sqlite3.Connection, cause: BaseException | None = None) -> None:
    """After a lock-free read: raise LedgerError (from ``cause``, whatever the read found)
    if a writer touched the ledger meanwhile; any other connection passes."""
    if not isinstance(conn, LockFreeConnection):
        return
    try:
        unchanged = _signature(conn.path) == conn.signature
    except OSError:
        unchanged = False
    if not unchanged:
        raise LedgerError(
            f"{conn.path} was written while it was read without locks (this user cannot "
            f"create {conn.path.name}-shm, so SQLite cannot coordinate with the writers): "
            "the read may be torn, so no verdict. What to do: run it again, or give the "
            f"auditor a {conn.path.name}-shm it can open (a writer creates one while it runs), "
            "or verify a copy"
        ) from cause


def _open_uri(
    uri: str,
    timeout_s: float,
    factory: type[_C] = sqlite3.Connection,  # type: ignore[assignment]
) -> _C:
    # check_same_thread=False: an abandoned read() generator may be finalized (and its
    # connection closed) by the garbage collector in another thread
    conn = sqlite3.connect(
        uri,
        uri=True,
        timeout=timeout_s,
        isolation_level=None,
        check_same_thread=False,
        factory=factory,
    )
    try:
        conn.execute("PRAGMA query_only=1")
        # the first read opens the file (and its -wal/-shm): fail here, not in a caller
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    # A tampered row may hold a hash or body re-typed as TEXT that is not UTF-8; read it
    # anyway so that the verifier names the record instead of the read failing.
    conn.text_factory = _lenient_text
    return conn


def _compare_and_set(conn: sqlite3.Connection, name: str, chain: str, expect: int, to: int) -> None:
    """Inside a write transaction: set cursor ``(name, chain)`` to ``to`` if it holds
    ``expect`` (-1: absent), else raise CursorMoved (the caller rolls back)."""
    row = conn.execute(_QUERIES.cursor, (name, chain)).fetchone()
    found = -1 if row is None else row[0]
    if found != expect:
        raise CursorMoved(
            f"cursor {name!r} of chain {chain!r} is at {found}, not {expect}: another writer "
            "advanced it",
            cursor=name,
            chain=chain,
            expected=expect,
            found=found if type(found) is int else -2,
        )
    conn.execute(_SET_CURSOR, (name, chain, to))


def _stored_keys(conn: sqlite3.Connection, chain: str, keys: list[str]) -> list[str]:
    """Which of ``keys`` ``chain`` holds already (one statement)."""
    if len(keys) == 1:  # one record a transaction (a hook's): a plain seek, half the cost
        rows = conn.execute(_KEY_STORED, (chain, keys[0]))
    else:
        rows = conn.execute(_QUERIES.keys, (chain, orjson.dumps(keys).decode()))
    return [k for (k,) in rows.fetchall()]


def _write_index(conn: sqlite3.Connection, stored: Sequence[StoredRecord], batch: int) -> None:
    """Inside an append's transaction: new chains get their ``index_state`` (0), and the tails
    :func:`~audit_core._index.flushes` names are indexed (the older records read back from
    their stored bytes, in this transaction), each state moved on from where it was only."""
    for chain in new_chains(stored):
        conn.execute(_START_STATE, (chain,))
    for f in flushes(stored, batch, partial(_index_state, conn)):
        reread = f.done < f.upto  # records of earlier appends in the tail
        older = conn.execute(*_range_query(f.chain, f.done, f.upto)).fetchall() if reread else []
        rows = index_rows([*map(StoredRecord._make, older), *f.mine])
        conn.executemany(_INSERT_INDEX, rows)
        conn.execute(_MOVE_STATE, (f.stop, f.chain, f.done))


def _index_state(conn: sqlite3.Connection, chain: str) -> object:
    row = conn.execute(_STATE, (chain,)).fetchone()
    return None if row is None else row[0]


def _reindex(conn: sqlite3.Connection, *, chain: str, lo: int, hi: int | None) -> int:
    """Inside a write transaction: rewrite the index rows of seqs ``lo <= seq < hi``."""
    if hi is None:
        conn.execute("DELETE FROM record_index WHERE chain = ? AND seq >= ?", (chain, lo))
    else:
        conn.execute(
            "DELETE FROM record_index WHERE chain = ? AND seq >= ? AND seq < ?", (chain, lo, hi)
        )
    rows = index_rows(map(StoredRecord._make, conn.execute(*_range_query(chain, lo, hi))))
    conn.executemany(_INSERT_INDEX, rows)
    return len(rows)


def _finish_index(conn: sqlite3.Connection, *, chain: str, lo: int) -> int:
    """Under the write lock: index what was appended since the rebuild began, drop rows past
    the chain's end and mark the chain complete."""
    written = _reindex(conn, chain=chain, lo=lo, hi=None)
    row = conn.execute(_LAST, (chain,)).fetchone()
    conn.execute(_SET_STATE, (chain, 0 if row is None else row[0] + 1))
    return written


def _drop_index_of_others(conn: sqlite3.Connection, *, chains: list[str]) -> int:
    """Forget index rows and states of chains that hold no record."""
    listed = orjson.dumps(chains).decode()
    conn.execute(
        "DELETE FROM record_index WHERE chain NOT IN (SELECT value FROM json_each(?))", (listed,)
    )
    conn.execute(
        "DELETE FROM index_state WHERE chain NOT IN (SELECT value FROM json_each(?))", (listed,)
    )
    return 0


def _read_node(conn: sqlite3.Connection, chain: str, level: int, index: int) -> bytes:
    if level == 0:
        row = conn.execute(_NODE_LEAF, (chain, index)).fetchone()
        return _frontier.checked_node(row and row[0], chain, level, index)
    row = conn.execute(_NODE, (chain, _frontier.last_leaf(level, index))).fetchone()
    return _frontier.subtree_node(row and row[0], chain, level, index)


def _rebuild(conn: sqlite3.Connection, chain: str, size: int) -> Frontier:
    """Recompute a chain's subtrees from its record hashes and store them."""
    rows = conn.execute(_HASHES_FROM, (chain, 0))
    rebuilt, subtrees = _frontier.rebuild(chain, size, (h for (h,) in rows))
    conn.executemany(_INSERT_SUBTREE, subtrees)
    return rebuilt


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _range_query(chain: str, start: int, stop: int | None) -> tuple[str, tuple[object, ...]]:
    if stop is None:
        return (
            "SELECT chain, seq, hash, body FROM records WHERE chain = ? AND seq >= ? ORDER BY seq",
            (chain, start),
        )
    return (
        "SELECT chain, seq, hash, body FROM records WHERE chain = ? AND seq >= ? AND seq < ? "
        "ORDER BY seq",
        (chain, start, stop),
    )
