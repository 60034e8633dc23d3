"""The example flows under real Prefect: the exact records, subjects and trace ids; failures
redacted; the user's own hooks kept; a broken ledger harmless; real-time task hooks."""

from __future__ import annotations

import logging
import runpy
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger
from prefect_audit import audited_flow, flow_hooks, record, task_hooks
from tests.prefect.conftest import SPANS

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "example_flows"
#: (event, task or flow, attempt) of one run of example_flows/ml_pipeline.py, in order: flow
#: start, the pipeline's own events in real time, each task run's attempts from Prefect's state
#: history, the flow's end.
ML_TIMELINE = [
    ("flowrun.started", "ml-pipeline", 1),
    ("data.uploaded", "upload_dataset", 1),
    ("model.retrained", "retrain", 1),
    ("model.deployed", "deploy", 1),
    ("task.started", "upload_dataset", 1),
    ("task.succeeded", "upload_dataset", 1),
    ("task.started", "validate", 1),
    ("task.retry_scheduled", "validate", 1),
    ("task.started", "validate", 2),
    ("task.succeeded", "validate", 2),
    ("task.started", "retrain", 1),
    ("task.succeeded", "retrain", 1),
    ("task.started", "evaluate", 1),
    ("task.succeeded", "evaluate", 1),
    ("task.started", "deploy", 1),
    ("task.succeeded", "deploy", 1),
    ("flowrun.succeeded", "ml-pipeline", 1),
]


def records(ledger: Path) -> list[Record]:
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read("prefect")]
    finally:
        db.close()


def timeline(recs: list[Record]) -> list[tuple[str, object, object]]:
    return [
        (r.event, r.subject.get("task_name") or r.subject.get("flow_name"), r.subject["run_count"])
        for r in recs
    ]


def example(name: str) -> Any:
    """The flow object of example_flows/<name>.py."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))[name]


class TestMlPipeline:
    """example_flows/ml_pipeline.py: upload → validate (retried) → retrain → evaluate → deploy."""

    @pytest.fixture(scope="class")
    @classmethod
    def run(cls, tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
        import prefect_audit.adapter as adapter_module
        from prefect_audit.adapter import PrefectAdapter
        from prefect_audit.settings import WorkflowAuditSettings

        ledger = tmp_path_factory.mktemp("ml") / "ledger.db"
        previous = adapter_module._ADAPTER
        adapter_module._ADAPTER = PrefectAdapter(
            WorkflowAuditSettings(ledger_url=f"sqlite:///{ledger}")
        )
        SPANS.clear()
        try:
            example("ml_pipeline")()
        finally:
            adapter_module._ADAPTER = previous
        return records(ledger)

    def test_exact_record_sequence(self, run: list[Record]) -> None:
        """Flow start, the pipeline's own events in real time, then every task run's attempts
        from Prefect's state history, then the flow's end."""
        assert ML_TIMELINE == timeline(run)

    def test_task_records_carry_state_timestamps_in_order(self, run: list[Record]) -> None:
        """Task records are stamped with Prefect's state times, oldest first."""
        task_ts = [r.ts for r in run if r.event.startswith("task.")]
        assert sorted(task_ts) == task_ts
        assert run[0].ts < task_ts[0] < run[-1].ts

    def test_subjects(self, run: list[Record]) -> None:
        """Every record names the flow run; task records name their task run and key."""
        flow_run_ids = {r.subject["flow_run_id"] for r in run}
        assert 1 == len(flow_run_ids)
        tasks = [r for r in run if r.event.startswith("task.")]
        assert 5 == len({r.subject["task_run_id"] for r in tasks})
        for r in tasks:
            assert "ml-pipeline" == r.subject["flow_name"]
            assert str(r.subject["task_key"]).startswith(str(r.subject["task_name"]))
        assert str(run[0].subject["parameters_sha256"]).startswith("sha256:")

    def test_trace_ids_are_the_run_spans(self, run: list[Record]) -> None:
        """With an OTel SDK provider, each record carries its run's span: the flow run's for
        flow records, the task run's for task records, one trace id for all."""
        spans = {s.name: s.context for s in SPANS.get_finished_spans()}
        flow_span = spans[str(run[0].subject["flow_run_name"])]
        assert {f"{flow_span.trace_id:032x}"} == {(r.trace or {}).get("trace_id") for r in run}
        assert f"{flow_span.span_id:016x}" == (run[0].trace or {}).get("span_id")
        task_spans = {f"{c.span_id:016x}" for name, c in spans.items() if name != flow_span}
        for r in run:
            if r.event.startswith("task."):
                assert (r.trace or {}).get("span_id") in task_spans

    def test_retry_record_says_why(self, run: list[Record]) -> None:
        """task.retry_scheduled carries the failed attempt's exception, from the task run's
        log in Prefect's API (Prefect keeps no failed state for a retried attempt)."""
        retry = next(r for r in run if r.event == "task.retry_scheduled")
        assert "SchemaServiceTimeoutError" == retry.data["error_type"]
        assert (
            "SchemaServiceTimeoutError('schema service timed out after 30s')"
            == (retry.data["message"])
        )
        assert (1, 1) == (retry.data["retry"], retry.data["max_retries"])

    def test_pipeline_facts(self, run: list[Record]) -> None:
        """The task-side API's records carry the pipeline's data."""
        by_event = {r.event: r for r in run}
        assert 500 == by_event["data.uploaded"].data["rows"]
        assert "ml-lead@example.com" == by_event["model.deployed"].data["approved_by"]


class TestBadData:
    """example_flows/ml_pipeline_bad_data.py: validate refuses the data; the flow fails."""

    def test_failure_records(self, ledger: Path) -> None:
        """task.failed and flowrun.failed carry the redacted message; no password on disk."""
        with pytest.raises(ValueError, match="no positive labels"):
            example("ml_pipeline_bad_data")()
        recs = records(ledger)
        assert [
            ("flowrun.started", "ml-pipeline-bad-data", 1),
            ("data.uploaded", "upload_dataset", 1),
            ("task.started", "upload_dataset", 1),
            ("task.succeeded", "upload_dataset", 1),
            ("task.started", "validate", 1),
            ("task.failed", "validate", 1),
            ("flowrun.failed", "ml-pipeline-bad-data", 1),
        ] == timeline(recs)
        failed = next(r for r in recs if r.event == "task.failed")
        assert "postgresql://etl:[REDACTED]@warehouse/crm" in str(failed.data["message"])
        end = recs[-1]
        assert "ValueError" == end.data["error_type"]
        assert "failed" == end.data["failure_kind"]
        assert b"hunter2" not in ledger.read_bytes()


class TestHooks:
    """Our hooks beside the user's, and real-time task hooks."""

    def test_user_hooks_run_once(self, ledger: Path) -> None:
        """A user's on_completion runs exactly once with audited_flow and with flow_hooks."""
        calls: list[str] = []

        def mine(flow: Any, flow_run: Any, state: Any) -> None:
            calls.append(flow.name)

        @audited_flow(name="wrapped", on_completion=[mine])
        def wrapped() -> int:
            return 1

        @flow(name="plain", **flow_hooks(on_completion=[mine]))
        def plain() -> int:
            return 2

        assert (1, 2) == (wrapped(), plain())
        assert ["wrapped", "plain"] == calls
        ends = [r.subject["flow_name"] for r in records(ledger) if r.event == "flowrun.succeeded"]
        assert ["wrapped", "plain"] == ends

    def test_real_time_task_hooks_not_duplicated(self, ledger: Path) -> None:
        """A task with task_hooks() is recorded as it runs, and the end-of-run pass does not
        record it again."""
        attempts: list[int] = []

        @task(retries=1, retry_delay_seconds=0, **task_hooks())
        def flaky() -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("transient")
            record("step.done")

        @audited_flow(name="live")
        def live() -> None:
            flaky()

        live()
        assert [
            ("flowrun.started", "live", 1),
            ("task.started", "flaky", 1),
            ("task.retry_scheduled", "flaky", 1),
            ("task.started", "flaky", 2),
            ("step.done", "flaky", 2),
            ("task.succeeded", "flaky", 2),
            ("flowrun.succeeded", "live", 1),
        ] == timeline(records(ledger))


class TestBrokenLedger:
    """A ledger that cannot be written never changes a flow's outcome."""

    def test_unwritable_ledger(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With the ledger under a regular file, the flow returns its value; failures logged."""
        import prefect_audit.adapter as adapter_module
        from prefect_audit.adapter import PrefectAdapter
        from prefect_audit.settings import WorkflowAuditSettings

        (tmp_path / "file").write_text("")
        monkeypatch.setenv("WORKFLOW_AUDIT_SPOOL_DIR", str(tmp_path / "spool"))
        settings = WorkflowAuditSettings(ledger_url=f"sqlite:///{tmp_path / 'file' / 'l.db'}")
        monkeypatch.setattr(adapter_module, "_ADAPTER", PrefectAdapter(settings))

        @task
        def step() -> int:
            record("step.done")
            return 41

        @audited_flow(name="unwritable")
        def unwritable() -> int:
            return step() + 1

        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            assert 42 == unwritable()
        messages = [r.getMessage() for r in caplog.records if r.name == "workflow_audit"]
        assert any("the ledger refused a write (cannot open ledger" in m for m in messages)
        assert [] == [m for m in messages if "abandoned" in m]  # every record was spooled


class TestCrash:
    """A flow that crashes (a BaseException, as on SIGTERM) is recorded as crashed."""

    def test_crashed_flow(self, ledger: Path) -> None:
        """on_crashed records flowrun.crashed with the exception's type and the tasks' runs."""

        class Interrupted(BaseException):
            pass

        @task
        def work() -> int:
            return 1

        @audited_flow(name="crashing")
        def crashing() -> None:
            work()
            raise Interrupted("terminated by the platform")

        with pytest.raises(Interrupted):
            crashing()
        recs = records(ledger)
        assert ["flowrun.started", "task.started", "task.succeeded", "flowrun.crashed"] == [
            r.event for r in recs
        ]
        assert "crashed" == recs[-1].data["failure_kind"]
