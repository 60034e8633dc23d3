"""The failure counters as OpenTelemetry metrics: in process (the SDK's InMemoryMetricReader)
and out of short-lived processes to a real OTLP/HTTP receiver before they exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from audit_core import COUNTERS, AuditConfig, AuditTrail
from audit_core.metrics import FLUSH_TIMEOUT_S, KNOWN_COUNTS, metric_name, report_gauges
from testkit import free_port
from testkit.otlp import OtlpReceiver

ROOT = Path(__file__).resolve().parents[2]

#: Three hook writes fail (the ledger path is a directory: no process can open it), then the
#: process exits normally; its export interval is far away, so only the exit flush sends.
FAILING_HOOKS = """
import sys
from audit_core import AuditConfig, AuditTrail, Event
from audit_core.hooks import HookRunner

runner = HookRunner(budget_s=30)

def write(events):
    AuditTrail(AuditConfig(ledger_url=sys.argv[1])).record_many(events)

for _ in range(3):
    assert not runner.run("task.started", lambda: [Event(type="task.started")], write)
"""

#: A count made by an exit handler registered after audit_core was imported (as a
#: HookRunner's, which counts what it abandons) still leaves the process.
COUNT_AT_EXIT = """
import atexit
from audit_core import COUNTERS

COUNTERS.incr("records_written")
atexit.register(lambda: COUNTERS.incr("records_abandoned", 2))
"""

#: The host sets its own SDK MeterProvider after audit_core counted (as Airflow does with
#: [metrics] otel_on), calls audit_core.metrics.flush() and leaves with os._exit, as Airflow's
#: task runner does: no exit handler runs.
HOST_PROVIDER = """
import os, sys
from audit_core import COUNTERS
from audit_core.metrics import flush

COUNTERS.incr("hook_timeouts")
from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

reader = PeriodicExportingMetricReader(
    OTLPMetricExporter(endpoint=sys.argv[1]), export_interval_millis=10**9
)
resource = Resource.create({"service.name": "airflow"})
metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=resource))
COUNTERS.incr("hook_timeouts", 4)
os._exit(0 if flush() else 3)
"""

#: An adapter's task process: its one hook cannot reach the ledger (a directory), the record
#: is spooled, the task ends with the adapter's flush() and os._exit (Airflow's task runner
#: after before_stopping): no exit handler runs, so flush() must have sent the counts.
ADAPTER_EXIT = """
import os, sys
from audit_core import AuditConfig, Event
from audit_core.hooks import AdapterBase, AdapterOptions, EventFilter

class Adapter(AdapterBase):
    def _load_options(self):
        config = AuditConfig(ledger_url=sys.argv[1], spool_dir=sys.argv[2])
        return AdapterOptions(
            enabled=True, events=EventFilter("*"), hook_timeout_s=5.0, audit=config
        )

adapter = Adapter()
adapter._run("task.started", lambda: [Event(type="task.started")])
adapter.flush()
os._exit(0)
"""

OFF = """
import sys
from audit_core import COUNTERS

COUNTERS.incr("hook_failures")
assert not [m for m in sys.modules if m.startswith("opentelemetry")], sorted(sys.modules)
"""


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with ``env`` added; fails on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "OTEL_METRIC_EXPORT_INTERVAL": "600000", **env},
    )
    assert 0 == done.returncode, done.stderr
    return done


def otlp_env(receiver: OtlpReceiver) -> dict[str, str]:
    """WORKFLOW_AUDIT_METRICS=otlp to ``receiver``."""
    return {"WORKFLOW_AUDIT_METRICS": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}


class TestOtlpExport:
    """WORKFLOW_AUDIT_METRICS=otlp: the process's own MeterProvider, flushed at exit."""

    def test_hook_failures_exported_before_exit(
        self, receiver: OtlpReceiver, tmp_path: Path
    ) -> None:
        """A process whose hooks failed has sent workflow_audit.hook_failures = 3 (a
        monotonic sum), with service.name workflow-audit and its own service.instance.id,
        by the time it has exited."""
        run(FAILING_HOOKS, f"sqlite:///{tmp_path}", env=otlp_env(receiver))
        assert 3 == receiver.last_value("workflow_audit.hook_failures")
        (point,) = [p for p in receiver.points if p.name == "workflow_audit.hook_failures"]
        assert ("sum", True, "workflow_audit") == (point.kind, point.monotonic, point.scope)
        assert "workflow-audit" == point.resource["service.name"]
        assert point.resource["service.instance.id"]

    def test_known_counts_start_at_zero(self, receiver: OtlpReceiver, tmp_path: Path) -> None:
        """Every known count is sent, at 0 when nothing happened, so the series exists."""
        run(FAILING_HOOKS, f"sqlite:///{tmp_path}", env=otlp_env(receiver))
        names = {p.name for p in receiver.points}
        assert {metric_name(n) for n in KNOWN_COUNTS} <= names
        assert 0 == receiver.last_value("workflow_audit.records_abandoned")

    def test_counts_of_later_exit_handlers_are_exported(self, receiver: OtlpReceiver) -> None:
        """A count made by an exit handler registered after audit_core's is still sent."""
        run(COUNT_AT_EXIT, env=otlp_env(receiver))
        assert 2 == receiver.last_value("workflow_audit.records_abandoned")
        assert 1 == receiver.last_value("workflow_audit.records_written")

    def test_dead_collector_bounds_exit(self, tmp_path: Path) -> None:
        """With nothing listening at the endpoint the process still exits within the flush
        bound (and exit code 0)."""
        env = {
            "WORKFLOW_AUDIT_METRICS": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        }
        start = time.monotonic()
        run(FAILING_HOOKS, f"sqlite:///{tmp_path}", env=env)
        assert time.monotonic() - start < FLUSH_TIMEOUT_S + 10

    def test_signal_specific_endpoint(self, receiver: OtlpReceiver, tmp_path: Path) -> None:
        """OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is used as is."""
        env = {"WORKFLOW_AUDIT_METRICS": "otlp", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": ""}
        env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = receiver.metrics_url
        run(FAILING_HOOKS, f"sqlite:///{tmp_path}", env=env)
        assert 3 == receiver.last_value("workflow_audit.hook_failures")


class TestHostProvider:
    """The default (auto): the instruments live on the host's global MeterProvider."""

    def test_provider_set_after_counting_gets_the_counts(self, receiver: OtlpReceiver) -> None:
        """A provider the host sets after the first count receives every count on flush(),
        even when the process then leaves with os._exit."""
        run(HOST_PROVIDER, receiver.metrics_url, env={})
        assert 5 == receiver.last_value("workflow_audit.hook_timeouts")
        assert "airflow" == receiver.points[-1].resource["service.name"]

    def test_adapter_flush_exports_before_os_exit(
        self, receiver: OtlpReceiver, tmp_path: Path
    ) -> None:
        """An adapter's flush() at the end of a task sends the counts, although the process
        then leaves with os._exit and no exit handler runs."""
        spool = tmp_path / "spool"
        run(ADAPTER_EXIT, f"sqlite:///{tmp_path}", str(spool), env=otlp_env(receiver))
        assert 1 == receiver.last_value("workflow_audit.records_spooled")

    def test_off_never_imports_opentelemetry(self) -> None:
        """WORKFLOW_AUDIT_METRICS=off: counting never imports OpenTelemetry."""
        run(OFF, env={"WORKFLOW_AUDIT_METRICS": "off"})


class TestHealthGauges:
    """``workflow-audit health`` publishes its verdict as gauges before it exits."""

    def test_health_verdict_exported(self, receiver: OtlpReceiver, tmp_path: Path) -> None:
        """healthy, records and sink lag arrive, per chain, from the one-shot command, under
        one service.instance.id per checking host (successive runs make one series)."""
        ledger = tmp_path / "ledger.db"
        config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=1)
        with AuditTrail(config) as trail:
            for i in range(3):
                trail.record("task.succeeded", {"i": i})
            trail.ledger.set_cursor("otlp:x", "default", 0)
        done = subprocess.run(
            [sys.executable, "-m", "audit_core.cli", "health", "--ledger", str(ledger)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **otlp_env(receiver)},
        )
        assert 0 == done.returncode, done.stderr
        assert 1 == receiver.last_value("workflow_audit.health.healthy")
        instances = {
            p.resource["service.instance.id"]
            for p in receiver.points
            if p.name == "workflow_audit.health.healthy"
        }
        assert {f"workflow-audit-health@{socket.gethostname()}"} == instances
        assert 3 == receiver.last_value("workflow_audit.health.records", chain="default")
        assert 2 == receiver.last_value(
            "workflow_audit.health.sink_lag", chain="default", sink="otlp:x"
        )


_READER: list[InMemoryMetricReader] = []


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """An InMemoryMetricReader on this process's global MeterProvider (set once)."""
    if not _READER:
        _READER.append(InMemoryMetricReader())
        metrics.set_meter_provider(MeterProvider(metric_readers=_READER))
    assert isinstance(metrics.get_meter_provider(), MeterProvider)
    return _READER[0]


def values(reader: InMemoryMetricReader) -> dict[str, Any]:
    """{metric name: (last value of its first point, attributes)} of one collection."""
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out.setdefault(m.name, []).append((p.value, dict(p.attributes or {})))
    return out


class TestInProcess:
    """The instruments, read by the SDK's InMemoryMetricReader."""

    def test_counter_follows_incr(self, reader: InMemoryMetricReader) -> None:
        """workflow_audit.<name> reads what COUNTERS holds, increments included."""
        before = values(reader).get("workflow_audit.s3_conflicts", [(0, {})])[0][0]
        COUNTERS.incr("s3_conflicts", 2)
        assert [(before + 2, {})] == values(reader)["workflow_audit.s3_conflicts"]

    def test_new_count_gets_an_instrument(self, reader: InMemoryMetricReader) -> None:
        """A count nobody declared gets its instrument on its first increment."""
        COUNTERS.incr("test_only_count_xyz", 7)
        assert [(7, {})] == values(reader)["workflow_audit.test_only_count_xyz"]

    def test_report_gauges(self, reader: InMemoryMetricReader) -> None:
        """report_gauges publishes each point with its attributes; a later report of the
        same gauge replaces its points."""
        report_gauges({"test.gauge": [(1, {"chain": "a"}), (0, {"chain": "b"})]})
        report_gauges({"test.gauge": [(5, {"chain": "a"})]})
        assert [(5, {"chain": "a"})] == values(reader)["workflow_audit.test.gauge"]
