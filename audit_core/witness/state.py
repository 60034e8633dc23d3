"""A witness's durable memory: per log origin, the latest checkpoint it cosigned, and the
refused requests that carried a valid log signature (evidence of misbehaviour).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "w" / "state.db"
>>> with WitnessState.open(path) as state:
...     state.check_and_update("example.com/log", lambda latest: None, 3, bytes(32), "n")
...     state.latest("example.com/log").size
3

c2sp.org/tlog-witness, "add-checkpoint": the witness "MUST persist the new checkpoint before
responding", and checking the old size against the latest checkpoint and persisting the new
one "must be performed atomically", else request A (size N) and request B (size N+K) checked
side by side roll the stored size back by K leaves. :meth:`WitnessState.check_and_update`
runs the caller's check and the write in one ``BEGIN IMMEDIATE`` transaction (the write lock
of the file: other threads and other processes wait) and commits before it returns.

One SQLite file, created mode 0600 (its directory too, if missing), WAL with
``synchronous=FULL``: a commit is on disk when ``COMMIT`` returns, so ``kill -9`` after an
answer never loses the size that answer acknowledged.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from audit_core.errors import ConfigError, WitnessError

__all__ = ["MAX_REFUSED", "LatestCheckpoint", "Refusal", "WitnessState"]

#: Refused requests kept at most: anyone may replay a log's signed checkpoint with any old
#: size, so the evidence table is bounded (the same request is also kept once only).
MAX_REFUSED = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    origin  TEXT PRIMARY KEY,
    size    INTEGER NOT NULL,
    root    BLOB NOT NULL,
    note    TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    id       INTEGER PRIMARY KEY,
    origin   TEXT NOT NULL,
    status   INTEGER NOT NULL,
    old_size INTEGER NOT NULL,
    note     TEXT NOT NULL,
    reason   TEXT NOT NULL,
    created  TEXT NOT NULL,
    UNIQUE (origin, status, old_size, note)
);
"""


@dataclass(frozen=True, slots=True)
class LatestCheckpoint:
    """The latest checkpoint cosigned for ``origin`` (the signed note as received)."""

    origin: str
    size: int
    root: bytes
    note: str
    updated: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request whose checkpoint carried a valid signature of a trusted log key."""

    origin: str
    status: int
    old_size: int
    note: str
    reason: str
    created: str


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def _failing(what: str) -> Iterator[None]:
    """SQLite's errors (disk full, the file locked past the timeout) as a 503 WitnessError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise WitnessError(f"witness state: {what}: {exc}", status=503) from exc


def _create_private(path: Path) -> None:
    """Create ``path`` mode 0600 (whatever the umask) unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)
    os.close(fd)


class WitnessState:
    """The state file; thread-safe (one connection, one lock), and safe across processes
    sharing the file (SQLite's write lock, waited for up to ``busy_timeout_s``)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, path: Path | str, *, busy_timeout_s: float = 30.0, create: bool = True
    ) -> WitnessState:
        """Open (or, with ``create``, create) the state file; :class:`ConfigError` when it
        cannot be."""
        path = Path(path).expanduser()
        if not create and not path.is_file():
            raise ConfigError(f"no witness state at {path}")
        try:
            _create_private(path)
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the witness state {path}: {exc}") from exc
        return cls(conn, path)

    def __enter__(self) -> WitnessState:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def latest(self, origin: str) -> LatestCheckpoint | None:
        """The latest cosigned checkpoint of ``origin``, or None if it never cosigned one."""
        with self._lock:
            return self._latest(origin)

    def _latest(self, origin: str) -> LatestCheckpoint | None:
        row = self._conn.execute(
            "SELECT origin, size, root, note, updated FROM latest WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else LatestCheckpoint(*row)

    def origins(self) -> list[LatestCheckpoint]:
        """Every origin's latest cosigned checkpoint, by origin."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT origin, size, root, note, updated FROM latest ORDER BY origin"
            ).fetchall()
        return [LatestCheckpoint(*row) for row in rows]

    def check_and_update(
        self,
        origin: str,
        check: Callable[[LatestCheckpoint | None], None],
        size: int,
        root: bytes,
        note: str,
    ) -> None:
        """Atomically: ``check(latest)`` (raises to refuse: nothing is written), then store
        ``(size, root, note)`` as ``origin``'s latest, committed (fsync'd) on return."""
        with self._lock, _failing("cosigned checkpoint not stored"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            checked = False
            try:
                check(self._latest(origin))
                conn.execute(
                    "INSERT INTO latest (origin, size, root, note, updated) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
                    "size = excluded.size, root = excluded.root, note = excluded.note, "
                    "updated = excluded.updated",
                    (origin, size, root, note, _now()),
                )
                checked = True
            finally:  # a refusal (or any failure) writes nothing
                conn.execute("COMMIT" if checked else "ROLLBACK")

    def refuse(self, origin: str, status: int, old_size: int, note: str, reason: str) -> bool:
        """Keep a refused request as evidence; False when it is kept already or the table
        is full (:data:`MAX_REFUSED`)."""
        with self._lock, _failing("refusal not kept"):
            (count,) = self._conn.execute("SELECT count(*) FROM refused").fetchone()
            if count >= MAX_REFUSED:
                return False
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO refused (origin, status, old_size, note, reason, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (origin, status, old_size, note, reason, _now()),
            )
            return cur.rowcount == 1

    def refusals(self) -> list[Refusal]:
        """The refused requests kept, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT origin, status, old_size, note, reason, created FROM refused ORDER BY id"
            ).fetchall()
        return [Refusal(*row) for row in rows]
