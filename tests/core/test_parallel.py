"""verify with several processes: the same verdict and head as one process, or its error."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail, Event, _parallel, verify_chain
from audit_core.errors import BrokenLinkError, CheckpointError, HashMismatchError, SequenceError
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core import _tamper

CHAIN = "default"
SIZE = 13_001  # four ranges of 4,096 records (the smallest range) and a partial fifth


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger of SIZE records with checkpoints at many sizes, built once for the module."""
    path = tmp_path_factory.mktemp("parallel") / "ledger.db"
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}", synchronous="OFF", checkpoint_every=997, actor=("t", "t")
    )
    with AuditTrail(config) as trail:
        for start in range(0, SIZE, 1000):
            trail.record_many(
                Event(type="task.started", data={"i": i})
                for i in range(start, min(start + 1000, SIZE))
            )
        trail.checkpoint(CHAIN)
    return path


@pytest.fixture
def copy(big: Path, tmp_path: Path) -> Path:
    """A private copy of the big ledger, to tamper with."""
    target = tmp_path / "ledger.db"
    target.write_bytes(big.read_bytes())
    target.with_name("ledger.db.key").write_bytes(big.with_name("ledger.db.key").read_bytes())
    return target


@pytest.fixture(autouse=True)
def _small_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split chains of a few thousand records, so tests stay fast."""
    monkeypatch.setattr(_parallel, "MIN_RECORDS_PER_JOB", 1_000)


class TestVerifyParallel:
    """Several processes, one verdict."""

    def test_same_head_as_one_process(self, big: Path) -> None:
        """jobs=2 returns exactly the one-process head: size, head hash, Merkle root, claims."""
        ledger = SqliteLedger(big)
        one = verify_chain(ledger, CHAIN)
        two = verify_chain(ledger, CHAIN, jobs=2)
        assert one == two
        assert (SIZE, 14) == (two.size, two.checkpoints)

    def test_parallel_path_is_taken(self, big: Path) -> None:
        """The split really happens (verify_parallel returns a head, not None)."""
        ledger = SqliteLedger(big)
        head = _parallel.verify_parallel(ledger, CHAIN, [], 2)
        assert head is not None
        assert verify_chain(ledger, CHAIN).root == head.root

    @pytest.mark.parametrize("seq", [0, 4095, 4096, 8191, 12_999, SIZE - 1])
    def test_changed_record_gives_the_one_process_error(self, copy: Path, seq: int) -> None:
        """A changed record anywhere, range edges included, fails with the exact error."""
        _tamper.flip_byte(copy, CHAIN, seq, 40, 1)
        with pytest.raises(HashMismatchError) as info:
            verify_chain(SqliteLedger(copy), CHAIN, jobs=2)
        assert (CHAIN, seq) == (info.value.chain, info.value.seq)

    def test_broken_link_at_a_range_boundary(self, copy: Path) -> None:
        """A rehashed record just before a boundary breaks the link checked between ranges."""
        _tamper.edit_body(copy, CHAIN, 4095, lambda r: {**r, "data": {"i": -1}}, rehash=True)
        _tamper.cover_tracks(copy, CHAIN)  # no checkpoint to catch it first
        with pytest.raises(BrokenLinkError) as info:
            verify_chain(SqliteLedger(copy), CHAIN, jobs=2)
        assert 4096 == info.value.seq

    def test_deleted_record_at_a_range_start(self, copy: Path) -> None:
        """A missing first record of a range is a SequenceError naming it."""
        _tamper.delete(copy, CHAIN, 8192)
        with pytest.raises(SequenceError) as info:
            verify_chain(SqliteLedger(copy), CHAIN, jobs=2)
        assert 8192 == info.value.seq

    def test_rewritten_chain_fails_its_checkpoints(self, copy: Path) -> None:
        """A rewrite consistent in its links still fails the stored checkpoints' roots."""
        _tamper.edit_body(copy, CHAIN, SIZE - 1, lambda r: {**r, "data": {}}, rehash=True)
        with pytest.raises(CheckpointError, match=f"tree size {SIZE}"):
            verify_chain(SqliteLedger(copy), CHAIN, jobs=2)

    def test_cli_jobs(self, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`verify --jobs 2` exits 0 on the valid ledger and 1 naming the record when not."""
        from audit_core.cli import main

        url = f"sqlite:///{copy}"
        assert 0 == main(["verify", "--ledger", url, "--jobs", "2"])
        _tamper.flip_byte(copy, CHAIN, 9000, 40, 1)
        capsys.readouterr()
        assert 1 == main(["verify", "--ledger", url, "--jobs", "2"])
        assert "seq 9000" in capsys.readouterr().err
