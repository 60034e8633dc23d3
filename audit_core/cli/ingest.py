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
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from audit_core.cli._common import EXIT_OK, EXIT_USAGE, default_ledger_url, open_ledger_arg
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError
from audit_core.ledgers import open_ledger
from audit_core.sources import SOURCE_ENTRY_POINTS, Ingestor, load_source
from audit_core.trail import AuditTrail

__all__ = ["add_parsers"]

_EXIT_CODES = (
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
        type=_seconds(0, _MAX_INTERVAL_S, low_included=False),
        default=1.0,
        help=f"--follow: seconds between polls (1; at most {_MAX_INTERVAL_S:g})",
    )
    ig.add_argument(
        "--grace",
        type=_seconds(0, _MAX_GRACE_S, low_included=True),
        default=10.0,
        help="seconds a hole in the ids may stay open before it is recorded as missing (10; "
        f"at most {_MAX_GRACE_S:g})",
    )
    ig.add_argument(
        "--batch", type=int, default=1000, help=f"rows a transaction (1000; 1 to {_MAX_BATCH})"
    )
    ig.add_argument(
        "--chain",
        help="chain (default: the source's own, else $WORKFLOW_AUDIT_CHAIN, else default)",
    )
    ig.add_argument(
        "--ledger",
        help="ledger URL (default: the source's own, else $WORKFLOW_AUDIT_LEDGER, else the "
        "default ledger)",
    )
    ig.set_defaults(func=_cmd_ingest)


# Bounds that keep a typo from becoming a hang or an overflow: threading's waits refuse
# values past TIMEOUT_MAX, SQLite's LIMIT a 64-bit overflow, and a one-shot run waits up to
# the grace for a hole (cron would never see it end).
_MAX_INTERVAL_S = 3600.0
_MAX_GRACE_S = 86400.0
_MAX_BATCH = 100_000


def _seconds(low: float, high: float, *, low_included: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        above = value >= low if low_included else value > low
        if not (above and value <= high):  # NaN fails both
            bound = "zero or more" if low_included else "more than zero"
            raise argparse.ArgumentTypeError(f"must be {bound} and at most {high:g}, not {text}")
        return value

    return parse


def _cmd_ingest(args: argparse.Namespace) -> int:
    if not 1 <= args.batch <= _MAX_BATCH:
        raise ConfigError(f"--batch must be 1 to {_MAX_BATCH}, not {args.batch}")
    if args.chain is not None and not args.chain.strip():
        raise ConfigError("--chain must name a chain, not be empty")
    source = load_source(args.source)
    try:
        config = _config(source, args.ledger)
        chain = args.chain or getattr(source, "chain", None) or config.chain
        if args.ledger:  # named on the command line: a typo must not create a new ledger
            ledger, _ = open_ledger_arg(args, write=True)
        else:
            ledger = open_ledger(
                config.ledger_url,
                synchronous=config.synchronous,
                busy_timeout_s=config.busy_timeout_s,
            )
        with AuditTrail(config, ledger=ledger) as trail:
            ingestor = Ingestor(trail, source, chain=chain, grace_s=args.grace, batch=args.batch)
            with _stopped_by_signals() as stop:
                result = ingestor.run(follow=args.follow, interval_s=args.interval, stop=stop)
    finally:
        try:
            source.close()
        except Exception as exc:  # noqa: BLE001 - the rows are recorded: say it, do not fail
            print(f"warning: closing {source.name} failed: {exc}", file=sys.stderr)
    print(f"{source.name} -> chain {chain!r}: {result.summary()}", file=sys.stderr)
    return EXIT_OK


def _config(source: object, ledger: str | None) -> AuditConfig:
    """The configuration to record with: the source's own (an orchestrator's source may carry
    its adapter's, so that the CLI signs and redacts as the plugin does: attribute
    ``config``), else the environment's; the ledger: ``--ledger``, else the source's
    (attribute ``ledger_url``, or its config's), else the default ledger."""
    base = getattr(source, "config", None)
    own = getattr(source, "ledger_url", None)
    if isinstance(base, AuditConfig):
        return replace(base, ledger_url=ledger or own or base.ledger_url)
    return AuditConfig.from_env(ledger_url=ledger or own or default_ledger_url())


@contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """An event SIGTERM and SIGINT set (the run stops after its current step); the previous
    handlers are back afterwards."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may set handlers (a caller's thread: no signals)
        return
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
