"""The PostgreSQL ledger against a real server: the Ledger contract, append-only roles,
pgaudit, retries without duplicates, and many processes on one chain and on several."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from audit_core import AuditConfig, AuditTrail, Event, open_ledger, verify_chain, verify_ledger
from audit_core._record import StoredCosignature
from audit_core.errors import LedgerError
from audit_core.ledgers import Ledger
from audit_core.ledgers.postgres import PostgresLedger
from audit_core.ledgers.sqlite import SqliteLedger
from testkit.postgres import PgServer

ROOT = Path(__file__).parents[2]

# A writer process: appends COUNT records to CHAIN (BATCH at a time) and prints "seq hash" for
# each acknowledged record, flushing each line.
_WRITER = """
import sys
from audit_core import AuditConfig, AuditTrail, Event
url, writer, count, batch, chain = sys.argv[1:6]
count, batch = int(count), int(batch)
trail = AuditTrail(AuditConfig(ledger_url=url, actor=("process", writer), chain=chain,
                               checkpoint_every=0, busy_timeout_s=60))
i = 0
while i < count:
    events = [Event(type="task.succeeded", data={"writer": writer, "i": i + k})
              for k in range(min(batch, count - i))]
    stored = trail.record_many(events) if batch > 1 else [
        trail.record(events[0].type, events[0].data)]
    sys.stdout.write("".join(f"{s.chain} {s.seq} {s.hash.hex()}\\n" for s in stored))
    sys.stdout.flush()
    i += len(stored)
trail.close()
"""


def _spawn(
    url: str, writer: str, count: int, chain: str = "default", batch: int = 1
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, writer, str(count), str(batch), chain],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _trail(url: str, **kwargs: object) -> AuditTrail:
    return AuditTrail(
        AuditConfig(ledger_url=url, actor=("service", "tests"), checkpoint_every=0, **kwargs)  # type: ignore[arg-type]
    )


def _writers_and_indexes(ledger: Ledger, chain: str) -> list[tuple[bytes, bytes]]:
    found = []
    for r in ledger.read(chain):
        writer = r.body.split(b'"writer":"')[1].split(b'"')[0]
        i = r.body.split(b'"data":{"i":')[1].split(b",")[0]
        found.append((writer, i))
    return found


class TestPostgresLedger:
    """The Ledger protocol, as SQLite passes it."""

    def test_is_a_ledger(self, pg_ledger: PostgresLedger) -> None:
        """PostgresLedger satisfies the Ledger protocol."""
        assert isinstance(pg_ledger, Ledger)

    def test_open_ledger_url(self, writer_url: str) -> None:
        """open_ledger gives a PostgresLedger for postgresql:// URLs, password hidden."""
        ledger = open_ledger(writer_url)
        assert isinstance(ledger, PostgresLedger)
        assert "writer-pw" not in repr(ledger)

    def test_seq_and_prev_are_assigned(self, writer_url: str) -> None:
        """Records get contiguous seqs, each linked to the previous hash."""
        with _trail(writer_url) as trail:
            a = trail.record("task.started", {"i": 0})
            b = trail.record("task.succeeded", {"i": 1})
            assert (0, 1) == (a.seq, b.seq)
            assert a.hash.hex().encode() in b.body
            assert b == trail.ledger.head("default")

    def test_same_bytes_and_tree_as_sqlite(self, pg_ledger: PostgresLedger) -> None:
        """The same prepared records give the same bytes, roots and nodes as SQLite."""
        lite = SqliteLedger(None)
        trail = _trail("sqlite:///:memory:")
        prepared = [
            trail.prepare(
                Event(type="task.started", data={"i": i}, ts="2026-01-01T00:00:00.000000Z")
            )
            for i in range(37)
        ]
        assert lite.append_many(prepared[:5]) == pg_ledger.append_many(prepared[:5])
        for p in prepared[5:]:
            assert lite.append(p) == pg_ledger.append(p)
        assert lite.tree_head("default") == pg_ledger.tree_head("default")
        assert lite.node("default", 4, 1) == pg_ledger.node("default", 4, 1)
        assert lite.node("default", 0, 36) == pg_ledger.node("default", 0, 36)
        fresh = PostgresLedger(pg_ledger.url)  # no cached frontier: read from the subtrees
        assert lite.tree_head("default") == fresh.tree_head("default")

    def test_read_ranges_and_chains(self, writer_url: str) -> None:
        """read() streams a seq range; chains are independent."""
        with _trail(writer_url) as trail:
            for i in range(10):
                trail.record("task.started", {"i": i})
            trail.record("model.deployed", {"v": 1}, chain="prod")
            assert [3, 4, 5] == [r.seq for r in trail.ledger.read("default", 3, 6)]
            assert ["default", "prod"] == trail.ledger.chains()
            assert [10, 1] == [h.size for h in verify_ledger(trail.ledger)]

    def test_append_many_is_atomic(self, writer_url: str) -> None:
        """When any record of a batch fails, none of the batch is written."""
        with _trail(writer_url) as trail:
            trail.record("task.started")
            good = trail.prepare(Event(type="task.started"))
            # bytes that cannot be sealed: it fails inside the transaction
            bad = trail.prepare(Event(type="task.started"))._replace(head=None)
            with pytest.raises(TypeError):
                trail.ledger.append_many([good, good, bad])
            assert 1 == verify_chain(trail.ledger, "default").size
            assert [1, 2] == [r.seq for r in trail.ledger.append_many([good, good])]

    def test_batch_across_chains(self, pg_ledger: PostgresLedger) -> None:
        """One batch may interleave chains; each gets its own contiguous seqs."""
        trail = _trail("sqlite:///:memory:")
        events = [Event(type="task.started", chain=c) for c in ("b", "a", "b", "a", "b")]
        stored = pg_ledger.append_many([trail.prepare(e) for e in events])
        assert [("b", 0), ("a", 0), ("b", 1), ("a", 1), ("b", 2)] == [
            (s.chain, s.seq) for s in stored
        ]
        assert [2, 3] == [h.size for h in verify_ledger(pg_ledger)]

    def test_checkpoints_verify(self, writer_url: str, tmp_path: Path) -> None:
        """Checkpoints signed from the Postgres tree verify with the trail's key."""
        key = tmp_path / "key"
        trail = AuditTrail(
            AuditConfig(ledger_url=writer_url, checkpoint_every=10, signing_key=None)
        )
        for i in range(35):
            trail.record("task.started", {"i": i})
        trail.close()
        assert [10, 20, 30, 35] == [c.size for c in trail.ledger.checkpoints("default")]
        assert 4 == verify_chain(trail.ledger, "default").checkpoints
        assert not key.exists()

    def test_cursors_only_move_forward(self, pg_ledger: PostgresLedger) -> None:
        """A consumer cursor starts at -1 and never moves back."""
        assert -1 == pg_ledger.get_cursor("otlp", "default")
        pg_ledger.set_cursor("otlp", "default", 5)
        pg_ledger.set_cursor("otlp", "default", 3)
        assert 5 == pg_ledger.get_cursor("otlp", "default")

    def test_fork_safety(self, writer_url: str) -> None:
        """A forked child reconnects instead of reusing the parent's connection."""
        with _trail(writer_url) as trail:
            trail.record("task.started", {"who": "parent"})
            pid = os.fork()
            if pid == 0:
                try:
                    trail.record("task.started", {"who": "child"})
                    os._exit(0)
                finally:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            assert 0 == os.waitstatus_to_exitcode(status)
            trail.record("task.succeeded", {"who": "parent"})
            assert 3 == verify_chain(trail.ledger, "default").size

    def test_unreachable_server_raises_ledger_error(self, pg_server: PgServer) -> None:
        """A server that refuses connections gives LedgerError after busy_timeout_s."""
        ledger = PostgresLedger(
            pg_server.url().replace(str(pg_server.port), "1"), busy_timeout_s=0.3
        )
        with pytest.raises(LedgerError, match=r"within 0\.3 s"):
            ledger.head("default")


class TestRetries:
    """Transient errors are retried; a record is never stored twice."""

    def test_same_keys_append_once(self, pg_ledger: PostgresLedger) -> None:
        """Appending again with the keys of a committed batch returns the stored records."""
        prepared = [
            _trail("sqlite:///:memory:").prepare(Event(type="task.started")) for _ in range(3)
        ]
        keys = [os.urandom(16) for _ in prepared]
        first = pg_ledger._append_keyed(prepared, keys)
        assert first == pg_ledger._append_keyed(prepared, keys)
        assert 3 == verify_chain(pg_ledger, "default").size

    def test_killed_connection_is_replaced(self, pg_ledger: PostgresLedger, owner_url: str) -> None:
        """After the server ends the writer's session, the next append reconnects."""
        prepared = _trail("sqlite:///:memory:").prepare(Event(type="task.started"))
        pg_ledger.append(prepared)
        with psycopg.connect(owner_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = 'etl_writer' AND datname = current_database()"
            )
        assert 1 == pg_ledger.append(prepared).seq
        assert 2 == verify_chain(pg_ledger, "default").size

    def test_head_row_is_not_trusted(self, pg_ledger: PostgresLedger, writer_url: str) -> None:
        """A rewritten chain_heads row cannot fork the chain: the records win."""
        prepared = _trail("sqlite:///:memory:").prepare(Event(type="task.started"))
        pg_ledger.append_many([prepared] * 3)
        with psycopg.connect(writer_url, autocommit=True) as conn:
            conn.execute("UPDATE chain_heads SET seq = 0, hash = '\\x00'")
        assert 3 == PostgresLedger(writer_url).append(prepared).seq
        assert 4 == verify_chain(pg_ledger, "default").size


class TestAppendOnly:
    """The database refuses to change history, whoever asks."""

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE records SET body = '\\x00'",
            "DELETE FROM records",
            "TRUNCATE records",
            "UPDATE merkle_subtrees SET hashes = '\\x00'",
            "DELETE FROM checkpoints",
            "DELETE FROM cosignatures",
            "UPDATE cosignatures SET line = ''",
        ],
    )
    def test_writer_cannot_change_records(
        self, pg_ledger: PostgresLedger, writer_url: str, sql: str
    ) -> None:
        """The writer role gets permission denied for UPDATE, DELETE and TRUNCATE."""
        pg_ledger.append(_trail("sqlite:///:memory:").prepare(Event(type="task.started")))
        with (
            psycopg.connect(writer_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
        ):
            conn.execute(sql)
        assert 1 == verify_chain(pg_ledger, "default").size

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE records SET seq = 7",
            "DELETE FROM records",
            "TRUNCATE records",
            "TRUNCATE cosignatures",
        ],
    )
    def test_owner_is_refused_by_triggers(
        self, pg_ledger: PostgresLedger, owner_url: str, sql: str
    ) -> None:
        """Even the tables' owner is refused by the append-only triggers."""
        pg_ledger.append(_trail("sqlite:///:memory:").prepare(Event(type="task.started")))
        with (
            psycopg.connect(owner_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute(sql)
        assert 1 == verify_chain(pg_ledger, "default").size

    def test_cosignatures_round_trip(
        self, pg_ledger: PostgresLedger, writer_url: str, auditor_url: str
    ) -> None:
        """The writer stores a witness's cosignature once; the auditor reads it back."""
        row = StoredCosignature("default", 1, "o/default\n1\nAA==\n", "— w x", "t")
        writer = PostgresLedger(writer_url, create=False)
        assert (True, False) == (writer.add_cosignature(row), writer.add_cosignature(row))
        assert ["default"] == writer.cosigned_chains()
        auditor = PostgresLedger(auditor_url, create=False, read_only=True)
        assert [row] == auditor.cosignatures("default")
        with auditor.snapshot() as view:
            assert [row] == view.cosignatures("default")

    def test_auditor_cannot_insert(self, pg_ledger: PostgresLedger, auditor_url: str) -> None:
        """The auditor role reads the ledger but cannot append to it."""
        prepared = _trail("sqlite:///:memory:").prepare(Event(type="task.started"))
        pg_ledger.append(prepared)
        auditor = PostgresLedger(auditor_url, create=False)
        assert 1 == verify_chain(auditor, "default").size
        with pytest.raises(LedgerError, match="permission denied"):
            auditor.append(prepared)

    def test_attempted_update_is_in_the_audit_log(
        self, pg_server: PgServer, pg_ledger: PostgresLedger, owner_url: str
    ) -> None:
        """pgaudit writes an AUDIT line for an attempted UPDATE of the records."""
        pg_ledger.append(_trail("sqlite:///:memory:").prepare(Event(type="task.started")))
        marker = f"seq = {int(time.time() * 1000)}"
        with (
            psycopg.connect(owner_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(f"UPDATE records SET {marker}")  # noqa: S608 - our own constant
        line = pg_server.wait_for_log(marker)
        assert "AUDIT: SESSION" in line
        assert "WRITE,UPDATE" in line

    def test_writer_attempt_is_in_the_server_log(
        self, pg_server: PgServer, pg_ledger: PostgresLedger, writer_url: str
    ) -> None:
        """The writer's refused UPDATE is logged with its statement (pgaudit logs only what
        passes the privilege check, so this is PostgreSQL's own error log line)."""
        pg_ledger.append(_trail("sqlite:///:memory:").prepare(Event(type="task.started")))
        marker = f"seq = {int(time.time() * 1000) + 1}"
        with (
            psycopg.connect(writer_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(f"UPDATE records SET {marker}")  # noqa: S608 - our own constant
        line = pg_server.wait_for_log(f"STATEMENT:  UPDATE records SET {marker}")  # noqa: S608
        assert "etl_writer@" in line


@pytest.mark.slow
class TestConcurrency:
    """Many processes, one server."""

    def _run(self, url: str, chains: list[str], procs: int, count: int) -> list[str]:
        running = [_spawn(url, f"w{i}", count, chains[i % len(chains)]) for i in range(procs)]
        acknowledged = []
        for p in running:
            out, err = p.communicate(timeout=240)
            assert 0 == p.returncode, err
            acknowledged += out.splitlines()
        return acknowledged

    def test_eight_processes_one_chain(self, writer_url: str) -> None:
        """8 processes x 2,000 appends give one valid chain of 16,000 records."""
        acknowledged = self._run(writer_url, ["default"], 8, 2000)
        ledger = PostgresLedger(writer_url)
        assert 16_000 == verify_chain(ledger, "default", expect_size=16_000).size
        assert list(range(16_000)) == sorted(int(a.split()[1]) for a in acknowledged)
        assert 16_000 == len(set(_writers_and_indexes(ledger, "default")))

    def test_eight_processes_four_streams(self, writer_url: str) -> None:
        """8 processes x 2,000 appends over 4 chains give 4 valid chains of 4,000."""
        chains = ["s0", "s1", "s2", "s3"]
        acknowledged = self._run(writer_url, chains, 8, 2000)
        ledger = PostgresLedger(writer_url)
        assert [4000] * 4 == [h.size for h in verify_ledger(ledger, chains)]
        per_chain = Counter(a.split()[0] for a in acknowledged)
        assert dict.fromkeys(chains, 4000) == dict(per_chain)

    def test_server_restart_loses_and_duplicates_nothing(
        self, pg_server: PgServer, writer_url: str
    ) -> None:
        """A server restart mid-run: writers retry; every record once, every ack stored."""
        running = [_spawn(writer_url, f"w{i}", 1500, batch=1 + 9 * (i % 2)) for i in range(4)]
        assert running[0].stdout is not None
        for _ in range(200):  # let them get going
            running[0].stdout.readline()
        pg_server.restart()
        acknowledged, errors = [], ""
        for p in running:
            out, err = p.communicate(timeout=240)
            assert 0 == p.returncode, err
            acknowledged += out.splitlines()
            errors += err
        assert "retrying" in errors  # the writers did meet the restart
        ledger = PostgresLedger(writer_url)
        assert 6000 == verify_chain(ledger, "default").size
        stored = {r.seq: r.hash.hex() for r in ledger.read("default")}
        for line in acknowledged:
            _, seq, digest = line.split()
            assert digest == stored[int(seq)]
        assert 6000 == len(set(_writers_and_indexes(ledger, "default")))
