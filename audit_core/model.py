"""Model invocations as records: digests, sizes and schemas of a model's inputs and outputs,
and, for a batch, an RFC 9162 Merkle root over its predictions so that any one of them can
later be proven to be in the batch without showing the others.

>>> from audit_core.model import model_event, prediction_proof, verify_prediction
>>> rows = [{"tenure": 3, "spend": 81.5}, {"tenure": 40, "spend": 12.25}]
>>> scores = [{"p": 0.91, "label": "churn"}, {"p": 0.07, "label": "stay"}]
>>> data = model_event("churn", 1, inputs=rows, outputs=scores, batch=True, values=False)
>>> data["inputs"]["rows"], data["inputs"]["schema"], data["batch"]["size"]
(2, {'spend': 'number', 'tenure': 'number'}, 2)
>>> proof = prediction_proof(rows, scores, 1)  # kept by whoever must answer for row 1
>>> verify_prediction(proof, root=data["batch"]["root"], size=2)  # None, or ProofError

With plain Python, record it like any event:
``trail.record("model.invoked", model_event("churn", 1, inputs=rows, outputs=scores))``;
in a task, ``audit.model_invoked(...)`` (:class:`audit_core.hooks.TaskApi`) does the same,
fail-open.

A summary ``{"sha256", "bytes", "rows", "schema", "value"}`` describes a value *as a record
would hold it*: the value is first converted as record data is
(:func:`audit_core._normalize.to_json`: NaN becomes ``"NaN"``, a date its RFC 3339 text, an
unknown object its type and repr; never truncated), then ``sha256`` and ``bytes`` are those of
its RFC 8785 canonical bytes. Whoever holds the inputs can recompute the digest; nobody can
read them from it (unless they are guessable: that is what the privacy policy's commitments
are for).

**Values.** With ``values=True`` (the default) each summary also holds the converted value
itself, at ``/data/inputs/value`` and ``/data/outputs/value``. This module always includes
it then; the trail decides what reaches the chain: without a privacy policy it strips those
two nodes (only the digests are recorded), with one the policy commits or encrypts them
(docs/PRIVACY.md). The digests are of the values before the trail's processors run, so a
value a processor masks is still committed to by its digest.

**Batches** (``batch=True``): inputs and outputs are sequences of the same length n; item i
is ``{"i": i, "input": inputs[i], "output": outputs[i]}`` (converted as above), its leaf the
RFC 9162 §2.1.1 leaf hash ``SHA-256(0x00 || RFC 8785 bytes of the item)``, and the batch's
root the Merkle tree hash of the n leaves (RFC 9162 §2.1.1), named ``rfc9162-sha256/jcs-item-v1``.
The index inside the item binds each prediction to its place.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from audit_core._jcs import canonical_bytes
from audit_core._merkle import (
    EMPTY_ROOT,
    fold,
    frontier_positions,
    inclusion_proof,
    node_hash,
    verify_inclusion,
)
from audit_core._normalize import JSON, to_json
from audit_core.errors import InvalidRecordError, ProofError

__all__ = [
    "LEAF_FORMAT",
    "MAX_SCHEMA_MEMBERS",
    "PROOF_FORMAT",
    "batch_root",
    "model_event",
    "prediction_proof",
    "summary",
    "verify_prediction",
]

#: How a batch's leaves are made (the ``leaf`` member of ``batch``).
LEAF_FORMAT = "rfc9162-sha256/jcs-item-v1"
#: The ``format`` of a :func:`prediction_proof` bundle.
PROOF_FORMAT = "workflow-audit/prediction-proof/v1"
#: A schema names at most this many members (wide rows are summarized, not listed).
MAX_SCHEMA_MEMBERS = 200
#: No conversion limit: a summary describes the whole value (digest() in hooks.py does so too).
_NO_LIMIT = 1 << 62
_LEAF_PREFIX = b"\x00"  # RFC 9162 §2.1.1

# JSON type names (RFC 8259 §3) of the Python types a converted value holds.
_JSON_TYPES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def model_event(
    model: str,
    version: str | int | None,
    *,
    inputs: object = None,
    outputs: object = None,
    batch: bool = False,
    data_subject: str | None = None,
    values: bool = True,
    **facts: object,
) -> dict[str, object]:
    """The data of a ``model.invoked`` record: ``model``, ``version``, a summary of
    ``inputs`` and of ``outputs`` (each left out when None), ``batch`` (with ``batch=True``:
    size, Merkle root, leaf format), ``data_subject`` (when given: whom the inputs are about,
    for the privacy policy to commit) and ``facts`` as given.

    ``values=True`` includes the converted values in the summaries (see the module's
    docstring: the trail strips or commits them). Raises :class:`InvalidRecordError` when
    ``batch=True`` and inputs and outputs are not sequences of one length.
    """
    data: dict[str, object] = {"model": model, "version": version}
    ins = None if inputs is None else _Converted.of(inputs)
    outs = None if outputs is None else _Converted.of(outputs)
    if batch:
        in_parts, out_parts = _batch_parts(ins, outs)
        leaves = _leaves(in_parts, out_parts)
        data["batch"] = {"size": len(leaves), "root": _root(leaves).hex(), "leaf": LEAF_FORMAT}
    if ins is not None:
        data["inputs"] = ins.summary(values)
    if outs is not None:
        data["outputs"] = outs.summary(values)
    if data_subject is not None:
        data["data_subject"] = data_subject
    data.update(facts)
    return data


def summary(value: object, *, values: bool = True) -> dict[str, JSON]:
    """``{"sha256", "bytes", "rows", "schema", "value"}`` of ``value`` as a record holds it
    (rows: for a sequence or a data frame; schema: for an object or a list of objects;
    value: with ``values=True``)."""
    return _Converted.of(value).summary(values)


def batch_root(inputs: object, outputs: object) -> str:
    """Hex Merkle root of the batch (what ``model_event(..., batch=True)`` records)."""
    in_parts, out_parts = _batch_parts(_Converted.of(inputs), _Converted.of(outputs))
    return _root(_leaves(in_parts, out_parts)).hex()


def prediction_proof(inputs: object, outputs: object, index: int) -> dict[str, JSON]:
    """A JSON bundle proving prediction ``index`` is in the batch: ``format``, ``leaf``,
    ``size``, ``root``, ``index``, ``item`` (its input and output) and ``path`` (RFC 9162
    §2.1.3.1 audit path, leaf to root, hex). It shows this one prediction, none of the others.
    """
    ins, outs = _Converted.of(inputs), _Converted.of(outputs)
    in_parts, out_parts = _batch_parts(ins, outs)
    leaves = _leaves(in_parts, out_parts)
    if type(index) is not int or not 0 <= index < len(leaves):
        raise ProofError(f"prediction {index!r} is not in a batch of {len(leaves)}")
    levels = _levels(leaves)
    path = inclusion_proof(_reader(levels), index, len(leaves))
    item: dict[str, JSON] = {
        "i": index,
        "input": orjson.loads(in_parts[index]),
        "output": orjson.loads(out_parts[index]),
    }
    return {
        "format": PROOF_FORMAT,
        "leaf": LEAF_FORMAT,
        "size": len(leaves),
        "root": _root_of_levels(levels, len(leaves)).hex(),
        "index": index,
        "item": item,
        "path": [h.hex() for h in path],
    }


def verify_prediction(proof: Mapping[str, object], *, root: str, size: int) -> None:
    """Check a :func:`prediction_proof` bundle against a recorded batch (its ``root`` and
    ``size``, from the ``model.invoked`` record); None, or :class:`ProofError` naming what
    differs."""
    if proof.get("format") != PROOF_FORMAT:
        raise ProofError(f"not a prediction proof: format is not {PROOF_FORMAT!r}")
    if proof.get("leaf") != LEAF_FORMAT:
        raise ProofError(f"unknown leaf format, expected {LEAF_FORMAT!r}")
    if proof.get("size") != size:
        raise ProofError(f"the proof is for a batch of {proof.get('size')!r}, expected {size}")
    if proof.get("root") != root:
        raise ProofError("the proof's root is not the recorded batch root")
    index, item = proof.get("index"), proof.get("item")
    if type(index) is not int:
        raise ProofError("the proof's index is not an integer")
    if not isinstance(item, Mapping) or set(item) != {"i", "input", "output"}:
        raise ProofError('the proof\'s item is not an object of "i", "input" and "output"')
    if item["i"] != index or type(item["i"]) is not int:
        raise ProofError(f"the item is prediction {item['i']!r}, the proof is for {index}")
    try:
        leaf = hashlib.sha256(_LEAF_PREFIX + canonical_bytes(item)).digest()
        path = [bytes.fromhex(h) for h in _strings(proof.get("path"))]
        expected = bytes.fromhex(root)
    except (InvalidRecordError, ValueError, TypeError) as exc:
        raise ProofError(f"malformed prediction proof: {type(exc).__name__}") from None
    verify_inclusion(leaf, index, size, path, expected)


# -- conversion and summaries ----------------------------------------------------------------

# The fast path encodes a value with canonical_bytes directly; its result is what to_json
# followed by canonical_bytes gives, except for integers beyond ±(2^53-1) that are exact
# doubles (canonical_bytes writes 10**16 as a number, to_json as a string) and nesting past
# to_json's depth limit. Either leaves a trace these cheap scans find (16 digits after a
# "[", ":" or ",": never a fraction's; more than _MAX_OPENERS brackets), and the value is
# converted. Text that looks so ("[1234567890123456") only costs a needless conversion.
_BIG_INTEGER = re.compile(rb"[:,\[]-?[0-9]{16}")
_MAX_OPENERS = 48


def _encode(value: object) -> bytes:
    """RFC 8785 bytes of ``value`` converted as record data is (:func:`to_json`)."""
    return _encode_all((value,))[0]


def _encode_all(values: Sequence[object]) -> list[bytes]:
    """:func:`_encode` of each value: the hot loop of a batch, so the rare big-integer trace
    is searched once in all the bytes, and per value only when it is there."""
    parts: list[bytes] = []
    append, encode = parts.append, canonical_bytes
    for value in values:
        try:
            raw = encode(value)
        # Not JSON as it is (NaN, a date, a set, an object; a user's Mapping may raise
        # anything): to_json converts it as the record's data would be, containing errors.
        except Exception:  # noqa: BLE001
            raw = _encode_converted(value)
        else:
            if raw.count(b"[") + raw.count(b"{") > _MAX_OPENERS:
                raw = _encode_converted(value)
        append(raw)
    if _BIG_INTEGER.search(b"[" + b",".join(parts)):
        parts = [
            _encode_converted(v) if _BIG_INTEGER.search(b"[" + p) else p
            for v, p in zip(values, parts, strict=True)
        ]
    return parts


def _encode_converted(value: object) -> bytes:
    return canonical_bytes(to_json({"value": value}, max_value_bytes=_NO_LIMIT).value["value"])


def _rows(value: object) -> object:
    """A data frame (anything with ``to_dict(orient="records")``, as pandas has) as its list
    of rows; anything else as it is."""
    if isinstance(value, Mapping):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict(orient="records")
        except TypeError:  # a to_dict without orient=: not a data frame
            return value
    return value


@dataclass(frozen=True, slots=True)
class _Converted:
    """A value as a record holds it: its canonical bytes, and, when it is a list, each
    element's (the batch's leaves and the summary share one encoding)."""

    raw: bytes
    parts: list[bytes] | None

    @classmethod
    def of(cls, value: object) -> _Converted:
        value = _rows(value)
        if type(value) is list or type(value) is tuple:
            parts = _encode_all(value)
            return cls(_join(parts), parts)
        raw = _encode(value)
        if raw[:1] == b"[":  # a set, an array: a list once converted
            return cls(raw, [canonical_bytes(v) for v in orjson.loads(raw)])
        return cls(raw, None)

    def summary(self, values: bool) -> dict[str, JSON]:
        value = orjson.loads(self.raw)
        out: dict[str, JSON] = {
            "sha256": hashlib.sha256(self.raw).hexdigest(),
            "bytes": len(self.raw),
        }
        if isinstance(value, list):
            out["rows"] = len(value)
            schema = _schema([v for v in value if isinstance(v, dict)])
        elif isinstance(value, dict):
            schema = _schema([value])
        else:
            schema = None
        if schema is not None:
            out["schema"], complete = schema
            if not complete:
                out["schema_truncated"] = True
        if values:
            out["value"] = value
        return out


def _schema(objects: list[dict[str, JSON]]) -> tuple[dict[str, JSON], bool] | None:
    """Each member's JSON type over all ``objects`` ("number|null" when they differ), at most
    :data:`MAX_SCHEMA_MEMBERS` members; and whether every member is named."""
    if not objects:
        return None
    seen: dict[str, set[str]] = {}
    shapes: set[tuple[tuple[str, ...], tuple[type, ...]]] = set()
    complete = True
    for obj in objects:
        shape = (tuple(obj), tuple(map(type, obj.values())))
        if shape in shapes:  # rows of one shape (the usual batch) are typed once
            continue
        shapes.add(shape)
        for key, kind in zip(*shape, strict=True):
            types = seen.get(key)
            if types is None:
                if len(seen) >= MAX_SCHEMA_MEMBERS:
                    complete = False
                    continue
                types = seen[key] = set()
            types.add(_JSON_TYPES.get(kind, "object"))
    return {k: "|".join(sorted(seen[k])) for k in sorted(seen)}, complete


def _join(parts: list[bytes]) -> bytes:
    # RFC 8785 §3.2.2 writes an array as its elements' canonical bytes, comma-separated.
    return b"[" + b",".join(parts) + b"]"


# -- batches ---------------------------------------------------------------------------------


def _batch_parts(
    inputs: _Converted | None, outputs: _Converted | None
) -> tuple[list[bytes], list[bytes]]:
    if inputs is None or outputs is None or inputs.parts is None or outputs.parts is None:
        raise InvalidRecordError(
            "batch=True needs inputs and outputs as sequences (lists, tuples, arrays or data "
            f"frames), got {_kind(inputs)} and {_kind(outputs)}"
        )
    if len(inputs.parts) != len(outputs.parts):
        raise InvalidRecordError(
            f"batch=True needs one output per input: {len(inputs.parts)} inputs, "
            f"{len(outputs.parts)} outputs"
        )
    return inputs.parts, outputs.parts


def _kind(value: _Converted | None) -> str:
    if value is None:
        return "nothing"
    return {b"{": "an object", b'"': "a string"}.get(value.raw[:1], "a scalar")


def _leaves(in_parts: list[bytes], out_parts: list[bytes]) -> list[bytes]:
    """Every item's leaf hash. An item's canonical bytes are assembled from its members'
    (RFC 8785 §3.2.3 orders the keys ``i``, ``input``, ``output``; an integer is its decimal
    text), so each value is encoded once for both the summary's digest and the leaf."""
    sha256 = hashlib.sha256
    return [
        sha256(b'\x00{"i":%d,"input":%b,"output":%b}' % (i, a, b)).digest()
        for i, (a, b) in enumerate(zip(in_parts, out_parts, strict=True))
    ]


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every complete subtree's hash: ``levels[l][j]`` covers leaves ``[j·2^l, (j+1)·2^l)``."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[j], below[j + 1]) for j in range(0, len(below) - 1, 2)])
    return levels


def _reader(levels: list[list[bytes]]) -> Callable[[int, int], bytes]:
    return lambda level, index: levels[level][index]


def _root_of_levels(levels: list[list[bytes]], size: int) -> bytes:
    return fold([levels[level][index] for level, index in frontier_positions(size)])


def _root(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH of ``leaves``."""
    return _root_of_levels(_levels(leaves), len(leaves)) if leaves else EMPTY_ROOT


def _strings(value: object) -> Sequence[Any]:
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise TypeError("path")
    return value
