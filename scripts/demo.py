"""`make demo`: four processes write a realistic ML-pipeline event stream into the embedded
ledger, then `workflow-audit verify` and `workflow-audit report` run on it.

The ledger is $WORKFLOW_AUDIT_LEDGER when set (appended to, never deleted), else
.demo/ledger.db in the repository (recreated on every run).
(The Airflow adapter will replace the simulated events with real `airflow dags test` runs.)
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from audit_core import AuditConfig, AuditTrail
from audit_core.ledgers import ledger_path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("upload_dataset", "validate", "retrain", "evaluate", "deploy")


def _trace() -> dict[str, str]:
    return {"trace_id": secrets.token_hex(16), "span_id": secrets.token_hex(8)}


def run_pipeline(ledger_url: str, worker: int, runs: int) -> int:
    """One scheduler-like process: `runs` DAG runs of the ML pipeline, with retries/failures."""
    rng = random.Random(worker)
    trail = AuditTrail(
        AuditConfig.from_env(ledger_url=ledger_url, actor=("service", f"scheduler-{worker}"))
    )
    written = 0
    for n in range(runs):
        dag_id = ("ml_pipeline", "churn_model", "fraud_model", "ranking_model")[worker % 4]
        run_id = f"scheduled__2026-11-{n + 1:02d}T00:00:00+00:00"
        run = {"dag_id": dag_id, "run_id": run_id}
        trace = _trace()
        trail.record("dagrun.started", {"run_type": "scheduled"}, subject=run, trace=trace)
        failed = False
        for task in TASKS:
            subject = {
                **run,
                "task_id": task,
                "try_number": 1,
                "map_index": -1,
                "hostname": f"worker-{worker}",
            }
            trail.record("task.started", subject=subject, trace=trace)
            if task == "retrain" and rng.random() < 0.3:  # a flaky GPU node: fails once
                trail.record(
                    "task.failed",
                    {
                        "error": {"type": "RuntimeError", "message": "CUDA out of memory"},
                        "will_retry": True,
                    },
                    subject=subject,
                    trace=trace,
                )
                trail.record(
                    "task.retry_scheduled", {"retry_delay_s": 60}, subject=subject, trace=trace
                )
                subject = {**subject, "try_number": 2}
                trail.record("task.started", subject=subject, trace=trace)
            if task == "upload_dataset":
                trail.record(
                    "data.uploaded",
                    {
                        "uri": f"s3://datasets/{dag_id}/{n}.parquet",
                        "rows": rng.randint(10**5, 10**6),
                        "sha256": secrets.token_hex(32),
                        "connection": "postgresql://etl:hunter2@warehouse:5432/prod",
                    },
                    subject=subject,
                    trace=trace,
                )
            if task == "validate" and rng.random() < 0.2:
                trail.record(
                    "drift.detected",
                    {"feature": "tenure", "psi": round(rng.random(), 3)},
                    subject=subject,
                    trace=trace,
                )
            if task == "retrain":
                trail.record(
                    "model.retrained",
                    {
                        "model": dag_id,
                        "version": n + 1,
                        "auc": round(0.8 + rng.random() / 10, 4),
                        "api_key": "sk-live-x",
                    },
                    subject=subject,
                    trace=trace,
                )
            if task == "evaluate" and rng.random() < 0.15:
                trail.record(
                    "task.failed",
                    {
                        "error": {
                            "type": "AssertionError",
                            "message": "AUC 0.71 below threshold 0.75",
                        },
                        "will_retry": False,
                    },
                    subject=subject,
                    trace=trace,
                )
                trail.record(
                    "dagrun.failed", {"reason": "task evaluate failed"}, subject=run, trace=trace
                )
                failed = True
                break
            if task == "deploy":
                trail.record(
                    "model.deployed",
                    {
                        "model": dag_id,
                        "version": n + 1,
                        "endpoint": f"https://models.internal/{dag_id}",
                    },
                    subject=subject,
                    trace=trace,
                )
            trail.record(
                "task.succeeded",
                {"duration_s": round(rng.uniform(1, 90), 2)},
                subject=subject,
                trace=trace,
            )
        if not failed:
            trail.record("dagrun.succeeded", {}, subject=run, trace=trace)
        if n == 3:
            trail.record(
                "access.denied",
                {"action": "trigger", "reason": "role Viewer"},
                subject=run,
                actor=("user", "mallory"),
            )
            trail.record(
                "permission.changed",
                {"role": "Op", "granted_to": "alice"},
                subject={"dag_id": dag_id},
                actor=("user", "admin"),
            )
    written = trail.ledger.head("default").seq + 1  # type: ignore[union-attr]
    trail.close()
    return written


def main() -> int:
    ledger_url = os.environ.get("WORKFLOW_AUDIT_LEDGER")
    if ledger_url is None:
        demo_dir = REPO / ".demo"
        shutil.rmtree(demo_dir, ignore_errors=True)
        demo_dir.mkdir()
        ledger_url = f"sqlite:///{demo_dir / 'ledger.db'}"
    print(f"writing a simulated ML-pipeline event stream from 4 processes into {ledger_url}")
    with ProcessPoolExecutor(max_workers=4) as pool:
        list(pool.map(run_pipeline, [ledger_url] * 4, range(4), [10] * 4))
    path = ledger_path(ledger_url)
    key = f"{path}.key.pub"  # the verifier key of the local signing key beside the ledger
    bundle = f"{path}.proof-42.json"
    steps = [
        ("verify --key", ["verify", "--ledger", ledger_url, "--key", key]),
        ("report --key", ["report", "--ledger", ledger_url, "--key", key]),
        ("prove --seq 42", ["prove", "--ledger", ledger_url, "--seq", "42", "-o", bundle]),
        (
            "verify-proof (offline: the bundle and the key only)",
            ["verify-proof", bundle, "--key", key],
        ),
    ]
    failed = 0
    for title, args in steps:
        print(f"\n$ workflow-audit {title}", flush=True)
        failed |= subprocess.run(
            [sys.executable, "-m", "audit_core.cli", *args], check=False
        ).returncode
    print(
        f"\nThe ledger is at {ledger_url}; its checkpoints are signed with {path}.key "
        f"(verifier key in {key}). Try:\n"
        f"  .venv-airflow/bin/workflow-audit show --ledger {ledger_url} --event 'task.failed'\n"
        f"  .venv-airflow/bin/workflow-audit export --ledger {ledger_url} --format jsonl"
    )
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
