"""Idempotency keys: at most one record per (chain, key), in the ledger's append transaction;
keys survive the spool and are no evidence (verify ignores them)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail, Event, verify_chain
from audit_core._record import PreparedRecord
from audit_core.errors import InvalidRecordError, LedgerError
from audit_core.hooks import COUNTERS
from audit_core.ledgers import open_ledger
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.spool import TrailSpool, drain, ledger_key, spool_dirs
from tests.core._spooling import cli


def _count(name: str) -> int:
    return COUNTERS.snapshot().get(name, 0)


def _config(path: Path, chain: str = "c") -> AuditConfig:
    return AuditConfig(ledger_url=f"sqlite:///{path}", chain=chain, checkpoint_every=0)


def _keys(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT chain, key, seq FROM record_keys ORDER BY chain, seq"))
    finally:
        conn.close()


def _events(*keys: str | None, chain: str | None = None) -> list[Event]:
    return [Event(type="test.step", data={"i": i}, key=k, chain=chain) for i, k in enumerate(keys)]


def _verify_read_only(path: Path, size: int) -> None:
    """An auditor's read-only open verifies chain "c" at ``size``."""
    ledger = open_ledger(f"sqlite:///{path}", read_only=True)
    try:
        assert size == verify_chain(ledger, "c").size
    finally:
        ledger.close()


class TestKeyField:
    """Event.key reaches PreparedRecord.key; it is validated and never part of the bytes."""

    @pytest.mark.parametrize(
        "key", ["", "x" * 257, "a\nb", "tab\there", "caf\u00e9", "\x7f", 5, b"bytes"]
    )
    def test_invalid_keys_are_refused(self, tmp_path: Path, key: object) -> None:
        """1..256 printable ASCII characters, a str: anything else is InvalidRecordError."""
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            with pytest.raises(InvalidRecordError, match="key"):
                trail.record("test.step", key=key)  # type: ignore[arg-type]
            with pytest.raises(InvalidRecordError, match="key"):
                trail.prepare(Event(type="test.step", key=key))  # type: ignore[arg-type]
            assert trail.ledger.head("c") is None

    @pytest.mark.parametrize("key", ["k", "x" * 256, "with space", "flowrun.started:1/a~!"])
    def test_valid_keys(self, tmp_path: Path, key: str) -> None:
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            assert 0 == trail.record("test.step", key=key).seq
        assert [("c", key, 0)] == _keys(tmp_path / "l.db")

    def test_key_is_not_in_the_record_bytes(self, tmp_path: Path) -> None:
        """Same event with and without a key: the same canonical bytes; the key is the last
        field of PreparedRecord, None by default."""
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            ts = "2026-12-05T00:00:00.000000Z"
            keyed = trail.prepare(Event(type="test.step", data={"a": 1}, ts=ts, key="k1"))
            plain = trail.prepare(Event(type="test.step", data={"a": 1}, ts=ts))
        assert "k1" == keyed.key
        assert plain.key is None
        assert "key" == PreparedRecord._fields[-1]
        assert keyed.seal(3, "ab" * 32) == plain.seal(3, "ab" * 32)
        assert b"k1" not in keyed.head + keyed.tail


class TestDeduplication:
    """The ledger skips a record whose key its chain holds, or an earlier one of the batch."""

    def test_record_of_a_duplicate_returns_the_earlier_record(self, tmp_path: Path) -> None:
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            first = trail.record("test.step", {"n": 1}, key="run-1")
            trail.record("test.other")
            written, dedup = _count("records_written"), _count("records_deduplicated")
            again = trail.record("test.step", {"n": 2}, key="run-1")
            assert first == again
            assert (written, dedup + 1) == (
                _count("records_written"),
                _count("records_deduplicated"),
            )
            assert 2 == verify_chain(trail.ledger, "c").size
            assert trail.ledger.keyed("c", "run-1") == first
            assert trail.ledger.keyed("c", "nope") is None

    def test_record_many_returns_only_the_appended(self, tmp_path: Path) -> None:
        """Duplicates of stored keys and of earlier records of the batch (first wins) are
        skipped; unkeyed records are never skipped; seqs stay contiguous."""
        path = tmp_path / "l.db"
        with AuditTrail(_config(path)) as trail:
            trail.record("test.step", key="a")
            dedup = _count("records_deduplicated")
            stored = trail.record_many(_events("a", "b", None, "b", "c", None, "a"))
            assert [1, 2, 3, 4] == [s.seq for s in stored]
            data = [orjson.loads(s.body)["data"]["i"] for s in stored]
            assert [1, 2, 4, 5] == data  # "b" is its first record's; both unkeyed kept
            assert dedup + 3 == _count("records_deduplicated")
            assert 5 == verify_chain(trail.ledger, "c").size
        assert [("c", "a", 0), ("c", "b", 1), ("c", "c", 3)] == _keys(path)

    def test_all_duplicates_append_nothing(self, tmp_path: Path) -> None:
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            trail.record_many(_events("a", "b"))
            assert [] == trail.record_many(_events("b", "a", "a"))
            assert [] == trail.ledger.append_many(
                [trail.prepare(e) for e in _events("a", chain="c")]
            )
            assert 1 == trail.ledger.head("c").seq  # type: ignore[union-attr]

    def test_advancing_with_only_duplicates_moves_the_cursor(self, tmp_path: Path) -> None:
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            trail.record_many(_events("a"))
            got = trail.record_advancing(
                _events("a", "a"), cursor="source:t", chain="c", expect=-1, to=5
            )
            assert [] == got
            assert 5 == trail.ledger.get_cursor("source:t", "c")
            got = trail.record_advancing(
                _events("a", "z"), cursor="source:t", chain="c", expect=5, to=6
            )
            assert [1] == [s.seq for s in got]
            assert 6 == trail.ledger.get_cursor("source:t", "c")

    def test_keys_are_per_chain(self, tmp_path: Path) -> None:
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            stored = trail.record_many(
                [*_events("k", chain="one"), *_events("k", chain="two"), *_events("k")]
            )
            assert [("one", 0), ("two", 0), ("c", 0)] == [(s.chain, s.seq) for s in stored]

    def test_unkeyed_records_store_no_key_rows(self, tmp_path: Path) -> None:
        path = tmp_path / "l.db"
        with AuditTrail(_config(path)) as trail:
            trail.record_many(_events(None, None))
            trail.record("test.step")
        assert [] == _keys(path)

    def test_key_rows_are_append_only(self, tmp_path: Path) -> None:
        path = tmp_path / "l.db"
        with AuditTrail(_config(path)) as trail:
            trail.record("test.step", key="a")
        conn = sqlite3.connect(path)
        try:
            for sql in (
                "UPDATE record_keys SET seq = 5",
                "DELETE FROM record_keys",
            ):
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    conn.execute(sql)
        finally:
            conn.close()

    def test_racing_writers_append_a_key_once(self, tmp_path: Path) -> None:
        """Many ledgers (connections) on one file append the same keys at once: one record
        per key."""
        path = tmp_path / "l.db"
        config = _config(path)
        with AuditTrail(config) as trail:
            trail.record("test.init")
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with AuditTrail(config) as trail:
                    barrier.wait()
                    for n in range(20):
                        trail.record_many(_events(f"k{n}", f"k{n + 1}"))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [] == errors
        with AuditTrail(config) as trail:
            assert 22 == verify_chain(trail.ledger, "c").size
        assert [f"k{n}" for n in range(21)] == sorted(
            (k for _, k, _ in _keys(path)), key=lambda k: int(k[1:])
        )


class TestOlderLedgers:
    """A ledger made before keys existed (no record_keys table)."""

    def _old_ledger(self, path: Path) -> None:
        with AuditTrail(_config(path)) as trail:
            trail.record_many(_events(None, None, None))
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE record_keys")
        conn.close()

    def test_read_only_open_verifies_without_the_table(self, tmp_path: Path) -> None:
        path = tmp_path / "l.db"
        self._old_ledger(path)
        ledger = open_ledger(f"sqlite:///{path}", read_only=True)
        try:
            assert 3 == verify_chain(ledger, "c").size
            with ledger.snapshot() as snap:
                assert 3 == verify_chain(snap, "c").size
        finally:
            ledger.close()
        conn = sqlite3.connect(path)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        conn.close()
        assert "record_keys" not in names  # the auditor created nothing
        assert 0 == cli("verify", "--ledger", str(path)).returncode

    @pytest.mark.parametrize("create", [True, False])
    def test_a_writer_adds_the_table(self, tmp_path: Path, create: bool) -> None:
        path = tmp_path / "l.db"
        self._old_ledger(path)
        ledger = SqliteLedger(path, create=create)
        try:
            with AuditTrail(_config(path), ledger=ledger) as trail:
                assert 3 == trail.record("test.step", key="a").seq
                assert 3 == trail.record("test.step", key="a").seq
                assert 4 == verify_chain(trail.ledger, "c").size
        finally:
            ledger.close()
        _verify_read_only(path, 4)

    def test_ledger_with_keys_verifies(self, tmp_path: Path) -> None:
        path = tmp_path / "l.db"
        with AuditTrail(_config(path)) as trail:
            trail.record_many(_events("a", "b", "a", None))
            trail.checkpoint("c")
        done = cli("verify", "--ledger", str(path))
        assert 0 == done.returncode, done.stdout + done.stderr
        _verify_read_only(path, 3)

    def test_no_writer_table_in_a_file_that_is_no_ledger(self, tmp_path: Path) -> None:
        other = tmp_path / "other.db"
        conn = sqlite3.connect(other)
        conn.execute("CREATE TABLE notes (x)")
        conn.close()
        ledger = SqliteLedger(other, create=False)
        try:
            with pytest.raises(LedgerError):
                ledger.head("c")
        finally:
            ledger.close()
        conn = sqlite3.connect(other)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        conn.close()
        assert ["notes"] == names


class TestSpool:
    """A spooled record keeps its key; the drain skips one whose key landed meanwhile."""

    def test_key_survives_the_spool_and_a_landed_key_is_skipped(self, tmp_path: Path) -> None:
        path = tmp_path / "l.db"
        config = _config(path)
        with AuditTrail(config) as trail:
            trail.record("test.init")
            spool = TrailSpool(lambda: trail)
            spool.spill(
                [
                    Event(type="test.step", data={"n": 1}, key="a", ts="2026-12-05T00:00:01Z"),
                    Event(type="test.step", data={"n": 2}, key="b", ts="2026-12-05T00:00:02Z"),
                    Event(type="test.step", data={"n": 3}, ts="2026-12-05T00:00:03Z"),
                ]
            )
            spool.close()
            # the follower recorded "a" while the record waited in the spool
            trail.record("test.step", {"n": 1}, key="a")
        files = [p for d in spool_dirs(config) for p in d.glob("*.spool")]
        lines = [orjson.loads(x) for p in files for x in p.read_bytes().splitlines()]
        assert ["a", "b", None] == [line.get("key") for line in lines]
        ledger = open_ledger(config.ledger_url)
        dedup = _count("records_deduplicated")
        try:
            drained = sum(
                drain(ledger, d, ledger_key(config.ledger_url)).drained for d in spool_dirs(config)
            )
            assert 3 == drained  # the skipped one counts as drained
            assert dedup + 1 == _count("records_deduplicated")
            assert 4 == verify_chain(ledger, "c").size
            assert [] == [p for d in spool_dirs(config) for p in d.glob("*.spool")]
            spooled_b = ledger.keyed("c", "b")
            assert spooled_b is not None
            assert 2 == orjson.loads(spooled_b.body)["data"]["n"]
        finally:
            ledger.close()
        assert ["a", "b"] == [k for _, k, _ in _keys(path)]

    def test_a_line_with_an_invalid_key_is_corrupt(self, tmp_path: Path) -> None:
        from audit_core._spoolfile import read_spool_file

        config = _config(tmp_path / "l.db")
        with AuditTrail(config) as trail:
            spool = TrailSpool(lambda: trail)
            spool.spill([Event(type="test.step", key="ok")])
            spool.close()
        (file,) = [p for d in spool_dirs(config) for p in d.glob("*.spool")]
        assert ["ok"] == [r.key for r in read_spool_file(file).records]
        line = orjson.loads(file.read_bytes())
        line["key"] = "bad\nkey"
        del line["sum"]
        import hashlib

        from audit_core._jcs import canonical_bytes

        line["sum"] = hashlib.sha256(canonical_bytes(line)).hexdigest()
        file.write_bytes(canonical_bytes(line) + b"\n")
        contents = read_spool_file(file)
        assert ([], 1) == (contents.records, len(contents.corrupt))
