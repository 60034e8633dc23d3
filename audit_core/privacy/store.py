"""The erasable privacy store: data subjects' pseudonyms and the openings of commitments.

>>> import tempfile, os
>>> from audit_core.privacy.store import Opening, PrivacyStore
>>> store = PrivacyStore("sqlite:///" + os.path.join(tempfile.mkdtemp(), "privacy.db"))
>>> with store.writing() as w:
...     pseudonym, created = w.pseudonym("alice@example.com")
...     w.add(Opening(bytes(16), "/actor/id", "default", pseudonym, "commit", b"..."))
>>> created, store.pseudonym("alice@example.com") == pseudonym
(True, True)
>>> store.close()

What a chain holds in place of personal data is a commitment (:mod:`.commitment`); this store
holds what is needed to open one: which pseudonym (whose key) committed it, and the value
sealed under that key. It is never WORM and never shipped: erasure deletes from it
(docs/PRIVACY.md). Tables: ``subjects`` (pseudonym, identifier, created), ``openings``
(record nonce, pointer, chain, pseudonym, kind, sealed value) and ``erasures`` (the pending
and done erasures: pseudonym, key check value, counts, legal basis, reason, state).

URLs: ``sqlite:///PATH`` (or a plain path), ``postgresql://…`` (psycopg 3, as the ledger;
tables prefixed ``wa_privacy_``). The schema is made by the first writable open.

**Durability** (SQLite): WAL, ``synchronous`` as given (default ``NORMAL``). An opening lost
on power failure leaves a commitment on the chain that nobody can open, never a value in the
clear, so the cheaper level is the default; ``FULL`` keeps them. The two steps of an erasure
always commit as ``FULL`` (PostgreSQL: ``synchronous_commit=on``): an erasure lost after its
key was destroyed would leave the subject's pseudonym in use without a key.
``secure_delete=ON`` zeroes deleted rows, and :meth:`PrivacyStore.finish_erasure`
checkpoints and truncates the write-ahead log, so an erased identifier or value is in
neither file afterwards. The file is created mode 0600 (an existing one others may read is
used, with a warning). PostgreSQL: ``NORMAL`` sets ``synchronous_commit=off``; an erasure
ends with ``VACUUM`` of the two tables, which frees the dead rows for reuse; the server's
WAL, archives and backups keep them until they expire (say so in the records of
processing).

**Concurrency**: :meth:`PrivacyStore.writing` is one transaction (SQLite ``BEGIN
IMMEDIATE``, which waits for the one writer; PostgreSQL READ COMMITTED). A new subject is
``INSERT … ON CONFLICT DO NOTHING`` then ``SELECT``, so writers racing on one new identifier
all end with the one pseudonym that won; on PostgreSQL the ``SELECT … FOR SHARE`` also makes
an erasure wait for the writers of that subject in flight.

**Erasure** is two steps so that a crash between them is recoverable:
:meth:`~PrivacyStore.begin_erasure` (one transaction: count the subject's records and values,
delete the subject, so writers from then on get a new pseudonym, and note the erasure
``pending``), then the caller destroys the key, then :meth:`~PrivacyStore.finish_erasure`
(delete the openings, ``done``, compact). :meth:`~PrivacyStore.pending_erasures` lists what
a crash left half done.

No error names an identifier or a value: database errors are wrapped into
:class:`~audit_core.errors.PrivacyError` with the driver's message (SQLite's and
PostgreSQL's primary messages carry no bound values; PostgreSQL's DETAIL, which may, is
dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from audit_core.errors import ConfigError, PrivacyError, SubjectNotFound
from audit_core.ledgers import ledger_path, masked_url, synchronous_level
from audit_core.privacy._store_db import Backend, PostgresBackend, SqliteBackend, Tx
from audit_core.privacy._store_sql import Dialect, dialect
from audit_core.privacy.commitment import new_pseudonym

logger = logging.getLogger("workflow_audit")

__all__ = ["Erasure", "Opening", "PrivacyStore", "StoreWriter"]


@dataclass(frozen=True, slots=True)
class Opening:
    """What opens one committed (or sealed) field of one record."""

    nonce: bytes
    pointer: str
    chain: str
    pseudonym: str
    kind: Literal["commit", "sealed"]
    sealed: bytes | None  # None for kind "sealed": the value is on the chain

    def __repr__(self) -> str:  # the sealed bytes are no one's business in a log
        return f"Opening({self.chain!r}, {self.pointer!r}, {self.pseudonym!r}, {self.kind!r})"


@dataclass(frozen=True, slots=True)
class Erasure:
    """An erasure: whose key (pseudonym, key check value), how much it made unreadable
    (records and values, as counts), why, and whether it is done."""

    pseudonym: str
    kcv: str
    records: int
    values: int
    basis: str
    reason: str
    requested_at: str
    state: Literal["pending", "done"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _opening(row: tuple[Any, ...]) -> Opening:
    sealed = None if row[5] is None else bytes(row[5])
    return Opening(bytes(row[0]), row[1], row[2], row[3], row[4], sealed)


def _erasure(row: tuple[Any, ...]) -> Erasure:
    return Erasure(row[0], row[1], int(row[2]), int(row[3]), row[4], row[5], row[6], row[7])


class StoreWriter:
    """The writes of one :meth:`PrivacyStore.writing` transaction."""

    def __init__(self, tx: Tx, sql: Dialect, lock_subject: str) -> None:
        self._tx = tx
        self._sql = sql
        self._lock_subject = lock_subject
        self._known: dict[str, str] = {}  # identifier -> pseudonym, this transaction

    def pseudonym(self, identifier: str) -> tuple[str, bool]:
        """The subject's pseudonym, made now when it has none: ``(pseudonym, created)``."""
        if not isinstance(identifier, str) or not identifier:
            raise PrivacyError("a data subject identifier is a non-empty string")
        # A second try only on PostgreSQL, when an erasure deleted the subject while the
        # SELECT … FOR SHARE waited for it: the subject is then new again.
        if identifier in self._known:  # a record's fields often share their subject
            return self._known[identifier], False
        known = self._tx.rows(self._sql.pseudonym + self._lock_subject, (identifier,))
        if known:  # the common case: one read, no write
            self._known[identifier] = str(known[0][0])
            return self._known[identifier], False
        for _ in range(3):
            candidate = new_pseudonym()
            created = self._tx.change(self._sql.new_subject, (candidate, identifier, _now())) == 1
            rows = self._tx.rows(self._sql.pseudonym + self._lock_subject, (identifier,))
            if rows:
                pseudonym = self._known[identifier] = str(rows[0][0])
                return pseudonym, created and pseudonym == candidate
        raise PrivacyError("a data subject was erased again and again while being written")

    def add(self, opening: Opening) -> None:
        """Store one opening (a second one for the same nonce and pointer is an error)."""
        self.add_all([opening])

    def add_all(self, openings: list[Opening]) -> None:
        """Store a record's openings in one statement."""
        for o in openings:
            if o.kind not in ("commit", "sealed"):
                raise PrivacyError(f"an opening's kind is commit or sealed, not {o.kind!r}")
        rows: list[tuple[object, ...]] = [
            (o.nonce, o.pointer, o.chain, o.pseudonym, o.kind, o.sealed) for o in openings
        ]
        self._tx.change_many(self._sql.add_opening, rows)


class PrivacyStore:
    """The privacy store a URL names (see the module docstring).

    ``read_only=True``: an auditor's view; nothing is created (a missing store is a
    PrivacyError) and writes raise PrivacyError."""

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "NORMAL",
        read_only: bool = False,
        busy_timeout_s: float = 30.0,
    ) -> None:
        try:
            level = synchronous_level(synchronous)
        except ConfigError as exc:  # the message names the bad level only
            raise PrivacyError(str(exc)) from exc
        self.url = url
        self.read_only = read_only
        scheme = url.partition("://")[0].lower() if "://" in url else "sqlite"
        self._backend: Backend
        if scheme == "sqlite":
            path = ledger_path(url)
            if path is None:
                raise PrivacyError("the privacy store needs a file, not :memory:")
            self._sql = dialect("sqlite")
            self._lock_subject = self._lock_erased = ""
            self._backend = SqliteBackend(path, self._sql.schema, level, read_only, busy_timeout_s)
        elif scheme in ("postgresql", "postgres"):
            self._sql = dialect("postgresql")
            self._lock_subject, self._lock_erased = " FOR SHARE", " FOR UPDATE"
            self._backend = PostgresBackend(url, self._sql.schema, level, read_only)
        else:
            raise PrivacyError(
                f"unknown privacy store scheme {scheme!r} in {masked_url(url)!r}; expected "
                "sqlite:///PATH or postgresql://"
            )
        self._backend.open()

    def __repr__(self) -> str:
        return f"PrivacyStore({masked_url(self.url)!r})"

    def close(self) -> None:
        """Close this process's connection; idempotent."""
        self._backend.close()

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise PrivacyError(f"{self!r} is read-only: cannot {what}")

    # -- writing ---------------------------------------------------------------------------

    def writing(self) -> AbstractContextManager[StoreWriter]:
        """One write transaction: committed when the block ends, rolled back on an error."""
        self._writable("write")
        return self._writing()

    @contextmanager
    def _writing(self) -> Iterator[StoreWriter]:
        with self._backend.transaction(write=True) as tx:
            yield StoreWriter(tx, self._sql, self._lock_subject)

    def discard(self, nonces: list[bytes]) -> None:
        """Delete the openings of records that were never appended (their ledger write
        failed; a spool writes them again, with new nonces): no value is kept for nothing."""
        self._writable("discard openings")
        if nonces:
            with self._backend.transaction(write=True) as tx:
                tx.change_many(self._sql.discard, [(n,) for n in nonces])

    # -- reading ---------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._backend.transaction(write=False) as tx:
            return tx.rows(sql, args)

    def pseudonym(self, identifier: str) -> str | None:
        """The subject's pseudonym; None when it has none (never seen, or erased)."""
        rows = self._read(self._sql.pseudonym, (identifier,))
        return None if not rows else str(rows[0][0])

    def opening(self, nonce: bytes, pointer: str) -> Opening | None:
        """The opening of one field of one record (by its commitment nonce), or None."""
        rows = self._read(self._sql.opening, (nonce, pointer))
        return None if not rows else _opening(rows[0])

    def openings(self, pseudonym: str | None = None) -> Iterator[Opening]:
        """Every opening (of one subject), ordered by nonce and pointer, from one read."""
        if pseudonym is None:
            rows = self._read(self._sql.openings)
        else:
            rows = self._read(self._sql.openings_of, (pseudonym,))
        return map(_opening, rows)

    def erasures(self) -> list[Erasure]:
        """Every erasure, pending and done, oldest first."""
        return [_erasure(r) for r in self._read(self._sql.erasures)]

    def pending_erasures(self) -> list[Erasure]:
        """Erasures begun and not finished (a crash between the two steps)."""
        return [_erasure(r) for r in self._read(self._sql.pending)]

    def stats(self) -> dict[str, int]:
        """Counts: subjects, openings, erasures pending and done."""
        row = self._read(self._sql.stats)[0]
        names = ("subjects", "openings", "erasures_pending", "erasures_done")
        return {name: int(n) for name, n in zip(names, row, strict=True)}

    # -- erasure ---------------------------------------------------------------------------

    def begin_erasure(
        self, identifier: str, *, kcv: Callable[[str], str], basis: str, reason: str
    ) -> Erasure:
        """Step one, one transaction: find the subject (SubjectNotFound when none), count
        its records and values, delete the subject (so later writes get a new pseudonym)
        and note the erasure ``pending`` with ``kcv(pseudonym)``. The caller then destroys
        the key and calls :meth:`finish_erasure`."""
        self._writable("erase")
        with self._backend.transaction(write=True, durable=True) as tx:
            # FOR UPDATE (PostgreSQL): waits for the subject's writers in flight (FOR SHARE)
            rows = tx.rows(self._sql.pseudonym + self._lock_erased, (identifier,))
            if not rows:
                raise SubjectNotFound(
                    "no data subject by that identifier in the privacy store (never recorded, "
                    "or erased already)"
                )
            pseudonym = str(rows[0][0])
            records, values = tx.rows(self._sql.count_openings, (pseudonym,))[0]
            erasure = Erasure(
                pseudonym,
                kcv(pseudonym),
                int(records),
                int(values),
                basis,
                reason,
                _now(),
                "pending",
            )
            tx.change(self._sql.delete_subject, (pseudonym,))
            tx.change(
                self._sql.add_erasure,
                (
                    pseudonym,
                    erasure.kcv,
                    erasure.records,
                    erasure.values,
                    basis,
                    reason,
                    erasure.requested_at,
                ),
            )
        return erasure

    def finish_erasure(self, pseudonym: str) -> Erasure:
        """Step two (after the key is destroyed): delete the subject's openings, mark the
        erasure ``done`` and compact the store so no deleted byte stays in its files.
        Idempotent; PrivacyError when no erasure of ``pseudonym`` was begun."""
        self._writable("erase")
        with self._backend.transaction(write=True, durable=True) as tx:
            rows = tx.rows(self._sql.erasure, (pseudonym,))
            if not rows:
                raise PrivacyError(f"no erasure of {pseudonym} was begun")
            tx.change(self._sql.delete_openings, (pseudonym,))
            tx.change(self._sql.erasure_done, (pseudonym,))
        try:
            self._backend.compact()
        except PrivacyError as exc:  # the erasure is done; its bytes wait for the compaction
            logger.warning("workflow-audit: %s", exc)
        return _erasure(self._read(self._sql.erasure, (pseudonym,))[0])

    def compact(self) -> None:
        """Checkpoint and truncate the store's write-ahead log (SQLite) or VACUUM it
        (PostgreSQL), so no deleted byte stays in its files; PrivacyError when a reader kept
        it from finishing (try again when the reader is done: ``privacy erase --finish``)."""
        self._writable("compact")
        self._backend.compact()
