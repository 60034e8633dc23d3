"""The privacy store on a real PostgreSQL server: the same contract as on SQLite (one
pseudonym however many threads and processes race, openings, two-step erasure surviving a
crash, read-only), tables prefixed ``wa_privacy_``, errors without row values, and an
erasure that waits for the subject's writers in flight."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from audit_core.errors import PrivacyError
from audit_core.privacy.store import Opening, PrivacyStore
from testkit.postgres import PgServer
from tests.core.test_privacy_store import IDENTIFIER, StoreContract, store

__all__ = ["store"]  # fixture, imported for pytest


@pytest.fixture
def store_url(owner_url: str) -> str:
    """A fresh database's URL (its owner: the store creates its tables on first open)."""
    return owner_url


class TestPostgresStore(StoreContract):
    """The PostgreSQL privacy store, plus what only a server can show."""

    def test_prefixed_tables(self, store: PrivacyStore, store_url: str) -> None:
        """The store's tables are prefixed wa_privacy_, beside a ledger's."""
        with psycopg.connect(store_url) as conn:
            names = conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'wa_privacy_%' "
                "ORDER BY tablename"
            ).fetchall()
        assert [("wa_privacy_erasures",), ("wa_privacy_openings",), ("wa_privacy_subjects",)] == (
            names
        )

    def test_error_has_no_detail(self, store: PrivacyStore) -> None:
        """A constraint violation's message drops PostgreSQL's DETAIL (it quotes the row)."""
        with store.writing() as w:
            p, _ = w.pseudonym(IDENTIFIER)
            w.add(Opening(bytes(16), "/data/secret-pointer", "c", p, "commit", b"s"))

        def clash() -> None:
            with store.writing() as w:
                w.add(Opening(bytes(16), "/data/secret-pointer", "c", p, "commit", b"s"))

        with pytest.raises(PrivacyError, match="SQLSTATE 23505") as caught:
            clash()
        assert "secret-pointer" not in str(caught.value)
        assert "Key (" not in str(caught.value)
        assert "***" in str(caught.value)  # the URL's password masked

    def test_read_only_without_tables(self, pg_server: PgServer) -> None:
        """A read-only open of a database without the store fails and creates nothing."""
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE privacy_absent")
        url = pg_server.url("privacy_absent")
        with pytest.raises(PrivacyError, match="no privacy store"):
            PrivacyStore(url, read_only=True)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('wa_privacy_subjects')").fetchone() == (None,)

    def test_erasure_waits_for_writers(self, store: PrivacyStore, store_url: str) -> None:
        """An erasure begun while a writer of the subject is in flight waits for its commit
        and counts the writer's opening."""
        with store.writing() as w:
            p, _ = w.pseudonym(IDENTIFIER)
        holding, release = threading.Event(), threading.Event()
        writer = PrivacyStore(store_url)

        def write() -> None:
            with writer.writing() as w:
                mine, _ = w.pseudonym(IDENTIFIER)
                holding.set()
                release.wait()
                w.add(Opening(bytes(16), "/actor/id", "c", mine, "commit", b"s"))

        thread = threading.Thread(target=write)
        thread.start()
        holding.wait()
        result: list[object] = []
        eraser = threading.Thread(
            target=lambda: result.append(
                store.begin_erasure(IDENTIFIER, kcv=lambda q: "k", basis="b", reason="r")
            )
        )
        eraser.start()
        _wait_for_lock_wait(store_url)
        release.set()
        thread.join()
        eraser.join()
        writer.close()
        assert 1 == len(result)
        erasure = result[0]
        assert (p, 1, 1) == (erasure.pseudonym, erasure.records, erasure.values)  # type: ignore[attr-defined]

    def test_writer_during_erasure_gets_new_pseudonym(
        self, store: PrivacyStore, store_url: str
    ) -> None:
        """A writer of the subject that waited for an erasure in flight gets a new pseudonym."""
        with store.writing() as w:
            old, _ = w.pseudonym(IDENTIFIER)
        holding, release = threading.Event(), threading.Event()

        def slow_kcv(pseudonym: str) -> str:
            holding.set()
            release.wait()
            return "k"

        eraser = threading.Thread(
            target=lambda: store.begin_erasure(IDENTIFIER, kcv=slow_kcv, basis="b", reason="r")
        )
        eraser.start()
        holding.wait()
        result: list[tuple[str, bool]] = []
        writer = PrivacyStore(store_url)

        def write() -> None:
            with writer.writing() as w:
                result.append(w.pseudonym(IDENTIFIER))

        thread = threading.Thread(target=write)
        thread.start()
        _wait_for_lock_wait(store_url)
        release.set()
        eraser.join()
        thread.join()
        writer.close()
        assert 1 == len(result)
        assert result[0][1]
        assert old != result[0][0]
        assert result[0][0] == store.pseudonym(IDENTIFIER)


def _wait_for_lock_wait(url: str) -> None:
    """Return once a session of the store waits for a row lock (polls the server)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%wa_privacy_subjects%'"
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.01)  # polling the server for the event: no time limit
