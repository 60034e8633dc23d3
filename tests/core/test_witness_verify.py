"""Verification uses witnesses (issue 18, item 4): `verify --witness K --quorum N` over a
ledger's stored cosignatures, `prove` bundles carrying them, `verify-proof --witness`, and
no false alarm while the ledger is appended to and anchored.

Cosignatures are made with the witness's key directly (:meth:`Cosigner.cosign`) where the
protocol is not the point; the live test runs a real witness and the real anchor.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from audit_core import AuditConfig, AuditTrail, Event, _parallel
from audit_core._cosign import Cosigner, parse_cosignature
from audit_core._merkle import Frontier
from audit_core._note import Verifier, note_parts
from audit_core._record import StoredCosignature
from audit_core.checkpoint import Checkpoint
from audit_core.cli import main
from audit_core.errors import AuditError, ConfigError, QuorumError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.quorum import unsigned_note
from audit_core.verify import verify_ledger
from tests.core._witnessing import LocalWitness, anchor, forge, log_key

CHAIN = "default"
W1, W2, OTHER = (Cosigner.generate(f"witness.test/{n}") for n in ("w1", "w2", "other"))
TIME = 1_767_225_600  # 2026-01-01T00:00:00Z


def _fill(path: Path, count: int, every: int = 10) -> None:
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}", actor=("service", "tests"), checkpoint_every=every
    )
    with AuditTrail(config) as trail:
        for i in range(count):
            trail.record("task.started", {"i": i})


def _cosign(path: Path, *cosigners: Cosigner, size: int | None = None) -> Checkpoint:
    """Store cosignatures by ``cosigners`` of the stored checkpoint at ``size`` (latest)."""
    db = SqliteLedger(path)
    try:
        stored = [c for c in db.checkpoints(CHAIN) if size is None or c.size == size][-1]
        body, _ = note_parts(stored.note)
        for cosigner in cosigners:
            line = cosigner.cosign(body, TIME)
            db.add_cosignature(StoredCosignature(CHAIN, stored.size, body, line, "2026"))
        return Checkpoint.parse(body)
    finally:
        db.close()


def _verify(path: Path, *extra: object) -> list[str]:
    """``verify`` of ``path``'s chain with its local key (the witnessed origins' prefix)."""
    pub = path.with_name(path.name + ".key.pub")
    key = ["--key", str(pub)] if pub.exists() else []
    return ["verify", "--ledger", f"sqlite:///{path}", "--chain", CHAIN, *key, *map(str, extra)]


def _keys(db: SqliteLedger) -> list[Verifier]:
    """The ledger's local verifier key: its name is the prefix of the chain's origin."""
    assert db.path is not None
    return [log_key(db.path)]


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """25 records, checkpoints at 10, 20 and 25; W1 cosigned size 20."""
    path = tmp_path / "ledger.db"
    _fill(path, 25)
    _cosign(path, W1, size=20)
    return path


class TestVerifyLedger:
    """verify_ledger(..., witnesses=, quorum=)."""

    def test_returns_the_witnessed_checkpoints(self, ledger: Path) -> None:
        """The head carries the witnessed checkpoint and counts the 5 records after it."""
        db = SqliteLedger(ledger, read_only=True, create=False)
        [head] = verify_ledger(db, [CHAIN], keys=_keys(db), witnesses=[W1.key])
        db.close()
        assert [20] == [w.size for w in head.witnessed]
        assert [(W1.key, TIME)] == list(head.witnessed[-1].cosigners)
        assert 5 == head.unwitnessed
        assert {"size", "root", "cosigned", "missing", "checkpoints", "not_yet_witnessed"} == set(
            orjson.loads(orjson.dumps(head.to_json()))["witnessed"]
        )

    def test_without_witnesses_nothing_changes(self, ledger: Path) -> None:
        """Without witness keys the head has no witnessed field, as before."""
        db = SqliteLedger(ledger, read_only=True, create=False)
        [head] = verify_ledger(db, [CHAIN])
        db.close()
        assert () == head.witnessed
        assert "witnessed" not in head.to_json()

    def test_untrusted_cosignatures_do_not_count(self, ledger: Path) -> None:
        """A chain cosigned only by a witness the verifier does not trust is not witnessed."""
        db = SqliteLedger(ledger, read_only=True, create=False)
        with pytest.raises(QuorumError, match="no checkpoint is cosigned"):
            verify_ledger(db, [CHAIN], keys=_keys(db), witnesses=[OTHER.key])
        db.close()

    @pytest.mark.parametrize("quorum", [-1, 3])
    def test_quorum_out_of_range(self, ledger: Path, quorum: int) -> None:
        """A quorum outside 1..len(witnesses) (0 meaning all) is a ConfigError."""
        db = SqliteLedger(ledger, read_only=True, create=False)
        with pytest.raises(ConfigError, match="quorum"):
            verify_ledger(db, [CHAIN], keys=_keys(db), witnesses=[W1.key, W2.key], quorum=quorum)
        db.close()

    def test_parallel_verdict_equals_one_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--jobs 2 gives the same witnessed verdict as one process, valid and invalid."""
        monkeypatch.setattr(_parallel, "MIN_RECORDS_PER_JOB", 1_000)
        path = tmp_path / "big.db"
        _fill(path, 4_100, every=1_000)
        _cosign(path, W1, size=3_000)
        db = SqliteLedger(path, read_only=True, create=False)
        one = verify_ledger(db, [CHAIN], keys=_keys(db), witnesses=[W1.key])
        two = verify_ledger(db, [CHAIN], keys=_keys(db), witnesses=[W1.key], jobs=2)
        db.close()
        assert one == two
        assert 3_000 == two[0].witnessed[-1].size

    def test_forged_subtrees_do_not_fool_it(self, tmp_path: Path) -> None:
        """A rewrite under the witnessed size (20) is caught even when the writer puts back
        the old stored subtrees that give size 20's root: roots come from the records."""
        path = tmp_path / "ledger.db"
        _fill(path, 32)
        witnessed = _cosign(path, W1, size=20)
        conn = sqlite3.connect(str(path))
        old = conn.execute("SELECT chain, last, hashes FROM merkle_subtrees WHERE last IN (15, 19)")
        old_rows = old.fetchall()
        conn.close()
        forge(path, CHAIN, edit=lambda seq, v: {**v, "data": {"i": -1}} if seq == 3 else v)
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("DELETE FROM merkle_subtrees WHERE last IN (15, 19)")  # triggers dropped
        conn.executemany("INSERT INTO merkle_subtrees VALUES (?, ?, ?)", old_rows)
        conn.close()
        db = SqliteLedger(path, read_only=True, create=False)
        try:
            stored = Frontier.at(lambda lv, ix: db.node(CHAIN, lv, ix), 20).root()
            assert witnessed.root == stored  # the stored subtrees lie about size 20
            verify_ledger(db, [CHAIN], keys=[log_key(path)])  # and --key alone passes
            with pytest.raises(QuorumError, match="rewritten") as caught:
                verify_ledger(db, [CHAIN], keys=_keys(db), witnesses=[W1.key])
        finally:
            db.close()
        assert witnessed.root.hex() in str(caught.value)


class TestVerifyCli:
    """`verify --witness KEY --quorum K`."""

    def test_text_output(self, ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The verdict names the witnessed size, root, witness and time, and the tail."""
        assert 0 == main(_verify(ledger, "--witness", W1.key))
        out = capsys.readouterr().out
        assert "witnessed: size 20 (root " in out
        assert "cosigned by witness.test/w1 at 2026-01-01T00:00:00Z" in out
        assert "5 record(s) after the last witnessed checkpoint (not yet witnessed)" in out

    def test_json_output(self, ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--json carries the witnessed checkpoint, its cosigners and times."""
        assert 0 == main(_verify(ledger, "--witness", W1.key, "--json"))
        [chain] = orjson.loads(capsys.readouterr().out)["chains"]
        assert 20 == chain["witnessed"]["size"]
        assert [{"witness": str(W1.key), "time": TIME}] == chain["witnessed"]["cosigned"]
        assert 5 == chain["witnessed"]["not_yet_witnessed"]

    def test_key_file_and_default_quorum(self, ledger: Path, tmp_path: Path) -> None:
        """A file of two keys means both must cosign by default; --quorum 1 accepts one."""
        keys = tmp_path / "witnesses.txt"
        keys.write_text(f"{W1.key}\n{W2.key}\n")
        assert 1 == main(_verify(ledger, "--witness", keys))
        assert 0 == main(_verify(ledger, "--witness", keys, "--quorum", "1"))
        _cosign(ledger, W2, size=20)
        assert 0 == main(_verify(ledger, "--witness", keys))

    def test_one_key_under_two_names_is_not_a_quorum_of_two(
        self, ledger: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """W1's Ed25519 key also given under another name, both cosigning: not a quorum of 2
        but a usage error (exit 2): one public key is one witness."""
        twin = Cosigner("witness.test/twin", W1.seed)
        _cosign(ledger, twin, size=20)
        pub = ledger.with_name(ledger.name + ".key.pub")
        argv = _verify(ledger, "--key", pub, "--witness", W1.key, "--witness", twin.key)
        assert 2 == main(argv)
        assert "given twice" in capsys.readouterr().err

    def test_failure_names_the_missing_witness(
        self, ledger: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Quorum 2 of W1, W2 with only W1's cosignature exits 1 naming W2."""
        assert 1 == main(_verify(ledger, "--witness", W1.key, "--witness", W2.key))
        err = capsys.readouterr().err
        assert "witness.test/w2" in err
        assert "INVALID" in err

    def test_audit_verified_records_the_witnesses(self, ledger: Path) -> None:
        """audit.verified records the witness keys, the quorum and each chain's witnessed size."""
        assert 0 == main(_verify(ledger, "--witness", W1.key))
        db = SqliteLedger(ledger, read_only=True, create=False)
        last = list(db.read("audit"))[-1]
        db.close()
        data = orjson.loads(last.body)["data"]
        assert [str(W1.key)] == data["witnesses"]
        assert 1 == data["quorum"]
        assert 20 == data["chains"][CHAIN]["witnessed"]
        assert "PRIVATE" not in last.body.decode()

    def test_checkpoint_file_must_carry_the_quorum(
        self, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--checkpoint files given with --witness need the quorum too (exit 1 otherwise)."""
        db = SqliteLedger(ledger, read_only=True, create=False)
        note = db.checkpoints(CHAIN)[1].note  # size 20
        db.close()
        plain, cosigned = tmp_path / "plain.txt", tmp_path / "cosigned.txt"
        plain.write_text(note)
        cosigned.write_text(note + W1.cosign(note_parts(note)[0], TIME) + "\n")
        pub = ledger.with_name("ledger.db.key.pub")
        args = _verify(ledger, "--key", pub, "--witness", W1.key)
        assert 0 == main([*args, "--checkpoint", str(cosigned)])
        capsys.readouterr()
        assert 1 == main([*args, "--checkpoint", str(plain)])
        assert "witness.test/w1" in capsys.readouterr().err


class TestProofs:
    """`prove` bundles carry cosignatures; `verify-proof --witness` checks them."""

    def test_prove_picks_the_cosigned_checkpoint(
        self, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """prove uses the latest cosigned checkpoint (20, not 25); verify-proof --witness
        prints the witness and time; a quorum the bundle lacks exits 1 naming the witness."""
        bundle = tmp_path / "proof.json"
        prove = ["prove", "--ledger", f"sqlite:///{ledger}", "--chain", CHAIN, "--seq", "3"]
        assert 0 == main([*prove, "-o", str(bundle)])
        assert 20 == orjson.loads(bundle.read_text())["tree_size"]
        pub = str(ledger.with_name("ledger.db.key.pub"))
        capsys.readouterr()
        assert 0 == main(["verify-proof", str(bundle), "--key", pub, "--witness", str(W1.key)])
        out = capsys.readouterr().out
        assert "cosigned by witness witness.test/w1" in out
        assert "2026-01-01T00:00:00Z" in out
        both = ["--witness", str(W1.key), "--witness", str(W2.key)]
        assert 1 == main(["verify-proof", str(bundle), "--key", pub, *both])
        assert "witness.test/w2" in capsys.readouterr().err
        assert 0 == main(["verify-proof", str(bundle), "--key", pub, *both, "--quorum", "1"])

    def test_prove_witnessed_without_cosignature(self, ledger: Path) -> None:
        """prove --witnessed for a record no cosigned checkpoint covers exits 2."""
        prove = ["prove", "--ledger", f"sqlite:///{ledger}", "--chain", CHAIN, "--seq", "22"]
        assert 0 == main(prove)
        assert 2 == main([*prove, "--witnessed"])

    def test_consistency_accepts_cosigned_notes(self, ledger: Path, tmp_path: Path) -> None:
        """consistency between two checkpoint files still works when they carry cosignatures."""
        db = SqliteLedger(ledger, read_only=True, create=False)
        notes = [c.note for c in db.checkpoints(CHAIN)]
        db.close()
        old, new = tmp_path / "old.txt", tmp_path / "new.txt"
        old.write_text(notes[0] + W1.cosign(note_parts(notes[0])[0], TIME) + "\n")
        new.write_text(notes[-1] + W2.cosign(note_parts(notes[-1])[0], TIME) + "\n")
        pub = str(ledger.with_name("ledger.db.key.pub"))
        args = ["consistency", str(old), str(new), "--ledger", f"sqlite:///{ledger}"]
        assert 0 == main([*args, "--key", pub])


# -- any altered byte of a stored cosignature or cosigned body --------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger whose checkpoint at 20 is cosigned by W1 (trusted) and OTHER (not)."""
    path = tmp_path_factory.mktemp("cosigned") / "ledger.db"
    _fill(path, 25)
    _cosign(path, W1, OTHER, size=20)
    return path


def _rows(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(str(path))
    try:
        return [(b, ln) for b, ln in conn.execute("SELECT body, line FROM cosignatures")]
    finally:
        conn.close()


def _well_formed(note: str) -> bool:
    try:
        note_parts(note)
    except AuditError:
        return False
    return True


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    column=st.sampled_from(["line", "body"]),
    trusted=st.booleans(),
    index=st.integers(min_value=0, max_value=10_000),
    mask=st.integers(min_value=1, max_value=127),  # ASCII stays text (a TEXT column)
)
def test_any_altered_byte(
    template: Path, column: str, trusted: bool, index: int, mask: int
) -> None:
    """Flipping any byte of a stored cosignature line or cosigned body: verify --witness W1
    exits 1, except for a change the rule says cannot matter (OTHER's row, still well formed;
    W1's line still decoding to the same cosignature)."""
    where = Path(tempfile.mkdtemp())
    try:
        path = where / "ledger.db"
        shutil.copy(template, path)
        shutil.copy(template.with_name("ledger.db.key.pub"), where / "ledger.db.key.pub")
        rows = _rows(path)
        w1_body, w1_line = next((b, ln) for b, ln in rows if "witness.test/w1" in ln)
        _, other_line = next((b, ln) for b, ln in rows if "witness.test/other" in ln)
        line = w1_line if trusted else other_line
        raw = bytearray((w1_body if column == "body" else line).encode())
        raw[index % len(raw)] ^= mask
        try:
            new = raw.decode("utf-8")
        except UnicodeDecodeError:
            assume(False)
            return
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("DROP TRIGGER cosignatures_no_update")
        conn.execute(f"UPDATE cosignatures SET {column} = ? WHERE line = ?", (new, line))  # noqa: S608
        conn.close()
        expected = _rule(column, trusted, w1_body, w1_line, other_line, new)
        event(f"{column} of {'W1' if trusted else 'OTHER'}: exit {expected}")
        assert expected == main(_verify(path, "--witness", W1.key))
    finally:
        shutil.rmtree(where)


def _rule(column: str, trusted: bool, body: str, w1_line: str, other_line: str, new: str) -> int:
    """The exact rule: 0 (valid) or 1 (invalid) for the row of W1 (``trusted``) or OTHER
    with ``column`` changed to ``new``."""
    if column == "body":
        try:
            parsed = Checkpoint.parse(new)
        except AuditError:
            return 1  # a row that is no checkpoint: edited outside workflow-audit
        if parsed.size != 20 or trusted:
            return 1  # W1's cosignature cannot verify over other text (its own group)
        return 0 if _well_formed(unsigned_note(new, [other_line])) else 1
    lines = [new, other_line] if trusted else [w1_line, new]
    if not _well_formed(unsigned_note(body, lines)):
        return 1  # the note they form is malformed: a cosignature line was altered
    if not trusted:
        return 0  # OTHER is not trusted: its line does not count either way
    try:
        after, before = parse_cosignature(new), parse_cosignature(w1_line)
    except AuditError:
        return 1  # no longer a cosignature: W1's is missing
    same = (after.name, after.key_id, after.timestamp, after.signature) == (
        before.name,
        before.key_id,
        before.timestamp,
        before.signature,
    )
    return 0 if same else 1  # the same cosignature in other base64 (padding bits)


# -- live: appends and anchoring while verify runs ----------------------------------------


class _Writers:
    """Writer processes (tests/core/_writer.py) appending until stopped."""

    def __init__(self, path: Path, n: int) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).parents[2]),
            "WORKFLOW_AUDIT_CHECKPOINT_EVERY": "16",
        }
        writer = Path(__file__).with_name("_writer.py")
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(writer), str(path), f"w{i}", str(10**9), "1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            for i in range(n)
        ]
        for proc in self.procs:  # each has appended once: then drain their pipes
            assert proc.stdout is not None
            assert proc.stdout.readline()
            threading.Thread(target=proc.stdout.read, daemon=True).start()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)


@pytest.fixture
def live(
    ledger_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, LocalWitness]]:
    """3,000 records, a witness that cosigned them, 2 writers appending, and an anchor
    thread asking the witness again and again."""
    monkeypatch.setattr(_parallel, "MIN_RECORDS_PER_JOB", 1_000)
    config = AuditConfig(ledger_url=f"sqlite:///{ledger_file}", actor=("service", "tests"))
    with AuditTrail(config) as trail:
        for _ in range(6):
            trail.record_many([Event(type="task.succeeded", data={"i": i}) for i in range(500)])
    witness = LocalWitness.start(tmp_path, log_key(ledger_file), "witness.test/live")
    assert 1 == anchor(ledger_file, [witness]).cosignatures
    writers = _Writers(ledger_file, 2)
    stop = threading.Event()
    rounds: list[Any] = []

    def anchoring() -> None:
        while not stop.is_set():
            rounds.append(anchor(ledger_file, [witness]))

    thread = threading.Thread(target=anchoring, daemon=True)
    thread.start()
    try:
        yield ledger_file, witness
    finally:
        stop.set()
        thread.join(timeout=120)
        writers.stop()
        witness.close()
    assert sum(r.cosignatures for r in rounds) > 0  # the anchor kept cosigning meanwhile


def test_live_verify_with_witness(
    live: tuple[Path, LocalWitness], capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --witness (1 and 2 jobs) exits 0 on each of 16 runs while writers append and
    the anchor gets new checkpoints cosigned."""
    path, witness = live
    failures = []
    for jobs in itertools.islice(itertools.cycle(["1", "2"]), 16):
        code = main(_verify(path, "--witness", witness.key, "--jobs", jobs))
        out = capsys.readouterr()
        if code != 0:
            failures.append(f"--jobs {jobs}: {code}: {out.err.strip()[:400]}")
    assert [] == failures


class TestCheckpointCommand:
    """`workflow-audit checkpoint` asks the witnesses of WORKFLOW_AUDIT_WITNESSES."""

    def test_prints_the_cosigned_note(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The checkpoint printed carries the witness's cosignature, stored in the ledger."""
        path = tmp_path / "ledger.db"
        _fill(path, 5)
        witness = LocalWitness.start(tmp_path, log_key(path), "witness.test/cli")
        try:
            monkeypatch.setenv("WORKFLOW_AUDIT_WITNESSES", witness.spec)
            assert 0 == main(["checkpoint", "--ledger", f"sqlite:///{path}", "--chain", CHAIN])
        finally:
            witness.close()
        printed = capsys.readouterr().out
        assert [witness.key.name] == [
            parse_cosignature(line).name for line in note_parts(printed)[1][1:]
        ]
        assert 0 == main([*_verify(path), "--witness", str(witness.key), "--quorum", "1"])

    def test_a_witness_down_is_a_warning(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A witness that does not answer: the checkpoint is still signed (exit 0), and
        standard error says the exchange failed."""
        path = tmp_path / "ledger.db"
        _fill(path, 5)
        down = LocalWitness.down(tmp_path, "witness.test/down")
        monkeypatch.setenv("WORKFLOW_AUDIT_WITNESSES", down.spec)
        monkeypatch.setenv("WORKFLOW_AUDIT_WITNESS_TIMEOUT", "2")
        assert 0 == main(["checkpoint", "--ledger", f"sqlite:///{path}", "--chain", CHAIN])
        out, err = capsys.readouterr()
        assert 1 == len(note_parts(out)[1])  # the log's signature only
        assert "1 witness exchange(s) failed" in err

    def test_a_malformed_witness_is_a_usage_error(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A malformed WORKFLOW_AUDIT_WITNESSES entry: exit 2, named, no traceback."""
        path = tmp_path / "ledger.db"
        _fill(path, 2)
        monkeypatch.setenv("WORKFLOW_AUDIT_WITNESSES", "http://127.0.0.1:9")
        assert 2 == main(["checkpoint", "--ledger", f"sqlite:///{path}"])
        assert "Traceback" not in capsys.readouterr().err


# -- review round 2 ------------------------------------------------------------------------


class TestReviewed:
    def test_prove_matches_cosignatures_by_the_whole_body(
        self, ledger: Path, tmp_path: Path
    ) -> None:
        """A cosignature of another origin's checkpoint with the size and root of the
        latest (25) is not attached to it: prove takes the one cosigned at 20."""
        db = SqliteLedger(ledger)
        stored = db.checkpoints(CHAIN)[-1]
        genuine = Checkpoint.parse(note_parts(stored.note)[0])
        other = Checkpoint("elsewhere.example/log/default", genuine.size, genuine.root).text()
        db.add_cosignature(
            StoredCosignature(CHAIN, genuine.size, other, W1.cosign(other, TIME), "")
        )
        db.close()
        out = tmp_path / "bundle.json"
        prove = ["prove", "--ledger", f"sqlite:///{ledger}", "--chain", CHAIN, "--seq", "3"]
        assert 0 == main([*prove, "-o", str(out)])
        assert 20 == orjson.loads(out.read_bytes())["tree_size"]

    @pytest.mark.parametrize("jobs", ["-1", "-8"])
    def test_negative_jobs_is_a_usage_error(self, ledger: Path, jobs: str) -> None:
        """--jobs below 0 exits 2 (0 still means one process per CPU)."""
        assert 2 == main(_verify(ledger, "--jobs", jobs))
        assert 0 == main(_verify(ledger, "--jobs", "0"))

    @pytest.mark.parametrize("source", ["/dev/zero", "fifo", "big"])
    def test_witness_key_file_is_read_bounded(
        self, ledger: Path, tmp_path: Path, source: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--witness /dev/zero, a FIFO or a huge file: exit 2 at once, never read for ever."""
        path = Path(source)
        if source == "fifo":
            path = tmp_path / "fifo"
            os.mkfifo(path)
        elif source == "big":
            path = tmp_path / "big"
            path.write_text(f"{W1.key}\n" * 2000)
        capsys.readouterr()
        assert 2 == main(_verify(ledger, "--witness", path))
        assert "--witness" in capsys.readouterr().err
