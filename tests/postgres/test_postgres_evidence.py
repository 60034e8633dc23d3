"""``workflow-audit evidence`` of a PostgreSQL ledger: the pack verifies offline and against
the ledger, is the same bytes when made twice, and holds the database password nowhere."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail
from tests.core._cli import Run
from tests.core.conftest import cli
from tests.postgres.conftest import AUDITOR_PASSWORD, WRITER_PASSWORD

__all__ = ["cli"]  # fixture, imported for pytest

SINCE, UNTIL = "2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z"
CHAINS = ("airflow", "airflow-events")


def _ts(day: int, i: int) -> str:
    return f"2026-11-{day:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000000Z"


def _fill(url: str, signing_key: Path) -> None:
    """Records before, in and after the period on two chains (failures, a denied access, a
    permission change), a checkpoint of each chain a day."""
    config = AuditConfig(ledger_url=url, actor=("service", "tests"), signing_key=str(signing_key))
    with AuditTrail(config) as trail:
        for day in (1, 2, 3, 5):
            for i in range(20):
                subject = {"dag_id": "ml_pipeline", "task_id": f"t{i % 4}", "try_number": 1}
                event = "task.failed" if i % 10 == 3 else "task.succeeded"
                trail.record(event, {"i": i}, subject=subject, ts=_ts(day, i), chain=CHAINS[0])
            trail.record(
                "access.denied",
                {"path": "/api/v2/dags", "status": 403},
                actor=("user", "mallory"),
                ts=_ts(day, 40),
                chain=CHAINS[1],
            )
            trail.record(
                "permission.changed",
                {"change": "role_granted", "target": "alice", "after": ["Admin"]},
                ts=_ts(day, 41),
                chain=CHAINS[1],
            )
            for chain in CHAINS:
                trail.checkpoint(chain)


@pytest.fixture
def key(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A signing key of its own (a PostgreSQL ledger has no file to keep one beside);
    returns the verifier key's path."""
    private = tmp_path / "audit.key"
    assert cli("keygen", "--name", "audit.test/pg", "-o", private).code == 0
    monkeypatch.setenv("WORKFLOW_AUDIT_SIGNING_KEY", str(private))
    return private.with_name("audit.key.pub")


def _make(cli: Any, url: str, out: Path) -> Run:
    run: Run = cli(
        "evidence", "--ledger", url, "--since", SINCE, "--until", UNTIL, "--sample", "15", "-o", out
    )
    return run


def test_pack_of_a_postgres_ledger(
    cli: Any, key: Path, writer_url: str, auditor_url: str, tmp_path: Path
) -> None:
    """PASS with both chains; verify-evidence accepts it alone and with the ledger (as the
    read-only auditor); a second pack is the same bytes; no password anywhere."""
    _fill(writer_url, key.with_suffix(""))
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    runs = [_make(cli, writer_url, first)]
    assert runs[0].code == 0, runs[0].err
    assert "verdict PASS" in runs[0].out
    runs.append(_make(cli, writer_url, second))
    assert runs[1].code == 0, runs[1].err
    assert first.read_bytes() == second.read_bytes()

    with zipfile.ZipFile(first) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    report = orjson.loads(entries["report.json"])
    assert "PASS" == report["verdict"]
    assert report["ledger"].startswith("postgresql://")
    chains = {c["chain"]: c for c in report["chains"]}
    assert set(CHAINS) == set(chains)
    # 20 task records a day on days 2 and 3 (i = 3 and 13 failed), 2 event records a day
    assert (40, 4) == (chains["airflow"]["records"], chains["airflow-events"]["records"])
    assert 4 == len(entries["records/failure.jsonl"].splitlines())
    assert 2 == len(entries["records/permission.jsonl"].splitlines())
    assert all(c["consistency"]["result"] == "PASS" for c in chains.values())

    runs.append(cli("verify-evidence", first, "--key", key))
    assert runs[-1].code == 0, runs[-1].err
    runs.append(cli("verify-evidence", first, "--key", key, "--ledger", auditor_url, "-v"))
    assert runs[-1].code == 0, runs[-1].err
    assert "verdict PASS" in runs[-1].out

    for password in (WRITER_PASSWORD, AUDITOR_PASSWORD):
        for name, body in entries.items():
            assert password.encode() not in body, name
        for run in runs:
            assert password not in run.out + run.err
