"""``workflow-audit health`` on a PostgreSQL ledger, as the auditor role (SELECT only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core.cli import main
from tests.postgres.conftest import AUDITOR_PASSWORD

SINK = "otlp:http://collector:4318/v1/logs"


class TestPostgresHealth:
    """health against PostgreSQL."""

    def test_auditor_sees_records_checkpoint_and_sink_lag(
        self,
        writer_url: str,
        auditor_url: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The auditor role reads records, the checkpoint and each sink's lag (the cursor
        names come from the ledger); exit 0 within the default thresholds; the output never
        shows the password."""
        key = tmp_path / "audit.key"
        assert 0 == main(["keygen", "--name", "audit.test/pg", "-o", str(key)])
        config = AuditConfig(ledger_url=writer_url, signing_key=str(key), checkpoint_every=4)
        with AuditTrail(config) as trail:
            for i in range(4):
                trail.record("task.succeeded", {"i": i})
            trail.ledger.set_cursor(SINK, "default", 1)
        capsys.readouterr()
        code = main(["health", "--ledger", auditor_url, "--spool", str(tmp_path), "--json"])
        out = capsys.readouterr().out
        doc = json.loads(out)
        assert 0 == code
        (chain,) = doc["chains"]
        assert (4, 4, 0, {SINK: 2}) == (
            chain["records"],
            chain["checkpoint_size"],
            chain["unsigned"],
            chain["sinks"],
        )
        assert AUDITOR_PASSWORD not in out
