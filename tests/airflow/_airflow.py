"""Helpers of the Airflow tests: the Airflow home, ledgers' records, free ports."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger

BIN = Path(sys.executable).parent
#: (event, task_id, try_number) of the records one run of example_dags/ml_pipeline.py writes.
ML_TIMELINE = [
    ("task.started", "upload_dataset", 1),
    ("data.uploaded", "upload_dataset", 1),
    ("asset.updated", "upload_dataset", None),
    ("task.succeeded", "upload_dataset", 1),
    ("task.started", "validate", 1),
    ("task.retry_scheduled", "validate", 1),
    ("task.started", "validate", 2),
    ("task.succeeded", "validate", 2),
    ("task.started", "retrain", 1),
    ("model.retrained", "retrain", 1),
    ("task.succeeded", "retrain", 1),
    ("task.started", "evaluate", 1),
    ("task.succeeded", "evaluate", 1),
    ("task.started", "deploy", 1),
    ("model.deployed", "deploy", 1),
    ("task.succeeded", "deploy", 1),
    ("dagrun.succeeded", None, None),
]
BUNDLED = (
    "example_skip_dag.py",
    "example_nested_branch_dag.py",
    "example_dynamic_task_mapping.py",
    "example_setup_teardown_taskflow.py",
)


@dataclass(frozen=True)
class AirflowHome:
    """A migrated Airflow home and the environment that selects it."""

    path: Path
    env: dict[str, str]
    ledger: Path | None = None  # shared by the api-server and the tests that use it

    def run(
        self, *args: str, ledger: Path | None = None, timeout: float = 240, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` command with the plugin writing to ``ledger``."""
        ledger = ledger or self.ledger
        assert ledger is not None
        env = {**self.env, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}", **extra}
        return subprocess.run(
            [str(BIN / "airflow"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def db(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows from Airflow's metadata DB."""
        with sqlite3.connect(self.path / "airflow.db") as conn:
            return list(conn.execute(sql, params))

    def last_run(self, dag_id: str) -> tuple[str, str | None]:
        """run_id and context_carrier (JSON text) of the DAG's newest run."""
        rows = self.db(
            "SELECT run_id, context_carrier FROM dag_run WHERE dag_id = ? ORDER BY id DESC",
            dag_id,
        )
        run_id, carrier = rows[0]
        return str(run_id), None if carrier is None else str(carrier)


def records(ledger: Path, chain: str = "airflow") -> list[Record]:
    """Every record of ``chain``, parsed."""
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read(chain)]
    finally:
        db.close()
