"""audit_core._trace: W3C traceparent headers, the current OpenTelemetry span, and precedence."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest

from audit_core._trace import current_span_ids, parse_traceparent, trace_context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
HEADER = f"00-{TRACE_ID}-{SPAN_ID}-01"
IDS = {"trace_id": TRACE_ID, "span_id": SPAN_ID}

# A second, different context: the "current span" when a carrier should win over it.
SPAN_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_SPAN_ID = "00000000000000b7"  # leading zeros: the ids must be zero-padded hex


@pytest.fixture
def otel_trace() -> ModuleType:
    """opentelemetry.trace (the dev extra installs opentelemetry-sdk in both venvs)."""
    from opentelemetry import trace

    return trace


@contextmanager
def _current_span(otel_trace: ModuleType, trace_id: str, span_id: str) -> Iterator[None]:
    """Make a span with the given ids current, without setting a global TracerProvider."""
    context = otel_trace.SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=False,
        trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
    )
    with otel_trace.use_span(otel_trace.NonRecordingSpan(context)):
        yield


class TestParseTraceparent:
    """parse_traceparent(): W3C Trace Context level 1, §3.2."""

    def test_valid_header(self) -> None:
        """A valid version-00 header gives its trace-id and parent-id."""
        assert IDS == parse_traceparent(HEADER)

    def test_surrounding_whitespace_is_ignored(self) -> None:
        """Whitespace around the header value is trimmed."""
        assert IDS == parse_traceparent(f"  {HEADER}\t\n")

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(HEADER.upper(), id="upper-case-hex"),
            pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", id="upper-case-trace-id"),
            pytest.param(f"ff-{TRACE_ID}-{SPAN_ID}-01", id="version-ff"),
            pytest.param(f"00-{'0' * 32}-{SPAN_ID}-01", id="zero-trace-id"),
            pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-span-id"),
            pytest.param(f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01", id="short-trace-id"),
            pytest.param(f"00-{TRACE_ID}a-{SPAN_ID}-01", id="long-trace-id"),
            pytest.param(f"00-{TRACE_ID}-{SPAN_ID[:-1]}-01", id="short-span-id"),
            pytest.param(f"00-{TRACE_ID}-{SPAN_ID}a-01", id="long-span-id"),
            pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-1", id="short-flags"),
            pytest.param(f"0-{TRACE_ID}-{SPAN_ID}-01", id="short-version"),
            pytest.param(f"00-{TRACE_ID}-{SPAN_ID}", id="missing-flags"),
            pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-xyz", id="version-00-extra-field"),
            pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-", id="version-00-trailing-dash"),
            pytest.param(f"01-{TRACE_ID}-{SPAN_ID}-01xyz", id="future-version-no-dash"),
            pytest.param(f"00_{TRACE_ID}_{SPAN_ID}_01", id="wrong-separator"),
            pytest.param(f"00-{'g' * 32}-{SPAN_ID}-01", id="non-hex"),
            pytest.param("", id="empty"),
        ],
    )
    def test_invalid_header_gives_none(self, header: str) -> None:
        """A header that breaks §3.2 is ignored (None), never half-parsed."""
        assert None is parse_traceparent(header)

    def test_future_version_may_append_fields(self) -> None:
        """A higher version with extra '-' fields after the flags is parsed (§3.2.4)."""
        assert IDS == parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-01-xyz")
        assert IDS == parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-00")

    @pytest.mark.parametrize("header", [None, HEADER.encode(), 42, [HEADER]])
    def test_non_string_gives_none(self, header: object) -> None:
        """Anything but a str gives None."""
        assert None is parse_traceparent(header)


class TestCurrentSpanIds:
    """current_span_ids(): the ids of the current OpenTelemetry span, if any."""

    def test_ids_of_the_current_span(self, otel_trace: ModuleType) -> None:
        """The current span's ids come back as zero-padded lower-case hex."""
        with _current_span(otel_trace, SPAN_TRACE_ID, SPAN_SPAN_ID):
            assert {"trace_id": SPAN_TRACE_ID, "span_id": SPAN_SPAN_ID} == current_span_ids()

    def test_no_current_span_gives_none(self, otel_trace: ModuleType) -> None:
        """Without a valid current span there are no ids."""
        assert otel_trace.INVALID_SPAN is otel_trace.get_current_span()
        assert None is current_span_ids()

    def test_without_opentelemetry_gives_none(
        self, otel_trace: ModuleType, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the OpenTelemetry API cannot be imported the answer is None, not an error."""
        with _current_span(otel_trace, SPAN_TRACE_ID, SPAN_SPAN_ID):
            with monkeypatch.context() as patch:
                patch.setitem(sys.modules, "opentelemetry", None)  # makes the import fail
                assert None is current_span_ids()
            # The span was current all along: only the missing API made the answer None.
            assert {"trace_id": SPAN_TRACE_ID, "span_id": SPAN_SPAN_ID} == current_span_ids()


class TestTraceContext:
    """trace_context(): the first valid carrier, else the current span, else None."""

    def test_carrier_beats_current_span(self, otel_trace: ModuleType) -> None:
        """A valid traceparent in a carrier wins over the current span."""
        with _current_span(otel_trace, SPAN_TRACE_ID, SPAN_SPAN_ID):
            assert IDS == trace_context({"traceparent": HEADER})

    def test_first_valid_carrier_wins(self) -> None:
        """Carriers are tried in order; invalid and missing headers fall through to the next."""
        other = f"00-{SPAN_TRACE_ID}-{SPAN_SPAN_ID}-01"
        carriers = ({"traceparent": "garbage"}, {"tracestate": "x=1"}, {"traceparent": HEADER})
        assert IDS == trace_context(*carriers, {"traceparent": other})

    def test_none_and_empty_carriers_are_skipped(self) -> None:
        """None and empty carriers are skipped without error."""
        assert IDS == trace_context(None, {}, {"traceparent": HEADER})

    def test_invalid_carrier_falls_back_to_current_span(self, otel_trace: ModuleType) -> None:
        """With no valid carrier the current span's ids are used."""
        with _current_span(otel_trace, SPAN_TRACE_ID, SPAN_SPAN_ID):
            ids = trace_context(None, {"traceparent": f"ff-{TRACE_ID}-{SPAN_ID}-01"})
        assert {"trace_id": SPAN_TRACE_ID, "span_id": SPAN_SPAN_ID} == ids

    def test_nothing_gives_none(self) -> None:
        """No valid carrier and no current span give None."""
        assert None is trace_context(None, {"traceparent": "garbage"})
        assert None is trace_context()
