"""The shipper: delivers a ledger's records to a sink, at least once, in order, per chain.

>>> from audit_core import AuditConfig, AuditTrail
>>> from audit_core.sinks import ExportResult
>>> class Collect:
...     name = "collect"
...     def __init__(self): self.seqs = []
...     def export(self, batch):
...         self.seqs += [r.seq for r in batch.records]
...         return ExportResult.SUCCESS
...     def force_flush(self, timeout_s=30.0): return True
...     def shutdown(self): pass
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> _ = [trail.record("task.started") for _ in range(3)]
>>> sink = Collect()
>>> Shipper(trail.ledger, sink, batch_size=2).ship_once().shipped, sink.seqs
(3, [0, 1, 2])
>>> Shipper(trail.ledger, sink).ship_once().shipped   # the cursor remembers
0

The ledger is the durable spool: ``record()`` never waits for a sink, and a sink that is down
only delays delivery. The cursor of (sink, chain) moves only after the sink confirmed a batch,
so a crash re-sends at most the batch in flight; sinks make re-sends harmless. A failing sink
is retried with capped exponential backoff and jitter (AWS Architecture Blog, "Exponential
Backoff And Jitter"), every failure logged and counted (``ship_failures``), never dropped.

A sink with the :class:`~audit_core.sinks.CosignedSink` capability (S3) also gets each chain's
witness-cosigned checkpoints (c2sp.org/tlog-cosignature): the log's signed checkpoint with
every cosignature line the ledger holds for it, once its records are confirmed (a cosigned
checkpoint never lies in a bucket that lacks its records), again after a failure, and again
when a later cosignature of the same checkpoint arrives. The cosignature rows are read when
the chain's latest checkpoint changed, or every ``cosigned_every_s``: not on every poll.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from audit_core._cosign import add_cosignatures
from audit_core._metrics import COUNTERS
from audit_core._note import unverified_text
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, QuorumError
from audit_core.ledgers import Ledger
from audit_core.quorum import group_cosignatures
from audit_core.sinks import Batch, Cosigned, CosignedSink, ExportResult, Sink

__all__ = ["Backoff", "ShipReport", "Shipper", "deliver_to_sinks"]

logger = logging.getLogger("workflow_audit")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with jitter: ``initial_s · multiplier^n``, at most ``max_s``,
    each delay drawn uniformly from ``[(1 - jitter) · d, d]``."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        draw = (rng or random.Random()).uniform  # noqa: S311 - jitter, not cryptography
        delay = self.initial_s
        while True:
            yield draw((1 - self.jitter) * delay, delay)
            delay = min(self.max_s, delay * self.multiplier)


@dataclass(slots=True)
class _CosignedState:
    """What a shipper knows of one chain's cosigned checkpoints."""

    mark: tuple[int, str] | None = None  # (size, created) of the latest checkpoint then
    read_at: float = -math.inf  # time.monotonic() of the last read of the rows
    rows: int = -1  # cosignature rows read then
    seen: dict[str, int] = field(default_factory=dict)  # body -> cosignature lines handled
    pending: dict[str, Cosigned] = field(default_factory=dict)  # body -> not yet confirmed


@dataclass(slots=True)
class ShipReport:
    """What one pass delivered: records and batches per chain, and the chains that failed."""

    shipped: int = 0
    batches: int = 0
    failed: list[str] = field(default_factory=list)
    cosigned: int = 0  # cosigned checkpoints the sink confirmed


class Shipper:
    """Ships every chain of ``ledger`` (or ``chains``) to ``sink``."""

    def __init__(
        self,
        ledger: Ledger,
        sink: Sink,
        *,
        batch_size: int = 1000,
        chains: Sequence[str] | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], object] = time.sleep,
        cosigned_every_s: float = 60.0,
    ) -> None:
        self.ledger = ledger
        self.sink = sink
        self.batch_size = batch_size
        self.chains = chains
        self.backoff = backoff or Backoff()
        self.cosigned_every_s = cosigned_every_s
        self._sleep = sleep
        self._cosigned: dict[str, _CosignedState] = {}

    def pending(self) -> dict[str, int]:
        """Records not yet confirmed by the sink, per chain."""
        out = {}
        for chain in self.chains or self.ledger.chains():
            head = self.ledger.head(chain)
            size = 0 if head is None else head.seq + 1
            out[chain] = size - 1 - self.ledger.get_cursor(self.sink.name, chain)
        return out

    def ship_once(self) -> ShipReport:
        """Deliver everything after the cursors, batch by batch; a chain whose sink fails is
        left for the next pass (its cursor stays at the last confirmed batch)."""
        report = ShipReport()
        for chain in self.chains or self.ledger.chains():
            while True:
                start = self.ledger.get_cursor(self.sink.name, chain) + 1
                batch = Batch(chain, list(self.ledger.read(chain, start, start + self.batch_size)))
                if batch.empty:
                    break
                if self._export(batch) is not ExportResult.SUCCESS:
                    report.failed.append(chain)
                    break
                self.ledger.set_cursor(self.sink.name, chain, batch.last)
                report.shipped += len(batch.records)
                report.batches += 1
            if isinstance(self.sink, CosignedSink):  # also after a failed batch: the
                self._ship_cosigned(self.sink, chain, report)  # records before it are in
        COUNTERS.incr("records_shipped", report.shipped)
        return report

    def _ship_cosigned(self, sink: CosignedSink, chain: str, report: ShipReport) -> None:
        """Hand the sink the chain's new cosigned checkpoints whose records it confirmed."""
        state = self._cosigned.setdefault(chain, _CosignedState())
        try:
            self._read_cosigned(chain, state)
            confirmed = self.ledger.get_cursor(self.sink.name, chain) + 1
        except AuditError as exc:  # the ledger hiccupped: the records are safe, retry later
            logger.warning("workflow-audit: cannot read cosignatures of %r: %s", chain, exc)
            report.failed += [] if chain in report.failed else [chain]
            return
        ready = {b: c for b, c in state.pending.items() if c.size <= confirmed}
        if not ready:
            return  # what is pending waits until the sink holds its records
        try:
            result = sink.export_cosigned(list(ready.values()))
        except Exception:  # contained as a batch is: a sink bug is a failure
            logger.exception("workflow-audit: sink %s raised on cosigned checkpoints", sink)
            result = ExportResult.FAILURE
        if result is not ExportResult.SUCCESS:
            COUNTERS.incr("ship_failures")
            logger.warning(
                "workflow-audit: sink %s refused %d cosigned checkpoint(s) of chain %r; "
                "retrying later",
                self.sink.name,
                len(ready),
                chain,
            )
            report.failed += [] if chain in report.failed else [chain]
            return
        for body, item in ready.items():
            if state.pending.get(body) is item:
                del state.pending[body]
        report.cosigned += len(ready)

    def _read_cosigned(self, chain: str, state: _CosignedState) -> None:
        """Queue the cosigned checkpoints that are new or gained cosignatures since the last
        read. The rows are read only when the chain's latest checkpoint changed (a new one
        is what witnesses cosign), or ``cosigned_every_s`` after the last read."""
        latest = self.ledger.latest_checkpoint(chain)
        mark = None if latest is None else (latest.size, latest.created)
        now = time.monotonic()
        if mark == state.mark and now - state.read_at < self.cosigned_every_s:
            return
        rows = [] if mark is None else self.ledger.cosignatures(chain)
        if len(rows) == state.rows:  # append-only rows: the same count is the same rows
            state.mark, state.read_at = mark, now
            return
        try:
            groups = group_cosignatures(chain, rows)
        except QuorumError as exc:  # rows edited outside workflow-audit: verify reports it
            logger.error("workflow-audit: not shipping cosignatures of %r: %s", chain, exc)
            groups = []
        fresh = [g for g in groups if state.seen.get(g.body) != len(g.lines)]
        notes = {}
        if fresh:
            notes = {unverified_text(c.note): c.note for c in self.ledger.checkpoints(chain)}
        for group in fresh:
            state.seen[group.body] = len(group.lines)
            note = notes.get(group.body)
            if note is None:  # cosigned, but not a checkpoint this ledger holds
                logger.warning(
                    "workflow-audit: chain %r: cosignatures of a checkpoint at size %d that "
                    "this ledger does not hold; not shipped",
                    chain,
                    group.checkpoint.size,
                )
                continue
            lines = add_cosignatures(note, group.lines)
            state.pending[group.body] = Cosigned(chain, group.checkpoint.size, lines)
        state.mark, state.read_at, state.rows = mark, now, len(rows)

    def _export(self, batch: Batch) -> ExportResult:
        try:
            result = self.sink.export(batch)
        except Exception:  # the shipper's one containment point: a sink bug is a failure
            logger.exception(
                "workflow-audit: sink %s raised on chain %r seq %d-%d",
                self.sink.name,
                batch.chain,
                batch.first,
                batch.last,
            )
            result = ExportResult.FAILURE
        if result is not ExportResult.SUCCESS:
            COUNTERS.incr("ship_failures")
            logger.warning(
                "workflow-audit: sink %s refused chain %r seq %d-%d; retrying later",
                self.sink.name,
                batch.chain,
                batch.first,
                batch.last,
            )
        return result

    def follow(self, stop: threading.Event, *, poll_s: float = 1.0) -> None:
        """Ship until ``stop`` is set: new records every ``poll_s``; after a failure, wait the
        next backoff delay (reset by the next success)."""
        delays = self.backoff.delays()
        while not stop.is_set():
            report = self.ship_once()
            if report.failed:
                stop.wait(next(delays))
            else:
                delays = self.backoff.delays()
                stop.wait(poll_s)
        self.sink.force_flush()

    def drain(self, *, timeout_s: float) -> bool:
        """Ship until nothing is pending or ``timeout_s`` passed (with backoff between
        failures); True when everything was delivered."""
        deadline = time.monotonic() + timeout_s
        delays = self.backoff.delays()
        while True:
            report = self.ship_once()
            if not report.failed:
                return self.sink.force_flush(max(0.0, deadline - time.monotonic()))
            delay = next(delays)
            if time.monotonic() + delay > deadline:
                return False
            self._sleep(delay)


def deliver_to_sinks(ledger: Ledger, config: AuditConfig) -> Callable[[], None]:
    """One pass of every sink in ``config.flush_sinks`` (``WORKFLOW_AUDIT_FLUSH_SINKS``): what
    the adapters hand their background :class:`~audit_core.flush.Flusher`. The sinks are
    built on the first call (in the flush thread, where a failure is contained), then kept."""
    shippers: list[Shipper] = []

    def deliver() -> None:
        if not shippers:
            from audit_core.sinks.registry import make_sink, sink_names

            names = sink_names(config.flush_sinks)
            shippers.extend([Shipper(ledger, make_sink(n, ledger, config)) for n in names])
        for shipper in shippers:
            shipper.ship_once()  # a failing sink is logged, counted, retried next time

    return deliver
