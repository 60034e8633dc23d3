"""``workflow-audit health``: the trail's state from durable storage, thresholds, exit codes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.cli import main
from audit_core.errors import ConfigError
from audit_core.health import EXIT_UNHEALTHY, Thresholds, check, parse_duration
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.spool import SpoolWriter, mark, new_id
from tests.core import _tamper

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
SINK = "otlp:http://collector:4318/v1/logs"


def ts(minutes_ago: float) -> str:
    """The RFC 3339 timestamp ``minutes_ago`` minutes before NOW."""
    when = NOW - dt.timedelta(minutes=minutes_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write(path: Path, minutes_ago: list[float], *, checkpoint_every: int = 0) -> None:
    """Records at the given ages in chain ``default``; checkpoints only as ``checkpoint_every``
    says (0: none, not even at close)."""
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}",
        actor=("service", "tests"),
        checkpoint_every=checkpoint_every,
        checkpoint_interval_s=10**9,
    )
    trail = AuditTrail(config)
    for age in minutes_ago:
        trail.record("task.succeeded", {"n": age}, ts=ts(age))
    trail.close()


def spool(path: Path, minutes_ago: list[float], directory: Path | None = None) -> Path:
    """Records of ``path``'s ledger written to the spool as a writer that cannot reach the
    ledger does (``directory``: the configured spool, else beside the ledger); the file."""
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}",
        actor=("service", "tests"),
        spool_dir=None if directory is None else str(directory),
    )
    trail = AuditTrail(config)
    ids = [new_id() for _ in minutes_ago]
    prepared = [
        trail.prepare(Event(type="task.started", data=mark(None, rid, ts(age)), ts=ts(age)))
        for rid, age in zip(ids, minutes_ago, strict=True)
    ]
    written = SpoolWriter(config).append(ids, prepared)
    trail.ledger.close()
    return written


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """An empty spool directory."""
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


def health(path: Path, spool: Path, **limits: Any) -> Any:
    """check() on ``path`` read-only, at NOW."""
    ledger = SqliteLedger(path, create=False, read_only=True)
    try:
        return check(
            ledger, name=str(path), thresholds=Thresholds(**limits), spool_dir=spool, now=NOW
        )
    finally:
        ledger.close()


class TestParseDuration:
    """parse_duration."""

    def test_units(self) -> None:
        """Plain seconds, s, m, h and d."""
        assert [90.0, 90.0, 900.0, 7200.0, 86400.0, 1.5] == [
            parse_duration(t) for t in ("90", "90s", "15m", "2h", "1d", "1.5")
        ]

    def test_garbage_is_a_config_error(self) -> None:
        """Anything else raises ConfigError naming the text."""
        with pytest.raises(ConfigError, match="'soon'"):
            parse_duration("soon")


class TestCheck:
    """health.check on real SQLite ledgers."""

    def test_counts_ages_and_checkpoint(self, ledger_file: Path, spool_dir: Path) -> None:
        """Records, last record age, checkpoint size and age, and records since it."""
        write(ledger_file, [50, 40, 30], checkpoint_every=3)
        write(ledger_file, [20, 10])
        h = health(ledger_file, spool_dir)
        (chain,) = h.chains
        assert ("default", 5, ts(10), 600.0) == (
            chain.chain,
            chain.records,
            chain.last_record_ts,
            chain.last_record_age_s,
        )
        assert (3, 2, 1200.0) == (chain.checkpoint_size, chain.unsigned, chain.unsigned_age_s)
        assert chain.checkpoint_age_s is not None
        assert chain.checkpoint_age_s < 0  # signed at the real now, after NOW
        assert [] == h.problems
        assert h.healthy

    def test_old_last_record_is_a_problem(self, ledger_file: Path, spool_dir: Path) -> None:
        """A last record older than max_record_age_s makes the chain unhealthy."""
        write(ledger_file, [120], checkpoint_every=1)
        assert health(ledger_file, spool_dir).healthy  # off by default
        h = health(ledger_file, spool_dir, max_record_age_s=3600)
        assert ["chain 'default': last record 7200s old (max 3600s)"] == h.problems

    def test_unsigned_records_waiting_too_long(self, ledger_file: Path, spool_dir: Path) -> None:
        """Records no checkpoint covers, the oldest past max_checkpoint_age_s, are a problem."""
        write(ledger_file, [90, 5])
        h = health(ledger_file, spool_dir)
        assert (None, 2, 5400.0) == (
            h.chains[0].checkpoint_size,
            h.chains[0].unsigned,
            h.chains[0].unsigned_age_s,
        )
        assert 1 == len(h.problems)
        assert "2 record(s) after the last checkpoint, the oldest 5400s old" in h.problems[0]
        assert health(ledger_file, spool_dir, max_checkpoint_age_s=None).healthy

    def test_sink_lag_from_cursors(self, ledger_file: Path, spool_dir: Path) -> None:
        """Each cursor name is a sink; its lag is the records past its cursor, per chain."""
        write(ledger_file, [4, 3, 2, 1], checkpoint_every=4)
        ledger = SqliteLedger(ledger_file)
        ledger.set_cursor(SINK, "default", 0)
        ledger.set_cursor("s3:s3://b/p", "default", 3)
        ledger.close()
        h = health(ledger_file, spool_dir, max_lag=2)
        assert {SINK: 3, "s3:s3://b/p": 0} == h.chains[0].sinks
        assert [f"chain 'default': sink {SINK} is 3 records behind (max 2)"] == h.problems

    def test_spool_backlog(self, ledger_file: Path, spool_dir: Path) -> None:
        """Records waiting in the spool are counted, the oldest named; past max_spool (0 by
        default) they are a problem, and a corrupt spool line always is."""
        write(ledger_file, [3], checkpoint_every=1)
        spooled = spool(ledger_file, [40, 30], spool_dir)
        h = health(ledger_file, spool_dir)
        assert {
            "directory": str(spool_dir),
            "files": 1,
            "records": 2,
            "oldest_ts": ts(40),
            "corrupt": 0,
        } == h.spool
        assert [
            f"spool {spool_dir}: 2 record(s) wait for the ledger (max 0); "
            "run `workflow-audit spool drain`"
        ] == h.problems
        assert health(ledger_file, spool_dir, max_spool=2).healthy
        with spooled.open("ab") as f:
            f.write(b'{"v": 1, "torn\n')
        h = health(ledger_file, spool_dir, max_spool=None)
        assert [f"spool {spool_dir}: 1 corrupt line(s)"] == h.problems

    def test_verify_finds_tampering(self, ledger_file: Path, spool_dir: Path) -> None:
        """verify=True marks a tampered chain invalid, and that is a problem."""
        write(ledger_file, [3, 2, 1], checkpoint_every=3)
        _tamper.edit_body(ledger_file, "default", 1, lambda body: {**body, "event": "x.y"})
        ledger = SqliteLedger(ledger_file, create=False, read_only=True)
        h = check(ledger, name="l", spool_dir=spool_dir, verify=True, now=NOW)
        ledger.close()
        assert False is h.chains[0].valid
        assert any("verification failed" in p for p in h.problems)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """main(argv) in-process: (exit code, stdout, stderr)."""

    def run(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _minutes_ago(minutes: float) -> float:
    """``minutes`` before the real now, as an age write() understands (relative to NOW)."""
    real = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)
    return (NOW - real).total_seconds() / 60


class TestHealthCommand:
    """``workflow-audit health``."""

    def test_healthy_exits_0(self, cli: Any, ledger_file: Path, spool_dir: Path) -> None:
        """A fresh, signed, drained ledger exits 0 and prints each chain and 'healthy'."""
        write(ledger_file, [_minutes_ago(1)], checkpoint_every=1)
        code, out, _ = cli("health", "--ledger", ledger_file, "--spool", spool_dir)
        assert 0 == code
        assert out.startswith("chain default: 1 records, last 60s ago, checkpoint of 1 ")
        assert "healthy" == out.splitlines()[-1]

    def test_threshold_exits_4(self, cli: Any, ledger_file: Path, spool_dir: Path) -> None:
        """Past a threshold: exit 4 and one UNHEALTHY line per problem."""
        write(ledger_file, [_minutes_ago(120)], checkpoint_every=1)
        code, out, _ = cli(
            "health", "--ledger", ledger_file, "--spool", spool_dir, "--max-record-age", "1h"
        )
        assert 4 == code == EXIT_UNHEALTHY
        assert 1 == sum(line.startswith("UNHEALTHY: chain 'default'") for line in out.split("\n"))

    def test_json_shape(self, cli: Any, ledger_file: Path, spool_dir: Path) -> None:
        """--json: healthy, checked_at, ledger, chains, spool, problems and thresholds."""
        write(ledger_file, [_minutes_ago(90), _minutes_ago(80)])
        code, out, _ = cli("health", "--ledger", ledger_file, "--spool", spool_dir, "--json")
        doc = json.loads(out)
        assert 4 == code
        assert {
            "healthy",
            "checked_at",
            "ledger",
            "chains",
            "spool",
            "problems",
            "thresholds",
        } == set(doc)
        assert (False, str(ledger_file), 1) == (doc["healthy"], doc["ledger"], len(doc["problems"]))
        assert {
            "chain": "default",
            "records": 2,
            "checkpoint_size": None,
            "checkpoint_created": None,
            "checkpoint_age_s": None,
            "unsigned": 2,
            "sinks": {},
            "valid": None,
        }.items() <= doc["chains"][0].items()
        assert {
            "max_record_age_s": None,
            "max_checkpoint_age_s": 3600.0,
            "max_lag": 10000,
            "max_spool": 0,
        } == doc["thresholds"]

    def test_off_turns_a_check_off(self, cli: Any, ledger_file: Path, spool_dir: Path) -> None:
        """--max-checkpoint-age off: unsigned records never make the trail unhealthy."""
        write(ledger_file, [_minutes_ago(600)])
        args = ("health", "--ledger", ledger_file, "--spool", spool_dir)
        assert 4 == cli(*args)[0]
        assert 0 == cli(*args, "--max-checkpoint-age", "off")[0]

    def test_verify_tampered_exits_1(self, cli: Any, ledger_file: Path, spool_dir: Path) -> None:
        """--verify on a tampered ledger exits 1, as verify does."""
        write(ledger_file, [_minutes_ago(3), _minutes_ago(2)], checkpoint_every=2)
        _tamper.edit_body(ledger_file, "default", 0, lambda body: {**body, "event": "x.y"})
        code, out, _ = cli("health", "--ledger", ledger_file, "--spool", spool_dir, "--verify")
        assert 1 == code
        assert "INVALID" in out

    def test_default_spool_beside_the_ledger(self, cli: Any, ledger_file: Path) -> None:
        """Without --spool, the spool of the ledger opened is read (``<ledger>.spool``)."""
        write(ledger_file, [_minutes_ago(1)], checkpoint_every=1)
        spool(ledger_file, [_minutes_ago(1)])
        code, out, _ = cli("health", "--ledger", ledger_file)
        assert 4 == code
        assert f"spool {ledger_file}.spool: 1 record(s) in 1 file(s)" in out.splitlines()

    def test_named_chain_without_records(self, cli: Any, ledger_file: Path) -> None:
        """A chain named with --chain that holds no record is a problem (deleted?)."""
        write(ledger_file, [_minutes_ago(1)], checkpoint_every=1)
        code, out, _ = cli("health", "--ledger", ledger_file, "--chain", "gone")
        assert 4 == code
        assert "UNHEALTHY: chain 'gone': no records" in out.splitlines()

    def test_missing_ledger_exits_2(self, cli: Any, tmp_path: Path) -> None:
        """No ledger file: exit 2 with a one-line error."""
        code, _, err = cli("health", "--ledger", tmp_path / "nope.db")
        assert 2 == code
        assert err.startswith("workflow-audit: error: no ledger at")

    def test_bad_threshold_is_a_usage_error(self, cli: Any, ledger_file: Path) -> None:
        """A threshold that is no duration exits 2 (argparse)."""
        with pytest.raises(SystemExit) as exit_info:
            cli("health", "--ledger", ledger_file, "--max-record-age", "soon")
        assert 2 == exit_info.value.code


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user can enter (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="wa-health-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


class TestReadOnly:
    """health as an auditor who may only read."""

    def test_non_root_user_on_read_only_ledger(self, shared_dir: Path) -> None:
        """User nobody, a 0444 ledger in a 0555 root-owned directory: exit 0, file unchanged."""
        assert 0 == os.geteuid(), "the test switches to user nobody: run it as root"
        ledger = shared_dir / "ledger.db"
        write(ledger, [_minutes_ago(1)], checkpoint_every=1)
        for extra in shared_dir.glob("ledger.db.key*"):
            extra.unlink()
        spool = shared_dir / "spool"
        spool.mkdir()
        ledger.chmod(0o444)
        spool.chmod(0o555)
        shared_dir.chmod(0o555)
        before = {p.name: p.read_bytes() for p in shared_dir.iterdir() if p.is_file()}
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        command = ["health", "--ledger", str(ledger), "--spool", str(spool), "--json"]
        done = subprocess.run(
            [
                *as_nobody,
                sys.executable,
                "-c",
                "import sys; from audit_core.cli import main; sys.exit(main())",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"},
            cwd="/",
        )
        shared_dir.chmod(0o755)
        assert (0, "") == (done.returncode, done.stderr)
        assert 1 == json.loads(done.stdout)["chains"][0]["records"]
        assert before == {p.name: p.read_bytes() for p in shared_dir.iterdir() if p.is_file()}


def _two_chains(path: Path) -> None:
    """Chains ``default`` and ``beta``, ten signed records each."""
    for chain in ("default", "beta"):
        config = AuditConfig(ledger_url=f"sqlite:///{path}", chain=chain, checkpoint_every=5)
        with AuditTrail(config) as trail:
            for i in range(10):
                trail.record("task.succeeded", {"i": i})


class TestUntrustedRows:
    """health on a ledger edited outside workflow-audit: a verdict, never a traceback."""

    def test_deleted_chain_is_found_without_chain(
        self, cli: Any, ledger_file: Path, spool_dir: Path
    ) -> None:
        """A chain whose records were deleted but whose checkpoints remain is listed, has
        'no records', and fails --verify (exit 1), as `verify` says."""
        _two_chains(ledger_file)
        with _tamper._tampering(ledger_file) as conn:
            conn.execute("DELETE FROM records WHERE chain = 'beta'")
        code, out, _ = cli("health", "--ledger", ledger_file, "--spool", spool_dir, "--verify")
        assert 1 == code
        assert "UNHEALTHY: chain 'beta': no records" in out

    def test_text_seq_is_invalid_not_a_traceback(
        self, cli: Any, ledger_file: Path, spool_dir: Path
    ) -> None:
        """A last row whose seq is TEXT: exit 1 naming the chain, no TypeError."""
        write(ledger_file, [3, 2, 1])
        with _tamper._tampering(ledger_file) as conn:
            conn.execute("UPDATE records SET seq = 'x9' WHERE seq = 2")
        code, _, err = cli("health", "--ledger", ledger_file, "--spool", spool_dir)
        assert 1 == code
        assert "INVALID" in err

    def test_sink_lag_only_where_the_sink_ships(
        self, cli: Any, ledger_file: Path, spool_dir: Path
    ) -> None:
        """A sink with a cursor in one chain shows no lag for the chains it does not ship."""
        _two_chains(ledger_file)
        ledger = SqliteLedger(ledger_file)
        ledger.set_cursor("s3", "default", 9)
        ledger.close()
        _, out, _ = cli("health", "--ledger", ledger_file, "--spool", spool_dir, "--json")
        doc = json.loads(out)
        assert {"default": {"s3": 0}, "beta": {}} == {c["chain"]: c["sinks"] for c in doc["chains"]}
