"""Erasure after shipping (issue 17, "Must hold"): one scenario, module-scoped, then checks.

Two data subjects, alice and bob, are recorded on a SQLite ledger under the default privacy
policy: run starts (triggering user, a free-text conf, the user as actor) and batches of model
predictions about them, some of them through the adapter kit's spool while another connection
holds the ledger's write lock. Everything is shipped to SeaweedFS with COMPLIANCE Object Lock
(testkit/s3.py) and to an OTLP receiver (testkit/otlp.py, behind a pass-through tap that keeps
every request's raw bytes), and an evidence pack is made. Then ``privacy erase alice``: every
chain, segment and the old pack still verify, byte for byte, and none of alice's values is in
any byte of the ledger, the spool, the bucket, the OTLP copy, the pack, the store or the keys.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import io
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.privacy.store import PrivacyStore
from testkit import HOST
from testkit.otlp import OtlpReceiver
from testkit.s3 import S3Server
from tests.core._cli import Run
from tests.core._spooling import MiniAdapter

PREFIX = "audit/eu"
WHO = ("alice", "bob")
EMAIL = {"alice": "a.liddell@wonderland.example", "bob": "bob.b@builders.example"}
NOTE = {
    "alice": "free text about alice: prefers the blue plan, call after 6pm",
    "bob": "free text about bob: asked for an invoice in May",
}
CUSTOMERS = {"alice": ["CUST-4471-XQ", "CUST-4472-XQ"], "bob": ["CUST-8810-ZK", "CUST-8811-ZK"]}
# What must be nowhere after the erasure: her name (either case), every value recorded about her.
ALICE_NEEDLES = (
    b"alice",
    b"Alice",
    EMAIL["alice"].encode(),
    b"prefers the blue plan",
    *(c.encode() for c in CUSTOMERS["alice"]),
)
DIRECT_RUNS = 16  # dagrun.started + task.succeeded each, alternating alice and bob
SPOOLED_RUNS = 12
MODEL_BATCHES = 2  # per subject
DEFAULT_RECORDS = 2 * DIRECT_RUNS + SPOOLED_RUNS + 2 * MODEL_BATCHES


# -- the OTLP tap: every request's raw bytes, forwarded to the real receiver ----------------


class _Tap:
    """An HTTP pass-through on 127.0.0.1 that keeps each request (headers, raw body) and
    answers with what the receiver behind it answered: the bytes as they went on the wire."""

    def __init__(self, forward_to: str) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        lock = threading.Lock()
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with lock:
                    requests.append((headers, body))
                passed = {k: v for k, v in headers.items() if k.startswith("content-")}
                forward = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
                    forward_to + self.path, data=body, headers=passed, method="POST"
                )
                try:
                    with urllib.request.urlopen(forward) as answer:  # noqa: S310
                        status, reply = answer.status, answer.read()
                except urllib.error.HTTPError as exc:
                    status, reply = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- bytes and where they are -------------------------------------------------------------


def _inflate(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


_PDF_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.DOTALL)


def _pdf_streams(pdf: bytes) -> list[bytes]:
    """Every stream of a PDF, inflated where it is Flate-compressed (text, attachments)."""
    out = []
    for raw in _PDF_STREAM.findall(pdf):
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            out.append(raw)
    return out


def _expand(name: str, body: bytes) -> dict[str, bytes]:
    """``body`` and every decoded form of it: a gzip member inflated, a zip's members (each
    expanded in turn), a PDF's streams."""
    out = {name: body}
    if body[:2] == b"\x1f\x8b":
        out.update(_expand(f"{name}|gunzip", gzip.decompress(body)))
    elif body[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            for member in zf.namelist():
                out.update(_expand(f"{name}!{member}", zf.read(member)))
    elif body[:5] == b"%PDF-":
        for i, stream in enumerate(_pdf_streams(body)):
            out[f"{name}#stream{i}"] = stream
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root``, by its path relative to it."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _found(places: Mapping[str, bytes], needles: tuple[bytes, ...]) -> list[str]:
    """``place: needle`` for each needle found in the expanded bytes of each place."""
    hits = []
    for name, body in places.items():
        for where, data in _expand(name, body).items():
            hits += [f"{where}: {needle!r}" for needle in needles if needle in data]
    return hits


def _bucket_objects(client: Any, bucket: str) -> dict[tuple[str, str], tuple[str, bytes]]:
    """Every version of every object: (key, version id) -> (ETag, body)."""
    out = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            got = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            out[(v["Key"], v["VersionId"])] = (v["ETag"], got["Body"].read())
    return out


def _bodies(ledger: Path, chain: str) -> list[bytes]:
    """The chain's records as stored (their canonical bytes), in seq order."""
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM records WHERE chain = ? ORDER BY seq", (chain,))
        return [bytes(body) for (body,) in rows]
    finally:
        conn.close()


def _records(ledger: Path, chain: str) -> list[dict[str, Any]]:
    return [orjson.loads(body) for body in _bodies(ledger, chain)]


@contextmanager
def _write_locked(ledger: Path) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` on the ledger from another connection: a writer stuck mid-transaction."""
    conn = sqlite3.connect(ledger, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# -- the scenario -----------------------------------------------------------------------


@dataclass
class World:
    """What the scenario did and saw, for the tests to assert on."""

    root: Path
    ledger: Path
    url: str
    key: Path
    bucket: str
    pack: Path
    runs: dict[str, Run] = field(default_factory=dict)
    objects_before: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    objects_after: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    spool_snapshot: dict[str, bytes] = field(default_factory=dict)
    spooled: int = 0
    spool_logs: list[str] = field(default_factory=list)
    otlp_raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    otlp_logs: list[Any] = field(default_factory=list)
    otlp_keys: set[tuple[object, object]] = field(default_factory=set)
    alice_key: bytes = b""
    alice_sealed: list[bytes] = field(default_factory=list)
    alice_pseudonym: str = ""
    bodies_before: dict[str, list[bytes]] = field(default_factory=dict)
    records_shipped: dict[str, int] = field(default_factory=dict)
    privacy_files_before: dict[str, bytes] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.ledger.with_name(self.ledger.name + ".privacy.db")

    @property
    def keys(self) -> Path:
        return self.ledger.with_name(self.ledger.name + ".privacy-keys.db")


def _cli_runner(env: dict[str, str], runs: dict[str, Run]) -> Callable[..., Run]:
    def run(name: str, *args: str | Path) -> Run:
        done = subprocess.run(
            [sys.executable, "-m", "audit_core.cli", *(str(a) for a in args)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=env,
        )
        runs[name] = Run(done.returncode, done.stdout, done.stderr)
        return runs[name]

    return run


def _run_data(who: str) -> dict[str, object]:
    return {
        "triggering_user": who,
        "conf": {"email": EMAIL[who], "note": NOTE[who], "segment": "emea"},
    }


def _record_directly(config: AuditConfig) -> None:
    with AuditTrail(config) as trail:
        for i in range(DIRECT_RUNS):
            who = WHO[i % 2]
            subject = {"dag_id": "churn_scoring", "run_id": f"manual__{i:03d}"}
            trail.record("dagrun.started", _run_data(who), subject=subject, actor=("user", who))
            trail.record("task.succeeded", {"rows": i}, subject={**subject, "task_id": "score"})
        for who in WHO:
            for batch in range(MODEL_BATCHES):
                rows = [{"customer_id": c, "tenure": 3 + n} for n, c in enumerate(CUSTOMERS[who])]
                scores = [{"p": 0.25 + batch / 10 + n / 100} for n in range(len(rows))]
                trail.model_invoked(
                    "churn", 1, inputs=rows, outputs=scores, batch=True, data_subject=who
                )


def _just(event: Event) -> Callable[[], list[Event]]:
    return lambda: [event]


class _Lines(logging.Handler):
    """Keeps the messages of the ``workflow_audit`` logger while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _logged() -> Iterator[list[str]]:
    handler, logger = _Lines(), logging.getLogger("workflow_audit")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def _record_through_the_spool(config: AuditConfig, ledger: Path) -> int:
    """Run starts through the adapter kit while the ledger's write lock is held: they go to
    the spool (shaped first). The adapter's own recovery is kept away (its probe waits an
    hour) so that ``workflow-audit spool drain`` appends them; returns how many spooled."""
    adapter = MiniAdapter(config, budget_s=2.0)
    adapter.runner.PROBE_MIN_S = adapter.runner.PROBE_MAX_S = 3600.0
    landed = []
    with _write_locked(ledger):
        for i in range(SPOOLED_RUNS):
            who = WHO[i % 2]
            subject = {"dag_id": "churn_scoring", "run_id": f"scheduled__{i:03d}"}
            event = Event(
                type="dagrun.started", data=_run_data(who), subject=subject, actor=("user", who)
            )
            landed.append(adapter.submit("dagrun.started", _just(event)))
    assert adapter.runner.breaker_open
    assert adapter.runner.spill is not None
    adapter.runner.spill.close()  # as at the adapter process's exit: the files are released
    adapter.trail.close()
    return landed.count(False)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, s3_client: Any
) -> Iterator[World]:
    """The whole scenario (module docstring), run once."""
    root = tmp_path_factory.mktemp("privacy")
    ledger = root / "ledger.db"
    url = f"sqlite:///{ledger}"
    bucket = f"wa-privacy-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    w = World(root, ledger, url, root / "ledger.db.key.pub", bucket, root / "pack.zip")
    env = {
        **os.environ,
        **s3_server.env(),
        "WORKFLOW_AUDIT_PRIVACY_POLICY": "default",
        "WORKFLOW_AUDIT_LEDGER": url,
    }
    cli = _cli_runner(env, w.runs)
    receiver = OtlpReceiver().start()
    tap = _Tap(receiver.endpoint)
    try:
        config = AuditConfig(
            ledger_url=url,
            privacy_policy="default",
            actor=("service", "scorer"),
            busy_timeout_s=0.1,
        )
        _record_directly(config)
        with _logged() as w.spool_logs:
            w.spooled = _record_through_the_spool(config, ledger)
        w.spool_snapshot = _files(root / "ledger.db.spool")
        assert 0 == cli("drain", "spool", "drain", "--ledger", url).code, w.runs["drain"].err
        # shipped and packed before the erasure
        s3 = f"s3://{bucket}/{PREFIX}"
        assert 0 == cli("ship-s3", "ship", "--sink", "s3", "--s3", s3).code, w.runs["ship-s3"].err
        otlp = ("ship", "--sink", "otlp", "--endpoint", tap.endpoint)
        assert 0 == cli("ship-otlp", *otlp).code, w.runs["ship-otlp"].err
        since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        cli("evidence", "evidence", "--since", since, "--sample", "10", "--s3", s3, "-o", w.pack)
        w.objects_before = _bucket_objects(s3_client, bucket)
        w.bodies_before = {c: _bodies(ledger, c) for c in ("default", "audit")}
        store = PrivacyStore(f"sqlite:///{w.store}", read_only=True)
        try:
            pseudonym = store.pseudonym("alice")
            assert pseudonym is not None
            w.alice_pseudonym = pseudonym
            w.alice_sealed = [o.sealed for o in store.openings(pseudonym) if o.sealed]
        finally:
            store.close()
        conn = sqlite3.connect(f"file:{w.keys}?mode=ro", uri=True)
        try:
            (w.alice_key,) = conn.execute(
                "SELECT key FROM keys WHERE pseudonym = ?", (w.alice_pseudonym,)
            ).fetchone()
        finally:
            conn.close()
        w.privacy_files_before = {
            n: b for n, b in _files(root).items() if n.startswith("ledger.db.privacy")
        }
        # the erasure, then everything checked and shipped again
        cli("erase", "privacy", "erase", "alice", "--reason", "ticket 1")
        cli("verify", "verify", "--ledger", url, "--key", w.key)
        cli("ship-s3-after", "ship", "--sink", "s3", "--s3", s3)
        cli("ship-otlp-after", *otlp)
        w.records_shipped = {c: len(_records(ledger, c)) for c in ("default", "audit")}
        cli("verify-s3", "verify", s3, "--key", w.key)
        cli("verify-pack", "verify-evidence", w.pack, "--key", w.key)
        cli("verify-pack-ledger", "verify-evidence", w.pack, "--key", w.key, "--ledger", url)
        cli("privacy-verify", "privacy", "verify", "--json")
        w.objects_after = _bucket_objects(s3_client, bucket)
        w.otlp_raw = list(tap.requests)
        w.otlp_logs = receiver.logs
        w.otlp_keys = receiver.keys()
        yield w
    finally:
        tap.stop()
        receiver.stop()


# -- the tests ----------------------------------------------------------------------------


def _default_records(w: World) -> list[dict[str, Any]]:
    return _records(w.ledger, "default")


def test_spooled_records_were_spooled_then_drained(world: World) -> None:
    """Every run start recorded while the ledger was locked went to the spool, as commitments,
    and ``spool drain`` appended each of them once."""
    assert SPOOLED_RUNS == world.spooled
    assert any(b"$commit" in body for body in world.spool_snapshot.values())
    records = _default_records(world)
    assert DEFAULT_RECORDS == len(records)
    assert SPOOLED_RUNS == sum(1 for r in records if "_spool" in r["data"])


def test_erase_exits_0_and_appends_privacy_erased(world: World) -> None:
    """``privacy erase alice`` exits 0 and appends one privacy.erased record naming the
    pseudonym, never the identifier."""
    run = world.runs["erase"]
    assert 0 == run.code, run.err
    assert world.alice_pseudonym in run.out
    erased = [r for r in _records(world.ledger, "audit") if r["event"] == "privacy.erased"]
    [record] = erased
    assert world.alice_pseudonym == record["data"]["pseudonym"]
    assert "ticket 1" == record["data"]["reason"]
    assert record["data"]["records"] > 0


def test_ledger_verifies_after_erasure(world: World) -> None:
    """``verify --ledger --key`` exits 0 after the erasure, and every record stored before it
    is still there, byte for byte."""
    run = world.runs["verify"]
    assert 0 == run.code, run.err + run.out
    for chain, before in world.bodies_before.items():
        assert before == _bodies(world.ledger, chain)[: len(before)], chain
    assert DEFAULT_RECORDS == len(world.bodies_before["default"])


def test_bucket_verifies_and_keeps_every_earlier_object(world: World) -> None:
    """The bucket alone verifies after the erasure, and every object written before it is
    still there, one version, same ETag and bytes."""
    run = world.runs["verify-s3"]
    assert 0 == run.code, run.err + run.out
    assert world.objects_before
    for key_version, (etag, body) in world.objects_before.items():
        assert (etag, body) == world.objects_after[key_version], key_version
    keys_after = [key for key, _ in world.objects_after]
    assert len(set(keys_after)) == len(keys_after), "an object got a second version"


def test_erasure_record_ships_in_a_new_segment(world: World) -> None:
    """Shipping after the erasure adds segments (privacy.erased among them) and rewrites
    none; the OTLP receiver gets the new records too."""
    assert 0 == world.runs["ship-s3-after"].code, world.runs["ship-s3-after"].err
    assert 0 == world.runs["ship-otlp-after"].code, world.runs["ship-otlp-after"].err
    new = {k: v for k, v in world.objects_after.items() if k not in world.objects_before}
    segments = [gzip.decompress(body) for (key, _), (_, body) in new.items() if key.endswith("gz")]
    assert any(b'"event":"privacy.erased"' in s for s in segments)
    assert "privacy.erased" in {log.event_name for log in world.otlp_logs}
    every = {(c, seq) for c, size in world.records_shipped.items() for seq in range(size)}
    assert every == {(c, int(str(seq))) for c, seq in world.otlp_keys}


def test_evidence_pack_from_before_still_verifies(world: World) -> None:
    """The pack made before the erasure verifies offline and against the ledger after it."""
    assert 0 == world.runs["evidence"].code, world.runs["evidence"].err
    for name in ("verify-pack", "verify-pack-ledger"):
        run = world.runs[name]
        assert 0 == run.code, f"{name}: {run.err}{run.out}"


def _places(w: World) -> dict[str, dict[str, bytes]]:
    """Every copy of the data, by kind: the bytes to grep (expanded by ``_found``)."""
    disk = _files(w.root)
    return {
        "ledger": {n: b for n, b in disk.items() if n in ("ledger.db", "ledger.db-wal")},
        "spool": {
            **{f"before-drain/{n}": b for n, b in w.spool_snapshot.items()},
            **{n: b for n, b in disk.items() if n.startswith("ledger.db.spool")},
        },
        "s3": {f"{k}@{v}": body for (k, v), (_, body) in w.objects_after.items()},
        "otlp-raw": {
            f"request{i}": _inflate(body, headers.get("content-encoding", ""))
            for i, (headers, body) in enumerate(w.otlp_raw)
        }
        | {f"wire{i}": body for i, (_, body) in enumerate(w.otlp_raw)},
        "otlp-decoded": {
            f"log{i}": repr((log.body, log.attributes, log.resource)).encode()
            for i, log in enumerate(w.otlp_logs)
        },
        "evidence": {"pack.zip": w.pack.read_bytes()},
        "store": {n: b for n, b in disk.items() if n.startswith("ledger.db.privacy.db")},
        "keys": {n: b for n, b in disk.items() if n.startswith("ledger.db.privacy-keys.db")},
        "every-file": disk,
        "cli-output": {name: (run.out + run.err).encode() for name, run in w.runs.items()},
    }


# What each place must show, so that an empty or undecoded place cannot pass.
_PRESENT = {
    "ledger": b"dagrun.started",
    "spool": b"$commit",  # a spool line holds the record as a JSON string
    "s3": b'"$commit"',
    "otlp-raw": b"$commit",
    "otlp-decoded": b"$commit",
    "evidence": b"report.json",
    "store": b"SQLite format 3",
    "keys": b"SQLite format 3",
    "every-file": b"dagrun.started",
    "cli-output": b"erased",
}


@pytest.mark.parametrize("place", list(_PRESENT))
def test_no_byte_of_alice_remains(world: World, place: str) -> None:
    """None of alice's values (her name in either case, email, free-text note, the customer
    ids of her model batches) is in any byte of this copy, decoded every way it is stored."""
    assert 0 == world.runs["erase"].code, world.runs["erase"].err
    places = _places(world)[place]
    assert places, f"nothing to look at in {place}"
    expanded = [data for n, b in places.items() for data in _expand(n, b).values()]
    assert any(_PRESENT[place] in data for data in expanded), f"{place} not decoded"
    assert [] == _found(places, ALICE_NEEDLES)


def test_alice_key_and_sealed_openings_are_gone(world: World) -> None:
    """The bytes of alice's key and of her sealed openings are in neither the store nor the
    key store (file and write-ahead log), while they were there before."""
    assert 32 == len(world.alice_key)
    assert world.alice_sealed
    gone = (world.alice_key, *world.alice_sealed)
    before = _found(world.privacy_files_before, (b"alice", *gone))
    assert len(gone) + 1 == len({hit.rsplit(": ", 1)[1] for hit in before})
    places = _places(world)
    assert [] == _found(places["keys"] | places["store"], (world.alice_key, *world.alice_sealed))


def _open(w: World, seq: int) -> list[dict[str, Any]]:
    run = subprocess.run(
        [sys.executable, "-m", "audit_core.cli", "privacy", "open", "--ledger", w.url,
         "--chain", "default", "--seq", str(seq), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "WORKFLOW_AUDIT_PRIVACY_POLICY": "default"},
    )  # fmt: skip
    assert 0 == run.returncode, run.stderr
    opened: list[dict[str, Any]] = orjson.loads(run.stdout)
    return opened


def test_bob_still_opens_and_alice_does_not(world: World) -> None:
    """After alice's erasure, bob's run start opens (his email among the values, status ok);
    alice's fields are all unavailable."""
    records = _default_records(world)
    runs = [(seq, r) for seq, r in enumerate(records) if r["event"] == "dagrun.started"]
    bob = next(seq for seq, r in runs if r["subject"]["run_id"] == "manual__001")
    alice = next(seq for seq, r in runs if r["subject"]["run_id"] == "manual__000")
    opened = _open(world, bob)
    assert {"ok"} == {o["status"] for o in opened}
    values = {o["pointer"]: o["value"] for o in opened}
    assert EMAIL["bob"] == values["/data/conf/email"]
    assert "bob" == values["/actor/id"] == values["/data/triggering_user"]
    assert {"unavailable"} == {o["status"] for o in _open(world, alice)}


def test_privacy_verify_counts_erased_as_unavailable(world: World) -> None:
    """``privacy verify`` after the erasure: 0 mismatched, some unavailable (alice), the rest
    ok (bob and the others)."""
    run = world.runs["privacy-verify"]
    assert 0 == run.code, run.err
    counts = orjson.loads(run.out)["counts"]
    assert (0, 0) == (counts["mismatch"], counts["malformed"])
    assert counts["unavailable"] > 0
    assert counts["ok"] > 0


def test_same_value_twice_gives_different_commitments(world: World) -> None:
    """Alice's email in two run starts: two different nonces and two different commitments."""
    commits = [
        r["data"]["conf"]["email"]["$commit"]
        for r in _default_records(world)
        if r["event"] == "dagrun.started"
        and r["subject"]["run_id"] in ("manual__000", "manual__002")
    ]
    assert 2 == len(commits)
    assert commits[0]["n"] != commits[1]["n"]
    assert commits[0]["c"] != commits[1]["c"]


def test_erasure_counts_the_records_on_the_chain(world: World) -> None:
    """privacy.erased says how many records held alice's values: exactly those on the chain
    (her run starts, direct and spooled, and her model batches)."""
    erased = next(r for r in _records(world.ledger, "audit") if r["event"] == "privacy.erased")
    assert DIRECT_RUNS // 2 + SPOOLED_RUNS // 2 + MODEL_BATCHES == erased["data"]["records"]


def test_spooling_with_a_policy_waits_for_the_lock_at_most_once(world: World) -> None:
    """With the breaker open, spooled records do not each wait for the locked ledger to
    announce the policy: at most one such attempt for the whole outage."""
    waits = [line for line in world.spool_logs if "privacy policy record waits" in line]
    assert len(waits) <= 1, f"{len(waits)} announcement attempts, each a lock wait"
