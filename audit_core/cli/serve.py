"""``workflow-audit serve``: the browser view of a ledger (:mod:`audit_core.web`) for people
without Airflow: Prefect users, external auditors.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["serve", "--token-file", "tokens.txt"])
>>> args.host, args.port, args.token_file, args.trusted_header
('127.0.0.1', 8421, 'tokens.txt', None)

It binds 127.0.0.1 unless told otherwise, and any other address needs a credential:
``--token-file`` (named tokens; browsers log in at ``/login``) or ``--trusted-header`` (an
authenticating reverse proxy names the user; see :mod:`audit_core.web.auth`). The ledger is
opened read-only; the only writes are the records of who read what (``audit.viewed``,
``audit.opened``, ``audit.proof_downloaded``, ``audit.exported`` on chain ``audit``, with the
authenticated identity), appended by one background thread so that no request waits for the
ledger's lock. A ledger this process may not write is still served: its reads are counted
(``audit_reads_unrecorded``), not recorded, and the server says so on standard error: at
start when it can tell, at the first unrecorded read and then at most once a minute with the
reason, and at exit with the number.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from audit_core._metrics import COUNTERS
from audit_core.checkpoint import load_verifiers
from audit_core.cli._common import EXIT_OK, EXIT_USAGE, default_ledger_url, open_ledger_arg
from audit_core.cli._reader import stopped_by_signals
from audit_core.errors import ConfigError
from audit_core.readlog import UNRECORDED, TrailRecorder
from audit_core.trail import Event

__all__ = ["BackgroundRecorder", "add_parsers"]

logger = logging.getLogger("workflow_audit.serve")

#: Reads waiting to be recorded at most; past it a read is counted as not recorded.
MAX_PENDING = 10_000
#: After telling of an unrecorded read, the next is told this much later at the earliest.
TELL_EVERY_S = 60.0
#: The longest session ``--session-hours`` accepts (30 days).
MAX_SESSION_HOURS = 24 * 30


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the ``workflow-audit`` subcommands ``sub``."""
    s = sub.add_parser(
        "serve",
        help="the audit trail in a browser (127.0.0.1 unless a credential is configured)",
        description="Serve the browser view of a ledger, read-only; every page, record, proof "
        "and export viewed is recorded on the ledger's 'audit' chain with the reader's identity.",
    )
    s.add_argument(
        "--ledger",
        help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER, "
        "else $XDG_DATA_HOME/workflow-audit/ledger.db)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=8421, help="port (default 8421)")
    who = s.add_mutually_exclusive_group()
    who.add_argument(
        "--token-file",
        metavar="PATH",
        help="file of NAME:TOKEN lines (one per person, tokens of 16+ characters): requests "
        "carry 'Authorization: Bearer TOKEN' or log in at /login; the identity is NAME",
    )
    who.add_argument(
        "--trusted-header",
        metavar="NAME",
        help="take the identity from this request header (e.g. X-Forwarded-User), set by an "
        "authenticating reverse proxy that also strips it from clients' requests; only safe "
        "when nothing but that proxy can reach the port",
    )
    s.add_argument(
        "--allow-remote-header",
        action="store_true",
        help="allow --trusted-header on a non-loopback --host (the proxy runs elsewhere)",
    )
    s.add_argument(
        "--verifier-key",
        action="append",
        default=[],
        metavar="KEY",
        help="trusted verifier key (string or file; repeatable): the status page checks the "
        "checkpoints' signatures, the record page puts it in the offline verify command",
    )
    s.add_argument(
        "--session-hours",
        type=_session_hours,
        default=8.0,
        help=f"how long a /login session lasts (default 8, at most {MAX_SESSION_HOURS})",
    )
    s.set_defaults(func=_cmd_serve)


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return value


def _session_hours(text: str) -> float:
    """A finite number of hours in (0, 720] (nan and inf would pass a range check)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SESSION_HOURS):
        raise argparse.ArgumentTypeError(
            f"expected a number of hours more than 0 and at most {MAX_SESSION_HOURS}: {text[:40]!r}"
        )
    return value


class BackgroundRecorder:
    """A :data:`~audit_core.readlog.Recorder` that hands events to one thread appending them
    through ``record`` (a :class:`~audit_core.readlog.TrailRecorder`): a request never waits
    for the ledger, and reads are recorded in the order they happened. Never raises."""

    def __init__(
        self,
        record: Callable[[Event], str | None],
        *,
        tell: Callable[[str], None] | None = None,
        tell_every_s: float = TELL_EVERY_S,
    ) -> None:
        self._record = record
        self._tell = tell
        self._tell_every_s = tell_every_s
        self._told_at: float | None = None
        self._untold = 0
        self._queue: queue.Queue[Event | None] = queue.Queue(MAX_PENDING)
        self._thread = threading.Thread(target=self._run, name="workflow-audit-readlog")
        self._thread.daemon = True  # close() drains it; a daemon never holds the exit
        self._thread.start()

    def __call__(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            COUNTERS.incr(UNRECORDED)
            logger.warning("workflow-audit: %s not recorded: too many reads pending", event.type)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            reason = self._record(event)  # a TrailRecorder never raises
            if reason is not None:
                self._told(event, reason)

    def _told(self, event: Event, reason: str) -> None:
        """Tell ``tell`` of an unrecorded read: the first at once, then at most one line per
        ``tell_every_s`` (counting those not told), so that a locked ledger is noticed while
        the server runs, not only at its exit, without a line per read."""
        self._untold += 1
        now = time.monotonic()
        if self._tell is None or (
            self._told_at is not None and now - self._told_at < self._tell_every_s
        ):
            return
        actor = event.actor.get("id") if isinstance(event.actor, Mapping) else event.actor
        more = f" ({self._untold} read(s) not recorded since the last notice)" * (self._untold > 1)
        self._tell(f"{event.type} by {actor!r} was not recorded on the audit chain: {reason}{more}")
        self._told_at, self._untold = now, 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Record what is pending (waiting at most ``timeout_s``), then stop."""
        self._queue.put(None)
        self._thread.join(timeout_s)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:  # the web extra: the rest of the CLI runs without it
        import uvicorn

        from audit_core.web import create_app
        from audit_core.web.auth import HeaderAuth, LocalAuth, TokenAuth, is_loopback, load_tokens
    except ImportError as exc:
        raise ConfigError(
            f"serve needs the web extra ({exc.name} is missing): pip install 'workflow-audit[web]'"
        ) from exc

    loopback = is_loopback(args.host)
    if not loopback and not (args.token_file or args.trusted_header):
        raise ConfigError(
            f"--host {args.host} is not a loopback address: anyone who can reach it could read "
            "the trail. Give --token-file PATH (named tokens) or --trusted-header NAME (behind "
            "an authenticating reverse proxy), or keep the default --host 127.0.0.1"
        )
    if args.trusted_header and not loopback and not args.allow_remote_header:
        raise ConfigError(
            f"--trusted-header on --host {args.host}: anyone reaching the port directly could "
            "send the header and be whoever they name. Bind 127.0.0.1 behind the proxy, or pass "
            "--allow-remote-header if only the proxy can reach this address"
        )
    args.ledger = args.ledger or default_ledger_url()
    ledger, where = open_ledger_arg(args)  # checks the URL and that the ledger exists
    ledger.close()
    keys = [str(k) for k in load_verifiers(args.verifier_key)] if args.verifier_key else []

    viewer: Callable[..., Any]
    routes = []
    if args.token_file:
        tokens = TokenAuth(load_tokens(args.token_file), session_hours=args.session_hours)
        if os.stat(args.token_file).st_mode & 0o077:
            print(
                f"workflow-audit serve: warning: {args.token_file} is readable by other users; "
                f"chmod 600 {args.token_file}",
                file=sys.stderr,
            )
        viewer, who = tokens.viewer, f"tokens of {', '.join(tokens.names)} (log in at /login)"
        routes.append(tokens.router())
    elif args.trusted_header:
        header = HeaderAuth(args.trusted_header, loopback=loopback)
        viewer, who = header.viewer, f"the {header.header} header set by the reverse proxy"
    else:
        local = LocalAuth()
        viewer, who = local.viewer, f"{local.name} (no credential: loopback only)"

    trail = TrailRecorder(args.ledger)
    reason = trail.unwritable()
    if reason is not None:
        print(f"workflow-audit serve: reads will not be recorded: {reason}", file=sys.stderr)
    recorder = BackgroundRecorder(trail.record, tell=_tell)
    app = create_app(
        ledger_url=args.ledger,
        viewer=viewer,
        recorder=recorder,
        via="serve",
        verifier_keys=keys,
        extra_routes=routes,
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"workflow-audit serve: http://{shown}:{args.port}/ ledger {where}", file=sys.stderr)
    print(f"workflow-audit serve: readers are {who}", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,  # each read is recorded on the audit chain instead
        server_header=False,
        timeout_graceful_shutdown=2,  # SIGTERM/SIGINT: open requests get 2 s, then it stops
        lifespan="on",
    )
    server = uvicorn.Server(config)
    try:
        # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again for the
        # handler it found: this one, so that pending reads are recorded before the exit.
        with stopped_by_signals():
            server.run()
    finally:
        recorder.close()
        trail.close()
    if trail.unrecorded:
        print(
            f"workflow-audit serve: {trail.unrecorded} read(s) were not recorded on the audit "
            f"chain; the last reason: {trail.last_failure}",
            file=sys.stderr,
        )
    return EXIT_OK if server.started else EXIT_USAGE


def _tell(line: str) -> None:
    """One line on standard error (the reason only: no traceback, no secret)."""
    print(f"workflow-audit serve: {line}", file=sys.stderr, flush=True)
