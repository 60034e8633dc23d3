"""Fixtures: one throw-away PostgreSQL cluster per session, one fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from audit_core.ledgers.postgres import PostgresLedger
from audit_core.ledgers.postgres_admin import init
from testkit.postgres import PgServer

WRITER, AUDITOR = "etl_writer", "etl_auditor"
WRITER_PASSWORD, AUDITOR_PASSWORD = "writer-pw", "auditor-pw"
_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A running cluster with pgaudit (installed and started here; stopped at the end)."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_db(pg_server: PgServer) -> str:
    """The name of a new database, initialized with ``postgres init`` (writer and auditor)."""
    name = f"ledger_{next(_names)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    init(
        pg_server.url(name),
        writer=WRITER,
        writer_password=WRITER_PASSWORD,
        auditor=AUDITOR,
        auditor_password=AUDITOR_PASSWORD,
    )
    return name


@pytest.fixture
def writer_url(pg_server: PgServer, pg_db: str) -> str:
    """URL of the test database as the writer login role."""
    return pg_server.url(pg_db, WRITER, WRITER_PASSWORD)


@pytest.fixture
def auditor_url(pg_server: PgServer, pg_db: str) -> str:
    """URL of the test database as the auditor login role."""
    return pg_server.url(pg_db, AUDITOR, AUDITOR_PASSWORD)


@pytest.fixture
def owner_url(pg_server: PgServer, pg_db: str) -> str:
    """URL of the test database as its owner (the superuser that ran init)."""
    return pg_server.url(pg_db)


@pytest.fixture
def pg_ledger(writer_url: str) -> Iterator[PostgresLedger]:
    """A ledger connected as the writer role."""
    ledger = PostgresLedger(writer_url, busy_timeout_s=20)
    yield ledger
    ledger.close()
