"""append_advancing on PostgreSQL: records and a source's cursor move in one transaction, or
nothing happens, however many writers race (against a real server)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
import psycopg
import pytest

from audit_core import AuditConfig, AuditTrail, Event, PreparedRecord, verify_chain
from audit_core.errors import CursorMoved
from audit_core.ledgers.postgres import PostgresLedger
from audit_core.sources import Ingestor, IngestResult
from tests.core.test_ledger import check_race
from tests.core.test_sources import TableSource


def _prepared(n: int) -> list[PreparedRecord]:
    trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", chain="c"))
    return [trail.prepare(Event(type="row.copied", data={"i": i})) for i in range(n)]


class TestAppendAdvancing:
    """The compare-and-set cursor of the PostgreSQL ledger."""

    def test_absent_cursor_then_match_then_moved(self, pg_ledger: PostgresLedger) -> None:
        """-1 for an absent cursor; a match appends and moves it; a stale expect appends nothing."""
        records = _prepared(3)
        first = pg_ledger.append_advancing(
            records[:2], cursor="source:t", chain="c", expect=-1, to=1
        )
        assert [0, 1] == [s.seq for s in first]
        assert 1 == pg_ledger.get_cursor("source:t", "c")
        with pytest.raises(CursorMoved) as caught:
            pg_ledger.append_advancing(records[2:], cursor="source:t", chain="c", expect=-1, to=2)
        assert (-1, 1) == (caught.value.expected, caught.value.found)
        third = pg_ledger.append_advancing(
            records[2:], cursor="source:t", chain="c", expect=1, to=2
        )
        assert [2] == [s.seq for s in third]
        assert 3 == verify_chain(pg_ledger, "c").size

    def test_empty_records_move_only_the_cursor(self, pg_ledger: PostgresLedger) -> None:
        """No records: the cursor moves (even backwards: a source's ids are no seqs)."""
        assert [] == pg_ledger.append_advancing([], cursor="source:t", chain="c", expect=-1, to=7)
        assert [] == pg_ledger.append_advancing([], cursor="source:t", chain="c", expect=7, to=3)
        assert 3 == pg_ledger.get_cursor("source:t", "c")
        assert [] == pg_ledger.chains()

    def test_replay_returns_the_committed_records(self, pg_ledger: PostgresLedger) -> None:
        """The same batch with the same idempotency keys again (a lost COMMIT reply): the
        records stored by the first call, not CursorMoved and not twice."""
        records = _prepared(2)
        keys = [os.urandom(16) for _ in records]
        advance = ("source:t", "c", -1, 1)
        first = pg_ledger._append_keyed(records, keys, advance)
        assert first == pg_ledger._append_keyed(records, keys, advance)
        assert 2 == verify_chain(pg_ledger, "c").size

    def test_waiting_advancer_loses_to_the_holder(
        self, pg_ledger: PostgresLedger, writer_url: str
    ) -> None:
        """A writer whose CAS waits for another's uncommitted cursor update re-checks after
        that COMMIT and gets CursorMoved."""
        pg_ledger.set_cursor("source:t", "c", 4)
        outcome: list[BaseException | None] = []
        with psycopg.connect(writer_url) as holder:
            holder.execute("UPDATE cursors SET seq = 9 WHERE name = 'source:t' AND chain = 'c'")

            def advance() -> None:
                other = PostgresLedger(writer_url, busy_timeout_s=20)
                try:
                    other.append_advancing(
                        _prepared(1), cursor="source:t", chain="c", expect=4, to=5
                    )
                    outcome.append(None)
                except CursorMoved as exc:
                    outcome.append(exc)
                finally:
                    other.close()

            thread = threading.Thread(target=advance)
            thread.start()
            _wait_for_lock_wait(writer_url)
            holder.commit()
        thread.join(timeout=30)
        assert 1 == len(outcome)
        assert isinstance(outcome[0], CursorMoved)
        assert 9 == pg_ledger.get_cursor("source:t", "c")
        assert pg_ledger.head("c") is None

    @pytest.mark.slow
    def test_four_processes_copy_each_row_once(self, writer_url: str) -> None:
        """4 processes racing over the same 2,000 rows append each exactly once, in order."""
        check_race(PostgresLedger(writer_url), writer_url)


class TestIngestors:
    """Ingestors on a PostgreSQL ledger."""

    def test_three_ingestors_record_each_row_once(self, writer_url: str, tmp_path: Path) -> None:
        """3 ingestors (threads, each with its own connection) over the same 3,000 rows of a
        real table: each row recorded once, in id order."""
        table = TableSource(tmp_path / "source.db")
        table.insert(3000)
        results: list[IngestResult] = []

        def ingest() -> None:
            with AuditTrail(AuditConfig(ledger_url=writer_url, checkpoint_every=0)) as trail:
                source = TableSource(table.path)
                results.append(Ingestor(trail, source, chain="events", batch=100).run())
                source.close()

        threads = [threading.Thread(target=ingest) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        ledger = PostgresLedger(writer_url)
        data = [orjson.loads(r.body)["data"] for r in ledger.read("events")]
        ids = [d["id"] for d in data if "id" in d]  # not the source.started record
        assert list(range(1, 3001)) == ids
        assert 3000 == sum(r.recorded for r in results)
        assert 3000 == ledger.get_cursor("source:test.table", "events")
        table.close()


def _wait_for_lock_wait(url: str) -> None:
    """Until some session of the database waits for a row lock (the second advancer)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(3000):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError("the second advancer never waited for the cursor's row lock")
