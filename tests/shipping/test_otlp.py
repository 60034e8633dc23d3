"""audit_core.sinks.otlp: log records, attributes and severity; delivery to a real OTLP/HTTP
receiver on 127.0.0.1, directly and through the rotel agent; a receiver that is down."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace

from audit_core import COUNTERS, AuditTrail, Record, StoredRecord
from audit_core.errors import ConfigError
from audit_core.ship import Backoff, Shipper
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks.otlp import (
    CORE_ATTRIBUTES,
    MAX_ATTRIBUTES,
    MAX_VALUE_CHARS,
    UNREADABLE_EVENT,
    OtlpSink,
    attributes,
    resolve_endpoint,
    severity,
    timestamp_ns,
)
from testkit import free_port
from testkit.otlp import OtlpReceiver, ReceivedLog, Rotel
from tests.core import _access

TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
OTHER_TRACE = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}
OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the OTEL_* variables it is about, and no others."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _record(
    trail: AuditTrail,
    event: str = "task.failed",
    *,
    data: object = None,
    subject: dict[str, object] | None = None,
    actor: tuple[str, str] | None = None,
) -> Record:
    return Record.from_stored(trail.record(event, data, subject=subject, actor=actor))


def _write_pipeline(trail: AuditTrail, runs: int = 5) -> list[StoredRecord]:
    """An ML pipeline's worth of records: task events of each kind, user events, a DAG run."""
    stored = []
    for run in range(runs):
        subject = {"dag_id": "ml", "run_id": f"manual__{run}", "try_number": 1}
        stored += [
            trail.record("task.started", subject={**subject, "task_id": "retrain"}, trace=TRACE),
            trail.record(
                "model.retrained",
                {"model": "churn", "version": run, "metrics": {"auc": 0.91}, "tags": ["a", "b"]},
                subject={**subject, "task_id": "retrain"},
                trace=TRACE,
            ),
            trail.record(
                "task.retry_scheduled", {"error_type": "IOError"}, subject=subject, trace=TRACE
            ),
            trail.record("task.failed", {"error_type": "ValueError"}, subject=subject),
            trail.record("dagrun.failed", subject=subject, trace=OTHER_TRACE),
        ]
    return stored


def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Wait until ``condition()`` holds; False if it still does not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _by_seq(logs: list[ReceivedLog]) -> dict[object, ReceivedLog]:
    return {log.attributes["audit.seq"]: log for log in logs}


def _assert_delivered(stored: list[StoredRecord], logs: list[ReceivedLog]) -> None:
    """Every record arrived at least once, with its trace ids, attributes and severity."""
    received = _by_seq(logs)
    assert [s.seq for s in stored] == sorted(received)
    for s in stored:
        record, log = Record.from_stored(s), received[s.seq]
        assert attributes(record) == log.attributes
        assert record.event == log.body
        assert severity(record.event) == (log.severity_text, log.severity_number)
        trace_ids = record.trace or {"trace_id": "", "span_id": ""}
        assert (trace_ids["trace_id"], trace_ids["span_id"]) == (log.trace_id, log.span_id)
        assert timestamp_ns(record.ts) == log.time_unix_nano


class TestSeverity:
    """severity(): the event type decides the log record's severity."""

    @pytest.mark.parametrize(
        "event",
        [
            "task.failed",
            "dagrun.failed",
            "flowrun.failed",
            "flowrun.crashed",
            "task.unrecorded",
            "flowrun.unrecorded",
            "dag.import_error",
            "source.gap",
            UNREADABLE_EVENT,
        ],
    )
    def test_failures_are_errors(self, event: str) -> None:
        """Failures, unrecorded runs, source gaps and import errors are ERROR (17)."""
        assert ("ERROR", 17) == severity(event)

    @pytest.mark.parametrize(
        "event", ["task.retry_scheduled", "flowrun.retry_scheduled", "task.upstream_failed"]
    )
    def test_retries_and_upstream_failures_are_warnings(self, event: str) -> None:
        """Retries and upstream failures are WARN (13)."""
        assert ("WARN", 13) == severity(event)

    def test_drift_is_a_warning(self) -> None:
        """drift.detected is WARN."""
        assert ("WARN", 13) == severity("drift.detected")

    @pytest.mark.parametrize(
        "event", ["access.denied", "access.login_failed", "permission.changed"]
    )
    def test_security_events_are_warnings(self, event: str) -> None:
        """A denial, a failed login and a change of privileges are WARN (13): one alone is
        worth a look, the alert rules count bursts."""
        assert ("WARN", 13) == severity(event)

    @pytest.mark.parametrize(
        "event",
        [
            "task.started",
            "task.succeeded",
            "task.skipped",
            "model.deployed",
            "asset.updated",
            "access.login",
            "access.logout",
            "permission.snapshot",
            "cli.command",
            "run.triggered",
            "run.state_set",
            "variable.updated",
            "connection.tested",
            "airflow.event",
        ],
    )
    def test_everything_else_is_info(self, event: str) -> None:
        """Any other event is INFO (9)."""
        assert ("INFO", 9) == severity(event)


class TestTimestamp:
    """timestamp_ns(): a record's ts as Unix nanoseconds."""

    def test_matches_datetime(self) -> None:
        """The value equals the one datetime computes, to the microsecond."""
        when = dt.datetime(2026, 11, 28, 10, 0, 1, 123456, tzinfo=dt.timezone.utc)
        expected = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
        assert expected == timestamp_ns("2026-11-28T10:00:01.123456Z")

    def test_epoch(self) -> None:
        """The Unix epoch is 0."""
        assert 0 == timestamp_ns("1970-01-01T00:00:00.000000Z")


class TestAttributes:
    """attributes(): the documented audit.* keys of a record."""

    def test_core_attributes(self, trail: AuditTrail) -> None:
        """chain, seq, hash (hex) and event are always there, with their types."""
        stored = trail.record("task.started")
        attrs = attributes(Record.from_stored(stored))
        assert ["default", 0, stored.hash.hex(), "task.started"] == [
            attrs[k] for k in CORE_ATTRIBUTES
        ]

    def test_actor_subject_and_data(self, trail: AuditTrail) -> None:
        """Actor, subject and data keys appear under audit.actor/subject/data."""
        record = _record(
            trail, subject={"dag_id": "ml", "try_number": 2}, actor=("user", "alice"), data=None
        )
        attrs = attributes(record)
        assert "user" == attrs["audit.actor.type"]
        assert "alice" == attrs["audit.actor.id"]
        assert "ml" == attrs["audit.subject.dag_id"]
        assert 2 == attrs["audit.subject.try_number"]

    def test_nested_objects_are_flattened_with_dots(self, trail: AuditTrail) -> None:
        """A nested data object becomes dotted keys."""
        record = _record(trail, "model.retrained", data={"metrics": {"auc": 0.9, "f1": {"w": 1}}})
        attrs = attributes(record)
        assert 0.9 == attrs["audit.data.metrics.auc"]
        assert 1 == attrs["audit.data.metrics.f1.w"]

    def test_lists_are_json_text(self, trail: AuditTrail) -> None:
        """A list becomes its JSON text."""
        record = _record(trail, "data.uploaded", data={"columns": ["a", 1, None]})
        assert '["a",1,null]' == attributes(record)["audit.data.columns"]

    def test_nulls_and_empty_objects_are_left_out(self, trail: AuditTrail) -> None:
        """null values and empty objects give no attribute."""
        record = _record(trail, subject={"map_index": None}, data={"extra": {}, "ok": True})
        attrs = attributes(record)
        assert {"audit.data.ok"} == {k for k in attrs if k.startswith(("audit.data", "audit.sub"))}

    def test_long_strings_are_cut_and_flagged(self, trail: AuditTrail) -> None:
        """A string over MAX_VALUE_CHARS is cut, and audit.truncated says so."""
        record = _record(trail, data={"message": "x" * (MAX_VALUE_CHARS + 10)})
        attrs = attributes(record)
        assert MAX_VALUE_CHARS == len(str(attrs["audit.data.message"]))
        assert True is attrs["audit.truncated"]

    def test_attribute_count_is_capped_and_flagged(self, trail: AuditTrail) -> None:
        """A record with too many keys gets MAX_ATTRIBUTES attributes, audit.truncated one."""
        record = _record(trail, data={f"k{i:03d}": i for i in range(300)})
        attrs = attributes(record)
        assert MAX_ATTRIBUTES == len(attrs)
        assert True is attrs["audit.truncated"]
        assert set(CORE_ATTRIBUTES) <= set(attrs)

    def test_small_records_are_not_flagged(self, trail: AuditTrail) -> None:
        """A record within the caps has no audit.truncated."""
        assert "audit.truncated" not in attributes(_record(trail, data={"a": 1}))


class TestResolveEndpoint:
    """resolve_endpoint(): argument, then OTEL_EXPORTER_OTLP_* variables, then the default."""

    def test_default(self) -> None:
        """Without argument or variables: the OTLP/HTTP default on localhost."""
        assert "http://localhost:4318/v1/logs" == resolve_endpoint()

    def test_base_url_gets_the_logs_path(self) -> None:
        """A base URL gets /v1/logs (a trailing slash too)."""
        assert "http://loki:3100/otlp/v1/logs" == resolve_endpoint("http://loki:3100/otlp/")

    def test_logs_url_is_kept(self) -> None:
        """A URL ending in /v1/logs is used as is."""
        assert "http://c:4318/v1/logs" == resolve_endpoint("http://c:4318/v1/logs")

    def test_generic_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        assert "http://collector:4318/v1/logs" == resolve_endpoint()

    def test_logs_variable_wins_and_is_used_as_is(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_LOGS_ENDPOINT beats the generic one and gets no path."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9000/ingest")
        assert "http://logs:9000/ingest" == resolve_endpoint()

    def test_argument_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An explicit endpoint beats both variables."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9000/ingest")
        assert "http://mine:4318/v1/logs" == resolve_endpoint("http://mine:4318")


class TestOtlpSinkConfig:
    """OtlpSink(): name, resource and argument checks (no network)."""

    def test_name_is_the_logs_url(self) -> None:
        """The cursor name is otlp:<logs URL>."""
        assert "otlp:http://127.0.0.1:9/v1/logs" == OtlpSink("http://127.0.0.1:9").name

    def test_name_hides_credentials(self) -> None:
        """user:password@ in the URL stays out of the cursor name."""
        sink = OtlpSink("https://user:secret@collector:4318")
        assert "otlp:https://collector:4318/v1/logs" == sink.name

    def test_service_name_defaults_to_workflow_audit(self) -> None:
        """Without OTEL_SERVICE_NAME the resource says service.name=workflow-audit."""
        assert "workflow-audit" == OtlpSink().provider.resource.attributes["service.name"]

    def test_otel_service_name_is_honoured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_SERVICE_NAME names the service."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "audit-prod")
        assert "audit-prod" == OtlpSink().provider.resource.attributes["service.name"]

    def test_resource_attributes_variable_is_honoured(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_RESOURCE_ATTRIBUTES adds attributes and may name the service."""
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=x,deployment.environment=prod")
        attrs = OtlpSink().provider.resource.attributes
        assert ("x", "prod") == (attrs["service.name"], attrs["deployment.environment"])

    def test_explicit_resource_attributes_win(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """resource_attributes beat the variables."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
        sink = OtlpSink(resource_attributes={"service.name": "explicit"})
        assert "explicit" == sink.provider.resource.attributes["service.name"]

    def test_bad_compression_is_a_config_error(self) -> None:
        """An unknown compression raises ConfigError naming the choices."""
        with pytest.raises(ConfigError, match="gzip, deflate or none"):
            OtlpSink(compression="zstd")

    def test_bad_timeout_is_a_config_error(self) -> None:
        """A timeout that is not positive raises ConfigError."""
        with pytest.raises(ConfigError, match="positive"):
            OtlpSink(timeout_s=0)

    def test_shutdown_is_idempotent(self) -> None:
        """shutdown() twice is fine, and an export after it fails without sending."""
        sink = OtlpSink("http://127.0.0.1:9")
        sink.shutdown()
        sink.shutdown()
        assert ExportResult.FAILURE == sink.export(Batch("default", []))


@pytest.mark.slow
class TestAccessRecordsDelivered:
    """Records of what people did (issue #13 taxonomy), as the real receiver decodes them."""

    def test_severities_and_attributes(self, trail: AuditTrail, receiver: OtlpReceiver) -> None:
        """Failed logins, denials and permission changes arrive WARN, gaps ERROR, logins and
        event-log rows INFO, with the actor, username, client, change and target attributes
        the alert rules query."""
        stored = trail.record_many(_access.period())
        Shipper(trail.ledger, OtlpSink(receiver.endpoint, timeout_s=5)).ship_once()
        _assert_delivered(stored, receiver.logs)
        got = {(log.body, log.severity_text, log.severity_number) for log in receiver.logs}
        assert {
            ("access.login", "INFO", 9),
            ("access.logout", "INFO", 9),
            ("access.login_failed", "WARN", 13),
            ("access.denied", "WARN", 13),
            ("permission.changed", "WARN", 13),
            ("variable.updated", "INFO", 9),
            ("variable.deleted", "INFO", 9),
            ("connection.created", "INFO", 9),
            ("pool.deleted", "INFO", 9),
            ("run.triggered", "INFO", 9),
            ("cli.command", "INFO", 9),
            ("source.gap", "ERROR", 17),
        } == got
        by_event: dict[object, dict[str, object]] = {}
        received = _by_seq(receiver.logs)
        for seq in sorted(received):
            by_event.setdefault(received[seq].body, received[seq].attributes)  # the first one
        failed = by_event["access.login_failed"]
        assert ("anonymous", "-", "admin", "203.0.113.9", 401) == (
            failed["audit.actor.type"],
            failed["audit.actor.id"],
            failed["audit.data.username"],
            failed["audit.data.client"],
            failed["audit.data.status"],
        )
        change = by_event["permission.changed"]
        assert ("admin", "user.roles", "bob") == (
            change["audit.actor.id"],
            change["audit.data.change"],
            change["audit.data.target"],
        )
        gap = by_event["source.gap"]
        assert ("airflow.log", 100, 149, 50, "purged") == tuple(
            gap[f"audit.data.{k}"] for k in ("source", "first_id", "last_id", "count", "reason")
        )
        assert {"airflow-events"} == {log.attributes["audit.chain"] for log in receiver.logs}


@pytest.mark.slow
class TestOtlpSinkDelivery:
    """OtlpSink.export() against a real OTLP/HTTP receiver on 127.0.0.1."""

    def test_every_record_arrives_with_trace_ids_and_attributes(
        self, trail: AuditTrail, receiver: OtlpReceiver
    ) -> None:
        """A shipped pipeline arrives whole: attributes, severity, time and trace ids."""
        stored = _write_pipeline(trail)
        report = Shipper(trail.ledger, OtlpSink(receiver.endpoint, timeout_s=5)).ship_once()
        assert (len(stored), []) == (report.shipped, report.failed)
        _assert_delivered(stored, receiver.logs)

    def test_resource_and_scope(self, trail: AuditTrail, receiver: OtlpReceiver) -> None:
        """Log records carry service.name=workflow-audit and the workflow-audit scope."""
        trail.record("task.started")
        Shipper(trail.ledger, OtlpSink(receiver.endpoint, timeout_s=5)).ship_once()
        (log,) = receiver.logs
        assert ("workflow-audit", "workflow-audit") == (log.resource["service.name"], log.scope)

    def test_current_span_is_not_attached(self, trail: AuditTrail, receiver: OtlpReceiver) -> None:
        """A record without trace gets no trace ids, even if the shipper runs inside a span."""
        trail.record("task.started")
        context = trace.SpanContext(int(OTHER_TRACE["trace_id"], 16), 7, is_remote=False)
        with trace.use_span(trace.NonRecordingSpan(context)):
            OtlpSink(receiver.endpoint, timeout_s=5).export(
                Batch("default", list(trail.ledger.read("default")))
            )
        assert [("", "")] == [(log.trace_id, log.span_id) for log in receiver.logs]

    def test_standard_variables_are_honoured(
        self, trail: AuditTrail, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT and _HEADERS decide where and with what it sends."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-scope-orgid=audit")
        trail.record("task.started")
        assert 1 == Shipper(trail.ledger, OtlpSink()).ship_once().shipped
        assert ["audit"] == [h.get("x-scope-orgid") for h in receiver.headers]

    def test_big_batches_are_split(self, trail: AuditTrail, receiver: OtlpReceiver) -> None:
        """A batch over request_bytes goes out in several requests, all of it."""
        stored = _write_pipeline(trail, runs=4)
        sink = OtlpSink(receiver.endpoint, timeout_s=5, request_bytes=2_000)
        assert ExportResult.SUCCESS == sink.export(Batch("default", stored))
        assert receiver.requests > 1
        assert {("default", s.seq) for s in stored} == receiver.keys()

    def test_unreadable_record_is_sent_as_an_error(
        self, trail: AuditTrail, receiver: OtlpReceiver
    ) -> None:
        """A record that cannot be parsed goes out as audit.unreadable, at ERROR."""
        damaged = StoredRecord("default", 3, b"\x01" * 32, b"{not json")
        before = COUNTERS.snapshot().get("ship_unreadable", 0)
        sink = OtlpSink(receiver.endpoint, timeout_s=5)
        assert ExportResult.SUCCESS == sink.export(Batch("default", [damaged]))
        (log,) = receiver.logs
        assert (UNREADABLE_EVENT, "ERROR", "01" * 32) == (
            log.body,
            log.severity_text,
            log.attributes["audit.hash"],
        )
        assert before + 1 == COUNTERS.snapshot()["ship_unreadable"]

    def test_record_of_the_wrong_shape_is_sent_as_an_error(
        self, trail: AuditTrail, receiver: OtlpReceiver
    ) -> None:
        """JSON that is not a v1 record's shape (a bad ts) also goes out as audit.unreadable."""
        body = trail.record("task.started").body.replace(b'"ts":"', b'"ts":"x')
        damaged = StoredRecord("default", 0, b"\x02" * 32, body)
        sink = OtlpSink(receiver.endpoint, timeout_s=5)
        assert ExportResult.SUCCESS == sink.export(Batch("default", [damaged]))
        assert [UNREADABLE_EVENT] == [log.body for log in receiver.logs]

    def test_gzip_compression(self, trail: AuditTrail, receiver: OtlpReceiver) -> None:
        """compression="gzip" sends gzip bodies the receiver decodes."""
        stored = _write_pipeline(trail, runs=1)
        sink = OtlpSink(receiver.endpoint, timeout_s=5, compression="gzip")
        assert ExportResult.SUCCESS == sink.export(Batch("default", stored))
        assert ["gzip"] == [h.get("content-encoding") for h in receiver.headers]
        _assert_delivered(stored, receiver.logs)

    def test_refusal_is_a_failure_and_keeps_the_cursor(
        self, trail: AuditTrail, receiver: OtlpReceiver
    ) -> None:
        """A receiver answering 400 makes export FAIL; the cursor does not move."""
        trail.record("task.started")
        receiver.answer(400)
        shipper = Shipper(trail.ledger, OtlpSink(receiver.endpoint, timeout_s=5))
        assert ["default"] == shipper.ship_once().failed
        assert {"default": 1} == shipper.pending()

    def test_dead_endpoint_is_a_failure(self, trail: AuditTrail) -> None:
        """Nothing listening: export returns FAILURE (within its timeout), never raises."""
        trail.record("task.started")
        sink = OtlpSink(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
        assert ExportResult.FAILURE == sink.export(
            Batch("default", list(trail.ledger.read("default")))
        )


@pytest.mark.slow
class TestThroughRotel:
    """The sink → the rotel OTLP agent → the receiver: what a collector in between sees."""

    def test_every_record_arrives_with_trace_ids_and_attributes(
        self, trail: AuditTrail, rotel: Rotel, receiver: OtlpReceiver
    ) -> None:
        """Records forwarded by rotel arrive at least once with their ids and attributes."""
        stored = _write_pipeline(trail)
        report = Shipper(trail.ledger, OtlpSink(rotel.endpoint, timeout_s=5)).ship_once()
        assert len(stored) == report.shipped
        assert receiver.wait_for(len(stored))
        _assert_delivered(stored, receiver.logs)
        assert "workflow-audit" == receiver.logs[0].resource["service.name"]


class _Recording:
    """A sink wrapper noting which thread each export ran in."""

    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink
        self.name = sink.name
        self.threads: set[int] = set()
        self.results: list[ExportResult] = []

    def export(self, batch: Batch) -> ExportResult:
        self.threads.add(threading.get_ident())
        result = self.sink.export(batch)
        self.results.append(result)
        return result

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return self.sink.force_flush(timeout_s)

    def shutdown(self) -> None:
        self.sink.shutdown()


@pytest.fixture
def follow() -> Iterator[list[threading.Thread]]:
    """Shipper.follow threads started by a test, stopped at its end."""
    threads: list[threading.Thread] = []
    yield threads
    for t in threads:
        t.join(20)


@pytest.mark.slow
class TestReceiverDown:
    """Fault: the OTLP endpoint is down for the first half of a run, then up."""

    def _run(
        self,
        trail: AuditTrail,
        sink_endpoint: str,
        receiver: OtlpReceiver,
        bring_up: Callable[[Shipper], None],
        follow: list[threading.Thread],
    ) -> _Recording:
        half = 40
        sink = _Recording(OtlpSink(sink_endpoint, timeout_s=0.5))
        shipper = Shipper(
            trail.ledger, sink, batch_size=16, backoff=Backoff(initial_s=0.05, max_s=0.2)
        )
        stop = threading.Event()
        thread = threading.Thread(target=shipper.follow, args=(stop,), kwargs={"poll_s": 0.05})
        follow.append(thread)
        thread.start()
        try:
            # First half: every record() returns, durable, while the shipper fails.
            for i in range(half):
                trail.record("task.succeeded", {"i": i}, subject={"task_id": f"t{i}"}, trace=TRACE)
            assert _until(lambda: sink.results.count(ExportResult.FAILURE) >= 3)  # backed off
            assert 0 == len(receiver.keys())
            assert -1 == trail.ledger.get_cursor(sink.name, "default")
            bring_up(shipper)
            for i in range(half, 2 * half):
                trail.record("task.failed", {"i": i}, subject={"task_id": f"t{i}"})
            assert receiver.wait_for(2 * half, timeout_s=30)
            assert _until(lambda: not shipper.pending()["default"])
        finally:
            stop.set()
            thread.join(20)
        return sink

    def test_every_record_is_delivered_and_the_cursor_is_right(
        self, trail: AuditTrail, follow: list[threading.Thread]
    ) -> None:
        """Receiver down, then up: every record arrives, the cursor ends at the head."""
        receiver = OtlpReceiver()
        try:
            sink = self._run(trail, receiver.endpoint, receiver, lambda _: receiver.start(), follow)
            assert {("default", seq) for seq in range(80)} == receiver.keys()
            assert 79 == trail.ledger.get_cursor(sink.name, "default")
            _assert_delivered(list(trail.ledger.read("default")), receiver.logs)
        finally:
            receiver.stop()

    def test_record_never_waits_for_the_sink(
        self, trail: AuditTrail, follow: list[threading.Thread]
    ) -> None:
        """Exports run only in the shipper's thread: record() in a task never calls the sink."""
        receiver = OtlpReceiver()
        try:
            sink = self._run(trail, receiver.endpoint, receiver, lambda _: receiver.start(), follow)
        finally:
            receiver.stop()
        assert threading.get_ident() not in sink.threads
        assert {follow[0].ident} == sink.threads
        assert ExportResult.FAILURE in sink.results

    def test_through_rotel_every_record_is_delivered(
        self, trail: AuditTrail, tmp_path: Path, follow: list[threading.Thread]
    ) -> None:
        """rotel down at first (the sink fails), then rotel up with the receiver down (rotel
        retries), then the receiver up: every record arrives."""
        receiver = OtlpReceiver()
        agent = Rotel(receiver.endpoint, log=tmp_path / "rotel.log")

        def bring_up(shipper: Shipper) -> None:
            agent.start()
            assert _until(lambda: not any(shipper.pending().values()))  # rotel takes it...
            receiver.start()  # ...and delivers it once the receiver is up

        try:
            self._run(trail, agent.endpoint, receiver, bring_up, follow)
            assert {("default", seq) for seq in range(80)} == receiver.keys()
        finally:
            agent.stop()
            receiver.stop()
