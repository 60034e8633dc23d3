"""Shared fixtures: a fresh file-backed ledger and trail per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """Path of a ledger file that does not exist yet."""
    return tmp_path / "ledger.db"


@pytest.fixture
def trail(ledger_file: Path) -> Iterator[AuditTrail]:
    """An AuditTrail writing to ``ledger_file`` (chain ``default``)."""
    config = AuditConfig(ledger_url=f"sqlite:///{ledger_file}", actor=("service", "tests"))
    with AuditTrail(config) as t:
        yield t
