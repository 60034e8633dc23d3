"""A real, restartable Prefect server on 127.0.0.1 for tests and benchmarks.

>>> server = PrefectServer.create(Path("/tmp/prefect-example"))
>>> server.api_url.startswith("http://127.0.0.1:") and server.api_url.endswith("/api")
True

``prefect_test_harness`` serves one test session from a temporary database it deletes; the
follower's faults need more: a server that is stopped and started again on the same port and
database (a Prefect restart), and that a separate process (``workflow-audit follow prefect``,
a worker, ``flow.serve()``) reaches by URL. One :class:`PrefectServer` is one ``prefect server
start`` process with its own ``PREFECT_HOME`` (its SQLite database lives there), analytics off,
bound to loopback. :meth:`env` is what a client process needs to talk to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testkit import HOST, free_port, terminate

__all__ = ["PrefectServer", "prefect_binary"]


def prefect_binary() -> Path:
    """The ``prefect`` command of the running interpreter's environment."""
    return Path(sys.executable).with_name("prefect")


@dataclass
class PrefectServer:
    """One ``prefect server start`` process; :meth:`stop` and :meth:`start` keep its port and
    database."""

    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, home: Path, port: int | None = None) -> PrefectServer:
        return cls(home, free_port() if port is None else port)

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def env(self) -> dict[str, str]:
        """What a client process (a flow, a worker, the follower) needs to reach this server
        and nothing else: no analytics, no public host."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_HOME": str(self.home / "client"),
        }

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            PREFECT_SERVER_API_HOST=HOST,
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_UI_ENABLED="false",
            # the server's own tasks scheduler and late-run marking stay on: they are Prefect
        )
        return env

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the server and wait until ``/api/health`` answers (migrations run on a new
        database first; the machine may be busy)."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(prefect_binary()), "server", "start", "--host", HOST, "--port", str(self.port)],
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._server_env(),
            start_new_session=True,  # a test's Ctrl-C is ours to forward, not the server's
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {self.process.returncode}: {self.log()}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Prefect server not ready after {timeout_s} s: {self.log()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.api_url + "/health", timeout=2) as answer:  # noqa: S310
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its database stays."""
        terminate(self.process, timeout_s=timeout_s)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def events(self, *, prefix: str | None = None, limit: int = 50) -> list[dict[str, object]]:
        """Every event the server holds (optionally of names starting ``prefix``), oldest
        first, through its own REST API: what a test compares the ledger with."""
        body: dict[str, object] = {"limit": limit, "filter": {"order": "ASC"}}
        if prefix is not None:
            body["filter"] = {"order": "ASC", "event": {"prefix": [prefix]}}
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 built above
            self.api_url + "/events/filter",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        out: list[dict[str, object]] = []
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            page = json.load(answer)
        while True:
            out.extend(page["events"])
            if not page.get("next_page"):
                return out
            with urllib.request.urlopen(page["next_page"], timeout=30) as answer:  # noqa: S310
                page = json.load(answer)

    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
