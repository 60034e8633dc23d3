"""A Prefect flow run that fails, and what the audit trail says about it.

The upload produces a dataset with no positive labels; ``validate`` refuses it, so the flow
fails and ``retrain`` never runs. The chain gets ``task.failed`` (exception type, redacted
message, traceback digest), ``flowrun.failed``, and the uploaded dataset.

    python example_flows/ml_pipeline_bad_data.py
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task

from prefect_audit import audit, audited_flow

HOME = Path(os.environ.get("ML_PIPELINE_HOME") or "~/.ml_pipeline").expanduser()


@task
def upload_dataset() -> Path:
    path = HOME / "lake" / "churn" / "train_bad.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("tenure_months,monthly_spend,support_calls,churned\n" + "12,40.0,1,0\n" * 50)
    audit.data_uploaded(f"file://{path}", rows=50, source="crm-export")
    return path


@task
def validate(path: Path) -> Path:
    lines = path.read_text().splitlines()[1:]
    if not any(line.endswith(",1") for line in lines):
        # Real error messages carry secrets like this connection string's password: the
        # record keeps the message with the password masked.
        raise ValueError(
            f"no positive labels in {len(lines)} rows from "
            "postgresql://etl:hunter2-secret@warehouse/crm; refusing to train"
        )
    return path


@task
def retrain(path: Path) -> Path:
    return path


@audited_flow(name="ml-pipeline-bad-data")
def ml_pipeline_bad_data() -> None:
    retrain(validate(upload_dataset()))


if __name__ == "__main__":
    ml_pipeline_bad_data()
