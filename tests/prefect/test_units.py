"""Pure parts of the Prefect integration: settings precedence, the state-history mapping, the
end-of-run pass's wait and its background thread (no server: fakes of Prefect's API)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from audit_core import COUNTERS, AuditConfig
from prefect_audit import history
from prefect_audit.adapter import EndOfRunPasses
from prefect_audit.history import lifecycle, retry_reason
from prefect_audit.settings import WorkflowAuditSettings

T0 = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.timezone.utc)
FLOW_RUN = "6b0c7a4e-8f31-4d0a-9c55-0d6a2f1e7b10"


def state(kind: str, name: str, message: str = "") -> Any:
    return SimpleNamespace(type=SimpleNamespace(value=kind), name=name, message=message)


def events(*states: Any) -> list[tuple[str, int]]:
    return [(event, attempt) for event, attempt, _state, _data in lifecycle(states)]


class TestLifecycle:
    """A task run's state history becomes its records."""

    def test_plain_success(self) -> None:
        """Pending is skipped; Running starts attempt 1; Completed ends it."""
        assert [("task.started", 1), ("task.succeeded", 1)] == events(
            state("PENDING", "Pending"),
            state("RUNNING", "Running"),
            state("COMPLETED", "Completed"),
        )

    def test_retry_with_delay(self) -> None:
        """AwaitingRetry ends the failed attempt; Retrying starts the next."""
        assert [
            ("task.started", 1),
            ("task.retry_scheduled", 1),
            ("task.started", 2),
            ("task.succeeded", 2),
        ] == events(
            state("RUNNING", "Running"),
            state("SCHEDULED", "AwaitingRetry"),
            state("RUNNING", "Retrying"),
            state("COMPLETED", "Completed"),
        )

    def test_retry_without_delay(self) -> None:
        """Retrying straight after Running also ends the failed attempt."""
        assert [
            ("task.started", 1),
            ("task.retry_scheduled", 1),
            ("task.started", 2),
            ("task.failed", 2),
        ] == events(
            state("RUNNING", "Running"),
            state("RUNNING", "Retrying"),
            state("FAILED", "Failed", "boom"),
        )

    def test_failure_message_and_kinds(self) -> None:
        """A failed state's message is kept; crashed and cancelled are failures of that kind."""
        out = lifecycle([state("RUNNING", "Running"), state("CRASHED", "Crashed", "killed")])
        assert ("task.failed", {"message": "killed", "failure_kind": "crashed"}) == (
            out[-1][0],
            out[-1][3],
        )

    def test_retry_reasons_in_order(self) -> None:
        """The n-th retry record gets the n-th reason from the log."""
        reasons = [{"message": "first"}, {"message": "second"}]
        out = lifecycle(
            [state("RUNNING", "Running"), state("RUNNING", "Retrying"),
             state("RUNNING", "Retrying"), state("COMPLETED", "Completed")],
            reasons,
        )  # fmt: skip
        assert [("task.retry_scheduled", 1, "first"), ("task.retry_scheduled", 2, "second")] == [
            (e, a, d["message"]) for e, a, _s, d in out if e == "task.retry_scheduled"
        ]

    def test_not_a_retry_log_line(self) -> None:
        """Other log lines are no retry reasons."""
        assert retry_reason("Finished in state Completed()") is None

    def test_cached(self) -> None:
        """A cached completion is a success marked cached, of attempt 0: it never ran (run
        count 0), as the follower keys it (prefect_audit.ids.final_attempt)."""
        [(event, attempt, _, data)] = lifecycle([state("COMPLETED", "Cached")])
        assert ("task.succeeded", 0, {"cached": True}) == (event, attempt, data)


class TestSettings:
    """PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_* beat WORKFLOW_AUDIT_*, which beat defaults."""

    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The core's default ledger, chain 'prefect', everything recorded."""
        for name in ("LEDGER", "CHAIN", "SIGNING_KEY"):
            monkeypatch.delenv(f"PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_{name}", raising=False)
        config = WorkflowAuditSettings().audit_config(env={})
        assert ("prefect", AuditConfig.from_env({}).ledger_url) == (
            config.chain,
            config.ledger_url,
        )

    def test_prefect_variables_beat_core_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_ variable wins over WORKFLOW_AUDIT_."""
        monkeypatch.setenv("PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_CHAIN", "ml")
        monkeypatch.setenv("PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_HOOK_TIMEOUT", "2.5")
        settings = WorkflowAuditSettings()
        env = {"WORKFLOW_AUDIT_CHAIN": "other", "WORKFLOW_AUDIT_LEDGER": "sqlite:///x.db"}
        config = settings.audit_config(env=env)
        assert ("ml", "sqlite:///x.db", 2.5) == (
            config.chain,
            config.ledger_url,
            settings.hook_timeout,
        )

    def test_redact_keys_are_added(self) -> None:
        """redact_keys extends the core's list."""
        config = WorkflowAuditSettings(redact_keys="iban, ssn").audit_config(env={})
        assert ("iban", "ssn") == config.redact_keys[-2:]

    @pytest.mark.parametrize("value", [0, -1, 3601])
    def test_hook_timeout_bounds(self, value: float) -> None:
        """hook_timeout must be in (0, 3600] seconds."""
        with pytest.raises(ValidationError, match="hook_timeout"):
            WorkflowAuditSettings(hook_timeout=value)

    def test_every_field_is_described(self) -> None:
        """Prefect's style: each setting carries a description."""
        for name, field in WorkflowAuditSettings.model_fields.items():
            assert field.description, name

    def test_event_filter(self) -> None:
        """events becomes the filter the hooks apply."""
        keep = WorkflowAuditSettings(events="flowrun.*").event_filter()
        assert (True, False) == (keep("flowrun.failed"), keep("task.started"))


class TestTaskSideApi:
    """prefect_audit.audit and prefect_audit.record outside a flow."""

    def test_audit_and_record_pickle(self) -> None:
        """Both survive pickling (process pools, result persistence) as working objects."""
        import pickle

        from prefect_audit import audit, record

        audit_copy = pickle.loads(pickle.dumps(audit))  # noqa: S301 - our own bytes
        record_copy = pickle.loads(pickle.dumps(record))  # noqa: S301 - our own bytes
        assert callable(record_copy)
        assert type(audit) is type(audit_copy)


class TestExitWaitSetting:
    """exit_wait: how long a process waits at exit for its end-of-run passes."""

    def test_default_and_bounds(self) -> None:
        """60 s by default; 0 allowed (do not wait); at most an hour."""
        assert 60.0 == WorkflowAuditSettings().exit_wait
        assert 0.0 == WorkflowAuditSettings(exit_wait=0).exit_wait
        for value in (-1, 3601):
            with pytest.raises(ValidationError, match="exit_wait"):
                WorkflowAuditSettings(exit_wait=value)


class _Answer:
    def __init__(self, value: int) -> None:
        self.value = value

    def raise_for_status(self) -> None:
        pass

    def json(self) -> int:
        return self.value


class _LaggingServer:
    """A Prefect API whose recorder holds one more final task run every ``step_s`` until it
    holds ``total``: what the server looks like while it catches up after a big flow."""

    def __init__(self, total: int, step_s: float) -> None:
        self.total, self.step_s = total, step_s
        self.t0 = time.monotonic()

    def held(self) -> int:
        return min(self.total, int((time.monotonic() - self.t0) / self.step_s))

    def request(self, method: str, path: str, json: Any) -> _Answer:
        return _Answer(self.held())

    def read_task_runs(self, flow_run_filter: Any, sort: Any, offset: int, limit: int) -> list[Any]:
        done = SimpleNamespace(
            type=SimpleNamespace(value="COMPLETED"),
            name="Completed",
            timestamp=T0,
            is_final=lambda: True,
        )
        runs = [
            SimpleNamespace(id=f"run-{i}", state=done, run_count=1, start_time=T0)
            for i in range(self.held())
        ]
        return runs[offset : offset + limit]

    def __enter__(self) -> _LaggingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class TestPassWaitScales:
    """The pass waits while Prefect's recorder makes progress, sync_timeout after the last."""

    @pytest.fixture(autouse=True)
    def fast_polls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(history, "QUIET_S", 0.05)
        monkeypatch.setattr(history, "BUSY_S", 0.02)

    def serve(self, monkeypatch: pytest.MonkeyPatch, server: _LaggingServer) -> None:
        import prefect.client.orchestration as orchestration

        monkeypatch.setattr(orchestration, "get_client", lambda sync_client: server)

    def test_recorder_behind_but_moving(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A recorder that needs 1.5 s (five times the 0.3 s timeout) to catch up, making
        progress all along: every task run is recorded, start and end."""
        server = _LaggingServer(total=300, step_s=0.005)
        self.serve(monkeypatch, server)
        steps = history.task_run_steps(FLOW_RUN, timeout_s=0.3)
        assert 600 == len(steps)
        assert time.monotonic() - server.t0 >= 1.5

    def test_recorder_stopped(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A recorder that stopped short (counts unchanged, not all final) is given
        timeout_s after its last progress; then what it holds is recorded, with a warning."""
        server = _LaggingServer(total=5, step_s=0.01)
        self.serve(monkeypatch, server)

        def count(method: str, path: str, json: Any) -> _Answer:
            # all task runs: one more than the final ones, forever (one never ended)
            return _Answer(server.held() + (0 if "task_runs" in json else 1))

        monkeypatch.setattr(server, "request", count)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="workflow_audit.prefect"):
            steps = history.task_run_steps(FLOW_RUN, timeout_s=0.3)
        assert 10 == len(steps)
        assert 0.3 <= time.monotonic() - started < 5
        assert any("without progress" in r.getMessage() for r in caplog.records)


class TestEndOfRunPasses:
    """One background thread per process runs the flow runs' passes, in order."""

    def job(self, name: str) -> Any:
        return SimpleNamespace(
            flow=None, flow_run=SimpleNamespace(id=name), done=set(), prefect_settings=None
        )

    def test_in_order_on_one_thread(self) -> None:
        """Passes run in submission order, all on one thread; wait() returns once done."""
        ran: list[tuple[str, str]] = []
        passes = EndOfRunPasses(
            lambda job: ran.append((job.flow_run.id, threading.current_thread().name)),
            lambda: 60.0,
        )
        for name in ("a", "b", "c"):
            passes.submit(self.job(name))
        assert passes.wait(30)
        assert ["a", "b", "c"] == [name for name, _ in ran]
        assert 1 == len({thread for _, thread in ran})
        assert threading.current_thread().name != ran[0][1]
        assert 0 == passes.pending

    def test_exit_wait_runs_out(self, caplog: pytest.LogCaptureFixture) -> None:
        """A pass still running when exit_wait ends is abandoned: warned and counted."""
        release = threading.Event()
        passes = EndOfRunPasses(lambda job: release.wait(30), lambda: 0.01)
        passes.submit(self.job("slow"))
        passes.submit(self.job("queued"))
        before = COUNTERS.snapshot().get("run_passes_abandoned", 0)
        try:
            with caplog.at_level(logging.WARNING, logger="workflow_audit.prefect"):
                passes.at_exit()
        finally:
            release.set()
        assert passes.wait(30)  # the queued one was dropped, the running one ended
        assert 2 == COUNTERS.snapshot()["run_passes_abandoned"] - before
        [warning] = [r.getMessage() for r in caplog.records if "exit_wait" in r.getMessage()]
        assert "slow, queued" in warning
        assert "reconcile prefect" in warning
