"""The audit record, format version 1: fields, canonical bytes and hash (docs/FORMAT.md).

>>> p = prepare(chain="default", event="task.succeeded", ts="2026-11-28T00:00:00.000000Z",
...             actor={"type": "service", "id": "airflow"}, subject={"dag_id": "ml"},
...             trace=None, data={"rows": 10})
>>> body = p.seal(0, genesis("default"))
>>> body[:61]
b'{"actor":{"id":"airflow","type":"service"},"chain":"default",'
>>> len(leaf_hash(body))
32

A record is a JSON object with exactly the fields of :data:`FIELDS`; its canonical bytes are
its RFC 8785 form, and its hash is the RFC 9162 §2.1.1 Merkle leaf hash
``SHA-256(0x00 || canonical bytes)``, so one value links the chain and feeds the Merkle tree.
The ``0x00`` prefix separates leaf hashes from interior nodes (``0x01``); the ambiguous
``sha256(json + prev)`` concatenation is deliberately not used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from audit_core._jcs import canonical_loaded
from audit_core._normalize import JSON, JSONObject
from audit_core.errors import FormatError, InvalidRecordError

__all__ = [
    "CHAIN_ID",
    "EVENT_TYPE",
    "FIELDS",
    "FORMAT_VERSION",
    "KEY",
    "TIMESTAMP",
    "PreparedRecord",
    "Record",
    "StoredCheckpoint",
    "StoredRecord",
    "check_key",
    "genesis",
    "is_timestamp",
    "is_trace",
    "leaf_hash",
    "prepare",
]

FORMAT_VERSION = 1
#: The fields of a version 1 record, in canonical (sorted) order.
FIELDS = ("actor", "chain", "data", "event", "prev", "seq", "subject", "trace", "ts", "v")

_LEAF_HASH_PREFIX = b"\x00"  # RFC 9162 §2.1.1
_GENESIS_DOMAIN = b"workflow-audit/v1/genesis\x00"

#: ``task.started``, ``model.deployed``; custom types under a namespace: ``acme.model.approved``.
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
#: Chain ids are short, printable and safe in URLs, file names and S3 keys.
CHAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")
#: RFC 3339 §5.6, UTC, microseconds, ``Z``; ASCII digits only (``\d`` would take Arabic-Indic
#: ones), years 0001-9999 (Python's), months 01-12, days 01-31, hours 00-23, minutes and seconds
#: 00-59 (no leap second: POSIX time, which writers read, has none). Whether the day exists:
#: :func:`is_timestamp`.
TIMESTAMP = re.compile(
    r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
)
_TIMESTAMP_MATCH = TIMESTAMP.fullmatch
#: An idempotency key: 1..256 printable ASCII characters (space to tilde, no control ones).
KEY = re.compile(r"[\x20-\x7e]{1,256}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")


@lru_cache(maxsize=256)
def genesis(chain: str) -> str:
    """The ``prev`` of seq 0: ``hex(SHA-256("workflow-audit/v1/genesis" || 0x00 || chain))``.

    Deriving it from the chain id means a chain's first record cannot be moved to another chain.
    """
    return hashlib.sha256(_GENESIS_DOMAIN + chain.encode("utf-8")).hexdigest()


def is_timestamp(ts: str) -> bool:
    """True when ``ts`` is a record timestamp: :data:`TIMESTAMP`, on a day the calendar has
    (``2026-02-29`` has none). Cheap: days up to 28 exist in every month."""
    return _TIMESTAMP_MATCH(ts) is not None and (ts[8:10] < "29" or _real_day(ts[:10]))


@lru_cache(maxsize=1024)
def _real_day(day: str) -> bool:
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        return False
    return True


def leaf_hash(body: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash of a record's canonical bytes."""
    return hashlib.sha256(_LEAF_HASH_PREFIX + body).digest()


class StoredRecord(NamedTuple):
    """A record as a ledger holds it: exactly the bytes that were hashed, and that hash.

    A NamedTuple rather than a frozen dataclass, deliberately: one is built per row on the
    verification path (goal: 300,000 records/s), and a frozen dataclass's ``__init__``
    (``object.__setattr__`` per field) costs more than reading the row. It is just as immutable.
    """

    chain: str
    seq: int
    hash: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as a ledger holds it (docs/FORMAT.md, "Checkpoints")."""

    chain: str
    size: int
    root: bytes
    note: str  # the signed note: c2sp.org/tlog-checkpoint text, c2sp.org/signed-note lines
    created: str  # RFC 3339 UTC


@dataclass(frozen=True, slots=True)
class StoredCosignature:
    """A witness's cosignature of one of a chain's checkpoints, as a ledger holds it
    (c2sp.org/tlog-cosignature): ``body`` is the checkpoint text the witness cosigned
    (origin, size and root lines), ``line`` its note signature line. The witness's name,
    key ID and timestamp are read from the line; the root from the body."""

    chain: str
    size: int
    body: str
    line: str
    created: str  # RFC 3339 UTC, when the log stored it


class PreparedRecord(NamedTuple):
    """A record whose every field is encoded except ``seq`` and ``prev``.

    A NamedTuple (immutable; cheaper to build than a frozen dataclass, once per record).

    The ledger seals it inside its append transaction; everything costly (normalizing,
    canonicalizing) is done before, so the transaction holds its lock for microseconds.
    Because RFC 8785 sorts members and every field name is ASCII, the canonical bytes of the
    whole record are the concatenation below (proven equal to ``canonical_bytes`` by tests).

    ``key``: the record's idempotency key (docs/FORMAT.md "Idempotency keys"): the ledger
    appends at most one record per ``(chain, key)``. Not part of the bytes nor of the hash.
    """

    chain: str
    event: str
    ts: str
    head: bytes  # '{"actor":…,"chain":…,"data":…,"event":…,"prev":"'
    tail: bytes  # ',"subject":…,"trace":…,"ts":…,"v":1}'
    key: str | None = None

    def seal(self, seq: int, prev: str) -> bytes:
        """The canonical bytes of this record at ``seq``, linked to the hash ``prev``."""
        return b"".join((self.head, prev.encode("ascii"), b'","seq":', b"%d" % seq, self.tail))


def prepare(
    *,
    chain: str,
    event: str,
    ts: str,
    actor: JSONObject,
    subject: JSONObject,
    trace: JSONObject | None,
    data: JSONObject,
    key: str | None = None,
) -> PreparedRecord:
    """Validate and encode a record's fields: JSON values already made by
    :func:`~audit_core._normalize.normalize` (a NaN here would be written as null)."""
    if key is not None:
        check_key(key)
    if chain not in _valid_chains and not _remember(chain, CHAIN_ID, _valid_chains):
        raise InvalidRecordError(f"chain id {chain!r} must match {CHAIN_ID.pattern}")
    if event not in _valid_events and not _remember(event, EVENT_TYPE, _valid_events):
        raise InvalidRecordError(
            f"event type {event!r} must be dotted lower-case words, like 'task.failed' "
            "or 'acme.model.approved'"
        )
    if type(ts) is not str or not is_timestamp(ts):
        raise InvalidRecordError(
            f"timestamp {ts!r} must be RFC 3339 UTC with microseconds, ASCII digits and a real "
            "date, like 2026-11-28T10:00:00.000000Z"
        )
    _check_actor(actor)
    if trace is not None:
        _check_trace(trace)
    # RFC 8785 sorts members, and "prev" and "seq" sort between "event" and "subject": the
    # canonical record is the members before them, prev, seq, and the members after them.
    # So two encodings per record, made before the ledger's transaction, and two splices.
    # The fields come from normalize() (finite numbers only) or are checked strings above:
    # the encoder's non-finite check would only repeat that (~1 us a record).
    before = canonical_loaded({"actor": actor, "chain": chain, "data": data, "event": event})
    after = canonical_loaded({"subject": subject, "trace": trace, "ts": ts, "v": FORMAT_VERSION})
    head = before[:-1] + b',"prev":"'  # drop "}"
    tail = b"," + after[1:]  # drop "{"
    return PreparedRecord(chain=chain, event=event, ts=ts, head=head, tail=tail, key=key)


def check_key(key: object) -> None:
    """Raise InvalidRecordError unless ``key`` is an idempotency key (:data:`KEY`)."""
    if type(key) is not str or KEY.fullmatch(key) is None:
        raise InvalidRecordError(
            f"idempotency key {key!r:.80} must be 1 to 256 printable ASCII characters"
        )


# Chain ids and event types that passed their pattern: a process uses few of them, and each
# check is a regular expression match on every record otherwise.
_valid_chains: set[str] = set()
_valid_events: set[str] = set()


def _remember(name: str, pattern: re.Pattern[str], valid: set[str]) -> bool:
    if type(name) is not str or pattern.fullmatch(name) is None:
        return False
    if len(valid) < 4096:
        valid.add(name)
    return True


def _check_actor(actor: JSONObject) -> None:
    kind, ident = actor.get("type"), actor.get("id")
    if not (isinstance(kind, str) and kind and isinstance(ident, str) and ident):
        raise InvalidRecordError(f"actor needs non-empty string 'type' and 'id', got {actor!r}")


def is_trace(trace_id: object, span_id: object) -> bool:
    """Whether ``trace_id`` and ``span_id`` are valid W3C ids (32 and 16 lower-case hex
    digits, not all zero: W3C Trace Context §3.2.2.3/§3.2.2.4)."""
    return (
        isinstance(trace_id, str)
        and _TRACE_ID.fullmatch(trace_id) is not None
        and trace_id != "0" * 32
        and isinstance(span_id, str)
        and _SPAN_ID.fullmatch(span_id) is not None
        and span_id != "0" * 16
    )


def _check_trace(trace: JSONObject) -> None:
    if not (is_trace(trace.get("trace_id"), trace.get("span_id")) and len(trace) == 2):
        raise InvalidRecordError(
            f"trace must be {{'trace_id': 32 hex, 'span_id': 16 hex}} (W3C), got {trace!r}"
        )


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed record, for reading, showing and exporting (not for hashing: use the bytes)."""

    chain: str
    seq: int
    ts: str
    event: str
    actor: JSONObject
    subject: JSONObject
    trace: JSONObject | None
    data: JSONObject
    prev: str
    hash: str
    v: int = FORMAT_VERSION

    @classmethod
    def from_stored(cls, stored: StoredRecord) -> Record:
        """Parse a stored record (no verification: see :mod:`audit_core.verify`).

        Raises :class:`~audit_core.errors.FormatError` when the bytes are not a v1 record.
        """
        try:
            value: dict[str, Any] = orjson.loads(stored.body)
            return cls._from_value(value, stored.hash.hex())
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(
                f"chain {stored.chain!r} seq {stored.seq}: unreadable record ({exc!r}); "
                "run `workflow-audit verify`",
                chain=stored.chain,
                seq=stored.seq,
                expected="a version 1 record",
                found=repr(stored.body)[:80],  # a tampered body may be any type
            ) from exc

    @classmethod
    def _from_value(cls, value: dict[str, Any], digest: str) -> Record:
        return cls(
            chain=value["chain"],
            seq=value["seq"],
            ts=value["ts"],
            event=value["event"],
            actor=value["actor"],
            subject=value["subject"],
            trace=value["trace"],
            data=value["data"],
            prev=value["prev"],
            hash=digest,
            v=value["v"],
        )

    def to_json(self) -> dict[str, JSON]:
        """The record's fields plus ``hash`` (drop ``hash``, canonicalize, hash: same value)."""
        return {
            "actor": self.actor,
            "chain": self.chain,
            "data": self.data,
            "event": self.event,
            "prev": self.prev,
            "seq": self.seq,
            "subject": self.subject,
            "trace": self.trace,
            "ts": self.ts,
            "v": self.v,
            "hash": self.hash,
        }
