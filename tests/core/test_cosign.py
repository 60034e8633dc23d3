"""c2sp.org/tlog-cosignature (``cosignature/v1``, Ed25519, type 0x04) and the request body of
c2sp.org/tlog-witness: the specs' examples byte for byte, and our cosignatures checked by an
independent verifier written here from the spec text alone (hashlib, base64, cryptography).

The spec examples are copied from C2SP/C2SP tlog-cosignature.md and tlog-witness.md. The
cosignature spec publishes no public key for ``witness.example.com/w1`` (nor for the
``behind-the-sofa`` log), so its example signature can be parsed but not verified: the
signature bytes are checked for framing (key ID, time, 64 bytes), the signed message for
exact bytes.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core._cosign import (
    Cosigner,
    WitnessKey,
    add_cosignatures,
    cosignature_lines,
    cosigned_message,
    parse_cosignature,
    quorum_of,
    verify_cosignature,
    witnessed,
)
from audit_core._note import Signer, note_parts, sign_note
from audit_core._witness_wire import encode_add_checkpoint, parse_add_checkpoint
from audit_core.checkpoint import Checkpoint
from audit_core.errors import SignatureError

# -- the specs' examples ---------------------------------------------------------------------

SOFA_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SOFA_LOG_LINE = (
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8="
)
SPEC_WITNESS_LINE = (
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
    "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA=="
)
SPEC_NOTE = f"{SOFA_BODY}\n{SOFA_LOG_LINE}\n{SPEC_WITNESS_LINE}\n"
#: tlog-cosignature, "Ed25519 signed message": the example, each line newline-terminated.
SPEC_SIGNED_MESSAGE = (
    b"cosignature/v1\n"
    b"time 1679315147\n"
    b"example.com/behind-the-sofa\n"
    b"20852163\n"
    b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
#: tlog-witness, "add-checkpoint": the example request body.
SPEC_REQUEST = (
    "old 20852014\n"
    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
    "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
    "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
    "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
    "\n"
    f"{SOFA_BODY}\n"
    f"{SOFA_LOG_LINE}\n"
    "\u2014 example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks"
    "+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n"
).encode()


# -- an independent verifier, from the spec text alone ---------------------------------------


def spec_key_id(name: str, public: bytes) -> bytes:
    """tlog-cosignature "Format": SHA-256(<name> || "\\n" || 0x04 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + b"\x04" + public).digest()[:4]


def spec_vkey(name: str, public: bytes) -> str:
    """signed-note "Verifier keys": name "+" hex key ID "+" base64(type || public key)."""
    b64 = base64.b64encode(b"\x04" + public).decode()
    return f"{name}+{spec_key_id(name, public).hex()}+{b64}"


def spec_message(body: bytes, timestamp: int) -> bytes:
    """tlog-cosignature "Ed25519 signed message": header, time line, the note body."""
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + body


def spec_verify(note: bytes, name: str, public: bytes) -> list[int]:
    """The timestamps of ``name``'s valid cosignatures on ``note`` (bytes); signed-note: the
    text ends at the last blank line, each signature line is "— name base64", lines whose
    name or key ID do not match are ignored."""
    cut = note.rindex(b"\n\n")
    body, lines = note[: cut + 1], note[cut + 2 :].split(b"\n")[:-1]
    key_id = spec_key_id(name, public)
    valid = []
    for line in lines:
        prefix = "\u2014 ".encode() + name.encode() + b" "
        if not line.startswith(prefix):
            continue
        raw = base64.b64decode(line[len(prefix) :])
        if len(raw) != 4 + 8 + 64 or raw[:4] != key_id:
            continue
        timestamp = int.from_bytes(raw[4:12], "big")
        if timestamp > 2**63 - 1:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(
                raw[12:], spec_message(body, timestamp)
            )
        except InvalidSignature:
            continue
        valid.append(timestamp)
    return valid


def cosigned_note(body: str, line: str) -> bytes:
    return f"{body}\n{line}\n".encode()


W1 = Cosigner(name="witness.example/w1", seed=bytes(range(32)))
BODY = "example.com/log\n12\n" + base64.b64encode(bytes(range(32))).decode() + "\n"


class TestSpecExamples:
    def test_spec_witness_line_parses(self) -> None:
        """The spec's witness line: key ID 8d66cf3f, time 1679315147, a 64-byte signature."""
        cosig = parse_cosignature(SPEC_WITNESS_LINE)
        assert "witness.example.com/w1" == cosig.name
        assert "8d66cf3f" == cosig.key_id.hex()
        assert 1679315147 == cosig.timestamp
        assert 64 == len(cosig.signature)
        assert SPEC_WITNESS_LINE == cosig.line

    def test_signed_message_matches_spec_byte_for_byte(self) -> None:
        """cosigned_message of the sofa checkpoint at 1679315147 is the spec's example."""
        assert SPEC_SIGNED_MESSAGE == cosigned_message(SOFA_BODY, 1679315147)
        assert SPEC_SIGNED_MESSAGE == spec_message(SOFA_BODY.encode(), 1679315147)

    def test_spec_note_parses(self) -> None:
        """The spec's whole note (log line + witness line) parses with our note code."""
        body, lines = note_parts(SPEC_NOTE)
        assert SOFA_BODY == body
        assert [SOFA_LOG_LINE, SPEC_WITNESS_LINE] == lines
        assert Checkpoint("example.com/behind-the-sofa", 20852163, _sofa_root()) == (
            Checkpoint.parse(body)
        )

    def test_spec_request_body_parses(self) -> None:
        """The tlog-witness example request: old 20852014, four proof hashes, the note."""
        request = parse_add_checkpoint(SPEC_REQUEST)
        assert 20852014 == request.old_size
        assert 4 == len(request.proof)
        assert all(32 == len(h) for h in request.proof)
        assert "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=" == (
            base64.b64encode(request.proof[0]).decode()
        )
        assert SOFA_BODY == note_parts(request.note)[0]
        assert SPEC_REQUEST == encode_add_checkpoint(20852014, request.proof, request.note)

    def test_spec_note_has_one_cosignature_line(self) -> None:
        """Of the spec note's two lines, only the witness's is framed as a cosignature (76
        bytes); a witness key we trust that is not the spec's finds nothing to verify."""
        assert [SPEC_WITNESS_LINE] == cosignature_lines(SPEC_NOTE)
        assert [] == witnessed(SPEC_NOTE, [W1.key])

    def test_unknown_spec_key_makes_no_valid_cosignature(self) -> None:
        """A key of the same name but another public key does not verify the spec's line."""
        other = Cosigner("witness.example.com/w1", bytes(32)).key
        assert not verify_cosignature(other, SOFA_BODY, parse_cosignature(SPEC_WITNESS_LINE))


def _sofa_root() -> bytes:
    return base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")


class TestIndependentVerifier:
    def test_key_id_and_vkey_match_spec_rules(self) -> None:
        """Our witness key's ID and vkey string are the spec's, computed independently."""
        key = W1.key
        assert spec_key_id(W1.name, key.public) == key.key_id
        assert spec_vkey(W1.name, key.public) == str(key)

    def test_our_cosignature_verifies_independently(self) -> None:
        """A cosignature we make verifies under the independent verifier, with its time."""
        line = W1.cosign(BODY, 1700000000)
        assert [1700000000] == spec_verify(cosigned_note(BODY, line), W1.name, W1.key.public)

    def test_extension_lines_are_cosigned(self) -> None:
        """A checkpoint with extension lines is cosigned over all its lines (spec: MUST)."""
        body = BODY + "extension one\n"
        line = W1.cosign(body, 5)
        assert [5] == spec_verify(cosigned_note(body, line), W1.name, W1.key.public)
        assert [] == spec_verify(cosigned_note(BODY, line), W1.name, W1.key.public)

    def test_other_witness_line_is_ignored(self) -> None:
        """Lines by other keys are ignored by both verifiers (signed-note rule)."""
        other = Cosigner("witness.example/w2", bytes(range(1, 33)))
        note = f"{BODY}\n{other.cosign(BODY, 9)}\n{W1.cosign(BODY, 10)}\n"
        assert [10] == spec_verify(note.encode(), W1.name, W1.key.public)


names = st.from_regex(r"[a-z0-9.]{1,12}(/[a-z0-9]{1,8})?", fullmatch=True)
seeds = st.binary(min_size=32, max_size=32)
times = st.integers(min_value=0, max_value=2**63 - 1)


def ours_accepts(key: WitnessKey, body: bytes, line: str) -> bool:
    try:
        text = body.decode("utf-8")
        return verify_cosignature(key, text, parse_cosignature(line))
    except (UnicodeDecodeError, SignatureError):
        return False


class TestProperties:
    @settings(max_examples=150, deadline=None)
    @given(st.data(), times)
    def test_any_altered_body_byte_fails(self, data: st.DataObject, timestamp: int) -> None:
        """Changing any byte of the cosigned checkpoint body makes both verifiers refuse."""
        line = W1.cosign(BODY, timestamp)
        raw = bytearray(BODY.encode())
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
        assert not ours_accepts(W1.key, bytes(raw), line)
        if raw.endswith(b"\n"):  # else the note has no text part to verify at all
            note = bytes(raw) + b"\n" + line.encode() + b"\n"
            assert [] == spec_verify(note, W1.name, W1.key.public)

    @settings(max_examples=150, deadline=None)
    @given(times, st.integers(min_value=0, max_value=2**63 - 1))
    def test_altered_timestamp_fails(self, timestamp: int, other: int) -> None:
        """A cosignature line whose timestamp is changed verifies under neither verifier."""
        if other == timestamp:
            other = timestamp ^ 1
        line = W1.cosign(BODY, timestamp)
        prefix, b64 = line.rsplit(" ", 1)
        raw = base64.b64decode(b64)
        changed = raw[:4] + other.to_bytes(8, "big") + raw[12:]
        forged = f"{prefix} {base64.b64encode(changed).decode()}"
        assert other == parse_cosignature(forged).timestamp
        assert not ours_accepts(W1.key, BODY.encode(), forged)
        assert [] == spec_verify(cosigned_note(BODY, forged), W1.name, W1.key.public)

    @settings(max_examples=100, deadline=None)
    @given(names, seeds, times)
    def test_keys_and_lines_round_trip(self, name: str, seed: bytes, timestamp: int) -> None:
        """Private key, public key and line strings parse back to what made them."""
        cosigner = Cosigner(name, seed)
        assert seed == Cosigner.parse(str(cosigner)).seed
        assert cosigner.key == WitnessKey.parse(str(cosigner.key))
        assert spec_vkey(name, cosigner.key.public) == str(cosigner.key)
        line = cosigner.cosign(BODY, timestamp)
        cosig = parse_cosignature(line)
        assert (name, timestamp, line) == (cosig.name, cosig.timestamp, cosig.line)
        assert [timestamp] == spec_verify(cosigned_note(BODY, line), name, cosigner.key.public)

    def test_log_key_is_not_a_witness_key(self) -> None:
        """A log's 0x01 verifier key is refused where a 0x04 witness key is expected."""
        from audit_core._note import Signer

        with pytest.raises(SignatureError, match="0x01"):
            WitnessKey.parse(str(Signer("example.com/log", bytes(32)).verifier))


class TestReview:
    """The reviewer's cosignature defects (issue 18, r1)."""

    BODY = "example.com/log\n2\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"

    def test_one_public_key_under_two_names_is_one_witness(self) -> None:
        """A key under two names counts once in `witnessed`; `quorum_of` refuses such keys."""
        w = Cosigner.generate("witness.example/a")
        twin = Cosigner("witness.example/b", w.seed)
        note = add_cosignatures(
            sign_note(self.BODY, [Signer.generate("example.com/log")]),
            [w.cosign(self.BODY, 1), twin.cosign(self.BODY, 2)],
        )
        assert 1 == len(witnessed(note, [w.key, twin.key]))
        with pytest.raises(SignatureError, match="one Ed25519 key"):
            quorum_of(note, [w.key, twin.key], 2)
        valid, missing = quorum_of(note, [w.key, w.key], 1)  # the same key twice: one witness
        assert (1, []) == (len(valid), missing)

    def test_add_cosignatures_refuses_more_than_100_lines(self) -> None:
        """A note that would carry over 100 signature lines is refused, not written."""
        lines = [Cosigner.generate(f"w.example/{i}").cosign(self.BODY, 1) for i in range(100)]
        note = add_cosignatures(
            sign_note(self.BODY, [Signer.generate("example.com/log")]), lines[:99]
        )
        assert 100 == len(note_parts(note)[1])
        with pytest.raises(SignatureError, match="over 100"):
            add_cosignatures(note, lines[99:])
