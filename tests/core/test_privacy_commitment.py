"""Keyed commitments, sealed openings and RFC 6901 pointers (audit_core/privacy/).

Golden vectors: tests/assets/privacy/commitment_vectors.json (fixed keys and nonces; a change
of any byte there means the on-chain format changed). The message layout is checked against an
independent construction written here from the module docstring's spec text
(domain ‖ nonce ‖ u64be len ‖ pointer ‖ u64be len ‖ value) and HKDF from RFC 5869 §2.
Properties (Hypothesis): length prefixes make every (pointer, value) split its own message;
any changed byte of a nonce, pointer, value, digest or sealed value fails verification.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from audit_core._jcs import canonical_bytes
from audit_core.errors import AuditError, PrivacyError
from audit_core.privacy.commitment import (
    COMMIT_ALG,
    COMMIT_DOMAIN,
    KCV_MESSAGE,
    NONCE_BYTES,
    SEAL_ALG,
    SEAL_DOMAIN,
    Commitment,
    Sealed,
    SubjectKeys,
    check_commitment,
    commitment_message,
    decode_b64,
    derive_keys,
    encode_b64,
    find_markers,
    is_marker,
    mac,
    new_nonce,
    new_pseudonym,
    opening_aad,
    parse_marker,
    seal,
    unseal,
    value_bytes,
)
from audit_core.privacy.pointer import (
    MISSING,
    escape_token,
    join,
    replace,
    resolve,
    split,
    unescape_token,
)

ASSETS = Path(__file__).parent.parent / "assets" / "privacy"
VECTORS: list[dict[str, Any]] = json.loads(
    (ASSETS / "commitment_vectors.json").read_text(encoding="utf-8")
)["vectors"]
HYP = settings(max_examples=200, deadline=None)

KEY = bytes(range(32))
KEYS = derive_keys(KEY)
NONCE = bytes(range(16))

# --- independent constructions, from the spec text (not from the module's code) -------------

SPEC_COMMIT_DOMAIN = b"workflow-audit/commit/v1\x00"
SPEC_SEAL_DOMAIN = b"workflow-audit/seal/v1\x00"
SPEC_KCV_MESSAGE = b"workflow-audit/key-check/v1\x00"


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def spec_message(nonce: bytes, pointer: str, value_json: bytes) -> bytes:
    """domain ‖ nonce ‖ u64be(len p) ‖ p ‖ u64be(len v) ‖ v."""
    p = pointer.encode("utf-8")
    return SPEC_COMMIT_DOMAIN + nonce + _u64(len(p)) + p + _u64(len(value_json)) + value_json


def spec_parse(message: bytes) -> tuple[bytes, bytes, bytes]:
    """The (nonce, pointer bytes, value bytes) a message frames; asserts nothing is left over."""
    assert message.startswith(SPEC_COMMIT_DOMAIN)
    rest = message[len(SPEC_COMMIT_DOMAIN) :]
    nonce, rest = rest[:16], rest[16:]
    (plen,) = struct.unpack(">Q", rest[:8])
    pointer, rest = rest[8 : 8 + plen], rest[8 + plen :]
    (vlen,) = struct.unpack(">Q", rest[:8])
    value, rest = rest[8 : 8 + vlen], rest[8 + vlen :]
    assert b"" == rest
    return nonce, pointer, value


def spec_hkdf(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 §2.2-2.3, SHA-256, no salt (HashLen zeros), L = 32 (one block)."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def simple_json_bytes(value: object) -> bytes:
    """RFC 8785 bytes of values with no floats and no characters >= U+E000 (plain json agrees)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- strategies ---------------------------------------------------------------------------

nonces = st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)
pointers = st.lists(st.text(max_size=6), max_size=4).map(lambda ts: join("", *ts))
_bmp = st.characters(max_codepoint=0xD7FF)
simple_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(_bmp, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_bmp, max_size=4), inner),
    max_leaves=8,
)
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def _flip(raw: bytes, index: int, mask: int) -> bytes:
    i = index % len(raw)
    return raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]


class TestGoldenVectors:
    """Fixed keys and nonces give fixed bytes: the on-chain format cannot drift silently."""

    @pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
    def test_derived_keys_and_kcv(self, v: dict[str, Any]) -> None:
        """derive_keys and the key check value (first 8 bytes of MAC(KCV_MESSAGE)) are stable."""
        keys = derive_keys(bytes.fromhex(v["key_hex"]))
        assert v["mac_key_hex"] == keys.mac.hex()
        assert v["seal_key_hex"] == keys.seal.hex()
        assert v["kcv_hex"] == mac(keys.mac, KCV_MESSAGE)[:8].hex()

    @pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
    def test_message_commitment_and_markers(self, v: dict[str, Any]) -> None:
        """The commitment message, its HMAC and both marker forms are byte-for-byte stable."""
        nonce = bytes.fromhex(v["nonce_hex"])
        keys = derive_keys(bytes.fromhex(v["key_hex"]))
        message = commitment_message(nonce, v["pointer"], v["value"])
        assert v["value_hex"] == value_bytes(v["value"]).hex()
        assert v["message_hex"] == message.hex()
        assert v["commitment_hex"] == mac(keys.mac, message).hex()
        commitment = Commitment(nonce, bytes.fromhex(v["commitment_hex"]))
        assert v["marker_json"] == commitment.to_json()
        assert v["marker_text"] == commitment.to_text()
        check_commitment(keys.mac, commitment, v["pointer"], v["value"])

    @pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
    def test_aad_and_stored_opening(self, v: dict[str, Any]) -> None:
        """The opening AAD is stable and an opening sealed once still unseals to the value."""
        nonce = bytes.fromhex(v["nonce_hex"])
        keys = derive_keys(bytes.fromhex(v["key_hex"]))
        aad = opening_aad(v["chain"], nonce, v["pointer"])
        assert v["aad_hex"] == aad.hex()
        assert value_bytes(v["value"]) == unseal(keys.seal, bytes.fromhex(v["sealed_hex"]), aad)

    @pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
    def test_vectors_match_the_independent_construction(self, v: dict[str, Any]) -> None:
        """The stored vectors agree with the spec text, not only with the code that made them."""
        nonce = bytes.fromhex(v["nonce_hex"])
        key = bytes.fromhex(v["key_hex"])
        mac_key = spec_hkdf(key, b"workflow-audit/commit-key/v1")
        message = spec_message(nonce, v["pointer"], bytes.fromhex(v["value_hex"]))
        assert v["message_hex"] == message.hex()
        assert v["commitment_hex"] == hmac.new(mac_key, message, hashlib.sha256).hexdigest()
        assert v["kcv_hex"] == hmac.new(mac_key, SPEC_KCV_MESSAGE, hashlib.sha256).hexdigest()[:16]


class TestCommitmentMessage:
    """commitment_message: the exact framing, domain separation and length prefixes."""

    def test_constants_are_the_documented_ones(self) -> None:
        """Domains, KCV message, algorithms and nonce size are what docs/PRIVACY.md states."""
        assert SPEC_COMMIT_DOMAIN == COMMIT_DOMAIN
        assert SPEC_SEAL_DOMAIN == SEAL_DOMAIN
        assert SPEC_KCV_MESSAGE == KCV_MESSAGE
        assert ("hmac-sha256/v1", "aes-256-gcm/v1", 16) == (COMMIT_ALG, SEAL_ALG, NONCE_BYTES)

    def test_layout_of_one_message(self) -> None:
        """A hand-assembled message for /actor/id = "alice" equals the library's, byte for byte."""
        expected = (
            b"workflow-audit/commit/v1\x00"
            + NONCE
            + b"\x00\x00\x00\x00\x00\x00\x00\x09/actor/id"
            + b'\x00\x00\x00\x00\x00\x00\x00\x07"alice"'
        )
        assert expected == commitment_message(NONCE, "/actor/id", "alice")

    @HYP
    @given(nonces, pointers, simple_json)
    def test_layout_matches_spec(self, nonce: bytes, pointer: str, value: object) -> None:
        """For any nonce, pointer and value the message is the spec's framing of them."""
        expected = spec_message(nonce, pointer, simple_json_bytes(value))
        assert expected == commitment_message(nonce, pointer, value)  # type: ignore[arg-type]

    @HYP
    @given(nonces, pointers, any_json)
    def test_message_parses_back_uniquely(self, nonce: bytes, pointer: str, value: Any) -> None:
        """Every message frames exactly one (nonce, pointer, value): the encoding is injective."""
        parsed = spec_parse(commitment_message(nonce, pointer, value))
        assert (nonce, pointer.encode(), canonical_bytes(value)) == parsed

    @HYP
    @given(nonces, pointers, any_json, pointers, any_json)
    def test_distinct_pairs_give_distinct_messages(
        self, nonce: bytes, p1: str, v1: Any, p2: str, v2: Any
    ) -> None:
        """Two (pointer, value) pairs that differ (as JSON) never share a message."""
        assume((p1, canonical_bytes(v1)) != (p2, canonical_bytes(v2)))
        assert commitment_message(nonce, p1, v1) != commitment_message(nonce, p2, v2)

    @HYP
    @given(
        pointers,
        st.text("123456789", min_size=3, max_size=12),
        st.data(),
    )
    def test_adversarial_splits_differ(self, base: str, digits: str, data: st.DataObject) -> None:
        """pointer+value concatenations that coincide (/x1 ‖ 23 vs /x12 ‖ 3) still differ."""
        i = data.draw(st.integers(1, len(digits) - 1))
        j = data.draw(st.integers(1, len(digits) - 1))
        assume(i != j)
        p1, v1 = base + "/" + digits[:i], int(digits[i:])
        p2, v2 = base + "/" + digits[:j], int(digits[j:])
        assert p1.encode() + value_bytes(v1) == p2.encode() + value_bytes(v2)
        assert commitment_message(NONCE, p1, v1) != commitment_message(NONCE, p2, v2)

    def test_decimal_point_split_example(self) -> None:
        """/x ‖ 1.5 and /x1. ‖ 5 concatenate alike and still give two messages."""
        assert b"/x1.5" == b"/x" + value_bytes(1.5) == b"/x1." + value_bytes(5)
        assert commitment_message(NONCE, "/x", 1.5) != commitment_message(NONCE, "/x1.", 5)

    @HYP
    @given(nonces, pointers, any_json, st.text(max_size=10))
    def test_never_equals_a_seal_aad_or_the_kcv_message(
        self, nonce: bytes, pointer: str, value: Any, chain: str
    ) -> None:
        """Commitment messages, seal AADs and the KCV message live in separate domains."""
        message = commitment_message(nonce, pointer, value)
        aad = opening_aad(chain, nonce, pointer)
        assert message != aad
        assert message != KCV_MESSAGE
        assert message.startswith(COMMIT_DOMAIN)
        assert not message.startswith(SEAL_DOMAIN)
        assert aad.startswith(SEAL_DOMAIN)
        assert not aad.startswith(COMMIT_DOMAIN)

    def test_no_domain_is_a_prefix_of_another(self) -> None:
        """The NUL-terminated domains cannot be extended into one another."""
        domains = [COMMIT_DOMAIN, SEAL_DOMAIN, KCV_MESSAGE]
        for a in domains:
            for b in domains:
                assert a == b or not b.startswith(a)

    @pytest.mark.parametrize("size", [0, 15, 17, 32])
    def test_wrong_nonce_size(self, size: int) -> None:
        """A nonce that is not 16 bytes is refused with PrivacyError."""
        with pytest.raises(PrivacyError, match="16 bytes"):
            commitment_message(bytes(size), "/actor/id", "alice")


class TestCheckCommitment:
    """check_commitment: the true value opens, anything else fails without naming the value."""

    @staticmethod
    def _commit(nonce: bytes, pointer: str, value: Any) -> Commitment:
        return Commitment(nonce, mac(KEYS.mac, commitment_message(nonce, pointer, value)))

    @HYP
    @given(nonces, pointers, any_json)
    def test_true_value_opens(self, nonce: bytes, pointer: str, value: Any) -> None:
        """The committed value at its pointer checks."""
        assert None is check_commitment(
            KEYS.mac, self._commit(nonce, pointer, value), pointer, value
        )

    @HYP
    @given(nonces, pointers, any_json, st.integers(0, 63), st.integers(1, 255))
    def test_changed_nonce_or_digest_fails(
        self, nonce: bytes, pointer: str, value: Any, index: int, mask: int
    ) -> None:
        """Any flipped byte of the nonce or of the digest fails the check."""
        good = self._commit(nonce, pointer, value)
        for bad in (
            Commitment(_flip(good.nonce, index, mask), good.digest),
            Commitment(good.nonce, _flip(good.digest, index, mask)),
        ):
            with pytest.raises(PrivacyError):
                check_commitment(KEYS.mac, bad, pointer, value)

    @HYP
    @given(nonces, pointers, any_json, pointers, any_json)
    def test_other_pointer_or_value_fails(
        self, nonce: bytes, pointer: str, value: Any, other_p: str, other_v: Any
    ) -> None:
        """A different pointer or a different value (as JSON) fails the check."""
        good = self._commit(nonce, pointer, value)
        assume((pointer, canonical_bytes(value)) != (other_p, canonical_bytes(other_v)))
        with pytest.raises(PrivacyError):
            check_commitment(KEYS.mac, good, other_p, other_v)

    @HYP
    @given(nonces, st.text(min_size=1, max_size=20), st.integers(0, 63), st.integers(1, 255))
    def test_changed_value_byte_fails(self, nonce: bytes, text: str, index: int, mask: int) -> None:
        """Any changed byte of a committed string (one that still decodes) fails the check."""
        raw = text.encode()
        changed = _flip(raw, index, mask)
        try:
            other = changed.decode()
        except UnicodeDecodeError:
            assume(False)
            return
        with pytest.raises(PrivacyError):
            check_commitment(KEYS.mac, self._commit(nonce, "/actor/id", text), "/actor/id", other)

    def test_wrong_key_fails(self) -> None:
        """Another subject's key does not open the commitment."""
        good = self._commit(NONCE, "/actor/id", "alice")
        with pytest.raises(PrivacyError):
            check_commitment(derive_keys(bytes(32)).mac, good, "/actor/id", "alice")

    def test_same_value_two_nonces_two_commitments(self) -> None:
        """The same value recorded twice (two record nonces) gives unlinkable commitments."""
        first = self._commit(new_nonce(), "/actor/id", "alice@example.com")
        second = self._commit(new_nonce(), "/actor/id", "alice@example.com")
        assert first.nonce != second.nonce
        assert first.digest != second.digest
        assert first.to_text() != second.to_text()

    def test_error_names_neither_value_nor_key(self) -> None:
        """The mismatch error says where, never what was tried or which key."""
        good = self._commit(NONCE, "/actor/id", "alice@example.com")
        with pytest.raises(PrivacyError) as info:
            check_commitment(KEYS.mac, good, "/actor/id", "mallory@example.com")
        text = str(info.value) + repr(info.value)
        for secret in ("mallory", "alice", KEYS.mac.hex(), repr(KEYS.mac)):
            assert secret not in text


class TestDeriveKeys:
    """derive_keys: HKDF-SHA256 into two distinct, deterministic working keys."""

    def test_matches_rfc5869(self) -> None:
        """Both keys are HKDF-SHA256(key, info) with the documented info strings."""
        assert spec_hkdf(KEY, b"workflow-audit/commit-key/v1") == KEYS.mac
        assert spec_hkdf(KEY, b"workflow-audit/seal-key/v1") == KEYS.seal

    @HYP
    @given(st.binary(min_size=32, max_size=32))
    def test_distinct_and_deterministic(self, key: bytes) -> None:
        """mac and seal keys differ, are 32 bytes, and the same key derives the same pair."""
        keys = derive_keys(key)
        assert keys.mac != keys.seal
        assert (32, 32) == (len(keys.mac), len(keys.seal))
        assert keys == derive_keys(key)

    def test_different_subjects_different_keys(self) -> None:
        """Two subject keys derive unrelated working keys."""
        other = derive_keys(bytes(32))
        assert {KEYS.mac, KEYS.seal}.isdisjoint({other.mac, other.seal})

    @pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
    def test_wrong_key_size(self, size: int) -> None:
        """A subject key that is not 32 bytes is refused with PrivacyError."""
        with pytest.raises(PrivacyError, match="32 bytes"):
            derive_keys(bytes(size))


class TestSubjectKeys:
    """SubjectKeys never shows its keys."""

    def test_repr_and_str_hide_keys(self) -> None:
        """repr, str and f-strings show a placeholder, never key bytes or hex."""
        for text in (repr(KEYS), str(KEYS), f"{KEYS}", f"{KEYS!r}", repr([KEYS])):
            assert "SubjectKeys(<hidden>)" in text
            for key in (KEYS.mac, KEYS.seal):
                assert key.hex() not in text
                assert repr(key) not in text

    def test_is_frozen(self) -> None:
        """The keys cannot be swapped after derivation."""
        with pytest.raises(AttributeError):
            KEYS.mac = bytes(32)  # type: ignore[misc]
        assert isinstance(KEYS, SubjectKeys)


class TestSeal:
    """seal/unseal: AES-256-GCM bound to chain, record nonce and pointer."""

    AAD = opening_aad("audit:dagrun", NONCE, "/actor/id")

    @HYP
    @given(st.binary(max_size=200))
    def test_round_trip(self, plaintext: bytes) -> None:
        """unseal(seal(x)) is x; the output is IV(12) ‖ ciphertext ‖ tag(16)."""
        sealed = seal(KEYS.seal, plaintext, self.AAD)
        assert 12 + len(plaintext) + 16 == len(sealed)
        assert plaintext == unseal(KEYS.seal, sealed, self.AAD)

    def test_random_iv(self) -> None:
        """Sealing the same value twice gives two different ciphertexts."""
        assert seal(KEYS.seal, b"alice", self.AAD) != seal(KEYS.seal, b"alice", self.AAD)

    @pytest.mark.parametrize(
        "aad",
        [
            opening_aad("audit:other", NONCE, "/actor/id"),
            opening_aad("audit:dagrun", bytes(16), "/actor/id"),
            opening_aad("audit:dagrun", NONCE, "/subject/id"),
            b"",
        ],
        ids=["other-chain", "other-nonce", "other-pointer", "no-aad"],
    )
    def test_wrong_aad_fails(self, aad: bytes) -> None:
        """An opening moved to another chain, record or field does not decrypt."""
        sealed = seal(KEYS.seal, b'"alice"', self.AAD)
        with pytest.raises(PrivacyError):
            unseal(KEYS.seal, sealed, aad)

    @HYP
    @given(st.binary(max_size=40), st.integers(0, 10_000), st.integers(1, 255))
    def test_any_flipped_byte_fails(self, plaintext: bytes, index: int, mask: int) -> None:
        """Any flipped byte of IV, ciphertext, tag or AAD fails with PrivacyError."""
        sealed = seal(KEYS.seal, plaintext, self.AAD)
        with pytest.raises(PrivacyError):
            unseal(KEYS.seal, _flip(sealed, index, mask), self.AAD)
        with pytest.raises(PrivacyError):
            unseal(KEYS.seal, sealed, _flip(self.AAD, index, mask))

    def test_wrong_key_and_truncation_fail(self) -> None:
        """Another key, a truncated or a too-short blob fail with PrivacyError."""
        sealed = seal(KEYS.seal, b"alice", self.AAD)
        for key, blob in (
            (KEYS.mac, sealed),
            (KEYS.seal, sealed[:-1]),
            (KEYS.seal, sealed[:27]),
            (KEYS.seal, b""),
        ):
            with pytest.raises(PrivacyError):
                unseal(key, blob, self.AAD)

    def test_aad_layout(self) -> None:
        """AAD = seal domain ‖ nonce ‖ u64be len ‖ chain ‖ u64be len ‖ pointer."""
        expected = SPEC_SEAL_DOMAIN + NONCE + _u64(5) + b"a:b/c" + _u64(3) + b"/x~"
        assert expected == opening_aad("a:b/c", NONCE, "/x~")


class TestBase64:
    """encode_b64/decode_b64: unpadded base64url, one text per value."""

    @HYP
    @given(st.binary(max_size=64))
    def test_round_trip(self, raw: bytes) -> None:
        """decode(encode(x)) is x and the text has no padding and only url-safe characters."""
        text = encode_b64(raw)
        assert raw == decode_b64(text)
        assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

    @pytest.mark.parametrize(
        "text",
        ["AA==", "AAA=", "AB", "AAB", "A", "AAAAA", "+/8", "AA AA", "AA\n", "é", "Zm9v!"],
    )
    def test_non_canonical_refused(self, text: str) -> None:
        """Padding, non-zero trailing bits, bad lengths, other alphabets, spaces are refused."""
        with pytest.raises(PrivacyError):
            decode_b64(text)


def _good_commit() -> dict[str, Any]:
    return {"$commit": {"alg": COMMIT_ALG, "n": encode_b64(NONCE), "c": encode_b64(bytes(32))}}


def _bad_commit(**members: Any) -> dict[str, Any]:
    inner = dict(_good_commit()["$commit"])
    for name, value in members.items():
        if value is None:
            del inner[name]
        else:
            inner[name] = value
    return {"$commit": inner}


class TestParseMarker:
    """parse_marker: object and text forms, strictly."""

    def test_commitment_round_trips(self) -> None:
        """A commitment survives to_json and to_text."""
        c = Commitment(NONCE, bytes(range(32)))
        assert c == parse_marker(c.to_json())
        assert c == parse_marker(c.to_text())

    @HYP
    @given(nonces, st.binary(max_size=80))
    def test_sealed_round_trips(self, nonce: bytes, blob: bytes) -> None:
        """A sealed value survives to_json and to_text."""
        s = Sealed(nonce, blob)
        assert s == parse_marker(s.to_json())
        assert s == parse_marker(s.to_text())
        assert {"$sealed": {"alg": SEAL_ALG, "n": encode_b64(nonce), "ct": encode_b64(blob)}} == (
            s.to_json()
        )

    @pytest.mark.parametrize(
        "value",
        [
            "alice",
            "",
            "$commit",
            "commit:hmac-sha256/v1:AA:BB",
            " $commit:x:y:z",
            0,
            None,
            True,
            [],
            [_good_commit()["$commit"]],
            {},
            {"$commit": _good_commit()["$commit"], "other": 1},
            {"commit": _good_commit()["$commit"]},
        ],
    )
    def test_plain_values_are_not_markers(self, value: Any) -> None:
        """Ordinary values (and objects with more than the one marker member) give None."""
        assert None is parse_marker(value)
        assert not is_marker(value)

    @pytest.mark.parametrize(
        "value",
        [
            _bad_commit(n=encode_b64(NONCE) + "=="),  # padding
            _bad_commit(n=encode_b64(NONCE)[:-1] + "B"),  # non-zero trailing bits
            _bad_commit(c=encode_b64(bytes(32)).replace("A", "+", 1)),  # standard alphabet
            _bad_commit(n=encode_b64(bytes(15))),
            _bad_commit(n=encode_b64(bytes(17))),
            _bad_commit(c=encode_b64(bytes(31))),
            _bad_commit(c=encode_b64(bytes(33))),
            _bad_commit(alg="hmac-sha256/v2"),
            _bad_commit(alg=SEAL_ALG),
            _bad_commit(alg=None),
            _bad_commit(c=None),
            _bad_commit(extra="x"),
            _bad_commit(n=16),
            _bad_commit(c=None, ct=encode_b64(bytes(32))),
            {"$commit": "AAAA"},
            {"$commit": [COMMIT_ALG, "AA", "AA"]},
            {"$commit": None},
            {"$sealed": {"alg": COMMIT_ALG, "n": encode_b64(NONCE), "ct": ""}},
            {"$sealed": {"alg": SEAL_ALG, "n": encode_b64(NONCE), "c": ""}},
            "$commit:hmac-sha256/v1:AAAA",
            "$commit:hmac-sha256/v1:" + encode_b64(NONCE) + ":" + encode_b64(bytes(32)) + ":x",
            "$commit:hmac-sha256/v2:" + encode_b64(NONCE) + ":" + encode_b64(bytes(32)),
            "$commit:hmac-sha256/v1:" + encode_b64(NONCE) + "=:" + encode_b64(bytes(32)),
            "$sealed:aes-256-gcm/v1:" + encode_b64(bytes(12)) + ":",
            "$sealed:",
        ],
    )
    def test_malformed_markers_raise(self, value: Any) -> None:
        """Anything that claims to be a marker and is not exactly one raises PrivacyError."""
        assert is_marker(value)
        with pytest.raises(PrivacyError):
            parse_marker(value)

    @pytest.mark.parametrize(
        "value",
        [
            "$commit:alice@example.com:AAAA:BBBB",
            {"$commit": {"alg": "alice@example.com", "n": "AA", "c": "AA"}},
            {"$commit": {"alice@example.com": 1}},
        ],
    )
    def test_errors_do_not_echo_the_input(self, value: Any) -> None:
        """A malformed marker's error never repeats what the record held (it may be personal)."""
        with pytest.raises(PrivacyError) as info:
            parse_marker(value)
        assert "alice" not in str(info.value)


class TestFindMarkers:
    """find_markers: every marker with its escaped pointer, markers left whole."""

    def test_finds_markers_in_document_order(self) -> None:
        """Object and text markers are found at RFC 6901 pointers with ~0 and ~1 escapes."""
        commit = _good_commit()
        text = Commitment(NONCE, bytes(32)).to_text()
        sealed = Sealed(NONCE, b"\x00" * 28).to_json()
        view = {
            "actor": {"id": text, "type": "user"},
            "subject": {"id": "run-1"},
            "data": {"conf": {"a/b": commit, "m~n": [1, sealed]}, "n": 3},
        }
        expected = [
            ("/actor/id", text),
            ("/data/conf/a~1b", commit),
            ("/data/conf/m~0n/1", sealed),
        ]
        assert expected == list(find_markers(view))
        for pointer, marker in expected:
            assert marker == resolve(view, pointer)

    def test_does_not_descend_into_a_marker(self) -> None:
        """A marker whose members look like markers is reported once, as a whole."""
        inner_text = Commitment(NONCE, bytes(32)).to_text()
        outer = {"$sealed": {"alg": SEAL_ALG, "n": inner_text, "ct": {"$commit": {}}}}
        assert [("/x", outer)] == list(find_markers({"x": outer}))

    def test_root_marker_and_base(self) -> None:
        """A marker at the root has pointer "" (or the given base)."""
        commit = _good_commit()
        assert [("", commit)] == list(find_markers(commit))
        assert [("/data/0", commit)] == list(find_markers([commit], "/data"))

    def test_no_markers(self) -> None:
        """A document without markers yields nothing."""
        assert [] == list(find_markers({"a": [1, "two", {"b": None}]}))


class TestRandomness:
    """new_nonce and new_pseudonym: fresh randomness, the documented shapes."""

    def test_nonce(self) -> None:
        """Nonces are 16 bytes and differ."""
        assert NONCE_BYTES == len(new_nonce())
        assert new_nonce() != new_nonce()

    def test_pseudonym(self) -> None:
        """Pseudonyms are "ps-" + base64url of 16 random bytes and differ."""
        ps = new_pseudonym()
        assert "ps-" == ps[:3]
        assert 16 == len(decode_b64(ps[3:]))
        assert new_pseudonym() != ps


# --- pointer.py ---------------------------------------------------------------------------

#: RFC 6901 §5, the example document and its pointers.
RFC6901_DOC: dict[str, Any] = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}
RFC6901_EXAMPLES: list[tuple[str, Any]] = [
    ("", RFC6901_DOC),
    ("/foo", ["bar", "baz"]),
    ("/foo/0", "bar"),
    ("/", 0),
    ("/a~1b", 1),
    ("/c%d", 2),
    ("/e^f", 3),
    ("/g|h", 4),
    ("/i\\j", 5),
    ('/k"l', 6),
    ("/ ", 7),
    ("/m~0n", 8),
]


class TestPointerRfc6901:
    """resolve against the RFC 6901 §5 examples."""

    @pytest.mark.parametrize(("pointer", "expected"), RFC6901_EXAMPLES)
    def test_section5_examples(self, pointer: str, expected: Any) -> None:
        """Each §5 pointer resolves to the value the RFC lists."""
        assert expected == resolve(RFC6901_DOC, pointer)

    def test_unescape_order(self) -> None:
        """§4: "~01" is "~1" (not "/"): ~1 is replaced first, then ~0."""
        assert "~1" == unescape_token("~01")
        assert ["~1"] == split("/~01")
        assert "/~01" == join("", "~1")


class TestEscape:
    """escape_token/unescape_token/join/split are inverse."""

    @HYP
    @given(st.text(st.sampled_from("~/0a1")) | st.text())
    def test_token_round_trip(self, token: str) -> None:
        """unescape(escape(t)) is t, and an escaped token holds no '/'."""
        escaped = escape_token(token)
        assert token == unescape_token(escaped)
        assert "/" not in escaped

    @HYP
    @given(st.lists(st.text(st.sampled_from("~/0a1")) | st.text(), max_size=5))
    def test_join_split_round_trip(self, tokens: list[str]) -> None:
        """split(join("", *tokens)) gives the tokens back."""
        assert tokens == split(join("", *tokens))

    def test_split_needs_leading_slash(self) -> None:
        """A pointer that does not start with '/' is a PrivacyError."""
        with pytest.raises(PrivacyError):
            split("foo")


class TestResolve:
    """resolve: MISSING for every pointer that names nothing."""

    @pytest.mark.parametrize(
        "pointer",
        [
            "/nope",
            "/foo/2",
            "/foo/-",
            "/foo/-1",
            "/foo/01",
            "/foo/00",
            "/foo/+1",
            "/foo/ 1",
            "/foo/1 ",
            "/foo/0/0",
            "/a~1b/x",
            "/ /0",
            "/a/b",
            "/foo/",
        ],
    )
    def test_missing(self, pointer: str) -> None:
        """Leading zeros, out of range, '-', through a scalar or a string: MISSING."""
        assert MISSING is resolve(RFC6901_DOC, pointer)

    def test_null_is_not_missing(self) -> None:
        """A member holding null resolves to None, not MISSING."""
        assert None is resolve({"a": None}, "/a")

    @pytest.mark.parametrize("token", ["\u0661", "\u00b2", "\u0660", "\uff11"])
    def test_non_ascii_digits_are_missing(self, token: str) -> None:
        """Array indices are ASCII digits: Arabic-Indic, superscript, fullwidth name nothing."""
        assert MISSING is resolve(["a", "b"], "/" + token)


class TestReplace:
    """replace: copy on write, the original untouched."""

    def test_original_untouched_and_siblings_shared(self) -> None:
        """Only the containers on the path are copied; the input is never modified."""
        view = {
            "actor": {"id": "alice", "type": "user"},
            "subject": {"id": "run-1"},
            "data": {"conf": {"a/b": ["x", "y"]}},
        }
        before = copy.deepcopy(view)
        out = replace(view, "/data/conf/a~1b/1", "[REDACTED]")
        assert before == view
        assert ["x", "[REDACTED]"] == out["data"]["conf"]["a/b"]  # type: ignore[index,call-overload]
        assert view["actor"] is out["actor"]  # type: ignore[index,call-overload]
        assert view["subject"] is out["subject"]  # type: ignore[index,call-overload]
        assert view["data"] is not out["data"]  # type: ignore[index,call-overload]

    def test_root(self) -> None:
        """The empty pointer replaces the whole document."""
        assert "x" == replace({"a": 1}, "", "x")

    @HYP
    @given(st.sampled_from([p for p, _ in RFC6901_EXAMPLES if p]), simple_json)
    def test_replace_then_resolve(self, pointer: str, value: Any) -> None:
        """After replace, resolve at the same pointer gives the new value; the doc is intact."""
        before = copy.deepcopy(RFC6901_DOC)
        out = replace(RFC6901_DOC, pointer, value)
        assert value == resolve(out, pointer)
        assert before == RFC6901_DOC

    @pytest.mark.parametrize("pointer", ["/nope/x", "/foo/2", "/foo/-", "/a~1b/x", "/foo/0/0"])
    def test_missing_raises(self, pointer: str) -> None:
        """A pointer that names nothing is a PrivacyError (an AuditError), not a KeyError."""
        with pytest.raises(AuditError):
            replace(RFC6901_DOC, pointer, "x")

    @pytest.mark.parametrize("pointer", ["/foo/01", "/foo/\u00b2", "/foo/\u0661"])
    def test_agrees_with_resolve_on_indices(self, pointer: str) -> None:
        """replace refuses exactly the indices resolve calls MISSING, with PrivacyError."""
        assert MISSING is resolve(RFC6901_DOC, pointer)
        with pytest.raises(PrivacyError):
            replace(RFC6901_DOC, pointer, "x")
