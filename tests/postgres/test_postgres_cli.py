"""The command line and Airflow on a PostgreSQL ledger: ``postgres init``, ``verify``,
``checkpoint --all``, and ``airflow dags test`` writing to Postgres."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core.cli import main
from audit_core.ledgers import open_ledger
from audit_core.verify import verify_ledger
from testkit.postgres import PgServer
from tests.airflow._airflow import BIN, ML_TIMELINE, AirflowHome
from tests.airflow.conftest import airflow_home

__all__ = ["airflow_home"]  # fixture, imported for pytest


class TestPostgresCommands:
    """workflow-audit commands with a postgresql:// ledger."""

    def test_init_then_verify_and_checkpoint_all(
        self,
        pg_server: PgServer,
        owner_url: str,
        writer_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """init is idempotent; records in two streams verify; checkpoint --all signs both,
        and verify --key checks them."""
        assert 0 == main(["postgres", "init", "--url", owner_url])
        monkeypatch.setenv("WORKFLOW_AUDIT_SIGNING_KEY", str(tmp_path / "audit.key"))
        assert 0 == main(["keygen", "--name", "audit.test/pg", "-o", str(tmp_path / "audit.key")])
        config = AuditConfig(ledger_url=writer_url, chain="airflow-etl", checkpoint_every=0)
        with AuditTrail(config) as trail:
            for i in range(5):
                trail.record("task.succeeded", {"i": i})
                trail.record("task.succeeded", {"i": i}, chain="airflow-ml")
        capsys.readouterr()
        assert 0 == main(["checkpoint", "--all", "--ledger", writer_url])
        notes = capsys.readouterr().out
        assert "audit.test/pg/airflow-etl\n5\n" in notes
        assert "audit.test/pg/airflow-ml\n5\n" in notes
        assert 0 == main(
            ["verify", "--ledger", writer_url, "--key", str(tmp_path / "audit.key.pub")]
        )
        out = capsys.readouterr().out
        assert "chain 'airflow-etl': 5 records" in out
        assert "signatures checked" in out


@pytest.mark.slow
class TestAirflowOnPostgres:
    """airflow dags test with [workflow_audit] ledger_url = postgresql://…"""

    def test_dags_test_chain_verifies(self, airflow_home: AirflowHome, writer_url: str) -> None:
        """The ML pipeline's records land in Postgres in the expected order and verify."""
        done = airflow_home.run(
            "dags", "test", "ml_pipeline", ledger=Path("unused"),
            AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL=writer_url,
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr[-3000:]
        ledger = open_ledger(writer_url)
        try:
            [head] = verify_ledger(ledger)
            records = list(ledger.read("airflow"))
        finally:
            ledger.close()
        assert len(ML_TIMELINE) == head.size == len(records)
        verified = subprocess.run(
            [str(BIN / "workflow-audit"), "verify", "--ledger", writer_url], check=False
        )
        assert 0 == verified.returncode
