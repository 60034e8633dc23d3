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
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from audit_core._metrics import COUNTERS
from audit_core._normalize import MAX_DATA_BYTES, JSONObject, Processor, normalize, redact
from audit_core._note import Signer
from audit_core._record import (
    PreparedRecord,
    StoredCheckpoint,
    StoredRecord,
    prepare,
)
from audit_core._stamp import Actor, actor_members, record_timestamp, trace_members
from audit_core.checkpoint import CheckpointSigner
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, LedgerError
from audit_core.ledgers import Ledger, open_ledger
from audit_core.privacy import MODEL_EVENT, strip_model_values

if TYPE_CHECKING:
    from audit_core.privacy.apply import Privacy

__all__ = ["AuditTrail", "Event"]

logger = logging.getLogger("workflow_audit")

#: With a privacy policy, values up to this size reach the policy whole (a batch of model
#: inputs is committed as one value, its opening kept off the chain); the record's own limits
#: (``max_value_bytes``, 1 MiB of data) apply to what the policy leaves on the chain.
PRIVACY_MAX_VALUE_BYTES = 32 * 1024 * 1024
#: Seconds before a trail tries again to append the ``privacy.policy`` record it could not.
ANNOUNCE_RETRY_S = 30.0


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
        privacy: Privacy | None = None,
    ) -> None:
        self.config = AuditConfig.from_env() if config is None else config
        # A policy that cannot be read stops the trail here (PolicyError), as a bad ledger URL
        # does: recording without knowing what is personal would put it on the chain.
        self.privacy = privacy if privacy is not None else _configured_privacy(self.config)
        self._announced = False
        self._announce_after = 0.0
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
        if self.privacy is not None:
            self.privacy.close()

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
        nonces: list[bytes] = []
        prepared = self._prepare(
            event, data, subject, actor, trace, ts, chain, strict, key=key, nonces=nonces
        )
        with self._discarding(nonces):
            if prepared.key is None:
                stored = self.ledger.append(prepared)
            else:
                appended = self.ledger.append_many((prepared,))
                if not appended:  # its key is stored: this copy's openings belong to nothing
                    if self.privacy is not None:
                        self.privacy.discard(nonces)
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
        nonces: list[bytes] = []
        prepared = [self._event(e, strict, nonces) for e in events]
        with self._discarding(nonces):
            stored = self.ledger.append_many(prepared)
        return self._appended(stored, len(prepared))

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
        nonces: list[bytes] = []
        prepared = [
            self._event(e if e.chain else replace(e, chain=chain), strict, nonces) for e in events
        ]
        with self._discarding(nonces):
            stored = self.ledger.append_advancing(
                prepared, cursor=cursor, chain=chain, expect=expect, to=to
            )
        return self._appended(stored, len(prepared))

    def _event(self, e: Event, strict: bool, nonces: list[bytes]) -> PreparedRecord:
        return self._prepare(
            e.type, e.data, e.subject, e.actor, e.trace, e.ts, e.chain, strict, key=e.key,
            nonces=nonces,
        )  # fmt: skip

    @contextmanager
    def _discarding(self, nonces: list[bytes]) -> Iterator[None]:
        # Openings are stored before the append; when the append fails (a locked ledger: the
        # hooks then spool the events, which are shaped again), they would belong to no record.
        try:
            yield
        except AuditError:
            if self.privacy is not None:
                self.privacy.discard(nonces)
            raise

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
        nonces: list[bytes] | None = None,
    ) -> PreparedRecord:
        limit, processors, privacy = self.config.max_value_bytes, self.processors, self.privacy
        chain = chain or self.config.chain
        if privacy is None and isinstance(data, dict):
            data = strip_model_values(event, data)  # before converting what is left out
        norm_data = normalize(
            {} if data is None else data,
            processors=processors,
            max_value_bytes=limit if privacy is None else PRIVACY_MAX_VALUE_BYTES,
            strict=strict,
            # with a policy the record's own 1 MiB applies after it took the values out
            max_data_bytes=MAX_DATA_BYTES if privacy is None else 4 * PRIVACY_MAX_VALUE_BYTES,
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
        norm_actor = actor_members(actor, self.config.actor, self.processors, strict)
        issues = norm_data.issues + norm_subject.issues + norm_actor.issues
        value, subject_value, actor_value = norm_data.value, norm_subject.value, norm_actor.value
        if privacy is None:
            value = strip_model_values(event, value)  # data that was no dict before
        else:
            self._announce(privacy)
            actor_value, subject_value, value, shaped_issues = privacy.shape_record(
                chain,
                event,
                (actor_value, subject_value, value),
                max_value_bytes=limit,
                strict=strict,
                nonces=nonces,
            )
            issues += shaped_issues
        if issues:
            COUNTERS.incr("normalization_issues", len(issues))
            logger.warning(
                "workflow-audit: %s recorded with conversions: %s", event, "; ".join(issues)
            )
        if marker is not None:
            value = {**(value if isinstance(value, dict) else {"value": value}), **marker}
        return prepare(
            chain=chain,
            event=event,
            ts=record_timestamp(ts),
            actor=actor_value,
            subject=subject_value,
            trace=None if trace is None else trace_members(trace),
            data=value,
            key=key,
        )

    def _announce(self, privacy: Privacy) -> None:
        # A policy change is itself a record, appended before the first record a trail
        # shapes (once per policy on the chain, by its idempotency key). When the ledger is
        # locked or down the records spool; the announcement is tried again a period later,
        # not at every record (each try would wait out the busy timeout again).
        if self._announced or time.monotonic() < self._announce_after:
            return
        try:
            self._appended(self.ledger.append_many((privacy.announcement(self.config.actor),)), 1)
        except AuditError:
            self._announce_after = time.monotonic() + ANNOUNCE_RETRY_S
            logger.warning(
                "workflow-audit: the privacy policy record waits for the ledger (next try in "
                "%.0f s)",
                ANNOUNCE_RETRY_S,
            )
            return
        self._announced = True

    def model_invoked(
        self,
        model: str,
        version: str | int | None = None,
        *,
        inputs: object = None,
        outputs: object = None,
        batch: bool = False,
        data_subject: str | None = None,
        **facts: Any,
    ) -> StoredRecord:
        """Record ``model.invoked`` (:func:`audit_core.model.model_event`): digests, sizes and
        schema of the inputs and outputs, a Merkle root over a batch's predictions; the
        values themselves only as the privacy policy shapes them (none without one)."""
        from audit_core.model import model_event

        data = model_event(
            model,
            version,
            inputs=inputs,
            outputs=outputs,
            batch=batch,
            data_subject=data_subject,
            values=self.privacy is not None,  # without a policy they are left out anyway
            **facts,
        )
        return self.record(MODEL_EVENT, data)


def _configured_privacy(config: AuditConfig) -> Privacy | None:
    if not config.privacy_policy:
        return None  # no policy: the privacy modules (and cryptography's AES) stay unloaded
    from audit_core.privacy.apply import Privacy

    return Privacy.from_config(config)
