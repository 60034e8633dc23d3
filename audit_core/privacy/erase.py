"""Erasure, opening and checking of committed values: what ``workflow-audit privacy`` runs.

>>> import tempfile, pathlib
>>> from audit_core import AuditConfig, AuditTrail
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> config = AuditConfig(ledger_url=f"sqlite:///{d}/ledger.db", privacy_policy="default")
>>> with AuditTrail(config) as trail:
...     stored = trail.record("dagrun.started", {"triggering_user": "alice"})
...     [(o.pointer, o.value, o.status) for o in open_record(stored, trail.privacy)]
...     erase_subject(trail, "alice", reason="request 17", basis="GDPR Art. 17(1)(a)").records
...     [o.status for o in open_record(stored, trail.privacy)]
[('/data/triggering_user', 'alice', 'ok')]
1
['unavailable']

Erasure (GDPR Art. 17) is crypto-shredding plus deletion, in an order that survives a crash
at any step: (1) in one store transaction the subject's row goes (new records of the same
person get a new pseudonym and key) and a *pending* erasure is noted with its key check value
and counts; (2) the ``privacy.erased`` record is appended, with an idempotency key, so a
rerun does not append it twice; (3) the subject's key is destroyed; (4) its openings are
deleted and the store compacted. A crash after (1) leaves a pending erasure that the next
``privacy erase`` finishes first. The chain is never touched: every record, checkpoint,
proof and S3 segment verifies as before, byte for byte; what the commitments hid can no
longer be learnt from anything.

The ``privacy.erased`` record names the pseudonym, the method, the destroyed key's check
value, the legal basis and the number of records affected, never their seqs (a list of seqs
would re-identify the subject's records) and never the identifier.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import orjson

from audit_core._normalize import JSON
from audit_core._record import Record, StoredRecord
from audit_core.errors import AuditError, ConfigError, PrivacyError
from audit_core.ledgers import LedgerReader
from audit_core.privacy import PRIVACY_CHAIN
from audit_core.privacy.apply import Privacy
from audit_core.privacy.commitment import (
    Commitment,
    Sealed,
    commitment_message,
    decode_b64,
    find_markers,
    opening_aad,
    parse_marker,
)
from audit_core.privacy.keys import KeyStore, key_check_value
from audit_core.privacy.store import Erasure

__all__ = [
    "ERASED_EVENT",
    "PROBLEMS",
    "ClaimStatus",
    "ErasureResult",
    "Opened",
    "OpeningsReport",
    "check_claim",
    "erase_subject",
    "finish_pending",
    "open_record",
    "record_nonce",
    "verify_openings",
]

ERASED_EVENT: Final = "privacy.erased"
Status = Literal["ok", "mismatch", "unavailable", "malformed", "foreign", "duplicate"]
#: Statuses that make ``privacy verify`` (and ``open``) exit 1: the store or the chain says
#: something false, not merely "erased".
PROBLEMS: Final = frozenset({"mismatch", "foreign", "duplicate"})
# "malformed" (text that merely looks like a marker: a user's note "$commit:…") is counted,
# never a problem: the chain's hashes already catch an edited commitment, and a permanent
# record of user data must not make verify fail for ever.


class _Recorder(Protocol):  # what erase_subject needs of an AuditTrail (no import cycle)
    privacy: Privacy | None

    def record(
        self, event: str, data: object = None, *, chain: str | None = None, key: str | None = None
    ) -> StoredRecord: ...


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """An erasure done: what the store noted and the ``privacy.erased`` record."""

    erasure: Erasure
    record: StoredRecord

    @property
    def records(self) -> int:
        return self.erasure.records


def finish_pending(trail: _Recorder) -> list[ErasureResult]:
    """Finish the erasures a crash (or a ledger that could not be written) left pending, and
    compact the store (an erased row must not stay in its write-ahead log)."""
    privacy = _privacy(trail)
    done = []
    for earlier in privacy.store.pending_erasures():
        record, finished = _complete(trail, privacy, earlier)
        done.append(ErasureResult(finished, record))
    privacy.store.compact()  # PrivacyError when a reader keeps it from finishing: say so
    return done


def erase_subject(trail: _Recorder, identifier: str, *, reason: str, basis: str) -> ErasureResult:
    """Erase the data subject ``identifier`` (module docstring); raises
    :class:`~audit_core.errors.SubjectNotFound`, appending nothing, for an unknown one. Call
    :func:`finish_pending` first."""
    privacy = _privacy(trail)
    # The policy records identifiers in NFC (policy.py); so is the one asked for.
    identifier = unicodedata.normalize("NFC", identifier)
    for name, text in (("--reason", reason), ("--basis", basis)):
        if _names(identifier, text):
            raise ConfigError(
                f"{name} names the data subject: the erasure record would keep them on the "
                "chain for ever (give a ticket number instead)"
            )
    if not reason.strip():
        raise ConfigError("--reason is required: a ticket number or request id")
    keys = privacy.keys
    erasure = privacy.store.begin_erasure(
        identifier, kcv=lambda p: _kcv(keys, p), basis=basis, reason=reason
    )
    try:
        record, done = _complete(trail, privacy, erasure)
    except AuditError as exc:
        raise PrivacyError(
            f"the erasure of {erasure.pseudonym} is pending ({exc}); the subject's values are "
            "already out of reach of new records: fix that and run `workflow-audit privacy "
            "erase --finish`, which completes it"
        ) from None
    return ErasureResult(done, record)


def _names(identifier: str, text: str) -> bool:
    # the identifier as a whole word of the text (case-insensitive); a 1- or 2-letter one
    # would match too much ("ed" in "approved") and is not checked
    if len(identifier) < 3:
        return False
    pattern = r"(?<!\w)" + re.escape(identifier) + r"(?!\w)"
    return re.search(pattern, unicodedata.normalize("NFC", text), re.IGNORECASE) is not None


def _kcv(keys: KeyStore, pseudonym: str) -> str:
    # A key already lost (a deleted key file) cannot be checked; the erasure goes on: its
    # subject row and openings are what is left to delete.
    try:
        return key_check_value(keys, pseudonym)
    except PrivacyError:
        return "unavailable (key lost)"


def _privacy(trail: _Recorder) -> Privacy:
    if trail.privacy is None:
        raise PrivacyError("no privacy policy is configured (WORKFLOW_AUDIT_PRIVACY_POLICY)")
    return trail.privacy


def _complete(trail: _Recorder, privacy: Privacy, erasure: Erasure) -> tuple[StoredRecord, Erasure]:
    record = trail.record(
        ERASED_EVENT,
        {
            "pseudonym": erasure.pseudonym,
            "method": _method(privacy.keys),
            "key_check_value": erasure.kcv,
            "legal_basis": erasure.basis,
            "reason": erasure.reason,
            "records": erasure.records,
            "values": erasure.values,
            "requested_at": erasure.requested_at,
        },
        chain=PRIVACY_CHAIN,
        key=f"{ERASED_EVENT}:{erasure.pseudonym}",
    )
    privacy.keys.destroy(erasure.pseudonym)
    return record, privacy.store.finish_erasure(erasure.pseudonym)


def _method(keys: KeyStore) -> str:
    described = getattr(keys, "erasure_method", None)
    if isinstance(described, str) and described:
        return described
    return "subject key destroyed; openings deleted"


@dataclass(frozen=True, slots=True)
class Opened:
    """One committed or sealed field of a record, opened (or why not)."""

    chain: str
    seq: int
    pointer: str
    status: Status
    value: JSON = None
    kind: str = "commit"


def _markers(record: Record) -> Iterator[tuple[str, JSON]]:
    view: JSON = {"actor": record.actor, "subject": record.subject, "data": record.data}
    yield from find_markers(view)


def record_nonce(record: Record) -> bytes | None:
    """The nonce the policy drew for ``record`` (``data._privacy.n``), None without one."""
    meta = record.data.get("_privacy")
    n = meta.get("n") if isinstance(meta, dict) else None
    try:
        return decode_b64(n) if isinstance(n, str) else None
    except PrivacyError:
        return None


def open_record(stored: StoredRecord, privacy: Privacy) -> list[Opened]:
    """Every commitment and sealed value of ``stored`` with its value, checked against the
    commitment (``ok``), or why it cannot be opened: ``unavailable`` (erased, or its opening
    never stored), ``mismatch`` (the opening does not match: a store edited or swapped),
    ``malformed`` (a marker this version cannot read), ``foreign`` (a marker whose nonce is
    not the one the policy drew for this record: copied from another record)."""
    record = Record.from_stored(stored)
    nonce = record_nonce(record)
    return [_open(stored, p, raw, privacy, nonce) for p, raw in _markers(record)]


def _open(
    stored: StoredRecord, pointer: str, raw: JSON, privacy: Privacy, nonce: bytes | None
) -> Opened:
    def at(status: Status, kind: str = "commit", value: JSON = None) -> Opened:
        return Opened(stored.chain, stored.seq, pointer, status, value, kind)

    try:
        marker = parse_marker(raw)
    except PrivacyError:
        return at("malformed")
    assert marker is not None
    kind = "commit" if isinstance(marker, Commitment) else "sealed"
    if marker.nonce != nonce:  # the store binds chain, nonce, pointer; the record its nonce
        return at("foreign", kind)
    opening = privacy.store.opening(marker.nonce, pointer)
    if opening is None:
        return at("unavailable", kind)
    if opening.chain != stored.chain:  # an opening of another chain: the marker was copied
        return at("foreign", kind)
    aad = opening_aad(stored.chain, marker.nonce, pointer)
    sealed = marker.sealed if isinstance(marker, Sealed) else opening.sealed
    try:
        if sealed is None:
            raise PrivacyError("an opening without its sealed value")
        value = orjson.loads(privacy.keys.unseal(opening.pseudonym, sealed, aad))
        if isinstance(marker, Commitment):
            _check(privacy.keys, opening.pseudonym, marker, pointer, value)
    except PrivacyError:
        return at("mismatch", kind)
    except orjson.JSONDecodeError:
        return at("mismatch", kind)
    return at("ok", kind, value)


def _check(keys: KeyStore, pseudonym: str, c: Commitment, pointer: str, value: JSON) -> None:
    import hmac

    expected = keys.mac(pseudonym, commitment_message(c.nonce, pointer, value))
    if not hmac.compare_digest(expected, c.digest):
        raise PrivacyError(f"the value does not match the commitment at {pointer}")


ClaimStatus = Literal["match", "mismatch", "unavailable", "foreign"]


def check_claim(stored: StoredRecord, pointer: str, claim: JSON, privacy: Privacy) -> ClaimStatus:
    """Is ``claim`` the value the commitment at ``pointer`` of ``stored`` hides (an auditor
    holding the store checks a value someone asserts)? ``match``, ``mismatch``,
    ``unavailable`` (erased, or never stored: nothing to check with) or ``foreign`` (the
    commitment was copied from another record or chain). :class:`ConfigError` when the
    record holds no commitment there."""
    record = Record.from_stored(stored)
    found = dict(_markers(record)).get(pointer)
    try:
        marker = None if found is None else parse_marker(found)
    except PrivacyError:
        marker = None
    if not isinstance(marker, Commitment):
        raise ConfigError(f"{stored.chain}:{stored.seq} holds no commitment at {pointer}")
    if marker.nonce != record_nonce(record):
        return "foreign"
    opening = privacy.store.opening(marker.nonce, pointer)
    if opening is None:
        return "unavailable"
    if opening.chain != stored.chain:
        return "foreign"
    try:
        _check(privacy.keys, opening.pseudonym, marker, pointer, claim)
    except PrivacyError as exc:
        if "no key" in str(exc):  # destroyed between the lookup and the check
            return "unavailable"
        return "mismatch"
    return "match"


@dataclass(frozen=True, slots=True)
class OpeningsReport:
    """``privacy verify``: every marker of the chains read, by status."""

    records: int
    counts: dict[str, int]
    problems: list[Opened]  # mismatch and malformed, first 100

    @property
    def ok(self) -> bool:
        return not any(self.counts.get(status) for status in PROBLEMS)


def verify_openings(
    reader: LedgerReader, privacy: Privacy, chains: Iterable[str] | None = None
) -> OpeningsReport:
    """Open every commitment of ``chains`` (default: all) and check it against its opening.
    Unavailable openings (erased subjects) are counted, not problems."""
    counts: dict[str, int] = dict.fromkeys(
        ("ok", "mismatch", "unavailable", "malformed", "foreign", "duplicate"), 0
    )
    problems: list[Opened] = []
    records = 0
    seen: dict[tuple[str, bytes], int] = {}  # (chain, record nonce) -> seq: each drawn once
    for chain in reader.chains() if chains is None else chains:
        for stored in reader.read(chain):
            records += 1
            if b'"$commit' not in stored.body and b'"$sealed' not in stored.body:
                continue  # no marker: skip the parse (most records of most chains)
            try:
                opened = open_record(stored, privacy)
                nonce = record_nonce(Record.from_stored(stored))
            except AuditError:
                opened, nonce = [Opened(stored.chain, stored.seq, "", "malformed")], None
            if nonce is not None and seen.setdefault((chain, nonce), stored.seq) != stored.seq:
                # a whole record's markers and nonce copied into another: the copy is no
                # record the policy shaped
                opened = [Opened(o.chain, o.seq, o.pointer, "duplicate") for o in opened]
            for o in opened:
                counts[o.status] += 1
                if o.status in PROBLEMS and len(problems) < 100:
                    problems.append(o)
    return OpeningsReport(records, counts, problems)
