"""Benchmarks for the Merkle tree and checkpoints of ``audit_core``: the cost of keeping the
RFC 9162 tree on every append (the in-process frontier and the ``merkle_subtrees`` rows),
where the frontier comes from when the cache cannot serve it, signed checkpoints, proofs,
verification with root recomputation, and the storage the tree takes.

Run from the repository root (full mode takes one to two minutes, ``--quick`` under 30 s)::

    .venv-airflow/bin/python bench/bench_merkle.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_merkle.py --quick    # smoke test, small sizes

Markdown goes to stdout (paste it into BENCHMARKS.md as is); progress goes to stderr. The
script prints numbers and ratios and compares them with the goals of the checkpoint issue; it
never fails because something is slow.

Method, as in ``bench_core.py`` (helpers shared in ``bench/_common.py``): whatever is compared
is measured in the same run, interleaved call by call or round by round, and reported as a
median. The "without Merkle" ledger of section 1 is a bench-only subclass of ``SqliteLedger``
whose ``_seal_all`` is a copy of the real one minus the frontier and subtree work; the report
warns when the real ``_seal_all`` (or the SQL it runs) has changed since that copy was made.
Everything else goes through ``audit_core``'s public API: steps that have no public name of
their own are reported as the difference between what has one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import random
import sqlite3
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import audit_core.ledgers.sqlite
from audit_core import (
    AuditConfig,
    AuditTrail,
    Event,
    PreparedRecord,
    Signer,
    StoredRecord,
    Verifier,
    genesis,
    leaf_hash,
    verify_chain,
)
from audit_core.checkpoint import Checkpoint, open_checkpoint, write_checkpoint
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.proofs import make_inclusion_bundle, prove_consistency, verify_inclusion_bundle
from bench._common import (
    ACTOR,
    BUILD_BATCH,
    LATENCY_HEADER,
    ChildRun,
    Run,
    Stats,
    each,
    interleaved,
    machine,
    make_events,
    met,
    mib,
    ms,
    parse_bench_args,
    progress,
    rate,
    sqlite_url,
    table,
    us,
    verify_child,
)

# -- goals (from the checkpoint issue) ------------------------------------------------------------

#: Merkle maintenance may add at most this fraction to a durable single-record append.
GOAL_OVERHEAD = 0.10
GOAL_CHECKPOINT_MS = 50.0
GOAL_PROOF_MS = 5.0
GOAL_PROOF_VERIFY_MS = 1.0
GOAL_VERIFY_RPS = 250_000

CHAIN = "default"
VARIANTS = ("A", "B")
SIGNER_NAME = "bench.workflow-audit.local"
#: sha256[:12] of ``inspect.getsource(SqliteLedger._seal_all)`` when NoMerkleLedger was last
#: checked against it (issue #12: its sealing moved to ``ledgers._frontier.seal``; B unchanged).
SEAL_ALL_COPIED_FROM = "9480dbd76b20"
#: Verify rounds stop early once another round would take the time spent past this budget.
VERIFY_BUDGET_S = 60.0
#: B's copies of the statements ``SqliteLedger._seal_all`` runs on ``records`` (bench only:
#: :func:`seal_all_fingerprint` checks that the ledger still runs them).
LAST_SQL = "SELECT seq, hash FROM records WHERE chain = ? ORDER BY seq DESC LIMIT 1"
INSERT_SQL = "INSERT INTO records (chain, seq, hash, body) VALUES (?, ?, ?, ?)"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each section does."""

    append_warmup: int
    append_calls: int
    append_off_calls: int
    wal_commits: int
    batch: int
    batch_warmup: int
    batches: int
    tree: int
    checkpoint_warmup: int
    checkpoint_runs: int
    proofs: int
    consistency_proofs: int
    micro_calls: int
    verify_reps: int
    fold_rounds: int
    frontier_runs: int


FULL = Sizes(
    append_warmup=300,
    append_calls=5_000,
    append_off_calls=3_000,
    wal_commits=50,
    batch=1_000,
    batch_warmup=3,
    batches=30,
    tree=1_000_000,
    checkpoint_warmup=3,
    checkpoint_runs=30,
    proofs=200,
    consistency_proofs=200,
    micro_calls=2_000,
    verify_reps=3,
    fold_rounds=3,
    frontier_runs=20,
)
QUICK = Sizes(
    append_warmup=50,
    append_calls=1_000,
    append_off_calls=1_000,
    wal_commits=20,
    batch=1_000,
    batch_warmup=1,
    batches=6,
    tree=100_000,
    checkpoint_warmup=1,
    checkpoint_runs=10,
    proofs=100,
    consistency_proofs=100,
    micro_calls=300,
    verify_reps=1,
    fold_rounds=2,
    frontier_runs=5,
)


def median_ns(samples: Sequence[int]) -> float:
    return float(statistics.median(samples))


def pct(fraction: float) -> str:
    return f"{fraction:+.1%}"


# -- B: the same ledger without Merkle maintenance (bench only) -----------------------------------


class NoMerkleLedger(SqliteLedger):
    """BENCH-ONLY variant B: ``SqliteLedger`` whose append seals and inserts the records and
    does nothing else (no frontier cache lookup or catch-up, no ``push``, no
    ``merkle_subtrees`` inserts; it returns no frontiers, so ``append_many`` caches none).
    Never use it for data: its ledgers carry no Merkle tree (``tree_head`` raises, verify
    treats them as ledgers whose subtrees are missing)."""

    def _seal_all(
        self, conn: sqlite3.Connection, records: Sequence[PreparedRecord]
    ) -> tuple[list[StoredRecord], dict[str, Any]]:
        # BENCH ONLY: a copy of SqliteLedger._seal_all with every frontier/subtree line removed.
        heads: dict[str, tuple[int, str]] = {}
        stored: list[StoredRecord] = []
        for rec in records:
            chain = rec.chain
            head = heads.get(chain)
            if head is None:
                row = conn.execute(LAST_SQL, (chain,)).fetchone()
                head = (-1, genesis(chain)) if row is None else (row[0], row[1].hex())
            seq = head[0] + 1
            body = rec.seal(seq, head[1])
            digest = leaf_hash(body)
            heads[chain] = (seq, digest.hex())
            stored.append(StoredRecord(chain, seq, digest, body))
        conn.executemany(INSERT_SQL, stored)
        return stored, {}


def seal_all_fingerprint() -> str:
    """sha256[:12] of ``SqliteLedger._seal_all``'s source, or "SQL changed" when the SQL that B
    copied is no longer in ``audit_core/ledgers/sqlite.py``."""
    module = inspect.getsource(audit_core.ledgers.sqlite)
    if any(f'"{sql}"' not in module for sql in (LAST_SQL, INSERT_SQL)):
        return "SQL changed"
    source = inspect.getsource(SqliteLedger._seal_all)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def open_pair(tmp: Path, synchronous: str, tag: str) -> dict[str, AuditTrail]:
    """Trail A on a real ``SqliteLedger``, trail B on a ``NoMerkleLedger``; no checkpoints."""
    trails = {}
    for variant, kind in zip(VARIANTS, (SqliteLedger, NoMerkleLedger), strict=True):
        path = tmp / f"{tag}-{variant.lower()}.db"
        config = AuditConfig(
            ledger_url=sqlite_url(path), synchronous=synchronous, actor=ACTOR, checkpoint_every=0
        )
        trails[variant] = AuditTrail(config, ledger=kind(path, synchronous=synchronous))
    return trails


def close_all(trails: dict[str, AuditTrail]) -> None:
    for trail in trails.values():
        trail.close()


# -- 1. frontier maintenance on append ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """A (with Merkle) vs B (without), same run, interleaved."""

    a: Stats
    b: Stats
    diff_p50_ns: float  # median of the per-call (or per-batch) differences A - B
    diff_mean_ns: float

    @property
    def overhead(self) -> float:
        """What Merkle maintenance adds to the append, as a fraction of B's p50."""
        return self.a.p50 / self.b.p50 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResult:
    single: dict[str, Pair]  # synchronous -> record() pair
    wal_pages: dict[str, float]  # variant -> WAL frames (pages) written per FULL commit
    grow_calls: dict[str, int]  # synchronous -> calls until both WALs reached full size
    batch: Pair
    node_hash_ns: float
    both_verify: str
    seal_all_now: str


def bench_append(tmp: Path, sizes: Sizes, events: list[Event]) -> AppendResult:
    single: dict[str, Pair] = {}
    wal_pages: dict[str, float] = {}
    grown: dict[str, int] = {}
    checks = []
    for sync, calls in (("FULL", sizes.append_calls), ("OFF", sizes.append_off_calls)):
        progress(f"1. record() A vs B, synchronous={sync}, {calls:,} calls each")
        trails = open_pair(tmp, sync, f"single-{sync.lower()}")
        try:
            grown[sync] = grow_wals(trails, events)
            single[sync] = single_pair(trails, events, sizes.append_warmup, calls)
            if sync == "FULL":
                wal_pages = wal_pages_per_commit(trails, events, sizes.wal_commits)
            checks += [verify_chain(t.ledger, CHAIN).size for t in trails.values()]
        finally:
            close_all(trails)
    progress(f"1. append_many() A vs B, {sizes.batches} batches of {sizes.batch:,}, NORMAL")
    trails = open_pair(tmp, "NORMAL", "batch")
    try:
        batch = batch_pair(trails, events, sizes)
        checks += [verify_chain(t.ledger, CHAIN).size for t in trails.values()]
    finally:
        close_all(trails)
    node_ns = node_hash_micro(sizes.micro_calls)
    return AppendResult(
        single=single,
        wal_pages=wal_pages,
        grow_calls=grown,
        batch=batch,
        node_hash_ns=node_ns,
        both_verify=f"all {len(checks)} ledgers pass `verify_chain` ({sum(checks):,} records)",
        seal_all_now=seal_all_fingerprint(),
    )


def grow_wals(trails: dict[str, AuditTrail], events: list[Event], limit: int = 20_000) -> int:
    """Call ``record()`` on A and B until both WAL files have reached the autocheckpoint size;
    returns the number of calls. Until then a commit also extends the WAL file, which makes
    its fsync dearer: B, writing fewer pages a commit, would stay in that phase longer than A
    and look slower than it is in a long-running process."""
    paths = [t.ledger.path for t in trails.values() if isinstance(t.ledger, SqliteLedger)]
    conn = sqlite3.connect(str(paths[0]), isolation_level=None)
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    finally:
        conn.close()
    full = pages * (page_size + 24)  # a WAL frame: 24-byte header + one page

    def wal_size(path: Path | None) -> int:
        wal = Path(f"{path}-wal")
        return wal.stat().st_size if wal.exists() else 0

    calls = 0
    while calls < limit and min(wal_size(p) for p in paths) < full:
        e = events[calls % len(events)]
        for trail in trails.values():
            trail.record(e.type, e.data, subject=e.subject, trace=e.trace)
        calls += 1
    return calls


def single_pair(
    trails: dict[str, AuditTrail], events: list[Event], warmup: int, calls: int
) -> Pair:
    """``record()`` on A and B alternately, call by call, the order flipping every call."""
    times: dict[str, list[int]] = {v: [] for v in VARIANTS}
    diffs: list[int] = []
    clock = perf_counter_ns
    for i in range(warmup + calls):
        e = events[i % len(events)]
        took: dict[str, int] = {}
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            trail = trails[variant]
            t0 = clock()
            trail.record(e.type, e.data, subject=e.subject, trace=e.trace)
            took[variant] = clock() - t0
        if i >= warmup:
            for variant in VARIANTS:
                times[variant].append(took[variant])
            diffs.append(took["A"] - took["B"])
    return Pair(
        a=Stats.of(times["A"]),
        b=Stats.of(times["B"]),
        diff_p50_ns=median_ns(diffs),
        diff_mean_ns=statistics.fmean(diffs),
    )


def wal_pages_per_commit(
    trails: dict[str, AuditTrail], events: list[Event], commits: int
) -> dict[str, float]:
    """Pages each single-record commit appends to the WAL (what the fsync has to write).
    The WAL is truncated first and stays far below the 1,000-page autocheckpoint."""
    paths = {v: t.ledger.path for v, t in trails.items() if isinstance(t.ledger, SqliteLedger)}

    def wal_frames(path: Path | None, mode: str) -> int:
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            _, frames, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.close()
        return int(frames)

    for path in paths.values():
        wal_frames(path, "TRUNCATE")
    for i in range(commits):
        e = events[i % len(events)]
        for variant in VARIANTS:
            trails[variant].record(e.type, e.data, subject=e.subject, trace=e.trace)
    return {v: wal_frames(p, "PASSIVE") / commits for v, p in paths.items()}


def batch_pair(trails: dict[str, AuditTrail], events: list[Event], sizes: Sizes) -> Pair:
    """``ledger.append_many`` of the same prepared batch on A and B, alternating."""
    prepared = [trails["A"].prepare(e) for e in events[: sizes.batch]]
    times: dict[str, list[int]] = {v: [] for v in VARIANTS}
    diffs: list[int] = []
    clock = perf_counter_ns
    for r in range(sizes.batch_warmup + sizes.batches):
        took: dict[str, int] = {}
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            ledger = trails[variant].ledger
            t0 = clock()
            ledger.append_many(prepared)
            took[variant] = clock() - t0
        if r >= sizes.batch_warmup:
            for variant in VARIANTS:
                times[variant].append(took[variant])
            diffs.append(took["A"] - took["B"])
    return Pair(
        a=Stats.of(times["A"]),
        b=Stats.of(times["B"]),
        diff_p50_ns=median_ns(diffs),
        diff_mean_ns=statistics.fmean(diffs),
    )


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash, SHA-256(0x01 || left || right): the unit of every
    Merkle step (audit_core's own is private; section 4 checks this one against the ledger's
    tree head)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def fold(nodes: Sequence[bytes]) -> bytes:
    """The root of a tree from its compact frontier: the nodes folded from the right."""
    h = nodes[-1]
    for left in reversed(nodes[:-1]):
        h = node_hash(left, h)
    return h


def node_hash_micro(n: int) -> float:
    """ns per :func:`node_hash` call on random 32-byte pairs."""
    rng = random.Random(7)
    pairs = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(n)]
    steps: list[tuple[str, Callable[[], object]]] = [
        ("node_hash", each(lambda p: node_hash(p[0], p[1]), pairs)),
    ]
    return dict(interleaved(steps, rounds=5))["node_hash"] / n


# -- 2. build the big ledger; checkpoints ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class BuildResult:
    size: int
    every: int  # records per transaction, and per checkpoint
    append_rps: float  # append_many alone
    build_checkpoints: Stats  # one after every transaction, synchronous=OFF
    checkpoints_stored: int


def big_config(path: Path, signer: Signer, synchronous: str) -> AuditConfig:
    return AuditConfig(
        ledger_url=sqlite_url(path),
        synchronous=synchronous,
        actor=ACTOR,
        checkpoint_every=0,  # the bench signs explicitly
        signing_key=str(signer),
    )


def build_big(path: Path, sizes: Sizes, signer: Signer) -> BuildResult:
    """``sizes.tree`` records, synchronous=OFF: BUILD_BATCH events prepared once, and the same
    prepared records appended again and again (each copy gets its own seq and prev, so the
    chain is valid), in transactions of ``checkpoint_every`` records (AuditConfig's default),
    a checkpoint signed after each: the checkpoints a default trail would have stored."""
    append_ns = 0
    cps: list[int] = []
    clock = perf_counter_ns
    with AuditTrail(big_config(path, signer, "OFF")) as trail:
        pool = [trail.prepare(e) for e in make_events(BUILD_BATCH, seed=sizes.tree)]
        every = default_checkpoint_every()
        written = 0
        while written < sizes.tree:
            start = written % BUILD_BATCH
            batch = pool[start : start + min(every, sizes.tree - written)]
            t0 = clock()
            trail.ledger.append_many(batch)
            t1 = clock()
            trail.checkpoint(CHAIN)
            cps.append(clock() - t1)
            append_ns += t1 - t0
            written += len(batch)
            if written % 200_000 == 0:
                progress(f"  built {written:,} / {sizes.tree:,} records")
        stored = len(trail.ledger.checkpoints(CHAIN))
    return BuildResult(
        size=sizes.tree,
        every=every,
        append_rps=sizes.tree / append_ns * 1e9,
        build_checkpoints=Stats.of(cps),
        checkpoints_stored=stored,
    )


def default_checkpoint_every() -> int:
    return AuditConfig(ledger_url="sqlite:///:memory:", actor=ACTOR).checkpoint_every


PIECES = (
    "`ledger.latest_checkpoint` (index seek)",
    "`ledger.tree_head` (last seq; cached frontier → root)",
    "`prove_consistency` from the latest (head read, proof, verify)",
    "`signer.sign(text)` (Ed25519)",
)


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointResult:
    whole: Stats
    pieces: list[tuple[str, Stats]]
    pieces_total: Stats
    size_after: int
    stored_after: int
    micro: list[tuple[str, float]]  # ns per call


def bench_checkpoint(
    path: Path, sizes: Sizes, signer: Signer, events: list[Event]
) -> CheckpointResult:
    """``trail.checkpoint()`` and its pieces (done by hand, as ``write_checkpoint`` does them),
    alternating run by run; each run first appends one record, so every checkpoint is new."""
    whole: list[int] = []
    pieces: dict[str, list[int]] = {name: [] for name in PIECES}
    totals: list[int] = []
    clock = perf_counter_ns
    with AuditTrail(big_config(path, signer, "FULL")) as trail:
        origin = trail.origin(CHAIN)
        ledger = trail.ledger
        assert isinstance(ledger, SqliteLedger)
        for r in range(sizes.checkpoint_warmup + sizes.checkpoint_runs):
            keep = r >= sizes.checkpoint_warmup
            for variant in ("whole", "pieces") if r % 2 == 0 else ("pieces", "whole"):
                e = events[r % len(events)]
                size = trail.record(e.type, e.data, subject=e.subject).seq + 1
                if variant == "whole":
                    t0 = clock()
                    stored = trail.checkpoint(CHAIN)
                    took = clock() - t0
                    if stored is None or stored.size != size:
                        raise RuntimeError(f"checkpoint at {stored and stored.size}, not {size}")
                    if keep:
                        whole.append(took)
                else:
                    parts = checkpoint_pieces(ledger, signer, origin, size)
                    if keep:
                        for name, ns in zip(PIECES, parts, strict=True):
                            pieces[name].append(ns)
                        totals.append(sum(parts))
        size_after = ledger.tree_head(CHAIN)[0]
        stored_after = len(ledger.checkpoints(CHAIN))
        latest = ledger.latest_checkpoint(CHAIN)
        assert latest is not None
        note = latest.note
    return CheckpointResult(
        whole=Stats.of(whole),
        pieces=[(name, Stats.of(v)) for name, v in pieces.items()],
        pieces_total=Stats.of(totals),
        size_after=size_after,
        stored_after=stored_after,
        micro=signing_micro(signer, note, sizes.micro_calls),
    )


def checkpoint_pieces(ledger: SqliteLedger, signer: Signer, origin: str, size: int) -> list[int]:
    """The steps of ``write_checkpoint`` that have a public name, in its order, timed; then
    ``write_checkpoint`` itself, untimed, stores the checkpoint (every run signs a new one)."""
    clock = perf_counter_ns
    t0 = clock()
    last = ledger.latest_checkpoint(CHAIN)
    t1 = clock()
    tree_size, root = ledger.tree_head(CHAIN)
    t2 = clock()
    if last is None:
        raise RuntimeError("the big ledger has no checkpoint")
    new = Checkpoint(origin, tree_size, root)
    prove_consistency(ledger, CHAIN, Checkpoint(origin, last.size, last.root), new)
    t3 = clock()
    signer.sign(new.text().encode())
    t4 = clock()
    stored = write_checkpoint(ledger, CHAIN, signer, origin=origin)
    if tree_size != size or stored is None or stored.size != size:
        raise RuntimeError(f"tree head at {tree_size}, expected {size}")
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3]


def signing_micro(signer: Signer, note: str, n: int) -> list[tuple[str, float]]:
    """ns per call of the Ed25519 steps behind signing a checkpoint and ``open_checkpoint``."""
    key = Ed25519PrivateKey.from_private_bytes(signer.seed)
    public = key.public_key()
    verifier = signer.verifier
    text = note[: note.rfind("\n\n") + 1]
    message = text.encode()
    signature = key.sign(message)
    calls = range(n)
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "`signer.sign(text)` (cached key object, signs)",
            each(lambda _: signer.sign(message), calls),
        ),
        ("  ↳ Ed25519 sign alone, key object kept", each(lambda _: key.sign(message), calls)),
        (
            "`signer.verifier` (cached per key: an `lru_cache` hit)",
            each(lambda _: signer.verifier, calls),
        ),
        (
            "what the cache saves: `Ed25519PrivateKey.from_private_bytes(seed)`",
            each(lambda _: Ed25519PrivateKey.from_private_bytes(signer.seed), calls),
        ),
        (
            "`open_checkpoint(note, [verifier])`",
            each(lambda _: open_checkpoint(note, [verifier]), calls),
        ),
        (
            "  ↳ Ed25519 verify alone, key object kept",
            each(lambda _: public.verify(signature, message), calls),
        ),
    ]
    return [(name, ns / n) for name, ns in interleaved(steps, rounds=5)]


# -- 3. proofs ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ProofResult:
    tree_size: int  # of the checkpoint the bundles prove against
    make: Stats
    make_pieces: list[tuple[str, Stats]]
    node_reads: Stats  # ledger.node calls per inclusion proof
    verify: Stats
    open_checkpoint: Stats
    verify_rest: Stats  # verify_inclusion_bundle minus open_checkpoint, call by call
    path_len: float
    consistency: Stats
    consistency_reads: Stats
    consistency_len: float
    checkpoints: int  # stored checkpoints the consistency pairs are drawn from


class NodeCounter:
    """The ledger, with its ``node`` reads (one ``SELECT`` each) counted."""

    def __init__(self, ledger: SqliteLedger) -> None:
        self.ledger = ledger
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)

    def node(self, chain: str, level: int, index: int) -> bytes:
        self.reads += 1
        return self.ledger.node(chain, level, index)


def bench_proofs(ledger: SqliteLedger, verifier: Verifier, sizes: Sizes) -> ProofResult:
    """Inclusion bundles for random seqs: make, verify, and the pieces of each, call by call;
    then consistency proofs between random pairs of stored checkpoints."""
    rng = random.Random(20261129)
    latest = ledger.latest_checkpoint(CHAIN)
    if latest is None:
        raise RuntimeError("the big ledger has no checkpoint")
    clock = perf_counter_ns
    make: list[int] = []
    verify: list[int] = []
    opened: list[int] = []
    verify_rest: list[int] = []
    parts: dict[str, list[int]] = {
        "`ledger.latest_checkpoint` (index seek)": [],
        "`ledger.read(chain, seq, seq + 1)` (opens a connection)": [],
        "the rest: `inclusion_proof` (`ledger.node` reads), the bundle (difference)": [],
    }
    reads: list[int] = []
    path_lens: list[int] = []
    for _ in range(sizes.proofs):
        seq = rng.randrange(latest.size)
        t0 = clock()
        bundle = make_inclusion_bundle(ledger, CHAIN, seq)
        t1 = clock()
        proven = verify_inclusion_bundle(bundle, [verifier])
        t2 = clock()
        open_checkpoint(bundle["checkpoint"], [verifier])
        t3 = clock()
        if proven.checkpoint.size != latest.size:
            raise RuntimeError(f"bundle for tree size {proven.checkpoint.size}, not {latest.size}")
        ledger.latest_checkpoint(CHAIN)
        t4 = clock()
        next(iter(ledger.read(CHAIN, seq, seq + 1)))
        t5 = clock()
        counted = NodeCounter(ledger)
        make_inclusion_bundle(counted, CHAIN, seq)  # untimed: counts the reads
        make.append(t1 - t0)
        verify.append(t2 - t1)
        opened.append(t3 - t2)
        verify_rest.append((t2 - t1) - (t3 - t2))
        rest = (t1 - t0) - (t4 - t3) - (t5 - t4)
        for name, ns in zip(parts, (t4 - t3, t5 - t4, rest), strict=True):
            parts[name].append(ns)
        reads.append(counted.reads)
        path_lens.append(len(bundle["audit_path"]))

    origin = open_checkpoint(latest.note, [verifier]).origin
    stored = [Checkpoint(origin, c.size, c.root) for c in ledger.checkpoints(CHAIN)]
    cons: list[int] = []
    cons_reads: list[int] = []
    cons_lens: list[int] = []
    for _ in range(sizes.consistency_proofs):
        old, new = sorted(rng.sample(stored, 2), key=lambda c: c.size)
        t0 = clock()
        proof = prove_consistency(ledger, CHAIN, old, new)
        t1 = clock()
        counted = NodeCounter(ledger)
        prove_consistency(counted, CHAIN, old, new)  # untimed: counts the reads
        cons.append(t1 - t0)
        cons_reads.append(counted.reads)
        cons_lens.append(len(proof))
    return ProofResult(
        tree_size=latest.size,
        make=Stats.of(make),
        make_pieces=[(name, Stats.of(v)) for name, v in parts.items()],
        node_reads=Stats.of(reads),
        verify=Stats.of(verify),
        open_checkpoint=Stats.of(opened),
        verify_rest=Stats.of(verify_rest),
        path_len=statistics.fmean(path_lens),
        consistency=Stats.of(cons),
        consistency_reads=Stats.of(cons_reads),
        consistency_len=statistics.fmean(cons_lens),
        checkpoints=len(stored),
    )


# -- 4. verification with Merkle root recomputation -----------------------------------------------

_HASHES = "SELECT hash FROM records WHERE chain = ? ORDER BY seq"


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    runs: list[ChildRun]
    claims: int
    records: int
    loops: list[tuple[str, float]]  # ns per record
    root_matches: bool


def bench_verify(path: Path, sizes: Sizes) -> VerifyResult:
    runs: list[ChildRun] = []
    spent = 0.0
    for rep in range(sizes.verify_reps):
        progress(f"4. verify_chain in a child process, round {rep + 1}/{sizes.verify_reps}")
        t0 = perf_counter()
        runs.append(verify_child(path, CHAIN))
        last = perf_counter() - t0
        spent += last
        if spent + last > VERIFY_BUDGET_S:  # keep a full run within minutes on slow code
            progress(f"4. stopping after {rep + 1} round(s): {spent:.0f} s spent verifying")
            break
    progress("4. the Merkle fold alone vs reading the hashes")
    ledger = SqliteLedger(path, create=False)
    try:
        size, stored_root = ledger.tree_head(CHAIN)
        claims = len(ledger.checkpoints(CHAIN))
    finally:
        ledger.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    roots: list[bytes] = []
    try:
        loops = fold_loops(conn, sizes.fold_rounds, roots)
    finally:
        conn.close()
    return VerifyResult(
        runs=runs,
        claims=claims,
        records=size,
        loops=[(name, ns / size) for name, ns in loops],
        root_matches=bool(roots) and all(r == stored_root for r in roots),
    )


def fold_loops(
    conn: sqlite3.Connection, rounds: int, roots: list[bytes]
) -> list[tuple[str, float]]:
    """Iterate the stored hashes; the same plus the compact-frontier fold ``verify_chain``
    does inline, with :func:`node_hash`."""

    def read_only() -> None:
        for _seq, (_h,) in enumerate(conn.execute(_HASHES, (CHAIN,))):
            pass

    def inline() -> None:
        stack: list[bytes] = []
        for seq, (h,) in enumerate(conn.execute(_HASHES, (CHAIN,))):
            node, n = h, seq
            while n & 1:
                node = node_hash(stack.pop(), node)
                n >>= 1
            stack.append(node)
        roots.append(fold(stack))

    steps: list[tuple[str, Callable[[], object]]] = [
        ("iterate `SELECT hash … ORDER BY seq` (baseline)", read_only),
        ("+ compact-frontier fold, as inlined in `verify_chain`", inline),
    ]
    return interleaved(steps, rounds)


# -- 5. storage -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StorageResult:
    records: int
    subtrees: int
    expected_subtrees: int
    objects: list[tuple[str, int, int, int, int]]  # name, pages, bytes, payload, unused
    file_bytes: int
    method: str


_OBJECTS = (
    "records",
    "records_chain_seq",
    "merkle_subtrees",  # WITHOUT ROWID: the table is its primary-key b-tree, no other index
    "checkpoints",
    "sqlite_autoindex_checkpoints_1",
)


def bench_storage(path: Path) -> StorageResult:
    """Bytes on disk per object: dbstat when SQLite has it, else a payload lower bound."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        records = conn.execute("SELECT COUNT(*) FROM records WHERE chain = ?", (CHAIN,))
        n = int(records.fetchone()[0])
        # one row per leaf that completes subtrees, 32 bytes per subtree hash in it
        subtrees = int(
            conn.execute(
                "SELECT COALESCE(SUM(LENGTH(hashes)), 0) / 32 FROM merkle_subtrees"
            ).fetchone()[0]
        )
        try:
            rows = conn.execute(
                "SELECT name, COUNT(*), SUM(pgsize), SUM(payload), SUM(unused) FROM dbstat "
                "GROUP BY name"
            ).fetchall()
            method = "`dbstat` virtual table (pages of each b-tree, incl. interior pages)"
        except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
            payload = conn.execute(
                "SELECT SUM(LENGTH(CAST(chain AS BLOB)) + LENGTH(hashes) + 8) FROM merkle_subtrees"
            ).fetchone()[0]
            rows = [("merkle_subtrees", 0, int(payload or 0), int(payload or 0), 0)]
            method = "payload lower bound (no `dbstat` in this SQLite): chain + hash + ~8 B"
    finally:
        conn.close()
    found = {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
    objects = [(name, *found[name]) for name in _OBJECTS if name in found]
    return StorageResult(
        records=n,
        subtrees=subtrees,
        expected_subtrees=n - n.bit_count(),  # complete subtrees of level >= 1 in a tree of n
        objects=objects,
        file_bytes=path.stat().st_size,
        method=method,
    )


# -- 6. where the frontier comes from ------------------------------------------------------------

#: How far behind the chain a ledger's cached frontier is made to fall (appends by another).
BEHIND = (1, 100, 10_000)


@dataclasses.dataclass(frozen=True, slots=True)
class FrontierResult:
    size_before: int
    size_after: int
    rows: list[tuple[str, Stats]]
    consistent: bool  # every tree_head above equals the writer's


def bench_frontier_sources(
    path: Path, sizes: Sizes, signer: Signer, events: list[Event]
) -> FrontierResult:
    """``tree_head`` then a one-record ``append_many`` on a ledger instance X, synchronous=OFF,
    with X's frontier cache empty (a fresh instance, as in a new process), current, and ``k``
    records behind after another instance (as another process) appended ``k``. Runs last: it
    grows the chain by about ``frontier_runs * (sum(BEHIND) + 2 + len(BEHIND))`` records."""
    clock = perf_counter_ns
    # (records the other instance appends first, tree_head label, append label)
    cases: list[tuple[int, str, str]] = [
        (
            0,
            "`tree_head`, no cache (fresh instance): `Frontier.at`, one read per set bit",
            "`append_many` of 1, no cache: `Frontier.at`, then as below",
        ),
        (0, "`tree_head`, cache current", "`append_many` of 1, cache current"),
    ]
    cases += [
        (
            k,
            f"`tree_head`, cache {k:,} behind: {k:,} record hash(es) read and `push`ed",
            f"`append_many` of 1, cache {k:,} behind (catches up, caches)",
        )
        for k in BEHIND
    ]
    times: dict[str, list[int]] = {label: [] for _, *pair in cases for label in pair}
    consistent = True
    with AuditTrail(big_config(path, signer, "OFF")) as writer:
        other = writer.ledger
        assert isinstance(other, SqliteLedger)
        pool = [writer.prepare(e) for e in events]
        size_before = other.tree_head(CHAIN)[0]
        used = 0
        for _ in range(sizes.frontier_runs):
            x = SqliteLedger(path, synchronous="OFF", create=False)
            try:
                x.head(CHAIN)  # opens the connection outside the timings
                for k, head_label, append_label in cases:
                    while k:
                        n = min(k, len(pool))
                        other.append_many(pool[:n])
                        k -= n
                    t0 = clock()
                    head = x.tree_head(CHAIN)
                    t1 = clock()
                    x.append_many(pool[used % len(pool) : used % len(pool) + 1])
                    t2 = clock()
                    used += 1
                    times[head_label].append(t1 - t0)
                    times[append_label].append(t2 - t1)
                    consistent &= head[0] + 1 == other.tree_head(CHAIN)[0]
                    consistent &= x.tree_head(CHAIN) == other.tree_head(CHAIN)
            finally:
                x.close()
        size_after = other.tree_head(CHAIN)[0]
    return FrontierResult(
        size_before=size_before,
        size_after=size_after,
        rows=[(label, Stats.of(v)) for label, v in times.items()],
        consistent=consistent,
    )


# -- report ---------------------------------------------------------------------------------------


def pair_rows(label: str, pair: Pair) -> list[tuple[str, ...]]:
    return [
        (f"{label}, A (with Merkle)", *pair.a.cells()),
        (f"{label}, B (without, bench-only)", *pair.b.cells()),
    ]


def report(
    *,
    command: str,
    host: list[tuple[str, str]],
    sizes: Sizes,
    app: AppendResult,
    build: BuildResult,
    cp: CheckpointResult,
    proofs: ProofResult,
    ver: VerifyResult,
    disk: StorageResult,
    sources: FrontierResult,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
) -> str:
    out: list[str] = []
    add = out.append
    full = app.single["FULL"]
    verify_rps = statistics.median(r.size / r.wall_s for r in ver.runs)
    verify_cpu_rps = statistics.median(r.size / r.cpu_s for r in ver.runs)
    subtrees_per_record = disk.subtrees / disk.records
    subtree_obj = next((o for o in disk.objects if o[0] == "merkle_subtrees"), None)
    subtree_bytes = subtree_obj[2] if subtree_obj else 0

    add("## audit_core Merkle tree and checkpoint benchmarks\n")
    add(f"Command: `{command}`  ")
    add(f"Run time: {elapsed_s:.0f} s\n")
    if code_changed:
        add(
            "**Warning: audit_core changed while this ran; the numbers mix two versions "
            "(verify children import it afresh). Run again.**\n"
        )
    if app.seal_all_now != SEAL_ALL_COPIED_FROM:
        add(
            f"**Warning: `SqliteLedger._seal_all` changed (source sha256 {app.seal_all_now}) "
            f"since the bench-only variant B copied it ({SEAL_ALL_COPIED_FROM}): B may no "
            "longer be 'A minus the Merkle work'. Update `NoMerkleLedger._seal_all`.**\n"
        )
    add(table(("Machine", ""), [*host, ("load average (1 min), start → end", " → ".join(load))]))
    add("")
    add("### Goals\n")
    add(
        table(
            ("Goal", "Target", "Measured", "Met"),
            [
                (
                    "1. Merkle maintenance on durable `record()` (FULL), A/B - 1 at p50",
                    f"< {GOAL_OVERHEAD:.0%}",
                    f"{pct(full.overhead)} ({ms(full.a.p50)} vs {ms(full.b.p50)})",
                    met(full.overhead < GOAL_OVERHEAD),
                ),
                (
                    f"2. `trail.checkpoint()` of a {build.size:,}-record chain, median",
                    f"< {GOAL_CHECKPOINT_MS:.0f} ms",
                    f"{ms(cp.whole.p50)} (p90 {ms(cp.whole.p90)})",
                    met(cp.whole.p50 < GOAL_CHECKPOINT_MS * 1e6),
                ),
                (
                    f"3. `make_inclusion_bundle` at {proofs.tree_size:,} records, median",
                    f"< {GOAL_PROOF_MS:.0f} ms",
                    f"{ms(proofs.make.p50)} (p90 {ms(proofs.make.p90)})",
                    met(proofs.make.p50 < GOAL_PROOF_MS * 1e6),
                ),
                (
                    "3. `verify_inclusion_bundle` (signature, canonical JSON, path), median",
                    f"< {GOAL_PROOF_VERIFY_MS:.0f} ms",
                    f"{ms(proofs.verify.p50)} (p90 {ms(proofs.verify.p90)})",
                    met(proofs.verify.p50 < GOAL_PROOF_VERIFY_MS * 1e6),
                ),
                (
                    f"4. `verify_chain()` with Merkle roots, {ver.records:,} records, one core",
                    f"≥ {GOAL_VERIFY_RPS:,} records/s",
                    rate(verify_rps),
                    met(verify_rps >= GOAL_VERIFY_RPS),
                ),
                (
                    "5. subtree hashes stored per record (`merkle_subtrees`)",
                    "≈ 1",
                    f"{subtrees_per_record:.5f} ({disk.subtrees:,} for {disk.records:,})",
                    met(abs(subtrees_per_record - 1) < 0.01),
                ),
            ],
        )
    )

    add(f"\n### 1. Frontier maintenance on append (A vs B, {sizes.append_calls:,} calls)\n")
    add(
        "A = the current `SqliteLedger`: inside the append's transaction, `_seal_all` also "
        "takes the chain's frontier from the instance's in-process cache (checked against the "
        "size just read from `records`; here always current, one writer per ledger), copies "
        "its nodes into a list, `_merkle.push`es the new leaf hash in place, and inserts the "
        "subtrees that leaf completes into `merkle_subtrees` as one row (none for an even "
        "seq; for an odd one a row of their hashes: one hash a record on average); after "
        "COMMIT `append_many` stores the new frontier in the cache. Nothing else is "
        "written: the frontier is not persisted. "
        "**B = `NoMerkleLedger`, a bench-only subclass** whose `_seal_all` is a copy of A's "
        "without those steps (records and their hash chain only; it returns no frontiers). "
        "Both through `AuditTrail.record()` with `checkpoint_every=0` (no signing), two "
        "ledgers, A and B alternating call by call (the order flipping every call). Warm-up: "
        f"{app.grow_calls.get('FULL', 0):,} calls (OFF: {app.grow_calls.get('OFF', 0):,}) "
        "until both WAL files had reached their full size (SQLite's autocheckpoint), as in a "
        "long-running process (while a WAL file grows, every commit also changes its size, "
        "which makes the fsync dearer, and B, writing fewer pages, stays in that phase "
        f"longer), then {sizes.append_warmup} more. OFF: {sizes.append_off_calls:,} calls. "
        "Paired difference = median of the per-call differences A - B.\n"
    )
    rows: list[tuple[str, ...]] = []
    for sync, pair in app.single.items():
        rows += pair_rows(f"`record()`, synchronous={sync}", pair)
    add(table(LATENCY_HEADER, rows))
    add("")
    rows = [
        (
            f"`record()`, synchronous={sync}",
            f"{pair.a.p50 / pair.b.p50:.3f}x",
            f"{pair.a.p99 / pair.b.p99:.3f}x",
            f"{pair.a.mean / pair.b.mean:.3f}x",
            us(pair.diff_p50_ns),
            pct(pair.diff_p50_ns / pair.a.p50),
        )
        for sync, pair in app.single.items()
    ]
    b = app.batch
    rows.append(
        (
            f"`ledger.append_many()` of {sizes.batch:,}, NORMAL (per batch)",
            f"{b.a.p50 / b.b.p50:.3f}x",
            f"{b.a.p99 / b.b.p99:.3f}x",
            f"{b.a.mean / b.b.mean:.3f}x",
            ms(b.diff_p50_ns),
            pct(b.diff_p50_ns / b.a.p50),
        )
    )
    add(
        table(
            ("A / B", "p50", "p99", "mean", "paired A - B (median)", "share of A's p50"),
            rows,
        )
    )
    add(
        f"\nBatch mode ({sizes.batches} batches of {sizes.batch:,} prepared records each, "
        "same batch to both): "
        f"A {ms(b.a.p50)} = {us(b.a.p50 / sizes.batch)} per record "
        f"({rate(sizes.batch / b.a.p50 * 1e9)}), B {ms(b.b.p50)} = "
        f"{us(b.b.p50 / sizes.batch)} per record ({rate(sizes.batch / b.b.p50 * 1e9)}); "
        f"Merkle maintenance adds {us(b.diff_p50_ns / sizes.batch)} per record."
    )
    if app.wal_pages:
        add(
            f"\nWAL pages appended per single-record FULL commit ({sizes.wal_commits} commits "
            f"after a WAL truncate): A {app.wal_pages['A']:.2f}, B {app.wal_pages['B']:.2f}, "
            f"A - B {app.wal_pages['A'] - app.wal_pages['B']:+.2f}. A's extra pages are the "
            "`merkle_subtrees` row of the commit: keyed `(chain, last)` in a WITHOUT ROWID "
            "table, it lands at the right edge of the b-tree, on its rightmost leaf page (and "
            "interior pages when that page splits); an append at an even seq completes no "
            "subtree and writes no row."
        )
    add(
        f"\nIn memory, per call: an RFC 9162 node hash {us(app.node_hash_ns)} (a frontier "
        "update hashes one per trailing 1 bit of the size: one on average). "
        f"Sanity: {app.both_verify}."
    )

    add(f"\n### 2. Checkpoints of a {build.size:,}-record chain\n")
    add(
        f"Built with synchronous=OFF: {BUILD_BATCH:,} events prepared once, the same "
        "prepared records appended again and again with `ledger.append_many`, in "
        f"transactions of {build.every:,} records at {rate(build.append_rps)} (appends "
        f"alone), a checkpoint signed after each, as `checkpoint_every={build.every}` (the "
        f"default) would ({build.checkpoints_stored:,} stored; those checkpoints, OFF, tree "
        f"sizes {build.every:,} to {build.size:,}: median {ms(build.build_checkpoints.p50)}, "
        f"p90 {ms(build.build_checkpoints.p90)}, max {ms(build.build_checkpoints.max)}). "
        "Then, synchronous=FULL: append one record, time "
        f'`trail.checkpoint("{CHAIN}")` (`write_checkpoint`: the latest stored checkpoint by '
        "an index seek, the tree head from the ledger's cached frontier, current since the "
        "same instance just appended, a consistency proof from the latest checkpoint, the "
        "Ed25519 signature with the signer's cached key, the INSERT); alternating run by run "
        "with its steps that have a public name done by hand, in the same order, and timed "
        "one by one (then `write_checkpoint`, untimed, stores that run's checkpoint). "
        f"{sizes.checkpoint_runs} runs each after "
        f"{sizes.checkpoint_warmup} warm-up; the chain ends at {cp.size_after:,} records "
        f"with {cp.stored_after:,} checkpoints.\n"
    )
    rows = [("`trail.checkpoint()`", *cp.whole.cells())]
    rows += [(f"  ↳ {name}", *s.cells()) for name, s in cp.pieces]
    rows.append(("  = sum of the pieces (same run)", *cp.pieces_total.cells()))
    rest = cp.whole.p50 - cp.pieces_total.p50
    rows.append(("  whole - sum at p50: the note, the INSERT (FULL commit)", ms(rest), *["—"] * 4))
    add(table(LATENCY_HEADER, rows))
    add("\nThe Ed25519 steps in memory (median of 5 rounds; ↳ rows are parts of the row above):\n")
    add(table(("Operation", "per call"), [(name, us(ns)) for name, ns in cp.micro]))

    add(f"\n### 3. Proofs at {proofs.tree_size:,} records\n")
    add(
        f'{sizes.proofs} random seqs, each: `make_inclusion_bundle(ledger, "{CHAIN}", seq)` '
        "(against the latest stored checkpoint), `verify_inclusion_bundle(bundle, [verifier])`, "
        "`open_checkpoint` alone, then the pieces of `make_inclusion_bundle` that have a "
        "public name one by one (the rest is the per-call difference). Audit paths: "
        f"{proofs.path_len:.1f} hashes on average.\n"
    )
    rows = [("`make_inclusion_bundle`", *proofs.make.cells())]
    rows += [(f"  ↳ {name}", *s.cells()) for name, s in proofs.make_pieces]
    rows += [
        ("`verify_inclusion_bundle`", *proofs.verify.cells()),
        ("  ↳ `open_checkpoint` (Ed25519 verify, note parse)", *proofs.open_checkpoint.cells()),
        (
            "  ↳ the rest: decode, `leaf_hash`, path check, record parse (difference)",
            *proofs.verify_rest.cells(),
        ),
        (
            f"`prove_consistency` (proof + verify), random pairs of the {proofs.checkpoints:,} "
            f"stored checkpoints ({sizes.consistency_proofs} pairs)",
            *proofs.consistency.cells(),
        ),
    ]
    add(table(LATENCY_HEADER, rows))
    r, c = proofs.node_reads, proofs.consistency_reads
    add(
        f"\n`ledger.node` reads per inclusion proof: median {r.p50:.0f}, max {r.max:.0f}; per "
        f"consistency proof: median {c.p50:.0f}, max {c.max:.0f} ({proofs.consistency_len:.1f} "
        "hashes on average). Each read is one `SELECT` under the ledger's lock."
    )

    add(f"\n### 4. Verification with Merkle root recomputation ({ver.records:,} records)\n")
    add(
        f'`verify_chain(ledger, "{CHAIN}")` in a fresh interpreter (the chain\'s '
        f"{ver.claims:,} stored checkpoints are checked as the tree passes their sizes; "
        "signatures are not, no key given). Memory = peak RSS (VmHWM) minus RSS just before.\n"
    )
    rows = [
        (
            f"{run.size:,}",
            f"{run.wall_s:.2f} s",
            rate(run.size / run.wall_s),
            rate(run.size / run.cpu_s),
            us(run.wall_s / run.size * 1e9),
            mib(run.growth_kib),
        )
        for run in ver.runs
    ]
    add(
        table(
            ("Records", "Wall", "Records/s (wall)", "Records/s (CPU)", "per record", "RSS growth"),
            rows,
        )
    )
    add(f"\nMedian: {rate(verify_rps)} wall, {rate(verify_cpu_rps)} CPU time.")
    per_record = 1e9 / verify_rps
    add(
        f"\nThe Merkle part alone, in process: the {ver.records:,} stored hashes read with "
        f"`{_HASHES}` ({sizes.fold_rounds} rounds interleaved, median). The "
        f"fold reproduces the stored tree head: {met(ver.root_matches)}.\n"
    )
    base = ver.loops[0][1]
    rows = [
        (
            name,
            us(ns),
            "—" if i == 0 else us(ns - base),
            "—" if i == 0 else f"{(ns - base) / per_record:.0%}",
        )
        for i, (name, ns) in enumerate(ver.loops)
    ]
    add(
        table(("Loop", "per record", "added by Merkle", "share of `verify_chain` per record"), rows)
    )
    fold_added = ver.loops[1][1] - base
    add(
        f"\n`verify_chain` costs {us(per_record)} per record; {GOAL_VERIFY_RPS:,}/s allows "
        f"{us(1e9 / GOAL_VERIFY_RPS)}. The inline fold adds {us(fold_added)} per record "
        f"(≈ one `node_hash` per leaf, {us(app.node_hash_ns)} alone); without it verify "
        f"would run at about {rate(1e9 / max(per_record - fold_added, 1.0))}."
    )

    add(f"\n### 5. Storage ({disk.records:,} records)\n")
    add(
        f"Method: {disk.method}; WAL checkpointed first. Main file {disk.file_bytes / 2**20:,.1f} "
        f"MiB. Subtree hashes in `merkle_subtrees`: {disk.subtrees:,} (a tree of n leaves has n - "
        f"popcount(n) = {disk.expected_subtrees:,} complete subtrees of level ≥ 1). No "
        "frontier table: the frontier lives in each ledger instance's memory.\n"
    )
    rows = [
        (
            f"`{name}`",
            f"{pages:,}",
            f"{size / 2**20:,.1f} MiB",
            f"{size / disk.records:.1f} B",
            f"{payload / disk.records:.1f} B",
            f"{unused / size:.0%}" if size else "—",
        )
        for name, pages, size, payload, unused in disk.objects
    ]
    add(
        table(
            ("B-tree", "Pages", "Bytes", "per record", "payload per record", "unused in pages"),
            rows,
        )
    )
    records_obj = sum(o[2] for o in disk.objects if o[0] in ("records", "records_chain_seq"))
    if records_obj:
        add(
            f"\n`merkle_subtrees` takes {subtree_bytes / disk.records:.1f} bytes per record "
            f"({subtree_bytes / max(disk.subtrees, 1):.1f} per subtree), "
            f"{subtree_bytes / records_obj:.1%} on top of the records and their index."
        )

    add(
        f"\n### 6. Where the frontier comes from ({sources.size_before:,} → "
        f"{sources.size_after:,} records)\n"
    )
    add(
        "`SqliteLedger._frontier`, on every append (inside its transaction) and every "
        "`tree_head`: the instance's cached frontier when its size is the chain's; when the "
        "chain has grown past it (another process appended), the cache extended with the "
        "record hashes appended since; with no cache (a new process, or one that has not "
        "appended), `Frontier.at` reading the stored subtrees at the set bits of the size. "
        "Only a commit stores the result in the cache; `tree_head` does not. Measured on a "
        "ledger instance X (synchronous=OFF) while another instance on the same file "
        f"appends, which is what another process does; {sizes.frontier_runs} runs, each "
        "with a fresh X, every row once a run, in the order shown (run last: it grows the "
        "chain). Every tree head X returned matched the other instance's: "
        f"{met(sources.consistent)}.\n"
    )
    add(table(LATENCY_HEADER, [(label, *st.cells()) for label, st in sources.rows]))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    sizes = QUICK if args.quick else FULL
    run = Run.begin(command)
    events = make_events(2_000)
    signer = Signer.generate(SIGNER_NAME)
    with tempfile.TemporaryDirectory(prefix="audit-bench-merkle-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        host = [*machine(tmp), ("cryptography", importlib.metadata.version("cryptography"))]
        app = bench_append(tmp, sizes, events)
        big = tmp / "merkle.db"
        progress(f"2. building a {sizes.tree:,}-record chain (synchronous=OFF)")
        build = build_big(big, sizes, signer)
        progress(f"2. trail.checkpoint(), {sizes.checkpoint_runs} runs x whole/pieces")
        cp = bench_checkpoint(big, sizes, signer, events)
        progress(f"3. {sizes.proofs} inclusion bundles, {sizes.consistency_proofs} consistency")
        ledger = SqliteLedger(big, create=False)
        try:
            proofs = bench_proofs(ledger, signer.verifier, sizes)
        finally:
            ledger.close()
        ver = bench_verify(big, sizes)
        progress("5. storage (dbstat)")
        disk = bench_storage(big)
        progress(f"6. frontier sources, {sizes.frontier_runs} runs")
        sources = bench_frontier_sources(big, sizes, signer, events)
    run.print_report(
        report,
        host=host,
        sizes=sizes,
        app=app,
        build=build,
        cp=cp,
        proofs=proofs,
        ver=ver,
        disk=disk,
        sources=sources,
    )


if __name__ == "__main__":
    main()
