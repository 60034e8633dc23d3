"""``workflow-audit ship``: deliver records to sinks (OTLP, S3 Object Lock, structlog), at
least once, one-shot or as a ``--follow`` daemon (see :mod:`audit_core.ship`).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["ship", "--sink", "s3", "--s3", "s3://archive/prod"])
>>> args.sink, args.s3, args.follow, args.timeout
(['s3'], 's3://archive/prod', False, 60.0)
"""

from __future__ import annotations

import argparse
import os
import sys

from audit_core.cli._common import EXIT_OK, EXIT_PENDING, default_ledger_url, open_ledger_arg
from audit_core.cli._reader import anchoring
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ship`` to the ``workflow-audit`` subcommands ``sub``."""
    sh = sub.add_parser(
        "ship",
        help="deliver records to sinks (OTLP, S3 Object Lock, structlog), at least once",
        description="Deliver every record after each sink's cursor, in order, per chain; the "
        "cursor moves only once the sink confirmed. One-shot (catch up, then exit; exit code "
        "3 if something is still pending after --timeout) or --follow (a daemon: a sidecar "
        "next to Airflow workers or a Prefect worker; SIGTERM stops it cleanly). --follow "
        "also signs a checkpoint of every chain that grew every "
        "$WORKFLOW_AUDIT_ANCHOR_INTERVAL seconds (60) and on exit, offered to "
        "$WORKFLOW_AUDIT_WITNESSES.",
    )
    sh.add_argument(
        "--sink",
        action="append",
        choices=["all", "otlp", "s3", "structlog"],
        help="sink (repeatable; all: otlp and s3; default: $WORKFLOW_AUDIT_SINKS, comma-separated)",
    )
    sh.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    sh.add_argument("--chain", action="append", help="chain to ship (default: every chain)")
    sh.add_argument("--endpoint", help="OTLP endpoint (default: $OTEL_EXPORTER_OTLP_*)")
    sh.add_argument("--s3", metavar="s3://BUCKET/PREFIX", help="S3 destination "
                    "(default: $WORKFLOW_AUDIT_S3_URL)")  # fmt: skip
    sh.add_argument("--batch-size", type=int, default=1000, help="records a batch (1000)")
    sh.add_argument("--follow", action="store_true", help="keep shipping new records")
    sh.add_argument("--poll", type=float, default=1.0, help="--follow: seconds between polls")
    sh.add_argument("--timeout", type=float, default=60.0, help="one-shot: give up after (60 s)")
    sh.set_defaults(func=_cmd_ship)


def _env_sinks() -> list[str]:
    return [n.strip() for n in os.environ.get("WORKFLOW_AUDIT_SINKS", "").split(",") if n.strip()]


def _cmd_ship(args: argparse.Namespace) -> int:
    import signal
    import threading

    from audit_core.ship import Shipper
    from audit_core.sinks.registry import make_sink, sink_names

    config = AuditConfig.from_env(ledger_url=args.ledger or default_ledger_url())
    names = sink_names(args.sink or _env_sinks())
    if not names:
        raise ConfigError("no sink: pass --sink otlp|s3|structlog|all or set WORKFLOW_AUDIT_SINKS")
    ledger, _ = open_ledger_arg(args, write=True)
    sinks = [
        make_sink(name, ledger, config, endpoint=args.endpoint, s3_url=args.s3) for name in names
    ]
    shippers = [
        Shipper(ledger, sink, batch_size=args.batch_size, chains=args.chain) for sink in sinks
    ]
    try:
        if args.follow:
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            workers = [
                threading.Thread(target=s.follow, args=(stop,), kwargs={"poll_s": args.poll})
                for s in shippers
            ]
            # a daemon beside the writers: it signs what they append (checkpoints without cron)
            with anchoring(config, "workflow-audit-anchor-ship"):
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
            return EXIT_OK
        left = 0
        for shipper in shippers:
            shipper.drain(timeout_s=args.timeout)
            pending = sum(shipper.pending().values())
            left += pending
            print(f"{shipper.sink.name}: {pending} record(s) pending", file=sys.stderr)
        return EXIT_OK if left == 0 else EXIT_PENDING
    finally:
        for sink in sinks:
            sink.shutdown()
