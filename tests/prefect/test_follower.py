"""The follower against a real Prefect server (the session's): every run's lifecycle once, in
occurred order, from a backfill; nothing twice on a second run; live records while flows run;
one record per key beside ``@audited_flow``'s hooks."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.sources import STARTED_EVENT
from audit_core.sources.stream import FollowResult
from prefect_audit import audited_flow
from prefect_audit.follower import PrefectStream, follow, follow_flow
from prefect_audit.settings import WorkflowAuditSettings
from tests.prefect.flows_for_follow import flaky, square

pytestmark = pytest.mark.slow
CHAIN = "prefect"
DEADLINE_S = 180.0
FINAL = ("flowrun.succeeded", "flowrun.failed", "flowrun.crashed")


@flow
def plain_flow(n: int = 2) -> list[int]:
    return [square(i) for i in range(n)]


@flow
def retrying_flow() -> str:
    return flaky()


@flow(retries=1, retry_delay_seconds=0)
def failing_flow() -> None:
    raise ValueError("this flow fails on purpose")


@audited_flow
def decorated_flow() -> int:
    return square(3)


def _records(ledger: Path) -> list[Record]:
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read(CHAIN)]
    finally:
        db.close()


def _lifecycle(rec: Record) -> tuple[str, object, object] | None:
    """(event, run id, attempt) of a run's lifecycle record: what its key stands for."""
    subject = rec.subject or {}
    if rec.event.startswith("flowrun."):
        return rec.event, subject.get("flow_run_id"), subject.get("run_count")
    if rec.event.startswith("task."):
        return rec.event, subject.get("task_run_id"), subject.get("run_count")
    return None


def _settings(ledger: Path) -> WorkflowAuditSettings:
    return WorkflowAuditSettings(ledger_url=f"sqlite:///{ledger}", chain=CHAIN)


def _once(ledger: Path) -> FollowResult:
    return follow(once=True, settings=_settings(ledger), overlap_s=300)


def _finals(ledger: Path, runs: Iterable[str]) -> set[str]:
    """The flow runs among ``runs`` whose final record is on the chain."""
    wanted = set(runs)
    return {
        str(r.subject.get("flow_run_id"))
        for r in _records(ledger)
        if r.event in FINAL and r.subject and str(r.subject.get("flow_run_id")) in wanted
    }


def _wait_for(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _run_flows() -> dict[str, str]:
    """20 flow runs: plain ones, task retries, a flow retried then failed, a failure."""
    runs: dict[str, str] = {}
    for _ in range(15):
        runs[str(plain_flow(return_state=True).state_details.flow_run_id)] = "plain"
    for _ in range(3):
        runs[str(retrying_flow(return_state=True).state_details.flow_run_id)] = "retrying"
    for _ in range(2):
        runs[str(failing_flow(return_state=True).state_details.flow_run_id)] = "failing"
    return runs


def _caught_up(ledger: Path, runs: dict[str, str]) -> None:
    """Follow --once until every run's final record and every task's end are recorded
    (events reach Prefect's database seconds late; task events later still)."""

    def done() -> bool:
        _once(ledger)
        recs = _records(ledger)
        tasks_done = sum(1 for r in recs if r.event == "task.succeeded")
        return _finals(ledger, runs) == set(runs) and tasks_done >= 15 * 2 + 3

    _wait_for("every run recorded", done)


class TestBackfill:
    """`follow --once`."""

    def test_every_lifecycle_record_once_in_occurred_order(self, tmp_path: Path) -> None:
        """After 20 flow runs (task retries, a retried flow, failures), a follower starting
        from scratch records each run's lifecycle once, ordered by occurred; a second run
        records nothing."""
        runs = _run_flows()
        _caught_up(tmp_path / "warm.db", runs)  # every event is in Prefect's database now
        fresh = tmp_path / "fresh.db"
        started = time.monotonic()
        first = _once(fresh)
        elapsed = time.monotonic() - started
        recs = _records(fresh)
        assert STARTED_EVENT == recs[0].event
        stamps = [r.ts for r in recs[1:]]
        assert sorted(stamps) == stamps
        keys = Counter(k for k in map(_lifecycle, recs) if k is not None)
        assert [] == [k for k, n in keys.items() if n > 1]
        for run_id, kind in runs.items():
            mine = {(event, attempt) for event, rid, attempt in keys if rid == run_id}
            expected = {
                "plain": {("flowrun.started", 1), ("flowrun.succeeded", 1)},
                "retrying": {("flowrun.started", 1), ("flowrun.succeeded", 1)},
                "failing": {
                    ("flowrun.started", 1),
                    ("flowrun.retry_scheduled", 1),
                    ("flowrun.started", 2),
                    ("flowrun.failed", 2),
                },
            }[kind]
            assert expected <= mine, (kind, sorted(mine))
        flaky_runs = [
            r
            for r in recs
            if r.event.startswith("task.")
            and (r.subject or {})["task_name"] == "flaky"
            # the session's server also holds other modules' runs of tasks named flaky
            and (r.subject or {}).get("flow_run_id") in runs
        ]
        attempts = Counter((r.event, (r.subject or {})["run_count"]) for r in flaky_runs)
        assert 3 == attempts[("task.retry_scheduled", 1)]
        assert 3 == attempts[("task.succeeded", 2)]
        assert first.recorded == len(recs) - 1
        print(f"backfill: {first.items} events in {elapsed:.2f}s = {first.items / elapsed:.0f}/s")
        again = _once(fresh)
        assert 0 == again.recorded
        assert again.duplicates > 0
        assert len(recs) == len(_records(fresh))

    def test_trace_ids_come_from_the_run(self, tmp_path: Path) -> None:
        """Every record of a flow run shares the trace id derived from its flow run id."""
        run_id = str(plain_flow(return_state=True).state_details.flow_run_id)
        ledger = tmp_path / "ledger.db"
        _caught_up_one(ledger, run_id)
        mine = [r for r in _records(ledger) if (r.subject or {}).get("flow_run_id") == run_id]
        assert {uuid.UUID(run_id).hex} == {(r.trace or {}).get("trace_id") for r in mine}


def _caught_up_one(ledger: Path, run_id: str) -> None:
    def done() -> bool:
        _once(ledger)
        return _finals(ledger, [run_id]) == {run_id}

    _wait_for(f"flow run {run_id}", done)


class TestLive:
    """Live: records arrive while flows run."""

    def test_records_arrive_while_flows_run(self, tmp_path: Path) -> None:
        """A live follower records new runs (a failure too, held for the hook first) within
        seconds, each lifecycle once; its lag is measured."""
        ledger = tmp_path / "ledger.db"
        SqliteLedger(ledger).head(CHAIN)  # made before the follower: this test reads it
        stop = threading.Event()
        box: dict[str, Any] = {}
        context = contextvars.copy_context()

        def run() -> None:
            box["result"] = follow(settings=_settings(ledger), overlap_s=300, stop=stop)

        thread = threading.Thread(target=context.run, args=(run,), name="test-follow-prefect")
        thread.start()
        try:
            _wait_for("the follower's start", lambda: bool(_records(ledger)))
            runs = {str(plain_flow(return_state=True).state_details.flow_run_id) for _ in range(3)}
            failed = str(failing_flow(return_state=True).state_details.flow_run_id)
            _wait_for("live records", lambda: _finals(ledger, runs | {failed}) == runs | {failed})
        finally:
            stop.set()
            thread.join(60)
        result: FollowResult = box["result"]
        keys = Counter(k for k in map(_lifecycle, _records(ledger)) if k is not None)
        assert [] == [k for k, n in keys.items() if n > 1]
        assert result.lag_p95_s is not None
        print(f"live lag p50 {result.lag_p50_s:.2f}s p95 {result.lag_p95_s:.2f}s")
        assert 0 == result.ledger_failures


class TestBesideTheDecorator:
    """The follower and ``@audited_flow``'s hooks on one ledger and chain."""

    def test_one_record_per_key(self, ledger: Path) -> None:
        """A decorated flow's lifecycle written by its hooks and by the follower: once."""
        run_id = str(decorated_flow(return_state=True).state_details.flow_run_id)
        _caught_up_one(ledger, run_id)
        mine = [r for r in _records(ledger) if (r.subject or {}).get("flow_run_id") == run_id]
        keys = Counter(k for k in map(_lifecycle, mine) if k is not None)
        assert [] == [k for k, n in keys.items() if n > 1]
        assert {("flowrun.started", 1), ("flowrun.succeeded", 1)} <= {
            (event, attempt) for event, rid, attempt in keys if rid == run_id
        }


def _cli_env(tmp_path: Path, ledger: Path, port: int) -> dict[str, str]:
    """The environment of a `workflow-audit follow prefect` process against 127.0.0.1:port
    (none of this session's Prefect settings); makes the ledger."""
    SqliteLedger(ledger).head(CHAIN)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


class TestStream:
    """PrefectStream's own parts."""

    def test_oldest_and_pages_ascend(self) -> None:
        """oldest() is the first event held; backfill pages ascend by occurred."""
        plain_flow(return_state=True)
        stream = PrefectStream()
        try:
            # the server's persister writes events a few seconds late
            _wait_for("an event held", lambda: stream.oldest() is not None)
            oldest = stream.oldest()
            assert oldest is not None
            items = [i for page in stream.backfill(None, 50) for i in page]
        finally:
            stream.close()
        stamps = [i.occurred for i in items]
        assert stamps == sorted(stamps)
        assert oldest == stamps[0]

    def test_follow_flow_runs_as_a_prefect_flow(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """follow_flow (what follow_flow.serve() runs) follows with the adapter's settings
        from the environment and returns its summary."""
        ledger = tmp_path / "served.db"
        monkeypatch.setenv("PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_LEDGER_URL", f"sqlite:///{ledger}")
        summary = follow_flow(once=True)
        assert summary["recorded"] == len(_records(ledger)) - 1
        assert 0 == summary["gaps"]
        assert STARTED_EVENT == _records(ledger)[0].event

    def test_unreachable_server_is_one_line(self, tmp_path: Path) -> None:
        """`follow prefect --once` against a closed port: exit 2, one line, no traceback."""
        from testkit import free_port

        ledger = tmp_path / "ledger.db"
        env = _cli_env(tmp_path, ledger, free_port())
        run = subprocess.run(
            [sys.executable, "-m", "audit_core.cli", "follow", "prefect", "--once",
             "--ledger", str(ledger)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert 2 == run.returncode
        assert "Prefect's events API failed: ConnectError" in run.stderr
        assert "Traceback" not in run.stderr


def _post_events(*events: dict[str, Any]) -> None:
    """Events straight into the server (``POST /api/events``), as a worker's client sends."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}/events", json=list(events), timeout=30)
    response.raise_for_status()


def _custom(name: str, occurred: dt.datetime) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "occurred": occurred.isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": f"test.follower.{uuid.uuid4()}"},
    }


def _event_ids(ledger: Path) -> set[str]:
    return {
        str((r.data.get("prefect") or {}).get("event_id"))
        for r in _records(ledger)
        if isinstance(r.data, dict)
    }


def _recorded_once(ledger: Path, event_id: str) -> bool:
    """Whether a `follow --once` (run now) has recorded the Prefect event ``event_id``."""
    _once(ledger)
    return event_id in _event_ids(ledger)


class TestClockSkew:
    """An event dated hours ahead (a worker's fast clock) on a real server."""

    def test_events_after_a_future_one_are_recorded(self, tmp_path: Path) -> None:
        """One event stamped now + 2 h, --once, three normal events, --once: all recorded."""
        ledger = tmp_path / "ledger.db"
        now = dt.datetime.now(dt.timezone.utc)
        ahead = _custom("test.follower.ahead", now + dt.timedelta(hours=2))
        _post_events(ahead)
        _wait_for("the future event", lambda: _recorded_once(ledger, ahead["id"]))
        first = _once(ledger)
        assert first.cursor is not None
        assert first.cursor <= dt.datetime.now(dt.timezone.utc)
        later = [_custom("test.follower.later", dt.datetime.now(dt.timezone.utc)) for _ in range(3)]
        _post_events(*later)
        wanted = {e["id"] for e in later}
        deadline = time.monotonic() + 60
        while not wanted <= _event_ids(ledger) and time.monotonic() < deadline:
            _once(ledger)
            time.sleep(0.5)
        assert wanted <= _event_ids(ledger)


class TestServerIdentity:
    """The stream's name (so its cursor) names the server it reads."""

    @pytest.mark.parametrize(
        ("url", "same_as"),
        [
            ("http://127.0.0.1:4200/api", "http://127.0.0.1:4200/api/"),
            ("http://user:secret@Prefect.example:80/api", "http://prefect.example/api"),
            ("https://api.prefect.cloud/api/accounts/a/workspaces/w", None),
        ],
    )
    def test_name_from_the_api_url(self, url: str, same_as: str | None) -> None:
        """Credentials never in the name; the same server by another spelling, one name;
        names valid as source names."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from audit_core.sources.stream import StreamFollower  # noqa: F401 - the name rules
        from prefect_audit.follower import server_name

        name = server_name(url)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name), name
        assert name.startswith("prefect.")
        assert "secret" not in name
        assert "user" not in name
        if same_as is not None:
            assert server_name(same_as) == name
        assert server_name("http://127.0.0.1:4201/api") != server_name("http://127.0.0.1:4200/api")
        with temporary_settings({PREFECT_API_URL: url}):
            assert name == PrefectStream().name

    def test_the_start_and_cursor_name_the_server(self, tmp_path: Path) -> None:
        """The source.started record and the cursor are the server's: the same ledger and
        chain pointed at another server start again (a new source.started, a full backfill)
        instead of resuming from this server's cursor."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        ledger = tmp_path / "ledger.db"
        event = _custom("test.follower.identity", dt.datetime.now(dt.timezone.utc))
        _post_events(event)
        _wait_for("the event", lambda: _recorded_once(ledger, event["id"]))
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
            other = PrefectStream().name
        assert other != PrefectStream().name
        started = [r for r in _records(ledger) if r.event == STARTED_EVENT]
        assert [PrefectStream().name] == [r.data["source"] for r in started]  # type: ignore[index]
        db = SqliteLedger(ledger, create=False)
        try:
            assert db.get_cursor(f"source:{PrefectStream().name}", CHAIN) > 0
            assert -1 == db.get_cursor(f"source:{other}", CHAIN)
        finally:
            db.close()


class TestSilentServer:
    """A server that accepts connections and never answers."""

    def test_sigterm_exits_within_seconds(self, tmp_path: Path) -> None:
        """`follow prefect` against a silent socket: the read times out as one warning;
        SIGTERM while the next read hangs -> exit 0 within 5 s, no traceback."""
        accepted: list[socket.socket] = []
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    accepted.append(server.accept()[0])

        threading.Thread(target=accept, daemon=True, name="test-silent-server").start()
        ledger = tmp_path / "ledger.db"
        env = _cli_env(tmp_path, ledger, port)
        err_file = tmp_path / "stderr.txt"
        with err_file.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "audit_core.cli", "follow", "prefect",
                 "--ledger", str(ledger)],
                env=env, stderr=err, text=True,
            )  # fmt: skip
        try:
            _wait_for("a timed out read", lambda: "retrying" in err_file.read_text())
            connections = len(accepted)
            _wait_for("the next read", lambda: len(accepted) > connections)
            time.sleep(0.5)  # well inside the next read (it never answers)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
            server.close()
            for conn in accepted:
                conn.close()
        text = err_file.read_text()
        assert 0 == proc.returncode, text
        assert took < 5.0, (took, text)
        assert "Traceback" not in text
        warnings = [line for line in text.splitlines() if "workflow-audit:" in line]
        assert 1 == len(warnings), text
        assert "Timeout" in warnings[0], text
