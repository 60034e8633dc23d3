"""The audit of the audit: who read the trail, how, and what they saw, as records on the
trail itself (chain ``audit``). The browser view, ``workflow-audit serve`` and the CLI's
``export``, ``report`` and ``verify`` describe each read with :func:`read_event` and hand
it to a :data:`Recorder`, which must never fail the read: a trail nobody may read because
its reads cannot be recorded would be worse than an unrecorded read, so a failure is logged
and counted (``audit_reads_unrecorded``) instead.

>>> from audit_core.query import Query
>>> e = read_event("viewed", user="ann", via="serve", query=Query(dag="etl"), count=3)
>>> e.type, e.chain, e.actor
('audit.viewed', 'audit', {'type': 'user', 'id': 'ann'})
>>> e.data
{'via': 'serve', 'filter': {'dag': 'etl'}, 'count': 3}
"""

from __future__ import annotations

import contextvars
import logging
import os
import pwd
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

from audit_core._metrics import COUNTERS
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError
from audit_core.ledgers import ledger_path, open_ledger
from audit_core.query import Query
from audit_core.trail import AuditTrail, Event

__all__ = [
    "AUDIT_CHAIN",
    "READ_EVENTS",
    "UNRECORDED",
    "Recorder",
    "TrailRecorder",
    "os_user",
    "query_filter",
    "read_event",
    "record_read",
]

#: The chain every read is recorded on: the pipeline's own chains stay the pipeline's.
AUDIT_CHAIN = "audit"
#: The event types of a read (docs/EVENTS.md "The audit of the audit").
READ_EVENTS = (
    "audit.viewed",  # a list page or the status page
    "audit.opened",  # a record's detail
    "audit.proof_downloaded",
    "audit.exported",  # records (JSONL, CSV) or a report (md, json, csv), web or CLI
    "audit.verified",  # CLI verify of a ledger
)
#: The longest a read's record waits for a writer's lock (the configured busy timeout, capped).
MAX_WAIT_S = 5.0
#: The counter of reads that could not be recorded.
UNRECORDED = "audit_reads_unrecorded"

JSON: TypeAlias = Any  # a JSON value: str, int, float, bool, None, list, dict
#: Records one read; never raises (a failure is logged and counted).
Recorder: TypeAlias = Callable[[Event], None]

logger = logging.getLogger("workflow_audit.readlog")
# Logged, not printed: a CLI command's standard error is its own (it prints one notice), and a
# library must not reach stderr through logging's last-resort handler. Configured handlers
# (Airflow's, uvicorn's, an application's) still receive these records through propagation.
logger.addHandler(logging.NullHandler())


def query_filter(query: Query) -> dict[str, JSON]:
    """The criteria a user typed, as a JSON object (the permission set ``dags`` is not one:
    it is who the reader is, not what they asked for). Empty criteria are left out."""
    found: dict[str, JSON] = {}
    for name in ("since", "until", "dag", "run", "task", "actor"):
        value = getattr(query, name)
        if value is not None:
            found[name] = value
    if query.events:
        found["events"] = list(query.events)
    if query.chains:
        found["chains"] = list(query.chains)
    return found


def read_event(
    kind: str,
    /,
    *,
    user: str,
    via: str,
    query: Query | None = None,
    count: int | None = None,
    **facts: JSON,
) -> Event:
    """The event of one read: ``kind`` is one of :data:`READ_EVENTS`, with or without its
    ``audit.`` prefix (positional: a fact may be called ``kind`` too, as an export's "records"
    or "report"); ``user`` the authenticated identity (the CLI: the OS user); ``via`` where it
    was read ("airflow", "serve", "cli"); ``facts`` go into data as given. Pure. Raises
    ConfigError for an unknown kind (a programming error, found by the tests)."""
    event_type = kind if kind.startswith("audit.") else f"audit.{kind}"
    if event_type not in READ_EVENTS:
        raise ConfigError(f"unknown read event {kind!r}; expected one of {READ_EVENTS}")
    data: dict[str, JSON] = {"via": via}
    if query is not None:
        data["filter"] = query_filter(query)
    if count is not None:
        data["count"] = count
    data.update(facts)
    return Event(
        type=event_type,
        data=data,
        subject={},
        actor={"type": "user", "id": user or "unknown"},
        chain=AUDIT_CHAIN,
    )


def os_user() -> str:
    """The OS user running this process (the CLI's reader): the passwd name of the effective
    uid, else ``uid:N`` (a container's random uid has no entry). Not ``getpass.getuser()``:
    it believes LOGNAME and USER, which whoever runs the command sets at will."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name or f"uid:{uid}"
    except KeyError:
        return f"uid:{uid}"


#: Set while a :class:`TrailRecorder` appends: the trail's own log records are then one line.
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "readlog_recording", default=False
)


class _OneLine(logging.Filter):
    """On the trail's logger, while a read is being recorded: the traceback of a failure
    (a checkpoint that could not be signed while the ledger is locked) becomes its one-line
    reason. A server recording every read would otherwise print one traceback per read."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _RECORDING.get() and record.exc_info:
            exc = record.exc_info[1]
            if isinstance(exc, Exception):
                record.msg = f"{record.getMessage()}: {_reason(exc)}"
                record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_ONE_LINE = _OneLine()


class TrailRecorder:
    """A :data:`Recorder` appending to the ledger at ``ledger_url``, fail-open.

    It opens the ledger as a writer that never creates one (``create=False``: a read must
    not leave a new, empty ledger behind a typo) with a short busy timeout (the configured
    one, at most :data:`MAX_WAIT_S`: a read is not held up long by a writer's lock), keeps
    it open between reads and reopens it after a failure (a ledger made writable later is
    written to again). Thread-safe: reads are recorded one at a time. :meth:`record` says
    why a read was not recorded, for a caller that tells its user once; ``last_failure``
    keeps the latest reason (a status page).

    It signs checkpoints of the audit chain as any writer does, but only with a key that
    exists already (``WORKFLOW_AUDIT_SIGNING_KEY``, or the ledger's ``<ledger>.key``): an
    auditor's ``export`` must never create the ledger's signing key, nor, as another OS
    user, one the orchestrator cannot read."""

    def __init__(
        self,
        ledger_url: str,
        *,
        config: AuditConfig | None = None,
        busy_timeout_s: float | None = None,
    ) -> None:
        self.ledger_url = ledger_url
        self._config = config
        self._busy_timeout_s = busy_timeout_s
        self._trail: AuditTrail | None = None
        self._lock = threading.Lock()
        self.recorded = 0
        self.unrecorded = 0
        self.last_failure: str | None = None
        logging.getLogger("workflow_audit").addFilter(_ONE_LINE)  # the trail's; idempotent

    def __call__(self, event: Event) -> None:
        self.record(event)

    def record(self, event: Event) -> str | None:
        """Append ``event``; None when it is durable, else why it is not (never raises)."""
        with self._lock:
            token = _RECORDING.set(True)
            try:
                trail = self._open()
                trail.record_many((event,))
            # Fail-open by design (module docstring): whatever the ledger, the network or the
            # configuration raises, the read itself has happened and must stand.
            except Exception as exc:  # logged with exc_info and counted
                self._drop()
                reason = _reason(exc)
                self.unrecorded += 1
                self.last_failure = reason
                COUNTERS.incr(UNRECORDED)
                logger.warning(
                    "workflow-audit: %s by %r was not recorded on the audit chain: %s",
                    event.type,
                    _actor_id(event.actor),
                    reason,
                    exc_info=True,
                )
                return reason
            finally:
                _RECORDING.reset(token)
            self.recorded += 1
            return None

    def _open(self) -> AuditTrail:
        if self._trail is not None:
            return self._trail
        url = self.ledger_url
        _check_file(url)
        config = (self._config or AuditConfig.from_env()).evolve(ledger_url=url)
        if not _has_key(config):
            config = config.evolve(checkpoint_every=0)
        wait = self._busy_timeout_s
        ledger = open_ledger(
            url,
            synchronous=config.synchronous,
            busy_timeout_s=min(config.busy_timeout_s, MAX_WAIT_S) if wait is None else wait,
            create=False,
        )
        try:
            self._trail = AuditTrail(config, ledger=ledger)
        except Exception:
            ledger.close()
            raise
        return self._trail

    def unwritable(self) -> str | None:
        """Why reads cannot be recorded, if that can be told without opening the ledger (a
        SQLite file that is missing or read-only to this user), else None."""
        try:
            _check_file(self.ledger_url)
        except ConfigError as exc:
            return str(exc)
        return None

    def _drop(self) -> None:
        trail, self._trail = self._trail, None
        if trail is not None:
            try:
                trail.close()
            except Exception:  # already failing: the first error is the one told
                logger.debug("workflow-audit: closing the read recorder failed", exc_info=True)

    def close(self) -> None:
        """Release the ledger; idempotent."""
        with self._lock:
            self._drop()

    def __enter__(self) -> TrailRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def record_read(ledger_url: str, event: Event) -> str | None:
    """Record one read on ``ledger_url`` and close it again (a one-shot command's read):
    None when it is durable, else why not. Never raises."""
    with TrailRecorder(ledger_url) as recorder:
        return recorder.record(event)


def _check_file(url: str) -> None:
    """ConfigError when a SQLite ledger cannot take a reader's record (PostgreSQL: no check,
    its roles decide at the append)."""
    if url.startswith(("postgresql://", "postgres://")):
        return
    path = ledger_path(url)
    if path is None:
        raise ConfigError("an in-memory ledger cannot record reads")
    if not path.exists():  # checked first: SQLite would make the file
        raise ConfigError(f"no ledger at {path}")
    if not os.access(path, os.W_OK):
        # Checked before opening: a writer's connection would leave -wal and -shm files of
        # this user beside a ledger it may only read, locking out its owner.
        raise ConfigError(f"the ledger {path} is read-only to this user")


def _has_key(config: AuditConfig) -> bool:
    """Whether checkpoints can be signed without creating a key."""
    if config.signing_key:
        return True
    try:
        path = ledger_path(config.ledger_url)
    except ConfigError:  # PostgreSQL: only a configured key (the default one is per OS user)
        return False
    key = None if path is None else path.with_name(path.name + ".key")
    return key is not None and os.access(key, os.R_OK)


def _actor_id(actor: object) -> object:
    return actor.get("id") if isinstance(actor, Mapping) else actor


def _reason(exc: Exception) -> str:
    """One line for a person: the exception's message (ledger errors name no secrets:
    URLs are masked where they are raised), else its type."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
