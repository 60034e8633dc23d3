"""AuditTrail.record(): normalize, redact, link, durable on return."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pytest

from audit_core import COUNTERS, REDACTED, AuditConfig, AuditTrail, Event, Record, verify_chain
from audit_core.errors import InvalidRecordError
from tests.core._values import NaTLike


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


class RaisingStr(str):
    """A str subclass whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ explodes")


class RaisingMapping(Mapping[str, str]):
    """A Mapping whose __getitem__ raises."""

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["trace_id"])

    def __len__(self) -> int:
        return 1


class TestUntrustedFields:
    """Subject and actor are redacted like data; hostile values are converted or refused."""

    def test_subject_and_actor_are_redacted(self, trail: AuditTrail) -> None:
        """Secret keys and credentials in text are masked in subject and actor too."""
        stored = trail.record(
            "access.denied",
            {},
            subject={"dag_id": "etl", "conn": {"password": "hunter2"}, "uri": "pg://u:pw@h/db"},
            actor={"type": "user", "id": "alice", "token": "hunter3", "note": "bearer:hunter4x"},
        )
        record = orjson.loads(stored.body)
        assert {
            "dag_id": "etl",
            "conn": {"password": REDACTED},
            "uri": "pg://u:[REDACTED]@h/db",
        } == (record["subject"])
        assert {"type": "user", "id": "alice", "token": REDACTED, "note": "bearer:[REDACTED]"} == (
            record["actor"]
        )

    def test_actor_tuple_with_credentials_is_masked(self, trail: AuditTrail) -> None:
        """An actor id holding a credential is masked; the actor stays valid."""
        stored = trail.record("access.denied", actor=("service", "svc password=hunter2"))
        assert {"type": "service", "id": "svc password=[REDACTED]"} == orjson.loads(stored.body)[
            "actor"
        ]

    def test_colliding_keys_are_logged_counted_and_kept(
        self, trail: AuditTrail, caplog: pytest.LogCaptureFixture
    ) -> None:
        """{1: …, "1": …} keeps both values, and the conversion is logged and counted."""
        before = COUNTERS.snapshot().get("normalization_issues", 0)
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            stored = trail.record("task.started", {1: "int", "1": "str"})
        assert {"1": "str", "1 (int)": "int"} == orjson.loads(stored.body)["data"]
        assert 1 == COUNTERS.snapshot()["normalization_issues"] - before
        assert "both read '1'" in caplog.text

    def test_colliding_keys_raise_under_strict(self, trail: AuditTrail) -> None:
        """strict=True refuses colliding keys in data and in subject alike."""
        with pytest.raises(InvalidRecordError):
            trail.record("task.started", {1: "int", "1": "str"}, strict=True)
        with pytest.raises(InvalidRecordError):
            trail.record("task.started", {}, subject={1: "int", "1": "str"}, strict=True)
        assert trail.ledger.head("default") is None

    def test_user_object_errors_are_recorded_or_refused(self, trail: AuditTrail) -> None:
        """An exception from a user object is recorded (counted) or, strict, InvalidRecordError."""
        before = COUNTERS.snapshot().get("normalization_issues", 0)
        stored = trail.record(
            "task.started", {"x": RaisingStr("v")}, subject={"m": RaisingMapping()}
        )
        record = orjson.loads(stored.body)
        assert "RuntimeError: __str__ explodes" == record["data"]["x"]["error"]
        assert "KeyError: 'trace_id'" == record["subject"]["m"]["error"]
        assert 2 == COUNTERS.snapshot()["normalization_issues"] - before
        with pytest.raises(InvalidRecordError):
            trail.record("task.started", {"x": RaisingStr("v")}, strict=True)

    def test_hostile_actor_and_trace_raise_invalid_record(self, trail: AuditTrail) -> None:
        """An actor tuple or trace that raises when read is an InvalidRecordError, never raw."""
        with pytest.raises(InvalidRecordError, match="actor"):
            trail.record("task.started", actor=("user", RaisingStr("x")))
        with pytest.raises(InvalidRecordError, match="actor"):
            trail.record("task.started", actor=("user",))  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError, match="trace"):
            trail.record("task.started", trace=RaisingMapping())
        assert trail.ledger.head("default") is None


class TestTimestamps:
    """``ts``: RFC 3339 with ASCII digits and a real instant, or InvalidRecordError."""

    @pytest.mark.parametrize(
        "ts",
        [
            "2026-99-99T99:99:99.000000Z",
            "2026-02-30T10:00:00.000000Z",
            "\u0662\u0660\u0662\u0666-11-28T10:00:00.000000Z",
            "\u0662\u0660\u0662\u0666-11-28T10:00:00+00:00",
            "2026-11-28",
            "2026-11-28T10:00:00",
            "2026-W48-1T10:00:00Z",
            "20261128T100000Z",
            "2026-02-30T10:00:00+02:00",
        ],
    )
    def test_bad_timestamp_strings_raise(self, trail: AuditTrail, ts: str) -> None:
        """Impossible dates, non-ASCII digits, and ISO forms RFC 3339 lacks are refused."""
        with pytest.raises(InvalidRecordError, match="timestamp"):
            trail.record("task.started", ts=ts)
        assert trail.ledger.head("default") is None

    @pytest.mark.parametrize(
        ("ts", "expected"),
        [
            ("2026-11-28T10:00:00Z", "2026-11-28T10:00:00.000000Z"),
            ("2026-11-28t10:00:00.5z", "2026-11-28T10:00:00.500000Z"),
            ("2026-11-28 12:00:00.123456789+02:00", "2026-11-28T10:00:00.123456Z"),
            ("2024-02-29T00:00:00.000000Z", "2024-02-29T00:00:00.000000Z"),
        ],
    )
    def test_rfc3339_strings_are_normalized(
        self, trail: AuditTrail, ts: str, expected: str
    ) -> None:
        """Every RFC 3339 date-time is recorded as UTC with microseconds."""
        assert expected == orjson.loads(trail.record("task.started", ts=ts).body)["ts"]

    def test_nat_and_non_strings_raise(self, trail: AuditTrail) -> None:
        """A datetime that is no instant (pandas.NaT) or a number is an InvalidRecordError."""
        for ts in (NaTLike(), 5, dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))):
            with pytest.raises(InvalidRecordError, match="timestamp"):
                trail.record("task.started", ts=ts)  # type: ignore[arg-type]

    def test_nat_in_data_is_recorded_as_text(self, trail: AuditTrail) -> None:
        """pandas.NaT in data is recorded as "NaT" and counted; strict refuses it."""
        assert {"when": "NaT"} == orjson.loads(trail.record("t.x", {"when": NaTLike()}).body)[
            "data"
        ]
        with pytest.raises(InvalidRecordError):
            trail.record("t.x", {"when": NaTLike()}, strict=True)
