"""A ledger locked by another process, or on read-only media, under real Airflow: the DAG run
succeeds and costs about one lock wait, not a budget per hook; nothing is lost: after the lock
is released and the spool drained, all 18 records are on the chain, in order, and verify."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.airflow._airflow import BIN, ML_TIMELINE, AirflowHome, executor_dags_test, records
from tests.core._spooling import held_lock, make_ledger, mount

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def workflow_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "workflow-audit"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def timed_run(home: AirflowHome, ledger: Path, *args: str, **env: str) -> tuple[float, str]:
    """Wall time and output of ``airflow dags test ml_pipeline ARGS``; the run must succeed."""
    start = time.monotonic()
    if "--use-executor" in args:  # bounded against Airflow's LocalExecutor shutdown hang
        done = executor_dags_test(home, "ml_pipeline", ledger, **env)
    else:
        done = home.run("dags", "test", "ml_pipeline", *args, ledger=ledger, timeout=900, **env)
    elapsed = time.monotonic() - start
    output = done.stdout + done.stderr
    assert 0 == done.returncode, output[-5000:]
    return elapsed, output


def run_timeline(home: AirflowHome, ledger: Path) -> list[tuple[str, str | None, object]]:
    run_id, _ = home.last_run("ml_pipeline")
    mine = [r for r in records(ledger) if r.subject.get("run_id") in (run_id, None)]
    return [(r.event, r.subject.get("task_id"), r.subject.get("try_number")) for r in mine]


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs on ``tmp_path/ro``; the test remounts it read-only (and back)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mount("-t", "tmpfs", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        mount(str(mnt), tool="umount")


class TestDagsTest:
    """``airflow dags test``: one process runs every hook."""

    def test_ledger_locked_for_the_whole_run(
        self, airflow_home: AirflowHome, tmp_path: Path
    ) -> None:
        """Locked for the run: the DAG succeeds, ~1 s added (not 18 x 5 s), then a drain puts
        all 18 records on the chain in order, marked as spooled, and the chain verifies."""
        free, _ = timed_run(airflow_home, tmp_path / "free.db")
        ledger = tmp_path / "locked.db"
        make_ledger(ledger)
        with held_lock(ledger):
            locked, output = timed_run(airflow_home, ledger)
            assert [] == run_timeline(airflow_home, ledger)  # nothing got through the lock
        print(f"dags test: unlocked {free:.1f}s, locked {locked:.1f}s")
        assert "abandoned" not in output
        assert "records go to the spool" in output
        assert locked - free < 20.0  # one lock wait and the machine's noise; was 17 x 5 s
        drained = workflow_audit("spool", "drain", "--ledger", str(ledger))
        assert 0 == drained.returncode, drained.stderr
        assert ML_TIMELINE == run_timeline(airflow_home, ledger)
        assert all("_spool" in r.data for r in records(ledger))
        verified = workflow_audit("verify", "--ledger", str(ledger))
        assert 0 == verified.returncode, verified.stderr

    def test_next_writer_drains_the_spool(self, airflow_home: AirflowHome, tmp_path: Path) -> None:
        """Records spooled by a locked run land, before its own, when the next run writes."""
        ledger = tmp_path / "ledger.db"
        make_ledger(ledger)
        with held_lock(ledger):
            timed_run(airflow_home, ledger)
        first_run, _ = airflow_home.last_run("ml_pipeline")
        timed_run(airflow_home, ledger)
        second_run, _ = airflow_home.last_run("ml_pipeline")
        run_ids = [r.subject.get("run_id") for r in records(ledger)]
        first = [i for i, run in enumerate(run_ids) if run == first_run]
        second = [i for i, run in enumerate(run_ids) if run == second_run]
        assert len(first) == len(second) > 0
        assert max(first) < min(second)  # the spooled run first, then the next writer's own
        verified = workflow_audit("verify", "--ledger", str(ledger))
        assert 0 == verified.returncode, verified.stderr

    def test_read_only_ledger_spools_elsewhere(
        self, airflow_home: AirflowHome, tmp_path: Path, read_only_mount: Path
    ) -> None:
        """A ledger on read-only media: the DAG succeeds, records wait in the spool directory
        configured elsewhere, and land after the media is writable and the spool drained."""
        ledger = read_only_mount / "ledger.db"
        make_ledger(ledger)
        mount("-o", "remount,ro", str(read_only_mount))
        spool = tmp_path / "spool"
        _, output = timed_run(airflow_home, ledger, WORKFLOW_AUDIT_SPOOL_DIR=str(spool))
        assert "abandoned" not in output
        mount("-o", "remount,rw", str(read_only_mount))
        drained = workflow_audit(
            "spool", "drain", "--ledger", str(ledger), "--spool-dir", str(spool)
        )
        assert 0 == drained.returncode, drained.stderr
        assert f"drained {len(ML_TIMELINE)} record(s)" in drained.stdout
        assert ML_TIMELINE == run_timeline(airflow_home, ledger)
        verified = workflow_audit("verify", "--ledger", str(ledger))
        assert 0 == verified.returncode, verified.stderr


class TestExecutor:
    """LocalExecutor: one task-runner process per task, asset events in the API server."""

    def test_ledger_locked_for_the_whole_run(self, api_server: AirflowHome) -> None:
        """Locked for the run: the DAG succeeds; once the lock is gone and the spool drained
        (the API server drains its own spool when its breaker closes), all 18 records of the
        run's processes are on the chain, in their original (ts) order, and it verifies."""
        ledger = api_server.ledger
        assert ledger is not None
        if not ledger.exists():
            make_ledger(ledger)
        with held_lock(ledger):
            locked, output = timed_run(api_server, ledger, "--use-executor")
        print(f"dags test --use-executor, ledger locked: {locked:.1f}s")
        assert "abandoned" not in output
        deadline = time.monotonic() + 120
        while True:
            drained = workflow_audit("spool", "drain", "--ledger", str(ledger))
            assert 0 == drained.returncode, drained.stderr
            done = len(run_timeline(api_server, ledger)) >= len(ML_TIMELINE)
            if done or time.monotonic() > deadline:
                break
            time.sleep(1)  # the API server's breaker probes with backoff; poll, bounded
        # Five processes' records: each one's in its order, all of them merged by event time.
        # (The exact interleaving differs from an unlocked run's: a process's first hook
        # waited 1 s for the lock, so the next task may start before the last one's success
        # hook ran.)
        assert sorted(ML_TIMELINE, key=repr) == sorted(run_timeline(api_server, ledger), key=repr)
        run_id, _ = api_server.last_run("ml_pipeline")
        stamps = [r.ts for r in records(ledger) if r.subject.get("run_id") == run_id]
        assert sorted(stamps) == stamps
        verified = workflow_audit("verify", "--ledger", str(ledger))
        assert 0 == verified.returncode, verified.stderr
