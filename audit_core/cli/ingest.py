"""``workflow-audit ingest SOURCE``: copy an outside log (Airflow's ``log`` table, …) onto a
chain, each row exactly once (see :mod:`audit_core.sources`), once or as a ``--follow``
sidecar.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["ingest", "airflow", "--follow", "--grace", "30"])
>>> args.source, args.follow, args.interval, args.grace, args.batch
('airflow', True, 1.0, 30.0, 1000)
"""

from __future__ import annotations

import argparse
import sys

from audit_core.cli._common import EXIT_OK, EXIT_USAGE
from audit_core.cli._reader import (
    MAX_BATCH,
    add_target_args,
    anchoring,
    bounded_seconds,
    check_batch_and_chain,
    closing,
    open_trail,
    reader_config,
    stopped_by_signals,
)
from audit_core.sources import SOURCE_ENTRY_POINTS, Ingestor, load_source

__all__ = ["add_parsers"]

_EXIT_CODES = (
    "Checkpoints of every chain that grew are signed every $WORKFLOW_AUDIT_ANCHOR_INTERVAL "
    "seconds (60) and on exit, and offered to $WORKFLOW_AUDIT_WITNESSES. "
    f"Exit codes: {EXIT_OK}: caught up (with --follow: stopped by SIGTERM or SIGINT after the "
    f"current step); {EXIT_USAGE}: usage error, an unknown or broken source, or (without "
    "--follow) the source or the ledger cannot be read or written. With --follow such "
    "failures are logged, counted and retried with backoff (up to 30 s)."
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ingest`` to the ``workflow-audit`` subcommands ``sub``."""
    ig = sub.add_parser(
        "ingest",
        help="copy an orchestrator's own log onto a chain, each row exactly once",
        description="Record every row of SOURCE (e.g. airflow: Airflow's event log) on a "
        "chain, in id order, exactly once: a cursor in the ledger moves in the same "
        "transaction as the records, so restarts and concurrent ingesters neither lose nor "
        "repeat a row. Rows deleted before they were read, and holes older than --grace, "
        "become source.gap records. One-shot (catch up, print a summary) or --follow.",
        epilog=_EXIT_CODES,
    )
    ig.add_argument(
        "source",
        help=f"an installed source (entry point group {SOURCE_ENTRY_POINTS}, e.g. airflow) "
        "or MODULE:CALLABLE, a zero-argument callable returning a Source",
    )
    ig.add_argument("--follow", action="store_true", help="keep ingesting new rows")
    ig.add_argument(
        "--interval",
        type=bounded_seconds(0, _MAX_INTERVAL_S, low_included=False),
        default=1.0,
        help=f"--follow: seconds between polls (1; at most {_MAX_INTERVAL_S:g})",
    )
    ig.add_argument(
        "--grace",
        type=bounded_seconds(0, _MAX_GRACE_S, low_included=True),
        default=10.0,
        help="seconds a hole in the ids may stay open before it is recorded as missing (10; "
        f"at most {_MAX_GRACE_S:g})",
    )
    ig.add_argument(
        "--batch", type=int, default=1000, help=f"rows a transaction (1000; 1 to {MAX_BATCH})"
    )
    add_target_args(ig, "source")
    ig.set_defaults(func=_cmd_ingest)


# A one-shot run waits up to the grace for a hole: bounded, or cron would never see it end.
_MAX_INTERVAL_S = 3600.0
_MAX_GRACE_S = 86400.0


def _cmd_ingest(args: argparse.Namespace) -> int:
    check_batch_and_chain(args)
    source = load_source(args.source)
    with closing(source, source.name):
        config = reader_config(source, args.ledger)
        chain = args.chain or getattr(source, "chain", None) or config.chain
        with open_trail(args, config) as trail, anchoring(config, "workflow-audit-anchor-ingest"):
            ingestor = Ingestor(trail, source, chain=chain, grace_s=args.grace, batch=args.batch)
            with stopped_by_signals() as stop:
                result = ingestor.run(follow=args.follow, interval_s=args.interval, stop=stop)
    print(f"{source.name} -> chain {chain!r}: {result.summary()}", file=sys.stderr)
    return EXIT_OK
