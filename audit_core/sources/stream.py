"""Event streams (Prefect's events, …) followed onto a chain: backfill, then live, each event
recorded once by its key.

>>> import datetime as dt, threading
>>> from audit_core import AuditConfig, AuditTrail, Event, Record
>>> T = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
>>> class Numbers:
...     name = "example"
...     def __init__(self, n):
...         self.items = [StreamItem(T + dt.timedelta(seconds=i), str(i),
...                       [Event(type="thing.happened", data={"i": i}, key=f"n:{i}")])
...                       for i in range(n)]
...     def backfill(self, since, limit):
...         yield [i for i in self.items if since is None or i.occurred >= since]
...     def oldest(self):
...         return self.items[0].occurred if self.items else None
...     def live(self, since, stop):
...         return iter(())
...     def close(self):
...         pass
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> follower = StreamFollower(trail, Numbers(3), chain="events", overlap_s=60)
>>> result = follower.run(once=True)
>>> result.recorded, result.duplicates, result.cursor == T + dt.timedelta(seconds=2)
(3, 0, True)
>>> follower.run(once=True).recorded  # read again behind the cursor: nothing twice
0
>>> [Record.from_stored(r).event for r in trail.ledger.read("events")]
['source.started', 'thing.happened', 'thing.happened', 'thing.happened']

A :class:`Stream` is a source whose events have no dense ids (unlike a table's rows, see
:mod:`audit_core.sources`): Prefect's event stream, say. Each event is a :class:`StreamItem`
(when it occurred, its id, the core events to record for it, each with an
:attr:`~audit_core.Event.key`). A :class:`StreamFollower` records them on a chain.

**Exactly once comes from the keys, not the cursor.** The ledger stores at most one record
per key and chain and skips the rest, so a follower may read an event any number of times
(again after a restart, a reconnect, or beside a second follower, or after the flow process
that ran the run already recorded the same state with the same key) and it is recorded once.
The cursor (``source:<name>`` in the ledger, :func:`audit_core.sources.cursor_name`) is only
where to resume: the largest ``occurred`` recorded, in microseconds since the epoch, moved
forward after each committed batch, but **never past the follower's own clock**: an event
stamped ahead (a worker whose clock runs fast) is recorded, counted (``future`` in the result,
counter ``stream_future_events``) and logged once a run with how far ahead it was, and the
cursor stops at the clock, so the events that happen meanwhile are still read. No margin
below the clock is needed: every read starts ``overlap_s`` behind the cursor. Events reach a
stream late and out of order (Prefect's clients send task-run events in batches; the live
stream is in arrival order), so a (re)start reads again from ``cursor - overlap_s``: an
event later than that by more than the overlap when it reached the source can be missed by
a restart, never recorded twice.

**The start.** The first run (no cursor) writes a ``source.started`` record
(``{"source", "first"}``: the oldest event the stream holds) and backfills from it.

**Gaps are recorded, never silent.** When the oldest event the stream still holds is newer
than the cursor, the events in between may have expired before they were read (Prefect
keeps them ``PREFECT_SERVER_EVENTS_RETENTION_PERIOD``, 7 days by default): one
``source.gap`` record ``{"source", "since", "until", "reason": "expired", "note"}`` (keyed
by its ``since``, so a restart does not repeat it), and the cursor moves to ``until``. The
note says what the follower cannot tell apart: a server idle for longer than its retention
holds nothing between either.

**Live.** After the backfill the follower reads :meth:`Stream.live` and commits a batch
every ``batch`` events or ``flush_s`` seconds. A live stream may drop events under a burst
(Prefect's server keeps at most 256 events waiting for a websocket subscriber and drops the
rest), so ``sweep_s`` seconds (5) after the previous sweep ended the follower also backfills
from where the previous sweep began, less ``sweep_margin_s`` (15: the source's write delay,
Prefect's persister flushes every few seconds, and clock skew): an event the live stream
dropped is recorded about ``sweep_s`` plus a sweep's read late (``swept`` in the result,
counter ``stream_events_swept``). The sweep's pages are read by a thread and recorded by the
live loop as they arrive: the loop never waits for them, so live events are not held behind
a sweep. The keys this run recorded in the last ``sweep_margin_s + 2 * (sweep_s + a sweep's
read) + 60`` seconds, and the ids of their events, are remembered (at most 250,000), and
events the sweep reads again (by their id, then by their records' keys) are dropped before
they reach the ledger (``known`` in the result: events, not records); older ones are skipped
by the ledger's keys. An event that reached the source later than ``sweep_margin_s`` *and*
was dropped live is left to the next restart's overlap.

**Reads and stops.** :meth:`Stream.oldest` and the backfill pages are read by one thread at
a time (a daemon; a new read waits for the previous reader to end, so two never share the
stream's connection), a few pages ahead of their recording; the follower waits on it, on the
live iterator and on its backoff looking at ``stop`` at least every quarter of a second, so a
read that hangs never holds a stop back (the thread is left to end with the process).

**Failures.** A disconnect (:class:`SourceError`, or the live iterator ending before
``stop``) is logged once, counted (``stream_reconnects``), waited out with backoff
(:class:`audit_core.ship.Backoff`) and followed by a backfill from the cursor again. A batch
the ledger refuses is retried with backoff (``stream_ledger_failures``; nothing is
acknowledged and the cursor does not move) until it is committed or the follower stops.
An event that cannot be recorded (its event fails validation) becomes a
``source.unreadable`` record ``{"source", "id", "error"}``.

**Lag** (``FollowResult.lag_p50_s``/``lag_p95_s``): the follower's clock when recorded less
occurred, of the live events that occurred after the cursor at the start of live (older ones
are the stream's replay on connecting, recorded by the backfill already). A negative lag (an
event dated ahead of the clock) counts as 0 in the percentiles and as ``skewed``.

Counters (:data:`audit_core.COUNTERS`): ``stream_events_recorded``,
``stream_events_deduplicated``, ``stream_events_swept``, ``stream_gaps``, ``stream_reconnects``,
``stream_ledger_failures``, ``stream_events_unreadable``, ``stream_future_events``.

Running it: :meth:`StreamFollower.run`, or ``workflow-audit follow NAME`` (streams from the
entry point group :data:`STREAM_ENTRY_POINTS`, or ``MODULE:CALLABLE``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from audit_core._metrics import COUNTERS
from audit_core.errors import AuditError, ConfigError, InvalidRecordError, SourceError
from audit_core.ship import Backoff
from audit_core.sources import (
    GAP_EVENT,
    STARTED_EVENT,
    UNREADABLE_ROW_EVENT,
    cursor_name,
)
from audit_core.trail import AuditTrail, Event

__all__ = [
    "STREAM_ENTRY_POINTS",
    "FollowResult",
    "Stream",
    "StreamFollower",
    "StreamItem",
    "load_stream",
    "stream_names",
    "to_micros",
]

logger = logging.getLogger("workflow_audit")

#: Entry point group of installed streams: name -> a zero-argument callable returning a
#: :class:`Stream` (the Prefect adapter registers ``prefect``).
STREAM_ENTRY_POINTS = "workflow_audit.streams"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICRO = dt.timedelta(microseconds=1)
_MAX_ERROR_CHARS = 200  # of a source.unreadable record's error: what failed, not the event
_MAX_LAGS = 100_000  # live lags kept for the percentiles (the newest)
_TICK_S = 0.25  # the longest any wait of the follower goes without looking at ``stop``
_READ_AHEAD = 4  # pages a reader thread reads ahead of the one being recorded
_MAX_RECENT = 250_000  # keys remembered as recorded (memory bound; beyond: the ledger dedupes)
_ENDED = object()  # a reader's mark: its pages ended
_GAP_NOTE = (
    "events between since and until may have expired before they were read; "
    "the server may also simply have had none"
)


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One event of a stream, as the core events to record for it (0..n, each keyed)."""

    occurred: dt.datetime  #: when it happened (aware; the cursor and the lag)
    #: the stream's id of the event: the same whenever it is read again, and no other event's
    #: (the follower drops an id it recorded moments before; a source.unreadable record names it)
    id: str
    #: what to record; their chain is ignored (the follower's). Looked at only for events not
    #: dropped by their id: a stream may compute it on first access (a lazy Sequence).
    events: Sequence[Event] = ()


@runtime_checkable
class Stream(Protocol):
    """Events of an outside system, backfilled by time and then followed live. Raises
    :class:`~audit_core.errors.SourceError` when it cannot be read; every method may be
    called again after one failed (the follower reconnects through it).

    Optional attributes ``workflow-audit follow`` uses as its defaults: ``chain``,
    ``ledger_url``, ``config`` (an :class:`~audit_core.config.AuditConfig`, to sign and redact
    as the orchestrator's own writers do) and ``overlap_s``."""

    #: stable name ("prefect"); the cursor is ``"source:" + name``
    name: str

    def backfill(self, since: dt.datetime | None, limit: int) -> Iterator[Sequence[StreamItem]]:
        """Pages of at most ``limit`` items that occurred at or after ``since`` (None: every
        event held), ascending by occurred, up to now. Read by a thread of the follower
        (with :meth:`oldest`; one such read at a time): a read should time out rather than
        hang, but a hanging one does not keep the follower from stopping."""
        ...

    def oldest(self) -> dt.datetime | None:
        """When the oldest event the stream still holds occurred; None when it holds none."""
        ...

    def live(self, since: dt.datetime, stop: threading.Event) -> Iterator[StreamItem | None]:
        """Events as they arrive (from about ``since``), with a None at least every second
        while none does; ends once ``stop`` is set, after handing over what it holds."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...


def to_micros(when: dt.datetime) -> int:
    """Microseconds since the epoch (the cursor's unit); a naive time is taken as UTC.

    >>> to_micros(dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc))
    1000000
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - _EPOCH) // _MICRO


def _from_micros(micros: int) -> dt.datetime:
    return _EPOCH + micros * _MICRO


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True, slots=True)
class FollowResult:
    """What a run of :meth:`StreamFollower.run` did."""

    recorded: int = 0  #: records appended for the stream's events
    duplicates: int = 0  #: events' records skipped: their key was already on the chain
    known: int = 0  #: events read again and dropped by id before the ledger (recorded just before)
    gaps: int = 0  #: ``source.gap`` records written
    unreadable: int = 0  #: events recorded as ``source.unreadable``
    reconnects: int = 0  #: disconnects followed by a reconnect
    ledger_failures: int = 0  #: batches the ledger refused once (and were retried)
    items: int = 0  #: events read from the stream (again after an overlap, too)
    sweeps: int = 0  #: backfills while live (each ``sweep_s``)
    swept: int = 0  #: records the live stream had dropped, appended by a sweep
    future: int = 0  #: events dated after the follower's clock when recorded (clock skew)
    ahead_s: float = 0.0  #: how far ahead of the clock the furthest of them was
    skewed: int = 0  #: live events whose lag was negative (counted as 0 in the percentiles)
    cursor: dt.datetime | None = None  #: where the cursor is afterwards
    lags_s: Sequence[float] = field(default=(), repr=False)  #: live: record time - occurred

    @property
    def lag_p50_s(self) -> float | None:
        """Median lag of the live events recorded (None: none live)."""
        return _percentile(self.lags_s, 0.50)

    @property
    def lag_p95_s(self) -> float | None:
        """95th percentile lag of the live events recorded (None: none live)."""
        return _percentile(self.lags_s, 0.95)

    def summary(self) -> str:
        """One line for a person."""
        where = "none" if self.cursor is None else self.cursor.isoformat()
        extra = [
            f"{n} {what}"
            for n, what in (
                (self.unreadable, "unreadable"),
                (self.reconnects, "reconnect(s)"),
                (self.ledger_failures, "ledger failure(s) retried"),
                (self.swept, "found by sweeps (dropped live)"),
                (self.known, "read again and dropped before the ledger"),
            )
            if n
        ]
        if self.future:
            extra.append(
                f"{self.future} dated ahead of this clock (up to {self.ahead_s:.1f}s; the "
                "cursor waits for the clock)"
            )
        if self.lag_p50_s is not None:
            skew = f" ({self.skewed} skewed, counted as 0)" if self.skewed else ""
            extra.append(f"lag p50 {self.lag_p50_s:.2f}s p95 {self.lag_p95_s or 0:.2f}s{skew}")
        tail = "".join(", " + e for e in extra)
        return (
            f"{self.recorded} record(s), {self.duplicates} duplicate(s) skipped, "
            f"{self.gaps} gap(s), cursor at {where}{tail}"
        )


class _StoppedError(Exception):
    """The follower was stopped while a batch waited for the ledger (nothing committed)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Reader:
    """One thread reading the stream's pull side (:meth:`Stream.oldest`, the pages of
    :meth:`Stream.backfill`) for the follower, which waits on it looking at ``stop`` every
    :data:`_TICK_S` (a read that hangs never holds a stop back) or, live, only takes what is
    ready (a sweep never holds live events back). ``work(put)`` puts what it reads; the
    thread is a daemon: a read still hanging when the follower stops ends with the process."""

    def __init__(self, work: Callable[[Callable[[object], bool]], None], name: str) -> None:
        self.pages: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[Callable[[object], bool]], None]) -> None:
        try:
            work(self._put)
            self._put(_ENDED)
        except Exception as exc:  # noqa: BLE001 - handed to the follower, who raises it
            self._put(exc)

    def _put(self, thing: object) -> bool:
        """Queue ``thing`` (False: cancelled, nobody will take it)."""
        while not self.cancelled.is_set():
            try:
                self.pages.put(thing, timeout=_TICK_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, stop: threading.Event) -> object:
        """The next thing read; raises _StoppedError once ``stop`` is set."""
        while not stop.is_set():
            try:
                return self.pages.get(timeout=_TICK_S)
            except queue.Empty:
                if not self.thread.is_alive() and self.pages.empty():
                    return SourceError("the stream's reader ended without a word")
        raise _StoppedError

    def ready(self) -> object | None:
        """The next thing read if there is one (None: not yet)."""
        try:
            return self.pages.get_nowait()
        except queue.Empty:
            if self.thread.is_alive() or not self.pages.empty():
                return None
            # ended without its mark: only a BaseException (not handed on) does that
            return SourceError("the stream's reader ended without a word")

    def cancel(self) -> None:
        self.cancelled.set()


class StreamFollower:
    """Records ``stream``'s events on ``chain`` of ``trail``'s ledger (see the module
    docstring). One follower is run by one thread at a time; any number of followers, in any
    processes, may share a stream and a ledger."""

    def __init__(
        self,
        trail: AuditTrail,
        stream: Stream,
        *,
        chain: str,
        overlap_s: float = 300.0,
        batch: int = 500,
        flush_s: float = 0.2,
        sweep_s: float = 5.0,
        sweep_margin_s: float = 15.0,
        clock: Callable[[], dt.datetime] = _utcnow,
        backoff: Backoff | None = None,
    ) -> None:
        if batch < 1 or min(overlap_s, flush_s, sweep_s, sweep_margin_s) < 0:
            raise ValueError(
                f"batch must be >= 1, the times >= 0: {batch}, {overlap_s}, {flush_s}, "
                f"{sweep_s}, {sweep_margin_s}"
            )
        self.trail = trail
        self.stream = stream
        self.chain = chain
        self.overlap = dt.timedelta(seconds=overlap_s)
        self.batch = batch
        self.flush_s = flush_s
        self.sweep_s = sweep_s
        self.sweep_margin = dt.timedelta(seconds=sweep_margin_s)
        self.sweep_margin_s = sweep_margin_s
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.cursor = cursor_name(stream.name)
        self._once = False
        self._totals: dict[str, int] = {}
        self._lags: deque[float] = deque(maxlen=_MAX_LAGS)
        self._ahead = dt.timedelta(0)  # the furthest ahead of the clock an event was
        self._reader: _Reader | None = None  # the one reading the stream's pull side
        # ids and keys recorded recently (a sweep reads them again): dropped before the ledger
        self._recent: set[str] = set()
        self._recent_order: deque[tuple[float, str]] = deque()
        # what a sweep can read again: from the previous sweep's start less the margin
        self._recent_s = sweep_margin_s + 2 * sweep_s + 60.0

    def __repr__(self) -> str:
        return f"StreamFollower({self.stream.name!r} -> chain {self.chain!r})"

    def position(self) -> int:
        """The cursor: microseconds since the epoch of the newest event recorded; -1 before."""
        return self.trail.ledger.get_cursor(self.cursor, self.chain)

    def run(self, *, once: bool = False, stop: threading.Event | None = None) -> FollowResult:
        """Backfill from the cursor; then (unless ``once``) follow live until ``stop`` is set,
        reconnecting with backoff. With ``once`` a failure raises (SourceError, LedgerError);
        without, failures are logged once per outage, counted and retried."""
        stop = stop or threading.Event()
        self._once = once
        self._totals = {}
        self._lags.clear()
        self._ahead = dt.timedelta(0)
        self._recent.clear()
        self._recent_order.clear()
        delays = self.backoff.delays()
        failing = False
        try:
            while not stop.is_set():
                try:
                    self._call(self._catch_up, stop)
                    if failing:
                        logger.warning("workflow-audit: %r reads its stream again", self)
                        failing = False
                    delays = self.backoff.delays()
                    if once:
                        break
                    self._call(self._follow_live, stop)
                    if not stop.is_set():  # the live iterator ended by itself
                        raise SourceError(f"the live stream of {self.stream.name!r} ended")
                except AuditError as exc:
                    if once:
                        raise
                    # a broken stream, or a ledger refusing the start or gap record
                    what = "reconnects" if isinstance(exc, SourceError) else "ledger_failures"
                    self._add(what)
                    COUNTERS.incr(f"stream_{what}")
                    log = logger.debug if failing else logger.warning
                    log("workflow-audit: %r: %s; retrying with backoff", self, exc)
                    failing = True
                    stop.wait(next(delays))
        except _StoppedError:
            pass
        finally:
            if self._reader is not None:
                self._reader.cancel()
        position = self.position()
        return FollowResult(
            recorded=self._totals.get("recorded", 0),
            duplicates=self._totals.get("duplicates", 0),
            gaps=self._totals.get("gaps", 0),
            unreadable=self._totals.get("unreadable", 0),
            reconnects=self._totals.get("reconnects", 0),
            ledger_failures=self._totals.get("ledger_failures", 0),
            items=self._totals.get("items", 0),
            sweeps=self._totals.get("sweeps", 0),
            swept=self._totals.get("swept", 0),
            known=self._totals.get("known", 0),
            future=self._totals.get("future", 0),
            ahead_s=self._ahead.total_seconds(),
            skewed=self._totals.get("skewed", 0),
            cursor=None if position < 0 else _from_micros(position),
            lags_s=tuple(self._lags),
        )

    def _call(self, step: Callable[[threading.Event], None], stop: threading.Event) -> None:
        """``step(stop)``, with whatever the stream's own code raises said as SourceError."""
        try:
            step(stop)
        except (AuditError, _StoppedError):
            raise
        except Exception as exc:
            raise SourceError(
                f"stream {self.stream.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _add(self, what: str, n: int = 1) -> None:
        self._totals[what] = self._totals.get(what, 0) + n

    def _at(self) -> int:
        """The cursor, never later than the follower's own clock (-1: none yet)."""
        return min(self.position(), to_micros(self.clock()))

    def _start_reader(
        self, work: Callable[[Callable[[object], bool]], None], stop: threading.Event
    ) -> _Reader:
        """A reader for ``work``, once the previous one ended: one reader at a time, so two
        never share (or close, or replace) the stream's connection at once."""
        previous = self._reader
        if previous is not None:
            previous.cancel()
            while previous.thread.is_alive():
                if stop.is_set():
                    raise _StoppedError
                previous.thread.join(_TICK_S)
        self._reader = _Reader(work, f"workflow-audit-read-{self.stream.name}")
        return self._reader

    def _oldest(self, stop: threading.Event) -> dt.datetime | None:
        """:meth:`Stream.oldest`, read by the reader thread (stop is looked at meanwhile)."""

        def work(put: Callable[[object], bool]) -> None:
            put(self.stream.oldest())

        reader = self._start_reader(work, stop)
        got = reader.get(stop)
        if isinstance(got, Exception):
            raise got
        return got if isinstance(got, dt.datetime) else None

    def _pages(self, since: dt.datetime | None, stop: threading.Event) -> _Reader:
        """A reader of the backfill pages from ``since`` (read ahead of their recording)."""

        def work(put: Callable[[object], bool]) -> None:
            for page in self.stream.backfill(since, self.batch):
                if not put(page):
                    return

        return self._start_reader(work, stop)

    def _since(self, stop: threading.Event) -> dt.datetime | None:
        """Where a read starts: the cursor less the overlap (None: the stream's start).
        Writes the start and gap records it finds due."""
        oldest = self._oldest(stop)
        at = self._at()
        if at < 0:
            first = None if oldest is None else oldest.isoformat()
            self._commit_own([self._note(STARTED_EVENT, "started", first=first)])
            return None
        if oldest is not None and to_micros(oldest) > at:
            since = _from_micros(at)
            until = min(oldest, self.clock())
            gap = self._note(
                GAP_EVENT,
                f"gap:{at}",
                since=since.isoformat(),
                until=oldest.isoformat(),
                reason="expired",
                note=_GAP_NOTE,
            )
            if self._commit_own([gap]):
                self._add("gaps")
                COUNTERS.incr("stream_gaps")
                logger.warning(
                    "workflow-audit: %r: events from %s to %s may have expired before they "
                    "were read (or there were none); recorded a %s record",
                    self,
                    since.isoformat(),
                    oldest.isoformat(),
                    GAP_EVENT,
                )
            self.trail.ledger.set_cursor(self.cursor, self.chain, to_micros(until))
            return until - self.overlap
        return _from_micros(at) - self.overlap

    def _catch_up(self, stop: threading.Event) -> None:
        self._backfill(self._since(stop), stop)

    def _backfill(self, since: dt.datetime | None, stop: threading.Event) -> int:
        """Record the stream's events since ``since`` in batches; the records appended.
        Stopped, it records what was read and returns."""
        reader = self._pages(since, stop)
        pending: list[StreamItem] = []
        size = appended = 0
        try:
            while True:
                got = reader.get(stop)
                if got is _ENDED:
                    break
                if isinstance(got, Exception):
                    raise got
                page: Sequence[StreamItem] = got  # type: ignore[assignment]
                pending.extend(page)
                size += sum(len(item.events) for item in page)
                if size >= self.batch:
                    appended += self._commit(pending, stop)
                    pending, size = [], 0
        except _StoppedError:
            pass
        return appended + self._commit(pending, stop)

    def _follow_live(self, stop: threading.Event) -> None:
        at = self._at()
        since = _from_micros(max(at, 0)) - self.overlap
        pending: list[StreamItem] = []
        size = 0
        first = 0.0
        swept_to = at  # the cursor when the last sweep (or the catch-up) began
        sweep: _Reader | None = None  # the sweep reading beside the live stream
        sweep_mark = swept = 0
        sweep_began = 0.0
        next_sweep = time.monotonic() + self.sweep_s
        items = self.stream.live(since, stop)
        try:
            for item in items:
                now = time.monotonic()
                if item is not None:
                    if not pending:
                        first = now
                    pending.append(item)
                    size += len(item.events)
                if pending and (size >= self.batch or now - first >= self.flush_s):
                    self._commit(pending, stop, live_after=at)
                    pending, size = [], 0
                if sweep is not None:
                    # what the sweep has read so far (no more: the live stream waits for
                    # neither its reads nor a long run of its pages)
                    for _ in range(_READ_AHEAD):
                        if (got := sweep.ready()) is None:
                            break
                        if isinstance(got, Exception):
                            raise got
                        if got is _ENDED:
                            self._swept(swept)
                            swept_to, sweep = sweep_mark, None
                            next_sweep = self._next_sweep(time.monotonic() - sweep_began)
                            break
                        swept += self._commit(list(got), stop)  # type: ignore[call-overload]
                elif self.sweep_s and now >= next_sweep and not stop.is_set():
                    sweep_mark, swept, sweep_began = self._at(), 0, now
                    sweep = self._pages(_from_micros(max(swept_to, 0)) - self.sweep_margin, stop)
        finally:
            # what was read is recorded, whether the stream stopped or broke
            self._commit(pending, stop, live_after=at)
            if sweep is not None:
                sweep.cancel()
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _next_sweep(self, took: float) -> float:
        """When the next sweep begins, after one that took ``took`` s: ``sweep_s`` later (not
        later under load: an event dropped live waits for the next sweep's end). The keys
        remembered cover what the next one reads again (since this one began, less the
        margin)."""
        self._recent_s = self.sweep_margin_s + 2 * (took + self.sweep_s) + 60.0
        return time.monotonic() + self.sweep_s

    def _swept(self, missed: int) -> None:
        """A sweep (a backfill while live) ended: ``missed`` records the live stream had
        dropped were appended by it (see the module docstring)."""
        self._add("sweeps")
        if missed:
            self._add("swept", missed)
            COUNTERS.incr("stream_events_swept", missed)
            logger.warning(
                "workflow-audit: %r: %d record(s) missing from the live stream were found by "
                "a sweep of the backfill",
                self,
                missed,
            )

    def _known(self, key: str | None) -> bool:
        """Whether ``key`` was recorded (or skipped as a duplicate) by this run recently."""
        return key is not None and key in self._recent

    def _remember(self, keys: Sequence[str | None]) -> None:
        """Remember ``keys`` (record keys, and events' ids as ``id:<id>``) as recorded;
        forget those older than a sweep reads again, and the oldest beyond
        :data:`_MAX_RECENT` (the ledger's keys still dedupe them)."""
        now = time.monotonic()
        for key in keys:
            if key is not None and key not in self._recent:
                self._recent.add(key)
                self._recent_order.append((now, key))
        order, horizon = self._recent_order, now - self._recent_s
        while order and (order[0][0] < horizon or len(order) > _MAX_RECENT):
            self._recent.discard(order.popleft()[1])

    def _commit(
        self, items: list[StreamItem], stop: threading.Event, *, live_after: int | None = None
    ) -> int:
        """Record ``items`` in one transaction (retried while the ledger refuses), then move
        the cursor to the newest of them, never past the follower's clock; the records
        appended. Events this run recorded recently are dropped before the ledger (counted
        as duplicates). ``live_after``: they came live, and those that occurred after it
        (the cursor when live began; older ones are the stream's replay on connecting) count
        in the lag."""
        if not items:
            return 0
        events: list[Event] = []
        owners: list[tuple[StreamItem, int]] = []  # beside events: whose, which of its
        known = skipped = 0
        for item in items:
            if self._known("id:" + item.id):  # before its events: they may cost a mapping
                known += 1
                continue
            for j, event in enumerate(item.events):
                if self._known(event.key):  # another event's record, with the same key
                    skipped += 1
                    continue
                # dataclasses.replace costs more than the record: only when needed
                events.append(
                    event if event.chain == self.chain else replace(event, chain=self.chain)
                )
                owners.append((item, j))
        appended = self._append_retrying(events, owners, stop) if events else 0
        self._remember([event.key for event in events] + ["id:" + item.id for item in items])
        self._add("items", len(items))
        self._add("recorded", appended)
        self._add("duplicates", len(events) - appended + skipped)
        self._add("known", known)
        COUNTERS.incr("stream_events_recorded", appended)
        COUNTERS.incr("stream_events_deduplicated", len(events) - appended + skipped)
        now = self.clock()
        self._note_future(items, now)
        # an event dated ahead (a fast clock) must not carry the cursor past events that
        # happen meanwhile: the cursor stops at this clock (the overlap reads behind it)
        newest = min(max(to_micros(item.occurred) for item in items), to_micros(now))
        if newest > self.position():
            self.trail.ledger.set_cursor(self.cursor, self.chain, newest)
        if live_after is not None:
            for item in items:
                if to_micros(item.occurred) > live_after:
                    lag = (now - item.occurred).total_seconds()
                    if lag < 0:
                        self._add("skewed")
                    self._lags.append(max(lag, 0.0))
        return appended

    def _note_future(self, items: Sequence[StreamItem], now: dt.datetime) -> None:
        """Count the events dated after ``now``; say so once a run, with the skew."""
        ahead = [item.occurred - now for item in items if item.occurred > now]
        if not ahead:
            return
        furthest = max(ahead)
        first = not self._totals.get("future")
        self._add("future", len(ahead))
        COUNTERS.incr("stream_future_events", len(ahead))
        self._ahead = max(self._ahead, furthest)
        if first:
            logger.warning(
                "workflow-audit: %r: %d event(s) occurred up to %.1fs ahead of this clock (a "
                "clock running fast?); recorded, but the cursor stays at this clock",
                self,
                len(ahead),
                furthest.total_seconds(),
            )

    def _append_retrying(
        self, events: list[Event], owners: list[tuple[StreamItem, int]], stop: threading.Event
    ) -> int:
        delays = self.backoff.delays()
        while True:
            try:
                return self._append(events, owners)
            except (SourceError, InvalidRecordError):
                raise
            except AuditError as exc:  # the ledger: locked, unreachable, read-only
                self._add("ledger_failures")
                COUNTERS.incr("stream_ledger_failures")
                if self._once:
                    raise
                logger.warning(
                    "workflow-audit: %r: the ledger refused a batch of %d (%s); retrying",
                    self,
                    len(events),
                    exc,
                )
                if stop.wait(next(delays)):
                    raise _StoppedError from exc

    def _append(self, events: list[Event], owners: list[tuple[StreamItem, int]]) -> int:
        """Append ``events``; an event that cannot be prepared becomes ``source.unreadable``
        (else one bad event would stop the stream for good). Returns the records appended."""
        try:
            return len(self.trail.record_many(events))
        except InvalidRecordError:
            pass  # nothing was appended: find the events at fault, one at a time
        bad: list[str] = []
        for i, (owner, j) in enumerate(owners):
            try:
                self.trail.prepare(events[i])
            except InvalidRecordError as exc:
                error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
                # keyed by the event and its place in it, so a re-read is not recorded again;
                # hashed: a key is short printable ASCII, a stream's id need not be
                where = hashlib.sha256(owner.id.encode("utf-8", "replace")).hexdigest()[:32]
                events[i] = self._note(
                    UNREADABLE_ROW_EVENT, f"unreadable:{where}:{j}", id=owner.id, error=error
                )
                bad.append(owner.id)
        appended = len(self.trail.record_many(events))
        self._add("unreadable", len(bad))
        COUNTERS.incr("stream_events_unreadable", len(bad))
        logger.warning(
            "workflow-audit: %r: events %s cannot be recorded; recorded %s records",
            self,
            bad,
            UNREADABLE_ROW_EVENT,
        )
        return appended

    def _commit_own(self, events: list[Event]) -> int:
        """Append the follower's own records (start, gap); the number appended (0: a
        restart, or another follower, wrote them already)."""
        return len(self.trail.record_many(events))

    def _note(self, event: str, key: str, **data: object) -> Event:
        """A record of the following itself, keyed per stream so it is written once."""
        name = self.stream.name
        return Event(
            type=event,
            data={"source": name, **data},
            subject={"source": name},
            chain=self.chain,
            key=f"{self.cursor}:{key}",
        )


def stream_names() -> list[str]:
    """The names of the installed streams (entry point group :data:`STREAM_ENTRY_POINTS`)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=STREAM_ENTRY_POINTS)})


def load_stream(spec: str) -> Stream:
    """Open the stream ``spec`` names: an installed stream (``prefect``) or
    ``module:callable``, a zero-argument callable returning a :class:`Stream`. An unknown
    name or code that cannot be loaded is a ConfigError; a stream that cannot be opened
    raises SourceError."""
    from importlib import import_module
    from importlib.metadata import entry_points

    installed = {ep.name: ep for ep in entry_points(group=STREAM_ENTRY_POINTS)}
    what = f"stream {spec!r}"
    try:
        if ":" in spec:
            module, _, attr = spec.partition(":")
            factory = getattr(import_module(module), attr)
        elif spec in installed:
            what += f" ({installed[spec].value})"
            factory = installed[spec].load()
        else:
            raise ConfigError(
                f"no stream {spec!r} (installed: {', '.join(sorted(installed)) or 'none'}; "
                "or give MODULE:CALLABLE); install the adapter that provides it, e.g. pip "
                'install "workflow-audit[prefect]"'
            )
    except AuditError:
        raise
    # another package's code: whatever it raises is said in one line, not a traceback
    except Exception as exc:
        raise ConfigError(f"{what} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    try:
        stream = factory()
    except AuditError:
        raise
    except Exception as exc:
        raise SourceError(f"{what} cannot be opened: {type(exc).__name__}: {exc}") from exc
    if not isinstance(stream, Stream):
        raise ConfigError(f"{what} returned {type(stream).__name__}, not a Stream")
    return stream
