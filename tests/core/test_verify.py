"""Verification catches every way of tampering with a ledger file, at the record it happened."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import (
    AuditConfig,
    AuditTrail,
    ChainHead,
    Event,
    VerificationError,
    canonical_bytes,
    genesis,
    leaf_hash,
    verify_chain,
    verify_ledger,
)
from audit_core.errors import (
    BrokenLinkError,
    CheckpointError,
    FormatError,
    HashMismatchError,
    HeadMismatchError,
    NonCanonicalError,
    SequenceError,
)
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core import _tamper


def _trip(head: ChainHead) -> tuple[str, int, str]:
    """A verified head without its Merkle root (roots are checked in test_checkpoint.py)."""
    return (head.chain, head.size, head.head)


CHAIN = "default"
#: Six records with varied payloads: numbers RFC 8785 writes specially, non-ASCII text and keys.
RECORDS: list[tuple[str, dict[str, Any]]] = [
    ("dag.started", {}),
    ("task.started", {"loss": 0.1, "big": 1e16, "tiny": 1e-7, "neg": -2.5, "whole": 3.0}),
    ("data.uploaded", {"rows": 1000, "uri": "s3://bucket/train.csv"}),
    ("task.succeeded", {"text": "héllo ☃ 😀", "\ue000": "private use", "nested": [1.5, None]}),
    ("model.deployed", {"model": "churn", "version": 7, "flags": [True, False]}),
    ("task.failed", {"error": {"type": "ValueError", "message": "boom"}}),
]
SIZE = len(RECORDS)
MIDDLE = 2  # the record most tests tamper with


def write_records(trail: AuditTrail, chain: str = CHAIN) -> None:
    """Append RECORDS to ``chain``, with fixed timestamps so the bytes are reproducible."""
    for i, (event, data) in enumerate(RECORDS):
        trail.record(
            event,
            data,
            subject={"dag_id": "ml", "task_id": f"t{i}", "try_number": 1},
            ts=f"2026-11-28T10:00:0{i}.000000Z",
            chain=chain,
        )


def hashes(path: Path, chain: str = CHAIN, size: int = SIZE) -> list[str]:
    """The stored hashes of a chain, hex, by seq."""
    return [_tamper.row(path, chain, seq)[0].hex() for seq in range(size)]


def verify(path: Path, chain: str = CHAIN, **expect: Any) -> ChainHead:
    """verify_chain on a fresh ledger opened read-only on ``path``."""
    ledger = SqliteLedger(path, create=False)
    try:
        return verify_chain(ledger, chain, **expect)
    finally:
        ledger.close()


def assert_names(exc: VerificationError, chain: str, seq: int) -> None:
    """The error's attributes and its message name the record (chain, seq)."""
    assert (chain, seq) == (exc.chain, exc.seq)
    assert f"chain {chain!r}" in str(exc)
    assert re.search(rf"\bseq {seq}\b", str(exc)), str(exc)


@pytest.fixture
def six(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger file holding RECORDS in chain ``default``."""
    write_records(trail)
    trail.close()
    return ledger_file


@pytest.fixture
def several(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger file with chains ``a`` (6), ``b`` (6) and ``default`` (1)."""
    write_records(trail, "a")
    write_records(trail, "b")
    trail.record("task.started", {"n": 1})
    trail.close()
    return ledger_file


class TestVerifyChain:
    """verify_chain() on chains nobody tampered with."""

    def test_untouched_chain_is_valid(self, six: Path) -> None:
        """A freshly written chain verifies to its size and the hash of its last record."""
        assert (CHAIN, SIZE, hashes(six)[-1]) == _trip(verify(six))

    def test_long_chain_is_valid(self, trail: AuditTrail) -> None:
        """A chain of a few hundred records written in batches verifies end to end."""
        for batch in range(3):
            trail.record_many(
                Event(type="task.succeeded", data={"batch": batch, "i": i, "x": i / 7})
                for i in range(100)
            )
        head = trail.ledger.head(CHAIN)
        assert head is not None
        assert (CHAIN, 300, head.hash.hex()) == _trip(verify_chain(trail.ledger, CHAIN))

    def test_empty_chain_has_genesis_head(self, six: Path) -> None:
        """A chain without records verifies to size 0 and its genesis value."""
        assert ("other", 0, genesis("other")) == _trip(verify(six, "other"))

    def test_expectations_that_hold_pass(self, six: Path) -> None:
        """expect_size and expect_head (any letter case) that match the chain pass."""
        head = hashes(six)[-1]
        expected = (CHAIN, SIZE, head)
        assert expected == _trip(verify(six, expect_size=SIZE, expect_head=head.upper()))

    def test_progress_reports_the_final_count(self, six: Path) -> None:
        """on_progress is called with the number of records verified when the chain ends."""
        seen: list[int] = []
        ledger = SqliteLedger(six, create=False)
        verify_chain(ledger, CHAIN, on_progress=seen.append)
        ledger.close()
        assert [SIZE] == seen


class TestChangedRecord:
    """verify_chain() when a record's bytes or stored hash were changed."""

    def test_edited_data_fails_the_hash_check(self, six: Path) -> None:
        """Changing a data field without its hash fails with HashMismatchError at that seq."""
        old = hashes(six)[MIDDLE]
        body = _tamper.edit_body(six, CHAIN, MIDDLE, lambda r: {**r, "data": {"rows": 999}})
        with pytest.raises(HashMismatchError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert (leaf_hash(body).hex(), old) == (info.value.expected, info.value.found)

    def test_edited_data_with_new_hash_breaks_the_next_link(self, six: Path) -> None:
        """Changing a data field and its hash fails with BrokenLinkError at the next seq."""
        old = hashes(six)[MIDDLE]
        body = _tamper.edit_body(
            six, CHAIN, MIDDLE, lambda r: {**r, "data": {"rows": 999}}, rehash=True
        )
        with pytest.raises(BrokenLinkError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE + 1)
        assert f"record at seq {MIDDLE}" in str(info.value)
        assert (leaf_hash(body).hex(), old) == (info.value.expected, info.value.found)

    def test_edited_stored_hash_fails_the_hash_check(self, six: Path) -> None:
        """Changing only a stored hash fails with HashMismatchError at that seq."""
        old = hashes(six)[MIDDLE]
        _tamper.set_hash(six, CHAIN, MIDDLE, bytes(32))
        with pytest.raises(HashMismatchError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert (old, "00" * 32) == (info.value.expected, info.value.found)

    def test_rewritten_last_record_is_caught_by_expect_head(self, six: Path) -> None:
        """A rewritten, rehashed last record fails the stored checkpoint; with the checkpoint
        and frontier deleted too, it passes alone and fails against the old head."""
        old = hashes(six)[-1]
        body = _tamper.edit_body(six, CHAIN, SIZE - 1, lambda r: {**r, "data": {}}, rehash=True)
        with pytest.raises(CheckpointError, match=f"tree size {SIZE}"):
            verify(six)
        _tamper.cover_tracks(six, CHAIN)
        assert (CHAIN, SIZE, leaf_hash(body).hex()) == _trip(verify(six))
        with pytest.raises(HeadMismatchError) as info:
            verify(six, expect_head=old)
        assert (old, leaf_hash(body).hex()) == (info.value.expected, info.value.found)

    def test_hash_stored_as_text_fails_verification(self, six: Path) -> None:
        """A stored hash replaced by its hex text (SQLite TEXT) fails with a VerificationError
        at that seq, not with a crash."""
        digest, _ = _tamper.row(six, CHAIN, MIDDLE)
        _tamper.set_text(six, CHAIN, MIDDLE, "hash", digest.hex())
        with pytest.raises(VerificationError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)

    def test_body_stored_as_text_fails_verification(self, six: Path) -> None:
        """A body replaced by edited JSON text (SQLite TEXT) fails with a VerificationError at
        that seq, not with a crash."""
        value = _tamper.record(six, CHAIN, MIDDLE)
        text = canonical_bytes({**value, "data": {"rows": 999}}).decode()
        _tamper.set_text(six, CHAIN, MIDDLE, "body", text)
        with pytest.raises(VerificationError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)

    @pytest.mark.parametrize("column", ["hash", "body"])
    def test_column_retyped_as_text_fails_verification(self, six: Path, column: str) -> None:
        """A hash or body re-typed as SQLite TEXT (same bytes, not UTF-8) fails with a
        VerificationError at that seq, not with a read error."""
        _tamper.cast_column(six, CHAIN, MIDDLE, column)
        with pytest.raises(VerificationError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)


class TestRemovedOrMovedRecords:
    """verify_chain() when rows were deleted, swapped, inserted or duplicated."""

    def test_deleted_middle_record_is_a_missing_seq(self, six: Path) -> None:
        """Deleting a middle record fails with SequenceError naming the missing seq."""
        _tamper.delete(six, CHAIN, MIDDLE)
        with pytest.raises(SequenceError, match=f"seq {MIDDLE} missing") as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert (str(MIDDLE), str(MIDDLE + 1)) == (info.value.expected, info.value.found)

    def test_deleted_first_record_is_a_missing_seq(self, six: Path) -> None:
        """Deleting the first record fails with SequenceError at seq 0."""
        _tamper.delete(six, CHAIN, 0)
        with pytest.raises(SequenceError, match="seq 0 missing") as info:
            verify(six)
        assert_names(info.value, CHAIN, 0)

    def test_deleted_last_record_fails_the_stored_checkpoint(self, six: Path) -> None:
        """Cutting the last record off fails: the stored checkpoint covers it."""
        _tamper.delete(six, CHAIN, SIZE - 1)
        with pytest.raises(CheckpointError, match=r"last 1 record\(s\) were removed") as info:
            verify(six)
        assert (CHAIN, SIZE - 1) == (info.value.chain, info.value.seq)

    def test_deleted_last_record_and_checkpoints_pass_without_expectations(self, six: Path) -> None:
        """Cutting the last record and the stored checkpoints leaves a valid, shorter chain:
        the known limit, which an external checkpoint or head closes."""
        before = hashes(six)
        _tamper.delete(six, CHAIN, SIZE - 1)
        _tamper.cover_tracks(six, CHAIN)
        assert (CHAIN, SIZE - 1, before[-2]) == _trip(verify(six))

    def test_deleted_last_record_fails_expect_size(self, six: Path) -> None:
        """Cutting the last record off fails with HeadMismatchError given the old size."""
        _tamper.delete(six, CHAIN, SIZE - 1)
        _tamper.cover_tracks(six, CHAIN)
        with pytest.raises(HeadMismatchError, match="missing from the tail") as info:
            verify(six, expect_size=SIZE)
        assert (CHAIN, SIZE - 2) == (info.value.chain, info.value.seq)
        assert (str(SIZE), str(SIZE - 1)) == (info.value.expected, info.value.found)
        assert f"chain {CHAIN!r}" in str(info.value)

    def test_deleted_last_record_fails_expect_head(self, six: Path) -> None:
        """Cutting the last record off fails with HeadMismatchError given the old head hash."""
        before = hashes(six)
        _tamper.delete(six, CHAIN, SIZE - 1)
        _tamper.cover_tracks(six, CHAIN)
        with pytest.raises(HeadMismatchError) as info:
            verify(six, expect_head=before[-1])
        assert (CHAIN, SIZE - 2) == (info.value.chain, info.value.seq)
        assert (before[-1], before[-2]) == (info.value.expected, info.value.found)

    def test_swapped_records_fail_the_seq_field(self, six: Path) -> None:
        """Exchanging two records' bytes and hashes fails with FormatError on field 'seq'."""
        _tamper.swap(six, CHAIN, 3, 4)
        with pytest.raises(FormatError, match="field 'seq'") as info:
            verify(six)
        assert_names(info.value, CHAIN, 3)
        assert ("3", "4") == (info.value.expected, info.value.found)

    def test_forged_record_fails_at_the_record_after_it(self, six: Path) -> None:
        """A well-linked, well-hashed record inserted mid-chain fails at the one after it."""
        _tamper.insert_forged(six, CHAIN, MIDDLE, {"rows": 1})
        with pytest.raises(FormatError, match="field 'seq'") as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE + 1)
        assert (str(MIDDLE + 1), str(MIDDLE)) == (info.value.expected, info.value.found)

    def test_forged_record_appended_is_caught_by_expectations(self, six: Path) -> None:
        """A well-linked record appended at the end looks like any append: it passes alone
        (no record is signed, only tree heads) and fails the old size/head."""
        before = hashes(six)
        forged = _tamper.insert_forged(six, CHAIN, SIZE, {"approved": True})
        assert (CHAIN, SIZE + 1, forged.hex()) == _trip(verify(six))
        with pytest.raises(HeadMismatchError, match="it grew"):
            verify(six, expect_size=SIZE)
        with pytest.raises(HeadMismatchError) as info:
            verify(six, expect_head=before[-1])
        assert (before[-1], forged.hex()) == (info.value.expected, info.value.found)

    def test_duplicated_seq_is_a_sequence_error(self, six: Path) -> None:
        """A second row with an existing seq fails with SequenceError right after it."""
        _tamper.duplicate_seq(six, CHAIN, MIDDLE)
        with pytest.raises(SequenceError, match=f"seq {MIDDLE} appears again") as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE + 1)
        assert (str(MIDDLE + 1), str(MIDDLE)) == (info.value.expected, info.value.found)

    def test_first_record_moved_to_another_chain_fails_there(self, six: Path) -> None:
        """A first record moved as is to another chain fails there on field 'chain'."""
        _tamper.move_chain(six, CHAIN, 0, "other")
        with pytest.raises(FormatError, match="field 'chain'") as info:
            verify(six, "other")
        assert_names(info.value, "other", 0)
        assert ("'other'", repr(CHAIN)) == (info.value.expected, info.value.found)

    def test_first_record_moved_and_renamed_fails_the_genesis_link(self, six: Path) -> None:
        """A first record moved to another chain with its chain field rewritten and rehashed
        fails with BrokenLinkError: its prev is the genesis value of the old chain."""
        _tamper.edit_body(six, CHAIN, 0, lambda r: {**r, "chain": "other"}, rehash=True)
        _tamper.move_chain(six, CHAIN, 0, "other")
        with pytest.raises(BrokenLinkError, match="genesis value") as info:
            verify(six, "other")
        assert_names(info.value, "other", 0)
        assert (genesis("other"), genesis(CHAIN)) == (info.value.expected, info.value.found)

    def test_chain_that_lost_its_first_record_fails(self, six: Path) -> None:
        """The chain a first record was moved out of fails with SequenceError at seq 0."""
        _tamper.move_chain(six, CHAIN, 0, "other")
        with pytest.raises(SequenceError) as info:
            verify(six)
        assert_names(info.value, CHAIN, 0)


class TestRecordEncoding:
    """verify_chain() when a record's bytes are re-encoded or break the record format."""

    @pytest.mark.parametrize("style", sorted(_tamper.NONCANONICAL_STYLES))
    def test_noncanonical_bytes_fail_at_that_record(self, six: Path, style: str) -> None:
        """Same JSON meaning in other bytes, rehashed, fails with NonCanonicalError right there
        (before the next record's broken link is reached)."""
        canonical = _tamper.row(six, CHAIN, MIDDLE)[1]
        new = _tamper.reencode_noncanonical(six, CHAIN, MIDDLE, style)
        with pytest.raises(NonCanonicalError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert canonical[:120].decode() == info.value.expected
        assert new[:120].decode() == info.value.found

    @pytest.mark.parametrize(
        ("field", "value", "expected"),
        [
            ("v", 2, "1"),
            ("v", True, "1"),
            ("chain", "other", repr(CHAIN)),
            ("seq", str(MIDDLE), str(MIDDLE)),
            ("ts", "2026-11-28 10:00:02", "an RFC 3339 UTC timestamp with microseconds"),
            ("event", "Task Failed", "a dotted event type"),
            ("actor", "airflow", "an object"),
            ("data", [1, 2], "an object"),
            ("trace", "abc", "null or an object"),
            ("prev", "abc", "a 64-hex hash"),
        ],
    )
    def test_wrong_field_fails_the_format_check(
        self, six: Path, field: str, value: object, expected: str
    ) -> None:
        """A canonical, rehashed record with a wrong field value fails with FormatError."""
        _tamper.edit_body(six, CHAIN, MIDDLE, lambda r: {**r, field: value}, rehash=True)
        with pytest.raises(FormatError, match=f"field {field!r}") as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert (expected, repr(value)) == (info.value.expected, info.value.found)

    def test_boolean_seq_fails_the_format_check(self, six: Path) -> None:
        """A seq written as ``true`` at seq 1 (equal to 1 in Python) fails with FormatError."""
        _tamper.edit_body(six, CHAIN, 1, lambda r: {**r, "seq": True}, rehash=True)
        with pytest.raises(FormatError, match="field 'seq'") as info:
            verify(six)
        assert_names(info.value, CHAIN, 1)
        assert ("1", "True") == (info.value.expected, info.value.found)

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(lambda r: {**r, "extra": 1}, id="extra field"),
            pytest.param(lambda r: {k: v for k, v in r.items() if k != "trace"}, id="missing"),
        ],
    )
    def test_wrong_field_set_fails_the_format_check(self, six: Path, change: Any) -> None:
        """A canonical, rehashed record without exactly the v1 fields fails with FormatError."""
        _tamper.edit_body(six, CHAIN, MIDDLE, change, rehash=True)
        with pytest.raises(FormatError, match="field '\\*'") as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)

    def test_body_that_is_not_an_object_fails_the_format_check(self, six: Path) -> None:
        """A rehashed body that is canonical JSON but not an object fails with FormatError."""
        _tamper.set_body(six, CHAIN, MIDDLE, canonical_bytes([1, 2]), rehash=True)
        with pytest.raises(FormatError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert "list" == info.value.found

    def test_body_that_is_not_json_fails_the_format_check(self, six: Path) -> None:
        """A rehashed body that is not JSON fails with FormatError showing the bytes found."""
        _tamper.set_body(six, CHAIN, MIDDLE, b"not json", rehash=True)
        with pytest.raises(FormatError, match="not an RFC 8785 JSON record") as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)
        assert ("RFC 8785 JSON", "not json") == (info.value.expected, info.value.found)

    def test_body_that_is_not_json_without_rehash_fails_the_hash_check(self, six: Path) -> None:
        """A body replaced without its hash fails the hash check first, at that seq."""
        _tamper.set_body(six, CHAIN, MIDDLE, b"not json")
        with pytest.raises(HashMismatchError) as info:
            verify(six)
        assert_names(info.value, CHAIN, MIDDLE)


class TestVerifyLedger:
    """verify_ledger() over several chains."""

    def test_every_chain_is_verified(self, several: Path) -> None:
        """Without names, every chain is verified and returned, sorted by id."""
        ledger = SqliteLedger(several, create=False)
        heads = verify_ledger(ledger)
        ledger.close()
        expected = [
            ("a", SIZE, hashes(several, "a")[-1]),
            ("b", SIZE, hashes(several, "b")[-1]),
            ("default", 1, hashes(several, "default", 1)[-1]),
        ]
        assert expected == [_trip(h) for h in heads]

    def test_chains_with_the_same_records_have_different_heads(self, several: Path) -> None:
        """Identical events in two chains hash differently (the chain id is in every record)."""
        assert set() == set(hashes(several, "a")) & set(hashes(several, "b"))

    def test_named_chains_only(self, several: Path) -> None:
        """With names, only those chains are verified."""
        ledger = SqliteLedger(several, create=False)
        assert ["b"] == [h.chain for h in verify_ledger(ledger, ["b"])]
        ledger.close()

    def test_named_empty_chain_fails(self, several: Path) -> None:
        """A chain named explicitly that has no records fails with HeadMismatchError."""
        ledger = SqliteLedger(several, create=False)
        with pytest.raises(HeadMismatchError, match="'nope' has no records") as info:
            verify_ledger(ledger, ["nope"])
        ledger.close()
        assert ("nope", None) == (info.value.chain, info.value.seq)
        assert ("at least 1 record", "0") == (info.value.expected, info.value.found)

    def test_empty_ledger_has_no_chains(self, ledger_file: Path) -> None:
        """A ledger without records verifies to no chains at all."""
        ledger = SqliteLedger(ledger_file)
        assert [] == verify_ledger(ledger)
        ledger.close()

    def test_tampered_chain_is_named(self, several: Path) -> None:
        """Tampering with one chain of several fails naming that chain and seq."""
        _tamper.set_hash(several, "b", 4, bytes(32))
        ledger = SqliteLedger(several, create=False)
        with pytest.raises(HashMismatchError) as info:
            verify_ledger(ledger)
        ledger.close()
        assert_names(info.value, "b", 4)


@pytest.fixture(scope="class")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One closed six-record ledger, shared by every Hypothesis example (copied, never changed)."""
    path = tmp_path_factory.mktemp("pristine") / "ledger.db"
    with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}", actor=("service", "t"))) as t:
        write_records(t)
    return path


@pytest.fixture(scope="class")
def pristine_bodies(pristine: Path) -> list[bytes]:
    """The stored bytes of the pristine ledger's records, by seq."""
    return [_tamper.row(pristine, CHAIN, seq)[1] for seq in range(SIZE)]


@contextmanager
def _copy(pristine: Path) -> Iterator[Path]:
    """A scratch copy of ``pristine``, removed afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "ledger.db"
        shutil.copy(pristine, copy)
        yield copy


class TestAnyChangedByte:
    """verify_chain() against a single flipped byte anywhere in any record (Hypothesis)."""

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def test_flipped_byte_fails(
        self, pristine: Path, pristine_bodies: list[bytes], data: st.DataObject
    ) -> None:
        """Flipping any bit pattern of any stored byte, hash untouched, fails verification."""
        seq = data.draw(st.integers(0, SIZE - 1), label="seq")
        index = data.draw(st.integers(0, len(pristine_bodies[seq]) - 1), label="index")
        mask = data.draw(st.integers(1, 255), label="mask")
        with _copy(pristine) as copy:
            _tamper.flip_byte(copy, CHAIN, seq, index, mask)
            with pytest.raises(HashMismatchError) as info:
                verify(copy)
            assert (CHAIN, seq) == (info.value.chain, info.value.seq)

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def test_flipped_byte_with_new_hash_fails(
        self, pristine: Path, pristine_bodies: list[bytes], data: st.DataObject
    ) -> None:
        """Flipping any stored byte and storing the new bytes' hash still fails verification:
        at that record (canonical or format check) or the next (link); for the last record,
        against the head hash kept elsewhere."""
        seq = data.draw(st.integers(0, SIZE - 1), label="seq")
        index = data.draw(st.integers(0, len(pristine_bodies[seq]) - 1), label="index")
        mask = data.draw(st.integers(1, 255), label="mask")
        head = leaf_hash(pristine_bodies[-1]).hex()
        with _copy(pristine) as copy:
            _tamper.flip_byte(copy, CHAIN, seq, index, mask, rehash=True)
            if seq < SIZE - 1:
                with pytest.raises(VerificationError) as info:
                    verify(copy)
                assert not isinstance(info.value, (HashMismatchError, SequenceError))
                if info.value.seq != seq:
                    assert (seq + 1, BrokenLinkError) == (info.value.seq, type(info.value))
            with pytest.raises(VerificationError):
                verify(copy, expect_head=head)
