"""Inclusion proof bundles and consistency proofs between checkpoints.

An inclusion proof bundle lets anyone holding the log's verifier key check, offline and with
nothing else, that one record is in the log: the record's bytes, its leaf index, the tree
size, the RFC 9162 audit path, and the signed checkpoint at that size.

>>> sorted(BUNDLE_FIELDS)[:3]
['audit_path', 'chain', 'checkpoint']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from audit_core._chain import stored_size
from audit_core._jcs import canonical_bytes
from audit_core._merkle import (
    consistency_proof,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from audit_core._note import Verifier
from audit_core._record import Record, StoredRecord, leaf_hash
from audit_core.checkpoint import Checkpoint, check_stored, open_checkpoint
from audit_core.errors import CheckpointError, InvalidRecordError, ProofError
from audit_core.ledgers import LedgerReader

__all__ = [
    "BUNDLE_FIELDS",
    "BUNDLE_FORMAT",
    "ProvenRecord",
    "make_inclusion_bundle",
    "prove_consistency",
    "verify_inclusion_bundle",
]

BUNDLE_FORMAT = "workflow-audit/inclusion-proof/v1"
BUNDLE_FIELDS = frozenset(
    {"format", "chain", "leaf_index", "tree_size", "record", "audit_path", "checkpoint"}
)


@dataclass(frozen=True, slots=True)
class ProvenRecord:
    """What a verified bundle proves: this record is leaf ``record.seq`` of this checkpoint."""

    record: Record
    checkpoint: Checkpoint
    signed_by: tuple[Verifier, ...]


def make_inclusion_bundle(
    ledger: LedgerReader, chain: str, seq: int, size: int | None = None
) -> dict[str, Any]:
    """A bundle proving record ``seq`` is in the tree of a stored checkpoint: the one of
    ``size``, or else the latest. Raises :class:`ProofError` when no checkpoint covers it."""
    try:
        if size is None:
            latest = ledger.latest_checkpoint(chain)
            if latest is not None:
                check_stored(chain, latest)
            stored = [] if latest is None or latest.size <= seq else [latest]
        else:
            stored = [c for c in ledger.checkpoints(chain) if c.size == size > seq]
            for row in stored:
                check_stored(chain, row)
    except CheckpointError as exc:  # a malformed row: nothing to prove with; verify names it
        raise ProofError(f"{exc}; run `workflow-audit verify`") from exc
    if not stored:
        what = f"at tree size {size}" if size is not None else f"covering seq {seq}"
        raise ProofError(
            f"chain {chain!r} has no stored checkpoint {what}; sign one first "
            "(`workflow-audit checkpoint`)"
        )
    checkpoint = stored[-1]
    with closing(ledger.read(chain, seq, seq + 1)) as rows:
        record = next(rows, None)
    try:  # a record rewritten outside workflow-audit may be another type, or not UTF-8
        body = record.body.decode("utf-8") if record is not None else None
    except (AttributeError, UnicodeDecodeError):
        body = None
    if body is None:
        raise ProofError(
            f"chain {chain!r} has no readable record at seq {seq}; run `workflow-audit verify`"
        )
    path = inclusion_proof(partial(ledger.node, chain), seq, checkpoint.size)
    return {
        "format": BUNDLE_FORMAT,
        "chain": chain,
        "leaf_index": seq,
        "tree_size": checkpoint.size,
        "record": body,
        "audit_path": [h.hex() for h in path],
        "checkpoint": checkpoint.note,
    }


def verify_inclusion_bundle(bundle: Mapping[str, Any], keys: Sequence[Verifier]) -> ProvenRecord:
    """Check a bundle with nothing but trusted verifier keys; raises :class:`ProofError`,
    :class:`~audit_core.errors.SignatureError` or :class:`CheckpointError`."""
    if bundle.get("format") != BUNDLE_FORMAT or not BUNDLE_FIELDS <= bundle.keys():
        raise ProofError(f"not a {BUNDLE_FORMAT} bundle (fields {sorted(BUNDLE_FIELDS)})")
    chain, index, size = bundle["chain"], bundle["leaf_index"], bundle["tree_size"]
    if not (isinstance(chain, str) and type(index) is int and type(size) is int):
        raise ProofError("bundle chain, leaf_index and tree_size have the wrong types")
    checkpoint = open_checkpoint(bundle["checkpoint"], keys)
    signed_by = tuple(keys)
    if checkpoint.size != size:
        raise ProofError(f"bundle says tree size {size}, its checkpoint {checkpoint.size}")
    if not checkpoint.origin.endswith("/" + chain):
        raise CheckpointError(
            f"bundle is for chain {chain!r} but its checkpoint for origin {checkpoint.origin!r}",
            chain=chain,
            seq=index,
        )
    body = str(bundle["record"]).encode("utf-8")
    try:
        value = orjson.loads(body)
        canonical = canonical_bytes(value) == body
    except (orjson.JSONDecodeError, InvalidRecordError):
        canonical = False
    if not canonical or not isinstance(value, dict):
        raise ProofError("bundle record is not an RFC 8785 canonical JSON record")
    if (value.get("chain"), value.get("seq")) != (chain, index):
        raise ProofError(
            f"bundle record is chain {value.get('chain')!r} seq {value.get('seq')!r}, "
            f"not chain {chain!r} seq {index}"
        )
    try:
        path = [bytes.fromhex(h) for h in bundle["audit_path"]]
    except (TypeError, ValueError) as exc:
        raise ProofError("bundle audit_path is not a list of hex hashes") from exc
    digest = leaf_hash(body)
    verify_inclusion(digest, index, size, path, checkpoint.root)
    record = Record.from_stored(StoredRecord(chain, index, digest, body))
    return ProvenRecord(record, checkpoint, signed_by)


def prove_consistency(
    ledger: LedgerReader, chain: str, old: Checkpoint, new: Checkpoint
) -> list[bytes]:
    """Build the RFC 9162 consistency proof from ``old`` to ``new`` out of the ledger and
    verify it against both checkpoints' roots; raises :class:`ProofError` (a fork or a
    rewrite) or :class:`CheckpointError` (the ledger no longer holds the newer tree)."""
    if old.size > new.size:
        old, new = new, old
    size = stored_size(chain, ledger.head(chain))
    if new.size > size:
        raise CheckpointError(
            f"chain {chain!r} holds {size} records but {new.describe()} covers {new.size}: "
            "the tail was cut after it was signed",
            chain=chain,
            seq=size,
            expected=f"at least {new.size} records",
            found=f"{size} records",
        )
    if old.size == 0:
        return []
    proof = (
        []
        if old.size == new.size
        else consistency_proof(partial(ledger.node, chain), old.size, new.size)
    )
    verify_consistency(old.size, new.size, proof, old.root, new.root)
    return proof
