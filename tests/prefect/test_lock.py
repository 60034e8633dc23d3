"""A ledger locked by another process, or on read-only media, under real Prefect (the session's
temporary server): the flow succeeds, costs about one lock wait, and nothing is abandoned at
exit; after the lock is released and the spool drained, all 18 records are on the chain, in
order, and it verifies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.core._spooling import cli, held_lock, make_ledger, mount
from tests.prefect.test_flows import EXAMPLES, ML_TIMELINE, records, timeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run_flow(server: str, ledger: Path, **env: str) -> tuple[float, str]:
    """Wall time and output of ``python example_flows/ml_pipeline.py`` (its own process, as
    a user runs it) against the session's server; it must succeed."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ml_pipeline.py")],
        env={
            **os.environ,
            "PREFECT_API_URL": server,
            "WORKFLOW_AUDIT_LEDGER": f"sqlite:///{ledger}",
            "WORKFLOW_AUDIT_CHECKPOINT_EVERY": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert 0 == done.returncode, done.stderr[-3000:]
    return elapsed, done.stdout + done.stderr


class TestLockedLedger:
    """The ledger locked for the whole flow run, or read-only."""

    def test_locked_for_the_whole_run(self, prefect_server: str, tmp_path: Path) -> None:
        """The flow succeeds, ~1 s added, nothing abandoned at exit; drained, all 18 records
        are on the chain in order and verify."""
        free, _ = run_flow(prefect_server, tmp_path / "free.db")
        ledger = tmp_path / "locked.db"
        make_ledger(ledger)
        with held_lock(ledger):
            locked, output = run_flow(prefect_server, ledger)
        print(f"prefect flow: unlocked {free:.1f}s, locked {locked:.1f}s")
        assert "abandoned" not in output
        assert "records go to the spool" in output
        assert locked - free < 20.0  # one lock wait and the machine's noise; was 5 s a hook
        assert [] == records(ledger)
        drained = cli("spool", "drain", "--ledger", str(ledger))
        assert 0 == drained.returncode, drained.stderr
        assert f"drained {len(ML_TIMELINE)} record(s)" in drained.stdout
        assert ML_TIMELINE == timeline(records(ledger))
        assert 0 == cli("verify", "--ledger", str(ledger)).returncode

    def test_read_only_ledger_spools_elsewhere(self, prefect_server: str, tmp_path: Path) -> None:
        """A ledger on read-only media: the flow succeeds, its records wait in a spool
        directory elsewhere and land once the media is writable and the spool drained."""
        mnt = tmp_path / "ro"
        mnt.mkdir()
        mount("-t", "tmpfs", "tmpfs", str(mnt))
        try:
            ledger = mnt / "ledger.db"
            make_ledger(ledger)
            mount("-o", "remount,ro", str(mnt))
            spool = tmp_path / "spool"
            _, output = run_flow(prefect_server, ledger, WORKFLOW_AUDIT_SPOOL_DIR=str(spool))
            assert "abandoned" not in output
            mount("-o", "remount,rw", str(mnt))
            drained = cli("spool", "drain", "--ledger", str(ledger), "--spool-dir", str(spool))
            assert 0 == drained.returncode, drained.stderr
            assert ML_TIMELINE == timeline(records(ledger))
            assert 0 == cli("verify", "--ledger", str(ledger)).returncode
        finally:
            mount(str(mnt), tool="umount")
