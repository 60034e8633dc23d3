"""``workflow-audit health``: is the trail being written, signed, shipped and drained?

>>> parse_duration("90"), parse_duration("15m"), parse_duration("2h"), parse_duration("1d")
(90.0, 900.0, 7200.0, 86400.0)

It reads durable state only (the ledger, opened read-only as every reading command opens it,
and the spool directory), so it works for an auditor who cannot write, and from a cron job or
a Kubernetes probe. Per chain: records, age of the last record, the last checkpoint (size,
age) and the records signed by none yet, each sink's lag (records past its cursor) and each
source's cursor (the last source id ingested, :mod:`audit_core.sources`; or, for a source of
states such as ``source:airflow.permissions``, a digest held as an int). Then the spool's
backlog. ``--json`` prints :meth:`Health.to_json`.

With witnesses configured (``WORKFLOW_AUDIT_WITNESSES``, :mod:`audit_core.anchor`), per chain
and witness: the latest size it cosigned, its cosignature time and its lag in records, read
from the cosignatures stored in the ledger (so visible to any process, not only the one that
asked). A witness is a problem when it cosigned nothing for a chain whose first record is
older than two anchor intervals, or missed a checkpoint signed more than two intervals ago
(c2sp.org/tlog-witness: a log asks each witness to cosign each new checkpoint). The anchor
counters of a long-running component asking :func:`check` about itself (``anchor_*``,
``witness_*``) are shown when not zero; any ``witness_conflicts`` is a problem (a witness
holds a checkpoint this ledger does not extend).

Exit codes: 0 healthy; 4 unhealthy (a threshold below was passed: each problem is printed);
1 with ``--verify``, a chain failed verification (tampering, as for ``verify``); 2 usage error
or the ledger cannot be read. Thresholds (``--max-…``; a duration is seconds or ``30s``,
``15m``, ``2h``, ``1d``; ``off`` turns a check off):

=========================  =========  ======================================================
option                     default    unhealthy when
=========================  =========  ======================================================
``--max-record-age``       off        a chain's last record is older (a busy chain stopped)
``--max-checkpoint-age``   ``1h``     a record has waited longer for a signed checkpoint
``--max-lag``              ``10000``  a sink (a cursor in the ledger) is more records behind
``--max-spool``            ``0``      more records wait in the spool (the ledger was
                                      unreachable; the next writer or ``spool drain`` appends
                                      them); a corrupt spool line is always a problem
=========================  =========  ======================================================

With metrics configured (:mod:`audit_core.metrics`), the verdict is also published as gauges
before the command exits: ``workflow_audit.health.healthy`` (1/0),
``workflow_audit.health.valid`` (``--verify``: 1/0 per ``chain``),
``workflow_audit.health.records``, ``…last_record_age`` (s), ``…checkpoint_age`` (s),
``…unsigned_records`` (per ``chain``), ``…sink_lag`` (per ``chain`` and ``sink``),
``…witness_lag`` (per ``chain`` and ``witness``),
``…spool_records`` and ``…spool_corrupt``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from audit_core._chain import chain_ids, stored_size
from audit_core._normalize import format_timestamp, parse_timestamp
from audit_core._record import Record
from audit_core.anchor import WitnessEndpoint, parse_witnesses
from audit_core.anchor.status import WitnessHealth, witness_status
from audit_core.checkpoint import check_stored
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError, VerificationError
from audit_core.ledgers import LedgerReader
from audit_core.sources import CURSOR_PREFIX
from audit_core.spool import backlog, spool_dir

__all__ = [
    "ANCHOR_COUNTERS",
    "EXIT_UNHEALTHY",
    "GAUGES",
    "ChainHealth",
    "Health",
    "Thresholds",
    "WitnessHealth",
    "check",
    "parse_duration",
    "publish",
]

#: ``workflow-audit health``'s exit code for a trail that passed a threshold (the others are
#: every command's: audit_core.cli).
EXIT_UNHEALTHY = 4

#: The gauges the verdict is published as (``workflow_audit.<name>``) and their units: no
#: unit for counts and 1/0 flags (Prometheus would add ``_ratio`` to a gauge of unit ``1``).
GAUGES: Final[Mapping[str, str]] = {
    "health.healthy": "",
    "health.valid": "",
    "health.records": "",
    "health.unsigned_records": "",
    "health.last_record_age": "s",
    "health.checkpoint_age": "s",
    "health.sink_lag": "",
    "health.witness_lag": "",
    "health.spool_records": "",
    "health.spool_corrupt": "",
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h`` or ``1d``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(f"{text!r} is not a duration such as 90, 90s, 15m, 2h or 1d")
    return float(match[1]) * _UNIT_S[match[2]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Past these the trail is unhealthy (None: not checked)."""

    max_record_age_s: float | None = None
    max_checkpoint_age_s: float | None = 3600.0
    max_lag: int | None = 10_000
    max_spool: int | None = 0


#: This process's counters of :mod:`audit_core.anchor` that ``health`` shows.
ANCHOR_COUNTERS = (
    "anchor_checkpoints",
    "anchor_failures",
    "witness_cosignatures",
    "witness_failures",
    "witness_conflicts",
)


@dataclass(frozen=True, slots=True)
class ChainHealth:
    """One chain's state as the ledger holds it."""

    chain: str
    records: int
    last_record_ts: str | None
    last_record_age_s: float | None
    checkpoint_size: int | None  # None: no checkpoint
    checkpoint_created: str | None
    checkpoint_age_s: float | None
    unsigned: int  # records after the last checkpoint
    unsigned_age_s: float | None  # age of the oldest of them
    sinks: dict[str, int] = field(default_factory=dict)  # sink name -> lag in records
    # source name -> its cursor on this chain: the last source id ingested
    # (audit_core.sources), or a digest held as an int (a source of states)
    sources: dict[str, int] = field(default_factory=dict)
    valid: bool | None = None  # --verify's verdict; None when not verified
    # witness "name (keyid)" -> what it cosigned of this chain (configured witnesses only)
    witnesses: dict[str, WitnessHealth] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``health`` found, and its verdict."""

    checked_at: str
    ledger: str
    chains: list[ChainHealth]
    spool: dict[str, Any] | None  # SpoolBacklog fields and the directory; None: no spool
    problems: list[str]
    thresholds: Thresholds
    counters: dict[str, int] = field(default_factory=dict)  # this process's, when not zero

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        shape = {
            "healthy": self.healthy,
            "checked_at": self.checked_at,
            "ledger": self.ledger,
            "chains": [asdict(c) for c in self.chains],
            "spool": self.spool,
            "problems": self.problems,
            "thresholds": asdict(self.thresholds),
        }
        if self.counters:  # a component asking about itself (the command has none)
            shape["counters"] = self.counters
        return shape


def _age(ts: str | None, now: dt.datetime) -> float | None:
    if ts is None:
        return None
    try:
        when = parse_timestamp(ts)
    except ValueError:
        return None
    return round((now - when).total_seconds(), 3)


def _ts(ledger: LedgerReader, chain: str, seq: int) -> str | None:
    for stored in ledger.read(chain, seq, seq + 1):
        try:
            return Record.from_stored(stored).ts
        except VerificationError:  # an unreadable record: `verify` says why
            return None
    return None


def _chain(
    ledger: LedgerReader,
    chain: str,
    cursors: Sequence[str],
    now: dt.datetime,
    witnesses: Sequence[WitnessEndpoint] = (),
) -> ChainHealth:
    # Rows come from an untrusted file: a re-typed seq or checkpoint column raises the
    # verifier's error naming it (exit 1, INVALID), never a TypeError in the arithmetic.
    head = ledger.head(chain)
    records = stored_size(chain, head)
    last_ts = None if head is None else _ts(ledger, chain, records - 1)
    checkpoint = ledger.latest_checkpoint(chain)
    if checkpoint is not None:
        check_stored(chain, checkpoint)
    signed = 0 if checkpoint is None else checkpoint.size
    # A sink's lag only where it ships this chain (has a cursor in it): `ship --chain A`
    # must not make every other chain look behind.
    at = {name: ledger.get_cursor(name, chain) for name in cursors}
    # A source's cursor holds the source's own ids, not this chain's seqs: no lag to compute.
    sources = {
        n.removeprefix(CURSOR_PREFIX): i for n, i in at.items() if n.startswith(CURSOR_PREFIX)
    }
    unsigned = max(records - signed, 0)
    first_ts = _ts(ledger, chain, 0) if witnesses and records else None
    return ChainHealth(
        chain=chain,
        records=records,
        last_record_ts=last_ts,
        last_record_age_s=_age(last_ts, now),
        checkpoint_size=None if checkpoint is None else checkpoint.size,
        checkpoint_created=None if checkpoint is None else checkpoint.created,
        checkpoint_age_s=None if checkpoint is None else _age(checkpoint.created, now),
        unsigned=unsigned,
        unsigned_age_s=_age(_ts(ledger, chain, signed), now) if unsigned else None,
        sinks={
            name: records - 1 - seq
            for name, seq in at.items()
            if seq >= 0 and not name.startswith(CURSOR_PREFIX)
        },
        sources={name: i for name, i in sources.items() if i >= 0},
        witnesses={
            w.key.describe(): witness_status(ledger, chain, records, w, now, first_ts)
            for w in witnesses
        },
    )


def _spool(config: AuditConfig, directory: Path | None) -> dict[str, Any]:
    where = directory if directory is not None else spool_dir(config)
    return {"directory": str(where), **asdict(backlog(where))}


def _problems(
    h: list[ChainHealth],
    spool: dict[str, Any] | None,
    t: Thresholds,
    witness_wait_s: float = 120.0,
    counters: Mapping[str, int] | None = None,
) -> list[str]:
    out = []
    for c in h:
        name = f"chain {c.chain!r}"
        if not c.records:  # only a chain named with --chain can have none: deleted?
            out.append(f"{name}: no records")
        if c.valid is False:
            out.append(f"{name}: verification failed (run `workflow-audit verify`)")
        if c.records and c.last_record_ts is None:
            out.append(f"{name}: the last record is unreadable (run `workflow-audit verify`)")
        age = c.last_record_age_s
        if t.max_record_age_s is not None and age is not None and age > t.max_record_age_s:
            out.append(f"{name}: last record {age:.0f}s old (max {t.max_record_age_s:.0f}s)")
        wait = c.unsigned_age_s
        if (
            t.max_checkpoint_age_s is not None
            and wait is not None
            and wait > t.max_checkpoint_age_s
        ):
            out.append(
                f"{name}: {c.unsigned} record(s) after the last checkpoint, the oldest "
                f"{wait:.0f}s old (max {t.max_checkpoint_age_s:.0f}s); is a signing key set?"
            )
        for sink, lag in c.sinks.items():
            if t.max_lag is not None and lag > t.max_lag:
                out.append(f"{name}: sink {sink} is {lag} records behind (max {t.max_lag})")
        out += [
            f"{name}: {problem}"
            for witness, w in c.witnesses.items()
            if (problem := w.problem(witness, c.records, witness_wait_s))
        ]
    if counters and counters.get("witness_conflicts"):
        out.append(
            f"{counters['witness_conflicts']} witness conflict(s) in this process: a witness "
            "holds a checkpoint this ledger does not extend (see the log; run `verify --witness`)"
        )
    if spool is not None:
        if spool["corrupt"]:
            out.append(f"spool {spool['directory']}: {spool['corrupt']} corrupt line(s)")
        if t.max_spool is not None and spool["records"] > t.max_spool:
            out.append(
                f"spool {spool['directory']}: {spool['records']} record(s) wait for the "
                f"ledger (max {t.max_spool}); run `workflow-audit spool drain`"
            )
    return out


def check(
    ledger: LedgerReader,
    *,
    name: str,
    chains: Sequence[str] | None = None,
    thresholds: Thresholds = Thresholds(),
    config: AuditConfig | None = None,
    spool_dir: Path | None = None,
    verify: bool = False,
    now: dt.datetime | None = None,
    counters: Mapping[str, int] | None = None,
) -> Health:
    """Read the ledger's and the spool's state; ``verify``: also verify each chain.
    ``counters``: a process's counters (``COUNTERS.snapshot()`` of a long-running component
    asking about itself): its :data:`ANCHOR_COUNTERS` are shown, a witness conflict is a
    problem. The command runs in a process of its own, which has none to show."""
    now = now or dt.datetime.now(dt.timezone.utc)
    config = config or AuditConfig.from_env()
    witnesses = parse_witnesses(config.witnesses)
    with ledger.snapshot() as view:  # records, checkpoints, cursors and verdicts of one moment
        cursors = view.cursor_names()
        # Without --chain: every chain with records, and every chain whose Merkle tree or
        # checkpoints outlived its records (deleted: "no records", and invalid with --verify).
        names = list(chains) if chains else chain_ids({*view.chains(), *view.merkle_chains()})
        found = [_chain(view, c, cursors, now, witnesses) for c in names]
        if verify:
            found = [replace(c, valid=_valid(view, c.chain)) for c in found]
    spool = _spool(config, spool_dir)
    shown = {k: counters[k] for k in ANCHOR_COUNTERS if counters and counters.get(k)}
    problems = _problems(found, spool, thresholds, 2 * config.anchor_interval_s, shown)
    return Health(format_timestamp(now), name, found, spool, problems, thresholds, shown)


def _valid(view: LedgerReader, chain: str) -> bool:
    from audit_core.verify import verify_ledger

    try:
        verify_ledger(view, [chain])
    except VerificationError:
        return False
    return True


def publish(health: Health) -> bool:
    """Publish the verdict as :data:`GAUGES` when metrics are configured
    (:mod:`audit_core.metrics`); True once a MeterProvider flushed them."""
    if os.environ.get("WORKFLOW_AUDIT_METRICS", "").strip().lower() == "off":
        return False
    from audit_core.metrics import report_gauges

    g: dict[str, list[tuple[float, dict[str, str]]]] = {
        "health.healthy": [(1 if health.healthy else 0, {})]
    }
    for c in health.chains:
        at = {"chain": c.chain}
        g.setdefault("health.records", []).append((c.records, at))
        g.setdefault("health.unsigned_records", []).append((c.unsigned, at))
        if c.last_record_age_s is not None:
            g.setdefault("health.last_record_age", []).append((c.last_record_age_s, at))
        if c.checkpoint_age_s is not None:
            g.setdefault("health.checkpoint_age", []).append((c.checkpoint_age_s, at))
        if c.valid is not None:
            g.setdefault("health.valid", []).append((1 if c.valid else 0, at))
        for sink, lag in c.sinks.items():
            g.setdefault("health.sink_lag", []).append((lag, {**at, "sink": sink}))
        for witness, w in c.witnesses.items():
            g.setdefault("health.witness_lag", []).append((w.lag, {**at, "witness": witness}))
    if health.spool is not None:
        g["health.spool_records"] = [(health.spool["records"], {})]
        g["health.spool_corrupt"] = [(health.spool["corrupt"], {})]
    return report_gauges(g, units=GAUGES)
