"""Sources: outside logs (Airflow's ``log`` table, …) copied onto a chain, each row exactly once.

>>> import datetime as dt
>>> from audit_core import AuditConfig, AuditTrail, Event, Record
>>> class Rows:
...     name = "example"
...     def __init__(self, ids):
...         self.ids = ids
...     def rows_after(self, after, limit):
...         when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
...         ids = [i for i in self.ids if i > after][:limit]
...         return [SourceRow(i, when, Event(type="row.copied", data={"id": i})) for i in ids]
...     def oldest_id(self):
...         return min(self.ids, default=None)
...     def newest_id(self):
...         return max(self.ids, default=None)
...     def close(self):
...         pass
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> result = Ingestor(trail, Rows([1, 2, 5]), chain="events", grace_s=0).run()
>>> result.recorded, result.gaps, result.cursor
(3, 1, 5)
>>> [Record.from_stored(r).event for r in trail.ledger.read("events")]
['source.started', 'row.copied', 'row.copied', 'source.gap', 'row.copied']

A :class:`Source` hands out its rows by increasing id (``rows_after(id, limit)``); an
:class:`Ingestor` records them on a chain and keeps the id it reached as a cursor in the
ledger, named ``source:<name>`` (:data:`CURSOR_PREFIX`; sinks' cursors never start so).

**Exactly once.** One :meth:`Ingestor.step` reads the cursor ``c``, reads the rows after
``c`` and appends their records with
:meth:`~audit_core.trail.AuditTrail.record_advancing`, which moves the cursor from ``c`` to
the last id copied *in the same transaction* as the append, and appends nothing if the cursor
no longer holds ``c``. So a row's record is committed exactly when the cursor passes its id:
a crash before the COMMIT leaves both unchanged (the row is read again), a crash after leaves
both done (the row is never read again), and of several ingesters racing over one source (the
scheduler and each api-server worker, a sidecar) each batch is appended by one, the others
get :class:`~audit_core.errors.CursorMoved`, re-read the cursor and go on from there. Every
record below is written the same way, with the cursor move it explains, so each is written
once too.

**The start.** The first step (no cursor yet) starts at the source's :meth:`~Source.oldest_id`
with a ``source.started`` record (``{"source", "first_id"}``, and a ``note`` when ids below
it were deleted before workflow-audit was installed): a deployment that ran ``airflow db
clean`` before is not a gap. Ids below the oldest may also be in flight, so when it is above
1 the start waits ``grace_s`` as a hole does (below), and begins at the oldest id then.

**Gaps are recorded, never silent.** Ids are expected to be consecutive. A hole may still fill
(a transaction that took an id earlier commits later; the source cannot show an uncommitted
id), so the step copies only the rows before it and waits. The hole's age is how long *this*
ingester has seen it open (a monotonic clock, kept in memory), never the source's timestamps:
a row's write time is set by whichever host wrote it, before its commit, so clock skew or a
slow commit would settle a hole early. Once it has been seen open for ``grace_s``, it becomes
a ``source.gap`` record (``{"source", "first_id", "last_id", "count", "reason"}``, in id order
among the rows) whose reason is decided then:

- ``"purged"``: the hole lies below the source's :meth:`~Source.oldest_id` (the rows were
  deleted before they were read, e.g. ``airflow db clean -t log``);
- ``"missing"``: otherwise (a rolled-back insert that used up an id, a row deleted by hand,
  or a transaction still open after ``grace_s``).

A restarted ingester (or another process) has seen no hole yet: it waits ``grace_s`` again;
so a one-shot :meth:`Ingestor.run` (``workflow-audit ingest`` from cron) steps on for up to
``grace_s`` while a hole holds it back, rather than ending before every hole.
The caveat: a row committed more than ``grace_s`` after its hole was first seen is not
recorded itself: the ``"missing"`` gap record written by then names its id. Choose ``grace_s``
above the longest transaction of the source's writers.

**Ids that restart** below the cursor (SQLite reuses ids once a table without AUTOINCREMENT
is emptied, as Airflow's ``log`` is by ``airflow db clean -t log``; a database re-created or
restored from a backup): a step that finds no row after the cursor asks
:meth:`~Source.newest_id`; below the cursor, it writes a ``source.reset`` record
(``{"source", "previous_cursor", "newest_id", "oldest_id", "reason"}``) and moves the cursor
back to just before the oldest id, so the rows held now are recorded. Rows recorded before
(a restored backup; the newest rows deleted by hand) are then recorded again: duplicates under
a reset record rather than silence. Ids that restarted and already passed the old cursor while
no ingester ran cannot be told apart from new rows: the rows at or below the old cursor are
then not recorded.

**A row that cannot be recorded** (its event fails validation:
:class:`~audit_core.errors.InvalidRecordError`, e.g. a timestamp that is no point in time)
becomes a ``source.unreadable`` record (``{"source", "id", "error"}``, none of its payload),
and the rows after it go on.

Counters (:data:`audit_core.COUNTERS`): ``source_rows_recorded``, ``source_rows_unreadable``,
``source_gaps_purged``, ``source_gaps_missing``, ``source_resets``, ``ingest_contended``,
``ingest_failures``.

Running it: :meth:`Ingestor.run` (once, or ``follow`` until a stop event), the command
``workflow-audit ingest SOURCE`` (sources from the entry point group
:data:`SOURCE_ENTRY_POINTS`), or :func:`start_ingesting`, a fail-open daemon thread for a
long-running orchestrator process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from audit_core._metrics import COUNTERS
from audit_core.errors import AuditError, ConfigError, CursorMoved, InvalidRecordError, SourceError
from audit_core.ship import Backoff
from audit_core.trail import AuditTrail, Event

__all__ = [
    "CURSOR_PREFIX",
    "GAP_EVENT",
    "RESET_EVENT",
    "SOURCE_ENTRY_POINTS",
    "STARTED_EVENT",
    "UNREADABLE_ROW_EVENT",
    "Background",
    "IngestResult",
    "Ingestor",
    "Source",
    "SourceRow",
    "cursor_name",
    "load_source",
    "source_names",
    "start_ingesting",
]

logger = logging.getLogger("workflow_audit")

#: A source's cursor in the ledger is this prefix and its name (``source:airflow.log``).
CURSOR_PREFIX = "source:"
#: The event type of a gap record.
GAP_EVENT = "source.gap"
#: The event type of the record of the first step (where the copy of the source begins).
STARTED_EVENT = "source.started"
#: The event type of the record of ids that restarted below the cursor.
RESET_EVENT = "source.reset"
#: The event type of the record written in place of a row whose event cannot be recorded.
UNREADABLE_ROW_EVENT = "source.unreadable"
#: Entry point group of installed sources: name -> a zero-argument callable returning a
#: :class:`Source` (the Airflow adapter registers ``airflow``).
SOURCE_ENTRY_POINTS = "workflow_audit.sources"

_RESET_REASON = "ids restarted below the cursor (table emptied, database re-created or restored)"
_BEFORE_INSTALL = "rows before first_id were deleted before workflow-audit was installed"
_MAX_ERROR_CHARS = 200  # of a source.unreadable record's error: what failed, not the row
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row of a source, as the event to record."""

    id: int  #: the source's own id (Airflow: ``log.id``), increasing
    written: dt.datetime  #: when the source wrote it (aware UTC): the lag (never a hole's age)
    event: Event  #: what to record; its chain is ignored (the ingestor's chain wins)


@runtime_checkable
class Source(Protocol):
    """Rows of an outside log, by increasing id. Raises
    :class:`~audit_core.errors.SourceError` when it cannot be read, and reconnects by itself
    on a later call (``workflow-audit ingest --follow`` keeps one source open).

    Optional attributes that ``workflow-audit ingest`` uses as its defaults: ``chain`` (the
    chain to record on), ``ledger_url``, and ``config`` (an
    :class:`~audit_core.config.AuditConfig`: the adapter's, so that the command signs and
    redacts as the orchestrator's own writers do)."""

    #: stable name ("airflow.log"); the cursor is ``"source:" + name``
    name: str

    def rows_after(self, after: int, limit: int) -> Sequence[SourceRow]:
        """At most ``limit`` rows with ``id > after``, by increasing id."""
        ...

    def oldest_id(self) -> int | None:
        """The smallest id the source still holds; None when it holds none."""
        ...

    def newest_id(self) -> int | None:
        """The largest id the source holds (``MAX(id)``: one indexed read); None when it
        holds none. Asked when no row follows the cursor, to see ids that restarted."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...


def cursor_name(source: Source | str) -> str:
    """The name of ``source``'s cursor in the ledger.

    >>> cursor_name("airflow.log")
    'source:airflow.log'
    """
    return CURSOR_PREFIX + (source if isinstance(source, str) else source.name)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one step (or a run of steps) did."""

    recorded: int = 0  #: source rows recorded
    gaps: int = 0  #: ``source.gap`` records written
    caught_up: bool = True  #: nothing more to read now (or only past a young hole)
    cursor: int = -1  #: the id the source's cursor holds afterwards (-1: none yet)
    lag_s: float | None = None  #: age of the newest row recorded, at its recording
    waiting: bool = False  #: a hole younger than grace_s holds the cursor back
    contended: int = 0  #: steps another ingester won (nothing appended; the cursor re-read)
    resets: int = 0  #: ``source.reset`` records written (ids restarted below the cursor)
    unreadable: int = 0  #: rows recorded as ``source.unreadable`` (their event was invalid)

    def then(self, later: IngestResult) -> IngestResult:
        """This result followed by ``later``'s: the counts summed, the state ``later``'s."""
        return replace(
            later,
            recorded=self.recorded + later.recorded,
            gaps=self.gaps + later.gaps,
            contended=self.contended + later.contended,
            resets=self.resets + later.resets,
            unreadable=self.unreadable + later.unreadable,
            lag_s=later.lag_s if later.lag_s is not None else self.lag_s,
        )

    def summary(self) -> str:
        """One line for a person."""
        lag = "" if self.lag_s is None else f", lag {self.lag_s:.1f}s"
        wait = ", waiting for a hole to fill" if self.waiting else ""
        bad = f", {self.unreadable} unreadable row(s)" if self.unreadable else ""
        reset = f", {self.resets} reset(s) (ids restarted)" if self.resets else ""
        return (
            f"{self.recorded} row(s) recorded, {self.gaps} gap(s), cursor at {self.cursor}"
            f"{bad}{reset}{lag}{wait}"
        )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _age_s(now: dt.datetime, written: dt.datetime) -> float:
    """Seconds from ``written`` to ``now``; a naive ``written`` is taken as UTC."""
    if written.tzinfo is None:
        written = written.replace(tzinfo=dt.timezone.utc)
    return (now - written).total_seconds()


class Ingestor:
    """Copies ``source``'s rows onto ``chain`` of ``trail``'s ledger, exactly once and in id
    order (see the module docstring). One ingestor is used by one thread at a time (it
    remembers since when it has seen each hole: keep it across steps); any number of
    ingestors, in any processes, may share a source and a ledger. ``clock`` gives the lag,
    ``monotonic`` the age of holes."""

    def __init__(
        self,
        trail: AuditTrail,
        source: Source,
        *,
        chain: str,
        grace_s: float = 10.0,
        batch: int = 1000,
        clock: Callable[[], dt.datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch < 1 or grace_s < 0:
            raise ValueError(f"batch must be >= 1 and grace_s >= 0, not {batch}, {grace_s}")
        self.trail = trail
        self.source = source
        self.chain = chain
        self.grace_s = grace_s
        self.batch = batch
        self.clock = clock
        self.monotonic = monotonic
        self.cursor = cursor_name(source)
        # holes seen open: first id -> (last id, monotonic time first seen)
        self._holes: dict[int, tuple[int, float]] = {}

    def __repr__(self) -> str:
        return f"Ingestor({self.source.name!r} -> chain {self.chain!r})"

    def position(self) -> int:
        """The last source id recorded (or settled as a gap); -1 before the first."""
        return self.trail.ledger.get_cursor(self.cursor, self.chain)

    def step(self) -> IngestResult:
        """One read of at most ``batch`` rows and one atomic append that moves the cursor.
        Raises SourceError / LedgerError; CursorMoved is a result (``contended``), not an
        error: another ingester recorded these rows."""
        try:
            return self._step()
        except AuditError:
            raise
        except Exception as exc:
            # The source's own code (any package's): whatever it raises or hands back that is
            # not a row is said in one line, and the follow loops reopen the source.
            raise SourceError(
                f"source {self.source.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _step(self) -> IngestResult:
        expect = self.position()
        at = expect
        events: list[Event] = []
        row_ids: list[int | None] = []  # beside events: the source id of a row's own record
        if expect < 0:  # the first step ever: from the oldest row the source holds
            first = self.source.oldest_id()
            if first is None:
                return IngestResult(cursor=expect)
            # ids below it may be in flight (no reader sees them before their commit): the
            # start waits as any hole does
            now = self.monotonic()
            if first > 1 and now - self._seen_since(1, first - 1, now) < self.grace_s:
                return IngestResult(cursor=expect, waiting=True)
            at = first - 1
            note = {"note": _BEFORE_INSTALL} if first > 1 else {}
            events.append(self._note(STARTED_EVENT, first_id=first, **note))
            row_ids.append(None)
        rows = self.source.rows_after(at, self.batch)
        if not rows and expect >= 0:
            return self._check_restart(expect)
        previous = at  # the whole batch, even past a hole that stops the copy below
        for row in rows:
            if type(row.id) is not int or row.id <= previous:
                raise SourceError(
                    f"source {self.source.name!r} gave id {row.id!r} after {previous}: "
                    "rows must come by increasing id"
                )
            previous = row.id
        now = self.monotonic()
        settled: list[tuple[int, int, str]] = []  # the gaps: logged once they are committed
        expected, to, recorded, waiting = at + 1, at, 0, False
        newest: dt.datetime | None = None
        oldest: int | None = None  # the source's oldest id, asked only when a hole settles
        for row in rows:
            if row.id > expected:
                if now - self._seen_since(expected, row.id - 1, now) < self.grace_s:
                    waiting = True  # it may still fill: copy what precedes, then wait
                    break
                if oldest is None:
                    oldest = self.source.oldest_id()
                    oldest = row.id if oldest is None else oldest
                # Decided when it settles: an in-flight id just above a purge lies below
                # the oldest visible id too, so "purged" waited as long as "missing".
                purged_to = min(row.id, oldest) - 1
                for first, last, reason in (
                    (expected, purged_to, "purged"),
                    (max(expected, purged_to + 1), row.id - 1, "missing"),
                ):
                    if first <= last:
                        settled.append((first, last, reason))
                        events.append(self._gap(first, last, reason))
                        row_ids.append(None)
            event = row.event
            # dataclasses.replace costs more than preparing the record: only when needed
            events.append(
                event if event.chain in (None, self.chain) else replace(event, chain=self.chain)
            )
            row_ids.append(row.id)
            recorded += 1
            newest = row.written
            to = row.id
            expected = row.id + 1
        caught_up = waiting or len(rows) < self.batch
        if to == expect:
            return IngestResult(caught_up=caught_up, cursor=expect, waiting=waiting)
        try:
            unreadable = self._append(events, row_ids, expect, to)
        except CursorMoved as moved:
            COUNTERS.incr("ingest_contended")
            return IngestResult(caught_up=False, cursor=moved.found, contended=1)
        recorded -= unreadable
        COUNTERS.incr("source_rows_recorded", recorded)
        for first, last, reason in settled:
            COUNTERS.incr(f"source_gaps_{reason}")
            logger.warning(
                "workflow-audit: source %r: ids %d..%d are %s; recorded a %s record",
                self.source.name,
                first,
                last,
                "deleted before they were read" if reason == "purged" else "missing",
                GAP_EVENT,
            )
        # the lag a reader of the ledger sees: from the row's commit to its record's
        lag = None if newest is None else max(0.0, _age_s(self.clock(), newest))
        return IngestResult(
            recorded, len(settled), caught_up, to, lag, waiting, unreadable=unreadable
        )

    def _seen_since(self, first: int, last: int, now: float) -> float:
        """Since when this ingester has seen the hole ``first..last`` open: a hole that shrank
        (its first ids filled) keeps the time of the hole it was part of."""
        since = now
        for seen_first, (seen_last, seen_at) in self._holes.items():
            if seen_first <= first <= seen_last:
                since = min(since, seen_at)
        # holes the cursor passed are forgotten: the memory holds the holes ahead only
        self._holes = {f: v for f, v in self._holes.items() if v[0] >= first}
        self._holes[first] = (last, since)
        return since

    def _append(self, events: list[Event], row_ids: list[int | None], expect: int, to: int) -> int:
        """Append ``events`` moving the cursor from ``expect`` to ``to``; a row whose event
        cannot be prepared is recorded as ``source.unreadable`` instead (else one bad row
        would stop the source for good). Returns the number of such rows."""
        try:
            self.trail.record_advancing(
                events, cursor=self.cursor, chain=self.chain, expect=expect, to=to
            )
            return 0
        except InvalidRecordError:
            pass  # nothing was appended: find the rows at fault, one at a time
        bad: list[int] = []
        for i, row_id in enumerate(row_ids):
            if row_id is None:
                continue
            try:
                self.trail.prepare(events[i])
            except InvalidRecordError as exc:
                error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
                events[i] = self._note(UNREADABLE_ROW_EVENT, id=row_id, error=error)
                bad.append(row_id)
        # anything still invalid is no row's fault (the chain's name): the step fails
        self.trail.record_advancing(
            events, cursor=self.cursor, chain=self.chain, expect=expect, to=to
        )
        COUNTERS.incr("source_rows_unreadable", len(bad))
        logger.warning(
            "workflow-audit: source %r: rows %s cannot be recorded; recorded %s records",
            self.source.name,
            bad,
            UNREADABLE_ROW_EVENT,
        )
        return len(bad)

    def _check_restart(self, expect: int) -> IngestResult:
        """No row after the cursor ``expect``: if the source's ids now end below it, they
        restarted (see the module docstring): a ``source.reset`` record, the cursor moved
        back to just before the oldest id."""
        newest = self.source.newest_id()
        if newest is None or newest >= expect:
            return IngestResult(cursor=expect)
        oldest = self.source.oldest_id()
        if oldest is None:  # emptied again meanwhile: the next step looks again
            return IngestResult(cursor=expect)
        back = min(oldest, newest) - 1
        reset = self._note(
            RESET_EVENT,
            previous_cursor=expect,
            newest_id=newest,
            oldest_id=oldest,
            reason=_RESET_REASON,
        )
        try:
            self.trail.record_advancing(
                [reset], cursor=self.cursor, chain=self.chain, expect=expect, to=back
            )
        except CursorMoved as moved:
            COUNTERS.incr("ingest_contended")
            return IngestResult(caught_up=False, cursor=moved.found, contended=1)
        self._holes.clear()  # the ids mean other rows now
        COUNTERS.incr("source_resets")
        logger.warning(
            "workflow-audit: source %r: ids restarted (newest %d, the cursor was at %d); "
            "recorded a %s record and read again from id %d",
            self.source.name,
            newest,
            expect,
            RESET_EVENT,
            back + 1,
        )
        return IngestResult(caught_up=False, cursor=back, resets=1)

    def _gap(self, first: int, last: int, reason: str) -> Event:
        return self._note(
            GAP_EVENT, first_id=first, last_id=last, count=last - first + 1, reason=reason
        )

    def _note(self, event: str, **data: object) -> Event:
        """A record of the ingestion itself (a gap, the start, a reset, an unreadable row)."""
        return Event(
            type=event,
            data={"source": self.source.name, **data},
            subject={"source": self.source.name},
            chain=self.chain,
        )

    def run(
        self,
        *,
        follow: bool = False,
        interval_s: float = 1.0,
        stop: threading.Event | None = None,
    ) -> IngestResult:
        """Step until caught up; with ``follow``, go on every ``interval_s`` until ``stop``
        is set, failures logged (once per kind), counted (``ingest_failures``) and retried
        with backoff up to 30 s. Without ``follow`` a failure raises, and a hole holding the
        cursor back is waited for up to ``grace_s`` (stepping every ``interval_s``): a new
        process has seen no hole before, so a one-shot run (cron) that stopped at once would
        never settle one."""
        stop = stop or threading.Event()
        total = IngestResult(cursor=-1)
        failing = _Failures(repr(self))
        delays = Backoff().delays()
        hole_deadline: float | None = None
        while not stop.is_set():
            try:
                result = self.step()
            except Exception as exc:
                if not follow:
                    raise
                failing.note(exc)  # the follow loop's one containment point
                stop.wait(next(delays))
                continue
            failing.clear()
            delays = Backoff().delays()
            total = total.then(result)
            if result.caught_up and result.contended == 0:
                if follow:
                    stop.wait(interval_s)
                    continue
                if not result.waiting:
                    break
                now = time.monotonic()
                if hole_deadline is None:
                    hole_deadline = now + self.grace_s + interval_s
                if now >= hole_deadline:
                    break
                stop.wait(min(interval_s, hole_deadline - now))
        if total.cursor < 0:  # no step succeeded: say where the ledger's cursor is
            with contextlib.suppress(AuditError):
                total = replace(total, cursor=self.position())
        return total


class _Failures:
    """Failures of one loop: each logged with its traceback the first time its kind is seen
    (not at every retry), all counted; a recovery is logged once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: set[str] = set()
        self.failing = False

    def note(self, exc: Exception) -> None:
        COUNTERS.incr("ingest_failures")
        kind = type(exc).__qualname__
        self.failing = True
        if kind in self.seen:
            logger.debug("workflow-audit: %s failed again: %s", self.what, exc)
            return
        self.seen.add(kind)
        # Ours (an unreachable source, a locked or read-only ledger) say all in one line; a
        # traceback only for what nobody expected.
        logger.warning(
            "workflow-audit: %s failed (%s: %s); retrying with backoff",
            self.what,
            kind,
            exc,
            exc_info=None if isinstance(exc, AuditError) else exc,
        )

    def clear(self) -> None:
        if self.failing:
            logger.warning("workflow-audit: %s works again", self.what)
            self.failing = False


class Background:
    """A daemon thread running ``work(self)`` (from :func:`start_ingesting`)."""

    def __init__(self, work: Callable[[Background], None], name: str) -> None:
        self.stopping = threading.Event()
        #: everything recorded so far (None until the first step succeeded)
        self.result: IngestResult | None = None
        self.thread = threading.Thread(target=work, args=(self,), name=name, daemon=True)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop after its current step and wait up to ``timeout_s``."""
        self.stopping.set()
        self.thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """Is the thread still running?"""
        return self.thread.is_alive()


def start_ingesting(
    open_trail: Callable[[], AuditTrail],
    open_source: Callable[[], Source],
    *,
    chain: str,
    interval_s: float = 1.0,
    grace_s: float = 10.0,
    batch: int = 1000,
    name: str = "workflow-audit-ingest",
) -> Background:
    """Ingest in a daemon thread of this process until :meth:`Background.stop`: fail-open
    (nothing raises out of the thread; opening and every step are retried with backoff up to
    30 s, each failure logged once per kind and counted in ``ingest_failures``). The trail
    and the source are opened in the thread, so a slow or unreachable one never delays the
    caller; a source that raised SourceError is closed and opened again; both are closed
    when the thread stops. A thread does not survive ``fork()``: start it in the process
    that will run it."""

    def work(background: Background) -> None:
        stop = background.stopping
        failing = _Failures(f"ingesting onto chain {chain!r}")
        delays = Backoff().delays()
        trail: AuditTrail | None = None
        source: Source | None = None
        ingestor: Ingestor | None = None
        try:
            while not stop.is_set():
                try:
                    trail = trail or open_trail()
                    source = source or open_source()
                    # one ingestor per opened source: it remembers the holes it has seen
                    if ingestor is None or ingestor.source is not source:
                        ingestor = Ingestor(
                            trail, source, chain=chain, grace_s=grace_s, batch=batch
                        )
                    result = ingestor.step()
                except Exception as exc:  # noqa: BLE001 - the thread's one containment point
                    failing.note(exc)
                    if isinstance(exc, SourceError) and source is not None:
                        _close(source, None)  # a broken connection: open a fresh one
                        source = None
                    stop.wait(next(delays))
                    continue
                failing.clear()
                delays = Backoff().delays()
                last = background.result
                background.result = result if last is None else last.then(result)
                if result.caught_up and result.contended == 0:
                    stop.wait(interval_s)
        finally:
            _close(source, trail)

    background = Background(work, name)
    background.thread.start()
    return background


def _close(source: Source | None, trail: AuditTrail | None) -> None:
    for thing in (source, trail):
        if thing is None:
            continue
        try:
            thing.close()
        except Exception:  # closing is best effort: the thread is ending anyway
            COUNTERS.incr("ingest_failures")
            logger.warning("workflow-audit: closing %r failed", thing, exc_info=True)


def source_names() -> list[str]:
    """The names of the installed sources (entry point group :data:`SOURCE_ENTRY_POINTS`)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=SOURCE_ENTRY_POINTS)})


def load_source(spec: str) -> Source:
    """Open the source ``spec`` names: an installed source (``airflow``) or
    ``module:callable``, a zero-argument callable returning a :class:`Source`. An unknown
    name, or one whose code cannot be loaded, is a ConfigError saying so; a source that
    cannot reach its data raises SourceError."""
    from importlib import import_module
    from importlib.metadata import entry_points

    if ":" in spec:
        module, _, attr = spec.partition(":")
        what = f"source {spec!r}"
        try:
            factory = getattr(import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:  # ValueError: ":x"
            raise ConfigError(f"{what} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    else:
        found = {ep.name: ep for ep in entry_points(group=SOURCE_ENTRY_POINTS)}
        if spec not in found:
            known = ", ".join(sorted(found)) or "none installed"
            raise ConfigError(
                f"no source {spec!r} (installed: {known}; or give MODULE:CALLABLE); install "
                'the adapter that provides it, e.g. pip install "workflow-audit[airflow]"'
            )
        what = f"source {spec!r} ({found[spec].value})"
        try:
            factory = found[spec].load()
        # another package's code: whatever it raises is said in one line, not a traceback
        except Exception as exc:
            raise ConfigError(f"{what} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    try:
        source = factory()
    except AuditError:
        raise
    except Exception as exc:  # as above: the source's own code
        raise SourceError(f"{what} cannot be opened: {type(exc).__name__}: {exc}") from exc
    if not isinstance(source, Source):
        raise ConfigError(f"{what} returned {type(source).__name__}, not a Source")
    name = getattr(source, "name", None)
    # The name is the cursor's and every record's: one plain token, not a sentence.
    if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} is named {name!r}: a source's name is letters, digits, '.', '_' or '-'"
        )
    return source
