"""Witness quorums: which of a chain's checkpoints independent witnesses cosigned, and
whether the records still hold them (c2sp.org/tlog-cosignature, c2sp.org/tlog-witness).

A log's own key protects nothing against a writer who holds it: the writer can cut, rewrite
or back-date the chain and sign fresh checkpoints. A witness cosigns a checkpoint only if it
is consistent with every earlier one it saw of that origin, so a checkpoint cosigned by a
quorum of witnesses pins the tree at its size. Verification then asks, per chain:

1. Is at least one checkpoint cosigned by ``quorum`` of the trusted witnesses? (Else the
   chain is not witnessed: its cosignatures were removed, or never obtained.)
2. Does every cosigned checkpoint (any cosignature by a trusted witness) match the
   records: the chain holds at least its size, and the RFC 9162 root of its first ``size``
   records equals the witnessed root? (Else the records were cut or rewritten after the
   witnesses saw them.) A cosignature by a trusted key that does not verify is tampering.

The same checks serve a ledger (cosignatures in its ``cosignatures`` table) and a bucket
(cosigned checkpoints shipped beside the segments): the caller gives the rows and a way to
compute the records' root at a size.

>>> groups = group_cosignatures("default", [])
>>> groups
[]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from audit_core._cosign import WitnessKey, quorum_of
from audit_core._record import StoredCosignature
from audit_core.checkpoint import Checkpoint
from audit_core.errors import AuditError, QuorumError, SignatureError

__all__ = [
    "CosignedCheckpoint",
    "Witnessed",
    "chain_origins",
    "check_witnessed",
    "group_cosignatures",
    "merge_cosigned",
    "unsigned_note",
    "utc_time",
]


@dataclass(frozen=True, slots=True)
class CosignedCheckpoint:
    """One checkpoint body of a chain and every cosignature line stored for it."""

    chain: str
    checkpoint: Checkpoint
    body: str
    lines: tuple[str, ...]

    @property
    def note(self) -> str:
        """The body with its cosignature lines: a signed note (its log signature aside)."""
        return unsigned_note(self.body, self.lines)


@dataclass(frozen=True, slots=True)
class Witnessed:
    """A checkpoint cosigned by a quorum: ``cosigners`` are ``(witness, unix time)``."""

    chain: str
    size: int
    root: bytes
    cosigners: tuple[tuple[WitnessKey, int], ...]
    missing: tuple[WitnessKey, ...]

    def describe(self) -> str:
        """``size N (root …) cosigned by W1 at T1, W2 at T2``."""
        by = ", ".join(f"{k.name} at {utc_time(t)}" for k, t in self.cosigners)
        return f"size {self.size} (root {self.root.hex()[:16]}…) cosigned by {by}"

    def to_json(self) -> dict[str, object]:
        return {
            "size": self.size,
            "root": self.root.hex(),
            "cosigned": [{"witness": str(k), "time": t} for k, t in self.cosigners],
            "missing": [str(k) for k in self.missing],
        }


def utc_time(timestamp: int) -> str:
    """A cosignature's unix time as ``2026-01-02T03:04:05Z``."""
    when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def unsigned_note(body: str, lines: Iterable[str]) -> str:
    """``body`` followed by the signature ``lines`` (c2sp.org/signed-note layout)."""
    return body + "\n" + "".join(f"{line}\n" for line in lines)


def group_cosignatures(chain: str, rows: Iterable[StoredCosignature]) -> list[CosignedCheckpoint]:
    """The chain's cosignature rows grouped by the checkpoint body they cosign, smallest
    size first. A row whose body is not a checkpoint, or whose size column disagrees with
    its body, raises :class:`QuorumError` (the table was edited outside workflow-audit)."""
    by_body: dict[str, list[str]] = {}
    for row in rows:
        try:
            checkpoint = Checkpoint.parse(row.body) if isinstance(row.body, str) else None
        except AuditError:
            checkpoint = None
        if checkpoint is None or checkpoint.size != row.size or not isinstance(row.line, str):
            raise QuorumError(
                f"chain {chain!r}: a stored cosignature row at size {row.size!r} is malformed: "
                "the ledger was edited outside workflow-audit",
                chain=chain,
                seq=None,
            )
        lines = by_body.setdefault(row.body, [])
        if row.line not in lines:
            lines.append(row.line)
    groups = [
        CosignedCheckpoint(chain, Checkpoint.parse(body), body, tuple(lines))
        for body, lines in by_body.items()
    ]
    return sorted(groups, key=lambda g: g.checkpoint.size)


def merge_cosigned(
    *groups: Iterable[CosignedCheckpoint],
) -> list[CosignedCheckpoint]:
    """Cosigned checkpoints from several sources (the ledger's rows, the witnesses' own
    answers) joined per checkpoint body, smallest size first."""
    by_body: dict[str, CosignedCheckpoint] = {}
    for group in (g for source in groups for g in source):
        held = by_body.get(group.body)
        if held is None:
            by_body[group.body] = group
        else:
            lines = held.lines + tuple(x for x in group.lines if x not in held.lines)
            by_body[group.body] = CosignedCheckpoint(held.chain, held.checkpoint, held.body, lines)
    return sorted(by_body.values(), key=lambda g: g.checkpoint.size)


def chain_origins(chain: str, prefixes: Iterable[str]) -> frozenset[str]:
    """The exact origin lines ``<prefix>/<chain>`` of a chain's checkpoints, one per
    candidate log origin prefix (c2sp.org/tlog-checkpoint: the origin names the log).

    >>> sorted(chain_origins("default", ["audit.example/prod"]))
    ['audit.example/prod/default']
    """
    return frozenset(f"{prefix}/{chain}" for prefix in prefixes)


def check_witnessed(
    chain: str,
    cosigned: Sequence[CosignedCheckpoint],
    keys: Sequence[WitnessKey],
    quorum: int,
    *,
    size: int,
    root_at: Callable[[int], bytes],
    origins: Collection[str] | None = None,
    unseen: bool = False,
) -> list[Witnessed]:
    """Check a chain of ``size`` records against its cosigned checkpoints; return those
    cosigned by ``quorum`` of ``keys``, smallest first. ``root_at(n)`` is the RFC 9162 root
    of the chain's first ``n`` records (n ≤ size); ``origins``, when given, holds the exact
    origin lines the chain's checkpoints may have (:func:`chain_origins`): a witness keeps
    one history per origin (c2sp.org/tlog-witness), so a checkpoint of any other origin,
    even ``<log>/fresh/<chain>``, was cosigned from an empty history and proves nothing here.

    Raises :class:`QuorumError` naming the witnessed size and root when the records
    contradict a checkpoint any trusted witness cosigned, and when no checkpoint has the
    quorum (naming the witnesses missing from the best one; ``unseen``: every witness asked
    online said it holds no checkpoint of the chain's origin, which the message says)."""
    witnessed: list[Witnessed] = []
    best: tuple[int, CosignedCheckpoint | None, Sequence[WitnessKey]] = (-1, None, keys)
    for group in cosigned:
        cp = group.checkpoint
        try:
            valid, missing = quorum_of(group.note, keys, quorum)
        except SignatureError as exc:
            raise QuorumError(
                f"chain {chain!r}: {exc} — for the checkpoint at size {cp.size} "
                f"(root {cp.root.hex()[:16]}…): the cosignature or the checkpoint was altered",
                chain=chain,
                seq=cp.size - 1 if cp.size else None,
                expected="a valid cosignature",
                found=cp.root.hex(),
            ) from exc
        if not valid:
            continue  # cosigned only by witnesses this verifier does not trust
        if origins is not None and cp.origin not in origins:
            expected = " or ".join(repr(o) for o in sorted(origins))
            raise QuorumError(
                f"chain {chain!r}: witnesses cosigned a checkpoint of origin {cp.origin!r} at "
                f"size {cp.size}, but this chain's origin is {expected}: a checkpoint of "
                "another origin was stored as this chain's",
                chain=chain,
                seq=None,
                expected=expected,
                found=cp.origin,
            )
        by = ", ".join(f"{k.name} at {utc_time(c.timestamp)}" for k, c in valid)
        if cp.size > size:
            raise QuorumError(
                f"chain {chain!r} holds {size} records, but witnesses ({by}) cosigned its "
                f"checkpoint at size {cp.size} (root {cp.root.hex()}): records were removed",
                chain=chain,
                seq=size,
                expected=f"size {cp.size}, root {cp.root.hex()}",
                found=f"size {size}",
            )
        found = root_at(cp.size)
        if found != cp.root:
            raise QuorumError(
                f"chain {chain!r}: the first {cp.size} records have root {found.hex()}, but "
                f"witnesses ({by}) cosigned size {cp.size} with root {cp.root.hex()}: the "
                "records were rewritten after they were witnessed",
                chain=chain,
                seq=cp.size - 1 if cp.size else None,
                expected=cp.root.hex(),
                found=found.hex(),
            )
        if len(valid) >= quorum:
            cosigners = tuple((k, c.timestamp) for k, c in valid)
            witnessed.append(Witnessed(chain, cp.size, cp.root, cosigners, tuple(missing)))
        elif len(valid) > best[0]:
            best = (len(valid), group, missing)
    if not witnessed and size > 0:
        count, best_group, lacking = best
        names = ", ".join(k.describe() for k in lacking)
        seen = (
            "no witness has seen this chain yet: it is newer than the last anchoring round, "
            "or it was never witnessed. "
            if unseen
            else ""
        )
        where = (
            f"its best checkpoint (size {best_group.checkpoint.size}) has {count}"
            if best_group is not None
            else "none of its checkpoints carries a cosignature by a trusted witness: 0"
        )
        raise QuorumError(
            f"chain {chain!r}: no checkpoint is cosigned by {quorum} of the "
            f"{len(keys)} trusted witness(es); {where} (missing: {names}). {seen}The cosignatures "
            "were removed, the witnesses refused, or they were never asked: a chain younger "
            "than one anchoring round (WORKFLOW_AUDIT_ANCHOR_INTERVAL, 60 s) is witnessed at "
            "the next round, or now by `workflow-audit checkpoint` with "
            "WORKFLOW_AUDIT_WITNESSES set; --chain verifies the others",
            chain=chain,
            seq=None,
            expected=f"{quorum} cosignature(s)",
            found=str(max(count, 0)),
        )
    return witnessed
