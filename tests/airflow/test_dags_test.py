"""``airflow dags test`` of the example DAGs with the plugin: the exact records, subjects and
trace ids; secrets masked; Airflow's bundled examples complete; a broken ledger harmless."""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_core import Record
from tests.airflow._airflow import BIN, ML_TIMELINE, AirflowHome, records

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Run:
    """One ``airflow dags test`` run and what it left on its ledger."""

    ledger: Path
    run_id: str
    trace_id: str | None
    records: list[Record]
    done: subprocess.CompletedProcess[str]


def dags_test(home: AirflowHome, dag_id: str, ledger: Path, **env: str) -> Run:
    done = home.run("dags", "test", dag_id, ledger=ledger, **env)
    run_id, carrier = home.last_run(dag_id)
    trace_id = None
    if carrier:
        value = json.loads(carrier)  # Airflow's ExtendedJSON: {"__var": {...}, "__type": "dict"}
        trace_id = value.get("__var", value)["traceparent"].split("-")[1]
    mine = [r for r in records(ledger) if r.subject.get("run_id") in (run_id, None)]
    return Run(ledger, run_id, trace_id, mine, done)


def timeline(run: Run) -> list[tuple[str, str | None, object]]:
    return [(r.event, r.subject.get("task_id"), r.subject.get("try_number")) for r in run.records]


def verify(ledger: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "workflow-audit"), "verify", "--ledger", f"sqlite:///{ledger}"],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def ml_run(airflow_home: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = dags_test(airflow_home, "ml_pipeline", tmp_path_factory.mktemp("ml") / "ledger.db")
    assert 0 == run.done.returncode, run.done.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def bad_run(airflow_home: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> Run:
    ledger = tmp_path_factory.mktemp("bad") / "ledger.db"
    return dags_test(airflow_home, "ml_pipeline_bad_data", ledger)


class TestMlPipeline:
    """The example ML pipeline: upload → validate (retried once) → retrain → evaluate → deploy."""

    def test_exact_record_sequence(self, ml_run: Run) -> None:
        """Every task instance gets started then succeeded; the retry sits between two tries."""
        assert ML_TIMELINE == timeline(ml_run)

    def test_subjects_name_the_task_instance(self, ml_run: Run) -> None:
        """Task records carry dag, run, try, map index, operator, version and host."""
        # Every record but the asset's and the DAG run's is about a task instance.
        tasks = [r for r in ml_run.records if r.event not in ("asset.updated", "dagrun.succeeded")]
        assert [n for _, _, n in ML_TIMELINE if n is not None] == [
            r.subject["try_number"] for r in tasks
        ]
        for r in tasks:
            assert "ml_pipeline" == r.subject["dag_id"]
            assert ml_run.run_id == r.subject["run_id"]
            assert -1 == r.subject["map_index"]
            assert "@task" == r.subject["operator"]
            assert socket.gethostname() == r.subject["hostname"]
            assert r.subject["dag_version"]
            assert str(r.subject["logical_date"]).endswith("Z")

    def test_trace_ids_are_the_dag_runs(self, ml_run: Run) -> None:
        """Every record of the run carries the DAG run's W3C trace id."""
        assert ml_run.trace_id is not None
        traced = [r for r in ml_run.records if r.event != "asset.updated"]
        assert [ml_run.trace_id] * len(traced) == [(r.trace or {}).get("trace_id") for r in traced]

    def test_retry_record_says_why_and_what_next(self, ml_run: Run) -> None:
        """task.retry_scheduled names the exception, its message, and the next try."""
        retry = next(r for r in ml_run.records if r.event == "task.retry_scheduled")
        assert "ml_pipeline.SchemaServiceTimeoutError" == retry.data["error_type"]
        assert "schema service timed out after 30s" == retry.data["message"]
        assert "exception" == retry.data["failure_kind"]
        assert (2, 1) == (retry.data["next_try"], retry.data["max_tries"])
        assert 64 == len(str(retry.data["traceback_sha256"]))

    def test_task_side_api_records_pipeline_facts(self, ml_run: Run) -> None:
        """audit.data_uploaded / model_retrained / model_deployed land with their data."""
        by_event = {r.event: r for r in ml_run.records}
        assert 500 == by_event["data.uploaded"].data["rows"]
        assert "churn" == by_event["model.retrained"].data["model"]
        assert "ml-lead@example.com" == by_event["model.deployed"].data["approved_by"]

    def test_asset_event_names_asset_and_source(self, ml_run: Run) -> None:
        """The dataset's asset event records its URI and the task that produced it."""
        asset = next(r for r in ml_run.records if r.event == "asset.updated")
        assert str(asset.subject["asset_uri"]).endswith("/lake/churn/train.csv")
        assert ("ml_pipeline", "upload_dataset") == (
            asset.subject["dag_id"],
            asset.subject["task_id"],
        )

    def test_dagrun_record_names_trigger(self, ml_run: Run) -> None:
        """dagrun.succeeded says how the run was triggered and by whom."""
        end = ml_run.records[-1]
        assert ("test", "dag_test") == (end.data["triggered_by"], end.data["triggering_user"])
        assert {"type": "user", "id": "dag_test"} == end.actor
        assert {"success": 5} == end.data["task_states"]

    def test_chain_verifies(self, ml_run: Run) -> None:
        """workflow-audit verify accepts the chain the run wrote."""
        done = verify(ml_run.ledger)
        assert 0 == done.returncode, done.stderr


class TestBadDataPipeline:
    """The failing example: validate refuses the data; downstream tasks never run."""

    def test_exact_record_sequence(self, bad_run: Run) -> None:
        """task.failed for validate, task.upstream_failed for each skipped task, dagrun.failed."""
        assert 0 != bad_run.done.returncode
        assert [
            ("task.started", "upload_dataset", 1),
            ("data.uploaded", "upload_dataset", 1),
            ("task.succeeded", "upload_dataset", 1),
            ("task.started", "validate", 1),
            ("task.failed", "validate", 1),
            ("task.upstream_failed", "deploy", 0),
            ("task.upstream_failed", "evaluate", 0),
            ("task.upstream_failed", "retrain", 0),
            ("dagrun.failed", None, None),
        ] == timeline(bad_run)

    def test_failure_record(self, bad_run: Run) -> None:
        """The failure names the exception, Airflow's failure kind and a redacted message."""
        failed = next(r for r in bad_run.records if r.event == "task.failed")
        assert "airflow.sdk.exceptions.AirflowFailException" == failed.data["error_type"]
        assert "failed_without_retry" == failed.data["failure_kind"]
        assert "postgresql://etl:[REDACTED]@warehouse/crm" in str(failed.data["message"])
        assert ["validate"] == bad_run.records[-1].data["failed_tasks"]

    def test_password_never_reaches_the_ledger_file(self, bad_run: Run) -> None:
        """The password in the exception message is in no byte of the ledger."""
        assert b"hunter2" not in bad_run.ledger.read_bytes()


class TestSecrets:
    """Airflow's secrets masker and the core redactors both run on every record."""

    def test_masked_secret_and_secret_keys(self, airflow_home: AirflowHome, tmp_path: Path) -> None:
        """A value given to mask_secret and a password key are masked in user and failure
        records alike."""
        run = dags_test(airflow_home, "audit_secrets", tmp_path / "ledger.db")
        granted = next(r for r in run.records if r.event == "access.granted")
        failed = next(r for r in run.records if r.event == "task.failed")
        assert "connected with ***" == granted.data["note"]
        assert granted.data["password"] in ("***", "[REDACTED]")
        assert "upstream said: bad credential ***" == failed.data["message"]
        assert b"tok-8f3b2c7d9e1a" not in (tmp_path / "ledger.db").read_bytes()


class TestBundledExamples:
    """Airflow's own example DAGs: every task instance in the metadata DB has its records."""

    @pytest.mark.parametrize(
        "dag_id",
        [
            "example_skip_dag",
            "example_nested_branch_dag",
            "example_dynamic_task_mapping",
            "example_setup_teardown_taskflow",
        ],
    )
    def test_every_task_instance_recorded(
        self, airflow_home: AirflowHome, tmp_path: Path, dag_id: str
    ) -> None:
        """Each (task, map index, try) of the run has a terminal record, and a started record
        when it ran; reconcile finds nothing missing."""
        run = dags_test(airflow_home, dag_id, tmp_path / "ledger.db")
        tis = airflow_home.db(
            "SELECT task_id, map_index, try_number, state, hostname FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?",
            dag_id,
            run.run_id,
        )
        assert tis
        terminal = {
            (r.subject["task_id"], r.subject["map_index"], r.subject["try_number"])
            for r in run.records
            if r.event in ("task.succeeded", "task.failed", "task.skipped", "task.upstream_failed")
        }
        started = {
            (r.subject["task_id"], r.subject["map_index"], r.subject["try_number"])
            for r in run.records
            if r.event == "task.started"
        }
        for task_id, map_index, try_number, state, hostname in tis:
            assert (task_id, map_index, try_number) in terminal, (task_id, state)
            if hostname:
                assert (task_id, map_index, try_number) in started, (task_id, state)
        done = subprocess.run(
            [str(BIN / "workflow-audit"), "reconcile", "airflow", "--since", "2000-01-01",
             "--dry-run", "--ledger", f"sqlite:///{run.ledger}"],
            env=airflow_home.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr
        gaps = [line for line in done.stdout.splitlines() if f"dag_id={dag_id} " in line]
        assert [] == gaps


class TestBrokenLedger:
    """A ledger that cannot be written never changes a task's outcome."""

    def test_unwritable_ledger_leaves_dag_outcome(
        self, airflow_home: AirflowHome, tmp_path: Path
    ) -> None:
        """With the ledger under a regular file, the DAG still succeeds and the failure is
        logged (the records wait in the spool)."""
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        done = airflow_home.run(
            "dags", "test", "ml_pipeline", ledger=blocker / "ledger.db",
            WORKFLOW_AUDIT_SPOOL_DIR=str(tmp_path / "spool"),
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr[-2000:]
        run_id, _ = airflow_home.last_run("ml_pipeline")
        states = airflow_home.db(
            "SELECT state FROM task_instance WHERE dag_id = 'ml_pipeline' AND run_id = ?",
            run_id,
        )
        assert [("success",)] * 5 == states
        output = done.stdout + done.stderr
        assert "the ledger refused a write (cannot open ledger" in output
        assert "records go to the spool" in output


class TestImportErrors:
    """A DAG file that does not import is on the chain."""

    def test_broken_dag_file_recorded(self, airflow_home: AirflowHome, tmp_path: Path) -> None:
        """dag.import_error names the file and the error's last line, and digests the trace."""
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "broken.py").write_text("from airflow.sdk import dag\nraise ValueError('typo')\n")
        done = airflow_home.run(
            "dags", "reserialize", ledger=tmp_path / "ledger.db",
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr[-2000:]
        [rec] = [r for r in records(tmp_path / "ledger.db") if r.event == "dag.import_error"]
        assert str(rec.subject["filename"]).endswith("broken.py")
        assert "ValueError: typo" == rec.data["message"]
        assert True is rec.data["new"]
        assert 64 == len(str(rec.data["stacktrace_sha256"]))
