"""``workflow-audit health``: the command line of :mod:`audit_core.health`.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["health", "--max-record-age", "2h", "--max-lag", "off"])
>>> args.max_record_age, args.max_checkpoint_age, args.max_lag, args.max_spool
(7200.0, 3600.0, None, 0)
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import orjson

from audit_core.cli._common import EXIT_INVALID, EXIT_OK, EXIT_UNHEALTHY, open_ledger_arg
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError
from audit_core.health import Health, Thresholds, check, parse_duration, publish
from audit_core.metrics import set_instance

__all__ = ["add_parsers"]


def _render(health: Health) -> str:
    lines = []
    for c in health.chains:
        parts = [f"chain {c.chain}: {c.records} records"]
        if c.last_record_age_s is not None:
            parts.append(f"last {c.last_record_age_s:.0f}s ago")
        if c.checkpoint_size is None:
            parts.append("no checkpoint")
        else:
            parts.append(f"checkpoint of {c.checkpoint_size} {c.checkpoint_age_s or 0:.0f}s ago")
        parts.append(f"{c.unsigned} unsigned")
        for witness, w in c.witnesses.items():
            if w.size is None:
                parts.append(f"witness {witness} cosigned nothing")
            else:
                ago = "" if w.cosigned_age_s is None else f" {w.cosigned_age_s:.0f}s ago"
                parts.append(f"witness {witness} cosigned {w.size}{ago} (lag {w.lag})")
        parts += [f"sink {s} lag {lag}" for s, lag in c.sinks.items()]
        # a source's cursor is its own id, or a digest held as an int (a state source)
        parts += [f"source {s} cursor {i}" for s, i in c.sources.items()]
        if c.valid is not None:
            parts.append("valid" if c.valid else "INVALID")
        lines.append(", ".join(parts))
    if health.spool is not None:
        s = health.spool
        lines.append(f"spool {s['directory']}: {s['records']} record(s) in {s['files']} file(s)")
    if health.counters:
        lines.append("anchor: " + ", ".join(f"{k} {n}" for k, n in health.counters.items()))
    lines += [f"UNHEALTHY: {p}" for p in health.problems]
    lines.append("healthy" if health.healthy else f"unhealthy: {len(health.problems)} problem(s)")
    return "\n".join(lines)


def _limit(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _count(text: str) -> int | None:
    if text.strip().lower() == "off":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``health`` to the ``workflow-audit`` subcommands ``sub``."""
    h = sub.add_parser(
        "health",
        help="records, checkpoints, sink lag and spool backlog; exit 4 when unhealthy",
        description="Read the ledger (read-only) and the spool, and print per chain: records, "
        "last record age, last checkpoint (size, age), records no checkpoint covers yet, each "
        "sink's lag; then the spool's backlog. Exit codes: 0 healthy, 4 unhealthy (each "
        "problem is printed), 1 --verify found a chain invalid, 2 usage or I/O error. A "
        "duration is seconds or 30s, 15m, 2h, 1d; 'off' turns a check off.",
    )
    h.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    h.add_argument("--chain", action="append", help="chain to check (default: every chain)")
    h.add_argument("--spool", type=Path, help="spool directory (default: the configured one)")
    h.add_argument("--json", action="store_true", help="print the findings as JSON")
    h.add_argument("--verify", action="store_true", help="also verify each chain (exit 1)")
    h.add_argument("--max-record-age", type=_limit, default=None, help="e.g. 1h (default: off)")
    h.add_argument("--max-checkpoint-age", type=_limit, default=3600.0, help="(default: 1h)")
    h.add_argument("--max-lag", type=_count, default=10_000, help="records (default: 10000)")
    h.add_argument("--max-spool", type=_count, default=0, help="records (default: 0)")
    h.set_defaults(func=_cmd_health)


def _cmd_health(args: argparse.Namespace) -> int:
    # One series per checking host, whatever the run: the dashboard reads the last verdict.
    set_instance(f"workflow-audit-health@{socket.gethostname()}")
    ledger, name = open_ledger_arg(args)
    try:
        # the spool's default place is beside the ledger: the one actually opened
        path = getattr(ledger, "path", None)
        url = f"sqlite:///{path}" if path is not None else args.ledger
        config = AuditConfig.from_env(ledger_url=url) if url else AuditConfig.from_env()
        limits = Thresholds(
            max_record_age_s=args.max_record_age,
            max_checkpoint_age_s=args.max_checkpoint_age,
            max_lag=args.max_lag,
            max_spool=args.max_spool,
        )
        health = check(
            ledger,
            name=name,
            chains=args.chain,
            thresholds=limits,
            config=config,
            spool_dir=args.spool,
            verify=args.verify,
        )
    finally:
        ledger.close()
    if args.json:
        sys.stdout.write(orjson.dumps(health.to_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(_render(health))
    sys.stdout.flush()
    publish(health)  # after the output: a slow collector never delays the verdict
    if any(c.valid is False for c in health.chains):
        return EXIT_INVALID
    return EXIT_OK if health.healthy else EXIT_UNHEALTHY
