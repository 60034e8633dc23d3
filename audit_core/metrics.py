"""The failure counters as OpenTelemetry metrics, so that they outlive short task processes.

>>> from audit_core.metrics import metric_name
>>> metric_name("hook_failures")
'workflow_audit.hook_failures'

Every count of :data:`audit_core.COUNTERS` (``hook_failures``, ``records_abandoned``, …) is
also an OpenTelemetry *observable counter* named ``workflow_audit.<count>`` (cumulative,
monotonic, unit ``1``) on the meter ``workflow_audit``. Nothing is computed per record: the
SDK reads :meth:`~audit_core._metrics.Counters.snapshot` when it collects. Where they go
depends on ``WORKFLOW_AUDIT_METRICS``:

``auto`` (default)
    The instruments are made on ``opentelemetry.metrics.get_meter("workflow_audit")``: the
    global MeterProvider of the host process gets them, whenever it is set (Airflow with
    ``[metrics] otel_on``, Prefect, your own). Without one, the API's no-op provider costs
    nothing. Without the ``opentelemetry-api`` package, nothing happens at all.
``otlp``
    The same, and when the process has no SDK MeterProvider of its own at the first count,
    a private one (never installed as the global one) with a
    ``PeriodicExportingMetricReader`` and the SDK's ``OTLPMetricExporter`` (OTLP/HTTP,
    protobuf; the ``otlp`` extra). It reads the standard variables:
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (used as is), else ``OTEL_EXPORTER_OTLP_ENDPOINT``
    + ``/v1/metrics``; ``…_HEADERS``, ``…_TIMEOUT``, ``…_COMPRESSION``,
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``; ``OTEL_METRIC_EXPORT_INTERVAL``
    (default 60 s); the resource from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``
    (``service.name`` defaults to ``workflow-audit``) plus, unless they set one, a random
    ``service.instance.id`` per process, so that each short-lived process is its own series.
    The counts are exported at exit (:func:`shutdown`, bounded by :data:`FLUSH_TIMEOUT_S`)
    and on :func:`flush`.
``off``
    No instruments; OpenTelemetry is never imported.

The counts (README "Health and metrics" lists what each means):

``hook_failures``, ``hook_timeouts``, ``records_abandoned``, ``flush_failures``,
``records_written``, ``records_deduplicated``, ``normalization_issues``, ``checkpoints_signed``,
``checkpoint_failures``, ``records_shipped``, ``ship_failures``, ``ship_unreadable``,
``s3_segments_shipped``, ``s3_conflicts``, ``ledger_retries``,
``ledger_retries_deduplicated``, ``ledger_head_mismatches``, ``merkle_rebuilds``,
``structlog_record_failures``, ``records_spooled``, ``spool_drained``,
``spool_corrupt_lines``; a count not in :data:`KNOWN_COUNTS` gets its instrument on first
use. Known counts are reported from the first collection on, at 0, so a backend sees the
series before its first increase.

Gauges of a one-shot check: :func:`report_gauges` lets ``workflow-audit health`` publish its
verdict (``workflow_audit.health.*``) through the same route before the command exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = [
    "FLUSH_TIMEOUT_S",
    "KNOWN_COUNTS",
    "METER_NAME",
    "MODE_ENV",
    "flush",
    "metric_name",
    "report_gauges",
    "set_instance",
    "shutdown",
]

logger = logging.getLogger("workflow_audit")

METER_NAME: Final = "workflow_audit"
MODE_ENV: Final = "WORKFLOW_AUDIT_METRICS"
#: Longest a flush at exit or from :func:`flush` may take: a dead collector never holds up a
#: task process longer than this.
FLUSH_TIMEOUT_S: Final = 2.0
SERVICE_NAME: Final = "workflow-audit"

#: The counts the code keeps, and what one means (the instruments' descriptions).
KNOWN_COUNTS: Final[Mapping[str, str]] = {
    "hook_failures": "adapter hooks or background writes that failed (logged with a traceback)",
    "hook_timeouts": "hooks that returned before their records were durable (budget spent)",
    "records_abandoned": "queued records given up on when a process exited",
    "run_passes_abandoned": "end-of-run passes (a flow run's task records) cut short at exit",
    "flush_failures": "background flushes to sinks that failed",
    "records_written": "records appended to the ledger",
    "records_deduplicated": "records not appended: their idempotency key was on their chain",
    "normalization_issues": "values changed to fit a record (redacted, digested, converted)",
    "checkpoints_signed": "checkpoints signed",
    "checkpoint_failures": "checkpoints that could not be signed or stored",
    "records_shipped": "records a sink confirmed",
    "ship_failures": "batches a sink refused or could not take",
    "ship_unreadable": "ledger records the OTLP sink could not parse (sent as audit.unreadable)",
    "s3_segments_shipped": "segments written to S3",
    "s3_conflicts": "S3 segments found already written by another shipper",
    "ledger_retries": "PostgreSQL appends retried after a serialization failure or deadlock",
    "ledger_retries_deduplicated": "retried PostgreSQL appends that had committed already",
    "ledger_keys_unavailable": "keyed records appended without dedupe: no record_keys table",
    "ledger_head_mismatches": "PostgreSQL appends that found the chain head moved",
    "merkle_rebuilds": "Merkle frontiers rebuilt from the records",
    "structlog_record_failures": "structlog events that could not be recorded",
    "records_spooled": "records written to the local spool because the ledger was unreachable",
    "spool_drained": "spooled records appended to their chains",
    "spool_corrupt_lines": "spool lines that do not parse or whose checksum differs",
    "ingest_failures": "ingestion steps of a source (Airflow's event log) that failed",
    "source_rows_recorded": "rows of a source recorded on their chain",
    "source_gaps_purged": "source.gap records: ids deleted before they were read",
    "source_gaps_missing": "source.gap records: ids that never appeared within the grace",
    "source_resets": "source.reset records: ids restarted below the cursor",
    "source_rows_unreadable": "source rows that could not become a record (source.unreadable)",
    "stream_events_recorded": "events of a followed stream (workflow-audit follow) recorded",
    "stream_events_deduplicated": "events of a followed stream whose key was on the chain",
    "stream_events_swept": "events the live stream dropped, recorded by a sweep",
    "stream_events_unreadable": "stream events that could not become a record",
    "stream_future_events": "stream events dated ahead of the follower's clock",
    "stream_gaps": "source.gap records of a followed stream (events may have expired)",
    "stream_reconnects": "reconnects of a followed stream after a failure",
    "stream_ledger_failures": "batches of a followed stream the ledger refused (retried)",
    "access_failures": "access records (logins, denials) that could not be built or queued",
    "access_dropped": "access records dropped because their queue was full",
    "permission_check_failures": "permission snapshots that could not be read or recorded",
}


def metric_name(count: str) -> str:
    """The OpenTelemetry instrument name of a count (``workflow_audit.<count>``)."""
    return f"{METER_NAME}.{count}"


class _Bridge:
    """Makes one observable counter per count on the chosen meter, at most once a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meter: Meter | None = None
        self._disabled = False
        self._names: set[str] = set()
        self._own: Any = None  # our SDK MeterProvider (mode otlp), or None
        self._snapshot: Callable[[], dict[str, int]] = dict
        self.instance: str | None = None  # service.instance.id of our own provider
        if hasattr(os, "register_at_fork"):  # see Counters: no lock held by a thread gone
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def attach(self, snapshot: Callable[[], dict[str, int]]) -> None:
        """Read counts with ``snapshot`` (the process's :data:`~audit_core.COUNTERS`)."""
        self._snapshot = snapshot

    def observe(self, name: str) -> None:
        """Called on a count's first increment in this process: make its instrument."""
        if self._disabled or name in self._names:
            return
        try:
            with self._lock:
                meter = self._meter if self._meter is not None else self._setup()
                if meter is None:
                    return
                for known in (*KNOWN_COUNTS, name):
                    if known not in self._names:
                        self._names.add(known)
                        meter.create_observable_counter(
                            metric_name(known),
                            callbacks=[self._callback(known)],
                            unit="1",
                            description=KNOWN_COUNTS.get(known, known.replace("_", " ")),
                        )
        except Exception:  # counting runs inside record(): metrics never fail a write
            self._disabled = True
            logger.warning("workflow-audit: metrics disabled, setup failed", exc_info=True)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def read(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self._snapshot().get(name, 0))]

        return read

    def _setup(self) -> Meter | None:
        mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
        if mode not in ("auto", "otlp", "off"):
            logger.warning(
                "workflow-audit: %s=%r is not auto, otlp or off; using auto", MODE_ENV, mode
            )
            mode = "auto"
        if mode == "off":
            self._disabled = True
            return None
        try:
            from opentelemetry import metrics
        except ImportError:  # the API is optional: counts stay in process memory
            self._disabled = True
            return None
        from audit_core import __version__

        if mode == "otlp" and not _is_sdk(metrics.get_meter_provider()):
            self._own = _otlp_provider(self.instance)
        provider = self._own if self._own is not None else metrics.get_meter_provider()
        self._meter = provider.get_meter(METER_NAME, __version__)
        return self._meter

    def providers(self) -> list[Any]:
        """The SDK providers our instruments live on (ours, or the host's global one)."""
        if self._meter is None:
            return []
        if self._own is not None:
            return [self._own]
        from opentelemetry import metrics

        provider = metrics.get_meter_provider()
        return [provider] if _is_sdk(provider) else []

    def meter(self) -> Meter | None:
        """The meter, set up now if no count was made yet (None: metrics are off)."""
        if self._disabled:
            return None
        with self._lock:
            return self._meter if self._meter is not None else self._setup()


def _is_sdk(provider: object) -> bool:
    # The API's proxy and no-op providers cannot flush; an SDK (or compatible) one can.
    return callable(getattr(provider, "force_flush", None))


def _otlp_provider(instance: str | None) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    except ImportError:
        logger.warning(
            "workflow-audit: %s=otlp needs the OpenTelemetry SDK and OTLP exporter "
            '(pip install "workflow-audit[otlp]"); counts go to the global MeterProvider only',
            MODE_ENV,
        )
        return None
    detected = Resource.create()
    named = not str(detected.attributes.get("service.name", "")).startswith("unknown_service")
    ours = {}
    # OTEL_RESOURCE_ATTRIBUTES wins; then a named instance; then the SDK's random one (1.45
    # detects a UUID per process), or ours on an SDK that does not.
    from_env = OTELResourceDetector().detect().attributes
    if instance and "service.instance.id" not in from_env:
        ours["service.instance.id"] = instance
    elif "service.instance.id" not in detected.attributes:
        ours["service.instance.id"] = str(uuid.uuid4())
    if not named:
        ours["service.name"] = SERVICE_NAME
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(), export_timeout_millis=FLUSH_TIMEOUT_S * 1000
    )
    # shutdown_on_exit=False: our own exit handler (registered when this module is imported,
    # before any HookRunner's) runs after the runners counted what they abandoned.
    return MeterProvider(
        metric_readers=[reader], resource=detected.merge(Resource(ours)), shutdown_on_exit=False
    )


_BRIDGE = _Bridge()
_GAUGES: dict[str, list[Any]] = {}
_GAUGE_LOCK = threading.Lock()  # not the bridge's: SDK collection calls the readers


def _gauge_reader(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def read(options: CallbackOptions) -> Iterable[Observation]:
        with _GAUGE_LOCK:
            return list(_GAUGES.get(name, ()))

    return read


def set_instance(instance: str) -> None:
    """Name this process's ``service.instance.id`` (``otlp`` mode) instead of a random one,
    before anything is counted: a one-shot check run again and again then makes one series.
    ``OTEL_RESOURCE_ATTRIBUTES`` still wins."""
    _BRIDGE.instance = instance


def flush(timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
    """Export the counts now (a task process about to end); True if every provider did."""
    ok = True
    for provider in _BRIDGE.providers():
        try:
            ok = bool(provider.force_flush(timeout_millis=timeout_s * 1000)) and ok
        except Exception:  # a metrics backend never fails the caller (logged, counted nowhere)
            logger.warning("workflow-audit: metrics flush failed", exc_info=True)
            ok = False
    return ok


def shutdown(timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Export a last time and stop our own MeterProvider (``otlp`` mode); idempotent."""
    own, _BRIDGE._own = _BRIDGE._own, None
    if own is None:
        return
    _BRIDGE._disabled = True
    try:
        own.shutdown(timeout_millis=timeout_s * 1000)
    except Exception:  # at exit: say so, never raise
        logger.warning("workflow-audit: metrics shutdown failed", exc_info=True)


def report_gauges(
    gauges: Mapping[str, Sequence[tuple[float, Mapping[str, str]]]],
    *,
    units: Mapping[str, str] | None = None,
    timeout_s: float = FLUSH_TIMEOUT_S,
) -> bool:
    """Publish one-shot gauges (``workflow_audit.<name>``: [(value, attributes), …]) and flush.

    False when metrics are off or no SDK provider is there to send them.
    """
    meter = _BRIDGE.meter()
    if meter is None:
        return False
    from opentelemetry.metrics import Observation

    for name, points in gauges.items():
        observations = [Observation(value, dict(attrs)) for value, attrs in points]
        with _GAUGE_LOCK:
            known = name in _GAUGES
            _GAUGES[name] = observations  # a later report replaces the points
        if not known:
            meter.create_observable_gauge(
                metric_name(name),
                callbacks=[_gauge_reader(name)],
                unit=(units or {}).get(name, ""),
            )
    return bool(_BRIDGE.providers()) and flush(timeout_s)


# Registered when the counters module is imported, before any HookRunner registers its own:
# atexit runs handlers last-in first-out, so ours runs after theirs counted records_abandoned.
atexit.register(shutdown)
