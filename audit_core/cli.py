"""``workflow-audit``: verify, show, tail, export and report on an audit ledger.

Exit codes (stable, for scripts and CI):

- 0: success; for ``verify``, every chain checked is valid
- 1: ``verify`` found the trail invalid (the message names chain, seq, expected and found)
- 2: usage error, or the ledger cannot be opened or read
- 3: ``ship`` gave up with records still pending (the sink stayed down past ``--timeout``)
- 4: ``health`` found the trail unhealthy (a threshold was passed; see ``health --help``)

Run ``workflow-audit --help`` or ``workflow-audit COMMAND --help``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import orjson

from audit_core import __version__
from audit_core._chain import ChainHead, check_head, stored_size
from audit_core._note import Signer, Verifier, sign_note, unverified_text
from audit_core._record import Record
from audit_core._report import (
    Filter,
    attempt_of,
    parse_time,
    render_report,
    summarize,
    to_csv,
    to_jsonl,
)
from audit_core.checkpoint import (
    Checkpoint,
    load_signer,
    load_verifiers,
    open_checkpoint,
    write_key_files,
)
from audit_core.config import AuditConfig
from audit_core.errors import (
    AuditError,
    CheckpointError,
    ConfigError,
    ProofError,
    SignatureError,
    VerificationError,
)
from audit_core.ledgers import Ledger, LedgerReader, ledger_path, masked_url
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.proofs import (
    BUNDLE_FORMAT,
    make_inclusion_bundle,
    prove_consistency,
    verify_inclusion_bundle,
)
from audit_core.trail import AuditTrail
from audit_core.verify import chain_of, verify_ledger

__all__ = ["main"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3

_WHAT_TO_DO = (
    "What to do: treat records from this point on as untrustworthy; compare with an exported "
    "copy, a report or a checkpoint kept elsewhere, and find who had write access to the ledger."
)


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

    def common(sp: argparse.ArgumentParser, *, chain_help: str) -> None:
        sp.add_argument(
            "--ledger",
            help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER, "
            "else $XDG_DATA_HOME/workflow-audit/ledger.db)",
        )
        sp.add_argument("--chain", action="append", help=chain_help)

    def filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--since", type=_time_arg, help="from this time (RFC 3339 or date)")
        sp.add_argument("--until", type=_time_arg, help="before this time (exclusive)")
        sp.add_argument(
            "--event",
            action="append",
            default=[],
            help="event type or pattern (task.*); repeatable",
        )
        sp.add_argument(
            "--dag", "--pipeline", dest="pipeline", help="only records of this DAG / flow"
        )

    v = sub.add_parser("verify", help="check every record, link and hash of the chains")
    v.add_argument(
        "source",
        nargs="?",
        metavar="s3://BUCKET/PREFIX",
        help="verify shipped segments from an S3 bucket alone (needs --key) instead of a ledger",
    )
    common(v, chain_help="chain to verify (repeatable; default: every chain)")
    v.add_argument("--expect-size", type=int, help="the chain must hold exactly N records")
    v.add_argument("--expect-head", help="hex hash the chain's last record must have")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")
    v.add_argument(
        "--key",
        action="append",
        default=[],
        help="trusted verifier key (string or file); checks every stored "
        "checkpoint's signature (repeatable: every key name must have signed; keys sharing "
        "a name, as after a key rotation, are alternatives)",
    )
    v.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a signed checkpoint kept elsewhere: the ledger must still contain "
        "its tree (catches truncation and rewrites); needs --key",
    )
    v.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="verify large chains in N processes (0: one per CPU); a failure found there is "
        "re-verified in one process for the exact message",
    )
    v.add_argument(
        "--witness",
        action="append",
        default=[],
        help="witness verifier key that must also have cosigned each --checkpoint",
    )
    v.add_argument(
        "--min-retention-days",
        type=int,
        default=365,
        help="s3: each object must be locked at least this long (default 365)",
    )
    v.set_defaults(func=_cmd_verify)

    k = sub.add_parser("keygen", help="create a checkpoint signing key; print its verifier key")
    k.add_argument(
        "--name", required=True, help="key name, a schema-less URL such as example.com/audit/prod"
    )
    k.add_argument("-o", "--output", help="key file to write (default: NAME.key, mode 0600)")
    k.set_defaults(func=_cmd_keygen)

    c = sub.add_parser("checkpoint", help="sign a checkpoint of each chain now")
    common(c, chain_help="chain to checkpoint (repeatable; default: every chain)")
    c.add_argument(
        "--all",
        action="store_true",
        help="every chain (the default without --chain; spelled out for scripts)",
    )
    c.add_argument(
        "--rotate-key",
        action="store_true",
        help="the local signing key is lost: mint a new one even though the ledger holds "
        "checkpoints signed by the old one (its verifier key is added to <key>.pub; "
        "verifiers then need both keys)",
    )
    c.set_defaults(func=_cmd_checkpoint)

    pr = sub.add_parser("prove", help="write an inclusion proof bundle for one record")
    pr.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    pr.add_argument("--chain", default=None, help="chain (default: $WORKFLOW_AUDIT_CHAIN)")
    pr.add_argument("--seq", type=int, required=True, help="the record's seq")
    pr.add_argument("--size", type=int, help="tree size of a stored checkpoint (default: latest)")
    pr.add_argument("-o", "--output", help="bundle file (default: standard output)")
    pr.set_defaults(func=_cmd_prove)

    vp = sub.add_parser("verify-proof", help="check an inclusion proof bundle offline")
    vp.add_argument("bundle", help="bundle file written by `prove`")
    vp.add_argument("--key", action="append", required=True, help="trusted verifier key")
    vp.set_defaults(func=_cmd_verify_proof)

    co = sub.add_parser("cosign", help="add a witness signature to a signed checkpoint")
    co.add_argument("checkpoint", help="signed checkpoint file (rewritten with the new line)")
    co.add_argument("--signing-key", required=True, help="witness signer key (string or file)")
    co.add_argument(
        "--key",
        action="append",
        required=True,
        help="verifier key the checkpoint must already be signed by (the log's)",
    )
    co.set_defaults(func=_cmd_cosign)

    cs = sub.add_parser("consistency", help="prove append-only growth between two checkpoints")
    cs.add_argument("old", help="older signed checkpoint file")
    cs.add_argument("new", help="newer signed checkpoint file")
    cs.add_argument("--ledger", help="ledger URL to build the proof from")
    cs.add_argument(
        "--key",
        action="append",
        default=[],
        help="trusted verifier key (without one, signatures are NOT checked)",
    )
    cs.set_defaults(func=_cmd_consistency)

    s = sub.add_parser("show", help="records as a readable table")
    common(s, chain_help="chain to show (repeatable; default: every chain)")
    filters(s)
    s.add_argument("--limit", type=int, default=50, help="at most N records (default 50)")
    s.add_argument("--start", type=int, default=0, help="first seq to show")
    s.add_argument("--json", action="store_true", help="full records as JSON lines")
    s.set_defaults(func=_cmd_show)

    t = sub.add_parser("tail", help="the last records, optionally following new ones")
    common(t, chain_help="chain to tail (default: every chain)")
    t.add_argument("-n", "--lines", type=int, default=20, help="how many (default 20)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    t.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    t.add_argument("--max-polls", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=_cmd_tail)

    e = sub.add_parser("export", help="records as JSON lines or CSV, for auditors and SIEMs")
    common(e, chain_help="chain to export (repeatable; default: every chain)")
    filters(e)
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("-o", "--output", help="file to write (default: standard output)")
    e.set_defaults(func=_cmd_export)

    sh = sub.add_parser(
        "ship",
        help="deliver records to sinks (OTLP, S3 Object Lock, structlog), at least once",
        description="Deliver every record after each sink's cursor, in order, per chain; the "
        "cursor moves only once the sink confirmed. One-shot (catch up, then exit; exit code "
        "3 if something is still pending after --timeout) or --follow (a daemon: a sidecar "
        "next to Airflow workers or a Prefect worker; SIGTERM stops it cleanly).",
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

    from audit_core.sinks import s3_cli  # argparse only: boto3 is imported when a command runs

    s3_cli.add_parsers(sub)

    from audit_core.ledgers import postgres_admin  # argparse only: psycopg loads when it runs

    postgres_admin.add_parsers(sub)

    from audit_core import spool_cli  # spool status / spool drain

    spool_cli.add_parsers(sub)

    from audit_core import health_cli  # opens the ledger as the other reading commands do

    health_cli.add_parser(sub, _open)

    rc = sub.add_parser(
        "reconcile",
        help="append *.unrecorded records for runs the orchestrator knows ended unrecorded",
        description="Ask the orchestrator's database which runs ended in the window and append "
        "a task.unrecorded / flowrun.unrecorded record for each one with no terminal record "
        "(a SIGKILLed or OOM-killed process never runs its hooks). Idempotent.",
    )
    rc.add_argument("source", help="orchestrator: airflow or prefect (installed adapters)")
    rc.add_argument("--since", required=True, type=_time_arg, help="runs that ended from then")
    rc.add_argument("--until", type=_time_arg, help="... and before then (default: now)")
    rc.add_argument("--ledger", help="ledger URL (default: the adapter's configuration)")
    rc.add_argument("--chain", help="chain (default: the adapter's configuration)")
    rc.add_argument("--dry-run", action="store_true", help="list the gaps, append nothing")
    rc.set_defaults(func=_cmd_reconcile)

    r = sub.add_parser("report", help="counts, failures and the verification verdict")
    common(r, chain_help="chain to report on (repeatable; default: every chain)")
    filters(r)
    r.add_argument("--format", choices=("md", "csv", "json"), default="md")
    r.add_argument(
        "--key",
        action="append",
        default=[],
        help="trusted verifier key: also check the checkpoints' signatures",
    )
    r.add_argument("-o", "--output", help="file to write (default: standard output)")
    r.set_defaults(func=_cmd_report)
    return p


# -- helpers ------------------------------------------------------------------------------


def _time_arg(text: str) -> str:
    # argparse turns ArgumentTypeError into a usage message and exit code 2.
    try:
        return parse_time(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _default_ledger_url() -> str:
    """$WORKFLOW_AUDIT_LEDGER, else the user's default ledger if it exists, else the Airflow
    plugin's ($AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL, or $AIRFLOW_HOME/workflow_audit/ledger.db)
    if that one exists: `workflow-audit verify` on an Airflow host finds Airflow's trail."""
    url = AuditConfig.from_env().ledger_url
    if os.environ.get("WORKFLOW_AUDIT_LEDGER"):
        return url
    path = ledger_path(url)
    if path is not None and path.exists():
        return url
    airflow_url = os.environ.get("AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL")
    if not airflow_url:
        home = Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()
        airflow_url = "sqlite:///" + str(home / "workflow_audit" / "ledger.db")
    airflow_path = ledger_path(airflow_url) if airflow_url.startswith("sqlite:") else None
    if airflow_path is not None and airflow_path.exists():
        print(f"workflow-audit: using the Airflow plugin's ledger {airflow_path}", file=sys.stderr)
        return airflow_url
    return url


def _open(args: argparse.Namespace, *, write: bool = False) -> tuple[Ledger, str]:
    """The ledger the arguments name, read-only unless ``write`` (STYLE rule 17: an auditor
    who cannot write, or a copy on read-only media, can run every reading command)."""
    url = args.ledger or _default_ledger_url()
    if url.startswith(("postgresql://", "postgres://")):
        from audit_core.ledgers import open_ledger

        ledger = open_ledger(url, read_only=not write)
        return ledger, repr(ledger)  # the ledger's repr hides the password
    if "://" in url and not url.startswith("sqlite:"):
        raise ConfigError(
            f"unsupported ledger URL {masked_url(url)!r}: sqlite:/// or postgresql://"
        )
    path = ledger_path(url)
    if path is None:
        raise ConfigError("an in-memory ledger cannot be read from the command line")
    if not path.exists():
        raise ConfigError(f"no ledger at {path} (set --ledger or WORKFLOW_AUDIT_LEDGER)")
    return SqliteLedger(path, create=False, read_only=not write), str(path)


def _only_chain(ledger: LedgerReader) -> str | None:
    """The ledger's chain when it has exactly one (then --chain may be left out)."""
    chains = ledger.chains()
    return chains[0] if len(chains) == 1 else None


def _chains(args: argparse.Namespace, ledger: LedgerReader) -> list[str]:
    return list(args.chain) if args.chain else ledger.chains()


def _records(
    ledger: LedgerReader,
    chains: Sequence[str],
    start: int = 0,
    unreadable: list[VerificationError] | None = None,
) -> Iterator[Record]:
    """Parsed records; an unreadable one raises, or is collected in ``unreadable`` if given."""
    for chain in chains:
        for stored in ledger.read(chain, start):
            try:
                yield Record.from_stored(stored)
            except VerificationError as exc:
                if unreadable is None:
                    raise
                unreadable.append(exc)


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(
        since=args.since, until=args.until, events=tuple(args.event), pipeline=args.pipeline
    )


def _output(args: argparse.Namespace, mode: str) -> IO[str] | IO[bytes]:
    if args.output:
        return open(args.output, mode)
    return sys.stdout.buffer if "b" in mode else sys.stdout


def _progress_verify(
    ledger: Ledger,
    chains: list[str] | None,
    keys: Sequence[Verifier] = (),
    external: Sequence[tuple[Checkpoint, str]] = (),
    jobs: int = 1,
) -> list[ChainHead]:
    """verify_ledger with a rich progress bar when standard error is a terminal."""
    if not sys.stderr.isatty():
        return verify_ledger(ledger, chains, keys=keys, external=external, jobs=jobs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    names = chains if chains is not None else ledger.chains()
    totals = {c: stored_size(c, ledger.head(c)) for c in names}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        tasks = {c: bar.add_task(f"verify {c}", total=totals[c]) for c in names}

        def on_progress(chain: str, n: int) -> None:
            # verify_ledger also verifies chains only its Merkle tables name (deleted ones)
            if chain not in tasks:
                tasks[chain] = bar.add_task(f"verify {chain}", total=None)
            bar.update(tasks[chain], completed=n)

        return verify_ledger(
            ledger, chains, keys=keys, external=external, on_progress=on_progress, jobs=jobs
        )


# -- commands -----------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.source is not None:
        from audit_core.sinks import s3_cli

        if not args.source.startswith("s3://"):
            raise ConfigError(f"verify takes an s3://BUCKET/PREFIX source, not {args.source!r}")
        return s3_cli.verify_bucket(
            args.source,
            args.key,
            args.json,
            chains=args.chain,
            min_retention_days=args.min_retention_days,
            jobs=args.jobs,
        )
    ledger, where = _open(args)
    chains: list[str] | None = list(args.chain) if args.chain else None
    if (args.expect_size is not None or args.expect_head) and (chains is None or len(chains) != 1):
        raise ConfigError("--expect-size/--expect-head need exactly one --chain")
    keys = load_verifiers(args.key) if args.key else []
    if args.checkpoint and not keys:
        raise ConfigError(
            "--checkpoint needs --key: a checkpoint is only evidence once its signature is checked"
        )
    if args.witness and not args.checkpoint:  # the witnesses cosign checkpoint files only
        raise ConfigError("--witness needs --checkpoint: the checkpoint files they cosigned")
    witnessed = keys + (load_verifiers(args.witness) if args.witness else [])
    external = [
        (_read_checkpoint(path, witnessed), f"checkpoint {path}") for path in args.checkpoint
    ]
    started = time.perf_counter()
    try:
        jobs = (os.cpu_count() or 1) if args.jobs <= 0 else args.jobs
        heads = _progress_verify(ledger, chains, keys, external, jobs)
        if chains is not None and len(chains) == 1:
            check_head(heads[0], expect_size=args.expect_size, expect_head=args.expect_head)
    except VerificationError as exc:
        if args.json:
            print(
                orjson.dumps(
                    {
                        "valid": False,
                        "ledger": where,
                        "error": {
                            "reason": exc.reason,
                            "chain": exc.chain,
                            "seq": exc.seq,
                            "expected": exc.expected,
                            "found": exc.found,
                            "message": str(exc),
                        },
                    }
                ).decode()
            )
        else:
            print(f"INVALID {exc}", file=sys.stderr)
            if exc.expected is not None:
                print(f"  expected: {exc.expected}\n  found:    {exc.found}", file=sys.stderr)
            print(f"  {_WHAT_TO_DO}", file=sys.stderr)
        return EXIT_INVALID
    elapsed = time.perf_counter() - started
    total = sum(h.size for h in heads)
    if args.json:
        print(
            orjson.dumps(
                {
                    "valid": True,
                    "ledger": where,
                    "records": total,
                    "signatures_checked": bool(keys),
                    "chains": [h.to_json() for h in heads],
                }
            ).decode()
        )
        return EXIT_OK
    if not heads:
        print(f"valid: {where} holds no records yet")
    signed = "signatures checked" if keys else "signatures NOT checked: pass --key"
    for h in heads:
        print(f"valid: chain {h.chain!r}: {h.size} records, head {h.head}")
        print(f"       Merkle root {h.root}, {h.checkpoints} checkpoint(s) matched ({signed})")
    rate = f", {total / elapsed:,.0f} records/s" if elapsed > 0 and total else ""
    print(
        f"verified {total} records in {len(heads)} chain(s) in {elapsed:.2f}s{rate}",
        file=sys.stderr,
    )
    return EXIT_OK


def _table(records: Sequence[Record]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for col in ("chain", "seq", "time (UTC)", "event", "pipeline", "task", "try", "data"):
        table.add_column(col, overflow="fold")
    from audit_core._report import pipeline_of, task_of

    for rec in records:
        data = orjson.dumps(rec.data).decode()
        table.add_row(
            rec.chain,
            str(rec.seq),
            rec.ts.replace("T", " ")[:23],
            rec.event,
            pipeline_of(rec.subject),
            task_of(rec.subject),
            str(attempt_of(rec.subject) or ""),
            data if len(data) <= 80 else data[:77] + "...",
        )
    Console(soft_wrap=False).print(table)


def _cmd_show(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    keep = _filter(args)
    selected: list[Record] = []
    with ledger.snapshot() as view:
        for rec in _records(view, _chains(args, view), args.start):
            if keep(rec):
                selected.append(rec)
                if len(selected) >= args.limit:
                    break
    if args.json:
        sys.stdout.buffer.writelines(to_jsonl(selected))
    else:
        _table(selected)
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    chains = _chains(args, ledger)
    positions: dict[str, int] = {}
    last: list[Record] = []
    for chain in chains:
        size = stored_size(chain, ledger.head(chain))  # a malformed row: named, exit 1
        last += _records(ledger, [chain], max(0, size - args.lines))
        positions[chain] = size
    last.sort(key=lambda r: (r.ts, r.chain, r.seq))
    _table(last[-args.lines :])
    polls = 0
    while args.follow and (args.max_polls is None or polls < args.max_polls):
        time.sleep(args.interval)
        polls += 1
        for chain in args.chain or ledger.chains():
            new = list(_records(ledger, [chain], positions.get(chain, 0)))
            if new:
                positions[chain] = new[-1].seq + 1
                _table(new)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    keep = _filter(args)
    with ledger.snapshot() as view:  # every chain as of one instant
        records = (r for r in _records(view, _chains(args, view)) if keep(r))
        if args.format == "jsonl":
            out_b = _output(args, "wb")
            _write_all(out_b.write, to_jsonl(records))  # type: ignore[arg-type]
            if out_b is not sys.stdout.buffer:
                out_b.close()
        else:
            out_t = _output(args, "w")
            _write_all(out_t.write, to_csv(records))  # type: ignore[arg-type]
            if out_t is not sys.stdout:
                out_t.close()
    return EXIT_OK


def _write_all(write: Callable[[object], object], chunks: Iterator[object]) -> None:
    for chunk in chunks:
        write(chunk)


def _cmd_report(args: argparse.Namespace) -> int:
    ledger, where = _open(args)
    keys = load_verifiers(args.key) if args.key else []
    keep = _filter(args)
    unreadable: list[VerificationError] = []
    with ledger.snapshot() as view:  # the counts and the verdict describe the same records
        chains = _chains(args, view)
        summary = summarize(r for r in _records(view, chains, unreadable=unreadable) if keep(r))
        summary.signatures_checked = bool(keys)
        try:  # every chain, deleted ones too, unless --chain names them
            summary.heads = verify_ledger(view, list(args.chain) if args.chain else None, keys=keys)
        except VerificationError as exc:
            summary.error = exc
    if summary.error is None and unreadable:  # cannot happen for a verified chain; belt and braces
        summary.error = unreadable[0]
    period = f"{args.since or 'beginning'} … {args.until or 'now'}"
    text = render_report(summary, args.format, ledger=where, period=period)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK if summary.error is None else EXIT_INVALID


def _read_checkpoint(path: str, keys: Sequence[Verifier]) -> Checkpoint:
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


def _env_sinks() -> list[str]:
    return [n.strip() for n in os.environ.get("WORKFLOW_AUDIT_SINKS", "").split(",") if n.strip()]


def _cmd_ship(args: argparse.Namespace) -> int:
    import signal
    import threading

    from audit_core.ship import Shipper
    from audit_core.sinks.registry import make_sink, sink_names

    config = AuditConfig.from_env(ledger_url=args.ledger or _default_ledger_url())
    names = sink_names(args.sink or _env_sinks())
    if not names:
        raise ConfigError("no sink: pass --sink otlp|s3|structlog|all or set WORKFLOW_AUDIT_SINKS")
    ledger, _ = _open(args, write=True)
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


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from audit_core.reconcile import load, reconcile

    reconciler = load(args.source)
    config = reconciler.config(args.ledger, args.chain)
    with AuditTrail(config) as trail:
        result = reconcile(
            trail, reconciler, since=args.since, until=args.until, dry_run=args.dry_run
        )
    verb = "would append" if args.dry_run else "appended"
    for event in result.missing:
        subject = " ".join(f"{k}={v}" for k, v in (event.subject or {}).items() if v is not None)
        print(f"{verb} {event.type}: {subject}")
    print(
        f"{args.source}: {result.checked} terminal run(s) since {args.since}, "
        f"{len(result.missing)} without a record; {verb} {len(result.missing)} "
        f"to chain {config.chain!r} of {masked_url(config.ledger_url)}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_keygen(args: argparse.Namespace) -> int:
    signer = Signer.generate(args.name)
    path = Path(args.output or re.sub(r"[^A-Za-z0-9._-]+", "_", args.name) + ".key")
    try:
        public = write_key_files(signer, path)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists; not overwriting a key") from exc
    print(str(signer.verifier))
    print(
        f"signer key written to {path} (mode 0600); verifier key also in {public}.\n"
        f"Use it: WORKFLOW_AUDIT_SIGNING_KEY={path}; keep the verifier key where the "
        "ledger's writers cannot change it.",
        file=sys.stderr,
    )
    return EXIT_OK


def _trail_for(args: argparse.Namespace) -> AuditTrail:
    url = getattr(args, "ledger", None) or _default_ledger_url()
    return AuditTrail(AuditConfig.from_env(ledger_url=url))


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    if args.all and args.chain:
        raise ConfigError("--all signs every chain: leave out --chain")
    _open(args)  # the ledger must exist: never create an empty one here
    trail = _trail_for(args)
    if args.rotate_key:
        trail.rotate_key = True
    for chain in args.chain or trail.ledger.chains():
        stored = trail.checkpoint(chain)
        if stored is not None:
            print(stored.note, end="")
    return EXIT_OK


def _cmd_prove(args: argparse.Namespace) -> int:
    ledger, _ = _open(args)
    chain = args.chain or _only_chain(ledger) or AuditConfig.from_env().chain
    try:
        with ledger.snapshot() as view:  # checkpoint, record and audit path of one instant
            bundle = make_inclusion_bundle(view, chain, args.seq, args.size)
    except ProofError as exc:
        raise ConfigError(str(exc)) from exc
    text = orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(
            f"wrote inclusion proof of chain {chain!r} seq {args.seq} at tree size "
            f"{bundle['tree_size']} to {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    keys = load_verifiers(args.key)
    try:
        bundle = orjson.loads(Path(args.bundle).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read bundle {args.bundle}: {exc}") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{args.bundle} is not a {BUNDLE_FORMAT} bundle (written by `prove`)")
    try:
        proven = verify_inclusion_bundle(bundle, keys)
    except (ProofError, SignatureError, CheckpointError) as exc:
        print(f"INVALID proof {args.bundle}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    rec, cp = proven.record, proven.checkpoint
    print(
        f"valid: chain {rec.chain!r} seq {rec.seq} ({rec.event} at {rec.ts}) is leaf "
        f"{rec.seq} of {cp.origin} at tree size {cp.size}, signed by "
        + ", ".join(v.name for v in proven.signed_by)
    )
    return EXIT_OK


def _cmd_cosign(args: argparse.Namespace) -> int:
    # A witness signs only what it has checked: the log's signature first (c2sp.org/signed-note
    # cosigning); a witness that also tracks consistency runs `consistency` before this.
    keys = load_verifiers(args.key)
    path = Path(args.checkpoint)
    checkpoint = _read_checkpoint(str(path), keys)  # exit 2 if unreadable, 1 if unsigned
    note = path.read_text(encoding="utf-8")
    witness = load_signer(args.signing_key, default_path=None, name="unused")
    path.write_text(sign_note(checkpoint.text(), [witness], existing=note), encoding="utf-8")
    print(
        f"cosigned {checkpoint.describe()} as {witness.name}; verifier key {witness.verifier}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_consistency(args: argparse.Namespace) -> int:
    keys = load_verifiers(args.key) if args.key else []
    if not keys:
        print("warning: no --key: checkpoint signatures are NOT checked", file=sys.stderr)
    try:
        old, new = (_read_checkpoint(p, keys) for p in (args.old, args.new))
    except (SignatureError, CheckpointError) as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if old.origin != new.origin:
        raise ConfigError(f"checkpoints are of different logs: {old.origin!r}, {new.origin!r}")
    ledger, _ = _open(args)
    chain = chain_of(old, ledger.chains())  # the longest chain id the origin ends with
    if chain is None:
        print(
            f"INVALID: no chain of the ledger matches origin {old.origin!r} (deleted?)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        with ledger.snapshot() as view:
            proof = prove_consistency(view, chain, old, new)
    except (ProofError, CheckpointError) as exc:
        print(f"INVALID: {old.describe()} -> {new.describe()}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(
        orjson.dumps(
            {
                "origin": old.origin,
                "old_size": min(old.size, new.size),
                "new_size": max(old.size, new.size),
                "proof": [h.hex() for h in proof],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    print(
        f"valid: the tree at size {min(old.size, new.size)} is a prefix of the tree at size "
        f"{max(old.size, new.size)} (RFC 9162 consistency proof, {len(proof)} hashes)",
        file=sys.stderr,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
