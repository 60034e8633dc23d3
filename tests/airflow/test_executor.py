"""The executor path: ``airflow dags test --use-executor`` with LocalExecutor and an
api-server on 127.0.0.1. Task hooks fire in one task-runner process per task; asset hooks in
the API server. All of them write to one chain, which verifies; a SIGKILLed task leaves a gap
that ``workflow-audit reconcile airflow`` puts on the chain."""

from __future__ import annotations

import subprocess

import pytest

from tests.airflow._airflow import BIN, ML_TIMELINE, AirflowHome, executor_dags_test, records

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
