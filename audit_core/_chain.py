"""Chain verification: pure functions over stored records.

>>> from audit_core._chain import verify_records
>>> verify_records("default", []).size
0

:func:`verify_records` streams a chain once, in constant memory, and returns its
:class:`ChainHead` or raises the precise :class:`~audit_core.errors.VerificationError`
subclass for the first record that fails, naming chain, seq, what was expected and what was
found. For every record, in this order:

1. its seq is the next one (no gap, no repeat, no reordering) → :class:`SequenceError`;
2. SHA-256(0x00 || stored bytes) equals the stored hash → :class:`HashMismatchError`;
3. the stored bytes are their own RFC 8785 form → :class:`NonCanonicalError`;
4. the fields follow format v1 and name this chain and this seq → :class:`FormatError`;
5. ``prev`` is the previous record's hash (the genesis value for seq 0) →
   :class:`BrokenLinkError`.

A hash chain alone cannot see its tail cut off or the whole chain rewritten; ``expect_size``
and ``expect_head`` (kept elsewhere by the caller) catch the first, signed Merkle checkpoints
(docs/FORMAT.md, "Checkpoints") both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from audit_core._cosign import WitnessKey
from audit_core._jcs import MAX_SAFE_INTEGER, canonical_loaded
from audit_core._merkle import EMPTY_ROOT, fold, node_hash
from audit_core._record import (
    EVENT_TYPE,
    FIELDS,
    FORMAT_VERSION,
    StoredRecord,
    genesis,
    is_timestamp,
    leaf_hash,
)
from audit_core.errors import (
    BrokenLinkError,
    CheckpointError,
    FormatError,
    HashMismatchError,
    HeadMismatchError,
    InvalidRecordError,
    NonCanonicalError,
    SequenceError,
    VerificationError,
)

__all__ = [
    "ChainHead",
    "Scan",
    "TreeHeadClaim",
    "WitnessedCheckpoint",
    "chain_ids",
    "check_head",
    "claim_beyond_end",
    "scan_records",
    "stored_size",
    "verify_records",
    "verify_records_at",
]

_FIELD_SET = frozenset(FIELDS)


class WitnessedCheckpoint(Protocol):
    """A checkpoint a quorum of witnesses cosigned (:class:`audit_core.quorum.Witnessed`)."""

    @property
    def size(self) -> int: ...

    @property
    def missing(self) -> tuple[WitnessKey, ...]: ...

    def describe(self) -> str: ...

    def to_json(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class ChainHead:
    """What a verified chain amounts to: its size, the hash of its last record, and the
    RFC 9162 Merkle root over all its record hashes."""

    chain: str
    size: int
    head: str  # hex hash of record size-1; the genesis value when the chain is empty
    root: str = EMPTY_ROOT.hex()  # hex Merkle tree hash of the chain's records
    checkpoints: int = 0  # how many checkpoints (tree head claims) the records matched
    #: checkpoints cosigned by a quorum of trusted witnesses, smallest first (``verify
    #: --witness``; empty when no witness was given, or the chain is empty)
    witnessed: tuple[WitnessedCheckpoint, ...] = ()

    @property
    def unwitnessed(self) -> int:
        """Records after the last witnessed checkpoint (appended since; not yet witnessed)."""
        return self.size - self.witnessed[-1].size if self.witnessed else self.size

    def to_json(self) -> dict[str, object]:
        """The head as a JSON object (``verify --json``, reports)."""
        found: dict[str, object] = {
            "chain": self.chain,
            "size": self.size,
            "head": self.head,
            "root": self.root,
            "checkpoints": self.checkpoints,
        }
        if self.witnessed:
            found["witnessed"] = {
                **self.witnessed[-1].to_json(),
                "checkpoints": len(self.witnessed),
                "not_yet_witnessed": self.unwitnessed,
            }
        return found


@dataclass(frozen=True, slots=True)
class TreeHeadClaim:
    """A tree size and root the records must reproduce (a checkpoint), and how to name it."""

    size: int
    root: bytes
    label: str  # "stored checkpoint at size 1000", "checkpoint file cp.txt", …


def _short(h: str) -> str:
    return h[:16] + "…"


def _hex(value: object) -> str:
    # A tampered hash column may hold TEXT or a number instead of a BLOB.
    return value.hex() if isinstance(value, bytes) else repr(value)


def verify_records(
    chain: str,
    records: Iterable[StoredRecord],
    *,
    claims: Sequence[TreeHeadClaim] = (),
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
    stored_hashes: bool = True,
) -> ChainHead:
    """Verify one chain's records, given in stored order, and return its head.

    ``claims`` (checkpoints) are checked as the tree passes their size: the Merkle root of
    the records so far must equal the claimed root, and a claim beyond the last record means
    the tail was cut off. ``stored_hashes`` as for :func:`scan_records`.
    """
    head, _ = verify_records_at(
        chain,
        records,
        claims=claims,
        on_progress=on_progress,
        progress_every=progress_every,
        stored_hashes=stored_hashes,
    )
    return head


def verify_records_at(
    chain: str,
    records: Iterable[StoredRecord],
    *,
    claims: Sequence[TreeHeadClaim] = (),
    sizes: Sequence[int] = (),
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
    stored_hashes: bool = True,
) -> tuple[ChainHead, dict[int, bytes]]:
    """:func:`verify_records`, also returning the RFC 9162 root of the first ``n`` records
    for each of ``sizes`` the chain reaches, computed from the records themselves as they
    stream by (witnessed checkpoints are compared with these: never with stored subtrees,
    which a writer can forge for any size but the current one)."""
    by_size: dict[int, list[TreeHeadClaim]] = {}
    for claim in claims:
        by_size.setdefault(claim.size, []).append(claim)
    roots: dict[int, bytes] = {}
    wanted = {s for s in sizes if s >= 0}

    def at_size(size: int, stack: list[bytes]) -> None:
        root = fold(stack)
        if size in wanted:
            roots[size] = root
        for claim in by_size.pop(size, ()):
            _check_claim(chain, claim, root)

    scan = scan_records(
        chain,
        records,
        start=0,
        prev=genesis(chain),
        sizes=sorted({s for s in by_size if s > 0} | {s for s in wanted if s > 0}),
        at_size=at_size,
        on_progress=on_progress,
        progress_every=progress_every,
        stored_hashes=stored_hashes,
    )
    root = fold(scan.nodes)
    if 0 in wanted:
        roots[0] = EMPTY_ROOT
    for size, pending in sorted(by_size.items()):
        if size == 0:
            for claim in pending:
                _check_claim(chain, claim, root)
            continue
        raise claim_beyond_end(chain, scan.end, pending[0])
    head = ChainHead(
        chain=chain, size=scan.end, head=scan.last, root=root.hex(), checkpoints=len(claims)
    )
    return head, roots


def claim_beyond_end(chain: str, size: int, claim: TreeHeadClaim) -> CheckpointError:
    """The error for a checkpoint that covers more records than the chain has."""
    return CheckpointError(
        f"chain {chain!r} has {size} records but the {claim.label} covers {claim.size}: "
        f"the last {claim.size - size} record(s) were removed after it was signed",
        chain=chain,
        seq=size,
        expected=f"at least {claim.size} records",
        found=f"{size} records",
    )


@dataclass(frozen=True, slots=True)
class Scan:
    """What :func:`scan_records` saw of records ``start <= seq < end``."""

    end: int
    first_prev: str | None  # the first record's prev (None: no record)
    last: str  # hash of the last record (the ``prev`` given when there is none)
    nodes: list[bytes]  # compact range of [start, end): the frontier when start == 0


def scan_records(
    chain: str,
    records: Iterable[StoredRecord],
    *,
    start: int,
    prev: str | None,
    sizes: Sequence[int] = (),
    at_size: Callable[[int, list[bytes]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
    stored_hashes: bool = True,
) -> Scan:
    """The per-record checks over records ``start, start + 1, …``: seq, hash, canonical form,
    format, and each ``prev`` link (the first one only when ``prev`` is given). Folds the
    record hashes into the compact range of ``[start, end)`` (RFC 9162), and calls
    ``at_size(size, nodes)`` when the range reaches each of the sorted ``sizes``; ``start``
    must be a multiple of a power of two no smaller than the range (0 always is).

    ``stored_hashes=False`` is for records stored without their hash (S3 segments): the
    records' ``hash`` is ignored. Each record's bytes are still hashed, and those hashes are
    what every ``prev`` link and every Merkle root is checked against."""
    seq = start
    first_prev: str | None = None
    loads, canon, lhash = orjson.loads, canonical_loaded, leaf_hash
    events: set[str] = set()
    pending = list(sizes)
    next_size = pending.pop(0) if pending else -1
    stack: list[bytes] = []  # the compact range; _merkle.push, inlined for speed
    # The hot loop of `workflow-audit verify`: only checks here; errors are built elsewhere.
    for _, stored_seq, stored_hash, body in records:
        if stored_seq != seq:
            raise _sequence_error(chain, seq, stored_seq)
        try:
            digest = lhash(body)
            value = loads(body)
            canonical = canon(value)
        except (TypeError, orjson.JSONDecodeError, InvalidRecordError) as exc:
            raise _unreadable_error(chain, seq, body, stored_hash, exc, stored_hashes) from exc
        if stored_hashes and digest != stored_hash:
            raise _hash_error(chain, seq, digest, stored_hash)
        if canonical != body:
            raise _canonical_error(chain, seq, canonical, body)
        _check_format(chain, seq, value, events)
        if value["prev"] != prev:
            if prev is not None:
                raise _link_error(chain, seq, prev, value["prev"])
            first_prev = value["prev"]
        elif first_prev is None:
            first_prev = prev
        node, n = digest, seq - start
        while n & 1:
            node = node_hash(stack.pop(), node)
            n >>= 1
        stack.append(node)
        prev = digest.hex()
        seq += 1
        if seq == next_size:
            if at_size is not None:
                at_size(seq, stack)
            next_size = pending.pop(0) if pending else -1
        if on_progress is not None and seq % progress_every == 0:
            on_progress(seq)
    if on_progress is not None:
        on_progress(seq)
    return Scan(end=seq, first_prev=first_prev, last=prev or "", nodes=stack)


def _check_claim(chain: str, claim: TreeHeadClaim, root: bytes) -> None:
    if root != claim.root:
        raise CheckpointError(
            f"chain {chain!r}: the records' Merkle root at tree size {claim.size} is "
            f"{root.hex()[:16]}…, but the {claim.label} says {claim.root.hex()[:16]}…: "
            f"records before seq {claim.size} were rewritten after it was signed",
            chain=chain,
            seq=claim.size - 1,
            expected=claim.root.hex(),
            found=root.hex(),
        )


def _unreadable_error(
    chain: str, seq: int, body: object, stored_hash: object, exc: Exception, check_hash: bool
) -> VerificationError:
    if not isinstance(body, bytes):  # a body column rewritten as TEXT or a number
        return FormatError(
            f"chain {chain!r} seq {seq}: stored body is a {type(body).__name__}, not bytes: "
            "the record was rewritten outside workflow-audit",
            chain=chain,
            seq=seq,
            expected="bytes",
            found=type(body).__name__,
        )
    digest = leaf_hash(body)
    if check_hash and digest != stored_hash:  # changed bytes that no longer parse: say so first
        return _hash_error(chain, seq, digest, stored_hash)
    return FormatError(
        f"chain {chain!r} seq {seq}: stored bytes are not an RFC 8785 JSON record: {exc}",
        chain=chain,
        seq=seq,
        expected="RFC 8785 JSON",
        found=body[:80].decode("utf-8", "replace"),
    )


def _hash_error(chain: str, seq: int, digest: bytes, stored_hash: object) -> HashMismatchError:
    found = _hex(stored_hash)
    return HashMismatchError(
        f"chain {chain!r} seq {seq}: stored hash {_short(found)} is not the hash of the stored "
        f"bytes ({_short(digest.hex())}): the record was changed after it was written",
        chain=chain,
        seq=seq,
        expected=digest.hex(),
        found=found,
    )


def _canonical_error(chain: str, seq: int, canonical: bytes, body: bytes) -> NonCanonicalError:
    return NonCanonicalError(
        f"chain {chain!r} seq {seq}: stored bytes are not in RFC 8785 canonical form (same "
        "meaning, different bytes: the record was re-encoded after it was written)",
        chain=chain,
        seq=seq,
        expected=canonical[:120].decode("utf-8", "replace"),
        found=body[:120].decode("utf-8", "replace"),
    )


def _link_error(chain: str, seq: int, prev: str, found: str) -> BrokenLinkError:
    what = "genesis value is " if seq == 0 else f"record at seq {seq - 1} hashes to "
    return BrokenLinkError(
        f"chain {chain!r} seq {seq}: prev is {_short(found)} but the {what}{_short(prev)}: "
        f"a record at or before seq {seq} was altered, removed or replaced",
        chain=chain,
        seq=seq,
        expected=prev,
        found=found,
    )


def check_head(
    head: ChainHead, *, expect_size: int | None = None, expect_head: str | None = None
) -> None:
    """Compare a verified head with size and hash recorded elsewhere (truncation check)."""
    if expect_size is not None and head.size != expect_size:
        what = "records are missing from the tail" if head.size < expect_size else "it grew"
        raise HeadMismatchError(
            f"chain {head.chain!r}: expected {expect_size} records, found {head.size} ({what})",
            chain=head.chain,
            seq=head.size - 1 if head.size else None,
            expected=str(expect_size),
            found=str(head.size),
        )
    if expect_head is not None and head.head != expect_head.lower():
        raise HeadMismatchError(
            f"chain {head.chain!r}: expected head hash {_short(expect_head)} at size "
            f"{head.size}, found {_short(head.head)} (the tail was cut, replaced or extended)",
            chain=head.chain,
            seq=head.size - 1 if head.size else None,
            expected=expect_head.lower(),
            found=head.head,
        )


def chain_ids(found: Iterable[object]) -> list[str]:
    """The chain ids a ledger's rows name, sorted; :class:`FormatError` for one that is not
    text (a chain column rewritten as a BLOB or a number outside workflow-audit)."""
    names: list[str] = []
    for name in found:
        if isinstance(name, str):
            names.append(name)
        else:
            shown = f"{type(name).__name__} {name!r:.40}"
            raise FormatError(
                f"the ledger holds rows whose chain id is {shown}, not text: the ledger was "
                "edited outside workflow-audit",
                chain=repr(name)[:40],
                seq=None,
                expected="a text chain id",
                found=shown,
            )
    return sorted(names)


def stored_size(chain: str, last: StoredRecord | None) -> int:
    """The chain size the ledger's last row claims (its seq + 1; 0 without a row).

    The row comes from an untrusted file: a seq that is not an integer in the I-JSON range
    (a row rewritten as TEXT, REAL or BLOB outside workflow-audit) raises
    :class:`SequenceError` naming the record, never a ``TypeError`` in a caller's arithmetic.
    """
    if last is None:
        return 0
    if type(last.seq) is not int or not 0 <= last.seq < MAX_SAFE_INTEGER:
        raise _sequence_error(chain, None, last.seq)
    return last.seq + 1


def _sequence_error(chain: str, expected: int | None, found: object) -> SequenceError:
    if type(found) is not int:  # SQLite stores any type in any column: say what it is
        where = "" if expected is None else f"expected seq {expected}, "
        return SequenceError(
            f"chain {chain!r}: {where}found a row whose seq is {type(found).__name__} "
            f"{found!r:.60}, not an integer: the ledger was edited outside workflow-audit",
            chain=chain,
            seq=expected,
            expected="an integer seq" if expected is None else str(expected),
            found=f"{type(found).__name__} {found!r:.60}",
        )
    if expected is None:
        return SequenceError(
            f"chain {chain!r}: the last row has seq {found}, outside any chain's range "
            f"(0 to {MAX_SAFE_INTEGER - 1}): the ledger was edited outside workflow-audit",
            chain=chain,
            seq=None,
            expected=f"a seq from 0 to {MAX_SAFE_INTEGER - 1}",
            found=str(found),
        )
    if found < expected:
        detail = f"seq {found} appears again or out of order"
    else:
        missing = f"seq {expected}" if found == expected + 1 else f"seqs {expected}..{found - 1}"
        detail = f"{missing} missing (deleted?)"
    return SequenceError(
        f"chain {chain!r}: expected seq {expected}, found seq {found}: {detail}",
        chain=chain,
        seq=expected,
        expected=str(expected),
        found=str(found),
    )


def _check_format(chain: str, seq: int, value: Any, events: set[str]) -> None:
    # The common case in one expression (the hot loop of verification); details on failure.
    # Canonical form is already checked, so 10 members and these 10 names mean exactly FIELDS.
    try:
        if (
            len(value) == len(FIELDS)
            and value["v"] == FORMAT_VERSION
            and value["chain"] == chain
            and value["seq"] == seq
            and type(value["prev"]) is str
            and len(value["prev"]) == 64
            and type(value["data"]) is dict
            and type(value["subject"]) is dict
            and type(value["actor"]) is dict
            and (value["trace"] is None or type(value["trace"]) is dict)
            and type(value["ts"]) is str
            and is_timestamp(value["ts"])
            and (value["event"] in events or _new_event(value["event"], events))
            and type(value["v"]) is int
            and type(value["seq"]) is int
        ):
            return
    except (KeyError, TypeError):
        pass
    problem = _format_problem(chain, seq, value)
    if problem is not None:
        field, expected, found = problem
        raise FormatError(
            f"chain {chain!r} seq {seq}: field {field!r}: expected {expected}, found {found}",
            chain=chain,
            seq=seq,
            expected=expected,
            found=found,
        )


def _new_event(event: object, events: set[str]) -> bool:
    if type(event) is str and EVENT_TYPE.fullmatch(event) is not None:
        events.add(event)  # a chain has few distinct event types: match each once
        return True
    return False


def _format_problem(chain: str, seq: int, value: Any) -> tuple[str, str, str] | None:
    if not isinstance(value, dict) or value.keys() != _FIELD_SET:
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        return ("*", f"exactly the fields {list(FIELDS)}", str(keys))
    checks: tuple[tuple[str, bool, str], ...] = (
        ("v", value["v"] == FORMAT_VERSION and type(value["v"]) is int, str(FORMAT_VERSION)),
        ("chain", value["chain"] == chain, repr(chain)),
        ("seq", value["seq"] == seq and type(value["seq"]) is int, str(seq)),
        (
            "ts",
            type(value["ts"]) is str and is_timestamp(value["ts"]),
            "an RFC 3339 UTC timestamp with microseconds",
        ),
        (
            "event",
            type(value["event"]) is str and EVENT_TYPE.fullmatch(value["event"]) is not None,
            "a dotted event type",
        ),
        ("actor", type(value["actor"]) is dict, "an object"),
        ("subject", type(value["subject"]) is dict, "an object"),
        ("trace", value["trace"] is None or type(value["trace"]) is dict, "null or an object"),
        ("data", type(value["data"]) is dict, "an object"),
        ("prev", type(value["prev"]) is str and len(value["prev"]) == 64, "a 64-hex hash"),
    )
    for field, ok, expected in checks:
        if not ok:
            return (field, expected, repr(value[field])[:80])
    return None
