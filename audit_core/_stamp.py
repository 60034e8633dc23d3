"""What a caller gives as a record's time, actor and trace context, in the form records hold.

>>> record_timestamp("2026-11-28T10:00:00+01:00")
'2026-11-28T09:00:00.000000Z'
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

from audit_core._normalize import (
    JSONObject,
    Normalized,
    Processor,
    format_timestamp,
    normalize,
    now_timestamp,
    process,
)
from audit_core._record import is_timestamp
from audit_core.errors import InvalidRecordError

__all__ = ["Actor", "actor_members", "record_timestamp", "trace_members"]

Actor = tuple[str, str] | Mapping[str, object]


def record_timestamp(ts: dt.datetime | str | None) -> str:
    """A record's ``ts`` from what a caller gave: now, a datetime, or RFC 3339 text, in the
    one form records hold; :class:`InvalidRecordError` otherwise."""
    if ts is None:
        return now_timestamp()
    if isinstance(ts, dt.datetime):
        try:
            return format_timestamp(ts)
        except (ValueError, OverflowError) as exc:  # pandas.NaT; year 1 at +05:00
            raise InvalidRecordError(f"timestamp {ts!r} is no point in time in UTC") from exc
    if type(ts) is str and is_timestamp(ts):
        return ts
    # Other RFC 3339 date-times (an offset, fewer or more fraction digits, "t", "z") are
    # converted; not the other ISO 8601 forms fromisoformat takes (a bare date, week dates,
    # no offset), nor digits other than ASCII ones.
    match = _RFC3339.fullmatch(ts) if isinstance(ts, str) else None
    if match is None:
        raise InvalidRecordError(f"timestamp {ts!r} is not RFC 3339 (2026-11-28T10:00:00Z)")
    # Rebuilt in the one form every fromisoformat reads (Python 3.10's takes only 3 or 6
    # fraction digits and no "Z"): microseconds, extra digits cut as format_timestamp cuts.
    date, clock, fraction, offset = match.groups()
    micros = (fraction or "")[:6].ljust(6, "0")
    text = f"{date}T{clock}.{micros}{'+00:00' if offset in ('Z', 'z') else offset}"
    try:
        return format_timestamp(dt.datetime.fromisoformat(text))
    except (ValueError, OverflowError) as exc:
        raise InvalidRecordError(f"timestamp {ts!r} is not a real date and time") from exc


#: RFC 3339 §5.6 ``date-time``, with §5.6's note allowing a space for the "T".
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def trace_members(trace: Mapping[str, str]) -> JSONObject:
    """A record's ``trace`` from a caller's mapping (which may raise anything)."""
    try:
        return dict(trace)
    except Exception as exc:  # a user's Mapping may raise anything
        raise InvalidRecordError(f"trace could not be read: {type(exc).__qualname__}") from exc


def actor_members(
    actor: Actor | None,
    configured: tuple[str, str],
    processors: Sequence[Processor],
    strict: bool,
) -> Normalized:
    """A record's ``actor``: the configured one for None, a ``(type, id)`` tuple, or any
    mapping, normalized and passed through ``processors`` (every field is untrusted)."""
    if actor is None:  # configured, not user input: the hot path stays a dict literal
        kind, ident = configured
        return Normalized({"type": kind, "id": ident})
    if isinstance(actor, tuple):
        try:
            kind, ident = (str(part) for part in actor)
        except Exception as exc:  # not two members; a user's __str__ raised
            raise InvalidRecordError(
                f"an actor tuple is (type, id): {type(exc).__qualname__}"
            ) from exc
        # Two strings already: only the processors (redaction) remain to run.
        return Normalized(process({"type": kind, "id": ident}, processors, "actor"))
    return normalize(actor, processors=processors, strict=strict, path="actor")
