"""RFC 8785 (JSON Canonicalization Scheme) encoding, fast.

>>> canonical_bytes({"b": 1.0, "a": [1e16, "x"]})
b'{"a":[10000000000000000,"x"],"b":1}'

Why two paths: the pure-Python ``rfc8785`` package costs ~40-100 us per record, while
``orjson`` with sorted keys costs ~1 us and yields the same bytes for almost every value
(string escaping is identical: RFC 8785 §3.2.2.2). orjson departs from RFC 8785 in exactly
three places, all of which leave a visible trace in its output:

1. numbers (RFC 8785 §3.2.2.3 demands ECMAScript ``Number.prototype.toString``): orjson
   writes ``1.0``, ``-0.0`` and exponents (``1e+16``, ``1e-6``) where ECMAScript writes
   ``1``, ``0``, ``10000000000000000``, ``0.000001``;
2. integers beyond ±(2^53-1), which RFC 8785 (I-JSON, RFC 7493) does not allow at all;
3. key order (RFC 8785 §3.2.3 sorts by UTF-16 code units; orjson by code points), which
   differs only between keys holding characters >= U+E000.

``canonical_bytes`` encodes with orjson, and when a cheap scan of the output finds any of
those traces it re-encodes the value with :func:`_encode_slow`, a small exact implementation.
The scan may fire on harmless text (``"ratio:1e5"`` inside a string); that only costs time.
Equality with ``rfc8785`` is proven by a Hypothesis test (tests/core/test_jcs.py).

Two more differences are closed before the fast path's output is trusted: orjson writes NaN
and ±Infinity as ``null`` (so any ``null`` in its output sends the value through a check for
non-finite floats), and orjson natively encodes types JSON does not have (dates, dataclasses)
that the exact encoder rejects: they are passed through to a ``TypeError`` instead, so a value
is accepted or rejected the same whatever else it holds (tests/core/test_jcs.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import orjson

from audit_core.errors import InvalidRecordError

__all__ = ["MAX_SAFE_INTEGER", "canonical_bytes", "canonical_loaded", "es_number"]

#: I-JSON (RFC 7493 §2.2) interoperable integer range, required by RFC 8785 §3.2.2.3.
MAX_SAFE_INTEGER = 2**53 - 1

# OPT_STRICT_INTEGER makes orjson refuse integers beyond ±(2^53-1) instead of writing them;
# the PASSTHROUGH options make it refuse dates, times and dataclasses (which it would
# otherwise write as strings and objects) so that the exact encoder decides, and rejects them.
_OPTS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_STRICT_INTEGER
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)

# Traces of the three departures above in orjson's compact output: exponents (orjson always
# writes a sign: "1e+16", "1e-7"), a number ending in ".0", and a character >= U+E000 (UTF-8
# lead bytes 0xEE-0xF4) inside an object key. Python's re scans fast only for patterns that
# start with a literal, so the hints are literal-led (~1 us for a 500-byte record in all).
# The exact pattern runs only when its hint hits. Text inside a string ("v1.0]", "1e-5") may
# fire both; that costs a needless exact encoding, never a wrong result. (A memchr for "+"
# would be cheaper but hits every Airflow run id: "scheduled__2026-11-28T00:00:00+00:00".)
_EXPONENT_HINT = re.compile(rb"e[+-][0-9]")
_POINT_ZERO_HINT = re.compile(rb"\.0[,\]}]")
_HIGH_KEY = re.compile(rb'[\xee-\xf4](?:[^"\\]|\\.)*":')
_EXPONENT = re.compile(rb"[:,\[]-?[0-9]+(?:\.[0-9]+)?e[+-][0-9]")
_POINT_ZERO = re.compile(rb"[:,\[]-?[0-9]+\.0[,\]}]")


def _needs_slow_path(out: bytes) -> bool:
    if out[:1] not in (b"{", b"["):
        return True  # a bare scalar (never a record): the exact path is cheap enough
    if _EXPONENT_HINT.search(out) and _EXPONENT.search(out):
        return True
    if _POINT_ZERO_HINT.search(out) and _POINT_ZERO.search(out):
        return True
    return not out.isascii() and _HIGH_KEY.search(out) is not None


def canonical_bytes(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Accepted: ``None``, ``bool``, ``str``, ``float``, ``int``, mappings with ``str`` keys,
    lists and tuples (and, as orjson writes them, ``enum.Enum`` members as their value and
    ``uuid.UUID`` as its hyphenated text), at any depth.

    Integer policy (RFC 8785 §3.2.2.3 numbers are IEEE 754 doubles; I-JSON, RFC 7493 §2.2):
    an integer within ±(2^53-1) is written in decimal. A larger one is accepted only when it
    is exactly the value of a double *and* its decimal text is that double's ECMAScript form
    (``10**16`` → ``10000000000000000``, which is how such a double reads back from JSON);
    any other integer (``2**53 + 1``, ``2**60``) raises, since a JSON reader would round it.

    Raises :class:`InvalidRecordError` for what RFC 8785 cannot encode: such integers, NaN
    and ±Infinity (anywhere in the value), non-string keys, lone surrogates, and any other
    type (bytes, sets, dates, dataclasses, …), whatever else the value holds.
    """
    try:
        out = orjson.dumps(value, option=_OPTS)
    except TypeError:
        # An unsupported type, a lone surrogate, or an integer beyond 2^53, which is fine when
        # it is the exact value of a double (1e16 is written, and read back, as an integer).
        # The exact encoder decides, and raises for the others.
        return _encode_slow(value).encode("utf-8")
    # orjson writes NaN and ±Infinity as null (RFC 8785 §3.2.2.3 forbids them): a value whose
    # output has no null has none; one that has is checked (records mostly hold "trace":null).
    if b"null" in out and has_non_finite(value):
        return _encode_slow(value).encode("utf-8")  # raises, naming the value
    if not _needs_slow_path(out):
        return out
    # Measured: re-encoding the whole value (~35 us) costs about what patching just the
    # number tokens of orjson's output with a regex callback does; the simple way wins.
    return _encode_slow(value).encode("utf-8")


def canonical_loaded(value: Any) -> bytes:
    """:func:`canonical_bytes` of a value known to hold only finite numbers, so the
    non-finite check is skipped: one just parsed by ``orjson.loads`` (the verifier's hot loop;
    orjson's parser rejects NaN, Infinity and numbers beyond the double range), or the fields
    of a record made by :func:`audit_core._normalize.normalize` (which turns NaN and ±Infinity
    into strings and refuses a processor's non-finite output)."""
    try:
        out = orjson.dumps(value, option=_OPTS)
    except TypeError:
        return _encode_slow(value).encode("utf-8")
    if not _needs_slow_path(out):
        return out
    return _encode_slow(value).encode("utf-8")


def has_non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity is anywhere in ``value`` (what orjson wrote as null).
    It runs on most records (a null is common), so containers are scanned in place and
    only nested containers are stacked; exact types first, subclasses in the slow branch."""
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            item = item.values()
        elif kind is not list and kind is not tuple:
            if isinstance(item, float):
                if item - item != 0.0:  # NaN for NaN and ±inf, 0.0 for every finite double
                    return True
            elif isinstance(item, dict):
                push(list(item.values()))
            elif isinstance(item, (list, tuple)):
                push(list(item))
            elif isinstance(item, Enum):
                push(item.value)
            continue
        for member in item:
            kind = type(member)
            if kind is str or kind is int or member is None or kind is bool:
                continue
            if kind is float:
                if member - member != 0.0:
                    return True
            else:
                push(member)
    return False


def es_number(x: float | int) -> str:
    """Format a number as ECMAScript ``Number.prototype.toString`` does (ECMA-262 §6.1.6.1.20),
    which RFC 8785 §3.2.2.3 prescribes for JSON numbers."""
    if isinstance(x, int):
        x = int(x)  # an int subclass (IntEnum, …) is written as its value, as orjson does
        if abs(x) <= MAX_SAFE_INTEGER:
            return str(x)
        # RFC 8785 numbers are IEEE 754 doubles. A large integer token is acceptable exactly
        # when it is the ECMAScript form of a double: 1e16 is written "10000000000000000" and
        # 4.631576242419077e16 "46315762424190770"; parsed back, both are Python ints.
        try:
            as_double = es_number(float(x))
        except OverflowError:
            as_double = ""
        if as_double != str(x):
            raise InvalidRecordError(
                f"integer {x} is not the RFC 8785 form of an IEEE 754 double "
                "(§3.2.2.3; keep integers within ±(2^53-1))"
            )
        return as_double
    if not math.isfinite(x):
        raise InvalidRecordError(f"{x!r} has no JSON representation (RFC 8785 §3.2.2.3)")
    if x == 0:
        return "0"  # also for -0.0
    sign = "-" if x < 0 else ""
    # repr() gives the shortest digit string that round-trips, as ECMAScript requires.
    _, digit_tuple, exp = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exp = int(exp) + (len(digit_tuple) - len(digits))
    k = len(digits)
    n = exp + k  # value = 0.<digits> x 10^n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        body = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + body


def _utf16_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as UTF-16 code units do (RFC 8785 §3.2.3).
    return key.encode("utf-16-be", "surrogatepass")


def _encode_slow(value: Any) -> str:
    """Exact RFC 8785 encoder; used only when the orjson output needs correcting. It accepts
    exactly what :func:`canonical_bytes` documents, so both paths agree on every value."""
    if isinstance(value, Enum):  # orjson writes a member as its value
        return _encode_slow(value.value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (int, float)):
        return es_number(value)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise InvalidRecordError(f"object key {key!r} is not a string")
        items = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(f"{_string(k)}:{_encode_slow(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode_slow(v) for v in value) + "]"
    if isinstance(value, UUID):  # orjson writes RFC 4122 text, as str() does
        return _string(str(value))
    raise InvalidRecordError(f"{type(value).__name__} is not a JSON type")


def _string(s: str) -> str:
    try:
        # orjson's string escaping is RFC 8785 §3.2.2.2's exactly (checked by tests).
        return orjson.dumps(s).decode("utf-8")
    except TypeError as exc:
        raise InvalidRecordError(f"string is not valid Unicode: {exc}") from exc
