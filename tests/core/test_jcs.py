"""RFC 8785 canonical bytes: the orjson fast path equals the reference implementation."""

from __future__ import annotations

import csv
import math
import struct
from pathlib import Path

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import canonical_bytes
from audit_core._jcs import MAX_SAFE_INTEGER, es_number
from audit_core.errors import InvalidRecordError

ASSETS = Path(__file__).parent.parent / "assets"
safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
# Keys and strings across all of Unicode (minus lone surrogates, which no valid text has),
# with extra weight on the characters where orjson and RFC 8785 could disagree.
tricky_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\ue000", "\uffff", "\U0001f600", "\U00010000", "\x7f", "\u2028", "\x00"]),
    ),
    max_size=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | safe_ints | finite_floats | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=20,
)


class TestCanonicalBytes:
    """canonical_bytes() against the rfc8785 reference package."""

    @settings(max_examples=400, deadline=None)
    @given(json_values)
    def test_equals_reference(self, value: object) -> None:
        """Any JSON value in the I-JSON domain encodes to exactly rfc8785's bytes."""
        assert rfc8785.dumps(value) == canonical_bytes(value)

    @settings(max_examples=300, deadline=None)
    @given(json_values)
    def test_reparse_is_stable(self, value: object) -> None:
        """Parsing canonical bytes and encoding again yields the same bytes (what verify does)."""
        once = canonical_bytes(value)
        assert once == canonical_bytes(orjson.loads(once))

    @settings(max_examples=500, deadline=None)
    @given(finite_floats)
    def test_numbers_match_ecmascript(self, x: float) -> None:
        """Every finite double is formatted as ECMAScript Number.prototype.toString does."""
        assert rfc8785.dumps(x).decode() == es_number(x)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1.0, b"1"),
            (-0.0, b"0"),
            (1e16, b"10000000000000000"),
            (1e21, b"1e+21"),
            (1e-6, b"0.000001"),
            (1e-7, b"1e-7"),
            (0.1, b"0.1"),
            (5e-324, b"5e-324"),
            ({"\U0001f600": 1, "\ue000": 2}, b'{"\xf0\x9f\x98\x80":1,"\xee\x80\x80":2}'),
        ],
    )
    def test_departures_of_orjson_are_corrected(self, value: object, expected: bytes) -> None:
        """The cases where orjson's own output differs from RFC 8785 are re-encoded exactly."""
        assert expected == canonical_bytes(value)

    def test_rfc8785_appendix_b_numbers(self) -> None:
        """The finite IEEE 754 samples of RFC 8785 Appendix B (tests/assets) format exactly."""
        rows = list(csv.DictReader(ASSETS.joinpath("rfc8785_appendix_b.csv").open()))
        assert 24 == len(rows)
        for row in rows:
            x = _double(int(row["ieee754_hex"], 16))
            assert row["json_string"].encode() == canonical_bytes(x), row["ieee754_hex"]
            assert row["json_string"].encode() == canonical_bytes(orjson.loads(canonical_bytes(x)))

    @pytest.mark.parametrize(
        "value",
        [
            {"big": 2**53 + 1},
            {"bad": "\ud800"},
            {1: "non-string key"},
            {"obj": object()},
        ],
    )
    def test_unencodable_values_raise(self, value: object) -> None:
        """Values outside RFC 8785's domain raise InvalidRecordError, never encode silently."""
        with pytest.raises(InvalidRecordError):
            canonical_bytes(value)

    def test_large_exact_double_integer_is_accepted(self) -> None:
        """An integer beyond 2^53 that is exactly a double (1e16 read back) encodes as one."""
        assert b"10000000000000000" == canonical_bytes(10**16)


def _double(bits: int) -> float:
    value: float = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
    assert not math.isnan(value)
    return value
