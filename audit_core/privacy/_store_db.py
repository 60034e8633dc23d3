"""The privacy store's connections: one SQLite file or one PostgreSQL database, a transaction
at a time per process (:mod:`audit_core.privacy.store` holds what the store means).

Both are thread-safe (a lock around the process's one connection) and fork-safe (a child
opens its own; the parent's is kept referenced, never used or closed, in the child:
sqlite.org/howtocorrupt.html §2.6, and closing a PostgreSQL connection would end the
parent's session). Every driver error becomes a :class:`~audit_core.errors.PrivacyError`
whose message names no bound value (PostgreSQL's DETAIL, which may quote one, is dropped).

>>> import tempfile, pathlib
>>> from audit_core.privacy._store_sql import dialect
>>> db = SqliteBackend(pathlib.Path(tempfile.mkdtemp(), "p.db"), dialect("sqlite").schema,
...                    "NORMAL", read_only=False)
>>> db.open()
>>> with db.transaction(write=False) as tx:
...     tx.rows("SELECT count(*) FROM subjects")
[(0,)]
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from audit_core._forklock import renew_after_fork
from audit_core.errors import ConfigError, PrivacyError
from audit_core.ledgers import check_url_password, masked_error, masked_url
from audit_core.privacy._sqlite import PrivateFile

if TYPE_CHECKING:
    from typing import TypeAlias

    import psycopg

    _Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]

__all__ = ["Backend", "PostgresBackend", "SqliteBackend", "Tx"]

logger = logging.getLogger("workflow_audit")

# any constant: the advisory lock that makes concurrent first opens create the schema once
_SCHEMA_LOCK = 0x77615F7076  # "wa_pv"


class Tx(Protocol):
    """Statements inside one transaction."""

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]: ...

    def change(self, sql: str, args: tuple[object, ...] = ()) -> int: ...

    def change_many(self, sql: str, rows: list[tuple[object, ...]]) -> None: ...


class Backend(Protocol):
    """One database, one connection per process."""

    def open(self) -> None: ...

    def transaction(self, *, write: bool, durable: bool = False) -> AbstractContextManager[Tx]:
        """One transaction; ``durable``: committed as ``synchronous=FULL`` whatever the
        store's level (an erasure's steps must survive a power failure)."""
        ...

    def compact(self) -> None: ...

    def close(self) -> None: ...


# -- SQLite ----------------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection, where: Path) -> None:
        self._conn = conn
        self._where = where

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise PrivacyError(f"cannot read privacy store {self._where}: {exc}") from exc

    def change(self, sql: str, args: tuple[object, ...] = ()) -> int:
        try:
            return self._conn.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            raise PrivacyError(f"cannot write privacy store {self._where}: {exc}") from exc

    def change_many(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise PrivacyError(f"cannot write privacy store {self._where}: {exc}") from exc


def _warn_if_shared(path: Path) -> None:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        logger.warning("workflow-audit: privacy store %s is readable by others; chmod 600 it", path)


class SqliteBackend:
    """A privacy store in one SQLite file (WAL, ``secure_delete``, mode 0600)."""

    def __init__(
        self,
        path: Path,
        schema: str,
        synchronous: str,
        read_only: bool,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = path
        self._schema = schema
        self._synchronous = synchronous
        self._read_only = read_only
        self._lock = threading.Lock()
        renew_after_fork(self)
        self._file = PrivateFile(
            path,
            what="privacy store",
            schema=schema,
            probe="SELECT count(*) FROM subjects",
            synchronous=synchronous,
            read_only=read_only,
            check=_warn_if_shared,
            busy_timeout_s=busy_timeout_s,
        )

    def _connection(self) -> sqlite3.Connection:
        return self._file.connection()[0]

    def open(self) -> None:
        with self._lock:
            self._connection()

    @contextmanager
    def transaction(self, *, write: bool, durable: bool = False) -> Iterator[Tx]:
        """One transaction: BEGIN IMMEDIATE (the write lock, waited for) or a deferred
        BEGIN (one snapshot); committed at the end, rolled back on an error. ``durable``:
        ``synchronous=FULL`` for this one (a pragma cannot change inside a transaction)."""
        raise_level = durable and self._synchronous in ("OFF", "NORMAL")
        with self._lock:
            conn = self._connection()
            try:
                if raise_level:
                    conn.execute("PRAGMA synchronous=FULL")
                try:
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    committed = False
                    try:
                        yield _SqliteTx(conn, self.path)
                        conn.execute("COMMIT")
                        committed = True
                    finally:
                        if not committed and conn.in_transaction:
                            conn.execute("ROLLBACK")
                finally:
                    if raise_level:
                        conn.execute(f"PRAGMA synchronous={self._synchronous}")
            except sqlite3.Error as exc:
                raise PrivacyError(f"cannot use privacy store {self.path}: {exc}") from exc

    def compact(self) -> None:
        """Checkpoint and truncate the write-ahead log: with ``secure_delete`` the main file
        then holds deleted rows as zeros, and the log holds nothing."""
        with self._lock:
            try:
                busy = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                raise PrivacyError(f"cannot compact privacy store {self.path}: {exc}") from exc
        if busy:
            raise PrivacyError(
                f"a reader of privacy store {self.path} kept its write-ahead log from being "
                "truncated, which may still hold erased rows: run the erasure again when the "
                "reader is done"
            )

    def close(self) -> None:
        with self._lock:
            self._file.close()


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_error(what: str, url: str, exc: Exception) -> NoReturn:
    """Raise PrivacyError for a psycopg error: its primary message and SQLSTATE only (the
    DETAIL of a constraint violation quotes the row's values), else the masked text."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        why = f"{primary} (SQLSTATE {getattr(diag, 'sqlstate', None)})"
    else:
        why = masked_error(str(exc), url)
    raise PrivacyError(f"cannot {what} privacy store {masked_url(url)}: {why}") from None


class _PgTx:
    def __init__(self, conn: _Conn, url: str) -> None:
        self._conn = conn
        self._url = url

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            return self._conn.execute(sql, args).fetchall()
        except psycopg.Error as exc:
            _pg_error("read", self._url, exc)

    def change(self, sql: str, args: tuple[object, ...] = ()) -> int:
        import psycopg

        try:
            return self._conn.execute(sql, args).rowcount
        except psycopg.Error as exc:
            _pg_error("write", self._url, exc)

    def change_many(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        import psycopg

        try:
            self._conn.cursor().executemany(sql, rows)
        except psycopg.Error as exc:
            _pg_error("write", self._url, exc)


class PostgresBackend:
    """A privacy store in a PostgreSQL database (tables ``wa_privacy_*``)."""

    def __init__(self, url: str, schema: str, synchronous: str, read_only: bool) -> None:
        try:
            import psycopg  # noqa: F401 - fail early and clearly
        except ImportError as exc:
            raise PrivacyError(
                "a postgresql:// privacy store needs psycopg 3: "
                "pip install 'workflow-audit[postgres]'"
            ) from exc
        try:
            check_url_password(url)
        except ConfigError as exc:  # its message masks the password
            raise PrivacyError(str(exc)) from None
        self.url = url
        self._schema = schema
        self._synchronous = synchronous
        self._read_only = read_only
        self._lock = threading.Lock()
        renew_after_fork(self)
        self._conn: _Conn | None = None
        self._pid = -1
        self._abandoned: list[_Conn] = []

    def _connect(self) -> _Conn:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            _pg_error("connect to", self.url, exc)
        ready = False
        try:
            if self._read_only:
                conn.execute("SET default_transaction_read_only = on")
                found = conn.execute("SELECT to_regclass('wa_privacy_subjects')").fetchone()
                if found is None or found[0] is None:
                    raise PrivacyError(f"no privacy store in {masked_url(self.url)}")
            else:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(self._schema)
            if self._synchronous == "NORMAL":
                conn.execute("SET synchronous_commit = off")
            else:
                current = conn.execute("SHOW synchronous_commit").fetchone()
                if current is not None and current[0] in ("off", "local"):
                    conn.execute("SET synchronous_commit = on")
            ready = True
        except psycopg.Error as exc:
            _pg_error("open", self.url, exc)
        finally:
            if not ready:
                conn.close()
        return conn

    def _connection(self) -> _Conn:
        pid = os.getpid()
        conn = self._conn
        if conn is None or self._pid != pid or conn.closed or conn.broken:
            if conn is not None and self._pid != pid:
                self._abandoned.append(conn)
            self._conn = None
            conn = self._conn = self._connect()
            self._pid = pid
        return conn

    def open(self) -> None:
        with self._lock:
            self._connection()

    @contextmanager
    def transaction(self, *, write: bool, durable: bool = False) -> Iterator[Tx]:
        """One READ COMMITTED transaction (read only when not ``write``); ``durable``:
        ``synchronous_commit`` back on for it when the store runs with it off."""
        import psycopg

        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    if not write:
                        conn.execute("SET TRANSACTION READ ONLY")
                    elif durable and self._synchronous == "NORMAL":
                        conn.execute("SET LOCAL synchronous_commit = on")
                    yield _PgTx(conn, self.url)
            except psycopg.Error as exc:
                _pg_error("write" if write else "read", self.url, exc)

    def compact(self) -> None:
        """VACUUM the two tables that held the erased rows (outside a transaction): their
        space is freed for reuse."""
        import psycopg

        with self._lock:
            try:
                self._connection().execute("VACUUM wa_privacy_openings, wa_privacy_subjects")
            except psycopg.Error as exc:
                _pg_error("compact", self.url, exc)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
