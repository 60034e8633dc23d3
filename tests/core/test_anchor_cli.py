"""``workflow-audit ship --follow`` and ``ingest --follow`` anchor while they run: a real process
signs checkpoints of the chains other processes write, every anchor interval and once more on
SIGTERM (issue 18: checkpoints without cron)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._cosign import parse_cosignature, verify_cosignature
from audit_core._note import Signer
from audit_core.checkpoint import Checkpoint
from audit_core.ledgers import open_ledger
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core._anchored import (
    DEADLINE_S,
    chain_sizes,
    check_checkpoints,
    uncovered,
    wait_covered,
)
from tests.core._witnessing import LocalWitness
from tests.core.test_sources import ROOT, TableSource

CHAIN = "jobs"


def _writer(ledger: Path) -> AuditTrail:
    """Another writer of the ledger, one that never signs a checkpoint itself."""
    return AuditTrail(
        AuditConfig(ledger_url=f"sqlite:///{ledger}", chain=CHAIN, checkpoint_every=0)
    )


def _env(interval: str) -> dict[str, str]:
    """This environment without WORKFLOW_AUDIT_*, anchoring every ``interval`` s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_AUDIT_")}
    return env | {"WORKFLOW_AUDIT_ANCHOR_INTERVAL": interval}


def _shipper(ledger: Path, tmp_path: Path, interval: str, **extra: str) -> subprocess.Popen[bytes]:
    """``ship --follow --sink structlog`` on ``ledger``, anchoring every ``interval`` s
    (``extra``: more environment)."""
    env = _env(interval) | extra
    out = (tmp_path / "shipped.jsonl").open("wb")
    err = (tmp_path / "ship.err").open("wb")
    with out, err:
        return subprocess.Popen(
            [sys.executable, "-m", "audit_core.cli", "ship", "--follow", "--sink", "structlog",
             "--poll", "0.05", "--ledger", f"sqlite:///{ledger}"],
            env=env, stdout=out, stderr=err,
        )  # fmt: skip


@pytest.fixture
def stopping() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started, killed if it left them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen[bytes], tmp_path: Path, err: str = "ship.err") -> None:
    """SIGTERM, then the clean exit."""
    proc.send_signal(signal.SIGTERM)
    assert 0 == proc.wait(DEADLINE_S), (tmp_path / err).read_text()


def _shipped(ledger: Path) -> int:
    """The structlog sink's cursor on the chain: the last seq ``ship`` delivered."""
    db = open_ledger(f"sqlite:///{ledger}", read_only=True)
    try:
        return db.get_cursor("structlog", CHAIN)
    finally:
        db.close()


def _wait_shipped(ledger: Path, seq: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while _shipped(ledger) < seq:
        assert proc.poll() is None, "ship --follow ended"
        assert time.monotonic() < deadline, f"seq {seq} not shipped after {DEADLINE_S}s"
        time.sleep(0.05)  # polling the sink's cursor


class TestShipFollowAnchors:
    """The anchor of a ``ship --follow`` process."""

    def test_signs_what_another_process_writes(
        self, tmp_path: Path, stopping: list[subprocess.Popen[bytes]]
    ) -> None:
        """Records of another writer are covered by a checkpoint within the interval, again
        after they grow, with no manual step; every checkpoint verifies and is consistent."""
        ledger = tmp_path / "ledger.db"
        with _writer(ledger) as trail:
            for i in range(5):
                trail.record("task.succeeded", {"i": i})
            proc = _shipper(ledger, tmp_path, "0.5")
            stopping.append(proc)
            wait_covered(ledger, alive=lambda: proc.poll() is None)
            for i in range(3):
                trail.record("task.succeeded", {"i": 5 + i})
            wait_covered(ledger, alive=lambda: proc.poll() is None)
        _stop(proc, tmp_path)
        assert {} == uncovered(ledger)
        assert 2 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))

    def test_sigterm_signs_the_final_checkpoint(
        self, tmp_path: Path, stopping: list[subprocess.Popen[bytes]]
    ) -> None:
        """With an interval too long to tick, SIGTERM's clean exit signs the records shipped
        meanwhile: the last checkpoint covers the last record."""
        ledger = tmp_path / "ledger.db"
        with _writer(ledger) as trail:
            for i in range(4):
                trail.record("task.succeeded", {"i": i})
            proc = _shipper(ledger, tmp_path, "3600")
            stopping.append(proc)
            _wait_shipped(ledger, 3, proc)  # running, its anchor started
            trail.record("task.succeeded", {"i": 4})
            _wait_shipped(ledger, 4, proc)
        assert {CHAIN: (5, None)} == uncovered(ledger)  # no round ran before the signal
        _stop(proc, tmp_path)
        assert {} == uncovered(ledger)
        assert 1 == check_checkpoints(ledger, Path(f"{ledger}.key.pub"))

    def test_the_configured_witness_cosigns(
        self, tmp_path: Path, stopping: list[subprocess.Popen[bytes]]
    ) -> None:
        """With WORKFLOW_AUDIT_WITNESSES set, the anchor asks the witness (a real HTTP server
        on 127.0.0.1): the ledger ends holding its valid cosignature of the checkpoint that
        covers the chain."""
        signer = Signer.generate("log.example")
        ledger = tmp_path / "ledger.db"
        witness = LocalWitness.start(tmp_path, signer.verifier, "witness.example/w1")
        try:
            with _writer(ledger) as trail:
                for i in range(3):
                    trail.record("task.succeeded", {"i": i})
            proc = _shipper(
                ledger,
                tmp_path,
                "0.5",
                WORKFLOW_AUDIT_SIGNING_KEY=str(signer),
                WORKFLOW_AUDIT_WITNESSES=witness.spec,
            )
            stopping.append(proc)
            deadline = time.monotonic() + DEADLINE_S
            while not _cosigned_sizes(ledger):
                assert proc.poll() is None, (tmp_path / "ship.err").read_text()
                assert time.monotonic() < deadline, (tmp_path / "ship.err").read_text()
                time.sleep(0.05)  # polling the ledger for the stored cosignature
            _stop(proc, tmp_path)
        finally:
            witness.close()
        db = open_ledger(f"sqlite:///{ledger}", read_only=True)
        try:
            (stored,) = db.cosignatures(CHAIN)
        finally:
            db.close()
        assert 3 == Checkpoint.parse(stored.body).size == stored.size
        assert verify_cosignature(witness.key, stored.body, parse_cosignature(stored.line))
        assert 1 == check_checkpoints(ledger, signer.verifier)


def _cosigned_sizes(ledger: Path) -> list[int]:
    db = open_ledger(f"sqlite:///{ledger}", read_only=True)
    try:
        return [c.size for c in db.cosignatures(CHAIN)]
    finally:
        db.close()


class TestIngestFollowAnchors:
    """The anchor of an ``ingest --follow`` process (the event log's sidecar)."""

    def test_sigterm_signs_every_chain_that_grew(
        self, tmp_path: Path, stopping: list[subprocess.Popen[bytes]]
    ) -> None:
        """With an interval too long to tick, SIGTERM's clean exit signs a checkpoint of
        every chain that grew: the ingested one and one another process wrote."""
        table = TableSource(tmp_path / "source.db")
        table.insert(5)
        table.close()
        ledger = tmp_path / "ledger.db"
        SqliteLedger(ledger).head("events")  # the command never creates a ledger it is named
        env = _env("3600") | {"PYTHONPATH": str(ROOT), "TEST_SOURCE_DB": str(table.path)}
        with (tmp_path / "ingest.err").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "audit_core.cli", "ingest",
                 "tests.core.test_sources:open_table_source", "--follow", "--interval", "0.05",
                 "--ledger", str(ledger)],
                env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        stopping.append(proc)
        deadline = time.monotonic() + DEADLINE_S
        while chain_sizes(ledger).get("events", 0) < 6:  # source.started and 5 rows
            assert proc.poll() is None, (tmp_path / "ingest.err").read_text()
            assert time.monotonic() < deadline, "the rows were not ingested"
            time.sleep(0.05)  # polling the ledger for the ingested rows
        with _writer(ledger) as trail:
            trail.record("task.succeeded", {"i": 0})
        assert {"events": (6, None), CHAIN: (1, None)} == uncovered(ledger)
        _stop(proc, tmp_path, "ingest.err")
        assert {} == uncovered(ledger)
        assert 2 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))
