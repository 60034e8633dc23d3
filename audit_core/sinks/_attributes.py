"""What the log-shaped sinks say of a record: its severity, and its fields flattened into
``audit.*`` attributes. The OTLP sink sends them as log record attributes, the structlog
sink as event keys, so a query written for one matches the other.

>>> severity("task.failed"), severity("access.login_failed"), severity("access.login")
(('ERROR', 17), ('WARN', 13), ('INFO', 9))

The keys and the caps (:data:`MAX_ATTRIBUTES`, :data:`MAX_VALUE_CHARS`) are documented in
:mod:`audit_core.sinks.otlp`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

import orjson

from audit_core._normalize import JSON
from audit_core._record import Record

__all__ = [
    "CORE_ATTRIBUTES",
    "ERROR",
    "INFO",
    "MAX_ATTRIBUTES",
    "MAX_VALUE_CHARS",
    "UNREADABLE_EVENT",
    "WARN",
    "Attributes",
    "attributes",
    "severity",
]

#: Attributes every log record has.
CORE_ATTRIBUTES: Final = ("audit.chain", "audit.seq", "audit.hash", "audit.event")
#: At most this many attributes a log record (the SDK's default attribute count limit).
MAX_ATTRIBUTES: Final = 128
#: String attribute values are cut to this many characters.
MAX_VALUE_CHARS: Final = 4096
#: The event of the log record sent in place of a ledger record that cannot be parsed (only a
#: damaged ledger has one): ERROR, with the record's chain, seq and hash, so that an alert
#: fires and the shipper does not stall behind it. ``workflow-audit verify`` says what is wrong.
UNREADABLE_EVENT: Final = "audit.unreadable"

# OpenTelemetry log data model, "Field: SeverityNumber": INFO 9, WARN 13, ERROR 17.
INFO: Final = ("INFO", 9)
WARN: Final = ("WARN", 13)
ERROR: Final = ("ERROR", 17)
_ERROR_SUFFIXES = (".failed", ".unrecorded", ".import_error", ".crashed")
# source.gap: ids of a source's log (Airflow's ``log`` table) vanished before they were
# recorded, a hole in what the trail can show: as loud as a run that ended unrecorded; so
# are source.reset (ids restarted below the cursor: rows may be recorded twice, or some
# lost) and source.unreadable (a row recorded without its content).
_ERROR_EVENTS = frozenset({"source.gap", "source.reset", "source.unreadable", UNREADABLE_EVENT})
_WARN_SUFFIXES = (".retry_scheduled", ".upstream_failed")
# Security events people act on, one at a time rarely: an API server answers 401/403 for every
# expired session, so a denial or a failed login is a warning and the alert rules count bursts;
# a change of privileges is always worth a look.
_WARN_EVENTS = frozenset(
    {"drift.detected", "access.denied", "access.login_failed", "permission.changed"}
)

Attributes = dict[str, str | bool | int | float]


@lru_cache(maxsize=1024)
def severity(event: str) -> tuple[str, int]:
    """(severity text, OpenTelemetry severity number) of an event type."""
    if event in _ERROR_EVENTS or event.endswith(_ERROR_SUFFIXES):
        return ERROR
    if event in _WARN_EVENTS or event.endswith(_WARN_SUFFIXES):
        return WARN
    return INFO


def attributes(record: Record) -> Attributes:
    """The ``audit.*`` attributes of ``record`` (keys in :mod:`audit_core.sinks.otlp`)."""
    out: Attributes = {
        "audit.chain": record.chain,
        "audit.seq": record.seq,
        "audit.hash": record.hash,
        "audit.event": record.event,
    }
    full = _Flattener(out)
    full.add("audit.actor", record.actor)
    full.add("audit.subject", record.subject)
    full.add("audit.data", record.data)
    if full.truncated:
        out["audit.truncated"] = True
    return out


class _Flattener:
    """Adds flattened values to ``out`` within the caps, noting whether anything was cut."""

    __slots__ = ("out", "truncated")

    def __init__(self, out: Attributes) -> None:
        self.out = out
        self.truncated = False

    def add(self, key: str, value: JSON) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                self.add(f"{key}.{k}", v)
            return
        if len(self.out) >= MAX_ATTRIBUTES - 1:  # one slot kept for audit.truncated
            self.truncated = True
            return
        if isinstance(value, list):
            value = orjson.dumps(value).decode()
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            value = value[:MAX_VALUE_CHARS]
            self.truncated = True
        self.out[key] = value
