"""``workflow-audit show``, ``tail``, ``export`` and ``report``: the records of a ledger, read
from one snapshot, for people (a table, a report) and for tools (JSON lines, CSV). The filters
are an :class:`audit_core.query.Query`, answered from the ledger's query index when it has one.

Every ``export`` and ``report`` is itself recorded, after its output is written, on the
ledger's ``audit`` chain (``audit.exported``, actor the OS user; :mod:`audit_core.readlog`):
a read that cannot be recorded (a read-only copy, a locked ledger) still succeeds, with one
line on standard error saying so.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["export", "--event", "task.*", "--dag", "etl", "--format", "csv"])
>>> args.event, args.pipeline, args.format, args.since
(['task.*'], 'etl', 'csv', None)
>>> q = query(parser.parse_args(["show", "--run", "r1", "--actor", "ann", "--chain", "etl"]))
>>> q.run, q.actor, q.chains, q.dags
('r1', 'ann', ('etl',), None)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import orjson

from audit_core._chain import stored_size
from audit_core._record import Record
from audit_core._report import (
    attempt_of,
    pipeline_of,
    render_report,
    summarize,
    task_of,
    to_csv,
    to_jsonl,
)
from audit_core.checkpoint import load_verifiers
from audit_core.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    add_ledger_args,
    default_ledger_url,
    open_ledger_arg,
    output,
    time_arg,
)
from audit_core.errors import VerificationError
from audit_core.ledgers import LedgerReader
from audit_core.query import Query, iterate
from audit_core.readlog import os_user, read_event, record_read
from audit_core.trail import Event
from audit_core.verify import verify_ledger

__all__ = ["add_parsers", "add_report_parser", "query", "record_cli_read"]


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--since", type=time_arg, help="from this time (RFC 3339 or date)")
    sp.add_argument("--until", type=time_arg, help="before this time (exclusive)")
    sp.add_argument(
        "--event",
        action="append",
        default=[],
        help="event type or pattern (task.*); repeatable",
    )
    sp.add_argument("--dag", "--pipeline", dest="pipeline", help="only records of this DAG / flow")
    sp.add_argument("--run", help="only records of this run (run_id / flow_run_id)")
    sp.add_argument("--task", help="only records of this task (task_id / task_name)")
    sp.add_argument("--actor", help="only records by this actor (its id)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``show``, ``tail`` and ``export`` to the ``workflow-audit`` subcommands ``sub``."""
    s = sub.add_parser("show", help="records as a readable table")
    add_ledger_args(s, chain_help="chain to show (repeatable; default: every chain)")
    _filters(s)
    s.add_argument("--limit", type=int, default=50, help="at most N records (default 50)")
    s.add_argument("--start", type=int, default=0, help="first seq to show")
    s.add_argument("--json", action="store_true", help="full records as JSON lines")
    s.set_defaults(func=_cmd_show)

    t = sub.add_parser("tail", help="the last records, optionally following new ones")
    add_ledger_args(t, chain_help="chain to tail (default: every chain)")
    t.add_argument("-n", "--lines", type=int, default=20, help="how many (default 20)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    t.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    t.add_argument("--max-polls", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=_cmd_tail)

    e = sub.add_parser("export", help="records as JSON lines or CSV, for auditors and SIEMs")
    add_ledger_args(e, chain_help="chain to export (repeatable; default: every chain)")
    _filters(e)
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("-o", "--output", help="file to write (default: standard output)")
    e.set_defaults(func=_cmd_export)


def add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` (the last command of ``--help``) to the subcommands ``sub``."""
    r = sub.add_parser("report", help="counts, failures and the verification verdict")
    add_ledger_args(r, chain_help="chain to report on (repeatable; default: every chain)")
    _filters(r)
    r.add_argument("--format", choices=("md", "csv", "json"), default="md")
    r.add_argument(
        "--key",
        action="append",
        default=[],
        help="trusted verifier key: also check the checkpoints' signatures",
    )
    r.add_argument("-o", "--output", help="file to write (default: standard output)")
    r.set_defaults(func=_cmd_report)


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


def query(args: argparse.Namespace) -> Query:
    """The records the filter arguments of ``show``, ``export`` and ``report`` ask for."""
    return Query(
        since=args.since,
        until=args.until,
        events=tuple(args.event),
        chains=tuple(args.chain or ()),
        dag=args.pipeline,
        run=args.run,
        task=args.task,
        actor=args.actor,
    )


def _selected(view: LedgerReader, q: Query, start: int = 0) -> Iterator[Record]:
    """The records ``q`` finds by chain then seq, the chains in the order ``--chain`` named
    them (as export always wrote them), from seq ``start`` of each."""
    parts = [replace(q, chains=(c,)) for c in q.chains] if q.chains else [q]
    found = itertools.chain.from_iterable(iterate(view, part) for part in parts)
    return (r for r in found if r.seq >= start) if start else found


def _resolve_ledger(args: argparse.Namespace) -> str:
    """The ledger URL, resolved once: the read and its record go to the same ledger, and the
    default's notice ("using the Airflow plugin's ledger") is printed once."""
    args.ledger = args.ledger or default_ledger_url()
    url: str = args.ledger
    return url


def record_cli_read(url: str, event: Event) -> None:
    """Record a CLI read on ``url``'s audit chain; one line on standard error if it could not
    be (the command's own output and exit code stay as they are)."""
    reason = record_read(url, event)
    if reason is not None:
        print(
            f"workflow-audit: this read was not recorded on the audit chain: {reason}",
            file=sys.stderr,
        )


def _table(records: Sequence[Record]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for col in ("chain", "seq", "time (UTC)", "event", "pipeline", "task", "try", "data"):
        table.add_column(col, overflow="fold")
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
    ledger, _ = open_ledger_arg(args)
    with ledger.snapshot() as view:
        selected = list(itertools.islice(_selected(view, query(args), args.start), args.limit))
    if args.json:
        sys.stdout.buffer.writelines(to_jsonl(selected))
    else:
        _table(selected)
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    ledger, _ = open_ledger_arg(args)
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
    url = _resolve_ledger(args)
    ledger, _ = open_ledger_arg(args)
    q = query(args)
    exported = 0

    def counted(found: Iterator[Record]) -> Iterator[Record]:
        nonlocal exported
        for rec in found:
            exported += 1
            yield rec

    with ledger.snapshot() as view:  # every chain as of one instant
        records = counted(_selected(view, q))
        if args.format == "jsonl":
            out_b = output(args, "wb")
            _write_all(out_b.write, to_jsonl(records))  # type: ignore[arg-type]
            if out_b is not sys.stdout.buffer:
                out_b.close()
        else:
            out_t = output(args, "w")
            _write_all(out_t.write, to_csv(records))  # type: ignore[arg-type]
            if out_t is not sys.stdout:
                out_t.close()
    ledger.close()
    facts = {"kind": "records", "format": args.format}
    if args.output:
        facts["output"] = args.output
    event = read_event("exported", user=os_user(), via="cli", query=q, count=exported, **facts)
    record_cli_read(url, event)
    return EXIT_OK


def _write_all(write: Callable[[object], object], chunks: Iterator[object]) -> None:
    for chunk in chunks:
        write(chunk)


def _cmd_report(args: argparse.Namespace) -> int:
    url = _resolve_ledger(args)
    ledger, where = open_ledger_arg(args)
    keys = load_verifiers(args.key) if args.key else []
    q = query(args)
    unreadable: list[VerificationError] = []
    with ledger.snapshot() as view:  # the counts and the verdict describe the same records
        try:
            summary = summarize(_selected(view, q))
        except VerificationError:  # an unreadable record: count what can be read, name it
            records = _records(view, _chains(args, view), unreadable=unreadable)
            summary = summarize(r for r in records if q.matches(r))
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
    ledger.close()
    facts: dict[str, Any] = {"kind": "report", "format": args.format}
    if args.output:
        facts["output"] = args.output
    facts["valid"] = summary.error is None
    event = read_event(
        "exported", user=os_user(), via="cli", query=q, count=summary.records, **facts
    )
    record_cli_read(url, event)
    return EXIT_OK if summary.error is None else EXIT_INVALID
