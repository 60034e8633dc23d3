"""``AuditTrail.record()``: normalize → prepare → ledger append, durable on return.

>>> from audit_core import AuditConfig, AuditTrail
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> trail.record("model.deployed", {"model": "churn", "version": 7}).seq
0

Adapters (Airflow, Prefect) call :meth:`AuditTrail.record` from hooks that must never fail
a task: they wrap it in their one ``except Exception``. Called directly, ``record`` raises
:class:`~audit_core.errors.InvalidRecordError` for an invalid event type or actor, and, with
``strict=True``, for a payload that needs a lossy conversion (NaN, an unknown type, invalid
Unicode, an oversized value). Without ``strict`` such payloads are converted, the record is
written, and the conversion is logged and counted (``normalization_issues``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from audit_core._metrics import COUNTERS
from audit_core._normalize import (
    JSONObject,
    Normalized,
    Processor,
    format_timestamp,
    normalize,
    now_timestamp,
    process,
    redact,
)
from audit_core._note import Signer
from audit_core._record import (
    PreparedRecord,
    StoredCheckpoint,
    StoredRecord,
    is_timestamp,
    prepare,
)
from audit_core.checkpoint import CheckpointSigner
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, InvalidRecordError, LedgerError
from audit_core.ledgers import Ledger, open_ledger

__all__ = ["AuditTrail", "Event"]

logger = logging.getLogger("workflow_audit")

Actor = tuple[str, str] | Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing that happened, before it becomes a record (see :meth:`AuditTrail.record`).

    ``key``: an idempotency key (1..256 printable ASCII characters): the ledger appends at
    most one record per ``(chain, key)`` and skips later ones (docs/FORMAT.md "Idempotency
    keys"). Not part of the record."""

    type: str
    data: object = None
    subject: Mapping[str, object] | None = None
    actor: Actor | None = None
    trace: Mapping[str, str] | None = None
    ts: dt.datetime | str | None = None
    chain: str | None = None
    key: str | None = None


class AuditTrail:
    """Writes records to a ledger. Thread-safe; fork-safe (the ledger reconnects per process)."""

    def __init__(
        self,
        config: AuditConfig | None = None,
        *,
        ledger: Ledger | None = None,
        processors: Sequence[Processor] | None = None,
        rotate_key: bool | None = None,
    ) -> None:
        self.config = AuditConfig.from_env() if config is None else config
        self._ledger = ledger or open_ledger(
            self.config.ledger_url,
            synchronous=self.config.synchronous,
            busy_timeout_s=self.config.busy_timeout_s,
        )
        self._signing = CheckpointSigner.from_config(self.config, self._ledger, rotate=rotate_key)
        if processors is None:
            processors = (redact(self.config.redact_keys),)
        self.processors = tuple(processors)
        # chain -> (size of the latest checkpoint, time.monotonic() it was known at)
        self._checkpointed: dict[str, tuple[int, float]] = {}
        self._written: dict[str, int] = {}  # chain -> tree size after our last append

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Sign a checkpoint over what this trail wrote (unless checkpoints are off), then
        close the ledger; idempotent."""
        if self.config.checkpoint_every > 0:
            for chain, size in list(self._written.items()):
                if size > self._checkpointed.get(chain, (0, 0.0))[0]:
                    self._auto_checkpoint(chain)
        self._written.clear()
        self.ledger.close()

    @property
    def ledger(self) -> Ledger:
        """Where records and checkpoints go (replaceable, e.g. by a wrapping ledger: the
        checkpoints follow it)."""
        return self._ledger

    @ledger.setter
    def ledger(self, value: Ledger) -> None:
        self._ledger = value
        self._signing.ledger = value

    @property
    def rotate_key(self) -> bool | None:
        """May a missing local key be replaced for a ledger holding checkpoints (None: ask
        $WORKFLOW_AUDIT_ROTATE_KEY)? See :func:`audit_core.checkpoint.load_signer`."""
        return self._signing.rotate

    @rotate_key.setter
    def rotate_key(self, value: bool | None) -> None:
        self._signing.rotate = value

    @property
    def signer(self) -> Signer:
        """The checkpoint signing key (loaded, or created beside the ledger, on first use)."""
        return self._signing.signer

    def origin(self, chain: str) -> str:
        """The origin line of ``chain``'s checkpoints."""
        return self._signing.origin(chain)

    def checkpoint(self, chain: str | None = None) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of ``chain`` now (None: the chain has no records)."""
        name = chain or self.config.chain
        stored = self._signing.write(name)
        if stored is not None:
            self._checkpointed[name] = (stored.size, time.monotonic())
            COUNTERS.incr("checkpoints_signed")
        return stored

    def _after_append(self, chain: str, size: int) -> None:
        self._written[chain] = size
        every = self.config.checkpoint_every
        if every <= 0:
            return
        last = self._checkpointed.get(chain)
        if last is None:
            latest = self.ledger.latest_checkpoint(chain)
            last = (0 if latest is None else latest.size, time.monotonic())
            self._checkpointed[chain] = last
        due = size - last[0] >= every
        if due or time.monotonic() - last[1] >= self.config.checkpoint_interval_s:
            self._auto_checkpoint(chain)

    def _auto_checkpoint(self, chain: str) -> None:
        # The records are durable already: a checkpoint that cannot be signed now is logged,
        # counted and tried again a period later (not at every append); it never fails record().
        try:
            self.checkpoint(chain)
        except AuditError:
            COUNTERS.incr("checkpoint_failures")
            logger.exception("workflow-audit: could not sign a checkpoint of chain %r", chain)
            self._checkpointed[chain] = (self._written.get(chain, 0), time.monotonic())

    def record(
        self,
        event: str,
        data: object = None,
        *,
        subject: Mapping[str, object] | None = None,
        actor: Actor | None = None,
        trace: Mapping[str, str] | None = None,
        ts: dt.datetime | str | None = None,
        chain: str | None = None,
        strict: bool = False,
        key: str | None = None,
    ) -> StoredRecord:
        """Append one record and return it once it is durable in the ledger. With ``key``
        already stored on its chain, nothing is appended: the record stored under it is
        returned (counted ``records_deduplicated``)."""
        prepared = self._prepare(event, data, subject, actor, trace, ts, chain, strict, key=key)
        if prepared.key is None:
            stored = self.ledger.append(prepared)
        else:
            appended = self.ledger.append_many((prepared,))
            if not appended:
                return self._earlier(prepared.chain, prepared.key)
            stored = appended[0]
        COUNTERS.incr("records_written")
        self._after_append(stored.chain, stored.seq + 1)
        return stored

    def _earlier(self, chain: str, key: str) -> StoredRecord:
        COUNTERS.incr("records_deduplicated")
        earlier = self.ledger.keyed(chain, key)
        if earlier is None:  # key rows are append-only: only a tampered ledger lost it
            raise LedgerError(f"chain {chain!r} holds key {key!r} but no record under it")
        return earlier

    def record_many(self, events: Iterable[Event], *, strict: bool = False) -> list[StoredRecord]:
        """Append several records in one transaction (all or none); durable on return.
        Returns only the records appended: one whose key its chain holds already, or an
        earlier record of the batch holds, is skipped (counted ``records_deduplicated``)."""
        prepared = [self.prepare(e, strict=strict) for e in events]
        return self._appended(self.ledger.append_many(prepared), len(prepared))

    def record_advancing(
        self,
        events: Iterable[Event],
        *,
        cursor: str,
        chain: str,
        expect: int,
        to: int,
        strict: bool = False,
    ) -> list[StoredRecord]:
        """As :meth:`record_many` (skipped duplicates included: the cursor moves even when
        every record was one), and in the same transaction move cursor ``(cursor,
        chain)`` from ``expect`` (-1: no cursor yet) to ``to``; events without a chain go on
        ``chain``. Raises :class:`~audit_core.errors.CursorMoved`, appending nothing, when
        the cursor was not at ``expect`` (another writer advanced it): what a reader of an
        outside source needs to record each of its rows exactly once."""
        prepared = [
            self._prepare(
                e.type,
                e.data,
                e.subject,
                e.actor,
                e.trace,
                e.ts,
                e.chain or chain,
                strict,
                key=e.key,
            )
            for e in events
        ]
        stored = self.ledger.append_advancing(
            prepared, cursor=cursor, chain=chain, expect=expect, to=to
        )
        return self._appended(stored, len(prepared))

    def _appended(self, stored: list[StoredRecord], given: int) -> list[StoredRecord]:
        COUNTERS.incr("records_written", len(stored))
        if given > len(stored):
            COUNTERS.incr("records_deduplicated", given - len(stored))
        last: dict[str, int] = {s.chain: s.seq + 1 for s in stored}
        for chain, size in last.items():
            self._after_append(chain, size)
        return stored

    def prepare(
        self,
        event: Event,
        *,
        strict: bool = False,
        marker: JSONObject | None = None,
    ) -> PreparedRecord:
        """Normalize, redact and encode ``event`` (everything but seq and prev); ``marker``'s
        members are added to the normalized data after the processors and the size limit (the
        spool's ``data._spool``, which neither a processor nor the digest may remove)."""
        return self._prepare(
            event.type,
            event.data,
            event.subject,
            event.actor,
            event.trace,
            event.ts,
            event.chain,
            strict,
            marker,
            event.key,
        )

    def _prepare(
        self,
        event: str,
        data: object,
        subject: Mapping[str, object] | None,
        actor: Actor | None,
        trace: Mapping[str, str] | None,
        ts: dt.datetime | str | None,
        chain: str | None,
        strict: bool,
        marker: JSONObject | None = None,
        key: str | None = None,
    ) -> PreparedRecord:
        limit, processors = self.config.max_value_bytes, self.processors
        norm_data = normalize(
            {} if data is None else data,
            processors=processors,
            max_value_bytes=limit,
            strict=strict,
        )
        # Every field is untrusted (STYLE rule 18): subject and actor pass the same processors
        # as data. They mask secret-looking keys and credential-looking text only, so
        # orchestrator identifiers (dag_id, run_id) stay readable.
        norm_subject = normalize(
            {} if subject is None else subject,
            processors=processors,
            max_value_bytes=limit,
            strict=strict,
            path="subject",
        )
        norm_actor = self._actor(actor, strict)
        issues = norm_data.issues + norm_subject.issues + norm_actor.issues
        value = norm_data.value
        if issues:
            COUNTERS.incr("normalization_issues", len(issues))
            logger.warning(
                "workflow-audit: %s recorded with conversions: %s", event, "; ".join(issues)
            )
        if marker is not None:
            value = {**(value if isinstance(value, dict) else {"value": value}), **marker}
        return prepare(
            chain=chain or self.config.chain,
            event=event,
            ts=_timestamp(ts),
            actor=norm_actor.value,
            subject=norm_subject.value,
            trace=None if trace is None else _trace(trace),
            data=value,
            key=key,
        )

    def _actor(self, actor: Actor | None, strict: bool) -> Normalized:
        if actor is None:  # configured, not user input: the hot path stays a dict literal
            kind, ident = self.config.actor
            return Normalized({"type": kind, "id": ident})
        if isinstance(actor, tuple):
            try:
                kind, ident = (str(part) for part in actor)
            except Exception as exc:  # not two members; a user's __str__ raised
                raise InvalidRecordError(
                    f"an actor tuple is (type, id): {type(exc).__qualname__}"
                ) from exc
            # Two strings already: only the processors (redaction) remain to run.
            return Normalized(process({"type": kind, "id": ident}, self.processors, "actor"))
        return normalize(actor, processors=self.processors, strict=strict, path="actor")


def _timestamp(ts: dt.datetime | str | None) -> str:
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


def _trace(trace: Mapping[str, str]) -> JSONObject:
    try:
        return dict(trace)
    except Exception as exc:  # a user's Mapping may raise anything
        raise InvalidRecordError(f"trace could not be read: {type(exc).__qualname__}") from exc
