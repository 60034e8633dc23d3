"""The audit of the audit: read events, the fail-open recorder, and the CLI's recorded reads."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_core import COUNTERS, AuditConfig, AuditTrail, Record
from audit_core.errors import ConfigError
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.query import Query
from audit_core.readlog import (
    AUDIT_CHAIN,
    READ_EVENTS,
    UNRECORDED,
    TrailRecorder,
    os_user,
    query_filter,
    read_event,
    record_read,
)
from tests.core._spooling import held_lock, make_ledger

MOUNT = shutil.which("mount") or "/bin/mount"
UMOUNT = shutil.which("umount") or "/bin/umount"


def audit_records(path: Path) -> list[Record]:
    """The records of the audit chain, parsed (none while it does not exist)."""
    ledger = SqliteLedger(path, create=False, read_only=True)
    try:
        return [Record.from_stored(s) for s in ledger.read(AUDIT_CHAIN)]
    finally:
        ledger.close()


def me() -> str:
    """The name of this process's effective user, from the passwd database."""
    return pwd.getpwuid(os.geteuid()).pw_name


def unrecorded() -> int:
    return COUNTERS.snapshot().get(UNRECORDED, 0)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A SQLite ledger with one record, checkpoints off (so it has no signing key)."""
    path = tmp_path / "ledger.db"
    make_ledger(path)
    return path


@pytest.fixture
def read_only_ledger() -> Iterator[Path]:
    """A ledger on a tmpfs remounted read-only (root may not write it either)."""
    where = Path(tempfile.mkdtemp(prefix="wa-readlog-"))
    subprocess.run([MOUNT, "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        make_ledger(where / "ledger.db")
        subprocess.run([MOUNT, "-o", "remount,ro", str(where)], check=True)
        yield where / "ledger.db"
    finally:
        subprocess.run([UMOUNT, str(where)], check=True)
        where.rmdir()


class TestReadEvent:
    """``read_event``: the pure description of one read."""

    def test_fields(self) -> None:
        """Type audit.KIND, chain audit, the user as actor, no subject, via/filter/count."""
        q = Query(since="2026-01-01T00:00:00.000000Z", events=("task.*",), dag="etl")
        e = read_event("exported", user="ann", via="cli", query=q, count=7, kind="records")
        assert ("audit.exported", AUDIT_CHAIN) == (e.type, e.chain)
        assert {"type": "user", "id": "ann"} == e.actor
        assert {} == e.subject
        assert {
            "via": "cli",
            "filter": {"since": "2026-01-01T00:00:00.000000Z", "events": ["task.*"], "dag": "etl"},
            "count": 7,
            "kind": "records",
        } == e.data

    def test_filter_leaves_out_the_permission(self) -> None:
        """The filter is what the user typed: the permission set is not in it."""
        q = Query(run="r1", chains=("airflow",), dags=frozenset({"secret_dag"}))
        assert {"run": "r1", "chains": ["airflow"]} == query_filter(q)
        assert "secret_dag" not in json.dumps(read_event("viewed", user="u", via="x", query=q).data)

    def test_prefixed_kind_and_every_type(self) -> None:
        """Every read event type is accepted, with or without its audit. prefix."""
        for name in READ_EVENTS:
            assert name == read_event(name, user="u", via="serve").type
            assert name == read_event(name.removeprefix("audit."), user="u", via="serve").type

    def test_unknown_kind_refused(self) -> None:
        """An unknown kind is a ConfigError (a programming error, not a silent new type)."""
        with pytest.raises(ConfigError, match="unknown read event"):
            read_event("deleted", user="u", via="cli")

    def test_empty_user_is_unknown(self) -> None:
        """An empty identity becomes "unknown" (an actor id must not be empty)."""
        assert {"type": "user", "id": "unknown"} == read_event("viewed", user="", via="x").actor


class TestTrailRecorder:
    """``TrailRecorder``: appends reads, and never fails them."""

    def test_records_on_the_audit_chain(self, ledger: Path) -> None:
        """Two reads become two audit records, in order, with the user as actor."""
        with TrailRecorder(f"sqlite:///{ledger}") as recorder:
            assert recorder.record(read_event("viewed", user="ann", via="serve", count=1)) is None
            recorder(read_event("opened", user="bob", via="serve", chain="default", seq=0))
        found = audit_records(ledger)
        assert [("audit.viewed", "ann"), ("audit.opened", "bob")] == [
            (r.event, r.actor["id"]) for r in found
        ]
        assert {"via": "serve", "chain": "default", "seq": 0} == found[1].data

    def test_missing_ledger_is_not_created(self, tmp_path: Path) -> None:
        """A missing ledger: not recorded, counted, and no file appears."""
        before = unrecorded()
        path = tmp_path / "nope.db"
        reason = record_read(f"sqlite:///{path}", read_event("viewed", user="u", via="cli"))
        assert reason is not None
        assert "no ledger" in reason
        assert before + 1 == unrecorded()
        assert [] == list(tmp_path.iterdir())

    def test_locked_ledger_fails_open(self, ledger: Path) -> None:
        """A ledger another process holds locked: not recorded, counted, no exception."""
        before = unrecorded()
        recorder = TrailRecorder(f"sqlite:///{ledger}", busy_timeout_s=0.2)
        with held_lock(ledger):
            reason = recorder.record(read_event("viewed", user="u", via="serve"))
        assert reason is not None
        assert (before + 1, 1, reason) == (unrecorded(), recorder.unrecorded, recorder.last_failure)
        assert recorder.record(read_event("viewed", user="u", via="serve")) is None  # reopened
        recorder.close()
        assert 1 == len(audit_records(ledger))

    def test_read_only_ledger_fails_open(self, read_only_ledger: Path) -> None:
        """A ledger on read-only media: not recorded, counted, no -wal/-shm left behind."""
        before = unrecorded()
        recorder = TrailRecorder(f"sqlite:///{read_only_ledger}")
        assert "read-only" in (recorder.unwritable() or "")
        reason = recorder.record(read_event("verified", user="u", via="cli"))
        assert reason is not None
        assert "read-only" in reason
        assert before + 1 == unrecorded()
        assert ["ledger.db"] == sorted(p.name for p in read_only_ledger.parent.iterdir())

    def test_never_creates_a_signing_key(self, ledger: Path) -> None:
        """A ledger without a signing key: the read is recorded, no key is made for it."""
        assert record_read(str(ledger), read_event("viewed", user="u", via="cli")) is None
        assert not ledger.with_name("ledger.db.key").exists()

    def test_signs_with_an_existing_key(self, tmp_path: Path) -> None:
        """With the ledger's key present, closing the recorder signs the audit chain."""
        path = tmp_path / "signed.db"
        with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}")) as trail:
            trail.record("test.init")
            trail.checkpoint()
        assert path.with_name("signed.db.key").exists()
        assert record_read(f"sqlite:///{path}", read_event("viewed", user="u", via="cli")) is None
        ledger = SqliteLedger(path, create=False, read_only=True)
        try:
            checkpoint = ledger.latest_checkpoint(AUDIT_CHAIN)
        finally:
            ledger.close()
        assert checkpoint is not None
        assert 1 == checkpoint.size


class TestTrailLogs:
    """What the trail logs while a read is recorded."""

    def test_checkpoint_failure_is_one_line(
        self, ledger: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A checkpoint of the audit chain that cannot be signed (here a key file that is no
        key) is logged as one line with its reason, not a traceback per read; the read
        itself is recorded."""
        (ledger.parent / f"{ledger.name}.key").write_text("not a key\n")
        url = f"sqlite:///{ledger}"
        config = AuditConfig(ledger_url=url, checkpoint_every=1)
        with TrailRecorder(url, config=config) as recorder:
            assert recorder.record(read_event("viewed", user="ann", via="serve")) is None
        told = [r for r in caplog.records if "could not sign a checkpoint" in r.getMessage()]
        assert told
        assert all(r.exc_info is None and "key" in r.getMessage().split(": ", 1)[1] for r in told)
        assert 1 == len(audit_records(ledger))


class TestCliReads:
    """``export``, ``report`` and ``verify`` record themselves; output is unchanged."""

    def test_export_recorded_and_output_unchanged(self, cli: Any, ledger: Path) -> None:
        """Two identical exports print the same bytes (the first's record is on chain
        audit, left out by --chain), and each left audit.exported with the OS user."""
        first = cli("export", "--ledger", ledger, "--chain", "default", "--event", "test.*")
        second = cli("export", "--ledger", ledger, "--chain", "default", "--event", "test.*")
        assert (0, "", first.out) == (second.code, second.err, second.out)
        found = audit_records(ledger)
        assert 2 == len(found)
        rec = found[0]
        assert ("audit.exported", me()) == (rec.event, rec.actor["id"])
        assert {
            "via": "cli",
            "filter": {"events": ["test.*"], "chains": ["default"]},
            "count": 1,
            "kind": "records",
            "format": "jsonl",
        } == rec.data

    def test_reader_is_not_taken_from_the_environment(
        self, cli: Any, ledger: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """LOGNAME and USER are the caller's to set: the recorded reader is the process's
        effective user from the passwd database, whatever they say."""
        for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
            monkeypatch.setenv(name, "the_ceo")
        assert me() == os_user() != "the_ceo"
        assert 0 == cli("export", "--ledger", ledger).code
        assert me() == audit_records(ledger)[0].actor["id"]

    def test_reader_without_passwd_entry_is_its_uid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A uid with no passwd entry (a container's random uid) is recorded as uid:N."""

        def no_entry(uid: int) -> pwd.struct_passwd:
            raise KeyError(uid)

        monkeypatch.setattr(pwd, "getpwuid", no_entry)
        monkeypatch.setenv("LOGNAME", "the_ceo")
        assert f"uid:{os.geteuid()}" == os_user()

    def test_export_to_file_names_it(self, cli: Any, ledger: Path, tmp_path: Path) -> None:
        """An export to a file records its name and the format."""
        out = tmp_path / "x.csv"
        assert 0 == cli("export", "--ledger", ledger, "--format", "csv", "-o", out).code
        data = audit_records(ledger)[0].data
        assert ("csv", str(out), 1) == (data["format"], data["output"], data["count"])

    def test_report_recorded(self, cli: Any, ledger: Path) -> None:
        """report leaves audit.exported of kind report, its format and count."""
        assert 0 == cli("report", "--ledger", ledger, "--format", "json", "--run", "r9").code
        data = audit_records(ledger)[0].data
        assert {"kind": "report", "format": "json", "count": 0, "valid": True} == {
            k: data[k] for k in ("kind", "format", "count", "valid")
        }
        assert {"run": "r9"} == data["filter"]

    def test_verify_recorded(self, cli: Any, ledger: Path) -> None:
        """verify leaves audit.verified: verdict, each chain's size/head/valid, key_checked."""
        run = cli("verify", "--ledger", ledger, "--json")
        assert (0, "") == (run.code, run.err)
        head = json.loads(run.out)["chains"][0]["head"]
        rec = audit_records(ledger)[0]
        assert "audit.verified" == rec.event
        assert {
            "via": "cli",
            "filter": {},
            "verdict": "valid",
            "chains": {"default": {"size": 1, "head": head, "valid": True}},
            "key_checked": False,
        } == rec.data

    def test_unrecorded_read_says_so_once(
        self, cli: Any, ledger: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A locked ledger: export prints its records, exit 0, and one line says it was
        not recorded."""
        monkeypatch.setenv("WORKFLOW_AUDIT_BUSY_TIMEOUT", "0.2")
        with held_lock(ledger):
            run = cli("export", "--ledger", ledger)
        assert 0 == run.code
        assert "test.init" in run.out
        lines = run.err.splitlines()
        assert 1 == len(lines)
        assert lines[0].startswith("workflow-audit: this read was not recorded on the audit chain")
        assert [] == audit_records(ledger)

    def test_show_filters_by_run_task_actor(self, cli: Any, tmp_path: Path) -> None:
        """show --run/--task/--actor select by the subject's run and task and the actor's id."""
        path = tmp_path / "l.db"
        config = AuditConfig(ledger_url=f"sqlite:///{path}", checkpoint_every=0)
        with AuditTrail(config) as trail:
            for run, task, who in (("r1", "a", "ann"), ("r1", "b", "bob"), ("r2", "a", "ann")):
                subject = {"dag_id": "etl", "run_id": run, "task_id": task}
                trail.record("task.succeeded", {}, subject=subject, actor=("user", who))

        def seqs(*argv: str) -> list[int]:
            run = cli("show", "--ledger", path, "--json", *argv)
            return [json.loads(line)["seq"] for line in run.out.splitlines()]

        assert [0, 1] == seqs("--run", "r1")
        assert [0, 2] == seqs("--task", "a")
        assert [1] == seqs("--actor", "bob")
        assert [2] == seqs("--run", "r2", "--actor", "ann", "--dag", "etl")
        assert [] == audit_records(path)  # show is not an export
