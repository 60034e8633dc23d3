"""structlog sink: audit records as JSON log lines, with their trace context.

>>> from audit_core import AuditConfig, AuditTrail, Record
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", checkpoint_every=0))
>>> stored = trail.record("task.failed", {"error_type": "ValueError"}, subject={"dag_id": "ml"},
...                       trace={"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
...                              "span_id": "00f067aa0ba902b7"}, actor=("user", "alice"))
>>> fields = event_dict(Record.from_stored(stored))
>>> fields["event"], fields["level"], fields["trace_id"], fields["audit.subject.dag_id"]
('task.failed', 'error', '4bf92f3577b34da6a3ce929d0e0e4736', 'ml')

:class:`StructlogSink` is a sink for the shipper: it logs each record through structlog as
one event (:func:`event_dict`): ``event`` is the event type, ``level`` its severity
(``error`` for failures, ``warning`` for retries and drift, else ``info``, as the OTLP sink
grades them), ``timestamp`` the record's ``ts``, ``trace_id`` and ``span_id`` its trace
context, and the same ``audit.*`` keys the OTLP sink sends as attributes (``audit.chain``,
``audit.seq``, ``audit.hash``, ``audit.event``, ``audit.actor.*``, ``audit.subject.*``,
``audit.data.*``: :mod:`audit_core.sinks._attributes`). Without a logger it writes one JSON
object a line to standard output (:func:`json_logger`)::

    from audit_core import open_ledger
    from audit_core.integrations.structlog import StructlogSink
    from audit_core.ship import Shipper

    Shipper(open_ledger("sqlite:///ledger.db"), StructlogSink()).ship_once()
    # {"event": "task.failed", "timestamp": "2026-11-28T10:00:00.123456Z", "trace_id": …,
    #  "span_id": …, "audit.chain": "airflow", "audit.seq": 41, …, "level": "error"}

Pass your own logger (``StructlogSink(structlog.get_logger("audit"))``) to go through your
processor chain instead; use ``structlog.processors.MaybeTimeStamper`` there, not
``TimeStamper``, or the log time replaces the event time in ``timestamp``. Needs
``structlog`` only when a sink is made without a logger.
"""

from __future__ import annotations

import sys
from typing import Any, Final, TextIO

from audit_core._record import Record, StoredRecord
from audit_core.errors import ConfigError
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks._attributes import attributes, severity

__all__ = ["StructlogSink", "event_dict", "json_logger"]

_LEVELS: Final = {"ERROR": "error", "WARN": "warning", "INFO": "info"}


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
