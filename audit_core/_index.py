"""The query index's row of a record: the derived, rebuildable columns the browser view, ``show``
and ``export`` filter on. Pure: no I/O. The index is never evidence (``verify`` never reads
it); every column is recomputed from the record's hashed bytes by ``index rebuild``.

>>> fields_of({"dag_id": "ml", "run_id": "r1", "task_id": "t"}, {"type": "user", "id": "ann"})
IndexFields(dag='ml', run='r1', task='t', actor='ann')
>>> fields_of({"flow_name": "etl", "flow_run_id": "f1"}, {"type": "service", "id": "prefect"})
IndexFields(dag='etl', run='f1', task=None, actor='prefect')
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import orjson

from audit_core._record import StoredRecord

__all__ = [
    "CATCH_UP",
    "INDEX_BATCH",
    "MAX_TAIL",
    "NO_DAG",
    "IndexFields",
    "IndexFlush",
    "IndexRow",
    "expand_events",
    "fields_of",
    "fields_of_body",
    "flush_due",
    "flush_stop",
    "flushes",
    "index_row",
    "index_rows",
    "is_exact",
    "literal_prefix",
    "new_chains",
    "next_prefix",
    "run_of",
    "spans",
]

#: Subject keys naming the pipeline (Airflow DAG, Prefect flow, generic), in order of preference.
PIPELINE_KEYS = ("dag_id", "flow_name", "pipeline")
#: Subject keys naming the run.
RUN_KEYS = ("run_id", "flow_run_id")
#: Subject keys naming the task.
TASK_KEYS = ("task_id", "task_name", "task")


class IndexFields(NamedTuple):
    """The derived columns of one record; None where the record names none."""

    dag: str | None
    run: str | None
    task: str | None
    actor: str | None


def _first(subject: Any, keys: tuple[str, ...]) -> str | None:
    if not isinstance(subject, dict):
        return None
    for key in keys:
        value = subject.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def run_of(subject: Any) -> str | None:
    """The run a record's subject names (Airflow's run_id, Prefect's flow_run_id), or None."""
    return _first(subject, RUN_KEYS)


def fields_of(subject: Any, actor: Any) -> IndexFields:
    """The index columns of a record with this subject and actor."""
    actor_id = actor.get("id") if isinstance(actor, dict) else None
    return IndexFields(
        dag=_first(subject, PIPELINE_KEYS),
        run=run_of(subject),
        task=_first(subject, TASK_KEYS),
        actor=actor_id if isinstance(actor_id, str) and actor_id else None,
    )


def fields_of_body(body: bytes) -> IndexFields:
    """The index columns of a record's canonical bytes (what a ledger stores); all None for
    bytes that are not a JSON object (``verify`` reports those, the index just skips them)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return IndexFields(None, None, None, None)
    if not isinstance(value, dict):
        return IndexFields(None, None, None, None)
    return fields_of(value.get("subject"), value.get("actor"))


#: A writer indexes a chain's unindexed tail in its append's transaction once the tail holds
#: this many records (one executemany per INDEX_BATCH appends instead of dirtying the index's
#: pages at every commit: bench/bench_index.py measured +30 % on SQLite's record() p50 with a
#: row per append). So the index lags a chain written by current writers by < INDEX_BATCH
#: records, and queries read that tail by seq (:mod:`audit_core.query`).
INDEX_BATCH = 64
#: A chain whose unindexed tail is longer (an old writer, a ledger made before the index, a
#: writer role that may not write it) is "incomplete": queries scan until ``index rebuild``.
MAX_TAIL = 4 * INDEX_BATCH


def flush_due(first: int, end: int, batch: int = INDEX_BATCH) -> bool:
    """Whether an append of seqs ``first <= seq < end`` reached a multiple of ``batch``: then
    it indexes its chain's whole unindexed tail (never more than one check per append).

    >>> flush_due(62, 63), flush_due(63, 64), flush_due(60, 130), flush_due(0, 1)
    (False, True, True, False)
    """
    return end // batch > first // batch


#: At most this many older unindexed records (an old writer's) are indexed by one append, so
#: that no record() call pays for a long backlog at once: a chain catches up CATCH_UP records
#: per batch boundary (or at once with ``index rebuild``).
CATCH_UP = 16 * INDEX_BATCH


def flush_stop(done: int, first: int, end: int, most: int = CATCH_UP) -> int:
    """Where an append of seqs ``first <= seq < end`` that indexes its chain's tail moves the
    chain's ``index_state`` from ``done``: to ``end``, unless more than ``most`` older records
    are unindexed; then ``most`` of them (contiguously, its own records left in the tail).

    >>> flush_stop(0, 63, 64), flush_stop(0, 5000, 5064, most=1024)
    (64, 1024)
    """
    return end if first - done <= most else done + most


#: A ``record_index`` row: (chain, seq, ts, event, dag, run, task, actor).
IndexRow = tuple[str, int, str, str, str, str | None, str | None, str | None]
#: The ``dag`` of a record about no DAG in the index: "" (never a DAG id, see :func:`fields_of`),
#: not NULL, so that "no DAG" is one more value an index seeks in ``ts`` order (a NULL range is
#: not ordered for PostgreSQL's planner).
NO_DAG = ""


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL: such a value is left out of the index in both ledgers
    # (the same rows everywhere); a query for it then finds the record by scanning only.
    return None if value is None or "\x00" in value else value


def index_row(chain: str, seq: int, body: bytes) -> IndexRow:
    """The ``record_index`` row of the record ``(chain, seq)`` stored as ``body``.

    Bytes that are no JSON object (``verify`` reports them) get ``ts`` and ``event`` "" and no
    fields, so the index stays complete and a query reads them as the scan would.

    >>> index_row("c", 0, b'{"event":"task.ok","subject":{"dag_id":"d"},"ts":"2026"}')
    ('c', 0, '2026', 'task.ok', 'd', None, None, None)
    >>> index_row("c", 1, b"[]")
    ('c', 1, '', '', '', None, None, None)
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        return (chain, seq, "", "", NO_DAG, None, None, None)
    ts, event = value.get("ts"), value.get("event")
    f = fields_of(value.get("subject"), value.get("actor"))
    return (
        chain,
        seq,
        (_text(ts) or "") if isinstance(ts, str) else "",
        (_text(event) or "") if isinstance(event, str) else "",
        _text(f.dag) or NO_DAG,
        _text(f.run),
        _text(f.task),
        _text(f.actor),
    )


def index_rows(stored: Iterable[StoredRecord]) -> list[IndexRow]:
    """The ``record_index`` rows of ``stored`` records (a rebuild reads them as stored: a
    tampered body may be text or another type, indexed as the bytes it can give)."""
    return [index_row(s.chain, s.seq, _bytes(s.body)) for s in stored]


def _bytes(body: object) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return b""


def spans(stored: Sequence[StoredRecord]) -> dict[str, tuple[int, int]]:
    """chain -> (first seq, one past the last seq) of the records one append stored: the
    ``index_state`` of a chain moves from ``first`` to ``end`` only if it was at ``first``.

    >>> spans([StoredRecord("a", 4, b"", b""), StoredRecord("a", 5, b"", b"")])
    {'a': (4, 6)}
    """
    out: dict[str, tuple[int, int]] = {}
    for s in stored:
        first, _ = out.get(s.chain, (s.seq, s.seq))
        out[s.chain] = (first, s.seq + 1)
    return out


_WILD = "*?["


def literal_prefix(pattern: str) -> str:
    """What every event a shell-style ``pattern`` matches starts with.

    >>> literal_prefix("task.*"), literal_prefix("run.ok"), literal_prefix("*.failed")
    ('task.', 'run.ok', '')
    """
    for i, ch in enumerate(pattern):
        if ch in _WILD:
            return pattern[:i]
    return pattern


def next_prefix(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: none).

    >>> next_prefix("task.")
    'task/'
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xE000:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def expand_events(patterns: Sequence[str], events: Iterable[str]) -> list[str]:
    """The ``events`` (distinct event types) any of ``patterns`` matches, sorted, so an
    index can seek each exactly instead of filtering.

    >>> expand_events(["task.*"], ["run.ok", "task.ok", "task.failed"])
    ['task.failed', 'task.ok']
    """
    return sorted({e for e in events if any(fnmatch.fnmatchcase(e, p) for p in patterns)})


def is_exact(pattern: str) -> bool:
    """Whether ``pattern`` has no wildcard (matches one event type, itself)."""
    return not any(ch in pattern for ch in _WILD)


class IndexFlush(NamedTuple):
    """One chain's tail an append indexes: state ``done`` → ``stop``; the records of seqs
    ``done <= seq < upto`` are read back from the ledger, ``mine`` come from the append."""

    chain: str
    done: int
    stop: int
    upto: int
    mine: list[StoredRecord]


def new_chains(stored: Sequence[StoredRecord]) -> list[str]:
    """The chains an append starts (its first record is seq 0): each gets ``index_state`` 0."""
    return [chain for chain, (first, _) in spans(stored).items() if first == 0]


def flushes(
    stored: Sequence[StoredRecord], batch: int, state: Callable[[str], object]
) -> Iterator[IndexFlush]:
    """The tails an append of ``stored`` indexes, in both ledgers' append transaction.
    ``state(chain)`` reads the chain's ``index_state`` (None without a row), asked only for a
    chain whose append reached a multiple of ``batch``, lazily, after the previous chain's
    flush was written. A chain without a state row (made before the index, or by a writer that
    indexes nothing) or with an edited one is skipped: ``index rebuild`` repairs it."""
    for chain, (first, end) in spans(stored).items():
        if not flush_due(first, end, batch):
            continue
        done = state(chain)
        if type(done) is not int or not 0 <= done <= first:
            continue
        stop = flush_stop(done, first, end)
        mine = [s for s in stored if s.chain == chain and s.seq < stop]
        yield IndexFlush(chain, done, stop, min(first, stop), mine)
