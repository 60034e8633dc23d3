"""Shared fixtures: a fresh file-backed ledger and trail per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """$XDG_DATA_HOME in a temporary directory for the whole run (this process and every
    process it starts): defaults that fall back to the user's data directory (a spool, a
    signing key, the default ledger) never touch the real home of whoever runs the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg_data_home")))
        yield


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
