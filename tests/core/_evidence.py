"""What the evidence pack's tests share: a ledger of two chains with records before, in and
after the period, and reading a pack's entries."""

from __future__ import annotations

import zipfile
from pathlib import Path

from audit_core import AuditConfig, AuditTrail

SINCE, UNTIL = "2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z"


def ts(day: int, i: int) -> str:
    """A November 2026 time: day ``day``, ``i`` seconds after midnight."""
    return f"2026-11-{day:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000000Z"


def fill(path: Path) -> None:
    """Two chains on days 1, 2, 3 and 5 (the period is days 2 and 3): 30 records a day on
    ``airflow`` (every tenth from the fourth a ``task.failed``), an ``access.denied`` and a
    ``permission.changed`` a day on ``airflow-events``; a checkpoint of each a day."""
    config = AuditConfig(ledger_url=f"sqlite:///{path}", actor=("service", "tests"))
    with AuditTrail(config) as trail:
        for day in (1, 2, 3, 5):
            for i in range(30):
                subject = {"dag_id": "ml_pipeline", "task_id": f"t{i % 5}", "try_number": 1}
                event = "task.failed" if i % 10 == 3 else "task.succeeded"
                trail.record(event, {"i": i}, subject=subject, ts=ts(day, i), chain="airflow")
            trail.record(
                "access.denied",
                {"path": "/api/v2/dags", "status": 403},
                actor=("user", "mallory"),
                ts=ts(day, 40),
                chain="airflow-events",
            )
            trail.record(
                "permission.changed",
                {"change": "role_granted", "target": "alice", "after": ["Admin"]},
                ts=ts(day, 41),
                chain="airflow-events",
            )
            for chain in ("airflow", "airflow-events"):
                trail.checkpoint(chain)


def entry(pack: Path, name: str) -> bytes:
    """One file of a pack."""
    with zipfile.ZipFile(pack) as zf:
        return zf.read(name)
