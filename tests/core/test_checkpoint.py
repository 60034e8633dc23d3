"""Signed checkpoints: truncation, full rewrites and forks become detectable; proofs."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from audit_core import COUNTERS, AuditConfig, AuditTrail, leaf_hash, verify_chain, verify_ledger
from audit_core._cosign import cosignature_lines
from audit_core._merkle import Frontier, root_of
from audit_core._note import Signer, Verifier, sign_note, unverified_text
from audit_core._record import StoredCosignature
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.cli import main
from audit_core.errors import CheckpointError, ProofError, SignatureError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.proofs import make_inclusion_bundle, prove_consistency, verify_inclusion_bundle
from tests.core import _tamper

CHAIN = "default"


def _trail(path: Path, every: int = 10) -> AuditTrail:
    return AuditTrail(
        AuditConfig(
            ledger_url=f"sqlite:///{path}", actor=("service", "tests"), checkpoint_every=every
        )
    )


def _fill(path: Path, count: int, *, every: int = 10, tag: str = "a") -> list[str]:
    with _trail(path, every) as trail:
        return [trail.record("task.started", {"i": i, "tag": tag}).hash.hex() for i in range(count)]


def _key(path: Path) -> Verifier:
    return Verifier.parse(path.with_name(path.name + ".key.pub").read_text())


def _latest_note(path: Path) -> str:
    return SqliteLedger(path).checkpoints(CHAIN)[-1].note


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A ledger of 25 records with checkpoints at 10, 20 and 25 (the trail's close)."""
    path = tmp_path / "ledger.db"
    _fill(path, 25)
    return path


class TestCheckpointWriting:
    """The trail signs checkpoints every N records and when it closes."""

    def test_checkpoints_every_n_and_on_close(self, ledger: Path) -> None:
        """Checkpoints exist at 10, 20 and 25, each a signed C2SP checkpoint of the tree."""
        stored = SqliteLedger(ledger).checkpoints(CHAIN)
        assert [10, 20, 25] == [c.size for c in stored]
        key = _key(ledger)
        bodies = [r.hash for r in SqliteLedger(ledger).read(CHAIN)]
        for c in stored:
            checkpoint = open_checkpoint(c.note, [key])
            assert (c.size, root_of(bodies[: c.size])) == (checkpoint.size, checkpoint.root)
            assert checkpoint.origin.endswith("/" + CHAIN)

    def test_local_key_is_private_and_announced(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The embedded default creates <ledger>.key (0600) and says so loudly."""
        path = tmp_path / "l.db"
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            _fill(path, 1)
        key = path.with_name("l.db.key")
        assert 0o600 == stat.S_IMODE(key.stat().st_mode)
        assert "created a LOCAL signing key" in caplog.text
        assert str(_key(path)) in caplog.text

    def test_configured_key_is_used(self, tmp_path: Path) -> None:
        """WORKFLOW_AUDIT_SIGNING_KEY (a key string) signs instead of a local key."""
        signer = Signer.generate("example.com/audit")
        config = AuditConfig(
            ledger_url=f"sqlite:///{tmp_path / 'l.db'}",
            signing_key=str(signer),
            origin="example.com/prod",
        )
        with AuditTrail(config) as trail:
            trail.record("task.started")
        note = SqliteLedger(tmp_path / "l.db").checkpoints(CHAIN)[-1].note
        assert "example.com/prod/default" == open_checkpoint(note, [signer.verifier]).origin
        assert not (tmp_path / "l.db.key").exists()

    def test_unchanged_tree_is_not_signed_twice(self, ledger: Path) -> None:
        """Asking for a checkpoint of an unchanged tree returns the stored one."""
        with _trail(ledger) as trail:
            again = trail.checkpoint(CHAIN)
        assert [10, 20, 25] == [c.size for c in SqliteLedger(ledger).checkpoints(CHAIN)]
        assert again is not None
        assert 25 == again.size

    def test_refuses_to_sign_a_rewritten_tree(
        self, ledger: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After records under a checkpoint are rewritten, no new checkpoint is signed; the
        record itself is still written, and the failure is logged and counted."""
        _tamper.edit_body(ledger, CHAIN, 3, lambda r: {**r, "data": {"i": 99}}, rehash=True)
        _tamper.cover_tracks_frontier_only(ledger, CHAIN)
        before = COUNTERS.snapshot().get("checkpoint_failures", 0)
        with (
            caplog.at_level(logging.ERROR, logger="workflow_audit"),
            _trail(ledger, every=1) as trail,
        ):
            stored = trail.record("task.started", {"after": "tamper"})
        assert 25 == stored.seq
        assert [10, 20, 25] == [c.size for c in SqliteLedger(ledger).checkpoints(CHAIN)]
        assert COUNTERS.snapshot()["checkpoint_failures"] > before
        assert "refusing to sign" in caplog.text


class TestVerifyWithCheckpoints:
    """verify --key / --checkpoint catch what a hash chain alone cannot."""

    def test_valid_ledger_with_key(self, ledger: Path) -> None:
        """All stored checkpoints verify, with their signatures, and the root is reported."""
        head = verify_chain(SqliteLedger(ledger), CHAIN, keys=[_key(ledger)])
        hashes = [r.hash for r in SqliteLedger(ledger).read(CHAIN)]
        assert (25, root_of(hashes).hex(), 3) == (head.size, head.root, head.checkpoints)

    def test_truncation_with_tracks_covered_fails_external_checkpoint(
        self, ledger: Path, tmp_path: Path
    ) -> None:
        """Cutting the tail and deleting the stored checkpoints still fails against a
        checkpoint kept elsewhere; the message names the checkpoint and its tree size."""
        kept = _latest_note(ledger)
        _tamper.delete(ledger, CHAIN, 24)
        _tamper.cover_tracks(ledger, CHAIN)
        verify_chain(SqliteLedger(ledger), CHAIN)  # a shorter chain, valid on its own
        external = [(open_checkpoint(kept, [_key(ledger)]), "checkpoint kept.txt")]
        with pytest.raises(CheckpointError, match=r"checkpoint kept\.txt .*covers 25") as info:
            verify_chain(SqliteLedger(ledger), CHAIN, external=external)
        assert (CHAIN, 24) == (info.value.chain, info.value.seq)

    def test_full_rewrite_with_recomputed_hashes_fails(self, ledger: Path) -> None:
        """Deleting the whole chain and writing it again through the ledger (new hashes, new
        frontier, even new checkpoints signed with the same local key) fails against a
        checkpoint kept elsewhere."""
        kept = _latest_note(ledger)
        key = _key(ledger)
        _tamper.delete_chain(ledger, CHAIN)
        _fill(ledger, 25, tag="rewritten")
        verify_chain(SqliteLedger(ledger), CHAIN, keys=[key])  # self-consistent forgery
        external = [(open_checkpoint(kept, [key]), "checkpoint kept.txt")]
        with pytest.raises(CheckpointError, match="tree size 25") as info:
            verify_chain(SqliteLedger(ledger), CHAIN, external=external)
        assert "checkpoint kept.txt" in str(info.value)

    def test_fork_fails(self, ledger: Path, tmp_path: Path) -> None:
        """Two copies that grew differently: a checkpoint of one fails on the other."""
        fork = tmp_path / "fork.db"
        shutil.copy(ledger, fork)
        shutil.copy(ledger.with_name("ledger.db.key"), tmp_path / "fork.db.key")
        _fill(ledger, 5, tag="main")
        _fill(fork, 5, tag="fork")
        theirs = open_checkpoint(_latest_note(fork), [_key(ledger)])
        assert 30 == theirs.size
        with pytest.raises(CheckpointError, match="tree size 30"):
            verify_chain(SqliteLedger(ledger), CHAIN, external=[(theirs, "checkpoint fork.txt")])
        old = open_checkpoint(SqliteLedger(ledger).checkpoints(CHAIN)[0].note, [_key(ledger)])
        shared = Checkpoint(theirs.origin, 25, SqliteLedger(fork).checkpoints(CHAIN)[2].root)
        prove_consistency(SqliteLedger(ledger), CHAIN, old, shared)  # the common past is fine
        with pytest.raises(ProofError, match="rewritten or forked"):
            prove_consistency(SqliteLedger(ledger), CHAIN, old, theirs)

    def test_deleted_chain_fails_external_checkpoint(self, ledger: Path) -> None:
        """A checkpoint whose chain is gone from the ledger fails: the chain was deleted."""
        kept = open_checkpoint(_latest_note(ledger), [_key(ledger)])
        _tamper.delete_chain(ledger, CHAIN)
        with pytest.raises(CheckpointError, match="names no chain"):
            verify_ledger(SqliteLedger(ledger), external=[(kept, "checkpoint kept.txt")])

    def test_forged_stored_checkpoint_fails_with_key(self, ledger: Path) -> None:
        """A stored checkpoint signed by another key fails verification with the real key."""
        head = SqliteLedger(ledger).checkpoints(CHAIN)[-1]
        mallory = Signer.generate("workflow-audit.local/mallory")
        text = Checkpoint.parse(head.note.split("\n\n")[0] + "\n").text()
        with sqlite3.connect(ledger) as conn:
            conn.execute("DROP TRIGGER checkpoints_no_delete")
            conn.execute("DELETE FROM checkpoints WHERE size = 25")
            conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                (CHAIN, 25, head.root, sign_note(text, [mallory]), head.created),
            )
        with pytest.raises(CheckpointError, match="stored checkpoint at tree size 25"):
            verify_chain(SqliteLedger(ledger), CHAIN, keys=[_key(ledger)])

    def test_checkpoint_row_must_match_its_note(self, ledger: Path) -> None:
        """A checkpoint row whose root column differs from its signed text fails."""
        with sqlite3.connect(ledger) as conn:
            conn.execute("DROP TRIGGER checkpoints_no_update")
            conn.execute("UPDATE checkpoints SET root = ? WHERE size = 20", (bytes(32),))
        with pytest.raises(CheckpointError, match="tree size 20"):
            verify_chain(SqliteLedger(ledger), CHAIN)


class TestFrontier:
    """The stored Merkle frontier and nodes."""

    def test_stored_nodes_give_the_root(self, ledger: Path) -> None:
        """tree_head() from the stored frontier equals the root over all record hashes."""
        db = SqliteLedger(ledger)
        hashes = [r.hash for r in db.read(CHAIN)]
        assert (25, root_of(hashes)) == db.tree_head(CHAIN)
        assert Frontier.empty().extend(hashes).root() == db.tree_head(CHAIN)[1]

    def test_missing_frontier_is_rebuilt(
        self, ledger: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A ledger without a frontier (written before Merkle trees) is rebuilt on append."""
        with sqlite3.connect(ledger) as conn:
            conn.execute("DELETE FROM merkle_subtrees")
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            _fill(ledger, 1)
        db = SqliteLedger(ledger)
        assert (26, root_of([r.hash for r in db.read(CHAIN)])) == db.tree_head(CHAIN)
        assert "rebuilding the Merkle tree" in caplog.text
        bundle = make_inclusion_bundle(db, CHAIN, 3)
        verify_inclusion_bundle(bundle, [_key(ledger)])


class TestProofs:
    """Inclusion proof bundles and consistency proofs."""

    def test_every_record_has_a_verifying_bundle(self, ledger: Path) -> None:
        """A bundle for every seq verifies offline with only the verifier key."""
        db, key = SqliteLedger(ledger), _key(ledger)
        for seq in range(25):
            proven = verify_inclusion_bundle(make_inclusion_bundle(db, CHAIN, seq), [key])
            assert (seq, 25) == (proven.record.seq, proven.checkpoint.size)
        proven = verify_inclusion_bundle(make_inclusion_bundle(db, CHAIN, 3, size=10), [key])
        assert 10 == proven.checkpoint.size

    @pytest.mark.parametrize(
        "change",
        [
            lambda b: {**b, "record": b["record"].replace('"i":4', '"i":5')},
            lambda b: {**b, "leaf_index": 5},
            lambda b: {**b, "tree_size": 20},
            lambda b: {**b, "audit_path": b["audit_path"][1:]},
            lambda b: {**b, "audit_path": ["0" * 64, *b["audit_path"][1:]]},
            lambda b: {**b, "chain": "other"},
            lambda b: {**b, "checkpoint": b["checkpoint"].replace("\n25\n", "\n24\n")},
        ],
    )
    def test_changed_bundle_fails(self, ledger: Path, change: object) -> None:
        """Any changed part of a bundle makes it fail verification."""
        bundle = make_inclusion_bundle(SqliteLedger(ledger), CHAIN, 4)
        with pytest.raises((ProofError, SignatureError, CheckpointError)):
            verify_inclusion_bundle(change(bundle), [_key(ledger)])  # type: ignore[operator]

    def test_wrong_key_fails(self, ledger: Path) -> None:
        """A bundle does not verify with another key."""
        bundle = make_inclusion_bundle(SqliteLedger(ledger), CHAIN, 4)
        with pytest.raises(SignatureError):
            verify_inclusion_bundle(bundle, [Signer.generate("x.example/k").verifier])

    def test_no_checkpoint_covers_the_record(self, tmp_path: Path) -> None:
        """prove refuses a record that no checkpoint covers yet, and says what to do."""
        path = tmp_path / "l.db"
        with _trail(path, every=0) as trail:  # 0: checkpoints only on demand
            trail.record("task.started")
        with pytest.raises(ProofError, match="workflow-audit checkpoint"):
            make_inclusion_bundle(SqliteLedger(path), CHAIN, 0)


class TestCli:
    """keygen, checkpoint, prove, verify-proof, consistency, verify --key/--checkpoint."""

    def test_end_to_end(
        self, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The commands work together, and a cut tail fails `verify --checkpoint` with exit 1."""
        url = f"sqlite:///{ledger}"
        pub = str(ledger.with_name("ledger.db.key.pub"))
        env_before = os.environ.get("WORKFLOW_AUDIT_LEDGER")
        os.environ["WORKFLOW_AUDIT_LEDGER"] = url
        try:
            assert 0 == main(["verify", "--ledger", url, "--key", pub])
            bundle = tmp_path / "proof.json"
            assert 0 == main(["prove", "--ledger", url, "--seq", "7", "-o", str(bundle)])
            assert 0 == main(["verify-proof", str(bundle), "--key", pub])
            notes = [c.note for c in SqliteLedger(ledger).checkpoints(CHAIN)]
            old, new = tmp_path / "old.txt", tmp_path / "new.txt"
            old.write_text(notes[0])
            new.write_text(notes[-1])
            assert 0 == main(["consistency", str(old), str(new), "--ledger", url, "--key", pub])
            capsys.readouterr()
            _tamper.delete(ledger, CHAIN, 24)
            _tamper.cover_tracks(ledger, CHAIN)
            assert 0 == main(["verify", "--ledger", url])
            assert 1 == main(["verify", "--ledger", url, "--key", pub, "--checkpoint", str(new)])
            err = capsys.readouterr().err
            assert "covers 25" in err
            assert str(new) in err
            assert 1 == main(["consistency", str(old), str(new), "--ledger", url, "--key", pub])
            assert 2 == main(["verify", "--ledger", url, "--checkpoint", str(new)])  # no --key
        finally:
            if env_before is None:
                os.environ.pop("WORKFLOW_AUDIT_LEDGER", None)
            else:
                os.environ["WORKFLOW_AUDIT_LEDGER"] = env_before

    def test_keygen(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """keygen writes a 0600 signer key, prints a parseable verifier key, never overwrites."""
        out = tmp_path / "k.key"
        assert 0 == main(["keygen", "--name", "example.com/audit", "-o", str(out)])
        verifier = Verifier.parse(capsys.readouterr().out)
        assert verifier == Signer.parse(out.read_text()).verifier
        assert 0o600 == stat.S_IMODE(out.stat().st_mode)
        assert 2 == main(["keygen", "--name", "example.com/audit", "-o", str(out)])

    def test_stored_note_is_a_c2sp_checkpoint(self, ledger: Path) -> None:
        """The stored note is origin, size, base64 root, blank line, em-dash signature line."""
        lines = _latest_note(ledger).split("\n")
        assert ["25", ""] == [lines[1], lines[3]]
        assert lines[4].startswith("\u2014 ")
        assert orjson.loads(b"25") == int(lines[1])
        assert 32 == len(leaf_hash(b"")) == len(Checkpoint.parse("\n".join(lines[:3]) + "\n").root)


class TestWitness:
    """Witness cosigning from the command line (c2sp.org/tlog-cosignature)."""

    def test_cosign_and_require_witness(
        self, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`cosign` adds a cosignature/v1 line; the cosigned file (its line also stored in
        the ledger) passes `verify --witness --checkpoint`; an uncosigned file fails (exit 1)."""
        url = f"sqlite:///{ledger}"
        log_key = str(ledger.with_name("ledger.db.key.pub"))
        witness_key = tmp_path / "w.key"
        assert 0 == main(["witness", "keygen", "witness.example/w", "--out", str(witness_key)])
        witness_pub = str(witness_key) + ".pub"
        plain, cosigned = tmp_path / "plain.txt", tmp_path / "cosigned.txt"
        plain.write_text(_latest_note(ledger))
        cosigned.write_text(_latest_note(ledger))
        cosign = ["cosign", str(cosigned), "--witness-key", str(witness_key), "--key", log_key]
        assert 0 == main(cosign)
        [line] = cosignature_lines(cosigned.read_text())
        assert 2 == cosigned.read_text().count("\u2014 ")
        body = Checkpoint.parse(unverified_text(cosigned.read_text()))
        db = SqliteLedger(ledger)
        db.add_cosignature(StoredCosignature(CHAIN, body.size, body.text(), line, "2026"))
        db.close()
        args = ["verify", "--ledger", url, "--key", log_key, "--witness", witness_pub]
        assert 0 == main([*args, "--checkpoint", str(cosigned)])
        capsys.readouterr()
        assert 1 == main([*args, "--checkpoint", str(plain)])
        assert "witness.example/w" in capsys.readouterr().err

    def test_cosign_with_a_log_key_is_a_usage_error(
        self, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`cosign` with a plain Ed25519 (0x01) key exits 2, pointing to `witness keygen`."""
        log_key = str(ledger.with_name("ledger.db.key.pub"))
        plain_key = tmp_path / "p.key"
        assert 0 == main(["keygen", "--name", "witness.example/p", "-o", str(plain_key)])
        cp = tmp_path / "cp.txt"
        cp.write_text(_latest_note(ledger))
        capsys.readouterr()
        assert 2 == main(["cosign", str(cp), "--witness-key", str(plain_key), "--key", log_key])
        err = capsys.readouterr().err
        assert "witness keygen" in err
        assert "PRIVATE" not in err
        assert _latest_note(ledger) == cp.read_text()


class TestFrontierCache:
    """Each ledger instance caches its chain's frontier; other writers make it catch up."""

    @pytest.mark.parametrize("others", [1, 3, 200])
    def test_tree_head_after_other_writers(self, ledger: Path, others: int) -> None:
        """An instance whose cache is behind (another process appended) returns the exact
        tree head of the current size, near (catch-up) or far (stored subtrees) behind."""
        mine = SqliteLedger(ledger)
        assert 25 == mine.tree_head(CHAIN)[0]  # caches the frontier at 25
        _fill(ledger, others, every=0)  # another instance appends
        hashes = [r.hash for r in SqliteLedger(ledger).read(CHAIN)]
        assert (25 + others, root_of(hashes)) == mine.tree_head(CHAIN)
        with _trail(ledger, every=0) as trail:  # and appending through a stale cache is exact
            trail.ledger.tree_head(CHAIN)
            _fill(ledger, 2, every=0)
            trail.record("task.started")
        hashes = [r.hash for r in SqliteLedger(ledger).read(CHAIN)]
        assert (len(hashes), root_of(hashes)) == SqliteLedger(ledger).tree_head(CHAIN)


class TestSigningFailures:
    """A checkpoint that cannot be signed never fails record()."""

    def test_unreadable_key_is_logged_counted_and_backed_off(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With a key file that cannot be read, records are written; the failure is logged
        and counted once a period, not at every append."""
        config = AuditConfig(
            ledger_url=f"sqlite:///{tmp_path / 'l.db'}",
            signing_key=str(tmp_path / "missing.key"),
            checkpoint_every=5,
        )
        before = COUNTERS.snapshot().get("checkpoint_failures", 0)
        with caplog.at_level(logging.ERROR, logger="workflow_audit"), AuditTrail(config) as trail:
            stored = [trail.record("task.started", {"i": i}) for i in range(12)]
        assert list(range(12)) == [s.seq for s in stored]
        failures = COUNTERS.snapshot()["checkpoint_failures"] - before
        assert 3 == failures  # at 5, at 10, and when the trail closed
        assert "cannot read signing key file" in caplog.text
        verify_chain(SqliteLedger(tmp_path / "l.db"), CHAIN)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


_UMASK_SCRIPT = """
import os, sys
os.umask(int(sys.argv[2], 8))
from audit_core import AuditConfig, AuditTrail
from audit_core.cli import main
with AuditTrail(AuditConfig(ledger_url="sqlite:///" + sys.argv[1] + "/l.db")) as trail:
    trail.record("task.started")
raise SystemExit(main(["keygen", "--name", "k.example/k", "-o", sys.argv[1] + "/k.key"]))
"""


class TestKeyFileModes:
    """Key files get explicit modes: 0600 private, 0644 public, whatever the umask."""

    @pytest.mark.parametrize("umask", ["000", "002", "077"])
    def test_modes_whatever_the_umask(self, tmp_path: Path, umask: str) -> None:
        """Under umask 000, 002 and 077 (set in a fresh process), the local key beside the
        ledger and a keygen key are 0600 and their verifier keys 0644."""
        done = subprocess.run(
            [sys.executable, "-c", _UMASK_SCRIPT, str(tmp_path), umask],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        for private in (tmp_path / "l.db.key", tmp_path / "k.key"):
            assert 0o600 == _mode(private)
            assert 0o644 == _mode(private.with_name(private.name + ".pub"))

    def test_no_temporary_files_left(self, ledger: Path) -> None:
        """Only the key and its .pub remain beside the ledger (the aside files are gone)."""
        names = {p.name for p in ledger.parent.iterdir() if ".key" in p.name}
        assert {"ledger.db.key", "ledger.db.key.pub"} == names


class TestMissingKey:
    """A lost local key is never silently replaced for a ledger that holds checkpoints."""

    def _lose_key(self, ledger: Path) -> Path:
        """Delete the local signing key; return a copy of its verifier key kept elsewhere."""
        kept = ledger.with_name("kept.pub")
        shutil.copy(ledger.with_name("ledger.db.key.pub"), kept)
        ledger.with_name("ledger.db.key").unlink()
        return kept

    def test_records_kept_no_new_key(
        self, ledger: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the key gone, record() still writes durably; no key is minted; the refusal
        is counted and logged; verify --key old.pub still exits 0."""
        monkeypatch.delenv("WORKFLOW_AUDIT_ROTATE_KEY", raising=False)
        kept = self._lose_key(ledger)
        before = COUNTERS.snapshot().get("checkpoint_key_missing", 0)
        with caplog.at_level(logging.ERROR, logger="workflow_audit"):
            hashes = _fill(ledger, 12, every=5)
        assert 12 == len(hashes)
        assert 37 == SqliteLedger(ledger).head(CHAIN).seq + 1  # type: ignore[union-attr]
        assert not ledger.with_name("ledger.db.key").exists()
        assert COUNTERS.snapshot()["checkpoint_key_missing"] > before
        assert "local signing key" in caplog.text
        assert "is missing" in caplog.text
        assert [10, 20, 25] == [c.size for c in SqliteLedger(ledger).checkpoints(CHAIN)]
        assert 0 == main(["verify", "--ledger", f"sqlite:///{ledger}", "--key", str(kept)])

    def test_checkpoint_command_refuses(
        self, ledger: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`workflow-audit checkpoint` with the key gone exits 2 and says how to rotate."""
        monkeypatch.delenv("WORKFLOW_AUDIT_ROTATE_KEY", raising=False)
        self._lose_key(ledger)
        _fill(ledger, 1, every=0)
        capsys.readouterr()
        assert 2 == main(["checkpoint", "--ledger", f"sqlite:///{ledger}"])
        assert "--rotate-key" in capsys.readouterr().err
        assert not ledger.with_name("ledger.db.key").exists()

    def test_fresh_ledger_still_gets_a_key(self, tmp_path: Path) -> None:
        """A ledger without checkpoints still has its local key created on first use."""
        path = tmp_path / "l.db"
        _fill(path, 3, every=0)
        assert not path.with_name("l.db.key").exists()
        _fill(path, 3, every=2)
        assert path.with_name("l.db.key").exists()
        verify_ledger(SqliteLedger(path), keys=[_key(path)])


class TestKeyRotation:
    """Rotation, asked for: a new key, and both keys verify the whole history."""

    def _rotated(self, ledger: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> Verifier:
        old = _key(ledger)
        ledger.with_name("ledger.db.key").unlink()
        monkeypatch.delenv("WORKFLOW_AUDIT_ROTATE_KEY", raising=False)
        if how == "env":
            monkeypatch.setenv("WORKFLOW_AUDIT_ROTATE_KEY", "1")
            _fill(ledger, 7, every=5)
        else:
            assert 0 == main(["checkpoint", "--rotate-key", "--ledger", f"sqlite:///{ledger}"])
            _fill(ledger, 7, every=5)
        return old

    @pytest.mark.parametrize("how", ["env", "cli"])
    def test_new_key_and_both_verify(
        self, ledger: Path, how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """After a rotation the key is new, under the same name; .pub holds the old and the
        new verifier key; verify passes with both (as that file, or as two --key), and with
        the old key alone it fails on the first checkpoint the new key signed."""
        old = self._rotated(ledger, how, monkeypatch)
        new = Signer.parse(ledger.with_name("ledger.db.key").read_text()).verifier
        assert old != new
        assert old.name == new.name
        pub = ledger.with_name("ledger.db.key.pub")
        assert [old, new] == [Verifier.parse(line) for line in pub.read_text().split()]
        assert 0o644 == _mode(pub)
        assert 0o600 == _mode(ledger.with_name("ledger.db.key"))
        sizes = [c.size for c in SqliteLedger(ledger).checkpoints(CHAIN)]
        assert [10, 20, 25] == sizes[:3]
        assert 32 == sizes[-1]
        url = f"sqlite:///{ledger}"
        assert 0 == main(["verify", "--ledger", url, "--key", str(pub)])
        old_file = tmp_path / "old.pub"
        old_file.write_text(f"{old}\n")
        assert 0 == main(["verify", "--ledger", url, "--key", str(old_file), "--key", str(new)])
        assert 1 == main(["verify", "--ledger", url, "--key", str(old_file)])

    def test_rotation_is_counted_and_logged(
        self, ledger: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A rotation is logged loudly and counted."""
        before = COUNTERS.snapshot().get("checkpoint_key_rotations", 0)
        with caplog.at_level(logging.WARNING, logger="workflow_audit"):
            self._rotated(ledger, "env", monkeypatch)
        assert before + 1 == COUNTERS.snapshot()["checkpoint_key_rotations"]
        assert "ROTATED the local signing key" in caplog.text

    def test_present_key_is_not_rotated(
        self, ledger: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """WORKFLOW_AUDIT_ROTATE_KEY=1 left set does not replace a key that is there."""
        old = _key(ledger)
        monkeypatch.setenv("WORKFLOW_AUDIT_ROTATE_KEY", "1")
        _fill(ledger, 7, every=5)
        assert old == Signer.parse(ledger.with_name("ledger.db.key").read_text()).verifier
        assert [old] == [Verifier.parse(x) for x in _key_lines(ledger)]


def _key_lines(ledger: Path) -> list[str]:
    return ledger.with_name("ledger.db.key.pub").read_text().split()
