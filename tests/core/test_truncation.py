"""A tail cut with its checkpoints is caught by the Merkle subtrees it leaves (issue 11, item 3).

An append stores the subtrees each odd leaf completes; an attacker who deletes the last records
and the stored checkpoints but not ``merkle_subtrees`` leaves evidence that the chain was longer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail, verify_chain, verify_ledger
from audit_core.cli import main
from audit_core.errors import CheckpointError
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core import _tamper

CHAIN = "default"
SIZE = 26  # seq 0..25: the last stored subtree row is completed by leaf 25


@pytest.fixture
def signed(ledger_file: Path) -> Path:
    """A ledger of SIZE records with a checkpoint signed by the local key on close."""
    config = AuditConfig(ledger_url=f"sqlite:///{ledger_file}", actor=("service", "tests"))
    with AuditTrail(config) as trail:
        for i in range(SIZE):
            trail.record("task.succeeded", {"i": i})
    return ledger_file


class TestSubtreesBeyondRecords:
    """Stored Merkle state beyond the records is evidence of removal."""

    def test_cut_tail_with_checkpoints_fails_verify_chain(self, signed: Path) -> None:
        """23 records left with subtrees up to leaf 25 fail with CheckpointError naming both."""
        _tamper.cut_tail(signed, CHAIN, 23)
        ledger = SqliteLedger(signed, create=False, read_only=True)
        with pytest.raises(CheckpointError, match="last 3 record") as info:
            verify_chain(ledger, CHAIN)
        assert (CHAIN, 23) == (info.value.chain, info.value.seq)
        assert ("at least 26 records", "23 records") == (info.value.expected, info.value.found)

    def test_cut_tail_with_checkpoints_fails_cli_verify_with_key(
        self, signed: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`verify --key` exits 1 and names the chain, the expected and the found size."""
        _tamper.cut_tail(signed, CHAIN, 23)
        pub = str(signed.with_name(signed.name + ".key.pub"))
        assert 1 == main(["verify", "--ledger", f"sqlite:///{signed}", "--key", pub])
        err = capsys.readouterr().err
        assert f"chain {CHAIN!r}" in err
        assert "expected: at least 26 records" in err
        assert "found:    23 records" in err

    def test_cut_tail_fails_report(self, signed: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`report` carries the INVALID verdict and exits 1."""
        _tamper.cut_tail(signed, CHAIN, 24)
        assert 1 == main(["report", "--ledger", f"sqlite:///{signed}"])
        assert "INVALID" in capsys.readouterr().out

    def test_intact_odd_sized_chain_verifies(self, ledger_file: Path) -> None:
        """A chain of 23 records (leaf 22 completes no subtree) verifies: no false alarm."""
        config = AuditConfig(ledger_url=f"sqlite:///{ledger_file}", actor=("service", "tests"))
        with AuditTrail(config) as trail:
            for i in range(23):
                trail.record("task.succeeded", {"i": i})
        assert 23 == verify_chain(SqliteLedger(ledger_file, create=False), CHAIN).size


class TestDeletedChainWithMerkleState:
    """A chain whose records were all deleted, its subtrees or checkpoints left."""

    def test_deleted_records_with_subtrees_left_fail_verify(
        self, signed: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`verify` without --chain lists the chain from its subtrees and exits 1 naming it."""
        _tamper.cut_tail(signed, CHAIN, 0)
        assert 1 == main(["verify", "--ledger", f"sqlite:///{signed}"])
        err = capsys.readouterr().err
        assert f"chain {CHAIN!r}" in err
        assert "expected: at least 26 records" in err
        assert "found:    0 records" in err

    def test_untouched_ledger_lists_no_extra_chain(self, signed: Path) -> None:
        """An intact ledger verifies exactly its chains with records."""
        ledger = SqliteLedger(signed, create=False, read_only=True)
        assert [CHAIN] == [h.chain for h in verify_ledger(ledger)]
