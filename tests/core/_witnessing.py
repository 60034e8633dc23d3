"""Witnesses on 127.0.0.1 for tests, anchoring a ledger through them, and the attacker of
issue 18: a writer who holds a SQLite ledger and its local key, rewrites the chain (cut,
edit, back-date), rebuilds its Merkle subtrees and re-signs checkpoints, so that
`verify --key` alone passes.

Nothing here mocks: each witness is a real HTTP server (``start_witness``) with its own
state file; the anchor is the real :class:`audit_core.anchor.Anchor`.
"""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import socket
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from audit_core import AuditConfig, canonical_bytes, leaf_hash
from audit_core._cosign import Cosigner, WitnessKey
from audit_core._note import Verifier, note_parts
from audit_core._record import StoredCosignature, genesis
from audit_core._witness_wire import encode_add_checkpoint
from audit_core.anchor import Anchor, AnchorReport
from audit_core.cli import main
from audit_core.ledgers._frontier import rebuild
from audit_core.witness import TrustedLogs, Witness, WitnessState, start_witness
from audit_core.witness.server import RunningWitness

__all__ = [
    "LocalWitness",
    "add_checkpoint",
    "anchor",
    "delete_cosignatures",
    "forge",
    "forge_origin",
    "free_port",
    "log_key",
    "serve_latest",
]


def log_key(ledger: Path) -> Verifier:
    """The ledger's local verifier key (written beside it by the trail)."""
    return Verifier.parse(ledger.with_name(ledger.name + ".key.pub").read_text())


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalWitness:
    """A witness process-in-a-thread trusting one log key; ``url`` even when down."""

    cosigner: Cosigner
    state: WitnessState
    url: str
    running: RunningWitness | None = None

    @classmethod
    def start(cls, where: Path, log: Verifier, name: str) -> LocalWitness:
        cosigner = Cosigner.generate(name)
        state = WitnessState.open(where / f"{name.replace('/', '_')}.state")
        witness = Witness(TrustedLogs.parse([str(log)]), cosigner, state)
        running = start_witness(witness)
        return cls(cosigner, state, running.url, running)

    @classmethod
    def down(cls, where: Path, name: str) -> LocalWitness:
        """A configured witness that does not answer (nothing listens on its port)."""
        state = WitnessState.open(where / f"{name.replace('/', '_')}.state")
        return cls(Cosigner.generate(name), state, f"http://127.0.0.1:{free_port()}")

    @property
    def key(self) -> WitnessKey:
        return self.cosigner.key

    @property
    def spec(self) -> str:
        """How a log is configured with it: ``URL VKEY``."""
        return f"{self.url} {self.key}"

    def close(self) -> None:
        if self.running is not None:
            self.running.close()
            self.running = None


def anchor(ledger: Path, witnesses: list[LocalWitness]) -> AnchorReport:
    """One anchoring round over ``ledger`` (sign what grew, ask every witness)."""
    config = AuditConfig(
        ledger_url=f"sqlite:///{ledger}",
        actor=("service", "tests"),
        witnesses=tuple(w.spec for w in witnesses),
        witness_timeout_s=5.0,
    )
    running = Anchor.from_config(config, name="test-anchor")
    try:
        return running.tick()
    finally:
        running.stop()


def add_checkpoint(url: str, old_size: int, proof: list[bytes], note: str) -> tuple[int, bytes]:
    """POST one c2sp.org/tlog-witness add-checkpoint request; (status, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(
            "POST", parts.path + "/add-checkpoint", encode_add_checkpoint(old_size, proof, note)
        )
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _tampering(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for (name,) in names:
        conn.execute(f'DROP TRIGGER "{name}"')
    return conn


def delete_cosignatures(path: Path) -> None:
    """The writer drops the append-only triggers and deletes every stored cosignature."""
    conn = _tampering(path)
    conn.execute("DELETE FROM cosignatures")
    conn.execute("COMMIT")
    conn.close()


def forge(
    path: Path,
    chain: str,
    *,
    keep: int | None = None,
    edit: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> int:
    """Rewrite ``chain`` as its key holder could: keep its first ``keep`` records, apply
    ``edit(seq, value)`` to each, re-link and re-hash every record, replace the stored
    records, Merkle subtrees and checkpoints, then sign a checkpoint with the local key
    (`workflow-audit checkpoint`). Cosignatures are left alone. Returns the new size."""
    conn = _tampering(path)
    rows = conn.execute(
        "SELECT seq, body FROM records WHERE chain = ? ORDER BY seq", (chain,)
    ).fetchall()
    rows = rows if keep is None else rows[:keep]
    prev = genesis(chain)
    forged: list[tuple[str, int, bytes, bytes]] = []
    for seq, body in rows:
        value = orjson.loads(body)
        if edit is not None:
            value = edit(seq, value)
        value["prev"] = prev
        new = canonical_bytes(value)
        digest = leaf_hash(new)
        forged.append((chain, seq, digest, new))
        prev = digest.hex()
    for table in ("records", "checkpoints", "merkle_subtrees"):
        conn.execute(f"DELETE FROM {table} WHERE chain = ?", (chain,))  # noqa: S608
    conn.executemany("INSERT INTO records (chain, seq, hash, body) VALUES (?, ?, ?, ?)", forged)
    _, subtrees = rebuild(chain, len(forged), (digest for _, _, digest, _ in forged))
    conn.executemany("INSERT INTO merkle_subtrees (chain, last, hashes) VALUES (?, ?, ?)", subtrees)
    conn.execute("COMMIT")
    conn.close()
    assert 0 == main(["checkpoint", "--ledger", f"sqlite:///{path}", "--chain", chain])
    return len(forged)


def forge_origin(path: Path, chain: str, witness: LocalWitness) -> tuple[str, str]:
    """The writer signs, with the local key, a checkpoint of a FRESH origin
    ``<prefix>/fresh/<chain>`` at the chain's current (rewritten) head, has ``witness``
    cosign it from size 0 (a new origin to it), and stores its cosignature as a row of
    ``chain``. Returns the fresh origin and its note with the witness's cosignature."""
    from audit_core._note import sign_note
    from audit_core.checkpoint import Checkpoint, load_signer
    from audit_core.ledgers.sqlite import SqliteLedger
    from audit_core.verify import verify_chain

    db = SqliteLedger(path)
    try:
        head = verify_chain(db, chain)
        stored = db.latest_checkpoint(chain)
        assert stored is not None
        prefix = Checkpoint.parse(note_parts(stored.note)[0]).origin.rsplit("/", 1)[0]
        signer = load_signer(str(path.with_name(path.name + ".key")), default_path=None, name="x")
        origin = f"{prefix}/fresh/{chain}"
        body = Checkpoint(origin, head.size, bytes.fromhex(head.root)).text()
        note = sign_note(body, [signer])
        status, answer = add_checkpoint(witness.url, 0, [], note)
        assert 200 == status, answer
        created = dt.datetime.now(dt.timezone.utc).isoformat()
        lines = [line for line in answer.decode().splitlines() if line]
        for line in lines:
            db.add_cosignature(StoredCosignature(chain, head.size, body, line, created))
        return origin, note + "".join(f"{line}\n" for line in lines)
    finally:
        db.close()


@contextmanager
def serve_latest(notes: Mapping[str, str]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering ``GET /checkpoint?origin=O`` as a witness
    does (200 with ``notes[O]``, 404 for an origin it holds none of); yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            origin = urllib.parse.parse_qs(parts.query).get("origin", [""])[0]
            note = notes.get(origin) if parts.path == "/checkpoint" else None
            data = b"no checkpoint of that origin\n" if note is None else note.encode()
            self.send_response(404 if note is None else 200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
