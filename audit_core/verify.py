"""Verify the chains a ledger holds.

>>> from audit_core import AuditConfig, AuditTrail, verify_chain
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> _ = trail.record("task.started", {"task": "train"})
>>> verify_chain(trail.ledger, "default").size
1

Each function returns what it verified (:class:`~audit_core._chain.ChainHead`) or raises the
precise :class:`~audit_core.errors.VerificationError` for the first failing record; it never
returns a bool (the sigstore-python habit: a verdict cannot be ignored by accident).

Every check of one call reads one snapshot of the ledger (``ledger.snapshot()``): records,
stored subtrees and checkpoints as of one instant, so a ledger that is being appended to
verifies without false alarms. Pass a snapshot to share it with other reads (``report``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import replace

from audit_core._chain import (
    ChainHead,
    TreeHeadClaim,
    chain_ids,
    check_head,
    verify_records_at,
)
from audit_core._cosign import WitnessKey
from audit_core._note import Verifier, unverified_text
from audit_core._parallel import verify_parallel
from audit_core.checkpoint import Checkpoint, check_stored, open_checkpoint
from audit_core.errors import (
    CheckpointError,
    ConfigError,
    HeadMismatchError,
    LedgerError,
    SignatureError,
)
from audit_core.ledgers import LedgerReader
from audit_core.quorum import (
    CosignedCheckpoint,
    chain_origins,
    check_witnessed,
    group_cosignatures,
    merge_cosigned,
)

__all__ = [
    "ChainHead",
    "chain_of",
    "check_quorum",
    "origin_prefixes",
    "stored_claims",
    "verify_chain",
    "verify_ledger",
]


def verify_chain(
    ledger: LedgerReader,
    chain: str,
    *,
    keys: Sequence[Verifier] = (),
    external: Sequence[tuple[Checkpoint, str]] = (),
    expect_size: int | None = None,
    expect_head: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    origin: str | None = None,
    online: OnlineCosigned | None = None,
) -> ChainHead:
    """Verify one chain: every record, every link, the Merkle root at every stored
    checkpoint (signatures too when ``keys`` are given), each ``external`` checkpoint (already
    opened with trusted keys; the string names it in messages), and the stored frontier.

    With ``witnesses``, the chain's stored cosignatures must give at least one checkpoint
    ``quorum`` (0: every witness) valid cosignatures, and every checkpoint a trusted witness
    cosigned must match the records (:func:`audit_core.quorum.check_witnessed`); the
    witnessed checkpoints are returned in :attr:`ChainHead.witnessed`. Records appended
    after the last witnessed checkpoint are valid (not yet witnessed, never an alarm). A
    witnessed checkpoint must have exactly the chain's origin ``<origin>/<chain>`` (default
    prefix: the name of the ``keys``, as :class:`~audit_core.checkpoint.CheckpointSigner`
    names its origins); ``online(chain, origins)`` adds the checkpoints the witnesses
    themselves say they cosigned last (so deleting the newest rows hides nothing) and
    whether none of them has seen the chain.

    ``jobs`` > 1 verifies a large SQLite chain in that many processes (see
    :mod:`audit_core._parallel`); any failure there is re-verified in one process, so the
    error raised is exactly the one-process error. Everything is read from one snapshot."""
    quorum = check_quorum(witnesses, quorum)
    origins = chain_origins(chain, origin_prefixes(origin, keys)) if witnesses else frozenset()
    with ledger.snapshot() as view:
        claims = stored_claims(view, chain, keys)
        for checkpoint, label in external:
            _check_origin(chain, checkpoint, label)
            claims.append(
                TreeHeadClaim(checkpoint.size, checkpoint.root, f"{label} ({checkpoint.origin})")
            )
        cosigned = group_cosignatures(chain, view.cosignatures(chain)) if witnesses else []
        unseen = False
        if witnesses and online is not None:
            fetched, unseen = online(chain, origins)
            cosigned = merge_cosigned(cosigned, fetched)
        head, roots = _verify_records(view, chain, claims, cosigned, jobs, on_progress)
        check_head(head, expect_size=expect_size, expect_head=expect_head)
        if witnesses:
            found = check_witnessed(
                chain,
                cosigned,
                witnesses,
                quorum,
                size=head.size,
                root_at=roots.__getitem__,  # every size ≤ head.size was computed
                origins=origins,
                unseen=unseen,
            )
            head = replace(head, witnessed=tuple(found))
        _check_extent(view, head)
        _check_frontier(view, head)
    return head


#: ``online(chain, origins)``: the checkpoints witnesses say they cosigned last for those
#: origins, and True when every witness asked answered that it has seen none of them.
OnlineCosigned = Callable[[str, frozenset[str]], tuple[list[CosignedCheckpoint], bool]]

NEEDS_ORIGIN = (
    "--witness needs --key (or --origin): the witnessed checkpoints must be this log's, and "
    "its origin prefix (the key's name unless WORKFLOW_AUDIT_ORIGIN set another) says which"
)


def origin_prefixes(origin: str | None, keys: Sequence[Verifier]) -> list[str]:
    """The log origin prefixes a witnessed checkpoint may carry: ``origin`` when given, else
    the names of the trusted log ``keys``; :class:`ConfigError` with neither (a suffix test
    would accept ``<anything>/<chain>``, an origin the witness saw for the first time)."""
    if origin is not None:
        if not origin or "\n" in origin or origin.endswith("/"):
            raise ConfigError(f"--origin {origin!r} is not a log origin prefix")
        return [origin]
    if not keys:
        raise ConfigError(NEEDS_ORIGIN)
    return sorted({k.name for k in keys})


def check_quorum(witnesses: Sequence[WitnessKey], quorum: int) -> int:
    """The quorum to require of ``witnesses`` (0: all of them); :class:`ConfigError` when it
    is out of range or a witness is given twice (a quorum counts distinct witnesses)."""
    if not witnesses:
        if quorum:
            raise ConfigError("a quorum needs witness keys (--witness)")
        return 0
    if len({k.public for k in witnesses}) != len(witnesses):
        # the Ed25519 cosigned message does not commit to the name (tlog-cosignature): one
        # public key under two names is one witness
        raise ConfigError("a witness key is given twice: a quorum counts distinct witnesses")
    quorum = quorum or len(witnesses)
    if not 1 <= quorum <= len(witnesses):
        raise ConfigError(f"a quorum of {quorum} needs 1 to {len(witnesses)} witnesses")
    return quorum


def _verify_records(
    view: LedgerReader,
    chain: str,
    claims: list[TreeHeadClaim],
    cosigned: Sequence[CosignedCheckpoint],
    jobs: int,
    on_progress: Callable[[int], None] | None,
) -> tuple[ChainHead, dict[int, bytes]]:
    """The chain's head and the records' roots at each cosigned size (computed from the
    records, never from stored subtrees)."""
    if jobs > 1:
        # In processes, each cosigned checkpoint is a claim: if all match, the records' root
        # at its size is its root; if any does not, the one-process run below says which.
        extra = [
            TreeHeadClaim(g.checkpoint.size, g.checkpoint.root, f"cosigned {g.checkpoint.size}")
            for g in cosigned
        ]
        head = verify_parallel(view, chain, [*claims, *extra], jobs, on_progress)
        if head is not None:
            roots = {g.checkpoint.size: g.checkpoint.root for g in cosigned}
            return replace(head, checkpoints=len(claims)), roots
    sizes = [g.checkpoint.size for g in cosigned]
    with closing(view.read(chain)) as records:  # closed now, even when verify raises
        return verify_records_at(
            chain, records, claims=claims, sizes=sizes, on_progress=on_progress
        )


def stored_claims(
    ledger: LedgerReader, chain: str, keys: Sequence[Verifier]
) -> list[TreeHeadClaim]:
    """The chain's stored checkpoints as claims; with ``keys``, each signature is verified."""
    claims = []
    for stored in ledger.checkpoints(chain):
        check_stored(chain, stored)  # a row of the wrong types: named, never a TypeError
        label = f"stored checkpoint at tree size {stored.size}"
        try:
            checkpoint = (
                open_checkpoint(stored.note, keys)
                if keys
                else Checkpoint.parse(unverified_text(stored.note))
            )
        except (SignatureError, CheckpointError) as exc:
            raise CheckpointError(
                f"chain {chain!r}: the {label} does not verify: {exc} (forged, or signed by "
                "another key than the one given)",
                chain=chain,
                seq=stored.size - 1,
                expected="a checkpoint signed by " + ", ".join(map(str, keys)) if keys else None,
                found=stored.note.split("\n", 1)[0],
            ) from exc
        _check_origin(chain, checkpoint, label)
        if (checkpoint.size, checkpoint.root) != (stored.size, stored.root):
            raise CheckpointError(
                f"chain {chain!r}: the {label} says size {checkpoint.size}, root "
                f"{checkpoint.root.hex()[:16]}… in its signed text but {stored.size}, "
                f"{stored.root.hex()[:16]}… in the ledger's columns",
                chain=chain,
                seq=stored.size - 1,
                expected=checkpoint.root.hex(),
                found=stored.root.hex(),
            )
        claims.append(TreeHeadClaim(stored.size, stored.root, f"{label} ({checkpoint.origin})"))
    return claims


def _check_origin(chain: str, checkpoint: Checkpoint, label: str) -> None:
    if not checkpoint.origin.endswith("/" + chain):
        raise CheckpointError(
            f"the {label} is for origin {checkpoint.origin!r}, not for chain {chain!r}",
            chain=chain,
            seq=None,
            expected=f".../{chain}",
            found=checkpoint.origin,
        )


def _check_extent(ledger: LedgerReader, head: ChainHead) -> None:
    # An append stores the subtrees each odd leaf completes (RFC 9162 tree, one row per odd
    # seq), so a subtree completed by a leaf at or past the chain's size outlived records that
    # were removed with it, checkpoints or not.
    extent = ledger.merkle_extent(head.chain)
    if extent > head.size:
        raise CheckpointError(
            f"chain {head.chain!r}: the ledger's stored Merkle subtrees were made from at least "
            f"{extent} records (the last one completed by leaf {extent - 1}) but {head.size} "
            f"records verify: at least the last {extent - head.size} record(s) were removed",
            chain=head.chain,
            seq=head.size,
            expected=f"at least {extent} records",
            found=f"{head.size} records",
        )


def _check_frontier(ledger: LedgerReader, head: ChainHead) -> None:
    # The stored subtrees are what the next checkpoint is signed from and what proofs are
    # built of: the frontier they give must describe these records.
    try:
        size, root = ledger.tree_head(head.chain)
    except LedgerError:
        return  # subtrees missing (derived data): the next append rebuilds them
    if (size, root.hex()) != (head.size, head.root):
        if size > head.size:
            what = f"the last {size - head.size} record(s) were removed"
        elif size < head.size:
            what = "records were added outside workflow-audit"
        else:
            what = "records were rewritten"
        raise CheckpointError(
            f"chain {head.chain!r}: the ledger's Merkle frontier is for {size} records "
            f"(root {root.hex()[:16]}…) but {head.size} records verify (root "
            f"{head.root[:16]}…): {what}",
            chain=head.chain,
            seq=head.size - 1 if head.size else None,
            expected=f"{size} {root.hex()}",
            found=f"{head.size} {head.root}",
        )


def verify_ledger(
    ledger: LedgerReader,
    chains: Sequence[str] | None = None,
    *,
    keys: Sequence[Verifier] = (),
    external: Sequence[tuple[Checkpoint, str]] = (),
    on_progress: Callable[[str, int], None] | None = None,
    jobs: int = 1,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    origin: str | None = None,
    online: OnlineCosigned | None = None,
) -> list[ChainHead]:
    """Verify ``chains`` (default: every chain in the ledger). A chain named explicitly
    that has no records fails: deleting a whole chain must not pass as an empty one. Each
    ``external`` checkpoint goes to the chain its origin names (``…/<chain>``); one whose
    chain is not in the ledger fails: the chain was deleted. With ``witnesses``, every chain
    must hold a checkpoint cosigned by ``quorum`` of them (0: all) that its records still
    match (see :func:`verify_chain`, also for ``origin`` and ``online``); so must a chain
    whose records and Merkle state are gone but whose cosignatures are not. Every chain is
    verified in one snapshot."""
    quorum = check_quorum(witnesses, quorum)
    if witnesses:
        origin_prefixes(origin, keys)  # a usage error before anything is read
    with ledger.snapshot() as view:
        return _verify_ledger(
            view,
            chains,
            keys=keys,
            external=external,
            on_progress=on_progress,
            jobs=jobs,
            witnesses=witnesses,
            quorum=quorum,
            origin=origin,
            online=online,
        )


def _verify_ledger(
    ledger: LedgerReader,
    chains: Sequence[str] | None,
    *,
    keys: Sequence[Verifier],
    external: Sequence[tuple[Checkpoint, str]],
    on_progress: Callable[[str, int], None] | None,
    jobs: int,
    witnesses: Sequence[WitnessKey],
    quorum: int,
    origin: str | None,
    online: OnlineCosigned | None,
) -> list[ChainHead]:
    # A chain whose records are gone but whose subtrees, checkpoints or (with witnesses)
    # cosignatures are not was deleted: verified as an empty chain, what remains names what
    # was removed (a witnessed one fails its quorum check: records were removed).
    if chains is None:
        found = set(ledger.chains()) | set(ledger.merkle_chains())
        if witnesses:
            found |= set(ledger.cosigned_chains())
        names = chain_ids(found)  # a BLOB id: named
    else:
        names = list(chains)
    by_chain: dict[str, list[tuple[Checkpoint, str]]] = {}
    for checkpoint, label in external:
        owner = chain_of(checkpoint, names) or chain_of(checkpoint, ledger.chains())
        if owner is None:
            raise CheckpointError(
                f"the {label} ({checkpoint.describe()}) names no chain in this ledger: its "
                "chain was deleted, or this is another ledger",
                chain=checkpoint.origin.rsplit("/", 1)[-1],
                seq=None,
                expected=f"{checkpoint.size} records",
                found="no chain",
            )
        by_chain.setdefault(owner, []).append((checkpoint, label))
        if owner not in names:
            names.append(owner)
    heads = []
    for name in names:
        progress = None if on_progress is None else _bind(on_progress, name)
        head = verify_chain(
            ledger,
            name,
            keys=keys,
            external=by_chain.get(name, ()),
            on_progress=progress,
            jobs=jobs,
            witnesses=witnesses,
            quorum=quorum,
            origin=origin,
            online=online,
        )
        if chains is not None and head.size == 0:
            raise HeadMismatchError(
                f"chain {name!r} has no records (never written, or deleted)",
                chain=name,
                seq=None,
                expected="at least 1 record",
                found="0",
            )
        heads.append(head)
    return heads


def chain_of(checkpoint: Checkpoint, chains: Sequence[str]) -> str | None:
    """The chain of ``chains`` a checkpoint is for (its origin is ``<prefix>/<chain>``), or
    None. Chain ids may contain "/": the longest chain id the origin ends with wins."""
    matches = [c for c in chains if checkpoint.origin.endswith("/" + c)]
    return max(matches, key=len) if matches else None


def _bind(fn: Callable[[str, int], None], chain: str) -> Callable[[int], None]:
    return lambda n: fn(chain, n)
