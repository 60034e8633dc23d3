"""An audited Prefect ML pipeline: upload a dataset → validate → retrain → evaluate → deploy.

Copy this file. ``@audited_flow`` is ``@flow`` plus the audit hooks: the flow run and every
task run inside it (attempts, retries, failures) land on the audit chain with no change to the
tasks; ``record`` / ``audit`` add what only the pipeline knows (which data, which model,
which metrics), attached to the running task.

It runs with no external services (Prefect's temporary local server; the "lake" and the
"model registry" are folders under ``$ML_PIPELINE_HOME``, default ``~/.ml_pipeline``).
``validate`` fails on its first attempt, as a flaky schema service would, and succeeds on the
retry.

    python example_flows/ml_pipeline.py
    workflow-audit verify && workflow-audit report
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext

from prefect_audit import audit, audited_flow

HOME = Path(os.environ.get("ML_PIPELINE_HOME") or "~/.ml_pipeline").expanduser()
FEATURES = ("tenure_months", "monthly_spend", "support_calls")


class SchemaServiceTimeoutError(RuntimeError):
    """The (simulated) schema service timed out: a transient error worth a retry."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@task
def upload_dataset(rows: int = 500) -> Path:
    """Write this run's training data to the lake."""
    rng = random.Random(7)
    path = HOME / "lake" / "churn" / "train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "churned"])
        for _ in range(rows):
            tenure, spend, calls = rng.randint(1, 72), rng.uniform(10, 120), rng.randint(0, 9)
            writer.writerow([tenure, round(spend, 2), calls, int(calls > 5)])
    audit.data_uploaded(f"file://{path}", rows=rows, sha256=_sha256(path), source="crm")
    return path


@task(retries=1, retry_delay_seconds=1)
def validate(path: Path) -> Path:
    """Check the label balance; the schema service fails on the first attempt."""
    context = TaskRunContext.get()
    if context is not None and context.task_run.run_count == 1:
        raise SchemaServiceTimeoutError("schema service timed out after 30s")
    rows = _read(path)
    positives = sum(r["churned"] for r in rows) / len(rows)
    if not 0.05 < positives < 0.95:
        raise ValueError(f"label balance {positives:.2f} is outside (0.05, 0.95)")
    return path


@task
def retrain(path: Path) -> dict[str, object]:
    """Fit a one-rule model: the support-call threshold that best separates churn."""
    train = _read(path)[:400]
    best = max(
        range(10), key=lambda t: sum((r["support_calls"] > t) == bool(r["churned"]) for r in train)
    )
    audit.model_retrained("churn", version=1, params={"threshold": best}, train_rows=len(train))
    return {"name": "churn", "version": 1, "threshold": best}


@task
def evaluate(model: dict[str, object], path: Path) -> dict[str, object]:
    """Score the held-out rows (the invocation goes on the record); record drift when
    accuracy falls below the floor."""
    holdout = _read(path)[400:]
    threshold = float(model["threshold"])  # type: ignore[arg-type]
    hits = sum((r["support_calls"] > threshold) == bool(r["churned"]) for r in holdout)
    accuracy = round(hits / len(holdout), 4)
    # The model's inputs and outputs for 50 validation rows, as one batch: digests, row counts
    # and schemas on the chain, a Merkle root so any one prediction can be proven later, the
    # values themselves only as a privacy policy allows (docs/PRIVACY.md).
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
    target = HOME / "registry" / f"{model['name']}-v{model['version']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(model, sort_keys=True))
    audit.model_deployed(
        str(model["name"]),
        version=model["version"],
        accuracy=model["accuracy"],
        target=str(target),
        approved_by="ml-lead@example.com",
    )


@audited_flow(name="ml-pipeline", log_prints=True)
def ml_pipeline(rows: int = 500) -> None:
    data = upload_dataset(rows)
    checked = validate(data)
    deploy(evaluate(retrain(checked), checked))


if __name__ == "__main__":
    ml_pipeline()
