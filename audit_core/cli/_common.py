"""What every ``workflow-audit`` command shares: the exit codes, the "what to do" advice and
the verdict an invalid trail prints, the ledger the arguments name (and which one is opened
when none is named), time arguments and output files. Private to :mod:`audit_core.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

import orjson

from audit_core._note import Verifier, unverified_text
from audit_core._report import parse_time
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.config import AuditConfig
from audit_core.errors import CheckpointError, ConfigError, SignatureError, VerificationError
from audit_core.health import EXIT_UNHEALTHY
from audit_core.ledgers import Ledger, ledger_path, masked_url, open_ledger

__all__ = [
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_UNHEALTHY",
    "EXIT_USAGE",
    "LEDGER_ENTRY_POINTS",
    "add_group",
    "add_ledger_args",
    "default_ledger_url",
    "open_ledger_arg",
    "output",
    "print_invalid",
    "print_valid",
    "read_checkpoint",
    "time_arg",
]

# The numbers the package docstring lists (and --help shows); health's own verdict, 4, is
# defined by audit_core.health beside the thresholds that decide it.
EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3

#: Entry point group of installed adapters that say where their ledger is by default: a
#: callable returning a ledger URL (the Airflow plugin registers ``airflow``).
LEDGER_ENTRY_POINTS = "workflow_audit.ledgers"

# What to do when a trail is invalid, by where the trail was read and, for a bucket, why.
_WHAT_TO_DO = {
    "ledger": "What to do: treat records from this point on as untrustworthy; compare with an "
    "exported copy, a report or a checkpoint kept elsewhere, and find who had write access to "
    "the ledger.",
    "bucket": "What to do: treat this copy as untrustworthy from the named object on; compare it "
    "with the ledger (`workflow-audit verify`) and with the bucket's object versions, and find "
    "who had write access to the bucket.",
    "bucket:retention": "What to do: this copy is not protected as the policy requires; ship to "
    "a bucket made by `workflow-audit s3 init-bucket` (COMPLIANCE mode, retention of at least "
    "the policy's days), or pass the policy this bucket is meant to meet.",
}


def print_invalid(kind: str, where: str, exc: VerificationError, json: bool) -> None:
    """The verdict on an invalid trail read from a ``kind`` ("ledger" or "bucket") at
    ``where``: one JSON object on standard output, or the message, the expected and found
    values and what to do on standard error."""
    if json:
        error = {
            "reason": exc.reason,
            "chain": exc.chain,
            "seq": exc.seq,
            "expected": exc.expected,
            "found": exc.found,
            "message": str(exc),
        }
        print(orjson.dumps({"valid": False, kind: where, "error": error}).decode())
        return
    print(f"INVALID {exc}", file=sys.stderr)
    if exc.expected is not None:
        print(f"  expected: {exc.expected}\n  found:    {exc.found}", file=sys.stderr)
    advice = _WHAT_TO_DO.get(f"{kind}:{exc.reason}", _WHAT_TO_DO[kind])
    print(f"  {advice}", file=sys.stderr)


def print_valid(kind: str, where: str, records: int, signed: bool, chains: list[Any]) -> None:
    """The JSON verdict on a valid trail (``chains``: each chain's ``to_json()``)."""
    verdict = {
        "valid": True,
        kind: where,
        "records": records,
        "signatures_checked": signed,
        "chains": chains,
    }
    print(orjson.dumps(verdict).decode())


def add_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command group (``s3``, ``postgres``, ``spool``): its subcommands, one of them required."""
    group = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def add_ledger_args(sp: argparse.ArgumentParser, *, chain_help: str) -> None:
    """``--ledger`` and a repeatable ``--chain``, as the reading commands take them."""
    sp.add_argument(
        "--ledger",
        help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER, "
        "else $XDG_DATA_HOME/workflow-audit/ledger.db)",
    )
    sp.add_argument("--chain", action="append", help=chain_help)


def time_arg(text: str) -> str:
    """An argparse type: RFC 3339 or a date, normalized (see ``_report.parse_time``)."""
    # argparse turns ArgumentTypeError into a usage message and exit code 2.
    try:
        return parse_time(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def default_ledger_url() -> str:
    """$WORKFLOW_AUDIT_LEDGER, else the user's default ledger if it exists, else the first
    ledger an installed adapter names (entry point group ``workflow_audit.ledgers``, e.g. the
    Airflow plugin's) if that one exists: `workflow-audit verify` on an Airflow host finds
    Airflow's trail."""
    url = AuditConfig.from_env().ledger_url
    if os.environ.get("WORKFLOW_AUDIT_LEDGER"):
        return url
    path = ledger_path(url)
    if path is not None and path.exists():
        return url
    for name, adapter_url in _adapter_ledgers():
        adapter_path = ledger_path(adapter_url) if adapter_url.startswith("sqlite:") else None
        if adapter_path is not None and adapter_path.exists():
            print(
                f"workflow-audit: using the {name.capitalize()} plugin's ledger {adapter_path}",
                file=sys.stderr,
            )
            return adapter_url
    return url


def _adapter_ledgers() -> Iterator[tuple[str, str]]:
    """(name, ledger URL) of each installed adapter, by name; a broken one is skipped."""
    for ep in sorted(entry_points(group=LEDGER_ENTRY_POINTS), key=lambda e: e.name):
        try:
            url = ep.load()()
        # A broken or half-installed adapter must not stop the core CLI: it only loses its
        # default ledger (--ledger and $WORKFLOW_AUDIT_LEDGER still work).
        except Exception as exc:  # noqa: BLE001 - another package's code: said and skipped
            print(
                f"workflow-audit: warning: ledger entry point {ep.name!r} failed ({exc!r}); "
                "skipped",
                file=sys.stderr,
            )
            continue
        if isinstance(url, str) and url:
            yield ep.name, url


def open_ledger_arg(args: argparse.Namespace, *, write: bool = False) -> tuple[Ledger, str]:
    """The ledger ``--ledger`` names (else :func:`default_ledger_url`) and how to name it in
    messages, read-only unless ``write`` (STYLE rule 17: an auditor who cannot write, or a
    copy on read-only media, can run every reading command). Never creates a SQLite ledger."""
    url = args.ledger or default_ledger_url()
    postgres = url.startswith(("postgresql://", "postgres://"))
    if "://" in url and not postgres and not url.startswith("sqlite:"):
        raise ConfigError(
            f"unsupported ledger URL {masked_url(url)!r}: sqlite:/// or postgresql://"
        )
    path = None if postgres else ledger_path(url)
    if not postgres:
        if path is None:
            raise ConfigError("an in-memory ledger cannot be read from the command line")
        if not path.exists():
            raise ConfigError(f"no ledger at {path} (set --ledger or WORKFLOW_AUDIT_LEDGER)")
    # A PostgreSQL writer creates the schema on first use, as the adapters' writers do.
    ledger = open_ledger(url, read_only=not write, create=postgres)
    return ledger, str(path) if path is not None else repr(ledger)  # repr hides the password


def output(args: argparse.Namespace, mode: str) -> IO[str] | IO[bytes]:
    """``--output`` opened in ``mode``, else standard output."""
    if args.output:
        return open(args.output, mode)
    return sys.stdout.buffer if "b" in mode else sys.stdout


def read_checkpoint(path: str, keys: Sequence[Verifier]) -> Checkpoint:
    """A signed checkpoint file: a usage error if it cannot be read or is no signed
    checkpoint; with ``keys``, a :class:`CheckpointError` (invalid) if it does not verify."""
    try:
        note = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # missing, a directory, binary: exit 2
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from exc
    try:  # its form first: a file that is no signed checkpoint at all is a usage error
        unsigned = Checkpoint.parse(unverified_text(note))
    except (SignatureError, CheckpointError) as exc:
        raise ConfigError(f"{path} is not a signed checkpoint: {exc}") from exc
    if not keys:
        return unsigned
    try:
        return open_checkpoint(note, keys)
    except SignatureError as exc:  # evidence that does not verify: "invalid", exit 1
        raise CheckpointError(
            f"checkpoint {path} does not verify: {exc}", chain="?", seq=None
        ) from exc
