"""The log's side of c2sp.org/tlog-witness: configured witnesses and one ``add-checkpoint``
exchange with each.

>>> from audit_core._cosign import Cosigner
>>> key = Cosigner.generate("witness.example/w1").key
>>> [w.url for w in parse_witnesses([f"http://127.0.0.1:7380 {key}"])]
['http://127.0.0.1:7380']

A witness is configured as ``URL VKEY``: the submission prefix (``http://`` or ``https://``;
the request goes to ``<prefix>/add-checkpoint``) and its c2sp.org/tlog-cosignature verifier
key (signature type 0x04). :class:`WitnessClient` keeps one keep-alive connection per witness
(reconnected after any failure) and bounds every exchange (connect, send, headers and body
together) by one deadline: a socket timeout bounds each read only, so a witness dripping
its answer a byte at a time would otherwise hold the anchor's thread for ever. :func:`ask` is the
protocol: send the checkpoint with the consistency proof from the size the witness last
cosigned; on ``409 Conflict`` the witness reports its size (``text/x.tlog.size``) and the log
retries once from there (the witness restarted from a backup, or another process of this
log asked it first); any returned cosignature line is verified before it is kept.

:func:`latest` asks a witness which checkpoint of an origin it cosigned last
(``GET <prefix>/checkpoint?origin=<percent-encoded origin>``: 200 with the checkpoint note
and its cosignature, 404 when it holds none), so that ``verify`` need not trust the ledger to
say what was witnessed.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from audit_core._cosign import WitnessKey, add_cosignatures, parse_cosignature, witnessed
from audit_core._witness_wire import ADD_CHECKPOINT, encode_add_checkpoint, parse_size_body
from audit_core.errors import ConfigError, SignatureError, WitnessError

__all__ = [
    "Conflict",
    "Cosigned",
    "WitnessClient",
    "WitnessEndpoint",
    "ask",
    "latest",
    "parse_witnesses",
]

logger = logging.getLogger("workflow_audit")
#: A 200 answer holds a few cosignature lines; anything far larger is not a witness.
MAX_ANSWER_BYTES = 64 * 1024
#: The path of a witness's latest cosigned checkpoint of one origin (``?origin=…``).
LATEST_CHECKPOINT = "checkpoint"


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """One configured witness: its submission prefix and its cosignature verifier key."""

    url: str  # submission prefix, e.g. "http://127.0.0.1:7380"
    key: WitnessKey

    def describe(self) -> str:
        """``name (keyid) at URL``, how messages name a witness."""
        return f"witness {self.key.describe()} at {self.url}"


def _endpoint(spec: str) -> WitnessEndpoint:
    parts = spec.split()
    if len(parts) != 2:
        shown = "(not shown: it holds a private key)" if "PRIVATE+KEY" in spec else repr(spec)
        raise ConfigError(
            f"a witness is 'URL VKEY' (its submission URL and its 0x04 verifier key), not "
            f"{shown}; `workflow-audit witness keygen` prints the key"
        )
    url, vkey = parts
    try:
        split = urllib.parse.urlsplit(url)
        split.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ConfigError(f"witness URL {url!r} is malformed: {exc}") from exc
    if split.scheme.lower() not in ("http", "https") or not split.hostname:
        raise ConfigError(
            f"witness URL {url!r} is not http:// or https:// with a host "
            "(c2sp.org/tlog-witness is an HTTP protocol)"
        )
    if split.query or split.fragment:
        raise ConfigError(f"witness URL {url!r} is a submission prefix: no ?query or #fragment")
    try:
        key = WitnessKey.parse(vkey)
    except SignatureError as exc:
        raise ConfigError(f"witness {url}: {exc}") from exc
    return WitnessEndpoint(url.rstrip("/"), key)


def parse_witnesses(specs: Sequence[str]) -> list[WitnessEndpoint]:
    """The witnesses ``specs`` name, each ``"URL VKEY"``; :class:`ConfigError` on a malformed
    one or on one key given twice (a quorum counts distinct witnesses)."""
    found = [_endpoint(spec) for spec in specs if spec.strip()]
    seen: set[tuple[str, bytes]] = set()
    for w in found:
        ident = (w.key.name, w.key.key_id)
        if ident in seen:
            raise ConfigError(f"witness key {w.key.describe()} is configured twice")
        seen.add(ident)
    return found


@dataclass(frozen=True, slots=True)
class Answer:
    """A witness's HTTP answer."""

    status: int
    body: bytes
    content_type: str


class WitnessClient:
    """One keep-alive HTTP connection to one witness; every exchange bounded by
    ``timeout_s``. Not thread-safe: one per thread (the anchor's own)."""

    def __init__(self, endpoint: WitnessEndpoint, *, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        parts = urllib.parse.urlsplit(endpoint.url)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/") + "/"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self, deadline: float) -> tuple[http.client.HTTPConnection, bool]:
        """The open connection (and True), or a new one (and False)."""
        if self._conn is not None:
            return self._conn, True
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=max(deadline - time.monotonic(), 0.001))
        self._conn = conn  # before connect: the watchdog can shut its socket down
        conn.connect()
        # http.client sends the headers and the body in two writes: without TCP_NODELAY the
        # body waits for the ACK of the headers, which the witness delays (~40 ms a request).
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _send(
        self, method: str, path: str, body: bytes | None, deadline: float
    ) -> http.client.HTTPResponse:
        conn, reused = self._connection(deadline)
        headers = {"Content-Type": "text/plain"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            # the witness closed the idle keep-alive connection: once more on a new one
            self.close()
            conn, _ = self._connection(deadline)
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse()

    def _exchange(self, method: str, path: str, body: bytes | None) -> Answer:
        deadline = time.monotonic() + self.timeout_s
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(self.timeout_s)
        # The watchdog ends the exchange at the deadline whatever the witness does: shutting
        # the socket down wakes a read that a byte every few seconds would keep alive.
        expired = threading.Event()
        watchdog = threading.Timer(self.timeout_s, self._expire, args=(expired,))
        watchdog.daemon = True
        watchdog.start()
        try:
            response = self._send(method, path, body, deadline)
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise TimeoutError(f"no complete answer within {self.timeout_s:g} s") from exc
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {self.timeout_s:g} s")
        if len(data) > MAX_ANSWER_BYTES or response.will_close:
            self.close()
        return Answer(response.status, data, response.getheader("Content-Type", "") or "")

    def _expire(self, expired: threading.Event) -> None:
        expired.set()
        conn = self._conn
        sock = None if conn is None else conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: the exchange is over
                sock.shutdown(socket.SHUT_RDWR)

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        """One exchange (``path`` below the prefix), all of it within ``timeout_s``;
        :class:`WitnessError` (status None) when the witness cannot be reached or its answer
        cannot be read in time (the connection is dropped)."""
        try:
            answer = self._exchange(method, self._prefix + path, body)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            # http.client puts the witness's bytes in its messages (a bad status line)
            said = _text(str(exc).encode("utf-8", "replace")) or type(exc).__name__
            raise WitnessError(f"{self.endpoint.describe()}: {said}") from exc
        if len(answer.body) > MAX_ANSWER_BYTES:
            raise WitnessError(f"{self.endpoint.describe()}: answer over {MAX_ANSWER_BYTES} bytes")
        return answer

    def post(self, body: bytes) -> Answer:
        """POST an add-checkpoint request (c2sp.org/tlog-witness); as :meth:`request`."""
        return self.request("POST", ADD_CHECKPOINT, body)

    def close(self) -> None:
        """Drop the connection (the next exchange reconnects); idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@dataclass(frozen=True, slots=True)
class Cosigned:
    """The witness cosigned: its verified lines (by its key) over the checkpoint body."""

    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """The witness holds a checkpoint this log cannot extend: ``size`` is its latest."""

    size: int
    reason: str


def _text(body: bytes) -> str:
    """The witness's words, untrusted: one bounded, escaped line in messages and logs (no
    NUL, CR or escape sequence reaches a log verbatim)."""
    shown = repr(body[:200].decode("utf-8", "replace"))[1:-1]
    return shown + ("…" if len(body) > 200 else "")


def _verified(endpoint: WitnessEndpoint, note: str, body: bytes) -> Cosigned:
    """The cosignature lines of a 200 answer by ``endpoint``'s key that verify over
    ``note``'s body; lines by other keys are ignored; a bad line by its key is an error."""
    try:
        lines = [line for line in body.decode("utf-8").split("\n") if line]
    except UnicodeDecodeError as exc:
        raise WitnessError(f"{endpoint.describe()}: answer is not UTF-8") from exc
    ours = []
    for line in lines:
        try:
            cosig = parse_cosignature(line)
        except SignatureError:
            continue  # another signature type (the spec allows several lines): not ours
        if (cosig.name, cosig.key_id) == (endpoint.key.name, endpoint.key.key_id):
            ours.append(line)
    try:
        valid = witnessed(add_cosignatures(note, ours), [endpoint.key])
    except SignatureError as exc:
        raise WitnessError(f"{endpoint.describe()}: {exc}; nothing stored") from exc
    if not valid:
        raise WitnessError(
            f"{endpoint.describe()} answered 200 without a cosignature by its key; nothing stored"
        )
    return Cosigned(tuple(c.line for _, c in valid))


def ask(
    client: WitnessClient,
    note: str,
    size: int,
    old_size: int,
    proof_from: Callable[[int], Sequence[bytes]],
) -> Cosigned | Conflict:
    """Ask the witness to cosign ``note`` (a signed checkpoint of tree ``size``) from
    ``old_size`` (the size it last cosigned, as far as the log knows); ``proof_from(old)`` is
    the consistency proof from ``old`` (empty for 0 or ``size``).

    On 409 the witness's size is in the body (c2sp.org/tlog-witness): at most ``size``, the
    request is sent once more from that size; beyond it (or a second 409, or a bad proof from
    the witness's own size) the witness holds a checkpoint this tree does not extend: a
    :class:`Conflict`. Raises :class:`WitnessError` for every other failure."""
    old = old_size
    for attempt in (1, 2):
        answer = client.post(encode_add_checkpoint(old, proof_from(old), note))
        if answer.status == 200:
            return _verified(client.endpoint, note, answer.body)
        if answer.status == 409:
            try:
                theirs = parse_size_body(answer.body)
            except WitnessError as exc:
                raise WitnessError(
                    f"{client.endpoint.describe()}: 409 with a malformed size: {exc}", status=409
                ) from exc
            if theirs > size:
                return Conflict(theirs, f"it has cosigned size {theirs}, beyond this tree")
            if attempt == 2:
                if theirs != old:  # it moved in between (another process asked): next round
                    raise WitnessError(
                        f"{client.endpoint.describe()}: its size changed from {old} to {theirs} "
                        "during the exchange",
                        status=409,
                        size=theirs,
                    )
                return Conflict(theirs, f"it holds a different tree at size {theirs}")
            old = theirs
            continue
        if answer.status == 422 and attempt == 2:
            # our proof from the size the witness reported does not lead to its root
            return Conflict(old, f"its checkpoint at size {old} is not in this tree")
        raise WitnessError(
            f"{client.endpoint.describe()} answered {answer.status}: {_text(answer.body)}",
            status=answer.status,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def latest(endpoint: WitnessEndpoint, origin: str, timeout_s: float) -> str | None:
    """The latest checkpoint of ``origin`` that ``endpoint`` cosigned, as the signed note it
    serves (``GET <prefix>/checkpoint?origin=<percent-encoded origin>``: the checkpoint
    body, the log's signature lines, the witness's cosignature line); None when it answers
    404 (it holds none for that origin). :class:`WitnessError` for anything else, the whole
    exchange within ``timeout_s``. The caller verifies the cosignature."""
    client = WitnessClient(endpoint, timeout_s=timeout_s)
    query = urllib.parse.urlencode({"origin": origin}, quote_via=urllib.parse.quote)
    try:
        answer = client.request("GET", f"{LATEST_CHECKPOINT}?{query}")
    finally:
        client.close()
    if answer.status == 404:
        return None
    if answer.status != 200:
        raise WitnessError(
            f"{endpoint.describe()} answered {answer.status} for its latest checkpoint of "
            f"{origin!r}: {_text(answer.body)}",
            status=answer.status,
        )
    try:
        return answer.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WitnessError(f"{endpoint.describe()}: its checkpoint is not UTF-8") from exc
