"""Real servers for the tests and the benchmarks, started and stopped by the code that uses
them, listening on loopback (127.0.0.1) only: a PostgreSQL cluster with pgaudit
(:mod:`testkit.postgres`), an OTLP/HTTP receiver and the rotel agent (:mod:`testkit.otlp`), an
S3 server with Object Lock (:mod:`testkit.s3`) and a throw-away Airflow home
(:mod:`testkit.airflow`). Not part of the wheel: it lives beside ``tests/`` and ``bench/``,
which both import it (benchmarks never import test code).

>>> port = free_port()
>>> 0 < port < 65536
True
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from typing import Any

__all__ = ["HOST", "free_port", "terminate", "wait_listening"]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 10.0) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def terminate(process: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> None:
    """Stop ``process`` if it still runs: SIGTERM, then SIGKILL after ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
