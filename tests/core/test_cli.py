"""The ``workflow-audit`` command line: verdicts, exit codes, exports and reports."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from audit_core import AuditConfig, AuditTrail
from audit_core._merkle import root_of
from audit_core._report import EXPORT_CSV_COLUMNS
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core import _tamper

CHAIN = "default"
#: (event, subject, data, day of January 2026) of the six records ``populated`` writes.
RECORDS: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
    ("dag.started", {"dag_id": "etl"}, {}, 1),
    ("task.started", {"dag_id": "etl", "task_id": "extract", "try_number": 1}, {}, 2),
    ("task.succeeded", {"dag_id": "etl", "task_id": "extract", "try_number": 1}, {"rows": 10}, 3),
    ("task.started", {"dag_id": "ml", "task_id": "train", "try_number": 1}, {}, 4),
    (
        "task.failed",
        {"dag_id": "ml", "task_id": "train", "try_number": 1},
        {"error": {"type": "ValueError", "message": "boom"}},
        5,
    ),
    (
        "model.deployed",
        {"dag_id": "ml"},
        {"model": "churn", "auc": 0.1, "big": 1e16, "tiny": 1e-7, "name": "héllo ☃ 😀"},
        6,
    ),
]
SIZE = len(RECORDS)
FAILED = 4  # seq of the task.failed record


def ts(day: int) -> str:
    """The timestamp of the record written on ``day`` of January 2026."""
    return f"2026-01-{day:02d}T12:00:00.000000Z"


@pytest.fixture
def populated(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger file holding RECORDS in chain ``default``."""
    for event, subject, data, day in RECORDS:
        trail.record(event, data, subject=subject, ts=ts(day))
    trail.close()
    return ledger_file


def _set_seq(path: Path, chain: str, seq: int, value: object) -> None:
    """Store ``value`` (any SQLite type) as record ``seq``'s seq, behind the ledger's back."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("UPDATE records SET seq = ? WHERE chain = ? AND seq = ?", (value, chain, seq))
    finally:
        conn.close()


def head_of(path: Path, seq: int = SIZE - 1) -> str:
    """The stored hash of record ``seq``, hex."""
    return _tamper.row(path, CHAIN, seq)[0].hex()


def root_hex(path: Path) -> str:
    """RFC 9162 Merkle root over the stored record hashes, hex."""
    return root_of([bytes.fromhex(head_of(path, s)) for s in range(SIZE)]).hex()


def exported(cli: Any, path: Path, *args: str) -> list[dict[str, Any]]:
    """``export --format jsonl`` with ``args``, parsed line by line."""
    run = cli("export", "--ledger", path, *args)
    assert 0 == run.code
    return [json.loads(line) for line in run.out.splitlines()]


class TestVerifyCommand:
    """``workflow-audit verify``."""

    def test_valid_ledger_prints_chain_size_and_head(self, cli: Any, populated: Path) -> None:
        """A valid ledger exits 0 and prints each chain with its size, head hash, Merkle root
        and checkpoint count, and that signatures were not checked without --key."""
        run = cli("verify", "--ledger", populated)
        assert 0 == run.code
        first, second = run.out.splitlines()
        assert f"valid: chain 'default': {SIZE} records, head {head_of(populated)}" == first
        assert second.endswith("1 checkpoint(s) matched (signatures NOT checked: pass --key)")
        assert root_hex(populated) in second

    def test_valid_ledger_as_json(self, cli: Any, populated: Path) -> None:
        """--json prints the verdict, the record count and each chain's head."""
        run = cli("verify", "--ledger", populated, "--json")
        assert 0 == run.code
        expected = {
            "valid": True,
            "ledger": str(populated),
            "records": SIZE,
            "signatures_checked": False,
            "chains": [
                {
                    "chain": CHAIN,
                    "size": SIZE,
                    "head": head_of(populated),
                    "root": root_of(
                        [bytes.fromhex(head_of(populated, s)) for s in range(SIZE)]
                    ).hex(),
                    "checkpoints": 1,
                }
            ],
        }
        assert expected == json.loads(run.out)

    def test_tampered_ledger_names_the_record(self, cli: Any, populated: Path) -> None:
        """A tampered record exits 1; stderr names chain and seq, expected and found."""
        old = head_of(populated, 2)
        _tamper.set_hash(populated, CHAIN, 2, bytes(32))
        run = cli("verify", "--ledger", populated)
        assert 1 == run.code
        assert "" == run.out
        assert "INVALID chain 'default' seq 2:" in run.err
        assert f"expected: {old}\n" in run.err
        assert f"found:    {'00' * 32}\n" in run.err
        assert "What to do:" in run.err

    def test_tampered_ledger_as_json(self, cli: Any, populated: Path) -> None:
        """--json on a tampered ledger gives valid false with reason, chain, seq, expected and
        found."""
        old = head_of(populated, 2)
        _tamper.set_hash(populated, CHAIN, 2, bytes(32))
        run = cli("verify", "--ledger", populated, "--json")
        assert 1 == run.code
        doc = json.loads(run.out)
        assert False is doc["valid"]
        error = {k: doc["error"][k] for k in ("reason", "chain", "seq", "expected", "found")}
        assert {
            "reason": "hash",
            "chain": CHAIN,
            "seq": 2,
            "expected": old,
            "found": "00" * 32,
        } == error

    def test_truncated_ledger_fails_expect_size(self, cli: Any, populated: Path) -> None:
        """--expect-size with --chain exits 1 when the last record was cut off."""
        _tamper.delete(populated, CHAIN, SIZE - 1)
        assert 1 == cli("verify", "--ledger", populated).code  # the stored checkpoint
        _tamper.cover_tracks(populated, CHAIN)
        assert 0 == cli("verify", "--ledger", populated).code
        run = cli("verify", "--ledger", populated, "--chain", CHAIN, "--expect-size", str(SIZE))
        assert 1 == run.code
        assert f"expected {SIZE} records, found {SIZE - 1}" in run.err

    def test_truncated_ledger_fails_expect_head(self, cli: Any, populated: Path) -> None:
        """--expect-head with --chain exits 1 when the last record was cut off."""
        head = head_of(populated)
        _tamper.delete(populated, CHAIN, SIZE - 1)
        _tamper.cover_tracks(populated, CHAIN)
        run = cli("verify", "--ledger", populated, "--chain", CHAIN, "--expect-head", head)
        assert 1 == run.code
        assert f"expected: {head}\n" in run.err

    def test_matching_expectations_pass(self, cli: Any, populated: Path) -> None:
        """--expect-size and --expect-head that match the chain exit 0."""
        head = head_of(populated)
        run = cli(
            "verify",
            "--ledger",
            populated,
            "--chain",
            CHAIN,
            "--expect-size",
            str(SIZE),
            "--expect-head",
            head,
        )
        assert 0 == run.code

    def test_expect_size_needs_one_chain(self, cli: Any, populated: Path) -> None:
        """--expect-size without --chain is a usage error (exit 2)."""
        run = cli("verify", "--ledger", populated, "--expect-size", str(SIZE))
        assert 2 == run.code
        assert "need exactly one --chain" in run.err

    def test_named_chain_without_records_fails(self, cli: Any, populated: Path) -> None:
        """--chain naming a chain that has no records exits 1."""
        run = cli("verify", "--ledger", populated, "--chain", "nope")
        assert 1 == run.code
        assert "'nope' has no records" in run.err

    def test_missing_ledger_is_an_error(self, cli: Any, tmp_path: Path) -> None:
        """A ledger file that does not exist exits 2 and says where it looked."""
        missing = tmp_path / "missing.db"
        run = cli("verify", "--ledger", missing)
        assert 2 == run.code
        assert f"workflow-audit: error: no ledger at {missing}" in run.err
        assert not missing.exists()

    def test_file_that_is_not_a_ledger_is_an_error(self, cli: Any, tmp_path: Path) -> None:
        """A file that is not a SQLite database exits 2 with the reason."""
        bogus = tmp_path / "notes.db"
        bogus.write_text("these are not records\n" * 100)
        run = cli("verify", "--ledger", bogus)
        assert 2 == run.code
        assert "not a database" in run.err

    def test_no_command_is_a_usage_error(self, cli: Any) -> None:
        """Calling without a command prints help and exits 2."""
        run = cli()
        assert 2 == run.code
        assert "usage: workflow-audit" in run.err

    def test_log_key_as_witness_is_a_usage_error(self, cli: Any, populated: Path) -> None:
        """--witness with a log's Ed25519 (0x01) key exits 2 saying it is not a witness key."""
        pub = populated.with_name(populated.name + ".key.pub")
        run = cli("verify", "--ledger", populated, "--key", pub, "--witness", pub)
        assert 2 == run.code
        assert "0x01" in run.err
        assert "witness keygen" in run.err
        assert "Traceback" not in run.err

    @pytest.mark.parametrize("quorum", ["2", "-1"])
    def test_quorum_out_of_range_is_a_usage_error(
        self, cli: Any, populated: Path, tmp_path: Path, quorum: str
    ) -> None:
        """--quorum beyond the witnesses given (or below 0) exits 2."""
        assert 0 == cli("witness", "keygen", "w.example/w", "--out", tmp_path / "w.key").code
        run = cli(
            "verify", "--ledger", populated, "--witness", f"{tmp_path}/w.key.pub",
            "--quorum", quorum,
        )  # fmt: skip
        assert 2 == run.code
        assert "quorum" in run.err
        assert "Traceback" not in run.err

    @pytest.mark.parametrize("value", ["two", b"\x02"])
    def test_seq_stored_as_text_names_the_record(
        self, cli: Any, populated: Path, value: object
    ) -> None:
        """A last row whose seq is TEXT or BLOB: verify (every --jobs) exits 1 naming the
        chain, the seq expected and what was found, never a TypeError."""
        _set_seq(populated, CHAIN, SIZE - 1, value)
        for jobs in ("1", "2", "0"):
            run = cli("verify", "--ledger", populated, "--jobs", jobs)
            assert 1 == run.code
            assert f"chain {CHAIN!r}: expected seq {SIZE - 1}, found a row whose seq is" in run.err
            assert f"{type(value).__name__} {value!r}" in run.err
            assert f"expected: {SIZE - 1}" in run.err


class TestExitCodes:
    """The documented exit codes, all of them in --help."""

    def test_epilog_lists_every_exit_code(self, cli: Any) -> None:
        """--help lists each exit code of the module docstring, 3 (ship pending) included."""
        import audit_core.cli as module

        documented = [
            line[2:].split(":", 1)[0]
            for line in (module.__doc__ or "").splitlines()
            if line.startswith("- ") and line[2:3].isdigit()
        ]
        assert 0 == cli("--help").code
        assert {"0", "1", "2", "3"} <= set(documented)
        assert len(set(documented)) == len(documented)
        help_text = " ".join(subprocess.run(
            [sys.executable, "-m", "audit_core.cli", "--help"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split())  # fmt: skip
        for code in documented:
            assert f"{code}: " in help_text
        assert "3: ship gave up with records still pending" in help_text


class TestExportCommand:
    """``workflow-audit export``."""

    def test_jsonl_hashes_recompute_with_rfc8785(self, cli: Any, populated: Path) -> None:
        """Every JSON line, without ``hash``, canonicalized by the rfc8785 package and hashed as
        SHA-256(0x00 || bytes), gives that line's hash (numbers read as IEEE 754 doubles,
        as RFC 8785 §3.2.2.3 reads them)."""
        run = cli("export", "--ledger", populated, "--format", "jsonl")
        assert 0 == run.code
        lines = run.out.splitlines()
        assert SIZE == len(lines)
        for line in lines:
            value = json.loads(line, parse_int=float)
            claimed = value.pop("hash")
            body = rfc8785.dumps(value)
            assert claimed == hashlib.sha256(b"\x00" + body).hexdigest()

    def test_jsonl_records_are_the_stored_ones(self, cli: Any, populated: Path) -> None:
        """The exported records are the stored records, in seq order, with their hashes."""
        records = exported(cli, populated)
        assert list(range(SIZE)) == [r["seq"] for r in records]
        assert [head_of(populated, s) for s in range(SIZE)] == [r["hash"] for r in records]
        assert [e for e, *_ in RECORDS] == [r["event"] for r in records]

    def test_csv_has_a_header_and_a_row_per_record(self, cli: Any, populated: Path) -> None:
        """CSV export starts with the column header and holds one row per record."""
        run = cli("export", "--ledger", populated, "--format", "csv")
        assert 0 == run.code
        rows = list(csv.reader(io.StringIO(run.out)))
        assert list(EXPORT_CSV_COLUMNS) == rows[0]
        assert SIZE == len(rows) - 1
        failed = dict(zip(rows[0], rows[1 + FAILED], strict=True))
        assert {"event": "task.failed", "pipeline": "ml", "task": "train"} == {
            k: failed[k] for k in ("event", "pipeline", "task")
        }
        assert {"error": {"type": "ValueError", "message": "boom"}} == json.loads(failed["data"])

    @pytest.mark.parametrize(
        ("args", "seqs"),
        [
            (["--event", "task.*"], [1, 2, 3, 4]),
            (["--event", "dag.started", "--event", "model.*"], [0, 5]),
            (["--dag", "ml"], [3, 4, 5]),
            (["--dag", "etl", "--event", "task.succeeded"], [2]),
            (["--since", "2026-01-03", "--until", "2026-01-05"], [2, 3]),
            (["--since", ts(5)], [4, 5]),
            (["--until", "2026-01-02T12:00:00Z"], [0]),
            (["--dag", "nope"], []),
        ],
    )
    def test_filters_select_records(
        self, cli: Any, populated: Path, args: list[str], seqs: list[int]
    ) -> None:
        """--event patterns, --dag and --since/--until (inclusive/exclusive) select records."""
        assert seqs == [r["seq"] for r in exported(cli, populated, *args)]

    def test_filters_apply_to_csv(self, cli: Any, populated: Path) -> None:
        """Filters select the same records in CSV as in JSON lines."""
        run = cli("export", "--ledger", populated, "--format", "csv", "--event", "task.*")
        rows = list(csv.DictReader(io.StringIO(run.out)))
        assert ["1", "2", "3", "4"] == [r["seq"] for r in rows]

    def test_output_file(self, cli: Any, populated: Path, tmp_path: Path) -> None:
        """-o writes the export to a file instead of standard output."""
        target = tmp_path / "out.jsonl"
        run = cli("export", "--ledger", populated, "-o", target)
        assert (0, "") == (run.code, run.out)
        assert SIZE == len(target.read_text(encoding="utf-8").splitlines())

    def test_unparseable_time_is_a_usage_error(self, cli: Any, populated: Path) -> None:
        """--since with a value that is not a time exits 2 naming the value."""
        done = cli("export", "--ledger", populated, "--since", "yesterday-ish")
        assert 2 == done.code
        assert "yesterday-ish" in done.err


class TestReportCommand:
    """``workflow-audit report``."""

    def test_markdown_report(self, cli: Any, populated: Path) -> None:
        """The Markdown report has the verdict, the head hash, counts and the failure."""
        run = cli("report", "--ledger", populated, "--format", "md")
        assert 0 == run.code
        assert "- Verification: **valid**\n" in run.out
        assert f"| default | {SIZE} | `{head_of(populated)}` |" in run.out
        for line in ("| task.started | 2 |", "| task.failed | 1 |", "| ml | 3 |", "| etl | 3 |"):
            assert line in run.out
        assert "## Failures (1)" in run.out
        assert f"| default#{FAILED} | {ts(5)} | ml | train | 1 | ValueError: boom |" in run.out

    def test_csv_report(self, cli: Any, populated: Path) -> None:
        """The CSV report has the verdict, the head hash, counts and the failure."""
        run = cli("report", "--ledger", populated, "--format", "csv")
        assert 0 == run.code
        rows = list(csv.reader(io.StringIO(run.out)))
        assert ["section", "key", "value"] == rows[0]
        for row in (
            ["verification", "verdict", "valid"],
            ["head", CHAIN, f"{SIZE} {head_of(populated)}"],
            ["total", "records", str(SIZE)],
            ["event", "task.started", "2"],
            ["event", "task.failed", "1"],
            ["pipeline", "ml", "3"],
            ["outcome", "failed", "1"],
            ["failure", f"default#{FAILED}", f"{ts(5)} ml.train try 1: ValueError: boom"],
        ):
            assert row in rows

    def test_json_report(self, cli: Any, populated: Path) -> None:
        """The JSON report has the verdict, the head hash, counts and the failure."""
        run = cli("report", "--ledger", populated, "--format", "json")
        assert 0 == run.code
        doc = json.loads(run.out)
        assert {
            "verdict": "valid",
            "signatures_checked": False,
            "chains": [
                {
                    "chain": CHAIN,
                    "size": SIZE,
                    "head": head_of(populated),
                    "root": root_hex(populated),
                    "checkpoints": 1,
                }
            ],
            "error": None,
        } == doc["verification"]
        assert SIZE == doc["records"]
        assert {
            "dag.started": 1,
            "model.deployed": 1,
            "task.failed": 1,
            "task.started": 2,
            "task.succeeded": 1,
        } == doc["by_event"]
        assert {"etl": 3, "ml": 3} == doc["by_pipeline"]
        assert [
            {
                "chain": CHAIN,
                "seq": FAILED,
                "ts": ts(5),
                "event": "task.failed",
                "pipeline": "ml",
                "task": "train",
                "try": 1,
                "error": "ValueError: boom",
            }
        ] == doc["failures"]

    @pytest.mark.parametrize(
        ("fmt", "verdict"),
        [("md", "**INVALID**"), ("csv", "verification,verdict,INVALID"), ("json", '"INVALID"')],
    )
    def test_tampered_ledger_report_is_invalid(
        self, cli: Any, populated: Path, fmt: str, verdict: str
    ) -> None:
        """On a tampered ledger the report exits 1 and its verdict says INVALID."""
        _tamper.edit_body(populated, CHAIN, 2, lambda r: {**r, "data": {"rows": 11}})
        run = cli("report", "--ledger", populated, "--format", fmt)
        assert 1 == run.code
        assert verdict in run.out
        assert "seq 2" in run.out

    def test_report_on_seq_stored_as_text_is_invalid(self, cli: Any, populated: Path) -> None:
        """A row whose seq is TEXT: the report renders, its verdict names the record, exit 1."""
        _set_seq(populated, CHAIN, SIZE - 1, "two")
        run = cli("report", "--ledger", populated, "--format", "json")
        assert 1 == run.code
        assert "found a row whose seq is str 'two'" in run.out

    def test_report_on_unreadable_record_is_invalid(self, cli: Any, populated: Path) -> None:
        """A record whose bytes are not JSON makes the report exit 1 saying INVALID (not crash)."""
        _tamper.set_body(populated, CHAIN, 2, b"not json", rehash=True)
        run = cli("report", "--ledger", populated)
        assert 1 == run.code
        assert "INVALID" in run.out + run.err


class TestShowCommand:
    """``workflow-audit show``."""

    def test_table_lists_every_event(self, cli: Any, populated: Path) -> None:
        """show prints every record's event name and pipeline."""
        run = cli("show", "--ledger", populated)
        assert 0 == run.code
        for event, *_ in RECORDS:
            assert event in run.out
        assert "extract" in run.out

    def test_json_lines_honour_filters_and_limit(self, cli: Any, populated: Path) -> None:
        """show --json prints the filtered records as JSON lines, at most --limit of them."""
        run = cli("show", "--ledger", populated, "--json", "--event", "task.*", "--limit", "2")
        assert 0 == run.code
        assert [1, 2] == [json.loads(line)["seq"] for line in run.out.splitlines()]


class TestTailCommand:
    """``workflow-audit tail``."""

    def test_last_records_only(self, cli: Any, populated: Path) -> None:
        """tail -n 3 prints the last three records' event names and not the earlier ones."""
        run = cli("tail", "--ledger", populated, "-n", "3")
        assert 0 == run.code
        for event in ("task.started", "task.failed", "model.deployed"):
            assert event in run.out
        for event in ("dag.started", "task.succeeded"):
            assert event not in run.out

    def test_seq_stored_as_text_is_invalid(self, cli: Any, populated: Path) -> None:
        """tail on a chain whose last row's seq is TEXT exits 1 naming it, no TypeError."""
        _set_seq(populated, CHAIN, SIZE - 1, "two")
        run = cli("tail", "--ledger", populated)
        assert 1 == run.code
        assert f"chain {CHAIN!r}: found a row whose seq is str 'two'" in run.err

    def test_latest_records_across_chains(
        self, cli: Any, trail: AuditTrail, populated: Path
    ) -> None:
        """tail -n 3 over two chains prints the three latest records by time."""
        other = AuditTrail(trail.config.evolve(chain="other"))
        other.record("batch.started", ts="2025-12-31T00:00:00.000000Z")
        other.record("batch.finished", ts=ts(7))
        other.close()
        run = cli("tail", "--ledger", populated, "-n", "3")
        assert 0 == run.code
        for event in ("task.failed", "model.deployed", "batch.finished"):
            assert event in run.out
        for event in ("batch.started", "task.started", "dag.started"):
            assert event not in run.out


class TestConsoleScript:
    """The installed ``workflow-audit`` console script."""

    def test_installed_script_verifies(self, populated: Path) -> None:
        """The console script runs main() and exits with its code and output."""
        script = Path(sys.executable).with_name("workflow-audit")
        done = subprocess.run(
            [str(script), "verify", "--ledger", str(populated), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (0, "") == (done.returncode, done.stderr)
        assert {"valid": True, "records": SIZE} == {
            k: json.loads(done.stdout)[k] for k in ("valid", "records")
        }


def _broken_ledger() -> str:
    """A ledger entry point of a half-installed adapter."""
    raise RuntimeError("half-installed adapter")


class TestDefaultLedger:
    """Which ledger the commands open when --ledger is not given."""

    @pytest.fixture
    def airflow_ledger(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        """An Airflow plugin ledger under $AIRFLOW_HOME, and an empty user data directory."""
        monkeypatch.delenv("WORKFLOW_AUDIT_LEDGER", raising=False)
        monkeypatch.delenv("AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL", raising=False)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
        path = tmp_path / "airflow" / "workflow_audit" / "ledger.db"
        path.parent.mkdir(parents=True)
        with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}", chain="airflow")) as trail:
            trail.record("task.started", subject={"dag_id": "etl"})
        return path

    def test_airflow_ledger_found(self, cli: Any, airflow_ledger: Path) -> None:
        """With no user ledger, verify opens $AIRFLOW_HOME/workflow_audit/ledger.db and says so."""
        run = cli("verify")
        assert 0 == run.code, run.err
        assert f"using the Airflow plugin's ledger {airflow_ledger}" in run.err
        assert "chain 'airflow': 1 records" in run.out

    def test_workflow_audit_ledger_wins(
        self, cli: Any, airflow_ledger: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$WORKFLOW_AUDIT_LEDGER is used even when an Airflow ledger exists."""
        monkeypatch.setenv("WORKFLOW_AUDIT_LEDGER", f"sqlite:///{tmp_path / 'none.db'}")
        run = cli("verify")
        assert 2 == run.code
        assert "none.db" in run.err

    def test_prove_defaults_to_the_only_chain(
        self, cli: Any, airflow_ledger: Path, tmp_path: Path
    ) -> None:
        """prove needs no --chain when the ledger has one chain."""
        run = cli("prove", "--seq", "0", "-o", tmp_path / "p.json")
        assert 0 == run.code, run.err
        assert "chain 'airflow' seq 0" in run.err

    def test_a_broken_adapter_entry_point_is_skipped(
        self, cli: Any, airflow_ledger: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An adapter whose workflow_audit.ledgers entry point fails is skipped with a warning;
        the next one still names its ledger."""
        from importlib.metadata import EntryPoint

        import audit_core.cli._common as common

        group = common.LEDGER_ENTRY_POINTS
        found = [
            EntryPoint("airflow", "airflow_audit.settings:default_ledger_url", group),
            EntryPoint("aaa", f"{__name__}:_broken_ledger", group),
        ]
        monkeypatch.setattr(common, "entry_points", lambda group: found)
        run = cli("verify")
        assert 0 == run.code, run.err
        assert "ledger entry point 'aaa' failed" in run.err
        assert f"using the Airflow plugin's ledger {airflow_ledger}" in run.err


class TestReviewFindings:
    """Reading commands agree with `verify` on a deleted chain and on chain ids with "/"."""

    @staticmethod
    def _chains(path: Path, *names: str) -> None:
        for chain in names:
            config = AuditConfig(ledger_url=f"sqlite:///{path}", chain=chain, checkpoint_every=5)
            with AuditTrail(config) as trail:
                for i in range(10):
                    trail.record("task.succeeded", {"i": i})

    def _delete_beta(self, path: Path) -> None:
        self._chains(path, "default", "beta")
        with _tamper._tampering(path) as conn:
            conn.execute("DELETE FROM records WHERE chain = 'beta'")

    def test_report_fails_on_a_deleted_chain(self, cli: Any, ledger_file: Path) -> None:
        """report's verdict is INVALID when a chain's records were deleted but its
        checkpoints remain, as verify's is."""
        self._delete_beta(ledger_file)
        assert 1 == cli("verify", "--ledger", ledger_file).code
        run = cli("report", "--ledger", ledger_file, "--format", "json")
        assert "valid" != json.loads(run.out)["verification"]["verdict"]

    def test_progress_bar_survives_a_chain_only_the_merkle_tables_name(
        self, cli: Any, ledger_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a terminal, verify of a ledger with a deleted chain says INVALID (exit 1), no
        KeyError from the progress bar."""
        self._delete_beta(ledger_file)
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
        run = cli("verify", "--ledger", ledger_file)
        assert 1 == run.code
        assert "Traceback" not in run.out + run.err

    def test_consistency_takes_the_longest_matching_chain(
        self, cli: Any, ledger_file: Path, tmp_path: Path
    ) -> None:
        """With chains 'b' and 'x/b', checkpoints of 'x/b' are checked against 'x/b'."""
        self._chains(ledger_file, "b", "x/b")
        ledger = SqliteLedger(ledger_file, create=False, read_only=True)
        notes = [c.note for c in ledger.checkpoints("x/b")]
        ledger.close()
        old, new = tmp_path / "old.cp", tmp_path / "new.cp"
        old.write_text(notes[0])
        new.write_text(notes[-1])
        key = f"{ledger_file}.key.pub"
        run = cli("consistency", old, new, "--ledger", ledger_file, "--key", key)
        assert 0 == run.code, run.err


class TestForeignFiles:
    """Writing commands never turn a file that is not a ledger into one."""

    def test_checkpoint_of_a_foreign_sqlite_file(self, cli: Any, tmp_path: Path) -> None:
        """`checkpoint --ledger other.db`: exit 2, and the file keeps only its own tables."""
        other = tmp_path / "other.db"
        with sqlite3.connect(other) as conn:
            conn.execute("CREATE TABLE t (x)")
        run = cli("checkpoint", "--ledger", other)
        assert 2 == run.code
        assert "no such table: records" in run.err
        with sqlite3.connect(other) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        assert ["t"] == tables
