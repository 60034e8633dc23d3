"""OTLP sink: each record becomes one OpenTelemetry log record, sent over OTLP/HTTP (protobuf).

>>> from audit_core.sinks.otlp import OtlpSink
>>> OtlpSink("http://127.0.0.1:4318", timeout_s=2).name
'otlp:http://127.0.0.1:4318/v1/logs'

With the shipper (``pip install "workflow-audit[otlp]"``)::

    from audit_core import open_ledger
    from audit_core.ship import Shipper
    from audit_core.sinks.otlp import OtlpSink

    Shipper(open_ledger("sqlite:///ledger.db"), OtlpSink()).drain(timeout_s=60)

It uses the OpenTelemetry SDK: a ``LoggerProvider`` owns the resource, and the SDK's
``OTLPLogExporter`` (OTLP/HTTP, protobuf) sends each batch. Not through a log record
processor: the SDK's ``BatchLogRecordProcessor`` drops a batch its exporter refused and never
says so, while the shipper must know whether a batch arrived to move its cursor. So
:meth:`OtlpSink.export` builds the SDK log records of a batch itself, calls the exporter and
returns its verdict; the shipper retries a failed batch with backoff, and the records wait in
the ledger meanwhile. Delivery is at least once: a receiver de-duplicates by ``audit.chain`` +
``audit.seq`` (or ``audit.hash``).

Each log record:

============================  ===============================================================
OTLP field                    value
============================  ===============================================================
``body``                      the event type (``task.failed``); also ``event_name``
``time_unix_nano``            the record's ``ts`` (event time); observed time: when shipped
``severity_text``/``number``  ERROR for failures and holes (``*.failed``,
                              ``*.unrecorded``, ``*.import_error``, ``*.crashed``,
                              ``source.gap``), WARN for ``*.retry_scheduled``,
                              ``*.upstream_failed``, ``drift.detected``,
                              ``access.denied``, ``access.login_failed`` and
                              ``permission.changed``, INFO otherwise
``trace_id``/``span_id``      the record's ``trace`` (W3C ids; flags 0: the record does not
                              know whether the span was sampled), so Grafana links a log line
                              to its trace in Tempo; none when the record has no trace
attributes                    below
============================  ===============================================================

Attributes (the four core ones always, the rest when the record has them):

- ``audit.chain`` (string), ``audit.seq`` (int), ``audit.hash`` (64 hex: the record's RFC 9162
  leaf hash, as ``workflow-audit export`` prints it), ``audit.event`` (string);
- ``audit.actor.type``, ``audit.actor.id`` and any other actor key as ``audit.actor.<key>``;
- ``audit.subject.<key>`` for each subject key (``audit.subject.dag_id``,
  ``audit.subject.task_id``, ``audit.subject.run_id``, ``audit.subject.try_number``,
  ``audit.subject.flow_name``, ``audit.subject.flow_run_id``, ``audit.subject.task_name``, …);
- ``audit.data.<key>`` for each data key (``audit.data.model``, ``audit.data.uri``, …; of
  the access and permission records: ``audit.data.username`` and ``audit.data.client`` of a
  failed login, ``audit.data.status`` and ``audit.data.path`` of a denial,
  ``audit.data.change`` and ``audit.data.target`` of a permission change,
  ``audit.data.source`` and ``audit.data.first_id``/``last_id`` of a ``source.gap``).

Nested objects are flattened with dots (``data: {"metrics": {"auc": 0.9}}`` →
``audit.data.metrics.auc``), lists become their JSON text, ``null`` values and empty objects
are left out. OTLP attributes are for searching and dashboards; the record itself is the
ledger's, so to keep log records small, string values are cut at 4,096 characters and a
record gets at most 128 attributes (core, actor, subject, then data, in key order: the caps
of :mod:`audit_core.sinks._attributes`); a record that was cut carries
``audit.truncated = true``, and ``audit.hash`` finds the full record in the ledger. Loki
turns the dots into underscores (``audit_event``, ``audit_subject_dag_id``):
deploy/README.md shows the queries.

Configuration: explicit arguments win over the standard OpenTelemetry variables, which win
over the SDK's defaults:

- endpoint: ``endpoint`` (a base URL such as ``http://collector:4318``, to which ``/v1/logs``
  is added, or a URL ending in ``/v1/logs``), else ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` (used as
  is), else ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/logs``, else ``http://localhost:4318/v1/logs``;
- ``headers``, else ``OTEL_EXPORTER_OTLP_LOGS_HEADERS`` / ``OTEL_EXPORTER_OTLP_HEADERS``;
- ``timeout_s``, else ``OTEL_EXPORTER_OTLP_LOGS_TIMEOUT`` / ``OTEL_EXPORTER_OTLP_TIMEOUT``
  (seconds, as the Python SDK reads them), else 10 s. It bounds one export including the
  exporter's own retries of a refused connection or a 429/502/503/504, so a dead endpoint
  makes :meth:`OtlpSink.export` return FAILURE within it;
- ``compression`` (``"gzip"``, ``"deflate"``, ``"none"``), else
  ``OTEL_EXPORTER_OTLP_LOGS_COMPRESSION`` / ``OTEL_EXPORTER_OTLP_COMPRESSION``, else none;
- TLS: ``OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE``, ``…_CLIENT_KEY``, ``…_CLIENT_CERTIFICATE``
  (read by the exporter);
- resource: ``service.name`` is ``workflow-audit`` unless ``OTEL_SERVICE_NAME`` or
  ``OTEL_RESOURCE_ATTRIBUTES`` name another; ``resource_attributes`` win over both.

The sink's cursor name is ``otlp:<logs URL>`` (without any ``user:password@``): changing the
endpoint starts a new cursor, which re-sends the chain from the start.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

from audit_core._metrics import COUNTERS
from audit_core._normalize import JSONObject
from audit_core._record import Record, StoredRecord
from audit_core.errors import ConfigError, FormatError
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks._attributes import (
    CORE_ATTRIBUTES,
    ERROR,
    INFO,
    MAX_ATTRIBUTES,
    MAX_VALUE_CHARS,
    UNREADABLE_EVENT,
    WARN,
    Attributes,
    attributes,
    severity,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
    from opentelemetry.sdk.resources import Resource

# The attribute names and limits (shared with the structlog sink in _attributes.py) stay
# public here, where OTLP users look for them.
__all__ = [
    "CORE_ATTRIBUTES",
    "MAX_ATTRIBUTES",
    "MAX_VALUE_CHARS",
    "UNREADABLE_EVENT",
    "OtlpSink",
    "attributes",
    "resolve_endpoint",
    "severity",
    "timestamp_ns",
]

logger = logging.getLogger("workflow_audit")

DEFAULT_ENDPOINT: Final = "http://localhost:4318"
LOGS_PATH: Final = "/v1/logs"
SERVICE_NAME: Final = "workflow-audit"
#: Records' canonical bytes per OTLP request; a bigger batch goes out in several requests
#: (the protobuf request is 1-2x this), well below what collectors accept by default.
REQUEST_BYTES: Final = 2 * 1024 * 1024

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def timestamp_ns(ts: str) -> int:
    """Nanoseconds since the Unix epoch of a record's ``ts`` (``2026-11-28T10:00:00.123456Z``)."""
    days = dt.date(int(ts[0:4]), int(ts[5:7]), int(ts[8:10])).toordinal() - _EPOCH_ORDINAL
    seconds = days * 86_400 + int(ts[11:13]) * 3_600 + int(ts[14:16]) * 60 + int(ts[17:19])
    return seconds * 1_000_000_000 + int(ts[20:26]) * 1_000


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The logs URL: ``endpoint``, else the OTLP variables, else the default (see above)."""
    if endpoint:
        url = endpoint
    elif logs := os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").strip():
        return logs  # the signal-specific variable is used as is (OTLP exporter spec)
    else:
        url = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    url = url.rstrip("/")
    return url if url.endswith(LOGS_PATH) else url + LOGS_PATH


def _public(url: str) -> str:
    """``url`` without ``user:password@`` (cursor names and log lines are not secret)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class OtlpSink:
    """Ships records as OpenTelemetry log records over OTLP/HTTP (see the module docstring)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        compression: str | None = None,
        resource_attributes: Mapping[str, str] | None = None,
        request_bytes: int = REQUEST_BYTES,
    ) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http import Compression
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
            from opentelemetry.sdk._logs import LoggerProvider
        except ImportError as exc:
            raise ConfigError(
                "the OTLP sink needs the OpenTelemetry SDK and its OTLP/HTTP exporter: "
                'pip install "workflow-audit[otlp]"'
            ) from exc
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigError(f"OTLP timeout must be a positive number of seconds, got {timeout_s}")
        try:
            codec = None if compression is None else Compression(compression.strip().lower())
        except ValueError as exc:
            raise ConfigError(
                f"OTLP compression must be gzip, deflate or none, got {compression!r}"
            ) from exc
        self.endpoint = resolve_endpoint(endpoint)
        self.name = f"otlp:{_public(self.endpoint)}"
        self.request_bytes = request_bytes
        self.provider: LoggerProvider = LoggerProvider(
            resource=_resource(resource_attributes), shutdown_on_exit=False
        )
        self._exporter: OTLPLogExporter = OTLPLogExporter(
            endpoint=self.endpoint, headers=headers, timeout=timeout_s, compression=codec
        )
        self._sdk = _Sdk(self.provider)
        self._lock = threading.Lock()  # one export at a time: the HTTP session is not shared
        self._shut = False

    def __repr__(self) -> str:
        return f"OtlpSink({_public(self.endpoint)!r})"

    def export(self, batch: Batch) -> ExportResult:
        """Send ``batch``; SUCCESS once the receiver accepted every request of it."""
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        with self._lock:
            if self._shut:
                logger.warning("workflow-audit: %s is shut down; batch not sent", self.name)
                return ExportResult.FAILURE
            for chunk in self._chunks(batch.records):
                logs = [self._log_record(stored) for stored in chunk]
                if self._exporter.export(logs) is not LogRecordExportResult.SUCCESS:
                    return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Nothing is buffered: :meth:`export` returns after the receiver answered."""
        return True

    def shutdown(self) -> None:
        """Close the exporter's connections; idempotent."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            # The SDK leaves OTLPLogExporter.shutdown unannotated. The provider has no
            # processors: nothing of it to shut down.
            self._exporter.shutdown()  # type: ignore[no-untyped-call]

    def _chunks(self, records: Sequence[StoredRecord]) -> Iterator[Sequence[StoredRecord]]:
        start, size = 0, 0
        for i, stored in enumerate(records):
            size += len(stored.body)
            if size > self.request_bytes and i > start:
                yield records[start:i]
                start, size = i, len(stored.body)
        if start < len(records):
            yield records[start:]

    def _log_record(self, stored: StoredRecord) -> ReadableLogRecord:
        try:
            record = Record.from_stored(stored)
            return self._sdk.log(
                timestamp_ns(record.ts), record.event, record.trace, attributes(record)
            )
        except (FormatError, ValueError, KeyError, TypeError):  # not a v1 record's shape
            COUNTERS.incr("ship_unreadable")
            logger.exception(
                "workflow-audit: chain %r seq %d is not a readable record; sending %s in its "
                "place. Run `workflow-audit verify`",
                stored.chain,
                stored.seq,
                UNREADABLE_EVENT,
            )
        attrs: Attributes = {
            "audit.chain": stored.chain,
            "audit.seq": stored.seq,
            "audit.hash": stored.hash.hex(),
            "audit.event": UNREADABLE_EVENT,
        }
        return self._sdk.log(None, UNREADABLE_EVENT, None, attrs)


class _Sdk:
    """Builds the SDK's log records: the OpenTelemetry classes (imported when a sink is made),
    the provider's resource and our instrumentation scope."""

    def __init__(self, provider: LoggerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from audit_core import __version__

        self._trace = trace
        self._record = LogRecord
        self._readable = ReadableLogRecord
        self._severity = {n: SeverityNumber(n) for _, n in (INFO, WARN, ERROR)}
        self._scope = InstrumentationScope("workflow-audit", __version__)
        self._provider = provider
        self._resource = provider.resource
        self._hashed = _hash_once(provider.resource)
        # A log record takes its trace and span ids from a context; given none, the SDK
        # would use the *current* one: the shipper's own span, if it has one. So a record
        # without trace gets a context holding the invalid span (ids 0: none sent).
        self._no_trace: Context = trace.set_span_in_context(trace.INVALID_SPAN)
        self._contexts: dict[tuple[str, str], Context] = {}

    def log(
        self, ts: int | None, event: str, ids: JSONObject | None, attrs: Attributes
    ) -> ReadableLogRecord:
        text, number = severity(event)
        log = self._record(
            timestamp=ts,
            context=self._context(ids),
            severity_text=text,
            severity_number=self._severity[number],
            body=event,
            attributes=attrs,
            event_name=event,
        )
        return self._readable(
            log_record=log, resource=self._current_resource(), instrumentation_scope=self._scope
        )

    def _context(self, ids: JSONObject | None) -> Context:
        if not ids:
            return self._no_trace
        key = (str(ids["trace_id"]), str(ids["span_id"]))
        context = self._contexts.get(key)
        if context is None:
            # consecutive records mostly share a task's span: keep the last few contexts
            if len(self._contexts) >= 256:
                self._contexts.clear()
            span = self._trace.NonRecordingSpan(
                self._trace.SpanContext(int(key[0], 16), int(key[1], 16), is_remote=True)
            )
            context = self._contexts[key] = self._trace.set_span_in_context(span)
        return context

    def _current_resource(self) -> Resource:
        # The provider updates its resource after a fork (process attributes).
        if self._provider.resource is not self._resource:
            self._resource = self._provider.resource
            self._hashed = _hash_once(self._resource)
        return self._hashed


def _hash_once(resource: Resource) -> Resource:
    """``resource``, hashed once: the SDK's encoder groups records by resource in a dict,
    and ``Resource.__hash__`` serializes every attribute to JSON, each time (7 us a record)."""
    from opentelemetry.sdk.resources import Resource

    class HashedResource(Resource):
        def __init__(self, base: Resource) -> None:
            super().__init__(base.attributes, base.schema_url)
            self._hash = hash(base)

        def __hash__(self) -> int:
            return self._hash

    return HashedResource(resource)


def _resource(explicit: Mapping[str, str] | None) -> Resource:
    """The SDK's resource (its detectors read ``OTEL_RESOURCE_ATTRIBUTES`` and
    ``OTEL_SERVICE_NAME``), named ``workflow-audit`` unless those name the service."""
    from opentelemetry.sdk.resources import Resource

    detected = Resource.create()
    # Without a name from the environment the SDK says "unknown_service:<executable>".
    named = not str(detected.attributes.get("service.name", "")).startswith("unknown_service")
    ours: dict[str, str] = {} if named else {"service.name": SERVICE_NAME}
    return detected.merge(Resource({**ours, **(explicit or {})}))
