"""The query index of the PostgreSQL ledger: the same guarantees as SQLite's
(tests/core/test_index.py) on a real PostgreSQL 15, as the writer and auditor roles that
``postgres init`` makes, plus what the roles may do with it. Writers index INDEX_BATCH
records at a time: the index rows plus each chain's short tail are every record."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import psycopg
import pytest

from audit_core import AuditConfig, AuditTrail
from audit_core._index import INDEX_BATCH, MAX_TAIL
from audit_core.cli import main
from audit_core.ledgers import LedgerReader
from audit_core.ledgers.postgres import PostgresLedger
from audit_core.query import Query, count, iterate, search
from audit_core.spool import TrailSpool
from tests.core.test_index import Scan, _trail, event, prepared, recomputed

QUERIES = [
    Query(),
    Query(events=("task.*",)),
    Query(events=("*.failed", "run.started")),
    Query(dag="ml"),
    Query(dag="ml", events=("task.*",)),
    Query(run="r3"),
    Query(task="load", chains=("ops",)),
    Query(actor="ann"),
    Query(since="2026-03-01T00:01:00", until="2026-03-01T00:03:00"),
    Query(dags=frozenset({"etl", "x"})),
    Query(dags=frozenset(), events=("dag.*",)),
    Query(dag="ml", dags=frozenset({"etl"})),
]


def index_table(owner_url: str) -> set[tuple[object, ...]]:
    with psycopg.connect(owner_url) as conn:
        return set(conn.execute("SELECT * FROM record_index"))


def index_states(owner_url: str) -> dict[str, int]:
    with psycopg.connect(owner_url) as conn:
        return dict(conn.execute("SELECT chain, size FROM index_state").fetchall())


def assert_index_exact(ledger: PostgresLedger, owner_url: str) -> None:
    """The rows are the recomputed rows of each chain's first ``index_state`` records, and
    every chain's unindexed tail is shorter than a batch."""
    states = index_states(owner_url)
    every = recomputed(ledger)
    assert index_table(owner_url) == {r for r in every if r[1] < states[r[0]]}
    for chain, n, done in ledger.index_sizes():
        assert chain in states
        assert 0 <= n - done < INDEX_BATCH
    assert ledger.index_complete(())


def assert_same_as_scan(reader: LedgerReader) -> None:
    scan = Scan(reader)
    for q in QUERIES:
        got, want = search(reader, q, limit=17), search(scan, q, limit=17)
        assert got.indexed, q
        assert not want.indexed, q
        assert [r.hash for r in got.records] == [r.hash for r in want.records], q
        assert got.next == want.next, q
        assert count(reader, q) == count(scan, q), q
        assert [r.hash for r in iterate(reader, q)] == [r.hash for r in iterate(scan, q)], q
        seen: list[str] = []
        before = None
        while True:
            page = search(reader, q, limit=41, before=before)
            seen.extend(r.hash for r in page.records)
            if page.next is None:
                break
            before = page.next
        assert sorted(seen) == sorted(r.hash for r in iterate(scan, q)), q
        assert len(seen) == len(set(seen)), q


@pytest.fixture
def filled(
    pg_ledger: PostgresLedger, writer_url: str, tmp_path: object
) -> Iterator[PostgresLedger]:
    """Records appended by every path: single, batches, keyed duplicates, an advancing
    append, a spool drain and two writers at once."""
    recs = prepared(400, seed=11)
    pg_ledger.append(recs[0])
    pg_ledger.append_many(recs[1:200])
    keyed = [r._replace(key=f"k{i % 4}") for i, r in enumerate(recs[200:240])]
    pg_ledger.append_many(keyed)
    pg_ledger.append(keyed[0])
    pg_ledger.append_advancing(recs[240:260], cursor="source:x", chain="ops", expect=-1, to=3)
    config = AuditConfig(ledger_url=writer_url, chain="default", spool_dir=f"{tmp_path}/spool")
    trail = AuditTrail(config, ledger=pg_ledger)
    spool = TrailSpool(lambda: trail)
    rng = random.Random(2)
    spool.spill([event(rng, 900 + i) for i in range(8)])
    assert spool.recover()
    spool.close()
    other = PostgresLedger(writer_url, busy_timeout_s=20)
    threads = [
        threading.Thread(target=lambda: [pg_ledger.append(r) for r in recs[260:330]]),
        threading.Thread(target=lambda: [other.append(r) for r in recs[330:400]]),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    return pg_ledger


def test_every_append_path_indexes_and_queries_match_the_scan(
    filled: PostgresLedger, owner_url: str, auditor_url: str
) -> None:
    assert_index_exact(filled, owner_url)
    assert_same_as_scan(filled)
    with filled.snapshot() as snap:
        assert_same_as_scan(snap)
    auditor = PostgresLedger(auditor_url, read_only=True)  # SELECT only: enough
    assert auditor.index_complete(())
    assert_same_as_scan(auditor)
    auditor.close()


def test_roles_on_the_index(filled: PostgresLedger, writer_url: str, auditor_url: str) -> None:
    with psycopg.connect(auditor_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM record_index")
    with psycopg.connect(writer_url, autocommit=True) as conn:
        # the writer may rebuild the index (not evidence) but still not touch a record
        conn.execute("UPDATE index_state SET size = size WHERE chain = 'default'")
        with pytest.raises(psycopg.Error):
            conn.execute("DELETE FROM records WHERE seq = 0")


def test_old_ledger_scans_until_rebuilt(
    pg_ledger: PostgresLedger,
    owner_url: str,
    writer_url: str,
    auditor_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pg_ledger.append_many(prepared(150, seed=12))
    pg_ledger.close()
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("DROP TABLE record_index, index_state")
    # the auditor (read-only) scans; the writer, who may not create tables, appends unindexed
    auditor = PostgresLedger(auditor_url, read_only=True)
    assert not auditor.index_usable()
    page = search(auditor, Query(dag="ml"), limit=5)
    assert not page.indexed
    assert page.records
    writer = PostgresLedger(writer_url, create=False)
    writer.append_many(prepared(10, seed=13, start=500))
    assert not writer.index_complete(())
    writer.close()
    assert main(["index", "status", "--ledger", auditor_url]) == 3
    assert "no query index yet" in capsys.readouterr().out
    # the owner's first connection adds the empty tables (and their grants)
    owner = PostgresLedger(owner_url)
    owner.append(prepared(1, seed=14, start=600)[0])
    assert owner.index_usable()
    assert not owner.index_complete(())
    owner.close()
    assert auditor.index_usable()
    assert not search(auditor, Query(), limit=3).indexed
    assert main(["index", "rebuild", "--ledger", writer_url]) == 0
    out = capsys.readouterr().out
    assert "rebuilt the query index" in out
    assert "***" in out
    assert "writer-pw" not in out
    assert main(["index", "status", "--ledger", auditor_url]) == 0
    capsys.readouterr()
    assert_index_exact(auditor, owner_url)
    assert_same_as_scan(auditor)
    auditor.close()


def test_rebuild_while_a_writer_appends(
    pg_ledger: PostgresLedger, writer_url: str, owner_url: str
) -> None:
    pg_ledger.append_many(prepared(500, seed=15))
    writer = PostgresLedger(writer_url, busy_timeout_s=20)
    stop = threading.Event()
    more = prepared(1000, seed=16, start=3000)

    def append() -> None:
        for rec in more:
            if stop.is_set():
                return
            writer.append(rec)

    thread = threading.Thread(target=append)
    thread.start()
    while sum(n for _, n, _ in pg_ledger.index_sizes()) < 510:
        pass
    pg_ledger.rebuild_index(batch=40)
    during = sum(n for _, n, _ in pg_ledger.index_sizes())
    stop.set()
    thread.join()
    writer.close()
    assert during > 510
    assert_index_exact(pg_ledger, owner_url)


def test_index_off_appends_nothing_to_it(writer_url: str, owner_url: str) -> None:
    led = PostgresLedger(writer_url, index=False)
    led.append_many(prepared(20, seed=17))
    assert not led.index_complete(())
    assert index_table(owner_url) == set()
    assert not search(led, Query(), limit=3).indexed
    led.close()


def test_an_append_indexes_the_tail_once_it_reaches_a_batch(
    pg_ledger: PostgresLedger, writer_url: str, owner_url: str, auditor_url: str
) -> None:
    rng = random.Random(31)
    recs = [_trail().prepare(event(rng, i, chain="default")) for i in range(3 * INDEX_BATCH)]
    for rec in recs[: INDEX_BATCH - 1]:
        pg_ledger.append(rec)
    assert index_table(owner_url) == set()
    assert index_states(owner_url) == {"default": 0}
    assert_same_as_scan(pg_ledger)  # every answer from the tail
    pg_ledger.append(recs[INDEX_BATCH - 1])
    assert len(index_table(owner_url)) == INDEX_BATCH
    assert_index_exact(pg_ledger, owner_url)
    # an old writer's long tail: incomplete, until a current writer reaches a boundary
    old = PostgresLedger(writer_url, index=False)
    old.append_many(
        [_trail().prepare(event(rng, 900 + i, chain="default")) for i in range(MAX_TAIL + 1)]
    )
    old.close()
    assert not pg_ledger.index_complete(())
    assert main(["index", "status", "--ledger", auditor_url]) == 3
    for rec in recs[INDEX_BATCH:]:
        pg_ledger.append(rec)
    assert_index_exact(pg_ledger, owner_url)
    assert main(["index", "status", "--ledger", auditor_url]) == 0


@pytest.mark.parametrize("tails", [(0, 1), (1, INDEX_BATCH - 1), (INDEX_BATCH, 7)])
def test_queries_with_tails_answer_what_the_scan_answers(
    pg_ledger: PostgresLedger, writer_url: str, tails: tuple[int, int]
) -> None:
    pg_ledger.append_many(prepared(400, seed=32))
    pg_ledger.rebuild_index()
    lagging = PostgresLedger(writer_url)
    lagging.index_batch = 10**9  # indexes nothing: tails of exactly these lengths
    rng = random.Random(33)
    lagging.append_many(
        [
            _trail().prepare(event(rng, 100 + i, chain=chain))
            for chain, n in zip(("default", "ops"), tails, strict=True)
            for i in range(n)
        ]
    )
    lagging.close()
    assert [n - done for _, n, done in pg_ledger.index_sizes()] == list(tails)
    assert_same_as_scan(pg_ledger)
    with pg_ledger.snapshot() as snap:
        assert_same_as_scan(snap)


def test_chains_are_a_loose_index_scan_with_the_same_answer(
    pg_ledger: PostgresLedger, owner_url: str
) -> None:
    rng = random.Random(34)
    names = ["b", "a", "a.b", "a-b", "A", "zz", "9x", "default"]
    pg_ledger.append_many([_trail().prepare(event(rng, i, chain=names[i % 8])) for i in range(300)])
    with psycopg.connect(owner_url) as conn:
        distinct = [r[0] for r in conn.execute("SELECT DISTINCT chain FROM records ORDER BY 1")]
        merkle = [
            r[0]
            for r in conn.execute(
                "SELECT chain FROM merkle_subtrees UNION SELECT chain FROM checkpoints ORDER BY 1"
            )
        ]
    assert pg_ledger.chains() == distinct
    assert pg_ledger.merkle_chains() == merkle
    assert merkle
