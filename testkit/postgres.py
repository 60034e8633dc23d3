"""A throw-away PostgreSQL 15 cluster with pgaudit, for the PostgreSQL ledger's tests and
benchmark::

    server = PgServer.start()
    server.url(database="postgres")    # 'postgresql://postgres:…@127.0.0.1:54xxx/postgres'
    server.stop()

Debian's ``postgresql-15`` and ``postgresql-15-pgaudit`` are installed when missing (as root,
``apt-get install``; ``apt-get update`` only when that fails); anything that goes wrong raises
:class:`PgServerError`: the tests fail loudly instead of skipping. The cluster is made with
``initdb`` as the ``postgres`` OS user in a temporary directory, listens on 127.0.0.1 on a free
non-default port (and a socket in that directory), logs to ``server.log`` there, preloads
pgaudit with ``pgaudit.log = 'write, ddl, role'``, and never touches the distribution's
default cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testkit import HOST, free_port

__all__ = ["BIN", "PgServer", "PgServerError", "ensure_packages"]

BIN = Path("/usr/lib/postgresql/15/bin")
_PGAUDIT = Path("/usr/lib/postgresql/15/lib/pgaudit.so")
_PACKAGES = ["postgresql-15", "postgresql-15-pgaudit"]
# the superuser's; the cluster lives as long as the tests and listens on loopback only
PASSWORD = "workflow-audit-tests"  # noqa: S105 - a throw-away test cluster


class PgServerError(RuntimeError):
    """The test server cannot be installed, created or started."""


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def ensure_packages() -> None:
    """Install PostgreSQL 15 and pgaudit with apt when they are missing."""
    if (BIN / "initdb").exists() and _PGAUDIT.exists():
        return
    if os.geteuid() != 0:
        raise PgServerError(f"{' '.join(_PACKAGES)} are missing and this is not root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *_PACKAGES]
    done = _run(install, env=env)
    if done.returncode != 0:
        _run(["apt-get", "update"], env=env)
        done = _run(install, env=env)
    if done.returncode != 0 or not _PGAUDIT.exists():
        raise PgServerError(f"cannot install {_PACKAGES}: {done.stderr[-2000:]}")


@dataclass
class PgServer:
    """A running throw-away cluster."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(
        self, database: str = "postgres", user: str = "postgres", password: str = PASSWORD
    ) -> str:
        """A libpq URL for ``user`` on ``database`` over TCP loopback."""
        return f"postgresql://{user}:{password}@{HOST}:{self.port}/{database}"

    @classmethod
    def start(cls, *, pgaudit_log: str = "write, ddl, role") -> PgServer:
        """Install if needed, initdb, configure and start a new cluster."""
        ensure_packages()
        try:
            postgres = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PgServerError("no 'postgres' OS user (is postgresql-15 installed?)") from exc
        root = Path(tempfile.mkdtemp(prefix="workflow-audit-pg-"))
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
        pwfile = root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        os.chown(pwfile, postgres.pw_uid, postgres.pw_gid)
        server = cls(root, free_port())
        done = server._as_postgres(
            str(BIN / "initdb"),
            "-D",
            str(server.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",  # a throw-away cluster; the server itself runs with fsync on
        )
        if done.returncode != 0:
            raise PgServerError(f"initdb failed: {done.stdout}{done.stderr}")
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# workflow-audit tests\n"
                f"listen_addresses = '{HOST}'\n"
                f"port = {server.port}\n"
                f"unix_socket_directories = '{root}'\n"
                "max_connections = 200\n"
                "shared_preload_libraries = 'pgaudit'\n"
                f"pgaudit.log = '{pgaudit_log}'\n"
                "log_line_prefix = '%m [%p] %u@%d '\n"
                "log_min_messages = warning\n"
            )
        server._pg_ctl("start")
        return server

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            return _run(["runuser", "-u", "postgres", "--", *args], cwd=self.root)
        return _run(list(args), cwd=self.root)

    def _pg_ctl(self, action: str) -> None:
        args = [str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        if action in ("start", "restart"):
            args += ["-l", str(self.log)]
        if action in ("stop", "restart"):
            args += ["-m", "fast"]
        done = self._as_postgres(*args, action)
        if done.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise PgServerError(f"pg_ctl {action} failed: {done.stdout}{done.stderr}\n{log}")

    def restart(self) -> None:
        """Stop (fast: sessions are cut off) and start again on the same port."""
        self._pg_ctl("restart")

    def stop_server(self) -> None:
        """Stop the server, keeping its files (for :meth:`start_server`)."""
        self._pg_ctl("stop")

    def start_server(self) -> None:
        """Start a stopped server again."""
        self._pg_ctl("start")

    def stop(self) -> None:
        """Stop the server and delete the cluster."""
        try:
            self._pg_ctl("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        """The first line of the server log that contains ``needle``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in {self.log} after {timeout} s")
            time.sleep(0.1)
