"""Verifying a PostgreSQL ledger while writers append (issue 11, items 1 and 3): the auditor
role's ``verify`` and ``report`` see one REPEATABLE READ snapshot, so appends never look like
tampering; a real tamper made meanwhile, and a cut tail with its subtrees left, are caught."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.cli import main
from audit_core.ledgers.postgres import PostgresLedger

ROOT = Path(__file__).parents[2]
WRITERS = 3
RUNS = (["verify"], ["report", "--format", "json"], ["verify", "--json"])

# Appends until killed, one record a transaction, a checkpoint every 8 records.
_WRITER = """
import sys
from audit_core import AuditConfig, AuditTrail
trail = AuditTrail(AuditConfig(ledger_url=sys.argv[1], actor=("process", sys.argv[2]),
                               checkpoint_every=8, busy_timeout_s=60))
i = 0
while True:
    trail.record("task.succeeded", {"writer": sys.argv[2], "i": i})
    i += 1
    if i == 1:
        sys.stdout.write("started\\n")
        sys.stdout.flush()
"""


def _size(url: str) -> int:
    ledger = PostgresLedger(url, read_only=True)
    try:
        head = ledger.head("default")
        return 0 if head is None else head.seq + 1
    finally:
        ledger.close()


@pytest.fixture
def live(writer_url: str) -> Iterator[list[subprocess.Popen[str]]]:
    """200 records, then WRITERS processes appending as the writer role until the test ends."""
    config = AuditConfig(ledger_url=writer_url, actor=("service", "tests"), checkpoint_every=50)
    with AuditTrail(config) as trail:
        trail.record_many([Event(type="task.succeeded", data={"i": i}) for i in range(200)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, writer_url, f"w{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for i in range(WRITERS)
    ]
    try:
        for proc in procs:  # wait until each has appended
            assert proc.stdout is not None
            assert "started\n" == proc.stdout.readline()
            threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def _owner_sql(owner_url: str, *statements: str) -> None:
    with psycopg.connect(owner_url, autocommit=True) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement.encode())


class TestLiveVerifyPostgres:
    """verify and report as the auditor role while the writer role appends."""

    def test_no_false_alarm_while_writers_append(
        self,
        live: list[subprocess.Popen[str]],
        auditor_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """verify and report exit 0 on each of 30 runs during appends."""
        before = _size(auditor_url)
        failures = []
        for args in itertools.islice(itertools.cycle(RUNS), 30):
            code = main([*args, "--ledger", auditor_url])
            out = capsys.readouterr()
            if code != 0:
                failures.append(f"{args}: {code}: {out.err.strip()[:300]} {out.out[:300]}")
        assert [None] * WRITERS == [p.poll() for p in live]
        assert [] == failures
        assert _size(auditor_url) > before

    def test_tamper_during_writes_is_caught(
        self,
        live: list[subprocess.Popen[str]],
        auditor_url: str,
        owner_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A record body rewritten by the owner while writers append fails verify and report."""
        _owner_sql(
            owner_url,
            "ALTER TABLE records DISABLE TRIGGER records_no_change",
            "UPDATE records SET body = convert_to(replace(convert_from(body, 'UTF8'), "
            "'\"i\":123}', '\"i\":999}'), 'UTF8') WHERE chain = 'default' AND seq = 123",
            "ALTER TABLE records ENABLE TRIGGER records_no_change",
        )
        for args in RUNS[:2]:
            code = main([*args, "--ledger", auditor_url])
            out = capsys.readouterr()
            assert 1 == code, args
            assert "123" in out.err + out.out, args
        assert [None] * WRITERS == [p.poll() for p in live]


class TestSubtreesBeyondRecordsPostgres:
    """A cut tail whose Merkle subtrees were left behind."""

    def test_cut_tail_with_checkpoints_fails_verify(
        self, writer_url: str, auditor_url: str, owner_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """26 records cut to 23 with checkpoints deleted, subtrees kept: exit 1, names sizes."""
        config = AuditConfig(ledger_url=writer_url, actor=("service", "tests"), checkpoint_every=5)
        with AuditTrail(config) as trail:
            for i in range(26):
                trail.record("task.succeeded", {"i": i})
        _owner_sql(
            owner_url,
            "ALTER TABLE records DISABLE TRIGGER records_no_change",
            "ALTER TABLE checkpoints DISABLE TRIGGER checkpoints_no_change",
            "DELETE FROM records WHERE chain = 'default' AND seq >= 23",
            "DELETE FROM checkpoints WHERE chain = 'default'",
            "UPDATE chain_heads SET seq = 22 WHERE chain = 'default'",
            "ALTER TABLE records ENABLE TRIGGER records_no_change",
            "ALTER TABLE checkpoints ENABLE TRIGGER checkpoints_no_change",
        )
        assert 1 == main(["verify", "--ledger", auditor_url])
        err = capsys.readouterr().err
        assert "chain 'default'" in err
        assert "expected: at least 26 records" in err
        assert "found:    23 records" in err

    def test_deleted_chain_with_subtrees_left_fails_verify(
        self, writer_url: str, auditor_url: str, owner_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A chain's records and checkpoints deleted, subtrees kept: verify exits 1 naming it."""
        config = AuditConfig(ledger_url=writer_url, actor=("service", "tests"), chain="gone")
        with AuditTrail(config) as trail:
            for i in range(10):
                trail.record("task.succeeded", {"i": i})
        with AuditTrail(AuditConfig(ledger_url=writer_url, actor=("service", "tests"))) as trail:
            trail.record("task.succeeded", {"i": 0})
        _owner_sql(
            owner_url,
            "ALTER TABLE records DISABLE TRIGGER records_no_change",
            "ALTER TABLE checkpoints DISABLE TRIGGER checkpoints_no_change",
            "DELETE FROM records WHERE chain = 'gone'",
            "DELETE FROM checkpoints WHERE chain = 'gone'",
            "DELETE FROM chain_heads WHERE chain = 'gone'",
            "ALTER TABLE records ENABLE TRIGGER records_no_change",
            "ALTER TABLE checkpoints ENABLE TRIGGER checkpoints_no_change",
        )
        assert 1 == main(["verify", "--ledger", auditor_url])
        err = capsys.readouterr().err
        assert "chain 'gone'" in err
        assert "expected: at least 10 records" in err
