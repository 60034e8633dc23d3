"""Verifying a SQLite ledger while other processes append to it: no false alarm, real tampering
still caught (issue 11, item 1).

Writers are real processes (``_writer.py``), each with its own trail signing a checkpoint every
few records; ``verify``, ``verify --jobs 2`` and ``report`` run through the CLI's ``main``
meanwhile. Every run must see one consistent snapshot of records, subtrees and checkpoints.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail, Event, _parallel
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.verify import stored_claims
from tests.core import _tamper

WRITER = Path(__file__).with_name("_writer.py")
WRITERS = 3
INITIAL = 3000  # enough for --jobs 2 to split the chain with MIN_RECORDS_PER_JOB lowered
RUNS = (
    ["verify"],
    ["verify", "--jobs", "2"],
    ["report", "--format", "json"],
    ["verify", "--json"],
)


def _size(path: Path) -> int:
    ledger = SqliteLedger(path, create=False, read_only=True)
    try:
        head = ledger.head("default")
        return 0 if head is None else head.seq + 1
    finally:
        ledger.close()


class _Writers:
    """Writer processes appending to one ledger until stopped."""

    def __init__(self, path: Path, n: int) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).parents[2]),
            "WORKFLOW_AUDIT_CHECKPOINT_EVERY": "16",
        }
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(WRITER), str(path), f"w{i}", str(10**9), "1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            for i in range(n)
        ]
        self.lines = Counter[int]()
        self._drainers: list[threading.Thread] = []

    def wait_started(self) -> None:
        """Return once every writer has acknowledged a record, then keep their pipes drained."""
        for i, proc in enumerate(self.procs):
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first, f"writer {i} exited with {proc.wait()}"
            thread = threading.Thread(target=self._drain, args=(i, proc), daemon=True)
            thread.start()
            self._drainers.append(thread)

    def _drain(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            self.lines[i] += 1

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)
        for thread in self._drainers:
            thread.join(timeout=60)


@pytest.fixture
def live(ledger_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, _Writers]]:
    """A ledger of INITIAL records with WRITERS processes appending to it."""
    monkeypatch.setattr(_parallel, "MIN_RECORDS_PER_JOB", 1_000)
    config = AuditConfig(ledger_url=f"sqlite:///{ledger_file}", actor=("service", "tests"))
    with AuditTrail(config) as trail:
        for _ in range(INITIAL // 500):
            trail.record_many([Event(type="task.succeeded", data={"i": i}) for i in range(500)])
    writers = _Writers(ledger_file, WRITERS)
    try:
        writers.wait_started()
        yield ledger_file, writers
    finally:
        writers.stop()


class TestLiveVerify:
    """verify and report on a ledger other processes are appending to."""

    def test_no_false_alarm_while_writers_append(
        self, live: tuple[Path, _Writers], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """verify, verify --jobs 2 and report exit 0 on each of 52 runs during appends."""
        path, writers = live
        before = _size(path)
        codes: Counter[int] = Counter()
        failures: list[str] = []
        for args in itertools.islice(itertools.cycle(RUNS), 52):
            code = main([*args, "--ledger", f"sqlite:///{path}"])
            codes[code] += 1
            out = capsys.readouterr()
            if code != 0:
                failures.append(f"{args}: {code}: {out.err.strip()[:300]} {out.out[:300]}")
        assert writers.alive()
        assert [] == failures
        assert {0: 52} == dict(codes)
        assert _size(path) > before  # the writers appended while verify ran

    def test_tamper_during_writes_is_caught(
        self, live: tuple[Path, _Writers], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A record body rewritten while writers append fails verify, --jobs 2 and report."""
        path, writers = live
        _tamper.edit_body(path, "default", 1234, lambda v: {**v, "data": {"i": -1}})
        for args in RUNS[:3]:
            code = main([*args, "--ledger", f"sqlite:///{path}"])
            out = capsys.readouterr()
            assert 1 == code, args
            assert "1234" in out.err + out.out, args
        assert writers.alive()


class TestParallelInSnapshot:
    """verify --jobs N fixes the size in the parent's snapshot."""

    def test_workers_verify_the_snapshot_size(self, live: tuple[Path, _Writers]) -> None:
        """Workers verify exactly the records of the parent's snapshot, though more exist."""
        path, _ = live
        ledger = SqliteLedger(path, create=False, read_only=True)
        with ledger.snapshot() as view:
            head = view.head("default")
            assert head is not None
            while _size(path) <= head.seq + 1:  # until the writers append past the snapshot
                time.sleep(0.01)
            claims = stored_claims(view, "default", ())
            verified = _parallel.verify_parallel(view, "default", claims, 2)
        ledger.close()
        assert verified is not None  # the workers ran, no fallback to one process
        assert (head.seq + 1, head.hash.hex()) == (verified.size, verified.head)
