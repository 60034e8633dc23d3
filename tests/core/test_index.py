"""The query index of the SQLite ledger (``record_index``): kept in the append transactions
of every append path, INDEX_BATCH records at a time (the index rows plus each chain's short
unindexed tail are every record, the rows equal to a recomputation), answering exactly what a
scan answers whatever the tails, rebuildable while writers append, and never needed (a reader
without it scans).

Real SQLite files; no mocks. The PostgreSQL twin is tests/postgres/test_postgres_index.py.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import sqlite3
import threading
from collections.abc import Generator, Iterator
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import AuditConfig, AuditTrail, Event, PreparedRecord
from audit_core._index import CATCH_UP, INDEX_BATCH, MAX_TAIL, index_row
from audit_core._record import StoredRecord
from audit_core.cli import main
from audit_core.ledgers import LedgerReader
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.query import Position, Query, count, iterate, search
from audit_core.spool import TrailSpool

DAGS = ("ml", "etl", "ops", "x")
TASKS = ("extract", "load", "train")
EVENTS = ("task.started", "task.succeeded", "task.failed", "run.started", "dag.paused")
ACTORS = ("scheduler", "ann", "bob")
CHAINS = ("default", "ops")
BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def event(rng: random.Random, i: int, *, chain: str | None = None) -> Event:
    """A varied record: some about no DAG, timestamps that collide now and then."""
    kind = rng.choice(EVENTS)
    subject: dict[str, object] = {}
    if kind != "dag.paused" or rng.random() < 0.5:
        subject = {
            "dag_id": rng.choice(DAGS),
            "run_id": f"r{rng.randint(0, 9)}",
            "task_id": rng.choice(TASKS),
        }
    ts = BASE + dt.timedelta(seconds=i // 2)  # pairs share a timestamp: ties on (chain, seq)
    return Event(
        type=kind,
        subject=subject,
        actor=("user", rng.choice(ACTORS)),
        ts=ts,
        data={"i": i},
        chain=chain or rng.choice(CHAINS),
    )


@cache
def _trail() -> AuditTrail:
    return AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", chain="default"))


def prepared(n: int, *, seed: int = 1, start: int = 0) -> list[PreparedRecord]:
    rng = random.Random(seed)
    return [_trail().prepare(event(rng, start + i)) for i in range(n)]


class Scan:
    """The ledger's reading half without the index: what query.py scans."""

    def __init__(self, reader: LedgerReader) -> None:
        self._reader = reader

    def read(
        self, chain: str, start: int = 0, stop: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        return self._reader.read(chain, start, stop)

    def chains(self) -> list[str]:
        return self._reader.chains()


def index_table(path: Path) -> set[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return set(conn.execute("SELECT * FROM record_index"))


def recomputed(ledger: LedgerReader) -> set[tuple[object, ...]]:
    return {index_row(s.chain, s.seq, s.body) for c in ledger.chains() for s in ledger.read(c)}


def index_states(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT chain, size FROM index_state"))


def assert_index_exact(ledger: SqliteLedger) -> None:
    """The index rows are exactly the recomputed rows of each chain's first ``index_state``
    records, and each chain's unindexed tail is shorter than a batch: rows + tails = every
    record."""
    assert ledger.path is not None
    states = index_states(ledger.path)
    every = recomputed(ledger)
    assert index_table(ledger.path) == {r for r in every if r[1] < states[r[0]]}
    for chain, n, done in ledger.index_sizes():
        assert chain in states
        assert 0 <= n - done < ledger.index_batch
    assert ledger.index_complete(())


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    led = SqliteLedger(tmp_path / "ledger.db")
    yield led
    led.close()


# -- maintained on every append path ---------------------------------------------------------


def test_every_append_path_indexes_in_its_transaction(ledger: SqliteLedger, tmp_path: Path) -> None:
    recs = prepared(120)
    ledger.append(recs[0])
    ledger.append_many(recs[1:60])
    keyed = [r._replace(key=f"k{i % 5}") for i, r in enumerate(recs[60:80])]
    unique = len({(r.chain, r.key) for r in keyed})
    assert len(ledger.append_many(keyed)) == unique  # duplicates: no record, no index row
    ledger.append(keyed[0])  # a duplicate of a stored key returns the earlier record
    ledger.append_advancing(recs[80:100], cursor="source:x", chain="default", expect=-1, to=7)
    # the spool's drain (an adapter's recovery) goes through append_many
    config = AuditConfig(
        ledger_url=f"sqlite:///{ledger.path}", chain="default", spool_dir=str(tmp_path / "spool")
    )
    trail = AuditTrail(config, ledger=ledger)
    spool = TrailSpool(lambda: trail)
    rng = random.Random(5)
    spool.spill([event(rng, 500 + i) for i in range(10)])
    assert spool.recover()
    spool.close()
    # a second writer (another connection) racing the first
    other = SqliteLedger(ledger.path)
    more = prepared(200, seed=9, start=1000)
    threads = [
        threading.Thread(target=lambda: [ledger.append(r) for r in more[:100]]),
        threading.Thread(target=lambda: [other.append(r) for r in more[100:]]),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert sum(n for _, n, _ in ledger.index_sizes()) == 60 + unique + 20 + 10 + 200
    assert_index_exact(ledger)


def test_a_failed_append_leaves_no_index_row(ledger: SqliteLedger) -> None:
    ledger.append_many(prepared(3))
    from audit_core.errors import CursorMoved

    with pytest.raises(CursorMoved):
        ledger.append_advancing(prepared(4, seed=2), cursor="c", chain="default", expect=5, to=6)
    assert_index_exact(ledger)


def test_index_off_leaves_chains_incomplete_and_queries_scan(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "b.db", index=False)
    led.append_many(prepared(30))
    assert not led.index_complete(())
    page = search(led, Query(), limit=5)
    assert not page.indexed
    assert len(page.records) == 5
    led.close()


# -- the index answers exactly what a scan answers ------------------------------------------


@cache
def _big(root: str) -> SqliteLedger:
    led = SqliteLedger(Path(root) / "big.db")
    recs = prepared(800, seed=3)
    for i in range(0, len(recs), 300):
        led.append_many(recs[i : i + 300])
    return led


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> SqliteLedger:
    return _big(str(tmp_path_factory.mktemp("big")))


PATTERNS = ("task.*", "run.started", "*.failed", "dag.paused", "t?sk.s*", "[tr]*", "nothing.*")


def queries() -> st.SearchStrategy[Query]:
    stamps = [(BASE + dt.timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S") for s in (0, 90, 400)]
    maybe = lambda values: st.none() | st.sampled_from(values)  # noqa: E731
    return st.builds(
        Query,
        since=maybe(stamps),
        until=maybe([*stamps[1:], "2027"]),
        events=st.lists(st.sampled_from(PATTERNS), max_size=2).map(tuple),
        chains=st.lists(st.sampled_from(CHAINS), max_size=2, unique=True).map(tuple),
        dag=maybe(DAGS),
        run=maybe(["r1", "r5"]),
        task=maybe(TASKS),
        actor=maybe(ACTORS),
        dags=st.none() | st.frozensets(st.sampled_from(DAGS), max_size=3),
    )


def same(reader: LedgerReader, q: Query, limit: int, before: Position | None) -> None:
    scan = Scan(reader)
    got, want = (
        search(reader, q, limit=limit, before=before),
        search(scan, q, limit=limit, before=before),
    )
    assert got.indexed
    assert not want.indexed
    assert [r.hash for r in got.records] == [r.hash for r in want.records]
    assert got.next == want.next
    assert count(reader, q, cap=200) == count(scan, q, cap=200)
    assert [r.hash for r in iterate(reader, q)] == [r.hash for r in iterate(scan, q)]


@cache
def _positions(root: str) -> list[Position]:
    recs = iterate(Scan(_big(root)), Query())
    return sorted(Position(r.ts, r.chain, r.seq) for r in recs)


@settings(max_examples=50, deadline=None)
@given(q=queries(), limit=st.integers(1, 30), cut=st.none() | st.integers(0, 799))
def test_index_answers_what_the_scan_answers(
    tmp_path_factory: pytest.TempPathFactory, q: Query, limit: int, cut: int | None
) -> None:
    root = str(tmp_path_factory.getbasetemp() / "prop")
    led = _big(root)
    before = None if cut is None else _positions(root)[cut]
    same(led, q, limit, before)
    with led.snapshot() as snap:
        same(snap, q, limit, before)


@pytest.mark.parametrize(
    "q",
    [
        Query(),
        Query(events=("task.*",)),
        Query(dag="ml"),
        Query(dag="ml", events=("task.*",)),
        Query(dags=frozenset({"etl"})),
        Query(dags=frozenset(), events=("dag.*",)),
        Query(actor="ann", chains=("ops",)),
    ],
)
def test_pagination_returns_every_record_once(big: SqliteLedger, q: Query) -> None:
    seen: list[str] = []
    before = None
    while True:
        page = search(big, q, limit=23, before=before)
        assert page.indexed
        seen.extend(r.hash for r in page.records)
        if page.next is None:
            break
        before = page.next
    want = [r.hash for r in iterate(Scan(big), q)]
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(want)


def test_count_is_capped(big: SqliteLedger) -> None:
    assert count(big, Query(), cap=100) == 100
    assert count(big, Query(), cap=10_000) == 800


# -- ledgers made before the index --------------------------------------------------------


def drop_index(path: Path) -> None:
    """Make ``path`` look like a ledger made before the query index."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE record_index")
        conn.execute("DROP TABLE index_state")


def test_old_ledger_scans_until_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.db"
    old = SqliteLedger(path)
    old.append_many(prepared(200))
    old.close()
    drop_index(path)
    # a read-only reader creates nothing and scans
    reader = SqliteLedger(path, read_only=True)
    assert not reader.index_usable()
    assert not reader.index_complete(())
    page = search(reader, Query(dag="ml"), limit=10)
    assert not page.indexed
    assert page.records
    assert count(reader, Query(dag="ml")) == count(Scan(reader), Query(dag="ml"))
    reader.close()
    assert "record_index" not in {
        r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")
    }
    # `index status` on it: no index yet, exit 3
    assert main(["index", "status", "--ledger", f"sqlite:///{path}"]) == 3
    assert "no query index yet" in capsys.readouterr().out
    # the first writer adds the (empty) tables; old chains stay incomplete, new ones are
    writer = SqliteLedger(path, create=False)
    writer.append_many(prepared(20, seed=4, start=300))
    writer.append(_trail().prepare(Event(type="audit.viewed", chain="audit")))
    assert writer.index_complete(["audit"])
    assert not writer.index_complete(())
    assert not search(writer, Query(), limit=5).indexed
    assert search(writer, Query(chains=("audit",)), limit=5).indexed
    assert main(["index", "status", "--ledger", f"sqlite:///{path}"]) == 3
    out = capsys.readouterr().out
    assert (
        "audit: 1 record(s): complete (0 in the index, the last 1 read from" in out
    )  # its tail is read by seq
    assert "incomplete" in out
    writer.close()
    assert main(["index", "rebuild", "--ledger", f"sqlite:///{path}"]) == 0
    out = capsys.readouterr().out
    assert "row(s) indexed" in out
    assert "rebuilt the query index" in out
    assert main(["index", "status", "--ledger", f"sqlite:///{path}", "--json"]) == 0
    assert '"complete":true' in capsys.readouterr().out
    again = SqliteLedger(path, read_only=True)
    assert_index_exact(again)
    assert search(again, Query(dag="ml"), limit=10).indexed
    again.close()


def test_rebuild_repairs_an_edited_index(ledger: SqliteLedger) -> None:
    ledger.append_many(prepared(100))
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("DELETE FROM record_index WHERE seq % 7 = 0")
        conn.execute("UPDATE record_index SET dag = 'forged' WHERE seq % 5 = 0")
        conn.execute("INSERT INTO record_index VALUES ('ghost', 3, 'z', 'e', '', NULL, NULL, NULL)")
    # an edited index may hide records from a page, never show a false one
    for rec in search(ledger, Query(dag="forged"), limit=50).records:
        pytest.fail(f"a record not about 'forged' was shown: {rec}")
    done = ledger.rebuild_index()
    assert sum(done.values()) == 100
    assert_index_exact(ledger)


def test_rebuild_while_a_writer_appends(ledger: SqliteLedger) -> None:
    ledger.append_many(prepared(600))
    writer = SqliteLedger(ledger.path)
    stop = threading.Event()
    more = prepared(2000, seed=8, start=5000)

    def append() -> None:
        for rec in more:
            if stop.is_set():
                return
            writer.append(rec)

    thread = threading.Thread(target=append)
    thread.start()
    while sum(n for _, n, _ in writer.index_sizes()) < 620:  # the writer is under way
        pass
    ledger.rebuild_index(batch=50)
    during = sum(n for _, n, _ in writer.index_sizes())
    stop.set()
    thread.join()
    writer.close()
    assert during > 620  # it appended while the rebuild ran
    assert_index_exact(ledger)


def test_cli_rejects_a_bad_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.db"
    SqliteLedger(path).append(prepared(1)[0])
    assert main(["index", "rebuild", "--ledger", f"sqlite:///{path}", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert main(["index", "status", "--ledger", f"sqlite:///{tmp_path / 'none.db'}"]) == 2


def test_unreadable_bytes_are_indexed_as_nothing() -> None:
    assert index_row("c", 1, b"\xff") == ("c", 1, "", "", "", None, None, None)
    assert index_row("c", 1, b'{"ts": "a\\u0000", "event": 3, "subject": {"dag_id": "a\\u0000"}}')[
        2:5
    ] == ("", "", "")


def test_a_tampered_seq_makes_queries_scan(ledger: SqliteLedger) -> None:
    ledger.append_many(prepared(30))
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("UPDATE records SET seq = 'two' WHERE chain = 'default' AND seq = 0")
    reader = SqliteLedger(ledger.path, read_only=True)
    assert not reader.index_complete(())
    page = search(reader, Query(), limit=50)
    assert not page.indexed
    assert len(page.records) == 30
    reader.close()


def test_rebuild_reads_tampered_cells(ledger: SqliteLedger) -> None:
    ledger.append_many(prepared(20))
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("UPDATE records SET body = 'text' WHERE seq = 1")
        conn.execute("UPDATE records SET body = 7 WHERE seq = 2")
    assert sum(ledger.rebuild_index().values()) == 20
    assert ledger.index_complete(())


# -- batched maintenance: the index lags by a short tail that queries read by seq ------------


def test_an_append_indexes_the_tail_once_it_reaches_a_batch(ledger: SqliteLedger) -> None:
    assert ledger.path is not None
    rng = random.Random(6)
    recs = [_trail().prepare(event(rng, i, chain="default")) for i in range(3 * INDEX_BATCH)]
    for rec in recs[: INDEX_BATCH - 1]:
        ledger.append(rec)
    assert index_table(ledger.path) == set()  # a tail of INDEX_BATCH - 1: no row yet
    assert index_states(ledger.path) == {"default": 0}
    assert ledger.index_complete(())
    page = search(ledger, Query(), limit=5)
    assert page.indexed
    assert [r.seq for r in page.records] == [62, 61, 60, 59, 58]  # all from the tail
    for q in (Query(dag="ml"), Query(dags=frozenset({"etl"})), Query(events=("task.*",))):
        same(ledger, q, 7, None)  # an index without a row yet
    ledger.append(recs[INDEX_BATCH - 1])  # the batch's last: one executemany of all of it
    assert len(index_table(ledger.path)) == INDEX_BATCH
    assert_index_exact(ledger)
    # a writer that indexes nothing (an old one) leaves a tail longer than MAX_TAIL: queries
    # scan, `index status` says incomplete ...
    old = SqliteLedger(ledger.path, index=False)
    old.append_many(
        [_trail().prepare(event(rng, 900 + i, chain="default")) for i in range(MAX_TAIL + 1)]
    )
    old.close()
    assert not ledger.index_complete(())
    assert not search(ledger, Query(), limit=5).indexed
    assert main(["index", "status", "--ledger", f"sqlite:///{ledger.path}"]) == 3
    # ... until a current writer reaches a batch boundary: it indexes the whole tail
    for rec in recs[INDEX_BATCH:]:
        ledger.append(rec)
    assert_index_exact(ledger)
    assert search(ledger, Query(), limit=5).indexed
    assert main(["index", "status", "--ledger", f"sqlite:///{ledger.path}"]) == 0


def test_a_long_backlog_is_caught_up_a_bounded_chunk_per_batch(ledger: SqliteLedger) -> None:
    """An old writer's long tail is indexed CATCH_UP records per boundary, so no record()
    call pays for all of it at once; the chain is complete again once it caught up."""
    assert ledger.path is not None
    rng = random.Random(8)
    ledger.append_many([_trail().prepare(event(rng, i, chain="default")) for i in range(10)])
    old = SqliteLedger(ledger.path, index=False)
    old.append_many(
        [_trail().prepare(event(rng, i, chain="default")) for i in range(10, 2 * CATCH_UP + 60)]
    )
    old.close()
    assert index_states(ledger.path) == {"default": 0}
    states = []
    while ledger.index_sizes()[0][1] - ledger.index_sizes()[0][2] >= INDEX_BATCH:
        ledger.append(_trail().prepare(event(rng, 5000, chain="default")))
        states.append(index_states(ledger.path)["default"])
    size = ledger.index_sizes()[0][1]
    assert sorted(set(states)) == [0, CATCH_UP, 2 * CATCH_UP, size]  # one chunk per boundary
    assert size % INDEX_BATCH == 0
    assert_index_exact(ledger)


@cache
def _base(root: str) -> Path:
    """A closed ledger file of 800 records, completely indexed (rebuilt)."""
    path = Path(root) / "base.db"
    led = SqliteLedger(path)
    recs = prepared(800, seed=3)
    for i in range(0, len(recs), 300):
        led.append_many(recs[i : i + 300])
    led.rebuild_index()
    led.close()
    return path


@settings(max_examples=40, deadline=None)
@given(
    q=queries(),
    limit=st.integers(1, 30),
    tails=st.tuples(st.integers(0, INDEX_BATCH), st.integers(0, INDEX_BATCH)),
    cut=st.none() | st.integers(0, 10_000),
)
def test_queries_with_tails_of_every_length_answer_what_the_scan_answers(
    tmp_path_factory: pytest.TempPathFactory,
    q: Query,
    limit: int,
    tails: tuple[int, int],
    cut: int | None,
) -> None:
    root = tmp_path_factory.getbasetemp() / "tails"
    root.mkdir(exist_ok=True)
    path = root / f"t{threading.get_ident()}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(_base(str(root)), path)
    led = SqliteLedger(path)
    led.index_batch = 10**9  # the tail appends index nothing: tails of exactly these lengths
    rng = random.Random(sum(tails))
    tail = [
        _trail().prepare(event(rng, 400 + i, chain=chain))  # timestamps among the others'
        for chain, n in zip(CHAINS, tails, strict=True)
        for i in range(n)
    ]
    led.append_many(tail)
    assert [n - done for _, n, done in led.index_sizes()] == list(tails)
    positions = sorted(Position(r.ts, r.chain, r.seq) for r in iterate(Scan(led), Query()))
    before = None if cut is None else positions[cut % len(positions)]
    try:
        same(led, q, limit, before)
        with led.snapshot() as snap:
            same(snap, q, limit, before)
    finally:
        led.close()


@pytest.mark.parametrize("q", [Query(), Query(dag="ml"), Query(events=("task.*",))])
def test_pages_with_appends_between_them_show_every_record_once(tmp_path: Path, q: Query) -> None:
    """Appends between two pages (some reaching a batch boundary, so rows move from the tail
    into the index meanwhile) never show a record twice nor lose one that was there."""
    led = SqliteLedger(tmp_path / "moving.db")
    led.index_batch = 8
    led.append_many(prepared(300, seed=11))
    for rec in prepared(5, seed=12, start=300):
        led.append(rec)
    want = {r.hash for r in iterate(Scan(led), q)}
    writer = SqliteLedger(tmp_path / "moving.db")
    writer.index_batch = 8
    rng = random.Random(13)
    seen: list[str] = []
    before = None
    while True:
        page = search(led, q, limit=17, before=before)
        assert page.indexed
        seen.extend(r.hash for r in page.records)
        # records older than the page (so a later page may show them) and newer ones
        writer.append_many([_trail().prepare(event(rng, rng.randint(0, 700))) for _ in range(3)])
        if page.next is None:
            break
        before = page.next
    writer.close()
    assert len(seen) == len(set(seen))
    assert want <= set(seen)
    assert count(led, q, cap=10_000) == count(Scan(led), q, cap=10_000)
    led.close()


def test_chains_are_found_by_a_skip_scan_with_the_same_answer(ledger: SqliteLedger) -> None:
    assert ledger.path is not None
    rng = random.Random(21)
    names = ["b", "a", "a.b", "a-b", "A", "zz", "9x", "default"]
    ledger.append_many([_trail().prepare(event(rng, i, chain=names[i % 8])) for i in range(300)])
    with sqlite3.connect(ledger.path) as conn:
        distinct = [r[0] for r in conn.execute("SELECT DISTINCT chain FROM records ORDER BY 1")]
        merkle = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT chain FROM merkle_subtrees UNION "
                "SELECT DISTINCT chain FROM checkpoints ORDER BY 1"
            )
        ]
        plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + ledger.queries.chains))
    assert ledger.chains() == distinct == sorted(names)
    assert ledger.merkle_chains() == merkle
    assert merkle  # 300 records over 8 chains complete subtrees
    assert "SCAN records" not in plan.replace("COVERING INDEX", "")  # seeks, no full scan
    with ledger.snapshot() as snap:
        assert snap.chains() == distinct
    empty = SqliteLedger(ledger.path.with_name("empty.db"))
    assert empty.chains() == []
    assert empty.merkle_chains() == []
    empty.close()
