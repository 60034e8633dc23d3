"""One SQLite file of secrets (the key store, the privacy store), one connection per process.

Created mode 0600 before SQLite opens it (its -wal and -shm then get the same mode); WAL,
``secure_delete`` (deleted rows are overwritten with zeros, so an erasure leaves no copy in
free pages); the schema made in one transaction (concurrent first writers do not race).
Read-only opens are the ledger's (``audit_core.ledgers.sqlite.connect_read_only``): an auditor
without write access to the file or its directory reads it, and never creates a ``-shm``.
A connection inherited through ``fork()`` is kept referenced and never used or closed
(sqlite.org/howtocorrupt.html §2.6): a child opens its own.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from audit_core.errors import LedgerError, PrivacyError
from audit_core.ledgers.sqlite import connect_read_only

__all__ = ["PrivateFile"]


class PrivateFile:
    """The file and this process's connection to it; the caller holds its own lock."""

    def __init__(
        self,
        path: Path,
        *,
        what: str,
        schema: str,
        probe: str,
        synchronous: str,
        read_only: bool,
        check: Callable[[Path], None],
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path, self.what, self.read_only = path, what, read_only
        self._schema, self._probe, self._synchronous = schema, probe, synchronous
        self._check = check  # the mode check: refuse (keys) or warn (openings)
        self._timeout = busy_timeout_s  # a hook's trail waits 1 s for a lock, not 30
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._abandoned: list[sqlite3.Connection] = []

    def connection(self) -> tuple[sqlite3.Connection, bool]:
        """This process's connection, and whether it was opened just now."""
        pid = os.getpid()
        if self._conn is not None and self._pid == pid:
            return self._conn, False
        if self._conn is not None:
            self._abandoned.append(self._conn)
        self._conn = None
        self._conn = self._connect()
        self._pid = pid
        return self._conn, True

    def close(self) -> None:
        """Close this process's connection (never an inherited one); idempotent."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        try:
            if path.is_dir():
                raise PrivacyError(f"{self.what} {path} is a directory, not a file")
            if self.read_only:
                if not path.is_file():
                    raise PrivacyError(f"no {self.what} at {path}")
                self._check(path)
                # As a read-only ledger is opened: no write access to the file or its
                # directory needed, no -shm created that would lock out the writers.
                try:
                    conn = connect_read_only(path, timeout_s=self._timeout)
                except LedgerError as exc:
                    raise PrivacyError(f"cannot open {self.what} {path} read-only: {exc}") from None
                conn.execute("PRAGMA query_only=1")
                conn.execute(self._probe).fetchone()
                return conn
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._check(path)
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=self._timeout
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA secure_delete=ON")
            try:
                conn.executescript(f"BEGIN IMMEDIATE;{self._schema}COMMIT;")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return conn
        except sqlite3.Error as exc:
            raise PrivacyError(f"cannot open {self.what} {path}: {exc}") from exc
        except OSError as exc:
            raise PrivacyError(f"cannot open {self.what} {path}: {exc.strerror}") from exc
