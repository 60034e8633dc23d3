"""Trace context for records: W3C ``traceparent`` headers and the current OpenTelemetry span.

>>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
{'trace_id': '4bf92f3577b34da6a3ce929d0e0e4736', 'span_id': '00f067aa0ba902b7'}
>>> parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01") is None
True

Orchestrators hand trace context around as a *carrier* (a dict holding a ``traceparent``
header): Airflow's ``context_carrier``, Prefect's ``__OTEL_TRACEPARENT`` label. Adapters take
the carrier first and the current span second (:func:`trace_context`). OpenTelemetry is
optional: without the ``opentelemetry-api`` package only carriers are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["TraceIds", "current_span_ids", "parse_traceparent", "trace_context"]

TraceIds = dict[str, str]

# W3C Trace Context §3.2: version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex.
# Version ff is invalid (§3.2.2.1); a future version may append fields after the flags.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<span_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?"
)


def parse_traceparent(header: object) -> TraceIds | None:
    """The ids in a ``traceparent`` header, or None if it is absent or invalid (§3.2.2)."""
    if not isinstance(header, str):
        return None
    match = _TRACEPARENT.fullmatch(header.strip())
    if match is None or match["version"] == "ff":
        return None
    if match["version"] == "00" and match["rest"]:  # version 00 has exactly four fields
        return None
    trace_id, span_id = match["trace_id"], match["span_id"]
    if trace_id == "0" * 32 or span_id == "0" * 16:  # all-zero ids are invalid (§3.2.2.3-4)
        return None
    return {"trace_id": trace_id, "span_id": span_id}


def current_span_ids() -> TraceIds | None:
    """The ids of the current OpenTelemetry span, if the API is installed and a span is valid."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def trace_context(*carriers: Mapping[str, object] | None) -> TraceIds | None:
    """The first valid ``traceparent`` among ``carriers``, else the current span, else None."""
    for carrier in carriers:
        if carrier:
            ids = parse_traceparent(carrier.get("traceparent"))
            if ids is not None:
                return ids
    return current_span_ids()
