"""``workflow-audit ship``: one-shot delivery, cursors across runs, exit code 3 when a sink
stays down, JSON lines through structlog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core.cli import main
from testkit import free_port
from testkit.otlp import OtlpReceiver


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    """A ledger URL with 30 records on chain 'airflow'."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with AuditTrail(AuditConfig(ledger_url=url, chain="airflow")) as trail:
        for i in range(30):
            trail.record("task.succeeded", {"i": i}, subject={"dag_id": "etl", "task_id": f"t{i}"})
    return url


class TestShipCommand:
    """The ship command with real sinks."""

    def test_otlp_one_shot_then_nothing_new(self, ledger: str, receiver: OtlpReceiver) -> None:
        """Every record reaches the receiver; a second run sends nothing (cursor)."""
        argv = ["ship", "--sink", "otlp", "--endpoint", receiver.endpoint, "--ledger", ledger,
                "--batch-size", "7"]  # fmt: skip
        assert 0 == main(argv)
        assert 30 == receiver.records
        assert 0 == main(argv)
        assert 30 == receiver.records

    def test_dead_endpoint_exits_3(self, ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A sink that stays down past --timeout leaves exit code 3 and says what is pending."""
        dead = f"http://127.0.0.1:{free_port()}"
        argv = ["ship", "--sink", "otlp", "--endpoint", dead, "--ledger", ledger, "--timeout", "1"]
        assert 3 == main(argv)
        assert "30 record(s) pending" in capsys.readouterr().err

    def test_structlog_prints_json_lines(
        self, ledger: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--sink structlog writes one JSON line a record on standard output."""
        assert 0 == main(["ship", "--sink", "structlog", "--ledger", ledger])
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert 30 == len(lines)
        assert list(range(30)) == sorted(int(str(line["audit.seq"])) for line in lines)

    def test_no_sink_is_a_usage_error(
        self, ledger: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --sink or WORKFLOW_AUDIT_SINKS the command says what to do (exit 2)."""
        monkeypatch.delenv("WORKFLOW_AUDIT_SINKS", raising=False)
        assert 2 == main(["ship", "--ledger", ledger])
        assert "pass --sink" in capsys.readouterr().err


class TestShipToS3:
    """``s3 init-bucket``, ``ship --sink s3`` and ``verify s3://`` end to end, with SeaweedFS."""

    def test_init_ship_verify(
        self,
        tmp_path: Path,
        s3_server: Any,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A new locked bucket receives the ledger's segments, which verify from the bucket
        alone with the verifier key; a second ship sends nothing."""
        for name, value in s3_server.env().items():
            monkeypatch.setenv(name, value)
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        with AuditTrail(AuditConfig(ledger_url=url, chain="airflow")) as trail:
            for i in range(2500):
                trail.record("task.succeeded", {"i": i})
        bucket = f"cli-{tmp_path.name.lower().replace('_', '-')[-40:]}"
        assert 0 == main(["s3", "init-bucket", bucket])
        ship = ["ship", "--sink", "s3", "--s3", f"s3://{bucket}/audit", "--ledger", url]
        assert 0 == main(ship)
        key = str(tmp_path / "ledger.db.key.pub")
        capsys.readouterr()
        assert 0 == main(["verify", f"s3://{bucket}/audit", "--key", key])
        assert "2500" in capsys.readouterr().out
        assert 0 == main(ship)
