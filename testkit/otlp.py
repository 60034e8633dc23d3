"""A real OTLP/HTTP logs and metrics receiver and the rotel agent, for the tests and the
benchmarks.

``OtlpReceiver`` is a small HTTP server on 127.0.0.1 that accepts ``POST /v1/logs`` with a
protobuf ``ExportLogsServiceRequest`` (plain or gzip, as the OTLP/HTTP spec allows), decodes it
with ``opentelemetry-proto`` and keeps every log record; and ``POST /v1/metrics`` with an
``ExportMetricsServiceRequest``, keeping every sum and gauge data point (:class:`ReceivedPoint`).
It can be stopped and started again on the same port (the fault tests), and told to answer
with an error status.

``Rotel`` runs the OTLP agent bundled in the ``rotel`` wheel between the sink and the receiver:
``rotel-agent start --otlp-http-endpoint 127.0.0.1:P --exporter otlp
--otlp-exporter-endpoint http://127.0.0.1:R --otlp-exporter-protocol http``.

Run as a script, the receiver serves in its own process and only counts (the benchmark):
``python -m testkit.otlp --port 0`` prints ``listening PORT``; ``GET /stats`` returns
``{"records": n, "requests": n, "distinct": n}`` as JSON (distinct: (chain, seq) pairs).
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from testkit import HOST, free_port, terminate, wait_listening

LOGS_PATH = "/v1/logs"
METRICS_PATH = "/v1/metrics"


def any_value(value: common_pb2.AnyValue) -> object:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


@dataclass(frozen=True, slots=True)
class ReceivedLog:
    """One log record as it arrived: the decoded fields the tests look at."""

    resource: dict[str, object]
    scope: str
    body: object
    severity_text: str
    severity_number: int
    time_unix_nano: int
    trace_id: str  # hex, "" when absent
    span_id: str
    attributes: dict[str, object]
    event_name: str

    @classmethod
    def of(cls, resource: dict[str, object], scope: str, record: logs_pb2.LogRecord) -> ReceivedLog:
        return cls(
            resource=resource,
            scope=scope,
            body=any_value(record.body),
            severity_text=record.severity_text,
            severity_number=record.severity_number,
            time_unix_nano=record.time_unix_nano,
            trace_id=record.trace_id.hex(),
            span_id=record.span_id.hex(),
            attributes={kv.key: any_value(kv.value) for kv in record.attributes},
            event_name=record.event_name,
        )

    @property
    def key(self) -> tuple[object, object]:
        """(audit.chain, audit.seq): what a receiver de-duplicates re-sent records by."""
        return self.attributes.get("audit.chain"), self.attributes.get("audit.seq")


@dataclass(frozen=True, slots=True)
class ReceivedPoint:
    """One data point of a sum or gauge metric as it arrived."""

    resource: dict[str, object]
    scope: str
    name: str
    kind: str  # "sum" or "gauge"
    monotonic: bool
    value: float
    attributes: dict[str, object]
    time_unix_nano: int


def _points(request: metrics_service_pb2.ExportMetricsServiceRequest) -> list[ReceivedPoint]:
    out = []
    for rm in request.resource_metrics:
        resource = {kv.key: any_value(kv.value) for kv in rm.resource.attributes}
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "gauge"):
                    continue
                data = getattr(metric, kind)
                monotonic = kind == "sum" and data.is_monotonic
                for point in data.data_points:
                    number = point.WhichOneof("value")
                    out.append(
                        ReceivedPoint(
                            resource=resource,
                            scope=sm.scope.name,
                            name=metric.name,
                            kind=kind,
                            monotonic=monotonic,
                            value=getattr(point, number) if number else 0,
                            attributes={kv.key: any_value(kv.value) for kv in point.attributes},
                            time_unix_nano=point.time_unix_nano,
                        )
                    )
    return out


def _audit_key(record: logs_pb2.LogRecord) -> tuple[object, object]:
    """(audit.chain, audit.seq) of a record, found without decoding every attribute."""
    found: dict[str, object] = {}
    for kv in record.attributes:
        if kv.key in ("audit.chain", "audit.seq"):
            found[kv.key] = any_value(kv.value)
            if len(found) == 2:
                break
    return found.get("audit.chain"), found.get("audit.seq")


@dataclass
class _State:
    """What the receiver saw; shared between its handler threads under ``lock``."""

    keep: bool = True
    status: int = 200
    logs: list[ReceivedLog] = field(default_factory=list)
    records: int = 0
    requests: int = 0
    keys: set[tuple[object, object]] = field(default_factory=set)
    points: list[ReceivedPoint] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _decode(body: bytes, encoding: str) -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    request.ParseFromString(_inflate(body, encoding))
    return request


def _inflate(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _handler(state: _State) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as OTLP exporters expect

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.headers.append({k.lower(): v for k, v in self.headers.items()})
            if self.path not in (LOGS_PATH, METRICS_PATH):
                self._reply(404, b"")
                return
            if state.status != 200:
                self._reply(state.status, b"")
                return
            if self.path == METRICS_PATH:
                self._metrics(body)
                return
            try:
                request = _decode(body, self.headers.get("Content-Encoding", ""))
            except (OSError, EOFError, zlib.error, DecodeError):  # OTLP/HTTP: 400, do not retry
                self._reply(400, b"")
                return
            self._store(request)
            response = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            self._reply(200, response)

        def do_GET(self) -> None:
            with state.lock:
                stats = {
                    "records": state.records,
                    "requests": state.requests,
                    "distinct": len(state.keys),
                }
            self._reply(200, json.dumps(stats).encode(), "application/json")

        def _metrics(self, body: bytes) -> None:
            request = metrics_service_pb2.ExportMetricsServiceRequest()
            try:
                request.ParseFromString(_inflate(body, self.headers.get("Content-Encoding", "")))
            except (OSError, EOFError, zlib.error, DecodeError):
                self._reply(400, b"")
                return
            points = _points(request)
            with state.lock:
                state.points.extend(points)
            response = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self._reply(200, response)

        def _store(self, request: logs_service_pb2.ExportLogsServiceRequest) -> None:
            received = []
            keys = []
            for rl in request.resource_logs:
                resource = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
                for sl in rl.scope_logs:
                    if state.keep:
                        received += [
                            ReceivedLog.of(resource, sl.scope.name, r) for r in sl.log_records
                        ]
                    else:  # the benchmark's receiver: only what proves every record arrived
                        keys += [_audit_key(r) for r in sl.log_records]
            with state.lock:
                state.requests += 1
                state.logs.extend(received)
                state.keys.update(log.key for log in received)
                state.keys.update(keys)
                state.records += len(received) + len(keys)

        def _reply(self, status: int, body: bytes, kind: str = "application/x-protobuf") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the tests read what arrived, not an access log

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True  # restart on the same port right after a stop
    daemon_threads = True


class OtlpReceiver:
    """An OTLP/HTTP logs receiver on 127.0.0.1 (``keep=False``: count only)."""

    def __init__(self, port: int | None = None, *, keep: bool = True) -> None:
        self.port = port or free_port()
        self._state = _State(keep=keep)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The base URL (``OTEL_EXPORTER_OTLP_ENDPOINT`` form)."""
        return f"http://{HOST}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The metrics URL (``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` form)."""
        return self.endpoint + METRICS_PATH

    @property
    def points(self) -> list[ReceivedPoint]:
        """Every metric data point received, in arrival order."""
        with self._state.lock:
            return list(self._state.points)

    def last_value(self, name: str, **attributes: object) -> float | None:
        """The latest value received for metric ``name`` (with these attributes), or None."""
        found = [
            p
            for p in self.points
            if p.name == name and all(p.attributes.get(k) == v for k, v in attributes.items())
        ]
        return found[-1].value if found else None

    @property
    def logs_url(self) -> str:
        """The logs URL (``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` form)."""
        return self.endpoint + LOGS_PATH

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> OtlpReceiver:
        if self._server is None:
            self._server = _Server((HOST, self.port), _handler(self._state))
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (idempotent); what arrived is kept."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = self._thread = None

    def answer(self, status: int) -> None:
        """Answer every later request with ``status`` (200: accept again)."""
        self._state.status = status

    @property
    def logs(self) -> list[ReceivedLog]:
        with self._state.lock:
            return list(self._state.logs)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of every request, lower-cased names."""
        with self._state.lock:
            return list(self._state.headers)

    @property
    def requests(self) -> int:
        return self._state.requests

    @property
    def records(self) -> int:
        return self._state.records

    def keys(self) -> set[tuple[object, object]]:
        """Every (audit.chain, audit.seq) that arrived at least once."""
        with self._state.lock:
            return set(self._state.keys)

    def wait_for(self, n: int, timeout_s: float = 20.0) -> bool:
        """True once ``n`` distinct records arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.keys()) >= n:
                return True
            time.sleep(0.02)
        return len(self.keys()) >= n


def rotel_agent() -> Path | None:
    """The agent binary inside the ``rotel`` wheel, or None when rotel is not installed."""
    try:
        import rotel
    except ImportError:
        return None
    path = Path(rotel.__file__).parent / "rotel-agent"
    return path if path.exists() and os.access(path, os.X_OK) else None


class Rotel:
    """The rotel agent: OTLP/HTTP in on ``port``, OTLP/HTTP out to ``forward_to``.

    Its exporter retries a refused batch (``--otlp-exporter-retry-*``) in memory; started in
    the foreground (not ``--daemon``), so the test owns the process and stops it by pid.
    """

    def __init__(self, forward_to: str, *, log: Path, port: int | None = None) -> None:
        self.forward_to = forward_to
        self.port = port or free_port()
        self.grpc_port = free_port()
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self, agent: Path) -> list[str]:
        return [
            str(agent),
            "start",
            "--otlp-http-endpoint",
            f"{HOST}:{self.port}",
            "--otlp-grpc-endpoint",
            f"{HOST}:{self.grpc_port}",  # its default, localhost:4317, may be taken
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            self.forward_to,
            "--otlp-exporter-protocol",
            "http",
            "--otlp-exporter-retry-initial-backoff",
            "100ms",
            "--otlp-exporter-retry-max-backoff",
            "500ms",
            "--otlp-exporter-request-timeout",
            "2s",
            "--batch-timeout",
            "50ms",
        ]

    def start(self) -> Rotel:
        agent = rotel_agent()
        if agent is None:
            raise RuntimeError("the rotel package (and its rotel-agent binary) is not installed")
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                self.command(agent), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if not wait_listening(self.port):
            self.stop()
            raise RuntimeError(f"rotel-agent did not listen on {self.port}; see {self.log}")
        return self

    def stop(self) -> None:
        terminate(self._process)
        self._process = None


def main() -> None:
    """Serve a count-only receiver until SIGTERM or stdin closes (the benchmark)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    port = parser.parse_args().port or free_port()
    receiver = OtlpReceiver(port, keep=False).start()
    print(f"listening {receiver.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    receiver.stop()


if __name__ == "__main__":
    main()
