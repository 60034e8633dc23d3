"""Fixtures of the core tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit_core.cli import main
from tests.core._cli import Run


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call ``main(argv)`` in-process; argparse's SystemExit becomes an exit code."""
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no folded event names
    monkeypatch.delenv("WORKFLOW_AUDIT_LEDGER", raising=False)

    def run(*argv: str | Path) -> Run:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run
