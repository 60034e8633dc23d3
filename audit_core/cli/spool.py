"""``workflow-audit spool status`` and ``workflow-audit spool drain`` (see :mod:`audit_core.spool`).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["spool", "status", "--spool-dir", "/var/spool/audit", "--json"])
>>> args.spool_command, args.spool_dir, args.json, args.ledger
('status', '/var/spool/audit', True, None)

Exit codes: 0 done (or nothing waits), 2 a corrupt spool line was found (it is quarantined,
never dropped: inspect ``<spool dir>/quarantine/``) or the ledger refused the drain (what was
not appended stays spooled; run it again).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from audit_core.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    add_group,
    default_ledger_url,
    open_ledger_arg,
)
from audit_core.config import AuditConfig
from audit_core.ledgers import Ledger
from audit_core.spool import DrainResult, backlog, drain, ledger_key, pending_files, spool_dirs

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``spool status`` and ``spool drain`` to the ``workflow-audit`` subcommands ``sub``."""
    commands = add_group(sub, "spool", help="records that wait for the ledger: status, drain")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ledger", help="ledger URL (default: as for verify)")
        p.add_argument(
            "--spool-dir",
            help="spool directory (default: $WORKFLOW_AUDIT_SPOOL_DIR, else beside the ledger)",
        )

    st = commands.add_parser("status", help="files, records and corrupt lines in the spool")
    common(st)
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=_cmd_status)

    dr = commands.add_parser(
        "drain",
        help="append spooled records to their chains, in order; idempotent",
        description="Append every record spooled for this ledger to its chain, in its "
        "original order and with its original ts, then remove the drained files. Safe to "
        "interrupt and re-run: records already on the chain are skipped. Files still held by "
        "a running process are left for it. Exit 2 if a corrupt line was found (it is moved "
        "to quarantine/, never dropped).",
    )
    common(dr)
    dr.set_defaults(func=_cmd_drain)


def _config(args: argparse.Namespace) -> AuditConfig:
    overrides: dict[str, Any] = {"ledger_url": args.ledger or default_ledger_url()}
    if args.spool_dir:
        overrides["spool_dir"] = args.spool_dir
    return AuditConfig.from_env(**overrides)


def _ledger(args: argparse.Namespace) -> Ledger:
    # As every command opens it: an unsupported URL, or a SQLite file that does not exist (a
    # typo), is a usage error, never "nothing waits" nor a new empty ledger. Nothing is read
    # yet (SQLite and PostgreSQL ledgers connect on first use).
    return open_ledger_arg(args, write=True)[0]


def _cmd_status(args: argparse.Namespace) -> int:
    # The ledger is named, not read: status must answer while the ledger is down.
    _ledger(args).close()
    config = _config(args)
    mine = len(pending_files(config))
    report = []
    for directory in spool_dirs(config):
        b = backlog(directory)
        report.append(
            {
                "directory": str(directory),
                "files": b.files,
                "records": b.records,
                "oldest_ts": b.oldest_ts,
                "corrupt": b.corrupt,
            }
        )
    if args.json:
        out = {"ledger_files": mine, "directories": report}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for r in report:
            print(
                f"{r['directory']}: {r['records']} record(s) in {r['files']} file(s), "
                f"oldest {r['oldest_ts'] or '-'}, {r['corrupt']} corrupt line(s)"
            )
        print(f"{mine} file(s) of this ledger wait to be drained")
    return EXIT_USAGE if any(r["corrupt"] for r in report) else EXIT_OK


def _cmd_drain(args: argparse.Namespace) -> int:
    config = _config(args)
    ledger = _ledger(args)
    ledger.chains()  # a file that is no ledger fails now, not at the first spooled record
    key = ledger_key(config.ledger_url)
    total = DrainResult()
    try:
        for directory in spool_dirs(config):
            r = drain(ledger, directory, key, wait=True)
            total = DrainResult(
                drained=total.drained + r.drained,
                skipped=total.skipped + r.skipped,
                files=total.files + r.files,
                busy=total.busy + r.busy,
                corrupt=total.corrupt + r.corrupt,
                waiting=total.waiting + r.waiting,
            )
    finally:
        ledger.close()
    print(
        f"drained {total.drained} record(s) from {total.files} file(s); "
        f"{total.skipped} already on the chain; {total.busy} file(s) held by a running "
        f"process and {total.waiting} waiting behind them (they land when it drains its "
        f"own); {total.corrupt} corrupt line(s)"
    )
    if total.corrupt:
        print(
            "workflow-audit: error: corrupt spool lines were moved to quarantine/ "
            "(see the log above); inspect them",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK
