"""S3 segments under Object Lock: the format, the sink, the server's WORM enforcement, the
verifier from the bucket alone, the CLI, and shipping through server and shipper crashes.

Against a real S3 server (SeaweedFS ``weed mini``, started by tests/shipping/conftest.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_core import AuditConfig, AuditTrail, Event
from audit_core import bucket as bucket_module
from audit_core._metrics import COUNTERS
from audit_core._note import Signer
from audit_core._segment import sha256_b64
from audit_core.bucket import (
    RetentionError,
    RetentionPolicy,
    SegmentError,
    verify_bucket,
)
from audit_core.checkpoint import ledger_checkpoints
from audit_core.cli.s3 import add_parsers
from audit_core.cli.verify import verify_bucket as verify_bucket_cli
from audit_core.errors import (
    CheckpointError,
    ConfigError,
    SequenceError,
    VerificationError,
)
from audit_core.ship import Backoff, Shipper
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks.s3 import (
    MIN_RETENTION_DAYS,
    S3SegmentSink,
    decode_segment,
    encode_segment,
    parse_key,
    segment_key,
)
from audit_core.sinks.s3 import s3_client as s3_client_from_env
from audit_core.verify import verify_chain
from testkit.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]
EVENT = Event(
    type="task.succeeded",
    data={"duration_s": 1.5, "rows": 10},
    subject={"dag_id": "ml_pipeline", "task_id": "train", "run_id": "r1"},
)


# -- helpers ----------------------------------------------------------------------------------


def make_trail(path: Path, records: int, *, data: object = None) -> AuditTrail:
    """A file ledger with ``records`` records on chain ``default`` (its key beside it)."""
    trail = AuditTrail(
        AuditConfig(ledger_url=f"sqlite:///{path}", checkpoint_every=0, actor=("service", "t"))
    )
    event = EVENT if data is None else Event(type="task.succeeded", data=data)
    for done in range(0, records, 5000):
        trail.record_many([event] * min(5000, records - done))
    return trail


def sink_for(trail: AuditTrail, client: Any, bucket: str, prefix: str, **kw: Any) -> S3SegmentSink:
    checkpoint = ledger_checkpoints(trail.ledger, trail.signer, trail.origin)
    return S3SegmentSink(bucket, prefix, client=client, checkpoint=checkpoint, **kw)


def batch(trail: AuditTrail, first: int, last: int, chain: str = "default") -> Batch:
    return Batch(chain, list(trail.ledger.read(chain, first, last + 1)))


def rel(first: int, last: int, kind: str = "jsonl.gz", chain: str = "default") -> str:
    """An object's name relative to the prefix."""
    return f"{chain}/{first:020d}-{last:020d}.{kind}"


def keys_under(client: Any, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"][len(prefix) + 1 :] for o in listed.get("Contents", ())]


def versions_per_key(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    listed = client.list_object_versions(Bucket=bucket, Prefix=prefix + "/")
    counts: dict[str, int] = {}
    for v in [*listed.get("Versions", ()), *listed.get("DeleteMarkers", ())]:
        counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def segment_ranges(client: Any, bucket: str, prefix: str) -> list[tuple[int, int]]:
    out = []
    for key in keys_under(client, bucket, prefix):
        parsed = parse_key("", key)
        if parsed is not None and parsed[3] == "segment":
            out.append((parsed[1], parsed[2]))
    return sorted(out)


def put_locked(
    client: Any, bucket: str, key: str, data: bytes, *, mode: str = "COMPLIANCE", days: int = 365
) -> Any:
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)
    return client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ChecksumSHA256=sha256_b64(data),
        ObjectLockMode=mode,
        ObjectLockRetainUntilDate=until,
    )


def copy_prefix(
    client: Any,
    bucket: str,
    src: str,
    dst: str,
    *,
    alter: dict[str, Callable[[bytes], bytes]] | None = None,
    skip: tuple[str, ...] = (),
    mode: str = "COMPLIANCE",
    days: int = 365,
) -> None:
    """Write ``src``'s objects once each under ``dst``, locked as the sink locks them, but
    altered: a tampered twin whose only fault is the one under test."""
    for name in keys_under(client, bucket, src):
        if name in skip:
            continue
        data = client.get_object(Bucket=bucket, Key=f"{src}/{name}")["Body"].read()
        if alter and name in alter:
            data = alter[name](data)
        put_locked(client, bucket, f"{dst}/{name}", data, mode=mode, days=days)


@pytest.fixture
def shipped(tmp_path: Path, s3_client: Any, s3_bucket: str) -> tuple[AuditTrail, str, str]:
    """350 records shipped in batches of 100 to ``s3_bucket``/trail: 4 segments."""
    trail = make_trail(tmp_path / "ledger.db", 350)
    sink = sink_for(trail, s3_client, s3_bucket, "trail")
    assert 350 == Shipper(trail.ledger, sink, batch_size=100).ship_once().shipped
    return trail, s3_bucket, "trail"


def ledger_lines(trail: AuditTrail, first: int, last: int) -> list[bytes]:
    return [r.body for r in trail.ledger.read("default", first, last + 1)]


# -- the segment format ----------------------------------------------------------------------


class TestSegmentFormat:
    """Object names and the gzip member of a segment."""

    def test_names_sort_by_position_and_parse_back(self) -> None:
        """Names hold chain and range, zero-padded so lexical order is seq order."""
        key = segment_key("audit/prod", "default", 1000, 1999)
        assert "audit/prod/default/00000000000000001000-00000000000000001999.jsonl.gz" == key
        assert ("default", 1000, 1999, "segment") == parse_key("audit/prod", key)
        assert segment_key("", "c", 999, 999) < segment_key("", "c", 1000, 1999)

    def test_chain_ids_with_slashes_are_one_path_segment(self) -> None:
        """A '/' in a chain id is percent-encoded, so chains never nest in each other."""
        key = segment_key("p", "team/a:b", 0, 9)
        assert "p/team%2Fa%3Ab/00000000000000000000-00000000000000000009.jsonl.gz" == key
        assert ("team/a:b", 0, 9, "segment") == parse_key("p", key)

    def test_foreign_names_are_not_ours(self) -> None:
        """Objects of other tools, and non-canonical encodings, are not parsed as segments."""
        assert None is parse_key("p", "p/default/README.md")
        assert None is parse_key(
            "p", "p/def%61ult/00000000000000000000-00000000000000000009.checkpoint"
        )
        assert None is parse_key(
            "p", "other/default/00000000000000000000-00000000000000000009.jsonl.gz"
        )

    def test_encoding_is_deterministic(self) -> None:
        """The same records give the same bytes (mtime 0, no file name)."""
        assert encode_segment([b"{}", b"[]"]) == encode_segment([b"{}", b"[]"])
        assert [b"{}", b"[]"] == decode_segment(encode_segment([b"{}", b"[]"]))

    def test_bytes_after_the_member_are_rejected(self) -> None:
        """Trailing garbage after the gzip member fails (the CloudTrail validator's old bug)."""
        with pytest.raises(ValueError, match="after the end of the gzip member"):
            decode_segment(encode_segment([b"{}"]) + b"\x00garbage")

    def test_a_second_member_is_rejected_though_gzip_reads_it(self) -> None:
        """Python's gzip module reads concatenated members; the segment decoder does not."""
        two = encode_segment([b'{"a":1}']) + encode_segment([b'{"b":2}'])
        assert b'{"a":1}\n{"b":2}\n' == gzip.decompress(two)
        with pytest.raises(ValueError, match="second member"):
            decode_segment(two)

    def test_truncated_and_flagged_members_are_rejected(self) -> None:
        """A cut member, or one with a header flag (name, comment, extra field), fails."""
        data = encode_segment([b"{}"])
        with pytest.raises(ValueError, match="truncated"):
            decode_segment(data[:-4])
        with pytest.raises(ValueError, match="no flags"):
            decode_segment(data[:3] + b"\x08" + data[4:])


# -- the sink ---------------------------------------------------------------------------------


class TestSinkConfig:
    """S3SegmentSink refuses unsafe configurations."""

    def test_bucket_without_object_lock_is_refused(
        self, trail: AuditTrail, s3_client: Any, s3_open_bucket: str
    ) -> None:
        """Shipping to a bucket without Object Lock raises ConfigError naming the fix."""
        with pytest.raises(ConfigError, match=r"has no S3 Object Lock.*init-bucket"):
            sink_for(trail, s3_client, s3_open_bucket, "p")

    def test_missing_bucket_is_refused(self, trail: AuditTrail, s3_client: Any) -> None:
        """A bucket that does not exist raises ConfigError pointing at init-bucket."""
        with pytest.raises(ConfigError, match="does not exist"):
            sink_for(trail, s3_client, "wa-no-such-bucket", "p")

    def test_retention_below_six_months_is_refused(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """Retention under the EU AI Act Art. 19 floor needs an explicit override."""
        with pytest.raises(ConfigError, match=r"Art\. 19"):
            sink_for(trail, s3_client, s3_bucket, "p", retention_days=MIN_RETENTION_DAYS - 1)
        sink = sink_for(
            trail, s3_client, s3_bucket, "p", retention_days=30, allow_short_retention=True
        )
        assert 30 == sink.retention_days

    def test_unknown_lock_mode_is_refused(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """Only COMPLIANCE and GOVERNANCE are Object Lock modes."""
        with pytest.raises(ConfigError, match="COMPLIANCE, GOVERNANCE"):
            sink_for(trail, s3_client, s3_bucket, "p", mode="LEGAL_HOLD")

    def test_name_is_stable_per_destination(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """The cursor name is s3:BUCKET/PREFIX."""
        assert f"s3:{s3_bucket}/a/b" == sink_for(trail, s3_client, s3_bucket, "/a/b/").name


class TestS3SegmentSink:
    """S3SegmentSink.export: segments, checkpoints, idempotence, failures."""

    def test_batches_become_locked_checksummed_segments(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Each batch is one segment plus its checkpoint, COMPLIANCE-locked for 365 days."""
        trail, bucket, prefix = shipped
        expected = [
            rel(a, b, kind)
            for a, b in ((0, 99), (100, 199), (200, 299), (300, 349))
            for kind in ("checkpoint", "jsonl.gz")
        ]
        assert expected == keys_under(s3_client, bucket, prefix)
        head = s3_client.head_object(
            Bucket=bucket, Key=f"{prefix}/{rel(100, 199)}", ChecksumMode="ENABLED"
        )
        assert "COMPLIANCE" == head["ObjectLockMode"]
        days = (head["ObjectLockRetainUntilDate"] - head["LastModified"]).total_seconds() / 86400
        assert 365 == round(days)
        data = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{rel(100, 199)}")["Body"].read()
        assert sha256_b64(data) == head["ChecksumSHA256"]
        assert ledger_lines(trail, 100, 199) == decode_segment(data)

    def test_checkpoint_covers_the_segment_end(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """The checkpoint object is the signed note at tree size last + 1."""
        trail, bucket, prefix = shipped
        note = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{rel(200, 299, 'checkpoint')}")
        lines = note["Body"].read().decode().split("\n")
        assert [trail.origin("default"), "300"] == lines[:2]

    def test_reupload_is_a_noop(self, s3_client: Any, shipped: tuple[AuditTrail, str, str]) -> None:
        """Re-sending shipped batches succeeds and writes no new version."""
        trail, bucket, prefix = shipped
        sink = sink_for(trail, s3_client, bucket, prefix)
        for first, last in ((0, 99), (100, 199), (300, 349)):
            assert ExportResult.SUCCESS == sink.export(batch(trail, first, last))
        assert {1} == set(versions_per_key(s3_client, bucket, prefix).values())

    def test_longer_batch_after_a_lost_confirmation_writes_only_the_rest(
        self, tmp_path: Path, s3_client: Any, s3_bucket: str
    ) -> None:
        """A batch re-read after a crash with more records adds a segment after the one
        that landed, never an overlapping one."""
        trail = make_trail(tmp_path / "l.db", 100)
        assert ExportResult.SUCCESS == sink_for(trail, s3_client, s3_bucket, "p").export(
            batch(trail, 0, 49)
        )
        restarted = sink_for(trail, s3_client, s3_bucket, "p")
        assert ExportResult.SUCCESS == restarted.export(batch(trail, 0, 99))
        assert [(0, 49), (50, 99)] == segment_ranges(s3_client, s3_bucket, "p")
        assert (
            100
            == verify_bucket(s3_client, s3_bucket, "p", keys=[trail.signer.verifier])[0].head.size
        )

    def test_shorter_batches_after_a_restart_never_overlap(
        self, tmp_path: Path, s3_client: Any, s3_bucket: str
    ) -> None:
        """With a smaller batch size after a restart, records already in a segment are
        matched, not written again, and the next segment starts after it."""
        trail = make_trail(tmp_path / "l.db", 150)
        assert ExportResult.SUCCESS == sink_for(trail, s3_client, s3_bucket, "p").export(
            batch(trail, 0, 99)
        )
        restarted = sink_for(trail, s3_client, s3_bucket, "p")
        assert 150 == Shipper(trail.ledger, restarted, batch_size=30).ship_once().shipped
        assert [(0, 99), (100, 119), (120, 149)] == segment_ranges(s3_client, s3_bucket, "p")
        verify_bucket(s3_client, s3_bucket, "p", keys=[trail.signer.verifier])

    def test_a_missing_checkpoint_is_written_on_retry(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """A segment that landed without its checkpoint (crash between the two PUTs) gets
        it when the batch is re-sent."""
        trail, bucket, prefix = shipped
        copy_prefix(s3_client, bucket, prefix, "cut", skip=(rel(300, 349, "checkpoint"),))
        with pytest.raises(CheckpointError, match="has no checkpoint object"):
            verify_bucket(s3_client, bucket, "cut", keys=[trail.signer.verifier])
        sink = sink_for(trail, s3_client, bucket, "cut")
        assert ExportResult.SUCCESS == sink.export(batch(trail, 300, 349))
        verify_bucket(s3_client, bucket, "cut", keys=[trail.signer.verifier])

    def test_other_records_in_the_bucket_fail_loudly_and_stay(
        self,
        tmp_path: Path,
        s3_client: Any,
        shipped: tuple[AuditTrail, str, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Another ledger's records at the same names: FAILURE, an error, nothing replaced."""
        _, bucket, prefix = shipped
        other = make_trail(tmp_path / "other.db", 120, data={"other": True})
        before = COUNTERS.snapshot().get("s3_conflicts", 0)
        sink = sink_for(other, s3_client, bucket, prefix)
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            assert ExportResult.FAILURE == sink.export(batch(other, 0, 99))
        assert "REFUSING to overwrite" in caplog.text
        assert before + 1 == COUNTERS.snapshot()["s3_conflicts"]
        assert {1} == set(versions_per_key(s3_client, bucket, prefix).values())

    def test_unreachable_server_is_a_failure_not_a_raise(
        self, trail: AuditTrail, s3_server: S3Server
    ) -> None:
        """With S3 down, construction defers the lock check and export returns FAILURE."""
        dead = S3Server(s3_server.root, {**s3_server.ports, "s3": 9}).client(max_attempts=1)
        trail.record("task.started")
        sink = sink_for(trail, dead, "wa-anything", "p")
        assert ExportResult.FAILURE == sink.export(batch(trail, 0, 0))

    def test_governance_mode_and_retention_are_applied(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """mode and retention_days go into every PUT."""
        trail.record("task.started")
        sink = sink_for(trail, s3_client, s3_bucket, "g", mode="GOVERNANCE", retention_days=200)
        assert ExportResult.SUCCESS == sink.export(batch(trail, 0, 0))
        head = s3_client.head_object(Bucket=s3_bucket, Key=f"g/{rel(0, 0)}")
        assert "GOVERNANCE" == head["ObjectLockMode"]
        days = (head["ObjectLockRetainUntilDate"] - head["LastModified"]).total_seconds() / 86400
        assert 200 == round(days)

    def test_development_bucket_without_lock(
        self, trail: AuditTrail, s3_client: Any, s3_open_bucket: str
    ) -> None:
        """allow_no_lock ships without lock headers; verify's default policy reports it."""
        trail.record("task.started")
        sink = sink_for(trail, s3_client, s3_open_bucket, "dev", allow_no_lock=True)
        assert ExportResult.SUCCESS == sink.export(batch(trail, 0, 0))
        assert "ObjectLockMode" not in s3_client.head_object(
            Bucket=s3_open_bucket, Key=f"dev/{rel(0, 0)}"
        )
        with pytest.raises(RetentionError, match="has no Object Lock retention"):
            verify_bucket(s3_client, s3_open_bucket, "dev", keys=[trail.signer.verifier])
        policy = RetentionPolicy(require_lock=False)
        verify_bucket(s3_client, s3_open_bucket, "dev", keys=[trail.signer.verifier], policy=policy)


# -- what the server enforces -----------------------------------------------------------------


class TestObjectLockEnforcement:
    """SeaweedFS refuses to delete, replace or unlock a COMPLIANCE-locked segment version."""

    def test_deleting_a_locked_version_is_refused(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """DELETE of a locked version fails, even with the governance bypass; it stays."""
        trail, bucket, prefix = shipped
        key = f"{prefix}/{rel(0, 99)}"
        version = s3_client.head_object(Bucket=bucket, Key=key)["VersionId"]
        for bypass in (False, True):
            with pytest.raises(ClientError) as refused:
                s3_client.delete_object(
                    Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=bypass
                )
            assert "AccessDenied" == refused.value.response["Error"]["Code"]
        body = s3_client.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
        assert ledger_lines(trail, 0, 99) == decode_segment(body)

    def test_overwriting_adds_a_version_and_keeps_the_locked_one(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """A PUT over a segment creates a new version; the locked original is unchanged."""
        trail, bucket, prefix = shipped
        key = f"{prefix}/{rel(0, 99)}"
        original = s3_client.head_object(Bucket=bucket, Key=key)["VersionId"]
        new = s3_client.put_object(Bucket=bucket, Key=key, Body=encode_segment([b"{}"]))
        assert original != new["VersionId"]
        body = s3_client.get_object(Bucket=bucket, Key=key, VersionId=original)["Body"].read()
        assert ledger_lines(trail, 0, 99) == decode_segment(body)

    def test_retention_cannot_be_shortened_or_weakened(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Shortening retain-until or switching to GOVERNANCE is refused."""
        _, bucket, prefix = shipped
        key = f"{prefix}/{rel(0, 99)}"
        head = s3_client.head_object(Bucket=bucket, Key=key)
        soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
        for retention in (
            {"Mode": "COMPLIANCE", "RetainUntilDate": soon},
            {"Mode": "GOVERNANCE", "RetainUntilDate": head["ObjectLockRetainUntilDate"]},
        ):
            with pytest.raises(ClientError):
                s3_client.put_object_retention(
                    Bucket=bucket, Key=key, VersionId=head["VersionId"], Retention=retention
                )
        after = s3_client.head_object(Bucket=bucket, Key=key)
        assert ("COMPLIANCE", head["ObjectLockRetainUntilDate"]) == (
            after["ObjectLockMode"],
            after["ObjectLockRetainUntilDate"],
        )

    def test_versioning_of_a_locked_bucket_cannot_be_suspended(
        self, s3_client: Any, s3_bucket: str
    ) -> None:
        """Object Lock keeps versioning on."""
        with pytest.raises(ClientError) as refused:
            s3_client.put_bucket_versioning(
                Bucket=s3_bucket, VersioningConfiguration={"Status": "Suspended"}
            )
        assert "InvalidBucketState" == refused.value.response["Error"]["Code"]

    def test_conditional_write_and_checksum_are_enforced(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """If-None-Match: * refuses an existing key (412); a wrong SHA-256 is refused."""
        _, bucket, prefix = shipped
        with pytest.raises(ClientError) as exists:
            s3_client.put_object(
                Bucket=bucket, Key=f"{prefix}/{rel(0, 99)}", Body=b"x", IfNoneMatch="*"
            )
        assert "PreconditionFailed" == exists.value.response["Error"]["Code"]
        with pytest.raises(ClientError) as digest:
            s3_client.put_object(
                Bucket=bucket, Key=f"{prefix}/new", Body=b"x", ChecksumSHA256=sha256_b64(b"y")
            )
        assert "BadDigest" == digest.value.response["Error"]["Code"]


# -- the verifier -----------------------------------------------------------------------------


class TestVerifyBucket:
    """verify_bucket: from the bucket alone, every way a copy can be wrong."""

    def test_a_shipped_chain_verifies_like_the_ledger(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Size, head and Merkle root equal the ledger's; every checkpoint matched."""
        trail, bucket, prefix = shipped
        [found] = verify_bucket(s3_client, bucket, prefix, keys=[trail.signer.verifier])
        ledger = verify_chain(trail.ledger, "default")
        assert (ledger.size, ledger.head, ledger.root) == (
            found.head.size,
            found.head.head,
            found.head.root,
        )
        assert (4, 4, ("COMPLIANCE",)) == (found.segments, found.head.checkpoints, found.modes)

    def test_missing_segment(self, s3_client: Any, shipped: tuple[AuditTrail, str, str]) -> None:
        """A segment and its checkpoint gone: the gap's seqs and neighbours are named."""
        trail, bucket, prefix = shipped
        copy_prefix(
            s3_client,
            bucket,
            prefix,
            "gap",
            skip=(rel(100, 199), rel(100, 199, "checkpoint")),
        )
        with pytest.raises(SequenceError, match=r"no segment holds seq 100\.\.199") as caught:
            verify_bucket(s3_client, bucket, "gap", keys=[trail.signer.verifier])
        assert (100, "a segment starting at seq 100") == (caught.value.seq, caught.value.expected)

    def test_missing_segment_whose_checkpoint_remains(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """A segment gone but its checkpoint there: the segment is named missing."""
        trail, bucket, prefix = shipped
        copy_prefix(s3_client, bucket, prefix, "gap2", skip=(rel(200, 299),))
        with pytest.raises(SequenceError, match=r"00000000000000000299\.jsonl\.gz is missing"):
            verify_bucket(s3_client, bucket, "gap2", keys=[trail.signer.verifier])

    def test_overlapping_segments_are_a_duplicate_range(
        self, trail: AuditTrail, s3_client: Any, s3_bucket: str
    ) -> None:
        """Two segments holding the same seqs fail as a duplicate range."""
        trail.record_many([EVENT] * 20)
        sink = sink_for(trail, s3_client, s3_bucket, "dup")
        assert ExportResult.SUCCESS == sink.export(batch(trail, 0, 19))
        sink = sink_for(trail, s3_client, s3_bucket, "dup2")
        for first, last in ((0, 9), (10, 19)):
            assert ExportResult.SUCCESS == sink.export(batch(trail, first, last))
        copy_prefix(s3_client, s3_bucket, "dup2", "dup")
        with pytest.raises(SequenceError, match="duplicate range"):
            verify_bucket(s3_client, s3_bucket, "dup", keys=[trail.signer.verifier])

    def test_swapped_segments_in_a_locked_bucket_are_new_versions(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Swapping two segments' bytes can only add versions: reported as replaced."""
        trail, bucket, prefix = shipped
        a = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{rel(0, 99)}")["Body"].read()
        b = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{rel(100, 199)}")["Body"].read()
        put_locked(s3_client, bucket, f"{prefix}/{rel(0, 99)}", b)
        put_locked(s3_client, bucket, f"{prefix}/{rel(100, 199)}", a)
        with pytest.raises(SegmentError, match="replaced by a new version") as caught:
            verify_bucket(s3_client, bucket, prefix, keys=[trail.signer.verifier])
        assert 0 == caught.value.seq

    def test_swapped_segments_without_version_history(
        self, trail: AuditTrail, s3_client: Any, s3_open_bucket: str
    ) -> None:
        """Where nothing keeps versions, swapped segments fail on their records' seqs."""
        trail.record_many([EVENT] * 20)
        sink = sink_for(trail, s3_client, s3_open_bucket, "p", allow_no_lock=True)
        assert 20 == Shipper(trail.ledger, sink, batch_size=10).ship_once().shipped
        a = s3_client.get_object(Bucket=s3_open_bucket, Key=f"p/{rel(0, 9)}")["Body"].read()
        b = s3_client.get_object(Bucket=s3_open_bucket, Key=f"p/{rel(10, 19)}")["Body"].read()
        for key, data in ((rel(0, 9), b), (rel(10, 19), a)):
            s3_client.put_object(
                Bucket=s3_open_bucket, Key=f"p/{key}", Body=data, ChecksumSHA256=sha256_b64(data)
            )
        with pytest.raises(VerificationError, match=f"object p/{rel(0, 9)}") as caught:
            verify_bucket(
                s3_client,
                s3_open_bucket,
                "p",
                keys=[trail.signer.verifier],
                policy=RetentionPolicy(require_lock=False),
            )
        assert 0 == caught.value.seq

    def test_replaced_version(self, s3_client: Any, shipped: tuple[AuditTrail, str, str]) -> None:
        """A segment replaced by a new version is named, with the original version."""
        trail, bucket, prefix = shipped
        key = f"{prefix}/{rel(200, 299)}"
        original = s3_client.head_object(Bucket=bucket, Key=key)["VersionId"]
        data = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        put_locked(s3_client, bucket, key, data)  # even identical bytes: a new version
        with pytest.raises(SegmentError, match=f"{key}: replaced by a new version") as caught:
            verify_bucket(s3_client, bucket, prefix, keys=[trail.signer.verifier])
        assert original in str(caught.value)
        assert (200, "2 version(s), 0 delete marker(s)") == (caught.value.seq, caught.value.found)

    def test_delete_marker(self, s3_client: Any, shipped: tuple[AuditTrail, str, str]) -> None:
        """A DELETE without version hides a segment behind a marker: reported as deleted."""
        trail, bucket, prefix = shipped
        key = f"{prefix}/{rel(100, 199)}"
        marker = s3_client.delete_object(Bucket=bucket, Key=key)
        assert marker["DeleteMarker"]
        with pytest.raises(SegmentError, match="hidden by a delete marker") as caught:
            verify_bucket(s3_client, bucket, prefix, keys=[trail.signer.verifier])
        assert (100, "1 version(s), 1 delete marker(s)") == (caught.value.seq, caught.value.found)

    @pytest.mark.parametrize(
        "extra",
        [b"\x00" * 8, encode_segment([b'{"forged":true}'])],
        ids=["garbage", "second-member"],
    )
    def test_bytes_after_the_gzip_member(
        self, extra: bytes, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Bytes appended after a segment's gzip member are reported, with the object."""
        trail, bucket, prefix = shipped
        name = rel(100, 199)
        copy_prefix(s3_client, bucket, prefix, "tail", alter={name: lambda d: d + extra})
        with pytest.raises(SegmentError, match=f"tail/{name}: {len(extra)} byte"):
            verify_bucket(s3_client, bucket, "tail", keys=[trail.signer.verifier])

    def test_checkpoint_signed_by_the_wrong_key(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Checkpoints verified with another key fail, naming the checkpoint object."""
        _, bucket, prefix = shipped
        stranger = Signer.generate("stranger.example/audit").verifier
        with pytest.raises(CheckpointError, match=r"checkpoint object .*\.checkpoint does not"):
            verify_bucket(s3_client, bucket, prefix, keys=[stranger])

    def test_checkpoint_re_signed_by_another_key(
        self, tmp_path: Path, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """A checkpoint replaced by one with the right root but another signer fails."""
        trail, bucket, prefix = shipped
        forger = Signer.generate(trail.signer.name)
        forged = ledger_checkpoints(trail.ledger, forger, trail.origin)("default", 300)
        name = rel(200, 299, "checkpoint")
        copy_prefix(s3_client, bucket, prefix, "forged", alter={name: lambda _: forged.encode()})
        with pytest.raises(CheckpointError, match=f"forged/{name} does not verify"):
            verify_bucket(s3_client, bucket, "forged", keys=[trail.signer.verifier])

    def test_rewritten_chain_fails_the_signed_roots(
        self, tmp_path: Path, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Another valid chain's segments under the genuine checkpoints fail on the root."""
        trail, bucket, prefix = shipped
        other = make_trail(tmp_path / "other.db", 350, data={"rewritten": True})
        sink = sink_for(other, s3_client, bucket, "other")
        assert 350 == Shipper(other.ledger, sink, batch_size=100).ship_once().shipped
        segments = [rel(a, b) for a, b in ((0, 99), (100, 199), (200, 299), (300, 349))]
        copy_prefix(
            s3_client,
            bucket,
            "other",
            "mixed",
            skip=tuple(n for n in keys_under(s3_client, bucket, "other") if n not in segments),
        )
        copy_prefix(s3_client, bucket, prefix, "mixed", skip=tuple(segments))
        with pytest.raises(CheckpointError, match="Merkle root at tree size 100") as caught:
            verify_bucket(s3_client, bucket, "mixed", keys=[trail.signer.verifier])
        assert 99 == caught.value.seq

    def test_segment_without_checkpoint(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """A segment whose checkpoint object is missing is reported."""
        trail, bucket, prefix = shipped
        copy_prefix(s3_client, bucket, prefix, "nocp", skip=(rel(0, 99, "checkpoint"),))
        with pytest.raises(CheckpointError, match="has no checkpoint object"):
            verify_bucket(s3_client, bucket, "nocp", keys=[trail.signer.verifier])
        # the download threads end with the verification, failed or not (never left to the
        # garbage collector, which may finalize them in a thread that cannot join itself)
        assert [] == [t.name for t in threading.enumerate() if t.name.startswith("wa-s3-get")]

    def test_governance_mode_is_reported(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """GOVERNANCE locks fail the default (COMPLIANCE) policy, pass a GOVERNANCE one."""
        trail, bucket, prefix = shipped
        copy_prefix(s3_client, bucket, prefix, "gov", mode="GOVERNANCE")
        keys = [trail.signer.verifier]
        with pytest.raises(RetentionError, match="locked in GOVERNANCE mode") as caught:
            verify_bucket(s3_client, bucket, "gov", keys=keys)
        assert ("COMPLIANCE", "GOVERNANCE") == (caught.value.expected, caught.value.found)
        policy = RetentionPolicy(mode="GOVERNANCE")
        assert ("GOVERNANCE",) == verify_bucket(s3_client, bucket, "gov", keys=keys, policy=policy)[
            0
        ].modes

    def test_too_short_retention_is_reported(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """A retain-until less than the policy's days after writing is reported."""
        trail, bucket, prefix = shipped
        copy_prefix(s3_client, bucket, prefix, "short", days=30)
        keys = [trail.signer.verifier]
        with pytest.raises(RetentionError, match=r"(29|30) days after it was written"):
            verify_bucket(s3_client, bucket, "short", keys=keys)
        policy = RetentionPolicy(min_retention_days=30)
        verify_bucket(s3_client, bucket, "short", keys=keys, policy=policy)

    def test_a_named_chain_must_be_there(
        self, s3_client: Any, shipped: tuple[AuditTrail, str, str]
    ) -> None:
        """Asking for a chain with no segments fails rather than passing as empty."""
        trail, bucket, prefix = shipped
        with pytest.raises(VerificationError, match="no segments of chain 'gone'"):
            verify_bucket(s3_client, bucket, prefix, keys=[trail.signer.verifier], chains=["gone"])

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def test_any_changed_record_byte_fails(
        self, data: st.DataObject, trail: AuditTrail, s3_client: Any, s3_open_bucket: str
    ) -> None:
        """Any byte of any record changed in a segment (re-compressed, fresh checksum) fails."""
        if trail.ledger.head("default") is None:
            trail.record_many([EVENT] * 10)
            sink = sink_for(trail, s3_client, s3_open_bucket, "p", allow_no_lock=True)
            assert 10 == Shipper(trail.ledger, sink, batch_size=5).ship_once().shipped
        first = data.draw(st.sampled_from([0, 5]))
        key = f"p/{rel(first, first + 4)}"
        lines = ledger_lines(trail, first, first + 4)
        payload = bytearray(b"\n".join(lines) + b"\n")
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = (payload[at] + data.draw(st.integers(1, 255))) % 256
        tampered = gzip.compress(bytes(payload), mtime=0)
        s3_client.put_object(
            Bucket=s3_open_bucket, Key=key, Body=tampered, ChecksumSHA256=sha256_b64(tampered)
        )
        try:
            with pytest.raises(VerificationError):
                verify_bucket(
                    s3_client,
                    s3_open_bucket,
                    "p",
                    keys=[trail.signer.verifier],
                    policy=RetentionPolicy(require_lock=False),
                )
        finally:
            original = encode_segment(lines)
            s3_client.put_object(
                Bucket=s3_open_bucket, Key=key, Body=original, ChecksumSHA256=sha256_b64(original)
            )


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS_* variables the CLI's client reads, pointing at the test server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


def run_s3_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workflow-audit")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


@pytest.mark.usefixtures("s3_env")
class TestS3Cli:
    """`workflow-audit s3 init-bucket` and `verify s3://…` (audit_core.cli)."""

    def test_init_bucket_creates_a_locked_versioned_bucket(
        self, s3_client: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A new bucket gets versioning and Object Lock; a second run just checks it."""
        name = f"wa-init-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        assert 0 == run_s3_cli(["s3", "init-bucket", name, "--prefix", "prod"])
        assert f"bucket '{name}' created: versioning Enabled, Object Lock enabled" in (
            capsys.readouterr().out
        )
        assert "Enabled" == s3_client.get_bucket_versioning(Bucket=name)["Status"]
        config = s3_client.get_object_lock_configuration(Bucket=name)
        assert "Enabled" == config["ObjectLockConfiguration"]["ObjectLockEnabled"]
        assert 0 == run_s3_cli(["s3", "init-bucket", name])
        assert f"bucket '{name}' exists" in capsys.readouterr().out

    def test_init_bucket_reports_a_bucket_without_lock(
        self, s3_open_bucket: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An existing bucket without versioning and Object Lock exits 1 saying how to fix."""
        assert 1 == run_s3_cli(["s3", "init-bucket", s3_open_bucket])
        err = capsys.readouterr().err
        assert "NOT READY: versioning is not enabled" in err
        assert "NOT READY: Object Lock is not enabled" in err

    def test_init_bucket_allow_no_lock(
        self, s3_client: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--allow-no-lock makes a versioned bucket without lock, with a warning."""
        name = f"wa-dev-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        assert 0 == run_s3_cli(["s3", "init-bucket", name, "--allow-no-lock"])
        assert "WARNING: without Object Lock" in capsys.readouterr().err
        assert "Enabled" == s3_client.get_bucket_versioning(Bucket=name)["Status"]

    def test_verify_valid_bucket(
        self, shipped: tuple[AuditTrail, str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A valid bucket exits 0 and names records, segments and the lock."""
        trail, bucket, prefix = shipped
        key = str(trail.signer.verifier)
        assert 0 == verify_bucket_cli(f"s3://{bucket}/{prefix}", [key], False)
        out = capsys.readouterr().out
        assert "valid: chain 'default': 350 records in 4 segments" in out
        assert "Object Lock COMPLIANCE" in out

    def test_verify_json(
        self, shipped: tuple[AuditTrail, str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints one object with the verdict and per-chain heads."""
        import orjson

        trail, bucket, prefix = shipped
        assert 0 == verify_bucket_cli(f"s3://{bucket}/{prefix}", [str(trail.signer.verifier)], True)
        verdict = orjson.loads(capsys.readouterr().out)
        assert (True, 350, 4) == (
            verdict["valid"],
            verdict["records"],
            verdict["chains"][0]["segments"],
        )

    def test_verify_invalid_bucket_exits_1(
        self,
        s3_client: Any,
        shipped: tuple[AuditTrail, str, str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A tampered copy exits 1 naming the object, expected and found."""
        trail, bucket, prefix = shipped
        s3_client.delete_object(Bucket=bucket, Key=f"{prefix}/{rel(0, 99)}")
        url = f"s3://{bucket}/{prefix}"
        assert 1 == verify_bucket_cli(url, [str(trail.signer.verifier)], False)
        err = capsys.readouterr().err
        assert f"INVALID object {prefix}/{rel(0, 99)}: hidden by a delete marker" in err
        assert "expected: exactly one version, no delete marker" in err
        assert 1 == verify_bucket_cli(url, [str(trail.signer.verifier)], True)
        assert '"reason":"segment"' in capsys.readouterr().out

    def test_verify_needs_a_key(
        self, shipped: tuple[AuditTrail, str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --key (or with a bad URL) verify is a usage error, exit 2."""
        _, bucket, prefix = shipped
        assert 2 == verify_bucket_cli(f"s3://{bucket}/{prefix}", [], False)
        assert "needs --key" in capsys.readouterr().err
        assert 2 == verify_bucket_cli("file:///tmp/x", ["k+00000000+AA=="], False)

    def test_verify_unreachable_server_exits_2(
        self, trail: AuditTrail, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """S3 that cannot be reached is an I/O error, exit 2."""
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
        assert 2 == verify_bucket_cli("s3://wa-x/p", [str(trail.signer.verifier)], False)
        assert "cannot read s3://wa-x/p" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("s3_env")
class TestVerifyInProcesses:
    """verify_bucket(jobs=2): ranges in processes, the same verdict as one process."""

    @pytest.fixture
    def spread(
        self, tmp_path: Path, s3_client: Any, s3_open_bucket: str, monkeypatch: pytest.MonkeyPatch
    ) -> tuple[AuditTrail, str]:
        """12,000 records in segments of 1,000 (an open bucket, so a test may rewrite one);
        chains this small are split into processes too."""
        monkeypatch.setattr(bucket_module, "MIN_RECORDS_PER_JOB", 1000)
        trail = make_trail(tmp_path / "ledger.db", 12_000)
        sink = sink_for(trail, s3_client, s3_open_bucket, "p", allow_no_lock=True)
        assert 12_000 == Shipper(trail.ledger, sink, batch_size=1000).ship_once().shipped
        return trail, s3_open_bucket

    def verify(self, client: Any, trail: AuditTrail, bucket: str, jobs: int) -> Any:
        return verify_bucket(
            client,
            bucket,
            "p",
            keys=[trail.signer.verifier],
            policy=RetentionPolicy(require_lock=False),
            jobs=jobs,
            client_factory=s3_client_from_env,
        )

    def test_processes_give_the_same_head(
        self, s3_client: Any, spread: tuple[AuditTrail, str]
    ) -> None:
        """Ranges of 4,096 records cut through segments; the head equals the one-process one."""
        trail, bucket = spread
        combined: list[object] = []
        finish = bucket_module._finish_processes

        def spy(*args: Any) -> object:
            combined.append(finish(*args))
            return combined[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bucket_module, "_finish_processes", spy)
            in_processes = self.verify(s3_client, trail, bucket, 2)
        assert [in_processes[0].head] == combined  # the processes' ranges made the head
        assert self.verify(s3_client, trail, bucket, 1) == in_processes

    def test_a_failure_in_a_process_gives_the_one_process_error(
        self, s3_client: Any, spread: tuple[AuditTrail, str]
    ) -> None:
        """A record changed in the second range fails with exactly the one-process error."""
        trail, bucket = spread
        lines = ledger_lines(trail, 5000, 5999)
        lines[123] = lines[123].replace(b'"rows":10', b'"rows":11')
        data = encode_segment(lines)
        s3_client.put_object(
            Bucket=bucket, Key=f"p/{rel(5000, 5999)}", Body=data, ChecksumSHA256=sha256_b64(data)
        )
        errors = []
        for jobs in (1, 2):
            with pytest.raises(VerificationError) as caught:
                self.verify(s3_client, trail, bucket, jobs)
            errors.append((type(caught.value), str(caught.value), caught.value.seq))
        assert errors[0] == errors[1]
        assert 5124 == errors[0][2]  # the link of the next record breaks

    def test_processes_need_a_client_factory(self, s3_client: Any) -> None:
        """jobs > 1 without a client factory is a configuration error."""
        with pytest.raises(ConfigError, match="client_factory"):
            verify_bucket(s3_client, "wa-x", "p", jobs=2)


# -- crashes ----------------------------------------------------------------------------------


def check_complete(client: Any, bucket: str, prefix: str, trail: AuditTrail) -> None:
    """Every record in the bucket once: contiguous ranges, one version each, chain valid."""
    size = trail.ledger.head("default").seq + 1  # type: ignore[union-attr]
    ranges = segment_ranges(client, bucket, prefix)
    assert 0 == ranges[0][0]
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert size - 1 == ranges[-1][1]
    assert {1} == set(versions_per_key(client, bucket, prefix).values())
    [found] = verify_bucket(client, bucket, prefix, keys=[trail.signer.verifier])
    assert (size, verify_chain(trail.ledger, "default").root) == (found.head.size, found.head.root)


@pytest.mark.slow
class TestFaults:
    """Shipping through crashes of the server and of the shipper."""

    def test_server_stopped_and_restarted_mid_run(self, tmp_path: Path) -> None:
        """S3 down for a while during shipping: afterwards every segment is there once."""
        server = S3Server.create(tmp_path / "s3")
        server.start()
        try:
            client = server.client(connect_timeout=1, read_timeout=5, max_attempts=1)
            client.create_bucket(Bucket="wa-fault", ObjectLockEnabledForBucket=True)
            trail = make_trail(tmp_path / "ledger.db", 2000)
            sink = sink_for(trail, client, "wa-fault", "p")
            shipper = Shipper(
                trail.ledger, sink, batch_size=100, backoff=Backoff(initial_s=0.05, max_s=0.3)
            )
            failures = COUNTERS.snapshot().get("ship_failures", 0)
            stop = threading.Event()
            writer_done = threading.Event()

            def write() -> None:
                writer = AuditTrail(trail.config)
                for _ in range(60):
                    writer.record_many([EVENT] * 25)
                    time.sleep(0.03)
                writer_done.set()

            threads = [
                threading.Thread(target=shipper.follow, args=(stop,), kwargs={"poll_s": 0.02}),
                threading.Thread(target=write),
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(segment_ranges(client, "wa-fault", "p")) < 5:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            server.stop()
            time.sleep(1.5)
            server.start()
            assert writer_done.wait(30)
            stop.set()
            for t in threads:
                t.join(30)
            assert shipper.drain(timeout_s=30)
            assert COUNTERS.snapshot()["ship_failures"] > failures  # the outage was seen
            assert 3500 == trail.ledger.head("default").seq + 1  # type: ignore[union-attr]
            check_complete(client, "wa-fault", "p", trail)
        finally:
            server.stop()

    def test_shipper_sigkilled_mid_upload_and_restarted(
        self, tmp_path: Path, s3_server: S3Server, s3_client: Any, s3_bucket: str
    ) -> None:
        """A shipper killed -9 twice while uploading, records added in between: after a
        restart the bucket holds every record once, in contiguous segments."""
        trail = make_trail(tmp_path / "ledger.db", 12_000)
        url = f"s3://{s3_bucket}/killed"
        env = {**os.environ, **s3_server.env()}
        command = [
            sys.executable,
            "-m",
            "testkit.s3",
            "ship",
            str(tmp_path / "ledger.db"),
            url,
            "100",
        ]
        log = (tmp_path / "shipper.log").open("ab")  # the shippers' logs, for a failure
        for kill_at in (15, 60):
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log)
            deadline = time.monotonic() + 60
            while len(segment_ranges(s3_client, s3_bucket, "killed")) < kill_at:
                assert proc.poll() is None, "the shipper ended before it was killed"
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            trail.record_many([EVENT] * 37)  # the re-read batch may end elsewhere
        final = subprocess.run(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, timeout=120, check=False
        )
        log.close()
        assert (0, b"drained\n") == (final.returncode, final.stdout)
        check_complete(s3_client, s3_bucket, "killed", trail)
