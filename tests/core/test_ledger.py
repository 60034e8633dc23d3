"""The SQLite ledger: append, read, durability, concurrency, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail, Event, open_ledger, verify_chain, verify_ledger
from audit_core._note import Verifier
from audit_core.errors import ConfigError, CursorMoved, LedgerError
from audit_core.ledgers import Ledger, ledger_path
from audit_core.ledgers.sqlite import SqliteLedger

WRITER = Path(__file__).with_name("_writer.py")

#: A process racing others to copy rows 0..N-1 onto chain "race", BATCH at a time, each batch
#: guarded by the cursor "source:race" (usage: -c ADVANCER URL N BATCH WHO); prints "won lost".
ADVANCER = """
import sys
from audit_core import AuditConfig, AuditTrail, Event
from audit_core.errors import CursorMoved
url, n, batch, who = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
trail = AuditTrail(AuditConfig(ledger_url=url, checkpoint_every=0))
won = lost = 0
while True:
    at = trail.ledger.get_cursor("source:race", "race")
    if at >= n - 1:
        break
    to = min(at + batch, n - 1)
    rows = [Event(type="row.copied", data={"row": i, "by": who}) for i in range(at + 1, to + 1)]
    try:
        trail.record_advancing(rows, cursor="source:race", chain="race", expect=at, to=to)
        won += 1
    except CursorMoved:
        lost += 1
trail.close()
print(won, lost)
"""


def race_advancers(url: str, n: int, batch: int, processes: int = 4) -> list[tuple[int, int]]:
    """Run ``processes`` ADVANCERs at once over rows 0..n-1; their (won, lost) counts."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADVANCER, url, str(n), str(batch), f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert 0 == p.returncode, err
        won, lost = out.split()
        counts.append((int(won), int(lost)))
    return counts


def check_race(ledger: Ledger, url: str, n: int = 2000, batch: int = 50) -> None:
    """After 4 racing ADVANCERs over rows 0..n-1 of ``ledger`` (at ``url``): each row once,
    in order, each batch appended by one winner, the cursor at the last row, a valid chain."""
    counts = race_advancers(url, n, batch)
    rows = [int(r.body.split(b'"row":')[1].split(b"}")[0]) for r in ledger.read("race")]
    assert list(range(n)) == rows
    assert n // batch == sum(won for won, _ in counts)
    assert n - 1 == ledger.get_cursor("source:race", "race")
    verify_chain(ledger, "race", expect_size=n)


def _spawn(
    ledger: Path, writer: str, count: int, batch: int = 1, **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(ledger), writer, str(count), str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), **env},
    )


class TestSqliteLedger:
    """Basic ledger operations."""

    def test_is_a_ledger(self, ledger_file: Path) -> None:
        """SqliteLedger satisfies the Ledger protocol."""
        assert isinstance(SqliteLedger(ledger_file), Ledger)

    def test_seq_and_prev_are_assigned(self, trail: AuditTrail) -> None:
        """Records get contiguous seqs, each linked to the previous hash."""
        a = trail.record("task.started", {"i": 0})
        b = trail.record("task.succeeded", {"i": 1})
        assert (0, 1) == (a.seq, b.seq)
        assert a.hash.hex().encode() in b.body
        assert b == trail.ledger.head("default")

    def test_read_ranges_and_chains(self, trail: AuditTrail) -> None:
        """read() streams a seq range; chains are independent."""
        for i in range(10):
            trail.record("task.started", {"i": i})
        trail.record("model.deployed", {"v": 1}, chain="prod")
        assert [3, 4, 5] == [r.seq for r in trail.ledger.read("default", 3, 6)]
        assert ["default", "prod"] == trail.ledger.chains()
        assert 0 == trail.ledger.head("prod").seq  # type: ignore[union-attr]
        assert [10, 1] == [h.size for h in verify_ledger(trail.ledger)]

    def test_append_many_is_atomic(self, trail: AuditTrail) -> None:
        """When any record of a batch fails, none of the batch is written."""
        trail.record("task.started")
        good = trail.prepare(Event(type="task.started"))
        # a chain of None: sealing it fails inside the transaction
        bad = trail.prepare(Event(type="task.started"))._replace(chain=None)
        with pytest.raises(AttributeError):
            trail.ledger.append_many([good, good, bad])
        assert 1 == verify_chain(trail.ledger, "default").size
        assert [1, 2] == [r.seq for r in trail.ledger.append_many([good, good])]

    def test_updates_and_deletes_are_refused(self, trail: AuditTrail, ledger_file: Path) -> None:
        """Triggers make the records table append-only."""
        trail.record("task.started")
        conn = sqlite3.connect(ledger_file)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE records SET body = x'00'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM records")
        conn.close()

    def test_cursors_only_move_forward(self, ledger_file: Path) -> None:
        """A consumer cursor starts at -1 and never moves back."""
        ledger = SqliteLedger(ledger_file)
        assert -1 == ledger.get_cursor("otlp", "default")
        ledger.set_cursor("otlp", "default", 5)
        ledger.set_cursor("otlp", "default", 3)
        assert 5 == ledger.get_cursor("otlp", "default")

    def test_unwritable_location_raises_ledger_error(self, tmp_path: Path) -> None:
        """A ledger that cannot be created raises LedgerError, not a raw sqlite3 error."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        trail = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{blocker}/ledger.db"))
        with pytest.raises(LedgerError, match="cannot open ledger"):
            trail.record("task.started")

    def test_missing_ledger_is_not_created_for_reading(self, tmp_path: Path) -> None:
        """Reading a ledger that does not exist fails instead of creating an empty one."""
        ledger = SqliteLedger(tmp_path / "absent.db", create=False)
        with pytest.raises(LedgerError, match="no ledger"):
            list(ledger.read("default"))
        assert not (tmp_path / "absent.db").exists()

    def test_fork_safety(self, trail: AuditTrail) -> None:
        """A forked child reconnects instead of reusing the parent's connection."""
        trail.record("task.started", {"who": "parent"})
        pid = os.fork()
        if pid == 0:  # child: write through the inherited trail, then exit without cleanup
            try:
                trail.record("task.started", {"who": "child"})
                os._exit(0)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        trail.record("task.succeeded", {"who": "parent"})
        assert 3 == verify_chain(trail.ledger, "default").size


class TestLedgerUrl:
    """Ledger URLs."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("sqlite:////abs/ledger.db", Path("/abs/ledger.db")),
            ("sqlite:///rel/ledger.db", Path("rel/ledger.db")),
            ("/plain/path.db", Path("/plain/path.db")),
            ("sqlite:///:memory:", None),
        ],
    )
    def test_sqlite_urls(self, url: str, expected: Path | None) -> None:
        """sqlite URLs follow SQLAlchemy's convention (four slashes: absolute)."""
        assert expected == ledger_path(url)

    def test_unknown_scheme(self) -> None:
        """An unsupported scheme is a ConfigError naming the scheme."""
        with pytest.raises(ConfigError, match="mysql"):
            open_ledger("mysql://x/y")


class TestAppendAdvancing:
    """append_advancing: records and a cursor move in one transaction, or nothing happens."""

    def test_absent_cursor_holds_minus_one(self, trail: AuditTrail) -> None:
        """A cursor that was never set is expected at -1; the records land and it moves."""
        stored = trail.record_advancing(
            [Event(type="row.copied", data={"i": 0})], cursor="source:t", chain="c", expect=-1, to=0
        )
        assert [("c", 0)] == [(s.chain, s.seq) for s in stored]
        assert 0 == trail.ledger.get_cursor("source:t", "c")

    def test_wins_when_cursor_matches(self, trail: AuditTrail) -> None:
        """expect == the cursor: the batch is appended in order and the cursor set to ``to``."""
        trail.ledger.set_cursor("source:t", "c", 9)
        events = [Event(type="row.copied", data={"i": i}) for i in range(10, 13)]
        stored = trail.record_advancing(events, cursor="source:t", chain="c", expect=9, to=12)
        assert [0, 1, 2] == [s.seq for s in stored]
        assert 12 == trail.ledger.get_cursor("source:t", "c")

    def test_loses_when_cursor_moved(self, trail: AuditTrail) -> None:
        """expect != the cursor: CursorMoved says where it is, nothing is appended."""
        trail.ledger.set_cursor("source:t", "c", 5)
        with pytest.raises(CursorMoved) as caught:
            trail.record_advancing(
                [Event(type="row.copied")], cursor="source:t", chain="c", expect=3, to=6
            )
        assert (3, 5, "source:t", "c") == (
            caught.value.expected,
            caught.value.found,
            caught.value.cursor,
            caught.value.chain,
        )
        assert isinstance(caught.value, LedgerError)
        assert trail.ledger.head("c") is None
        assert 5 == trail.ledger.get_cursor("source:t", "c")

    def test_absent_cursor_is_not_zero(self, trail: AuditTrail) -> None:
        """Expecting 0 of a cursor that does not exist loses (it holds -1)."""
        with pytest.raises(CursorMoved):
            trail.record_advancing([], cursor="source:t", chain="c", expect=0, to=1)
        assert -1 == trail.ledger.get_cursor("source:t", "c")

    def test_empty_records_move_the_cursor(self, trail: AuditTrail) -> None:
        """No records: only the cursor moves (a source whose rows all vanished)."""
        assert [] == trail.record_advancing([], cursor="source:t", chain="c", expect=-1, to=41)
        assert 41 == trail.ledger.get_cursor("source:t", "c")
        assert [] == trail.ledger.chains()

    def test_events_keep_their_own_chain(self, trail: AuditTrail) -> None:
        """Events naming a chain go there; the others go on the cursor's chain."""
        events = [Event(type="a.b"), Event(type="a.c", chain="other")]
        stored = trail.record_advancing(events, cursor="source:t", chain="c", expect=-1, to=1)
        assert ["c", "other"] == [s.chain for s in stored]

    def test_loser_appends_nothing_after_winner(self, ledger_file: Path) -> None:
        """Two writers expecting the same cursor: the first wins, the second gets CursorMoved."""
        url = f"sqlite:///{ledger_file}"
        with (
            AuditTrail(AuditConfig(ledger_url=url)) as a,
            AuditTrail(AuditConfig(ledger_url=url)) as b,
        ):
            a.record_advancing([Event(type="x.y")], cursor="source:t", chain="c", expect=-1, to=0)
            with pytest.raises(CursorMoved):
                b.record_advancing(
                    [Event(type="x.y")], cursor="source:t", chain="c", expect=-1, to=0
                )
            assert 1 == len(list(b.ledger.read("c")))

    def test_four_processes_copy_each_row_once(self, ledger_file: Path) -> None:
        """4 processes racing over the same 2,000 rows append each exactly once, in order."""
        SqliteLedger(ledger_file).head("race")  # the schema once
        check_race(SqliteLedger(ledger_file), f"sqlite:///{ledger_file}")


@pytest.mark.slow
class TestConcurrency:
    """Many processes, one chain."""

    def test_eight_processes_never_fork_or_gap(self, ledger_file: Path) -> None:
        """8 processes x 1,000 appends give one valid chain of 8,000 records."""
        SqliteLedger(ledger_file).head("default")  # create the schema once
        every = {"WORKFLOW_AUDIT_CHECKPOINT_EVERY": "250"}
        procs = [_spawn(ledger_file, f"w{i}", 1000, **every) for i in range(8)]
        acknowledged = []
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert 0 == p.returncode
            assert "could not sign" not in err  # no checkpoint refused under concurrency
            acknowledged += out.split("\n")[:-1]
        assert 8000 == len(acknowledged)
        ledger = SqliteLedger(ledger_file)
        key = Verifier.parse(ledger_file.with_name("ledger.db.key.pub").read_text())
        head = verify_chain(ledger, "default", keys=[key], expect_size=8000)
        assert 8000 == head.size
        assert head.checkpoints >= 8000 // 250  # signed by 8 writers, all consistent
        seqs = sorted(int(line.split()[0]) for line in acknowledged)
        assert list(range(8000)) == seqs  # every acknowledged seq is unique: no fork
        writers = {r.body.split(b'"writer":"')[1][:2] for r in ledger.read("default")}
        assert {f"w{i}".encode() for i in range(8)} == writers


@pytest.mark.slow
class TestCrash:
    """kill -9 in the middle of writing."""

    @pytest.mark.parametrize("batch", [1, 500])
    def test_acknowledged_records_survive_sigkill(self, ledger_file: Path, batch: int) -> None:
        """Every record whose record() returned is present after SIGKILL; the chain verifies."""
        proc = _spawn(ledger_file, "victim", 1_000_000, batch)
        assert proc.stdout is not None
        acknowledged: list[str] = []
        deadline = time.monotonic() + 60
        while len(acknowledged) < 2000 and time.monotonic() < deadline:
            acknowledged.append(proc.stdout.readline().strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        assert -signal.SIGKILL == proc.returncode
        ledger = SqliteLedger(ledger_file)
        head = verify_chain(ledger, "default")
        stored = {r.seq: r.hash.hex() for r in ledger.read("default")}
        for line in acknowledged:
            seq, digest = line.split()
            assert digest == stored[int(seq)]
        assert head.size >= len(acknowledged)
        if batch > 1:  # batches are all or nothing
            assert 0 == head.size % batch
