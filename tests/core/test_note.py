"""C2SP signed-note (Ed25519) and tlog-checkpoint text.

Golden vectors: tests/assets/go_note_vectors.json (golang.org/x/mod/sumdb/note's own tests, and
the examples of the C2SP signed-note and tlog-checkpoint specs).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core._note import Note, Signer, Verifier, open_note, sign_note, unverified_text
from audit_core.checkpoint import MAX_TREE_SIZE, Checkpoint
from audit_core.errors import CheckpointError, SignatureError

ASSETS = Path(__file__).parent.parent / "assets"
GOLDEN = json.loads((ASSETS / "go_note_vectors.json").read_text())
PETER, DOUBLE, QUASIMODO = GOLDEN["examples"]
(SOFA,) = GOLDEN["checkpoints"]

TEXT: str = PETER["text"]
NOTE: str = PETER["signed_note"]
DOUBLE_NOTE: str = DOUBLE["signed_note"]
PETER_KEY = Verifier.parse(PETER["verifier_key"])
ENOCH_KEY = Verifier.parse(DOUBLE["verifier_key"])


def _seed_of(signer_key: str) -> bytes:
    """The Ed25519 seed of a PRIVATE+KEY string, decoded independently of Signer.parse (the
    base64 part may itself contain '+')."""
    raw = base64.b64decode(signer_key.split("+", 4)[4])
    assert 0x01 == raw[0]
    return raw[1:]


def _key_id(name: str, public: bytes) -> bytes:
    """c2sp.org/signed-note key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]


def _text_of(note: str) -> str:
    """The note text: everything before the last blank line, with its final newline."""
    return note[: note.rindex("\n\n") + 1]


def _signature_line(note: str, name: str) -> str:
    (line,) = [line for line in note.splitlines() if line.startswith(f"\u2014 {name} ")]
    return line


def _signature_bytes(note: str, name: str) -> bytes:
    """key ID (4 bytes) || Ed25519 signature (64 bytes) of ``name``'s line."""
    return base64.b64decode(_signature_line(note, name).split(" ")[2])


def _with_signature(note: str, name: str, raw: bytes) -> str:
    """``note`` with ``name``'s signature line carrying ``raw`` instead."""
    line = _signature_line(note, name)
    return note.replace(line, f"\u2014 {name} {base64.b64encode(raw).decode()}")


PETER_SIGNER = Signer("PeterNeumann", _seed_of(PETER["signer_key"]))
ALICE = Signer("alice.example/log", bytes(range(32)))
BOB = Signer("bob.example/witness", bytes(range(32, 64)))

seeds = st.binary(min_size=32, max_size=32)
key_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cs")),
    min_size=1,
    max_size=20,
).filter(lambda name: "+" not in name and not any(c.isspace() for c in name))
note_texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")) | st.just("\n"),
    max_size=60,
).map(lambda text: text + "\n")


class TestVerifier:
    """Verifier keys: name+hexkeyid+base64(0x01 || public key)."""

    @pytest.mark.parametrize("key", [PETER["verifier_key"], DOUBLE["verifier_key"]])
    def test_golden_round_trip(self, key: str) -> None:
        """Parsing a Go verifier key and printing it gives back the same string."""
        assert key == str(Verifier.parse(key))

    def test_golden_fields(self) -> None:
        """The parsed key has the golden name and key ID, which is the spec's hash of the key."""
        assert PETER["key_name"] == PETER_KEY.name
        assert PETER["key_id_hex"] == PETER_KEY.key_id.hex()
        assert _key_id(PETER_KEY.name, PETER_KEY.public) == PETER_KEY.key_id
        assert 32 == len(PETER_KEY.public)

    @settings(max_examples=200, deadline=None)
    @given(key_names, seeds)
    def test_round_trip(self, name: str, seed: bytes) -> None:
        """Any verifier key string parses back to the same key (base64 may contain '+' and '/')."""
        verifier = Signer(name, seed).verifier
        assert verifier == Verifier.parse(str(verifier))

    def test_plus_in_base64(self) -> None:
        """A verifier key whose base64 part contains '+' parses and prints back (Go splits the
        string at its first two '+' only)."""
        public = b">" * 32
        b64 = base64.b64encode(b"\x01" + public).decode()
        assert "+" in b64
        key = f"abc+{_key_id('abc', public).hex()}+{b64}"
        assert key == str(Verifier.parse(key))

    def test_wrong_key_id(self) -> None:
        """A key whose ID is not the hash of its name and key raises SignatureError."""
        name, _, rest = PETER["verifier_key"].partition("+")
        wrong = f"{name}+c74f20a4+{rest.partition('+')[2]}"
        with pytest.raises(SignatureError, match="does not match its key"):
            Verifier.parse(wrong)

    def test_key_id_binds_the_name(self) -> None:
        """The same key and ID under another name raises SignatureError."""
        with pytest.raises(SignatureError, match="does not match its key"):
            Verifier.parse("Peter" + PETER["verifier_key"].removeprefix("PeterNeumann"))

    @pytest.mark.parametrize("name", ["Peter Neumann", "Peter\u00a0Neumann", "Peter+Neumann", ""])
    def test_bad_name(self, name: str) -> None:
        """A name with a space or '+', or an empty one, raises SignatureError, even with the
        ID that matches it."""
        b64 = base64.b64encode(b"\x01" + PETER_KEY.public).decode()
        with pytest.raises(SignatureError):
            Verifier.parse(f"{name}+{_key_id(name, PETER_KEY.public).hex()}+{b64}")

    def test_name_not_utf8(self) -> None:
        """A name with a lone surrogate (not encodable as UTF-8) raises SignatureError."""
        with pytest.raises(SignatureError):
            Verifier.parse(PETER["verifier_key"].replace("PeterNeumann", "Peter\ud800"))

    @pytest.mark.parametrize(
        "key",
        [
            "PeterNeumann+c74f20a3",
            "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW!",
            "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",
            "",
        ],
        ids=[
            "no-key",
            "short-id",
            "bad-padding",
            "bad-char",
            "alg-2",
            "short",
            "empty",
        ],
    )
    def test_malformed(self, key: str) -> None:
        """A key that is not name+8 hex digits+base64 of 0x01 and 32 bytes raises
        SignatureError."""
        with pytest.raises(SignatureError):
            Verifier.parse(key)


class TestSigner:
    """Signer keys: PRIVATE+KEY+name+hexkeyid+base64(0x01 || seed)."""

    def test_golden_round_trip(self) -> None:
        """Parsing Go's PeterNeumann signer key and printing it gives back the same string."""
        assert PETER["signer_key"] == str(Signer.parse(PETER["signer_key"]))

    def test_golden_verifier(self) -> None:
        """The golden signer's verifier is the golden verifier key."""
        assert PETER_KEY == PETER_SIGNER.verifier
        assert PETER["verifier_key"] == str(PETER_SIGNER.verifier)
        assert PETER["signer_key"] == str(PETER_SIGNER)

    @settings(max_examples=200, deadline=None)
    @given(key_names, seeds)
    def test_round_trip(self, name: str, seed: bytes) -> None:
        """Any signer key string parses back to the same key (base64 may contain '+' and '/')."""
        signer = Signer(name, seed)
        parsed = Signer.parse(str(signer))
        assert (signer.name, signer.seed) == (parsed.name, parsed.seed)

    def test_wrong_key_id(self) -> None:
        """A signer key whose ID is not the hash of its name and public key raises
        SignatureError."""
        key = str(ALICE).replace(ALICE.verifier.key_id.hex(), "00000000")
        with pytest.raises(SignatureError, match="does not match its key"):
            Signer.parse(key)

    @pytest.mark.parametrize("name", ["a b", "a+b", "a\tb", "a\u2003b", ""])
    def test_generate_bad_name(self, name: str) -> None:
        """Signer.generate refuses a name with a space or '+', or an empty one."""
        with pytest.raises(SignatureError):
            Signer.generate(name)

    def test_name_not_utf8(self) -> None:
        """A name with a lone surrogate (not encodable as UTF-8) raises SignatureError, in
        parse and in generate."""
        with pytest.raises(SignatureError):
            Signer.parse(str(ALICE).replace(ALICE.name, "alice\ud800"))
        with pytest.raises(SignatureError):
            Signer.generate("alice\ud800")

    @pytest.mark.parametrize(
        "key",
        [
            "PRIVATE+KEY+PeterNeumann+c74f20a3",
            "PUBLIC+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDrY7hfZx09iUvxdXHKDFzA",
            PETER["verifier_key"],
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEK",
            "PRIVATE+KEY+PeterNeumann+c74f20a3+!!!!",
        ],
        ids=["no-key", "not-private", "verifier-key", "short", "bad-base64"],
    )
    def test_malformed(self, key: str) -> None:
        """A key that is not PRIVATE+KEY+name+id+base64(0x01 || 32 bytes) raises
        SignatureError."""
        with pytest.raises(SignatureError):
            Signer.parse(key)

    def test_repr_hides_seed(self) -> None:
        """repr(signer) names the key but never shows the seed."""
        text = repr(PETER_SIGNER)
        assert "c74f20a3" in text
        assert str(PETER_SIGNER).split("+", 4)[4] not in text
        assert PETER_SIGNER.seed.hex() not in text


class TestSignNote:
    """sign_note: text, a blank line, one line per signature."""

    def test_golden(self) -> None:
        """Signing Go's example text with the PeterNeumann key gives Go's note byte for byte."""
        assert NOTE == sign_note(TEXT, [PETER_SIGNER])

    def test_signature_line_format(self) -> None:
        """Each line is em dash, space, name, space, base64(key ID || 64-byte signature)."""
        note = sign_note(TEXT, [ALICE])
        raw = _signature_bytes(note, ALICE.name)
        assert TEXT == _text_of(note)
        assert f"\u2014 {ALICE.name} " == note.splitlines()[-1][: len(ALICE.name) + 3]
        assert ALICE.verifier.key_id == raw[:4]
        assert 68 == len(raw)

    def test_cosign(self) -> None:
        """Cosigning an existing note keeps its signature and adds the new one after it."""
        cosigned = sign_note(TEXT, [BOB], existing=sign_note(TEXT, [ALICE]))
        assert sign_note(TEXT, [ALICE, BOB]) == cosigned
        assert Note(TEXT, (ALICE.verifier, BOB.verifier)) == open_note(
            cosigned, [ALICE.verifier, BOB.verifier]
        )

    def test_cosign_golden(self) -> None:
        """Cosigning Go's note keeps Go's signature line intact."""
        cosigned = sign_note(TEXT, [ALICE], existing=NOTE)
        assert NOTE == cosigned[: len(NOTE)]
        open_note(cosigned, [PETER_KEY, ALICE.verifier])

    def test_cosign_other_text(self) -> None:
        """Cosigning a note of another text raises SignatureError."""
        with pytest.raises(SignatureError, match="another text"):
            sign_note(TEXT.upper(), [BOB], existing=sign_note(TEXT, [ALICE]))

    @pytest.mark.parametrize(
        "text", ["no newline", "", "tab\there\n", "cr\r\n", "nul\x00\n", "surrogate \ud800\n"]
    )
    def test_bad_text(self, text: str) -> None:
        """Text without a final newline, with a control character or a lone surrogate (not
        encodable as UTF-8), raises SignatureError."""
        with pytest.raises(SignatureError):
            sign_note(text, [ALICE])

    @settings(max_examples=100, deadline=None)
    @given(note_texts)
    def test_round_trip(self, text: str) -> None:
        """Any valid text signs and opens back to itself, blank lines inside included."""
        assert text == open_note(sign_note(text, [ALICE]), [ALICE.verifier]).text


class TestOpenNote:
    """open_note against trusted keys (c2sp.org/signed-note "Verification")."""

    def test_golden(self) -> None:
        """Go's note opens with its verifier key and returns the text."""
        assert Note(TEXT, (PETER_KEY,)) == open_note(NOTE, [PETER_KEY])

    def test_golden_double_both_keys(self) -> None:
        """The doubly signed note opens when both signers are trusted and required."""
        assert Note(TEXT, (PETER_KEY, ENOCH_KEY)) == open_note(DOUBLE_NOTE, [PETER_KEY, ENOCH_KEY])

    @pytest.mark.parametrize("key", [PETER_KEY, ENOCH_KEY], ids=["PeterNeumann", "EnochRoot"])
    def test_golden_double_one_key(self, key: Verifier) -> None:
        """The signature by a key that is not trusted is ignored: one trusted key suffices."""
        assert Note(TEXT, (key,)) == open_note(DOUBLE_NOTE, [key])

    def test_trusted_key_missing(self) -> None:
        """With require_all, a trusted key that did not sign raises SignatureError naming it."""
        with pytest.raises(SignatureError, match=r"alice\.example/log\+"):
            open_note(DOUBLE_NOTE, [PETER_KEY, ALICE.verifier])

    def test_any_trusted_key(self) -> None:
        """Without require_all, one trusted signer among the trusted keys is enough."""
        opened = open_note(NOTE, [ALICE.verifier, PETER_KEY], require_all=False)
        assert Note(TEXT, (PETER_KEY,)) == opened

    def test_no_trusted_signature(self) -> None:
        """A note signed only by unknown keys raises SignatureError, with or without
        require_all."""
        with pytest.raises(SignatureError, match="not signed"):
            open_note(DOUBLE_NOTE, [ALICE.verifier])
        with pytest.raises(SignatureError, match="not signed"):
            open_note(DOUBLE_NOTE, [ALICE.verifier, BOB.verifier], require_all=False)

    def test_no_trusted_keys(self) -> None:
        """Opening with no trusted key raises SignatureError."""
        with pytest.raises(SignatureError):
            open_note(NOTE, [])

    def test_bad_trusted_signature_rejects(self) -> None:
        """A trusted key's signature that fails rejects the note, even if another passes."""
        raw = _signature_bytes(DOUBLE_NOTE, "EnochRoot")
        broken = _with_signature(DOUBLE_NOTE, "EnochRoot", raw[:4] + bytes(64))
        with pytest.raises(SignatureError, match="does not verify"):
            open_note(broken, [PETER_KEY, ENOCH_KEY], require_all=False)

    def test_same_name_other_key_id_ignored(self) -> None:
        """A signature line with a trusted name but another key ID is ignored: alone it leaves
        the note unsigned; next to a good signature the note opens."""
        raw = _signature_bytes(NOTE, "PeterNeumann")
        other_id = _with_signature(NOTE, "PeterNeumann", b"\x00\x00\x00\x00" + raw[4:])
        with pytest.raises(SignatureError, match="not signed"):
            open_note(other_id, [PETER_KEY])
        both = other_id + NOTE.splitlines(keepends=True)[-1]
        assert Note(TEXT, (PETER_KEY,)) == open_note(both, [PETER_KEY])

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_changed_text_character(self, data: st.DataObject) -> None:
        """Changing any one character of the text raises SignatureError."""
        at = data.draw(st.integers(0, len(TEXT) - 1))
        char = data.draw(
            st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(lambda c: c != TEXT[at])
        )
        with pytest.raises(SignatureError):
            open_note(NOTE[:at] + char + NOTE[at + 1 :], [PETER_KEY])

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 68 * 8 - 1))
    def test_flipped_signature_bit(self, bit: int) -> None:
        """Flipping any bit of the key ID or signature raises SignatureError."""
        raw = bytearray(_signature_bytes(NOTE, "PeterNeumann"))
        raw[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SignatureError):
            open_note(_with_signature(NOTE, "PeterNeumann", bytes(raw)), [PETER_KEY])

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_changed_signature_character(self, data: st.DataObject) -> None:
        """Changing any base64 character of the signature, other than the last one's padding
        bits, raises SignatureError."""
        line = _signature_line(NOTE, "PeterNeumann")
        b64 = line.split(" ")[2]
        # 68 bytes: 90 data characters, the last of which carries 2 bytes' worth of bits plus
        # two padding bits a lenient decoder ignores (as Go's does), then "=".
        at = data.draw(st.integers(0, len(b64) - 3))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        char = data.draw(st.sampled_from(alphabet).filter(lambda c: c != b64[at]))
        changed = NOTE.replace(line, line.replace(b64, b64[:at] + char + b64[at + 1 :]))
        with pytest.raises(SignatureError):
            open_note(changed, [PETER_KEY])

    @pytest.mark.parametrize(
        "note",
        [
            pytest.param(NOTE.replace("\n\n", "\n"), id="no-blank-line"),
            pytest.param(NOTE[:-1], id="no-final-newline"),
            pytest.param(NOTE + "\n", id="blank-line-after-signatures"),
            pytest.param(TEXT + "\n", id="no-signature"),
            pytest.param(NOTE.replace("problem,", "problem,\t"), id="tab"),
            pytest.param(NOTE.replace("\n", "\r\n"), id="crlf"),
            pytest.param(NOTE.replace("If", "If\x00"), id="nul"),
            pytest.param(NOTE.replace("\u2014", "-"), id="hyphen-not-em-dash"),
            pytest.param(NOTE.replace("\u2014 ", "\u2014"), id="no-space-after-dash"),
            pytest.param(NOTE.replace("PeterNeumann ", "PeterNeumann"), id="no-space-before-sig"),
            pytest.param(NOTE.replace("PeterNeumann ", "PeterNeumann  "), id="two-spaces"),
            pytest.param(NOTE.replace("x08go", "x08g!"), id="bad-base64"),
            pytest.param(NOTE.replace("nAM=", "nAM"), id="bad-padding"),
            pytest.param(NOTE.replace("x08go", "x08go "), id="space-in-base64"),
            pytest.param(f"{TEXT}\n\u2014 PeterNeumann x08g\n", id="signature-too-short"),
            pytest.param(f"{TEXT}\n\u2014 PeterNeumann x08go/ZJ\n", id="key-id-truncated-sig"),
            pytest.param(NOTE.replace("\u2014 PeterNeumann", "\u2014 "), id="no-name"),
        ],
    )
    def test_malformed(self, note: str) -> None:
        """A malformed note raises SignatureError (never another exception)."""
        with pytest.raises(SignatureError):
            open_note(note, [PETER_KEY])

    @pytest.mark.parametrize("text", ["tab\there\n", "cr\r\n", "esc\x1b[0m\n", "nul\x00\n"])
    def test_control_characters_signed(self, text: str) -> None:
        """Text with a control character raises SignatureError even when the signature over it
        is valid."""
        raw = ALICE.verifier.key_id + ALICE.sign(text.encode())
        note = f"{text}\n\u2014 {ALICE.name} {base64.b64encode(raw).decode()}\n"
        assert ALICE.verifier.verify(text.encode(), raw[4:])
        with pytest.raises(SignatureError, match="control"):
            open_note(note, [ALICE.verifier])

    def test_lone_surrogate(self) -> None:
        """A note that is not valid Unicode (a lone surrogate in its text) raises
        SignatureError, as Go rejects invalid UTF-8."""
        with pytest.raises(SignatureError):
            open_note(NOTE.replace("problem,", "problem,\ud800"), [PETER_KEY])

    def test_signature_limit(self) -> None:
        """Up to 100 signature lines are read; a note with 101 raises SignatureError."""
        unknown = f"\u2014 someone.else {base64.b64encode(bytes(68)).decode()}\n"
        assert TEXT == open_note(NOTE + unknown * 99, [PETER_KEY]).text
        with pytest.raises(SignatureError):
            open_note(NOTE + unknown * 100, [PETER_KEY])

    def test_c2sp_signed_note_example(self) -> None:
        """The spec's example splits at its last blank line (its text has one inside), and its
        signature, by a key we do not trust, is ignored, not malformed."""
        note = QUASIMODO["signed_note"]
        assert QUASIMODO["text"] == _text_of(note)
        assert "\n\n" in QUASIMODO["text"]
        with pytest.raises(SignatureError, match="not signed"):
            open_note(note, [PETER_KEY])
        with pytest.raises(CheckpointError):  # a poem, not a checkpoint: it has an empty line
            Checkpoint.parse(_text_of(note))


#: Key names c2sp.org/signed-note forbids: a '+', or any Unicode space (White_Space).
BAD_NAMES = [
    "a+b",
    "a b",
    "a\tb",
    "a\u00a0b",  # no-break space
    "a\u0085b",  # next line
    "a\u1680b",  # ogham space mark
    "a\u2003b",  # em space
    "a\u2009b",  # thin space
    "a\u2028b",  # line separator
    "a\u2029b",  # paragraph separator
    "a\u202fb",  # narrow no-break space
    "a\u205fb",  # medium mathematical space
    "a\u3000b",  # ideographic space
    " lead",
    "trail\u00a0",
    "",
]


def _line_for(name: str, raw: bytes | None = None) -> str:
    """A signature line under ``name`` (a valid-looking 68-byte signature by default)."""
    return f"\u2014 {name} {base64.b64encode(raw or bytes(68)).decode()}\n"


class TestKeyNames:
    """Key names follow c2sp.org/signed-note everywhere: signers, verifiers, note lines."""

    @pytest.mark.parametrize("name", BAD_NAMES)
    def test_signer_constructor_refuses(self, name: str) -> None:
        """Signer(name, seed) with an invalid name raises SignatureError."""
        with pytest.raises(SignatureError):
            Signer(name, bytes(32))

    @pytest.mark.parametrize("name", BAD_NAMES)
    def test_verifier_constructor_refuses(self, name: str) -> None:
        """Verifier(name, …) with an invalid name raises SignatureError."""
        with pytest.raises(SignatureError):
            Verifier(name, bytes(4), bytes(32))

    @pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)], ids=["0", "31", "33"])
    def test_signer_needs_32_byte_seed(self, seed: bytes) -> None:
        """A seed of another length raises SignatureError."""
        with pytest.raises(SignatureError, match="32-byte seed"):
            Signer("ok.example/log", seed)

    @pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
    def test_open_rejects_invalid_name_line(self, name: str) -> None:
        """A note with a signature line under an invalid key name is rejected, even when a
        trusted key's signature beside it verifies (Go's note.Open: errMalformedNote)."""
        with pytest.raises(SignatureError):
            open_note(NOTE + _line_for(name), [PETER_KEY])

    @settings(max_examples=100, deadline=None)
    @given(key_names)
    def test_open_ignores_valid_unknown_names(self, name: str) -> None:
        """A well-formed line by any valid but unknown key name is ignored."""
        assert TEXT == open_note(NOTE + _line_for(name), [PETER_KEY]).text


class TestKeyVersions:
    """Trusted keys of one name are versions of one signer (rotation); names all sign."""

    OLD = Signer("log.example/a", bytes(range(32)))
    NEW = Signer("log.example/a", bytes(range(1, 33)))

    def test_either_version_suffices(self) -> None:
        """A note signed by the old or the new key of a name opens with both trusted."""
        both = [self.OLD.verifier, self.NEW.verifier]
        for signer in (self.OLD, self.NEW):
            assert TEXT == open_note(sign_note(TEXT, [signer]), both).text

    def test_other_names_still_all_required(self) -> None:
        """A witness (another name) must still sign, whichever version of the log did."""
        trusted = [self.OLD.verifier, self.NEW.verifier, BOB.verifier]
        with pytest.raises(SignatureError, match=r"bob\.example/witness"):
            open_note(sign_note(TEXT, [self.NEW]), trusted)
        assert TEXT == open_note(sign_note(TEXT, [self.NEW, BOB]), trusted).text

    def test_bad_signature_by_either_version_rejects(self) -> None:
        """A failing signature by any trusted version rejects the note, even next to a good
        one by the other version."""
        raw = self.NEW.verifier.key_id + bytes(64)
        bad = (
            sign_note(TEXT, [self.OLD])
            + f"\u2014 {self.NEW.name} {base64.b64encode(raw).decode()}\n"
        )
        with pytest.raises(SignatureError, match="does not verify"):
            open_note(bad, [self.OLD.verifier, self.NEW.verifier])


class TestAnyInput:
    """Parsers of untrusted text raise their own error, and nothing else, for any input."""

    noisy_text = st.text(
        alphabet=st.characters(codec="utf-8") | st.sampled_from("\n +\u2014\u00a0=/"),
        max_size=200,
    )

    @settings(max_examples=300, deadline=None)
    @given(noisy_text | st.builds(lambda t: NOTE[: len(t) % len(NOTE)] + t, noisy_text))
    def test_open_note_raises_only_signature_error(self, note: str) -> None:
        """open_note, unverified_text and sign_note(existing=…) on any text: a result or
        SignatureError."""
        for call in (
            lambda: open_note(note, [PETER_KEY]),
            lambda: unverified_text(note),
            lambda: sign_note(TEXT, [ALICE], existing=note),
        ):
            with contextlib.suppress(SignatureError):
                call()

    @settings(max_examples=300, deadline=None)
    @given(noisy_text)
    def test_checkpoint_parse_raises_only_checkpoint_error(self, text: str) -> None:
        """Checkpoint.parse on any text: a checkpoint whose text() parses back, or
        CheckpointError."""
        try:
            checkpoint = Checkpoint.parse(text)
        except CheckpointError:
            return
        assert checkpoint == Checkpoint.parse(checkpoint.text())


class TestCosignExisting:
    """sign_note(existing=…) validates the existing lines and never repeats a key."""

    @pytest.mark.parametrize(
        "extra",
        [
            pytest.param(_line_for("a+b"), id="plus-in-name"),
            pytest.param(_line_for("a\u00a0b"), id="nbsp-in-name"),
            pytest.param(_line_for("a\u3000b"), id="ideographic-space-in-name"),
            pytest.param("\u2014 nameonly\n", id="no-signature"),
            pytest.param("\u2014 name !!!!\n", id="bad-base64"),
            pytest.param(f"\u2014 name {base64.b64encode(bytes(4)).decode()}\n", id="too-short"),
            pytest.param("- name AAAAAAAA\n", id="not-a-signature-line"),
        ],
    )
    def test_malformed_existing_line_refused(self, extra: str) -> None:
        """A malformed line in the existing note raises SignatureError instead of producing
        a note that open_note rejects."""
        with pytest.raises(SignatureError):
            open_note(NOTE + extra, [PETER_KEY])
        with pytest.raises(SignatureError):
            sign_note(TEXT, [ALICE], existing=NOTE + extra)

    def test_existing_with_control_character_refused(self) -> None:
        """An existing note with a control character raises SignatureError."""
        with pytest.raises(SignatureError, match="control"):
            sign_note(TEXT, [ALICE], existing=NOTE.replace("\u2014 Peter", "\u2014 Pe\x07ter"))

    def test_resign_replaces_own_line(self) -> None:
        """Signing again with a key that already signed leaves one line by that key."""
        once = sign_note(TEXT, [ALICE], existing=NOTE)
        twice = sign_note(TEXT, [ALICE], existing=once)
        assert once == twice  # Ed25519 is deterministic: the same line, once
        lines = [line for line in twice.splitlines() if line.startswith("\u2014 ")]
        assert 2 == len(lines)
        assert Note(TEXT, (PETER_KEY, ALICE.verifier)) == open_note(
            twice, [PETER_KEY, ALICE.verifier]
        )

    def test_resign_golden_key_keeps_one_line(self) -> None:
        """Re-signing Go's note with its own key gives Go's note back, byte for byte."""
        assert NOTE == sign_note(TEXT, [PETER_SIGNER], existing=NOTE)

    def test_resign_replaces_a_bad_old_signature(self) -> None:
        """A stale line by the signing key (wrong signature) is replaced, and the note opens."""
        stale = _with_signature(NOTE, "PeterNeumann", PETER_KEY.key_id + bytes(64))
        with pytest.raises(SignatureError, match="does not verify"):
            open_note(stale, [PETER_KEY])
        assert NOTE == sign_note(TEXT, [PETER_SIGNER], existing=stale)

    def test_same_key_twice_refused(self) -> None:
        """Passing one key twice raises SignatureError rather than write two lines."""
        with pytest.raises(SignatureError, match="twice"):
            sign_note(TEXT, [ALICE, ALICE])

    def test_identical_unknown_lines_kept_once(self) -> None:
        """An unknown key's line repeated in the existing note is kept once."""
        unknown = _line_for("someone.else")
        cosigned = sign_note(TEXT, [ALICE], existing=NOTE + unknown + unknown)
        assert NOTE + unknown == cosigned[: len(NOTE + unknown)]
        assert 1 == cosigned.count(unknown)

    @pytest.mark.parametrize(
        "example", [QUASIMODO, SOFA, DOUBLE], ids=["signed-note", "tlog-checkpoint", "go-double"]
    )
    def test_spec_examples_are_well_formed_and_cosignable(self, example: dict[str, Any]) -> None:
        """The C2SP spec examples (and Go's doubly signed note) pass the form checks, and
        cosigning them keeps their lines byte for byte."""
        note = example["signed_note"]
        assert example["text"] == unverified_text(note)
        cosigned = sign_note(example["text"], [ALICE], existing=note)
        assert note == cosigned[: len(note)]
        assert example["text"] == open_note(cosigned, [ALICE.verifier]).text

    def test_cosigned_golden_double_opens(self) -> None:
        """Cosigning Go's doubly signed note keeps both lines; all three keys verify."""
        cosigned = sign_note(TEXT, [ALICE], existing=DOUBLE_NOTE)
        assert DOUBLE_NOTE == cosigned[: len(DOUBLE_NOTE)]
        open_note(cosigned, [PETER_KEY, ENOCH_KEY, ALICE.verifier])

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=6))
    def test_any_signing_order_opens(self, order: list[int]) -> None:
        """Any sequence of (re)signings yields a note with one line per key that opens."""
        signers = [ALICE, BOB, PETER_SIGNER]
        note = sign_note(TEXT, [signers[order[0]]])
        for i in order[1:]:
            note = sign_note(TEXT, [signers[i]], existing=note)
        used = {signers[i].verifier for i in order}
        assert len(used) == note.count("\u2014 ")
        assert TEXT == open_note(note, list(used)).text


ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()


class TestCheckpoint:
    """Checkpoint note text (c2sp.org/tlog-checkpoint)."""

    def test_c2sp_example(self) -> None:
        """The spec's example checkpoint parses to its origin, size and root."""
        text = _text_of(SOFA["signed_note"])
        assert SOFA["text"] == text
        expected = Checkpoint(
            "example.com/behind-the-sofa", 20852163, base64.b64decode(SOFA["root_hash_b64"])
        )
        assert expected == Checkpoint.parse(text)
        assert (SOFA["origin"], SOFA["tree_size"]) == (expected.origin, expected.size)
        assert text == expected.text()

    def test_c2sp_example_unknown_key(self) -> None:
        """The spec's signed checkpoint, by a key we do not trust, does not open."""
        with pytest.raises(SignatureError, match="not signed"):
            open_note(SOFA["signed_note"], [PETER_KEY])

    def test_text(self) -> None:
        """text() is origin, decimal size and base64 root, each on its own line."""
        assert f"o.example/x\n7\n{ROOT_B64}\n" == Checkpoint("o.example/x", 7, ROOT).text()

    @settings(max_examples=200, deadline=None)
    @given(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1),
        st.integers(0, 2**64 - 1),
        st.binary(min_size=32, max_size=32),
    )
    def test_round_trip(self, origin: str, size: int, root: bytes) -> None:
        """parse(text()) gives back the checkpoint."""
        checkpoint = Checkpoint(origin, size, root)
        assert checkpoint == Checkpoint.parse(checkpoint.text())

    def test_signed_round_trip(self) -> None:
        """A signed checkpoint opens and parses back to itself."""
        checkpoint = Checkpoint("alice.example/log", 20852163, ROOT)
        note = sign_note(checkpoint.text(), [ALICE])
        assert checkpoint == Checkpoint.parse(open_note(note, [ALICE.verifier]).text)

    def test_extension_lines_ignored(self) -> None:
        """Lines after the root (extensions) are allowed and ignored."""
        parsed = Checkpoint.parse(f"o\n0\n{ROOT_B64}\nextension one\n\u2014 two\n")
        assert Checkpoint("o", 0, ROOT) == parsed

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("", id="empty"),
            pytest.param("o\n", id="one-line"),
            pytest.param("o\n1\n", id="two-lines"),
            pytest.param(f"o\n1\n{ROOT_B64}", id="no-final-newline"),
            pytest.param(f"\n1\n{ROOT_B64}\n", id="empty-origin"),
            pytest.param(f"o\n\n1\n{ROOT_B64}\n", id="empty-line-inside"),
            pytest.param(f"o\n1\n{ROOT_B64}\n\next\n", id="empty-line-before-extension"),
            pytest.param(f"o\n1\n{ROOT_B64}\n\n", id="trailing-empty-line"),
            pytest.param(f"o\n01\n{ROOT_B64}\n", id="leading-zero"),
            pytest.param(f"o\n00\n{ROOT_B64}\n", id="double-zero"),
            pytest.param(f"o\n-1\n{ROOT_B64}\n", id="negative"),
            pytest.param(f"o\n+1\n{ROOT_B64}\n", id="plus-sign"),
            pytest.param(f"o\n 1\n{ROOT_B64}\n", id="space"),
            pytest.param(f"o\n1_000\n{ROOT_B64}\n", id="underscore"),
            pytest.param(f"o\n0x10\n{ROOT_B64}\n", id="hex"),
            pytest.param(f"o\n1.0\n{ROOT_B64}\n", id="decimal-point"),
            pytest.param(f"o\n\u0661\n{ROOT_B64}\n", id="arabic-digit"),
            pytest.param(f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", id="root-31-bytes"),
            pytest.param(f"o\n1\n{base64.b64encode(ROOT + b'!').decode()}\n", id="root-33-bytes"),
            pytest.param(f"o\n1\n{ROOT.hex()}\n", id="root-hex"),
            pytest.param(f"o\n1\n{ROOT_B64[:-1]}\n", id="root-no-padding"),
            pytest.param(f"o\n1\n{ROOT_B64.replace('A', '!')}\n", id="root-bad-char"),
            pytest.param(f"o\n1\n{ROOT_B64}\u00e9\n", id="root-non-ascii"),
        ],
    )
    def test_rejects(self, text: str) -> None:
        """Malformed checkpoint text raises CheckpointError."""
        with pytest.raises(CheckpointError):
            Checkpoint.parse(text)

    def test_largest_tree_size(self) -> None:
        """2^64-1, the largest uint64, is a valid tree size (RFC 9162 tree_size)."""
        text = f"o\n{2**64 - 1}\n{ROOT_B64}\n"
        assert Checkpoint("o", MAX_TREE_SIZE, ROOT) == Checkpoint.parse(text)
        assert 2**64 - 1 == MAX_TREE_SIZE

    @pytest.mark.parametrize(
        "size",
        [2**64, 2**64 + 1, 10**20, 10**30, 10**4000],
        ids=["2^64", "2^64+1", "10^20", "10^30", "10^4000"],
    )
    def test_tree_size_beyond_uint64_rejected(self, size: int) -> None:
        """A tree size above 2^64-1 raises CheckpointError, when parsed and when built."""
        with pytest.raises(CheckpointError, match="uint64"):
            Checkpoint.parse(f"o\n{size}\n{ROOT_B64}\n")
        with pytest.raises(CheckpointError, match="uint64"):
            Checkpoint("o", size, ROOT)

    @pytest.mark.parametrize(
        ("origin", "size", "root"),
        [("", 1, ROOT), ("a\nb", 1, ROOT), ("o", -1, ROOT), ("o", 1, ROOT[:31])],
        ids=["empty-origin", "two-line-origin", "negative-size", "short-root"],
    )
    def test_constructor_rejects(self, origin: str, size: int, root: bytes) -> None:
        """A checkpoint that text() could not write parseably cannot be built."""
        with pytest.raises(CheckpointError):
            Checkpoint(origin, size, root)
