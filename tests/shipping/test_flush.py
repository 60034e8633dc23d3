"""The adapters' background flush (``WORKFLOW_AUDIT_FLUSH_SINKS``): a terminal event makes
the hook process ship to the sink soon after, without the hook waiting for it."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_audit.adapter import AirflowAdapter
from airflow_audit.settings import load_settings
from audit_core.config import AuditConfig
from audit_core.sinks.registry import sink_names
from testkit import free_port
from testkit.otlp import OtlpReceiver

START = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.timezone.utc)


def ti(state: str) -> SimpleNamespace:
    return SimpleNamespace(
        dag_id="etl", task_id="load", run_id="r1", try_number=1, map_index=-1, state=state,
        hostname="w1", start_date=START, end_date=START, context_carrier=None,
    )  # fmt: skip


def adapter(tmp_path: Path, env: dict[str, str]) -> AirflowAdapter:
    options = {"ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    settings = load_settings(
        get=lambda _s, key, fallback: options.get(key, fallback), env=env, home=str(tmp_path)
    )
    return AirflowAdapter(settings)


class TestFlushAfterTerminalEvents:
    """Airflow hooks with WORKFLOW_AUDIT_FLUSH_SINKS=otlp."""

    def test_terminal_event_is_shipped_soon(
        self, tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """task.started alone ships nothing; task.succeeded makes both reach the receiver."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        audit = adapter(tmp_path, {"WORKFLOW_AUDIT_FLUSH_SINKS": "otlp"})
        assert audit.task_running(ti("running"))
        time.sleep(0.5)  # a flush would have happened by now; none was asked for
        assert 0 == receiver.records
        assert audit.task_success(ti("success"), "running")
        assert receiver.wait_for(2)

    def test_dead_sink_never_fails_the_hook(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the sink down the hooks still return True (written); delivery waits."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        audit = adapter(tmp_path, {"WORKFLOW_AUDIT_FLUSH_SINKS": "otlp"})
        assert audit.task_success(ti("success"), "running")
        assert audit.task_failed(ti("failed"), "reported", "running")


class TestConfig:
    """WORKFLOW_AUDIT_FLUSH_SINKS and sink names."""

    def test_flush_sinks_from_env(self) -> None:
        """A comma-separated list; 'all' means otlp and s3."""
        config = AuditConfig.from_env({"WORKFLOW_AUDIT_FLUSH_SINKS": "all, structlog"})
        assert ("all", "structlog") == config.flush_sinks
        assert ["otlp", "s3", "structlog"] == sink_names(config.flush_sinks)
