"""Checkpoints without cron and witnesses asked by the log (audit_core.anchor): real SQLite
ledgers, real witness servers on 127.0.0.1 (audit_core.witness), no mocks."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._cosign import Cosigner, add_cosignatures, quorum_of
from audit_core._merkle import consistency_proof, verify_consistency
from audit_core._metrics import COUNTERS
from audit_core._note import Signer
from audit_core.anchor import Anchor, WitnessEndpoint, parse_witnesses, start_anchor
from audit_core.errors import ConfigError
from audit_core.health import check
from audit_core.ledgers import open_ledger
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.witness import RunningWitness, TrustedLogs, Witness, WitnessState, start_witness
from testkit import free_port

CHAIN = "default"


def wait_for(condition: Callable[[], bool], deadline_s: float = 60.0) -> bool:
    """Poll ``condition`` until it holds (True) or a generous deadline passes (False)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@dataclass
class Log:
    """A ledger file, its signing key and a config naming both."""

    path: Path
    signer: Signer
    config: AuditConfig

    def write(self, n: int, chain: str = CHAIN, tag: str = "r") -> None:
        """Append ``n`` records to ``chain`` (the writer signs no checkpoint itself)."""
        with AuditTrail(self.config.evolve(checkpoint_every=0, chain=chain)) as trail:
            for i in range(n):
                trail.record("task.succeeded", {"tag": tag, "i": i})

    def ledger(self) -> SqliteLedger:
        ledger = open_ledger(f"sqlite:///{self.path}")
        assert isinstance(ledger, SqliteLedger)
        return ledger

    def anchor(self, *witnesses: WitnessEndpoint, interval_s: float = 3600.0) -> Anchor:
        specs = tuple(f"{w.url} {w.key}" for w in witnesses)
        config = self.config.evolve(witnesses=specs, anchor_interval_s=interval_s)
        return Anchor.from_config(config)


def make_log(tmp_path: Path, name: str = "ledger.db", signer: Signer | None = None) -> Log:
    signer = signer or Signer.generate("log.test")
    path = tmp_path / name
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}",
        actor=("service", "tests"),
        signing_key=str(signer),
        checkpoint_every=10**9,
        checkpoint_interval_s=10**9,
        witness_timeout_s=10.0,
    )
    return Log(path, signer, config)


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return make_log(tmp_path)


@dataclass
class Served:
    """A witness serving on 127.0.0.1, its key and state."""

    running: RunningWitness
    cosigner: Cosigner
    state: WitnessState

    @property
    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.running.url, self.cosigner.key)


@pytest.fixture
def witnesses(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start witnesses trusting a log key; all closed at the end."""
    started: list[Served] = []

    def start(
        log_key: Signer, name: str = "witness.test/w1", port: int = 0, state: str | None = None
    ) -> Served:
        cosigner = Cosigner.generate(name)
        ws = WitnessState.open(tmp_path / (state or f"{name.replace('/', '_')}.db"))
        witness = Witness(TrustedLogs.parse([str(log_key.verifier)]), cosigner, ws)
        served = Served(start_witness(witness, port=port), cosigner, ws)
        started.append(served)
        return served

    yield start
    for s in started:
        s.running.close()
        s.state.close()


def counted(name: str) -> int:
    return COUNTERS.snapshot().get(name, 0)


class TestPeriodicCheckpoints:
    def test_checkpoint_without_manual_step(self, log: Log) -> None:
        """A started anchor signs the records written within its interval, no call needed."""
        anchor = log.anchor(interval_s=0.05).start()
        try:
            log.write(7)
            ledger = log.ledger()
            assert wait_for(lambda: 7 == getattr(ledger.latest_checkpoint(CHAIN), "size", 0))
        finally:
            anchor.stop()
        assert 7 == ledger.tree_head(CHAIN)[0]
        ledger.close()

    def test_final_checkpoint_on_stop(self, log: Log) -> None:
        """stop() runs a final round: the last records are covered on clean shutdown."""
        anchor = log.anchor().start()
        log.write(5)
        anchor.stop()
        ledger = log.ledger()
        latest = ledger.latest_checkpoint(CHAIN)
        assert latest is not None
        assert 5 == latest.size

    def test_nothing_signed_when_nothing_grew(self, log: Log) -> None:
        """A round signs only chains that grew; an idle round stores nothing."""
        log.write(3)
        log.write(2, chain="other")
        anchor = log.anchor()
        before = counted("anchor_checkpoints")
        assert ("default", "other") == tuple(sorted(anchor.tick().signed))
        assert () == anchor.tick().signed
        log.write(1)
        assert ("default",) == anchor.tick().signed
        anchor.stop()
        assert 3 == counted("anchor_checkpoints") - before
        assert [3, 4] == [c.size for c in log.ledger().checkpoints(CHAIN)]

    def test_stop_is_idempotent_and_safe(self, log: Log) -> None:
        """stop() twice, or on an anchor never started, never raises."""
        anchor = log.anchor()
        anchor.stop()
        anchor.stop()
        assert None is log.ledger().latest_checkpoint(CHAIN)

    def test_two_anchors_two_writers_never_fork(self, log: Log) -> None:
        """Two anchors and two writers on one ledger: every checkpoint extends to the final tree."""
        anchors = [log.anchor(interval_s=0.005).start() for _ in range(2)]
        writers = [threading.Thread(target=log.write, args=(150, CHAIN, t)) for t in "ab"]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        for a in anchors:
            a.stop()
        ledger = log.ledger()
        size, root = ledger.tree_head(CHAIN)
        checkpoints = ledger.checkpoints(CHAIN)
        assert 300 == size
        assert 300 == checkpoints[-1].size
        read = partial(ledger.node, CHAIN)
        for c in checkpoints:
            proof = [] if c.size == size else consistency_proof(read, c.size, size)
            verify_consistency(c.size, size, proof, c.root, root)  # raises on a fork

    def test_checks_refusal_is_counted_not_raised(self, log: Log, tmp_path: Path) -> None:
        """A ledger cut below its checkpoint: the round refuses, counts, and does not raise."""
        log.write(4)
        anchor = log.anchor()
        anchor.tick()
        other = make_log(tmp_path, "cut.db", log.signer)
        other.write(2)
        cut = other.anchor()
        cut.tick()
        # the cut ledger now claims the original's larger checkpoint: records were removed
        big = log.ledger().latest_checkpoint(CHAIN)
        assert big is not None
        cut.ledger.add_checkpoint(big)
        before = counted("anchor_failures")
        other.write(1)
        report = cut.tick()
        assert 1 == report.failures
        assert 1 == counted("anchor_failures") - before
        anchor.stop()
        cut.stop()


class TestStartAnchor:
    def test_off_when_checkpoints_are_off(self, log: Log) -> None:
        """checkpoint_every 0 (checkpoints off): start_anchor starts nothing."""
        assert None is start_anchor(log.config.evolve(checkpoint_every=0), name="t")

    def test_failure_to_start_is_counted_not_raised(self, log: Log) -> None:
        """A ledger that cannot be opened: None, anchor_failures counted."""
        before = counted("anchor_failures")
        bad = log.config.evolve(ledger_url="nosuch://x")
        assert None is start_anchor(bad, name="t")
        assert 1 == counted("anchor_failures") - before

    def test_started_anchor_stops(self, log: Log) -> None:
        """start_anchor returns a started anchor whose stop() signs what was written."""
        anchor = start_anchor(log.config, name="t")
        assert anchor is not None
        log.write(2)
        anchor.stop()
        latest = log.ledger().latest_checkpoint(CHAIN)
        assert latest is not None
        assert 2 == latest.size


class TestWitnesses:
    def test_two_witnesses_both_cosign(self, log: Log, witnesses: Callable[..., Served]) -> None:
        """Two witnesses: both cosign each new checkpoint; a quorum of 2 holds."""
        w1 = witnesses(log.signer, "witness.test/w1")
        w2 = witnesses(log.signer, "witness.test/w2")
        log.write(3)
        anchor = log.anchor(w1.endpoint, w2.endpoint)
        assert 2 == anchor.tick().cosignatures
        log.write(2)
        assert 2 == anchor.tick().cosignatures
        assert 0 == anchor.tick().cosignatures  # all cosigned already: nothing asked
        anchor.stop()
        ledger = log.ledger()
        latest = ledger.latest_checkpoint(CHAIN)
        assert latest is not None
        lines = [c.line for c in ledger.cosignatures(CHAIN) if c.size == latest.size]
        keys = [w1.cosigner.key, w2.cosigner.key]
        _, missing = quorum_of(add_cosignatures(latest.note, lines), keys, 2)
        assert [] == missing
        assert [3, 3, 5, 5] == [c.size for c in ledger.cosignatures(CHAIN)]

    def test_witness_down_then_back(
        self, log: Log, tmp_path: Path, witnesses: Callable[..., Served]
    ) -> None:
        """A witness down: records still written, failures counted; once back it cosigns,
        from the size the ledger says it cosigned last."""
        w = witnesses(log.signer)
        log.write(2)
        first = log.anchor(w.endpoint)
        assert 1 == first.tick().cosignatures
        first.stop()
        port = int(w.running.url.rsplit(":", 1)[1])
        w.running.close()
        anchor = log.anchor(w.endpoint, interval_s=0.01).start()
        before = counted("witness_failures")
        log.write(50)  # writers never wait for the witness
        assert 52 == log.ledger().tree_head(CHAIN)[0]
        assert wait_for(lambda: counted("witness_failures") > before)
        back = Witness(TrustedLogs.parse([str(log.signer.verifier)]), w.cosigner, w.state)
        w.running = start_witness(back, port=port)
        ledger = log.ledger()
        assert wait_for(lambda: 52 in {c.size for c in ledger.cosignatures(CHAIN)})
        anchor.stop()
        assert [] == [r for r in w.state.refusals()]  # asked from size 2, never from 0
        latest = w.state.latest(f"log.test/{CHAIN}")
        assert latest is not None
        assert 52 == latest.size

    def test_silent_witness_is_bounded_by_the_timeout(self, log: Log) -> None:
        """A witness that accepts the connection and never answers: the exchange times out,
        is counted, and the checkpoint is signed all the same."""
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            log.write(2)
            config = log.config.evolve(
                witnesses=(f"{url} {Cosigner.generate('w.test/s').key}",), witness_timeout_s=0.2
            )
            anchor = Anchor.from_config(config)
            before = counted("witness_failures")
            report = anchor.tick()
            anchor.stop()
        assert (("default",), 1) == (report.signed, report.failures)
        assert 2 == counted("witness_failures") - before  # the round, then the final round

    def test_witness_ahead_is_a_conflict_not_a_loop(
        self, log: Log, tmp_path: Path, witnesses: Callable[..., Served]
    ) -> None:
        """A witness that cosigned a bigger tree of a forked copy: a conflict, counted once."""
        w = witnesses(log.signer)
        fork = make_log(tmp_path, "fork.db", log.signer)
        fork.write(8, tag="fork")
        fork_anchor = fork.anchor(w.endpoint)
        assert 1 == fork_anchor.tick().cosignatures
        fork_anchor.stop()
        log.write(5)
        anchor = log.anchor(w.endpoint)
        before = counted("witness_conflicts")
        assert 1 == anchor.tick().conflicts
        assert 0 == anchor.tick().conflicts  # not asked again until the chain grows
        anchor.stop()
        assert 1 == counted("witness_conflicts") - before
        assert [] == log.ledger().cosignatures(CHAIN)

    @pytest.mark.parametrize("fork_size", [5, 2])
    def test_witness_forked_is_a_conflict(
        self, log: Log, tmp_path: Path, witnesses: Callable[..., Served], fork_size: int
    ) -> None:
        """A witness holding a forked copy at our size or below: one retry, then a conflict."""
        w = witnesses(log.signer)
        fork = make_log(tmp_path, "fork.db", log.signer)
        fork.write(fork_size, tag="fork")
        fork_anchor = fork.anchor(w.endpoint)
        assert 1 == fork_anchor.tick().cosignatures
        fork_anchor.stop()
        log.write(5)
        anchor = log.anchor(w.endpoint)
        report = anchor.tick()
        anchor.stop()
        assert (1, 0) == (report.conflicts, report.cosignatures)
        assert [] == log.ledger().cosignatures(CHAIN)

    def test_witness_restarted_from_nothing_is_asked_again(
        self, log: Log, tmp_path: Path, witnesses: Callable[..., Served]
    ) -> None:
        """The ledger says size 3 was cosigned, the witness lost its state: its 409 names
        size 0, and the one retry from there gets the cosignature."""
        w = witnesses(log.signer, state="first.db")
        log.write(3)
        anchor = log.anchor(w.endpoint)
        assert 1 == anchor.tick().cosignatures
        anchor.stop()
        fresh = witnesses(log.signer, state="fresh.db")  # a new state, the old key
        again = Witness(TrustedLogs.parse([str(log.signer.verifier)]), w.cosigner, fresh.state)
        fresh.running.close()
        fresh.running = start_witness(again)
        log.write(2)
        anchor = log.anchor(WitnessEndpoint(fresh.running.url, w.cosigner.key))
        assert 1 == anchor.tick().cosignatures
        anchor.stop()
        assert [3, 5] == [c.size for c in log.ledger().cosignatures(CHAIN)]

    def test_two_anchors_share_one_witness(
        self, log: Log, witnesses: Callable[..., Served]
    ) -> None:
        """Another process's anchor moved the witness on: the 409 names its size, one retry
        from there cosigns; no conflict."""
        w = witnesses(log.signer)
        log.write(3)
        a, b = log.anchor(w.endpoint), log.anchor(w.endpoint)
        assert (1, 0) == (a.tick().cosignatures, b.tick().cosignatures)
        log.write(2)
        assert 1 == a.tick().cosignatures  # b still believes the witness is at size 3
        log.write(1)
        report = b.tick()
        a.stop()
        b.stop()
        assert (("default",), 1, 0) == (report.signed, report.cosignatures, report.conflicts)
        assert [3, 5, 6] == [c.size for c in log.ledger().cosignatures(CHAIN)]

    def test_lines_by_another_key_are_not_stored(
        self, log: Log, witnesses: Callable[..., Served]
    ) -> None:
        """A witness answering with a line the configured key did not make: nothing stored,
        a failure counted."""
        w = witnesses(log.signer, "witness.test/w1")
        impostor = Cosigner.generate("witness.test/w1").key  # same name, another key
        log.write(2)
        anchor = log.anchor(WitnessEndpoint(w.running.url, impostor))
        before = counted("witness_failures")
        report = anchor.tick()
        assert 1 == counted("witness_failures") - before
        anchor.stop()
        assert (0, 1) == (report.cosignatures, report.failures)
        assert [] == log.ledger().cosignatures(CHAIN)


class TestWitnessConfig:
    def test_url_and_key(self) -> None:
        """'URL VKEY' parses into an endpoint; a trailing slash is dropped."""
        key = Cosigner.generate("w.test/a").key
        [w] = parse_witnesses([f"https://w.example/prefix/ {key}"])
        assert ("https://w.example/prefix", key) == (w.url, w.key)

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("http://127.0.0.1:1", "URL VKEY"),
            ("ftp://127.0.0.1:1 {key}", "http:// or https://"),
            ("http://127.0.0.1:1 w.test+0000+AAAA", "witness http://127.0.0.1:1"),
            ("http://127.0.0.1:1 {log}", "0x04"),
        ],
    )
    def test_bad_config_is_a_clear_error(self, spec: str, message: str) -> None:
        """A URL without key, another scheme, a malformed or a log's key: ConfigError."""
        key = Cosigner.generate("w.test/a").key
        text = spec.format(key=key, log=Signer.generate("w.test/a").verifier)
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("/", "/")):
            parse_witnesses([text])

    def test_private_key_is_never_echoed(self) -> None:
        """A private key given by mistake is not repeated in the error."""
        secret = str(Cosigner.generate("w.test/a"))
        with pytest.raises(ConfigError) as info:
            parse_witnesses([f"http://127.0.0.1:1 {secret}"])
        assert secret not in str(info.value)
        assert secret.split("+")[-1] not in str(info.value)

    def test_from_env(self) -> None:
        """WORKFLOW_AUDIT_WITNESSES: entries separated by ';' or newlines; numbers validated."""
        a, b = (Cosigner.generate(f"w.test/{n}").key for n in "ab")
        env = {
            "WORKFLOW_AUDIT_WITNESSES": f"http://h:1 {a};\n http://h:2 {b}\n",
            "WORKFLOW_AUDIT_ANCHOR_INTERVAL": "2.5",
            "WORKFLOW_AUDIT_WITNESS_TIMEOUT": "1",
        }
        config = AuditConfig.from_env(env)
        assert (f"http://h:1 {a}", f"http://h:2 {b}") == config.witnesses
        assert (2.5, 1.0) == (config.anchor_interval_s, config.witness_timeout_s)
        with pytest.raises(ConfigError, match="WITNESS_TIMEOUT"):
            AuditConfig.from_env({"WORKFLOW_AUDIT_WITNESS_TIMEOUT": "soon"})
        with pytest.raises(ConfigError, match="positive"):
            AuditConfig.from_env({"WORKFLOW_AUDIT_ANCHOR_INTERVAL": "0"})

    def test_a_bad_witness_costs_the_witnessing_only(self, tmp_path: Path) -> None:
        """A malformed witness entry never stops recording: the anchor still signs
        checkpoints, asks no witness, and counts the failure."""
        config = AuditConfig.from_env(
            {"WORKFLOW_AUDIT_WITNESSES": "http://h:1"},
            ledger_url=f"sqlite:///{tmp_path}/l.db",
            checkpoint_every=0,
        )
        with AuditTrail(config) as trail:
            trail.record("step.done", {})
        before = COUNTERS.snapshot().get("anchor_failures", 0)
        anchor = Anchor.from_config(config)
        assert [] == list(anchor.witnesses)
        anchor.tick()
        anchor.stop()
        assert 1 == COUNTERS.snapshot().get("anchor_failures", 0) - before
        ledger = open_ledger(config.ledger_url)
        latest = ledger.latest_checkpoint("default")
        ledger.close()
        assert latest is not None
        assert 1 == latest.size

    def test_same_witness_twice(self) -> None:
        """One key configured twice is refused: a quorum counts distinct witnesses."""
        key = Cosigner.generate("w.test/a").key
        with pytest.raises(ConfigError, match="twice"):
            parse_witnesses([f"http://h:1 {key}", f"http://h:2 {key}"])


class TestHealth:
    def test_witness_lag_and_late_witness(self, log: Log, witnesses: Callable[..., Served]) -> None:
        """health shows what each witness cosigned; one that cosigned nothing for long is a
        problem."""
        w = witnesses(log.signer, "witness.test/w1")
        down = WitnessEndpoint(f"http://127.0.0.1:{free_port()}", Cosigner.generate("w.t/d").key)
        log.write(3)
        anchor = log.anchor(w.endpoint, down)
        anchor.tick()
        anchor.stop()
        log.write(1)
        specs = tuple(f"{e.url} {e.key}" for e in (w.endpoint, down))
        config = log.config.evolve(witnesses=specs, anchor_interval_s=60.0)
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
        ledger = log.ledger()
        health = check(ledger, name="t", config=config, now=later)
        [chain] = health.chains
        seen = chain.witnesses[w.cosigner.key.describe()]
        assert (3, 1) == (seen.size, seen.lag)
        assert seen.cosigned_at is not None
        assert None is chain.witnesses[down.key.describe()].size
        [problem] = health.problems
        assert f"witness {down.key.describe()} has cosigned nothing of 4 records" in problem
        assert [] == check(ledger, name="t", config=config).problems  # not late yet

    def test_conflicts_counted_are_a_problem(self, log: Log) -> None:
        """Counters handed to check(): shown; a witness conflict is a problem."""
        log.write(1)
        ledger = log.ledger()
        health = check(ledger, name="t", config=log.config, counters={"witness_conflicts": 2})
        assert {"witness_conflicts": 2} == health.counters
        assert ["2 witness conflict(s)"] == [p[:21] for p in health.problems]

    def test_command_shows_witnesses(
        self,
        log: Log,
        witnesses: Callable[..., Served],
        cli: Any,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        """`workflow-audit health` reads the witnesses from the environment and prints what
        each cosigned, from the ledger (another process asked them)."""
        w = witnesses(log.signer)
        log.write(3)
        anchor = log.anchor(w.endpoint)
        anchor.tick()
        anchor.stop()
        monkeypatch.setenv("WORKFLOW_AUDIT_WITNESSES", f"{w.endpoint.url} {w.endpoint.key}")
        run = cli("health", "--ledger", log.path, "--spool", tmp_path / "spool")
        assert 0 == run.code
        assert f"witness {w.cosigner.key.describe()} cosigned 3 " in run.out
        assert "(lag 0)" in run.out


# -- review round 2: drip-fed answers, bad ports, infinite numbers, escaped answers -------


@pytest.fixture
def drip() -> Iterator[str]:
    """A 'witness' on 127.0.0.1 that answers every request a byte at a time, for ever (each
    byte well within any socket timeout); yields its URL."""
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10**5:
                    if stop.wait(0.02):
                        return
                    conn.send(bytes([byte]))
            except OSError:
                return  # the client gave up: what this witness is for

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.close()


class TestDeadlines:
    def test_drip_fed_answer_is_bounded_by_one_deadline(self, log: Log, drip: str) -> None:
        """A witness dripping its answer is abandoned at the exchange's deadline (connect
        to last byte), counted; the checkpoint is signed before any witness is asked."""
        log.write(3)
        key = Cosigner.generate("w.test/drip").key
        anchor = Anchor.from_config(
            log.config.evolve(witnesses=(f"{drip} {key}",), witness_timeout_s=0.3)
        )
        try:
            report = anchor.tick()
        finally:
            anchor.stop()
        assert (("default",), 1) == (report.signed, report.failures)
        ledger = log.ledger()
        latest = ledger.latest_checkpoint(CHAIN)
        ledger.close()
        assert latest is not None
        assert 3 == latest.size

    def test_latest_is_bounded_too(self, drip: str) -> None:
        """latest() against a dripping witness raises WitnessError naming the deadline."""
        from audit_core.anchor.client import latest
        from audit_core.errors import WitnessError

        endpoint = WitnessEndpoint(drip, Cosigner.generate("w.test/drip").key)
        with pytest.raises(WitnessError, match="no complete answer within"):
            latest(endpoint, "log.test/default", 0.3)


class TestReviewedConfig:
    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:99999", "http://[::1", "http://127.0.0.1:port"]
    )
    def test_bad_port_or_host_is_a_config_error(self, url: str) -> None:
        """An out-of-range port or a malformed host is a ConfigError, not a ValueError."""
        key = Cosigner.generate("w.test/a").key
        with pytest.raises(ConfigError, match="witness URL"):
            parse_witnesses([f"{url} {key}"])

    def test_bad_port_still_signs_checkpoints(self, log: Log) -> None:
        """start_anchor with a witness on port 99999 starts (0 witnesses) and signs."""
        log.write(2)
        key = Cosigner.generate("w.test/a").key
        config = log.config.evolve(witnesses=(f"http://127.0.0.1:99999 {key}",))
        anchor = start_anchor(config, name="bad-port")
        assert anchor is not None
        assert () == anchor.witnesses
        anchor.stop()
        ledger = log.ledger()
        latest = ledger.latest_checkpoint(CHAIN)
        ledger.close()
        assert latest is not None

    @pytest.mark.parametrize("value", ["inf", "nan", "-1"])
    @pytest.mark.parametrize("name", ["WITNESS_TIMEOUT", "ANCHOR_INTERVAL"])
    def test_numbers_must_be_finite_and_positive(self, name: str, value: str) -> None:
        """inf, nan and negative seconds are refused (a round or exchange without end)."""
        with pytest.raises(ConfigError, match="finite and positive"):
            AuditConfig.from_env({f"WORKFLOW_AUDIT_{name}": value})

    def test_witness_words_are_escaped_and_capped(self) -> None:
        """A witness's answer reaches messages and logs escaped (no NUL or CR) and capped."""
        from audit_core.anchor.client import _text  # the one place answers are shown

        shown = _text(b"\x00\r\nevil\x1b[31m" + b"y" * 1000)
        assert "\x00" not in shown
        assert "\r" not in shown
        assert "\x1b" not in shown
        assert 210 > len(shown)
