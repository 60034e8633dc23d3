"""Ledgers hold the chains: append-only, durable, verifiable.

>>> from audit_core.ledgers import open_ledger
>>> ledger = open_ledger("sqlite:///:memory:")
>>> ledger.chains()
[]

A :class:`Ledger` is a :class:`typing.Protocol`: the embedded default is
:class:`~audit_core.ledgers.sqlite.SqliteLedger`; PostgreSQL (for many hosts) follows the same
protocol. A ledger assigns ``seq`` and ``prev`` inside its own transaction, so no two writers
can fork or gap a chain, and returns only once the record is durable.

Idempotency keys (docs/FORMAT.md "Idempotency keys"): a record with a ``key`` is appended
only if no record of its chain holds that key, checked and stored in the append's own
transaction, so racing writers cannot both append it. A skipped record is not returned.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from audit_core._record import (
    PreparedRecord,
    StoredCheckpoint,
    StoredCosignature,
    StoredRecord,
)
from audit_core.errors import ConfigError

__all__ = [
    "SYNCHRONOUS",
    "Ledger",
    "LedgerReader",
    "ledger_path",
    "masked_url",
    "open_ledger",
    "synchronous_level",
]

#: The ``synchronous`` settings a ledger accepts: SQLite's ``PRAGMA synchronous`` levels
#: (sqlite.org/pragma.html#pragma_synchronous); PostgreSQL maps them onto
#: ``synchronous_commit`` (``NORMAL``: off; the others: at least on).
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def synchronous_level(value: str) -> str:
    """``value`` upper-cased, if it is one of :data:`SYNCHRONOUS`; else ConfigError.

    >>> synchronous_level("normal")
    'NORMAL'
    >>> synchronous_level("sometimes")
    Traceback (most recent call last):
    ...
    audit_core.errors.ConfigError: synchronous must be OFF, NORMAL, FULL or EXTRA, not 'sometimes'
    """
    level = value.upper()
    if level not in SYNCHRONOUS:
        *first, last = SYNCHRONOUS
        raise ConfigError(f"synchronous must be {', '.join(first)} or {last}, not {value!r}")
    return level


@runtime_checkable
class LedgerReader(Protocol):
    """The reading half of a ledger. A :class:`Ledger` is one (each call sees the latest
    commits); so is what :meth:`snapshot` yields (every call sees one consistent state)."""

    def head(self, chain: str) -> StoredRecord | None:
        """The last record of ``chain``, or None when the chain is empty."""
        ...

    def read(
        self, chain: str, start: int = 0, stop: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        """Records ``start <= seq < stop`` of ``chain`` in stored order, streamed; ``close()``
        releases the read early."""
        ...

    def chains(self) -> list[str]:
        """The ids of every chain with at least one record, sorted."""
        ...

    def merkle_chains(self) -> list[str]:
        """The ids of every chain with stored Merkle subtrees or checkpoints, sorted. One
        missing from :meth:`chains` lost its records."""
        ...

    def tree_head(self, chain: str) -> tuple[int, bytes]:
        """``(size, root)`` of the chain's RFC 9162 Merkle tree, in O(log n)."""
        ...

    def node(self, chain: str, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)`` (level 0: a record's hash)."""
        ...

    def merkle_extent(self, chain: str) -> int:
        """How many records the chain's stored Merkle subtrees were made from, at least: one
        more than the seq of the last leaf that completed a subtree (0 when none is stored).
        More than the chain's size is evidence that records were removed."""
        ...

    def latest_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        """The chain's checkpoint of the largest tree, or None."""
        ...

    def checkpoints(self, chain: str) -> list[StoredCheckpoint]:
        """The chain's signed checkpoints, smallest tree first."""
        ...

    def cosignatures(self, chain: str) -> list[StoredCosignature]:
        """The witnesses' cosignatures of the chain's checkpoints, smallest size first
        ([] for a ledger made before cosignatures were stored)."""
        ...

    def cosigned_chains(self) -> list[str]:
        """The ids of every chain with stored cosignatures, sorted (a witnessed chain cut to
        no records and no Merkle state still has them)."""
        ...

    def get_cursor(self, name: str, chain: str) -> int:
        """The last seq a consumer (a sink) marked as done for ``chain``; -1 if none."""
        ...

    def cursor_names(self) -> list[str]:
        """The names of every consumer with a cursor in some chain, sorted."""
        ...

    def snapshot(self) -> AbstractContextManager[LedgerReader]:
        """A reader on which every call sees one consistent, read-only state of the ledger
        (SQLite: one read transaction; PostgreSQL: one REPEATABLE READ READ ONLY
        transaction), however much is appended meanwhile; released on exit. On a snapshot,
        the snapshot itself: checks that take one can be nested in a caller's."""
        ...


@runtime_checkable
class Ledger(LedgerReader, Protocol):
    """Where records live. Every method is safe to call from many threads and processes."""

    def append(self, record: PreparedRecord) -> StoredRecord:
        """Seal ``record`` as the next of its chain and return it once it is durable. When
        its key is already stored on its chain, nothing is appended and the record stored
        under the key is returned."""
        ...

    def append_many(self, records: Sequence[PreparedRecord]) -> list[StoredRecord]:
        """Append several records in one transaction (all or none), in the given order, and
        return those appended: a record whose key its chain already holds, or an earlier
        record of the batch holds, is skipped (a batch of duplicates appends nothing: [])."""
        ...

    def append_advancing(
        self,
        records: Sequence[PreparedRecord],
        *,
        cursor: str,
        chain: str,
        expect: int,
        to: int,
    ) -> list[StoredRecord]:
        """In one transaction: check that cursor ``(cursor, chain)`` holds ``expect`` (an
        absent cursor holds -1), append ``records`` (may be empty; duplicates skipped as by
        :meth:`append_many`, and the cursor moves even when all were) and set the cursor to
        ``to``; else raise :class:`~audit_core.errors.CursorMoved` and append nothing.

        A reader of an outside source that advances its own cursor this way records each
        source row exactly once, however many readers race: the loser of a race appends
        nothing. Source cursors are named ``source:<name>`` (not sinks)."""
        ...

    def keyed(self, chain: str, key: str) -> StoredRecord | None:
        """The record of ``chain`` stored under idempotency key ``key``, or None."""
        ...

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Store a signed checkpoint; False if one of that size is stored already."""
        ...

    def add_cosignature(self, cosignature: StoredCosignature) -> bool:
        """Store a witness's cosignature of a checkpoint of the chain; False when that very
        line is stored already (c2sp.org/tlog-witness answers are stored as received)."""
        ...

    def set_cursor(self, name: str, chain: str, seq: int) -> None:
        """Mark ``seq`` of ``chain`` done for consumer ``name`` (moves forward only)."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...


def ledger_path(url: str) -> Path | None:
    """The file of a ``sqlite:`` URL (or of a bare path); None for ``:memory:``.

    URLs follow SQLAlchemy's (and so Airflow's) convention: ``sqlite:///rel/path.db`` is
    relative to the working directory, ``sqlite:////abs/path.db`` is absolute.
    """
    if "://" not in url:
        return Path(url).expanduser()
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced "[": urllib's IPv6 check
        raise ConfigError(f"{masked_url(url)!r} is not a valid URL: {exc}") from exc
    if parts.scheme != "sqlite":
        raise ConfigError(f"{masked_url(url)!r} is not a sqlite: URL")
    if parts.netloc:
        raise ConfigError(
            f"{masked_url(url)!r}: a sqlite URL has no host; write sqlite:///path or sqlite:////abs"
        )
    path = unquote(parts.path)[1:]  # drop the '/' that separates the empty host from the path
    if path in ("", ":memory:"):
        return None
    return Path(path).expanduser()


def open_ledger(
    url: str,
    *,
    synchronous: str = "FULL",
    busy_timeout_s: float = 30.0,
    read_only: bool = False,
    create: bool = True,
) -> Ledger:
    """Open the ledger a URL names: ``sqlite:///…`` (or a plain path), or
    ``postgresql://user:password@host:port/db`` (psycopg 3, the ``postgres`` extra).

    ``read_only``: an auditor's view. Nothing is created or written (writes raise
    :class:`~audit_core.errors.LedgerError`); it works without write access to the ledger, on
    read-only media too. ``create=False``: a writer that never creates a missing ledger or
    schema (the CLI's writing commands: a typo in a path is an error, not a new ledger)."""
    scheme = url.partition("://")[0].lower() if "://" in url else "sqlite"
    if scheme == "sqlite":
        from audit_core.ledgers.sqlite import SqliteLedger

        return SqliteLedger(
            ledger_path(url),
            synchronous=synchronous,
            busy_timeout_s=busy_timeout_s,
            create=create and not read_only,
            read_only=read_only,
        )
    if scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: F401 - imported here only to fail early and clearly
        except ImportError as exc:
            raise ConfigError(
                "postgresql:// ledgers need psycopg 3: pip install 'workflow-audit[postgres]'"
            ) from exc
        from audit_core.ledgers.postgres import PostgresLedger

        return PostgresLedger(
            url,
            synchronous=synchronous,
            busy_timeout_s=busy_timeout_s,
            create=create and not read_only,
            read_only=read_only,
        )
    raise ConfigError(
        f"unknown ledger URL scheme {scheme!r} in {masked_url(url)!r}; expected sqlite:///PATH "
        "or postgresql://"
    )


def masked_url(url: str) -> str:
    """``url`` fit for a message: its password masked (``mysql://u:***@h/db``), as the
    PostgreSQL ledger's repr shows it. No error message echoes credentials (STYLE rule 18)."""
    # The password runs to the LAST "@": people write "/" and "@" in passwords unescaped, and
    # urlsplit ends the userinfo at a "/" ("mysql://u:p/w@h" would keep "p/w" whole).
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        url = f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}"
    # libpq also takes the password as a query parameter: ?password=… / &password=…
    return _QUERY_PASSWORD.sub(r"\g<1>***", url)


_QUERY_PASSWORD = re.compile(r"([?&](?:password|sslpassword)=)[^&#]*", re.IGNORECASE)


def masked_error(text: str, url: str) -> str:
    """A driver's error ``text`` fit for a message: ``url``, and its password in any
    spelling (as written, percent-decoded), masked. libpq echoes the URI it could not parse."""
    secrets = {m.group(1) for m in re.finditer(r"[?&](?:ssl)?password=([^&#]*)", url, re.I)}
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        secrets.add(userinfo.partition(":")[2])
    text = text.replace(url, masked_url(url))
    for secret in sorted(secrets | {unquote(x) for x in secrets}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def check_url_password(url: str) -> None:
    """Refuse a URL whose password a URL parser would split elsewhere than we do: an
    unescaped "@", "/", "?" or "#", or a "%" not followed by two hex digits. libpq would
    then read part of the password as the host and print it in its error."""
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return
    password = userinfo.partition(":")[2]
    if re.search(r"[@/?#]|%(?![0-9A-Fa-f]{2})", password):
        raise ConfigError(
            f"the password in {masked_url(url)!r} must be percent-encoded: write '@' as %40, "
            "'/' as %2F, '?' as %3F, '#' as %23 and '%' as %25"
        )
