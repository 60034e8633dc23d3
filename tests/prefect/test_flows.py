"""The example flows under real Prefect: the exact records, subjects and trace ids; failures
redacted; the user's own hooks kept; a broken ledger harmless; real-time task hooks."""

from __future__ import annotations

import logging
import os
import runpy
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger
from prefect_audit import audited_flow, flow_hooks, record, task_hooks
from prefect_audit.adapter import flush_runs
from prefect_audit.ids import lifecycle_key, run_trace
from tests.prefect.conftest import SPANS

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "example_flows"
#: (event, task or flow, attempt) of one run of example_flows/ml_pipeline.py, in order: flow
#: start, the pipeline's own events in real time, the flow's end (its final hook), then each
#: task run's attempts from Prefect's state history (the end-of-run pass, in the background).
ML_TIMELINE = [
    ("flowrun.started", "ml-pipeline", 1),
    ("data.uploaded", "upload_dataset", 1),
    ("model.retrained", "retrain", 1),
    ("model.invoked", "evaluate", 1),
    ("model.deployed", "deploy", 1),
    ("flowrun.succeeded", "ml-pipeline", 1),
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
]


def records(ledger: Path, *, flush: bool = True) -> list[Record]:
    """The ledger's records of chain 'prefect'; ``flush``: once this process's end-of-run
    passes have written theirs (the flow call returns before them)."""
    if flush:
        assert flush_runs(300)
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
            assert flush_runs(300)
        finally:
            adapter_module._ADAPTER = previous
        return records(ledger)

    def test_exact_record_sequence(self, run: list[Record]) -> None:
        """Flow start, the pipeline's own events in real time, the flow's end, then every task
        run's attempts from Prefect's state history."""
        assert ML_TIMELINE == timeline(run)

    def test_task_records_carry_state_timestamps_in_order(self, run: list[Record]) -> None:
        """Task records are stamped with Prefect's state times, oldest first: they land after
        the flow's end record, and their times fall between the flow's start and end."""
        task_ts = [r.ts for r in run if r.event.startswith("task.")]
        assert sorted(task_ts) == task_ts
        end = next(r for r in run if r.event == "flowrun.succeeded")
        assert run[0].ts < task_ts[0] <= task_ts[-1] < end.ts

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
            ("flowrun.failed", "ml-pipeline-bad-data", 1),
            ("task.started", "upload_dataset", 1),
            ("task.succeeded", "upload_dataset", 1),
            ("task.started", "validate", 1),
            ("task.failed", "validate", 1),
        ] == timeline(recs)
        failed = next(r for r in recs if r.event == "task.failed")
        assert "postgresql://etl:[REDACTED]@warehouse/crm" in str(failed.data["message"])
        end = next(r for r in recs if r.event == "flowrun.failed")
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
        assert ["flowrun.started", "flowrun.crashed", "task.started", "task.succeeded"] == [
            r.event for r in recs
        ]
        assert "crashed" == recs[1].data["failure_kind"]


def stored_keys(ledger: Path) -> list[str]:
    """The idempotency keys the ledger holds for chain 'prefect', in record order."""
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT key FROM record_keys WHERE chain = 'prefect' ORDER BY seq")
        return [str(key) for (key,) in rows]


def lifecycle_keys(recs: list[Record]) -> list[str]:
    """The key each lifecycle record should carry (prefect_audit.ids.lifecycle_key)."""
    return [
        lifecycle_key(
            r.event,
            r.subject.get("task_run_id") or r.subject["flow_run_id"],
            int(str(r.subject["run_count"])),
        )
        for r in recs
        if r.event.startswith(("task.", "flowrun."))
    ]


class TestBatchedPass:
    """The end-of-run pass reads the flow run's task runs in one paginated query."""

    def test_many_task_runs(self, ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """250 task runs (more than one page of 200): one start and one end each, the retried
        one's attempts and reason, and a state history read for the retried run only."""
        from prefect.client.orchestration import SyncPrefectClient

        histories: list[str] = []
        read_states = SyncPrefectClient.read_task_run_states

        def counted(self: Any, task_run_id: Any) -> Any:
            histories.append(str(task_run_id))
            return read_states(self, task_run_id)

        monkeypatch.setattr(SyncPrefectClient, "read_task_run_states", counted)
        failed: list[int] = []

        @task
        def step(i: int) -> int:
            return i

        @task(retries=1, retry_delay_seconds=0)
        def flaky() -> int:
            if not failed:
                failed.append(1)
                raise RuntimeError("transient outage")
            return 0

        @audited_flow(name="wide")
        def wide() -> int:
            futures = [step.submit(i) for i in range(249)]
            return flaky() + sum(f.result() for f in futures)

        assert sum(range(249)) == wide()
        recs = records(ledger)
        tasks = [r for r in recs if r.event.startswith("task.")]
        by_run: dict[object, list[tuple[str, object]]] = {}
        for r in tasks:
            by_run.setdefault(r.subject["task_run_id"], []).append(
                (r.event, r.subject["run_count"])
            )
        assert 250 == len(by_run)
        plain = [v for v in by_run.values() if len(v) == 2]
        assert 249 == len(plain)
        assert all([("task.started", 1), ("task.succeeded", 1)] == v for v in plain)
        [retried] = [v for v in by_run.values() if len(v) != 2]
        assert [
            ("task.started", 1),
            ("task.retry_scheduled", 1),
            ("task.started", 2),
            ("task.succeeded", 2),
        ] == retried
        retry = next(r for r in tasks if r.event == "task.retry_scheduled")
        assert ("RuntimeError", "RuntimeError('transient outage')") == (
            retry.data["error_type"],
            retry.data["message"],
        )
        assert [retry.subject["task_run_id"]] == histories
        assert lifecycle_keys(recs) == stored_keys(ledger)


class TestFollowerMode:
    """settings.follower: the flow process records only what its hooks see."""

    def test_no_end_of_run_records(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With a follower the flow writes its own start and end, task hooks' records and
        record() calls, and no task records from Prefect's API."""
        import prefect_audit.adapter as adapter_module
        from prefect_audit.adapter import PrefectAdapter
        from prefect_audit.settings import WorkflowAuditSettings

        ledger = tmp_path / "ledger.db"
        settings = WorkflowAuditSettings(ledger_url=f"sqlite:///{ledger}", follower=True)
        monkeypatch.setattr(adapter_module, "_ADAPTER", PrefectAdapter(settings))

        @task
        def quiet() -> int:
            record("quiet.done")
            return 1

        @task(**task_hooks())
        def watched() -> int:
            return 2

        @audited_flow(name="followed")
        def followed() -> int:
            return quiet() + watched()

        assert 3 == followed()
        recs = records(ledger)
        assert [
            ("flowrun.started", "followed", 1),
            ("quiet.done", "quiet", 1),
            ("task.started", "watched", 1),
            ("task.succeeded", "watched", 1),
            ("flowrun.succeeded", "followed", 1),
        ] == timeline(recs)
        assert lifecycle_keys(recs) == stored_keys(ledger)


class TestKeys:
    """A lifecycle record written twice is stored once (its key)."""

    def test_hooks_called_twice(self, ledger: Path) -> None:
        """Running every audit hook twice (and so the end-of-run pass) stores each record
        once, under its lifecycle key."""
        from prefect_audit.adapter import get_adapter

        def running_again(flow: Any, flow_run: Any, state: Any) -> None:
            get_adapter().flow_running(flow, flow_run, state)

        def completed_again(flow: Any, flow_run: Any, state: Any) -> None:
            get_adapter().flow_finished(flow, flow_run, state, "succeeded")

        @task
        def work(i: int) -> int:
            return i

        @audited_flow(name="twice", on_running=[running_again], on_completion=[completed_again])
        def twice() -> int:
            return work(1) + work(2)

        assert 3 == twice()
        recs = records(ledger)
        assert [
            ("flowrun.started", "twice", 1),
            ("flowrun.succeeded", "twice", 1),
            ("task.started", "work", 1),
            ("task.succeeded", "work", 1),
            ("task.started", "work", 1),
            ("task.succeeded", "work", 1),
        ] == timeline(recs)
        assert lifecycle_keys(recs) == stored_keys(ledger)


#: A flow run in a fresh interpreter with no OpenTelemetry SDK (Prefect's default): prints
#: the tracer provider's type and the flow run id.
_NO_OTEL_FLOW = """
from opentelemetry import trace
from prefect import task
from prefect.context import get_run_context
from prefect_audit import audited_flow, record

attempts = []

@task(retries=1, retry_delay_seconds=0)
def flaky():
    attempts.append(1)
    if len(attempts) == 1:
        raise RuntimeError("transient")
    record("step.done")

@task
def fine():
    return 1

@audited_flow(name="no-otel")
def no_otel():
    record("flow.note")
    flaky()
    fine()
    return str(get_run_context().flow_run.id)

print(type(trace.get_tracer_provider()).__name__)
print(no_otel())
"""


class TestTraceWithoutOtel:
    """With no OpenTelemetry SDK, every record carries the run's ids as its trace."""

    def test_every_record_has_the_flow_run_trace(self, prefect_server: str, tmp_path: Path) -> None:
        """Trace id = the flow run id's hex on every record; span id = the task run id's last
        64 bits on task records, the flow run id's on the flow's."""
        ledger = tmp_path / "ledger.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFECT_"))}
        env.update(
            PREFECT_API_URL=prefect_server,
            PREFECT_HOME=str(tmp_path / "home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            WORKFLOW_AUDIT_LEDGER=f"sqlite:///{ledger}",
            WORKFLOW_AUDIT_CHAIN="prefect",
        )
        command = [sys.executable, "-c", _NO_OTEL_FLOW]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert 0 == done.returncode, done.stderr[-3000:]
        provider, flow_run_id = done.stdout.split()[-2:]
        assert "ProxyTracerProvider" == provider  # no SDK: Prefect's spans are no-ops
        recs = records(ledger)
        # flow start, flow.note, flaky's 4 and step.done, fine's 2, flow end
        assert 10 == len(recs)
        assert {uuid.UUID(flow_run_id).hex} == {(r.trace or {}).get("trace_id") for r in recs}
        for r in recs:
            expected = run_trace(flow_run_id, r.subject.get("task_run_id"))
            assert expected == r.trace, r.event


class TestBackgroundPass:
    """The end-of-run pass leaves the flow's path: the flow call returns with its own end
    recorded; the task records follow from one background thread."""

    def test_flow_returns_before_its_task_records(self, ledger: Path) -> None:
        """Right after a flow of 200 submitted tasks returns, its end record is on the ledger
        and its task records are not all there yet; after flush_runs() all 400 are, after the
        flow's end record, each stamped with Prefect's state time (within the run)."""

        @task
        def step(i: int) -> int:
            return i

        @audited_flow(name="returns-first")
        def returns_first() -> int:
            return sum(f.result() for f in [step.submit(i) for i in range(200)])

        assert sum(range(200)) == returns_first()
        early = records(ledger, flush=False)  # read the moment the flow call returned
        assert ["flowrun.started", "flowrun.succeeded"] == [r.event for r in early]
        assert flush_runs(300)
        recs = records(ledger)
        assert ["flowrun.started", "flowrun.succeeded"] == [r.event for r in recs[:2]]
        tasks = recs[2:]
        assert 400 == len(tasks)
        assert 200 == len({r.subject["task_run_id"] for r in tasks})
        assert all(recs[0].ts < r.ts < recs[1].ts for r in tasks)
        assert lifecycle_keys(recs) == stored_keys(ledger)


#: An audited flow of N submitted tasks in a fresh interpreter that exits right after the flow
#: returns; at its very end (an exit handler registered first runs last) it prints the count
#: of abandoned passes.
_EXIT_FLOW = """
import atexit, os, sys, time
from audit_core import COUNTERS

atexit.register(lambda: print("abandoned", COUNTERS.snapshot().get("run_passes_abandoned", 0)))

from prefect import task
from prefect_audit import audited_flow

@task
def step(i):
    return i

@audited_flow(name="exits-at-once")
def exits_at_once(n):
    return sum(f.result() for f in [step.submit(i) for i in range(n)])

print("sum", exits_at_once(int(os.environ["TASKS"])))
print("returned", time.time(), flush=True)
"""


def run_and_exit(prefect_server: str, tmp_path: Path, **env_extra: str) -> tuple[Any, float]:
    """Run _EXIT_FLOW in a fresh interpreter: its result, and the seconds from the flow's
    return to the process's end."""
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=prefect_server,
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        WORKFLOW_AUDIT_LEDGER=f"sqlite:///{tmp_path / 'ledger.db'}",
        WORKFLOW_AUDIT_CHAIN="prefect",
        WORKFLOW_AUDIT_SPOOL_DIR=str(tmp_path / "spool"),
        **env_extra,
    )
    command = [sys.executable, "-c", _EXIT_FLOW]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    ended = time.time()
    assert 0 == done.returncode, done.stderr[-3000:]
    returned = float(next(x for x in done.stdout.splitlines() if x.startswith("returned"))[9:])
    return done, ended - returned


class TestExit:
    """A process that exits right after its flow returns waits (bounded) for the pass."""

    def test_exit_waits_for_the_pass(self, prefect_server: str, tmp_path: Path) -> None:
        """300 submitted tasks, exit at once: every task's start and end is on the ledger."""
        done, _ = run_and_exit(prefect_server, tmp_path, TASKS="300")
        assert "abandoned 0" in done.stdout
        recs = records(tmp_path / "ledger.db", flush=False)
        tasks = [r for r in recs if r.event.startswith("task.")]
        by_run: dict[object, list[str]] = {}
        for r in tasks:
            by_run.setdefault(r.subject["task_run_id"], []).append(r.event)
        assert 300 == len(by_run)
        assert all(["task.started", "task.succeeded"] == v for v in by_run.values())
        assert ["flowrun.started", "flowrun.succeeded"] == [
            r.event for r in recs if r.event.startswith("flowrun.")
        ]

    def test_exit_wait_runs_out(self, prefect_server: str, tmp_path: Path) -> None:
        """exit_wait 0.01 s: the process does not wait for the pass; it warns and counts the
        pass abandoned, the flow's own records are there, reconcile has the rest. It exits
        within 3 s of the flow's return (waiting for the pass it takes about 6 s here)."""
        done, exit_s = run_and_exit(
            prefect_server,
            tmp_path,
            TASKS="300",
            PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_EXIT_WAIT="0.01",
        )
        assert "abandoned 1" in done.stdout
        assert "exit_wait (0.01s) ran out with 1 end-of-run pass(es) pending" in done.stderr
        recs = records(tmp_path / "ledger.db", flush=False)
        assert ["flowrun.started", "flowrun.succeeded"] == [r.event for r in recs][:2]
        assert len(recs) < 602
        assert exit_s < 3, exit_s  # measured 0.4 s; 6.1 s when it waits for the pass
