"""Streams onto a chain (audit_core.sources.stream, `workflow-audit follow`): backfill in
occurred order, a resume cursor, overlap, expired events as a gap, live batches, reconnects,
a refusing ledger, each event recorded once by its key."""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from audit_core import COUNTERS, AuditConfig, AuditTrail, Event, Record, verify_chain
from audit_core.errors import SourceError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.ship import Backoff
from audit_core.sources import GAP_EVENT, STARTED_EVENT, UNREADABLE_ROW_EVENT, cursor_name
from audit_core.sources.stream import (
    FollowResult,
    Stream,
    StreamFollower,
    StreamItem,
    load_stream,
    to_micros,
)
from tests.core._cli import Run

ROOT = Path(__file__).parents[2]
CHAIN = "events"
NAME = "test.stream"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
FAST = Backoff(initial_s=0.01, max_s=0.05)


def item(second: float, ident: str | None = None, *, ts: object = None) -> StreamItem:
    """An event that occurred ``second`` s after T0, keyed by its id."""
    ident = ident or f"e{second:g}"
    occurred = T0 + dt.timedelta(seconds=second)
    event = Event(
        type="thing.happened",
        data={"id": ident},
        ts=occurred if ts is None else ts,  # type: ignore[arg-type]
        key=f"test:{ident}",
    )
    return StreamItem(occurred, ident, [event])


class FakeStream:
    """An in-memory stream: events held (``add``, ``purge``), pages of ``limit`` in occurred
    order; live events come from ``feed`` (an exception there is a disconnect)."""

    name = NAME
    chain = CHAIN

    def __init__(self, items: Sequence[StreamItem] = ()) -> None:
        self.held: list[StreamItem] = list(items)
        self.feed: queue.Queue[StreamItem | Exception] = queue.Queue()
        self.backfills: list[dt.datetime | None] = []
        self.lives = 0
        self.fail_backfills = 0
        self.closed = False

    def add(self, *items: StreamItem) -> None:
        self.held.extend(items)

    def purge(self, before: dt.datetime) -> None:
        self.held = [i for i in self.held if i.occurred >= before]

    def backfill(self, since: dt.datetime | None, limit: int) -> Iterator[Sequence[StreamItem]]:
        self.backfills.append(since)
        if self.fail_backfills > 0:
            self.fail_backfills -= 1
            raise SourceError("the test stream is down")
        ordered = sorted(
            (i for i in self.held if since is None or i.occurred >= since),
            key=lambda i: i.occurred,
        )
        for start in range(0, len(ordered), limit):
            yield ordered[start : start + limit]

    def oldest(self) -> dt.datetime | None:
        return min((i.occurred for i in self.held), default=None)

    def live(self, since: dt.datetime, stop: threading.Event) -> Iterator[StreamItem | None]:
        self.lives += 1
        while not stop.is_set():
            try:
                got = self.feed.get(timeout=0.05)
            except queue.Empty:
                yield None
                continue
            if isinstance(got, Exception):
                raise got
            self.held.append(got)  # what went live is held for a later backfill too
            yield got

    def close(self) -> None:
        self.closed = True


def open_fake_stream() -> FakeStream:
    """MODULE:CALLABLE for the CLI: $TEST_STREAM_EVENTS seconds after T0, one a comma."""
    seconds = [float(s) for s in os.environ.get("TEST_STREAM_EVENTS", "").split(",") if s]
    return FakeStream([item(s) for s in seconds])


def broken_stream() -> FakeStream:
    raise RuntimeError("cannot reach the stream")


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def trail(ledger_file: Path) -> Iterator[AuditTrail]:
    SqliteLedger(ledger_file).head(CHAIN)  # the file and schema, for readers in the test
    with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger_file}")) as t:
        yield t


def _records(ledger_file: Path) -> list[Record]:
    return [Record.from_stored(r) for r in SqliteLedger(ledger_file).read(CHAIN)]


def _ids(ledger_file: Path) -> list[str]:
    """The stream ids recorded, in chain order (the follower's own records by type)."""
    return [
        r.data["id"] if r.event == "thing.happened" else r.event  # type: ignore[index]
        for r in _records(ledger_file)
    ]


def _follower(trail: AuditTrail, stream: FakeStream, **kw: object) -> StreamFollower:
    options: dict[str, object] = {"chain": CHAIN, "overlap_s": 60.0, "backoff": FAST}
    options.update(kw)
    return StreamFollower(trail, stream, **options)  # type: ignore[arg-type]


def _wait_for(what: str, ready: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Following:
    """A follower running live in a thread until :meth:`stop`."""

    def __init__(self, follower: StreamFollower) -> None:
        self.stopping = threading.Event()
        self.result: FollowResult | None = None
        self.thread = threading.Thread(target=self._run, args=(follower,), name="test-follow")
        self.thread.start()

    def _run(self, follower: StreamFollower) -> None:
        self.result = follower.run(stop=self.stopping)

    def stop(self) -> FollowResult:
        self.stopping.set()
        self.thread.join(30)
        assert self.result is not None
        return self.result


class TestBackfill:
    """`run(once=True)`: catch up from the cursor."""

    def test_events_become_records_in_occurred_order(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Events held out of order are recorded by occurred time, after source.started."""
        stream = FakeStream([item(s) for s in (3, 1, 2, 5, 4)])
        result = _follower(trail, stream, batch=2).run(once=True)
        assert (5, 0, 0) == (result.recorded, result.duplicates, result.gaps)
        assert [STARTED_EVENT, "e1", "e2", "e3", "e4", "e5"] == _ids(ledger_file)
        started = _records(ledger_file)[0]
        assert {"source": NAME, "first": (T0 + dt.timedelta(seconds=1)).isoformat()} == (
            started.data
        )
        assert verify_chain(SqliteLedger(ledger_file), CHAIN).size == 6

    def test_cursor_is_the_newest_occurred_in_microseconds(self, trail: AuditTrail) -> None:
        """The cursor `source:NAME` holds the newest occurred recorded, in microseconds."""
        stream = FakeStream([item(1), item(2.5)])
        result = _follower(trail, stream).run(once=True)
        newest = T0 + dt.timedelta(seconds=2.5)
        assert newest == result.cursor
        assert to_micros(newest) == trail.ledger.get_cursor(cursor_name(NAME), CHAIN)

    def test_run_again_records_nothing_twice(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A second run reads the overlap again: every event is a skipped duplicate."""
        stream = FakeStream([item(s) for s in range(10)])
        _follower(trail, stream).run(once=True)
        again = _follower(trail, stream).run(once=True)
        assert (0, 10) == (again.recorded, again.duplicates)
        assert 11 == len(_records(ledger_file))

    def test_resume_reads_from_cursor_less_overlap(self, trail: AuditTrail) -> None:
        """A restart asks the stream for events since the cursor minus the overlap."""
        stream = FakeStream([item(100)])
        _follower(trail, stream, overlap_s=30).run(once=True)
        _follower(trail, stream, overlap_s=30).run(once=True)
        assert [None, T0 + dt.timedelta(seconds=70)] == stream.backfills

    def test_late_event_within_the_overlap_is_recorded(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """An event that reaches the stream after newer ones were recorded, but within the
        overlap, is recorded by the next run; the cursor does not move back."""
        stream = FakeStream([item(10), item(20)])
        _follower(trail, stream).run(once=True)
        stream.add(item(15))
        result = _follower(trail, stream).run(once=True)
        assert (1, 2) == (result.recorded, result.duplicates)
        assert [STARTED_EVENT, "e10", "e20", "e15"] == _ids(ledger_file)
        assert T0 + dt.timedelta(seconds=20) == result.cursor

    def test_empty_stream_starts_once(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A stream holding nothing: one source.started (first None), no cursor, however
        many runs; the first events later are recorded."""
        stream = FakeStream()
        assert _follower(trail, stream).run(once=True).cursor is None
        assert _follower(trail, stream).run(once=True).cursor is None
        stream.add(item(1))
        _follower(trail, stream).run(once=True)
        assert [STARTED_EVENT, "e1"] == _ids(ledger_file)
        assert {"source": NAME, "first": None} == _records(ledger_file)[0].data

    def test_same_key_from_another_writer_is_one_record(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """A record another writer (a flow's hook) wrote with the same key is not repeated."""
        trail.record_many(
            [Event(type="thing.happened", data={"id": "e2"}, chain=CHAIN, key="test:e2")]
        )
        result = _follower(trail, FakeStream([item(1), item(2)])).run(once=True)
        assert (1, 1) == (result.recorded, result.duplicates)
        assert ["e2", STARTED_EVENT, "e1"] == _ids(ledger_file)

    def test_unreadable_event_is_recorded_as_such(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """An event that fails validation becomes source.unreadable; the rest go on."""
        odd = "bäd " * 100  # a stream's id need not fit a key: not ASCII, long
        stream = FakeStream([item(1), item(2, odd, ts="not a time"), item(3)])
        result = _follower(trail, stream).run(once=True)
        assert (3, 1) == (result.recorded, result.unreadable)
        assert [STARTED_EVENT, "e1", UNREADABLE_ROW_EVENT, "e3"] == _ids(ledger_file)
        bad = _records(ledger_file)[2]
        assert (odd, NAME) == (bad.data["id"], bad.data["source"])  # type: ignore[index]
        assert 0 == _follower(trail, stream).run(once=True).recorded  # not again

    def test_once_raises_when_the_stream_is_down(self, trail: AuditTrail) -> None:
        """With once, an unreachable stream is a SourceError (the command exits 2)."""
        stream = FakeStream([item(1)])
        stream.fail_backfills = 1
        with pytest.raises(SourceError, match="down"):
            _follower(trail, stream).run(once=True)


class TestGap:
    """Events that expired before they were read."""

    def test_expired_events_become_one_gap(self, trail: AuditTrail, ledger_file: Path) -> None:
        """Oldest held newer than the cursor: one source.gap {source, since, until, reason},
        then the events held; a restart writes no second gap."""
        stream = FakeStream([item(1), item(2)])
        _follower(trail, stream).run(once=True)
        stream.add(item(500), item(600))
        stream.purge(T0 + dt.timedelta(seconds=400))  # 1, 2 and anything between expired
        result = _follower(trail, stream).run(once=True)
        assert (1, 2) == (result.gaps, result.recorded)
        assert [STARTED_EVENT, "e1", "e2", GAP_EVENT, "e500", "e600"] == _ids(ledger_file)
        gap = _records(ledger_file)[3]
        assert {
            "source": NAME,
            "since": (T0 + dt.timedelta(seconds=2)).isoformat(),
            "until": (T0 + dt.timedelta(seconds=500)).isoformat(),
            "reason": "expired",
            "note": "events between since and until may have expired before they were read; "
            "the server may also simply have had none",
        } == gap.data
        assert 0 == _follower(trail, stream).run(once=True).gaps
        assert 6 == len(_records(ledger_file))

    def test_no_gap_while_the_cursor_is_held(self, trail: AuditTrail) -> None:
        """Older events expiring below the cursor are no gap."""
        stream = FakeStream([item(1), item(2), item(3)])
        _follower(trail, stream).run(once=True)
        stream.purge(T0 + dt.timedelta(seconds=3))
        assert 0 == _follower(trail, stream).run(once=True).gaps


class TestLive:
    """`run()` without once: backfill, then live batches until stop."""

    def test_live_events_are_recorded_and_lag_measured(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """Live events are committed within flush_s, the cursor follows, lags are kept."""
        stream = FakeStream([item(1)])
        now = dt.datetime.now(dt.timezone.utc)
        following = Following(_follower(trail, stream, flush_s=0.05))
        try:
            _wait_for("the live stream", lambda: stream.lives == 1)
            for i in range(5):
                stream.feed.put(StreamItem(now, f"live{i}", item(0, f"live{i}").events))
            _wait_for("5 live records", lambda: len(_records(ledger_file)) == 7)
        finally:
            result = following.stop()
        assert (6, 0) == (result.recorded, result.reconnects)
        assert result.lag_p50_s is not None
        assert result.lag_p95_s is not None
        assert 0 <= result.lag_p50_s <= result.lag_p95_s < 60
        assert now == result.cursor
        assert "lag p50" in result.summary()

    def test_disconnect_reconnects_and_backfills_from_the_cursor(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """A broken live stream: counted, backed off, backfilled from the cursor (the events
        missed meanwhile), live again; nothing recorded twice."""
        stream = FakeStream([item(1)])
        before = COUNTERS.snapshot().get("stream_reconnects", 0)
        following = Following(_follower(trail, stream, flush_s=0.01))
        try:
            _wait_for("the live stream", lambda: stream.lives == 1)
            stream.feed.put(item(2))
            _wait_for("e2", lambda: len(_records(ledger_file)) == 3)
            stream.feed.put(SourceError("connection reset"))
            stream.add(item(3))  # happened while disconnected: only a backfill sees it
            _wait_for("the second live stream", lambda: stream.lives == 2)
            stream.feed.put(item(4))
            _wait_for("e4", lambda: len(_records(ledger_file)) == 5)
        finally:
            result = following.stop()
        assert [STARTED_EVENT, "e1", "e2", "e3", "e4"] == _ids(ledger_file)
        assert 1 == result.reconnects
        assert before + 1 == COUNTERS.snapshot().get("stream_reconnects", 0)
        assert T0 + dt.timedelta(seconds=2) - dt.timedelta(seconds=60) == stream.backfills[1]

    def test_sweep_records_what_the_live_stream_dropped(
        self, trail: AuditTrail, ledger_file: Path
    ) -> None:
        """An event the live stream never delivers (dropped under a burst) is found by the
        next sweep (a backfill while live) and counted as swept; the others are not repeated."""
        stream = FakeStream([item(1)])
        following = Following(_follower(trail, stream, flush_s=0.01, sweep_s=0.2))
        try:
            _wait_for("the live stream", lambda: stream.lives == 1)
            stream.feed.put(item(3))
            stream.add(item(2))  # held by the source, never delivered live
            _wait_for("the dropped event", lambda: len(_records(ledger_file)) == 4)
        finally:
            result = following.stop()
        assert [STARTED_EVENT, "e1", "e3", "e2"] == _ids(ledger_file)
        assert (1, 0) == (result.swept, result.reconnects)
        assert result.sweeps >= 1
        assert "1 found by sweeps (dropped live)" in result.summary()

    def test_stream_down_at_start_is_retried(self, trail: AuditTrail, ledger_file: Path) -> None:
        """An unreachable stream without once is retried with backoff, then caught up."""
        stream = FakeStream([item(1)])
        stream.fail_backfills = 3
        following = Following(_follower(trail, stream))
        try:
            _wait_for("e1", lambda: len(_records(ledger_file)) == 2)
        finally:
            result = following.stop()
        assert 3 == result.reconnects

    def test_locked_ledger_retries_the_batch(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A live batch the ledger refuses (locked) is retried and counted; the cursor does
        not move until it is committed; then each event once."""
        stream = FakeStream([item(1)])
        trail.ledger.close()
        locked = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger_file}", busy_timeout_s=0.05))
        following = Following(_follower(locked, stream, flush_s=0.01))
        locker = sqlite3.connect(ledger_file, isolation_level=None)
        try:
            _wait_for("the live stream", lambda: stream.lives == 1)
            before = COUNTERS.snapshot().get("stream_ledger_failures", 0)
            locker.execute("BEGIN IMMEDIATE")
            stream.feed.put(item(2))
            _wait_for(
                "a refused batch",
                lambda: COUNTERS.snapshot().get("stream_ledger_failures", 0) > before,
            )
            held = locked.ledger.get_cursor(cursor_name(NAME), CHAIN)
            assert to_micros(T0 + dt.timedelta(seconds=1)) == held
            locker.execute("ROLLBACK")
            _wait_for("e2", lambda: len(_records(ledger_file)) == 3)
        finally:
            result = following.stop()
            locker.close()
            locked.close()
        assert result.ledger_failures >= 1
        assert [STARTED_EVENT, "e1", "e2"] == _ids(ledger_file)

    def test_stop_commits_what_was_read(self, trail: AuditTrail, ledger_file: Path) -> None:
        """Stopping commits the batch being gathered (a long flush_s) before returning."""
        stream = FakeStream()
        following = Following(_follower(trail, stream, flush_s=3600))
        _wait_for("the live stream", lambda: stream.lives == 1)
        stream.feed.put(item(7))
        _wait_for("e7 read", lambda: stream.feed.empty())
        result = following.stop()
        assert 1 == result.recorded
        assert [STARTED_EVENT, "e7"] == _ids(ledger_file)


class TestLoadStream:
    """`load_stream`: entry points and MODULE:CALLABLE."""

    def test_module_callable(self) -> None:
        stream = load_stream("tests.core.test_stream:open_fake_stream")
        assert isinstance(stream, Stream)
        assert NAME == stream.name

    def test_unknown_name_lists_the_installed(self) -> None:
        from audit_core.errors import ConfigError

        with pytest.raises(ConfigError, match=r"no stream 'nosuch' \(installed: .*prefect"):
            load_stream("nosuch")


def _follow_cmd(ledger_file: Path, *args: str, events: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "TEST_STREAM_EVENTS": events, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "audit_core.cli", "follow",
         "tests.core.test_stream:open_fake_stream", "--ledger", str(ledger_file), *args],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


class TestFollowCommand:
    """`workflow-audit follow`."""

    @pytest.fixture
    def spec(self, ledger_file: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        SqliteLedger(ledger_file).head(CHAIN)
        monkeypatch.setenv("TEST_STREAM_EVENTS", "1,2,3")
        return "tests.core.test_stream:open_fake_stream"

    def test_once_prints_a_summary_and_verifies(
        self, cli: Callable[..., Run], ledger_file: Path, spec: str
    ) -> None:
        """--once records every event, prints one summary line, exit 0; again: nothing."""
        run = cli("follow", spec, "--once", "--ledger", ledger_file, "--batch", "2")
        assert 0 == run.code, run.err
        assert f"{NAME} -> chain 'events': 3 record(s), 0 duplicate(s) skipped, 0 gap(s)" in run.err
        again = cli("follow", spec, "--once", "--ledger", ledger_file)
        assert "0 record(s), 3 duplicate(s) skipped" in again.err
        assert 0 == cli("verify", "--ledger", ledger_file).code

    def test_chain_and_overlap_options(
        self, cli: Callable[..., Run], ledger_file: Path, spec: str
    ) -> None:
        """--chain beats the stream's chain; --overlap 0 reads from the cursor itself."""
        assert 0 == cli("follow", spec, "--once", "--ledger", ledger_file, "--chain", "o").code
        assert 4 == len(list(SqliteLedger(ledger_file).read("o")))
        run = cli("follow", spec, "--once", "--ledger", ledger_file, "--chain", "o",
                  "--overlap", "0")  # fmt: skip
        assert "0 record(s), 1 duplicate(s)" in run.err

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["nosuch"], "no stream 'nosuch'"),
            (["tests.core.no_such_module:x"], "cannot be loaded: ModuleNotFoundError"),
            (["tests.core.test_stream:broken_stream"], "cannot be opened: RuntimeError"),
            (["x:y", "--overlap", "nan"], "--overlap: must be zero or more"),
            (["x:y", "--overlap", "1e9"], "--overlap: must be zero or more"),
            (["x:y", "--batch", "0"], "--batch must be 1 to 100000"),
            (["x:y", "--chain", " "], "--chain must name a chain"),
        ],
    )
    def test_usage_errors_are_one_line(
        self, cli: Callable[..., Run], args: list[str], message: str
    ) -> None:
        """Unknown or broken streams and bad options: exit 2, one line, no traceback."""
        run = cli("follow", *args, "--ledger", "x.db")
        assert 2 == run.code
        assert message in run.err
        assert "Traceback" not in run.err

    def test_stops_on_sigterm(self, ledger_file: Path) -> None:
        """Live: SIGTERM stops after the current batch, exit 0 with the summary."""
        SqliteLedger(ledger_file).head(CHAIN)
        proc = _follow_cmd(ledger_file, events="1,2")
        try:
            _wait_for(
                "the backfill",
                lambda: SqliteLedger(ledger_file).get_cursor(cursor_name(NAME), CHAIN) > 0,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert 0 == proc.returncode, err
        assert "2 record(s), 0 duplicate(s) skipped, 0 gap(s)" in err


def test_summary_of_an_empty_result() -> None:
    """A result with nothing says so in one line."""
    expected = "0 record(s), 0 duplicate(s) skipped, 0 gap(s), cursor at none"
    assert expected == FollowResult().summary()
    assert orjson.dumps(FollowResult().lag_p95_s) == b"null"


class TestClock:
    """Events dated ahead of the follower's clock (a worker's fast clock) and lag skew."""

    def test_future_event_does_not_move_the_cursor_past_the_clock(
        self, trail: AuditTrail, ledger_file: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An event stamped 2 h ahead is recorded and counted, but the cursor stops at the
        follower's clock: events that happen later (before that time) are still recorded."""
        now = T0 + dt.timedelta(seconds=100)
        stream = FakeStream([item(50), item(100 + 7200, "ahead")])
        before = COUNTERS.snapshot().get("stream_future_events", 0)
        with caplog.at_level("WARNING", logger="workflow_audit"):
            first = _follower(trail, stream, clock=lambda: now).run(once=True)
        assert (2, 1) == (first.recorded, first.future)
        assert now == first.cursor
        assert before + 1 == COUNTERS.snapshot().get("stream_future_events", 0)
        ahead = [r.getMessage() for r in caplog.records if "ahead of this clock" in r.getMessage()]
        assert 1 == len(ahead), ahead
        assert "7200" in ahead[0]
        stream.add(item(110), item(120), item(130))
        later = T0 + dt.timedelta(seconds=140)
        again = _follower(trail, stream, clock=lambda: later).run(once=True)
        assert 3 == again.recorded
        assert [STARTED_EVENT, "e50", "ahead", "e110", "e120", "e130"] == _ids(ledger_file)
        assert "1 dated ahead of this clock" in first.summary()

    def test_skewed_live_lag_counts_as_zero(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A live event dated after the clock: lag 0 in the percentiles, counted as skewed."""
        stream = FakeStream([item(1)])
        now = T0 + dt.timedelta(seconds=100)
        following = Following(_follower(trail, stream, flush_s=0.01, clock=lambda: now))
        try:
            _wait_for("the live stream", lambda: stream.lives == 1)
            stream.feed.put(item(90))
            stream.feed.put(item(200))
            _wait_for("2 live records", lambda: len(_records(ledger_file)) == 4)
        finally:
            result = following.stop()
        assert sorted(result.lags_s) == [0.0, 10.0]
        assert (1, 1) == (result.skewed, result.future)
        assert now == result.cursor


class GatedStream(FakeStream):
    """A FakeStream whose backfills after the first ``free`` wait for ``gate`` (a slow or
    hanging REST read); counts backfills reading at once."""

    def __init__(self, items: Sequence[StreamItem] = (), free: int = 1) -> None:
        super().__init__(items)
        self.gate = threading.Event()
        self.free = free
        self.active = 0
        self.most_active = 0
        self.calls = 0
        self.oldest_gate: threading.Event | None = None
        self._lock = threading.Lock()

    def backfill(self, since: dt.datetime | None, limit: int) -> Iterator[Sequence[StreamItem]]:
        with self._lock:
            self.active += 1
            self.calls += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.calls > self.free:
                self.gate.wait(60)
            yield from super().backfill(since, limit)
        finally:
            with self._lock:
                self.active -= 1

    def oldest(self) -> dt.datetime | None:
        if self.oldest_gate is not None:
            self.oldest_gate.wait(60)
        return super().oldest()


class TestSweepsBesideLive:
    """Sweeps read off the live loop, one reader at a time, known events dropped early."""

    def test_live_records_while_a_sweep_hangs(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A sweep whose REST read hangs does not hold live events back; one reader at a
        time; once the read answers, the dropped event is swept."""
        stream = GatedStream([item(1)])
        following = Following(_follower(trail, stream, flush_s=0.01, sweep_s=0.05))
        try:
            _wait_for("a hanging sweep", lambda: stream.active == 1 and stream.calls >= 2)
            stream.add(item(2))  # held by the source, never delivered live
            for s in (3, 4, 5):
                stream.feed.put(item(s))
            _wait_for("3 live records", lambda: len(_records(ledger_file)) == 5)
            assert 1 == stream.most_active
            stream.gate.set()
            _wait_for("the swept event", lambda: len(_records(ledger_file)) == 6)
        finally:
            stream.gate.set()
            result = following.stop()
        assert 1 == stream.most_active
        assert result.swept == 1
        assert [STARTED_EVENT, "e1", "e3", "e4", "e5", "e2"] == _ids(ledger_file)

    def test_known_events_do_not_reach_the_ledger_again(
        self, trail: AuditTrail, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Events recorded live and read again by sweeps are dropped before the ledger."""
        stream = FakeStream([item(1)])
        sent: list[str | None] = []
        record_many = trail.record_many

        def counting(events: Sequence[Event]) -> object:
            sent.extend(e.key for e in events)
            return record_many(events)

        monkeypatch.setattr(trail, "record_many", counting)
        follower = _follower(trail, stream, flush_s=0.01, sweep_s=0.02)
        following = Following(follower)
        try:
            _wait_for("the live stream", lambda: stream.lives == 1)
            for s in range(2, 12):
                stream.feed.put(item(s))
            _wait_for("10 live records", lambda: len(set(sent)) == 12)
            swept = follower._totals.get("sweeps", 0)
            _wait_for("3 more sweeps", lambda: follower._totals.get("sweeps", 0) >= swept + 3)
        finally:
            result = following.stop()
        assert [] == [k for k in set(sent) if sent.count(k) > 1]
        assert result.known > 0
        assert "dropped before the ledger" in result.summary()

    def test_stop_while_reads_hang(self, trail: AuditTrail) -> None:
        """SIGTERM-like stop while oldest() or a backfill page never answers: run returns
        within a second or two."""
        for where in ("oldest", "backfill"):
            stream = GatedStream([item(1)], free=0)
            if where == "oldest":
                stream.oldest_gate = threading.Event()
            following = Following(_follower(trail, stream))
            time.sleep(0.3)  # the read is hanging (nothing to wait for: it never answers)
            started = time.monotonic()
            following.stopping.set()
            following.thread.join(5)
            assert not following.thread.is_alive(), where
            assert time.monotonic() - started < 2.0, where
            stream.gate.set()
            if stream.oldest_gate is not None:
                stream.oldest_gate.set()
