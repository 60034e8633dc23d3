"""Witness cosignatures of checkpoints: c2sp.org/tlog-cosignature, ``cosignature/v1`` (the
Ed25519 type, signature type 0x04).

>>> w = Cosigner.generate("witness.example/w1")
>>> body = "example.com/log\\n2\\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\\n"
>>> line = w.cosign(body, 1679315147)
>>> parse_cosignature(line).timestamp
1679315147
>>> verify_cosignature(w.key, body, parse_cosignature(line))
True

Format (tlog-cosignature, "Format" and "Ed25519 signed message"):

- key ID = SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]
- witness (verifier) key: ``name+hexkeyid+base64(0x04 || public key)`` (a signed-note vkey)
- witness private key: ``PRIVATE+KEY+name+hexkeyid+base64(0x04 || 32-byte seed)`` (our
  mirror of the signed-note signer key; the spec defines no private form)
- line: ``— name base64(key ID || u64be timestamp || 64-byte Ed25519 signature)``
- signed message: ``cosignature/v1\\n`` ``time <timestamp>\\n`` then the checkpoint body
  (the note text, every line with its newline, no signature line).

A cosignature states that, as of its time, the cosigner had verified the checkpoint to be
consistent with every earlier one it saw of that origin. The Ed25519 message does not commit
to the cosigner's name (the spec asks for one key per cosigner), so a key is identified by its
name *and* key ID, as the spec's clients do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from audit_core._note import Signer, Verifier, check_key_name, note_parts
from audit_core.errors import SignatureError

__all__ = [
    "COSIGNATURE_ALG",
    "MAX_NOTE_SIGNATURES",
    "MAX_TIMESTAMP",
    "Cosignature",
    "Cosigner",
    "WitnessKey",
    "add_cosignatures",
    "cosignature_lines",
    "cosigned_message",
    "parse_cosignature",
    "quorum_of",
    "verify_cosignature",
    "witnessed",
]

COSIGNATURE_ALG = 0x04  # c2sp.org/signed-note "Signature types": timestamped Ed25519 cosignature
#: tlog-cosignature: "It MUST NOT exceed 2^63 - 1".
MAX_TIMESTAMP = 2**63 - 1
_SIG_PREFIX = "\u2014 "  # em dash, space (c2sp.org/signed-note)
_HEX8 = re.compile(r"[0-9a-f]{8}")
#: Signature lines a note may carry (audit_core._note reads at most this many).
MAX_NOTE_SIGNATURES = 100
_LINE_BYTES = 4 + 8 + 64  # key ID, timestamp, Ed25519 signature


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_ALG]) + public).digest()[:4]


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not valid base64") from exc


def cosigned_message(body: str, timestamp: int) -> bytes:
    """The bytes a cosigner signs: header line, time line, then the checkpoint body."""
    _check_time(timestamp)
    if not body.endswith("\n"):
        raise SignatureError("a checkpoint body ends with a newline")
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def _check_time(timestamp: int) -> None:
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise SignatureError(f"cosignature timestamp {timestamp!r} is not 0 to 2^63-1")


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A witness's public key (a vkey of signature type 0x04): verifies its cosignatures."""

    name: str
    key_id: bytes
    public: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public) != 32 or self.key_id != _key_id(self.name, self.public):
            raise SignatureError("a witness key needs a 32-byte Ed25519 key and its key ID")

    @classmethod
    def of(cls, name: str, public: bytes) -> WitnessKey:
        """The witness key ``name`` with Ed25519 ``public`` (its ID computed with 0x04)."""
        return cls(name, _key_id(name, public), public)

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        """Parse ``name+hexkeyid+base64(0x04 || pubkey)``. A log's Ed25519 verifier key
        (type 0x01) is refused: cosignatures are a different signature type."""
        text = text.strip()
        parts = text.split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            if text.startswith("PRIVATE+KEY+"):  # never echoed: it is key material
                raise SignatureError(
                    "a private key was given where a witness (public) key is expected"
                )
            raise SignatureError("not a witness key (name+hexid+base64)")
        name, hex_id, b64 = parts
        check_key_name(name)
        raw = _b64(b64, "witness key")
        if len(raw) != 33 or raw[0] != COSIGNATURE_ALG:
            kind = "a log's Ed25519 (0x01) key" if raw[:1] == b"\x01" else "not a 0x04 key"
            raise SignatureError(
                f"witness key {name!r} is {kind}: a witness key has signature type 0x04 "
                "(tlog-cosignature); `workflow-audit witness keygen` prints one"
            )
        key = cls.of(name, raw[1:])
        if key.key_id.hex() != hex_id:
            raise SignatureError(f"witness key id {hex_id} does not match its key")
        return key

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([COSIGNATURE_ALG]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def describe(self) -> str:
        """``name (keyid)``, how messages name a witness."""
        return f"{self.name} ({self.key_id.hex()})"


@dataclass(frozen=True, slots=True, repr=False)
class Cosigner:
    """A witness's private key. ``repr`` never shows the seed."""

    name: str
    seed: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise SignatureError("an Ed25519 cosigner needs a 32-byte seed")

    def __repr__(self) -> str:
        return f"Cosigner({self.name!r}, key id {self.key.key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        check_key_name(name)
        return cls(name, os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> Cosigner:
        """Parse ``PRIVATE+KEY+name+hexkeyid+base64(0x04 || seed)``."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _HEX8.fullmatch(parts[3]):
            raise SignatureError("not a witness private key (PRIVATE+KEY+name+hexid+base64)")
        name, hex_id = parts[2], parts[3]
        check_key_name(name)
        raw = _b64(parts[4], "witness private key")
        if len(raw) != 33 or raw[0] != COSIGNATURE_ALG:
            raise SignatureError("witness private key is not a 0x04 (cosignature) key")
        cosigner = cls(name, raw[1:])
        if cosigner.key.key_id.hex() != hex_id:
            raise SignatureError(f"witness private key id {hex_id} does not match its key")
        return cosigner

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([COSIGNATURE_ALG]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key.key_id.hex()}+{b64}"

    @property
    def _signer(self) -> Signer:
        # the same Ed25519 key; _note caches the derived key objects per seed
        return Signer(self.name, self.seed)

    @property
    def key(self) -> WitnessKey:
        return WitnessKey.of(self.name, self._signer.verifier.public)

    def cosign(self, body: str, timestamp: int) -> str:
        """The cosignature line (no newline) of checkpoint ``body`` at ``timestamp``."""
        signature = self._signer.sign(cosigned_message(body, timestamp))
        raw = self.key.key_id + timestamp.to_bytes(8, "big") + signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(raw).decode()}"


@dataclass(frozen=True, slots=True)
class Cosignature:
    """One parsed cosignature line (its signature not yet verified)."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes
    line: str


def parse_cosignature(line: str) -> Cosignature:
    """Parse ``— name base64(keyid || u64 timestamp || signature)`` (framing only)."""
    line = line.rstrip("\n")
    if not line.startswith(_SIG_PREFIX):
        raise SignatureError(f"malformed cosignature line {line[:40]!r}")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep:
        raise SignatureError(f"malformed cosignature line {line[:40]!r}")
    check_key_name(name)
    raw = _b64(b64, f"cosignature by {name}")
    if len(raw) != _LINE_BYTES:
        raise SignatureError(
            f"cosignature by {name} is {len(raw)} bytes, not {_LINE_BYTES} (key ID, time, sig)"
        )
    timestamp = int.from_bytes(raw[4:12], "big")
    _check_time(timestamp)
    return Cosignature(name, raw[:4], timestamp, raw[12:], line)


def verify_cosignature(key: WitnessKey, body: str, cosignature: Cosignature) -> bool:
    """Does ``cosignature`` by ``key`` verify over checkpoint ``body``?"""
    if (cosignature.name, cosignature.key_id) != (key.name, key.key_id):
        return False
    verifier = Verifier(key.name, key.key_id, key.public)
    return verifier.verify(cosigned_message(body, cosignature.timestamp), cosignature.signature)


def cosignature_lines(note: str) -> list[str]:
    """The signature lines of ``note`` that are framed as cosignatures (76 bytes)."""
    _, lines = note_parts(note)
    found = []
    for line in lines:
        try:
            parse_cosignature(line)
        except SignatureError:
            continue  # a log's signature (68 bytes) or another kind: not a cosignature
        found.append(line)
    return found


def witnessed(note: str, keys: Iterable[WitnessKey]) -> list[tuple[WitnessKey, Cosignature]]:
    """The valid cosignatures by ``keys`` on a signed note, one per witness public key (the
    newest).

    Lines by unknown keys are ignored (signed-note: they enable rotation and more
    witnesses); a line by a known key (name and key ID) that does not verify is tampering
    and raises :class:`SignatureError`."""
    body, lines = note_parts(note)
    known = {(k.name, k.key_id): k for k in keys}
    # one entry per Ed25519 public key: a key under two names is one witness (the message
    # does not commit to the name, so either name's line is the same key's statement)
    found: dict[bytes, tuple[WitnessKey, Cosignature]] = {}
    for line in lines:
        try:
            cosig = parse_cosignature(line)
        except SignatureError:
            continue
        key = known.get((cosig.name, cosig.key_id))
        if key is None:
            continue
        if not verify_cosignature(key, body, cosig):
            raise SignatureError(
                f"cosignature by witness {key.describe()} (time {cosig.timestamp}) does not verify"
            )
        held = found.get(key.public)
        if held is None or held[1].timestamp < cosig.timestamp:
            found[key.public] = (key, cosig)
    return list(found.values())


def quorum_of(
    note: str, keys: Sequence[WitnessKey], quorum: int
) -> tuple[list[tuple[WitnessKey, Cosignature]], list[WitnessKey]]:
    """``(valid cosignatures, witnesses missing)``; the quorum is met when at least
    ``quorum`` distinct witnesses cosigned. Raises :class:`SignatureError` on a bad one."""
    keys = list(dict.fromkeys(keys))  # the same key given twice is one witness
    publics: dict[bytes, WitnessKey] = {}
    for key in keys:
        twin = publics.setdefault(key.public, key)
        if twin != key:  # one Ed25519 key under two names is one witness, not two
            raise SignatureError(
                f"witness keys {twin.describe()} and {key.describe()} are one Ed25519 key: "
                "a quorum counts distinct witnesses"
            )
    if quorum < 1 or quorum > len(keys):
        raise SignatureError(f"a quorum of {quorum} needs 1 to {len(keys)} witness keys")
    valid = witnessed(note, keys)
    signed = {(k.name, k.key_id) for k, _ in valid}
    missing = [k for k in keys if (k.name, k.key_id) not in signed]
    return valid, missing


def add_cosignatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with the cosignature ``lines`` appended; a witness's earlier line (same name
    and key ID) is replaced, and a line already there is not repeated.
    :class:`SignatureError` beyond :data:`MAX_NOTE_SIGNATURES` lines (our notes' limit)."""
    body, old = note_parts(note)
    new = [parse_cosignature(line) for line in lines]
    replaced = {(c.name, c.key_id) for c in new}
    kept = []
    for line in old:
        try:
            cosig = parse_cosignature(line)
        except SignatureError:
            kept.append(line)
            continue
        if (cosig.name, cosig.key_id) not in replaced:
            kept.append(line)
    kept += [c.line for c in new if c.line not in kept]
    if len(kept) > MAX_NOTE_SIGNATURES:
        raise SignatureError(
            f"the note would carry {len(kept)} signature lines, over {MAX_NOTE_SIGNATURES}"
            " (c2sp.org/signed-note: a verifier may refuse more)"
        )
    return body + "\n" + "".join(f"{line}\n" for line in kept)
