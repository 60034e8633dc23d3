"""The spool: records that cannot reach the ledger wait here, durable, until they can.

>>> import tempfile
>>> from audit_core import AuditConfig
>>> d = Path(tempfile.mkdtemp())
>>> config = AuditConfig(ledger_url=f"sqlite:///{d}/ledger.db")
>>> spool_dir(config) == d / "ledger.db.spool"
True
>>> backlog(spool_dir(config))
SpoolBacklog(files=0, records=0, oldest_ts=None, corrupt=0)

When a hook's write cannot reach the ledger (locked past the lock wait, read-only, disk full,
PostgreSQL down), the adapters (:mod:`audit_core.hooks`) append its records here instead of
losing them, and :func:`drain` later appends them to their chains, in their original order and
with their original ``ts``. ``workflow-audit spool drain`` does it by hand; the next process
that writes the ledger through an adapter does it on its own (once, when it starts, and each
time its breaker closes: never per record).

Three rooms: this module (where, what waits, the adapters' :class:`TrailSpool`), the file
format and its writer (:mod:`audit_core._spoolfile`), and the drain (:mod:`audit_core._drain`).

Layout (docs/FORMAT.md "Spool"):

- one directory per ledger, :func:`spool_dir`; each process appends to its own file
  ``<ledger key>.<host>.<pid>.<random>.<n>.spool``, which it holds under an exclusive
  ``flock`` while it may still write to it (a drainer skips files held by a live process);
- one line per record: the RFC 8785 bytes of ``{"v": 1, "id", "origin", "n", "ledger",
  "chain", "event", "ts", "head", "tail", "sum"}`` and ``\\n``, where ``head``/``tail`` are
  the record's prepared canonical bytes (redacted before they are spooled: no secret reaches
  the spool either) and ``sum`` the SHA-256 of the line's other members; plus ``key``, the
  record's idempotency key, when it has one (the drain appends with it, so a record whose
  key reached the chain meanwhile is skipped, and counted as drained). Every write is
  ``fsync``'d (and the directory, when a file is created) before the hook returns;
- the record itself carries ``data._spool = {"id": …, "at": …}``: the spool id and when it
  was spooled, so the chain shows which records came late and why their ``ts`` is older than
  their neighbours'. ``_spool`` is a reserved key of ``data``.

Order: a process's records are appended in the order it spooled them (its counter ``n``,
across its files); the runs of different processes are merged by ``ts``. A file still held
by a live process is not drained, and neither is a file with records at or after the oldest
``ts`` such a file holds: they wait for that process (its breaker drains everything, in
order, when it closes; at its exit its file is released), so records never overtake older
ones of another process. Locks are ``flock``s on open files, which a forked child would
share: every descriptor that carries one is closed in a child at fork (a LocalExecutor worker
would otherwise hold its parent's locks for the whole run).

A line that does not parse, whose ``sum`` does not match, or the unterminated last line of a
file a crash tore, is corrupt: it is logged with its file and line, counted
(``spool_corrupt_lines``), moved to ``quarantine/`` when its file is drained (never deleted),
and makes ``workflow-audit spool drain`` exit 2.

Why draining neither loses nor duplicates (``kill -9`` at any instant):

1. Drainers of one directory take turns (``flock`` on ``.drain.lock``).
2. Before its first append a drainer writes a journal (``.drain.<ledger key>.journal``,
   written to a temporary file, ``fsync``'d, renamed, directory ``fsync``'d) holding, for each
   chain it is about to append to, the chain's size *before* the drain (kept from an older
   journal if one is left over: the smaller bound wins).
3. It appends, one transaction per batch, each record carrying its unique spool id.
4. Only after every append committed does it move corrupt lines to ``quarantine/``, unlink
   the drained files, ``fsync`` the directory and remove the journal.

A drainer that finds a journal left by a crash reads the records appended since the sizes it
holds and skips every spool id already there. So a crash before a commit leaves the record in
the spool (appended next time), a crash after it leaves its id on the chain (skipped next
time), and a crash after the unlink leaves nothing to do. Lines are never rewritten in place,
only whole files are unlinked, so a drain never tears a line either.

A background write that timed out is decided once: it lands, or its writer gets a ledger
error and spools it, never both (:mod:`audit_core.hooks`). The one undecidable case is a write
still inside the ledger call when the interpreter exits: it is spooled with its unmarked
bytes (``uncertain``); should the write still land, the writer appends a ``landed`` line
for its id, and the drainer, for an uncertain record, also looks for those unmarked bytes
among the chain's recent records (bounded by ``ts``) before appending it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from audit_core._drain import DrainResult, drain
from audit_core._metrics import COUNTERS
from audit_core._normalize import now_timestamp
from audit_core._record import PreparedRecord
from audit_core._spoolfile import (
    QUARANTINE,
    SPOOL_KEY,
    FileWriter,
    SpooledRecord,
    mark,
    new_id,
    read_spool_file,
    spool_files,
)
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError
from audit_core.ledgers import ledger_path

__all__ = [
    "SPOOL_KEY",
    "DrainResult",
    "SpoolBacklog",
    "SpoolWriter",
    "SpooledRecord",
    "TrailSpool",
    "backlog",
    "drain",
    "ledger_key",
    "mark",
    "new_id",
    "pending_files",
    "spool_dir",
    "spool_dirs",
]


# -- where ----------------------------------------------------------------------------------


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def spool_dir(config: AuditConfig) -> Path:
    """The spool directory of ``config``'s ledger: ``config.spool_dir``
    (``WORKFLOW_AUDIT_SPOOL_DIR``), else ``<ledger file>.spool`` beside a SQLite ledger, else
    ``$XDG_DATA_HOME/workflow-audit/spool`` (PostgreSQL, in-memory)."""
    if config.spool_dir:
        return Path(config.spool_dir).expanduser()
    try:
        path = ledger_path(config.ledger_url)
    except ConfigError:  # not a file ledger
        path = None
    if path is not None:
        return path.with_name(path.name + ".spool")
    return _data_home() / "workflow-audit" / "spool"


def spool_dirs(config: AuditConfig) -> list[Path]:
    """Where records of ``config``'s ledger may be spooled, in the order a writer tries them:
    :func:`spool_dir`, then (unless one is configured) the user data directory, used when the
    directory beside the ledger cannot be written (a read-only ledger directory)."""
    first = spool_dir(config)
    if config.spool_dir:
        return [first]
    fallback = _data_home() / "workflow-audit" / "spool"
    return [first] if fallback == first else [first, fallback]


def ledger_key(url: str) -> str:
    """16 hex digits naming a ledger in spool file names: the SHA-256 of its absolute path
    (SQLite) or of its URL without the password (PostgreSQL)."""
    try:
        path = ledger_path(url)
        ident = ":memory:" if path is None else "sqlite:" + str(path.resolve())
    except ConfigError:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        host = (user + "@" if user else "") + netloc[2]
        ident = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# -- the backlog ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpoolBacklog:
    """What waits in a spool directory: files, records, the oldest record's ``ts``, and the
    corrupt lines (in spool files and in ``quarantine/``) that need an operator."""

    files: int
    records: int
    oldest_ts: str | None
    corrupt: int


def backlog(directory: Path) -> SpoolBacklog:
    """Count what waits in ``directory`` (every ledger's files; nothing is changed)."""
    files = records = corrupt = 0
    oldest: str | None = None
    for path in spool_files(directory, None):
        files += 1
        contents = read_spool_file(path)
        live = [r for r in contents.records if r.id not in contents.landed]
        records += len(live)
        corrupt += len(contents.corrupt)
        for rec in live:
            if oldest is None or rec.ts < oldest:
                oldest = rec.ts
    quarantine = directory / QUARANTINE
    with contextlib.suppress(OSError):
        for path in sorted(quarantine.iterdir()):
            with contextlib.suppress(OSError):
                corrupt += path.read_bytes().count(b"\n")
    return SpoolBacklog(files=files, records=records, oldest_ts=oldest, corrupt=corrupt)


def pending_files(config: AuditConfig) -> list[Path]:
    """Spool files of ``config``'s ledger in any of its :func:`spool_dirs` (one directory
    listing each: what the next writer checks once, not per record)."""
    key = ledger_key(config.ledger_url)
    return [p for d in spool_dirs(config) for p in spool_files(d, key)]


class SpoolWriter(FileWriter):
    """Appends records of ``config``'s ledger to this process's spool file in the first of
    :func:`spool_dirs` it can write, durably (see :class:`audit_core._spoolfile.FileWriter`)."""

    def __init__(self, config: AuditConfig) -> None:
        super().__init__(spool_dirs(config), ledger_key(config.ledger_url))


# -- the adapters' spool --------------------------------------------------------------------


class TrailSpool:
    """The :class:`~audit_core.hooks.Spill` of an adapter: spools events the way its trail
    would record them (normalized, redacted, marked), and drains the spool into its ledger.

    ``trail`` is called on first use (the adapters build their trail lazily).
    """

    def __init__(self, trail: Callable[[], Any]) -> None:
        self._trail = trail
        self._writer: SpoolWriter | None = None
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def writer(self) -> SpoolWriter:
        with self._lock:
            if self._writer is None:
                self._writer = SpoolWriter(self._trail().config)
            return self._writer

    def spill(
        self, events: Sequence[Any], *, uncertain: bool = False, order: int | None = None
    ) -> list[str]:
        """Spool ``events`` (each with ``ts`` and ``chain`` already set); their ids. ``order``:
        the batch's number in the caller's order (:meth:`FileWriter.append`)."""
        trail = self._trail()
        at = now_timestamp()
        ids: list[str] = []
        marked: list[PreparedRecord] = []
        unmarked: list[PreparedRecord] = []
        for event in events:
            rid = new_id()
            ids.append(rid)
            if event.ts is None:  # the adapters set it; a record keeps its original time
                event = replace(event, ts=at)
            # The marker joins the data after normalization: a digest that replaces data over
            # MAX_DATA_BYTES, or a processor, must not remove it (the drain checks it).
            marked.append(trail.prepare(event, marker={SPOOL_KEY: {"id": rid, "at": at}}))
            if uncertain:
                unmarked.append(trail.prepare(event))
        self.writer.append(ids, marked, unmarked=unmarked if uncertain else None, order=order)
        COUNTERS.incr("records_spooled", len(ids))
        return ids

    def landed(self, ids: Sequence[str]) -> None:
        for rid in ids:
            self.writer.landed(rid)

    def recover(self) -> bool:
        """Seal this process's spool file and drain every spool directory of the ledger
        (after any other drainer of it: from the writer thread, never a hook's); True when
        the ledger took everything, :class:`~audit_core.errors.LedgerError` otherwise."""
        trail = self._trail()
        self.writer.seal()
        for directory in spool_dirs(trail.config):
            drain(trail.ledger, directory, self.writer.key, wait=True)
        # Our own sealed files may wait behind an older file of a live process: until they
        # are on the chain, our new records must not be (they would overtake them).
        origin = "." + self.writer.origin + "."
        return not any(origin in p.name for p in pending_files(trail.config))

    def has_backlog(self) -> bool:
        return bool(pending_files(self._trail().config))

    @property
    def unsealed(self) -> int:
        return 0 if self._writer is None else self._writer.unsealed

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
