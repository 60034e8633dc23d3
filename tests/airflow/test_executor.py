"""The executor path: ``airflow dags test --use-executor`` with LocalExecutor and an
api-server on 127.0.0.1. Task hooks fire in one task-runner process per task; asset hooks in
the API server. All of them write to one chain, which verifies; a SIGKILLed task leaves a gap
that ``workflow-audit reconcile airflow`` puts on the chain."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings

import pytest

from tests.airflow._airflow import BIN, ML_TIMELINE, AirflowHome, records

# A whole DAG run through the executor on a loaded 2-core machine can take minutes; the
# test waits for the run's end (the process exits), with room to spare, not for a fixed time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
DAG_RUN_DEADLINE_S = 900
SHUTDOWN_GRACE_S = 120  # after the run ended: a clean exit takes a few seconds here
POLL_S = 0.5


def dags_test(home: AirflowHome, dag_id: str) -> subprocess.CompletedProcess[str]:
    """``airflow dags test DAG --use-executor``, until the process exits.

    Airflow's LocalExecutor can hang in its own shutdown after the run has ended: seen once
    in ~20 runs here, ``end()`` joining an idle worker that never got its poison pill, after
    "DagRun Finished" and "Shutting down LocalExecutor" (our hooks had all returned: they run
    before both lines). So once the DAG run is terminal in the metadata DB and the process has
    logged that shutdown, it gets SHUTDOWN_GRACE_S to exit, then its process group is killed
    and the exit code is the one ``dags test`` gives for that state (0 success, 1 failed).
    Past DAG_RUN_DEADLINE_S without a terminal run, fail with what Airflow's metadata DB and
    the api-server's log say (to tell a hang from slowness)."""
    assert home.ledger is not None
    env = {**home.env, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{home.ledger}"}
    out_path = home.path / f"dags-test-{dag_id}-{time.time_ns()}.log"
    with out_path.open("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "dags", "test", dag_id, "--use-executor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # one process group: the workers go with it when killed
        )
        run_ended: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if run_ended is None:
                state = _newest_run_state(home, dag_id)
                if state in ("success", "failed") and "Shutting down LocalExecutor" in (
                    out_path.read_text(errors="replace")
                ):
                    run_ended = now
            elif now - run_ended > SHUTDOWN_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = 0 if _newest_run_state(home, dag_id) == "success" else 1
                output = out_path.read_text(errors="replace")
                warnings.warn(
                    f"dags test {dag_id}: Airflow's LocalExecutor did not finish its shutdown "
                    f"within {SHUTDOWN_GRACE_S}s after the run ended; killed",
                    stacklevel=2,
                )
                return subprocess.CompletedProcess(proc.args, code, output, output)
            if now - started > DAG_RUN_DEADLINE_S:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _fail_with_diagnostics(home, dag_id, out_path.read_text(errors="replace"))
            time.sleep(POLL_S)  # polling the process and the metadata DB for the run's end
        output = out_path.read_text(errors="replace")
        return subprocess.CompletedProcess(proc.args, proc.returncode, output, output)


def _newest_run_state(home: AirflowHome, dag_id: str) -> object:
    rows = home.db("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", dag_id)
    return rows[0][0] if rows else None


def _fail_with_diagnostics(home: AirflowHome, dag_id: str, output: str) -> None:
    states = home.db(
        "SELECT task_id, try_number, state, hostname FROM task_instance WHERE dag_id = ?",
        dag_id,
    )
    logs = sorted(home.path.glob("api-server-*.log"))
    tail = logs[-1].read_text(errors="replace")[-3000:] if logs else "(no api-server log)"
    pytest.fail(
        f"dags test {dag_id} still running after {DAG_RUN_DEADLINE_S}s; task instances: "
        f"{states}\n--- dags test output (tail) ---\n{output[-3000:]}\n"
        f"--- api-server log (tail) ---\n{tail}"
    )


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
        done = dags_test(api_server, "ml_pipeline")
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
        done = dags_test(api_server, "audit_sigkill")
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
