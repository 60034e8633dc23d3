"""Benchmark of the witness (c2sp.org/tlog-witness ``add-checkpoint``): latency on loopback
at tree size 10^6 over a keep-alive connection, cosignatures per second (one client, two
clients on two logs), and where a request's time goes (log signature check, the state's
fsync'd commit, the cosignature).

Run from the repository root (full mode: about a minute, most of it building two chains of
10^6 records; ``--quick``: 10^4 records)::

    .venv-airflow/bin/python bench/bench_witness.py
    .venv-airflow/bin/python bench/bench_witness.py --quick

Method: two chains of a real SQLite ledger are filled (``bench._common.build_ledger``); then,
before anything is timed, each chain grows by a few records at a time (1 to 5) and each step
gets a signed checkpoint (``write_checkpoint``) and the real RFC 9162 consistency proof from
the previous one (``prove_consistency``): the request bodies are made in advance, so the
client side costs nothing while timing. The witness is a real process (``workflow-audit
witness serve`` on 127.0.0.1, its state file beside the ledger, ``synchronous=FULL``). Each
request's time is from sending it to reading the whole answer, over one HTTP/1.1 keep-alive
connection. The breakdown runs the same steps in this process, interleaved: the log's
Ed25519 signature check, the state's check-and-update transaction (its commit's fsync
included), and the cosignature. The goal of the issue: p99 ≤ 10 ms. Numbers, never a verdict
that fails.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from time import perf_counter_ns

from audit_core import Signer
from audit_core.checkpoint import Checkpoint, open_checkpoint, write_checkpoint
from audit_core.proofs import prove_consistency
from audit_core.witness import Cosigner, WitnessState, encode_add_checkpoint
from bench._common import (
    LATENCY_HEADER,
    Run,
    Stats,
    build_ledger,
    make_events,
    ms,
    open_trail,
    parse_bench_args,
    progress,
    rate,
    table,
)

CHAINS = ("a", "b")
WAIT_S = 60.0


def requests_for(ledger: Path, signer: Signer, chain: str, n: int) -> list[tuple[int, bytes]]:
    """``n`` request bodies growing ``chain`` by 1 to 5 records each: (size, body)."""
    bodies: list[tuple[int, bytes]] = []
    origin = f"{signer.name}/{chain}"
    with open_trail(ledger, synchronous="OFF") as trail:
        pool = [trail.prepare(e) for e in make_events(5, chain=chain)]
        stored = write_checkpoint(trail.ledger, chain, signer, origin=origin)
        assert stored is not None
        first = Checkpoint(origin, stored.size, stored.root)
        bodies.append((stored.size, encode_add_checkpoint(0, [], stored.note)))
        old = first
        for i in range(n):
            trail.ledger.append_many(pool[: 1 + i % 5])
            stored = write_checkpoint(trail.ledger, chain, signer, origin=origin)
            assert stored is not None
            new = Checkpoint(origin, stored.size, stored.root)
            proof = prove_consistency(trail.ledger, chain, old, new)
            bodies.append((new.size, encode_add_checkpoint(old.size, proof, stored.note)))
            old = new
    return bodies


def start_witness_process(
    tmp: Path, key: Path, signer: Signer
) -> tuple[subprocess.Popen[bytes], int]:
    """``workflow-audit witness serve`` on a free port; its port once it says it listens."""
    log = tmp / "witness.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "audit_core.cli", "witness", "serve", "--key", str(key),
             "--state", str(tmp / "witness.db"), "--log", str(signer.verifier), "--port", "0"],
            stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return proc, int(found.group(1))
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the witness did not start: {log.read_text()}")


def send_all(port: int, bodies: list[tuple[int, bytes]], samples: list[int]) -> None:
    """Send ``bodies`` in order over one keep-alive connection; each latency into ``samples``."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _, body in bodies:
        t0 = perf_counter_ns()
        conn.request("POST", "/add-checkpoint", body=body)
        response = conn.getresponse()
        answer = response.read()
        samples.append(perf_counter_ns() - t0)
        if response.status != 200:
            raise SystemExit(f"witness answered {response.status}: {answer[:200]!r}")
    conn.close()


def breakdown(
    tmp: Path, signer: Signer, cosigner: Cosigner, bodies: list[tuple[int, bytes]]
) -> dict[str, Stats]:
    """The steps of a request in this process, interleaved request by request."""
    steps: dict[str, list[int]] = {
        "log signature check": [],
        "state commit (fsync)": [],
        "cosign": [],
    }
    with WitnessState.open(tmp / "breakdown.db") as state:
        for size, body in bodies:
            note = body.decode().split("\n\n", 1)[1]
            t0 = perf_counter_ns()
            checkpoint = open_checkpoint(note, [signer.verifier])
            t1 = perf_counter_ns()
            state.check_and_update(checkpoint.origin, lambda _: None, size, checkpoint.root, note)
            t2 = perf_counter_ns()
            cosigner.cosign(checkpoint.text(), int(time.time()))
            t3 = perf_counter_ns()
            steps["log signature check"].append(t1 - t0)
            steps["state commit (fsync)"].append(t2 - t1)
            steps["cosign"].append(t3 - t2)
    return {name: Stats.of(s) for name, s in steps.items()}


ROUNDS = 4
WARM_UP = 50


def main(argv: list[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    run = Run.begin(command)
    size, n = (10_000, 400) if args.quick else (1_000_000, 2_000)
    signer = Signer.generate("bench.example/audit")
    cosigner = Cosigner.generate("bench.example/witness")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as d:
        tmp = Path(d)
        ledger = tmp / "ledger.db"
        progress(f"building chains {CHAINS} of {size:,} records")
        build_rate = build_ledger(ledger, [(c, size) for c in CHAINS])
        progress(f"making {2 * n:,} + {n:,} requests (checkpoints, consistency proofs)")
        # chain a serves both phases in turn (its requests must stay in order), b the second
        # client: WARM_UP requests each, then ROUNDS rounds of (sequential, two clients)
        a = requests_for(ledger, signer, "a", WARM_UP + 2 * n)
        b = requests_for(ledger, signer, "b", WARM_UP + n)
        key = tmp / "witness.key"
        key.write_text(f"{cosigner}\n")
        key.chmod(0o600)
        proc, port = start_witness_process(tmp, key, signer)
        seq: list[int] = []
        two: list[list[int]] = [[], []]
        seq_ns = two_ns = 0
        try:
            send_all(port, a[:WARM_UP], [])
            send_all(port, b[:WARM_UP], [])
            m = n // ROUNDS
            for r in range(ROUNDS):
                progress(f"round {r + 1}/{ROUNDS}: {m} sequential, then {m} + {m} by 2 clients")
                at = WARM_UP + 2 * m * r
                t0 = perf_counter_ns()
                send_all(port, a[at : at + m], seq)
                seq_ns += perf_counter_ns() - t0
                threads = [
                    threading.Thread(target=send_all, args=(port, a[at + m : at + 2 * m], two[0])),
                    threading.Thread(
                        target=send_all,
                        args=(port, b[WARM_UP + m * r : WARM_UP + m * (r + 1)], two[1]),
                    ),
                ]
                t0 = perf_counter_ns()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                two_ns += perf_counter_ns() - t0
        finally:
            proc.terminate()
            proc.wait(WAIT_S)
        progress("breakdown in process")
        steps = breakdown(tmp, signer, cosigner, a[1:])
        final = a[-1][0]
    run.print_report(
        render,
        size=size,
        final=final,
        build_rate=build_rate,
        seq=Stats.of(seq),
        two=Stats.of(two[0] + two[1]),
        seq_rate=len(seq) / (seq_ns / 1e9),
        two_rate=(len(two[0]) + len(two[1])) / (two_ns / 1e9),
        steps=steps,
    )


def render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    size: int,
    final: int,
    build_rate: float,
    seq: Stats,
    two: Stats,
    seq_rate: float,
    two_rate: float,
    steps: dict[str, Stats],
) -> str:
    total = sum(s.p50 for s in steps.values())
    step_rows = [
        (name, ms(s.p50), ms(s.p99), f"{s.p50 / seq.p50:.0%}") for name, s in steps.items()
    ]
    return "\n\n".join(
        [
            "# Witness: add-checkpoint on loopback",
            f"`{command}` — {elapsed_s:.0f} s, load {load[0]} → {load[1]}"
            + (" — **audit_core changed during the run**" if code_changed else ""),
            f"Trees of {size:,} leaves (built at {rate(build_rate)} records) grown by 1 to 5 "
            f"leaves a request to {final:,}; real consistency proofs; the witness a separate "
            "process, state `synchronous=FULL`.",
            "## Latency of one request (keep-alive connection)",
            table(
                LATENCY_HEADER,
                [
                    ("1 client, sequential", *seq.cells()),
                    ("2 clients, one log each", *two.cells()),
                ],
            ),
            f"Goal p99 ≤ 10 ms: {ms(seq.p99)} sequential "
            f"({'met' if seq.p99 <= 10e6 else 'NOT met'}), {ms(two.p99)} with 2 clients.",
            "## Cosignatures per second",
            table(
                ("Clients", "cosignatures/s", "vs 1 client"),
                [
                    ("1", rate(seq_rate), "1.00x"),
                    ("2 (two logs)", rate(two_rate), f"{two_rate / seq_rate:.2f}x"),
                ],
            ),
            "## Where a request's time goes (in process; share of the sequential p50)",
            table(("Step", "p50", "p99", "share of request p50"), step_rows),
            f"The three steps: {ms(total)} of the {ms(seq.p50)} p50; the rest is HTTP, "
            "parsing, the consistency proof check and the loopback round trip.",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
