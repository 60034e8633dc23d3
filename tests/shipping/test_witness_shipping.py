"""Witness-cosigned checkpoints shipped to S3 beside the segments, and `verify s3://…
--witness W --quorum K` requiring them. A real SeaweedFS with Object Lock, real witnesses on
127.0.0.1 (audit_core.witness), cosignatures obtained by the log's Anchor; no mocks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from audit_core import AuditConfig, AuditTrail
from audit_core import bucket as bucket_module
from audit_core._cosign import Cosigner, WitnessKey, quorum_of
from audit_core._metrics import COUNTERS
from audit_core._note import Signer, open_note, sign_note
from audit_core._segment import cosigned_key, parse_cosigned_key, parse_key, sha256_b64
from audit_core.anchor import Anchor, WitnessEndpoint
from audit_core.bucket import BucketChain, RetentionPolicy, verify_bucket
from audit_core.checkpoint import ledger_checkpoints
from audit_core.cli import main
from audit_core.errors import CheckpointError, QuorumError, RetentionError, SegmentError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.ship import Shipper
from audit_core.sinks import Batch, ExportResult
from audit_core.sinks.s3 import S3SegmentSink
from audit_core.sinks.s3 import s3_client as s3_client_from_env
from audit_core.witness import RunningWitness, TrustedLogs, Witness, WitnessState, start_witness
from testkit import HOST, free_port
from testkit.s3 import S3Server
from tests.core._witnessing import serve_latest

CHAIN = "default"


@dataclass
class Served:
    """A witness serving on 127.0.0.1: its key and state."""

    running: RunningWitness
    cosigner: Cosigner
    state: WitnessState

    @property
    def key(self) -> WitnessKey:
        return self.cosigner.key

    @property
    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.running.url, self.cosigner.key)


@dataclass
class Log:
    """A ledger file with its log key, written through an AuditTrail."""

    path: Path
    signer: Signer
    config: AuditConfig
    trail: AuditTrail

    def write(self, n: int, tag: str = "r") -> None:
        for i in range(n):
            self.trail.record("task.succeeded", {"tag": tag, "i": i})

    def anchor(self, *witnesses: Served) -> Anchor:
        """The log's anchoring (checkpoint + witnesses), ticked by hand."""
        specs = tuple(f"{w.endpoint.url} {w.key}" for w in witnesses)
        return Anchor.from_config(self.config.evolve(witnesses=specs, anchor_interval_s=3600.0))

    def tick(self, *witnesses: Served) -> None:
        anchor = self.anchor(*witnesses)
        try:
            report = anchor.tick()
        finally:
            anchor.stop()
        assert 0 == report.failures


def make_log(tmp_path: Path, name: str, signer: Signer) -> Log:
    path = tmp_path / name
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}",
        actor=("service", "tests"),
        signing_key=str(signer),
        checkpoint_every=0,
        witness_timeout_s=10.0,
    )
    return Log(path, signer, config, AuditTrail(config.evolve(checkpoint_every=0)))


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("log.test")


@pytest.fixture
def log(tmp_path: Path, signer: Signer) -> Iterator[Log]:
    made = make_log(tmp_path, "ledger.db", signer)
    yield made
    made.trail.close()


@pytest.fixture
def witness(tmp_path: Path, signer: Signer) -> Iterator[Callable[[str], Served]]:
    """Start witnesses trusting the log key; all closed at the end."""
    started: list[Served] = []

    def start(name: str) -> Served:
        cosigner = Cosigner.generate(name)
        state = WitnessState.open(tmp_path / f"{name.replace('/', '_')}.db")
        served = Witness(TrustedLogs.parse([str(signer.verifier)]), cosigner, state)
        started.append(Served(start_witness(served), cosigner, state))
        return started[-1]

    yield start
    for s in started:
        s.running.close()
        s.state.close()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS_* variables the CLI's client reads, pointing at the test server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


class OrderedSink(S3SegmentSink):
    """The S3 sink, noting the order of its writes; ``refuse_from`` refuses batches from
    that seq on, as an S3 outage would (FAILURE)."""

    def __init__(self, *args: Any, refuse_from: int | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.refuse_from = refuse_from
        self.written: list[str] = []

    def export(self, batch: Batch) -> ExportResult:
        if self.refuse_from is not None and batch.last >= self.refuse_from:
            return ExportResult.FAILURE
        return super().export(batch)

    def _put_once(self, key: str, data: bytes, content_type: str) -> bool:
        written = super()._put_once(key, data, content_type)
        self.written += [key] if written else []
        return written


def sink(log: Log, client: Any, bucket: str, prefix: str, **kw: Any) -> OrderedSink:
    checkpoint = ledger_checkpoints(log.trail.ledger, log.trail.signer, log.trail.origin)
    return OrderedSink(bucket, prefix, client=client, checkpoint=checkpoint, **kw)


def ship(log: Log, client: Any, bucket: str, prefix: str, **kw: Any) -> OrderedSink:
    """One pass of a fresh shipper (a new process) with batches of 10."""
    made = sink(log, client, bucket, prefix, **kw)
    Shipper(log.trail.ledger, made, batch_size=10).ship_once()
    return made


def cosigned_objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{CHAIN}/cosigned/")
    keys = [o["Key"] for o in listed.get("Contents", ())]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def cosigned_sizes(keys: list[str]) -> list[int]:
    """The sizes of the cosigned checkpoints among written object names, in write order."""
    return [int(k.rsplit("/", 1)[1][:20]) for k in keys if "/cosigned/" in k]


def version_count(client: Any, bucket: str, prefix: str) -> int:
    listed = client.list_object_versions(Bucket=bucket, Prefix=prefix + "/")
    return len(listed.get("Versions", ())) + len(listed.get("DeleteMarkers", ()))


def put_locked(client: Any, bucket: str, key: str, data: bytes) -> None:
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365)
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ChecksumSHA256=sha256_b64(data),
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )


def copy(client: Any, bucket: str, src: str, dst: str, keep: Callable[[str], bool]) -> None:
    """Copy the objects of ``src`` that ``keep`` (relative name) into ``dst``, locked."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=src + "/")
    for item in listed.get("Contents", ()):
        name = item["Key"][len(src) + 1 :]
        if keep(name):
            data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            put_locked(client, bucket, f"{dst}/{name}", data)


def verify_cli(url: str, log: Log, *witnesses: WitnessKey, quorum: int = 1) -> int:
    argv = ["verify", url, "--key", str(log.signer.verifier)]
    for key in witnesses:
        argv += ["--witness", str(key)]
    return main([*argv, "--quorum", str(quorum)])


@pytest.fixture
def witnessed(
    log: Log, witness: Callable[[str], Served], s3_client: Any, s3_bucket: str
) -> tuple[Served, OrderedSink]:
    """30 records, a checkpoint at 30 cosigned by witness w1, shipped to s3_bucket/trail."""
    w1 = witness("witness.test/w1")
    log.write(30)
    log.tick(w1)
    return w1, ship(log, s3_client, s3_bucket, "trail")


# -- shipping --------------------------------------------------------------------------------


def test_cosigned_checkpoint_is_shipped_locked_and_content_addressed(
    log: Log, witnessed: tuple[Served, OrderedSink], s3_client: Any, s3_bucket: str
) -> None:
    """The cosigned checkpoint lands once, locked, named by its size and its bytes' SHA-256."""
    w1, _ = witnessed
    [(key, data)] = cosigned_objects(s3_client, s3_bucket, "trail").items()
    assert cosigned_key("trail", CHAIN, 30, data) == key
    assert (CHAIN, 30, hashlib.sha256(data).hexdigest()[:16]) == parse_cosigned_key("trail", key)
    assert parse_key("trail", key) is None  # the segment listing never mistakes it
    head = s3_client.head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
    assert "COMPLIANCE" == head["ObjectLockMode"]
    year = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=364)
    assert head["ObjectLockRetainUntilDate"] > year
    assert sha256_b64(data) == head["ChecksumSHA256"]
    note = data.decode()
    open_note(note, [log.signer.verifier])  # the log's own signature is there
    valid, missing = quorum_of(note, [w1.key], 1)
    assert ([w1.key.name], []) == ([k.name for k, _ in valid], missing)


def test_a_second_ship_writes_nothing(
    log: Log, witnessed: tuple[Served, OrderedSink], s3_client: Any, s3_bucket: str
) -> None:
    """Shipping again (a new process, then the same one again) adds no object, no version."""
    before = version_count(s3_client, s3_bucket, "trail")
    again = ship(log, s3_client, s3_bucket, "trail")
    assert [] == again.written
    assert before == version_count(s3_client, s3_bucket, "trail")


def test_a_later_cosignature_adds_one_object(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    witness: Callable[[str], Served],
    s3_client: Any,
    s3_bucket: str,
) -> None:
    """A second witness cosigning later gives one more object holding both cosignatures."""
    w1, _ = witnessed
    first = cosigned_objects(s3_client, s3_bucket, "trail")
    w2 = witness("witness.test/w2")
    log.tick(w1, w2)
    ship(log, s3_client, s3_bucket, "trail")
    now = cosigned_objects(s3_client, s3_bucket, "trail")
    assert 2 == len(now)
    assert first.items() <= now.items()  # the first object is untouched
    [(_, newer)] = [(k, v) for k, v in now.items() if k not in first]
    valid, missing = quorum_of(newer.decode(), [w1.key, w2.key], 2)
    assert (2, []) == (len(valid), missing)


def test_a_running_shipper_notices_a_later_cosignature(
    log: Log, witness: Callable[[str], Served], s3_client: Any, s3_bucket: str
) -> None:
    """A long-lived shipper re-reads cosignatures when a new checkpoint appears."""
    w1 = witness("witness.test/w1")
    made = sink(log, s3_client, s3_bucket, "live")
    shipper = Shipper(log.trail.ledger, made, batch_size=10, cosigned_every_s=3600.0)
    log.write(10)
    log.tick(w1)
    assert 1 == shipper.ship_once().cosigned
    assert 0 == shipper.ship_once().cosigned  # nothing new: nothing sent
    log.write(5)
    log.tick(w1)
    report = shipper.ship_once()
    assert (5, 1) == (report.shipped, report.cosigned)
    assert 2 == len(cosigned_objects(s3_client, s3_bucket, "live"))


def test_never_ahead_of_the_segments(
    log: Log, witness: Callable[[str], Served], s3_client: Any, s3_bucket: str
) -> None:
    """A cosigned checkpoint waits until the bucket holds its records, then follows them."""
    w1 = witness("witness.test/w1")
    log.write(20)
    log.tick(w1)
    log.write(10)
    log.tick(w1)
    made = sink(log, s3_client, s3_bucket, "order", refuse_from=20)
    shipper = Shipper(log.trail.ledger, made, batch_size=10, cosigned_every_s=0.0)
    report = shipper.ship_once()
    assert ([CHAIN], 20, 1) == (report.failed, report.shipped, report.cosigned)
    assert [20] == cosigned_sizes(made.written)  # size 30 waits for its records
    made.refuse_from = None
    report = shipper.ship_once()
    assert (10, 1, [20, 30]) == (report.shipped, report.cosigned, cosigned_sizes(made.written))
    segment = made.written.index(f"order/{CHAIN}/{20:020d}-{29:020d}.jsonl.gz")
    [at_30] = [i for i, k in enumerate(made.written) if cosigned_sizes([k]) == [30]]
    assert segment < at_30  # written after the segment holding its last record


def test_s3_down_is_counted_and_retried(
    log: Log, witness: Callable[[str], Served], s3_client: Any, s3_bucket: str
) -> None:
    """S3 unreachable: the cosigned checkpoint fails, is counted, and lands on a later pass."""
    w1 = witness("witness.test/w1")
    log.write(10)
    ship(log, s3_client, s3_bucket, "down")  # the records are in, no checkpoint yet
    log.tick(w1)
    log.write(1)  # recording goes on regardless
    dead = boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{free_port()}",
        aws_access_key_id="x",
        aws_secret_access_key="x",  # noqa: S106 - nothing listens there
        region_name="us-east-1",
        config=Config(connect_timeout=1, retries={"mode": "standard", "max_attempts": 1}),
    )
    failures = COUNTERS.snapshot().get("ship_failures", 0)
    shipper = Shipper(log.trail.ledger, sink(log, dead, s3_bucket, "down"), batch_size=10)
    report = shipper.ship_once()
    assert ([CHAIN], 0) == (report.failed, report.cosigned)
    assert failures + 2 == COUNTERS.snapshot().get("ship_failures", 0)  # the batch, the checkpoint
    assert {} == cosigned_objects(s3_client, s3_bucket, "down")
    report = Shipper(log.trail.ledger, sink(log, s3_client, s3_bucket, "down")).ship_once()
    assert ([], 1, 1) == (report.failed, report.shipped, report.cosigned)
    assert [10] == cosigned_sizes(list(cosigned_objects(s3_client, s3_bucket, "down")))


def test_sinks_without_the_capability_are_left_alone(log: Log) -> None:
    """A sink without export_cosigned gets records only."""

    class Collect:
        name = "collect"

        def __init__(self) -> None:
            self.seqs: list[int] = []

        def export(self, batch: Batch) -> ExportResult:
            self.seqs += [r.seq for r in batch.records]
            return ExportResult.SUCCESS

        def force_flush(self, timeout_s: float = 30.0) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    log.write(3)
    collected = Collect()
    report = Shipper(log.trail.ledger, collected).ship_once()
    assert ([0, 1, 2], 0) == (collected.seqs, report.cosigned)


# -- verification ----------------------------------------------------------------------------


def test_verify_bucket_returns_the_witnessed_checkpoint(
    log: Log, witnessed: tuple[Served, OrderedSink], s3_client: Any, s3_bucket: str
) -> None:
    """verify_bucket(witnesses=…) gives the size, root and cosigner of the witnessed one."""
    w1, _ = witnessed
    [chain] = verify_bucket(
        s3_client, s3_bucket, "trail", keys=[log.signer.verifier], witnesses=[w1.key], quorum=1
    )
    assert isinstance(chain, BucketChain)
    [seen] = chain.witnessed
    assert (30, chain.head.root, [w1.key]) == (
        seen.size,
        seen.root.hex(),
        [k for k, _ in seen.cosigners],
    )
    assert 30 == chain.to_json()["witnessed"]["size"]  # type: ignore[index]
    [plain] = verify_bucket(s3_client, s3_bucket, "trail", keys=[log.signer.verifier])
    assert ((), 30) == (plain.witnessed, plain.head.size)  # without witnesses: as before


@pytest.mark.usefixtures("s3_env")
def test_verify_cli_quorum_1_exits_0_and_shows_the_cosignature(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`verify s3://… --witness W --quorum 1` exits 0 naming the witnessed size and time."""
    w1, _ = witnessed
    assert 0 == verify_cli(f"s3://{s3_bucket}/trail", log, w1.key)
    out = capsys.readouterr().out
    assert "size 30" in out
    assert f"{w1.key.name} at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d}" in out


@pytest.mark.usefixtures("s3_env")
def test_a_bucket_without_cosigned_objects(
    log: Log, s3_client: Any, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket shipped before witnesses verifies as before; with --witness it is unwitnessed."""
    log.write(12)
    ship(log, s3_client, s3_bucket, "old")
    url = f"s3://{s3_bucket}/old"
    assert 0 == main(["verify", url, "--key", str(log.signer.verifier)])
    capsys.readouterr()
    assert 1 == verify_cli(url, log, Cosigner.generate("witness.test/w1").key)
    assert "no checkpoint is cosigned by 1" in capsys.readouterr().err


@pytest.mark.usefixtures("s3_env")
def test_verify_cli_quorum_2_names_the_missing_witness(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Quorum 2 with only w1's cosignatures exits 1 naming w2 as missing."""
    w1, _ = witnessed
    w2 = Cosigner.generate("witness.test/w2").key
    assert 1 == verify_cli(f"s3://{s3_bucket}/trail", log, w1.key, w2, quorum=2)
    err = capsys.readouterr().err
    assert w2.describe() in err


@pytest.mark.usefixtures("s3_env")
def test_a_truncated_bucket_fails_at_the_witnessed_size(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    s3_client: Any,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Segments cut to 20 records beside a checkpoint cosigned at 30: exit 1, size and root."""
    w1, _ = witnessed
    keep = {
        "00000000000000000000-00000000000000000009",
        "00000000000000000010-00000000000000000019",
    }
    copy(s3_client, s3_bucket, "trail", "cut", lambda n: "cosigned/" in n or n[8:49] in keep)
    [seen] = (
        verify_bucket(s3_client, s3_bucket, "trail", keys=[log.signer.verifier], witnesses=[w1.key])
        .pop()
        .witnessed
    )
    assert 1 == verify_cli(f"s3://{s3_bucket}/cut", log, w1.key)
    err = capsys.readouterr().err
    assert "holds 20 records" in err
    assert f"size 30 (root {seen.root.hex()})" in err


@pytest.mark.usefixtures("s3_env")
def test_a_rewritten_chain_re_signed_with_the_log_key_fails(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    tmp_path: Path,
    signer: Signer,
    s3_client: Any,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Other records signed by the same log key, beside the cosigned checkpoint: exit 1."""
    w1, _ = witnessed
    forged = make_log(tmp_path, "forged.db", signer)
    try:
        forged.write(30, tag="forged")
        ship(forged, s3_client, s3_bucket, "forged")
    finally:
        forged.trail.close()
    copy(s3_client, s3_bucket, "trail", "forged", lambda n: "cosigned/" in n)
    assert 0 == main(["verify", f"s3://{s3_bucket}/forged", "--key", str(signer.verifier)])
    capsys.readouterr()
    assert 1 == verify_cli(f"s3://{s3_bucket}/forged", log, w1.key)
    err = capsys.readouterr().err
    [(_, data)] = cosigned_objects(s3_client, s3_bucket, "trail").items()
    root = data.decode().split("\n")[2]
    assert "witnesses (" in err
    assert f"size 30 with root {base64.b64decode(root).hex()}" in err


def test_a_cosigned_object_not_signed_by_the_log_fails(
    log: Log, witnessed: tuple[Served, OrderedSink], s3_client: Any, s3_bucket: str
) -> None:
    """A cosigned object the log key did not sign is refused, named."""
    w1, _ = witnessed
    other = Signer.generate("log.test")
    copy(s3_client, s3_bucket, "trail", "stranger", lambda n: "cosigned/" not in n)
    [(_, data)] = cosigned_objects(s3_client, s3_bucket, "trail").items()
    note = data.decode()
    body, rest = note.split("\n\n", 1)
    lines = rest.splitlines()
    forged = sign_note(body + "\n", [other]) + "".join(f"{x}\n" for x in lines[1:])
    raw = forged.encode()
    put_locked(s3_client, s3_bucket, cosigned_key("stranger", CHAIN, 30, raw), raw)
    with pytest.raises(CheckpointError, match=r"cosigned object .* is not a checkpoint signed by"):
        verify_bucket(
            s3_client, s3_bucket, "stranger", keys=[log.signer.verifier], witnesses=[w1.key]
        )


def test_a_deleted_cosigned_object_is_named(
    log: Log, witnessed: tuple[Served, OrderedSink], s3_client: Any, s3_bucket: str
) -> None:
    """Deleting a cosigned object leaves a delete marker that verification names."""
    [key] = cosigned_objects(s3_client, s3_bucket, "trail")
    s3_client.delete_object(Bucket=s3_bucket, Key=key)
    with pytest.raises(SegmentError, match=f"object {key}: hidden by a delete marker"):
        verify_bucket(s3_client, s3_bucket, "trail", keys=[log.signer.verifier])


def test_an_unlocked_cosigned_object_fails_the_lock_policy(
    log: Log, witnessed: tuple[Served, OrderedSink], s3_client: Any, s3_bucket: str
) -> None:
    """A cosigned object without Object Lock fails as a segment would."""
    w1, _ = witnessed
    copy(s3_client, s3_bucket, "trail", "loose", lambda n: "cosigned/" not in n)
    [(key, data)] = cosigned_objects(s3_client, s3_bucket, "trail").items()
    loose = "loose/" + key.split("/", 1)[1]
    s3_client.put_object(Bucket=s3_bucket, Key=loose, Body=data, ChecksumSHA256=sha256_b64(data))
    with pytest.raises(RetentionError, match="has no Object Lock retention"):
        verify_bucket(s3_client, s3_bucket, "loose", keys=[log.signer.verifier], witnesses=[w1.key])
    [ok] = verify_bucket(s3_client, s3_bucket, "loose", keys=[log.signer.verifier])
    assert 30 == ok.head.size  # without --witness the cosigned objects are not read


@pytest.mark.usefixtures("s3_env")
def test_processes_give_the_same_verdict(
    log: Log,
    witness: Callable[[str], Served],
    s3_client: Any,
    s3_open_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jobs=2 gives the witnessed checkpoints and the errors one process gives."""
    monkeypatch.setattr(bucket_module, "MIN_RECORDS_PER_JOB", 10)
    w1 = witness("witness.test/w1")
    log.write(25)
    log.tick(w1)
    log.write(12)
    log.tick(w1)
    ship(log, s3_client, s3_open_bucket, "p", allow_no_lock=True)

    def run(prefix: str, jobs: int) -> Any:
        return verify_bucket(
            s3_client,
            s3_open_bucket,
            prefix,
            keys=[log.signer.verifier],
            policy=RetentionPolicy(require_lock=False),
            witnesses=[w1.key],
            jobs=jobs,
            client_factory=s3_client_from_env,
        )

    combined: list[object] = []
    finish = bucket_module._finish_processes

    def spy(*args: Any) -> object:
        combined.append(finish(*args))
        return combined[-1]

    one = run("p", 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bucket_module, "_finish_processes", spy)
        two = run("p", 2)
    assert [25, 37] == [w.size for w in one[0].witnessed]
    assert one == two
    # the processes made the head (their claims: 4 segment checkpoints, 2 cosigned sizes)
    assert [replace(two[0].head, witnessed=(), checkpoints=6)] == combined
    # another chain signed by the same key, beside the cosigned objects: both fail alike
    forged = make_log(log.path.parent, "other.db", log.signer)
    try:
        forged.write(37, tag="x")
        ship(forged, s3_client, s3_open_bucket, "q", allow_no_lock=True)
    finally:
        forged.trail.close()
    listed = s3_client.list_objects_v2(Bucket=s3_open_bucket, Prefix="p/default/cosigned/")
    for item in listed["Contents"]:
        data = s3_client.get_object(Bucket=s3_open_bucket, Key=item["Key"])["Body"].read()
        s3_client.put_object(
            Bucket=s3_open_bucket,
            Key="q/" + item["Key"][2:],
            Body=data,
            ChecksumSHA256=sha256_b64(data),
        )
    errors = []
    for jobs in (1, 2):
        with pytest.raises(QuorumError) as caught:
            run("q", jobs)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "cosigned size 25" in errors[0]


# -- review round 2 ------------------------------------------------------------------------


@pytest.mark.usefixtures("s3_env")
def test_a_chain_left_with_only_cosigned_objects_is_invalid(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    s3_client: Any,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every segment of a witnessed chain gone, its cosigned objects left: verify s3://
    --witness (every chain) exits 1 naming the chain; without witnesses nothing to see."""
    w1, _ = witnessed
    copy(s3_client, s3_bucket, "trail", "gone", lambda n: "cosigned/" in n)
    capsys.readouterr()
    assert 1 == verify_cli(f"s3://{s3_bucket}/gone", log, w1.key)
    assert "no segments of chain 'default'" in capsys.readouterr().err


@pytest.mark.usefixtures("s3_env")
def test_bucket_with_an_unreachable_online_witness_warns(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verify s3:// --witness "URL KEY" with the witness down: exit 0 and a warning."""
    w1, _ = witnessed
    down = f"http://127.0.0.1:{free_port()} {w1.key}"
    argv = ["verify", f"s3://{s3_bucket}/trail", "--key", str(log.signer.verifier)]
    capsys.readouterr()
    assert 0 == main([*argv, "--witness", down, "--quorum", "1"])
    assert "not reached: only the stored cosignatures were checked" in capsys.readouterr().err


@pytest.mark.usefixtures("s3_env")
def test_bucket_asks_the_witness_online(
    log: Log,
    witnessed: tuple[Served, OrderedSink],
    s3_client: Any,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Segments cut to 20 and the cosigned objects gone: the witness's own answer (its
    latest checkpoint, size 30) makes verify s3:// --witness "URL KEY" exit 1."""
    w1, _ = witnessed
    ledger = SqliteLedger(log.path, read_only=True, create=False)
    stored = ledger.latest_checkpoint(CHAIN)
    rows = ledger.cosignatures(CHAIN)
    ledger.close()
    assert stored is not None
    note = stored.note + "".join(f"{r.line}\n" for r in rows if r.size == stored.size)
    origin = note.split("\n", 1)[0]
    keep = {
        "00000000000000000000-00000000000000000009",
        "00000000000000000010-00000000000000000019",
    }
    copy(s3_client, s3_bucket, "trail", "hidden", lambda n: n[8:49] in keep)
    argv = ["verify", f"s3://{s3_bucket}/hidden", "--key", str(log.signer.verifier)]
    with serve_latest({origin: note}) as url:
        capsys.readouterr()
        assert 1 == main([*argv, "--witness", f"{url} {w1.key}", "--quorum", "1"])
    assert "size 30" in capsys.readouterr().err
