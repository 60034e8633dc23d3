"""Keyed commitments and sealed openings: what a chain holds in place of personal data.

>>> from audit_core.privacy.commitment import (
...     Commitment, commitment_message, derive_keys, mac, parse_marker)
>>> key = derive_keys(bytes(32))
>>> nonce = bytes(16)
>>> c = Commitment(nonce, mac(key.mac, commitment_message(nonce, "/actor/id", "alice")))
>>> parse_marker(c.to_json()) == c, parse_marker(c.to_text()) == c
(True, True)

A field the privacy policy marks personal is recorded as a commitment (docs/PRIVACY.md)::

    {"$commit": {"alg": "hmac-sha256/v1", "n": <16-byte record nonce>, "c": <HMAC-SHA256>}}

with ``c = HMAC-SHA256(k_mac, COMMIT_DOMAIN ‖ n ‖ u64be(len p) ‖ p ‖ u64be(len v) ‖ v)``,
``p`` the field's RFC 6901 JSON pointer in the record (``/actor/id``, ``/data/conf/email``)
and ``v`` the RFC 8785 canonical bytes of its value. The construction is Google Key
Transparency's commitment (a keyed hash over a random nonce and the value): without the
subject's key a commitment reveals nothing and cannot be brute-forced, not even for an email
address; the random nonce (one per record) makes the same value recorded twice give two
unlinkable commitments; the domain string, the fixed-size nonce and the two length prefixes
make every (pointer, value) split its own message, so no commitment of one field opens
another. The chain names neither the subject nor its key.

``k_mac`` and ``k_seal`` are derived from the subject's one key with HKDF-SHA256 (RFC 5869),
one ``info`` each, so the commitment key never encrypts and the encryption key never MACs.

The value itself is kept off the chain, in the erasable privacy store, as an *opening*:
AES-256-GCM (NIST SP 800-38D) under ``k_seal`` with a random 96-bit IV, its associated data
binding it to chain, record nonce and pointer (:func:`opening_aad`), so an opening moved to
another record or field fails to decrypt. Destroying the subject's key (and the openings)
is the erasure: every commitment stays on the chain, byte for byte, and every proof over it
stays valid, while what it hid can no longer be learnt.

``encrypt`` in a policy puts the sealed value on the chain instead (``{"$sealed": …}``):
readable with the key, unreadable once the key is destroyed (crypto-shredding).

Where the record format needs a string (``actor.id``), the same members are joined into
text: ``$commit:hmac-sha256/v1:<n>:<c>`` and ``$sealed:aes-256-gcm/v1:<n>:<ct>``. All
binary members are base64url without padding (RFC 4648 §5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from audit_core._jcs import canonical_bytes
from audit_core._normalize import JSON
from audit_core.errors import PrivacyError
from audit_core.privacy.pointer import escape_token

__all__ = [
    "COMMIT_ALG",
    "COMMIT_DOMAIN",
    "KCV_MESSAGE",
    "NONCE_BYTES",
    "SEAL_ALG",
    "SEAL_DOMAIN",
    "Commitment",
    "Sealed",
    "SubjectKeys",
    "check_commitment",
    "commitment_message",
    "decode_b64",
    "derive_keys",
    "encode_b64",
    "find_markers",
    "is_marker",
    "mac",
    "message_of",
    "new_nonce",
    "new_pseudonym",
    "opening_aad",
    "parse_marker",
    "seal",
    "unseal",
    "value_bytes",
]

COMMIT_ALG: Final = "hmac-sha256/v1"
SEAL_ALG: Final = "aes-256-gcm/v1"
#: NUL-terminated, so no domain is a prefix of another message (c2sp.org/signed-note does
#: the same with its newline-terminated context strings).
COMMIT_DOMAIN: Final = b"workflow-audit/commit/v1\x00"
SEAL_DOMAIN: Final = b"workflow-audit/seal/v1\x00"
#: The key check value is the first 8 bytes of the commitment key's MAC of this message: it
#: names which key an erasure destroyed without revealing anything about the key.
KCV_MESSAGE: Final = b"workflow-audit/key-check/v1\x00"
NONCE_BYTES: Final = 16
KEY_BYTES: Final = 32
_IV_BYTES: Final = 12  # NIST SP 800-38D §8.2.2: 96-bit random IVs
_MAC_INFO: Final = b"workflow-audit/commit-key/v1"
_SEAL_INFO: Final = b"workflow-audit/seal-key/v1"
_COMMIT: Final = "$commit"
_SEALED: Final = "$sealed"
_U64 = struct.Struct(">Q")


def encode_b64(raw: bytes) -> str:
    """base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_b64(text: str) -> bytes:
    """The inverse of :func:`encode_b64`; strict (the canonical encoding only)."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise PrivacyError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PrivacyError("not unpadded base64url") from exc
    if encode_b64(raw) != text:  # non-zero trailing bits: two texts for one value
        raise PrivacyError("not canonical base64url")
    return raw


def new_nonce() -> bytes:
    """A record's commitment nonce: 16 random bytes (one per record, shared by its fields)."""
    return os.urandom(NONCE_BYTES)


def new_pseudonym() -> str:
    """A data subject's pseudonym in the privacy store: random, so it says nothing of whom."""
    return "ps-" + encode_b64(os.urandom(16))


def value_bytes(value: JSON) -> bytes:
    """The committed bytes of a value: RFC 8785 canonical JSON."""
    return canonical_bytes(value)


def _framed(*parts: bytes) -> bytes:
    return b"".join(_U64.pack(len(p)) + p for p in parts)


def commitment_message(nonce: bytes, pointer: str, value: JSON) -> bytes:
    """What the subject's commitment key MACs: domain ‖ nonce ‖ len-prefixed pointer ‖
    len-prefixed canonical value."""
    return message_of(nonce, pointer, value_bytes(value))


def message_of(nonce: bytes, pointer: str, raw: bytes) -> bytes:
    """:func:`commitment_message` of a value's canonical bytes ``raw`` (computed once when
    they are also sealed)."""
    if len(nonce) != NONCE_BYTES:
        raise PrivacyError(f"a commitment nonce is {NONCE_BYTES} bytes, got {len(nonce)}")
    return COMMIT_DOMAIN + nonce + _framed(pointer.encode("utf-8"), raw)


def opening_aad(chain: str, nonce: bytes, pointer: str) -> bytes:
    """AES-GCM associated data of a sealed value: it opens only for this chain, record nonce
    and pointer."""
    return SEAL_DOMAIN + nonce + _framed(chain.encode("utf-8"), pointer.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class SubjectKeys:
    """A subject's two working keys, derived from its one stored key (never printed)."""

    mac: bytes
    seal: bytes

    def __repr__(self) -> str:  # keys never reach a log or an error through repr
        return "SubjectKeys(<hidden>)"


def derive_keys(key: bytes) -> SubjectKeys:
    """HKDF-SHA256 (RFC 5869) of the subject key: one key to commit, one to seal."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(key) != KEY_BYTES:
        raise PrivacyError(f"a subject key is {KEY_BYTES} bytes")
    parts = []
    for info in (_MAC_INFO, _SEAL_INFO):
        parts.append(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key))
    return SubjectKeys(mac=parts[0], seal=parts[1])


def mac(mac_key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104)."""
    return hmac.new(mac_key, message, hashlib.sha256).digest()


def seal(seal_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: random IV ‖ ciphertext ‖ tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = os.urandom(_IV_BYTES)
    return iv + AESGCM(seal_key).encrypt(iv, plaintext, aad)


def unseal(seal_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; :class:`PrivacyError` when it was altered or
    belongs to another chain, record or pointer."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(sealed) < _IV_BYTES + 16:
        raise PrivacyError("a sealed value is too short")
    try:
        return AESGCM(seal_key).decrypt(sealed[:_IV_BYTES], sealed[_IV_BYTES:], aad)
    except InvalidTag as exc:
        raise PrivacyError("a sealed value does not open for this record and field") from exc


@dataclass(frozen=True, slots=True)
class Commitment:
    """``{"$commit": {"alg", "n", "c"}}`` on the chain."""

    nonce: bytes
    digest: bytes

    def to_json(self) -> dict[str, JSON]:
        return {
            _COMMIT: {"alg": COMMIT_ALG, "n": encode_b64(self.nonce), "c": encode_b64(self.digest)}
        }

    def to_text(self) -> str:
        return f"{_COMMIT}:{COMMIT_ALG}:{encode_b64(self.nonce)}:{encode_b64(self.digest)}"


@dataclass(frozen=True, slots=True)
class Sealed:
    """``{"$sealed": {"alg", "n", "ct"}}`` on the chain (a policy's ``encrypt``)."""

    nonce: bytes
    sealed: bytes

    def to_json(self) -> dict[str, JSON]:
        return {
            _SEALED: {"alg": SEAL_ALG, "n": encode_b64(self.nonce), "ct": encode_b64(self.sealed)}
        }

    def to_text(self) -> str:
        return f"{_SEALED}:{SEAL_ALG}:{encode_b64(self.nonce)}:{encode_b64(self.sealed)}"


def check_commitment(mac_key: bytes, commitment: Commitment, pointer: str, value: JSON) -> None:
    """None when ``value`` at ``pointer`` is what ``commitment`` hides; else
    :class:`PrivacyError` (which names neither value nor key)."""
    expected = mac(mac_key, commitment_message(commitment.nonce, pointer, value))
    if not hmac.compare_digest(expected, commitment.digest):
        raise PrivacyError(f"the value does not match the commitment at {pointer}")


def is_marker(value: JSON) -> bool:
    """Does ``value`` look like a commitment or a sealed value (well formed or not)?"""
    if isinstance(value, dict):
        return len(value) == 1 and (_COMMIT in value or _SEALED in value)
    return isinstance(value, str) and value.startswith((_COMMIT + ":", _SEALED + ":"))


def parse_marker(value: JSON) -> Commitment | Sealed | None:
    """The commitment or sealed value ``value`` holds (object or text form), None when it is
    neither; :class:`PrivacyError` when it claims to be one and is malformed."""
    if not is_marker(value):
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 4:
            raise PrivacyError("a text commitment has 4 ':'-separated parts")
        kind, alg, n, c = parts
        members: dict[str, JSON] = {"alg": alg, "n": n, ("c" if kind == _COMMIT else "ct"): c}
    elif isinstance(value, dict):
        kind = next(iter(value))
        inner = value[kind]
        if not isinstance(inner, dict):
            raise PrivacyError("a marker holds an object")
        members = inner
    else:  # is_marker accepts only strings and objects
        return None
    if kind == _COMMIT:
        _members(members, {"alg", "n", "c"}, COMMIT_ALG)
        nonce, digest = _nonce(members["n"]), decode_b64(members["c"])  # type: ignore[arg-type]
        if len(digest) != 32:
            raise PrivacyError("a commitment's c is 32 bytes")
        return Commitment(nonce, digest)
    _members(members, {"alg", "n", "ct"}, SEAL_ALG)
    return Sealed(_nonce(members["n"]), decode_b64(members["ct"]))  # type: ignore[arg-type]


def _members(members: dict[str, JSON], names: set[str], alg: str) -> None:
    # Never echo the input: a user's string shaped like a marker may hold personal data.
    if set(members) != names:
        raise PrivacyError(f"a marker has exactly the members {sorted(names)}")
    if members["alg"] != alg:
        raise PrivacyError(f"unknown algorithm (this version knows {alg})")


def _nonce(text: JSON) -> bytes:
    raw = decode_b64(text)  # type: ignore[arg-type]
    if len(raw) != NONCE_BYTES:
        raise PrivacyError(f"a commitment nonce is {NONCE_BYTES} bytes")
    return raw


def find_markers(doc: JSON, base: str = "") -> Iterator[tuple[str, JSON]]:
    """Every commitment or sealed value in ``doc`` with its JSON pointer (not descending into
    a marker), in document order."""
    if is_marker(doc):
        yield base, doc
    elif isinstance(doc, dict):
        for name, member in doc.items():
            yield from find_markers(member, f"{base}/{escape_token(name)}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from find_markers(item, f"{base}/{i}")
