"""A pipeline run that fails, and what the audit trail says about it.

The upload produces a dataset with no positive labels; ``validate`` refuses it with
``AirflowFailException`` (no retry: bad data will not get better), so ``retrain``, ``evaluate``
and ``deploy`` never run. The chain gets ``task.failed`` (exception type, redacted message,
traceback digest), ``task.upstream_failed`` for each task that never ran, and
``dagrun.failed`` naming the failed task.

    airflow dags test ml_pipeline_bad_data
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_audit import audit

HOME = Path(
    os.environ.get("ML_PIPELINE_HOME")
    or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "ml_pipeline"
)


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["ml", "audited"])
def ml_pipeline_bad_data() -> None:
    @task
    def upload_dataset() -> str:
        path = HOME / "lake" / "churn" / "train_bad.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "tenure_months,monthly_spend,support_calls,churned\n" + "12,40.0,1,0\n" * 50
        )
        audit.data_uploaded(f"file://{path}", rows=50, source="crm-export")
        return str(path)

    @task
    def validate(path: str) -> str:
        lines = Path(path).read_text().splitlines()[1:]
        positives = sum(line.endswith(",1") for line in lines)
        if positives == 0:
            # The connection string stands for the secrets that end up in real error messages:
            # the record keeps the message with the password masked.
            raise AirflowFailException(
                f"no positive labels in {len(lines)} rows from "
                "postgresql://etl:hunter2-secret@warehouse/crm; refusing to train"
            )
        return path

    @task
    def retrain(path: str) -> str:
        return path

    @task
    def evaluate(path: str) -> str:
        return path

    @task
    def deploy(path: str) -> None:
        audit.model_deployed("churn", source=path)

    deploy(evaluate(retrain(validate(upload_dataset()))))


ml_pipeline_bad_data()
