"""Record format v1: fields, canonical bytes, hash, genesis."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import canonical_bytes, genesis, leaf_hash
from audit_core._chain import verify_records
from audit_core._record import FIELDS, StoredRecord, is_timestamp, prepare
from audit_core.errors import FormatError, InvalidRecordError

ASSETS = Path(__file__).parent.parent / "assets"
TS = "2026-11-28T10:00:00.123456Z"


def _prepared(**over: object):  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {
        "chain": "default",
        "event": "task.succeeded",
        "ts": TS,
        "actor": {"type": "service", "id": "airflow"},
        "subject": {"dag_id": "ml", "task_id": "train"},
        "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
        "data": {"rows": 1},
    }
    fields.update(over)
    return prepare(**fields)  # type: ignore[arg-type]


class TestPrepare:
    """prepare() and seal(): the canonical bytes of a record."""

    @settings(max_examples=200, deadline=None)
    @given(
        data=st.dictionaries(st.text(max_size=6), st.integers(-1000, 1000) | st.text(max_size=6)),
        seq=st.integers(0, 2**40),
    )
    def test_seal_equals_canonical_bytes_of_whole_record(
        self, data: dict[str, object], seq: int
    ) -> None:
        """Concatenated field encodings equal RFC 8785 of the whole record object."""
        prev = hashlib.sha256(b"x").hexdigest()
        body = _prepared(data=data).seal(seq, prev)
        whole = orjson.loads(body)
        assert sorted(FIELDS) == list(whole)
        assert canonical_bytes(whole) == body
        assert (seq, prev, 1) == (whole["seq"], whole["prev"], whole["v"])

    def test_trace_is_null_when_absent(self) -> None:
        """A record without trace context carries "trace": null."""
        assert b'"trace":null' in _prepared(trace=None).seal(0, genesis("default"))

    @pytest.mark.parametrize("event", ["task", "Task.started", "task..x", "task.started!", "1a.b"])
    def test_invalid_event_types_raise(self, event: str) -> None:
        """Event types must be dotted lower-case words."""
        with pytest.raises(InvalidRecordError, match="event type"):
            _prepared(event=event)

    def test_custom_namespaced_event_is_accepted(self) -> None:
        """Custom event types live under a namespace."""
        assert "acme.model.approved" == _prepared(event="acme.model.approved").event

    @pytest.mark.parametrize(
        "trace",
        [
            {"trace_id": "0" * 32, "span_id": "00f067aa0ba902b7"},
            {"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736", "span_id": "00f067aa0ba902b7"},
            {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
            {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "x": 1},
        ],
    )
    def test_invalid_trace_context_raises(self, trace: dict[str, object]) -> None:
        """Trace ids follow W3C Trace Context: lower-case hex, not all zeros, nothing else."""
        with pytest.raises(InvalidRecordError, match="trace"):
            _prepared(trace=trace)

    @pytest.mark.parametrize("chain", ["", "has space", "x" * 201, "-leading"])
    def test_invalid_chain_ids_raise(self, chain: str) -> None:
        """Chain ids are short and printable."""
        with pytest.raises(InvalidRecordError, match="chain id"):
            _prepared(chain=chain)

    def test_actor_needs_type_and_id(self) -> None:
        """An actor without an id is refused."""
        with pytest.raises(InvalidRecordError, match="actor"):
            _prepared(actor={"type": "user"})


class TestHashes:
    """Leaf hash and genesis value."""

    def test_leaf_hash_is_rfc9162_leaf(self) -> None:
        """The record hash is SHA-256 over 0x00 followed by the bytes (RFC 9162 §2.1.1)."""
        assert hashlib.sha256(b"\x00abc").digest() == leaf_hash(b"abc")
        assert hashlib.sha256(b"abc").digest() != leaf_hash(b"abc")

    def test_genesis_is_derived_from_chain(self) -> None:
        """seq 0 links to a documented value derived from the chain id."""
        expected = hashlib.sha256(b"workflow-audit/v1/genesis\x00prod").hexdigest()
        assert expected == genesis("prod")
        assert genesis("prod") != genesis("dev")

    def test_golden_records(self) -> None:
        """The golden chain in tests/assets re-seals to the same bytes and hashes (v1 is frozen)."""
        bodies = ASSETS.joinpath("golden_v1.jsonl").read_bytes().splitlines()
        hashes = ASSETS.joinpath("golden_v1.hashes").read_text().split()
        assert bodies[0] == _prepared().seal(0, genesis("default"))
        data = {"error": {"type": "ValueError", "message": "boom"}, "ratio": 1e-7, "big": 1e16}
        assert bodies[1] == _prepared(event="task.failed", trace=None, data=data).seal(1, hashes[0])
        assert hashes == [leaf_hash(b).hex() for b in bodies]
        assert hashes[0] == orjson.loads(bodies[1])["prev"]


class TestNameCache:
    """Validated chain ids and event types are cached separately."""

    def test_valid_chain_id_is_not_a_valid_event(self) -> None:
        """A name accepted as a chain id ('default') is still refused as an event type."""
        _prepared(chain="default")
        with pytest.raises(InvalidRecordError, match="event type"):
            _prepared(event="default")


#: Timestamps of the right shape that name no instant, or use digits other than ASCII ones.
BAD_TIMESTAMPS = [
    "2026-99-99T99:99:99.000000Z",
    "2026-13-01T00:00:00.000000Z",
    "2026-00-10T00:00:00.000000Z",
    "2026-02-30T00:00:00.000000Z",
    "2025-02-29T00:00:00.000000Z",
    "2026-04-31T00:00:00.000000Z",
    "2026-11-28T24:00:00.000000Z",
    "2026-11-28T10:60:00.000000Z",
    "2026-11-28T10:00:60.000000Z",
    "\u0662\u0660\u0662\u0666-11-28T10:00:00.000000Z",  # Arabic-Indic digits
    "2026-11-28T10:00:00.\uff10\uff10\uff10\uff10\uff10\uff10Z",  # fullwidth digits
    "0000-01-01T00:00:00.000000Z",
]


class TestTimestamps:
    """One timestamp rule for writer and verifier: RFC 3339, ASCII digits, a real instant."""

    @pytest.mark.parametrize("ts", BAD_TIMESTAMPS)
    def test_bad_timestamps_are_refused(self, ts: str) -> None:
        """prepare() refuses a timestamp that is no real UTC instant in ASCII digits."""
        assert False is is_timestamp(ts)
        with pytest.raises(InvalidRecordError, match="timestamp"):
            _prepared(ts=ts)

    @pytest.mark.parametrize(
        "ts",
        [
            "2024-02-29T23:59:59.999999Z",
            "2026-01-31T00:00:00.000000Z",
            "2026-12-31T23:59:59.000000Z",
            "0001-01-01T00:00:00.000000Z",
        ],
    )
    def test_real_instants_are_accepted(self, ts: str) -> None:
        """Leap days, month ends and the first year are real dates."""
        assert True is is_timestamp(ts)
        assert ts == _prepared(ts=ts).ts

    @pytest.mark.parametrize("ts", BAD_TIMESTAMPS[:1] + BAD_TIMESTAMPS[3:4] + BAD_TIMESTAMPS[9:10])
    def test_verifier_names_a_stored_bad_timestamp(self, ts: str) -> None:
        """A stored record whose ts is no instant fails verification, naming chain, seq, field."""
        good = orjson.loads(_prepared().seal(0, genesis("default")))
        first = canonical_bytes(good)
        bad = dict(good, ts=ts, seq=1, prev=leaf_hash(first).hex())
        second = canonical_bytes(bad)
        records = [
            StoredRecord("default", 0, leaf_hash(first), first),
            StoredRecord("default", 1, leaf_hash(second), second),
        ]
        with pytest.raises(FormatError) as caught:
            verify_records("default", records)
        assert 1 == caught.value.seq
        assert "chain 'default' seq 1: field 'ts'" in str(caught.value)
