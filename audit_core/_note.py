"""C2SP signed-note with Ed25519, and its key strings (byte-compatible with Go's
``golang.org/x/mod/sumdb/note``, so any implementation verifies our notes and we verify theirs).

>>> signer = Signer.generate("example.com/log")
>>> note = sign_note("hello\\n", [signer])
>>> open_note(note, [signer.verifier]).text
'hello\\n'

Formats (c2sp.org/signed-note):

- key ID = SHA-256(name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]
- verifier key: ``name+hexkeyid+base64(0x01 || public key)``
- signer key: ``PRIVATE+KEY+name+hexkeyid+base64(0x01 || 32-byte seed)``
- note: text ending in "\\n", a blank line, then lines ``— name base64(keyid || signature)``
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit_core.errors import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "Note",
    "Signer",
    "Verifier",
    "check_key_name",
    "note_parts",
    "open_note",
    "sign_note",
    "unverified_text",
]

_ALG_ED25519 = 0x01  # c2sp.org/signed-note "Signature types"
_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16
_HEX8 = re.compile(r"[0-9a-f]{8}")


def _utf8(text: str, what: str) -> bytes:
    # c2sp.org/signed-note: "Signed notes MUST be valid UTF-8" (no lone surrogates).
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SignatureError(f"{what} is not valid UTF-8") from exc


def _check_name(name: str) -> None:
    # c2sp.org/signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode
    # spaces or plus (U+002B) characters." str.isspace() is true for every White_Space
    # character (what Go's unicode.IsSpace tests: NBSP, U+2000-U+200A, U+3000, …) and for
    # the controls U+001C-U+001F, which a note must not hold anyway.
    if not isinstance(name, str) or not name or "+" in name or any(c.isspace() for c in name):
        raise SignatureError(f"key name {name!r} must be non-empty, without spaces or '+'")
    if any(ord(c) < 0x20 for c in name):
        raise SignatureError(f"key name {name!r} must not contain control characters")
    _utf8(name, "key name")


def _key_id(name: str, public: bytes) -> bytes:
    material = _utf8(name, "key name") + b"\n" + bytes([_ALG_ED25519]) + public
    return hashlib.sha256(material).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not valid base64") from exc


@dataclass(frozen=True, slots=True)
class Verifier:
    """A trusted public key: verifies signatures made by its :class:`Signer`."""

    name: str
    key_id: bytes
    public: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.key_id) != 4 or len(self.public) != 32:
            raise SignatureError("a verifier needs a 4-byte key id and a 32-byte Ed25519 key")

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """Parse ``name+hexkeyid+base64(0x01 || pubkey)``."""
        parts = text.strip().split("+", 2)  # base64 may contain "+" itself
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            # The text is never echoed: it may be a private key given by mistake (STYLE 18).
            if text.strip().startswith("PRIVATE+KEY+"):
                raise SignatureError(
                    "a private signer key was given where a verifier (public) key is expected; "
                    "give the verifier key instead (the signer key's .pub file)"
                )
            raise SignatureError("not a verifier key (name+hexid+base64)")
        name, hex_id, b64 = parts
        _check_name(name)
        raw = _b64decode(b64, "verifier key")
        if len(raw) != 33 or raw[0] != _ALG_ED25519:
            raise SignatureError("verifier key is not an Ed25519 (0x01) key")
        public = raw[1:]
        if _key_id(name, public).hex() != hex_id:
            raise SignatureError(f"verifier key id {hex_id} does not match its key")
        return cls(name, bytes.fromhex(hex_id), public)

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([_ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True, repr=False)
class Signer:
    """A private key that signs notes under ``name``. ``repr`` never shows the seed."""

    name: str
    seed: bytes

    def __post_init__(self) -> None:
        # A note signed under an invalid name could not be opened by any verifier (ours, Go's).
        _check_name(self.name)
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise SignatureError("an Ed25519 signer needs a 32-byte seed")

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key id {self.verifier.key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> Signer:
        import os

        _check_name(name)
        return cls(name, os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+hexkeyid+base64(0x01 || seed)``."""
        parts = text.strip().split("+", 4)  # base64 may contain "+" itself
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _HEX8.fullmatch(parts[3]):
            raise SignatureError("not a signer key (PRIVATE+KEY+name+hexid+base64)")
        name, hex_id = parts[2], parts[3]
        _check_name(name)
        raw = _b64decode(parts[4], "signer key")
        if len(raw) != 33 or raw[0] != _ALG_ED25519:
            raise SignatureError("signer key is not an Ed25519 (0x01) key")
        signer = cls(name, raw[1:])
        if signer.verifier.key_id.hex() != hex_id:
            raise SignatureError(f"signer key id {hex_id} does not match its key")
        return signer

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([_ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{b64}"

    @property
    def verifier(self) -> Verifier:
        return _verifier_of(self.name, self.seed)

    def sign(self, message: bytes) -> bytes:
        return _private_key(self.seed).sign(message)


# Deriving an Ed25519 key from its seed costs more than signing with it; a process signs with
# one or two keys, so keep the derived objects (values of frozen Signers, hence cacheable).
@functools.lru_cache(maxsize=16)
def _private_key(seed: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


@functools.lru_cache(maxsize=16)
def _verifier_of(name: str, seed: bytes) -> Verifier:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = _private_key(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Verifier(name, _key_id(name, public), public)


@dataclass(frozen=True, slots=True)
class Note:
    """A note whose signatures by ``verified`` keys checked out."""

    text: str
    verified: tuple[Verifier, ...]


@dataclass(frozen=True, slots=True)
class _SignatureLine:
    """One parsed signature line: ``— name base64(key id || signature)``."""

    line: str
    name: str
    key_id: bytes
    signature: bytes


def _parse_line(line: str) -> _SignatureLine:
    # c2sp.org/signed-note "Format": em dash, space, key name, space, base64 signature; the
    # key name rules apply here too (as Go's note.Open applies isValidName).
    if not line.startswith(_SIG_PREFIX):
        raise SignatureError(f"malformed signature line {line[:40]!r}")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not b64:
        raise SignatureError(f"malformed signature line {line[:40]!r}")
    _check_name(name)
    raw = _b64decode(b64, f"signature by {name}")
    if len(raw) < 5:  # a 4-byte key id and at least one byte of signature
        raise SignatureError(f"signature by {name} is too short")
    return _SignatureLine(line, name, raw[:4], raw[4:])


def sign_note(text: str, signers: Sequence[Signer], existing: str | None = None) -> str:
    """Sign ``text`` (which must end in a newline) with each signer; with ``existing`` (a
    signed note of the same text), add the signatures to those it already carries
    (witness cosigning).

    The existing signature lines are checked as :func:`open_note` parses them (not their
    signatures: the keys may be unknown here), so the result always opens. As Go's
    ``note.Sign`` does, a signer's own earlier line is replaced, never repeated: the new
    lines follow the kept ones.
    """
    if not text.endswith("\n"):
        raise SignatureError("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise SignatureError("note text must not contain control characters")
    message = _utf8(text, "note text")
    ours = {(signer.name, signer.verifier.key_id) for signer in signers}
    if len(ours) != len(signers):
        raise SignatureError("the same key is given twice to sign one note")
    lines: list[str] = []
    if existing is not None:
        _check_note_chars(existing)
        old_text, old_lines = _split(existing)
        if old_text != text:
            raise SignatureError("cannot cosign: the existing note has another text")
        for parsed in map(_parse_line, old_lines):
            if (parsed.name, parsed.key_id) not in ours and parsed.line not in lines:
                lines.append(parsed.line)
    for signer in signers:
        key_id = signer.verifier.key_id
        sig = base64.b64encode(key_id + signer.sign(message)).decode()
        lines.append(f"{_SIG_PREFIX}{signer.name} {sig}")
    if len(lines) > _MAX_SIGNATURES:
        raise SignatureError(f"a note carries at most {_MAX_SIGNATURES} signatures")
    return text + "\n" + "".join(line + "\n" for line in lines)


def _check_note_chars(note: str) -> None:
    # c2sp.org/signed-note: valid UTF-8, no ASCII control character but newline.
    if not isinstance(note, str):  # a note read from an untrusted column or JSON field
        raise SignatureError(f"a signed note is text, not {type(note).__name__}")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise SignatureError("signed note contains control characters")
    _utf8(note, "signed note")


def _split(note: str) -> tuple[str, list[str]]:
    if not note.endswith("\n"):
        raise SignatureError("signed note must end with a newline")
    # "the text is separated from the signatures by the last empty line in the note"
    cut = note.rfind("\n\n")
    if cut < 0:
        raise SignatureError("signed note has no blank line before its signatures")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    lines = sig_block[:-1].split("\n") if sig_block else []
    if not lines or len(lines) > _MAX_SIGNATURES:
        raise SignatureError(f"signed note needs 1 to {_MAX_SIGNATURES} signature lines")
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise SignatureError(f"malformed signature line {line[:40]!r}")
    return text, lines


def check_key_name(name: str) -> None:
    """Raise :class:`SignatureError` unless ``name`` is a valid c2sp.org/signed-note key name
    (shared with the cosignature keys of :mod:`audit_core._cosign`)."""
    _check_name(name)


def note_parts(note: str) -> tuple[str, list[str]]:
    """A signed note's text and its signature lines (each without its newline), the note's
    form checked as :func:`open_note` checks it; no signature is verified."""
    _check_note_chars(note)
    text, lines = _split(note)
    for line in lines:
        _parse_line(line)
    return text, lines


def unverified_text(note: str) -> str:
    """A signed note's text, signatures NOT checked (for display and structure checks only).
    The note's form is checked as :func:`open_note` checks it: a note this accepts is
    malformed for no verifier, it is only not yet verified."""
    _check_note_chars(note)
    text, lines = _split(note)
    for line in lines:
        _parse_line(line)
    return text


def open_note(note: str, trusted: Iterable[Verifier], *, require_all: bool = True) -> Note:
    """Verify a signed note against ``trusted`` keys and return its text.

    Signatures by unknown keys are ignored (c2sp.org/signed-note: they enable key rotation
    and witness cosigning). A signature by a trusted key that fails to verify rejects the
    note. ``require_all``: every trusted signer must have signed (cosigning policy);
    otherwise one is enough. A signer is a key *name*: trusted keys that share a name are
    versions of one signer's key (a log that rotated its key signs under the same name,
    with a new key ID), and a signature by any one of them is that signer's.
    """
    keys = {(v.name, v.key_id): v for v in trusted}
    if not keys:
        raise SignatureError("no trusted verifier key given")
    _check_note_chars(note)
    text, lines = _split(note)
    message = text.encode()
    verified: dict[tuple[str, bytes], Verifier] = {}
    # Every line is parsed, known key or not: a malformed line (an invalid key name, bad
    # base64) makes the note malformed, as in Go's note.Open.
    for parsed in map(_parse_line, lines):
        key = keys.get((parsed.name, parsed.key_id))
        if key is None:
            continue  # an unknown key: ignored, as the spec requires
        if not key.verify(message, parsed.signature):
            raise SignatureError(
                f"signature by {parsed.name} ({parsed.key_id.hex()}) does not verify"
            )
        verified[(parsed.name, parsed.key_id)] = key
    signed = {name for name, _ in verified}
    missing = [f"{n}+{i.hex()}" for (n, i) in keys if n not in signed]
    if (require_all and missing) or not verified:
        raise SignatureError(
            "note is not signed by the trusted key(s): "
            + ", ".join(missing or list(map(str, keys)))
        )
    return Note(text, tuple(verified.values()))
