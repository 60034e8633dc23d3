"""``workflow-audit reconcile SOURCE``: append ``*.unrecorded`` records for runs the
orchestrator knows ended without a terminal record (see :mod:`audit_core.reconcile`; the
orchestrators' reconcilers are entry points of the installed adapters).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["reconcile", "airflow", "--since", "2026-01-02", "--dry-run"])
>>> args.source, args.since, args.until, args.dry_run
('airflow', '2026-01-02T00:00:00.000000Z', None, True)

A gap record has a key (``Event.key``): when a racing reconciler, or the event follower, put
it on the chain between this run's read and its append, it is reported "already recorded",
not appended again.
"""

from __future__ import annotations

import argparse
import sys

from audit_core.cli._common import EXIT_OK, time_arg
from audit_core.ledgers import masked_url
from audit_core.trail import AuditTrail

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reconcile`` to the ``workflow-audit`` subcommands ``sub``."""
    rc = sub.add_parser(
        "reconcile",
        help="append *.unrecorded records for runs the orchestrator knows ended unrecorded",
        description="Ask the orchestrator's database which runs ended in the window and append "
        "a task.unrecorded / flowrun.unrecorded record for each one with no terminal record "
        "(a SIGKILLed or OOM-killed process never runs its hooks). Idempotent.",
    )
    rc.add_argument("source", help="orchestrator: airflow or prefect (installed adapters)")
    rc.add_argument("--since", required=True, type=time_arg, help="runs that ended from then")
    rc.add_argument("--until", type=time_arg, help="... and before then (default: now)")
    rc.add_argument("--ledger", help="ledger URL (default: the adapter's configuration)")
    rc.add_argument("--chain", help="chain (default: the adapter's configuration)")
    rc.add_argument("--dry-run", action="store_true", help="list the gaps, append nothing")
    rc.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    rc.set_defaults(func=_cmd_reconcile)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    import orjson

    from audit_core.reconcile import load, reconcile

    reconciler = load(args.source)
    config = reconciler.config(args.ledger, args.chain)
    with AuditTrail(config) as trail:
        result = reconcile(
            trail, reconciler, since=args.since, until=args.until, dry_run=args.dry_run
        )
    already = {id(e) for e in result.already_recorded}
    gaps = [
        (
            "would append"
            if args.dry_run
            else "already recorded"
            if id(event) in already
            else "appended",
            event.type,
            {k: v for k, v in (event.subject or {}).items() if v is not None},
        )
        for event in result.missing
    ]
    if args.json:
        summary = {
            "source": args.source,
            "since": args.since,
            "until": args.until,
            "chain": config.chain,
            "ledger": masked_url(config.ledger_url),
            "dry_run": args.dry_run,
            "checked": result.checked,
            "missing": len(result.missing),
            "appended": len(result.appended),
            "already_recorded": len(result.already_recorded),
            "gaps": [{"outcome": o, "type": t, "subject": s} for o, t, s in gaps],
        }
        print(orjson.dumps(summary).decode())
        return EXIT_OK
    for outcome, event_type, subject in gaps:
        print(f"{outcome} {event_type}: " + " ".join(f"{k}={v}" for k, v in subject.items()))
    where = f"chain {config.chain!r} of {masked_url(config.ledger_url)}"
    if args.dry_run:
        done = f"would append {len(result.missing)} to {where}"
    else:
        done = f"appended {len(result.appended)} to {where}"
        if result.already_recorded:
            done += f"; {len(result.already_recorded)} already recorded by another writer"
    print(
        f"{args.source}: {result.checked} terminal run(s) since {args.since}, "
        f"{len(result.missing)} without a record; {done}",
        file=sys.stderr,
    )
    return EXIT_OK
