"""The Prefect follower anchors for its whole life (issue 18, checkpoints without cron): against
the session's Prefect server, its checkpoints cover the chains within ``anchor_interval``, and
a clean stop signs a final one of every chain that grew."""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect import flow

from audit_core import AuditConfig, AuditTrail
from audit_core._cosign import Cosigner
from audit_core.ledgers.sqlite import SqliteLedger
from prefect_audit.follower import follow
from prefect_audit.settings import WorkflowAuditSettings
from tests.core._anchored import (
    DEADLINE_S,
    chain_sizes,
    check_checkpoints,
    uncovered,
    wait_covered,
)

pytestmark = pytest.mark.slow
CHAIN = "prefect"


@flow
def anchored_flow() -> int:
    return 1


def _wait_for(what: str, ready: Callable[[], bool], alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        assert alive(), f"the follower ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling the ledger for the follower's records


def _recorded(ledger: Path) -> int:
    return chain_sizes(ledger).get(CHAIN, 0) if ledger.exists() else 0


@pytest.fixture
def follower(
    tmp_path: Path, prefect_server: str
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Starts ``workflow-audit follow prefect`` processes on tmp_path/ledger.db against the
    session's server, anchoring every N s; kills any left running."""
    procs: list[subprocess.Popen[bytes]] = []
    ledger = tmp_path / "ledger.db"
    SqliteLedger(ledger).head(CHAIN)  # the CLI never creates a ledger it is named

    def start(interval: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORKFLOW_"))}
        env |= {
            "PREFECT_API_URL": prefect_server,
            "PREFECT_HOME": str(tmp_path / "home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_ANCHOR_INTERVAL": interval,
        }
        with (tmp_path / "follow.err").open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "audit_core.cli", "follow", "prefect",
                 "--ledger", str(ledger), "--overlap", "60"],
                env=env, stderr=err,
            )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert 0 == proc.wait(DEADLINE_S), (tmp_path / "follow.err").read_text()[-3000:]


class TestFollowerAnchors:
    """``workflow-audit follow prefect`` and :func:`prefect_audit.follower.follow`."""

    def test_checkpoints_within_the_interval(
        self, tmp_path: Path, follower: Callable[[str], subprocess.Popen[bytes]]
    ) -> None:
        """Flows run while the follower follows: its chain ends covered by a checkpoint
        within the interval (1 s here), no manual step; every checkpoint is consistent."""
        ledger = tmp_path / "ledger.db"
        proc = follower("1")
        alive: Callable[[], bool] = lambda: proc.poll() is None  # noqa: E731
        _wait_for("the follower's start", lambda: _recorded(ledger) > 0, alive)
        for _ in range(2):
            anchored_flow()
        _wait_for("the runs' records", lambda: _recorded(ledger) > 2, alive)
        wait_covered(ledger, alive=alive)
        _stop(proc, tmp_path)
        assert {} == uncovered(ledger)
        assert 1 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))

    def test_sigterm_signs_every_chain_that_grew(
        self, tmp_path: Path, follower: Callable[[str], subprocess.Popen[bytes]]
    ) -> None:
        """With an interval that never comes, SIGTERM's clean stop signs a final checkpoint
        of every chain that grew, one another process wrote included."""
        ledger = tmp_path / "ledger.db"
        proc = follower("3600")
        alive: Callable[[], bool] = lambda: proc.poll() is None  # noqa: E731
        _wait_for("the follower's start", lambda: _recorded(ledger) > 0, alive)
        config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0)
        with AuditTrail(config) as other:  # another writer, which never signs
            other.record("job.finished", chain="other")
        assert (1, None) == uncovered(ledger)["other"]
        _stop(proc, tmp_path)
        assert {} == uncovered(ledger)
        assert 2 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))

    def test_follow_function_anchors(self, tmp_path: Path) -> None:
        """follow() (what follow_flow serves) anchors with the settings' anchor_interval
        while it runs and stops its anchor when stopped."""
        ledger = tmp_path / "ledger.db"
        settings = WorkflowAuditSettings(
            ledger_url=f"sqlite:///{ledger}", chain=CHAIN, anchor_interval=0.5
        )
        stop = threading.Event()
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(lambda: follow(settings=settings, overlap_s=60, stop=stop),),
            name="test-anchor-follow",
        )
        thread.start()
        try:
            _wait_for("the follower's start", lambda: _recorded(ledger) > 0, thread.is_alive)
            config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0)
            with AuditTrail(config) as other:
                other.record("job.finished", chain="other")
            wait_covered(ledger, alive=thread.is_alive, chains=2)
        finally:
            stop.set()
            thread.join(60)
        assert not thread.is_alive()
        assert 2 <= check_checkpoints(ledger, Path(f"{ledger}.key.pub"))


class TestSettings:
    """anchor_interval and witnesses in Prefect's settings."""

    def test_mapped_onto_the_core_config(self) -> None:
        """anchor_interval becomes anchor_interval_s; witnesses, split at ';', witnesses."""
        keys = [str(Cosigner.generate(f"w{i}.example").key) for i in range(2)]
        settings = WorkflowAuditSettings(
            anchor_interval=9, witnesses=f"http://127.0.0.1:7380 {keys[0]};\nhttp://b {keys[1]}"
        )
        config = settings.audit_config(env={})
        assert 9.0 == config.anchor_interval_s
        assert (f"http://127.0.0.1:7380 {keys[0]}", f"http://b {keys[1]}") == config.witnesses

    def test_unset_falls_through_to_the_environment(self) -> None:
        """Unset: $WORKFLOW_AUDIT_ANCHOR_INTERVAL and $WORKFLOW_AUDIT_WITNESSES, else 60 s."""
        key = str(Cosigner.generate("w.example").key)
        env = {
            "WORKFLOW_AUDIT_ANCHOR_INTERVAL": "4",
            "WORKFLOW_AUDIT_WITNESSES": f"http://w {key}",
        }
        config = WorkflowAuditSettings().audit_config(env=env)
        assert (4.0, (f"http://w {key}",)) == (config.anchor_interval_s, config.witnesses)
        assert 60.0 == WorkflowAuditSettings().audit_config(env={}).anchor_interval_s
