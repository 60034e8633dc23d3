"""audit_core.model: summaries of a model's inputs and outputs, batch Merkle roots, prediction
proofs, and TaskApi.model_invoked's fail-open recording."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import AuditConfig, Event
from audit_core._jcs import canonical_bytes
from audit_core._normalize import to_json
from audit_core.errors import InvalidRecordError, ProofError
from audit_core.hooks import COUNTERS, AdapterBase, AdapterOptions, EventFilter, TaskApi
from audit_core.model import (
    LEAF_FORMAT,
    MAX_SCHEMA_MEMBERS,
    PROOF_FORMAT,
    batch_root,
    model_event,
    prediction_proof,
    summary,
    verify_prediction,
)
from tests.core._spooling import bodies

ROWS: list[dict[str, object]] = [
    {"tenure": 3, "spend": 81.5, "region": "eu"},
    {"tenure": 40, "spend": 12.25, "region": None},
]
PREDICTIONS = [{"p": 0.91, "label": "churn"}, {"p": 0.07, "label": "stay"}]


def _as_record_holds(value: object) -> Any:
    """What record data holds for ``value`` (to_json, nothing truncated)."""
    return to_json({"value": value}, max_value_bytes=1 << 40).value["value"]


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 Merkle tree hash, written from the RFC's definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _plain_jcs(value: object) -> bytes:
    """RFC 8785 bytes of ints, ASCII strings and containers of them (json's sorted compact
    form is exactly that for these), independent of audit_core."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class FakeFrame:
    """A data-frame-like value: pandas' ``to_dict(orient="records")``, nothing else."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        self._rows = rows

    def to_dict(self, orient: str = "dict") -> list[dict[str, object]]:
        assert "records" == orient
        return [dict(r) for r in self._rows]


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


class TestSummary:
    """summary(): digest, size, rows and schema of a value as a record holds it."""

    def test_digest_and_size_are_those_of_the_canonical_bytes(self) -> None:
        """sha256 and bytes are SHA-256 and length of the RFC 8785 bytes of the rows."""
        raw = canonical_bytes(ROWS)
        got = summary(ROWS)
        assert hashlib.sha256(raw).hexdigest() == got["sha256"]
        assert len(raw) == got["bytes"]
        assert 2 == got["rows"]
        assert ROWS == got["value"]

    def test_schema_is_the_union_of_member_types(self) -> None:
        """A list of objects has each member's JSON type, types that differ joined by |."""
        assert {"region": "null|string", "spend": "number", "tenure": "number"} == summary(ROWS)[
            "schema"
        ]
        assert {"a": "array", "b": "object", "c": "boolean"} == summary(
            {"a": [1], "b": {}, "c": True}
        )["schema"]

    def test_schema_is_capped(self) -> None:
        """Past MAX_SCHEMA_MEMBERS members the schema stops and says it is truncated."""
        wide = {f"f{i:04d}": i for i in range(MAX_SCHEMA_MEMBERS + 50)}
        got = summary([wide])
        assert MAX_SCHEMA_MEMBERS == len(got["schema"])  # type: ignore[arg-type]
        assert True is got["schema_truncated"]

    def test_values_false_leaves_the_value_out(self) -> None:
        """values=False: digests only."""
        assert "value" not in summary(ROWS, values=False)

    def test_data_frame_is_its_rows(self) -> None:
        """Anything with to_dict(orient="records") is summarized as its list of rows."""
        assert summary(ROWS) == summary(FakeFrame(ROWS))

    def test_non_json_values_become_what_the_record_holds(self) -> None:
        """NaN, huge integers, dates, sets and objects are converted as record data is."""
        odd = [
            {"x": math.nan, "big": 2**70, "exact": 10**16, "when": dt.date(2026, 1, 2)},
            {"s": {3, 1}, "obj": object(), "inf": -math.inf, "b": b"\x00"},
        ]
        expected = _as_record_holds(odd)
        got = summary(odd)
        assert expected == got["value"]
        assert hashlib.sha256(canonical_bytes(expected)).hexdigest() == got["sha256"]
        assert "NaN" == expected[0]["x"]
        assert "10000000000000000" == expected[0]["exact"]

    @settings(max_examples=300, deadline=None)
    @given(value=json_values)
    def test_any_value_digests_as_to_json_then_jcs(self, value: object) -> None:
        """For any value, the digest is of canonical_bytes(to_json(value)) (lists row by row)."""
        expected = (
            [_as_record_holds(v) for v in value]
            if isinstance(value, list)
            else _as_record_holds(value)
        )
        raw = canonical_bytes(expected)
        got = summary(value)
        assert (hashlib.sha256(raw).hexdigest(), len(raw)) == (got["sha256"], got["bytes"])


class TestModelEvent:
    """model_event(): the data of a model.invoked record."""

    def test_fields(self) -> None:
        """Model, version, summaries, data subject and facts; no batch unless asked."""
        data = model_event(
            "churn", 3, inputs=ROWS, outputs=PREDICTIONS, data_subject="customer-0042", env="prod"
        )
        assert {"model", "version", "inputs", "outputs", "data_subject", "env"} == set(data)
        assert summary(ROWS) == data["inputs"]
        assert summary(PREDICTIONS) == data["outputs"]
        assert "customer-0042" == data["data_subject"]

    def test_missing_inputs_are_left_out(self) -> None:
        """inputs and outputs of None are not summarized."""
        assert {"model": "m", "version": None} == model_event("m", None)

    def test_batch_root_is_rfc9162_over_items(self) -> None:
        """The batch root is the RFC 9162 MTH of SHA-256(0x00 ‖ JCS of {i, input, output})."""
        ins = [{"a": i, "b": f"r{i}"} for i in range(11)]
        outs = [[i % 2, "yes" if i % 2 else "no"] for i in range(11)]
        leaves = [
            hashlib.sha256(b"\x00" + _plain_jcs({"i": i, "input": x, "output": y})).digest()
            for i, (x, y) in enumerate(zip(ins, outs, strict=True))
        ]
        data = model_event("m", 1, inputs=ins, outputs=outs, batch=True)
        assert {"size": 11, "root": _mth(leaves).hex(), "leaf": LEAF_FORMAT} == data["batch"]
        assert _mth(leaves).hex() == batch_root(ins, outs)
        assert summary(ins) == data["inputs"]

    @settings(max_examples=200, deadline=None)
    @given(pairs=st.lists(st.tuples(json_values, json_values), max_size=6))
    def test_leaf_bytes_are_the_items_canonical_bytes(self, pairs: list[tuple[Any, Any]]) -> None:
        """The root equals one computed from canonical_bytes of each converted item."""
        ins, outs = [p[0] for p in pairs], [p[1] for p in pairs]
        leaves = [
            hashlib.sha256(
                b"\x00"
                + canonical_bytes(
                    {"i": i, "input": _as_record_holds(x), "output": _as_record_holds(y)}
                )
            ).digest()
            for i, (x, y) in enumerate(pairs)
        ]
        assert _mth(leaves).hex() == batch_root(ins, outs)

    def test_mismatched_lengths_are_refused(self) -> None:
        """A batch needs one output per input."""
        with pytest.raises(InvalidRecordError, match="3 inputs, 2 outputs"):
            model_event("m", 1, inputs=[1, 2, 3], outputs=[1, 2], batch=True)

    def test_batch_of_non_sequences_is_refused(self) -> None:
        """A batch needs sequences, not an object or nothing."""
        with pytest.raises(InvalidRecordError, match="an object and nothing"):
            model_event("m", 1, inputs={"a": 1}, batch=True)

    def test_data_frames_batch_like_lists(self) -> None:
        """A data frame of rows batches as its list of rows."""
        assert batch_root(ROWS, PREDICTIONS) == batch_root(FakeFrame(ROWS), PREDICTIONS)


class TestPredictionProof:
    """prediction_proof() / verify_prediction(): one prediction proven in its batch."""

    @pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
    def test_every_prediction_is_provable(self, size: int) -> None:
        """Each index's proof verifies against the recorded root and size, JSON round-trip."""
        ins = [{"x": i * 0.5, "id": f"c-{i}"} for i in range(size)]
        outs = [i / 7 for i in range(size)]
        batch = model_event("m", 1, inputs=ins, outputs=outs, batch=True)["batch"]
        assert isinstance(batch, dict)
        for i in range(size):
            proof = json.loads(json.dumps(prediction_proof(ins, outs, i)))
            assert (PROOF_FORMAT, i) == (proof["format"], proof["index"])
            assert {"i": i, "input": ins[i], "output": outs[i]} == proof["item"]
            verify_prediction(proof, root=batch["root"], size=batch["size"])

    def test_index_outside_the_batch_is_refused(self) -> None:
        """No proof for an index the batch does not have."""
        with pytest.raises(ProofError, match="not in a batch of 2"):
            prediction_proof(ROWS, PREDICTIONS, 2)

    @settings(max_examples=200, deadline=None)
    @given(data=st.data(), size=st.integers(min_value=2, max_value=20))
    def test_any_change_fails(self, data: st.DataObject, size: int) -> None:
        """A changed item, index, path hash or root makes the proof fail."""
        ins = [{"id": i} for i in range(size)]
        outs = [{"p": i / size} for i in range(size)]
        root = batch_root(ins, outs)
        index = data.draw(st.integers(min_value=0, max_value=size - 1))
        proof: dict[str, Any] = prediction_proof(ins, outs, index)
        verify_prediction(proof, root=root, size=size)
        what = data.draw(st.sampled_from(["output", "input", "index", "path", "root", "i"]))
        bad = json.loads(json.dumps(proof))
        if what == "output":
            bad["item"]["output"]["p"] = data.draw(
                st.floats(allow_nan=False).filter(lambda p: p != outs[index]["p"])
            )
        elif what == "input":
            bad["item"]["input"]["id"] = index + data.draw(st.integers(1, 5))
        elif what == "index":
            bad["index"] = data.draw(st.integers(0, size - 1).filter(lambda j: j != index))
        elif what == "i":
            bad["item"]["i"] = data.draw(st.integers(0, size - 1).filter(lambda j: j != index))
        elif what == "path":
            hashes = bad["path"]
            j = data.draw(st.integers(0, len(hashes) - 1))
            flip = bytearray(bytes.fromhex(hashes[j]))
            flip[data.draw(st.integers(0, 31))] ^= 1 << data.draw(st.integers(0, 7))
            hashes[j] = flip.hex()
        else:
            bad["root"] = hashlib.sha256(root.encode()).hexdigest()
        with pytest.raises(ProofError):
            verify_prediction(bad, root=root, size=size)

    def test_proof_for_another_batch_size_fails(self) -> None:
        """The recorded size must be the proof's."""
        proof = prediction_proof(ROWS, PREDICTIONS, 0)
        with pytest.raises(ProofError, match="batch of 2, expected 3"):
            verify_prediction(proof, root=batch_root(ROWS, PREDICTIONS), size=3)

    @pytest.mark.parametrize(
        "change",
        [
            {"format": "other"},
            {"path": "00"},
            {"path": ["zz"]},
            {"item": {"i": 0}},
            {"index": "0"},
        ],
    )
    def test_malformed_bundles_fail_cleanly(self, change: Mapping[str, object]) -> None:
        """A bundle of the wrong shape is a ProofError, never another exception."""
        proof = {**prediction_proof(ROWS, PREDICTIONS, 0), **change}
        with pytest.raises(ProofError):
            verify_prediction(proof, root=batch_root(ROWS, PREDICTIONS), size=2)


class _Adapter(AdapterBase):
    """The shared adapter machinery over one SQLite ledger, task subject fixed."""

    def __init__(self, config: AuditConfig) -> None:
        super().__init__()
        self._config = config

    def _load_options(self) -> AdapterOptions:
        return AdapterOptions(
            enabled=True, events=EventFilter("*"), hook_timeout_s=5.0, audit=self._config
        )

    def _user_event(self, event: str, data: object, subject: Mapping[str, object] | None) -> Event:
        return Event(type=event, data=data, subject={"task": "score", **(subject or {})})


class TestModelInvoked:
    """TaskApi.model_invoked(): recorded like every task event, fail-open."""

    def test_records_the_invocation(self, tmp_path: Path) -> None:
        """A batch invocation lands as model.invoked with its summaries and Merkle root; with
        no privacy policy its data subject is left out (only a policy may record it)."""
        adapter = _Adapter(AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}"))
        api = TaskApi(lambda: adapter)
        assert api.model_invoked(
            "churn", 1, inputs=ROWS, outputs=PREDICTIONS, batch=True, data_subject="c-1", env="t"
        )
        assert adapter.flush()
        [record] = bodies(tmp_path / "l.db")
        expected = model_event(
            "churn", 1, inputs=ROWS, outputs=PREDICTIONS, batch=True, data_subject="c-1", env="t"
        )
        assert "model.invoked" == record["event"]
        assert {"task": "score"} == record["subject"]
        assert expected["batch"] == record["data"]["batch"]
        assert summary(ROWS)["sha256"] == record["data"]["inputs"]["sha256"]
        assert ("churn", 1, "t") == tuple(record["data"][k] for k in ("model", "version", "env"))
        assert "data_subject" not in record["data"]
        assert "value" not in record["data"]["inputs"]
        assert "value" not in record["data"]["outputs"]

    def test_bad_inputs_fail_open(self, tmp_path: Path) -> None:
        """Mismatched batch lengths: False, a counted hook failure, nothing recorded."""
        adapter = _Adapter(AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}"))
        api = TaskApi(lambda: adapter)
        before = COUNTERS.snapshot().get("hook_failures", 0)
        assert False is api.model_invoked("churn", 1, inputs=[1, 2], outputs=[1], batch=True)
        assert before + 1 == COUNTERS.snapshot().get("hook_failures", 0)
        assert api.model_invoked("churn", 1, inputs=[1], outputs=[1], batch=True)
        assert adapter.flush()
        assert ["model.invoked"] == [r["event"] for r in bodies(tmp_path / "l.db")]

    def test_required_raises(self, tmp_path: Path) -> None:
        """required=True raises the summary's error instead of failing open."""
        adapter = _Adapter(AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}"))
        with pytest.raises(InvalidRecordError, match="2 inputs, 1 outputs"):
            TaskApi(lambda: adapter).model_invoked(
                "churn", 1, inputs=[1, 2], outputs=[1], batch=True, required=True
            )
