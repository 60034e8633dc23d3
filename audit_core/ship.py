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
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from audit_core._metrics import COUNTERS
from audit_core.config import AuditConfig
from audit_core.ledgers import Ledger
from audit_core.sinks import Batch, ExportResult, Sink

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
class ShipReport:
    """What one pass delivered: records and batches per chain, and the chains that failed."""

    shipped: int = 0
    batches: int = 0
    failed: list[str] = field(default_factory=list)


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
    ) -> None:
        self.ledger = ledger
        self.sink = sink
        self.batch_size = batch_size
        self.chains = chains
        self.backoff = backoff or Backoff()
        self._sleep = sleep

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
        COUNTERS.incr("records_shipped", report.shipped)
        return report

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
