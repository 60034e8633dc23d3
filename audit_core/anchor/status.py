"""What a ledger says each configured witness cosigned of a chain: for ``health``.

>>> w = WitnessHealth(size=None, cosigned_at=None, cosigned_age_s=None, lag=3, missed_age_s=500)
>>> w.problem("w1 (0a1b2c3d)", 3, 120.0)[:60]
'witness w1 (0a1b2c3d) has cosigned nothing of 3 records; wai'

The cosignatures are read from the ledger (c2sp.org/tlog-cosignature lines stored beside the
chain by :mod:`audit_core.anchor.periodic`), so any process sees them, not only the one that
asked the witness. A witness is late when it cosigned nothing while the chain's first record
is older than the allowed wait, or missed a checkpoint signed longer ago than that.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from audit_core._cosign import parse_cosignature
from audit_core._normalize import format_timestamp, parse_timestamp
from audit_core.anchor.client import WitnessEndpoint
from audit_core.anchor.periodic import cosigned_sizes
from audit_core.ledgers import LedgerReader

__all__ = ["WitnessHealth", "witness_status"]


@dataclass(frozen=True, slots=True)
class WitnessHealth:
    """One configured witness on one chain, as the ledger's stored cosignatures say."""

    size: int | None  # the largest size it cosigned; None: none
    cosigned_at: str | None  # that cosignature's own timestamp (RFC 3339)
    cosigned_age_s: float | None
    lag: int  # records it has not cosigned
    missed_age_s: float | None  # age of the oldest checkpoint (or record) it has not cosigned

    def problem(self, witness: str, records: int, max_wait_s: float) -> str | None:
        """What is wrong when the witness has kept something waiting over ``max_wait_s``."""
        wait = self.missed_age_s
        if not records or wait is None or wait <= max_wait_s:
            return None
        what = "nothing" if self.size is None else f"up to size {self.size}"
        return (
            f"witness {witness} has cosigned {what} of {records} records; waiting {wait:.0f}s "
            f"(max {max_wait_s:.0f}s, two anchor intervals): is it down, or is no component "
            "running an anchor?"
        )


def _age(ts: str | None, now: dt.datetime) -> float | None:
    if ts is None:
        return None
    try:
        return round((now - parse_timestamp(ts)).total_seconds(), 3)
    except ValueError:
        return None


def witness_status(
    ledger: LedgerReader,
    chain: str,
    records: int,
    witness: WitnessEndpoint,
    now: dt.datetime,
    first_record_ts: str | None,
) -> WitnessHealth:
    """What ``witness`` cosigned of ``chain`` (``records`` long, its first record written at
    ``first_record_ts``) according to ``ledger``, as of ``now``."""
    key = witness.key
    theirs = cosigned_sizes(ledger.cosignatures(chain), key.name, key.key_id)
    size = max((c.size for c in theirs), default=None)
    stamps = [parse_cosignature(c.line).timestamp for c in theirs if c.size == size]
    at = None
    try:
        if stamps:
            at = format_timestamp(dt.datetime.fromtimestamp(max(stamps), dt.timezone.utc))
    except (OverflowError, OSError, ValueError):  # a timestamp past year 9999: shown as none
        at = None
    if size is None:  # nothing cosigned: the first record has waited since it was written
        missed = first_record_ts if records else None
    else:
        later = [c.created for c in ledger.checkpoints(chain) if c.size > size]
        missed = later[0] if later else None
    return WitnessHealth(
        size=size,
        cosigned_at=at,
        cosigned_age_s=_age(at, now),
        lag=max(records - (size or 0), 0),
        missed_age_s=_age(missed, now),
    )
