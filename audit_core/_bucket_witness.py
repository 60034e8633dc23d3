"""Witnessed checkpoints in a bucket: the cosigned objects a shipper writes beside a chain's
segments (``CHAIN/cosigned/SIZE-DIGEST.checkpoint``, layout in :mod:`audit_core._segment`),
read back for ``verify s3://… --witness KEY --quorum K`` (c2sp.org/tlog-cosignature).

Each object is the log's signed checkpoint note with witness cosignature lines appended. The
note must open with the log's keys (a witnessed checkpoint is also the log's own: a
checkpoint the log never signed proves nothing of its records), its name must match its
size and its bytes, and then its lines join those of every other object of the same
checkpoint body (:func:`audit_core.quorum.group_cosignatures`), so a later object that adds
a second witness's line and an earlier one with the first line count together.

:func:`bucket_witnessed` then asks the bucket's records what
:func:`audit_core.verify.verify_chain` asks a ledger's (:func:`~audit_core.quorum.check_witnessed`):
one checkpoint cosigned by the quorum, and every cosigned checkpoint matching the records'
RFC 9162 root at its size, computed from the segments' records as they stream past.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

from audit_core._chain import TreeHeadClaim
from audit_core._cosign import WitnessKey, cosignature_lines
from audit_core._note import Verifier, unverified_text
from audit_core._record import StoredCosignature
from audit_core._segment import parse_cosigned_key
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.errors import CheckpointError, SegmentError, SignatureError
from audit_core.quorum import CosignedCheckpoint, Witnessed, check_witnessed, group_cosignatures

__all__ = ["bucket_witnessed", "cosigned_claims", "cosigned_groups", "cosigned_sizes"]


def cosigned_groups(
    chain: str,
    prefix: str,
    objects: Sequence[tuple[str, bytes]],
    keys: Sequence[Verifier],
    origins: Collection[str],
) -> list[CosignedCheckpoint]:
    """The chain's cosigned checkpoints from its cosigned objects ``(key, bytes)``, one
    group per checkpoint body, smallest size first. With ``keys``, each note must be signed
    by every one (as a segment's checkpoint must), and its origin must be one of
    ``origins`` exactly (:func:`audit_core.quorum.chain_origins`); raises
    :class:`CheckpointError` or :class:`SegmentError` naming the object otherwise."""
    rows: list[StoredCosignature] = []
    for key, data in objects:
        parsed = parse_cosigned_key(prefix, key)
        if parsed is None or parsed[0] != chain:
            continue
        _, size, digest = parsed
        seq = max(size - 1, 0)
        if hashlib.sha256(data).hexdigest()[:16] != digest:
            raise SegmentError(
                f"object {key}: its bytes do not have the SHA-256 its name says ({digest}…): "
                "written by hand, not by a shipper",
                chain=chain,
                seq=seq,
                expected=digest,
                found=hashlib.sha256(data).hexdigest()[:16],
            )
        checkpoint, body, note = _open(chain, key, data, keys, seq)
        if checkpoint.size != size or checkpoint.origin not in origins:
            expected = " or ".join(sorted(origins))
            raise CheckpointError(
                f"cosigned object {key} holds the checkpoint of {checkpoint.origin!r} at size "
                f"{checkpoint.size}: its name says chain {chain!r} (origin {expected}), size "
                f"{size}",
                chain=chain,
                seq=seq,
                expected=f"{expected} at size {size}",
                found=f"{checkpoint.origin} at size {checkpoint.size}",
            )
        rows += [StoredCosignature(chain, size, body, line, "") for line in cosignature_lines(note)]
    return group_cosignatures(chain, rows)


def _open(
    chain: str, key: str, data: bytes, keys: Sequence[Verifier], seq: int
) -> tuple[Checkpoint, str, str]:
    """``(checkpoint, body, note)`` of one object: the log's signature checked with ``keys``."""
    try:
        note = data.decode("utf-8")
        body = unverified_text(note)
        checkpoint = open_checkpoint(note, keys) if keys else Checkpoint.parse(body)
    except (UnicodeDecodeError, SignatureError, CheckpointError) as exc:
        raise CheckpointError(
            f"chain {chain!r}: cosigned object {key} is not a checkpoint signed by the log: "
            f"{exc} (forged, or signed by another key than the one given)",
            chain=chain,
            seq=seq,
            expected="a checkpoint signed by " + ", ".join(map(str, keys)) if keys else None,
            found=data.split(b"\n", 1)[0].decode("utf-8", "replace"),
        ) from exc
    return checkpoint, body, note


def cosigned_sizes(groups: Sequence[CosignedCheckpoint], size: int) -> list[int]:
    """The sizes at which the records' roots are needed: every cosigned size the chain of
    ``size`` records reaches (one beyond it is an error :func:`bucket_witnessed` names)."""
    return sorted({g.checkpoint.size for g in groups if g.checkpoint.size <= size})


def cosigned_claims(groups: Sequence[CosignedCheckpoint], size: int) -> list[TreeHeadClaim]:
    """Each cosigned checkpoint within ``size`` as a claim, for verification in processes:
    if every claim holds, the records' root at each cosigned size is the cosigned root; if
    one does not, the one-process run computes the roots and names the mismatch."""
    return [
        TreeHeadClaim(g.checkpoint.size, g.checkpoint.root, f"cosigned checkpoint {g.body!r}")
        for g in groups
        if 0 < g.checkpoint.size <= size
    ]


def bucket_witnessed(
    chain: str,
    groups: Sequence[CosignedCheckpoint],
    witnesses: Sequence[WitnessKey],
    quorum: int,
    *,
    size: int,
    roots: Mapping[int, bytes],
    origins: Collection[str],
    unseen: bool = False,
) -> list[Witnessed]:
    """:func:`audit_core.quorum.check_witnessed` for a bucket's chain of ``size`` records;
    ``roots`` holds the records' root at every size of :func:`cosigned_sizes`; ``origins``
    the chain's exact origins; ``unseen``: no witness asked online has seen the chain."""
    return check_witnessed(
        chain,
        groups,
        witnesses,
        quorum,
        size=size,
        root_at=roots.__getitem__,
        origins=origins,
        unseen=unseen,
    )
