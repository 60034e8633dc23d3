"""Ledgers hold the chains: append-only, durable, verifiable.

>>> from audit_core.ledgers import open_ledger
>>> ledger = open_ledger("sqlite:///:memory:")
>>> ledger.chains()
[]

A :class:`Ledger` is a :class:`typing.Protocol`: the embedded default is
:class:`~audit_core.ledgers.sqlite.SqliteLedger`; PostgreSQL (for many hosts) follows the same
protocol. A ledger assigns ``seq`` and ``prev`` inside its own transaction, so no two writers
can fork or gap a chain, and returns only once the record is durable.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from audit_core._record import PreparedRecord, StoredCheckpoint, StoredRecord
from audit_core.errors import ConfigError

__all__ = ["Ledger", "ledger_path", "open_ledger"]


@runtime_checkable
class Ledger(Protocol):
    """Where records live. Every method is safe to call from many threads and processes."""

    def append(self, record: PreparedRecord) -> StoredRecord:
        """Seal ``record`` as the next of its chain and return it once it is durable."""
        ...

    def append_many(self, records: Sequence[PreparedRecord]) -> list[StoredRecord]:
        """Append several records in one transaction (all or none), in the given order."""
        ...

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

    def tree_head(self, chain: str) -> tuple[int, bytes]:
        """``(size, root)`` of the chain's RFC 9162 Merkle tree, in O(log n)."""
        ...

    def node(self, chain: str, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)`` (level 0: a record's hash)."""
        ...

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Store a signed checkpoint; False if one of that size is stored already."""
        ...

    def latest_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        """The chain's checkpoint of the largest tree, or None."""
        ...

    def checkpoints(self, chain: str) -> list[StoredCheckpoint]:
        """The chain's signed checkpoints, smallest tree first."""
        ...

    def get_cursor(self, name: str, chain: str) -> int:
        """The last seq a consumer (a sink) marked as done for ``chain``; -1 if none."""
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
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"{url!r} is not a sqlite: URL")
    if parts.netloc:
        raise ConfigError(
            f"{url!r}: a sqlite URL has no host; write sqlite:///path or sqlite:////abs"
        )
    path = unquote(parts.path)[1:]  # drop the '/' that separates the empty host from the path
    if path in ("", ":memory:"):
        return None
    return Path(path).expanduser()


def open_ledger(url: str, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> Ledger:
    """Open the ledger a URL names: ``sqlite:///…`` (or a plain path), or
    ``postgresql://user:password@host:port/db`` (psycopg 3, the ``postgres`` extra)."""
    scheme = urlsplit(url).scheme if "://" in url else "sqlite"
    if scheme == "sqlite":
        from audit_core.ledgers.sqlite import SqliteLedger

        return SqliteLedger(
            ledger_path(url), synchronous=synchronous, busy_timeout_s=busy_timeout_s
        )
    if scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: F401 - imported here only to fail early and clearly
        except ImportError as exc:
            raise ConfigError(
                "postgresql:// ledgers need psycopg 3: pip install 'workflow-audit[postgres]'"
            ) from exc
        from audit_core.ledgers.postgres import PostgresLedger

        return PostgresLedger(url, synchronous=synchronous, busy_timeout_s=busy_timeout_s)
    raise ConfigError(f"unknown ledger URL scheme {scheme!r} in {url!r}; expected sqlite:///PATH")
