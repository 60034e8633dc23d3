"""Inclusion proof bundles and consistency proofs between checkpoints.

An inclusion proof bundle lets anyone holding the log's verifier key check, offline and with
nothing else, that one record is in the log: the record's bytes, its leaf index, the tree
size, the RFC 9162 audit path, and the signed checkpoint at that size, with the cosignature
lines (c2sp.org/tlog-cosignature) the ledger holds for it, so that a verifier trusting
witnesses rather than the log's own key can require a quorum of them.

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
from audit_core._cosign import Cosignature, WitnessKey, add_cosignatures, quorum_of
from audit_core._jcs import canonical_bytes
from audit_core._merkle import (
    consistency_proof,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from audit_core._note import Verifier, unverified_text
from audit_core._record import Record, StoredCheckpoint, StoredRecord, leaf_hash
from audit_core.checkpoint import Checkpoint, check_stored, open_checkpoint
from audit_core.errors import (
    AuditError,
    CheckpointError,
    InvalidRecordError,
    ProofError,
    QuorumError,
    SignatureError,
)
from audit_core.ledgers import LedgerReader
from audit_core.quorum import chain_origins
from audit_core.verify import origin_prefixes

__all__ = [
    "BUNDLE_FIELDS",
    "BUNDLE_FORMAT",
    "ProvenRecord",
    "make_inclusion_bundle",
    "note_quorum",
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
    #: the valid cosignatures by the trusted witnesses (``witnesses=`` given), as
    #: ``(witness, cosignature)``: ``cosignature.timestamp`` is when it cosigned
    cosigned: tuple[tuple[WitnessKey, Cosignature], ...] = ()


def make_inclusion_bundle(
    ledger: LedgerReader,
    chain: str,
    seq: int,
    size: int | None = None,
    *,
    witnessed: bool = False,
) -> dict[str, Any]:
    """A bundle proving record ``seq`` is in the tree of a stored checkpoint: the one of
    ``size``, else the latest witnesses cosigned (when any did), else the latest. Its
    ``checkpoint`` note carries the stored cosignature lines of that checkpoint. With
    ``witnessed``, the checkpoint must carry at least one. Raises :class:`ProofError` when no
    checkpoint covers the record (or none cosigned, with ``witnessed``)."""
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
        cosigned = _cosigned(ledger, chain, seq, size)
    except CheckpointError as exc:  # a malformed row: nothing to prove with; verify names it
        raise ProofError(f"{exc}; run `workflow-audit verify`") from exc
    if cosigned is not None:
        stored = [cosigned[0]]
    elif witnessed and stored:
        raise ProofError(
            f"chain {chain!r} has no cosigned checkpoint covering seq {seq}"
            + ("" if size is None else f" at tree size {size}")
            + "; witnesses cosign the checkpoints the anchor sends them (`witness` in the docs)"
        )
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
        "checkpoint": checkpoint.note if cosigned is None else cosigned[1],
    }


def _cosigned(
    ledger: LedgerReader, chain: str, seq: int, size: int | None
) -> tuple[StoredCheckpoint, str] | None:
    """The latest stored checkpoint covering ``seq`` (of ``size``, if given) that witnesses
    cosigned, and its note with the stored cosignature lines appended; None if there is none.
    Which witnesses cosigned is the verifier's business (``verify-proof --witness``)."""
    rows = ledger.cosignatures(chain)
    if not rows:
        return None
    # keyed by the whole cosigned body, origin line included: a cosignature of another
    # origin's checkpoint with the same size and root is not one of this checkpoint
    lines: dict[str, list[str]] = {}
    for row in rows:
        if isinstance(row.body, str) and isinstance(row.line, str):
            lines.setdefault(row.body, []).append(row.line)
    for stored in reversed(ledger.checkpoints(chain)):
        if stored.size <= seq or (size is not None and stored.size != size):
            continue
        check_stored(chain, stored)
        try:
            found = lines.get(unverified_text(stored.note))
        except (AuditError, ValueError):
            continue  # an unreadable stored note: `verify` names it
        if found:
            try:
                return stored, add_cosignatures(stored.note, found)
            except SignatureError:
                continue  # a malformed stored line: try an older checkpoint
    return None


def verify_inclusion_bundle(
    bundle: Mapping[str, Any],
    keys: Sequence[Verifier],
    *,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    origin: str | None = None,
) -> ProvenRecord:
    """Check a bundle with nothing but trusted verifier keys (and, with ``witnesses``, that
    its checkpoint carries ``quorum`` valid cosignatures by them, 0: all, and has exactly
    the chain's origin ``<origin>/<chain>``, default prefix the keys' name: a witness
    cosigns any new origin from an empty history, so only this log's origin counts); raises
    :class:`ProofError`, :class:`~audit_core.errors.SignatureError`,
    :class:`CheckpointError` or :class:`QuorumError`."""
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
    cosigned: list[tuple[WitnessKey, Cosignature]] = []
    if witnesses:
        origins = chain_origins(chain, origin_prefixes(origin, keys))
        if checkpoint.origin not in origins:
            expected = " or ".join(repr(o) for o in sorted(origins))
            raise QuorumError(
                f"the bundle's checkpoint is of origin {checkpoint.origin!r}, but chain "
                f"{chain!r} of this log has origin {expected}: its cosignatures witness "
                "another history",
                chain=chain,
                seq=index,
                expected=expected,
                found=checkpoint.origin,
            )
        what = f"the bundle's checkpoint ({checkpoint.describe()})"
        cosigned = note_quorum(
            bundle["checkpoint"], witnesses, quorum or len(witnesses), what=what, chain=chain
        )
    return ProvenRecord(record, checkpoint, signed_by, tuple(cosigned))


def note_quorum(
    note: str, keys: Sequence[WitnessKey], quorum: int, *, what: str, chain: str = "?"
) -> list[tuple[WitnessKey, Cosignature]]:
    """The valid cosignatures of ``note`` by ``keys``; :class:`QuorumError` (invalid) when
    fewer than ``quorum`` witnesses cosigned (naming those missing) or a cosignature by one
    of them does not verify. ``what`` names the note in messages, ``chain`` its chain."""
    try:
        valid, missing = quorum_of(note, keys, quorum)
    except SignatureError as exc:
        raise QuorumError(
            f"{what}: {exc}: the cosignature or the checkpoint was altered",
            chain=chain,
            seq=None,
            expected="a valid cosignature",
        ) from exc
    if len(valid) < quorum:
        names = ", ".join(k.describe() for k in missing)
        raise QuorumError(
            f"{what} is cosigned by {len(valid)} of the {quorum} witness(es) required; "
            f"missing: {names}",
            chain=chain,
            seq=None,
            expected=f"{quorum} cosignature(s)",
            found=str(len(valid)),
        )
    return valid


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
