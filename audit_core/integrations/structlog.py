"""structlog integration: log events as audit records, and audit records as log lines.

>>> from audit_core import AuditConfig, AuditTrail
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", checkpoint_every=0))
>>> processor = to_audit_record(trail, {"model promoted": "model.deployed"})
>>> processor(None, "info", {"event": "model promoted", "model": "churn"})
{'event': 'model promoted', 'model': 'churn'}
>>> trail.ledger.head("default").seq
0

**Records → log lines.** :class:`StructlogSink` (:mod:`audit_core.sinks.structlog`, imported
from here as documented) logs each record through structlog as one JSON log line with its
trace context and ``audit.*`` keys; ``workflow-audit ship --sink structlog`` uses it.

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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from audit_core._metrics import COUNTERS
from audit_core._record import is_trace
from audit_core._trace import trace_context
from audit_core.sinks.structlog import StructlogSink, event_dict, json_logger

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
    if is_trace(trace_id, span_id):
        return {"trace_id": str(trace_id), "span_id": str(span_id)}
    return trace_context()
