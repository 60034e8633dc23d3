"""``workflow-audit evidence --reconcile airflow`` of what real Airflow wrote: one run of the
example ML pipeline and one of its failing twin (``airflow dags test``, into one ledger), then
a pack whose completeness section reconciles the period against Airflow's metadata DB."""

from __future__ import annotations

import datetime as dt
import subprocess
import zipfile
from pathlib import Path

import orjson
import pytest

from testkit.pdf import pdftotext
from tests.airflow._airflow import BIN, AirflowHome, records

pytestmark = pytest.mark.slow


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _workflow_audit(home: AirflowHome, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with the Airflow home's environment: the reconciler reads
    that home's metadata DB (this process's Airflow was configured at import)."""
    return subprocess.run(
        [str(BIN / "workflow-audit"), *args],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_pack_of_airflow_runs_reconciles(airflow_home: AirflowHome, tmp_path: Path) -> None:
    """Every task instance that ended in the period has its record (missing 0); the pack
    holds the failing run's task.failed in full, evidences Art. 12(2)(a) with the retrain
    and the deploy, verifies offline, and its PDF says so."""
    ledger = tmp_path / "ledger.db"
    since = _now()  # the session's Airflow home holds other tests' runs: ours only
    ok = airflow_home.run("dags", "test", "ml_pipeline", ledger=ledger)
    assert 0 == ok.returncode, ok.stderr[-3000:]
    bad = airflow_home.run("dags", "test", "ml_pipeline_bad_data", ledger=ledger)
    assert 0 != bad.returncode
    failed = [r for r in records(ledger) if r.event == "task.failed"]
    assert ["validate"] == [r.subject["task_id"] for r in failed]

    pack = tmp_path / "pack.zip"
    url = f"sqlite:///{ledger}"
    # 26 records sign no checkpoint (the plugin's cadence): `evidence` signs one itself
    made = _workflow_audit(
        airflow_home, "evidence", "--ledger", url, "--since", since, "--reconcile", "airflow",
        "--sample", "10", "-o", str(pack),
    )  # fmt: skip
    assert 0 == made.returncode, made.stderr[-3000:]
    assert "verdict PASS" in made.stdout

    with zipfile.ZipFile(pack) as zf:
        report = orjson.loads(zf.read("report.json"))
        in_full = [orjson.loads(x) for x in zf.read("records/failure.jsonl").splitlines()]
        pdf = zf.read("report.pdf")
    reconciled = report["completeness"]["reconcile"]
    assert (True, "airflow", 0, None) == (
        reconciled["ran"],
        reconciled["source"],
        reconciled["missing"],
        reconciled["error"],
    )
    # ml_pipeline: 5 tasks, validate tried twice; bad data: upload, validate, 3 upstream_failed
    assert 11 == reconciled["expected"]
    events = sorted(orjson.loads(x["record"])["event"] for x in in_full)
    assert ["dagrun.failed", "task.failed", "task.upstream_failed"] == sorted(set(events))
    assert [r.seq for r in failed] == [
        x["leaf_index"] for x in in_full if orjson.loads(x["record"])["event"] == "task.failed"
    ]
    control = next(c for c in report["controls"] if c["id"] == "eu-ai-act-12-2-a")
    assert "evidenced" == control["status"]
    assert {"model.deployed": 1, "model.retrained": 1, "task.failed": 1} == {
        k: v for k, v in control["by_event"].items() if k.startswith(("model.", "task.failed"))
    }

    verified = _workflow_audit(
        airflow_home, "verify-evidence", str(pack), "--key", f"{ledger}.key.pub"
    )
    assert 0 == verified.returncode, verified.stderr
    text = " ".join(pdftotext(pdf).split())
    assert "Audit evidence" in text
    assert "Art. 12(2)(a)" in text
