"""Draining a spool into its ledger: in order, idempotent, crash-safe (the argument is in
:mod:`audit_core.spool`'s docstring)."""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from audit_core._metrics import COUNTERS
from audit_core._spoolfile import (
    QUARANTINE,
    SPOOL_KEY,
    Contents,
    SpooledRecord,
    fsync_dir,
    hold,
    read_spool_file,
    release,
    spool_files,
)
from audit_core.errors import LedgerError
from audit_core.ledgers import Ledger

__all__ = ["DrainResult", "drain"]

logger = logging.getLogger("workflow_audit")

_BATCH = 500
#: An uncertain record is looked for among this many of the chain's last records.
_UNCERTAIN_MAX_SCAN = 100_000


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What one :func:`drain` did."""

    # records appended to their chains, and those skipped because their idempotency key
    # landed meanwhile (the follower recorded the same event): either way, on the chain
    drained: int = 0
    skipped: int = 0  # records found on their chain already (an earlier, interrupted drain)
    files: int = 0  # spool files drained and removed
    busy: int = 0  # files held by a live process (its writer drains them itself)
    waiting: int = 0  # files left because a busy file holds older records (the order)
    corrupt: int = 0  # corrupt lines, moved to quarantine/
    locked: bool = False  # another drainer had the directory (nothing was done)


def drain(
    ledger: Ledger,
    directory: Path,
    key: str,
    *,
    wait: bool = True,
    batch: int = _BATCH,
) -> DrainResult:
    """Append every spooled record of the ledger ``key`` in ``directory`` to its chain, in
    order (by ``ts``, then by file and position), then remove the drained files.

    Raises :class:`~audit_core.errors.LedgerError` when the ledger refuses an append; what
    was not appended stays spooled. ``wait=False`` returns at once (``locked``) when another
    drainer holds the directory. See the module docstring for why this is crash-safe.
    """
    files = spool_files(directory, key)
    journal = directory / f".drain.{key}.journal"
    if not files and not journal.exists():
        return DrainResult()
    with _drain_lock(directory, wait) as got:
        if not got:
            return DrainResult(locked=True)
        return _drain_locked(ledger, directory, key, journal, batch)


@contextlib.contextmanager
def _drain_lock(directory: Path, wait: bool) -> Iterator[bool]:
    try:
        fd = hold(os.open(directory / ".drain.lock", os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise LedgerError(f"cannot lock the spool {directory}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        release(fd)


def _drain_locked(
    ledger: Ledger, directory: Path, key: str, journal: Path, batch: int
) -> DrainResult:
    taken: list[tuple[Path, int, Contents]] = []
    busy = waiting = 0
    horizon: str | None = None  # the oldest ts in a file a live process may still write
    try:
        for path in spool_files(directory, key):
            try:
                fd = hold(os.open(path, os.O_RDONLY))
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive and may still write to it
                release(fd)
                busy += 1
                # Read, not taken (a torn last line is the owner's write in progress).
                oldest = min((r.ts for r in read_spool_file(path).records), default=None)
                if oldest is not None and (horizon is None or oldest < horizon):
                    horizon = oldest
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            taken.append((path, fd, read_spool_file(path, data)))
        if horizon is not None:
            # Drain only files wholly older than what a live process still holds, so records
            # of different processes land in ts order; the rest waits for that process (its
            # breaker drains everything when it closes) or for the next drain.
            keep = []
            for item in taken:
                if any(r.ts >= horizon for r in item[2].records):
                    release(item[1])
                    waiting += 1
                else:
                    keep.append(item)
            taken = keep
        return _drain_taken(ledger, directory, key, journal, batch, taken, busy, waiting)
    finally:
        for _, fd, _ in taken:
            release(fd)


def _drain_taken(
    ledger: Ledger,
    directory: Path,
    key: str,
    journal: Path,
    batch: int,
    taken: list[tuple[Path, int, Contents]],
    busy: int,
    waiting: int,
) -> DrainResult:
    landed: set[str] = set()
    corrupt = 0
    for path, _, contents in taken:
        landed |= contents.landed
        for number, raw, why in contents.corrupt:
            corrupt += 1
            COUNTERS.incr("spool_corrupt_lines")
            logger.error(
                "workflow-audit: corrupt spool line %s:%d (%s): %r; it is kept in %s",
                path,
                number,
                why,
                raw[:200],
                directory / QUARANTINE,
            )
    # chain -> one run per writing process (its files, in the order it spooled: ``n``), the
    # processes' runs interleaved by ts. A process's own order wins over ts: the Prefect
    # adapter stamps task records with Prefect's (older) state times at the flow's end.
    per_origin: dict[tuple[str, str], list[SpooledRecord]] = {}
    for _, _, contents in taken:
        for rec in contents.records:
            if rec.id not in landed:
                per_origin.setdefault((rec.chain, rec.origin), []).append(rec)
    per_chain: dict[str, list[list[SpooledRecord]]] = {}
    for (chain, _), recs in sorted(per_origin.items()):
        per_chain.setdefault(chain, []).append(sorted(recs, key=lambda r: r.n))

    bounds = _read_journal(journal)
    already = _ids_since(ledger, bounds) if bounds else set()
    for chain in per_chain:
        if chain not in bounds:
            bounds[chain] = ledger.tree_head(chain)[0] if ledger.head(chain) else 0
    if per_chain:
        _write_journal(journal, bounds)

    drained = skipped = 0
    for _chain, runs in sorted(per_chain.items()):
        ordered = list(heapq.merge(*runs, key=lambda r: r.ts))
        todo: list[SpooledRecord] = []
        for rec in ordered:
            if rec.id in already or (rec.unmarked is not None and _landed_unmarked(ledger, rec)):
                skipped += 1
            else:
                todo.append(rec)
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            # Keyed: a record whose key reached its chain meanwhile is skipped by the ledger in
            # this same transaction. LedgerError: all stays spooled.
            appended = ledger.append_many([r.prepared for r in part])
            if len(appended) < len(part):
                COUNTERS.incr("records_deduplicated", len(part) - len(appended))
            drained += len(part)
            COUNTERS.incr("spool_drained", len(part))

    # Everything committed: quarantine corrupt lines, then remove the files, then the journal.
    for path, _, contents in taken:
        if contents.corrupt:
            _quarantine(directory, path, contents)
    for path, _, _ in taken:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if taken:
        fsync_dir(directory)
    if not waiting:
        # A waiting file may hold records an interrupted drain appended already: the journal
        # stays until every file is drained, so the next drain still skips them.
        with contextlib.suppress(FileNotFoundError):
            journal.unlink()
    if drained or skipped:
        logger.warning(
            "workflow-audit: drained %d spooled record(s) from %s into the ledger "
            "(%d were there already)",
            drained,
            directory,
            skipped,
        )
    return DrainResult(
        drained=drained,
        skipped=skipped,
        files=len(taken),
        busy=busy,
        waiting=waiting,
        corrupt=corrupt,
    )


def _quarantine(directory: Path, path: Path, contents: Contents) -> None:
    target = directory / QUARANTINE
    target.mkdir(exist_ok=True, mode=0o700)
    out = target / (path.name + ".corrupt")
    with open(out, "ab") as f:
        for number, raw, why in contents.corrupt:
            f.write(orjson.dumps({"line": number, "why": why, "raw": raw.hex()}) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(target)


def _read_journal(journal: Path) -> dict[str, int]:
    try:
        value = orjson.loads(journal.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        # A journal is written whole and renamed into place: it cannot be torn. Unreadable
        # means something else happened; draining without it could duplicate records.
        raise LedgerError(f"unreadable drain journal {journal}: {exc}; inspect it") from exc
    return {str(k): int(v) for k, v in value.items()}


def _write_journal(journal: Path, bounds: dict[str, int]) -> None:
    tmp = journal.with_name(journal.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(bounds))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, journal)
    fsync_dir(journal.parent)


def _ids_since(ledger: Ledger, bounds: dict[str, int]) -> set[str]:
    """Spool ids of the records appended since ``bounds`` (after a drain was interrupted)."""
    found: set[str] = set()
    for chain, start in bounds.items():
        for stored in ledger.read(chain, start):
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                mark = orjson.loads(stored.body).get("data", {}).get(SPOOL_KEY)
                if isinstance(mark, dict) and isinstance(mark.get("id"), str):
                    found.add(mark["id"])
    return found


def _landed_unmarked(ledger: Ledger, rec: SpooledRecord) -> bool:
    """Whether the unmarked bytes of an uncertain record are on its chain: scanned back from
    the head through at most ``_UNCERTAIN_MAX_SCAN`` records. Bounded by count, not by ts:
    the chain is not in ts order (drained backlogs and Prefect's task records carry old ts
    and may sit after the uncertain write)."""
    assert rec.unmarked is not None
    head, tail = rec.unmarked
    head_rec = ledger.head(rec.chain)
    stop = 0 if head_rec is None else head_rec.seq + 1
    scanned = 0
    while stop > 0 and scanned < _UNCERTAIN_MAX_SCAN:
        start = max(0, stop - 256)
        for stored in ledger.read(rec.chain, start, stop):
            if stored.body.startswith(head) and stored.body.endswith(tail):
                return True
        scanned += stop - start
        stop = start
    return False
