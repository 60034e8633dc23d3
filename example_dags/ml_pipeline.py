"""An audited ML pipeline: upload a dataset → validate → retrain → evaluate → deploy.

Copy this file into your DAGs folder. With ``workflow-audit[airflow]`` installed, every task
run, retry and failure is on the audit chain already; the ``audit`` calls below add what only
the pipeline knows (which data, which model, which metrics), attached to the running task.

It runs with no external services: the "lake" and the "model registry" are folders under
``$ML_PIPELINE_HOME`` (default: ``$AIRFLOW_HOME/ml_pipeline``). ``validate`` fails on its
first try, as a flaky schema service would, and succeeds on the retry.

    airflow dags test ml_pipeline
    workflow-audit verify && workflow-audit report
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, get_current_context, task

from airflow_audit import audit

HOME = Path(
    os.environ.get("ML_PIPELINE_HOME")
    or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "ml_pipeline"
)
TRAINING_DATA = Asset(name="churn_training_data", uri=f"file://{HOME}/lake/churn/train.csv")
FEATURES = ("tenure_months", "monthly_spend", "support_calls")


class SchemaServiceTimeoutError(RuntimeError):
    """The (simulated) schema service timed out: a transient error worth a retry."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ml", "audited"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
)
def ml_pipeline() -> None:
    @task(outlets=[TRAINING_DATA])
    def upload_dataset(rows: int = 500) -> str:
        """Write this run's training data to the lake and announce it as an asset event."""
        rng = random.Random(42)
        path = Path(TRAINING_DATA.uri.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*FEATURES, "churned"])
            for _ in range(rows):
                tenure, spend, calls = rng.randint(1, 72), rng.uniform(10, 120), rng.randint(0, 9)
                churned = int(calls > 5 or (tenure < 6 and spend > 80))
                writer.writerow([tenure, round(spend, 2), calls, churned])
        audit.data_uploaded(TRAINING_DATA.uri, rows=rows, sha256=_sha256(path), source="crm")
        return str(path)

    @task
    def validate(path: str) -> str:
        """Check the schema and the label balance; the schema service fails on the first try."""
        if get_current_context()["ti"].try_number == 1:
            raise SchemaServiceTimeoutError("schema service timed out after 30s")
        rows = _read(Path(path))
        positives = sum(r["churned"] for r in rows) / len(rows)
        if not 0.05 < positives < 0.95:
            raise ValueError(f"label balance {positives:.2f} is outside (0.05, 0.95)")
        return path

    @task
    def retrain(path: str) -> dict[str, object]:
        """Fit a one-rule model (the threshold on support calls that best separates churn)."""
        rows = _read(Path(path))
        split = int(len(rows) * 0.8)
        train = rows[:split]
        best = max(
            range(10),
            key=lambda t: sum((r["support_calls"] > t) == bool(r["churned"]) for r in train),
        )
        model = {
            "name": "churn",
            "version": 1,
            "threshold": best,
            "training_sha256": _sha256(Path(path)),
        }
        audit.model_retrained("churn", version=1, params={"threshold": best}, train_rows=split)
        return model

    @task
    def evaluate(model: dict[str, object], path: str) -> dict[str, object]:
        """Score the held-out rows (the invocation goes on the record); record drift when
        accuracy falls below the floor."""
        rows = _read(Path(path))
        holdout = rows[int(len(rows) * 0.8) :]
        threshold = float(model["threshold"])  # type: ignore[arg-type]
        hits = sum((r["support_calls"] > threshold) == bool(r["churned"]) for r in holdout)
        accuracy = round(hits / len(holdout), 4)
        # The model's inputs and outputs for 50 validation rows, as one batch: digests, row
        # counts and schemas on the chain, a Merkle root so any one prediction can be proven
        # later, the values themselves only as a privacy policy allows (docs/PRIVACY.md).
        scored = [{f: r[f] for f in FEATURES} for r in holdout[:50]]  # features, no label
        predictions = [
            {"churn": r["support_calls"] > threshold, "score": round(r["support_calls"] / 9, 3)}
            for r in scored
        ]
        audit.model_invoked(
            "churn",
            version=1,
            inputs=scored,
            outputs=predictions,
            batch=True,
            data_subject="customer-0042",  # synthetic: whom these rows are about
        )
        if accuracy < 0.8:
            audit.drift_detected("churn", metric="accuracy", value=accuracy, floor=0.8)
        return {**model, "accuracy": accuracy}

    @task
    def deploy(model: dict[str, object]) -> None:
        """Publish the model to the registry folder; who approved it goes on the record."""
        registry = HOME / "registry"
        registry.mkdir(parents=True, exist_ok=True)
        target = registry / f"{model['name']}-v{model['version']}.json"
        target.write_text(json.dumps(model, sort_keys=True))
        audit.model_deployed(
            str(model["name"]),
            version=model["version"],
            accuracy=model["accuracy"],
            target=str(target),
            approved_by="ml-lead@example.com",
        )

    data = upload_dataset()
    checked = validate(data)
    model = retrain(checked)
    deploy(evaluate(model, checked))


ml_pipeline()
