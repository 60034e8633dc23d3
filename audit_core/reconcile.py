"""Completeness: compare what the orchestrator says ran with what the chain recorded.

Hooks cannot record a run whose process was SIGKILLed or OOM-killed: the hook never runs.
The orchestrator's own database still knows the run ended. A *reconciler* lists the terminal
runs it knows (:meth:`Reconciler.expected`) and says which records prove each one
(:meth:`Reconciler.recorded_key`); :func:`reconcile` appends the prepared ``*.unrecorded``
event of every run with no proof, so the gap is on the chain, visible and verifiable, instead
of silently missing. Running it again appends nothing new (the ``*.unrecorded`` records are
proof too).

>>> from audit_core import AuditConfig, AuditTrail, Event
>>> class Toy:
...     name = "toy"
...     def config(self, ledger_url, chain): return AuditConfig(ledger_url="sqlite:///:memory:")
...     def expected(self, since, until):
...         return [Expected(("a",), Event(type="task.unrecorded", subject={"task": "a"}))]
...     def recorded_key(self, record):
...         return (record.subject.get("task"),)
>>> trail = AuditTrail(Toy().config(None, None))
>>> [e.subject for e in reconcile(trail, Toy(), since="2026-01-01T00:00:00Z").missing]
[{'task': 'a'}]
>>> reconcile(trail, Toy(), since="2026-01-01T00:00:00Z").missing
[]

Orchestrator adapters register reconcilers under the ``workflow_audit.reconcilers`` entry
point group; ``workflow-audit reconcile NAME --since …`` runs them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from audit_core._normalize import redact
from audit_core._record import Record, StoredRecord
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, ConfigError
from audit_core.trail import AuditTrail, Event

__all__ = ["ENTRY_POINT_GROUP", "Expected", "ReconcileResult", "Reconciler", "load", "reconcile"]

ENTRY_POINT_GROUP = "workflow_audit.reconcilers"


@dataclass(frozen=True, slots=True)
class Expected:
    """A terminal run the orchestrator knows, and the record to append if the chain lacks it."""

    key: Hashable
    event: Event


class Reconciler(Protocol):
    """What an orchestrator adapter provides to ``workflow-audit reconcile``."""

    name: str

    def config(self, ledger_url: str | None, chain: str | None) -> AuditConfig:
        """The ledger and chain the orchestrator's records go to (arguments override)."""
        ...

    def expected(self, since: str, until: str | None) -> Iterable[Expected]:
        """Terminal runs that ended in ``[since, until)`` (RFC 3339 UTC strings)."""
        ...

    def recorded_key(self, record: Record) -> Hashable | None:
        """The key of the run ``record`` proves ended, or None if it proves none."""
        ...


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """How many runs were checked, which were missing, what was appended, and which of the
    missing were recorded already when appending (their key was on the chain: a racing
    reconciler or another writer of the same record got there between the read and the
    append)."""

    checked: int
    missing: list[Event] = field(default_factory=list)
    appended: list[StoredRecord] = field(default_factory=list)
    already_recorded: list[Event] = field(default_factory=list)


def reconcile(
    trail: AuditTrail,
    reconciler: Reconciler,
    *,
    since: str,
    until: str | None = None,
    dry_run: bool = False,
) -> ReconcileResult:
    """Append the events of expected runs with no record on ``trail``'s chain."""
    try:
        expected = list(reconciler.expected(since, until))
    except AuditError:
        raise
    except Exception as exc:  # the orchestrator's database or API: a clean error, no secret
        raise ConfigError(
            f"cannot read which runs ended from the orchestrator: {_describe(exc)}"
        ) from exc
    chain = trail.config.chain
    proven: set[Hashable] = set()
    for stored in trail.ledger.read(chain):
        key = reconciler.recorded_key(Record.from_stored(stored))
        if key is not None:
            proven.add(key)
    missing: dict[Hashable, Event] = {}
    for item in expected:
        if item.key not in proven:
            missing.setdefault(item.key, item.event)
    events = list(missing.values())
    if dry_run or not missing:
        return ReconcileResult(checked=len(expected), missing=events)
    # a skipped duplicate (Event.key) is not returned: which run each appended record
    # proves tells the appended from the already recorded
    appended = trail.record_many(events)
    already: list[Event] = []
    if len(appended) < len(events):
        done = {reconciler.recorded_key(Record.from_stored(s)) for s in appended}
        already = [e for k, e in missing.items() if k not in done]
    return ReconcileResult(
        checked=len(expected), missing=events, appended=appended, already_recorded=already
    )


def load(name: str) -> Reconciler:
    """The reconciler registered as ``name`` (``airflow``, ``prefect``)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(
            f"no reconciler {name!r} (installed: {known}); "
            f'install the adapter, e.g. pip install "workflow-audit[{name}]"'
        )
    try:
        factory = found[name].load()
    except ImportError as exc:  # the adapter is registered but its orchestrator is missing
        raise ConfigError(
            f"the {name!r} reconciler cannot be loaded ({exc}); "
            f'install the orchestrator, e.g. pip install "workflow-audit[{name}]"'
        ) from exc
    reconciler: Reconciler = factory()
    return reconciler


_SCRUB = redact()


def _describe(exc: Exception) -> str:
    """The first line of ``exc`` (drivers append the whole statement), credentials redacted."""
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    scrubbed = _SCRUB({"error": f"{type(exc).__name__}: {first}"})["error"]
    return str(scrubbed)
