"""The evidence pack's retention section (audit_core/evidence/retention.py) against a real S3
server with Object Lock (SeaweedFS ``weed mini``, started by tests/shipping/conftest.py).

Segments are shipped by the real sink; SeaweedFS enforces COMPLIANCE (nothing can be
shortened or deleted), so each test ships to a fresh bucket, with the lock it needs."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.bucket import verify_bucket
from audit_core.checkpoint import ledger_checkpoints
from audit_core.errors import ConfigError
from audit_core.evidence.retention import (
    ChainSpan,
    RetentionResult,
    check_retention,
    not_checked,
    parse_bucket_url,
)
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks.s3 import S3SegmentSink
from testkit.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server

CHAIN = "default"
READER = ("reader-key", "reader-secret-only-for-tests")
OBJECT_KEYS = {
    "key",
    "chain",
    "first",
    "last",
    "kind",
    "version",
    "mode",
    "retain_until",
    "legal_hold",
    "required_until",
    "ok",
    "reason",
}


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    """A file ledger with 350 records on chain ``default``."""
    trail = AuditTrail(
        AuditConfig(
            ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
            checkpoint_every=0,
            actor=("service", "t"),
        )
    )
    trail.record_many([Event(type="task.succeeded", data={"rows": 1})] * 350)
    return trail


def ship(
    trail: AuditTrail, client: Any, bucket: str, prefix: str, first: int, last: int, **kw: Any
) -> None:
    """Records ``first..last`` as one segment (and its checkpoint), as the shipper sends them."""
    checkpoint = ledger_checkpoints(trail.ledger, trail.signer, trail.origin)
    sink = S3SegmentSink(bucket, prefix, client=client, checkpoint=checkpoint, **kw)
    records = list(trail.ledger.read(CHAIN, first, last + 1))
    assert ExportResult.SUCCESS == sink.export(Batch(CHAIN, records))


def latest_from(
    trail: AuditTrail, calls: list[tuple[str, int, int]] | None = None
) -> Callable[[str, int, int], str | None]:
    """The ledger's latest record time of seqs ``first..last`` (what the lead's collector does)."""

    def latest(chain: str, first: int, last: int) -> str | None:
        if calls is not None:
            calls.append((chain, first, last))
        stamps = [json.loads(r.body)["ts"] for r in trail.ledger.read(chain, first, last + 1)]
        return max(stamps, default=None)

    return latest


def check(
    client: Any, bucket: str, prefix: str, trail: AuditTrail, lo: int = 0, hi: int = 350, **kw: Any
) -> RetentionResult:
    result = check_retention(
        client, bucket, prefix, [ChainSpan(CHAIN, lo, hi)], latest_from(trail), **kw
    )
    assert_clean(result)
    return result


def assert_clean(result: RetentionResult) -> None:
    """Every key present, JSON-able, no credential, no traceback."""
    assert set(not_checked("x")) == set(result.section)
    text = json.dumps([result.section, list(result.objects)])
    for secret in (SECRET_KEY, ACCESS_KEY, "Traceback", "botocore"):
        assert secret not in text
    for obj in result.objects:
        assert OBJECT_KEYS == set(obj)
    assert [o["key"] for o in result.objects] == sorted(o["key"] for o in result.objects)


def days_from_now(iso: str) -> float:
    when = dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return (when - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400


def client_as(server: S3Server, access_key: str, secret_key: str) -> Any:
    """A boto3 client of ``server`` with other credentials than the test identity's."""
    return importlib.import_module("boto3").client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
    )


class TestParse:
    def test_bucket_url(self) -> None:
        assert ("audit", "") == parse_bucket_url("s3://audit")
        assert ("audit", "prod/eu") == parse_bucket_url("s3://audit/prod/eu/")

    @pytest.mark.parametrize(
        "url", ["audit/prod", "https://audit/prod", "s3://", "s3://Audit/x", "s3://a:pw@host/x"]
    )
    def test_anything_else_is_a_config_error(self, url: str) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_bucket_url(url)
        assert "pw" not in str(caught.value)

    def test_not_checked_has_every_key_empty(self) -> None:
        section = not_checked("no --s3 bucket given")
        assert ("NOT CHECKED", False, None) == (
            section["verdict"],
            section["checked"],
            section["error"],
        )
        assert [] == section["problems"] == section["uncovered"] == section["listed"]


class TestRetention:
    def test_compliance_segments_pass(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """Shipped as the sink ships (COMPLIANCE, 365 days): PASS, every object listed with its
        mode, retain-until (a year ahead) and the date it had to reach (184 days past its
        latest record)."""
        for first in range(0, 350, 100):
            ship(trail, s3_client, s3_bucket, "p", first, min(first + 99, 349))
        s3_client.put_object_legal_hold(
            Bucket=s3_bucket,
            Key=f"p/{CHAIN}/{0:020d}-{99:020d}.checkpoint",
            LegalHold={"Status": "ON"},
        )
        result = check(s3_client, s3_bucket, "p", trail)
        section = result.section
        assert ("PASS", True, None) == (section["verdict"], section["checked"], section["error"])
        assert (8, 8, 0, [], []) == (
            section["objects"],
            section["ok"],
            section["problem_count"],
            section["problems"],
            section["uncovered"],
        )
        assert f"s3://{s3_bucket}/p" == section["bucket"]
        assert "Enabled" == section["versioning"]
        assert section["lock_configuration"]["enabled"] is True
        assert {"mode": "COMPLIANCE", "min_days": 184} == section["required"]
        assert [(o["key"], o["mode"]) for o in result.objects] == [
            (e["key"], e["mode"]) for e in section["listed"]
        ]
        assert {("segment", 4), ("checkpoint", 4)} == {
            (k, sum(o["kind"] == k for o in result.objects)) for k in ("segment", "checkpoint")
        }
        for obj in result.objects:
            assert obj["ok"]
            assert "" == obj["reason"]
            assert "COMPLIANCE" == obj["mode"]
            assert 364 < days_from_now(obj["retain_until"]) <= 365
            assert 183 < days_from_now(obj["required_until"]) <= 184
            assert obj["version"]
            assert obj["legal_hold"] is (obj["first"] == 0 and obj["kind"] == "checkpoint")
        # the same listing (audit_core.bucket.list_versions) serves the bucket verifier
        assert [350] == [c.head.size for c in verify_bucket(s3_client, s3_bucket, "p")]

    def test_only_objects_overlapping_the_period(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """Seqs 150-249 lie in two segments; the ledger is asked for the overlap only. The
        bucket's default retention is reported as configured."""
        s3_client.put_object_lock_configuration(
            Bucket=s3_bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 200}},
            },
        )
        for first in range(0, 350, 100):
            ship(trail, s3_client, s3_bucket, "p", first, min(first + 99, 349))
        calls: list[tuple[str, int, int]] = []
        span = ChainSpan(CHAIN, 150, 250)
        result = check_retention(s3_client, s3_bucket, "p", [span], latest_from(trail, calls))
        assert_clean(result)
        assert "PASS" == result.section["verdict"]
        assert [(100, 199), (100, 199), (200, 299), (200, 299)] == [
            (o["first"], o["last"]) for o in result.objects
        ]
        assert [(CHAIN, 150, 199), (CHAIN, 200, 249)] == calls
        assert {"enabled": True, "mode": "COMPLIANCE", "days": 200, "years": None} == (
            result.section["lock_configuration"]
        )

    def test_governance_objects_are_flagged(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """GOVERNANCE mode can be lifted by a user with s3:BypassGovernanceRetention."""
        ship(trail, s3_client, s3_bucket, "p", 0, 199)
        ship(trail, s3_client, s3_bucket, "p", 200, 349, mode="GOVERNANCE")
        result = check(s3_client, s3_bucket, "p", trail, max_listed=1)
        section = result.section
        assert ("FAIL", None, 4, 2, 2) == (
            section["verdict"],
            section["error"],
            section["objects"],
            section["ok"],
            section["problem_count"],
        )
        assert 1 == len(section["problems"])  # max_listed
        bad = [o for o in result.objects if not o["ok"]]
        assert {200} == {o["first"] for o in bad}
        for obj in bad:
            assert "GOVERNANCE" == obj["mode"]
            assert obj["reason"].startswith("GOVERNANCE mode: a user with s3:BypassGovernance")
        assert "2 of 4 objects" in section["reason"]

    def test_too_short_retention_is_flagged(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """A 1-day retain-until fails, naming the date it had to reach."""
        ship(trail, s3_client, s3_bucket, "p", 0, 349, retention_days=1, allow_short_retention=True)
        result = check(s3_client, s3_bucket, "p", trail)
        assert ("FAIL", 2) == (result.section["verdict"], result.section["problem_count"])
        for obj in result.objects:
            assert not obj["ok"]
            assert "COMPLIANCE" == obj["mode"]
            assert obj["retain_until"] < obj["required_until"]
            assert (
                f"retained until {obj['retain_until']}, before {obj['required_until']}"
                in (obj["reason"])
            )
        # and the same objects meet a 1-day requirement
        assert "PASS" == check(s3_client, s3_bucket, "p", trail, min_days=1).section["verdict"]

    def test_never_shipped_seqs_are_uncovered(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """Seqs no segment holds are listed (inclusive) and fail the section."""
        ship(trail, s3_client, s3_bucket, "p", 0, 99)
        ship(trail, s3_client, s3_bucket, "p", 200, 299)
        result = check(s3_client, s3_bucket, "p", trail)
        section = result.section
        assert "FAIL" == section["verdict"]
        assert [
            {"chain": CHAIN, "from": 100, "to": 199},
            {"chain": CHAIN, "from": 300, "to": 349},
        ] == section["uncovered"]
        assert (4, 0) == (section["objects"], section["problem_count"])
        assert "150 record(s) of the period were never shipped" in section["reason"]
        other = ChainSpan("never-shipped", 0, 5)
        result = check_retention(s3_client, s3_bucket, "p", [other], latest_from(trail))
        assert [{"chain": "never-shipped", "from": 0, "to": 4}] == result.section["uncovered"]

    def test_bucket_without_object_lock(
        self, trail: AuditTrail, s3_client: Any, s3_open_bucket: str
    ) -> None:
        """Objects of a bucket without Object Lock are listed, all unprotected: FAIL."""
        ship(trail, s3_client, s3_open_bucket, "dev", 0, 349, allow_no_lock=True)
        result = check(s3_client, s3_open_bucket, "dev", trail)
        section = result.section
        assert "FAIL" == section["verdict"]
        assert f"bucket {s3_open_bucket!r} has no S3 Object Lock" in section["error"]
        assert section["reason"].startswith(section["error"])
        assert False is section["lock_configuration"]["enabled"]
        assert "Enabled" != section["versioning"]
        assert (2, 2) == (section["objects"], section["problem_count"])
        assert all(o["mode"] is None and not o["ok"] for o in result.objects)

    def test_missing_bucket(self, trail: AuditTrail, s3_client: Any) -> None:
        result = check(s3_client, "wa-no-such-bucket-here", "p", trail)
        assert ("FAIL", ()) == (result.section["verdict"], result.objects)
        assert "bucket 'wa-no-such-bucket-here' does not exist" in result.section["error"]

    def test_unreachable_endpoint(self, trail: AuditTrail, s3_server: S3Server) -> None:
        """No answer: a sentence naming neither the endpoint nor the exception's text."""
        dead = S3Server(s3_server.root, {**s3_server.ports, "s3": 9}).client(max_attempts=1)
        result = check(dead, "wa-anything", "p", trail)
        error = result.section["error"]
        assert ("FAIL", ()) == (result.section["verdict"], result.objects)
        assert error.startswith("cannot reach the S3 endpoint for bucket 'wa-anything'")
        assert "127.0.0.1" not in error
        assert ":9" not in error

    def test_wrong_secret(self, trail: AuditTrail, s3_server: S3Server, s3_bucket: str) -> None:
        """Credentials S3 does not accept: said so, and the secret given appears nowhere."""
        wrong = "not-the-secret-" + SECRET_KEY[::-1]
        client = client_as(s3_server, ACCESS_KEY, wrong)
        result = check(client, s3_bucket, "p", trail)
        error = result.section["error"]
        assert ("FAIL", ()) == (result.section["verdict"], result.objects)
        assert "did not accept the credentials" in error
        assert "SignatureDoesNotMatch" in error
        assert wrong not in json.dumps(result.section)


@pytest.fixture(scope="module")
def reader_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS of its own with a second identity that may only read and list (the
    session server's identities are fixed when it starts)."""
    server = S3Server.create(tmp_path_factory.mktemp("seaweedfs-reader"))
    identities = json.loads((server.root / "identities.json").read_text())
    identities["identities"].append(
        {
            "name": "reader",
            "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
            "actions": ["Read", "List"],
        }
    )
    (server.root / "identities.json").write_text(json.dumps(identities))
    server.start()
    yield server
    server.stop()


def test_access_denied(trail: AuditTrail, reader_server: S3Server) -> None:
    """Without s3:GetBucketObjectLockConfiguration: FAIL, naming the permissions needed."""
    admin = reader_server.client()
    bucket = "wa-reader-test"
    admin.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    ship(trail, admin, bucket, "p", 0, 349)
    assert "PASS" == check(admin, bucket, "p", trail).section["verdict"]
    reader = client_as(reader_server, READER[0], READER[1])
    result = check(reader, bucket, "p", trail)
    error = result.section["error"]
    assert ("FAIL", ()) == (result.section["verdict"], result.objects)
    assert error.startswith(f"S3 denied GetObjectLockConfiguration on bucket {bucket!r}")
    assert "s3:GetObjectRetention" in error
    assert READER[1] not in json.dumps(result.section)
