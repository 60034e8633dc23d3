"""Payload normalization and redaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import importlib.util
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import REDACTED, canonical_bytes, normalize, redact
from audit_core._normalize import Normalized, to_json
from audit_core.errors import InvalidRecordError
from tests.core._values import NaTLike


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Params:
    lr: float
    api_key: str


class FakeModel:
    """Duck-typed pydantic v2 model."""

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return {"name": "churn", "when": dt.date(2026, 1, 2) if mode == "python" else "2026-01-02"}


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr explodes")


class TestToJson:
    """to_json(): Python values to the RFC 8785-safe JSON subset."""

    def test_lossless_conversions(self) -> None:
        """Datetimes, Decimal, bytes, sets, Enum, dataclasses, models, Path and UUID convert."""
        uid = uuid.UUID(int=7)
        payload = {
            "aware": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
            "date": dt.date(2026, 1, 2),
            "delta": dt.timedelta(minutes=2),
            "dec": Decimal("1.10"),
            "raw": b"\xff\x00",
            "tags": {"b", "a", "c"},
            "color": Color.RED,
            "level": Level.HIGH,
            "params": Params(lr=0.1, api_key="k"),
            "model": FakeModel(),
            "path": PurePosixPath("/data/train.csv"),
            "uid": uid,
            "tuple": (1, 2),
            "big": 2**60,
        }
        result = to_json(payload)
        assert () == result.issues
        assert {
            "aware": "2026-01-02T01:04:05.000006Z",
            "naive": "2026-01-02T03:04:05.000000Z",
            "date": "2026-01-02",
            "delta": 120.0,
            "dec": "1.10",
            "raw": {"sha256": hashlib.sha256(b"\xff\x00").hexdigest(), "len": 2},
            "tags": ["a", "b", "c"],
            "color": "red",
            "level": 3,
            "params": {"lr": 0.1, "api_key": "k"},
            "model": {"name": "churn", "when": "2026-01-02"},
            "path": "/data/train.csv",
            "uid": str(uid),
            "tuple": [1, 2],
            "big": str(2**60),
        } == result.value

    def test_non_finite_numbers_become_strings(self) -> None:
        """NaN and infinities become documented strings and are reported as lossy."""
        result = to_json({"a": float("nan"), "b": float("inf"), "c": float("-inf")})
        assert {"a": "NaN", "b": "Infinity", "c": "-Infinity"} == result.value
        assert 3 == len(result.issues)

    def test_unknown_type_becomes_typed_repr(self) -> None:
        """An unknown object is recorded as its type and repr, and reported."""
        result = to_json({"x": Opaque(), "y": BadRepr()})
        assert {"type": f"{__name__}.Opaque", "repr": "<Opaque thing>"} == result.value["x"]
        assert "failing __repr__" in str(result.value["y"])
        assert 2 == len(result.issues)

    def test_invalid_unicode_is_replaced(self) -> None:
        """Lone surrogates (undecodable bytes) become U+FFFD instead of failing."""
        text = b"caf\xe9".decode("utf-8", "surrogateescape")
        result = to_json({"name": text, text: 1})
        assert {"name": "caf\ufffd", "caf\ufffd": 1} == result.value
        assert result.issues
        canonical_bytes(result.value)  # now encodable

    def test_oversized_values_are_digested(self) -> None:
        """A value over the limit becomes {sha256, len, truncated}; small siblings stay."""
        big = "x" * 20_000
        result = to_json({"big": big, "small": "ok", "nested": {"blob": ["y" * 30_000]}})
        assert {
            "sha256": hashlib.sha256(big.encode()).hexdigest(),
            "len": 20_000,
            "truncated": True,
        } == result.value["big"]
        assert "ok" == result.value["small"]
        blob = result.value["nested"]["blob"][0]  # type: ignore[index,call-overload]
        assert True is blob["truncated"]
        assert len(canonical_bytes(result.value)) < 2_000

    def test_cycles_and_depth_are_cut(self) -> None:
        """Self-referencing and absurdly deep structures are cut, not recursed forever."""
        loop: dict[str, Any] = {}
        loop["self"] = loop
        deep: list[Any] = []
        cur = deep
        for _ in range(200):
            cur.append([])
            cur = cur[0]
        result = to_json({"loop": loop, "deep": deep})
        assert "[cycle]" == result.value["loop"]["self"]  # type: ignore[index,call-overload]
        assert len(result.issues) == 2

    def test_non_mapping_payload_is_wrapped(self) -> None:
        """A list or scalar payload is recorded under 'value'."""
        assert {"value": [1, 2]} == to_json([1, 2]).value

    def test_strict_refuses_lossy_conversion(self) -> None:
        """strict=True raises InvalidRecordError instead of converting NaN."""
        with pytest.raises(InvalidRecordError, match=r"NaN|nan"):
            to_json({"loss": float("nan")}, strict=True)

    def test_strict_accepts_lossless_conversion(self) -> None:
        """strict=True still accepts datetimes, Decimal and friends."""
        assert {"d": "1.5"} == to_json({"d": Decimal("1.5")}, strict=True).value

    def test_sets_are_deterministic(self) -> None:
        """Mixed-type sets get one canonical order whatever the insertion order."""
        a = to_json({"s": {3, "a", 1.5, None}}).value
        b = to_json({"s": {None, 1.5, "a", 3}}).value
        assert a == b

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats()
            | st.text()
            | st.binary(max_size=8)
            | st.datetimes(timezones=st.timezones())
            | st.decimals(),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=12,
        )
    )
    def test_anything_becomes_canonical_json(self, payload: object) -> None:
        """Whatever goes in, the result encodes, and matches the rfc8785 reference."""
        value = normalize({"p": payload}).value
        assert rfc8785.dumps(value) == canonical_bytes(value)


class TestRedaction:
    """Secrets never enter the chain."""

    @pytest.mark.parametrize(
        "key",
        [
            "password",
            "db_password",
            "PASSWD",
            "client_secret",
            "token",
            "access_token",
            "apiKey",
            "X-Api-Key",
            "Authorization",
            "private_key",
            "aws_access_key_id",
            "credentials",
            "sessionId",
        ],
    )
    def test_secret_keys_are_redacted(self, key: str) -> None:
        """Keys that name secrets, in any case or separator style, are replaced."""
        assert {key: REDACTED} == normalize({key: "value"}).value

    @pytest.mark.parametrize("key", ["tokenizer", "max_tokens", "num_tokens", "author", "keyword"])
    def test_ordinary_keys_are_kept(self, key: str) -> None:
        """ML-ish keys that merely contain a secret word are not redacted."""
        assert {key: "v"} == normalize({key: "v"}).value

    def test_nested_and_in_lists(self) -> None:
        """Redaction reaches nested objects and objects inside lists."""
        data = {"conn": {"password": "x", "host": "db"}, "hooks": [{"token": "t", "id": 1}]}
        assert {
            "conn": {"password": REDACTED, "host": "db"},
            "hooks": [{"token": REDACTED, "id": 1}],
        } == normalize(data).value

    def test_dataclass_fields_are_redacted(self) -> None:
        """A secret field of a dataclass payload is redacted after conversion."""
        assert {"p": {"lr": 0.1, "api_key": REDACTED}} == normalize({"p": Params(0.1, "k")}).value

    def test_custom_patterns(self) -> None:
        """A configured pattern list replaces the default one."""
        processor = redact([r"(^|_)ssn($|_)"])
        assert {"ssn": REDACTED, "password": "p"} == processor({"ssn": "1", "password": "p"})

    def test_credentials_in_strings(self) -> None:
        """URL passwords and bearer tokens inside strings are masked."""
        out = redact(())(
            {
                "dsn_url": "postgresql://etl:hunter2@db:5432/prod",
                "msg": "401 for header Bearer abcdefghijklmnop",
                "plain": "http://example.invalid/path",
            }
        )
        assert "postgresql://etl:[REDACTED]@db:5432/prod" == out["dsn_url"]
        assert "401 for header Bearer [REDACTED]" == out["msg"]
        assert "http://example.invalid/path" == out["plain"]


class TestHostileInput:
    """Inputs meant to break a naive serializer are recorded, never raised."""

    def test_integer_beyond_str_conversion_limit(self) -> None:
        """An integer too large for str() (CPython's 4300-digit limit) becomes a digest."""
        result = to_json({"x": 10**5000, "y": 2**60})
        assert True is result.value["x"]["truncated"]  # type: ignore[index,call-overload]
        assert str(2**60) == result.value["y"]
        assert 1 == len(result.issues)

    def test_huge_list_is_digested(self) -> None:
        """A list of a million numbers is replaced by its digest, not recorded whole."""
        result = to_json({"xs": list(range(1_000_000))})
        assert True is result.value["xs"]["truncated"]  # type: ignore[index,call-overload]


class RaisingStr(str):
    """A str subclass whose __str__ raises (to_json calls str() on str subclasses)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ explodes")


class RaisingModel:
    """A pydantic-style model whose model_dump raises."""

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        raise ValueError("model_dump explodes")


class RaisingArray:
    """A numpy-style array whose tolist raises."""

    dtype = "float64"

    def tolist(self) -> list[float]:
        raise MemoryError("tolist explodes")


class RaisingMapping(Mapping[str, int]):
    """A Mapping whose __getitem__ raises."""

    def __getitem__(self, key: str) -> int:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["a"])

    def __len__(self) -> int:
        return 1


class LongDoubleLike:
    """Behaves as numpy.longdouble does: tolist() returns it unchanged (Python has no type)."""

    dtype = "float128"

    def __init__(self, value: Fraction) -> None:
        self.value = value

    def tolist(self) -> LongDoubleLike:
        return self

    def __float__(self) -> float:
        return float(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (int, float)) and Fraction(other) == self.value

    __hash__ = None  # type: ignore[assignment]


def _nats() -> list[object]:
    """NaT stand-ins: the look-alike always, pandas.NaT where pandas is installed."""
    found: list[object] = [NaTLike()]
    if importlib.util.find_spec("pandas") is not None:
        import pandas as pd

        found.append(pd.NaT)
    return found


def _longdoubles() -> list[tuple[object, object]]:
    """(long double of 1.5, long double of 1/3) pairs; numpy's own where it is installed."""
    found: list[tuple[object, object]] = [
        (LongDoubleLike(Fraction(3, 2)), LongDoubleLike(Fraction(1, 3)))
    ]
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        found.append((np.longdouble(1.5), np.longdouble(1) / np.longdouble(3)))
    return found


class TestEdgeValues:
    """to_json() on values that used to escape or vanish: every one recorded or refused."""

    def test_colliding_keys_are_both_kept(self) -> None:
        """{1: …, "1": …} keeps both values, the str key under its own name, whatever the order."""
        for payload in ({1: "int", "1": "str"}, {"1": "str", 1: "int"}):
            result = to_json(payload)
            assert {"1": "str", "1 (int)": "int"} == result.value
            assert 1 == len(result.issues)

    def test_colliding_keys_raise_under_strict(self) -> None:
        """strict=True refuses a payload whose keys collide after conversion."""
        with pytest.raises(InvalidRecordError, match="both read"):
            to_json({1: "int", "1": "str"}, strict=True)

    @pytest.mark.parametrize(
        "value",
        [RaisingStr("x"), RaisingModel(), RaisingArray(), RaisingMapping()],
        ids=["__str__", "model_dump", "tolist", "__getitem__"],
    )
    def test_user_object_errors_are_converted(self, value: object) -> None:
        """What a user object raises is recorded (type, repr, error) and reported."""
        result = to_json({"x": value})
        recorded = result.value["x"]
        assert isinstance(recorded, dict)
        assert ["error", "repr", "type"] == sorted(recorded)
        assert 1 == len(result.issues)
        assert "raised" in result.issues[0]

    @pytest.mark.parametrize(
        "value",
        [RaisingStr("x"), RaisingModel(), RaisingArray(), RaisingMapping()],
        ids=["__str__", "model_dump", "tolist", "__getitem__"],
    )
    def test_user_object_errors_raise_under_strict(self, value: object) -> None:
        """strict=True turns what a user object raises into InvalidRecordError."""
        with pytest.raises(InvalidRecordError):
            to_json({"x": value}, strict=True)

    def test_raising_key_is_converted(self) -> None:
        """A key whose __str__ raises is recorded as its repr and reported."""
        result = to_json({RaisingStr("k"): 1})
        assert {"'k'": 1} == result.value
        assert 1 == len(result.issues)

    @pytest.mark.parametrize("nat", _nats(), ids=lambda v: type(v).__name__)
    def test_nat_is_recorded_as_text(self, nat: object) -> None:
        """pandas.NaT becomes "NaT" (as NaN becomes "NaN"), reported; strict refuses it."""
        result = to_json({"when": nat})
        assert {"when": "NaT"} == result.value
        assert 1 == len(result.issues)
        with pytest.raises(InvalidRecordError):
            to_json({"when": nat}, strict=True)

    @pytest.mark.parametrize(("exact", "inexact"), _longdoubles())
    def test_longdouble_becomes_a_double(self, exact: object, inexact: object) -> None:
        """numpy.longdouble is recorded as the nearest double; an issue only if inexact."""
        assert Normalized({"x": 1.5}) == to_json({"x": exact}, strict=True)
        result = to_json({"x": inexact})
        assert 1 / 3 == result.value["x"]
        assert 1 == len(result.issues)

    def test_early_years_have_four_digits(self) -> None:
        """Datetimes before year 1000 keep RFC 3339's four-digit year."""
        assert {"d": "0042-01-02T00:00:00.000000Z"} == to_json({"d": dt.datetime(42, 1, 2)}).value


class TestCredentialsInText:
    """redact() masks credentials in every text shape they take, keeping the rest readable."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("postgresql://etl:ab/cd@db/prod", "postgresql://etl:[REDACTED]@db/prod"),
            ("mysql://etl:ab@cd@db/prod", "mysql://etl:[REDACTED]@db/prod"),
            ("Authorization: Bearer\tabcdefghijk", "Authorization: [REDACTED]"),
            ("bearer:abcdefghijk", "bearer:[REDACTED]"),
            ("host=db password=hunter2 dbname=x", "host=db password=[REDACTED] dbname=x"),
            ("host=db password='a b' port=1", "host=db password='[REDACTED]' port=1"),
            ("Conn(password='hunter2', host='db')", "Conn(password='[REDACTED]', host='db')"),
            ("{'password': 'hunter2'}", "{'password': '[REDACTED]'}"),
            ("[['PASSWORD', 'hunter2']]", "[['PASSWORD', '[REDACTED]']]"),
            ('{"api_key": "hunter2"}', '{"api_key": "[REDACTED]"}'),
            ("secret: hunter2 hunter3\nnext", "secret: [REDACTED]\nnext"),
            ("note='password=hunter2'", "note='password=[REDACTED]'"),
            ("PGPASSWORD=hunter2 psql", "PGPASSWORD=[REDACTED] psql"),
            ("cut repr(password='hunter2", "cut repr(password='[REDACTED]"),
            ("auth failed token=abcdefghijk", "auth failed token=[REDACTED]"),
            ("psql --password=hunter2 -h db", "psql --password=[REDACTED] -h db"),
            ("password=ab\\cd x", "password=[REDACTED] x"),
            ('{\\"password\\": \\"hunter2\\"}', '{\\"password\\": \\"[REDACTED]\\"}'),
            (
                "{'name': 'DB_PASSWORD', 'value': 'hunter2'}",
                "{'name': 'DB_PASSWORD', 'value': '[REDACTED]'}",
            ),
        ],
    )
    def test_credentials_are_masked(self, text: str, expected: str) -> None:
        """Passwords and tokens inside text are masked, whatever separates them."""
        assert {"m": expected} == redact()({"m": text})

    @pytest.mark.parametrize(
        "text",
        [
            "scheduled__2026-11-28T10:00:00+00:00",
            "tokenizer=bert max_tokens=5",
            "rows=10, state=success",
            "http://example.invalid/path",
            "https://medium.com/@alice",
            "the bearer of good news",
        ],
    )
    def test_ordinary_text_is_kept(self, text: str) -> None:
        """Text that only looks a little like a credential is left as it is."""
        assert {"m": text} == redact()({"m": text})

    def test_pairs_are_masked_by_their_key(self) -> None:
        """Pair lists, argument vectors and name/value objects lose the secret's value only."""
        data: dict[str, Any] = {
            "pairs": [["PASSWORD", "x"], ["user", "etl"]],
            "argv": ["--password", "x", "--host", "db"],
            "env": [{"name": "DB_PASSWORD", "value": "x"}, {"name": "HOME", "value": "/root"}],
            "tags": [{"Key": "api_key", "Value": "x"}],
        }
        assert {
            "pairs": [["PASSWORD", REDACTED], ["user", "etl"]],
            "argv": ["--password", REDACTED, "--host", "db"],
            "env": [{"name": "DB_PASSWORD", "value": REDACTED}, {"name": "HOME", "value": "/root"}],
            "tags": [{"Key": "api_key", "Value": REDACTED}],
        } == redact()(data)


class TestProcessors:
    """What processors return is checked where the record encoder does not look."""

    def test_processor_returning_nan_is_refused(self) -> None:
        """A processor that puts NaN into a record raises InvalidRecordError naming it."""

        def add_loss(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "loss": float("nan")}

        with pytest.raises(InvalidRecordError, match="add_loss"):
            normalize({"a": 1}, processors=(add_loss,))

    def test_processor_returning_infinity_in_a_list_is_refused(self) -> None:
        """Infinity anywhere in a processor's output is refused, nested too."""
        with pytest.raises(InvalidRecordError, match="NaN or Infinity"):
            normalize({"a": 1}, processors=(lambda d: {"xs": [[1.0, float("-inf")]]},))

    def test_record_with_a_nan_processor_is_refused(self, trail: Any) -> None:
        """AuditTrail.record() refuses a record a processor made non-finite; nothing is
        written (a NaN must never become null on the chain)."""
        trail.processors = (lambda d: {**d, "x": float("inf")},)
        with pytest.raises(InvalidRecordError):
            trail.record("model.scored", {"auc": 0.9})
        assert trail.ledger.head("default") is None

    def test_redaction_keeps_finite_numbers(self) -> None:
        """The default processor passes numbers through unchanged."""
        assert {"auc": 0.91, "n": 3} == normalize({"auc": 0.91, "n": 3}).value
