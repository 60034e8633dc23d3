"""Benchmarks for model invocations (``audit_core.model``): ``model_event`` over batches of
predictions (a dict of five features in, a probability and a label out), against what
recording only the data's digests costs, and the durable record of each.

Run from the repository root (full mode takes under a minute, ``--quick`` a few seconds)::

    .venv-airflow/bin/python bench/bench_model.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_model.py --quick    # smoke test, small sizes

Markdown goes to stdout; progress to stderr. The script prints numbers, ratios and the issue's
goal (#17: a batch of 10,000 predictions in at most 100 ms); it never fails because something
is slow.

Method (helpers shared in ``bench/_common.py``): the steps compared are interleaved round by
round and reported as medians (p50). "digests" is ``audit_core.hooks.digest`` of the inputs
and of the outputs: the least a record of the same data can hold. "record" rows add the
durable append (SQLite, ``synchronous=FULL``) of ``model_event``'s data with ``values=False``
(what reaches the chain without a privacy policy) and of the two digests.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from audit_core.hooks import digest
from audit_core.model import model_event
from bench._common import (
    Run,
    interleaved,
    machine,
    met,
    ms,
    open_trail,
    parse_bench_args,
    progress,
    table,
)

#: Goal of issue #17: model_event of a batch of 10,000 predictions.
GOAL_BATCH = 10_000
GOAL_MS = 100.0


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    batches: tuple[int, ...]
    rounds: int


FULL = Sizes(batches=(100, 1_000, 10_000), rounds=21)
QUICK = Sizes(batches=(100, 1_000, 10_000), rounds=3)

Rows = list[dict[str, object]]


def predictions(n: int, seed: int = 17) -> tuple[Rows, Rows]:
    """``n`` rows of five features and their scores, as a churn model would see them."""
    rng = random.Random(seed)
    inputs: Rows = [
        {
            "customer": f"customer-{i:05d}",
            "tenure_months": rng.randint(1, 72),
            "monthly_spend": round(rng.uniform(10, 120), 2),
            "support_calls": rng.randint(0, 9),
            "region": rng.choice(("eu-west", "eu-central", "us-east", "ap-south")),
        }
        for i in range(n)
    ]
    outputs: Rows = []
    for _ in range(n):
        p = rng.random()
        outputs.append({"p": p, "label": "churn" if p > 0.5 else "stay"})
    return inputs, outputs


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    batch: int
    event_ns: float
    event_values_ns: float
    digests_ns: float
    record_event_ns: float
    record_digests_ns: float


def bench_batch(tmp: Path, n: int, rounds: int) -> Row:
    inputs, outputs = predictions(n)
    trail = open_trail(tmp / f"model-{n}.db")
    try:

        def event() -> object:
            return model_event("churn", 1, inputs=inputs, outputs=outputs, batch=True, values=False)

        def event_values() -> object:
            return model_event("churn", 1, inputs=inputs, outputs=outputs, batch=True)

        def digests() -> object:
            return {"inputs": digest(inputs), "outputs": digest(outputs)}

        steps = [
            ("event", event),
            ("event_values", event_values),
            ("digests", digests),
            ("record_event", lambda: trail.record("model.invoked", event())),
            ("record_digests", lambda: trail.record("model.invoked", digests())),
        ]
        times = dict(interleaved(steps, rounds))
    finally:
        trail.close()
    return Row(
        n,
        times["event"],
        times["event_values"],
        times["digests"],
        times["record_event"],
        times["record_digests"],
    )


def report(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    host: Sequence[tuple[str, str]],
    rows: Sequence[Row],
) -> str:
    out = [
        "## Model invocations (`bench/bench_model.py`)",
        "",
        f"`{command}` ({elapsed_s:.0f} s, load {load[0]} → {load[1]}"
        + (", **audit_core changed while it ran**" if code_changed else "")
        + ")",
        "",
        table(("Machine", ""), host),
        "",
        "p50 of interleaved rounds; ratio = model_event / digests of the same data.",
        "",
        table(
            (
                "Batch",
                "model_event",
                "with values",
                "digests",
                "ratio",
                "record(model_event)",
                "record(digests)",
                "ratio",
            ),
            [
                (
                    f"{r.batch:,}",
                    ms(r.event_ns),
                    ms(r.event_values_ns),
                    ms(r.digests_ns),
                    f"{r.event_ns / r.digests_ns:.2f}x",
                    ms(r.record_event_ns),
                    ms(r.record_digests_ns),
                    f"{r.record_event_ns / r.record_digests_ns:.2f}x",
                )
                for r in rows
            ],
        ),
        "",
    ]
    goal = [r for r in rows if r.batch == GOAL_BATCH]
    if goal:
        took = goal[0].event_values_ns / 1e6
        out.append(
            f"Goal (#17): model_event of {GOAL_BATCH:,} predictions (values included) ≤ "
            f"{GOAL_MS:.0f} ms: {took:.1f} ms, met: {met(took <= GOAL_MS)}"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    sizes = QUICK if args.quick else FULL
    run = Run.begin(command)
    with tempfile.TemporaryDirectory(prefix="audit-bench-model-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        host = machine(tmp)
        rows = []
        for n in sizes.batches:
            progress(f"batch of {n:,}: {sizes.rounds} interleaved rounds")
            rows.append(bench_batch(tmp, n, sizes.rounds))
    run.print_report(report, host=host, rows=rows)


if __name__ == "__main__":
    main()
