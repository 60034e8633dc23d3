"""Turn any payload into the JSON subset the record format allows, and keep secrets out.

>>> from datetime import datetime, timezone
>>> normalize({"when": datetime(2026, 1, 2, tzinfo=timezone.utc), "api_key": "s3cr3t",
...            "loss": float("nan")}).value
{'when': '2026-01-02T00:00:00.000000Z', 'api_key': '[REDACTED]', 'loss': 'NaN'}

Two stages, both deterministic (the same input always yields the same record bytes):

1. :func:`to_json` converts Python values to JSON values inside the RFC 8785 / I-JSON subset
   (finite numbers, integers within ±(2^53-1), valid Unicode) and replaces oversized values by
   a digest. Each *lossy* conversion is reported as an issue; ``strict=True`` raises instead.
2. Processors, structlog-style plain callables ``dict -> dict``, run over the result:
   :func:`redact` by default; adapters add their own (Airflow's secrets masker, for instance).
   :class:`~audit_core.AuditTrail` runs them over ``data``, ``subject`` and ``actor`` alike:
   every field is untrusted, so a processor must keep an object's other members as they are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import math
import re
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from decimal import Decimal
from pathlib import PurePath
from typing import Any, NamedTuple, TypeAlias

import orjson

from audit_core._jcs import MAX_SAFE_INTEGER, canonical_bytes, has_non_finite
from audit_core.errors import InvalidRecordError

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_REDACT_KEYS",
    "JSON",
    "MAX_DATA_BYTES",
    "REDACTED",
    "Normalized",
    "Processor",
    "fit",
    "format_timestamp",
    "normalize",
    "now_timestamp",
    "parse_timestamp",
    "process",
    "redact",
    "to_json",
]

JSON: TypeAlias = "bool | int | float | str | list[JSON] | dict[str, JSON] | None"
JSONObject = dict[str, JSON]
#: A processor takes the normalized ``data`` object and returns the object to record.
Processor = Callable[[JSONObject], JSONObject]
#: Processors made here that only replace strings: their output needs no non-finite check.
_KEEPS_NUMBERS: weakref.WeakSet[Processor] = weakref.WeakSet()

REDACTED = "[REDACTED]"
DEFAULT_MAX_VALUE_BYTES = 16 * 1024
#: Hard cap on the whole ``data`` object; beyond it ``data`` itself becomes a digest.
MAX_DATA_BYTES = 1024 * 1024
_MAX_DEPTH = 64
_REPR_LIMIT = 200

#: NaN and infinities have no JSON form (RFC 8259 §6); they become these strings.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

#: Regular expressions searched in a key after :func:`_key_words` (lower case, words joined by
#: "_"), so ``apiKey``, ``API-KEY`` and ``x_api_key`` all read ``api_key``.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    r"passw(or)?d",
    r"passphrase",
    r"(^|_)pwd($|_)",
    r"secret",
    r"(^|_)token($|_)",
    r"api_?key",
    r"authori[sz]ation",
    r"(^|_)auth($|_)",
    r"private_?key",
    r"access_?key",
    r"credential",
    r"(^|_)cookie($|_)",
    r"session_?(id|key)",
    r"(^|_)dsn($|_)",
    r"conn(ection)?_?str(ing)?",
)

# userinfo of a URL (RFC 3986 §3.2.1: "use of the format user:password ... is deprecated").
# People write passwords with "/" and "@" unescaped (``mysql://u:p/w@h``, ``pg://u:p@ss@h``),
# so the password runs to the LAST "@" of the word: masking a port or path too now and then
# is the price of never leaving the tail of a password behind.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:]*:)\S+(?=@)")
# HTTP credentials of the Authorization header schemes (RFC 9110 §11.6.2), however separated
# from the scheme word: "Bearer<TAB>t", "bearer:t", "token=t".
_AUTH_WORD = re.compile(r"(?i)bearer|basic|token")
_AUTH_HEADER = re.compile(
    r"(?i)\b(?P<pre>(?:bearer|basic|token)(?:\s+|\s*[:=]\s*))[A-Za-z0-9._~+/=-]{8,}"
)
# ``key=value`` and ``key: value`` inside text: libpq DSNs (``host=db password=x``), reprs
# (``Conn(password='x')``, ``{'password': 'x'}``, ``('PASSWORD', 'x')``), env dumps, headers.
# The key is judged by the same patterns as object keys; a value is a quoted string (to its
# closing quote, or to the end when a repr was cut), or a bare word (after ":" the rest of the
# line: a header value may hold spaces).
# (A key starts where a run of key characters starts, or after a "-" as in "--password=x",
# and is taken whole, atomically: no backtracking, so a long identifier costs one pass. The
# lookahead-and-backreference is the atomic group of Python < 3.11, which has no "*+".)
# Quotes may come escaped, JSON inside JSON: {\"password\": \"x\"}.
_KEY_VALUE = re.compile(
    r"""(?<![A-Za-z_.])(?=(?P<key>[A-Za-z_][A-Za-z_.-]*))(?P=key)"""
    r"""(?P<sep>(?:\\*["'])?[ \t]*[:=][ \t]*|\\*["'][ \t]*,[ \t]*)"""
    r"""(?P<value>\\+["'](?:(?!\\+["']).)*(?:\\+["'])?"""
    r"""|"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^\s,;&)}\]'"]+)"""
)
_QUOTE = re.compile(r"""\\*["']""")
_LINE_REST = re.compile(r"[^\r\n]*")
#: Keys of name/value objects whose "value" is the secret: Kubernetes env entries
#: (``{"name": "DB_PASSWORD", "value": …}``), AWS tags (``{"Key": …, "Value": …}``).
_PAIR_NAMES = (("name", "value"), ("key", "value"), ("Name", "Value"), ("Key", "Value"))
_NAME_KEYS = frozenset(name for name, _ in _PAIR_NAMES)
_VALUE_KEYS = frozenset(value for _, value in _PAIR_NAMES)


class Normalized(NamedTuple):
    """The normalized object and the lossy conversions made to reach it.

    A NamedTuple, immutable like a frozen dataclass but built several times faster: two are
    made for every record (data and subject)."""

    value: JSONObject
    issues: tuple[str, ...] = ()


def format_timestamp(when: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``; a naive datetime is taken as UTC.

    Raises ValueError or OverflowError for what is no point in time (``pandas.NaT``) or has
    none in UTC (year 1 at +05:00)."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    # Not strftime: "%Y" does not pad years before 1000 on glibc, and RFC 3339 needs 4 digits.
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T{when.hour:02d}:{when.minute:02d}:"
        f"{when.second:02d}.{when.microsecond:06d}Z"
    )


_second_cache: list[tuple[int, str]] = [(-1, "")]


def now_timestamp() -> str:
    """The current time as a record timestamp (what :func:`format_timestamp` writes)."""
    # strftime costs ~2 us a call; the text up to the seconds changes once a second.
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    cached_second, prefix = _second_cache[0]
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache[0] = (second, prefix)
    return f"{prefix}.{fraction:06d}Z"


def parse_timestamp(text: str) -> dt.datetime:
    """An RFC 3339 time (or a ``YYYY-MM-DD`` date: its midnight) as an aware datetime; one
    without an offset is taken as UTC. Raises ValueError for anything else.

    >>> parse_timestamp("2026-11-28T10:00:00.000000Z")
    datetime.datetime(2026, 11, 28, 10, 0, tzinfo=datetime.timezone.utc)
    """
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def normalize(
    payload: object,
    *,
    processors: Iterable[Processor] | None = None,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    strict: bool = False,
    path: str = "data",
    max_data_bytes: int = MAX_DATA_BYTES,
) -> Normalized:
    """:func:`to_json` then each processor (default: :func:`redact`)."""
    result = to_json(
        payload,
        max_value_bytes=max_value_bytes,
        strict=strict,
        path=path,
        max_data_bytes=max_data_bytes,
    )
    chain = (redact(),) if processors is None else processors
    return Normalized(process(result.value, chain, path), result.issues)


def process(value: JSONObject, processors: Iterable[Processor], path: str = "data") -> JSONObject:
    """Run ``processors`` over ``value`` (already JSON). A processor may return anything: what
    it returns is checked for NaN and ±Infinity (which records cannot hold, RFC 8785
    §3.2.2.3, and the record encoder no longer looks for), unless it is one of ours that
    only masks strings (:func:`redact`)."""
    for processor in processors:
        value = processor(value)
        if processor not in _KEEPS_NUMBERS and has_non_finite(value):
            raise InvalidRecordError(
                f"{path}: processor {getattr(processor, '__qualname__', processor)!r} "
                "returned NaN or Infinity, which a record cannot hold"
            )
    return value


def to_json(
    payload: object,
    *,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    strict: bool = False,
    path: str = "data",
    max_data_bytes: int = MAX_DATA_BYTES,
) -> Normalized:
    """Convert ``payload`` to a JSON object; a non-mapping becomes ``{"value": payload}``.

    Raises :class:`InvalidRecordError` with ``strict=True`` when any conversion is lossy.
    """
    issues: list[str] = []
    if type(payload) is dict or isinstance(payload, Mapping) or _is_structured(payload):
        value = _convert(payload, path, issues, 0, set())
    else:
        issues.append(f"{path}: a {type(payload).__name__} is not an object; wrapped as value")
        value = {"value": _convert(payload, f"{path}.value", issues, 0, set())}
    assert isinstance(value, dict)
    value = _fit(value, path, max_value_bytes, issues, max_data_bytes)
    if strict and issues:
        raise InvalidRecordError("lossy conversion refused (strict=True): " + "; ".join(issues))
    return Normalized(value, tuple(issues))


def fit(
    value: JSONObject, *, max_value_bytes: int, strict: bool = False, path: str = "data"
) -> Normalized:
    """The size limits of :func:`to_json` applied to a value that is JSON already (a record's
    data after a privacy policy took out what it commits, which may be far larger)."""
    issues: list[str] = []
    value = _fit(value, path, max_value_bytes, issues)
    if strict and issues:
        raise InvalidRecordError("lossy conversion refused (strict=True): " + "; ".join(issues))
    return Normalized(value, tuple(issues))


def _is_structured(value: object) -> bool:
    # Objects that convert to a JSON object: dataclass instances and pydantic-style models.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True
    try:
        return callable(getattr(value, "model_dump", None))
    except Exception:  # noqa: BLE001 - a user's __getattr__ may raise anything: not a model
        return False


def _convert(value: Any, path: str, issues: list[str], depth: int, seen: set[int]) -> JSON:
    # Exact type checks first: they are the common case and must stay cheap on the hot path.
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]  # surrogates: found by _fit, once
    if value is None or kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return (
            value
            if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
            else _big_int(value, path, issues)
        )
    if kind is float:
        if math.isfinite(value):
            return value  # type: ignore[no-any-return]
        issues.append(f"{path}: {value!r} has no JSON form; recorded as a string")
        return NON_FINITE[repr(value)]
    if depth >= _MAX_DEPTH:
        issues.append(f"{path}: nested deeper than {_MAX_DEPTH}; cut")
        return "[depth limit]"
    try:
        if kind is dict or isinstance(value, (Mapping, list, tuple, Set)) or _is_structured(value):
            if id(value) in seen:
                issues.append(f"{path}: refers to itself; cut")
                return "[cycle]"
            seen.add(id(value))
            try:
                return _convert_container(value, path, issues, depth, seen)
            finally:
                seen.discard(id(value))
        return _convert_scalar(value, path, issues, depth, seen)
    # User code runs here (__str__, model_dump, tolist, a Mapping's __getitem__, ...) and may
    # raise anything: the value is recorded as what it is and what it raised, the conversion
    # is an issue like any other lossy one (logged and counted; strict=True refuses it).
    except Exception as exc:  # noqa: BLE001
        issues.append(
            f"{path}: converting a {type(value).__qualname__} raised "
            f"{type(exc).__qualname__}; recorded as its repr"
        )
        return {"type": _type_name(value), "repr": _safe_repr(value), "error": _describe(exc)}


def _convert_container(
    value: Any, path: str, issues: list[str], depth: int, seen: set[int]
) -> JSON:
    if type(value) is dict or isinstance(value, Mapping):
        out: JSONObject = {}
        converted: dict[str, object] | None = None  # names made from non-str keys -> the key
        for key, item in value.items():
            # Inline fast path for the usual str key and JSON-ready scalar (record() hot path).
            if type(key) is str:
                name = key
                if converted is not None and name in converted:  # {1: …, "1": …}
                    _move_aside(out, converted, name, path, issues)
            else:
                name = _key(key, path, issues)
                if name in out:
                    name = _aside(out, name, key, path, issues)
                if converted is None:
                    converted = {}
                converted[name] = key
            kind = type(item)
            if (
                kind is str
                or kind is bool
                or item is None
                or (kind is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER)
            ):
                out[name] = item
            else:
                out[name] = _convert(item, f"{path}.{name}", issues, depth + 1, seen)
        return out
    if isinstance(value, (list, tuple)):
        return [_convert(v, f"{path}[{i}]", issues, depth + 1, seen) for i, v in enumerate(value)]
    if isinstance(value, Set):
        items = [_convert(v, f"{path}[]", issues, depth + 1, seen) for v in value]
        return sorted(items, key=_sort_key)  # sets have no order; canonical bytes do
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _convert_container(fields, path, issues, depth, seen)
    dumped = value.model_dump(mode="json")  # pydantic v2 models
    return _convert(dumped, path, issues, depth, seen)


def _convert_scalar(value: Any, path: str, issues: list[str], depth: int, seen: set[int]) -> JSON:
    if isinstance(value, enum.Enum):  # before int/str: IntEnum and StrEnum are both
        return _convert(value.value, path, issues, depth + 1, seen)
    if isinstance(value, bool):  # numpy.bool_ is not a bool; subclasses of bool do not exist
        return bool(value)
    if isinstance(value, int):  # int subclasses
        return _convert(int(value), path, issues, depth, seen)
    if isinstance(value, float):
        return _convert(float(value), path, issues, depth, seen)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dt.datetime):
        try:
            return format_timestamp(value)
        except (ValueError, OverflowError):  # pandas.NaT; an offset past year 1 or 9999
            issues.append(f"{path}: {_safe_repr(value)} is no point in time; recorded as text")
            return str(value)  # "NaT", as a NaN float becomes "NaN"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else NON_FINITE.get(str(value).lower(), "NaN")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return {"sha256": hashlib.sha256(raw).hexdigest(), "len": len(raw)}
    if isinstance(value, (uuid.UUID, PurePath)):
        return str(value)
    if _is_array_like(value):  # numpy scalars and arrays, without importing numpy
        plain = value.tolist()
        if type(plain) is not type(value):
            return _convert(plain, path, issues, depth + 1, seen)
        # numpy.longdouble (and clongdouble) have no Python type: tolist() returns them as is.
        # A real one becomes the nearest double, an issue only when that loses precision.
        number = float(value)
        if number != value:
            issues.append(f"{path}: {_type_name(value)} rounded to a double")
        return _convert(number, path, issues, depth, seen)
    issues.append(f"{path}: {type(value).__qualname__} is not JSON; recorded as its repr")
    return {"type": _type_name(value), "repr": _safe_repr(value)}


def _big_int(value: int, path: str, issues: list[str]) -> JSON:
    # Beyond I-JSON's range an integer is recorded exactly, as a decimal string; beyond
    # CPython's int-to-str limit (sys.get_int_max_str_digits, 4300 digits) as its digest.
    try:
        return str(value)
    except ValueError:
        raw = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
        issues.append(f"{path}: an integer of {value.bit_length()} bits; replaced by its digest")
        return {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bits": value.bit_length(),
            "truncated": True,
        }


def _is_array_like(value: object) -> bool:
    return hasattr(value, "dtype") and callable(getattr(value, "tolist", None))


def _key(key: object, path: str, issues: list[str]) -> str:
    try:
        if isinstance(key, str):
            return str(key)
        if isinstance(key, enum.Enum):
            return str(key.value)
        if key is None or isinstance(key, (bool, int, float, uuid.UUID, PurePath)):
            return str(key)
    except Exception as exc:  # noqa: BLE001 - a user's __str__ may raise anything
        issues.append(
            f"{path}: key of type {type(key).__qualname__} raised {type(exc).__qualname__}; "
            "recorded as its repr"
        )
        return _safe_repr(key)
    issues.append(f"{path}: key of type {type(key).__qualname__} recorded as its repr")
    return _safe_repr(key)


def _aside(out: JSONObject, name: str, key: object, path: str, issues: list[str]) -> str:
    """A free name for a non-str ``key`` whose text ``name`` another key holds already:
    ``"1 (int)"``. Both values are kept, and the record shows which key was which."""
    free = f"{name} ({type(key).__qualname__})"
    while free in out:
        free += "'"
    issues.append(
        f"{path}: keys {_safe_repr(key)} and {name!r} both read {name!r}; "
        f"the {type(key).__qualname__} key recorded as {free!r}"
    )
    return free


def _move_aside(
    out: JSONObject, converted: dict[str, object], name: str, path: str, issues: list[str]
) -> None:
    # A str key arrives after a non-str key took its text: the str key keeps its own name
    # (whatever the order), the converted one moves aside.
    key = converted.pop(name)
    free = _aside(out, name, key, path, issues)
    out[free] = out.pop(name)
    converted[free] = key


def _type_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _describe(exc: Exception) -> str:
    try:
        text = f"{type(exc).__qualname__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises too
        text = type(exc).__qualname__
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "..."


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    # A user's __repr__ may raise anything; the record must still be written.
    except Exception:  # noqa: BLE001
        return f"<{_type_name(value)} with a failing __repr__>"
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "..."


def _sort_key(item: JSON) -> bytes:
    try:
        return canonical_bytes(item)
    except InvalidRecordError:
        return orjson.dumps(item, default=str)


def _fit(
    value: JSONObject,
    path: str,
    limit: int,
    issues: list[str],
    max_data_bytes: int = MAX_DATA_BYTES,
) -> JSONObject:
    """Repair invalid Unicode, then replace every value larger than ``limit`` by its digest."""
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # lone surrogates (e.g. from surrogateescape decoding): U+FFFD them
        value = _repair_unicode(value, path, issues)  # type: ignore[assignment]
        size = len(orjson.dumps(value))
    if size <= limit:
        return value  # the common case: one serialization, nothing to shrink
    value = {k: _shrink(v, f"{path}.{k}", limit, issues) for k, v in value.items()}
    if len(orjson.dumps(value)) > max_data_bytes:
        issues.append(f"{path}: larger than {max_data_bytes} bytes; replaced by its digest")
        return _digest_of_json(value)
    return value


def _shrink(value: JSON, path: str, limit: int, issues: list[str]) -> JSON:
    if isinstance(value, str):
        if len(value) * 4 <= limit:  # at most 4 UTF-8 bytes a character: surely small enough
            return value
        raw = value.encode("utf-8")
        if len(raw) <= limit:
            return value
        issues.append(f"{path}: {len(raw)} bytes exceed {limit}; replaced by its digest")
        return {"sha256": hashlib.sha256(raw).hexdigest(), "len": len(raw), "truncated": True}
    if not isinstance(value, (dict, list)) or len(orjson.dumps(value)) <= limit:
        return value
    shrunk: JSON
    if isinstance(value, dict):
        shrunk = {k: _shrink(v, f"{path}.{k}", limit, issues) for k, v in value.items()}
    else:
        shrunk = [_shrink(v, f"{path}[{i}]", limit, issues) for i, v in enumerate(value)]
    if len(orjson.dumps(shrunk)) <= limit:
        return shrunk
    issues.append(f"{path}: larger than {limit} bytes; replaced by its digest")
    return _digest_of_json(shrunk)


def _digest_of_json(value: JSON) -> JSONObject:
    raw = canonical_bytes(value)
    return {"sha256": hashlib.sha256(raw).hexdigest(), "len": len(raw), "truncated": True}


def _repair_unicode(value: JSON, path: str, issues: list[str]) -> JSON:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            issues.append(f"{path}: invalid Unicode (lone surrogate) replaced by U+FFFD")
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {
            _repair_unicode(k, path, issues): _repair_unicode(v, f"{path}.{k}", issues)  # type: ignore[misc]
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_repair_unicode(v, f"{path}[{i}]", issues) for i, v in enumerate(value)]
    return value


def _key_words(key: str) -> str:
    # "apiKey" -> "api_key", "X-Api-Key" -> "x_api_key"
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower())


def redact(
    patterns: Sequence[str] = DEFAULT_REDACT_KEYS, *, credentials_in_strings: bool = True
) -> Processor:
    """A processor that keeps secrets out of records, in one walk of the data:

    - the value of every key matching one of ``patterns`` (regular expressions searched in the
      key's lower-case words joined by ``_``: ``apiKey`` reads ``api_key``) becomes
      ``"[REDACTED]"``, at any depth;
    - the second member of a pair ``[key, value]`` (a list of pairs, an argument vector
      ``["--password", "x"]``) and the ``value`` of a ``{"name": key, "value": …}`` object
      whose key matches, likewise;
    - with ``credentials_in_strings``, inside every string: the password of a URL's userinfo
      (``postgresql://user:pw@host``, up to the last ``@`` of the word), HTTP
      ``Bearer``/``Basic``/``Token`` credentials (after a space, a tab, ``:`` or ``=``), and the
      value of each ``key=value`` / ``key: value`` / ``'key', 'value'`` whose key matches
      (libpq DSNs, reprs, headers, environment dumps).

    The same processor runs over ``data``, ``subject`` and ``actor`` (see
    :class:`~audit_core.AuditTrail`); identifiers such as ``dag_id`` stay readable.
    """
    matcher = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    cache: dict[str, bool] = {}

    def is_secret(key: str) -> bool:
        hit = cache.get(key)
        if hit is None:
            hit = matcher is not None and matcher.search(_key_words(key)) is not None
            if len(cache) < 4096:  # keys repeat across records; bound the memory anyway
                cache[key] = hit
        return hit

    # Strings found to hold no credential: run ids, task ids, states repeat record after
    # record, and a set lookup is cheaper than the regular expressions. Only clean strings
    # are kept (no secret lingers here), short ones, and the set is emptied when full.
    clean: set[str] = set()

    def scrub(text: str) -> str:
        if text in clean:
            return text
        original = text
        # Substring tests first: the regular expressions run only on candidate strings.
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<pre>{REDACTED}", text)
        if ("=" in text or ":" in text or " " in text or "\t" in text) and _AUTH_WORD.search(text):
            text = _AUTH_HEADER.sub(rf"\g<pre>{REDACTED}", text)
        if "=" in text or ":" in text or "," in text:
            text = mask_pairs(text)
        if text is original and len(text) <= 256:
            if len(clean) >= 4096:
                clean.clear()
            clean.add(text)
        return text

    def mask_pairs(text: str) -> str:
        out: list[str] = []
        pos = scan = 0
        named = False  # the last pair named a secret: "{'name': 'DB_PASSWORD', 'value': 'x'}"
        while (match := _KEY_VALUE.search(text, scan)) is not None:
            key = match["key"]
            if not (is_secret(key) or (named and key in _VALUE_KEYS)):
                named = key in _NAME_KEYS and is_secret(match["value"].strip("\\\"'"))
                # A value may hold pairs itself ('note=password=x'); a secret's name does not.
                scan = match.end() if named else match.start("value")
                continue
            named = False
            if text.startswith(REDACTED, match.start("value")):  # masked already ("token=…")
                scan = match.start("value") + len(REDACTED)
                continue
            value = match["value"]
            end = match.end()
            quote = _QUOTE.match(value)
            if quote is not None:  # keep the quotes, so the text still reads as it did
                mark = quote[0]
                closed = len(value) > len(mark) and value.endswith(mark)
                masked = mark + REDACTED + (mark if closed else "")
            else:
                masked = REDACTED
                if ":" in match["sep"]:  # a header-like value runs to the end of the line
                    rest = _LINE_REST.match(text, end)
                    end = end if rest is None else rest.end()
            out.append(f"{text[pos : match.start()]}{match['key']}{match['sep']}{masked}")
            pos = scan = end
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def walk(value: JSON) -> JSON:
        # Runs on every record: dispatch on exact types, recurse only into containers.
        kind = type(value)
        if kind is str:
            return scrub(value) if credentials_in_strings else value  # type: ignore[arg-type]
        if kind is dict:
            return walk_object(value)  # type: ignore[arg-type]
        if kind is list:
            return walk_list(value)  # type: ignore[arg-type]
        return value

    def walk_list(items: list[JSON]) -> list[JSON]:
        out = [walk(v) for v in items]
        for i, item in enumerate(out):
            kind = type(item)
            # A key/value pair list (``[["PASSWORD", "x"]]``, a dict's items, header tuples):
            # the second member of a pair whose first names a secret.
            if kind is list and len(item) == 2 and type(item[0]) is str:  # type: ignore[arg-type,index]
                if is_secret(item[0]):  # type: ignore[index]
                    out[i] = [item[0], REDACTED]  # type: ignore[index]
            # An argument vector: ["--password", "x"] (``--password=x`` is a pair in text).
            elif kind is str and item[:1] == "-" and i + 1 < len(out) and is_secret(item):  # type: ignore[index,arg-type]
                out[i + 1] = REDACTED
        return out

    def walk_object(data: JSONObject) -> JSONObject:
        out: JSONObject = {}
        for key, value in data.items():
            if is_secret(key):
                out[key] = REDACTED
            elif type(value) is str:
                out[key] = scrub(value) if credentials_in_strings else value
            elif type(value) is dict:
                out[key] = walk_object(value)
            elif type(value) is list:
                out[key] = walk_list(value)
            else:
                out[key] = value
        if "value" in out or "Value" in out:
            for name_key, value_key in _PAIR_NAMES:
                name = out.get(name_key)
                if type(name) is str and value_key in out and is_secret(name):
                    out[value_key] = REDACTED
        return out

    def processor(data: JSONObject) -> JSONObject:
        return walk_object(data)

    _KEEPS_NUMBERS.add(processor)
    return processor
