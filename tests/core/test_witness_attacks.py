"""The attack of issue 18 fails: a writer holding the ledger and its local key cuts,
rewrites or back-dates the chain and re-signs it; `verify --key` passes (the weakness), but
`verify --witness W --quorum 1` fails naming the witnessed size and root, and the witness
refuses to cosign the rewritten checkpoint (409, c2sp.org/tlog-witness).

Each test runs real witnesses on 127.0.0.1 (``start_witness``) and the real anchor, and
calls the CLI's ``main`` in-process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._merkle import consistency_proof
from audit_core._note import note_parts
from audit_core._witness_wire import parse_size_body
from audit_core.anchor.client import WitnessEndpoint, latest
from audit_core.checkpoint import Checkpoint
from audit_core.cli import main
from audit_core.errors import WitnessError
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core._witnessing import (
    LocalWitness,
    add_checkpoint,
    anchor,
    delete_cosignatures,
    forge,
    forge_origin,
    free_port,
    log_key,
    serve_latest,
)

CHAIN = "default"
SIZE = 40


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A ledger of SIZE records on chain 'default' with a local key and checkpoints."""
    path = tmp_path / "ledger.db"
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}", actor=("service", "tests"), checkpoint_every=16
    )
    with AuditTrail(config) as trail:
        for i in range(SIZE):
            trail.record("task.started", {"i": i}, subject={"dag_id": "d", "task_id": f"t{i}"})
    return path


@pytest.fixture
def witness(ledger: Path, tmp_path: Path) -> Iterator[LocalWitness]:
    """One witness on 127.0.0.1 trusting the ledger's key, which cosigned its latest checkpoint."""
    running = LocalWitness.start(tmp_path, log_key(ledger), "witness.test/w1")
    try:
        report = anchor(ledger, [running])
        assert 1 == report.cosignatures
        yield running
    finally:
        running.close()


def _latest(ledger: Path) -> tuple[str, Checkpoint]:
    db = SqliteLedger(ledger, create=False, read_only=True)
    try:
        stored = db.latest_checkpoint(CHAIN)
        assert stored is not None
        return stored.note, Checkpoint.parse(note_parts(stored.note)[0])
    finally:
        db.close()


def _cosignature_rows(ledger: Path) -> int:
    conn = sqlite3.connect(str(ledger))
    try:
        (count,) = conn.execute("SELECT count(*) FROM cosignatures").fetchone()
        return int(count)
    finally:
        conn.close()


def _verify(ledger: Path, *extra: str) -> list[str]:
    pub = str(ledger.with_name(ledger.name + ".key.pub"))
    return ["verify", "--ledger", f"sqlite:///{ledger}", "--chain", CHAIN, "--key", pub, *extra]


def _backdate(seq: int, value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "ts": "2019" + value["ts"][4:]} if seq >= 10 else value


def _rewrite(seq: int, value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "data": {"i": -1}} if seq == SIZE // 2 else value


ATTACKS = {
    "truncate": {"keep": SIZE - 7},
    "rewrite": {"edit": _rewrite},
    "backdate": {"edit": _backdate},
}


class TestAttacks:
    """Truncation, a rewritten record and back-dated records, each re-signed."""

    @pytest.mark.parametrize("attack", sorted(ATTACKS))
    def test_resigned_rewrite_is_caught_by_the_witness(
        self,
        ledger: Path,
        witness: LocalWitness,
        attack: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """verify --key passes the re-signed rewrite; verify --witness --quorum 1 exits 1
        naming the witnessed size and root; the witness answers 409 to the rewrite."""
        _, witnessed = _latest(ledger)
        size = forge(ledger, CHAIN, **ATTACKS[attack])  # type: ignore[arg-type]
        capsys.readouterr()
        assert 0 == main(_verify(ledger))  # the weakness: the local key signs anything
        capsys.readouterr()
        assert 1 == main(_verify(ledger, "--witness", str(witness.key), "--quorum", "1"))
        err = capsys.readouterr().err
        assert f"size {witnessed.size}" in err
        assert witnessed.root.hex() in err
        assert "witness.test/w1" in err
        note, forged = _latest(ledger)
        assert size == forged.size
        assert witnessed.root != forged.root or witnessed.size != forged.size
        # Asked as a log asks (from the largest size it holds a cosignature of, at most
        # the new size: none here but after a rewrite at the same size), the witness refuses.
        old = witnessed.size if forged.size >= witnessed.size else 0
        db = SqliteLedger(ledger, create=False, read_only=True)
        try:
            proof = (
                consistency_proof(lambda lv, ix: db.node(CHAIN, lv, ix), old, forged.size)
                if 0 < old < forged.size
                else []
            )
        finally:
            db.close()
        status, body = add_checkpoint(witness.url, old, proof, note)
        assert 409 == status, body
        assert witnessed.size == parse_size_body(body)

    @pytest.mark.parametrize("attack", sorted(ATTACKS))
    def test_anchor_gets_no_cosignature_for_the_rewrite(
        self, ledger: Path, witness: LocalWitness, attack: str
    ) -> None:
        """The anchor asking the witness after the rewrite stores no cosignature, and verify
        --witness still fails."""
        before = _cosignature_rows(ledger)
        forge(ledger, CHAIN, **ATTACKS[attack])  # type: ignore[arg-type]
        report = anchor(ledger, [witness])
        assert 0 == report.cosignatures
        assert before == _cosignature_rows(ledger)
        assert 1 == main(_verify(ledger, "--witness", str(witness.key)))

    def test_deleted_cosignatures(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Cosignature rows deleted (triggers dropped first) fail: no checkpoint is cosigned."""
        assert 0 == main(_verify(ledger, "--witness", str(witness.key)))
        delete_cosignatures(ledger)
        capsys.readouterr()
        assert 0 == main(_verify(ledger))
        capsys.readouterr()
        assert 1 == main(_verify(ledger, "--witness", str(witness.key), "--quorum", "1"))
        assert "no checkpoint is cosigned" in capsys.readouterr().err

    def test_honest_ledger_is_valid_and_shows_the_witness(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Untouched, verify --witness exits 0 and prints the witnessed size, root and time."""
        _, witnessed = _latest(ledger)
        capsys.readouterr()
        assert 0 == main(_verify(ledger, "--witness", str(witness.key)))
        out = capsys.readouterr().out
        assert f"witnessed: size {witnessed.size} (root {witnessed.root.hex()[:16]}" in out
        assert "cosigned by witness.test/w1 at 20" in out


class TestQuorum:
    """Two witnesses, one down while the log anchors."""

    def test_one_witness_down(
        self, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--quorum 2 exits 1 naming the witness that did not cosign; --quorum 1 exits 0."""
        up = LocalWitness.start(tmp_path, log_key(ledger), "witness.test/up")
        down = LocalWitness.down(tmp_path, "witness.test/down")
        try:
            report = anchor(ledger, [up, down])
        finally:
            up.close()
        assert (1, 1) == (report.cosignatures, report.failures)
        both = ["--witness", str(up.key), "--witness", str(down.key)]
        capsys.readouterr()
        assert 1 == main(_verify(ledger, *both, "--quorum", "2"))
        err = capsys.readouterr().err
        assert "witness.test/down" in err
        assert "missing" in err
        assert 0 == main(_verify(ledger, *both, "--quorum", "1"))
        out = capsys.readouterr().out
        assert "cosigned by witness.test/up at" in out
        assert "not cosigned by witness.test/down" in out


# -- review round 2: origins, chains cut to nothing, the witness asked online --------------


def _cut_to_nothing(path: Path, chain: str) -> None:
    """The writer deletes every record, subtree and checkpoint of ``chain`` (not its
    cosignatures, which it may not think of)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f'DROP TRIGGER "{name}"')
    for table in ("records", "merkle_subtrees", "checkpoints", "record_keys"):
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            conn.execute(f"DELETE FROM {table} WHERE chain = ?", (chain,))  # noqa: S608
    conn.execute("COMMIT")
    conn.close()


def _drop_cosignatures_from(path: Path, size: int) -> None:
    """The writer deletes the stored cosignatures of sizes ``size`` and above."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("DELETE FROM cosignatures WHERE size >= ?", (size,))
    conn.execute("COMMIT")
    conn.close()


def _grow(path: Path, count: int, chain: str = CHAIN) -> None:
    config = AuditConfig(ledger_url=f"sqlite:///{path}", actor=("service", "tests"), chain=chain)
    with AuditTrail(config) as trail:
        for i in range(count):
            trail.record("task.started", {"more": i})


def _cosigned_note(path: Path, witness: LocalWitness) -> tuple[str, Checkpoint]:
    """The latest stored checkpoint's note with the witness's stored cosignature line: what
    the witness holds as its latest checkpoint of the chain's origin."""
    note, checkpoint = _latest(path)
    conn = sqlite3.connect(str(path))
    rows = conn.execute(
        "SELECT line FROM cosignatures WHERE chain = ? AND size = ?", (CHAIN, checkpoint.size)
    ).fetchall()
    conn.close()
    lines = [line for (line,) in rows if line.startswith(f"\u2014 {witness.key.name} ")]
    assert lines
    return note + "".join(f"{line}\n" for line in lines), checkpoint


@contextmanager
def _latest_of(witness: LocalWitness, notes: dict[str, str]) -> Iterator[str]:
    """The witness's URL when it serves its latest checkpoints itself (GET
    /checkpoint?origin=), else a local server serving ``notes`` as it would."""
    origin = next(iter(notes))
    try:
        served = latest(WitnessEndpoint(witness.url, witness.key), origin, 5.0)
    except WitnessError:
        served = None
    if served is not None:
        yield witness.url
        return
    with serve_latest(notes) as url:
        yield url


class TestOrigins:
    """A witnessed checkpoint counts for chain C only with origin exactly PREFIX/C."""

    def test_a_fresh_origin_cosigned_from_zero_is_invalid(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The writer cuts the chain, then gets `<log>/fresh/default` cosigned from size 0
        and stores it as the chain's: verify --witness exits 1 naming both origins."""
        delete_cosignatures(ledger)
        forge(ledger, CHAIN, keep=SIZE - 7)
        capsys.readouterr()
        assert 1 == main(_verify(ledger, "--witness", str(witness.key), "--quorum", "1"))
        fresh, _ = forge_origin(ledger, CHAIN, witness)
        _, checkpoint = _latest(ledger)
        capsys.readouterr()
        assert 1 == main(_verify(ledger, "--witness", str(witness.key), "--quorum", "1"))
        err = capsys.readouterr().err
        assert repr(fresh) in err
        assert repr(checkpoint.origin) in err

    def test_witness_without_key_or_origin_is_a_usage_error(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--witness without --key nor --origin exits 2; with --origin PREFIX it verifies."""
        argv = ["verify", "--ledger", f"sqlite:///{ledger}", "--witness", str(witness.key)]
        capsys.readouterr()
        assert 2 == main(argv)
        assert "--witness needs --key (or --origin)" in capsys.readouterr().err
        _, checkpoint = _latest(ledger)
        prefix = checkpoint.origin.rsplit("/", 1)[0]
        assert 0 == main([*argv, "--chain", CHAIN, "--origin", prefix])
        assert 1 == main([*argv, "--chain", CHAIN, "--origin", "elsewhere.example/log"])

    def test_verify_proof_refuses_a_fresh_origin(
        self, ledger: Path, witness: LocalWitness, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:  # fmt: skip
        """A bundle whose cosigned checkpoint is of a fresh origin (same size and root)
        fails verify-proof --witness; the genuine bundle passes."""
        out = tmp_path / "bundle.json"
        prove = ["prove", "--ledger", f"sqlite:///{ledger}", "--chain", CHAIN, "--seq", "3"]
        assert 0 == main([*prove, "-o", str(out)])
        pub = str(ledger.with_name(ledger.name + ".key.pub"))
        check = ["verify-proof", str(out), "--key", pub, "--witness", str(witness.key)]
        assert 0 == main(check)
        fresh, note = forge_origin(ledger, CHAIN, witness)
        bundle = orjson.loads(out.read_bytes())
        bundle["checkpoint"] = note
        out.write_bytes(orjson.dumps(bundle))
        capsys.readouterr()
        assert 1 == main(check)
        assert repr(fresh) in capsys.readouterr().err


class TestDeletedChains:
    """A witnessed chain cut to no records at all is still verified."""

    def test_chain_cut_to_nothing_is_invalid(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Records, subtrees and checkpoints deleted, cosignatures kept: verify --witness
        (every chain) exits 1 saying records were removed at the witnessed size."""
        _, witnessed = _latest(ledger)
        _grow(ledger, 3, chain="other")
        anchor(ledger, [witness])
        _cut_to_nothing(ledger, CHAIN)
        pub = str(ledger.with_name(ledger.name + ".key.pub"))
        argv = ["verify", "--ledger", f"sqlite:///{ledger}", "--key", pub]
        capsys.readouterr()
        assert 1 == main([*argv, "--witness", str(witness.key), "--quorum", "1"])
        err = capsys.readouterr().err
        assert "records were removed" in err
        assert witnessed.root.hex() in err


class TestOnlineWitness:
    """verify --witness "URL KEY" asks the witness what it cosigned last."""

    def test_deleting_the_newest_cosignatures_hides_nothing(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Cosigned at 40 then 50; the writer deletes the rows of 50, cuts to 45 and
        re-signs: the stored rows pass, the witness's own answer names size 50."""
        _grow(ledger, 10)
        assert 1 == anchor(ledger, [witness]).cosignatures
        note, witnessed = _cosigned_note(ledger, witness)
        assert SIZE + 10 == witnessed.size
        _drop_cosignatures_from(ledger, SIZE + 1)
        forge(ledger, CHAIN, keep=SIZE + 5)
        capsys.readouterr()
        assert 0 == main(_verify(ledger, "--witness", str(witness.key)))  # rows alone
        with _latest_of(witness, {witnessed.origin: note}) as url:
            capsys.readouterr()
            assert 1 == main(_verify(ledger, "--witness", f"{url} {witness.key}"))
        err = capsys.readouterr().err
        assert f"size {witnessed.size}" in err
        assert witnessed.root.hex() in err

    def test_unreachable_witness_is_a_warning(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A witness that cannot be reached: exit 0 on an untouched ledger, a warning that
        only the stored cosignatures were checked, and the JSON says it did not answer."""
        down = f"http://127.0.0.1:{free_port()} {witness.key}"
        capsys.readouterr()
        assert 0 == main(_verify(ledger, "--witness", down))
        err = capsys.readouterr().err
        assert "not reached: only the stored cosignatures were checked" in err
        assert 0 == main(_verify(ledger, "--witness", down, "--json"))
        [asked] = orjson.loads(capsys.readouterr().out)["witnesses_asked"]
        assert (False, str(witness.key)) == (asked["answered"], asked["witness"])

    def test_answer_with_a_bad_cosignature_is_invalid(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A served checkpoint whose cosignature by the witness's key does not verify over
        it (root changed) is invalid."""
        note, checkpoint = _cosigned_note(ledger, witness)
        body, _ = note_parts(note)
        altered = Checkpoint(checkpoint.origin, checkpoint.size, bytes(32)).text()
        with serve_latest({checkpoint.origin: note.replace(body, altered)}) as url:
            capsys.readouterr()
            assert 1 == main(_verify(ledger, "--witness", f"{url} {witness.key}"))
        assert "does not verify" in capsys.readouterr().err

    def test_no_witness_has_seen_a_new_chain(
        self, ledger: Path, witness: LocalWitness, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A chain no witness asked online knows (all 404) fails as before (exit 1), and
        the message says no witness has seen it yet."""
        _grow(ledger, 2, chain="fresh")
        with serve_latest({}) as url:
            argv = [*_verify(ledger, "--witness", f"{url} {witness.key}")]
            argv[argv.index(CHAIN)] = "fresh"
            capsys.readouterr()
            assert 1 == main(argv)
        assert "no witness has seen this chain yet" in capsys.readouterr().err
