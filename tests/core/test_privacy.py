"""Privacy end to end in the core (issue 17): a real ledger, store, key file, spool and evidence
packs; erase one subject and check that every proof still verifies byte for byte and that the
erased values are in none of the files."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.cli import main
from audit_core.errors import AuditError, PrivacyError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.privacy.erase import erase_subject, finish_pending
from audit_core.spool import TrailSpool
from audit_core.verify import verify_ledger

#: The data subject erased, and values only they had (each unique in the test's files).
SUBJECT = "victim-q7Zx"
EMAIL = "victim-q7Zx@mail.example"
CONF_SECRET = "conf-secret-Lm4w"  # noqa: S105 - a value to grep for
FEATURE = "feature-9Kp2v"
SPOOLED = "spooled-secret-Hj8"
BYSTANDER = "bystander-R2dq"
SECRETS = (SUBJECT, EMAIL, CONF_SECRET, FEATURE, SPOOLED)
SINCE = "2000-01-01T00:00:00Z"


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``workflow-audit ARGS`` in a subprocess of this venv (exit codes, stderr as a user sees
    them)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_AUDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "audit_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base, **(env or {})},
    )


def bodies(path: Path) -> dict[tuple[str, int], bytes]:
    """Every record's stored bytes, by (chain, seq)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT chain, seq, body FROM records")
        return {(chain, seq): bytes(body) for chain, seq, body in rows}
    finally:
        conn.close()


def records(path: Path, chain: str) -> list[dict[str, Any]]:
    """The chain's records, parsed, in seq order."""
    got = bodies(path)
    return [orjson.loads(got[k]) for k in sorted(k for k in got if k[0] == chain)]


def file_bytes(*paths: Path) -> bytes:
    """The bytes of files (and their -wal/-shm/-journal companions), whichever exist."""
    out = b""
    for path in paths:
        for p in [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]:
            if p.is_file():
                out += p.read_bytes()
    return out


def tree_bytes(root: Path) -> bytes:
    """Every file under ``root``, concatenated (zip entries decompressed)."""
    out = b""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out += pack_bytes(p) if p.suffix == ".zip" else p.read_bytes()
    return out


def pack_bytes(pack: Path) -> bytes:
    """An evidence pack's raw bytes plus every entry decompressed (a grep of a zip alone would
    miss a deflated value)."""
    out = pack.read_bytes()
    with zipfile.ZipFile(pack) as zf:
        for name in zf.namelist():
            out += name.encode() + zf.read(name)
    return out


@dataclass(frozen=True)
class World:
    """One ledger before and after erasing SUBJECT."""

    root: Path
    ledger: Path
    url: str
    before: dict[tuple[str, int], bytes]
    store_before: bytes
    spool_seen: bytes
    pack_before: Path
    pack_after: Path
    proof_before: Path
    proof_text: str
    notes: tuple[str, str]
    erase: subprocess.CompletedProcess[str]

    @property
    def pub(self) -> Path:
        return self.ledger.with_name(self.ledger.name + ".key.pub")

    @property
    def store(self) -> Path:
        return self.ledger.with_name(self.ledger.name + ".privacy.db")

    @property
    def keys(self) -> Path:
        return self.ledger.with_name(self.ledger.name + ".privacy-keys.db")


def _config(ledger: Path, **extra: Any) -> AuditConfig:
    return AuditConfig(
        ledger_url=f"sqlite:///{ledger}",
        privacy_policy="default",
        actor=("service", "tests"),
        **extra,
    )


def _fill(ledger: Path) -> bytes:
    """Records of SUBJECT and a bystander, a model batch, and one record through the spool
    (drained); returns the spool's bytes while it held that record."""
    config = _config(ledger)
    with AuditTrail(config) as trail:
        trail.record(
            "dagrun.started",
            {"triggering_user": SUBJECT, "conf": {"email": EMAIL, "note": CONF_SECRET}},
            actor=("user", SUBJECT),
            subject={"dag_id": "etl"},
        )
        trail.record("dagrun.started", {"triggering_user": SUBJECT}, subject={"dag_id": "etl"})
        trail.record("dagrun.started", {"triggering_user": BYSTANDER}, actor=("user", BYSTANDER))
        trail.model_invoked(
            "churn",
            1,
            inputs=[{"f": FEATURE}, {"f": "other"}],
            outputs=[{"p": 0.9}, {"p": 0.1}],
            batch=True,
            data_subject=SUBJECT,
        )
        spool = TrailSpool(lambda: trail)
        spool.spill(
            [
                Event(
                    type="dagrun.started",
                    data={"triggering_user": SUBJECT, "conf": {"x": SPOOLED}},
                    actor=("user", SUBJECT),  # whose conf it is (the closed subject)
                    chain="default",
                )
            ]
        )
        spool.close()
    spooled = tree_bytes(ledger.with_name(ledger.name + ".spool"))
    assert 0 == main(["spool", "drain", "--ledger", f"sqlite:///{ledger}"])
    assert 0 == main(["checkpoint", "--ledger", f"sqlite:///{ledger}"])
    return spooled


def _notes(ledger: Path) -> list[str]:
    """The signed checkpoints of chain default, oldest first."""
    reader = SqliteLedger(ledger, create=False, read_only=True)
    try:
        return [c.note for c in reader.checkpoints("default")]
    finally:
        reader.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Filled, proven, packed; then SUBJECT erased by the CLI; then checkpointed and packed
    again (made once: most tests only read it)."""
    root = tmp_path_factory.mktemp("privacy")
    ledger = root / "ledger.db"
    url = f"sqlite:///{ledger}"
    spooled = _fill(ledger)
    store = ledger.with_name(ledger.name + ".privacy.db")
    store_before = file_bytes(store)
    proof = root / "proof-before.json"
    assert 0 == main(
        ["prove", "--ledger", url, "--chain", "default", "--seq", "0", "-o", str(proof)]
    )
    pack_before, pack_after = root / "before.zip", root / "after.zip"
    evidence = ["evidence", "--ledger", url, "--since", SINCE, "--sample", "10"]
    assert 0 == main([*evidence, "-o", str(pack_before)])
    notes = _notes(ledger)
    before = bodies(ledger)
    erase = run_cli("privacy", "erase", SUBJECT, "--ledger", url, "--reason", "ticket 17")
    assert 0 == erase.returncode, erase.stderr
    # more records of the chain after the erasure, so the consistency proof spans it
    with AuditTrail(_config(ledger)) as trail:
        trail.record("dagrun.started", {"triggering_user": BYSTANDER}, actor=("user", BYSTANDER))
    assert 0 == main(["checkpoint", "--ledger", url])
    assert 0 == main([*evidence, "-o", str(pack_after)])
    after_notes = _notes(ledger)
    return World(
        root, ledger, url, before, store_before, spooled, pack_before, pack_after,
        proof, proof.read_text(), (notes[-1], after_notes[-1]), erase,
    )  # fmt: skip


class TestErasureKeepsEveryProof:
    """After `privacy erase`, the chain, its checkpoints and every proof verify as before."""

    def test_verify_passes_with_the_key(self, world: World) -> None:
        """`workflow-audit verify --key` exits 0 after the erasure; verify_ledger agrees."""
        run = run_cli("verify", "--ledger", world.url, "--key", world.pub)
        assert 0 == run.returncode, run.stdout + run.stderr
        ledger = SqliteLedger(world.ledger, create=False, read_only=True)
        try:
            heads = verify_ledger(ledger)
        finally:
            ledger.close()
        assert {"audit", "default"} <= {h.chain for h in heads}

    def test_every_record_body_is_unchanged(self, world: World) -> None:
        """Every record stored before the erasure has the same bytes after it."""
        after = bodies(world.ledger)
        assert world.before == {k: after[k] for k in world.before}
        assert len(after) > len(world.before)

    def test_inclusion_proof_made_before_still_verifies(self, world: World, tmp_path: Path) -> None:
        """A proof bundle made before verifies after, and the same proof made now (same tree
        size) is the same bytes."""
        assert world.proof_text == world.proof_before.read_text()
        run = run_cli("verify-proof", world.proof_before, "--key", world.pub)
        assert 0 == run.returncode, run.stdout + run.stderr
        size = str(orjson.loads(world.proof_text)["tree_size"])
        again = tmp_path / "again.json"
        args = ["--chain", "default", "--seq", "0", "--size", size, "-o", again]
        run = run_cli("prove", "--ledger", world.url, *args)
        assert 0 == run.returncode, run.stderr
        assert world.proof_before.read_bytes() == again.read_bytes()

    def test_consistency_from_before_to_after(self, world: World) -> None:
        """The checkpoint signed before the erasure is consistent with the one after it."""
        old, new = world.root / "old.note", world.root / "new.note"
        old.write_text(world.notes[0])
        new.write_text(world.notes[1])
        assert world.notes[0] != world.notes[1]
        run = run_cli("consistency", old, new, "--ledger", world.url, "--key", world.pub)
        assert 0 == run.returncode, run.stdout + run.stderr

    def test_both_evidence_packs_verify(self, world: World) -> None:
        """The pack made before the erasure and the one made after both verify offline."""
        for pack in (world.pack_before, world.pack_after):
            run = run_cli("verify-evidence", pack, "--key", world.pub, "--no-pdf")
            assert 0 == run.returncode, run.stdout + run.stderr


class TestErasedValuesAreNowhere:
    """The erased values and the subject's identifier are in none of the files."""

    def test_the_greps_would_see_the_identifier(self, world: World) -> None:
        """The store held the identifier before the erasure (so the greps below can fail)."""
        assert SUBJECT.encode() in world.store_before
        assert BYSTANDER.encode() in file_bytes(world.store)

    @pytest.mark.parametrize("secret", SECRETS)
    def test_not_in_ledger_store_keys_spool_or_packs(self, world: World, secret: str) -> None:
        """Ledger (+wal), spool dir (while it held a record, and after), store (+wal), key file
        (+wal) and both evidence packs (every entry) hold none of the erased bytes."""
        needle = secret.encode()
        places = {
            "ledger": file_bytes(world.ledger),
            "spool then": world.spool_seen,
            "spool now": tree_bytes(world.ledger.with_name(world.ledger.name + ".spool")),
            "store": file_bytes(world.store),
            "keys": file_bytes(world.keys),
            "pack before": pack_bytes(world.pack_before),
            "pack after": pack_bytes(world.pack_after),
        }
        assert [] == [name for name, data in places.items() if needle in data]

    def test_spool_held_a_record(self, world: World) -> None:
        """The spool grep read a real spooled record (commitments, not values)."""
        assert b'"$commit' in world.spool_seen


class TestRecordsAndCommitments:
    """What the records hold: commitments, the policy, the erasure."""

    def test_same_value_twice_gives_different_commitments(self, world: World) -> None:
        """SUBJECT as triggering_user in two records: two different nonces and MACs."""
        first, second = (r["data"]["triggering_user"] for r in records(world.ledger, "default")[:2])
        assert "hmac-sha256/v1" == first["$commit"]["alg"] == second["$commit"]["alg"]
        assert first["$commit"]["n"] != second["$commit"]["n"]
        assert first["$commit"]["c"] != second["$commit"]["c"]

    def test_actor_id_is_the_text_form(self, world: World) -> None:
        """A user actor's id is committed in the text form the record format needs."""
        actor = records(world.ledger, "default")[0]["actor"]
        assert "user" == actor["type"]
        assert actor["id"].startswith("$commit:hmac-sha256/v1:")

    def test_every_shaped_record_names_the_policy(self, world: World) -> None:
        """Every record of the default chain carries data._privacy.policy, one digest."""
        digests = {r["data"]["_privacy"]["policy"] for r in records(world.ledger, "default")}
        assert 1 == len(digests)
        assert next(iter(digests)).startswith("sha256:")

    def test_policy_announced_once(self, world: World) -> None:
        """One privacy.policy record for the digest, though several trails and processes
        recorded with it; its actor is the service itself, never shaped."""
        audit = records(world.ledger, "audit")
        policies = [r for r in audit if r["event"] == "privacy.policy"]
        assert 1 == len(policies)
        digest = records(world.ledger, "default")[0]["data"]["_privacy"]["policy"]
        assert digest == policies[0]["data"]["digest"]
        assert "<default>" == policies[0]["data"]["source"]
        assert {"type": "service", "id": "workflow-audit"} == policies[0]["actor"]

    def test_policy_record_once_per_digest_across_processes(self, tmp_path: Path) -> None:
        """Two processes with the default policy and one with another: two privacy.policy
        records, each by the service; the trails' own process actor (not an operator event)
        is kept in clear."""
        ledger = tmp_path / "l.db"
        policy = tmp_path / "p.toml"
        policy.write_text('version = 1\n[[rules]]\npointer = "/data/x"\naction = "commit"\n')
        script = (
            "import sys\nfrom audit_core import AuditConfig, AuditTrail\n"
            "c = AuditConfig(ledger_url=sys.argv[1], privacy_policy=sys.argv[2])\n"
            "with AuditTrail(c) as t:\n    t.record('x.y', {'x': 'v'})\n"
        )
        for name in ("default", "default", str(policy)):
            subprocess.run(
                [sys.executable, "-c", script, f"sqlite:///{ledger}", name], check=True, timeout=60
            )
        policies = [r for r in records(ledger, "audit") if r["event"] == "privacy.policy"]
        assert 2 == len(policies)
        assert "p.toml" == policies[1]["data"]["source"]
        assert [{"type": "service", "id": "workflow-audit"}] * 2 == [r["actor"] for r in policies]
        actors = [r["actor"] for r in records(ledger, "default")]
        assert 3 == len(actors)
        assert {"process"} == {a["type"] for a in actors}
        assert not any(a["id"].startswith("$commit:") for a in actors)

    def test_erased_record_content(self, world: World) -> None:
        """privacy.erased names pseudonym, method, key check value, basis and a count; no
        seqs, no identifier."""
        (erased,) = [r for r in records(world.ledger, "audit") if r["event"] == "privacy.erased"]
        data = erased["data"]
        assert data["pseudonym"].startswith("ps-")
        assert 16 == len(data["key_check_value"])
        int(data["key_check_value"], 16)
        assert "GDPR Art. 17(1)" == data["legal_basis"]
        assert "ticket 17" == data["reason"]
        assert data["method"]
        assert 4 == data["records"]  # seq 0, 1, the model batch and the spooled one
        assert not {"seqs", "seq", "identifier", "subject"} & set(data)
        assert SUBJECT not in orjson.dumps(erased).decode()
        assert f"recorded as audit:{erased['seq']}" in world.erase.stdout

    def test_model_values_committed_with_a_policy(self, world: World) -> None:
        """model.invoked with the default policy: input and output values and their digests
        committed (one record nonce, data._privacy.n), the batch root in the clear."""
        (model,) = [r for r in records(world.ledger, "default") if r["event"] == "model.invoked"]
        data = model["data"]
        nonce = data["_privacy"]["n"]
        committed = [
            data["inputs"]["value"],
            data["outputs"]["value"],
            data["inputs"]["sha256"],
            data["outputs"]["sha256"],
            data["data_subject"],
        ]
        assert [nonce] * 5 == [c["$commit"]["n"] for c in committed]
        assert {"policy", "n"} == set(data["_privacy"])
        assert data["_privacy"]["policy"].startswith("sha256:")
        assert re.fullmatch(r"[0-9a-f]{64}", data["batch"]["root"])
        assert 2 == data["batch"]["size"]
        assert 2 == data["inputs"]["rows"]

    def test_model_values_absent_without_a_policy(self, tmp_path: Path) -> None:
        """Without a policy the model values and the data subject are left out; digests and
        the root stay."""
        config = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'l.db'}")
        with AuditTrail(config) as trail:
            stored = trail.model_invoked(
                "churn",
                1,
                inputs=[{"f": FEATURE}],
                outputs=[{"p": 0.5}],
                batch=True,
                data_subject=SUBJECT,
            )
        data = orjson.loads(stored.body)["data"]
        assert FEATURE.encode() not in stored.body
        assert SUBJECT.encode() not in stored.body
        assert "data_subject" not in data
        assert 64 == len(data["inputs"]["sha256"])
        assert "value" not in data["inputs"]
        assert "value" not in data["outputs"]
        assert "_privacy" not in data
        assert 1 == data["batch"]["size"]
        assert not (tmp_path / "l.db.privacy.db").exists()


# -- crash safety, concurrency, tamper --------------------------------------------------------

ALICE, BOB, CAROL = "alice-Kd9", "bob-Lm2", "carol-Np5"


def _small(ledger: Path) -> None:
    """ALICE twice (seq 0, 1), BOB and CAROL once (seq 2, 3), on chain default."""
    with AuditTrail(_config(ledger)) as trail:
        for who in (ALICE, ALICE, BOB, CAROL):
            trail.record("dagrun.started", {"triggering_user": who})


def _child(script: str, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _erased(ledger: Path) -> list[str]:
    return [
        r["data"]["pseudonym"] for r in records(ledger, "audit") if r["event"] == "privacy.erased"
    ]


def _erased_at(ledger: Path, pseudonym: str) -> int:
    """The seq of the privacy.erased record of ``pseudonym`` on chain audit."""
    (seq,) = [
        r["seq"]
        for r in records(ledger, "audit")
        if r["event"] == "privacy.erased" and r["data"]["pseudonym"] == pseudonym
    ]
    return int(seq)


def _status(ledger: Path) -> dict[str, Any]:
    run = run_cli("privacy", "status", "--ledger", f"sqlite:///{ledger}", "--json")
    assert 0 == run.returncode, run.stderr
    doc: dict[str, Any] = orjson.loads(run.stdout)
    return doc


_BEGIN_THEN_DIE = """
import os, sys
from audit_core.privacy.keys import key_check_value, open_keystore
from audit_core.privacy.store import PrivacyStore
store, keys = PrivacyStore(sys.argv[1]), open_keystore(sys.argv[2])
e = store.begin_erasure(sys.argv[3], kcv=lambda p: key_check_value(keys, p), basis="b", reason="r")
print(e.pseudonym, flush=True)
os.kill(os.getpid(), 9)
"""

_RECORD_THEN_DIE = """
import os, sys
from audit_core import AuditConfig, AuditTrail
from audit_core.privacy.apply import Privacy
from audit_core.privacy.erase import erase_subject
from audit_core.privacy.keys import open_keystore
from audit_core.privacy.policy import default_policy

class DieOnDestroy:  # the real key store; the process dies where the key would be destroyed
    def __init__(self, keys): self.keys = keys
    def __getattr__(self, name): return getattr(self.keys, name)
    def destroy(self, pseudonym): os.kill(os.getpid(), 9)

config = AuditConfig(ledger_url=sys.argv[1], privacy_policy="default")
store_url, keys_url = sys.argv[2], sys.argv[3]
privacy = Privacy(default_policy(), store_url=store_url, keys_url=keys_url,
                  keys=DieOnDestroy(open_keystore(keys_url)))
with AuditTrail(config, privacy=privacy) as trail:
    erase_subject(trail, sys.argv[4], reason="r", basis="b")
"""


class TestCrashSafety:
    """kill -9 in the middle of an erasure: the next erase finishes it, once."""

    def _paths(self, ledger: Path) -> tuple[str, str]:
        return (
            f"sqlite:///{ledger.with_name(ledger.name + '.privacy.db')}",
            str(ledger.with_name(ledger.name + ".privacy-keys.db")),
        )

    def test_killed_after_begin_is_finished_by_the_next_erase(self, tmp_path: Path) -> None:
        """Killed after begin_erasure: status shows it pending; `privacy erase BOB` finishes
        ALICE's first and says so (one privacy.erased each), then nothing is pending and
        ALICE's values are unavailable."""
        ledger = tmp_path / "l.db"
        _small(ledger)
        child = _child(_BEGIN_THEN_DIE, *self._paths(ledger), ALICE)
        out, err = child.communicate(timeout=60)
        assert -9 == child.returncode, err
        pseudonym = out.strip()
        assert [pseudonym] == _status(ledger)["pending"]
        assert [] == _erased(ledger)
        url = f"sqlite:///{ledger}"
        run = run_cli("privacy", "erase", BOB, "--ledger", url, "--reason", "t")
        assert 0 == run.returncode, run.stderr
        erased = _erased(ledger)
        assert 2 == len(erased)
        assert pseudonym == erased[0]
        first = run.stdout.splitlines()[0]
        seq = _erased_at(ledger, pseudonym)
        assert f"finished the interrupted erasure of {pseudonym}: recorded as audit:{seq}" == first
        assert [] == _status(ledger)["pending"]
        opened = run_cli("privacy", "open", "--ledger", url, "--chain", "default", "--seq", "0")
        assert "unavailable" in opened.stdout
        assert ALICE not in opened.stdout
        assert 0 == run_cli("verify", "--ledger", url).returncode

    def test_killed_after_the_record_appends_it_once(self, tmp_path: Path) -> None:
        """Killed after privacy.erased was appended, before the key was destroyed: the next
        erase finishes it without a second record, and the key is gone."""
        ledger = tmp_path / "l.db"
        _small(ledger)
        url = f"sqlite:///{ledger}"
        child = _child(_RECORD_THEN_DIE, url, *self._paths(ledger), ALICE)
        _, err = child.communicate(timeout=60)
        assert -9 == child.returncode, err
        assert 1 == len(_erased(ledger))
        assert 1 == len(_status(ledger)["pending"])
        claim = ["--chain", "default", "--seq", "0", "--pointer", "/data/triggering_user"]
        run = run_cli("privacy", "erase", CAROL, "--ledger", url, "--reason", "t")
        assert 0 == run.returncode, run.stderr
        erased = _erased(ledger)
        assert 2 == len(set(erased)) == len(erased)  # ALICE's once, CAROL's once
        assert [] == _status(ledger)["pending"]
        pending = erased[0]
        line = f"finished the interrupted erasure of {pending}: recorded as audit:"
        assert f"{line}{_erased_at(ledger, pending)}" == run.stdout.splitlines()[0]
        run = run_cli("privacy", "verify", "--ledger", url, *claim, "--value", f'"{ALICE}"')
        assert 3 == run.returncode
        assert run.stdout.startswith("NOT CHECKED: default:0 /data/triggering_user")

    def test_finish_alone_completes_a_pending_erasure(self, tmp_path: Path) -> None:
        """`privacy erase --finish` (no SUBJECT) finishes the killed erasure, appends its one
        privacy.erased record, exits 0; a second --finish says nothing was pending."""
        ledger = tmp_path / "l.db"
        _small(ledger)
        child = _child(_BEGIN_THEN_DIE, *self._paths(ledger), ALICE)
        out, err = child.communicate(timeout=60)
        assert -9 == child.returncode, err
        pseudonym = out.strip()
        url = f"sqlite:///{ledger}"
        run = run_cli("privacy", "erase", "--finish", "--ledger", url)
        assert 0 == run.returncode, run.stderr
        seq = _erased_at(ledger, pseudonym)
        expected = f"finished the interrupted erasure of {pseudonym}: recorded as audit:{seq}\n"
        assert expected == run.stdout
        assert [pseudonym] == _erased(ledger)
        assert [] == _status(ledger)["pending"]
        again = run_cli("privacy", "erase", "--finish", "--ledger", url)
        assert (0, "no erasure was pending; the store is compacted\n") == (
            again.returncode,
            again.stdout,
        )
        assert [pseudonym] == _erased(ledger)

    def test_finished_pending_counted_in_json(self, tmp_path: Path) -> None:
        """`privacy erase SUBJECT --json` reports the pending erasures it finished first."""
        ledger = tmp_path / "l.db"
        _small(ledger)
        child = _child(_BEGIN_THEN_DIE, *self._paths(ledger), ALICE)
        _, err = child.communicate(timeout=60)
        assert -9 == child.returncode, err
        url = f"sqlite:///{ledger}"
        run = run_cli("privacy", "erase", BOB, "--ledger", url, "--reason", "t", "--json")
        assert 0 == run.returncode, run.stderr
        doc = orjson.loads(run.stdout.splitlines()[-1])
        assert 1 == doc["finished_pending"]


def _store_stats(ledger: Path) -> dict[str, int]:
    """The privacy store's counts (subjects, openings, erasures)."""
    from audit_core.privacy.store import PrivacyStore

    store = PrivacyStore(f"sqlite:///{ledger}.privacy.db", read_only=True)
    try:
        return store.stats()
    finally:
        store.close()


class TestRecordNonceAndOwnKey:
    """data._privacy, values that name no subject, and openings that belong to no record."""

    def test_privacy_meta_names_policy_and_nonce(self, tmp_path: Path) -> None:
        """A record with commitments: data._privacy = {policy, n}, n the markers' nonce; a
        record the policy shaped without committing anything: {policy} alone."""
        ledger = tmp_path / "l.db"
        with AuditTrail(_config(ledger)) as trail:
            shaped = orjson.loads(trail.record("dagrun.started", {"triggering_user": ALICE}).body)
            plain = orjson.loads(trail.record("task.succeeded", {"state": "ok"}).body)
        meta = shaped["data"]["_privacy"]
        assert {"policy", "n"} == set(meta)
        assert meta["n"] == shaped["data"]["triggering_user"]["$commit"]["n"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", meta["n"])
        assert {"policy": meta["policy"]} == plain["data"]["_privacy"]

    def test_value_naming_no_subject_is_keyed_for_its_record(self, tmp_path: Path) -> None:
        """Model values and their digests without a data subject (a service acting): keyed
        as record:<n>, the record's nonce; `privacy erase record:<n>` erases exactly them."""
        ledger = tmp_path / "l.db"
        with AuditTrail(_config(ledger)) as trail:
            first = trail.model_invoked("churn", 1, inputs={"f": FEATURE}, outputs={"p": 0.5})
            second = trail.model_invoked("churn", 1, inputs={"f": "other"}, outputs={"p": 0.1})
        n1 = orjson.loads(first.body)["data"]["_privacy"]["n"]
        n2 = orjson.loads(second.body)["data"]["_privacy"]["n"]
        from audit_core.privacy.store import PrivacyStore

        store = PrivacyStore(f"sqlite:///{ledger}.privacy.db", read_only=True)
        try:
            own = store.pseudonym(f"record:{n1}")
            assert own is not None
            assert own != store.pseudonym(f"record:{n2}")
            pointers = sorted(o.pointer for o in store.openings(own))
        finally:
            store.close()
        assert [
            "/data/inputs/sha256",
            "/data/inputs/value",
            "/data/outputs/sha256",
            "/data/outputs/value",
        ] == pointers
        url = f"sqlite:///{ledger}"
        run = run_cli("privacy", "erase", f"record:{n1}", "--ledger", url, "--reason", "t")
        assert 0 == run.returncode, run.stderr
        args = ("--ledger", url, "--chain", "default", "--json")
        opened = orjson.loads(run_cli("privacy", "open", *args, "--seq", str(first.seq)).stdout)
        status = {o["pointer"]: o["status"] for o in opened}
        assert dict.fromkeys(pointers, "unavailable") == status
        opened = orjson.loads(run_cli("privacy", "open", *args, "--seq", str(second.seq)).stdout)
        assert dict.fromkeys(pointers, "ok") == {o["pointer"]: o["status"] for o in opened}

    def test_model_digest_is_never_a_subject_identifier(self, tmp_path: Path) -> None:
        """model.invoked without data_subject nor a user acting: the store's subjects table
        holds only record:<n> (no digest, no value in clear); erasing it makes the values and
        the digests unavailable."""
        from audit_core.model import model_event

        ledger = tmp_path / "l.db"
        inputs, outputs = {"f": FEATURE}, {"p": 0.5}
        with AuditTrail(_config(ledger)) as trail:
            rec = trail.model_invoked("churn", 1, inputs=inputs, outputs=outputs)
        data = orjson.loads(rec.body)["data"]
        n = data["_privacy"]["n"]
        for side in ("inputs", "outputs"):
            assert {"$commit"} == set(data[side]["sha256"])
            assert {"$commit"} == set(data[side]["value"])
        plain = model_event("churn", 1, inputs=inputs, outputs=outputs, values=True)
        digests = {plain[side]["sha256"] for side in ("inputs", "outputs")}  # type: ignore[index]
        assert 2 == len(digests)
        conn = sqlite3.connect(f"file:{ledger}.privacy.db?mode=ro", uri=True)
        try:
            identifiers = [row[0] for row in conn.execute("SELECT identifier FROM subjects")]
            dump = "\n".join(conn.iterdump())
        finally:
            conn.close()
        assert [f"record:{n}"] == identifiers
        for clear in (*digests, FEATURE):
            assert clear not in dump
        url = f"sqlite:///{ledger}"
        run = run_cli("privacy", "erase", f"record:{n}", "--ledger", url, "--reason", "t")
        assert 0 == run.returncode, run.stderr
        args = ("--ledger", url, "--chain", "default", "--json", "--seq", str(rec.seq))
        opened = orjson.loads(run_cli("privacy", "open", *args).stdout)
        pointers = [
            f"/data/{side}/{leaf}" for side in ("inputs", "outputs") for leaf in ("sha256", "value")
        ]
        assert dict.fromkeys(pointers, "unavailable") == {o["pointer"]: o["status"] for o in opened}

    def test_keyed_duplicate_leaves_no_openings(self, tmp_path: Path) -> None:
        """record(key=K) again with K stored: the earlier record is returned and the
        openings the second call made are discarded (the store's count is unchanged)."""
        ledger = tmp_path / "l.db"
        with AuditTrail(_config(ledger)) as trail:
            first = trail.record("dagrun.started", {"triggering_user": ALICE}, key="run-1")
            before = _store_stats(ledger)["openings"]
            again = trail.record("dagrun.started", {"triggering_user": ALICE}, key="run-1")
            assert (first.chain, first.seq, first.body) == (again.chain, again.seq, again.body)
            assert before == _store_stats(ledger)["openings"]
        assert 1 == before
        assert 1 == len(records(ledger, "default"))

    def test_failed_append_leaves_no_openings(self, tmp_path: Path) -> None:
        """An append that fails (the ledger locked by another writer) leaves no opening."""
        ledger = tmp_path / "l.db"
        with AuditTrail(_config(ledger, busy_timeout_s=0.2)) as trail:
            trail.record("dagrun.started", {"triggering_user": ALICE})
            before = _store_stats(ledger)["openings"]
            lock = sqlite3.connect(ledger, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(AuditError):
                    trail.record("dagrun.started", {"triggering_user": BOB}, strict=True)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert before == _store_stats(ledger)["openings"]


class TestEraseService:
    """erase_subject and finish_pending (audit_core/privacy/erase.py) called directly."""

    def test_append_failure_leaves_the_erasure_pending(self, tmp_path: Path) -> None:
        """The privacy.erased record cannot be appended: PrivacyError saying the erasure is
        pending and to run `privacy erase --finish`; finish_pending then completes it."""
        ledger = tmp_path / "l.db"
        _small(ledger)
        with AuditTrail(_config(ledger, busy_timeout_s=0.2)) as trail:
            assert trail.privacy is not None
            _ = trail.privacy.store, trail.privacy.keys
            lock = sqlite3.connect(ledger, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(PrivacyError) as caught:
                    erase_subject(trail, ALICE, reason="r", basis="b")
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            text = str(caught.value)
            assert "is pending" in text
            assert "run `workflow-audit privacy erase --finish`" in text
            assert ALICE not in text
            [pending] = trail.privacy.store.pending_erasures()
            assert text.startswith(f"the erasure of {pending.pseudonym} is pending")
            assert [] == _erased(ledger)
            [done] = finish_pending(trail)
        assert (pending.pseudonym, "done") == (done.erasure.pseudonym, done.erasure.state)
        assert [pending.pseudonym] == _erased(ledger)
        assert [] == _status(ledger)["pending"]

    def test_erase_subject_leaves_other_pending_erasures(self, tmp_path: Path) -> None:
        """erase_subject erases its subject only; an earlier pending erasure stays pending
        until finish_pending."""
        ledger = tmp_path / "l.db"
        _small(ledger)
        store_url = f"sqlite:///{ledger}.privacy.db"
        child = _child(_BEGIN_THEN_DIE, store_url, f"{ledger}.privacy-keys.db", ALICE)
        out, err = child.communicate(timeout=60)
        assert -9 == child.returncode, err
        with AuditTrail(_config(ledger)) as trail:
            erase_subject(trail, BOB, reason="r", basis="b")
            assert [out.strip()] == _status(ledger)["pending"]
            assert [out.strip()] == [r.erasure.pseudonym for r in finish_pending(trail)]
        assert [] == _status(ledger)["pending"]


_RECORD_MANY = """
import sys
from audit_core import AuditConfig, AuditTrail
config = AuditConfig(ledger_url=sys.argv[1], privacy_policy="default", actor=("service", "t"))
n, who = int(sys.argv[2]), sys.argv[3]
with AuditTrail(config) as trail:
    trail.record("warm.up", {})
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        trail.record("dagrun.started", {"triggering_user": who if who != "-" else f"u{i}"})
        if i == 0:
            print("writing", flush=True)
"""


class TestConcurrency:
    """Writers and readers in several processes."""

    def test_two_writers_one_new_subject_one_pseudonym(self, tmp_path: Path) -> None:
        """Two processes recording the same new subject at once: one pseudonym, every opening
        under it, and bulk `privacy verify` finds all 60 ok."""
        ledger = tmp_path / "l.db"
        url = f"sqlite:///{ledger}"
        with AuditTrail(_config(ledger)) as trail:
            trail.record("init.done", {})
        children = [_child(_RECORD_MANY, url, 30, "newbie-Tq") for _ in range(2)]
        for c in children:
            assert c.stdout is not None
            assert "ready" == c.stdout.readline().strip()
        for c in children:  # released together
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        for c in children:
            _, err = c.communicate(timeout=120)
            assert 0 == c.returncode, err
        from audit_core.privacy.store import PrivacyStore

        store = PrivacyStore(f"sqlite:///{ledger}.privacy.db", read_only=True)
        try:
            pseudonym = store.pseudonym("newbie-Tq")
            owners = {o.pseudonym for o in store.openings()}
            assert 1 == store.stats()["subjects"]
        finally:
            store.close()
        assert {pseudonym} == owners
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert 0 == run.returncode, run.stdout
        assert 60 == orjson.loads(run.stdout)["counts"]["ok"]

    def test_verify_while_a_writer_appends_never_mismatches(self, tmp_path: Path) -> None:
        """`privacy verify` run again and again while another process appends 500 committed
        records: never a mismatch, malformed or unavailable."""
        ledger = tmp_path / "l.db"
        url = f"sqlite:///{ledger}"
        with AuditTrail(_config(ledger)) as trail:
            trail.record("dagrun.started", {"triggering_user": ALICE})
        child = _child(_RECORD_MANY, url, 500, "-")
        assert child.stdout is not None
        assert child.stdin is not None
        assert "ready" == child.stdout.readline().strip()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert "writing" == child.stdout.readline().strip()
        seen: list[dict[str, int]] = []
        while child.poll() is None or not seen:
            run = run_cli("privacy", "verify", "--ledger", url, "--json")
            doc = orjson.loads(run.stdout)
            assert (0, True) == (run.returncode, doc["ok"]), run.stdout
            seen.append(doc["counts"])
        child.communicate(timeout=120)
        assert 0 == child.returncode
        assert [] == [c for c in seen if c["mismatch"] or c["malformed"] or c["unavailable"]]
        final = orjson.loads(run_cli("privacy", "verify", "--ledger", url, "--json").stdout)
        assert 501 == final["counts"]["ok"]


def _swap(store: Path, where: str, column: str) -> None:
    """Swap ``column`` between the two openings ``where`` selects (a test's own SQL)."""
    conn = sqlite3.connect(store, isolation_level=None)
    try:
        rows = conn.execute(
            f"SELECT rowid, {column} FROM openings WHERE {where} ORDER BY rowid"  # noqa: S608
        ).fetchall()
        assert 2 == len(rows)
        (a, va), (b, vb) = rows
        update = f"UPDATE openings SET {column} = ? WHERE rowid = ?"  # noqa: S608
        conn.execute(update, (vb, a))
        conn.execute(update, (va, b))
    finally:
        conn.close()


class TestTamper:
    """An edited store or forged markers: reported, never a crash."""

    def _ledger(self, tmp_path: Path) -> tuple[Path, str, Path]:
        ledger = tmp_path / "l.db"
        _small(ledger)
        return ledger, f"sqlite:///{ledger}", tmp_path / "l.db.privacy.db"

    @pytest.mark.parametrize("column", ["sealed", "pseudonym"])
    def test_swapped_openings_mismatch(self, tmp_path: Path, column: str) -> None:
        """Two openings' sealed values (or owners) swapped: open and verify say mismatch,
        exit 1 (the AES-GCM AAD binds chain, nonce and pointer; the key binds the owner)."""
        _, url, store = self._ledger(tmp_path)
        # sealed: ALICE's two openings (one key: only the AAD tells them apart);
        # pseudonym: ALICE's first and BOB's (each sealed under the other's key now)
        where = "rowid IN (1, 2)" if column == "sealed" else "rowid IN (1, 3)"
        _swap(store, where, column)
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert 1 == run.returncode
        assert 2 == orjson.loads(run.stdout)["counts"]["mismatch"]
        run = run_cli("privacy", "open", "--ledger", url, "--chain", "default", "--seq", "0")
        assert 1 == run.returncode
        assert "mismatch" in run.stdout
        assert "Traceback" not in run.stderr

    def test_garbage_sealed_value_mismatch(self, tmp_path: Path) -> None:
        """An opening's sealed bytes replaced by garbage (or emptied): mismatch, no crash."""
        _, url, store = self._ledger(tmp_path)
        conn = sqlite3.connect(store, isolation_level=None)
        conn.execute("UPDATE openings SET sealed = x'00' WHERE rowid = 1")
        conn.execute("UPDATE openings SET sealed = NULL WHERE rowid = 2")
        conn.close()
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert 1 == run.returncode, run.stderr
        assert 2 == orjson.loads(run.stdout)["counts"]["mismatch"]
        assert "Traceback" not in run.stderr

    @pytest.mark.parametrize(
        "forged",
        [
            {"$commit": {"alg": "x", "n": "AAAA", "c": "AAAA"}},
            {"$commit": {"alg": "hmac-sha256/v1", "n": "!!", "c": 5}},
            {"$commit": "text"},
            {"$sealed": {"alg": "aes-256-gcm/v1", "n": "AAAAAAAAAAAAAAAAAAAAAA", "ct": None}},
            {"$commit": {"alg": "hmac-sha256/v1"}},
        ],
    )
    def test_forged_marker_in_user_data_is_malformed(
        self, tmp_path: Path, forged: dict[str, Any]
    ) -> None:
        """A marker-shaped value recorded as user data: `privacy verify` counts it
        malformed, which is no problem (exit 0), opens the rest; `open` exits 0 too."""
        ledger, url, _ = self._ledger(tmp_path)
        with AuditTrail(_config(ledger)) as trail:
            seq = trail.record("note.added", {"note": forged}).seq
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert "Traceback" not in run.stderr
        doc = orjson.loads(run.stdout)
        assert (0, 1, 4) == (run.returncode, doc["counts"]["malformed"], doc["counts"]["ok"])
        assert True is doc["ok"]
        run = run_cli("privacy", "open", "--ledger", url, "--chain", "default", "--seq", str(seq))
        assert 0 == run.returncode, run.stdout + run.stderr
        assert "Traceback" not in run.stderr

    def test_user_text_like_a_marker_is_no_problem(self, tmp_path: Path) -> None:
        """User text "$commit:hello" counts malformed; verify still exits 0."""
        ledger, url, _ = self._ledger(tmp_path)
        with AuditTrail(_config(ledger)) as trail:
            trail.record("note.added", {}, actor=("service", "$commit:hello"))
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        doc = orjson.loads(run.stdout)
        assert (0, 1, 0) == (run.returncode, doc["counts"]["malformed"], doc["counts"]["foreign"])

    def test_object_with_a_marker_member_and_more_is_no_marker(self, tmp_path: Path) -> None:
        """{"$commit": …, "extra": 1} is user data, not a marker: verify ignores it (exit 0)."""
        _, url, _ = self._ledger(tmp_path)
        with AuditTrail(_config(tmp_path / "l.db")) as trail:
            trail.record("note.added", {"note": {"$commit": {"alg": "x"}, "extra": 1}})
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert 0 == run.returncode, run.stdout + run.stderr
        assert 0 == orjson.loads(run.stdout)["counts"]["malformed"]

    def test_forged_text_marker_as_actor_id(self, tmp_path: Path) -> None:
        """A service actor whose id looks like a text commitment: malformed, exit 0, no
        crash."""
        ledger, url, _ = self._ledger(tmp_path)
        with AuditTrail(_config(ledger)) as trail:
            trail.record("note.added", {}, actor=("service", "$commit:hmac-sha256/v1:x:y"))
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert "Traceback" not in run.stderr
        assert (0, 1) == (run.returncode, orjson.loads(run.stdout)["counts"]["malformed"])

    def test_replayed_commitment_is_reported(self, tmp_path: Path) -> None:
        """A writer copies ALICE's committed /data/user of an access record into a record the
        policy does not shape there: bulk verify must not call the copy ok."""
        ledger = tmp_path / "l.db"
        url = f"sqlite:///{ledger}"
        with AuditTrail(_config(ledger)) as trail:
            real = trail.record("access.denied", {"user": ALICE, "status": 403})
            marker = orjson.loads(real.body)["data"]["user"]
            forged = trail.record("note.added", {"user": marker})
        args = ("--chain", "default", "--seq", str(forged.seq))
        opened = run_cli("privacy", "open", "--ledger", url, *args)
        assert ALICE not in opened.stdout, "the copy opens to ALICE"
        assert 1 == opened.returncode
        assert "foreign" in opened.stdout
        run = run_cli("privacy", "verify", "--ledger", url, "--json")
        assert (1, 1) == (run.returncode, orjson.loads(run.stdout)["counts"]["foreign"])
