"""The witness over HTTP/1.1: ``POST <prefix>/add-checkpoint`` (c2sp.org/tlog-witness) and a
small status page, on the standard library's threading HTTP server.

>>> import tempfile, pathlib
>>> from audit_core import Signer
>>> from audit_core.witness import Cosigner, TrustedLogs, WitnessState
>>> state = WitnessState.open(pathlib.Path(tempfile.mkdtemp()) / "state.db")
>>> logs = TrustedLogs.parse([str(Signer.generate("example.com/log").verifier)])
>>> running = start_witness(Witness(logs, Cosigner.generate("w.example/w1"), state))
>>> running.url.startswith("http://127.0.0.1:")
True
>>> running.close()

Keep-alive connections (the spec's SHOULD), a ``Content-Length`` on every answer, request
bodies bounded by ``MAX_REQUEST_BYTES`` (413 beyond), ``Content-Length`` strictly 1 to 9
ASCII digits (two different ones: 400), a connection whose body was not read closed after
the answer (its bytes would be taken for the next request), slow clients bounded by a
socket timeout per read *and* a deadline per request (headers and body:
``REQUEST_DEADLINE_S``, so a client dripping a byte at a time cannot keep a thread), and at
most ``MAX_CONNECTIONS`` connections at once (a 503 and close beyond). Every request gets an
answer: an unexpected error is a 500 (logged), never a dropped connection.
Each decision is one line on the ``workflow_audit.witness`` logger (origin, sizes, status):
never a key. ``GET /`` and ``GET /health`` say the witness's name, its public key and how
many log keys it trusts; ``GET <prefix>/checkpoint?origin=ORIGIN`` answers the latest
checkpoint cosigned for an origin, with its cosignature (for verifiers; 404 when none).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from audit_core._witness_wire import ADD_CHECKPOINT, MAX_REQUEST_BYTES
from audit_core.witness.add import Reply, Witness

__all__ = [
    "DEFAULT_PORT",
    "LATEST_CHECKPOINT",
    "MAX_CONNECTIONS",
    "REQUEST_DEADLINE_S",
    "SOCKET_TIMEOUT_S",
    "RunningWitness",
    "WitnessServer",
    "is_loopback",
    "start_witness",
]

logger = logging.getLogger("workflow_audit.witness")
DEFAULT_PORT = 7380
#: ``GET <prefix>/checkpoint?origin=ORIGIN``: the latest checkpoint cosigned for an origin,
#: with the cosignature (:meth:`Witness.latest_checkpoint`; not in c2sp.org/tlog-witness).
LATEST_CHECKPOINT = "checkpoint"
#: A client that sends nothing for this long is dropped (a thread per slow client at most).
SOCKET_TIMEOUT_S = 10.0
#: A request (from its first byte awaited to its last body byte) read within this, or the
#: connection is closed: a per-read timeout alone lets a byte every few seconds hold a thread.
REQUEST_DEADLINE_S = 30.0
#: Connections served at once (a thread each); beyond, a 503 and close at once.
MAX_CONNECTIONS = 64
_LENGTH = re.compile(r"[0-9]{1,9}", re.ASCII)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 36\r\nConnection: close\r\n\r\ntoo many connections, try again later\n"
)


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (or ``localhost``)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WitnessServer(ThreadingHTTPServer):
    """The HTTP server holding the :class:`Witness` and its path prefix, counting its
    connections and closing those whose request is not read by its deadline."""

    daemon_threads = True  # an idle keep-alive connection never holds the exit
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        prefix: str = "",
        *,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.witness = witness
        self.socket_timeout_s = socket_timeout_s
        self.request_deadline_s = request_deadline_s
        self.max_connections = max_connections
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.endpoints = {f"/{ADD_CHECKPOINT}", f"{self.prefix}/{ADD_CHECKPOINT}"}
        self._active = 0
        self._deadlines: dict[socket.socket, float] = {}
        self._guard = threading.Lock()
        self._closed = threading.Event()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        threading.Thread(
            target=self._reap, name="workflow-audit-witness-reaper", daemon=True
        ).start()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._guard:
            busy = self._active >= self.max_connections
            if not busy:
                self._active += 1
        if busy:
            logger.info("%s refused: %d connections open (503)", client_address, self._active)
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started
            self._release(request)
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._guard:
            self._active -= 1
            self._deadlines.pop(request, None)

    def arm(self, conn: socket.socket) -> None:
        """Start ``conn``'s request deadline (a request is awaited from now)."""
        with self._guard:
            self._deadlines[conn] = time.monotonic() + self.request_deadline_s

    def disarm(self, conn: socket.socket) -> None:
        """The request is read: the deadline no longer applies (the decision takes its time)."""
        with self._guard:
            self._deadlines.pop(conn, None)

    def _reap(self) -> None:
        step = min(1.0, self.request_deadline_s / 4)
        while not self._closed.wait(step):
            now = time.monotonic()
            with self._guard:
                late = [c for c, deadline in self._deadlines.items() if deadline <= now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                logger.info("a request was not read within %.0f s: closed", self.request_deadline_s)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # the handler's read ends; it closes

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def handle_error(self, request: object, client_address: object) -> None:
        """A connection that failed (reset, timed out): one debug line, no traceback."""
        logger.debug("connection from %s failed: %s", client_address, sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    server: WitnessServer
    protocol_version = "HTTP/1.1"
    server_version = "workflow-audit-witness"
    sys_version = ""
    # headers and body are two writes: with Nagle's algorithm and the client's delayed ACK
    # the second would wait ~40 ms on every keep-alive request
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.socket_timeout_s)  # slow clients: bounded
        self._answered = False

    def version_string(self) -> str:
        return self.server_version  # no trailing space for an empty sys_version

    def handle_one_request(self) -> None:
        """One request, read within the deadline; any unexpected error is a 500 answer."""
        self.server.arm(self.connection)
        self._answered = False
        try:
            super().handle_one_request()
        except OSError:
            raise  # the connection failed (reset, timed out, closed at the deadline)
        except Exception as exc:  # noqa: BLE001 - the last resort: an answer, never a drop
            logger.error(
                "%s internal error: %s: %s", self.client_address[0], type(exc).__name__, exc
            )
            self.close_connection = True
            if not self._answered:
                self._send(Reply(500, b"internal error\n"))
        finally:
            self.server.disarm(self.connection)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] not in self.server.endpoints:
            self._send(Reply(404, b"not found\n"), drain=True)
            return
        length = self._length()
        if length is None:
            return
        try:
            body = self.rfile.read(length)
        except OSError:  # too slow (SOCKET_TIMEOUT_S) or gone: nothing was decided
            body = b""
        if len(body) != length:  # the client went away mid-body
            logger.info("%s add-checkpoint: the body was cut short", self.client_address[0])
            self.close_connection = True
            return
        self.server.disarm(self.connection)
        reply = self.server.witness.add_checkpoint(body)
        logger.info("%s %s", self.client_address[0], reply.describe())
        self._send(reply)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path in ("/", "/health", f"{self.server.prefix}/", f"{self.server.prefix}/health"):
            self._send(Reply(200, status_text(self.server.witness).encode()), drain=True)
        elif path == f"{self.server.prefix}/{LATEST_CHECKPOINT}":
            try:
                origins = urllib.parse.parse_qs(query, errors="strict").get("origin", [])
            except ValueError:  # percent-encoded bytes that are not UTF-8
                origins = []
            if len(origins) != 1 or not origins[0]:
                self._send(Reply(400, b"give one origin: ?origin=ORIGIN\n"), drain=True)
                return
            reply = self.server.witness.latest_checkpoint(origins[0])
            logger.info("%s %s %s", self.client_address[0], LATEST_CHECKPOINT, reply.status)
            self._send(reply, drain=True)
        else:
            self._send(Reply(404, b"not found\n"), drain=True)

    def _declared_length(self) -> int | str | None:
        """The Content-Length (None: absent), or why it is unusable."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return None
        if len(set(values)) > 1:
            return "two different Content-Length headers"
        if not _LENGTH.fullmatch(values[0]):
            return "Content-Length is not 1 to 9 ASCII digits"
        return int(values[0])

    def _length(self) -> int | None:
        """The body's length, or None after answering 411/400/413 (and closing)."""
        if "Transfer-Encoding" in self.headers:
            self._refuse(411, "a Content-Length is required (no chunked bodies)")
            return None
        length = self._declared_length()
        if length is None:
            self._refuse(411, "a Content-Length is required")
            return None
        if isinstance(length, str):
            self._refuse(400, length)
            return None
        if length > MAX_REQUEST_BYTES:
            self._refuse(413, f"request body over {MAX_REQUEST_BYTES} bytes")
            return None
        return length

    def _refuse(self, status: int, reason: str) -> None:
        logger.info("%s add-checkpoint %d: %s", self.client_address[0], status, reason)
        self.close_connection = True  # the unread body would be taken for the next request
        self._send(Reply(status, (reason + "\n").encode()))

    def _send(self, reply: Reply, *, drain: bool = False) -> None:
        if drain:  # skip a body we do not read, so the connection stays usable
            length = self._declared_length()
            if "Transfer-Encoding" in self.headers or isinstance(length, str):
                self.close_connection = True  # where the body ends is unknown
            elif length is not None and length > MAX_REQUEST_BYTES:
                self.close_connection = True  # too long to skip
            elif length:
                self.close_connection = len(self.rfile.read(length)) != length
        self._answered = True
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)


def status_text(witness: Witness) -> str:
    """The status page: the witness's name, public key and trusted log count (no secret)."""
    key = witness.cosigner.key
    return (
        f"witness {key.describe()}\nkey {key}\nlogs {witness.logs.count}\n"
        f"protocol c2sp.org/tlog-witness, cosignature/v1\n"
    )


@dataclass(frozen=True)
class RunningWitness:
    """A witness serving in a background thread (tests, benchmarks): ``url`` and ``close``."""

    server: WitnessServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = str(self.server.server_address[0]), self.server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{self.server.prefix}"

    def close(self) -> None:
        """Stop serving and close the listening socket (the state is the caller's)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def start_witness(
    witness: Witness,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    prefix: str = "",
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
) -> RunningWitness:
    """Serve ``witness`` on ``host:port`` (0: a free port) in a daemon thread."""
    server = WitnessServer((host, port), witness, prefix, socket_timeout_s=socket_timeout_s)
    thread = threading.Thread(target=server.serve_forever, name="workflow-audit-witness")
    thread.daemon = True
    thread.start()
    return RunningWitness(server, thread)
