"""The one-statement reads and writes both ledgers make, written once over each one's SQL.

A ledger, and each snapshot of it, supplies ``_rows`` (one statement on its connection: the
ledger's under its lock, with its retries; the snapshot's in its one read transaction), a
ledger also ``_write``, and its dialect's :class:`Queries`; :class:`RowReads` and
:class:`RowWrites` turn the rows into the :class:`~audit_core.ledgers.LedgerReader` and
:class:`~audit_core.ledgers.Ledger` results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from audit_core._record import PreparedRecord, StoredCheckpoint, StoredRecord
from audit_core.errors import LedgerError

__all__ = ["Queries", "RowReads", "RowWrites"]


@dataclass(frozen=True, slots=True)
class Queries:
    """One SQL dialect's text of the statements below, each taking the arguments named."""

    head: str  # (chain) -> chain, seq, hash, body of its last record
    chains: str  # () -> the distinct chain of records, sorted
    merkle_chains: str  # () -> the distinct chain of merkle_subtrees and checkpoints, sorted
    extent: str  # (chain) -> max(last) of its merkle_subtrees
    checkpoints: str  # (chain) -> chain, size, root, note, created; ORDER BY is appended
    cursor: str  # (name, chain) -> seq
    add_checkpoint: str  # (chain, size, root, note, created); does nothing when one exists
    set_cursor: str  # (name, chain, seq); moves an existing cursor forward only
    keyed: str  # (chain, key) -> chain, seq, hash, body of the record stored under the key
    keys: str  # (chain, keys) -> key: those of the keys stored on the chain


class RowReads:
    """The reads that are one query each (:class:`~audit_core.ledgers.LedgerReader`)."""

    queries: ClassVar[Queries]

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    @staticmethod
    def _record(row: tuple[Any, ...]) -> StoredRecord:
        """A ``(chain, seq, hash, body)`` row as read (a tampered row may hold any type: the
        verifier names it). A driver that returns buffers converts them."""
        return StoredRecord._make(row)

    @staticmethod
    def _checkpoint(row: tuple[Any, ...]) -> StoredCheckpoint:
        """A ``(chain, size, root, note, created)`` row, as :meth:`_record`."""
        return StoredCheckpoint(*row)

    def head(self, chain: str) -> StoredRecord | None:
        """The last record of ``chain`` (None if it has none)."""
        rows = self._rows(self.queries.head, (chain,))
        return self._record(rows[0]) if rows else None

    def chains(self) -> list[str]:
        """Every chain id with at least one record, sorted."""
        return [r[0] for r in self._rows(self.queries.chains)]

    def merkle_chains(self) -> list[str]:
        """Every chain id with stored Merkle subtrees or checkpoints, sorted."""
        return [r[0] for r in self._rows(self.queries.merkle_chains)]

    def merkle_extent(self, chain: str) -> int:
        """One more than the last leaf that completed a stored subtree; 0 when none."""
        rows = self._rows(self.queries.extent, (chain,))
        last = rows[0][0] if rows else None
        # a tampered row may hold anything; only an integer says how far the tree reached
        return last + 1 if isinstance(last, int) else 0

    def latest_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        """The chain's checkpoint of the largest tree."""
        rows = self._rows(self.queries.checkpoints + " ORDER BY size DESC LIMIT 1", (chain,))
        return self._checkpoint(rows[0]) if rows else None

    def checkpoints(self, chain: str) -> list[StoredCheckpoint]:
        """The chain's stored checkpoints, smallest tree first."""
        rows = self._rows(self.queries.checkpoints + " ORDER BY size", (chain,))
        return [self._checkpoint(r) for r in rows]

    def get_cursor(self, name: str, chain: str) -> int:
        """The last seq consumer ``name`` marked done in ``chain``; -1 if none."""
        rows = self._rows(self.queries.cursor, (name, chain))
        if not rows:
            return -1
        if type(rows[0][0]) is not int:  # a row edited outside workflow-audit
            raise LedgerError(f"the cursor of {name!r} in chain {chain!r} is not an integer")
        return int(rows[0][0])

    def cursor_names(self) -> list[str]:
        """The names of every consumer with a cursor in some chain, sorted."""
        return [r[0] for r in self._rows("SELECT DISTINCT name FROM cursors ORDER BY name")]


class RowWrites(RowReads):
    """The writes that are one statement each, for a ledger (not its snapshots)."""

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        raise NotImplementedError

    def keyed(self, chain: str, key: str) -> StoredRecord | None:
        """The record of ``chain`` stored under idempotency key ``key`` (None: no record)."""
        rows = self._rows(self.queries.keyed, (chain, key))
        return self._record(rows[0]) if rows else None

    def _earlier(self, record: PreparedRecord) -> StoredRecord:
        """The record stored under ``record``'s key, which an append just skipped."""
        found = None if record.key is None else self.keyed(record.chain, record.key)
        if found is None:  # key rows are append-only: only a tampered ledger lost it
            raise LedgerError(
                f"an append of chain {record.chain!r} stored nothing, yet no record holds "
                f"key {record.key!r}"
            )
        return found

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Store a signed checkpoint; False when one of that size is already stored."""
        c = checkpoint
        return 1 == self._write(
            self.queries.add_checkpoint, (c.chain, c.size, c.root, c.note, c.created)
        )

    def set_cursor(self, name: str, chain: str, seq: int) -> None:
        """Move consumer ``name``'s cursor in ``chain`` forward to ``seq`` (never back)."""
        self._write(self.queries.set_cursor, (name, chain, seq))
