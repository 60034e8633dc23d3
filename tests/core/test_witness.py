"""The witness (c2sp.org/tlog-witness ``add-checkpoint``): its decisions and status codes, its
state (atomic, durable across kill -9), its HTTP server and its CLI as a real process."""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail, Signer, leaf_hash
from audit_core._cosign import Cosigner, parse_cosignature, verify_cosignature, witnessed
from audit_core._merkle import consistency_proof, root_of
from audit_core._note import sign_note
from audit_core._witness_wire import (
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    encode_add_checkpoint,
    parse_size_body,
)
from audit_core.checkpoint import Checkpoint
from audit_core.proofs import prove_consistency
from audit_core.witness import Reply, TrustedLogs, Witness, WitnessState, start_witness
from audit_core.witness.logs import LogRule, read_logs_file

ORIGIN = "ci.example/audit/default"
#: Safety net for waits on a child process's events (never a timing assertion).
WAIT_S = 60.0


@dataclass
class Log:
    """A log for the tests: leaf hashes, its key, one origin."""

    signer: Signer
    origin: str = ORIGIN
    leaves: list[bytes] = field(default_factory=list)

    def grow(self, n: int) -> int:
        start = len(self.leaves)
        self.leaves += [leaf_hash(f"{self.origin} {i}".encode()) for i in range(start, start + n)]
        return len(self.leaves)

    def node(self, level: int, index: int) -> bytes:
        return root_of(self.leaves[index << level : (index + 1) << level])

    def note(self, size: int, extra: str = "") -> str:
        text = Checkpoint(self.origin, size, root_of(self.leaves[:size])).text() + extra
        return sign_note(text, [self.signer])

    def proof(self, old: int, new: int) -> list[bytes]:
        return [] if old == 0 else consistency_proof(self.node, old, new)

    def request(self, old: int, new: int) -> bytes:
        return encode_add_checkpoint(old, self.proof(old, new), self.note(new))


@pytest.fixture
def log() -> Log:
    return Log(Signer.generate("ci.example/audit"))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[WitnessState]:
    with WitnessState.open(tmp_path / "state" / "witness.db") as s:
        yield s


@pytest.fixture
def w1() -> Cosigner:
    return Cosigner.generate("witness.example/w1")


@pytest.fixture
def witness(log: Log, w1: Cosigner, state: WitnessState) -> Witness:
    return Witness(TrustedLogs.parse([str(log.signer.verifier)]), w1, state, clock=lambda: 1e9)


def cosigned(reply: Reply, w1: Cosigner, note: str) -> int:
    """The timestamp of the witness's cosignature in a 200 reply, verified on the note."""
    assert (200, "text/plain; charset=utf-8") == (reply.status, reply.content_type)
    (line,) = reply.body.decode().splitlines()
    assert reply.body.endswith(b"\n")
    body = note[: note.rindex("\n\n") + 1]
    cosig = parse_cosignature(line)
    assert verify_cosignature(w1.key, body, cosig)
    ((key, found),) = witnessed(note + line + "\n", [w1.key])
    assert key == w1.key
    return found.timestamp


def _send(
    witness: Witness, barrier: threading.Barrier, replies: dict[int, Reply], size: int, body: bytes
) -> None:
    barrier.wait()
    replies[size] = witness.add_checkpoint(body)


class TestDecisions:
    def test_first_checkpoint_then_consistent_growth(
        self, witness: Witness, log: Log, w1: Cosigner, state: WitnessState
    ) -> None:
        """Old 0 is accepted first; then growth with a real consistency proof; both cosigned."""
        log.grow(5)
        assert 1_000_000_000 == cosigned(witness.add_checkpoint(log.request(0, 5)), w1, log.note(5))
        log.grow(8)
        assert 1_000_000_000 == cosigned(
            witness.add_checkpoint(log.request(5, 13)), w1, log.note(13)
        )
        latest = state.latest(ORIGIN)
        assert latest is not None
        assert (13, root_of(log.leaves)) == (latest.size, latest.root)

    def test_extension_lines_are_cosigned(self, witness: Witness, log: Log, w1: Cosigner) -> None:
        """A checkpoint with extension lines is cosigned over its whole text."""
        log.grow(3)
        note = log.note(3, extra="ext line\n")
        reply = witness.add_checkpoint(encode_add_checkpoint(0, [], note))
        cosigned(reply, w1, note)

    def test_rollback_is_refused_with_the_size(self, witness: Witness, log: Log) -> None:
        """A stale old size gets 409, body '<latest size>\\n', Content-Type text/x.tlog.size."""
        log.grow(10)
        assert 200 == witness.add_checkpoint(log.request(0, 10)).status
        stale = witness.add_checkpoint(log.request(0, 6))
        assert (409, b"10\n", SIZE_CONTENT_TYPE) == (stale.status, stale.body, stale.content_type)
        assert 10 == parse_size_body(stale.body)
        again = witness.add_checkpoint(log.request(0, 10))  # the very request acked before
        assert (409, b"10\n") == (again.status, again.body)

    def test_fork_at_same_size_is_refused(
        self, witness: Witness, log: Log, state: WitnessState
    ) -> None:
        """Old size = size = the cosigned size with another root: 409, the state unchanged."""
        log.grow(4)
        assert 200 == witness.add_checkpoint(log.request(0, 4)).status
        fork = Log(log.signer)
        fork.grow(4)
        fork.leaves[2] = leaf_hash(b"rewritten")
        reply = witness.add_checkpoint(encode_add_checkpoint(4, [], fork.note(4)))
        assert (409, b"4\n") == (reply.status, reply.body)
        assert [409] == [r.status for r in state.refusals()]
        latest = state.latest(ORIGIN)
        assert latest is not None
        assert root_of(log.leaves) == latest.root

    def test_same_checkpoint_again_is_cosigned(self, witness: Witness, log: Log) -> None:
        """Old size = size with the same root: cosigned again (nothing to refuse)."""
        log.grow(4)
        assert 200 == witness.add_checkpoint(log.request(0, 4)).status
        assert 200 == witness.add_checkpoint(encode_add_checkpoint(4, [], log.note(4))).status

    def test_bad_proof_is_422(self, witness: Witness, log: Log, state: WitnessState) -> None:
        """A consistency proof that does not verify gets 422 and is kept as evidence."""
        log.grow(6)
        assert 200 == witness.add_checkpoint(log.request(0, 6)).status
        log.grow(3)
        proof = log.proof(6, 9)
        proof[0] = bytes(32)
        reply = witness.add_checkpoint(encode_add_checkpoint(6, proof, log.note(9)))
        assert 422 == reply.status
        (kept,) = state.refusals()
        assert (ORIGIN, 422, 6) == (kept.origin, kept.status, kept.old_size)
        assert 6 == state.latest(ORIGIN).size  # type: ignore[union-attr]

    def test_rewritten_history_is_422(self, witness: Witness, log: Log) -> None:
        """A rewritten log grown past the cosigned size proves nothing consistent: 422."""
        log.grow(6)
        assert 200 == witness.add_checkpoint(log.request(0, 6)).status
        rewritten = Log(log.signer, leaves=list(log.leaves))
        rewritten.leaves[0] = leaf_hash(b"rewritten")
        rewritten.grow(4)
        assert 422 == witness.add_checkpoint(rewritten.request(6, 10)).status

    def test_unknown_origin_is_404(self, witness: Witness, log: Log) -> None:
        """An origin no configured log key covers: 404."""
        other = Log(log.signer, origin="elsewhere.example/log")
        other.grow(2)
        assert 404 == witness.add_checkpoint(other.request(0, 2)).status

    def test_bad_log_signature_is_403(self, witness: Witness, log: Log) -> None:
        """A trusted key's signature that does not verify: 403."""
        log.grow(2)
        note = log.note(2)
        text, line = note[: note.rindex("\n\n") + 1], note.splitlines()[-1]
        prefix, b64 = line.rsplit(" ", 1)
        raw = bytearray(base64.b64decode(b64))
        raw[-1] ^= 1
        bad = f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"
        assert 403 == witness.add_checkpoint(encode_add_checkpoint(0, [], bad)).status

    def test_signature_by_unknown_key_only_is_403(self, witness: Witness, log: Log) -> None:
        """A checkpoint signed only by a key of the same name the witness does not trust: 403."""
        impostor = Log(Signer.generate("ci.example/audit"))
        impostor.grow(2)
        assert 403 == witness.add_checkpoint(impostor.request(0, 2)).status

    def test_old_larger_than_size_is_400(self, witness: Witness, log: Log) -> None:
        """Old size above the checkpoint's size: 400."""
        log.grow(3)
        assert 400 == witness.add_checkpoint(encode_add_checkpoint(5, [], log.note(3))).status

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"old 1\n",
            b"old 01\n\nx\n",
            b"new 0\n\nx\n",
            b"old 0\nnot base64!\n\nx\n",
            b"old 0\n\nno signatures\n",
            b"old 0\n\norigin\nnot a size\nAAAA\n\n\xe2\x80\x94 k AAAAAAA=\n",
            b"\xff\xfe",
        ],
    )
    def test_malformed_body_is_400(self, witness: Witness, body: bytes) -> None:
        """A body that is not old line, proof lines, blank line, signed checkpoint: 400."""
        assert 400 == witness.add_checkpoint(body).status

    def test_spec_race_never_rolls_back(self, witness: Witness, log: Log) -> None:
        """Requests for sizes N and N+K sent at once: the stored size never goes back."""
        log.grow(2)
        assert 200 == witness.add_checkpoint(log.request(0, 2)).status
        for _ in range(30):
            base = len(log.leaves)
            log.grow(3)
            small = log.request(base, base + 1)
            big = log.request(base, base + 3)
            barrier = threading.Barrier(2)
            replies: dict[int, Reply] = {}
            threads = [
                threading.Thread(target=_send, args=(witness, barrier, replies, size, body))
                for size, body in ((base + 1, small), (base + 3, big))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            won = [size for size, r in replies.items() if r.status == 200]
            assert 1 == len(won)
            assert won[0] == witness.state.latest(ORIGIN).size  # type: ignore[union-attr]
            latest = won[0]
            if latest != len(log.leaves):  # catch up, as a log would on its 409
                assert 200 == witness.add_checkpoint(log.request(latest, len(log.leaves))).status

    def test_real_ledger_checkpoints_are_witnessed(
        self, tmp_path: Path, w1: Cosigner, state: WitnessState
    ) -> None:
        """Checkpoints of a real SQLite ledger (origin <key name>/<chain>) and its proofs."""
        signer = Signer.generate("ci.example/audit")
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}", signing_key=str(signer))
        witness = Witness(TrustedLogs.parse([str(signer.verifier)]), w1, state)
        with AuditTrail(config) as trail:
            old: Checkpoint | None = None
            for n in (3, 10, 1):
                for i in range(n):
                    trail.record("task.started", {"i": i})
                stored = trail.checkpoint()
                assert stored is not None
                new = Checkpoint.parse(stored.note[: stored.note.rindex("\n\n") + 1])
                proof = [] if old is None else prove_consistency(trail.ledger, "default", old, new)
                body = encode_add_checkpoint(0 if old is None else old.size, proof, stored.note)
                cosigned(witness.add_checkpoint(body), w1, stored.note)
                old = new
        assert 14 == state.latest("ci.example/audit/default").size  # type: ignore[union-attr]


class TestLogRules:
    def test_key_covers_its_name_and_below(self, log: Log) -> None:
        """VKEY trusts origin NAME and NAME/…, not a sibling that only shares the prefix."""
        logs = TrustedLogs.parse([str(log.signer.verifier)])
        assert [log.signer.verifier] == logs.verifiers("ci.example/audit")
        assert [log.signer.verifier] == logs.verifiers("ci.example/audit/x/y")
        assert [] == logs.verifiers("ci.example/auditor")

    def test_exact_and_prefix_entries(self, log: Log) -> None:
        """ORIGIN=VKEY trusts that origin only; PREFIX/*=VKEY every origin under PREFIX/."""
        key = str(log.signer.verifier)
        logs = TrustedLogs.parse([f"prod.example/one={key}", f"team.example/*={key}"])
        assert [] == logs.verifiers("prod.example/one/x")
        assert 1 == len(logs.verifiers("prod.example/one"))
        assert 1 == len(logs.verifiers("team.example/anything"))
        assert [] == logs.verifiers("team.example")

    def test_logs_file_entries_and_comments(self, log: Log, tmp_path: Path) -> None:
        """A logs file: one entry a line, blank lines and # comment lines skipped."""
        path = tmp_path / "logs"
        key = str(log.signer.verifier)
        path.write_text(f"# our CI\n\n{key}\n  # another\nexact.example/x={key}\n")
        logs = TrustedLogs.parse(read_logs_file(path))
        assert 1 == logs.count
        assert 1 == len(logs.verifiers("exact.example/x"))
        assert 1 == len(logs.verifiers(ORIGIN))

    def test_private_key_is_refused_without_echo(self, log: Log) -> None:
        """A private key given as --log is refused and never echoed."""
        from audit_core.errors import ConfigError

        with pytest.raises(ConfigError) as caught:
            LogRule.parse(str(log.signer))
        assert str(log.signer) not in str(caught.value)
        assert base64.b64encode(log.signer.seed).decode()[:20] not in str(caught.value)


# -- HTTP ----------------------------------------------------------------------------------


def post(
    conn: http.client.HTTPConnection, body: bytes, path: str = "/add-checkpoint"
) -> tuple[int, str, bytes]:
    conn.request("POST", path, body=body)
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type", ""), response.read()


class TestHttp:
    def test_keep_alive_statuses_and_health(self, witness: Witness, log: Log) -> None:
        """One keep-alive connection: 200, 409 (size body and type), 404 path, health page."""
        running = start_witness(witness, prefix="w1")
        try:
            port = running.server.server_address[1]
            conn = http.client.HTTPConnection("127.0.0.1", port)
            log.grow(4)
            status, ctype, body = post(conn, log.request(0, 4), "/w1/add-checkpoint")
            assert (200, "text/plain; charset=utf-8") == (status, ctype)
            assert body.startswith("\u2014 witness.example/w1 ".encode())
            assert (409, SIZE_CONTENT_TYPE, b"4\n") == post(conn, log.request(0, 4))
            assert 404 == post(conn, b"x", "/elsewhere")[0]
            conn.request("GET", "/health")
            page = conn.getresponse().read().decode()
            assert str(witness.cosigner.key) in page
            assert "PRIVATE" not in page
            conn.close()
        finally:
            running.close()

    def test_latest_checkpoint_is_answered_with_its_cosignature(
        self, witness: Witness, log: Log, w1: Cosigner
    ) -> None:
        """GET <prefix>/checkpoint?origin= answers the latest cosigned checkpoint with the
        very cosignature line add-checkpoint returned; 404 unknown or never cosigned; 400
        without one origin."""
        running = start_witness(witness, prefix="w1")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", running.server.server_address[1])
            query = "/w1/checkpoint?origin=" + ORIGIN.replace("/", "%2F")
            conn.request("GET", query)
            first = conn.getresponse()
            first.read()
            assert 404 == first.status  # trusted origin, nothing cosigned yet

            log.grow(6)
            line = post(conn, log.request(0, 6), "/w1/add-checkpoint")[2].decode()
            conn.request("GET", query)
            answer = conn.getresponse()
            note = answer.read().decode()
            assert 200 == answer.status
            assert note == log.note(6) + line
            ((key, cosig),) = witnessed(note, [w1.key])
            assert (w1.key, 1_000_000_000) == (key, cosig.timestamp)
            for bad in (
                "/w1/checkpoint?origin=elsewhere/x",
                "/w1/checkpoint",
                "/w1/checkpoint?origin=%ff",
            ):
                conn.request("GET", bad)
                reply = conn.getresponse()
                reply.read()
                assert reply.status in (400, 404)
            conn.close()
        finally:
            running.close()

    def test_oversized_body_is_413(self, witness: Witness) -> None:
        """A Content-Length over MAX_REQUEST_BYTES is refused before the body is read."""
        running = start_witness(witness)
        try:
            with socket.create_connection(("127.0.0.1", running.server.server_address[1])) as s:
                s.sendall(
                    b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n"
                    + f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n".encode()
                )
                answer = s.makefile("rb").readline()
            assert answer.startswith(b"HTTP/1.1 413 ")
        finally:
            running.close()

    def test_slow_client_is_dropped_and_others_served(self, witness: Witness, log: Log) -> None:
        """A client that stops mid-body is disconnected after the socket timeout; the
        witness keeps answering others, and nothing was stored for the cut request."""
        running = start_witness(witness, socket_timeout_s=0.2)
        try:
            port = running.server.server_address[1]
            log.grow(3)
            body = log.request(0, 3)
            with socket.create_connection(("127.0.0.1", port)) as slow:
                head = f"POST /add-checkpoint HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
                slow.sendall(head.encode() + body[:10])
                assert b"" == slow.recv(100)  # the server closed it, without an answer
            assert witness.state.latest(ORIGIN) is None
            conn = http.client.HTTPConnection("127.0.0.1", port)
            assert 200 == post(conn, body)[0]
            conn.close()
        finally:
            running.close()


# -- a real process --------------------------------------------------------------------------


@dataclass
class Process:
    """``workflow-audit witness serve`` as a child process, its stderr drained by a thread."""

    proc: subprocess.Popen[bytes]
    url: str
    lines: list[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


def serve(tmp_path: Path, log: Log, key: Path) -> Process:
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit_core.cli", "witness", "serve", "--key", str(key),
         "--state", str(tmp_path / "state.db"), "--log", str(log.signer.verifier),
         "--port", "0"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()
    url: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url.append(found.group(1))
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(WAIT_S)
    assert url, f"the witness did not start: {''.join(lines)}"
    return Process(proc, url[0], lines)


@pytest.fixture
def key_file(tmp_path: Path, cli: object) -> Path:
    path = tmp_path / "w1.key"
    assert 0 == cli("witness", "keygen", "witness.example/w1", "--out", path).code  # type: ignore[operator]
    return path


class TestProcess:
    def test_kill_9_mid_request_keeps_state(self, tmp_path: Path, log: Log, key_file: Path) -> None:
        """kill -9 during a stream of requests and a half-sent body: restarted on the same
        state file, the last acknowledged size (or the one in flight) is kept; an old
        request gets 409 with that size; SIGTERM then exits 0."""
        first = serve(tmp_path, log, key_file)
        acked, in_flight = 0, 0
        enough = threading.Event()

        def client() -> None:
            nonlocal acked, in_flight
            conn = http.client.HTTPConnection("127.0.0.1", first.port)
            try:
                while True:
                    old = acked
                    in_flight = log.grow(2)
                    status, _, _ = post(conn, log.request(old, in_flight))
                    assert 200 == status
                    acked = in_flight
                    if acked >= 40:
                        enough.set()
            except (OSError, http.client.HTTPException):
                enough.set()  # the witness was killed

        thread = threading.Thread(target=client)
        thread.start()
        enough.wait(WAIT_S)
        half = socket.create_connection(("127.0.0.1", first.port))
        body = log.request(0, 2)
        head = f"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        half.sendall(head.encode() + body[: len(body) // 2])
        os.kill(first.proc.pid, signal.SIGKILL)
        assert -signal.SIGKILL == first.proc.wait(WAIT_S)
        thread.join(WAIT_S)
        half.close()
        assert acked >= 40

        second = serve(tmp_path, log, key_file)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", second.port)
            status, ctype, size_body = post(conn, log.request(0, 2))
            kept = parse_size_body(size_body)
            assert (409, SIZE_CONTENT_TYPE) == (status, ctype)
            assert kept in (acked, in_flight)
            log.grow(1)
            assert 200 == post(conn, log.request(kept, len(log.leaves)))[0]
            conn.close()
        finally:
            second.proc.send_signal(signal.SIGTERM)
            assert 0 == second.proc.wait(WAIT_S)
        said = "".join(first.lines + second.lines)
        assert f"add-checkpoint 409 origin='{ORIGIN}' old=0 size=2" in said
        assert "PRIVATE+KEY" not in said
        assert key_file.read_text().strip().split("+", 4)[4] not in said

    def test_status_and_key_errors(
        self, tmp_path: Path, log: Log, key_file: Path, cli: object
    ) -> None:
        """status lists origins; a wrong or unreadable key file exits 2 without key material."""
        run = cli  # type: ignore[assignment]
        assert 0o600 == stat.S_IMODE(key_file.stat().st_mode)
        pub = key_file.with_name("w1.key.pub").read_text().strip()
        assert pub.startswith("witness.example/w1+")
        assert 2 == run("witness", "keygen", "witness.example/w1", "--out", key_file).code
        log_key = tmp_path / "log.key"
        log_key.write_text(str(log.signer) + "\n")
        log_key.chmod(0o600)
        wrong = run("witness", "serve", "--key", log_key, "--state", tmp_path / "s.db",
                    "--log", str(log.signer.verifier))  # fmt: skip
        assert 2 == wrong.code
        assert "not a witness private key" in wrong.err
        assert str(log.signer).split("+")[-1] not in wrong.err + wrong.out
        missing = run("witness", "serve", "--key", tmp_path / "nope", "--state", tmp_path / "s.db",
                      "--log", str(log.signer.verifier))  # fmt: skip
        assert 2 == missing.code
        assert 2 == run("witness", "status", "--state", tmp_path / "none.db").code
        with WitnessState.open(tmp_path / "s2.db") as state:
            witness = Witness(
                TrustedLogs.parse([str(log.signer.verifier)]),
                Cosigner.parse(key_file.read_text()),
                state,
            )
            log.grow(3)
            witness.add_checkpoint(log.request(0, 3))
        shown = run("witness", "status", "--state", tmp_path / "s2.db")
        assert 0 == shown.code
        assert f"{ORIGIN}\tsize 3\troot {root_of(log.leaves).hex()}" in shown.out
        assert 0o600 == stat.S_IMODE((tmp_path / "s2.db").stat().st_mode)


# -- the reviewer's defects (issue 18, r1) ---------------------------------------------------


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection, half-close it, and read every answer till close."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class TestReview:
    @pytest.mark.parametrize(
        ("first", "second"),
        [
            ("{a}", "{b}"),  # log.example/* and log.example/a: an exact origin under a prefix
            ("same.example/x={a}", "same.example/x={b}"),  # two equal exact origins
            ("p.example/*={a}", "p.example/q/*={b}"),  # one prefix under another
        ],
    )
    def test_overlapping_rules_of_different_keys_are_refused(self, first: str, second: str) -> None:
        """Rules of differently named keys that can match one origin: ConfigError naming both."""
        from audit_core.errors import ConfigError

        a = str(Signer.generate("log.example").verifier)
        b = str(Signer.generate("log.example/a").verifier)
        with pytest.raises(ConfigError, match="overlap") as caught:
            TrustedLogs.parse([first.format(a=a, b=b), second.format(a=a, b=b)])
        assert "'log.example'" in str(caught.value)
        assert "'log.example/a'" in str(caught.value)

    def test_rotated_keys_of_one_name_may_share_origins(self) -> None:
        """Two keys with the same name (a rotated log key) may cover the same origins."""
        old, new = (Signer.generate("log.example").verifier for _ in range(2))
        logs = TrustedLogs.parse([str(old), str(new), f"x.example/*={new}"])
        assert {old, new} == set(logs.verifiers("log.example/a"))
        assert 1 == len(TrustedLogs.parse([f"o.example={old}", f"p.example={new}"]).rules) - 1

    def test_serve_refuses_overlapping_rules(
        self, tmp_path: Path, key_file: Path, cli: object
    ) -> None:
        """`witness serve` with overlapping --log rules exits 2 before listening."""
        a, b = (str(Signer.generate(n).verifier) for n in ("log.example", "log.example/a"))
        run = cli("witness", "serve", "--key", key_file, "--state", tmp_path / "s.db",  # type: ignore[operator]
                  "--log", a, "--log", b, "--port", "0")  # fmt: skip
        assert (2, True) == (run.code, "overlap" in run.err)

    def test_key_literals_and_open_key_files_are_refused_unshown(
        self, tmp_path: Path, log: Log, key_file: Path, cli: object
    ) -> None:
        """A key given as --key/--witness-key (even after a space) or a key file readable by
        others: exit 2, the key never printed, a chmod 600 hint for the file."""
        run = cli  # type: ignore[assignment]
        secret = " " + key_file.read_text().strip()
        seed = secret.split("+", 4)[4]
        cp = tmp_path / "cp.txt"
        log.grow(2)
        cp.write_text(log.note(2))
        pub = tmp_path / "log.pub"
        pub.write_text(str(log.signer.verifier) + "\n")
        for argv in (
            ("witness", "serve", "--key", secret, "--state", tmp_path / "s.db",
             "--log", str(log.signer.verifier)),
            ("cosign", cp, "--witness-key", secret, "--key", pub),
        ):  # fmt: skip
            done = run(*argv)
            assert (2, False) == (done.code, seed in done.err + done.out)
        key_file.chmod(0o644)
        loose = run("cosign", cp, "--witness-key", key_file, "--key", pub)
        assert (2, True) == (loose.code, "chmod 600" in loose.err)
        assert log.note(2) == cp.read_text()

    def test_cosign_signs_extension_lines_and_replaces_the_file(
        self, tmp_path: Path, log: Log, key_file: Path, cli: object
    ) -> None:
        """`cosign` signs the note's whole text (extension lines too), replaces the file
        (mode kept, no temporary left) and warns that it checks no consistency."""
        log.grow(2)
        cp, pub = tmp_path / "cp.txt", tmp_path / "log.pub"
        cp.write_text(log.note(2, extra="ext line\n"))
        cp.chmod(0o640)
        pub.write_text(str(log.signer.verifier) + "\n")
        done = cli("cosign", cp, "--witness-key", key_file, "--key", pub)  # type: ignore[operator]
        assert (0, True) == (done.code, "checks no consistency" in done.err)
        key = Cosigner.parse(key_file.read_text()).key
        assert [key] == [k for k, _ in witnessed(cp.read_text(), [key])]
        assert (0o640, ["cp.txt"]) == (
            stat.S_IMODE(cp.stat().st_mode),
            sorted(p.name for p in tmp_path.iterdir() if "cp.txt" in p.name),
        )

    def test_only_misbehaviour_is_kept_once_without_foreign_lines(
        self, witness: Witness, log: Log, state: WitnessState
    ) -> None:
        """Stale 409s, 400s and 403s are not kept; a bad proof is kept once per checkpoint
        however often replayed, with only the trusted log's signature line."""
        log.grow(6)
        assert 200 == witness.add_checkpoint(log.request(0, 6)).status
        assert 409 == witness.add_checkpoint(log.request(0, 3)).status
        assert 400 == witness.add_checkpoint(encode_add_checkpoint(9, [], log.note(6))).status
        log.grow(3)
        bad = [bytes(32)] * len(log.proof(6, 9))
        for i in range(3):
            junk = Signer.generate(f"junk.example/{i}")
            note = sign_note(log.note(9)[: log.note(9).index("\n\n") + 1], [log.signer, junk])
            assert 422 == witness.add_checkpoint(encode_add_checkpoint(6, bad, note)).status
        (kept,) = state.refusals()
        assert (422, log.note(9)) == (kept.status, kept.note)
        assert (1, 1) == (state.counts().origins, state.counts().refused)

    def test_sizes_beyond_2_63_are_400(self, witness: Witness, log: Log) -> None:
        """Old size or checkpoint size of 2^63 or more: 400 with a message, over HTTP too."""
        big = Checkpoint(ORIGIN, 2**63, bytes(32)).text()
        note = sign_note(big, [log.signer])
        running = start_witness(witness)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", running.server.server_address[1])
            for old in (0, 2**63):
                status, _, body = post(conn, encode_add_checkpoint(old, [], note))
                assert (400, b"sizes beyond 2^63-1 are not supported\n") == (status, body)
            conn.close()
        finally:
            running.close()

    def test_an_unexpected_error_is_a_500_answer(
        self, log: Log, w1: Cosigner, state: WitnessState
    ) -> None:
        """An exception inside the decision is answered 500 (not a dropped connection)."""

        def broken_clock() -> float:
            raise ZeroDivisionError("clock")

        witness = Witness(TrustedLogs.parse([str(log.signer.verifier)]), w1, state, broken_clock)
        running = start_witness(witness)
        try:
            log.grow(2)
            conn = http.client.HTTPConnection("127.0.0.1", running.server.server_address[1])
            assert 500 == post(conn, log.request(0, 2))[0]
        finally:
            running.close()

    def test_cosignature_time_never_goes_back(
        self, log: Log, w1: Cosigner, state: WitnessState
    ) -> None:
        """The clock stepping back: an origin's next cosignature keeps the last time."""
        times = iter([2e9, 1e9])
        witness = Witness(
            TrustedLogs.parse([str(log.signer.verifier)]), w1, state, lambda: next(times)
        )
        log.grow(2)
        assert 2_000_000_000 == cosigned(witness.add_checkpoint(log.request(0, 2)), w1, log.note(2))
        log.grow(2)
        assert 2_000_000_000 == cosigned(witness.add_checkpoint(log.request(2, 4)), w1, log.note(4))

    def test_status_is_read_only_and_foreign_files_refused(
        self, tmp_path: Path, log: Log, w1: Cosigner, key_file: Path, cli: object
    ) -> None:
        """status changes nothing; a ledger or foreign SQLite file, or a row of the wrong
        type, is exit 2 with a message for status and serve, never a traceback."""
        import sqlite3

        run = cli  # type: ignore[assignment]
        path = tmp_path / "s.db"
        with WitnessState.open(path) as state:
            log.grow(2)
            Witness(TrustedLogs.parse([str(log.signer.verifier)]), w1, state).add_checkpoint(
                log.request(0, 2)
            )
        before = path.read_bytes()  # (SQLite's reader files -wal, -shm may appear, empty)
        assert 0 == run("witness", "status", "--state", path).code
        assert before == path.read_bytes()
        foreign = tmp_path / "ledger.db"
        with sqlite3.connect(foreign) as db:
            db.execute("CREATE TABLE records (x)")
        db.close()
        for argv in (("witness", "status", "--state", foreign),
                     ("witness", "serve", "--key", key_file, "--state", foreign,
                      "--log", str(log.signer.verifier), "--port", "0")):  # fmt: skip
            done = run(*argv)
            assert (2, True) == (done.code, "not a witness state" in done.err)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE latest SET size = 'many'")
        db.close()
        broken = run("witness", "status", "--state", path)
        assert (2, True, False) == (
            broken.code,
            "malformed" in broken.err,
            "Traceback" in broken.err,
        )


class TestHttpFraming:
    def test_bad_framing_is_answered_and_closed(self, witness: Witness) -> None:
        """Content-Length '²' or two different ones: 400 and close; a chunked body to an
        unknown path: 404 and close (its bytes never read as a request); no trailing space
        in the Server header."""
        running = start_witness(witness)
        port = running.server.server_address[1]
        try:
            for head in (b"Content-Length: \xb2", b"Content-Length: 3\r\nContent-Length: 30"):
                answer = _raw(port, b"POST /add-checkpoint HTTP/1.1\r\n" + head + b"\r\n\r\nabc"
                              + b"GET /health HTTP/1.1\r\n\r\n")  # fmt: skip
                assert (1, True) == (answer.count(b"HTTP/1.1 "), answer.startswith(b"HTTP/1.1 400"))
            chunked = _raw(port, b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n0\r\n\r\nGET /health HTTP/1.1\r\n\r\n")  # fmt: skip
            assert (1, True) == (chunked.count(b"HTTP/1.1 "), chunked.startswith(b"HTTP/1.1 404"))
            assert b"\r\nServer: workflow-audit-witness\r\n" in chunked
        finally:
            running.close()

    def test_request_deadline_and_connection_cap(self, witness: Witness) -> None:
        """A request not read by its deadline is closed (whatever the per-read timeout);
        beyond the connection cap a client gets 503 and close, and others are served after."""
        running = start_witness(witness)
        running.server.request_deadline_s = 0.2
        running.server.max_connections = 2
        port = running.server.server_address[1]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as slow:
                slow.sendall(b"GET /health HTTP/1.1\r\nX: a")
                assert b"" == slow.recv(100)  # closed at the deadline, no answer
            # its handler gives its slot back when it returns: wait for that event
            deadline = time.monotonic() + WAIT_S
            while running.server._active and time.monotonic() < deadline:
                time.sleep(0.01)
            assert 0 == running.server._active
            held = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) for _ in "ab"]
            for s in held:  # each served once: its handler thread is running
                s.sendall(b"GET /health HTTP/1.1\r\n\r\n")
                assert s.recv(15).startswith(b"HTTP/1.1 200")
            # the 503 is sent on accept: read it without sending (a request the busy server
            # never reads could turn its close into a reset before the answer is read)
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as extra:
                assert extra.recv(15).startswith(b"HTTP/1.1 503")
            for s in held:
                s.close()
        finally:
            running.close()
