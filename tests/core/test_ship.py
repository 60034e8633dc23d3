"""The shipper: cursors, at-least-once delivery, order, retries with backoff."""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._metrics import COUNTERS
from audit_core.ship import Backoff, Shipper
from audit_core.sinks import Batch, ExportResult


class Recording:
    """A sink that keeps what it was sent; fails while ``down`` is set, raises if ``broken``."""

    name = "recording"

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.down = False
        self.broken = False
        self.shutdowns = 0

    def export(self, batch: Batch) -> ExportResult:
        if self.broken:
            raise RuntimeError("sink bug")
        if self.down:
            return ExportResult.FAILURE
        self.batches.append(batch)
        return ExportResult.SUCCESS

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def shutdown(self) -> None:
        self.shutdowns += 1

    def seqs(self, chain: str) -> list[int]:
        return [r.seq for b in self.batches if b.chain == chain for r in b.records]


@pytest.fixture
def filled(tmp_path: Path) -> AuditTrail:
    """A ledger with 25 records on chain a and 7 on chain b."""
    trail = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}", chain="a"))
    for i in range(25):
        trail.record("task.started", {"i": i})
    for i in range(7):
        trail.record("task.started", {"i": i}, chain="b")
    return trail


class TestShipper:
    """Shipper.ship_once / drain / follow."""

    def test_ships_every_chain_in_order_in_batches(self, filled: AuditTrail) -> None:
        """Every record of every chain arrives once, in seq order, in batches of at most N."""
        sink = Recording()
        report = Shipper(filled.ledger, sink, batch_size=10).ship_once()
        assert (32, 4, []) == (report.shipped, report.batches, report.failed)
        assert (list(range(25)), list(range(7))) == (sink.seqs("a"), sink.seqs("b"))
        assert [10, 10, 5, 7] == [len(b.records) for b in sink.batches]

    def test_cursor_moves_only_after_success(self, filled: AuditTrail) -> None:
        """While the sink is down nothing is confirmed; afterwards everything ships once."""
        sink = Recording()
        shipper = Shipper(filled.ledger, sink, batch_size=10)
        sink.down = True
        assert ["a", "b"] == shipper.ship_once().failed
        assert {"a": 25, "b": 7} == shipper.pending()
        sink.down = False
        assert 32 == shipper.ship_once().shipped
        assert {"a": 0, "b": 0} == shipper.pending()
        assert list(range(25)) == sink.seqs("a")

    def test_new_records_continue_after_the_cursor(self, filled: AuditTrail) -> None:
        """Records appended later are shipped from where the cursor stopped."""
        sink = Recording()
        shipper = Shipper(filled.ledger, sink)
        shipper.ship_once()
        filled.record("task.succeeded")
        assert 1 == shipper.ship_once().shipped
        assert list(range(26)) == sink.seqs("a")

    def test_crash_after_export_resends_the_batch(self, filled: AuditTrail) -> None:
        """If the process dies between export and cursor update, the batch is sent again:
        at least once, never lost."""
        sink = Recording()
        shipper = Shipper(filled.ledger, sink, batch_size=25, chains=["a"])
        filled.ledger.set_cursor(sink.name, "a", 9)  # as if a crash lost the next update
        shipper.ship_once()
        assert list(range(10, 25)) == sink.seqs("a")

    def test_raising_sink_is_a_logged_counted_failure(
        self, filled: AuditTrail, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A sink that raises does not stop the shipper; the failure is logged and counted."""
        sink = Recording()
        sink.broken = True
        before = COUNTERS.snapshot().get("ship_failures", 0)
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            report = Shipper(filled.ledger, sink).ship_once()
        assert ["a", "b"] == report.failed
        assert 2 == COUNTERS.snapshot()["ship_failures"] - before
        assert any("raised on chain 'a' seq 0-24" in r.getMessage() for r in caplog.records)

    def test_drain_retries_with_backoff_until_the_sink_is_back(self, filled: AuditTrail) -> None:
        """drain() waits the backoff delays between failing passes and delivers everything."""
        sink = Recording()
        sink.down = True
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 3:
                sink.down = False

        shipper = Shipper(filled.ledger, sink, backoff=Backoff(initial_s=0.01), sleep=sleep)
        assert True is shipper.drain(timeout_s=60)
        assert 3 == len(waits)
        assert 32 == len(sink.seqs("a") + sink.seqs("b"))

    def test_follow_ships_until_stopped(self, filled: AuditTrail) -> None:
        """follow() delivers new records as they come and returns when stopped."""
        sink = Recording()
        stop = threading.Event()
        shipper = Shipper(filled.ledger, sink)
        worker = threading.Thread(target=shipper.follow, args=(stop,), kwargs={"poll_s": 0.01})
        worker.start()
        try:
            filled.record("task.succeeded")
            for _ in range(500):
                if len(sink.seqs("a")) == 26:
                    break
                stop.wait(0.01)
        finally:
            stop.set()
            worker.join(10)
        assert list(range(26)) == sink.seqs("a")
        assert not worker.is_alive()


class TestBackoff:
    """Capped exponential backoff with jitter."""

    def test_grows_and_caps(self) -> None:
        """Without jitter the delays double up to the cap."""
        delays = Backoff(initial_s=1, max_s=5, jitter=0).delays()
        assert [1, 2, 4, 5, 5] == [next(delays) for _ in range(5)]

    def test_jitter_stays_in_range(self) -> None:
        """With jitter each delay lies in [(1 - jitter) d, d]."""
        delays = Backoff(initial_s=1, max_s=1, jitter=0.5).delays(random.Random(1))
        assert all(0.5 <= next(delays) <= 1 for _ in range(100))
