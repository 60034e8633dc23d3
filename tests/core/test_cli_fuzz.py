"""Every file the CLI reads, fuzzed: the documented exit code (0, 1 or 2), never a traceback.

The commands run in-process through ``audit_core.cli.main`` (fast enough for Hypothesis);
a few real ``workflow-audit`` processes check the same at the console-script level. Inputs:
checkpoint files, proof bundles, verifier and signer key files, and ledger rows whose
columns hold the wrong SQLite type (anyone with write access to the file can store TEXT in
an INTEGER column).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_core import AuditConfig, AuditTrail
from audit_core._cosign import Cosigner, witnessed
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.proofs import make_inclusion_bundle
from tests.core._cli import Run

CHAIN = "default"
SIZE = 12
EXIT_CODES = {0, 1, 2}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Template:
    """A ledger with checkpoints, its keys, a signed checkpoint file and a proof bundle."""

    root: Path
    ledger: Path
    pub: Path  # the log's verifier key
    witness: Path  # a witness private key, 0x04 (its public key at witness.key.pub)
    checkpoint: str  # the latest stored checkpoint note
    old_checkpoint: str  # the first one
    bundle: dict[str, Any]  # inclusion proof of seq 3


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Build the template ledger once per module (each example works on a copy)."""
    root = tmp_path_factory.mktemp("fuzz-template")
    ledger = root / "ledger.db"
    config = AuditConfig(
        ledger_url=f"sqlite:///{ledger}", actor=("service", "fuzz"), checkpoint_every=4
    )
    with AuditTrail(config) as trail:
        for i in range(SIZE):
            trail.record("task.started", {"i": i}, subject={"dag_id": "d", "try_number": i})
    witness = ["witness", "keygen", "witness.example/w", "--out", str(root / "witness.key")]
    assert 0 == main(witness)
    db = SqliteLedger(ledger)
    notes = [c.note for c in db.checkpoints(CHAIN)]
    bundle = make_inclusion_bundle(db, CHAIN, 3)
    db.close()
    return Template(
        root=root,
        ledger=ledger,
        pub=root / "ledger.db.key.pub",
        witness=root / "witness.key",
        checkpoint=notes[-1],
        old_checkpoint=notes[0],
        bundle=bundle,
    )


def _documented(run: Run, *, allowed: set[int] = EXIT_CODES) -> None:
    """The exit code is a documented one; an error is one clear line, never a traceback."""
    assert "Traceback" not in run.out + run.err
    assert run.code in allowed, run
    if run.code == 2:  # warnings may come first; the error is the last line, and one line
        lines = run.err.strip().splitlines()
        assert lines, run
        assert lines[-1].startswith("workflow-audit: error: "), run.err
        assert 1 == sum(line.startswith("workflow-audit: error: ") for line in lines), run.err


@pytest.fixture
def workdir(template: Template) -> Iterator[Any]:
    """A factory of fresh copies of the template directory (one per Hypothesis example)."""
    made: list[Path] = []

    def fresh() -> Path:
        where = Path(tempfile.mkdtemp(prefix="fuzz-"))
        made.append(where)
        for item in template.root.iterdir():
            if item.is_file():
                shutil.copy2(item, where / item.name)
        return where

    yield fresh
    for where in made:
        shutil.rmtree(where, ignore_errors=True)


# -- strategies ----------------------------------------------------------------------------


def _mutations(base: str) -> st.SearchStrategy[str]:
    """``base`` with one to three characters replaced, inserted or deleted, or cut short."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        text = base
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, max(len(text) - 1, 0)))
            op = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
            char = draw(st.characters(codec="utf-8") | st.sampled_from("\n +\u2014\u00a0="))
            if op == "replace":
                text = text[:at] + char + text[at + 1 :]
            elif op == "insert":
                text = text[:at] + char + text[at:]
            elif op == "delete":
                text = text[:at] + text[at + 1 :]
            else:
                text = text[:at]
        return text

    return mutate()


def _note_like() -> st.SearchStrategy[str]:
    """Text shaped like a signed checkpoint, with arbitrary parts."""
    line = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=30)
    size = st.integers(-5, 2**70).map(str) | line
    root = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | line
    signature = st.tuples(line, st.binary(max_size=80)).map(
        lambda t: f"\u2014 {t[0]} {base64.b64encode(t[1]).decode()}"
    )
    return st.builds(
        lambda o, s, r, sigs: f"{o}\n{s}\n{r}\n\n" + "".join(x + "\n" for x in sigs),
        line,
        size,
        root,
        st.lists(signature | line, max_size=3),
    )


def _file_bytes(template_text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Raw bytes, or text (mutated or made up) encoded as UTF-8."""
    return st.binary(max_size=200) | template_text.map(lambda t: t.encode("utf-8", "replace"))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson writes; bigger numbers come as raw text
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)

sql_values = (
    st.text(max_size=12)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
)

#: (table, columns) of the ledger's tables, and the commands that read them.
TABLES = {
    "records": ("chain", "seq", "hash", "body"),
    "checkpoints": ("chain", "size", "root", "note", "created"),
    "merkle_subtrees": ("chain", "last", "hashes"),
}


def _set_cell(path: Path, table: str, column: str, row: int, value: object) -> None:
    """Store ``value`` in one cell, behind the ledger's back (its triggers dropped)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        # merkle_subtrees is WITHOUT ROWID: address its rows by their primary key's "last"
        key = "last" if table == "merkle_subtrees" else "rowid"
        rowids = [r[0] for r in conn.execute(f"SELECT {key} FROM {table}")]  # noqa: S608
        target = rowids[row % len(rowids)]
        with contextlib.suppress(sqlite3.IntegrityError):  # a duplicate key: row left as is
            conn.execute(
                f"UPDATE {table} SET {column} = ? WHERE {key} = ?",  # noqa: S608 (fixed names)
                (value, target),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


# -- tests ---------------------------------------------------------------------------------


class TestCheckpointFiles:
    """`verify --checkpoint`, `consistency` and `cosign` on any checkpoint file."""

    @FUZZ
    @given(data=st.data())
    def test_verify_checkpoint(self, cli: Any, template: Template, workdir: Any, data: Any) -> None:
        """verify --key --checkpoint F exits 0, 1 or 2 for any F, without a traceback."""
        where = workdir()
        raw = data.draw(_file_bytes(_mutations(template.checkpoint) | _note_like()))
        (where / "cp.txt").write_bytes(raw)
        run = cli(
            "verify",
            "--ledger",
            where / "ledger.db",
            "--key",
            where / "ledger.db.key.pub",
            "--checkpoint",
            where / "cp.txt",
        )
        _documented(run)

    @FUZZ
    @given(data=st.data())
    def test_consistency(self, cli: Any, template: Template, workdir: Any, data: Any) -> None:
        """consistency OLD NEW exits 0, 1 or 2 for any two files, with or without --key."""
        where = workdir()
        old = data.draw(_file_bytes(_mutations(template.old_checkpoint) | _note_like()))
        new = data.draw(_file_bytes(_mutations(template.checkpoint)) | st.just(b""))
        (where / "old.txt").write_bytes(old)
        (where / "new.txt").write_bytes(new or template.checkpoint.encode())
        keys = ["--key", str(where / "ledger.db.key.pub")] if data.draw(st.booleans()) else []
        run = cli(
            "consistency", where / "old.txt", where / "new.txt", "--ledger", where / "ledger.db",
            *keys,
        )  # fmt: skip
        _documented(run)

    @FUZZ
    @given(data=st.data())
    def test_cosign(self, cli: Any, template: Template, workdir: Any, data: Any) -> None:
        """cosign exits 0, 1 or 2 for any checkpoint file and any witness key file; what it
        writes carries a cosignature that verifies."""
        where = workdir()
        note = data.draw(_file_bytes(_mutations(template.checkpoint)) | st.just(b""))
        (where / "cp.txt").write_bytes(note or template.checkpoint.encode())
        key = data.draw(
            st.just((where / "witness.key").read_bytes())
            | _file_bytes(_mutations((where / "witness.key").read_text()))
        )
        (where / "w.key").write_bytes(key)
        (where / "w.key").chmod(0o600)  # cosign refuses a key file others may read
        run = cli(
            "cosign", where / "cp.txt", "--witness-key", where / "w.key",
            "--key", where / "ledger.db.key.pub",
        )  # fmt: skip
        _documented(run)
        if run.code == 0:  # what cosign wrote carries the witness's valid cosignature
            key = Cosigner.parse((where / "w.key").read_text()).key
            assert [key] == [k for k, _ in witnessed((where / "cp.txt").read_text(), [key])]


class TestBundles:
    """`verify-proof` on any file."""

    @FUZZ
    @given(data=st.data())
    def test_any_bytes_or_json(self, cli: Any, template: Template, workdir: Any, data: Any) -> None:
        """verify-proof exits 1 or 2 for arbitrary bytes or JSON values, no traceback."""
        where = workdir()
        raw = data.draw(
            st.binary(max_size=100)
            | json_values.map(orjson.dumps)
            | st.sampled_from([b"1e999", b"[1e400]", b'{"format": 1' + b"0" * 400 + b"}"])
        )
        (where / "b.json").write_bytes(raw)
        _documented(cli("verify-proof", where / "b.json", "--key", where / "ledger.db.key.pub"))

    @FUZZ
    @given(data=st.data())
    def test_bundle_fields_replaced(
        self, cli: Any, template: Template, workdir: Any, data: Any
    ) -> None:
        """A real bundle with any of its fields replaced by any JSON value: 0, 1 or 2."""
        where = workdir()
        bundle = dict(template.bundle)
        for name in data.draw(st.lists(st.sampled_from(sorted(bundle)), min_size=1, max_size=3)):
            bundle[name] = data.draw(json_values)
        (where / "b.json").write_bytes(orjson.dumps(bundle))
        _documented(cli("verify-proof", where / "b.json", "--key", where / "ledger.db.key.pub"))

    def test_json_list(self, cli: Any, template: Template, workdir: Any) -> None:
        """A JSON file holding [1] is a usage error (exit 2), not a crash."""
        where = workdir()
        (where / "b.json").write_text("[1]")
        run = cli("verify-proof", where / "b.json", "--key", where / "ledger.db.key.pub")
        _documented(run, allowed={2})
        assert "not a workflow-audit/inclusion-proof/v1 bundle" in run.err


class TestKeyFiles:
    """--key, --witness and --signing-key files with any content."""

    @FUZZ
    @given(data=st.data())
    def test_verifier_key_file(self, cli: Any, template: Template, workdir: Any, data: Any) -> None:
        """verify --key F and report --key F exit 0, 1 or 2 for any F."""
        where = workdir()
        pub = (where / "ledger.db.key.pub").read_text()
        (where / "k.pub").write_bytes(data.draw(_file_bytes(_mutations(pub))))
        for command in ("verify", "report"):
            _documented(cli(command, "--ledger", where / "ledger.db", "--key", where / "k.pub"))

    @FUZZ
    @given(data=st.data())
    def test_private_key_never_echoed(
        self, cli: Any, template: Template, workdir: Any, data: Any
    ) -> None:
        """A (mutated) private key given as --key is refused without printing its seed."""
        where = workdir()
        secret = (where / "ledger.db.key").read_text().strip()
        key = data.draw(st.just(secret) | _mutations(secret))
        (where / "k.pub").write_text(key)
        run = cli("verify", "--ledger", where / "ledger.db", "--key", where / "k.pub")
        _documented(run)
        seed_b64 = secret.split("+", 4)[4]  # the name holds no "+"; the base64 may
        assert seed_b64[:12] not in run.out + run.err


class TestLedgerRows:
    """Ledger cells holding another SQLite type than their column's."""

    @FUZZ
    @given(
        table=st.sampled_from(sorted(TABLES)),
        data=st.data(),
        value=sql_values,
        row=st.integers(0, 30),
    )
    def test_reading_commands(
        self, cli: Any, workdir: Any, table: str, data: Any, value: object, row: int
    ) -> None:
        """verify (1 and 2 jobs, with and without --key), report, tail, show, export, prove
        and consistency all exit 0, 1 or 2, without a traceback."""
        where = workdir()
        db, pub = where / "ledger.db", where / "ledger.db.key.pub"
        column = data.draw(st.sampled_from(TABLES[table]))
        _set_cell(db, table, column, row, value)
        runs = [
            cli("verify", "--ledger", db),
            cli("verify", "--ledger", db, "--jobs", "2"),
            cli("verify", "--ledger", db, "--key", pub),
            cli("report", "--ledger", db, "--key", pub),
            cli("tail", "--ledger", db),
            cli("show", "--ledger", db),
            cli("export", "--ledger", db),
            cli("prove", "--ledger", db, "--chain", CHAIN, "--seq", "3", "-o", where / "p.json"),
        ]
        for run in runs:
            _documented(run)

    @pytest.mark.parametrize(
        ("table", "column", "value", "named"),
        [
            ("records", "chain", b"default", "chain id is bytes b'default'"),
            ("records", "body", 7, "seq 0"),
            ("records", "hash", "text", "seq 0"),
            ("checkpoints", "size", "four", "size str 'four'"),
            ("checkpoints", "root", "text", "root str 'text'"),
            ("checkpoints", "note", b"\x01", "note bytes b'\\x01'"),
        ],
    )
    def test_cell_of_another_type_is_named(
        self, cli: Any, workdir: Any, table: str, column: str, value: object, named: str
    ) -> None:
        """A cell of another type than its column's: verify --key exits 1 and says which."""
        where = workdir()
        db = where / "ledger.db"
        _set_cell(db, table, column, 0, value)
        run = cli("verify", "--ledger", db, "--key", where / "ledger.db.key.pub")
        _documented(run, allowed={1})
        assert named in run.err

    @pytest.mark.parametrize("value", [7, "text", 2.5])
    def test_subtree_of_another_type_fails_prove(
        self, cli: Any, workdir: Any, value: object
    ) -> None:
        """A Merkle subtree row of another type: prove exits 2 with one line naming the
        chain (subtrees are derived data: verify rebuilds its own tree from the records)."""
        where = workdir()
        db = where / "ledger.db"
        _set_cell(db, "merkle_subtrees", "hashes", 0, value)  # the node of leaves 0 and 1
        run = cli("prove", "--ledger", db, "--chain", CHAIN, "--seq", "2")  # needs it
        _documented(run, allowed={2})
        assert f"chain {CHAIN!r}" in run.err

    @pytest.mark.parametrize("value", ["two", "4x", b"\x02", 2.5])
    @pytest.mark.parametrize("seq", [2, SIZE - 1])
    def test_seq_of_another_type_is_named(
        self, cli: Any, workdir: Any, value: object, seq: int
    ) -> None:
        """A seq stored as TEXT, BLOB or REAL: verify (every --jobs) and report exit 1 and
        name the chain and the record; so does tail when that row sorts last (TEXT and BLOB
        sort after every integer), and otherwise it shows the tail as it is."""
        where = workdir()
        db = where / "ledger.db"
        conn = sqlite3.connect(str(db), isolation_level=None)
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (value, seq))
        conn.close()
        for argv in (["verify"], ["verify", "--jobs", "2"], ["verify", "--jobs", "0"], ["tail"]):
            run = cli(*argv, "--ledger", db)
            if argv == ["tail"] and isinstance(value, float):
                _documented(run, allowed={0})
                continue
            _documented(run, allowed={1})
            assert f"chain {CHAIN!r}" in run.err
            assert "seq" in run.err
        report = cli("report", "--ledger", db, "--format", "json")
        _documented(report, allowed={1})
        verdict = orjson.loads(report.out)
        assert verdict  # the report still renders, with the verdict in it
        if seq == SIZE - 1:  # the malformed row is the chain's last: its type is named
            run = cli("verify", "--ledger", db)
            assert type(value).__name__ in run.err
            assert repr(value)[:10] in run.err


class TestUsage:
    """Files that cannot be read as what they should be are usage/I-O errors (exit 2)."""

    def test_binary_checkpoint(self, cli: Any, template: Template, workdir: Any) -> None:
        """A binary file given to --checkpoint is an I/O error (exit 2) that names it."""
        where = workdir()
        (where / "cp.bin").write_bytes(bytes(range(256)))
        run = cli(
            "verify", "--ledger", where / "ledger.db", "--key", where / "ledger.db.key.pub",
            "--checkpoint", where / "cp.bin",
        )  # fmt: skip
        _documented(run, allowed={2})
        assert "cp.bin" in run.err

    def test_cosign_missing_file(self, cli: Any, template: Template, tmp_path: Path) -> None:
        """cosign on a missing file is an I/O error (exit 2) that names it."""
        missing = tmp_path / "missing.txt"
        run = cli("cosign", missing, "--witness-key", template.witness, "--key", template.pub)
        _documented(run, allowed={2})
        assert "missing.txt" in run.err


class TestConsoleScript:
    """The same inputs through real `workflow-audit` processes."""

    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("text-seq-verify", 1),
            ("text-seq-verify-jobs", 1),
            ("text-seq-report", 1),
            ("text-seq-tail", 1),
            ("binary-checkpoint", 2),
            ("bundle-list", 2),
            ("cosign-missing", 2),
            ("witness-alone", 2),
        ],
    )
    def test_exit_code_without_traceback(
        self, template: Template, workdir: Any, case: str, expected: int
    ) -> None:
        """Each reproduced crash of issue 11 now exits with its documented code, no traceback."""
        where = workdir()
        db, pub = where / "ledger.db", where / "ledger.db.key.pub"
        conn = sqlite3.connect(str(db), isolation_level=None)
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("UPDATE records SET seq = 'two' WHERE seq = ?", (SIZE - 1,))
        conn.close()
        (where / "cp.bin").write_bytes(bytes(range(256)))
        (where / "b.json").write_text("[1]")
        argv = {
            "text-seq-verify": ["verify", "--ledger", db],
            "text-seq-verify-jobs": ["verify", "--ledger", db, "--jobs", "2"],
            "text-seq-report": ["report", "--ledger", db],
            "text-seq-tail": ["tail", "--ledger", db],
            "binary-checkpoint": ["verify", "--ledger", db, "--key", pub, "--checkpoint",
                                  where / "cp.bin"],
            "bundle-list": ["verify-proof", where / "b.json", "--key", pub],
            "cosign-missing": ["cosign", where / "nope.txt", "--witness-key",
                               where / "witness.key", "--key", pub],
            "witness-alone": ["verify", "--ledger", db, "--key", pub, "--witness", pub],
        }[case]  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "audit_core.cli", *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stdout + done.stderr
        assert expected == done.returncode, done.stderr
        if expected == 2:
            assert 1 == len(done.stderr.strip().splitlines()), done.stderr
