"""What an evidence pack costs: ``workflow-audit evidence --sample 1000`` of a period of
100,000 and of 1,000,000 records, ``verify-evidence`` of each pack, and ``workflow-audit
verify`` of the same chain for comparison (the share of the pack's time that is the full
re-verification the pack starts with).

Run from the repository root (the 1M ledger takes a minute or two to build the first time; it
is cached; ``--quick``: 10,000 and 50,000 records)::

    .venv-airflow/bin/python bench/bench_evidence.py
    .venv-airflow/bin/python bench/bench_evidence.py --py-spy   # and where the 1M pack's time goes

Method. Each ledger holds one chain, ``airflow``, of Airflow-like records whose ``ts`` are all
in November 2026 (one every ~2.6 s at 1M), ~1 % ``task.failed``, ~0.2 % ``access.denied``,
~0.02 % ``permission.changed`` and a few configuration changes and logins (so the pack's
``records/`` files and several controls have work to do), built with ``prepare`` +
``append_many`` of 5,000 at ``synchronous=OFF`` and a signed checkpoint every 1,000 records
(the default ``checkpoint_every``) and at the end. Built ledgers are kept under ``--cache``
(default ``$XDG_CACHE_HOME/workflow-audit-bench/evidence``) with their ``<ledger>.key``; each
run works on a copy (the commands append ``audit.*`` records), warm in the page cache.
The period is ``[2026-11-01, 2026-12-01)``: every record (the checkpoints carry the build's
wall-clock time, after it; ``evidence`` refuses a period not over yet). Every command is the
real CLI (``.venv-*/bin/workflow-audit``) in its own process, run ``--runs`` times; wall
time around the process, CPU time and peak RSS from ``os.wait4`` of that process alone
(``ru_maxrss``: the whole interpreter, imports included). ``evidence --chain airflow``, so
the audit chain the commands write to stays out.
Target (issue #16): pack <= 60 s with flat memory (peak RSS at 1M about that at 100k),
``verify-evidence`` <= 10 s. Markdown on stdout, progress on stderr; never fails on slowness.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter

from audit_core import AuditConfig, AuditTrail, Event
from bench._common import Run, machine, progress, relative, sqlite_url, table

BATCH = 5_000
CHECKPOINT_EVERY = 1_000
SAMPLE = 1_000
CHAIN = "airflow"
START = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
SPAN_S = 29 * 86_400  # records spread over 1-30 November
SINCE, UNTIL = "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"
#: Bump when the records a ledger holds change: the cache keys on it.
GENERATOR_VERSION = 1
CLI = Path(sys.executable).with_name("workflow-audit")
PY_SPY = Path(sys.executable).with_name("py-spy")

_DAGS = tuple(f"dag_{i:03d}" for i in range(200))
_TASKS = ("extract", "validate", "transform", "train", "evaluate", "load", "report", "notify")
_USERS = tuple(f"user_{i:02d}" for i in range(20))


def _event(rng: random.Random, i: int, n: int) -> Event:
    """Record ``i`` of ``n``: task and run records, and rarer failures, denials, permission
    and configuration changes and logins; ``ts`` increasing through November."""
    ts = START + dt.timedelta(seconds=i * SPAN_S / n)
    dag = rng.choice(_DAGS)
    run = f"scheduled__{ts.date().isoformat()}T00:00:00+00:00"
    user = rng.choice(_USERS)
    r = rng.random()
    if r < 0.002:
        return Event(
            type="access.denied",
            subject={"dag_id": dag},
            actor=("user", user),
            data={"path": f"/api/v2/dags/{dag}/dagRuns", "method": "POST", "status": 403},
            ts=ts,
            chain=CHAIN,
        )
    if r < 0.0022:
        return Event(
            type="permission.changed",
            subject={},
            actor=("user", "admin"),
            data={"change": "role_granted", "target": user, "after": ["Viewer", "Op"]},
            ts=ts,
            chain=CHAIN,
        )
    if r < 0.0027:
        return Event(
            type=rng.choice(("variable.updated", "connection.updated", "dag.paused")),
            subject={"dag_id": dag},
            actor=("user", user),
            data={"key": f"{dag}_threshold"},
            ts=ts,
            chain=CHAIN,
        )
    if r < 0.0057:
        return Event(
            type="access.login", subject={}, actor=("user", user), data={"via": "web"}, ts=ts,
            chain=CHAIN,
        )  # fmt: skip
    if r < 0.0157:
        kind = "task.failed"
    elif r < 0.0657:
        kind = rng.choice(("run.started", "run.succeeded"))
    else:
        kind = rng.choice(("task.started", "task.succeeded", "task.retried"))
    subject: dict[str, object] = {"dag_id": dag, "run_id": run}
    if kind.startswith("task."):
        subject["task_id"] = rng.choice(_TASKS)
        subject["try_number"] = rng.randint(1, 2)
    data: dict[str, object] = {
        "hostname": f"worker-{rng.randrange(8)}",
        "duration_s": rng.randint(1, 900),
        "operator": "PythonOperator",
    }
    if kind == "task.failed":
        data["error"] = "ValueError: feature 'amount' has 3 NaN values"
    return Event(type=kind, subject=subject, data=data, ts=ts, chain=CHAIN)


def cached_ledger(cache: Path, n: int) -> tuple[Path, float | None]:
    """``cache/<n>-v<version>/ledger.db`` (and its ``.key``), built if missing; returns the
    path and the build's seconds (None: it was cached). Built in a ``.partial`` directory
    renamed at the end, so an interrupted build is never reused."""
    final = cache / f"{n}-v{GENERATOR_VERSION}"
    path = final / "ledger.db"
    if path.is_file():
        return path, None
    partial = cache / f"{n}-v{GENERATOR_VERSION}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    t0 = perf_counter()
    config = AuditConfig(
        ledger_url=sqlite_url(partial / "ledger.db"),
        synchronous="OFF",
        checkpoint_every=0,
        actor=("service", "airflow-scheduler"),
    )
    rng = random.Random(n)
    with AuditTrail(config) as trail:
        for start in range(0, n, BATCH):
            end = min(n, start + BATCH)
            for lo in range(start, end, CHECKPOINT_EVERY):
                hi = min(end, lo + CHECKPOINT_EVERY)
                trail.ledger.append_many([trail.prepare(_event(rng, i, n)) for i in range(lo, hi)])
                trail.checkpoint(CHAIN)
            if end % 100_000 == 0:
                progress(f"  built {end:,} / {n:,} ({end / (perf_counter() - t0):,.0f}/s)")
    partial.rename(final)
    return path, perf_counter() - t0


@dataclasses.dataclass(frozen=True, slots=True)
class Proc:
    """One CLI process: wall and CPU seconds, peak RSS (KiB), exit code, last stderr line."""

    wall_s: float
    cpu_s: float
    peak_kib: int
    code: int
    last: str


def run_cli(args: Sequence[str | Path], cwd: Path) -> Proc:
    """Run ``args`` and take that process's own rusage with ``os.wait4`` (RUSAGE_CHILDREN would
    be the maximum over every child so far)."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("wb") as o, err.open("wb") as e:
        t0 = perf_counter()
        proc = subprocess.Popen([str(a) for a in args], stdout=o, stderr=e, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = (err.read_text() + out.read_text()).strip().splitlines()
    return Proc(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_kib=usage.ru_maxrss,
        code=proc.returncode,
        last=lines[-1][:160] if lines else "",
    )


def evidence_args(url: str, pack: Path) -> list[str]:
    return [
        str(CLI), "evidence", "--ledger", url, "--chain", CHAIN, "--since", SINCE,
        "--until", UNTIL, "--sample", str(SAMPLE), "-o", str(pack),
    ]  # fmt: skip


def py_spy_top(url: str, work: Path, top: int) -> tuple[list[tuple[str, str, str]], str]:
    """``evidence`` at the largest size under ``py-spy record --format raw``: the functions
    with the largest inclusive share of the samples, and their own (self) share."""
    raw = work / "evidence.raw.txt"
    args = [
        str(PY_SPY), "record", "--format", "raw", "--rate", "50", "--nonblocking", "-o",
        str(raw), "--", *evidence_args(url, work / "pyspy-pack.zip"),
    ]  # fmt: skip
    proc = run_cli(args, work)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        total += samples
        for f in set(frames):
            inclusive[f] += samples
        if frames:
            own[frames[-1]] += samples
    total = max(total, 1)
    rows = [
        (f"`{name}`", f"{n / total:.1%}", f"{own[name] / total:.1%}")
        for name, n in inclusive.most_common(top)
    ]
    rows.append(("**by self time**", "", ""))
    rows += [
        (f"`{name}`", f"{inclusive[name] / total:.1%}", f"{n / total:.1%}")
        for name, n in own.most_common(top)
    ]
    return rows, f"{total:,} samples at 50/s, {proc.wall_s:.1f} s wall under py-spy"


def _short(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``: one row per function."""
    name, _, where = frame.strip().partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({Path(file).name})" if file else name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 50k records, smoke test")
    parser.add_argument("--sizes", default=None, help="comma-separated period sizes")
    parser.add_argument("--runs", type=int, default=2, help="runs of each command (2)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the work copies")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "workflow-audit-bench"
        / "evidence",
        help="where built ledgers are kept",
    )
    parser.add_argument("--py-spy", action="store_true", help="profile evidence at the top size")
    parser.add_argument("--top", type=int, default=25, help="py-spy rows")
    args = parser.parse_args(argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 50_000] if args.quick else [100_000, 1_000_000])
    )
    command = " ".join([relative(sys.executable), relative(__file__), *sys.argv[1:]])
    run = Run.begin(command)
    tmp = Path(tempfile.mkdtemp(prefix="bench-evidence-", dir=args.tmpdir))
    host = machine(tmp)
    rows: list[tuple[str, ...]] = []
    builds: list[tuple[str, str, str]] = []
    summary: dict[int, dict[str, list[Proc]]] = {}
    profile: tuple[list[tuple[str, str, str]], str] | None = None
    try:
        for n in sizes:
            progress(f"ledger of {n:,} records")
            source, built = cached_ledger(args.cache, n)
            work = tmp / str(n)
            work.mkdir()
            path = work / "ledger.db"
            for f in source.parent.iterdir():
                if f.name.startswith("ledger.db"):
                    shutil.copy2(f, work / f.name)
            mib_db = path.stat().st_size / 2**20
            builds.append(
                (
                    f"{n:,}",
                    f"{built:.0f} s" if built is not None else "cached",
                    f"{mib_db:,.0f} MiB",
                )
            )
            url, key = sqlite_url(path), path.with_name("ledger.db.key.pub")
            runs: dict[str, list[Proc]] = {"evidence": [], "verify-evidence": [], "verify": []}
            for r in range(args.runs):
                pack = work / f"pack-{r}.zip"
                progress(f"  run {r + 1}: evidence")
                ev = run_cli(evidence_args(url, pack), work)
                size = pack.stat().st_size / 2**20 if pack.exists() else 0.0
                progress(f"  run {r + 1}: verify-evidence ({size:.1f} MiB pack)")
                ve = run_cli([CLI, "verify-evidence", pack, "--key", key], work)
                progress(f"  run {r + 1}: verify")
                vf = run_cli([CLI, "verify", "--ledger", url, "--chain", CHAIN, "--key", key], work)
                runs["evidence"].append(ev)
                runs["verify-evidence"].append(ve)
                runs["verify"].append(vf)
                for name, p in (("evidence", ev), ("verify-evidence", ve), ("verify", vf)):
                    extra = ""
                    if name == "evidence":
                        extra = f"{n / p.wall_s:,.0f} rec/s; pack {size:.1f} MiB"
                    elif name == "verify":
                        extra = f"{ev.wall_s and p.wall_s / ev.wall_s:.0%} of evidence"
                    rows.append(
                        (
                            f"{n:,}",
                            str(r + 1),
                            f"`{name}`",
                            f"{p.wall_s:.1f} s",
                            f"{p.cpu_s:.1f} s",
                            f"{p.peak_kib / 1024:.0f} MiB",
                            extra,
                            "ok" if p.code == 0 else f"exit {p.code}: {p.last}",
                        )
                    )
            summary[n] = runs
            if args.py_spy and n == sizes[-1]:
                progress("  py-spy record of evidence")
                profile = py_spy_top(url, work, args.top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def report(**head: object) -> str:
        return render(head, host, builds, rows, summary, sizes, profile)

    run.print_report(report)
    return 0


def render(
    head: dict[str, object],
    host: list[tuple[str, str]],
    builds: list[tuple[str, str, str]],
    rows: list[tuple[str, ...]],
    summary: dict[int, dict[str, list[Proc]]],
    sizes: Sequence[int],
    profile: tuple[list[tuple[str, str, str]], str] | None,
) -> str:
    load = head["load"]
    assert isinstance(load, tuple)
    out = [
        "# Evidence pack benchmark\n",
        f"`{head['command']}`; {head['elapsed_s']:.0f} s; load {load[0]} -> {load[1]} "
        f"(2 cores, shared with other work); code changed while running: "
        f"{head['code_changed']}\n",
        table(("Machine", ""), host) + "\n",
        table(("Records", "build", "ledger file"), builds) + "\n",
        f"## Each command, `--sample {SAMPLE}`, one chain, every record in the period\n",
        table(("Records", "run", "command", "wall", "CPU", "peak RSS", "", "result"), rows) + "\n",
        "## Against the targets (best of the runs)\n",
    ]
    target_rows = []
    for n in sizes:
        runs = summary.get(n)
        if not runs:
            continue
        failed = [p for c in runs.values() for p in c if p.code != 0]
        if failed:  # a failed command's time says nothing: never a "yes" for it
            target_rows.append((f"{n:,}", *(["failed"] * 6), "**no**", "**no**"))
            continue
        ev = min(p.wall_s for p in runs["evidence"])
        ve = min(p.wall_s for p in runs["verify-evidence"])
        vf = min(p.wall_s for p in runs["verify"])
        rss = max(p.peak_kib for p in runs["evidence"]) / 1024
        target_rows.append(
            (
                f"{n:,}",
                f"{ev:.1f} s",
                f"{n / ev:,.0f}/s",
                f"{rss:.0f} MiB",
                f"{vf:.1f} s ({vf / ev:.0%})",
                f"{ev - vf:.1f} s",
                f"{ve:.1f} s",
                "yes" if ev <= 60 else "**no**",
                "yes" if ve <= 10 else "**no**",
            )
        )
    out.append(
        table(
            (
                "Records",
                "evidence",
                "records/s",
                "peak RSS",
                "verify (share)",
                "evidence - verify",
                "verify-evidence",
                "<= 60 s",
                "<= 10 s",
            ),
            target_rows,
        )
    )
    if len(sizes) >= 2 and all(n in summary for n in sizes):
        lo = max(p.peak_kib for p in summary[sizes[0]]["evidence"])
        hi = max(p.peak_kib for p in summary[sizes[-1]]["evidence"])
        out.append(
            f"\nFlat memory: peak RSS of `evidence` at {sizes[-1]:,} / at {sizes[0]:,} = "
            f"{hi / lo:.2f} ({hi / 1024:.0f} / {lo / 1024:.0f} MiB)."
        )
    if profile is not None:
        rows_p, note = profile
        out.append(f"\n## Where `evidence` spends its time at {sizes[-1]:,} (py-spy, {note})\n")
        out.append(table(("function", "inclusive", "self"), rows_p))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
