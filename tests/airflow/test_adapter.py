"""The adapter on the ORM-shaped task instances the scheduler and API server pass (states set
by hand, executor-reported failures), its event filter and switch, and the task-side API
outside a task. Real ledgers; no Airflow processes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_audit.adapter import AirflowAdapter
from airflow_audit.api import Audit
from airflow_audit.settings import load_settings
from audit_core import Record, verify_chain
from audit_core.errors import LedgerError
from audit_core.ledgers.sqlite import SqliteLedger
from tests.airflow._airflow import records

START = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.timezone.utc)


def orm_ti(**changes: object) -> SimpleNamespace:
    """What the scheduler hands a listener: an ORM TaskInstance's columns."""
    values: dict[str, object] = {
        "dag_id": "etl",
        "task_id": "load",
        "run_id": "scheduled__2026-11-28",
        "try_number": 2,
        "max_tries": 3,
        "map_index": -1,
        "state": "failed",
        "hostname": "worker-7",
        "operator": "PythonOperator",
        "custom_operator_name": None,
        "dag_version_id": "0193-aaaa",
        "context_carrier": {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        },
        "start_date": START,
        "end_date": START + dt.timedelta(seconds=90),
        "logical_date": START,
    }
    values.update(changes)
    return SimpleNamespace(**values)


def adapter_for(tmp_path: Path, **options: str) -> AirflowAdapter:
    defaults = {"ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    settings = load_settings(
        get=lambda _section, key, fallback: {**defaults, **options}.get(key, fallback),
        env={},
        home=str(tmp_path),
    )
    return AirflowAdapter(settings)


def written(tmp_path: Path) -> list[Record]:
    return records(tmp_path / "ledger.db")


class TestOrmTaskInstance:
    """Task instances as the scheduler and API server pass them."""

    def test_executor_reported_failure(self, tmp_path: Path) -> None:
        """A string error from the scheduler is a task.failed of kind 'reported', with the
        worker's hostname, not ours."""
        adapter = adapter_for(tmp_path)
        assert adapter.task_failed(orm_ti(), "Executor reports task finished (failed)", "running")
        [rec] = written(tmp_path)
        assert "task.failed" == rec.event
        assert "reported" == rec.data["failure_kind"]
        assert "Executor reports task finished (failed)" == rec.data["message"]
        assert ("worker-7", "PythonOperator", 2) == (
            rec.subject["hostname"],
            rec.subject["operator"],
            rec.subject["try_number"],
        )
        assert 90.0 == rec.data["duration_s"]
        assert {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"} == (
            rec.trace
        )

    def test_state_set_by_hand(self, tmp_path: Path) -> None:
        """Marked failed or success in the UI (previous_state None) says so."""
        adapter = adapter_for(tmp_path)
        adapter.task_failed(orm_ti(), "TaskInstance's state was manually set to `failed`.", None)
        adapter.task_success(orm_ti(state="success"), None)
        failed, succeeded = written(tmp_path)
        assert "set_by_api" == failed.data["failure_kind"]
        assert "api" == succeeded.data["set_by"]

    def test_up_for_retry_is_retry_scheduled(self, tmp_path: Path) -> None:
        """A failed try that will be retried is task.retry_scheduled with the next try."""
        adapter = adapter_for(tmp_path)
        adapter.task_failed(orm_ti(state="up_for_retry"), ValueError("flaky"), "running")
        [rec] = written(tmp_path)
        assert ("task.retry_scheduled", 3, 3) == (
            rec.event,
            rec.data["next_try"],
            rec.data["max_tries"],
        )
        assert ("ValueError", "exception") == (rec.data["error_type"], rec.data["failure_kind"])

    def test_missing_hostname_stays_missing(self, tmp_path: Path) -> None:
        """An ORM instance without a hostname is not given the recording host's name."""
        adapter = adapter_for(tmp_path)
        adapter.task_skipped(orm_ti(hostname=None, state="skipped"), None)
        [rec] = written(tmp_path)
        assert rec.subject["hostname"] is None
        assert False is rec.data["ran"]


class TestContainment:
    """No hook raises into Airflow, whatever the arguments look like."""

    @pytest.mark.parametrize("hook", ["task_running", "task_success", "task_skipped"])
    def test_attribute_that_raises(self, tmp_path: Path, hook: str) -> None:
        """A task instance whose attribute raises costs the record, never an exception."""

        class Broken:
            dag_id = task_id = "x"

            @property
            def start_date(self) -> object:
                raise RuntimeError("lazy load failed")

            @property
            def context_carrier(self) -> object:
                raise RuntimeError("lazy load failed")

        adapter = adapter_for(tmp_path)
        assert False is getattr(adapter, hook)(Broken(), "running")

    def test_naive_and_aware_dates(self, tmp_path: Path) -> None:
        """Mixed naive and aware dates record no duration instead of failing."""
        adapter = adapter_for(tmp_path)
        naive_end = dt.datetime(2026, 11, 28, 9, 1)
        assert adapter.task_success(orm_ti(end_date=naive_end), "running")
        [rec] = written(tmp_path)
        assert "duration_s" not in rec.data


class TestSwitches:
    """The [workflow_audit] options that select what is recorded."""

    def test_events_filter(self, tmp_path: Path) -> None:
        """Excluded events are not written; the others are."""
        adapter = adapter_for(tmp_path, events="*,!task.started")
        adapter.task_running(orm_ti(state="running"))
        adapter.task_success(orm_ti(state="success"), "running")
        assert ["task.succeeded"] == [r.event for r in written(tmp_path)]

    def test_disabled_writes_nothing(self, tmp_path: Path) -> None:
        """enabled = False: hooks return without creating a ledger."""
        adapter = adapter_for(tmp_path, enabled="False")
        assert adapter.task_success(orm_ti(state="success"), "running")
        assert not (tmp_path / "ledger.db").exists()

    def test_required_record_raises_when_ledger_cannot_be_written(self, tmp_path: Path) -> None:
        """audit.record(required=True) raises an AuditError instead of failing open."""
        (tmp_path / "file").write_text("")
        adapter = adapter_for(tmp_path, ledger_url=f"sqlite:///{tmp_path / 'file' / 'l.db'}")
        assert False is adapter.task_record("model.deployed", {}, None, required=False)
        with pytest.raises(LedgerError):
            adapter.task_record("model.deployed", {}, None, required=True)


class TestTaskSideApi:
    """airflow_audit.audit outside a task."""

    def test_outside_a_task_records_the_given_subject(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no running task the record has only the subject passed in."""
        adapter = adapter_for(tmp_path)
        monkeypatch.setattr("airflow_audit.api.get_adapter", lambda: adapter)
        assert Audit().record("drift.detected", {"psi": 0.31}, subject={"model": "churn"})
        [rec] = written(tmp_path)
        assert ({"model": "churn"}, {"psi": 0.31}) == (rec.subject, rec.data)

    def test_audit_pickles_and_still_records(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`audit` survives pickling (process pools, pickle-serialized tasks) and records."""
        import pickle

        from airflow_audit import audit

        adapter = adapter_for(tmp_path)
        monkeypatch.setattr("airflow_audit.api.get_adapter", lambda: adapter)
        copy = pickle.loads(pickle.dumps(audit))  # noqa: S301 - our own bytes
        assert copy.record("drift.detected", {"psi": 0.2}, subject={"model": "churn"})
        assert ["drift.detected"] == [r.event for r in written(tmp_path)]

    def test_reconcile_of_a_missing_orchestrator_is_a_clean_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`reconcile prefect` where Prefect is not installed: exit 2 and what to install."""
        from audit_core.cli import main

        try:
            import prefect  # noqa: F401
        except ImportError:
            pass
        else:  # the Airflow venv never has Prefect (disjoint fastapi pins)
            raise AssertionError("this test needs a venv without Prefect")
        ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
        assert 2 == main(["reconcile", "prefect", "--since", "2026-01-01", "--ledger", ledger])
        err = capsys.readouterr().err
        assert "cannot be loaded" in err
        assert "workflow-audit[prefect]" in err
        assert "Traceback" not in err


class TestStreams:
    """A chain template puts each stream on its own chain."""

    def test_chain_per_dag(self, tmp_path: Path) -> None:
        """chain = airflow-{dag_id}: records go to one chain per DAG, each valid."""
        adapter = adapter_for(tmp_path, chain="airflow-{dag_id}")
        adapter.task_running(orm_ti(dag_id="etl", state="running"))
        adapter.task_running(orm_ti(dag_id="ml/train", state="running"))
        assert adapter.task_record("model.deployed", {}, {"dag_id": "ml/train"}, required=True)
        db = SqliteLedger(tmp_path / "ledger.db", create=False)
        try:
            assert ["airflow-etl", "airflow-ml_train"] == db.chains()
            assert [1, 2] == [verify_chain(db, c).size for c in db.chains()]
        finally:
            db.close()
