"""``AuditTrail.record()``: normalize → prepare → ledger append, durable on return.

>>> from audit_core import AuditConfig, AuditTrail
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> trail.record("model.deployed", {"model": "churn", "version": 7}).seq
0

Adapters (Airflow, Prefect) call :meth:`AuditTrail.record` from hooks that must never fail
a task: they wrap it in their one ``except Exception``. Called directly, ``record`` raises
:class:`~audit_core.errors.InvalidRecordError` for an invalid event type or actor, and, with
``strict=True``, for a payload that needs a lossy conversion (NaN, an unknown type, invalid
Unicode, an oversized value). Without ``strict`` such payloads are converted, the record is
written, and the conversion is logged and counted (``normalization_issues``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from audit_core._metrics import COUNTERS
from audit_core._normalize import (
    JSONObject,
    Processor,
    format_timestamp,
    redact,
    to_json,
)
from audit_core._record import TIMESTAMP, PreparedRecord, StoredRecord, prepare
from audit_core.config import AuditConfig
from audit_core.errors import InvalidRecordError
from audit_core.ledgers import Ledger, open_ledger

__all__ = ["AuditTrail", "Event"]

logger = logging.getLogger("workflow_audit")

Actor = tuple[str, str] | Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing that happened, before it becomes a record (see :meth:`AuditTrail.record`)."""

    type: str
    data: object = None
    subject: Mapping[str, object] | None = None
    actor: Actor | None = None
    trace: Mapping[str, str] | None = None
    ts: dt.datetime | str | None = None
    chain: str | None = None


class AuditTrail:
    """Writes records to a ledger. Thread-safe; fork-safe (the ledger reconnects per process)."""

    def __init__(
        self,
        config: AuditConfig | None = None,
        *,
        ledger: Ledger | None = None,
        processors: Sequence[Processor] | None = None,
    ) -> None:
        self.config = AuditConfig.from_env() if config is None else config
        self.ledger = ledger or open_ledger(
            self.config.ledger_url,
            synchronous=self.config.synchronous,
            busy_timeout_s=self.config.busy_timeout_s,
        )
        if processors is None:
            processors = (redact(self.config.redact_keys),)
        self.processors = tuple(processors)

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the ledger; idempotent."""
        self.ledger.close()

    def record(
        self,
        event: str,
        data: object = None,
        *,
        subject: Mapping[str, object] | None = None,
        actor: Actor | None = None,
        trace: Mapping[str, str] | None = None,
        ts: dt.datetime | str | None = None,
        chain: str | None = None,
        strict: bool = False,
    ) -> StoredRecord:
        """Append one record and return it once it is durable in the ledger."""
        prepared = self._prepare(event, data, subject, actor, trace, ts, chain, strict)
        stored = self.ledger.append(prepared)
        COUNTERS.incr("records_written")
        return stored

    def record_many(self, events: Iterable[Event], *, strict: bool = False) -> list[StoredRecord]:
        """Append several records in one transaction (all or none); durable on return."""
        prepared = [self.prepare(e, strict=strict) for e in events]
        stored = self.ledger.append_many(prepared)
        COUNTERS.incr("records_written", len(stored))
        return stored

    def prepare(self, event: Event, *, strict: bool = False) -> PreparedRecord:
        """Normalize, redact and encode ``event`` (everything but seq and prev)."""
        return self._prepare(
            event.type,
            event.data,
            event.subject,
            event.actor,
            event.trace,
            event.ts,
            event.chain,
            strict,
        )

    def _prepare(
        self,
        event: str,
        data: object,
        subject: Mapping[str, object] | None,
        actor: Actor | None,
        trace: Mapping[str, str] | None,
        ts: dt.datetime | str | None,
        chain: str | None,
        strict: bool,
    ) -> PreparedRecord:
        limit = self.config.max_value_bytes
        norm_data = to_json({} if data is None else data, max_value_bytes=limit, strict=strict)
        norm_subject = to_json(subject or {}, max_value_bytes=limit, strict=strict, path="subject")
        issues = norm_data.issues + norm_subject.issues
        value = norm_data.value
        for processor in self.processors:
            value = processor(value)
        if issues:
            COUNTERS.incr("normalization_issues", len(issues))
            logger.warning(
                "workflow-audit: %s recorded with conversions: %s", event, "; ".join(issues)
            )
        return prepare(
            chain=chain or self.config.chain,
            event=event,
            ts=_timestamp(ts),
            actor=self._actor(actor, strict),
            subject=norm_subject.value,
            trace=None if trace is None else dict(trace),
            data=value,
        )

    def _actor(self, actor: Actor | None, strict: bool) -> JSONObject:
        if actor is None:
            kind, ident = self.config.actor
            return {"type": kind, "id": ident}
        if isinstance(actor, tuple):
            return {"type": str(actor[0]), "id": str(actor[1])}
        return to_json(actor, strict=strict, path="actor").value


_second_cache: list[tuple[int, str]] = [(-1, "")]


def _now() -> str:
    # strftime costs ~2 us a call; the text up to the seconds changes once a second.
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    cached_second, prefix = _second_cache[0]
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache[0] = (second, prefix)
    return f"{prefix}.{fraction:06d}Z"


def _timestamp(ts: dt.datetime | str | None) -> str:
    if ts is None:
        return _now()
    if isinstance(ts, dt.datetime):
        return format_timestamp(ts)
    if TIMESTAMP.fullmatch(ts):
        return ts
    try:
        return format_timestamp(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")))
    except ValueError as exc:
        raise InvalidRecordError(f"timestamp {ts!r} is not RFC 3339") from exc
