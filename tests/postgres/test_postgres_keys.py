"""Idempotency keys on PostgreSQL (a real server): one record per (chain, key) however many
writers race, the key table append-only for every role, retries still without duplicates, and
ledgers made before keys still readable."""

from __future__ import annotations

import logging
import os
import threading
import time

import psycopg
import pytest

from audit_core import AuditConfig, AuditTrail, Event, PreparedRecord, verify_chain
from audit_core.errors import CursorMoved, LedgerError
from audit_core.hooks import COUNTERS
from audit_core.ledgers.postgres import PostgresLedger
from audit_core.ledgers.postgres_admin import init

_TRAIL = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", chain="c"))


def _prepared(*keys: str | None, chain: str = "c") -> list[PreparedRecord]:
    return [
        _TRAIL.prepare(Event(type="test.step", data={"i": i}, key=k, chain=chain))
        for i, k in enumerate(keys)
    ]


def _count(name: str) -> int:
    return COUNTERS.snapshot().get(name, 0)


def _key_rows(url: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT chain, key, seq FROM record_keys ORDER BY chain, seq")
        return [(c, k, int(s)) for c, k, s in rows]


class TestKeys:
    def test_duplicates_are_skipped_and_not_returned(
        self, pg_ledger: PostgresLedger, writer_url: str
    ) -> None:
        first = pg_ledger.append(_prepared("a")[0])
        stored = pg_ledger.append_many(_prepared("a", "b", None, "b", "c"))
        assert [1, 2, 3] == [s.seq for s in stored]
        assert [] == pg_ledger.append_many(_prepared("c", "b"))
        assert first == pg_ledger.append(_prepared("a")[0])  # the earlier record
        assert first == pg_ledger.keyed("c", "a")
        assert pg_ledger.keyed("c", "zz") is None
        assert 4 == verify_chain(pg_ledger, "c").size
        assert [("c", "a", 0), ("c", "b", 1), ("c", "c", 3)] == _key_rows(writer_url)

    def test_keys_are_per_chain(self, pg_ledger: PostgresLedger) -> None:
        stored = pg_ledger.append_many([*_prepared("k", chain="x"), *_prepared("k", chain="y")])
        assert [("x", 0), ("y", 0)] == [(s.chain, s.seq) for s in stored]

    def test_advancing_with_only_duplicates_moves_the_cursor(
        self, pg_ledger: PostgresLedger
    ) -> None:
        pg_ledger.append_many(_prepared("a"))
        got = pg_ledger.append_advancing(
            _prepared("a"), cursor="source:t", chain="c", expect=-1, to=9
        )
        assert [] == got
        assert 9 == pg_ledger.get_cursor("source:t", "c")

    def test_trail_counts_and_returns_the_earlier_record(self, writer_url: str) -> None:
        config = AuditConfig(ledger_url=writer_url, chain="c", checkpoint_every=0)
        with AuditTrail(config) as trail:
            first = trail.record("test.step", key="run-1")
            assert first == trail.record("test.step", {"again": True}, key="run-1")
            assert [] == trail.record_many([Event(type="test.step", key="run-1")])
            assert 1 == verify_chain(trail.ledger, "c").size

    def test_replayed_keyed_batch_returns_what_it_stored(self, pg_ledger: PostgresLedger) -> None:
        """The retry of a committed batch (its idem keys found) returns the records it
        appended, not an error, though it skipped a duplicate."""
        pg_ledger.append_many(_prepared("a"))
        batch = _prepared("a", "b", None)
        idem = [os.urandom(16) for _ in batch]
        first = pg_ledger._append_keyed(batch, idem)
        assert [1, 2] == [s.seq for s in first]
        assert first == pg_ledger._append_keyed(batch, idem)
        assert 3 == verify_chain(pg_ledger, "c").size

    def test_replayed_advancing_batch_of_duplicates_returns_nothing(
        self, pg_ledger: PostgresLedger
    ) -> None:
        """The retry of a committed advancing batch whose records were all duplicates (no
        idem row stored, the cursor moved by it): [] again, not CursorMoved; a cursor moved
        elsewhere, or a key not stored, is still CursorMoved."""
        pg_ledger.append_many(_prepared("a", "b"))
        batch = _prepared("a", "b")
        idem = [os.urandom(16) for _ in batch]
        advance = ("source:t", "c", -1, 9)
        assert [] == pg_ledger._append_keyed(batch, idem, advance)
        assert [] == pg_ledger._append_keyed(batch, idem, advance)
        assert 9 == pg_ledger.get_cursor("source:t", "c")
        with pytest.raises(CursorMoved):  # the cursor holds 9, not this call's 8
            pg_ledger._append_keyed(batch, idem, ("source:t", "c", -1, 8))
        fresh = _prepared("a", "new")
        with pytest.raises(CursorMoved):  # "new" was never stored: not a replay
            pg_ledger._append_keyed(fresh, [os.urandom(16) for _ in fresh], advance)
        assert 2 == verify_chain(pg_ledger, "c").size

    def test_racing_writers_append_a_key_once(
        self, pg_ledger: PostgresLedger, writer_url: str, owner_url: str
    ) -> None:
        """Writers queued on the chain's lock with the same key: the first appends, every
        later one finds the key (it reads after the lock) and appends nothing, no error."""
        pg_ledger.append_many(_prepared(None))
        results: list[object] = []
        lock = threading.Lock()

        def write() -> None:
            ledger = PostgresLedger(writer_url, busy_timeout_s=60)
            try:
                got: object = ledger.append_many(_prepared("same", "other"))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                got = exc
            finally:
                ledger.close()
            with lock:
                results.append(got)

        with psycopg.connect(owner_url) as holder:
            holder.execute("SELECT 1 FROM chain_heads WHERE chain = 'c' FOR UPDATE")
            threads = [threading.Thread(target=write) for _ in range(4)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with psycopg.connect(owner_url, autocommit=True) as probe:
                    waiting = probe.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'etl_writer' "
                        "AND wait_event_type = 'Lock'"
                    ).fetchone()
                if waiting is not None and waiting[0] == 4:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the writers never queued on the chain's lock")
            holder.rollback()
        for t in threads:
            t.join(120)
        assert all(isinstance(r, list) for r in results), results
        assert [2, 0, 0, 0] == sorted((len(r) for r in results), reverse=True)  # type: ignore[arg-type]
        assert 3 == verify_chain(pg_ledger, "c").size
        assert ["other", "same"] == sorted(k for _, k, _ in _key_rows(writer_url))

    def test_many_racing_processes_threads(self, writer_url: str) -> None:
        """Free-running threads, each its own connection, overlapping keys: one record each."""
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def write() -> None:
            ledger = PostgresLedger(writer_url, busy_timeout_s=60)
            try:
                barrier.wait()
                for n in range(15):
                    ledger.append_many(_prepared(f"k{n}", f"k{n + 1}"))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                ledger.close()

        threads = [threading.Thread(target=write) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [] == errors
        ledger = PostgresLedger(writer_url)
        try:
            assert 16 == verify_chain(ledger, "c").size
        finally:
            ledger.close()


class TestAppendOnlyKeys:
    @pytest.mark.parametrize(
        "sql", ["UPDATE record_keys SET seq = 7", "DELETE FROM record_keys", "TRUNCATE record_keys"]
    )
    def test_writer_and_owner_cannot_change_keys(
        self, pg_ledger: PostgresLedger, writer_url: str, owner_url: str, sql: str
    ) -> None:
        pg_ledger.append(_prepared("a")[0])
        for url, match in ((writer_url, "permission denied"), (owner_url, "append-only")):
            with (
                psycopg.connect(url, autocommit=True) as conn,
                pytest.raises(psycopg.errors.InsufficientPrivilege, match=match),
            ):
                conn.execute(sql)
        assert [("c", "a", 0)] == _key_rows(owner_url)

    def test_auditor_reads_keys_but_cannot_insert(
        self, pg_ledger: PostgresLedger, auditor_url: str
    ) -> None:
        pg_ledger.append(_prepared("a")[0])
        assert [("c", "a", 0)] == _key_rows(auditor_url)
        with (
            psycopg.connect(auditor_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("INSERT INTO record_keys VALUES ('c', 'b', 5)")
        auditor = PostgresLedger(auditor_url, read_only=True)
        try:
            assert 1 == verify_chain(auditor, "c").size
            with pytest.raises(LedgerError):
                auditor.append(_prepared("b")[0])
        finally:
            auditor.close()


class TestOlderLedgers:
    def test_writer_appends_keyed_records_without_the_key_table(
        self,
        pg_ledger: PostgresLedger,
        owner_url: str,
        auditor_url: str,
        writer_url: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A ledger made before keys, a writer that may not create tables: the auditor
        verifies it, keyed appends go on without dedupe (nothing lost beats no duplicate),
        warned once and counted; the writer creates nothing; after `postgres init` the same
        writer dedupes again within its re-check interval, without reconnecting."""
        pg_ledger.append_many(_prepared(None, None))
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("DROP TABLE record_keys")
        auditor = PostgresLedger(auditor_url, read_only=True)
        try:
            assert 2 == verify_chain(auditor, "c").size
        finally:
            auditor.close()
        before = _count("ledger_keys_unavailable")
        for create in (True, False):
            writer = PostgresLedger(writer_url, create=create)
            writer.keys_recheck_s = 0.5
            try:
                with caplog.at_level(logging.WARNING, logger="workflow_audit"):
                    stored = [writer.append(_prepared("a")[0]) for _ in range(2)]
                    stored += writer.append_many(_prepared("a", "b", None))
                    stored += writer.append_advancing(
                        _prepared("a"), cursor=f"source:{create}", chain="c", expect=-1, to=1
                    )
                assert 6 == len({s.seq for s in stored})
            finally:
                writer.close()
        assert 10 == _count("ledger_keys_unavailable") - before  # the keyed records
        warnings = [r for r in caplog.records if "record_keys" in r.getMessage()]
        assert 1 == len(warnings), [r.getMessage() for r in caplog.records]
        assert "workflow-audit postgres init" in warnings[0].getMessage()
        assert not [r for r in caplog.records if "permission denied" in r.getMessage()]
        with psycopg.connect(owner_url) as conn:  # the writer never made the table
            assert (None,) == conn.execute("SELECT to_regclass('record_keys')").fetchone()

        writer = PostgresLedger(writer_url)
        writer.keys_recheck_s = 0.5
        try:
            assert 14 == writer.append(_prepared("a")[0]).seq
            session = writer._conn
            init(owner_url)
            checked = time.monotonic()
            while time.monotonic() < checked + writer.keys_recheck_s:  # the writer's interval
                time.sleep(0.05)
            again = writer.append(_prepared("z")[0])
            assert again == writer.append(_prepared("z")[0])
            assert [] == writer.append_many(_prepared("z"))
            assert session is writer._conn  # the same connection: no restart, no reconnect
            assert 16 == verify_chain(writer, "c").size
            assert [("c", "z", 15)] == _key_rows(owner_url)
        finally:
            writer.close()

    def test_reconnect_rechecks_the_key_table(
        self, pg_ledger: PostgresLedger, owner_url: str, writer_url: str
    ) -> None:
        """A writer that found no key table looks again when it reconnects, whatever the
        interval."""
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("DROP TABLE record_keys")
        assert 0 == pg_ledger.append(_prepared("a")[0]).seq
        init(owner_url)
        pg_ledger.close()  # the next append opens a new session
        assert 1 == pg_ledger.append(_prepared("a")[0]).seq
        assert 1 == pg_ledger.append(_prepared("a")[0]).seq
        assert [("c", "a", 1)] == _key_rows(owner_url)

    def test_owner_writer_adds_the_table(
        self, pg_ledger: PostgresLedger, owner_url: str, auditor_url: str
    ) -> None:
        """A ledger whose role owns the tables adds record_keys to an older ledger on
        connect, append-only and granted to the writer and auditor roles as init does."""
        pg_ledger.append_many(_prepared(None))
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("DROP TABLE record_keys")
        owner = PostgresLedger(owner_url)
        try:
            assert 1 == owner.append(_prepared("a")[0]).seq
            assert 1 == owner.append(_prepared("a")[0]).seq
        finally:
            owner.close()
        pg_ledger.close()  # a new session: the writer finds the table at once
        assert 2 == pg_ledger.append(_prepared("b")[0]).seq
        assert [] == pg_ledger.append_many(_prepared("a", "b"))
        assert [("c", "a", 1), ("c", "b", 2)] == _key_rows(auditor_url)
        with (
            psycopg.connect(owner_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute("DELETE FROM record_keys")
