"""RFC 8785 canonical bytes: the orjson fast path equals the reference implementation."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import enum
import math
import struct
import uuid
from collections import OrderedDict
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import canonical_bytes
from audit_core._jcs import MAX_SAFE_INTEGER, _encode_slow, es_number
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


class _Color(enum.Enum):
    RED = "red"
    NAN = math.nan


class _Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class _Point:
    x: int


class _Text(str):
    pass


class _Float(float):
    pass


#: Values of types JSON does not have, or that orjson would write differently than the exact
#: encoder: each must be accepted or rejected by canonical_bytes the same in every context.
ODD_VALUES: list[Any] = [
    dt.date(2026, 1, 1),
    dt.datetime(2026, 1, 1, 12, 0),
    dt.time(12, 0),
    _Point(1),
    uuid.UUID(int=7),
    _Color.RED,
    _Color.NAN,
    _Level.HIGH,
    _Text("x"),
    _Float(1.5),
    OrderedDict(a=1),
    (1, "t"),
    b"bytes",
    bytearray(b"x"),
    memoryview(b"x"),
    {1, 2},
    frozenset({1}),
    Decimal("1.5"),
    range(3),
    complex(1, 2),
    object(),
]

#: Wrappers that put a value among others that steer the fast path one way or the other.
CONTEXTS: list[Any] = [
    lambda x: x,
    lambda x: [x],
    lambda x: [x, 1e16],  # an exponent: the exact path runs anyway
    lambda x: [1.0, x],  # a ".0": likewise
    lambda x: {"\ue000": x, "a": 1},  # a high key: likewise
    lambda x: {"a": [x, None]},  # a null: the non-finite check runs
    lambda x: {"a": {"b": x}, "big": 2**53},  # an integer beyond 2^53: orjson refuses
]


def _outcome(fn: Any, value: Any) -> tuple[bool, bytes | None]:
    try:
        return True, fn(value)
    except InvalidRecordError:
        return False, None


class TestNonFinite:
    """NaN and infinities are rejected wherever they are, never written as null."""

    @pytest.mark.parametrize(
        "value",
        [
            [math.nan],
            [math.inf],
            [-math.inf],
            {"a": math.nan},
            {"a": [1, {"b": -math.inf}]},
            (math.inf,),
            [None, math.nan],
            [_Color.NAN],
        ],
    )
    def test_non_finite_in_containers_raises(self, value: object) -> None:
        """A NaN or ±Infinity inside a list or object raises (RFC 8785 §3.2.2.3)."""
        with pytest.raises(InvalidRecordError):
            canonical_bytes(value)

    @settings(max_examples=300, deadline=None)
    @given(json_values, st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 3))
    def test_planted_non_finite_raises(self, value: object, bad: float, depth: int) -> None:
        """A non-finite float planted at any depth next to any JSON value raises."""
        planted: object = bad
        for level in range(depth):
            planted = [planted] if level % 2 else {"k": planted}
        with pytest.raises(InvalidRecordError):
            canonical_bytes([value, planted])

    def test_null_is_still_null(self) -> None:
        """None is encoded as null (the check only looks for non-finite floats)."""
        assert b'{"a":null,"b":[null]}' == canonical_bytes({"a": None, "b": [None]})


class TestTypePolicy:
    """The fast path and the exact encoder accept and reject exactly the same values."""

    @pytest.mark.parametrize("odd", ODD_VALUES, ids=lambda v: type(v).__name__)
    def test_same_verdict_in_every_context(self, odd: Any) -> None:
        """A value is accepted in every context or rejected in every context."""
        verdicts = {_outcome(canonical_bytes, wrap(odd))[0] for wrap in CONTEXTS}
        assert 1 == len(verdicts), verdicts

    @pytest.mark.parametrize("odd", ODD_VALUES, ids=lambda v: type(v).__name__)
    def test_fast_path_equals_exact_encoder(self, odd: Any) -> None:
        """canonical_bytes gives exactly the exact encoder's verdict and bytes."""
        for wrap in CONTEXTS:
            exact = _outcome(lambda v: _encode_slow(v).encode("utf-8"), wrap(odd))
            assert exact == _outcome(canonical_bytes, wrap(odd))

    @settings(max_examples=300, deadline=None)
    @given(json_values, st.sampled_from(ODD_VALUES))
    def test_agreement_with_any_neighbour(self, value: object, odd: Any) -> None:
        """Next to any JSON value, fast path and exact encoder agree on verdict and bytes."""
        for whole in ([value, odd], {"v": value, "o": odd}, [odd, [value]]):
            exact = _outcome(lambda v: _encode_slow(v).encode("utf-8"), whole)
            assert exact == _outcome(canonical_bytes, whole)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (MAX_SAFE_INTEGER, b"9007199254740991"),
            (-MAX_SAFE_INTEGER, b"-9007199254740991"),
            (2**53, b"9007199254740992"),
            (10**16, b"10000000000000000"),
            (2**53 + 1, None),
            (2**60, None),
            (-(2**53) - 1, None),
            (10**400, None),
        ],
    )
    def test_integer_policy(self, value: int, expected: bytes | None) -> None:
        """Integers within ±(2^53-1) are written; larger ones only when exactly a double's
        ECMAScript form; the same next to anything else."""
        for wrap in CONTEXTS:
            whole = wrap(value)
            if expected is None:
                with pytest.raises(InvalidRecordError):
                    canonical_bytes(whole)
            else:
                assert _encode_slow(whole).encode("utf-8") == canonical_bytes(whole)
        if expected is not None:
            assert expected == canonical_bytes(value)

    def test_docstring_states_the_integer_policy(self) -> None:
        """canonical_bytes documents the integer range and the exact-double exception."""
        doc = canonical_bytes.__doc__ or ""
        assert "±(2^53-1)" in doc
        assert "exactly the value of a double" in doc


def _double(bits: int) -> float:
    value: float = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
    assert not math.isnan(value)
    return value
