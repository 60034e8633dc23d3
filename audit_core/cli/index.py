"""``workflow-audit index status`` and ``workflow-audit index rebuild``: the query index.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["index", "rebuild", "--chain", "default"])
>>> args.index_command, args.chain
('rebuild', ['default'])

The index (``record_index``) is derived from the records and rebuildable; ``show``,
``export`` and the browser view use it when it is complete for the chains asked about, else
they scan every record (right, slower). ``verify`` never reads it. A ledger made before the
index gets its (empty) tables from its first writer and stays incomplete until ``index
rebuild``, which is safe while writers append. Writers index each chain INDEX_BATCH (64)
records at a time, so a chain is "complete" when the index holds all but a short tail, which
queries read by seq; a longer tail (an old writer, a role that may not write the index) makes
it incomplete until the next boundary a current writer reaches, or a rebuild.

Exit codes: ``status`` 0 when every chain is complete, 3 when some is not (run ``index
rebuild``); 2 when the ledger cannot be opened or read (``rebuild``: or written).
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from audit_core.cli._common import (
    EXIT_OK,
    EXIT_PENDING,
    add_group,
    add_ledger_args,
    open_ledger_arg,
)
from audit_core.errors import ConfigError
from audit_core.ledgers import Ledger
from audit_core.query import IndexMaintainer

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``index status`` and ``index rebuild`` to the ``workflow-audit`` subcommands."""
    commands = add_group(sub, "index", help="the query index of show, export and the web view")
    st = commands.add_parser(
        "status",
        help="how many records of each chain the query index holds",
        description="For each chain: its records and how many of them the query index "
        "surely holds (queries read a short unindexed tail by seq). Exit 0 when every "
        "chain is complete, 3 when one is not (run `workflow-audit index rebuild`), 2 when "
        "the ledger cannot be read.",
    )
    add_ledger_args(st, chain_help="only this chain (repeatable; default: every chain)")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=_cmd_status)
    rb = commands.add_parser(
        "rebuild",
        help="recompute the query index from the records (safe while writers append)",
        description="Delete and rewrite the query index rows of each chain, in batches, "
        "from the hashed record bytes, then mark the chain complete. Safe while writers "
        "append. Prints the rows written per chain and the time taken.",
    )
    add_ledger_args(rb, chain_help="only this chain (repeatable; default: every chain)")
    rb.add_argument(
        "--batch", type=int, default=5000, help="records per transaction (default 5000)"
    )
    rb.set_defaults(func=_cmd_rebuild)


def _maintainer(ledger: Ledger) -> IndexMaintainer:
    if not isinstance(ledger, IndexMaintainer):
        raise ConfigError(f"{ledger!r} keeps no query index")
    return ledger


def _cmd_status(args: argparse.Namespace) -> int:
    ledger, where = open_ledger_arg(args)
    try:
        index = _maintainer(ledger)
        usable = index.index_usable()
        sizes = index.index_sizes(args.chain or ()) if usable else []
        if not usable:
            sizes = [(c, _records(ledger, c), 0) for c in (args.chain or ledger.chains())]
        # complete: the index holds all but a short tail (< INDEX_BATCH records from a
        # current writer) that queries read by seq
        ready = {c: usable and (not n or index.index_complete([c])) for c, n, _ in sizes}
    finally:
        ledger.close()
    complete = usable and all(ready.values())
    if args.json:
        out = {
            "ledger": where,
            "index": usable,
            "complete": complete,
            "chains": [{"chain": c, "records": n, "indexed": done} for c, n, done in sizes],
        }
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        if not usable:
            print(
                f"{where}: no query index yet (a ledger made before it: a writer adds its "
                "tables; then run `workflow-audit index rebuild`)"
            )
        for chain, n, done in sizes:
            if ready[chain]:  # writers index in batches; queries read the short tail directly
                state = f"complete ({done} in the index, the last {n - done} read from the chain)"
            else:
                state = f"incomplete ({done} in the index, {n - done} missing)"
            print(f"{chain}: {n} record(s): {state}")
        if usable and not complete:
            print("run `workflow-audit index rebuild` to complete the index")
    return EXIT_OK if complete else EXIT_PENDING


def _records(ledger: Ledger, chain: str) -> int:
    """The number of records of ``chain`` (its head's seq + 1; 0 when empty)."""
    head = ledger.head(chain)
    return 0 if head is None else head.seq + 1


def _cmd_rebuild(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {args.batch}")
    ledger, where = open_ledger_arg(args, write=True)
    try:
        index = _maintainer(ledger)
        start = time.perf_counter()
        done = index.rebuild_index(args.chain or (), batch=args.batch)
        took = time.perf_counter() - start
    finally:
        ledger.close()
    for chain, rows in done.items():
        print(f"{chain}: {rows} row(s) indexed")
    print(f"rebuilt the query index of {where}: {sum(done.values())} row(s) in {took:.2f} s")
    return EXIT_OK
