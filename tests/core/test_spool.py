"""audit_core.spool: where it lives, what waits, durable lines, crash-safe idempotent drains."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail, Event, _spoolfile
from audit_core._record import PreparedRecord
from audit_core.errors import LedgerError
from audit_core.hooks import COUNTERS
from audit_core.ledgers import open_ledger
from audit_core.spool import (
    SPOOL_KEY,
    SpoolBacklog,
    TrailSpool,
    backlog,
    drain,
    ledger_key,
    pending_files,
    spool_dir,
    spool_dirs,
)
from tests.core._spooling import MiniAdapter, bodies, cli, make_ledger, mount


def _count(name: str) -> int:
    return COUNTERS.snapshot().get(name, 0)


def _spill(config: AuditConfig, events: list[Event], *, uncertain: bool = False) -> list[str]:
    """Spool ``events`` as an adapter process would, then release the file (process exit)."""
    with AuditTrail(config) as trail:
        spool = TrailSpool(lambda: trail)
        ids = spool.spill(events, uncertain=uncertain)
        spool.close()
    return ids


def _steps(*ns: int, second: int = 10) -> list[Event]:
    return [
        Event(type="test.step", data={"n": n}, ts=f"2026-12-04T10:00:{second:02d}.{n:06d}Z")
        for n in ns
    ]


def _drain(config: AuditConfig) -> int:
    ledger = open_ledger(config.ledger_url)
    try:
        return sum(
            drain(ledger, d, ledger_key(config.ledger_url)).drained for d in spool_dirs(config)
        )
    finally:
        ledger.close()


class TestSpoolDir:
    """spool_dir(): configured, beside a SQLite ledger, else the user data directory."""

    def test_beside_a_sqlite_ledger(self, tmp_path: Path) -> None:
        """A SQLite ledger's spool is <ledger>.spool beside it."""
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path}/l.db")
        assert tmp_path / "l.db.spool" == spool_dir(config)

    def test_environment_variable_wins(self, tmp_path: Path) -> None:
        """WORKFLOW_AUDIT_SPOOL_DIR names the spool directory."""
        env = {"WORKFLOW_AUDIT_SPOOL_DIR": str(tmp_path / "sp")}
        config = AuditConfig.from_env(env, ledger_url=f"sqlite:///{tmp_path}/l.db")
        assert tmp_path / "sp" == spool_dir(config)
        assert [tmp_path / "sp"] == spool_dirs(config)

    def test_postgres_ledger_spools_in_the_user_data_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ledger that is not a file spools under $XDG_DATA_HOME/workflow-audit/spool."""
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        config = AuditConfig(ledger_url="postgresql://u:pw@db:5432/audit")
        assert tmp_path / "workflow-audit" / "spool" == spool_dir(config)

    def test_ledger_key_ignores_the_password(self) -> None:
        """Two URLs of one PostgreSQL ledger differing only in the password share a key."""
        assert ledger_key("postgresql://u:a@h/db") == ledger_key("postgresql://u:b@h/db")


class TestBacklog:
    """backlog(): files, records, oldest ts and corrupt lines, without changing anything."""

    def test_empty_or_missing_directory(self, tmp_path: Path) -> None:
        """Nothing spooled: zeros and no oldest ts."""
        assert SpoolBacklog(0, 0, None, 0) == backlog(tmp_path / "missing")

    def test_counts_records_oldest_ts_and_a_torn_line(self, tmp_path: Path) -> None:
        """Spooled records are counted, the oldest ts found, a torn last line counted corrupt."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(2, 1))
        (path,) = pending_files(config)
        with open(path, "ab") as f:
            f.write(b'{"v":1,"id":"torn')
        assert SpoolBacklog(1, 2, "2026-12-04T10:00:10.000001Z", 1) == backlog(spool_dir(config))


class TestDrain:
    """drain(): original order and ts, marked, idempotent, crash-safe, never drops a line."""

    def test_appends_in_original_order_with_original_ts_and_a_marker(self, tmp_path: Path) -> None:
        """Spooled records land after the existing ones, in order, with their ts and marker."""
        config = make_ledger(tmp_path / "l.db")
        ids = _spill(config, _steps(1, 2, 3))
        assert 3 == _drain(config)
        records = bodies(tmp_path / "l.db")[1:]
        assert [1, 2, 3] == [r["data"]["n"] for r in records]
        assert [e.ts for e in _steps(1, 2, 3)] == [r["ts"] for r in records]
        assert ids == [r["data"][SPOOL_KEY]["id"] for r in records]
        assert [] == pending_files(config)
        assert 0 == cli("verify", "--ledger", str(tmp_path / "l.db")).returncode

    def test_two_processes_files_are_merged_by_ts(self, tmp_path: Path) -> None:
        """Records of two spool files are appended in ts order, each file's in its order."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(1, 3, second=10))
        _spill(config, _steps(2, 4, second=10))
        assert 4 == _drain(config)
        assert [1, 2, 3, 4] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_one_process_keeps_its_order_across_files_whatever_the_ts(self, tmp_path: Path) -> None:
        """A process's records keep the order it spooled them, across its sealed files,
        even when a later one carries an older ts (Prefect's task state times)."""
        config = make_ledger(tmp_path / "l.db")
        with AuditTrail(config) as trail:
            spool = TrailSpool(lambda: trail)
            spool.spill(_steps(1, second=30))
            spool.writer.seal()  # as a breaker probe does
            spool.spill(_steps(2, 3, second=20))
            spool.close()
        assert 2 == len(pending_files(config))
        assert 3 == _drain(config)
        assert [1, 2, 3] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_data_over_the_size_limit_keeps_its_marker_and_drains(self, tmp_path: Path) -> None:
        """Data over MAX_DATA_BYTES is spooled as its digest plus the marker, and drained."""
        config = make_ledger(tmp_path / "l.db")
        big = {f"k{i}": "x" * 15000 for i in range(80)}  # ~1.2 MB, each value under the limit
        (rid,) = _spill(config, [Event(type="test.big", data=big, ts=_steps(1)[0].ts)])
        assert 1 == _drain(config)
        (record,) = bodies(tmp_path / "l.db")[1:]
        assert rid == record["data"][SPOOL_KEY]["id"]
        assert "sha256" in record["data"]
        assert 0 == backlog(spool_dir(config)).corrupt

    def test_second_drain_appends_nothing(self, tmp_path: Path) -> None:
        """Draining twice appends each record once."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(1, 2))
        assert 2 == _drain(config)
        assert 0 == _drain(config)
        assert 3 == len(bodies(tmp_path / "l.db"))

    def test_leftover_journal_skips_records_already_appended(self, tmp_path: Path) -> None:
        """After a crash between commit and unlink, the journal makes the drain skip them."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(1, 2))
        (path,) = pending_files(config)
        saved = path.read_bytes()
        assert 2 == _drain(config)
        path.write_bytes(saved)  # the file as a crash after the commit left it ...
        journal = spool_dir(config) / f".drain.{ledger_key(config.ledger_url)}.journal"
        journal.write_bytes(b'{"default": 1}')  # ... with the journal written before it
        assert 0 == _drain(config)
        assert [1, 2] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]
        assert not journal.exists()

    def test_torn_last_line_is_reported_quarantined_and_the_rest_drained(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A torn line: logged, counted, moved to quarantine/, the other lines drained."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(1, 2))
        (path,) = pending_files(config)
        with open(path, "ab") as f:
            f.write(b'{"v":1,"id":"torn')
        before = _count("spool_corrupt_lines")
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            assert 2 == _drain(config)
        assert 1 == _count("spool_corrupt_lines") - before
        assert f"corrupt spool line {path}:3 (torn" in caplog.text
        quarantined = spool_dir(config) / "quarantine" / (path.name + ".corrupt")
        assert b'{"v":1,"id":"torn'.hex() in quarantined.read_text()
        assert 1 == backlog(spool_dir(config)).corrupt

    def test_corrupt_line_makes_cli_drain_exit_2(self, tmp_path: Path) -> None:
        """A flipped byte fails the line's checksum: `spool drain` exits 2, drains the others."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(1, 2, 3))
        (path,) = pending_files(config)
        lines = path.read_bytes().split(b"\n")
        assert b'\\"n\\":2' in lines[1]  # the record's bytes, as a JSON string
        lines[1] = lines[1].replace(b'\\"n\\":2', b'\\"n\\":7')
        path.write_bytes(b"\n".join(lines))
        done = cli("spool", "drain", "--ledger", str(tmp_path / "l.db"))
        assert 2 == done.returncode, done.stderr
        assert "checksum mismatch" in done.stderr
        assert [1, 3] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_file_held_by_a_live_writer_is_left_alone(self, tmp_path: Path) -> None:
        """A spool file its process may still write to is not drained (counted busy)."""
        config = make_ledger(tmp_path / "l.db")
        with AuditTrail(config) as trail:
            spool = TrailSpool(lambda: trail)
            spool.spill(_steps(1))
            ledger = open_ledger(config.ledger_url)
            result = drain(ledger, spool_dir(config), ledger_key(config.ledger_url))
            ledger.close()
            spool.close()
        assert (0, 1) == (result.drained, result.busy)
        assert 1 == _drain(config)

    def test_newer_files_wait_behind_a_live_writers_older_records(self, tmp_path: Path) -> None:
        """Records newer than those a live process still holds are not drained before them."""
        config = make_ledger(tmp_path / "l.db")
        with AuditTrail(config) as trail:
            live = TrailSpool(lambda: trail)
            live.spill(_steps(1, second=10))  # its file stays open: the process lives
            _spill(config, _steps(2, second=20))  # another process's, sealed
            ledger = open_ledger(config.ledger_url)
            key = ledger_key(config.ledger_url)
            first = drain(ledger, spool_dir(config), key)
            live.close()  # the live process seals its file (its breaker closes, or it exits)
            second = drain(ledger, spool_dir(config), key)
            ledger.close()
        assert (0, 1, 1) == (first.drained, first.busy, first.waiting)
        assert 2 == second.drained
        assert [1, 2] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_forked_child_does_not_keep_the_parents_file_locked(self, tmp_path: Path) -> None:
        """A long-lived forked child (a LocalExecutor worker) does not hold its parent's
        spool file: once the parent seals it, a drain takes it while the child lives."""
        config = make_ledger(tmp_path / "l.db")
        with AuditTrail(config) as trail:
            spool = TrailSpool(lambda: trail)
            spool.spill(_steps(1))
            read, write = os.pipe()
            started_r, started_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: say it runs, wait until the parent is done, leave
                os.close(write)
                os.write(started_w, b"!")  # its at-fork handlers ran before this line
                os.read(read, 1)
                os._exit(0)
            os.close(read)
            os.close(started_w)
            try:
                assert b"!" == os.read(started_r, 1)
                os.close(started_r)
                spool.writer.seal()
                ledger = open_ledger(config.ledger_url)
                result = drain(ledger, spool_dir(config), ledger_key(config.ledger_url))
                ledger.close()
            finally:
                os.close(write)  # the child reads EOF and exits
                os.waitpid(pid, 0)
        assert (1, 0) == (result.drained, result.busy)

    def test_uncertain_record_that_landed_is_not_appended_twice(self, tmp_path: Path) -> None:
        """A write spooled at exit while running, that landed after all, is skipped."""
        config = make_ledger(tmp_path / "l.db")
        events = _steps(1, 2)
        _spill(config, events, uncertain=True)
        with AuditTrail(config) as trail:
            trail.record_many(events[:1])  # the first one landed; the second did not
        assert 1 == _drain(config)
        records = bodies(tmp_path / "l.db")[1:]
        assert [1, 2] == [r["data"]["n"] for r in records]
        assert SPOOL_KEY not in records[0]["data"]
        assert SPOOL_KEY in records[1]["data"]

    def test_uncertain_record_is_found_behind_a_drained_backlog_with_old_ts(
        self, tmp_path: Path
    ) -> None:
        """An uncertain write that landed is skipped though 300 older-ts records follow it."""
        config = make_ledger(tmp_path / "l.db")
        landed = Event(type="test.step", data={"n": 1}, ts="2026-12-04T12:00:00.000000Z")
        with AuditTrail(config) as trail:
            trail.record_many([landed])
            trail.record_many(_steps(*range(2, 302)))  # ts 10:00: more than one scan window
        _spill(config, [landed], uncertain=True)
        assert 0 == _drain(config)
        assert 1 == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]].count(1)

    def test_journal_is_kept_while_a_file_waits(self, tmp_path: Path) -> None:
        """A drain leaving a file waiting keeps an interrupted drain's journal: no duplicates."""
        config = make_ledger(tmp_path / "l.db")
        key, directory = ledger_key(config.ledger_url), spool_dir(config)
        _spill(config, _steps(1, 2, second=20))
        ledger = open_ledger(config.ledger_url)

        class CrashAfterFirstBatch:
            def __init__(self) -> None:
                self.calls = 0

            def append_many(self, records: list[PreparedRecord]) -> object:
                self.calls += 1
                if self.calls == 2:
                    raise LedgerError("crash after the first commit")
                return ledger.append_many(records)

            def __getattr__(self, name: str) -> object:
                return getattr(ledger, name)

        with pytest.raises(LedgerError):
            drain(CrashAfterFirstBatch(), directory, key, batch=1)  # type: ignore[arg-type]
        with AuditTrail(config) as trail:
            live = TrailSpool(lambda: trail)
            live.spill(_steps(0, second=5))  # a live process holds an older record
            assert 1 == drain(ledger, directory, key).waiting
            assert (directory / f".drain.{key}.journal").exists()
            live.close()
        drain(ledger, directory, key)
        assert [1, 0, 2] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]
        ledger.close()

    def test_landed_line_cancels_an_uncertain_record(self, tmp_path: Path) -> None:
        """An uncertain write whose writer saw it land (a `landed` line) is not appended."""
        config = make_ledger(tmp_path / "l.db")
        events = _steps(1)
        with AuditTrail(config) as trail:
            spool = TrailSpool(lambda: trail)
            ids = spool.spill(events, uncertain=True)
            trail.record_many(events)  # the write that was still running at exit landed
            spool.landed(ids)
            spool.close()
        assert 0 == _drain(config)
        assert [1] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_status_reports_the_backlog_as_json(self, tmp_path: Path) -> None:
        """`spool status --json` shows what waits; exit 0 without corrupt lines."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, _steps(1, 2))
        done = cli("spool", "status", "--ledger", str(tmp_path / "l.db"), "--json")
        assert 0 == done.returncode, done.stderr
        report = json.loads(done.stdout)
        assert 1 == report["ledger_files"]
        assert (2, "2026-12-04T10:00:10.000001Z") == (
            report["directories"][0]["records"],
            report["directories"][0]["oldest_ts"],
        )

    @pytest.mark.parametrize("command", ["status", "drain"])
    def test_a_ledger_that_is_not_there_is_a_usage_error(
        self, tmp_path: Path, command: str
    ) -> None:
        """A mistyped ledger path exits 2 and creates nothing (no "nothing waits", no new
        empty ledger); a file that is no ledger, and an unsupported URL, exit 2 too, with
        the URL's password masked."""
        missing = tmp_path / "typo.db"
        done = cli("spool", command, "--ledger", str(missing))
        assert (2, False) == (done.returncode, missing.exists())
        assert "no ledger at" in done.stderr
        done = cli("spool", command, "--ledger", "mysql://u:Pw1secretZ@h/db")
        assert 2 == done.returncode
        assert "Pw1secretZ" not in done.stdout + done.stderr

    def test_drain_into_a_file_that_is_no_ledger_is_a_usage_error(self, tmp_path: Path) -> None:
        """`spool drain` into a file that is no SQLite database exits 2 before it reads any
        spooled record."""
        other = tmp_path / "notes.txt"
        other.write_text("not a database\n" * 100)
        done = cli("spool", "drain", "--ledger", str(other))
        assert 2 == done.returncode
        assert "not a database" in done.stderr

    def test_status_answers_while_the_ledger_is_down(self, tmp_path: Path) -> None:
        """`spool status` reads the spool only: with a PostgreSQL ledger that does not
        answer, it still reports the backlog (exit 0), at once."""
        url = f"postgresql://audit:pw@127.0.0.1:{_closed_port()}/audit"
        started = time.monotonic()
        done = cli("spool", "status", "--ledger", url, "--spool-dir", str(tmp_path / "spool"))
        assert 0 == done.returncode, done.stderr
        assert "0 file(s) of this ledger wait" in done.stdout
        assert time.monotonic() - started < 30  # no connection attempt, no retry budget

    def test_secrets_are_redacted_before_they_are_spooled(self, tmp_path: Path) -> None:
        """The spool holds records as the ledger would: redacted."""
        config = make_ledger(tmp_path / "l.db")
        _spill(config, [Event(type="test.step", data={"password": "hunter2-marker"})])
        (path,) = pending_files(config)
        assert b"hunter2-marker" not in path.read_bytes()

    def test_kill_9_mid_drain_neither_loses_nor_duplicates(self, tmp_path: Path) -> None:
        """A drain SIGKILLed between transactions, then run again: each record exactly once."""
        config = make_ledger(tmp_path / "l.db")
        total = 600
        ids = _spill(config, _steps(*range(total)))
        script = textwrap.dedent(
            f"""
            from pathlib import Path
            from audit_core.ledgers import open_ledger
            from audit_core.spool import drain
            ledger = open_ledger({config.ledger_url!r})
            drain(ledger, Path({str(spool_dir(config))!r}), {ledger_key(config.ledger_url)!r},
                  batch=1)
            """
        )
        child = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
        deadline = time.monotonic() + 60
        while len(bodies(tmp_path / "l.db")) < 20 and time.monotonic() < deadline:
            assert child.poll() is None, "the drain ended before it could be killed"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        assert -signal.SIGKILL == child.wait(30)
        landed = len(bodies(tmp_path / "l.db")) - 1
        assert 0 < landed < total  # killed mid-drain
        _drain(config)
        records = bodies(tmp_path / "l.db")[1:]
        assert ids == [r["data"][SPOOL_KEY]["id"] for r in records]
        assert list(range(total)) == [r["data"]["n"] for r in records]
        assert 0 == cli("verify", "--ledger", str(tmp_path / "l.db")).returncode


class TestFileWriter:
    """FileWriter: a drainer between create and lock, a short write, never lose or glue lines."""

    def test_file_unlinked_by_a_drainer_before_the_lock_is_not_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A drain between O_EXCL create and flock removes the empty file: the next name is used."""
        config = make_ledger(tmp_path / "l.db")
        ledger = open_ledger(config.ledger_url)
        key = ledger_key(config.ledger_url)
        drains: list[int] = []

        def flock(fd: int, op: int) -> None:
            if not drains:  # another drainer runs in exactly this window
                drains.append(drain(ledger, spool_dir(config), key).files)
            fcntl.flock(fd, op)

        monkeypatch.setattr(
            _spoolfile,
            "fcntl",
            types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB),
        )
        ids = _spill(config, _steps(1))
        assert [1] == drains  # it took (and removed) the new, empty file
        assert 1 == drain(ledger, spool_dir(config), key).drained
        assert ids == [r["data"][SPOOL_KEY]["id"] for r in bodies(tmp_path / "l.db")[1:]]
        ledger.close()

    def test_short_write_then_error_leaves_a_torn_line_not_glued_to_the_next(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After a short write and ENOSPC, the next spill starts a new file; it drains whole."""
        config = make_ledger(tmp_path / "l.db")
        calls: list[int] = []

        def write(fd: int, data: memoryview) -> int:
            calls.append(fd)
            if len(calls) == 1:
                return os.write(fd, bytes(data[:40]))  # a short write ...
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")  # ... then a full disk
            return os.write(fd, data)

        fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if k[:2] != "__"})
        fake_os.write = write
        monkeypatch.setattr(_spoolfile, "os", fake_os)
        with AuditTrail(config) as trail:
            spool = TrailSpool(lambda: trail)
            with pytest.raises(LedgerError):
                spool.spill(_steps(1))
            ids = spool.spill(_steps(2))
            spool.close()
        ledger = open_ledger(config.ledger_url)
        result = drain(ledger, spool_dir(config), ledger_key(config.ledger_url))
        ledger.close()
        assert (1, 1) == (result.drained, result.corrupt)  # the fragment is quarantined
        assert ids == [r["data"][SPOOL_KEY]["id"] for r in bodies(tmp_path / "l.db")[1:]]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (a real ENOSPC, not a mock), unmounted afterwards."""
    assert 0 == os.geteuid(), "this test mounts a tmpfs: run as root"
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        mount("-l", str(mnt), tool="umount")


PAD = "p" * 400


class TestDiskFull:
    """A ledger on a full disk: hooks go on at once, the records wait in the spool."""

    HOOKS = 1500  # ~0.7 MB of records: more than the 1 MiB disk holds with its WAL

    def _fill(self, config: AuditConfig) -> tuple[int, float]:
        adapter = MiniAdapter(config, budget_s=2.0)
        started = time.monotonic()
        landed = sum(
            adapter._run(
                "t", lambda i=i: [Event(type="test.fill", data={"i": i, "pad": "p" * 400})]
            )
            for i in range(self.HOOKS)
        )
        adapter.flush()
        # The task process ends: its spool file is released (a live writer's file is its own
        # to drain, and `spool drain` leaves it alone).
        assert adapter.runner.spill is not None
        adapter.runner.spill.close()
        return landed, time.monotonic() - started

    def test_full_ledger_disk_spools_and_drains_every_record(
        self, small_disk: Path, tmp_path: Path
    ) -> None:
        """The ledger's disk fills up mid-run: later records are spooled elsewhere without
        the hooks waiting; once there is room, `spool drain` puts every one on the chain in
        order, and the chain verifies."""
        spooled_before = _count("records_spooled")
        config = AuditConfig(
            ledger_url=f"sqlite:///{small_disk / 'ledger.db'}",
            spool_dir=str(tmp_path / "spool"),
            checkpoint_every=0,
        )
        landed, seconds = self._fill(config)
        assert 0 < landed < self.HOOKS  # the disk filled up during the run
        assert self.HOOKS - landed == _count("records_spooled") - spooled_before
        assert seconds < 60  # not a budget per hook (1,500 x 2 s); measured ~1 s
        mount("-o", "remount,size=64m", str(small_disk))
        done = cli("spool", "drain", "--ledger", str(small_disk / "ledger.db"),
                   "--spool-dir", str(tmp_path / "spool"))  # fmt: skip
        assert 0 == done.returncode, done.stderr
        assert list(range(self.HOOKS)) == [b["data"]["i"] for b in bodies(small_disk / "ledger.db")]
        assert 0 == cli("verify", "--ledger", str(small_disk / "ledger.db")).returncode

    def test_full_disk_for_ledger_and_spool_is_logged_and_counted(
        self, small_disk: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With no room for the spool either, every hook still returns at once, and each lost
        record is logged and counted (records_abandoned): never a silent loss, never a crash."""
        abandoned_before = _count("records_abandoned")
        config = AuditConfig(
            ledger_url=f"sqlite:///{small_disk / 'ledger.db'}",
            spool_dir=str(small_disk / "spool"),
            checkpoint_every=0,
        )
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            landed, seconds = self._fill(config)
        lost = self.HOOKS - landed
        assert lost == _count("records_abandoned") - abandoned_before
        assert seconds < 60
        assert lost == sum("reach neither the ledger nor the spool" in m for m in caplog.messages)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
