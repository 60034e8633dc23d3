"""Helpers for the spool and breaker tests: a minimal adapter, a ledger lock, chain reads."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.hooks import AdapterBase, AdapterOptions, EventFilter


class MiniAdapter(AdapterBase):
    """The shared adapter machinery with a fixed configuration, as the real adapters use it."""

    def __init__(self, config: AuditConfig, *, budget_s: float = 5.0) -> None:
        super().__init__(budget_s=budget_s)
        self._config = config
        self._budget = budget_s

    def _load_options(self) -> AdapterOptions:
        return AdapterOptions(
            enabled=True, events=EventFilter("*"), hook_timeout_s=self._budget, audit=self._config
        )

    def hook(self, n: int, **data: object) -> bool:
        """One hook recording ``test.step`` number ``n``."""
        return self._run("test.step", lambda: [Event(type="test.step", data={"n": n, **data})])


def make_ledger(path: Path) -> AuditConfig:
    """A SQLite ledger with one record (so its schema exists), checkpoints off."""
    config = AuditConfig(ledger_url=f"sqlite:///{path}", checkpoint_every=0)
    with AuditTrail(config) as trail:
        trail.record("test.init")
    return config


@contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """``BEGIN EXCLUSIVE`` held on the ledger for the block (as another writer stuck would)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def bodies(path: Path, chain: str = "default") -> list[dict[str, Any]]:
    """The chain's records, parsed, in seq order."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM records WHERE chain = ? ORDER BY seq", (chain,))
        return [orjson.loads(body) for (body,) in rows]
    finally:
        conn.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``workflow-audit ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "audit_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def held_lock(ledger: Path) -> Iterator[None]:
    """``BEGIN EXCLUSIVE`` on ``ledger`` held by another process for the block."""
    locker = subprocess.Popen(
        [sys.executable, "-c", (
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(ledger)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert locker.stdout is not None
        assert "locked" == locker.stdout.readline().strip()
        yield
    finally:
        locker.kill()
        locker.wait()


def mount(*args: str, tool: str = "mount") -> None:
    """Run ``mount`` (or ``umount``) as root; the tests run as root, as CI does."""
    path = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
    assert path is not None
    subprocess.run([path, *args], check=True)
