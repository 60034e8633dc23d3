"""Sources onto a chain (audit_core.sources, `workflow-audit ingest`): each row exactly once,
in id order, through crashes, races, locked ledgers, failing sources, purges and holes."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import (
    COUNTERS,
    AuditConfig,
    AuditTrail,
    Event,
    Record,
    Signer,
    verify_chain,
)
from audit_core.errors import LedgerError, SourceError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.sinks.otlp import severity
from audit_core.sources import (
    GAP_EVENT,
    RESET_EVENT,
    STARTED_EVENT,
    UNREADABLE_ROW_EVENT,
    Ingestor,
    IngestResult,
    Source,
    SourceRow,
    cursor_name,
    load_source,
    start_ingesting,
)
from tests.core._cli import Run

ROOT = Path(__file__).parents[2]
CHAIN = "events"
NAME = "test.table"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


class TableSource:
    """A real SQLite table as a source: ``log(id INTEGER PRIMARY KEY AUTOINCREMENT, written,
    payload)``, read as Airflow's log table is read (by id, in batches). Without
    ``autoincrement`` the ids are Airflow's on SQLite: reused once the table is emptied."""

    name = NAME
    chain = CHAIN

    def __init__(
        self, path: Path, *, fail: Callable[[], bool] = lambda: False, autoincrement: bool = True
    ) -> None:
        self.path = path
        self.fail = fail
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY"
            f"{' AUTOINCREMENT' if autoincrement else ''}, "
            "written TEXT NOT NULL, payload TEXT NOT NULL)"
        )

    def rows_after(self, after: int, limit: int) -> Sequence[SourceRow]:
        if self.fail():
            raise SourceError("the table is unreachable (a test fault)")
        try:
            rows = self.conn.execute(
                "SELECT id, written, payload FROM log WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"cannot read {self.path}: {exc}") from exc
        return [
            SourceRow(
                i,
                dt.datetime.fromisoformat(w),
                Event(type="row.copied", data={"id": i, "payload": p}, ts=w),
            )
            for i, w, p in rows
        ]

    def oldest_id(self) -> int | None:
        row = self.conn.execute("SELECT min(id) FROM log").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def newest_id(self) -> int | None:
        row = self.conn.execute("SELECT max(id) FROM log").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        self.conn.close()

    # -- the source's writers -------------------------------------------------------------

    def insert(self, count: int, *, written: dt.datetime | None = None) -> None:
        when = (written or dt.datetime.now(dt.timezone.utc)).isoformat()
        self.conn.execute("BEGIN IMMEDIATE")  # one transaction (autocommit: one fsync a row)
        self.conn.executemany(
            "INSERT INTO log (written, payload) VALUES (?, ?)",
            [(when, f"p{i}") for i in range(count)],
        )
        self.conn.execute("COMMIT")

    def insert_id(self, row_id: int, written: dt.datetime) -> None:
        self.conn.execute(
            "INSERT INTO log (id, written, payload) VALUES (?, ?, ?)",
            (row_id, written.isoformat(), f"p{row_id}"),
        )

    def delete(self, first: int, last: int) -> None:
        self.conn.execute("DELETE FROM log WHERE id BETWEEN ? AND ?", (first, last))


def open_table_source() -> TableSource:
    """The source ``workflow-audit ingest tests.core.test_sources:open_table_source`` opens:
    the table in $TEST_SOURCE_DB."""
    return TableSource(Path(os.environ["TEST_SOURCE_DB"]))


def configured_table_source() -> TableSource:
    """The table in $TEST_SOURCE_DB carrying an adapter's configuration ($TEST_LEDGER, a
    signing key in $TEST_SIGNING_KEY), as an orchestrator's source may."""
    source = TableSource(Path(os.environ["TEST_SOURCE_DB"]))
    source.config = AuditConfig(  # type: ignore[attr-defined]
        ledger_url=f"sqlite:///{os.environ['TEST_LEDGER']}",
        signing_key=os.environ["TEST_SIGNING_KEY"],
        checkpoint_every=1,
    )
    return source


def broken_source() -> TableSource:
    """A source whose opening fails with an error that is no AuditError."""
    raise RuntimeError("no such table: log")


@pytest.fixture
def table(tmp_path: Path) -> Iterator[TableSource]:
    """An empty source table."""
    source = TableSource(tmp_path / "source.db")
    yield source
    source.close()


def _trail(ledger_file: Path, **overrides: Any) -> AuditTrail:
    return AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger_file}", **overrides))


def _copied(ledger_file: Path) -> list[tuple[str, Any]]:
    """(event, row id, or the data of the ingestion's own records) of every record on CHAIN,
    in order."""
    out: list[tuple[str, Any]] = []
    for stored in SqliteLedger(ledger_file).read(CHAIN):
        record = Record.from_stored(stored)
        data: Any = record.data
        out.append((record.event, data if record.event.startswith("source.") else data["id"]))
    return out


def _started(first_id: int = 1) -> tuple[str, Any]:
    """The record of the first step, as :func:`_copied` shows it."""
    note = "rows before first_id were deleted before workflow-audit was installed"
    data = {"source": NAME, "first_id": first_id, **({"note": note} if first_id > 1 else {})}
    return (STARTED_EVENT, data)


def _rows(first: int, last: int) -> list[tuple[str, Any]]:
    """The records of rows ``first..last``, as :func:`_copied` shows them."""
    return [("row.copied", i) for i in range(first, last + 1)]


def _counts(result: IngestResult) -> tuple[int, int, bool]:
    """(rows recorded, cursor, waiting for a hole)."""
    return (result.recorded, result.cursor, result.waiting)


def _steps(ingestor: Ingestor) -> IngestResult:
    """Step until caught up (a hole not yet settled ends the steps, as in a follow loop
    between two intervals)."""
    total = IngestResult()
    while True:
        result = ingestor.step()
        total = total.then(result)
        if result.caught_up and result.contended == 0:
            return total


class Ticks:
    """A monotonic clock the test moves (the age of holes)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ingest_cmd(ledger_file: Path, table: TableSource, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "audit_core.cli", "ingest",
         "tests.core.test_sources:open_table_source", "--ledger", str(ledger_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_SOURCE_DB": str(table.path)},
    )  # fmt: skip


def _wait_for(what: str, ok: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _cursor(ledger_file: Path) -> int:
    try:
        return SqliteLedger(ledger_file, read_only=True).get_cursor(cursor_name(NAME), CHAIN)
    except LedgerError:  # not created yet
        return -1


def _feed(table: TableSource, ledger_file: Path, *counts: int) -> None:
    """Insert each count of rows in turn, each time waiting until a follower recorded them."""
    total = 0
    for count in counts:
        table.insert(count)
        total += count
        _wait_for(f"row {total}", lambda: _cursor(ledger_file) == total)  # noqa: B023 - now


class TestIngestor:
    """One ingestor over a real table."""

    def test_rows_become_records_in_id_order(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Every row is recorded once, in id order, on the ingestor's chain, after the
        source.started record of the first step; the cursor holds the last id."""
        table.insert(25)
        result = Ingestor(trail, table, chain=CHAIN, batch=10).run()
        assert (25, 0, 25, True) == (result.recorded, result.gaps, result.cursor, result.caught_up)
        assert [_started(1), *_rows(1, 25)] == _copied(ledger_file)
        assert 25 == trail.ledger.get_cursor("source:test.table", CHAIN)
        assert IngestResult(cursor=25) == Ingestor(trail, table, chain=CHAIN).step()

    def test_step_is_one_batch(self, table: TableSource, trail: AuditTrail) -> None:
        """A step records at most ``batch`` rows and says it is not caught up."""
        table.insert(7)
        result = Ingestor(trail, table, chain=CHAIN, batch=5).step()
        assert (5, 5, False) == (result.recorded, result.cursor, result.caught_up)

    def test_lag_is_the_age_of_the_newest_row(self, table: TableSource, trail: AuditTrail) -> None:
        """lag_s: from the newest recorded row's write to its record."""
        table.insert(3, written=T0)
        clock = lambda: T0 + dt.timedelta(seconds=2.5)  # noqa: E731 - a fixed clock
        result = Ingestor(trail, table, chain=CHAIN, clock=clock).step()
        assert 2.5 == result.lag_s

    def test_purged_rows_become_one_gap_after_grace(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Rows deleted below the source's oldest id before they were read: once the hole
        has been seen open for grace_s, one source.gap "purged" with their range, then the
        rows that remain."""
        table.insert(100)
        ticks = Ticks()
        ingestor = Ingestor(trail, table, chain=CHAIN, batch=50, grace_s=30, monotonic=ticks)
        ingestor.step()
        table.delete(1, 80)  # `airflow db clean`: also 51..80, never read
        assert (0, 50, True) == _counts(_steps(ingestor))
        ticks.now += 30
        result = _steps(ingestor)
        gap = {"source": NAME, "first_id": 51, "last_id": 80, "count": 30, "reason": "purged"}
        assert (20, 1, 100) == (result.recorded, result.gaps, result.cursor)
        copied = _copied(ledger_file)
        assert [(GAP_EVENT, gap)] == copied[51:52]
        assert _rows(81, 100) == copied[52:]

    def test_purge_before_the_first_read_is_the_start(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """A source cleaned before ingestion ever started: no gap (no alert at install
        time): once ids below the oldest had grace_s to show up, a source.started record
        names the first id, and the rows from there follow."""
        table.insert(10)
        table.delete(1, 4)
        ticks = Ticks()
        ingestor = Ingestor(trail, table, chain=CHAIN, grace_s=10, monotonic=ticks)
        assert (0, -1, True) == _counts(_steps(ingestor))
        ticks.now += 10
        result = _steps(ingestor)
        assert (6, 0, 10) == (result.recorded, result.gaps, result.cursor)
        assert [_started(5), *_rows(5, 10)] == _copied(ledger_file)
        assert ("INFO", 9) == severity(STARTED_EVENT)

    def test_row_in_flight_below_the_first_is_recorded(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """The first step sees ids from 2 (id 1 not committed yet): it waits, and id 1,
        committed within grace, is recorded; the start is at 1, with no note."""
        for i in (2, 3):
            table.insert_id(i, T0)
        ingestor = Ingestor(trail, table, chain=CHAIN, grace_s=10)
        assert (0, -1, True) == _counts(_steps(ingestor))
        table.insert_id(1, T0)
        assert 3 == _steps(ingestor).cursor
        assert [_started(1), *_rows(1, 3)] == _copied(ledger_file)

    def test_one_shot_run_waits_for_a_hole_to_settle(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """run() without follow: a new process has seen no hole yet, so it steps until the
        hole settled (at most grace_s more) instead of stopping before it for good."""
        for i in (1, 2, 4):
            table.insert_id(i, T0)
        started = time.monotonic()
        result = Ingestor(trail, table, chain=CHAIN, grace_s=0.3).run(interval_s=0.05)
        assert 0.3 <= time.monotonic() - started < 30
        assert (3, 1, 4, False) == (result.recorded, result.gaps, result.cursor, result.waiting)
        assert (GAP_EVENT, 3) == (
            _copied(ledger_file)[3][0],
            _copied(ledger_file)[3][1]["first_id"],
        )

    def test_started_is_written_once_by_racing_ingesters(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Two ingesters that both saw no cursor: the second's start loses the compare-and-set
        from -1, so source.started is written once."""
        table.insert(3)
        first, second = (Ingestor(trail, table, chain=CHAIN) for _ in range(2))
        second.position = lambda: -1  # type: ignore[method-assign] # read before the first's
        assert 3 == first.step().cursor
        assert 1 == second.step().contended
        assert [_started(1), *_rows(1, 3)] == _copied(ledger_file)

    def test_young_hole_waits_then_becomes_missing(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """An interior hole seen open for less than grace holds the cursor before it; once
        seen open for grace_s, it is a source.gap "missing" and the rows after it follow."""
        table.insert(10, written=T0)
        table.delete(5, 6)  # a rolled-back insert that used up ids, or a late commit
        ticks = Ticks()
        ingestor = Ingestor(trail, table, chain=CHAIN, grace_s=10, monotonic=ticks)
        first = _steps(ingestor)
        assert (4, 0, 4, True) == (first.recorded, first.gaps, first.cursor, first.waiting)
        ticks.now += 9.9
        assert (0, 4, True) == _counts(_steps(ingestor))
        ticks.now += 0.1
        second = _steps(ingestor)
        assert (4, 1, 10, False) == (second.recorded, second.gaps, second.cursor, second.waiting)
        gap = {"source": NAME, "first_id": 5, "last_id": 6, "count": 2, "reason": "missing"}
        assert [_started(1), *_rows(1, 4), (GAP_EVENT, gap), *_rows(7, 10)] == _copied(ledger_file)

    def test_hole_age_ignores_the_source_clock(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """A row stamped 30 s in the past (the writing host's clock behind, or a slow commit)
        after a hole: the hole is not settled at first sight but waits grace_s from when
        this ingester first saw it."""
        table.insert(4)
        stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)
        table.insert_id(6, stale)  # id 5 still in flight
        ingestor = Ingestor(trail, table, chain=CHAIN, grace_s=10)
        result = _steps(ingestor)
        assert (4, 0, 4, True) == (result.recorded, result.gaps, result.cursor, result.waiting)
        table.insert_id(5, stale)  # its commit, within grace
        after = _steps(ingestor)
        assert (2, 0, 6) == (after.recorded, after.gaps, after.cursor)
        assert [_started(1), *_rows(1, 6)] == _copied(ledger_file)

    def test_shrinking_hole_keeps_its_first_sight(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """A hole whose first ids filled is the rest of the hole seen before: it settles
        grace_s after that first sight, not grace_s after it shrank."""
        for i in (1, 5):
            table.insert_id(i, T0)
        ticks = Ticks()
        ingestor = Ingestor(trail, table, chain=CHAIN, grace_s=10, monotonic=ticks)
        assert 1 == _steps(ingestor).cursor  # hole 2..4 seen
        ticks.now += 6
        table.insert_id(2, T0)
        assert 2 == _steps(ingestor).cursor  # hole 3..4, open for 6 s
        ticks.now += 4
        result = _steps(ingestor)
        assert (1, 1, 5) == (result.recorded, result.gaps, result.cursor)

    def test_uncommitted_row_above_a_purge_is_not_called_purged(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Everything up to the cursor purged, id 4 in flight (no reader sees it before its
        commit) and id 5 committed: the oldest visible id, 5, is past the hole, yet the hole
        waits grace_s as any other, and row 4, committed within grace, is recorded."""
        table.insert(3)
        ingestor = Ingestor(trail, table, chain=CHAIN, grace_s=10)
        assert 3 == _steps(ingestor).cursor
        table.delete(1, 3)  # `airflow db clean` of everything recorded
        table.insert_id(5, T0)
        result = _steps(ingestor)
        assert (0, 0, 3, True) == (result.recorded, result.gaps, result.cursor, result.waiting)
        table.insert_id(4, T0)  # the commit of the row in flight
        assert 5 == _steps(ingestor).cursor
        assert [_started(1), *_rows(1, 5)] == _copied(ledger_file)

    def test_ids_restarted_below_the_cursor(
        self, tmp_path: Path, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Airflow's log on SQLite (no AUTOINCREMENT) emptied by `airflow db clean -t log`:
        new rows reuse ids 1, 2, 3. A source.reset record (ERROR), the cursor moved back,
        and the new rows recorded, instead of nothing until the ids pass the old cursor."""
        table = TableSource(tmp_path / "plain.db", autoincrement=False)
        resets = COUNTERS.snapshot().get("source_resets", 0)
        try:
            table.insert(10)
            ingestor = Ingestor(trail, table, chain=CHAIN)
            assert 10 == ingestor.run().cursor
            table.delete(1, 10)
            assert IngestResult(cursor=10) == ingestor.step()  # empty: nothing to tell yet
            table.insert(3)
            assert 3 == table.newest_id()  # SQLite reused the ids
            result = ingestor.run()
        finally:
            table.close()
        reset = {
            "source": NAME,
            "previous_cursor": 10,
            "newest_id": 3,
            "oldest_id": 1,
            "reason": "ids restarted below the cursor (table emptied, database re-created or "
            "restored)",
        }
        expected = [_started(1), *_rows(1, 10), (RESET_EVENT, reset), *_rows(1, 3)]
        assert expected == _copied(ledger_file)
        assert (3, 1, 3) == (result.recorded, result.resets, result.cursor)
        assert 1 == COUNTERS.snapshot().get("source_resets", 0) - resets
        assert ("ERROR", 17) == severity(RESET_EVENT)
        assert "1 reset(s) (ids restarted)" in result.summary()

    def test_invalid_row_becomes_unreadable_and_the_rest_go_on(
        self, table: TableSource, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """A row whose event fails validation (a timestamp without an offset) is recorded as
        source.unreadable (its id and the error, none of its payload) and the rows after it
        are recorded: one bad row does not stop the source for good."""
        unreadable = COUNTERS.snapshot().get("source_rows_unreadable", 0)
        for i in (1, 2, 3, 5, 6):
            table.insert_id(i, T0)
        table.insert_id(4, T0.replace(tzinfo=None))  # "2026-12-01T12:00:00": not RFC 3339
        result = Ingestor(trail, table, chain=CHAIN, batch=2).run()
        assert (5, 1, 6) == (result.recorded, result.unreadable, result.cursor)
        copied = _copied(ledger_file)
        assert [_started(1), *_rows(1, 3)] == copied[:4]
        assert _rows(5, 6) == copied[5:]
        event, data = copied[4]
        assert (UNREADABLE_ROW_EVENT, 4) == (event, data["id"])
        assert {"source", "id", "error"} == set(data)  # none of the row's payload
        assert data["error"].startswith("InvalidRecordError: timestamp '2026-12-01T12:00:00' is")
        assert 1 == COUNTERS.snapshot().get("source_rows_unreadable", 0) - unreadable
        assert ("ERROR", 17) == severity(UNREADABLE_ROW_EVENT)

    def test_rows_out_of_order_are_a_source_error(self, trail: AuditTrail) -> None:
        """A source that repeats or reorders ids raises SourceError; nothing is recorded."""

        class Backwards:
            name = "backwards"

            def rows_after(self, after: int, limit: int) -> list[SourceRow]:
                return [SourceRow(i, T0, Event(type="x.y")) for i in (2, 1)]

            def oldest_id(self) -> int | None:
                return 1

            def newest_id(self) -> int | None:
                return 2

            def close(self) -> None:
                pass

        with pytest.raises(SourceError, match="increasing id"):
            Ingestor(trail, Backwards(), chain=CHAIN).step()
        assert trail.ledger.head(CHAIN) is None

    def test_table_source_is_a_source(self, table: TableSource) -> None:
        """The test's table satisfies the Source protocol."""
        assert isinstance(table, Source)


@pytest.mark.slow
class TestExactlyOnce:
    """Concurrent and killed ingesters: each row once."""

    def test_three_concurrent_processes(self, table: TableSource, ledger_file: Path) -> None:
        """3 `ingest` processes over the same 5,000 rows (more written meanwhile) record
        each row exactly once, in id order; the chain verifies."""
        table.insert(4000)
        SqliteLedger(ledger_file).head(CHAIN)  # the schema once
        procs = [_ingest_cmd(ledger_file, table, "--batch", "100") for _ in range(3)]
        table.insert(1000)
        summaries = []
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert 0 == p.returncode, err
            summaries.append(err)
        summaries.append(_ingest_cmd(ledger_file, table).communicate(timeout=240)[1])
        # what the processes say they recorded adds up too: no row claimed twice
        assert 5000 == sum(int(e.split(": ")[-1].split(" row(s)")[0]) for e in summaries)
        assert [_started(1), *_rows(1, 5000)] == _copied(ledger_file)
        verify_chain(SqliteLedger(ledger_file), CHAIN, expect_size=5001)

    def test_kill_9_mid_backfill_then_restart(self, table: TableSource, ledger_file: Path) -> None:
        """SIGKILL while backfilling 20,000 rows, then a restart: each row once, in order."""
        table.insert(20_000)
        SqliteLedger(ledger_file).head(CHAIN)  # --ledger names an existing ledger
        proc = _ingest_cmd(ledger_file, table, "--batch", "10")
        _wait_for(
            "the first batches", lambda: _cursor(ledger_file) >= 200 or proc.poll() is not None
        )
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        reached = _cursor(ledger_file)
        assert reached < 20_000  # killed in the middle
        restarted = _ingest_cmd(ledger_file, table)
        _, err = restarted.communicate(timeout=240)
        assert 0 == restarted.returncode, err
        assert f"{20_000 - reached} row(s) recorded, 0 gap(s), cursor at 20000" in err
        assert [_started(1), *_rows(1, 20_000)] == _copied(ledger_file)
        verify_chain(SqliteLedger(ledger_file), CHAIN, expect_size=20_001)


class TestBackground:
    """start_ingesting: a fail-open daemon thread."""

    def _start(self, ledger_file: Path, open_source: Callable[[], Source], **kw: Any) -> Any:
        return start_ingesting(
            lambda: _trail(ledger_file, busy_timeout_s=0.2),
            open_source,
            chain=CHAIN,
            interval_s=0.05,
            grace_s=0,
            **kw,
        )

    def test_locked_ledger_is_counted_then_caught_up(
        self, table: TableSource, ledger_file: Path
    ) -> None:
        """A ledger locked by another writer: steps fail and are counted; once the lock is
        gone the thread catches up, each row once."""
        SqliteLedger(ledger_file).head(CHAIN)
        table.insert(50)
        locker = sqlite3.connect(ledger_file, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        failures = COUNTERS.snapshot().get("ingest_failures", 0)
        background = self._start(ledger_file, lambda: TableSource(table.path))
        try:
            _wait_for(
                "a counted failure",
                lambda: COUNTERS.snapshot().get("ingest_failures", 0) > failures,
            )
            assert -1 == _cursor(ledger_file)
            locker.execute("ROLLBACK")
            _wait_for("catching up", lambda: _cursor(ledger_file) == 50)
        finally:
            background.stop(10)
            locker.close()
        assert [_started(1), *_rows(1, 50)] == _copied(ledger_file)

    def test_failing_source_is_counted_then_caught_up(
        self, table: TableSource, ledger_file: Path
    ) -> None:
        """A source raising SourceError (reopened each time) is counted; then caught up."""
        table.insert(30)
        faults = [3]

        def fail() -> bool:
            faults[0] -= 1
            return faults[0] >= 0

        failures = COUNTERS.snapshot().get("ingest_failures", 0)
        background = self._start(ledger_file, lambda: TableSource(table.path, fail=fail))
        try:
            _wait_for("catching up", lambda: _cursor(ledger_file) == 30)
        finally:
            background.stop(10)
        assert COUNTERS.snapshot().get("ingest_failures", 0) - failures >= 3
        assert [_started(1), *_rows(1, 30)] == _copied(ledger_file)

    def test_follows_new_rows_and_stops_in_time(
        self, table: TableSource, ledger_file: Path
    ) -> None:
        """Rows written later are followed; stop() ends the thread within its timeout."""
        background = self._start(ledger_file, lambda: TableSource(table.path))
        try:
            _feed(table, ledger_file, 5, 5)
        finally:
            started = time.monotonic()
            background.stop(5)
        assert time.monotonic() - started < 5
        assert not background.alive
        assert background.result is not None
        assert 10 == background.result.recorded

    def test_unopenable_trail_never_raises(self, table: TableSource, tmp_path: Path) -> None:
        """A trail that cannot be opened: counted and retried, nothing escapes the thread."""
        failures = COUNTERS.snapshot().get("ingest_failures", 0)

        def no_trail() -> AuditTrail:
            raise LedgerError("the ledger is on a disk that is gone")

        background = start_ingesting(
            no_trail, lambda: TableSource(table.path), chain=CHAIN, interval_s=0.05
        )
        _wait_for(
            "a counted failure", lambda: COUNTERS.snapshot().get("ingest_failures", 0) > failures
        )
        background.stop(5)
        assert not background.alive


class TestLoadSource:
    """Sources by name or MODULE:CALLABLE."""

    def test_module_callable(self, table: TableSource, monkeypatch: pytest.MonkeyPatch) -> None:
        """MODULE:CALLABLE opens what the callable returns."""
        monkeypatch.setenv("TEST_SOURCE_DB", str(table.path))
        source = load_source("tests.core.test_sources:open_table_source")
        assert NAME == source.name
        source.close()

    def test_unknown_name_lists_the_installed(self) -> None:
        """An unknown name is a ConfigError naming the installed sources."""
        with pytest.raises(Exception, match=r"no source 'nosuch' \(installed: "):
            load_source("nosuch")


class TestIngestCommand:
    """`workflow-audit ingest`."""

    @pytest.fixture
    def spec(self, table: TableSource, ledger_file: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        """SOURCE for `ingest`: the test table (through $TEST_SOURCE_DB); the ledger exists."""
        SqliteLedger(ledger_file).head(CHAIN)
        monkeypatch.setenv("TEST_SOURCE_DB", str(table.path))
        return "tests.core.test_sources:open_table_source"

    def test_one_shot_prints_a_summary_and_verifies(
        self, cli: Callable[..., Run], table: TableSource, ledger_file: Path, spec: str
    ) -> None:
        """One-shot: records every row, prints one summary line, exit 0; verify exits 0."""
        table.insert(12)
        run = cli("ingest", spec, "--ledger", ledger_file, "--batch", "5")
        assert 0 == run.code, run.err
        assert f"{NAME} -> chain 'events': 12 row(s) recorded, 0 gap(s), cursor at 12" in run.err
        again = cli("ingest", spec, "--ledger", ledger_file)
        assert "0 row(s) recorded, 0 gap(s), cursor at 12" in again.err
        assert 0 == cli("verify", "--ledger", ledger_file).code
        health = cli("health", "--ledger", ledger_file, "--json", "--max-checkpoint-age", "off")
        chains = {c["chain"]: c for c in orjson.loads(health.out)["chains"]}
        assert ({NAME: 12}, {}) == (chains[CHAIN]["sources"], chains[CHAIN]["sinks"])
        text = cli("health", "--ledger", ledger_file, "--max-checkpoint-age", "off")
        assert f"source {NAME} cursor 12" in text.out  # a cursor, not always an id

    def test_chain_option_wins(
        self, cli: Callable[..., Run], table: TableSource, ledger_file: Path, spec: str
    ) -> None:
        """--chain beats the source's own chain."""
        table.insert(2)
        assert 0 == cli("ingest", spec, "--ledger", ledger_file, "--chain", "other").code
        assert 3 == len(list(SqliteLedger(ledger_file).read("other")))  # source.started too

    def test_source_configuration_is_the_default(
        self, cli: Callable[..., Run], table: TableSource, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """Without --ledger, a source's own config gives the ledger (made if missing) and
        the checkpoint key: the command signs as the orchestrator's writers do."""
        signer = Signer.generate("adapter.example")
        ledger_file = tmp_path / "adapter" / "ledger.db"
        monkeypatch.setenv("TEST_SOURCE_DB", str(table.path))
        monkeypatch.setenv("TEST_LEDGER", str(ledger_file))
        monkeypatch.setenv("TEST_SIGNING_KEY", str(signer))
        table.insert(3)
        run = cli("ingest", "tests.core.test_sources:configured_table_source")
        assert 0 == run.code, run.err
        ledger = SqliteLedger(ledger_file)
        assert 3 == ledger.get_cursor(cursor_name(NAME), CHAIN)
        assert 1 == verify_chain(ledger, CHAIN, keys=[signer.verifier]).checkpoints

    def test_unknown_source_is_a_usage_error(self, cli: Callable[..., Run]) -> None:
        """An unknown source: exit 2 and the installed ones listed."""
        run = cli("ingest", "nosuch")
        assert 2 == run.code
        assert "no source 'nosuch' (installed:" in run.err

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("tests.core.no_such_module:x", "cannot be loaded: ModuleNotFoundError"),
            ("tests.core.test_sources:broken_source", "cannot be opened: RuntimeError"),
        ],
    )
    def test_broken_source_is_one_line(
        self, cli: Callable[..., Run], spec: str, message: str
    ) -> None:
        """A source that cannot be loaded or opened: exit 2, one line, no traceback."""
        run = cli("ingest", spec, "--ledger", "x.db")
        assert 2 == run.code
        assert message in run.err
        assert "Traceback" not in run.err

    def test_follow_stops_on_sigterm(self, table: TableSource, ledger_file: Path) -> None:
        """--follow records rows as they come and exits 0 on SIGTERM with its summary."""
        SqliteLedger(ledger_file).head(CHAIN)
        proc = _ingest_cmd(ledger_file, table, "--follow", "--interval", "0.05")
        try:
            _feed(table, ledger_file, 3, 2)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert 0 == proc.returncode, err
        assert "5 row(s) recorded, 0 gap(s), cursor at 5" in err


def test_threads_do_not_leak() -> None:
    """No ingest thread of these tests is left running."""
    assert [] == [t.name for t in threading.enumerate() if t.name == "workflow-audit-ingest"]
