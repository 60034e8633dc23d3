"""AuditTrail.record(): normalize, redact, link, durable on return."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import orjson
import pytest

from audit_core import COUNTERS, REDACTED, AuditConfig, AuditTrail, Event, Record, verify_chain
from audit_core.errors import InvalidRecordError


class TestRecord:
    """The direct API."""

    def test_record_is_durable_and_complete(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A returned record can be read back by another connection, with every field set."""
        trace = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
        stored = trail.record(
            "model.retrained",
            {"auc": 0.91, "rows": 1000},
            subject={"dag_id": "ml", "task_id": "train", "try_number": 1},
            trace=trace,
            ts=dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.timezone.utc),
        )
        other = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger_file}"))
        rec = Record.from_stored(other.ledger.head("default"))  # type: ignore[arg-type]
        assert "model.retrained" == rec.event
        assert {"type": "service", "id": "tests"} == rec.actor
        assert {"dag_id": "ml", "task_id": "train", "try_number": 1} == rec.subject
        assert trace == rec.trace
        assert "2026-11-28T10:00:00.000000Z" == rec.ts
        assert stored.hash.hex() == rec.hash

    def test_secrets_and_bad_values_are_handled(self, trail: AuditTrail) -> None:
        """Secrets are redacted and NaN converted; the record is written and verifies."""
        stored = trail.record("task.failed", {"password": "hunter2", "loss": float("nan")})
        data = orjson.loads(stored.body)["data"]
        assert {"password": REDACTED, "loss": "NaN"} == data
        assert b"hunter2" not in stored.body
        verify_chain(trail.ledger, "default")

    def test_strict_raises_and_writes_nothing(self, trail: AuditTrail) -> None:
        """strict=True refuses a lossy payload with InvalidRecordError."""
        with pytest.raises(InvalidRecordError):
            trail.record("task.failed", {"loss": float("inf")}, strict=True)
        assert trail.ledger.head("default") is None

    def test_invalid_event_type_raises(self, trail: AuditTrail) -> None:
        """A malformed event type is a programming error and raises."""
        with pytest.raises(InvalidRecordError, match="event type"):
            trail.record("TaskStarted")

    def test_conversions_are_logged_and_counted(
        self, trail: AuditTrail, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every lossy conversion is logged and counted, never silent."""
        before = COUNTERS.snapshot().get("normalization_issues", 0)
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            trail.record("task.failed", {"a": float("nan"), "b": object()})
        assert 2 == COUNTERS.snapshot()["normalization_issues"] - before
        assert "data.a" in caplog.text

    def test_record_many_in_one_transaction(self, trail: AuditTrail) -> None:
        """record_many appends a batch in order and returns each stored record."""
        events = [Event(type="task.started", data={"i": i}) for i in range(5)]
        stored = trail.record_many(events)
        assert [0, 1, 2, 3, 4] == [s.seq for s in stored]
        assert 5 == verify_chain(trail.ledger, "default").size

    def test_actor_forms(self, trail: AuditTrail) -> None:
        """An actor is a (type, id) tuple or a mapping with type and id."""
        a = trail.record("permission.changed", actor=("user", "alice"))
        b = trail.record("access.denied", actor={"type": "user", "id": "bob", "ip": "10.0.0.1"})
        assert {"type": "user", "id": "alice"} == orjson.loads(a.body)["actor"]
        assert "bob" == orjson.loads(b.body)["actor"]["id"]

    def test_timestamp_strings(self, trail: AuditTrail) -> None:
        """RFC 3339 strings are normalized to UTC microseconds; garbage raises."""
        stored = trail.record("task.started", ts="2026-11-28T12:00:00+02:00")
        assert "2026-11-28T10:00:00.000000Z" == orjson.loads(stored.body)["ts"]
        with pytest.raises(InvalidRecordError, match="RFC 3339"):
            trail.record("task.started", ts="yesterday")
