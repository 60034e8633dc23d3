"""``workflow-audit follow STREAM``: record an orchestrator's event stream (Prefect's events,
…) on a chain: backfill from a cursor, then live, each event once (see
:mod:`audit_core.sources.stream`).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["follow", "prefect", "--once", "--overlap", "60"])
>>> args.stream, args.once, args.overlap, args.batch
('prefect', True, 60.0, 500)
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
from audit_core.sources.stream import STREAM_ENTRY_POINTS, StreamFollower, load_stream

__all__ = ["add_parsers"]

# Bounds that keep a typo from becoming a hang or an overflow (a week of overlap is more than
# Prefect's default retention; SQLite's LIMIT a 64-bit overflow).
_MAX_OVERLAP_S = 7 * 86400.0
_DEFAULT_OVERLAP_S = 300.0

_EXIT_CODES = (
    "Checkpoints of every chain that grew are signed every $WORKFLOW_AUDIT_ANCHOR_INTERVAL "
    "seconds (60) and on exit, and offered to $WORKFLOW_AUDIT_WITNESSES. "
    f"Exit codes: {EXIT_OK}: caught up (--once), or stopped by SIGTERM or SIGINT after the "
    f"current batch; {EXIT_USAGE}: usage error, an unknown or broken stream, or (with --once) "
    "the stream or the ledger cannot be read or written. Without --once such failures are "
    "logged, counted and retried with backoff (up to 30 s): the stream is read again from the "
    "cursor."
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``follow`` to the ``workflow-audit`` subcommands ``sub``."""
    fo = sub.add_parser(
        "follow",
        help="record an orchestrator's event stream on a chain, each event once",
        description="Record every event of STREAM (e.g. prefect: Prefect's event stream) on a "
        "chain: backfill from the cursor kept in the ledger (less --overlap), then follow live. "
        "Each record carries an idempotency key, so restarts, reconnects and other writers of "
        "the same events never record one twice. Events that expired before they were read "
        "become a source.gap record.",
        epilog=_EXIT_CODES,
    )
    fo.add_argument(
        "stream",
        help=f"an installed stream (entry point group {STREAM_ENTRY_POINTS}, e.g. prefect) or "
        "MODULE:CALLABLE, a zero-argument callable returning a Stream",
    )
    fo.add_argument("--once", action="store_true", help="backfill until caught up, then exit")
    fo.add_argument(
        "--overlap",
        type=bounded_seconds(0, _MAX_OVERLAP_S, low_included=True),
        default=None,
        help="seconds read again behind the cursor (late events; default: the stream's, else "
        f"{_DEFAULT_OVERLAP_S:g}; at most {_MAX_OVERLAP_S:g})",
    )
    fo.add_argument(
        "--batch", type=int, default=500, help=f"events a transaction (500; 1 to {MAX_BATCH})"
    )
    add_target_args(fo, "stream")
    fo.set_defaults(func=_cmd_follow)


def _cmd_follow(args: argparse.Namespace) -> int:
    check_batch_and_chain(args)
    stream = load_stream(args.stream)
    with closing(stream, stream.name):
        config = reader_config(stream, args.ledger)
        chain = args.chain or getattr(stream, "chain", None) or config.chain
        overlap = args.overlap
        if overlap is None:
            overlap = float(getattr(stream, "overlap_s", None) or _DEFAULT_OVERLAP_S)
        with open_trail(args, config) as trail, anchoring(config, "workflow-audit-anchor-follow"):
            follower = StreamFollower(
                trail, stream, chain=chain, overlap_s=overlap, batch=args.batch
            )
            with stopped_by_signals() as stop:
                result = follower.run(once=args.once, stop=stop)
    print(f"{stream.name} -> chain {chain!r}: {result.summary()}", file=sys.stderr)
    return EXIT_OK
