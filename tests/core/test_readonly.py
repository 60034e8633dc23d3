"""Reading commands work for an auditor who cannot write (issue 11, item 2; STYLE rule 17).

Real conditions, no mocks: the CLI runs as ``nobody`` (``setpriv``) on a 0444 ledger in a
root-owned 0755 directory, and on a tmpfs remounted read-only, with and without a write-ahead
log beside the ledger. The package is copied to a world-readable directory first, so the test
also works from a checkout ``nobody`` cannot enter (a CI clone under ``/root``). Needs root,
as CI runs it: ``mount`` and ``setpriv`` do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import audit_core
from audit_core import AuditConfig, AuditTrail
from audit_core._chain import stored_size
from audit_core.errors import LedgerError
from audit_core.ledgers import open_ledger
from audit_core.ledgers.sqlite import SqliteLedger

FIRST, MORE = 25, 7  # records written and closed cleanly; then left in the -wal only
MOUNT, UMOUNT, SETPRIV = (shutil.which(n) or f"/bin/{n}" for n in ("mount", "umount", "setpriv"))
AS_NOBODY = [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# Appends MORE records and exits without closing: they stay in the -wal (with its -shm).
_LEAVE_WAL = f"""
import os, sys
from audit_core import AuditConfig, AuditTrail
trail = AuditTrail(AuditConfig(ledger_url="sqlite:///" + sys.argv[1], actor=("service", "w")))
for i in range({MORE}):
    trail.record("task.succeeded", {{"late": i}})
os._exit(0)
"""


@pytest.fixture(scope="module")
def src() -> Iterator[Path]:
    """A world-readable copy of the audit_core package (for PYTHONPATH)."""
    assert 0 == os.geteuid(), "these tests mount a tmpfs and switch to nobody: run as root"
    top = Path(tempfile.mkdtemp(prefix="wa-src-"))
    shutil.copytree(
        Path(audit_core.__file__).parent,
        top / "audit_core",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for p in [top, *top.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    probe = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", "import orjson"],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert 0 == probe.returncode, (
        f"nobody cannot run {sys.executable} with its packages ({probe.stderr.strip()}): make "
        "the virtualenv's directories o+rx"
    )
    yield top
    shutil.rmtree(top)


def _cli(src: Path, *args: str, as_nobody: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_AUDIT_")}
    env.update(PYTHONPATH=str(src), HOME="/nonexistent")
    cmd = [sys.executable, "-m", "audit_core.cli", *args]
    return subprocess.run(
        (AS_NOBODY if as_nobody else []) + cmd,
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
        check=False,
    )


def _build(where: Path, src: Path, *, wal: bool) -> int:
    """A signed ledger in ``where``; with ``wal``, MORE records only in its -wal. Returns the
    number of records. Files the auditor reads are made 0444, the directory 0755."""
    path = where / "ledger.db"
    config = AuditConfig(ledger_url=f"sqlite:///{path}", actor=("service", "t"))
    with AuditTrail(config) as trail:
        for i in range(FIRST):
            trail.record("task.succeeded", {"i": i})
            if i in (9, 19):
                trail.checkpoint("default")
    reader = SqliteLedger(path, create=False, read_only=True)
    notes = [c.note for c in reader.checkpoints("default")]
    reader.close()
    (where / "old.txt").write_text(notes[0])
    (where / "new.txt").write_text(notes[-1])
    assert not Path(f"{path}-wal").exists()
    if wal:
        env = {**os.environ, "PYTHONPATH": str(src)}
        subprocess.run([sys.executable, "-c", _LEAVE_WAL, str(path)], check=True, env=env)
        assert Path(f"{path}-wal").stat().st_size > 0
    for p in where.iterdir():
        if p.name != "ledger.db.key":  # the writer's private key stays 0600
            p.chmod(0o444)
    where.chmod(0o755)
    return FIRST + (MORE if wal else 0)


def _reading_commands(where: Path) -> list[list[str]]:
    url = f"sqlite:///{where / 'ledger.db'}"
    pub = str(where / "ledger.db.key.pub")
    return [
        ["verify", "--ledger", url, "--key", pub],
        ["verify", "--ledger", url, "--jobs", "2"],
        ["show", "--ledger", url],
        ["export", "--ledger", url],
        ["report", "--ledger", url, "--key", pub],
        ["prove", "--ledger", url, "--seq", "3"],
        ["tail", "--ledger", url, "-n", "5"],
        ["consistency", str(where / "old.txt"), str(where / "new.txt"), "--ledger", url],
    ]


def _assert_all_read(src: Path, where: Path, size: int, *, as_nobody: bool = True) -> None:
    for args in _reading_commands(where):
        done = _cli(src, *args, as_nobody=as_nobody)
        assert (0, "") == (done.returncode, "" if done.returncode == 0 else done.stderr), args
    done = _cli(src, "verify", "--ledger", f"sqlite:///{where / 'ledger.db'}", "--json")
    assert f'"records":{size}' in done.stdout  # the -wal's records were read, not a stale file


def _assert_refused(src: Path, where: Path, *, as_nobody: bool = True) -> None:
    done = _cli(src, "verify", "--ledger", f"sqlite:///{where / 'ledger.db'}", as_nobody=as_nobody)
    assert 2 == done.returncode
    assert "Traceback" not in done.stderr
    assert "ledger.db-wal" in done.stderr
    assert "What to do" in done.stderr


@pytest.fixture
def evidence_dir() -> Iterator[Path]:
    """A root-owned directory under /tmp that everyone may enter."""
    where = Path(tempfile.mkdtemp(prefix="wa-ro-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where)


@pytest.fixture
def ro_mount(evidence_dir: Path) -> Iterator[Path]:
    """A tmpfs mounted on ``evidence_dir``; the test remounts it read-only."""
    subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", str(evidence_dir)],
        check=True,
    )
    try:
        yield evidence_dir
    finally:
        subprocess.run([UMOUNT, str(evidence_dir)], check=True)


def _remount_ro(mnt: Path) -> None:
    subprocess.run([MOUNT, "-o", "remount,ro", str(mnt)], check=True)


class TestNonRootAuditor:
    """nobody reads a 0444 ledger in a root-owned 0755 directory."""

    def test_reads_a_cleanly_closed_ledger(self, src: Path, evidence_dir: Path) -> None:
        """Every reading command exits 0 without a -wal (SQLite's immutable fallback)."""
        size = _build(evidence_dir, src, wal=False)
        _assert_all_read(src, evidence_dir, size)

    def test_reads_a_ledger_with_its_write_ahead_log(self, src: Path, evidence_dir: Path) -> None:
        """Every reading command exits 0 and sees the records that are only in the -wal."""
        size = _build(evidence_dir, src, wal=True)
        _assert_all_read(src, evidence_dir, size)

    def test_unusable_write_ahead_log_is_refused(self, src: Path, evidence_dir: Path) -> None:
        """A -wal without its -shm in a directory nobody cannot write: exit 2, what to do."""
        _build(evidence_dir, src, wal=True)
        Path(f"{evidence_dir / 'ledger.db'}-shm").unlink()
        _assert_refused(src, evidence_dir)


class TestReadOnlyMedia:
    """A ledger on a tmpfs remounted read-only, read by nobody and by root."""

    def test_reads_a_cleanly_closed_ledger(self, src: Path, ro_mount: Path) -> None:
        """Every reading command exits 0 on read-only media without a -wal."""
        size = _build(ro_mount, src, wal=False)
        _remount_ro(ro_mount)
        _assert_all_read(src, ro_mount, size)
        _assert_all_read(src, ro_mount, size, as_nobody=False)

    def test_reads_a_ledger_with_its_write_ahead_log(self, src: Path, ro_mount: Path) -> None:
        """Every reading command exits 0 on read-only media with -wal and -shm present."""
        size = _build(ro_mount, src, wal=True)
        _remount_ro(ro_mount)
        _assert_all_read(src, ro_mount, size)
        _assert_all_read(src, ro_mount, size, as_nobody=False)

    def test_unusable_write_ahead_log_is_refused(self, src: Path, ro_mount: Path) -> None:
        """A -wal without its -shm on read-only media: exit 2 with what to do, even for root."""
        _build(ro_mount, src, wal=True)
        Path(f"{ro_mount / 'ledger.db'}-shm").unlink()
        _remount_ro(ro_mount)
        _assert_refused(src, ro_mount)
        _assert_refused(src, ro_mount, as_nobody=False)


class TestLockFreeRead:
    """SQLite's lock-free fallback (``immutable=1``) never gives a verdict on a torn read."""

    def test_a_write_during_a_lock_free_read_is_no_verdict(self, src: Path, ro_mount: Path) -> None:
        """A writer appends (and checkpoints into the main file) while a lock-free snapshot
        is open: leaving the snapshot raises LedgerError, not a verdict on what it read."""
        _build(ro_mount, src, wal=False)
        path = ro_mount / "ledger.db"
        _remount_ro(ro_mount)  # no -shm can be made: the read takes no locks
        reader = SqliteLedger(path, create=False, read_only=True)
        with (  # noqa: PT012 - the write happens inside the read
            pytest.raises(LedgerError, match="written while it was read without locks"),
            reader.snapshot() as view,
        ):
            assert FIRST == stored_size("default", view.head("default"))
            subprocess.run([MOUNT, "-o", "remount,rw", str(ro_mount)], check=True)
            path.chmod(0o644)
            with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}")) as trail:
                trail.record("task.succeeded", {"late": 1})
        with reader.snapshot() as view:  # a read with nothing written meanwhile is a verdict
            assert FIRST + 1 == stored_size("default", view.head("default"))

    def test_auditor_leaves_no_files_that_lock_out_the_writers(
        self, src: Path, evidence_dir: Path
    ) -> None:
        """nobody may write the directory (1777) but not the ledger: reading commands create
        no -wal or -shm of theirs, and the ledger's owner can still append afterwards."""
        size = _build(evidence_dir, src, wal=False)
        evidence_dir.chmod(0o1777)
        _assert_all_read(src, evidence_dir, size)
        assert [] == sorted(p.name for p in evidence_dir.glob("ledger.db-*"))
        path = evidence_dir / "ledger.db"
        path.chmod(0o644)
        with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}")) as trail:
            assert size == trail.record("task.succeeded", {"after": "audit"}).seq


class TestReadOnlyLedger:
    """open_ledger(read_only=True) in process."""

    def test_refuses_writes(self, ledger_file: Path) -> None:
        """A read-only ledger reads, and an append raises LedgerError, file unchanged."""
        config = AuditConfig(ledger_url=f"sqlite:///{ledger_file}", actor=("service", "t"))
        with AuditTrail(config) as trail:
            stored = trail.record("task.succeeded", {"i": 0})
        before = ledger_file.read_bytes()
        ledger = open_ledger(f"sqlite:///{ledger_file}", read_only=True)
        assert stored == ledger.head("default")
        with pytest.raises(LedgerError, match="readonly"):
            ledger.set_cursor("x", "default", 0)
        ledger.close()
        assert before == ledger_file.read_bytes()


class TestPrivacyAuditor:
    """nobody, holding read-only copies of the privacy store and keys, opens commitments."""

    def test_opens_and_verifies_without_writing(self, src: Path, evidence_dir: Path) -> None:
        """privacy status, open and verify exit 0 as nobody on a 0444 ledger with a 0400
        store and key file in a root-owned 0755 directory, show the committed value, and
        create no file (no -shm that would lock the writers out)."""
        path = evidence_dir / "ledger.db"
        config = AuditConfig(ledger_url=f"sqlite:///{path}", privacy_policy="default")
        with AuditTrail(config) as trail:
            trail.record("dagrun.started", {"triggering_user": "alice"}, actor=("user", "alice"))
        path.chmod(0o444)
        for name in ("ledger.db.privacy.db", "ledger.db.privacy-keys.db"):
            os.chown(evidence_dir / name, pwd.getpwnam("nobody").pw_uid, -1)
            (evidence_dir / name).chmod(0o400)
        before = sorted(p.name for p in evidence_dir.iterdir())
        url = f"sqlite:///{path}"
        status = _cli(src, "privacy", "status", "--ledger", url)
        opened = _cli(src, "privacy", "open", "--ledger", url, "--chain", "default", "--seq", "0")
        verified = _cli(src, "privacy", "verify", "--ledger", url)
        for done in (status, opened, verified):
            assert 0 == done.returncode, done.stderr
            assert "Traceback" not in done.stderr
        assert '/data/triggering_user: ok = "alice"' in opened.stdout
        assert verified.stdout.startswith("VALID")
        assert before == sorted(p.name for p in evidence_dir.iterdir())
