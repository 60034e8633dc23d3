"""The executor path: ``airflow dags test --use-executor`` with LocalExecutor and an
api-server on 127.0.0.1. Task hooks fire in one task-runner process per task; asset hooks in
the API server. All of them write to one chain, which verifies; a SIGKILLed task leaves a gap
that ``workflow-audit reconcile airflow`` puts on the chain. The API server and the scheduler
anchor: checkpoints cover the chains within ``anchor_interval`` and on a clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail
from tests.airflow._airflow import BIN, ML_TIMELINE, AirflowHome, executor_dags_test, records
from tests.core._anchored import (
    DEADLINE_S,
    chain_sizes,
    check_checkpoints,
    uncovered,
    wait_covered,
)

# A whole DAG run through the executor on a loaded 2-core machine can take minutes; the
# test waits for the run's end (the process exits), with room to spare, not for a fixed time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def workflow_audit(home: AirflowHome, *args: str) -> subprocess.CompletedProcess[str]:
    assert home.ledger is not None
    return subprocess.run(
        [str(BIN / "workflow-audit"), *args, "--ledger", f"sqlite:///{home.ledger}"],
        env=home.env,
        capture_output=True,
        text=True,
        check=False,
    )


class TestExecutorPath:
    """Records written from task-runner child processes and the API server."""

    def test_ml_pipeline_from_many_processes(self, api_server: AirflowHome) -> None:
        """Each task's records come from its own process, in order, on one valid chain."""
        done = executor_dags_test(api_server, "ml_pipeline")
        assert 0 == done.returncode, done.stderr[-3000:]
        run_id, _ = api_server.last_run("ml_pipeline")
        assert api_server.ledger is not None
        mine = [r for r in records(api_server.ledger) if r.subject.get("run_id") == run_id]
        events = [(r.event, r.subject.get("task_id"), r.subject.get("try_number")) for r in mine]
        assert ML_TIMELINE == events
        pids = {r.data["pid"] for r in mine if r.event == "task.succeeded"}
        assert 5 == len(pids)  # five task-runner processes, none of them ours
        traces = {(r.trace or {}).get("trace_id") for r in mine if r.event.startswith("task.")}
        assert 1 == len(traces)
        assert None not in traces
        verified = workflow_audit(api_server, "verify")
        assert 0 == verified.returncode, verified.stderr

    def test_sigkilled_task_is_reconciled(self, api_server: AirflowHome) -> None:
        """A task killed with SIGKILL runs no hook; reconcile appends task.unrecorded for it,
        once, and the chain still verifies."""
        done = executor_dags_test(api_server, "audit_sigkill")
        run_id, _ = api_server.last_run("audit_sigkill")
        state = api_server.db(
            "SELECT state FROM task_instance WHERE dag_id = 'audit_sigkill' AND run_id = ? "
            "AND task_id = 'killed'",
            run_id,
        )
        assert [("failed",)] == state, done.stderr[-3000:]
        assert api_server.ledger is not None

        def of_killed(event: str) -> list[object]:
            return [
                r.subject.get("try_number")
                for r in records(api_server.ledger)  # type: ignore[arg-type]
                if r.event == event
                and r.subject.get("run_id") == run_id
                and r.subject.get("task_id") == "killed"
            ]

        assert [1] == of_killed("task.started")
        assert [] == of_killed("task.failed")  # the gap a hook-based trail cannot see

        first = workflow_audit(api_server, "reconcile", "airflow", "--since", "2000-01-01")
        assert 0 == first.returncode, first.stderr
        assert [1] == of_killed("task.unrecorded")
        unrecorded = next(
            r
            for r in records(api_server.ledger)
            if r.event == "task.unrecorded" and r.subject.get("run_id") == run_id
        )
        assert "failed" == unrecorded.data["state"]
        assert {"type": "reconciler", "id": "workflow-audit reconcile airflow"} == unrecorded.actor

        again = workflow_audit(api_server, "reconcile", "airflow", "--since", "2000-01-01")
        assert 0 == again.returncode, again.stderr
        assert [1] == of_killed("task.unrecorded")  # idempotent
        verified = workflow_audit(api_server, "verify")
        assert 0 == verified.returncode, verified.stderr


class TestAnchoring:
    """Checkpoints without cron: the API server's and the scheduler's anchors."""

    def test_a_run_ends_covered_by_checkpoints(self, api_server: AirflowHome) -> None:
        """After a DAG run under the LocalExecutor whose own processes sign nothing (as
        short-lived task processes never reach the checkpoint policy), every chain's latest
        checkpoint covers its last record within anchor_interval (5 s here) with no manual
        step; every checkpoint the API server's workers signed, racing, is signed and
        consistent with the final tree (no fork)."""
        done = executor_dags_test(api_server, "ml_pipeline", WORKFLOW_AUDIT_CHECKPOINT_EVERY="0")
        assert 0 == done.returncode, done.stderr[-3000:]
        ledger = api_server.ledger
        assert ledger is not None
        ended = time.monotonic()
        wait_covered(ledger, chains=2)  # the task chain and the events chain
        print(f"covered {time.monotonic() - ended:.1f}s after the run's process ended")
        assert {"airflow", "airflow-events"} <= set(chain_sizes(ledger))
        assert 2 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))

    def test_scheduler_stop_signs_the_final_checkpoint(
        self, api_server: AirflowHome, tmp_path: Path
    ) -> None:
        """A scheduler whose interval never comes signs, on SIGTERM's clean shutdown, a
        checkpoint covering the last record of every chain (a task's record written while
        it ran included); the checkpoints are consistent with the final trees."""
        ledger = tmp_path / "ledger.db"
        env = {
            **api_server.env,
            "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
            "AIRFLOW__WORKFLOW_AUDIT__ANCHOR_INTERVAL": "3600",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # no DAG run of its own
        }
        before = _last_scheduler_job(api_server)
        log = tmp_path / "scheduler.log"
        with log.open("w") as out:
            scheduler = subprocess.Popen(
                [str(BIN / "airflow"), "scheduler"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            # its Job is running: on_starting (anchor and ingestion started) has returned
            _wait(lambda: _scheduler_running(api_server, before), scheduler, log)
            config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0)
            with AuditTrail(config) as task:  # a task's record, signed by nobody yet
                task.record("task.succeeded", chain="airflow")
            # nothing signed it yet (the scheduler may have recorded more on the chain)
            assert None is uncovered(ledger)["airflow"][1]
            scheduler.send_signal(signal.SIGTERM)
            assert 0 == scheduler.wait(DEADLINE_S), log.read_text()[-3000:]
        finally:
            if scheduler.poll() is None:
                scheduler.kill()
                scheduler.wait()
        assert {} == uncovered(ledger), log.read_text()[-3000:]
        assert 1 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))


def _last_scheduler_job(home: AirflowHome) -> int:
    rows = home.db("SELECT coalesce(max(id), 0) FROM job WHERE job_type = 'SchedulerJob'")
    return int(str(rows[0][0]))


def _scheduler_running(home: AirflowHome, after: int) -> bool:
    rows = home.db(
        "SELECT state FROM job WHERE job_type = 'SchedulerJob' AND id > ? AND state = 'running'",
        after,
    )
    return bool(rows)


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``ready()`` until true; fail at once if ``proc`` ended."""
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        assert proc.poll() is None, "the scheduler ended: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, "not ready: " + log.read_text()[-3000:]
        time.sleep(0.2)  # polling Airflow's job table for the scheduler's start
