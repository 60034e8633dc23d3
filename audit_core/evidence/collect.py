"""A period's evidence out of one ledger snapshot: one pass over each chain.

For each chain the pass finds the period's seq range ``[lo, hi)`` (the first and one past the
last record whose ``ts`` is in ``[since, until)``), feeds every record of the period to the
control tally, and notes the seqs to put in the pack in full (failures, access, permission
changes, erasures). Then it picks the period's checkpoints:

- **first**: the latest signed checkpoint created at or before ``since`` (the log as the period
  found it), else the chain's earliest;
- **last**: the earliest signed checkpoint whose tree holds every record of the period
  (``size >= hi``): the same one on every run, so two packs of one period are identical;

and proves the log only grew between them (RFC 9162 §2.1.4 consistency proof), and each
sampled and each in-full record's inclusion in the last (§2.1.3). Files are written into a
work directory as they are made, so memory stays flat at a million records.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import orjson

from audit_core._merkle import inclusion_proof
from audit_core._normalize import parse_timestamp
from audit_core._note import Verifier
from audit_core._record import Record, StoredCheckpoint
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.errors import AuditError, CheckpointError, ProofError, SignatureError
from audit_core.evidence.controls import IN_FULL, ControlTally, in_full_category
from audit_core.evidence.sample import sample_indices
from audit_core.ledgers import LedgerReader
from audit_core.proofs import prove_consistency
from audit_core.verify import verify_ledger

__all__ = [
    "ChainEvidence",
    "PackRequest",
    "Transcript",
    "bounds",
    "cadence_gaps",
    "chain_file",
    "collect_chain",
    "pick_checkpoints",
    "record_ts",
]

#: At most this many checkpoints are listed per chain (the first and last halves).
HISTORY_LISTED = 40


@dataclass(frozen=True, slots=True)
class PackRequest:
    """What the pack is to cover. ``chains`` empty: every chain with records in the period."""

    since: str
    until: str
    chains: tuple[str, ...] = ()
    sample: int = 200  # sampled inclusion proofs per chain
    cadence_s: int = 86_400  # a longer span of records without a checkpoint is listed
    max_listed: int = 20


@dataclass(slots=True)
class Transcript:
    """The checks the pack was made with, in order: each PASS, FAIL or SKIP with its detail."""

    lines: list[dict[str, str]] = field(default_factory=list)

    def add(self, check: str, result: str, detail: str = "") -> None:
        self.lines.append({"check": check, "result": result, "detail": detail})

    @property
    def findings(self) -> list[str]:
        return [
            f"{line['check']}: {line['detail']}" for line in self.lines if line["result"] == "FAIL"
        ]


@dataclass(slots=True)
class ChainEvidence:
    """One chain's part of the pack (``report.json``'s ``chains`` item and manifest entry)."""

    chain: str
    lo: int = 0
    hi: int = 0
    records: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    in_full: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in IN_FULL})
    gaps: list[dict[str, Any]] = field(default_factory=list)
    gap_count: int = 0
    first: StoredCheckpoint | None = None
    last: StoredCheckpoint | None = None
    history: list[StoredCheckpoint] = field(default_factory=list)
    consistency: list[bytes] | None = None
    sample: list[int] = field(default_factory=list)

    def report(self, origin: str, head: str | None, requested: int) -> dict[str, Any]:
        name = chain_file(self.chain)
        last, first = self.last, self.first
        listed = _listed(self.history)
        return {
            "chain": self.chain,
            "origin": origin,
            "records": self.records,
            "lo": self.lo,
            "hi": self.hi,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "size": last.size if last else 0,
            "root": last.root.hex() if last else None,
            "head": head,
            "first_checkpoint": _cp_json(first, f"checkpoints/{name}.first.note"),
            "last_checkpoint": _cp_json(last, f"checkpoints/{name}.last.note"),
            "consistency": {
                "old_size": first.size if first else 0,
                "new_size": last.size if last else 0,
                "hashes": len(self.consistency or ()),
                "file": f"proofs/{name}.consistency.json",
                "result": "PASS" if self.consistency is not None else "FAIL",
            },
            "checkpoint_history": {"count": len(self.history), "listed": listed},
            "sample": {
                "requested": requested,
                "count": len(self.sample),
                "distinct": len(set(self.sample)),
                "file": f"proofs/{name}.sample.jsonl",
            },
        }


def chain_file(chain: str) -> str:
    """A chain id as one file name in the pack (RFC 3986 percent-encoding: no ``/``).

    >>> chain_file("team/a b")
    'team%2Fa%20b'
    """
    return quote(chain, safe="")


def record_ts(body: bytes) -> str | None:
    """The top-level ``ts`` of a record's canonical bytes without parsing them: RFC 8785
    sorts keys, so ``ts`` is the last member but ``v`` (an integer), and the last
    ``,"ts":"`` is the top-level one whatever ``data`` holds.

    >>> record_ts(b'{"data":{"ts":"x"},"ts":"2026-01-01T00:00:00.000000Z","v":1}')
    '2026-01-01T00:00:00.000000Z'
    >>> record_ts('{"ts":"2026-01-01T00:00:00.000000Z","v":1}') is None  # not bytes
    True
    """
    if not isinstance(body, bytes):  # a row rewritten as TEXT: verification names it
        return None
    at = body.rfind(b',"ts":"')
    end = body.find(b'"', at + 7) if at >= 0 else -1
    if end < 0:
        return None
    return body[at + 7 : end].decode("ascii", "replace")


def _cp_json(cp: StoredCheckpoint | None, file: str) -> dict[str, Any] | None:
    if cp is None:
        return None
    return {"size": cp.size, "root": cp.root.hex(), "created": cp.created, "file": file}


def _listed(history: Sequence[StoredCheckpoint]) -> list[dict[str, Any]]:
    half = HISTORY_LISTED // 2
    shown = list(history) if len(history) <= HISTORY_LISTED else [*history[:half], *history[-half:]]
    return [{"size": c.size, "root": c.root.hex()[:16], "created": c.created} for c in shown]


def collect_chain(
    view: LedgerReader,
    chain: str,
    request: PackRequest,
    tally: ControlTally,
    stop: int | None = None,
) -> ChainEvidence:
    """Scan ``chain`` once (up to seq ``stop``): the period's range, tallies, in-full seqs and
    source gaps."""
    out = ChainEvidence(chain)
    since, until = request.since, request.until
    size = view.tree_head(chain)[0] if stop is None else stop
    with closing(view.read(chain, 0, size)) as rows:
        for stored in rows:
            ts = record_ts(stored.body)
            if ts is None or not since <= ts < until:
                continue
            try:
                rec = Record.from_stored(stored)
            except AuditError:
                continue  # unreadable: verification (run first) names it
            if out.records == 0:
                out.lo = stored.seq
            out.hi = stored.seq + 1
            out.records += 1
            out.first_ts = ts if out.first_ts is None else min(out.first_ts, ts)
            out.last_ts = ts if out.last_ts is None else max(out.last_ts, ts)
            tally.add(rec)
            category = in_full_category(rec.event)
            if category is not None:
                out.in_full[category].append(stored.seq)
            if rec.event == "source.gap":
                out.gap_count += 1
                if len(out.gaps) < request.max_listed:
                    out.gaps.append(_gap(rec))
    return out


def _gap(rec: Record) -> dict[str, Any]:
    data = rec.data
    return {
        "chain": rec.chain,
        "seq": rec.seq,
        "ts": rec.ts,
        **{k: data.get(k) for k in ("source", "first_id", "last_id", "count", "reason")},
    }


def pick_checkpoints(
    stored: Sequence[StoredCheckpoint], since: str, hi: int
) -> tuple[StoredCheckpoint | None, StoredCheckpoint | None]:
    """(first, last) of the period among a chain's checkpoints, smallest tree first (see the
    module docstring); ``last`` is None when no checkpoint covers the period's records."""
    before = [c for c in stored if c.created <= since]
    first = before[-1] if before else (stored[0] if stored else None)
    last = next((c for c in stored if c.size >= max(hi, 1)), None)
    if first is not None and last is not None and first.size > last.size:
        first = last
    return first, last


def cadence_gaps(ev: ChainEvidence, until: str, threshold_s: int) -> list[dict[str, Any]]:
    """Spans longer than ``threshold_s`` in which records of the period waited for a signed
    checkpoint: from the first record of the period through each checkpoint created in it
    to the checkpoint that covers its last record."""
    if ev.records == 0 or ev.first_ts is None:
        return []
    points = [ev.first_ts]
    points += [c.created for c in ev.history if ev.first_ts < c.created < until]
    if ev.last is not None:
        points.append(ev.last.created)
    points = sorted(set(points))
    gaps = []
    for a, b in itertools.pairwise(points):
        seconds = (parse_timestamp(b) - parse_timestamp(a)).total_seconds()
        if seconds > threshold_s:
            gaps.append({"chain": ev.chain, "from": a, "to": b, "seconds": int(seconds)})
    return gaps


def verify_chains(
    view: LedgerReader, evs: Sequence[ChainEvidence], keys: Sequence[Verifier], t: Transcript
) -> dict[str, str]:
    """Verify each chain in full (hash chain, Merkle tree, stored checkpoints and their
    signatures); returns the hash of the record at each verified chain's pack size minus one
    (the head the pack's last checkpoint covers). A failure is a FAIL line naming the record.
    The detail speaks of the pack's tree size, not of the chain's current length, so two
    packs of one period of a growing ledger say the same."""
    heads: dict[str, str] = {}
    for ev in evs:
        chain = ev.chain
        try:
            verify_ledger(view, [chain], keys=keys)
        except AuditError as exc:
            t.add(f"verification of chain {chain!r}", "FAIL", _named(exc))
            continue
        size = ev.last.size if ev.last is not None else 0
        with closing(view.read(chain, size - 1, size)) as rows:
            stored = next(rows, None) if size else None
        if stored is not None:
            heads[chain] = stored.hash.hex()
        t.add(
            f"verification of chain {chain!r}",
            "PASS",
            f"every record re-hashed: hash chain, Merkle root and every stored signed "
            f"checkpoint verified, through the pack's tree size {size} and beyond",
        )
    return heads


def _named(exc: AuditError) -> str:
    seq = getattr(exc, "seq", None)
    where = f" (record seq {seq})" if seq is not None else ""
    return f"{exc}{where}"


def prove_chain(
    view: LedgerReader,
    ev: ChainEvidence,
    origin: str,
    keys: Sequence[Verifier],
    request: PackRequest,
    t: Transcript,
) -> None:
    """Choose, open and connect the chain's first and last checkpoints, and sample."""
    chain = ev.chain
    stored = view.checkpoints(chain)
    ev.history = [c for c in stored if request.since <= c.created < request.until]
    ev.first, ev.last = pick_checkpoints(stored, request.since, ev.hi)
    if ev.last is None or ev.first is None:
        t.add(
            f"checkpoint of chain {chain!r} covering the period",
            "FAIL",
            f"no signed checkpoint holds seq {ev.hi - 1}: sign one (`workflow-audit "
            "checkpoint`) and make the pack again",
        )
        return
    try:
        first = _open(ev.first, origin, keys)
        last = _open(ev.last, origin, keys)
    except (SignatureError, CheckpointError) as exc:
        t.add(f"signatures of chain {chain!r} checkpoints", "FAIL", str(exc))
        return
    t.add(
        f"signatures of chain {chain!r} checkpoints",
        "PASS",
        f"sizes {first.size} and {last.size} signed by {', '.join(k.name for k in keys)}",
    )
    try:
        ev.consistency = prove_consistency(view, chain, first, last)
    except (ProofError, CheckpointError) as exc:
        t.add(f"consistency of chain {chain!r}", "FAIL", str(exc))
        return
    t.add(
        f"consistency of chain {chain!r}",
        "PASS",
        f"tree size {first.size} -> {last.size}: the log only grew "
        f"({len(ev.consistency)} hashes, RFC 9162 §2.1.4)",
    )
    ev.sample = sample_indices(last.root, ev.lo, ev.hi, request.sample)


def _open(cp: StoredCheckpoint, origin: str, keys: Sequence[Verifier]) -> Checkpoint:
    opened = open_checkpoint(cp.note, keys)
    if opened.origin != origin or opened.size != cp.size or opened.root != cp.root:
        raise CheckpointError(
            f"checkpoint at size {cp.size} is for {opened.describe()}, expected origin "
            f"{origin!r} with the stored size and root",
            chain=origin.rsplit("/", 1)[-1],
            seq=cp.size - 1,
        )
    return opened


def bounds(ev: ChainEvidence) -> list[tuple[str, int]]:
    """The records that pin the period's seq range ``[lo, hi)`` of a chain, by side: the one
    before ``lo`` (outside the period), ``lo`` and ``hi - 1`` (inside), the one at ``hi``
    (outside) — those that exist in the last checkpoint's tree.

    >>> ev = ChainEvidence("c", lo=3, hi=7, records=4)
    >>> ev.last = StoredCheckpoint("c", 10, bytes(32), "", "")
    >>> bounds(ev)
    [('before', 2), ('first', 3), ('last', 6), ('after', 7)]
    """
    if not ev.records or ev.last is None:
        return []
    out = [("before", ev.lo - 1)] if ev.lo > 0 else []
    out += [("first", ev.lo), ("last", ev.hi - 1)]
    if ev.hi < ev.last.size:
        out.append(("after", ev.hi))
    return out


def proof_lines(
    view: LedgerReader,
    chain: str,
    seqs: Sequence[int],
    size: int,
    sides: Sequence[str] | None = None,
) -> Iterator[bytes]:
    """One JSON line per seq: the record's bytes and its RFC 9162 audit path at ``size``
    (and, for the range's bounds, which side of it the record is)."""
    read = partial(view.node, chain)
    for i, seq in enumerate(seqs):
        with closing(view.read(chain, seq, seq + 1)) as rows:
            stored = next(rows, None)
        if stored is None:
            raise ProofError(f"chain {chain!r} has no record at seq {seq}")
        path = inclusion_proof(read, seq, size)
        line = {
            "chain": chain,
            "leaf_index": seq,
            "tree_size": size,
            "record": _text(stored.body),
            "audit_path": [h.hex() for h in path],
        }
        if sides is not None:
            line["side"] = sides[i]
        yield orjson.dumps(line) + b"\n"


def _text(body: object) -> str:
    """A stored body as text; a row rewritten as TEXT (tampering) is carried as it is, and
    its proof then fails where verification already failed."""
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return str(body)


def write_lines(path: Path, lines: Iterator[bytes]) -> int:
    """Write ``lines`` to ``path`` (appending), returning how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    out: IO[bytes]
    with path.open("ab") as out:
        for line in lines:
            out.write(line)
            n += 1
    return n


def period_days(since: str, until: str) -> float:
    span: dt.timedelta = parse_timestamp(until) - parse_timestamp(since)
    return round(span.total_seconds() / 86_400, 3)


#: A ledger read that returns the latest ``ts`` of chain seqs ``[first, last]`` (retention).
LatestTs = Callable[[str, int, int], "str | None"]


def latest_ts(view: LedgerReader) -> LatestTs:
    def read(chain: str, first: int, last: int) -> str | None:
        best: str | None = None
        with closing(view.read(chain, first, last + 1)) as rows:
            for stored in rows:
                ts = record_ts(stored.body)
                if ts is not None and (best is None or ts > best):
                    best = ts
        return best

    return read
