"""What a privacy policy costs: durable ``record()`` with 3 committed fields vs none, a model
batch of 10,000 predictions, and the erasure of a subject with 10,000 records.

Run from the repository root (about a minute; ``--quick`` under 30 s)::

    .venv-airflow/bin/python bench/bench_privacy.py

Method (issue #17's targets in brackets):

1. Durable ``record()`` (SQLite ``synchronous=FULL``, checkpoints off) on two fresh ledgers in
   one directory, A without a policy and B with a policy that commits 3 fields (the actor, a
   triggering user, an email), called alternately so drift and other load hit both alike;
   50 data subjects, all known after the warm-up. p50 ratio B/A [≤ 1.2x].
2. ``trail.model_invoked`` of a batch of 10,000 predictions (5 features in, a score and a
   label out): digests, sizes, schema and the Merkle root over the predictions; without a
   policy (values left out) and with the built-in policy (the batch's values committed as one
   opening). Median of several runs [≤ 100 ms].
3. ``privacy erase`` of one subject holding 10,000 records (20,000 committed values) in a
   store that also holds 10,000 records of other subjects: the whole erasure (pending row,
   ``privacy.erased`` record, key destroyed, openings deleted, store compacted) [≤ 1 s].

Markdown on stdout, progress on stderr; it never fails because something is slow.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns

from audit_core import AuditConfig, AuditTrail
from audit_core.privacy.erase import erase_subject
from bench._common import Run, Stats, ms, parse_bench_args, progress, table

POLICY = """\
version = 1
include_defaults = false

[[rules]]
pointer = "/actor/id"
action = "commit"
when = { "/actor/type" = "user" }

[[rules]]
pointer = "/data/triggering_user"
action = "commit"

[[rules]]
pointer = "/data/email"
action = "commit"
subject = "/data/triggering_user"
"""

USERS = [f"user{i:02d}" for i in range(50)]
SUBJECT = {"dag_id": "ml_pipeline", "run_id": "manual__2026-12-05T10:00:00", "task_id": "train"}


def _trail(path: Path, policy: str | None) -> AuditTrail:
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}",
        synchronous="FULL",
        checkpoint_every=0,
        privacy_policy=policy,
    )
    return AuditTrail(config)


def _data(i: int) -> dict[str, object]:
    user = USERS[i % len(USERS)]
    return {
        "state": "running",
        "triggering_user": user,
        "email": f"{user}@example.com",
        "run_type": "manual",
        "rows": 12_345 + i,
    }


def record_ab(tmp: Path, n: int) -> tuple[Stats, Stats]:
    """p50 and co. of durable record() without (A) and with (B) a 3-field policy."""
    policy = tmp / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    a, b = _trail(tmp / "a.db", None), _trail(tmp / "b.db", str(policy))
    times: dict[str, list[int]] = {"a": [], "b": []}
    for i in range(len(USERS) * 2):  # warm-up: every subject's key exists, caches are full
        for trail in (a, b):
            trail.record("dagrun.started", _data(i), subject=SUBJECT, actor=("user", USERS[i % 50]))
    for i in range(n):
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        for name, trail in order:
            data = _data(i)
            actor = ("user", str(data["triggering_user"]))
            t0 = perf_counter_ns()
            trail.record("dagrun.started", data, subject=SUBJECT, actor=actor)
            times[name].append(perf_counter_ns() - t0)
    a.close()
    b.close()
    return Stats.of(times["a"]), Stats.of(times["b"])


def _batch(n: int, seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = random.Random(seed)
    inputs = [
        {
            "customer": f"customer-{i:05d}",
            "tenure": rng.randint(1, 72),
            "charges": round(rng.uniform(20, 120), 2),
            "contract": rng.choice(["monthly", "yearly"]),
            "support_calls": rng.randint(0, 9),
        }
        for i in range(n)
    ]
    outputs = []
    for row in inputs:
        score = round(min(1.0, 0.01 * int(str(row["support_calls"])) + rng.random() * 0.5), 4)
        outputs.append({"score": score, "label": "churn" if score > 0.5 else "stay"})
    return inputs, outputs


def model_batches(tmp: Path, n: int, runs: int) -> dict[str, Stats]:
    """ns per trail.model_invoked of an n-prediction batch, without and with a policy."""
    inputs, outputs = _batch(n, 7)
    out: dict[str, Stats] = {}
    for name, policy in (
        ("no policy (digests and root only)", None),
        ("built-in policy", "default"),
    ):
        trail = _trail(tmp / f"model-{policy}.db", policy)
        trail.model_invoked("churn", 3, inputs=inputs[:10], outputs=outputs[:10], batch=True)
        times = []
        for _ in range(runs):
            t0 = perf_counter_ns()
            trail.model_invoked(
                "churn",
                3,
                inputs=inputs,
                outputs=outputs,
                batch=True,
                data_subject="batch-2026-12-05",
            )
            times.append(perf_counter_ns() - t0)
        trail.close()
        out[name] = Stats.of(times)
    return out


def erasure(tmp: Path, n: int) -> tuple[float, int, int]:
    """ns to erase one subject with n records (2 values each) among n records of others."""
    policy = tmp / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    trail = _trail(tmp / "erase.db", str(policy))
    from audit_core import Event

    for start in range(0, 2 * n, 1000):
        events = []
        for i in range(start, min(start + 1000, 2 * n)):
            user = "alice" if i % 2 == 0 else USERS[i % 50]
            data = {"triggering_user": user, "email": f"{user}@example.com", "i": i}
            events.append(Event(type="dagrun.started", data=data, subject=SUBJECT))
        trail.record_many(events)
        progress(f"  {min(start + 1000, 2 * n):,} / {2 * n:,} records written")
    t0 = perf_counter_ns()
    result = erase_subject(trail, "alice", reason="bench", basis="GDPR Art. 17(1)(a)")
    elapsed = perf_counter_ns() - t0
    trail.close()
    return elapsed, result.erasure.records, result.erasure.values


def render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    ab: tuple[Stats, Stats],
    n_ab: int,
    models: dict[str, Stats],
    n_model: int,
    erased: tuple[float, int, int],
) -> str:
    a, b = ab
    lines = [
        "## Privacy policy costs (bench/bench_privacy.py)",
        "",
        f"`{command}` — {elapsed_s:.0f} s; load average {load[0]} → {load[1]}"
        + ("; **audit_core changed during the run**" if code_changed else ""),
        "",
        f"### 1. Durable record(), {n_ab:,} calls each, A and B alternating",
        "",
        table(
            ("Trail", "p50", "p90", "p99", "max", "mean"),
            [("A: no policy", *a.cells()), ("B: policy committing 3 fields", *b.cells())],
        ),
        "",
        f"p50 ratio B/A: **{b.p50 / a.p50:.2f}x** (target ≤ 1.2x); mean ratio "
        f"{b.mean / a.mean:.2f}x",
        "",
        f"### 2. trail.model_invoked, a batch of {n_model:,} predictions",
        "",
        table(
            ("Policy", "p50", "p90", "p99", "max", "mean"),
            [(name, *s.cells()) for name, s in models.items()],
        ),
        "",
        "Target: ≤ 100 ms.",
        "",
        "### 3. privacy erase of one subject",
        "",
        f"{erased[1]:,} records ({erased[2]:,} values) erased in **{ms(erased[0])}** "
        "(target ≤ 1 s), among as many records of other subjects.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, command = parse_bench_args(__doc__, __file__, argv)
    run = Run.begin(command)
    n_ab, n_model, runs, n_erase = (
        (300, 10_000, 3, 2_000) if args.quick else (3_000, 10_000, 9, 10_000)
    )
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as d:
        tmp = Path(d)
        progress("1/3 record() with and without a policy")
        ab = record_ab(tmp, n_ab)
        progress("2/3 model batches")
        models = model_batches(tmp, n_model, runs)
        progress("3/3 erasure")
        erased = erasure(tmp, n_erase)
    run.print_report(render, ab=ab, n_ab=n_ab, models=models, n_model=n_model, erased=erased)
    return 0


if __name__ == "__main__":
    sys.exit(main())
