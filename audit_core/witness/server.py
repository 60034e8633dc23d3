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
bodies bounded by ``MAX_REQUEST_BYTES`` (413 beyond) and slow clients by a socket timeout.
Each decision is one line on the ``workflow_audit.witness`` logger (origin, sizes, status):
never a key. ``GET /`` and ``GET /health`` say the witness's name, its public key and how
many log keys it trusts.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from audit_core._witness_wire import ADD_CHECKPOINT, MAX_REQUEST_BYTES
from audit_core.witness.add import Reply, Witness

__all__ = [
    "DEFAULT_PORT",
    "SOCKET_TIMEOUT_S",
    "RunningWitness",
    "WitnessServer",
    "is_loopback",
    "start_witness",
]

logger = logging.getLogger("workflow_audit.witness")
DEFAULT_PORT = 7380
#: A client that sends nothing for this long is dropped (a thread per slow client at most).
SOCKET_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (or ``localhost``)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WitnessServer(ThreadingHTTPServer):
    """The HTTP server holding the :class:`Witness` and its path prefix."""

    daemon_threads = True  # an idle keep-alive connection never holds the exit
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        prefix: str = "",
        *,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
    ) -> None:
        self.witness = witness
        self.socket_timeout_s = socket_timeout_s
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.endpoints = {f"/{ADD_CHECKPOINT}", f"{self.prefix}/{ADD_CHECKPOINT}"}
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

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
        reply = self.server.witness.add_checkpoint(body)
        logger.info("%s %s", self.client_address[0], reply.describe())
        self._send(reply)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/health", f"{self.server.prefix}/", f"{self.server.prefix}/health"):
            self._send(Reply(200, status_text(self.server.witness).encode()))
        else:
            self._send(Reply(404, b"not found\n"))

    def _length(self) -> int | None:
        """The body's length, or None after answering 411/400/413 (and closing)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(411, "a Content-Length is required (no chunked bodies)")
            return None
        text = self.headers.get("Content-Length")
        if text is None:
            self._refuse(411, "a Content-Length is required")
            return None
        if not text.isdigit():
            self._refuse(400, "Content-Length is not a number")
            return None
        length = int(text)
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
            text = self.headers.get("Content-Length", "0")
            length = int(text) if text.isdigit() else 0
            if length > MAX_REQUEST_BYTES:
                self.close_connection = True
            else:
                self.rfile.read(length)
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
