"""audit_core.hooks: the bounded fail-open HookRunner, failure facts, digests, event filters,
the background flush and the task-side API."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditConfig, AuditTrail, Event, Ledger
from audit_core.errors import LedgerError
from audit_core.flush import Flusher
from audit_core.hooks import (
    COUNTERS,
    MAX_MESSAGE_CHARS,
    AdapterBase,
    AdapterOptions,
    Delivery,
    EventFilter,
    HookRunner,
    TaskApi,
    digest,
    failure_data,
)
from audit_core.spool import TrailSpool
from tests.core._spooling import MiniAdapter, bodies, cli, locked, make_ledger

# Long enough that a write blocked on a gate never finishes on its own while a test runs, short
# enough that a broken test cannot hang the session.
GATE_TIMEOUT_S = 10.0


def _count(name: str) -> int:
    return COUNTERS.snapshot().get(name, 0)


def _events(*types: str) -> list[Event]:
    return [Event(type=t) for t in types]


def _wait_child(pid: int, timeout_s: float) -> int | None:
    """The exit code of a forked child, or None (after killing it) if it is still running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.fixture
def gate() -> threading.Event:
    """An event a test's write blocks on until the test sets it."""
    return threading.Event()


@pytest.fixture
def runner(gate: threading.Event) -> Iterator[HookRunner]:
    """A HookRunner with a 2 s budget; blocked writes are released and drained afterwards."""
    hooks = HookRunner(budget_s=2.0, name="workflow-audit-test")
    yield hooks
    gate.set()
    hooks.drain(GATE_TIMEOUT_S)


class TestHookRunner:
    """run(), drain() and pending: fail-open, time-bounded, ordered, fork- and exit-aware."""

    def test_writes_built_events_and_returns_true(self, runner: HookRunner) -> None:
        """The built events are handed to write() and run() returns True once it finished."""
        events = _events("task.started", "task.succeeded")
        written: list[Event] = []
        assert True is runner.run("task.started", lambda: events, written.extend)
        assert events == written

    def test_build_error_is_contained_logged_and_counted(
        self, runner: HookRunner, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception in build() returns False, is logged with exc_info and counted."""
        written: list[Event] = []

        def build() -> list[Event]:
            raise ValueError("no dag_id")

        before = _count("hook_failures")
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            assert False is runner.run("task.failed", build, written.extend)
        assert 1 == _count("hook_failures") - before
        assert [] == written
        [log] = [r for r in caplog.records if r.name == "workflow_audit"]
        assert "workflow-audit: could not record task.failed" == log.getMessage()
        assert log.exc_info is not None
        assert ValueError is log.exc_info[0]

    def test_write_error_is_logged_and_counted_and_run_returns_false(
        self, runner: HookRunner, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception in write() is logged with exc_info and counted; run() returns False."""

        def write(events: Sequence[Event]) -> None:
            raise OSError("disk full")

        before = _count("hook_failures")
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            assert False is runner.run("task.failed", lambda: _events("task.failed"), write)
        assert 1 == _count("hook_failures") - before
        [log] = [r for r in caplog.records if r.name == "workflow_audit"]
        assert "workflow-audit: could not write task.failed" == log.getMessage()
        assert log.exc_info is not None
        assert OSError is log.exc_info[0]

    def test_slow_write_returns_false_after_budget_and_completes_later(
        self, gate: threading.Event, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A write slower than the budget: run() returns False, counts a timeout, write goes on."""
        budget = 0.2
        hooks = HookRunner(budget_s=budget, name="workflow-audit-test")
        events = _events("task.started")
        written: list[Event] = []

        def write(batch: Sequence[Event]) -> None:
            gate.wait(GATE_TIMEOUT_S)
            written.extend(batch)

        before = _count("hook_timeouts")
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            start = time.monotonic()
            result = hooks.run("task.started", lambda: events, write)
            elapsed = time.monotonic() - start
        try:
            assert False is result
            assert budget * 0.9 <= elapsed < budget + 2.0  # waited the budget, not the write
            assert 1 == _count("hook_timeouts") - before
            assert "task.started not durable after 0.2s" in caplog.text
            assert 1 == hooks.pending
            assert [] == written
        finally:
            gate.set()
        assert True is hooks.drain(GATE_TIMEOUT_S)
        assert events == written
        assert 0 == hooks.pending

    def test_drain_gives_up_after_its_timeout(
        self, runner: HookRunner, gate: threading.Event
    ) -> None:
        """drain() returns False while a write is still blocked, True once it has finished."""
        runner.budget_s = 0.01
        runner.run("task.started", lambda: _events("task.started"), lambda _: gate.wait(10))
        assert False is runner.drain(0.05)
        assert 1 == runner.pending
        gate.set()
        assert True is runner.drain(GATE_TIMEOUT_S)
        assert 0 == runner.pending

    def test_successive_runs_are_written_in_order(
        self, runner: HookRunner, gate: threading.Event
    ) -> None:
        """Writes queued behind a blocked one are written in the order their runs were called."""
        runner.budget_s = 0.01  # every run times out, so all five jobs wait in the queue
        written: list[str] = []

        def write(batch: Sequence[Event]) -> None:
            gate.wait(GATE_TIMEOUT_S)
            written.extend(e.type for e in batch)

        types = [f"step.n{i}" for i in range(5)]
        for t in types:
            runner.run(t, lambda t=t: _events(t), write)
        assert 5 == runner.pending
        gate.set()
        assert True is runner.drain(GATE_TIMEOUT_S)
        assert types == written

    @pytest.mark.parametrize("built", [[], None])
    def test_nothing_built_writes_nothing(
        self, runner: HookRunner, built: list[Event] | None
    ) -> None:
        """A build() returning [] or None returns True without calling write()."""
        calls: list[Sequence[Event]] = []
        assert True is runner.run("task.started", lambda: built, calls.append)
        assert [] == calls
        assert 0 == runner.pending

    def test_hook_fired_by_a_write_runs_inline(self, runner: HookRunner) -> None:
        """A hook called from the runner's own thread writes inline instead of deadlocking."""
        written: list[str] = []
        inner: list[bool] = []

        def inner_write(batch: Sequence[Event]) -> None:
            written.append("inner")

        def outer_write(batch: Sequence[Event]) -> None:
            inner.append(runner.run("asset.updated", lambda: _events("asset.updated"), inner_write))
            written.append("outer")

        assert True is runner.run("task.succeeded", lambda: _events("task.succeeded"), outer_write)
        assert [True] == inner
        assert ["inner", "outer"] == written

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_forked_child_runs_on_its_own_thread(self, runner: HookRunner) -> None:
        """After fork() the child starts its own writer thread and its run() succeeds."""
        parent_threads: list[threading.Thread] = []
        runner.run(
            "task.started",
            lambda: _events("task.started"),
            lambda _: parent_threads.append(threading.current_thread()),
        )
        assert True is runner.drain(GATE_TIMEOUT_S)  # the writer thread is idle, lock released
        pid = os.fork()
        if pid == 0:  # child: report through the exit code only
            code = 1
            try:
                child_threads: list[threading.Thread] = []
                ok = runner.run(
                    "task.succeeded",
                    lambda: _events("task.succeeded"),
                    lambda _: child_threads.append(threading.current_thread()),
                )
                fresh = len(child_threads) == 1 and child_threads[0] is not parent_threads[0]
                code = 0 if ok and fresh else 1
            finally:
                os._exit(code)
        assert 0 == _wait_child(pid, timeout_s=5.0)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_fork_while_another_thread_holds_the_lock(self, runner: HookRunner) -> None:
        """A child forked while another thread is inside the runner's lock can still run()."""
        # The writer thread takes the lock after every job, and pending/drain take it from any
        # thread; a fork at that moment copies a locked lock into a child where no thread will
        # ever release it. Holding the lock from a helper thread makes that moment certain.
        runner.run("task.started", lambda: _events("task.started"), lambda _: None)
        assert True is runner.drain(GATE_TIMEOUT_S)
        pid = _fork_while_held(
            [runner._lock],
            lambda: runner.run("task.succeeded", lambda: _events("x.y"), lambda _: None),
        )
        assert 0 == _wait_child(pid, timeout_s=2.0)  # None: the child deadlocked

    def test_pending_writes_are_reported_at_exit(self, tmp_path: Path) -> None:
        """At exit a write still blocked after the budget is logged and counted as abandoned."""
        script = textwrap.dedent(
            """
            import atexit, threading
            from audit_core import AuditTrail, Event
            from audit_core.hooks import COUNTERS, HookRunner

            # Registered first, so it runs after the runner's own at-exit handler.
            atexit.register(lambda: print(COUNTERS.snapshot().get("records_abandoned", 0)))
            runner = HookRunner(budget_s=0.2)
            blocked = threading.Event()
            ok = runner.run(
                "task.started", lambda: [Event(type="task.started")], lambda _: blocked.wait()
            )
            print(ok)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert ["False", "1"] == done.stdout.split()
        assert "1 write(s) still pending at exit after 0.2s; abandoned" in done.stderr


class _RecordingSpill:
    """A Spill that keeps what it is given (the breaker's bookkeeping without a disk)."""

    def __init__(self) -> None:
        self.spooled: list[Event] = []
        self.recovered = threading.Event()
        self.allow_recovery = threading.Event()

    def spill(
        self, events: Sequence[Event], *, uncertain: bool = False, order: int | None = None
    ) -> list[str]:
        self.spooled.extend(events)
        return [f"id{i}" for i, _ in enumerate(events)]

    def landed(self, ids: Sequence[str]) -> None:
        raise AssertionError("no uncertain write in these tests")

    def recover(self) -> bool:
        if not self.allow_recovery.is_set():
            return False
        self.recovered.set()
        return True

    def has_backlog(self) -> bool:
        return False

    @property
    def unsealed(self) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A root-owned 0755 directory another user can enter but not write (not under pytest's
    0700 base)."""
    path = Path(tempfile.mkdtemp(prefix="wa-ro-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _until(predicate: Callable[[], bool], timeout_s: float = GATE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class TestBreaker:
    """With a spill, a stuck or failing ledger costs one wait, then hooks spool at once."""

    def test_write_past_the_budget_lands_once_and_later_hooks_spool_at_once(
        self, gate: threading.Event
    ) -> None:
        """A timed-out write that finishes later lands once; hooks meanwhile spool at once."""
        spill = _RecordingSpill()
        hooks = HookRunner(budget_s=0.3, name="workflow-audit-test", spill=spill)
        written: list[Event] = []

        def slow(batch: Sequence[Event]) -> None:
            gate.wait(GATE_TIMEOUT_S)
            written.extend(batch)

        first, later = _events("task.started"), _events("task.succeeded", "dagrun.succeeded")
        try:
            assert False is hooks.run("task.started", lambda: first, slow)
            assert True is hooks.breaker_open
            start = time.monotonic()
            for event in later:
                assert False is hooks.run(event.type, lambda e=event: [e], written.extend)
            assert time.monotonic() - start < 0.3  # no hook waited its budget again
        finally:
            gate.set()
        assert True is hooks.drain(GATE_TIMEOUT_S)
        assert first == written  # the timed-out write landed, once
        assert later == spill.spooled  # and was never spooled; the later ones only were

    def test_ledger_error_spools_the_job_and_a_probe_closes_the_breaker(self) -> None:
        """A LedgerError spools the job's events; once recovery succeeds, writes go through."""
        spill = _RecordingSpill()
        hooks = HookRunner(budget_s=2.0, name="workflow-audit-test", spill=spill)
        hooks.PROBE_MIN_S = 0.01

        def refuse(batch: Sequence[Event]) -> None:
            raise LedgerError("database is locked")

        before = _count("breaker_open")
        assert False is hooks.run("task.started", lambda: _events("task.started"), refuse)
        assert _events("task.started") == spill.spooled
        assert 1 == _count("breaker_open") - before
        spill.allow_recovery.set()
        assert _until(lambda: not hooks.breaker_open)
        written: list[Event] = []
        assert True is hooks.run(
            "task.succeeded", lambda: _events("task.succeeded"), written.extend
        )
        assert _events("task.succeeded") == written

    def test_timed_out_write_that_fails_is_drained_before_later_hooks(
        self, tmp_path: Path, gate: threading.Event
    ) -> None:
        """A write that outlives the budget, then fails, lands before later hooks' records."""
        config = make_ledger(tmp_path / "l.db")
        with AuditTrail(config) as trail:
            hooks = HookRunner(
                budget_s=0.3, name="workflow-audit-test", spill=TrailSpool(lambda: trail)
            )
            hooks.PROBE_MIN_S = 0.01

            def fail_late(batch: Sequence[Event]) -> None:
                gate.wait(GATE_TIMEOUT_S)
                raise LedgerError("server closed the connection")

            step = lambda n: [Event(type="test.step", data={"n": n})]  # noqa: E731
            try:
                assert False is hooks.run("first", lambda: step(1), fail_late)
                assert False is hooks.run("second", lambda: step(2), trail.record_many)
            finally:
                gate.set()
            assert True is hooks.drain(GATE_TIMEOUT_S)
            assert _until(lambda: not hooks.breaker_open)  # the probe drained the spool
        assert [1, 2] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_without_a_spill_a_ledger_error_is_only_a_failure(self) -> None:
        """No spill (plain HookRunner): the old fail-open behaviour, no breaker."""
        hooks = HookRunner(budget_s=2.0, name="workflow-audit-test")

        def refuse(batch: Sequence[Event]) -> None:
            raise LedgerError("database is locked")

        assert False is hooks.run("task.started", lambda: _events("task.started"), refuse)
        assert False is hooks.breaker_open

    def test_locked_ledger_costs_about_one_lock_wait_for_17_hooks(self, tmp_path: Path) -> None:
        """17 hooks on a locked ledger return in ~1 s in all; the records land after unlock."""
        config = make_ledger(tmp_path / "l.db")
        adapter = MiniAdapter(config, budget_s=5.0)
        before = _count("records_spooled")
        with locked(tmp_path / "l.db"):
            start = time.monotonic()
            results = [adapter.hook(n) for n in range(17)]
            elapsed = time.monotonic() - start
            assert [False] * 17 == results
            assert True is adapter.runner.breaker_open
        assert elapsed < 1.0 + 3.0  # one lock wait and headroom; was 17 x 5 s budgets
        assert 17 == _count("records_spooled") - before
        adapter.runner.PROBE_MIN_S = 0.01
        assert _until(lambda: not adapter.runner.breaker_open, 60)
        assert True is adapter.hook(17)
        records = bodies(tmp_path / "l.db")[1:]
        assert list(range(18)) == [r["data"]["n"] for r in records]
        assert 0 == cli("verify", "--ledger", str(tmp_path / "l.db")).returncode

    def test_next_writer_drains_what_an_earlier_process_spooled(self, tmp_path: Path) -> None:
        """A new adapter process appends the spool before its own first record."""
        config = make_ledger(tmp_path / "l.db")
        first = MiniAdapter(config, budget_s=5.0)
        with locked(tmp_path / "l.db"):
            assert False is first.hook(0)
        first.runner.spill.close()  # type: ignore[union-attr]  # as at its process's exit
        second = MiniAdapter(config, budget_s=5.0)
        assert True is second.hook(1)
        assert [0, 1] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]

    def test_read_only_ledger_spools_elsewhere(self, world_tmp: Path) -> None:
        """A ledger its user cannot write: records go to the configured spool, drained later."""
        tmp_path = world_tmp
        make_ledger(tmp_path / "ro" / "l.db")
        spool = tmp_path / "spool"
        spool.mkdir()
        spool.chmod(0o777)
        script = textwrap.dedent(
            f"""
            from audit_core import AuditConfig
            from tests.core._spooling import MiniAdapter
            config = AuditConfig(
                ledger_url="sqlite:///{tmp_path}/ro/l.db", spool_dir="{spool}", checkpoint_every=0
            )
            adapter = MiniAdapter(config, budget_s=5.0)
            print([adapter.hook(n) for n in range(3)])
            """
        )
        done = subprocess.run(
            [  # noqa: S607 - setpriv from PATH, as an operator would run it
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                script,
            ],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert "[False, False, False]" == done.stdout.strip()
        assert "abandoned" not in done.stderr
        drained = cli(
            "spool", "drain", "--ledger", str(tmp_path / "ro" / "l.db"), "--spool-dir", str(spool)
        )
        assert 0 == drained.returncode, drained.stderr
        assert [0, 1, 2] == [r["data"]["n"] for r in bodies(tmp_path / "ro" / "l.db")[1:]]

    def test_writes_pending_at_exit_are_spooled_not_abandoned(self, tmp_path: Path) -> None:
        """At exit a stuck write and the ones behind it are spooled; the drain adds each once."""
        make_ledger(tmp_path / "l.db")
        script = textwrap.dedent(
            f"""
            import threading
            from audit_core import AuditConfig
            from tests.core._spooling import MiniAdapter

            class Stuck(MiniAdapter):
                stuck = threading.Event()
                def write(self, events):
                    if events[0].data["n"] == 0:
                        self.stuck.wait()  # never set: a ledger call that does not return
                    super().write(events)

            config = AuditConfig(ledger_url="sqlite:///{tmp_path}/l.db", checkpoint_every=0)
            adapter = Stuck(config, budget_s=0.3)
            threads = [threading.Thread(target=adapter.hook, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert "abandoned" not in done.stderr
        drained = cli("spool", "drain", "--ledger", str(tmp_path / "l.db"))
        assert 0 == drained.returncode, drained.stderr
        steps = sorted(r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:])
        assert [0, 1, 2, 3] == steps

    def test_fork_while_another_thread_holds_the_adapter_and_ledger_locks(
        self, tmp_path: Path
    ) -> None:
        """A child forked while threads hold the adapter and ledger locks writes its hook."""
        adapter = MiniAdapter(make_ledger(tmp_path / "l.db"), budget_s=2.0)
        assert True is adapter.hook(1)
        sqlite_ledger = adapter.trail.ledger._ledger
        pid = _fork_while_held([adapter._lock, sqlite_ledger._lock], lambda: adapter.hook(2))
        assert 0 == _wait_child(pid, timeout_s=GATE_TIMEOUT_S)  # None: the child hung
        assert [1, 2] == [r["data"]["n"] for r in bodies(tmp_path / "l.db")[1:]]


def _fork_while_held(locks: list[Any], in_child: Callable[[], bool]) -> int:
    """Fork while a helper thread holds ``locks`` (the moment a fork copies a locked lock into
    a child where no thread will release it); the child runs ``in_child`` and exits 0 if it
    returned True. Returns the child's pid."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            holding.set()
            release.wait(GATE_TIMEOUT_S)

    helper = threading.Thread(target=hold)
    helper.start()
    holding.wait(GATE_TIMEOUT_S)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if in_child() else 1
            finally:
                os._exit(code)
    finally:
        release.set()
        helper.join()
    return pid


class _Outer:
    class NestedError(Exception):
        pass


class TestFailureData:
    """failure_data(): type, clipped message, traceback digest and kind of a failure."""

    def test_builtin_exception_type_is_bare(self) -> None:
        """A builtin exception is named by its bare class name."""
        assert {"error_type": "ValueError", "message": "bad"} == failure_data(ValueError("bad"))

    def test_other_exception_types_are_module_qualified(self) -> None:
        """A non-builtin exception is named module.qualname."""
        error = json.JSONDecodeError("Expecting value", "", 0)
        assert "json.decoder.JSONDecodeError" == failure_data(error)["error_type"]
        assert f"{__name__}._Outer.NestedError" == failure_data(_Outer.NestedError())["error_type"]

    def test_traceback_digest_of_a_raised_exception(self) -> None:
        """A raised exception carries the SHA-256 of its formatted traceback."""
        try:
            raise KeyError("dag_id")
        except KeyError as exc:
            error = exc
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        expected = hashlib.sha256(text.encode("utf-8")).hexdigest()
        data = failure_data(error)
        assert expected == data["traceback_sha256"]
        assert "'dag_id'" == data["message"]

    def test_no_traceback_digest_without_a_traceback(self) -> None:
        """An exception that was never raised has no traceback_sha256."""
        assert "traceback_sha256" not in failure_data(RuntimeError("never raised"))

    def test_long_message_is_clipped_with_a_suffix(self) -> None:
        """Messages longer than MAX_MESSAGE_CHARS are cut and say how much was cut."""
        data = failure_data(ValueError("x" * (MAX_MESSAGE_CHARS + 5)))
        assert "x" * MAX_MESSAGE_CHARS + "… [5 more characters]" == data["message"]

    def test_message_at_the_limit_is_kept_whole(self) -> None:
        """A message of exactly MAX_MESSAGE_CHARS characters is not clipped."""
        text = "y" * MAX_MESSAGE_CHARS
        assert {"message": text} == failure_data(text)

    def test_string_error_gives_message_only(self) -> None:
        """A string error becomes the message; no type, no traceback."""
        assert {"message": "killed by the executor"} == failure_data("killed by the executor")

    @pytest.mark.parametrize("error", [None, ""])
    def test_no_error_gives_no_message(self, error: str | None) -> None:
        """None or an empty string give no message at all."""
        assert {} == failure_data(error)

    def test_kind_becomes_failure_kind(self) -> None:
        """kind= is recorded as failure_kind, with or without an error."""
        assert {"failure_kind": "timeout"} == failure_data(None, kind="timeout")
        assert {"message": "oom", "failure_kind": "executor"} == failure_data(
            "oom", kind="executor"
        )


class TestDigest:
    """digest(): sha256 of a value's RFC 8785 canonical JSON."""

    def test_is_sha256_of_canonical_json(self) -> None:
        """The digest is sha256: plus the hex SHA-256 of the canonical bytes."""
        expected = "sha256:" + hashlib.sha256(b'{"a":1,"b":[true,null,"x"]}').hexdigest()
        assert expected == digest({"b": [True, None, "x"], "a": 1})

    def test_key_order_does_not_matter(self) -> None:
        """Dicts equal up to key order have equal digests."""
        first = {"model": "xgb", "params": {"depth": 6, "eta": 0.3}}
        second = {"params": {"eta": 0.3, "depth": 6}, "model": "xgb"}
        assert digest(first) == digest(second)

    def test_format(self) -> None:
        """A digest is 'sha256:' followed by 64 lower-case hex digits."""
        value = digest({"run_id": "manual__2026-11-28"})
        assert "sha256:" == value[:7]
        assert 64 == len(value[7:])
        assert set(value[7:]) <= set("0123456789abcdef")

    def test_different_values_differ(self) -> None:
        """Different values give different digests."""
        assert digest({"rows": 1000}) != digest({"rows": 1001})
        assert digest({"a": "1"}) != digest({"a": 1})


class TestEventFilter:
    """EventFilter: comma-separated shell patterns; '!' excludes; empty means everything."""

    EVENTS = ("task.started", "task.failed", "dagrun.succeeded", "asset.updated")

    def test_star_accepts_everything(self) -> None:
        """'*' (also the default) accepts every event type."""
        assert all(EventFilter("*")(e) for e in self.EVENTS)
        assert all(EventFilter()(e) for e in self.EVENTS)

    def test_prefix_pattern_selects_one_family(self) -> None:
        """'task.*' accepts task events only."""
        accepted = [e for e in self.EVENTS if EventFilter("task.*")(e)]
        assert ["task.started", "task.failed"] == accepted
        assert False is EventFilter("task.*")("taskgroup.started")

    def test_bang_excludes(self) -> None:
        """'*,!task.started' accepts everything except task.started."""
        accepted = [e for e in self.EVENTS if EventFilter("*,!task.started")(e)]
        assert ["task.failed", "dagrun.succeeded", "asset.updated"] == accepted

    def test_only_exclusions_include_the_rest(self) -> None:
        """A spec of exclusions alone includes every other event type."""
        accepted = [e for e in self.EVENTS if EventFilter("!task.*")(e)]
        assert ["dagrun.succeeded", "asset.updated"] == accepted

    @pytest.mark.parametrize("spec", ["", " , ", []])
    def test_empty_spec_means_everything(self, spec: str | list[str]) -> None:
        """An empty spec accepts every event type and reads back as '*'."""
        events = EventFilter(spec)
        assert all(events(e) for e in self.EVENTS)
        assert "EventFilter('*')" == repr(events)

    def test_list_spec_equals_string_spec(self) -> None:
        """A list of patterns behaves like the same patterns joined by commas."""
        from_list = EventFilter(["task.*", " !task.started "])
        from_text = EventFilter("task.*,!task.started")
        assert [from_text(e) for e in self.EVENTS] == [from_list(e) for e in self.EVENTS]
        assert repr(from_text) == repr(from_list)

    def test_repr_shows_the_normalized_spec(self) -> None:
        """repr() shows the patterns stripped and comma-joined."""
        assert "EventFilter('task.*,dagrun.*,!task.started')" == repr(
            EventFilter(" task.* , dagrun.*,, !task.started ")
        )


class TestFlusher:
    """audit_core.flush.Flusher: delivery on a daemon thread, never in the caller's."""

    def test_request_returns_before_delivery_ends(self, gate: threading.Event) -> None:
        """request() only wakes the flush thread: a delivery blocked on a sink never blocks it."""
        started = threading.Event()

        def deliver() -> None:
            started.set()
            gate.wait(GATE_TIMEOUT_S)

        flusher = Flusher(deliver)
        begin = time.monotonic()
        flusher.request()
        assert time.monotonic() - begin < 1.0
        assert started.wait(GATE_TIMEOUT_S)

    def test_failing_delivery_is_counted_and_retried_next_time(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A raising delivery is logged and counted (flush_failures); the next request delivers."""
        calls: list[int] = []
        delivered = threading.Event()

        def deliver() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("sink down")
            delivered.set()

        flusher = Flusher(deliver, ("otlp",))
        before = _count("flush_failures")
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            flusher.request()
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while _count("flush_failures") == before and time.monotonic() < deadline:
                time.sleep(0.01)
            flusher.request()
            assert delivered.wait(GATE_TIMEOUT_S)
        assert 1 == _count("flush_failures") - before
        assert "background flush to ('otlp',) failed" in caplog.text

    def test_forked_child_delivers_on_its_own_thread(self) -> None:
        """A child forked after the parent's thread started delivers all the same."""
        delivered = threading.Event()
        flusher = Flusher(delivered.set)
        flusher.request()
        assert delivered.wait(GATE_TIMEOUT_S)
        delivered.clear()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                flusher.request()
                code = 0 if delivered.wait(GATE_TIMEOUT_S) else 1
            finally:
                os._exit(code)
        assert 0 == _wait_child(pid, timeout_s=GATE_TIMEOUT_S)

    def test_fork_while_its_lock_is_held(self) -> None:
        """A child forked while another thread holds the flusher's lock still requests and
        delivers (the lock is reset in the child)."""
        delivered = threading.Event()
        flusher = Flusher(delivered.set)

        def in_child() -> bool:
            flusher.request()
            return delivered.wait(GATE_TIMEOUT_S)

        pid = _fork_while_held([flusher._lock], in_child)
        assert 0 == _wait_child(pid, timeout_s=GATE_TIMEOUT_S)


class _FlushingAdapter(AdapterBase):
    """An adapter whose terminal event is ``test.done`` and whose delivery is recorded."""

    flush_after = frozenset({"test.done"})

    def __init__(self, config: AuditConfig, delivery: Delivery | None) -> None:
        super().__init__(delivery=delivery)
        self._config = config

    def _load_options(self) -> AdapterOptions:
        return AdapterOptions(
            enabled=True, events=EventFilter("*,!test.ignored"), hook_timeout_s=5.0,
            audit=self._config,
        )  # fmt: skip

    def _user_event(self, event: str, data: object, subject: Mapping[str, object] | None) -> Event:
        return Event(type=event, data=data, subject={"task": "t", **(subject or {})})

    def hook(self, event: str) -> bool:
        return self._run(event, lambda: [Event(type=event)])


class TestAdapterDelivery:
    """AdapterBase hands the flusher the delivery its adapter passed, after terminal events."""

    def test_terminal_event_builds_the_delivery_once_and_requests_it(self, tmp_path: Path) -> None:
        """The delivery is built once with the trail's ledger and config, and called after
        each terminal event only."""
        built: list[tuple[object, AuditConfig]] = []
        calls = threading.Semaphore(0)

        def delivery(ledger: Ledger, config: AuditConfig) -> Callable[[], None]:
            built.append((ledger, config))
            return calls.release

        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}", flush_sinks=("otlp",))
        adapter = _FlushingAdapter(config, delivery)
        assert adapter.hook("test.step")
        assert [] == built
        assert adapter.hook("test.done")
        assert calls.acquire(timeout=GATE_TIMEOUT_S)
        assert adapter.hook("test.done")
        assert calls.acquire(timeout=GATE_TIMEOUT_S)
        assert [(adapter.trail.ledger, adapter.trail.config)] == built

    def test_without_flush_sinks_nothing_is_delivered(self, tmp_path: Path) -> None:
        """No WORKFLOW_AUDIT_FLUSH_SINKS: the delivery is never built."""
        built: list[object] = []
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}")
        adapter = _FlushingAdapter(config, lambda ledger, config: built.append(1) or (lambda: None))
        assert adapter.hook("test.done")
        assert [] == built

    def test_flush_sinks_without_a_delivery_warns_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Sinks configured but no delivery given: one warning naming both, records kept."""
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}", flush_sinks=("otlp",))
        adapter = _FlushingAdapter(config, None)
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            assert adapter.hook("test.done")
            assert adapter.hook("test.done")
            assert adapter.flush()
        warned = [r.getMessage() for r in caplog.records if "delivery=" in r.getMessage()]
        assert 1 == len(warned)
        assert "WORKFLOW_AUDIT_FLUSH_SINKS=otlp" in warned[0]
        assert 2 == len(bodies(tmp_path / "l.db"))


class TestTaskApi:
    """TaskApi: one record() signature, written through the adapter it is given."""

    def test_shortcut_records_through_the_adapter(self, tmp_path: Path) -> None:
        """model_deployed() records model.deployed with the model and facts, subject merged."""
        adapter = _FlushingAdapter(AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}"), None)
        api = TaskApi(lambda: adapter)
        assert api.model_deployed("churn", version=7)
        assert api.record("drift.detected", {"psi": 0.3}, subject={"model": "churn"})
        assert adapter.flush()
        assert [
            ("model.deployed", {"task": "t"}, {"model": "churn", "version": 7}),
            ("drift.detected", {"task": "t", "model": "churn"}, {"psi": 0.3}),
        ] == [(r["event"], r["subject"], r["data"]) for r in bodies(tmp_path / "l.db")]

    def test_required_record_raises_and_filtered_one_returns_false(self, tmp_path: Path) -> None:
        """required=True raises the ledger's error; an event the filter drops returns False."""
        (tmp_path / "file").write_text("")
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'file' / 'l.db'}")
        api = TaskApi(lambda: _FlushingAdapter(config, None))
        with pytest.raises(LedgerError):
            api.record("model.deployed", required=True)
        assert False is api.record("test.ignored", required=True)


class TestReconcileErrors:
    """A reconciler whose orchestrator cannot be read gives a clean error, no secret."""

    def test_orchestrator_error_becomes_config_error(self, tmp_path: Path) -> None:
        """The driver's error is one line, its password redacted, as a ConfigError."""
        from collections.abc import Hashable, Iterable

        from audit_core import Record
        from audit_core.errors import ConfigError
        from audit_core.reconcile import Expected, reconcile

        class Broken:
            def config(self, ledger_url: str | None, chain: str | None) -> AuditConfig:
                raise NotImplementedError

            def expected(self, since: str, until: str | None) -> Iterable[Expected]:
                raise RuntimeError(
                    "could not connect to postgresql://etl:hunter2@db/airflow\n[SQL: SELECT …]"
                )

            def recorded_key(self, record: Record) -> Hashable | None:
                return None

        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}", checkpoint_every=0)
        with AuditTrail(config) as trail, pytest.raises(ConfigError) as caught:
            reconcile(trail, Broken(), since="2026-01-01T00:00:00Z")
        message = str(caught.value)
        assert "hunter2" not in message
        assert "SQL" not in message
        assert message.startswith("cannot read which runs ended from the orchestrator")
