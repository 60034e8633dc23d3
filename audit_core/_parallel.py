"""Verify one large chain in several processes.

Records are independent but for their ``prev`` link, and an RFC 9162 tree is made of aligned
complete subtrees. So the chain is cut at multiples of a power of two ``2**k``; each worker
verifies its ranges completely (every per-record check, every link inside the range) and
returns the range's first ``prev``, last hash and compact range (for a full range: the root
of its subtree). The parent checks the links between ranges, folds the subtree roots into
the chain's root (a full range is a leaf of level ``k``: :func:`_merkle.push` applies as is),
and checks each checkpoint at its size from the frontier so far plus the worker's snapshot.

Workers open connections of their own, so they cannot share the caller's snapshot; they do
not need to. The parent fixes the chain's size ``N`` and the checkpoints in its snapshot, and
workers read ``seq < N`` only: committed records never change through the ledger, so any
later reader sees the same ones (a record changed behind its back fails here or in the
one-process re-run, which reads the parent's snapshot).

A worker never raises across the process boundary: any failure anywhere makes
:func:`verify_parallel` return None, and the caller verifies the chain in one process, which
raises the precise error for the first failing record. Speed when valid, the one-process
error message when not.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path

from audit_core._chain import ChainHead, TreeHeadClaim, scan_records, stored_size
from audit_core._merkle import fold, push
from audit_core._record import genesis
from audit_core.errors import AuditError
from audit_core.ledgers import LedgerReader
from audit_core.ledgers.sqlite import SqliteLedger, SqliteSnapshot

__all__ = ["MIN_RECORDS_PER_JOB", "RANGES_PER_JOB", "RangeResult", "combine", "verify_parallel"]

#: Below this many records a job, process start-up costs more than it saves.
MIN_RECORDS_PER_JOB = 50_000
#: Ranges a job: more ranges than workers evens out their finishing times.
RANGES_PER_JOB = 4

#: What a worker returns of one range: (ok, first prev, last hash, end, compact range,
#: {size: compact range up to size}).
RangeResult = tuple[bool, str | None, str, int, list[bytes], dict[int, list[bytes]]]


def verify_parallel(
    ledger: LedgerReader,
    chain: str,
    claims: Sequence[TreeHeadClaim],
    jobs: int,
    on_progress: Callable[[int], None] | None = None,
) -> ChainHead | None:
    """The chain's head if every check passed in ``jobs`` processes; None when the chain is
    not worth splitting, not in a SQLite file, or anything failed (verify it in one process).
    ``ledger`` is best a snapshot (as :func:`audit_core.verify_chain` passes): its size and
    ``claims`` then describe one instant."""
    jobs = (os.cpu_count() or 1) if jobs <= 0 else jobs
    if not isinstance(ledger, (SqliteLedger, SqliteSnapshot)) or ledger.path is None:
        return None
    try:
        size = stored_size(chain, ledger.head(chain))
    except AuditError:
        return None  # a malformed last row: the one-process run names it
    if jobs < 2 or size < 2 * MIN_RECORDS_PER_JOB:
        return None
    with closing(ledger.read(chain, -(1 << 62), 0)) as below_zero:
        if next(below_zero, None) is not None:
            return None  # rows below seq 0: no range would read them
    span = 1 << max(12, (size // (jobs * RANGES_PER_JOB) - 1).bit_length())
    starts = list(range(0, size, span))
    sizes = sorted({c.size for c in claims if 0 < c.size <= size})
    tasks = [
        (str(ledger.path), chain, a, min(a + span, size), [s for s in sizes if a < s <= a + span])
        for a in starts
    ]
    # spawn: workers must not inherit the parent's SQLite connections or threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
        results = list(pool.map(_verify_range, tasks))
    return combine(chain, size, span, claims, tasks, results, on_progress)


def combine(
    chain: str,
    size: int,
    span: int,
    claims: Sequence[TreeHeadClaim],
    tasks: Sequence[tuple[str, str, int, int, list[int]]],
    results: Sequence[RangeResult],
    on_progress: Callable[[int], None] | None,
) -> ChainHead | None:
    """The chain's head from its ranges' ``results`` (``tasks``: ``(source, chain, start,
    end, checkpoint sizes)`` of each range of ``span`` records, in order): the links between
    ranges, the subtree roots folded into the chain's root, each of ``claims`` at its size.
    None when anything failed or disagrees (the caller verifies in one process)."""
    roots = {c.size: c.root for c in claims}
    if any(s > size for s in roots) or any(c.size == 0 for c in claims):
        return None  # the one-process run names the checkpoint and the cut
    expected_prev = genesis(chain)
    frontier: list[bytes] = []
    for (_, _, a, b, _), (ok, first_prev, last, end, nodes, snapshots) in zip(
        tasks, results, strict=True
    ):
        if not ok or end != b or first_prev != expected_prev:
            return None
        for at, snapshot in snapshots.items():
            if fold(frontier + snapshot) != roots[at]:
                return None
        for claim in claims:
            if a < claim.size <= b and claim.root != roots[claim.size]:
                return None  # two claims at one size that disagree
        if b - a == span:
            push(frontier, a // span, nodes[0])  # a full range: one subtree of level k
        else:
            frontier += nodes  # the last, partial range
        expected_prev = last
        if on_progress is not None:
            on_progress(b)
    return ChainHead(
        chain=chain,
        size=size,
        head=expected_prev,
        root=fold(frontier).hex(),
        checkpoints=len(claims),
    )


def _verify_range(task: tuple[str, str, int, int, list[int]]) -> RangeResult:
    path, chain, start, end, sizes = task
    snapshots: dict[int, list[bytes]] = {}

    def keep(at: int, nodes: list[bytes]) -> None:
        snapshots[at] = list(nodes)

    # read only: an auditor may verify a ledger it cannot write; seq < end were committed
    # before the parent's snapshot, so this newer read sees the same records
    ledger = SqliteLedger(Path(path), create=False, read_only=True)
    try:
        scan = scan_records(
            chain, ledger.read(chain, start, end), start=start, prev=None, sizes=sizes, at_size=keep
        )
    except AuditError:
        return (False, None, "", start, [], {})
    finally:
        ledger.close()
    return (True, scan.first_prev, scan.last, scan.end, scan.nodes, snapshots)
