"""``workflow-audit evidence --s3``: the pack's retention section, end to end through the
command line, against the session's SeaweedFS (tests/shipping/conftest.py) with segments
shipped by the real sink (the ``ship`` helper of test_evidence_retention.py)."""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail, Event
from testkit.s3 import SECRET_KEY, S3Server
from tests.core._cli import Run
from tests.core.conftest import cli
from tests.shipping.test_evidence_retention import CHAIN, ship

__all__ = ["cli"]  # fixture, imported for pytest

RETENTION_CONTROLS = ("eu-ai-act-19", "nist-au-11")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment ``s3_client()`` reads: the session server's endpoint and identity."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def shipped_trail(tmp_path: Path, s3_env: None) -> Iterator[AuditTrail]:
    """A file ledger with 350 records on chain ``default``, a checkpoint signed after every
    100 and at the end."""
    config = AuditConfig(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}", checkpoint_every=0, actor=("service", "t")
    )
    with AuditTrail(config) as trail:
        for size in (100, 100, 100, 50):
            trail.record_many([Event(type="task.succeeded", data={"rows": 1})] * size)
            trail.checkpoint(CHAIN)
        yield trail


def _since() -> str:
    """A period start a day before the records (they are stamped now)."""
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _evidence(cli: Any, tmp_path: Path, url: str, out: Path) -> Run:
    run: Run = cli(
        "evidence",
        "--ledger",
        f"sqlite:///{tmp_path / 'ledger.db'}",
        "--since",
        _since(),
        "--chain",
        CHAIN,
        "--sample",
        "10",
        "--s3",
        url,
        "-o",
        out,
    )
    return run


def _verify(cli: Any, tmp_path: Path, pack: Path) -> Run:
    run: Run = cli("verify-evidence", pack, "--key", tmp_path / "ledger.db.key.pub")
    return run


def _entries(pack: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(pack) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _controls(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["controls"] if c["id"] in RETENTION_CONTROLS}


def _no_secret(run: Run, entries: dict[str, bytes]) -> None:
    assert SECRET_KEY not in run.out + run.err
    for name, body in entries.items():
        assert SECRET_KEY.encode() not in body, name


def test_compliance_segments_pass(
    cli: Any, shipped_trail: AuditTrail, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    """Four segments shipped as the sink ships them (COMPLIANCE, 365 days): the pack states
    PASS, lists each segment and checkpoint object with its lock, and evidences Art. 19 and
    AU-11; it verifies offline."""
    for first in range(0, 350, 100):
        ship(shipped_trail, s3_client, s3_bucket, "audit/eu", first, min(first + 99, 349))
    pack = tmp_path / "pack.zip"
    run = _evidence(cli, tmp_path, f"s3://{s3_bucket}/audit/eu", pack)
    assert run.code == 0, run.err
    assert "verdict PASS" in run.out
    entries = _entries(pack)
    report = orjson.loads(entries["report.json"])
    retention = report["retention"]
    assert ("PASS", True, None) == (retention["verdict"], retention["checked"], retention["error"])
    assert f"s3://{s3_bucket}/audit/eu" == retention["bucket"]
    objects = [orjson.loads(line) for line in entries["retention/objects.jsonl"].splitlines()]
    segments = [(o["first"], o["last"]) for o in objects if o["kind"] == "segment"]
    assert [(0, 99), (100, 199), (200, 299), (300, 349)] == segments
    assert 8 == len(objects) == retention["objects"] == retention["ok"]
    for obj in objects:
        assert (CHAIN, "COMPLIANCE", True) == (obj["chain"], obj["mode"], obj["ok"])
        assert obj["retain_until"] > obj["required_until"]
    assert dict.fromkeys(RETENTION_CONTROLS, "evidenced") == _controls(report)
    assert [] == report["findings"]
    assert "PASS" == next(
        line["result"] for line in report["transcript"] if line["check"].startswith("retention")
    )
    _no_secret(run, entries)
    verified = _verify(cli, tmp_path, pack)
    assert verified.code == 0, verified.err
    assert "verdict PASS" in verified.out


@pytest.mark.parametrize(
    ("lock", "problem"),
    [
        ({"mode": "GOVERNANCE"}, "GOVERNANCE mode"),
        ({"retention_days": 1, "allow_short_retention": True}, "retained until"),
    ],
    ids=["governance", "one-day"],
)
def test_weak_lock_fails_the_pack(
    cli: Any,
    shipped_trail: AuditTrail,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
    lock: dict[str, Any],
    problem: str,
) -> None:
    """The later segment is locked in GOVERNANCE mode, or for one day only: the pack is
    written but states FAIL with a finding that says why, the two retention controls
    fail, and verify-evidence rejects the authentic pack for the verdict it states."""
    ship(shipped_trail, s3_client, s3_bucket, "p", 0, 199)
    ship(shipped_trail, s3_client, s3_bucket, "p", 200, 349, **lock)
    pack = tmp_path / "pack.zip"
    run = _evidence(cli, tmp_path, f"s3://{s3_bucket}/p", pack)
    assert run.code == 1, run.err
    assert "verdict FAIL" in run.out
    entries = _entries(pack)
    report = orjson.loads(entries["report.json"])
    retention = report["retention"]
    assert ("FAIL", 4, 2) == (retention["verdict"], retention["objects"], retention["ok"])
    assert "2 of 4 objects" in retention["reason"]
    [finding] = report["findings"]
    assert "2 of 4 objects" in finding
    assert "COMPLIANCE" in finding
    assert f"FAIL {finding}" in run.err
    objects = [orjson.loads(line) for line in entries["retention/objects.jsonl"].splitlines()]
    bad = [o for o in objects if not o["ok"]]
    assert {(200, 349)} == {(o["first"], o["last"]) for o in bad}
    assert all(problem in o["reason"] for o in bad)
    assert dict.fromkeys(RETENTION_CONTROLS, "failed") == _controls(report)
    notes = [c["note"] for c in report["controls"] if c["id"] in RETENTION_CONTROLS]
    assert all(n.startswith("The retention check failed") for n in notes)
    _no_secret(run, entries)
    verified = _verify(cli, tmp_path, pack)
    assert verified.code == 1
    assert "verdict 'FAIL'" in verified.err
