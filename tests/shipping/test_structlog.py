"""audit_core.integrations.structlog: records as JSON log lines (StructlogSink), and structlog
events as records (to_audit_record)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry import trace
from structlog.testing import capture_logs

from audit_core import COUNTERS, REDACTED, AuditTrail, Record
from audit_core.integrations.structlog import (
    RESERVED_KEYS,
    StructlogSink,
    event_dict,
    json_logger,
    to_audit_record,
)
from audit_core.ship import Shipper
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks.otlp import attributes

TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def configured() -> Iterator[None]:
    """Restore structlog's global configuration after a test that changes it."""
    yield
    structlog.reset_defaults()


def _records(trail: AuditTrail) -> list[Record]:
    return [Record.from_stored(s) for s in trail.ledger.read("default")]


class TestEventDict:
    """event_dict(): a record's structlog event."""

    def test_fields(self, trail: AuditTrail) -> None:
        """event, level, timestamp, trace ids and the OTLP sink's audit.* keys."""
        record = Record.from_stored(
            trail.record("task.retry_scheduled", {"n": 1}, subject={"dag_id": "ml"}, trace=TRACE)
        )
        fields = event_dict(record)
        expected = {
            "event": "task.retry_scheduled",
            "level": "warning",
            "timestamp": record.ts,
            **TRACE,
            **attributes(record),
        }
        assert expected == fields

    def test_no_trace_no_ids(self, trail: AuditTrail) -> None:
        """A record without trace has no trace_id or span_id key."""
        fields = event_dict(Record.from_stored(trail.record("task.started")))
        assert set() == {"trace_id", "span_id"} & set(fields)

    @pytest.mark.parametrize(
        ("event", "level"),
        [("task.failed", "error"), ("drift.detected", "warning"), ("model.deployed", "info")],
    )
    def test_level_follows_severity(self, trail: AuditTrail, event: str, level: str) -> None:
        """ERROR, WARN and INFO become structlog's error, warning and info."""
        assert level == event_dict(Record.from_stored(trail.record(event)))["level"]


class TestStructlogSink:
    """StructlogSink: a shipper sink logging each record through structlog."""

    def test_json_lines_with_trace_context(self, trail: AuditTrail) -> None:
        """The default logger writes one JSON object a line, trace ids and audit.* included."""
        trail.record(
            "task.failed", {"error_type": "ValueError"}, subject={"dag_id": "ml"}, trace=TRACE
        )
        trail.record("task.started")
        out = io.StringIO()
        sink = StructlogSink(json_logger(out), name="structlog:test")
        assert 2 == Shipper(trail.ledger, sink).ship_once().shipped
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [event_dict(r) for r in _records(trail)] == lines

    def test_default_writes_to_stdout(
        self, trail: AuditTrail, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a logger the sink prints JSON lines on standard output."""
        trail.record("model.deployed", {"model": "churn"})
        assert 1 == Shipper(trail.ledger, StructlogSink()).ship_once().shipped
        (line,) = capsys.readouterr().out.splitlines()
        assert "churn" == json.loads(line)["audit.data.model"]

    def test_your_logger_and_processors(self, trail: AuditTrail) -> None:
        """A logger passed in gets each record as an event at its level."""
        trail.record("task.failed", trace=TRACE)
        with capture_logs() as logs:
            StructlogSink(structlog.get_logger("audit")).export(
                Batch("default", list(trail.ledger.read("default")))
            )
        (log,) = logs
        assert ("task.failed", "error", TRACE["trace_id"]) == (
            log["event"],
            log["log_level"],
            log["trace_id"],
        )

    def test_name_is_the_cursor(self, trail: AuditTrail) -> None:
        """The sink's name keys its cursor: a second ship sends nothing new."""
        trail.record("task.started")
        sink = StructlogSink(json_logger(io.StringIO()))
        assert "structlog" == sink.name
        Shipper(trail.ledger, sink).ship_once()
        assert 0 == Shipper(trail.ledger, sink).ship_once().shipped

    def test_flush_and_shutdown(self) -> None:
        """force_flush() is True; shutdown() may be called twice."""
        sink = StructlogSink(json_logger(io.StringIO()))
        assert sink.force_flush()
        sink.shutdown()
        sink.shutdown()
        assert ExportResult.SUCCESS == sink.export(Batch("default", []))


class TestToAuditRecord:
    """to_audit_record(): a structlog processor that records selected events."""

    def _process(
        self, trail: AuditTrail, event: dict[str, object], **kw: object
    ) -> dict[str, object]:
        processor = to_audit_record(trail, **kw)
        return dict(processor(None, "info", event))

    def test_audit_true_records_the_event(self, trail: AuditTrail) -> None:
        """audit=True records the event under its own name, with the rest as data."""
        self._process(
            trail,
            {
                "event": "access.denied",
                "audit": True,
                "path": "s3://lake/pii",
                "actor": ("user", "bob"),
                "subject": {"bucket": "lake"},
                "level": "warning",
            },
        )
        (record,) = _records(trail)
        assert ("access.denied", {"path": "s3://lake/pii"}) == (record.event, record.data)
        assert {"type": "user", "id": "bob"} == record.actor
        assert {"bucket": "lake"} == record.subject

    def test_audit_string_names_the_type(self, trail: AuditTrail) -> None:
        """audit="type" records that type."""
        self._process(trail, {"event": "promoted churn", "audit": "model.deployed"})
        assert ["model.deployed"] == [r.event for r in _records(trail)]

    def test_event_map_exact_and_patterns(self, trail: AuditTrail) -> None:
        """event_map maps names (exact or fnmatch patterns) to event types."""
        mapping = {"model promoted": "model.deployed", "upload *": "data.uploaded"}
        processor = to_audit_record(trail, mapping)
        for name in ("model promoted", "upload done", "cache warmed"):
            processor(None, "info", {"event": name})
        assert ["model.deployed", "data.uploaded"] == [r.event for r in _records(trail)]

    def test_audit_false_opts_out(self, trail: AuditTrail, ledger_file: Path) -> None:
        """audit=False keeps an event that event_map selects off the trail."""
        self._process(
            trail,
            {"event": "model promoted", "audit": False},
            event_map={"model promoted": "model.deployed"},
        )
        assert not ledger_file.exists()  # nothing was ever written

    def test_unselected_events_are_not_recorded(self, trail: AuditTrail, ledger_file: Path) -> None:
        """An event without audit and not in event_map writes nothing."""
        self._process(trail, {"event": "cache warmed", "n": 3})
        assert not ledger_file.exists()

    def test_event_dict_passes_through_unchanged(self, trail: AuditTrail) -> None:
        """The processor returns the very same event dict, unmodified."""
        event = {"event": "model.deployed", "audit": True, "model": "churn", "password": "hunter2"}
        snapshot = dict(event)
        processor = to_audit_record(trail)
        assert event is processor(None, "info", event)
        assert snapshot == event

    def test_reserved_keys_are_not_data_and_secrets_are_redacted(self, trail: AuditTrail) -> None:
        """Reserved keys stay out of data; secret-looking keys are redacted like any payload."""
        event: dict[str, object] = {k: "x" for k in RESERVED_KEYS}
        event.update({"event": "model.deployed", "audit": True, "api_key": "sk-live", "v": 8})
        event["subject"], event["actor"] = {"dag_id": "ml"}, {"type": "user", "id": "a"}
        self._process(trail, event)
        (record,) = _records(trail)
        assert {"api_key": REDACTED, "v": 8} == record.data

    def test_trace_from_the_event(self, trail: AuditTrail) -> None:
        """trace_id/span_id in the event become the record's trace."""
        self._process(trail, {"event": "model.deployed", "audit": True, **TRACE})
        assert [TRACE] == [r.trace for r in _records(trail)]

    def test_trace_from_the_current_span(self, trail: AuditTrail) -> None:
        """Without ids in the event, the current OpenTelemetry span's are used."""
        context = trace.SpanContext(int(TRACE["trace_id"], 16), int(TRACE["span_id"], 16), False)
        with trace.use_span(trace.NonRecordingSpan(context)):
            self._process(trail, {"event": "model.deployed", "audit": True})
        assert [TRACE] == [r.trace for r in _records(trail)]

    def test_failure_is_logged_counted_and_the_event_goes_on(
        self, trail: AuditTrail, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An invalid event type never breaks logging: logged with traceback, counted."""
        before = COUNTERS.snapshot().get("structlog_record_failures", 0)
        event = {"event": "not a type", "audit": True}
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            assert event == self._process(trail, event)
        assert before + 1 == COUNTERS.snapshot()["structlog_record_failures"]
        assert ["not a type"] == [r.args[0] for r in caplog.records if r.exc_info]

    def test_documented_example(self, trail: AuditTrail, configured: None) -> None:
        """The module docstring's configuration records the two selected events only."""
        out = io.StringIO()
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                to_audit_record(trail, {"model promoted": "model.deployed"}),
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.PrintLoggerFactory(out),
        )
        log = structlog.get_logger()
        log.info("model promoted", model="churn", version=8, subject={"dag_id": "ml"})
        log.warning("access.denied", audit=True, actor=("user", "bob"), path="s3://lake/pii")
        log.info("cache warmed")
        events = [(r.event, r.subject, r.data) for r in _records(trail)]
        assert [
            ("model.deployed", {"dag_id": "ml"}, {"model": "churn", "version": 8}),
            ("access.denied", {}, {"path": "s3://lake/pii"}),
        ] == events
        assert 3 == len(out.getvalue().splitlines())


@pytest.mark.slow
class TestOptionalDependency:
    """audit_core works without structlog installed."""

    def test_core_imports_without_structlog(self) -> None:
        """audit_core, the OTLP sink module and this integration import with structlog absent."""
        code = (
            "import sys; sys.modules['structlog'] = None\n"
            "import audit_core, audit_core.sinks.otlp, audit_core.integrations.structlog\n"
            "from audit_core.integrations.structlog import StructlogSink\n"
            "from audit_core.errors import ConfigError\n"
            "try:\n    StructlogSink()\nexcept ConfigError as e:\n    print(e)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
        )
        assert (0, "the structlog integration needs structlog: pip install structlog") == (
            result.returncode,
            result.stdout.strip(),
        )
