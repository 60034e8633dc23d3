"""Pure parts of the Prefect integration: settings precedence and the state-history mapping."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from audit_core import AuditConfig
from prefect_audit.adapter import lifecycle, retry_reason
from prefect_audit.settings import WorkflowAuditSettings

T0 = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.timezone.utc)


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
        """A cached completion is a success marked cached."""
        [(event, attempt, _, data)] = lifecycle([state("COMPLETED", "Cached")])
        assert ("task.succeeded", 1, {"cached": True}) == (event, attempt, data)


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
