"""The storage-independent half of a ledger's RFC 9162 Merkle tree, shared by both ledgers.

An append seals its records and pushes their hashes onto each chain's compact frontier
(:func:`seal`); the complete subtrees a leaf finishes become one ``merkle_subtrees`` row:
``(chain, last, hashes)``, ``last`` the leaf's seq (:func:`last_leaf`), ``hashes`` those of
levels 1..k concatenated. A frontier comes from the ledger's cache, caught up with the
leaves appended since, or from the stored subtrees, or, when they are missing, is rebuilt from
every record hash (:func:`frontier`, :func:`rebuild`). What is read and written, and how (the
SQL, the connection, the locks), stays in each ledger.

Idempotency keys, before sealing: :func:`new_keys` drops the records of a batch whose key
their chain holds (or an earlier record of the batch holds); :func:`key_rows` are the
``record_keys`` rows of those sealed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from audit_core._merkle import Frontier, NodeReader, push
from audit_core._metrics import COUNTERS
from audit_core._record import PreparedRecord, StoredRecord, genesis, leaf_hash
from audit_core.errors import LedgerError

__all__ = [
    "SubtreeRow",
    "chain_state",
    "checked_node",
    "frontier",
    "key_rows",
    "last_leaf",
    "new_keys",
    "rebuild",
    "seal",
    "subtree_node",
]

logger = logging.getLogger("workflow_audit")

#: A ``merkle_subtrees`` row: (chain, seq of the leaf completing them, their hashes).
SubtreeRow = tuple[str, int, bytes]

_HASH_SIZE = 32  # SHA-256, RFC 9162 §2.1


def last_leaf(level: int, index: int) -> int:
    """The seq of the leaf that completes subtree ``(level, index)``: its row's ``last``.

    >>> last_leaf(2, 1)  # leaves 4..7
    7
    """
    return ((index + 1) << level) - 1


def checked_node(found: object, chain: str, level: int, index: int) -> bytes:
    """``found`` if it is a 32-byte hash, else LedgerError: the node ``(level, index)`` is
    missing (a tampered row may hold any type or length)."""
    if not isinstance(found, bytes) or len(found) != _HASH_SIZE:
        raise LedgerError(f"chain {chain!r} has no Merkle node at level {level}, index {index}")
    return bytes(found)


def subtree_node(hashes: object, chain: str, level: int, index: int) -> bytes:
    """The level-``level`` hash in the ``hashes`` of subtree ``(level, index)``'s row (None
    when there is no row), else LedgerError."""
    start = (level - 1) * _HASH_SIZE
    found = hashes[start : start + _HASH_SIZE] if isinstance(hashes, bytes) else None
    return checked_node(found, chain, level, index)


def frontier(
    size: int,
    read: NodeReader,
    *,
    cached: Frontier | None = None,
    since: Callable[[int], Iterable[bytes]] | None = None,
    limit: int = 0,
    rebuild: Callable[[], Frontier] | None = None,
) -> Frontier:
    """A chain's frontier at ``size`` leaves: ``cached`` when it has that size; ``cached``
    extended by the leaf hashes appended since (``since(cached.size)``, in seq order up to
    ``size``) when they are at most ``limit``; else read from the stored subtrees (``read``).
    When those are missing: ``rebuild()`` (write paths only), else LedgerError."""
    if cached is not None:
        if cached.size == size:
            return cached
        # Committed records never change, so the cache stays valid; hashing a few new leaves
        # is cheaper than reading the O(log n) subtrees (each ledger measures its ``limit``).
        if since is not None and cached.size < size <= cached.size + limit:
            return cached.extend(since(cached.size))
    try:
        return Frontier.at(read, size)
    except LedgerError:
        if rebuild is None:
            raise
        return rebuild()


def rebuild(chain: str, size: int, hashes: Iterable[bytes]) -> tuple[Frontier, list[SubtreeRow]]:
    """The frontier of a chain of ``size`` records and the subtree rows to store, recomputed
    from every record hash in seq order (a ledger written before Merkle trees, or subtrees
    deleted); loudly, since the ledger reads the whole chain for it."""
    logger.warning(
        "workflow-audit: rebuilding the Merkle tree of chain %r from its %d records", chain, size
    )
    COUNTERS.incr("merkle_rebuilds")
    completed: list[tuple[int, int, bytes]] = []
    rebuilt = Frontier.empty().extend(hashes, completed)
    by_leaf: dict[int, list[bytes]] = {}
    for level, index, digest in completed:  # in level order for each leaf
        by_leaf.setdefault(last_leaf(level, index), []).append(digest)
    return rebuilt, [(chain, last, b"".join(hs)) for last, hs in by_leaf.items()]


def chain_state(chain: str, current: Frontier, last: bytes) -> list[Any]:
    """The mutable state :func:`seal` appends to a chain from: ``[next seq, prev hash hex,
    frontier nodes]``, given its frontier and the hash of its last record."""
    return [current.size, last.hex() if current.size else genesis(chain), list(current.nodes)]


def seal(
    records: Sequence[PreparedRecord], states: dict[str, list[Any]]
) -> tuple[list[StoredRecord], list[SubtreeRow]]:
    """Seal ``records`` in order, each the next of its chain, and push their hashes onto the
    chains' frontiers: ``states`` (each chain's :func:`chain_state`) is updated in place.
    Returns the records to store and the subtree rows their leaves complete."""
    completed: list[tuple[int, int, bytes]] = []
    subtrees: list[SubtreeRow] = []
    stored: list[StoredRecord] = []
    lhash = leaf_hash  # the hot path: one lookup, not one a record
    for rec in records:
        chain = rec.chain
        state = states[chain]
        seq, prev, nodes = state
        body = rec.seal(seq, prev)
        digest = lhash(body)
        stored.append(StoredRecord(chain, seq, digest, body))
        if seq & 1:  # an odd seq completes subtrees: levels 1..k, stored as one row
            push(nodes, seq, digest, completed)
            subtrees.append((chain, seq, b"".join(h for _, _, h in completed)))
            completed.clear()
        else:
            nodes.append(digest)  # what push() does for an even tree size
        state[0] = seq + 1
        state[1] = digest.hex()
    return stored, subtrees


def new_keys(
    records: Sequence[PreparedRecord],
    stored_keys: Callable[[str, list[str]], Iterable[str]],
) -> list[int] | None:
    """The positions in a batch of the records to seal: all but those whose key their chain
    holds already (``stored_keys(chain, keys)``: one lookup per chain, inside the append's
    transaction, after the chain's lock) or an earlier record of the batch holds (the first
    wins). None when no record has a key: an unkeyed batch does no key work at all."""
    wanted: dict[str, list[str]] = {}
    for rec in records:
        if rec.key is not None:
            wanted.setdefault(rec.chain, []).append(rec.key)
    if not wanted:
        return None
    taken = {chain: set(stored_keys(chain, keys)) for chain, keys in wanted.items()}
    kept: list[int] = []
    for i, rec in enumerate(records):
        if rec.key is not None:
            seen = taken[rec.chain]
            if rec.key in seen:
                continue
            seen.add(rec.key)
        kept.append(i)
    return kept


def key_rows(
    records: Sequence[PreparedRecord], stored: Sequence[StoredRecord]
) -> list[tuple[str, str, int]]:
    """The ``record_keys`` rows ``(chain, key, seq)`` of ``records`` sealed as ``stored``."""
    return [(s.chain, r.key, s.seq) for r, s in zip(records, stored, strict=True) if r.key]
