"""``workflow-audit``: verify, show, tail, export, serve and report on an audit ledger.

Exit codes (stable, for scripts and CI):

- 0: success; for ``verify``, every chain checked is valid
- 1: ``verify`` found the trail invalid (the message names chain, seq, expected and found);
  ``evidence`` wrote a pack that states FAIL; ``verify-evidence`` found the pack wrong
- 2: usage error, or the ledger cannot be opened or read
- 3: ``ship`` gave up with records still pending (the sink stayed down past ``--timeout``)
- 4: ``health`` found the trail unhealthy (a threshold was passed; see ``health --help``)

Run ``workflow-audit --help`` or ``workflow-audit COMMAND --help``. Each command group is a
module of this package with an ``add_parsers(sub)`` that adds its subcommands, each of which
sets ``func``; what they share (exit codes, verdicts, the ledger to open) is in ``_common``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from audit_core import __version__
from audit_core.cli import (
    evidence,
    follow,
    health,
    index,
    ingest,
    postgres,
    privacy,
    proofs,
    reconcile,
    records,
    s3,
    serve,
    ship,
    spool,
    verify,
    witness,
)
from audit_core.cli._common import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from audit_core.errors import AuditError, VerificationError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workflow-audit`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.func(args)
        return result
    except VerificationError as exc:  # raised by report when asked to fail on invalid
        print(f"INVALID: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except AuditError as exc:
        print(f"workflow-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `workflow-audit export | head`
        return EXIT_OK
    except OSError as exc:  # a file named on the command line: I/O, exit 2, no traceback
        print(f"workflow-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _exit_codes() -> str:
    """The exit codes listed in this module's docstring (one list, also shown by --help)."""
    listed = [line[2:] for line in (__doc__ or "").splitlines() if re.match(r"- \d+: ", line)]
    return "Exit codes: " + "; ".join(code.replace("``", "") for code in listed) + "."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="workflow-audit",
        description="Tamper-evident audit trails for Airflow and Prefect.",
        epilog=_exit_codes(),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # The order of --help: checking first, then reading, delivering, operating; report last.
    verify.add_parsers(sub)
    proofs.add_parsers(sub)
    records.add_parsers(sub)
    evidence.add_parsers(sub)
    serve.add_parsers(sub)
    ship.add_parsers(sub)
    s3.add_parsers(sub)
    postgres.add_parsers(sub)
    spool.add_parsers(sub)
    health.add_parsers(sub)
    reconcile.add_parsers(sub)
    ingest.add_parsers(sub)
    follow.add_parsers(sub)
    index.add_parsers(sub)
    privacy.add_parsers(sub)
    witness.add_parsers(sub)
    records.add_report_parser(sub)
    return p
