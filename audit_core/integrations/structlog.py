"""structlog integration: audit records as JSON log lines, and log events as audit records.

>>> from audit_core import AuditConfig, AuditTrail, Record
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", checkpoint_every=0))
>>> stored = trail.record("task.failed", {"error_type": "ValueError"}, subject={"dag_id": "ml"},
...                       trace={"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
...                              "span_id": "00f067aa0ba902b7"}, actor=("user", "alice"))
>>> fields = event_dict(Record.from_stored(stored))
>>> fields["event"], fields["level"], fields["trace_id"], fields["audit.subject.dag_id"]
('task.failed', 'error', '4bf92f3577b34da6a3ce929d0e0e4736', 'ml')

**Records → log lines.** :class:`StructlogSink` is a sink for the shipper: it logs each
record through structlog as one event (:func:`event_dict`): ``event`` is the event type,
``level`` its severity (``error`` for failures, ``warning`` for retries and drift, else
``info``: :func:`audit_core.sinks.otlp.severity`), ``timestamp`` the record's ``ts``,
``trace_id`` and ``span_id`` its trace context, and the same ``audit.*`` keys the OTLP sink
sends as attributes (``audit.chain``, ``audit.seq``, ``audit.hash``, ``audit.event``,
``audit.actor.*``, ``audit.subject.*``, ``audit.data.*``). Without a logger it writes one
JSON object a line to standard output (:func:`json_logger`)::

    from audit_core import open_ledger
    from audit_core.integrations.structlog import StructlogSink
    from audit_core.ship import Shipper

    Shipper(open_ledger("sqlite:///ledger.db"), StructlogSink()).ship_once()
    # {"event": "task.failed", "timestamp": "2026-11-28T10:00:00.123456Z", "trace_id": …,
    #  "span_id": …, "audit.chain": "airflow", "audit.seq": 41, …, "level": "error"}

Pass your own logger (``StructlogSink(structlog.get_logger("audit"))``) to go through your
processor chain instead; use ``structlog.processors.MaybeTimeStamper`` there, not
``TimeStamper``, or the log time replaces the event time in ``timestamp``.

**Log events → records.** :func:`to_audit_record` is a structlog processor that writes
selected events to an :class:`~audit_core.AuditTrail` and passes every event dict on
unchanged. An event is selected when it has ``audit=True`` (its name is the event type,
or what ``event_map`` maps it to), ``audit="type"`` (that type), or when its name matches a
key of ``event_map`` (exact, or an ``fnmatch`` pattern) and it has no ``audit=False``. The
record's data is the event dict without the :data:`RESERVED_KEYS` (``event``, ``audit``,
``subject``, ``actor``, ``level``, ``timestamp``, ``logger``, ``trace_id``, ``span_id``,
``exc_info``, ``stack_info``), redacted like any payload; its subject and actor are the
``subject`` (a mapping) and ``actor`` (a mapping, or a ``(type, id)`` tuple) keys; its trace
the event's ``trace_id``/``span_id``, else the current OpenTelemetry span::

    import structlog
    from audit_core import AuditTrail
    from audit_core.integrations.structlog import to_audit_record

    trail = AuditTrail()
    structlog.configure(processors=[
        structlog.processors.add_log_level,
        to_audit_record(trail, {"model promoted": "model.deployed"}),
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.JSONRenderer(),
    ])
    log = structlog.get_logger()
    log.info("model promoted", model="churn", version=8, subject={"dag_id": "ml"})  # recorded
    log.warning("access.denied", audit=True, actor=("user", "bob"), path="s3://lake/pii")
    log.info("cache warmed")  # not recorded

The record is durable before the log line is rendered (``record()`` returns after the
ledger's commit: ~0.3 ms). Logging never fails because of it: a record that cannot be written
(an invalid event type, a broken ledger) is logged to the ``workflow_audit`` logger with its
traceback and counted (``structlog_record_failures``), and the event goes on.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TextIO

from audit_core._metrics import COUNTERS
from audit_core._record import Record, StoredRecord
from audit_core._trace import trace_context
from audit_core.errors import ConfigError
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks.otlp import attributes, severity

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

    from audit_core.trail import AuditTrail

__all__ = ["RESERVED_KEYS", "StructlogSink", "event_dict", "json_logger", "to_audit_record"]

logger = logging.getLogger("workflow_audit")

#: Keys of a structlog event dict that never become a record's data.
RESERVED_KEYS: Final = frozenset(
    {
        "event",
        "audit",
        "subject",
        "actor",
        "level",
        "timestamp",
        "logger",
        "trace_id",
        "span_id",
        "exc_info",
        "stack_info",
    }
)
_LEVELS: Final = {"ERROR": "error", "WARN": "warning", "INFO": "info"}
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")


def event_dict(record: Record) -> dict[str, Any]:
    """The structlog event of a record: event, level, timestamp, trace ids, ``audit.*``."""
    fields: dict[str, Any] = {
        "event": record.event,
        "level": _LEVELS[severity(record.event)[0]],
        "timestamp": record.ts,
    }
    if record.trace:
        fields["trace_id"] = record.trace["trace_id"]
        fields["span_id"] = record.trace["span_id"]
    fields.update(attributes(record))
    return fields


def json_logger(file: TextIO | None = None) -> Any:
    """A structlog logger writing one JSON object a line to ``file`` (standard output),
    independent of the global structlog configuration."""
    try:
        import structlog
    except ImportError as exc:
        raise ConfigError(
            "the structlog integration needs structlog: pip install structlog"
        ) from exc
    return structlog.wrap_logger(
        structlog.PrintLogger(file or sys.stdout),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    )


class StructlogSink:
    """A sink that logs each record through structlog (see the module docstring).

    ``name`` names its cursor in the ledger: one per destination, as for every sink.
    """

    def __init__(self, logger: Any | None = None, *, name: str = "structlog") -> None:
        self.name = name
        self._file: TextIO | None = None
        if logger is None:
            self._file = sys.stdout
            logger = json_logger(self._file)
        self.logger = logger

    def export(self, batch: Batch) -> ExportResult:
        """Log every record of ``batch``; SUCCESS once they were all handed to the logger."""
        for stored in batch.records:
            self.log(stored)
        self.force_flush()
        return ExportResult.SUCCESS

    def log(self, stored: StoredRecord) -> None:
        """Log one record (its level method: ``info``, ``warning`` or ``error``)."""
        fields = event_dict(Record.from_stored(stored))
        method = getattr(self.logger, fields.pop("level"))
        method(fields.pop("event"), **fields)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Flush the output this sink opened (a logger passed in is flushed by its owner)."""
        if self._file is not None:
            self._file.flush()
        return True

    def shutdown(self) -> None:
        """Flush; standard output stays open."""
        self.force_flush()


def to_audit_record(
    trail: AuditTrail, event_map: Mapping[str, str] | None = None
) -> Callable[[WrappedLogger, str, EventDict], EventDict]:
    """A structlog processor that records selected events on ``trail`` (module docstring)."""
    mapping = dict(event_map or {})
    patterns = [(p, t) for p, t in mapping.items() if any(c in p for c in "*?[")]

    def event_type(event: object, audit: object) -> str | None:
        if audit is False:  # audit=False opts an event out of event_map
            return None
        if isinstance(audit, str) and audit:
            return audit
        name = str(event)
        mapped = mapping.get(name)
        if mapped is None:
            mapped = next((t for p, t in patterns if fnmatch.fnmatchcase(name, p)), None)
        if mapped is None and audit is True:
            return name
        return mapped

    def processor(_logger: WrappedLogger, method_name: str, event: EventDict) -> EventDict:
        kind = event_type(event.get("event"), event.get("audit"))
        if kind is None:
            return event
        try:
            trail.record(
                kind,
                {k: v for k, v in event.items() if k not in RESERVED_KEYS},
                subject=_mapping(event.get("subject")),
                actor=_actor(event.get("actor")),
                trace=_trace(event),
            )
        except Exception:  # logging must go on; the failure is logged and counted
            COUNTERS.incr("structlog_record_failures")
            logger.exception(
                "workflow-audit: could not record %r from structlog event %r", kind, event
            )
        return event

    return processor


def _mapping(value: object) -> Mapping[str, object] | None:
    return value if isinstance(value, Mapping) else None


def _actor(value: object) -> tuple[str, str] | Mapping[str, object] | None:
    if isinstance(value, tuple) and len(value) == 2:
        return (str(value[0]), str(value[1]))
    return _mapping(value)


def _trace(event: EventDict) -> dict[str, str] | None:
    trace_id, span_id = event.get("trace_id"), event.get("span_id")
    if (
        isinstance(trace_id, str)
        and _TRACE_ID.fullmatch(trace_id)
        and trace_id != "0" * 32
        and isinstance(span_id, str)
        and _SPAN_ID.fullmatch(span_id)
        and span_id != "0" * 16
    ):
        return {"trace_id": trace_id, "span_id": span_id}
    return trace_context()
