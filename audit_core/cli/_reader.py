"""What ``workflow-audit ingest`` and ``workflow-audit follow`` share: both copy an outside
log (a :class:`~audit_core.sources.Source`, a :class:`~audit_core.sources.stream.Stream`)
onto a chain from a long-running or one-shot command, anchored while they run
(:func:`anchoring`, which ``ship --follow`` uses too). Private to :mod:`audit_core.cli`.

>>> parse = bounded_seconds(0, 60, low_included=False)
>>> parse("1.5")
1.5
>>> parse("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be more than zero and at most 60, not 0
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from audit_core.anchor import Anchor, start_anchor
from audit_core.cli._common import default_ledger_url, open_ledger_arg
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError
from audit_core.ledgers import open_ledger
from audit_core.trail import AuditTrail

__all__ = [
    "MAX_BATCH",
    "add_target_args",
    "anchoring",
    "bounded_seconds",
    "check_batch_and_chain",
    "closing",
    "open_trail",
    "reader_config",
    "stopped_by_signals",
]

#: Records a transaction at most: SQLite's LIMIT must not overflow, memory stays bounded.
MAX_BATCH = 100_000


def bounded_seconds(low: float, high: float, *, low_included: bool) -> Callable[[str], float]:
    """An argparse type: seconds in ``(low, high]`` (``[low, high]`` with ``low_included``).
    Bounds keep a typo from becoming a hang or an overflow: threading's waits refuse values
    past TIMEOUT_MAX."""

    def parse(text: str) -> float:
        value = float(text)
        above = value >= low if low_included else value > low
        if not (above and value <= high):  # NaN fails both
            bound = "zero or more" if low_included else "more than zero"
            raise argparse.ArgumentTypeError(f"must be {bound} and at most {high:g}, not {text}")
        return value

    return parse


def add_target_args(sp: argparse.ArgumentParser, what: str) -> None:
    """``--chain`` and ``--ledger``, whose defaults come from the reader (``what``)."""
    sp.add_argument(
        "--chain",
        help=f"chain (default: the {what}'s own, else $WORKFLOW_AUDIT_CHAIN, else default)",
    )
    sp.add_argument(
        "--ledger",
        help=f"ledger URL (default: the {what}'s own, else $WORKFLOW_AUDIT_LEDGER, else the "
        "orchestrator's or the default ledger)",
    )


def check_batch_and_chain(args: argparse.Namespace) -> None:
    if not 1 <= args.batch <= MAX_BATCH:
        raise ConfigError(f"--batch must be 1 to {MAX_BATCH}, not {args.batch}")
    if args.chain is not None and not args.chain.strip():
        raise ConfigError("--chain must name a chain, not be empty")


def reader_config(reader: object, ledger: str | None) -> AuditConfig:
    """The configuration to record with: the reader's own (an orchestrator's reader may carry
    its adapter's, so that the CLI signs and redacts as the plugin does: attribute
    ``config``), else the environment's; the ledger: ``--ledger``, else the reader's
    (attribute ``ledger_url``, or its config's), else the default ledger."""
    base = getattr(reader, "config", None)
    own = getattr(reader, "ledger_url", None)
    if isinstance(base, AuditConfig):
        return replace(base, ledger_url=ledger or own or base.ledger_url)
    return AuditConfig.from_env(ledger_url=ledger or own or default_ledger_url())


def open_trail(args: argparse.Namespace, config: AuditConfig) -> AuditTrail:
    """The trail the command records with."""
    if args.ledger:  # named on the command line: a typo must not create a new ledger
        ledger, _ = open_ledger_arg(args, write=True)
    else:
        ledger = open_ledger(
            config.ledger_url, synchronous=config.synchronous, busy_timeout_s=config.busy_timeout_s
        )
    return AuditTrail(config, ledger=ledger)


@contextmanager
def closing(reader: object, name: str) -> Iterator[None]:
    """Close ``reader`` afterwards; a failure to close is a warning: what it read is recorded."""
    try:
        yield
    finally:
        try:
            reader.close()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the records are written: say it, do not fail
            print(f"warning: closing {name} failed: {exc}", file=sys.stderr)


@contextmanager
def stopped_by_signals() -> Iterator[threading.Event]:
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


@contextmanager
def anchoring(config: AuditConfig, name: str) -> Iterator[Anchor | None]:
    """Checkpoints without cron: an :class:`~audit_core.anchor.Anchor` signs every chain of
    ``config``'s ledger that grew, every ``config.anchor_interval_s`` seconds while the
    command runs and once more on the way out (caught up, SIGTERM/SIGINT, an error), and
    offers each checkpoint to the configured witnesses (c2sp.org/tlog-witness). Never fails
    the command: an anchor that cannot start is logged and counted (None)."""
    anchor = start_anchor(config, name=name)
    try:
        yield anchor
    finally:
        if anchor is not None:
            anchor.stop()  # the final round; never raises
