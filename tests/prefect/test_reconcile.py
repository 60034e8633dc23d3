"""``workflow-audit reconcile prefect``: a flow process killed with SIGKILL runs no hook; the
reconciler finds the flow run and its finished task runs in Prefect's API and puts the gap on
the chain, once."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from audit_core import Record
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from prefect_audit.ids import lifecycle_key, run_trace

pytestmark = pytest.mark.slow

KILLED_FLOW = textwrap.dedent(
    """
    import os, signal, time
    from prefect import task
    from prefect.events.worker import EventsWorker
    from prefect_audit import audited_flow

    @task
    def extract() -> int:
        return 1

    @task
    def load(x: int) -> None:
        EventsWorker.drain_all(timeout=10)  # let Prefect's API learn that extract finished
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does: no hook runs

    @audited_flow(name="killed-etl")
    def killed_etl() -> None:
        load(extract())

    killed_etl()
    """
)


def keys(ledger: Path) -> set[str]:
    with closing(sqlite3.connect(ledger)) as conn:
        return {k for (k,) in conn.execute("SELECT key FROM record_keys WHERE chain = 'prefect'")}


def records(ledger: Path) -> list[Record]:
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read("prefect")]
    finally:
        db.close()


class TestReconcilePrefect:
    """Gaps left by a SIGKILLed flow process."""

    def test_sigkilled_flow(self, prefect_server: str, tmp_path: Path) -> None:
        """flowrun.unrecorded for the killed run and task.unrecorded for its finished task
        run are appended once; the chain verifies."""
        ledger = tmp_path / "ledger.db"
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
        env = {
            **os.environ,
            "PREFECT_API_URL": prefect_server,
            "WORKFLOW_AUDIT_LEDGER": f"sqlite:///{ledger}",
            "WORKFLOW_AUDIT_CHAIN": "prefect",
        }
        done = subprocess.run(
            [sys.executable, "-c", KILLED_FLOW],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert -9 == done.returncode, done.stderr[-3000:]
        [started] = records(ledger)
        assert "flowrun.started" == started.event
        run_id = started.subject["flow_run_id"]

        def gaps() -> list[tuple[str, object]]:
            # other tests' flow runs share the server and the window: keep this run's
            return [
                (r.event, r.subject.get("task_name") or r.subject.get("flow_name"))
                for r in records(ledger)[1:]
                if r.subject.get("flow_run_id") == run_id
            ]

        until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()
        argv = ["reconcile", "prefect", "--since", since.isoformat(), "--until", until,
                "--ledger", f"sqlite:///{ledger}", "--chain", "prefect"]  # fmt: skip
        assert 0 == main(argv)
        assert [("flowrun.unrecorded", "killed-etl"), ("task.unrecorded", "extract")] == gaps()
        flow_gap = next(r for r in records(ledger) if r.event == "flowrun.unrecorded"
                        and r.subject.get("flow_run_id") == run_id)  # fmt: skip
        assert "Running" == flow_gap.data["state"]
        assert {"type": "reconciler", "id": "workflow-audit reconcile prefect"} == flow_gap.actor
        # the run's trace and a key, as every Prefect record has (prefect_audit.ids)
        task_gap = next(r for r in records(ledger) if r.event == "task.unrecorded"
                        and r.subject.get("flow_run_id") == run_id)  # fmt: skip
        assert run_trace(run_id) == flow_gap.trace
        assert run_trace(run_id, task_gap.subject["task_run_id"]) == task_gap.trace
        assert {
            lifecycle_key("flowrun.unrecorded", run_id, 1),
            lifecycle_key("task.unrecorded", task_gap.subject["task_run_id"], 1),
        } <= keys(ledger)

        size = len(records(ledger))
        assert 0 == main(argv)  # idempotent
        assert size == len(records(ledger))
        assert 0 == main(["verify", "--ledger", f"sqlite:///{ledger}"])
