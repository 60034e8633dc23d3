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
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._merkle import consistency_proof
from audit_core._note import note_parts
from audit_core._witness_wire import parse_size_body
from audit_core.checkpoint import Checkpoint
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core._witnessing import (
    LocalWitness,
    add_checkpoint,
    anchor,
    delete_cosignatures,
    forge,
    log_key,
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
