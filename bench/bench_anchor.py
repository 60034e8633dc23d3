"""What checkpoints without cron cost (audit_core.anchor): a busy writer's durable throughput
with an anchor ticking every second beside it vs without (issue 18's target: at most 1 %),
and the time one anchor round takes at 10^5 records across a few chains, alone and with a
witness on loopback (c2sp.org/tlog-witness).

Run from the repository root::

    .venv-airflow/bin/python bench/bench_anchor.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_anchor.py --quick    # smoke test

Method: the writer's throughput is measured in alternating rounds (without, with, without,
…) in the same run, each ``--seconds`` long, on one ledger file (``synchronous=FULL``: every
``record()`` is durable on return); the medians and their ratio are printed. The anchor runs
as the components run it: its own thread, its own ledger connection, a round every second.
Markdown goes to stdout, progress to stderr; the script never fails because something is slow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.anchor import Anchor, AnchorReport, WitnessEndpoint
from audit_core.checkpoint import CheckpointSigner
from audit_core.ledgers import open_ledger
from audit_core.witness import Cosigner, TrustedLogs, Witness, WitnessState, start_witness

ACTOR = ("service", "bench")


def _config(path: Path, **changes: object) -> AuditConfig:
    # the writer signs nothing itself (checkpoint_every 0): only the anchor does
    config = AuditConfig(ledger_url=f"sqlite:///{path}", actor=ACTOR, checkpoint_every=0)
    return config.evolve(**changes)


class TimedAnchor(Anchor):
    """An anchor that adds up the wall time its periodic rounds take."""

    busy_s = 0.0
    rounds = 0

    def tick(self) -> AnchorReport:
        start = time.perf_counter()
        try:
            return super().tick()
        finally:
            self.busy_s += time.perf_counter() - start
            self.rounds += 1


def _throughput(trail: AuditTrail, seconds: float) -> float:
    """Durable record() calls per second for ``seconds``."""
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        trail.record("task.succeeded", {"n": n, "dag_id": "bench", "task_id": "t"})
        n += 1
    return n / (time.perf_counter() - start)


def busy_writer(directory: Path, rounds: int, seconds: float) -> None:
    path = directory / "busy.db"
    config = _config(path)
    trail = AuditTrail(config)
    trail.record("bench.started")
    without: list[float] = []
    with_anchor: list[float] = []
    busy = 0.0
    ticks = 0
    for i in range(rounds):
        print(f"busy writer: round {i + 1}/{rounds}", file=sys.stderr)
        without.append(_throughput(trail, seconds))
        anchor = TimedAnchor.from_config(
            config.evolve(checkpoint_every=1000, anchor_interval_s=1.0)
        )
        assert isinstance(anchor, TimedAnchor)
        anchor.start()
        with_anchor.append(_throughput(trail, seconds))
        anchor.stop()
        busy += anchor.busy_s
        ticks += anchor.rounds
    reader = open_ledger(config.ledger_url, read_only=True)
    checkpoints = len(reader.checkpoints("default"))
    reader.close()
    trail.close()
    a, b = statistics.median(without), statistics.median(with_anchor)
    print("## Busy writer with a periodic checkpoint (anchor every 1 s)\n")
    print(f"{rounds} alternating rounds of {seconds:g} s, durable `record()` (synchronous=FULL)\n")
    print("| writer | record()/s (median) | rounds |")
    print("|---|---|---|")
    print(f"| alone | {a:,.0f} | {', '.join(f'{x:,.0f}' for x in without)} |")
    print(f"| with anchor | {b:,.0f} | {', '.join(f'{x:,.0f}' for x in with_anchor)} |")
    pairs = statistics.median(y / x for x, y in zip(without, with_anchor, strict=True))
    print(
        f"\nratio of the medians with/without: {b / a:.3f}; median ratio of adjacent rounds: "
        f"{pairs:.3f} (cost {100 * (1 - pairs):+.1f} %, target ≤ 1 %); "
        f"{checkpoints} checkpoints signed; the {ticks} timed rounds (the final ones at stop() "
        f"not included) took {1000 * busy / max(ticks, 1):.1f} ms of wall time each, mostly "
        "waiting for the ledger's write lock between the writer's transactions. Rounds that differ "
        "by more than the cost measured mean a noisy disk (other processes' fsyncs): rerun "
        "on a quiet machine.\n"
    )


def _fill(path: Path, chains: int, per_chain: int) -> None:
    config = _config(path, synchronous="OFF")
    for c in range(chains):
        with AuditTrail(config.evolve(chain=f"chain{c}")) as trail:
            batch = [Event(type="task.succeeded", data={"i": i}) for i in range(per_chain)]
            for lo in range(0, per_chain, 5000):
                trail.record_many(batch[lo : lo + 5000])


def _timed(anchor: Anchor) -> float:
    start = time.perf_counter()
    anchor.tick()
    return (time.perf_counter() - start) * 1000


def one_tick(directory: Path, total: int, chains: int) -> None:
    path = directory / "big.db"
    print(f"filling {total:,} records in {chains} chains", file=sys.stderr)
    _fill(path, chains, total // chains)
    config = _config(path, checkpoint_every=1000)
    ledger = open_ledger(config.ledger_url)
    verifier = CheckpointSigner.from_config(config, ledger).signer.verifier
    ledger.close()
    cosigner = Cosigner.generate("witness.bench/w1")
    state = WitnessState.open(directory / "witness.db")
    running = start_witness(Witness(TrustedLogs.parse([str(verifier)]), cosigner, state))
    rows: list[tuple[str, float]] = []
    anchor = Anchor.from_config(config)
    rows.append((f"first round: {chains} checkpoints signed", _timed(anchor)))
    rows.append(("idle round: nothing grew", _timed(anchor)))
    _fill(path, chains, 100)
    rows.append((f"round after +100 records in each of {chains} chains", _timed(anchor)))
    anchor.stop()
    witness = WitnessEndpoint(running.url, cosigner.key)
    witnessed = Anchor.from_config(config.evolve(witnesses=(f"{witness.url} {witness.key}",)))
    rows.append((f"first witness round: {chains} cosignatures (from size 0)", _timed(witnessed)))
    _fill(path, chains, 100)
    rows.append(
        (f"sign + cosign after +100 records x {chains} (consistency proofs)", _timed(witnessed))
    )
    rows.append(("idle witnessed round", _timed(witnessed)))
    witnessed.stop()
    running.close()
    state.close()
    print(f"## One anchor round at {total:,} records in {chains} chains\n")
    print("| round | ms |")
    print("|---|---|")
    for what, ms in rows:
        print(f"| {what} | {ms:.1f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test, small sizes")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        busy_writer(directory, rounds, seconds)
        one_tick(directory, 10_000 if args.quick else 100_000, 4)


if __name__ == "__main__":
    main()
