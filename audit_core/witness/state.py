"""A witness's durable memory: per log origin, the latest checkpoint it cosigned, and the
refused requests that showed a log's misbehaviour (a bad proof, a fork), as evidence.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "w" / "state.db"
>>> with WitnessState.open(path) as state:
...     state.check_and_update("example.com/log", lambda latest: None, 3, bytes(32), "n", now=7)
...     state.latest("example.com/log").size
7
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
import hashlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from audit_core.errors import ConfigError, WitnessError

__all__ = [
    "APPLICATION_ID",
    "MAX_REFUSED_BYTES",
    "SCHEMA_VERSION",
    "Counts",
    "LatestCheckpoint",
    "Refusal",
    "WitnessState",
]

#: ``PRAGMA application_id`` of a witness state file ("WAwS"): a ledger or any other SQLite
#: file given as ``--state`` is refused instead of having witness tables added to it.
APPLICATION_ID = 0x57417753
SCHEMA_VERSION = 1
#: Evidence kept at most (bytes of notes): only real misbehaviour is kept (a bad proof, a
#: fork at the cosigned size), once per checkpoint, but a log could sign any number of them.
MAX_REFUSED_BYTES = 64 * 1024 * 1024

_SCHEMA = f"""
CREATE TABLE latest (
    origin   TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    root     BLOB NOT NULL,
    note     TEXT NOT NULL,
    updated  TEXT NOT NULL,
    cosigned INTEGER NOT NULL
);
CREATE TABLE refused (
    id       INTEGER PRIMARY KEY,
    origin   TEXT NOT NULL,
    status   INTEGER NOT NULL,
    old_size INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    root     BLOB NOT NULL,
    note     TEXT NOT NULL,
    note_sha256 BLOB NOT NULL,
    reason   TEXT NOT NULL,
    created  TEXT NOT NULL,
    UNIQUE (origin, size, root)
);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass(frozen=True, slots=True)
class LatestCheckpoint:
    """The latest checkpoint cosigned for ``origin`` (the signed note as received), and the
    timestamp of the latest cosignature made for it (later ones never go back)."""

    origin: str
    size: int
    root: bytes
    note: str
    updated: str
    cosigned: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request that showed log misbehaviour (a bad proof, a fork), its checkpoint
    carrying a valid signature of a trusted log key."""

    origin: str
    status: int
    old_size: int
    note: str
    reason: str
    created: str


@dataclass(frozen=True, slots=True)
class Counts:
    """How many origins and kept refusals a state holds, and the refusals' note bytes."""

    origins: int
    refused: int
    refused_bytes: int


def _latest_of(row: tuple[object, ...]) -> LatestCheckpoint:
    """A ``latest`` row, its types checked: a hand-edited or damaged file is said, never a
    traceback (or a comparison of a size with text)."""
    origin, size, root, note, updated, cosigned = row
    if not (
        isinstance(origin, str)
        and type(size) is int
        and size >= 0
        and isinstance(root, bytes)
        and len(root) == 32
        and isinstance(note, str)
        and isinstance(updated, str)
        and type(cosigned) is int
        and cosigned >= 0
    ):
        raise WitnessError(
            f"witness state: a malformed row for origin {str(origin)[:80]!r}", status=503
        )
    return LatestCheckpoint(origin, size, root, note, updated, cosigned)


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


def _check_kind(conn: sqlite3.Connection, path: Path) -> bool:
    """True when ``conn`` is a witness state; False when it is an empty file (to create);
    :class:`ConfigError` for any other SQLite file (a ledger, another schema)."""
    (app,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if app == APPLICATION_ID:
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"{path}: witness state version {version}; this workflow-audit reads "
                f"version {SCHEMA_VERSION}"
            )
        return True
    (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    if app == 0 and version == 0 and tables == 0:
        return False
    raise ConfigError(
        f"{path} is not a witness state file (another SQLite database: a ledger?); give "
        "`--state` a file of its own (created when missing)"
    )


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
        """Open (or, with ``create``, create) the state file for writing, after a write probe
        (a read-only or immutable file is said at start, not as a 503 on every request);
        :class:`ConfigError` when it cannot be, or is not a witness state."""
        path = Path(path).expanduser()
        if not create and not path.is_file():
            raise ConfigError(f"no witness state at {path}")
        conn: sqlite3.Connection | None = None
        try:
            _create_private(path)
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("BEGIN IMMEDIATE")  # the write probe; and one creator at a time
            try:
                if not _check_kind(conn, path):
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.execute("COMMIT")  # the file is a witness state now
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error, ConfigError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cannot open the witness state {path} for writing: {exc}") from exc
        return cls(conn, path)

    @classmethod
    def open_readonly(cls, path: Path | str) -> WitnessState:
        """Open an existing state file read-only (``witness status``): nothing is created or
        changed, a file that is not a witness state is refused (:class:`ConfigError`)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"no witness state at {path}")
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
        if not os.access(path.parent, os.W_OK):
            # a WAL file needs its -shm beside it to be read; where none can be made (a
            # read-only file system) no writer can be at work either: read it as immutable
            uri += "&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the witness state {path}: {exc}") from exc
        try:
            if not _check_kind(conn, path):
                raise ConfigError(f"{path} is empty: not a witness state")
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(f"cannot read the witness state {path}: {exc}") from exc
        except ConfigError:
            conn.close()
            raise
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
        with self._lock, _failing("cannot read"):
            return self._latest(origin)

    def _latest(self, origin: str) -> LatestCheckpoint | None:
        row = self._conn.execute(
            "SELECT origin, size, root, note, updated, cosigned FROM latest WHERE origin = ?",
            (origin,),
        ).fetchone()
        return None if row is None else _latest_of(row)

    def origins(self) -> list[LatestCheckpoint]:
        """Every origin's latest cosigned checkpoint, by origin."""
        with self._lock, _failing("cannot read"):
            rows = self._conn.execute(
                "SELECT origin, size, root, note, updated, cosigned FROM latest ORDER BY origin"
            ).fetchall()
        return [_latest_of(row) for row in rows]

    def counts(self) -> Counts:
        """Origins and refusals kept, counted by SQLite (no note is loaded)."""
        with self._lock, _failing("cannot read"):
            (origins,) = self._conn.execute("SELECT count(*) FROM latest").fetchone()
            refused, size = self._conn.execute(
                "SELECT count(*), coalesce(sum(length(CAST(note AS BLOB))), 0) FROM refused"
            ).fetchone()
        return Counts(int(origins), int(refused), int(size))

    def check_and_update(
        self,
        origin: str,
        check: Callable[[LatestCheckpoint | None], None],
        size: int,
        root: bytes,
        note: str,
        *,
        now: int = 0,
    ) -> int:
        """Atomically: ``check(latest)`` (raises to refuse: nothing is written), then store
        ``(size, root, note)`` as ``origin``'s latest, committed (fsync'd) on return.

        Returns the cosignature timestamp to use: ``max(now, the origin's last one)``, stored
        with the row, so an origin's cosignatures never go back in time when the clock does
        (a verifier takes the newest cosignature as the witness's latest view)."""
        with self._lock, _failing("cosigned checkpoint not stored"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            checked = False
            try:
                latest = self._latest(origin)
                check(latest)
                timestamp = max(now, 0 if latest is None else latest.cosigned)
                conn.execute(
                    "INSERT INTO latest (origin, size, root, note, updated, cosigned) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
                    "size = excluded.size, root = excluded.root, note = excluded.note, "
                    "updated = excluded.updated, cosigned = excluded.cosigned",
                    (origin, size, root, note, _now(), timestamp),
                )
                checked = True
            finally:  # a refusal (or any failure) writes nothing
                conn.execute("COMMIT" if checked else "ROLLBACK")
        return timestamp

    def refuse(
        self,
        origin: str,
        status: int,
        old_size: int,
        size: int,
        root: bytes,
        note: str,
        reason: str,
    ) -> bool:
        """Keep a refused request as evidence, once per checkpoint ``(origin, size, root)``;
        False when it is kept already or the evidence reached :data:`MAX_REFUSED_BYTES`."""
        digest = hashlib.sha256(note.encode()).digest()
        with self._lock, _failing("refusal not kept"):
            (stored,) = self._conn.execute(
                "SELECT coalesce(sum(length(CAST(note AS BLOB))), 0) FROM refused"
            ).fetchone()
            if stored + len(note.encode()) > MAX_REFUSED_BYTES:
                return False
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO refused (origin, status, old_size, size, root, note, "
                "note_sha256, reason, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (origin, status, old_size, size, root, note, digest, reason, _now()),
            )
            return cur.rowcount == 1

    def refusals(self) -> list[Refusal]:
        """The refused requests kept, oldest first."""
        with self._lock, _failing("cannot read"):
            rows = self._conn.execute(
                "SELECT origin, status, old_size, note, reason, created FROM refused ORDER BY id"
            ).fetchall()
        return [Refusal(*row) for row in rows]
